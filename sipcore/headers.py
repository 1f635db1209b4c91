"""Header fields: names (compact forms, case), and typed values for the headers the stack itself reads.

Every header is kept as a raw ``Header(name, value)`` so a B2BUA can pass unknown ones on unchanged and in
order; the typed parsers below are applied on demand (RFC 3261 §7.3, §20, §25).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import attrs

from .errors import SipParseError
from .uri import parse_params, split_plain_params

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "Challenge",
    "ContentType",
    "Header",
    "Via",
    "canonical_name",
    "header_key",
    "is_digits",
    "is_token",
    "parse_auth",
    "parse_content_type",
    "parse_cseq",
    "parse_delta_seconds",
    "parse_token_list",
    "parse_via",
    "quote_string",
    "unquote_string",
]

MAX_UINT32: Final = 2**32 - 1

#: RFC 3261 §7.3.3 and later RFCs' single-letter names, mapped to the full lower-case name.
COMPACT_FORMS: Final[dict[str, str]] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

_CANONICAL: Final[dict[str, str]] = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def is_digits(text: str) -> bool:
    """True for a non-empty run of ASCII digits (``str.isdigit`` also takes "²" and other Unicode digits)."""
    return text.isascii() and text.isdigit()


def is_token(text: str) -> bool:
    """True when ``text`` is an RFC 3261 token (method names, header names, parameter names)."""
    return _TOKEN_RE.fullmatch(text) is not None


_KEYS: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower-case full name, compact forms expanded ("v" -> "via")."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEYS) < 4096:  # names repeat; the bound keeps a flood of odd names from growing it
            _KEYS[name] = key
    return key


def canonical_name(name: str) -> str:
    """The conventional spelling of a header name ("call-id" -> "Call-ID", "v" -> "Via")."""
    key = header_key(name)
    known = _CANONICAL.get(key)
    if known is not None:
        return known
    return "-".join(part.capitalize() for part in key.split("-"))


class Header(NamedTuple):
    """One header field exactly as received: its name as written and its value, unfolded and trimmed.

    A named tuple rather than an attrs class: messages hold many of them and it builds several times faster.
    """

    name: str
    value: str

    @property
    def key(self) -> str:
        """The lookup key (lower-case full name)."""
        return header_key(self.name)


def quote_string(text: str) -> str:
    """Wrap ``text`` in double quotes, escaping backslash and quote (RFC 3261 quoted-string)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_string(text: str) -> str:
    """The content of a quoted-string with quoted-pairs resolved; unquoted text is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        out: list[str] = []
        i = 0
        while i < len(inner):
            ch = inner[i]
            if ch == "\\" and i + 1 < len(inner):
                out.append(inner[i + 1])
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)
    return text


# --------------------------------------------------------------------------------------------- Via


@attrs.frozen
class Via:
    """One Via header value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()
    protocol: str = "SIP/2.0"

    def param(self, name: str) -> str | None:
        """A parameter's value ('' for a flag parameter), or None when absent."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return "" if value is None else value
        return None

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in, or None (absent, or requested but not filled in)."""
        value = self.param("rport")
        return int(value) if value else None

    @property
    def rport_requested(self) -> bool:
        return self.param("rport") is not None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host, self.port)

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with parameter ``name`` set (replacing an existing one in place, or appended)."""
        name_l = name.lower()
        params = list(self.params)
        for i, (key, _) in enumerate(params):
            if key == name_l:
                params[i] = (name_l, value)
                break
        else:
            params.append((name_l, value))
        # The constructor, not attrs.evolve: this runs for every request sent (evolve's field walk costs).
        return Via(self.transport, self.host, self.port, tuple(params), self.protocol)

    def __str__(self) -> str:
        host = self.host if self.port is None else f"{self.host}:{self.port}"
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"{self.protocol}/{self.transport} {host}{params}"


_HOST_RE: Final = re.compile(r"[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\]")


def _parse_hostport(text: str, where: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {where}: {text!r}")
        host, rest = text[: end + 1], text[end + 1 :].strip()
    else:
        host, _, port_text = text.partition(":")
        host = host.strip()
        rest = ":" + port_text if _ else ""
    if not _HOST_RE.fullmatch(host):
        raise SipParseError(f"bad host {host!r} in {where}")
    if not rest:
        return host.lower(), None
    if not rest.startswith(":"):
        raise SipParseError(f"junk after host in {where}: {text!r}")
    port_text = rest[1:].strip()
    if not is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
        raise SipParseError(f"bad port {port_text!r} in {where}")
    return host.lower(), int(port_text)


_VIA_FAST: Final = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]+)?)*)"
)


_VIA_CACHE: dict[str, Via] = {}


def parse_via(value: str) -> Via:
    """Parse one Via value ("SIP/2.0/UDP host:port;branch=..."), allowing LWS around '/' and ';'.

    Values are cached by text (bounded): a response carries its request's Via, retransmissions repeat it.
    """
    via = _VIA_CACHE.get(value)
    if via is None:
        via = _parse_via(value)
        if len(_VIA_CACHE) >= 4096:
            _VIA_CACHE.clear()
        _VIA_CACHE[value] = via
    return via


def _parse_via(value: str) -> Via:
    fast = _VIA_FAST.fullmatch(value)
    if fast is not None:
        transport, host, port_text, param_text = fast.groups()
        port = None if port_text is None else int(port_text)
        params = split_plain_params(param_text)
        if (port is None or port <= 65535) and all(
            k != "rport" or v is None or (is_digits(v) and int(v) <= 65535) for k, v in params
        ):
            return Via(transport.upper(), host.lower(), port, params)
    return _parse_via_general(value)


def _parse_via_general(value: str) -> Via:
    parts = value.split("/", 2)
    if len(parts) != 3:
        raise SipParseError(f"Via without protocol/version/transport: {value!r}")
    name, version, rest = parts[0].strip(), parts[1].strip(), parts[2].lstrip()
    if not is_token(name) or not is_token(version):
        raise SipParseError(f"bad protocol in Via: {value!r}")
    i = 0
    n = len(rest)
    while i < n and rest[i] not in " \t":
        i += 1
    transport = rest[:i]
    if not transport or not is_token(transport):
        raise SipParseError(f"bad transport in Via: {value!r}")
    rest = rest[i:].strip()
    sent_by, sep, param_text = rest.partition(";")
    if not sent_by.strip():
        raise SipParseError(f"Via without sent-by: {value!r}")
    host, port = _parse_hostport(sent_by.strip(), "Via sent-by")
    params = parse_params(sep + param_text) if sep else ()
    for key, val in params:
        if key == "rport" and val is not None and not (is_digits(val) and int(val) <= 65535):
            raise SipParseError(f"bad rport {val!r} in Via")
    return Via(
        transport=transport.upper(),
        host=host,
        port=port,
        params=params,
        protocol=f"{name.upper()}/{version}",
    )


# -------------------------------------------------------------------------------------------- CSeq


@attrs.frozen
class CSeq:
    """The CSeq header (RFC 3261 §20.16): a 32-bit sequence number and the request method."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """Parse "4711 INVITE"; the number must fit in 32 bits (RFC 4475 §3.1.2.4)."""
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError(f"CSeq must be 'number method': {value!r}")
    number, method = parts
    if not is_digits(number) or len(number) > 10 or int(number) > MAX_UINT32:
        raise SipParseError(f"CSeq number {number!r} is not a 32-bit unsigned integer")
    if not is_token(method):
        raise SipParseError(f"bad method {method!r} in CSeq")
    return CSeq(int(number), method)


def parse_delta_seconds(value: str, name: str) -> int:
    """Parse a delta-seconds value; values above 2**32-1 are clamped to it (RFC 3261 §25.1)."""
    text = value.strip()
    if not is_digits(text):
        raise SipParseError(f"{name} must be a number of seconds, got {value!r}")
    return min(int(text), MAX_UINT32)


def parse_token_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated token lists (Require, Supported, Allow …) across all header fields."""
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item:
                out.append(item)
    return tuple(out)


# -------------------------------------------------------------------------------------- Content-Type


@attrs.frozen
class ContentType:
    """A media type with parameters (RFC 3261 §20.15), type and subtype lower-cased."""

    type: str
    subtype: str
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return self.mime + params


def parse_content_type(value: str) -> ContentType:
    mime, sep, rest = value.partition(";")
    kind, slash, sub = mime.partition("/")
    kind, sub = kind.strip().lower(), sub.strip().lower()
    if not slash or not is_token(kind) or not is_token(sub):
        raise SipParseError(f"bad media type {value!r}")
    return ContentType(kind, sub, parse_params(sep + rest) if sep else ())


# ----------------------------------------------------------------------------- Authentication headers


@attrs.frozen
class Challenge:
    """A WWW-/Proxy-Authenticate challenge or Authorization credentials (RFC 3261 §20.7, RFC 7616).

    ``params`` keeps names lower-cased and values unquoted, in order.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    def __str__(self) -> str:
        unquoted = {"algorithm", "nc", "qop", "stale"}
        parts = []
        for key, value in self.params:
            if key in unquoted and is_token(value):
                parts.append(f"{key}={value}")
            else:
                parts.append(f"{key}={quote_string(value)}")
        return f"{self.scheme} " + ", ".join(parts)


_AUTH_PARAM: Final = re.compile(
    r'[ \t]*([A-Za-z0-9\-.!%*_+`\'~]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^ \t,"]+)[ \t]*(,|$)', re.DOTALL
)


def parse_auth(value: str) -> Challenge:
    """Parse 'Scheme name=value, name="quoted", ...' (also an unknown scheme with token68-ish data)."""
    text = value.strip()
    i = 0
    while i < len(text) and text[i] not in " \t":
        i += 1
    scheme = text[:i]
    if not is_token(scheme):
        raise SipParseError(f"bad authentication scheme in {value!r}")
    params: list[tuple[str, str]] = []
    pos, end = i, len(text)
    while pos < end:
        match = _AUTH_PARAM.match(text, pos)
        if match is None:
            raise SipParseError(f"bad auth-param in {value!r} at {text[pos : pos + 30]!r}")
        name, raw, comma = match.groups()
        params.append((name.lower(), unquote_string(raw) if raw[0] == '"' else raw))
        pos = match.end()
        if comma:
            while pos < end and text[pos] in " \t,":  # tolerate empty list elements
                pos += 1
    return Challenge(scheme, tuple(params))
