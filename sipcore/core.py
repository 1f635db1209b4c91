"""UAS core checks (RFC 3261 §8.2): what every request is checked for before the application sees it.

Pure: ``check_request`` returns the response to send, or None when the request may go on. The checks, in
the RFC's order: Max-Forwards (483), method (405/501 with Allow), Request-URI scheme (416; also a ``sips:``
Request-URI that did not arrive over TLS, RFC 3261 §26.2.2: a SIPS URI is only reached over TLS on every
hop), Require (420 with Unsupported), and for INVITE the body type (415 with Accept) and the Accept header
(406).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

import attrs

from .errors import SipParseError
from .message import Request, Response, make_response
from .uri import SipUri, TelUri

__all__ = ["KNOWN_METHODS", "CoreConfig", "check_request"]

#: Methods defined by RFC 3261 and its extensions; anything else is "unknown" (501), not "not allowed" (405).
KNOWN_METHODS: Final = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)


@attrs.frozen
class CoreConfig:
    """What this UAS implements: methods it accepts, option tags it supports, body types it reads."""

    allowed_methods: tuple[str, ...] = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO")
    supported: tuple[str, ...] = ()
    accepted_types: tuple[str, ...] = ("application/sdp",)
    #: Answer Max-Forwards: 0 with 483 (a B2BUA forwards every call onward); OPTIONS is still answered.
    reject_zero_max_forwards: bool = True

    @property
    def allow_header(self) -> str:
        return ", ".join(self.allowed_methods)


def _accepts(accept_values: Collection[str], wanted: Collection[str]) -> bool:
    for value in accept_values:
        mime = value.split(";", 1)[0].strip().lower()
        if mime in ("*/*", "application/*") or mime in wanted:
            return True
    return False


def check_request(
    request: Request, config: CoreConfig = CoreConfig(), *, secure: bool = True
) -> Response | None:
    """The response RFC 3261 §8.2 requires for ``request``, or None when it passes every check; ``secure``
    says whether it arrived over TLS."""
    method = request.method
    if method not in config.allowed_methods:
        status = 405 if method in KNOWN_METHODS else 501
        return make_response(request, status, headers=[("Allow", config.allow_header)])
    if (
        config.reject_zero_max_forwards
        and request.max_forwards == 0
        and method not in ("OPTIONS", "ACK", "CANCEL")
    ):
        return make_response(request, 483)
    if not isinstance(request.uri, SipUri | TelUri):
        return make_response(request, 416)
    if not secure and request.uri.scheme == "sips" and method not in ("ACK", "CANCEL"):
        return make_response(request, 416, "Unsupported URI Scheme (sips: only over TLS)")
    if method not in ("ACK", "CANCEL"):
        unsupported = [tag for tag in request.require if tag not in config.supported]
        if unsupported:
            return make_response(request, 420, headers=[("Unsupported", ", ".join(unsupported))])
    if method == "INVITE":
        try:
            content_type = request.content_type
        except SipParseError:
            return make_response(request, 400, "Bad Request (malformed Content-Type)")
        if request.body and (content_type is None or content_type.mime not in config.accepted_types):
            return make_response(request, 415, headers=[("Accept", ", ".join(config.accepted_types))])
        accept = request.values("accept")
        if accept and not _accepts(accept, config.accepted_types):
            return make_response(request, 406, headers=[("Accept", ", ".join(config.accepted_types))])
    return None
