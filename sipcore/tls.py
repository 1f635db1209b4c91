"""TLS for SIP (RFC 3261 §26.2, RFC 5630) through Python's ``ssl``: the contexts an endpoint uses, and
handshake failures in words an operator can act on.

:class:`TlsContexts` holds what is in force and may be replaced while the endpoint runs (a certificate
renewed, a reload): the server context for connections phones and trunks open to our TLS listeners, and
the client contexts for connections we open — one per peer name (a trunk pinned to its CA file, or
presenting our certificate), the default one otherwise (the system's CAs, the peer's name checked). Every
context speaks TLS 1.2 or newer. Nothing here is cryptography of our own: ``ssl`` (OpenSSL) does it all.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "TlsContexts",
    "TlsError",
    "client_context",
    "describe_handshake_error",
    "name_matches",
    "peer_names",
    "server_context",
]

#: The oldest TLS version any of our contexts accepts (RFC 8996 retired 1.0 and 1.1).
MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2


class TlsError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


def _no_password() -> bytes:
    raise TlsError("the private key is encrypted; give durchwahl an unencrypted key (readable only by it)")


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    for path, what in ((certificate, "certificate"), (key, "private key")):
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as exc:
            raise TlsError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(certificate, key, password=_no_password)
    except TlsError as exc:
        raise TlsError(f"{str(key)!r}: {exc}") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            message = f"the private key {str(key)!r} does not belong to the certificate {str(certificate)!r}"
        elif "PEM" in reason or "NO_START_LINE" in reason or "ASN1" in reason:
            message = f"{str(certificate)!r} or {str(key)!r} is not a PEM certificate and key ({reason})"
        else:
            message = f"cannot use the certificate {str(certificate)!r} with the key {str(key)!r}: {reason}"
        raise TlsError(message) from None


def _load_cas(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise TlsError(f"the CA file {str(ca_file)!r} does not exist") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsError(f"cannot read the CA file {str(ca_file)!r}: {reason}") from None


def server_context(
    certificate: Path,
    key: Path,
    *,
    verify_clients: bool = False,
    client_cas: Iterable[Path] = (),
    system_cas: bool = False,
) -> ssl.SSLContext:
    """The context of our TLS listeners: our certificate chain and key. With ``verify_clients`` a client
    certificate is asked for (not required: phones have none) and, if sent, must be signed by one of
    ``client_cas`` or (``system_cas``, or no CA file given) a CA the system trusts. Raises
    :class:`TlsError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, certificate, key)
    if verify_clients:
        context.verify_mode = ssl.CERT_OPTIONAL
        cas = tuple(client_cas)
        for ca_file in cas:
            _load_cas(context, ca_file)
        if system_cas or not cas:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context


def client_context(
    *, ca_file: Path | None = None, certificate: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A context for connections we open: the peer's certificate must be valid for the name we connect to
    and signed by ``ca_file``'s CAs (pinned) or else the system's; ``certificate`` and ``key`` are presented
    when the peer asks for a client certificate. Raises :class:`TlsError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = MINIMUM_VERSION
    if ca_file is not None:
        _load_cas(context, ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and key is not None:
        _load_chain(context, certificate, key)
    return context


class TlsContexts:
    """The TLS contexts an endpoint uses, replaceable at any time (new connections use the new ones)."""

    def __init__(self) -> None:
        #: For connections opened to our TLS listeners (None: no TLS listener may start).
        self.server: ssl.SSLContext | None = None
        self._clients: dict[str, ssl.SSLContext] = {}
        self._default_client: ssl.SSLContext | None = None

    def configure(
        self,
        server: ssl.SSLContext | None,
        clients: Mapping[str, ssl.SSLContext] | None = None,
        default_client: ssl.SSLContext | None = None,
    ) -> None:
        """Put new contexts in force: ``clients`` by the peer name they are for (a trunk's host)."""
        self.server = server
        self._clients = {name.lower(): context for name, context in (clients or {}).items()}
        self._default_client = default_client

    def client_for(self, name: str) -> ssl.SSLContext:
        """The context for a connection to the peer called ``name`` (its host name or IP address)."""
        context = self._clients.get(name.lower())
        if context is not None:
            return context
        if self._default_client is None:
            self._default_client = client_context()
        return self._default_client


def peer_names(certificate: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()``) is valid for: its DNS and IP
    subjectAltNames, else its subject's common name (lower case)."""
    if not certificate:
        return ()
    names = tuple(
        str(value).lower()
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    )
    if names:
        return names
    return tuple(
        str(value).lower()
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    )


def name_matches(pattern: str, name: str) -> bool:
    """Whether certificate name ``pattern`` covers host ``name`` (RFC 6125 §6.4.3: a ``*`` only as the
    whole left-most label, matching exactly one label)."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".").strip("[]")
    if not pattern.startswith("*."):
        return pattern == name
    _, dot, rest = name.partition(".")
    return bool(dot) and rest == pattern[2:]


#: OpenSSL's reasons, as an operator would say them.
_REASONS: Final[tuple[tuple[Callable[[str], bool], str], ...]] = (
    (lambda r: "UNKNOWN_CA" in r or "BAD_CERTIFICATE" in r, "the peer does not trust our certificate"),
    (lambda r: "CERTIFICATE_EXPIRED" in r and "ALERT" in r, "the peer says our certificate has expired"),
    (
        lambda r: "WRONG_VERSION_NUMBER" in r or "HTTP_REQUEST" in r or "RECORD_LAYER" in r,
        "the peer does not speak TLS (plain SIP or another protocol on a TLS port?)",
    ),
    (
        lambda r: "UNSUPPORTED_PROTOCOL" in r or "NO_PROTOCOLS" in r or "VERSION_TOO_LOW" in r,
        "no TLS version in common (TLS 1.2 or newer is required)",
    ),
    (lambda r: "NO_SHARED_CIPHER" in r or "HANDSHAKE_FAILURE" in r, "no cipher in common"),
)


def describe_handshake_error(exc: BaseException | None) -> str:
    """Why a TLS handshake failed, in words (OpenSSL's reason in brackets)."""
    if exc is None:
        return "the peer closed the connection during the handshake"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        for matches, words in _REASONS:
            if matches(reason.upper()):
                return f"{words} ({reason})"
        return reason or str(exc)
    if isinstance(exc, TimeoutError):
        return "no handshake in time"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "the peer closed the connection during the handshake"
    if isinstance(exc, ConnectionError | OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
