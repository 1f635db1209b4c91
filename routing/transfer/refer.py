"""The REFER protocol of call transfer, without I/O: what a REFER asks for (RFC 3515, RFC 5589), the dialog
a ``Replaces`` names (RFC 3891), and the NOTIFYs that report the outcome (RFC 3515 §2.4, RFC 3420 sipfrag).

:func:`parse_refer` reads a REFER: one Refer-To with a SIP or tel URI, else 400 (484 when it holds
nothing to dial); a ``method`` other than INVITE 403; with ``Replaces`` an attended transfer
(:class:`AttendedTarget`), else a blind one (:class:`ReferTarget`). ``Refer-Sub: false`` (RFC 4488)
asks for no NOTIFY; ``Referred-By`` (RFC 3892) is kept to pass on. :func:`notify_headers` and
:func:`sipfrag` make a NOTIFY of the ``refer`` event package (``;id=`` the REFER's CSeq from a dialog's
second accepted REFER on).
"""

from __future__ import annotations

from typing import Final

import attrs

from durchwahl.sipcore.errors import SipError
from durchwahl.sipcore.message import REASON_PHRASES, Request
from durchwahl.sipcore.session import DEFAULT_ALLOW
from durchwahl.sipcore.uri import SipUri, TelUri, Uri, parse_name_addr

from ..dialstring import DialString, DialStringError, format_dialstring, from_request_uri

__all__ = [
    "ALLOW",
    "SIPFRAG",
    "SUBSCRIPTION_SECONDS",
    "AttendedTarget",
    "ReferRefused",
    "ReferTarget",
    "Replaces",
    "notify_headers",
    "parse_refer",
    "parse_replaces",
    "sipfrag",
]

#: What the B2BUA takes inside its dialogs (the Allow of its INVITEs and 2xx).
ALLOW: Final = f"{DEFAULT_ALLOW}, REFER"
#: The body type of the refer event package's NOTIFYs (RFC 3515 §2.4.5, RFC 3420).
SIPFRAG: Final = "message/sipfrag;version=2.0"
#: The ``expires`` of the implicit subscription while it is active; every transfer ends well before.
SUBSCRIPTION_SECONDS: Final = 60


@attrs.frozen
class ReferTarget:
    """What a REFER asks for: the Refer-To URI and its dial string, whether the REFER-Issuer wants NOTIFYs
    (not with ``Refer-Sub: false``, RFC 4488) and its ``Referred-By`` (RFC 3892), to pass on."""

    uri: Uri
    dialled: DialString
    subscribe: bool = True
    referred_by: str | None = None


@attrs.frozen
class Replaces:
    """The dialog a ``Replaces`` names (RFC 3891 §6.1): its Call-ID, ``to_tag`` (the tag of whoever is to
    replace the dialog: here ours) and ``from_tag`` (the asking party's: the transferor's)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


@attrs.frozen
class AttendedTarget:
    """A REFER for an attended transfer: the Refer-To URI, the dialog its ``Replaces`` names, and as in
    :class:`ReferTarget` whether NOTIFYs are wanted and the ``Referred-By``."""

    uri: Uri
    replaces: Replaces
    subscribe: bool = True
    referred_by: str | None = None

    @property
    def label(self) -> str:
        """The Refer-To as dialled (its URI as written when it is no dial string)."""
        try:
            return format_dialstring(from_request_uri(self.uri))
        except DialStringError:
            return str(self.uri.without_headers()) if isinstance(self.uri, SipUri) else str(self.uri)


def parse_replaces(value: str) -> Replaces | None:
    """``<Call-ID>;to-tag=<tag>;from-tag=<tag>[;early-only]`` (RFC 3891 §6.1); None when a part is missing."""
    call_id, *params = (part.strip() for part in value.split(";"))
    tags: dict[str, str] = {}
    early_only = False
    for param in params:
        name, _, tag = param.partition("=")
        name = name.strip().lower()
        if name == "early-only":
            early_only = True
        elif name in ("to-tag", "from-tag"):
            tags[name] = tag.strip()
    to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
    if not call_id or not to_tag or not from_tag:
        return None
    return Replaces(call_id, to_tag, from_tag, early_only)


@attrs.frozen
class ReferRefused:
    """A REFER this B2BUA will not carry out: answer it with ``status`` and ``reason``."""

    status: int
    reason: str


def parse_refer(request: Request) -> ReferTarget | AttendedTarget | ReferRefused:
    """The target of ``request`` (a REFER; with ``Replaces``, attended), or why it is refused (see the module
    docstring). Pure."""
    values = request.get_all("refer-to")
    if len(values) != 1:
        return ReferRefused(400, "Bad Request (a REFER needs exactly one Refer-To)")
    try:
        target = parse_name_addr(values[0].strip())
    except SipError as exc:
        return ReferRefused(400, f"Bad Request (Refer-To: {exc})")
    uri = target.uri
    if not isinstance(uri, SipUri | TelUri):
        return ReferRefused(400, "Bad Request (Refer-To is not a SIP or tel URI)")
    refer_sub = request.get("refer-sub")
    subscribe = refer_sub is None or refer_sub.split(";", 1)[0].strip().lower() != "false"
    if isinstance(uri, SipUri):
        method = uri.param("method")
        if method is not None and method.upper() != "INVITE":
            return ReferRefused(403, f"Forbidden (only INVITE references, not {method})")
        replaces = [value for name, value in uri.headers if name.lower() == "replaces"]
        if len(replaces) > 1:
            return ReferRefused(400, "Bad Request (Refer-To with more than one Replaces)")
        if replaces:
            dialog = parse_replaces(replaces[0])
            if dialog is None:
                return ReferRefused(400, "Bad Request (Replaces needs a Call-ID, to-tag and from-tag)")
            return AttendedTarget(uri, dialog, subscribe, request.get("referred-by"))
    try:
        dialled = from_request_uri(uri)
    except DialStringError as exc:
        return ReferRefused(484, f"Address Incomplete ({exc})")
    return ReferTarget(uri, dialled, subscribe, request.get("referred-by"))


def sipfrag(status: int) -> bytes:
    """A NOTIFY body reporting ``status`` (RFC 3420: the status line of a response)."""
    return f"SIP/2.0 {status} {REASON_PHRASES.get(status, 'Unknown')}\r\n".encode()


def notify_headers(event_id: str | None, *, final: bool) -> list[tuple[str, str]]:
    """The Event and Subscription-State of a NOTIFY reporting a transfer (RFC 3515 §2.4.4, §2.4.6): the
    last one terminates the implicit subscription."""
    state = "terminated;reason=noresource" if final else f"active;expires={SUBSCRIPTION_SECONDS}"
    return [
        ("Event", "refer" if event_id is None else f"refer;id={event_id}"),
        ("Subscription-State", state),
    ]
