"""SIP requests and responses: parse from bytes, serialise to bytes, typed access to the stack's headers.

``parse_message`` implements RFC 3261 §7 and §18.3 (datagram framing by Content-Length); anything it cannot
accept raises ``SipParseError`` carrying the status to answer with and, where possible, the partly parsed
message so an endpoint can still send that answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar, overload

import attrs

from .errors import SipParseError
from .headers import (
    Challenge,
    ContentType,
    CSeq,
    Header,
    Via,
    canonical_name,
    header_key,
    is_digits,
    is_token,
    parse_auth,
    parse_content_type,
    parse_cseq,
    parse_delta_seconds,
    parse_token_list,
    parse_via,
)
from .limits import DEFAULT_LIMITS, Limits
from .uri import NameAddr, SipUri, Uri, parse_name_addr, parse_uri, split_comma_values

__all__ = [
    "REASON_PHRASES",
    "TYPED_ACCESSORS",
    "Request",
    "Response",
    "error_response",
    "make_response",
    "parse_message",
    "salvage_request_headers",
    "seed_parsed",
]

SIP_VERSION: Final = "SIP/2.0"

#: The typed accessors of Request and Response. Each parses its header on first use and may raise only
#: SipParseError; the fuzz harness and the property tests exercise exactly this list.
TYPED_ACCESSORS: Final = (
    "via",
    "branch",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "contact",
    "contact_is_wildcard",
    "route",
    "record_route",
    "content_type",
    "expires",
    "require",
    "proxy_require",
    "supported",
    "allow",
    "unsupported",
    "www_authenticate",
    "proxy_authenticate",
    "authorization",
    "proxy_authorization",
)

#: Headers whose values may be comma-separated lists (RFC 3261 §7.3.1); others are never split.
_LIST_HEADERS: Final = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "path",
        "reply-to",
        "warning",
        "alert-info",
        "call-info",
        "error-info",
    }
)

#: Headers that may appear at most once (RFC 3261 Table 2/3); duplicates make a request malformed.
_SINGLE_HEADERS: Final = ("call-id", "cseq", "from", "to", "max-forwards")

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_VERSION_RE: Final = re.compile(r"SIP/([0-9]{1,3})\.([0-9]{1,3})", re.IGNORECASE)
_SP_RE: Final = re.compile(r"[ \t]+")


_T = TypeVar("_T")
#: Header field values by lookup key.
_Index = dict[str, tuple[str, ...]]


class _cached(Generic[_T]):
    """A cached property without ``functools.cached_property``'s lock (taken on every first access in 3.11).

    A non-data descriptor: the first access stores the value in the instance ``__dict__``, which then
    shadows it. Messages are immutable, so a value computed once stays right.
    """

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self._func = func
        self._name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _cached[_T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> _T | _cached[_T]:
        if obj is None:
            return self
        value = self._func(obj)
        obj.__dict__[self._name] = value
        return value


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _MessageBase:
    """Header access shared by requests and responses (mixed into the attrs classes below)."""

    headers: tuple[Header, ...]
    body: bytes

    @_cached
    def _index(self) -> _Index:
        """Header values by lookup key (set directly by the parser, which builds it in its one pass).

        Tuples, not lists: the cyclic GC untracks a tuple of strings, and then the dict holding only
        such tuples, so a message kept for a transaction's 64*T1 is not re-walked by every collection.
        """
        index: _Index = {}
        for header in self.headers:
            key = header_key(header.name)
            index[key] = (*index.get(key, ()), header.value)
        return index

    def get(self, name: str) -> str | None:
        """The first field value of header ``name`` (any case, compact or full form), or None."""
        values = self._index.get(header_key(name))
        return values[0] if values else None

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every field value of header ``name`` in order, as written (comma lists not split)."""
        return self._index.get(header_key(name), ())

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of a list header (Via, Contact, Route …), comma-separated fields split."""
        return self._values(header_key(name))

    def _values(self, key: str) -> tuple[str, ...]:
        fields = self._index.get(key)
        if fields is None:
            return ()
        if len(fields) == 1 and "," not in fields[0]:
            return (fields[0].strip(),)
        out: list[str] = []
        for value in fields:
            if "," in value:
                out.extend(split_comma_values(value))
            else:
                out.append(value.strip())
        return tuple(out)

    def _first(self, key: str) -> str | None:
        fields = self._index.get(key)
        return fields[0] if fields else None

    def has(self, name: str) -> bool:
        return header_key(name) in self._index

    # ---------------------------------------------------------------- typed access (parsed once, cached)

    @_cached
    def via(self) -> tuple[Via, ...]:
        return tuple(parse_via(v) for v in self._values("via"))

    @_cached
    def from_(self) -> NameAddr:
        return _single_name_addr(self, "from")

    @_cached
    def to(self) -> NameAddr:
        return _single_name_addr(self, "to")

    @_cached
    def call_id(self) -> str:
        value = self._first("call-id")
        if value is None:
            raise SipParseError("missing Call-ID header")
        if not value or any(c in value for c in " \t"):
            raise SipParseError(f"bad Call-ID {value!r}")
        return value

    @_cached
    def cseq(self) -> CSeq:
        value = self._first("cseq")
        if value is None:
            raise SipParseError("missing CSeq header")
        return parse_cseq(value)

    @_cached
    def max_forwards(self) -> int | None:
        value = self._first("max-forwards")
        if value is None:
            return None
        text = value.strip()
        if not is_digits(text) or int(text) > 255:
            raise SipParseError(f"Max-Forwards must be 0-255, got {value!r}")
        return int(text)

    @_cached
    def contact(self) -> tuple[NameAddr, ...]:
        """The Contact values; empty for ``Contact: *`` (see ``contact_is_wildcard``)."""
        if self.contact_is_wildcard:
            return ()
        return tuple(parse_name_addr(v) for v in self._values("contact"))

    @property
    def contact_is_wildcard(self) -> bool:
        return self._values("contact") == ("*",)

    @_cached
    def route(self) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(v) for v in self._values("route"))

    @_cached
    def record_route(self) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(v) for v in self._values("record-route"))

    @_cached
    def content_type(self) -> ContentType | None:
        value = self._first("content-type")
        return None if value is None else parse_content_type(value)

    @_cached
    def expires(self) -> int | None:
        value = self._first("expires")
        return None if value is None else parse_delta_seconds(value, "Expires")

    @property
    def require(self) -> tuple[str, ...]:
        return parse_token_list(self._index.get("require", ()))

    @property
    def proxy_require(self) -> tuple[str, ...]:
        return parse_token_list(self._index.get("proxy-require", ()))

    @property
    def supported(self) -> tuple[str, ...]:
        return parse_token_list(self._index.get("supported", ()))

    @property
    def allow(self) -> tuple[str, ...]:
        return parse_token_list(self._index.get("allow", ()))

    @property
    def unsupported(self) -> tuple[str, ...]:
        return parse_token_list(self._index.get("unsupported", ()))

    @property
    def www_authenticate(self) -> tuple[Challenge, ...]:
        return tuple(parse_auth(v) for v in self._index.get("www-authenticate", ()))

    @property
    def proxy_authenticate(self) -> tuple[Challenge, ...]:
        return tuple(parse_auth(v) for v in self._index.get("proxy-authenticate", ()))

    @property
    def authorization(self) -> tuple[Challenge, ...]:
        return tuple(parse_auth(v) for v in self._index.get("authorization", ()))

    @property
    def proxy_authorization(self) -> tuple[Challenge, ...]:
        return tuple(parse_auth(v) for v in self._index.get("proxy-authorization", ()))

    # --------------------------------------------------------------------------------- serialisation

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        for header in self.headers:
            lines.append(f"{header.name}: {header.value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return _encode("\r\n".join(lines)) + self.body

    def _validate_common(self) -> None:
        """Parse the headers every transaction needs, so a bad one fails at the door, not deep inside."""
        if not self.via:
            raise SipParseError("missing Via header")
        index = self._index
        for name in _SINGLE_HEADERS:
            fields = index.get(name)
            if fields is None:
                if name != "max-forwards":
                    raise SipParseError(f"missing {canonical_name(name)} header")
            elif len(fields) > 1:
                raise SipParseError(f"more than one {canonical_name(name)} header")
        _ = (self.from_, self.to, self.call_id, self.cseq, self.max_forwards)


_M = TypeVar("_M", bound=_MessageBase)


def seed_parsed(message: _M, *, via: tuple[Via, ...] | None = None, cseq: CSeq | None = None) -> _M:
    """Record the typed Via and CSeq of a message built here from exactly these values (its headers hold
    ``str(via)`` and ``"{seq} {method}"``), as the parser does for what it read: reading them back then
    does not parse the text just written. Returns ``message``."""
    cache = message.__dict__
    if via is not None:
        cache["via"] = via
    if cseq is not None:
        cache["cseq"] = cseq
    return message


def _single_name_addr(message: _MessageBase, name: str) -> NameAddr:
    values = message._values(name)
    if not values:
        raise SipParseError(f"missing {canonical_name(name)} header")
    if len(values) > 1:
        raise SipParseError(f"more than one {canonical_name(name)} value")
    return parse_name_addr(values[0])


@attrs.frozen(eq=True)
class Request(_MessageBase):
    """A SIP request. ``headers`` never holds Content-Length: the body's length is the truth."""

    method: str
    uri: Uri
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {self.version}")

    @property
    def is_request(self) -> bool:
        return True

    @property
    def branch(self) -> str | None:
        """The top Via's branch parameter."""
        return self.via[0].branch if self.via else None

    def replace_header(self, name: str, value: str | None) -> Request:
        """A copy with each ``name`` header replaced by one ``value`` (where the first was), or dropped."""
        return attrs.evolve(self, headers=_replace(self.headers, name, value))

    def add_header(self, name: str, value: str, *, first: bool = False) -> Request:
        header = Header(name, value)
        headers = (header, *self.headers) if first else (*self.headers, header)
        return attrs.evolve(self, headers=headers)

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")


@attrs.frozen(eq=True)
class Response(_MessageBase):
    """A SIP response. ``headers`` never holds Content-Length: the body's length is the truth."""

    status: int
    reason: str
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.version} {self.status} {self.reason}")

    @property
    def is_request(self) -> bool:
        return False

    @property
    def branch(self) -> str | None:
        return self.via[0].branch if self.via else None

    def replace_header(self, name: str, value: str | None) -> Response:
        return attrs.evolve(self, headers=_replace(self.headers, name, value))

    def add_header(self, name: str, value: str, *, first: bool = False) -> Response:
        header = Header(name, value)
        headers = (header, *self.headers) if first else (*self.headers, header)
        return attrs.evolve(self, headers=headers)

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")


def _replace(headers: tuple[Header, ...], name: str, value: str | None) -> tuple[Header, ...]:
    key = header_key(name)
    out: list[Header] = []
    placed = False
    for header in headers:
        if header_key(header.name) == key:
            if not placed and value is not None:
                out.append(Header(header.name, value))
            placed = True
        else:
            out.append(header)
    if not placed and value is not None:
        out.append(Header(canonical_name(name), value))
    return tuple(out)


# ------------------------------------------------------------------------------------------- parsing


def _split_head(data: bytes, limits: Limits) -> tuple[str, bytes]:
    """Split a datagram into the header section (text) and whatever follows the blank line."""
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head, rest = data[start:end], data[end + 4 :]
    else:
        lf_end = data.find(b"\n\n", start)
        if lf_end >= 0 and b"\r\n" not in data[start:lf_end]:
            # Bare-LF line ends: off-spec but seen from broken devices; accept and emit CRLF.
            head, rest = data[start:lf_end].replace(b"\n", b"\r\n"), data[lf_end + 2 :]
        elif data.endswith(b"\r\n", start):
            head, rest = data[start:-2], b""
        else:
            raise SipParseError("message has no empty line ending the header section")
    if len(head) > limits.max_header_bytes:
        raise SipParseError(
            f"header section of {len(head)} bytes exceeds {limits.max_header_bytes}",
            status=513,
            request_headers=salvage_request_headers(data, limits),
        )
    return head.decode("utf-8", "surrogateescape"), rest


#: What a response to a request must copy (RFC 3261 §8.2.6.2): with these, a 513 can still be answered.
_ANSWER_KEYS: Final = frozenset({"via", "from", "to", "call-id", "cseq"})


def salvage_request_headers(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, ...] | None:
    """Via, From, To, Call-ID and CSeq of a request too large to parse, read from the complete lines of its
    first ``max_header_bytes`` octets, so it can be answered 513 (RFC 3261 §21.5.11). None unless the bytes
    start with a request line and every one of those headers is among the lines read."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    window = data[start : start + limits.max_header_bytes]
    end = window.find(b"\r\n\r\n")
    window = window[:end] if end >= 0 else window[: max(0, window.rfind(b"\r\n"))]
    lines = window.decode("utf-8", "surrogateescape").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not is_token(parts[0]) or not parts[2].upper().startswith("SIP/"):
        return None
    found: list[Header] = []
    ours = False  # whether the line before was one of ours (a folded continuation belongs to it)
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if ours:
                name, value = found[-1]
                found[-1] = Header(name, value + " " + line.strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        key = header_key(name) if colon and is_token(name) else ""
        ours = key in _ANSWER_KEYS
        if ours:
            found.append(Header(canonical_name(key), value.strip(" \t")))
    if {header_key(h.name) for h in found} != _ANSWER_KEYS:
        return None
    return tuple(found)


_new_tuple: Final = tuple.__new__  # builds a Header without the Python-level NamedTuple.__new__ frame

#: Header name text as written (before the colon) -> (name, lookup key); names repeat across messages.
_NAMES: dict[str, tuple[str, str]] = {}
_MAX_NAMES: Final = 4096


def _header_name(raw: str, number: int) -> tuple[str, str]:
    known = _NAMES.get(raw)
    if known is not None:
        return known
    name = raw.rstrip(" \t")
    if not is_token(name):
        raise SipParseError(f"line {number}: bad header name {name[:60]!r}")
    known = (name, header_key(name))
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = known
    return known


def _unfold(lines: list[str]) -> list[tuple[int, str]]:
    """Join folded continuation lines to their header line (RFC 3261 §7.3.1), keeping line numbers."""
    out: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=2):
        if line and line[0] in " \t":
            if not out:
                raise SipParseError(f"line {number}: continuation line before any header")
            first, previous = out[-1]
            out[-1] = (first, previous.rstrip(" \t") + " " + line.strip(" \t"))
        else:
            out.append((number, line))
    return out


#: Whole header lines already seen -> (Header, key). Many lines recur verbatim (Max-Forwards, Allow,
#: Content-Type, User-Agent, and a call's From/To/Call-ID in every one of its messages). Bounded.
_LINES: dict[str, tuple[Header, str]] = {}


def _parse_header_lines(lines: list[str], limits: Limits, folded: bool) -> tuple[list[Header], _Index]:
    """Header lines -> the headers in order and the lookup index, in one pass."""
    numbered = _unfold(lines) if folded else enumerate(lines, start=2)
    headers: list[Header] = []
    index: _Index = {}
    known_lines = _LINES
    for number, line in numbered:
        known = known_lines.get(line)
        if known is not None:
            header, key = known
        else:
            raw, colon, value = line.partition(":")
            if not colon:
                if not line:
                    continue
                raise SipParseError(f"line {number}: header line without ':': {line[:60]!r}")
            name, key = _header_name(raw, number)
            header = _new_tuple(Header, (name, value.strip(" \t")))
            if len(known_lines) >= 8192:
                known_lines.clear()
            known_lines[line] = (header, key)
        if key != "content-length":  # framing, owned by the message layer (the body length is the truth)
            headers.append(header)
        values = index.get(key)
        index[key] = (header[1],) if values is None else (*values, header[1])
    if len(headers) > limits.max_headers:
        raise SipParseError(f"more than {limits.max_headers} header fields")
    return headers, index


def parse_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, stream: bool = False
) -> Request | Response:
    """Parse one SIP message from a datagram (or one framed stream message).

    Octets beyond Content-Length are ignored (RFC 3261 §18.3); without Content-Length a datagram's body is
    the rest of it. Raises ``SipParseError`` for anything malformed; for a request whose headers could be
    read, the error carries them so the request can still be answered.
    """
    if len(data) > limits.max_message_bytes:
        raise SipParseError(
            f"message of {len(data)} bytes exceeds {limits.max_message_bytes}",
            status=513,
            request_headers=salvage_request_headers(data, limits),
        )
    head, rest = _split_head(data, limits)
    lines = head.split("\r\n")
    start_line = lines[0]
    del lines[0]
    headers, index = _parse_header_lines(lines, limits, "\r\n " in head or "\r\n\t" in head)
    if start_line[:4].upper() == "SIP/":
        return _parse_response(start_line, headers, index, rest, limits, stream)
    try:
        return _parse_request(start_line, headers, index, rest, limits, stream)
    except SipParseError as exc:
        raise SipParseError(str(exc), status=exc.status, request_headers=tuple(headers)) from None


def _body(
    headers: list[Header], index: _Index, rest: bytes, limits: Limits, stream: bool
) -> tuple[tuple[Header, ...], bytes]:
    """Frame the body by Content-Length and drop the Content-Length headers (the body length is the truth)."""
    lengths = index.pop("content-length", None)
    if lengths is None:
        if stream:
            raise SipParseError("stream message without Content-Length")
        body = rest
    else:
        length = -1
        for text in lengths:
            text = text.strip()
            if not is_digits(text):
                raise SipParseError(f"bad Content-Length {text[:20]!r}")
            if length >= 0 and int(text) != length:
                raise SipParseError("conflicting Content-Length headers")
            length = int(text)
        if length > len(rest):
            raise SipParseError(f"Content-Length {length} exceeds the {len(rest)} body octets received")
        body = rest[:length]
    if len(body) > limits.max_body_bytes:
        raise SipParseError(f"body of {len(body)} bytes exceeds {limits.max_body_bytes}", status=413)
    return tuple(headers), body


def _parse_response(
    line: str, headers: list[Header], index: _Index, rest: bytes, limits: Limits, stream: bool
) -> Response:
    version, _, tail = line.partition(" ")
    code, _, reason = tail.partition(" ")
    if not _VERSION_RE.fullmatch(version):
        raise SipParseError(f"bad status line {line[:80]!r}")
    if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
        raise SipParseError(f"bad status code {code[:20]!r} (must be 100-699)")
    frozen_headers, body = _body(headers, index, rest, limits, stream)
    response = Response(int(code), reason.strip(" \t"), frozen_headers, body, version.upper())
    response.__dict__["_index"] = index
    response._validate_common()
    return response


def _parse_request(
    line: str, headers: list[Header], index: _Index, rest: bytes, limits: Limits, stream: bool
) -> Request:
    parts = line.split(" ")
    if len(parts) != 3 or "\t" in line:
        parts = _SP_RE.split(line.strip(" \t"))
        if len(parts) != 3:
            raise SipParseError(f"request line must be 'METHOD Request-URI SIP/2.0': {line[:80]!r}")
    method, uri_text, version = parts
    if version != SIP_VERSION:
        match = _VERSION_RE.fullmatch(version)
        if match is None:
            raise SipParseError(f"bad SIP version {version[:20]!r}")
        if (int(match.group(1)), int(match.group(2))) != (2, 0):
            raise SipParseError(f"SIP version {version} not supported", status=505)
        version = version.upper()
    if not is_token(method):
        raise SipParseError(f"bad method {method[:40]!r}")
    try:
        uri = parse_uri(uri_text)
    except SipParseError as exc:
        raise SipParseError(f"bad Request-URI: {exc}") from None
    if isinstance(uri, SipUri) and uri.headers:
        raise SipParseError("Request-URI must not carry headers ('?...')")
    frozen_headers, body = _body(headers, index, rest, limits, stream)
    request = Request(method, uri, frozen_headers, body, version)
    request.__dict__["_index"] = index
    request._validate_common()
    if request.cseq.method != method:
        raise SipParseError(f"CSeq method {request.cseq.method} does not match {method}")
    return request


# ------------------------------------------------------------------------------------------ responses


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` per RFC 3261 §8.2.6: Via, From, To, Call-ID, CSeq copied.

    ``to_tag`` is added to To when the request's To has none (never for 100 Trying).
    """
    copied: list[Header] = []
    for header in request.headers:
        key = header_key(header.name)
        if key in ("via", "from", "call-id", "cseq", "record-route"):
            if key == "record-route" and not 101 <= status <= 299:
                continue
            copied.append(Header(canonical_name(key), header.value))
        elif key == "to":
            value = header.value
            if to_tag is not None and status != 100 and _lacks_tag(request):
                value = f"{value};tag={to_tag}"
            copied.append(Header("To", value))
        elif key == "timestamp" and status == 100:
            copied.append(Header("Timestamp", header.value))
    extra = [Header(name, value) for name, value in headers]
    copied.extend(extra)
    phrase = reason if reason is not None else REASON_PHRASES.get(status, "Unknown")
    response = Response(status, phrase, tuple(copied), body)
    if any(header_key(h.name) in ("via", "cseq") for h in extra):
        return response
    # Via and CSeq are the request's, copied verbatim: what the request parsed from them holds here too.
    parsed = request.__dict__
    return seed_parsed(response, via=parsed.get("via"), cseq=parsed.get("cseq"))


def error_response(error: SipParseError, *, to_tag: str | None = None) -> Response | None:
    """The answer to a request that failed to parse, or None when it cannot be answered (no usable Via).

    The reason phrase says what was wrong, so a trace shows it (e.g. "400 Missing Call-ID header").
    """
    headers = error.request_headers
    if headers is None:
        return None
    copied: list[Header] = []
    for header in headers:
        key = header_key(header.name)
        if key in ("via", "from", "to", "call-id", "cseq"):
            value = header.value
            if key == "to" and to_tag is not None and ";tag=" not in value.replace(" ", ""):
                value = f"{value};tag={to_tag}"
            copied.append(Header(canonical_name(key), value))
    if not any(h.name == "Via" for h in copied):
        return None  # nothing to address the answer with; the Via is copied raw even when malformed
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in str(error))[:120]
    reason = f"{REASON_PHRASES.get(error.status, 'Bad Request')} ({text})" if text else REASON_PHRASES[400]
    return Response(error.status, reason, tuple(copied))


def _lacks_tag(request: Request) -> bool:
    try:
        return request.to.tag is None
    except SipParseError:
        return True
