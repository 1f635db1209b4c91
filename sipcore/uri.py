"""SIP, SIPS and tel URIs, name-addr values, and the small scanners that header parsing builds on.

Syntax follows RFC 3261 §19.1 and §25.1 (SIP-URI, name-addr, generic-param), RFC 3966 §3 (tel), RFC 5118 (IPv6
references) and the leniencies RFC 4475 asks for. Comparison follows RFC 3261 §19.1.4 and RFC 3966 §4.

Values are frozen and hold components *unescaped* (``%HH`` decoded); ``str()`` re-escapes whatever the ABNF
does not allow raw in that component, so ``parse_uri(str(u)) == u`` holds for every :class:`SipUri`.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

import attrs

from .errors import SipParseError

__all__ = [
    "AbsoluteUri",
    "NameAddr",
    "Params",
    "SipUri",
    "TelUri",
    "Uri",
    "parse_name_addr",
    "parse_params",
    "parse_sip_uri",
    "parse_uri",
    "split_comma_values",
    "unquote_string",
]

Params = tuple[tuple[str, str | None], ...]
"""Parameters in the order written: ``(name, value)``, names lower-cased, ``None`` for a flag (``;lr``)."""

# ---------------------------------------------------------------------------------------------------------
# Character sets (RFC 3261 §25.1).
# ---------------------------------------------------------------------------------------------------------

_ALPHANUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED: Final = _ALPHANUM + "-_.!~*'()"
_USER_SAFE: Final = frozenset(_UNRESERVED + "&=+$,;?/")  # user-unreserved
_PASSWORD_SAFE: Final = frozenset(_UNRESERVED + "&=+$,")
_PARAM_SAFE: Final = frozenset(_UNRESERVED + "[]/:&+$")  # param-unreserved (pname, pvalue)
_HEADER_SAFE: Final = frozenset(_UNRESERVED + "[]/?:+$")  # hnv-unreserved (hname, hvalue)
_TEL_NUMBER_SAFE: Final = frozenset(_ALPHANUM + "*+")
_HEXDIGITS: Final = frozenset("0123456789abcdefABCDEF")
_TOKEN_CHARS: Final = frozenset(_ALPHANUM + "-.!%*_+`'~")
_LWS: Final = " \t\r\n"

# Characters never allowed raw anywhere in a URI: controls, whitespace (LWS), and the delimiters of the
# header syntax around a URI.
_BAD_URI_CHAR: Final = re.compile(r'[\x00-\x20\x7f<>"]')
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# hostname (RFC 3261 §25.1), lower-cased, underscores tolerated (container and SRV-style names); the top
# label must not be all digits. Written so that matching never backtracks more than one label.
_HOSTNAME: Final = re.compile(r"(?:[a-z0-9_\-]+\.)*[0-9]*[a-z_\-][a-z0-9_\-]*\.?")
_IPV4: Final = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV6_CHARS: Final = re.compile(r"[0-9a-f:.]+")
_TEL_GLOBAL: Final = re.compile(r"\+[0-9\-.()]*[0-9][0-9\-.()]*")
_TEL_LOCAL: Final = re.compile(r"[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*")
_TEL_SEPARATORS: Final = str.maketrans("", "", "-.()")

# A header parameter (generic-param, RFC 3261 §25.1): SEMI token [ EQUAL ( token / host / quoted-string ) ].
# Unquoted values are taken liberally (anything but LWS, ';', ',' and '"'); names must be tokens.
_HEADER_PARAM: Final = re.compile(
    r'[ \t\r\n]*;[ \t\r\n]*([^ \t\r\n;=,"]+)(?:[ \t\r\n]*=[ \t\r\n]*("(?:[^"\\]|\\.)*"|[^ \t\r\n;,"]+))?',
    re.DOTALL,
)
_QUOTED_STRING: Final = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR: Final = re.compile(r"\\(.)", re.DOTALL)
_LWS_RUN: Final = re.compile(r"[ \t\r\n]+")
# An unquoted display name: tokens and LWS; characters beyond ASCII are tolerated (phones send raw UTF-8).
_UNQUOTED_DISPLAY: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t\r\n\x80-\U0010ffff]*")
_TOKEN_WORDS: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?: [A-Za-z0-9\-.!%*_+`'~]+)*")
_DISPLAY_ESCAPE: Final = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')

# uri-parameters that make two URIs differ when present in only one of them (RFC 3261 §19.1.4).
_SIGNIFICANT_PARAMS: Final = frozenset({"transport", "user", "ttl", "method", "maddr"})

_MAX_ERROR_TEXT: Final = 200

# Fast paths for the forms nearly every message uses. Each accepts a subset of what the general scanner
# accepts and yields the same value for it (a property test checks this); anything else goes the long way.
_TOKEN_RE_CLASS: Final = r"[A-Za-z0-9\-.!%*_+`'~]"
_SIP_FAST: Final = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?([a-z0-9_\-.]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]*)?)*)"
)
_NAME_ADDR_FAST: Final = re.compile(
    r'(?:"([^"\\\x00-\x1f\x7f]*)" ?|(' + _TOKEN_RE_CLASS + r"+(?: " + _TOKEN_RE_CLASS + r"+)*) )?"
    r'<([^<>"\x00-\x20\x7f]+)>((?:;' + _TOKEN_RE_CLASS + r"+(?:=" + _TOKEN_RE_CLASS + r"+)?)*)"
)


def _show(text: str) -> str:
    """``repr`` of text for an error message, shortened so an attacker cannot make the log line huge."""
    if len(text) > _MAX_ERROR_TEXT:
        text = text[:_MAX_ERROR_TEXT] + "…"
    return repr(text)


# ---------------------------------------------------------------------------------------------------------
# Escaping.
# ---------------------------------------------------------------------------------------------------------


def _unescape(value: str, what: str, whole: str) -> str:
    """Decode ``%HH`` escapes once (never recursively); the octets are read as UTF-8.

    Octets that are not valid UTF-8 become lone surrogates (``surrogateescape``) so that re-escaping gives
    the same octets back.
    """
    if "%" not in value:
        return value
    parts = value.split("%")
    out = bytearray()
    try:
        out += parts[0].encode("utf-8", "surrogateescape")
        for part in parts[1:]:
            if len(part) < 2 or part[0] not in _HEXDIGITS or part[1] not in _HEXDIGITS:
                raise SipParseError(f"bad %-escape {('%' + part[:2])!r} in {what} of URI {_show(whole)}")
            out.append(int(part[:2], 16))
            out += part[2:].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise SipParseError(f"invalid character in {what} of URI {_show(whole)}") from None
    return out.decode("utf-8", "surrogateescape")


def _escape(value: str, safe: frozenset[str]) -> str:
    """Escape every character of ``value`` outside ``safe`` as ``%HH`` octets of its UTF-8 encoding."""
    for ch in value:
        if ch not in safe:
            break
    else:
        return value
    out: list[str] = []
    for ch in value:
        if ch in safe:
            out.append(ch)
            continue
        try:
            octets = ch.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            octets = ch.encode("utf-8", "surrogatepass")
        out.extend(f"%{octet:02X}" for octet in octets)
    return "".join(out)


def _format_params(params: Params) -> str:
    return "".join(
        f";{_escape(name, _PARAM_SAFE)}"
        if value is None
        else f";{_escape(name, _PARAM_SAFE)}={_escape(value, _PARAM_SAFE)}"
        for name, value in params
    )


def _find_param(params: Params, name: str) -> str | None:
    name = name.lower()
    for pname, value in params:
        if pname == name:
            return "" if value is None else value
    return None


def _replace_param(params: Params, name: str, value: str | None) -> Params:
    name = name.lower()
    kept = tuple(p for p in params if p[0] != name)
    return (*kept, (name, value))


# ---------------------------------------------------------------------------------------------------------
# Hosts.
# ---------------------------------------------------------------------------------------------------------


def _check_host(host: str, whole: str) -> None:
    """Validate a lower-cased host: hostname, IPv4address or IPv6reference (RFC 3261 §25.1, RFC 5118)."""
    if not host:
        raise SipParseError(f"missing host in URI {_show(whole)}")
    if host[0] == "[":
        if host[-1] != "]":
            raise SipParseError(f"unterminated IPv6 reference in URI {_show(whole)}")
        _check_ipv6(host[1:-1], whole)
        return
    if _HOSTNAME.fullmatch(host):
        return
    if _IPV4.fullmatch(host):
        if any(int(octet) > 255 for octet in host.split(".")):
            raise SipParseError(f"bad IPv4 address {host!r} in URI {_show(whole)}")
        return
    raise SipParseError(f"bad host {_show(host)} in URI {_show(whole)}")


def _check_ipv6(address: str, whole: str) -> None:
    if not _IPV6_CHARS.fullmatch(address):
        raise SipParseError(f"bad IPv6 address {_show(address)} in URI {_show(whole)}")
    candidate = address
    if ":::" in candidate:
        # RFC 5118 §4.10 asks us to tolerate the three-colon bug ("2001:db8:::192.0.2.1").
        candidate = candidate.replace(":::", "::", 1)
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        raise SipParseError(f"bad IPv6 address {_show(address)} in URI {_show(whole)}") from None


def _comparable_host(host: str) -> str:
    """The host as compared by :meth:`SipUri.equivalent`: IPv6 references in compressed form."""
    if host.startswith("["):
        inner = host[1:-1]
        if ":::" in inner:
            inner = inner.replace(":::", "::", 1)
        try:
            return "[" + ipaddress.IPv6Address(inner).compressed + "]"
        except ValueError:
            return host
    return host


# ---------------------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------------------


@attrs.frozen
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1).

    ``user``, ``password``, parameter values and headers are unescaped. ``host`` is lower-cased; an IPv6
    reference keeps its brackets (``"[2001:db8::10]"``). ``params`` keeps every uri-parameter in order, names
    lower-cased and values as written (not lower-cased), ``None`` for a flag such as ``;lr``. Parameter names
    given to the constructor must already be lower-case.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """The first value of parameter ``name`` (any case): ``""`` for a flag, ``None`` if absent."""
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether a parameter called ``name`` (any case) is present."""
        name = name.lower()
        return any(pname == name for pname, _ in self.params)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """A copy with parameter ``name`` set to ``value`` (``None`` for a flag), replacing any present."""
        params = _replace_param(self.params, name, value)
        return SipUri(self.scheme, self.user, self.password, self.host, self.port, params, self.headers)

    def without_param(self, name: str) -> SipUri:
        """A copy without any parameter called ``name``."""
        name = name.lower()
        return attrs.evolve(self, params=tuple(p for p in self.params if p[0] != name))

    def without_headers(self) -> SipUri:
        """A copy without the ``?header=value`` part (RFC 3261 §8.1.1.1: not allowed in a Request-URI)."""
        return attrs.evolve(self, headers=())

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased (``"udp"``, ``"tcp"``, ``"tls"`` …), or ``None``."""
        value = self.param("transport")
        return None if value is None else value.lower()

    @property
    def user_param(self) -> str | None:
        """The ``user`` parameter, lower-cased (``"phone"``, ``"ip"`` …), or ``None``."""
        value = self.param("user")
        return None if value is None else value.lower()

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter, lower-cased, or ``None``."""
        value = self.param("maddr")
        return None if value is None else value.lower()

    @property
    def lr(self) -> bool:
        """Whether the ``lr`` parameter (loose routing, RFC 3261 §16.12) is present."""
        return self.has_param("lr")

    @property
    def is_secure(self) -> bool:
        """Whether this is a ``sips:`` URI."""
        return self.scheme == "sips"

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(_escape(self.user, _USER_SAFE))
            if self.password is not None:
                parts.append(":")
                parts.append(_escape(self.password, _PASSWORD_SAFE))
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        if self.params:
            parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?")
            parts.append(
                "&".join(f"{_escape(n, _HEADER_SAFE)}={_escape(v, _HEADER_SAFE)}" for n, v in self.headers)
            )
        return "".join(parts)

    def equivalent(self, other: object) -> bool:
        """URI comparison per RFC 3261 §19.1.4.

        Scheme, user, password, host and port must match (userinfo case-sensitively, an absent port never
        matches an explicit one). A uri-parameter present in both must match case-insensitively;
        ``transport``, ``user``, ``ttl``, ``method`` and ``maddr`` present in only one make the URIs differ,
        other parameters present in only one are ignored. Headers must all match (names case-insensitively,
        order ignored). IPv6 hosts compare as addresses. Components are compared unescaped, so ``%3B`` and a
        raw ``;`` in the user part compare equal (a small deviation from §19.1.4, which keeps reserved
        escapes distinct).
        """
        if not isinstance(other, SipUri):
            return False
        if (
            self.scheme != other.scheme
            or self.user != other.user
            or self.password != other.password
            or self.port != other.port
        ):
            return False
        if self.host != other.host and _comparable_host(self.host) != _comparable_host(other.host):
            return False
        mine = _param_map(self.params)
        theirs = _param_map(other.params)
        for name, value in mine.items():
            if name in theirs:
                if value.lower() != theirs[name].lower():
                    return False
            elif name in _SIGNIFICANT_PARAMS:
                return False
        if any(name in _SIGNIFICANT_PARAMS and name not in mine for name in theirs):
            return False
        return sorted((n.lower(), v) for n, v in self.headers) == sorted(
            (n.lower(), v) for n, v in other.headers
        )


def _param_map(params: Params) -> dict[str, str]:
    """First value of each parameter name, flags as ``""``."""
    out: dict[str, str] = {}
    for name, value in params:
        out.setdefault(name, "" if value is None else value)
    return out


@attrs.frozen
class TelUri:
    """A ``tel:`` URI (RFC 3966).

    ``number`` has the visual separators (``-.()``) removed and keeps the leading ``+`` of a global number:
    ``tel:+49-30-123456`` has ``number == "+4930123456"`` and ``is_global``. A local number without a
    ``phone-context`` is accepted (RFC 3966 requires one) and simply has ``is_global`` false. ``params``
    holds ``ext``, ``isub``, ``phone-context`` and any others in order, names lower-cased, values unescaped.
    ``raw`` is the text after ``tel:`` as received (``None`` when built in code); it takes no part in ``==``
    and ``str()`` never uses it — ``str()`` is always the canonical form, without separators.
    """

    number: str
    is_global: bool
    params: Params = ()
    raw: str | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def scheme(self) -> str:
        return "tel"

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (any case): ``""`` for a flag, ``None`` if absent."""
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(pname == name for pname, _ in self.params)

    def with_param(self, name: str, value: str | None = None) -> TelUri:
        return attrs.evolve(self, params=_replace_param(self.params, name, value), raw=None)

    @property
    def ext(self) -> str | None:
        return self.param("ext")

    @property
    def isub(self) -> str | None:
        return self.param("isub")

    @property
    def phone_context(self) -> str | None:
        return self.param("phone-context")

    def __str__(self) -> str:
        return f"tel:{_escape(self.number, _TEL_NUMBER_SAFE)}{_format_params(self.params)}"

    def equivalent(self, other: object) -> bool:
        """Comparison per RFC 3966 §4.

        Both global or both local; numbers equal digit by digit (separators ignored, hex digits in any case);
        the same set of parameter names (order ignored) with equal values, compared case-insensitively and,
        for ``ext`` and a numeric ``phone-context``, without visual separators.
        """
        if not isinstance(other, TelUri):
            return False
        if self.is_global != other.is_global or self.number.lower() != other.number.lower():
            return False
        mine = _tel_param_map(self.params)
        return mine == _tel_param_map(other.params)


def _tel_param_map(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params:
        text = "" if value is None else value
        if name == "ext" or (name == "phone-context" and text.startswith("+")):
            text = text.translate(_TEL_SEPARATORS)
        out.setdefault(name, text.lower())
    return out


@attrs.frozen
class AbsoluteUri:
    """A URI of any other scheme (``http:``, ``mailto:``, ``urn:``, ``soap.beep:`` …), kept opaque.

    ``scheme`` is lower-cased; ``text`` is everything after the first colon, exactly as written.
    """

    scheme: str
    text: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.text}"

    def equivalent(self, other: object) -> bool:
        """Same scheme (any case) and identical text: this module does not know the scheme's own rules."""
        return isinstance(other, AbsoluteUri) and self.scheme == other.scheme and self.text == other.text


Uri = SipUri | TelUri | AbsoluteUri


# ---------------------------------------------------------------------------------------------------------
# URI parsing.
# ---------------------------------------------------------------------------------------------------------


#: Parsed values by their exact text. The values are immutable, so sharing them is safe; the same texts
#: recur across a call's messages (From, To, Request-URI, Contact, Route) and across calls (the office's
#: own URIs, a trunk's). Bounded: emptied when full, so a flood of distinct texts cannot grow it.
_URI_CACHE: dict[str, Uri] = {}
_NAME_ADDR_CACHE: dict[str, NameAddr] = {}
_CACHE_SIZE: Final = 4096


def parse_uri(text: str) -> Uri:
    """Parse a URI as written in a Request-URI or inside ``<…>``: sip/sips, tel, or any other scheme.

    Raises :class:`SipParseError` saying what is wrong and where: LWS or ``<>`` around or inside the URI,
    a bad or missing scheme, host, port (0–65535) or ``%``-escape, a bare IPv6 address.
    """
    uri = _URI_CACHE.get(text)
    if uri is None:
        uri = _parse_uri(text)
        if len(_URI_CACHE) >= _CACHE_SIZE:
            _URI_CACHE.clear()
        _URI_CACHE[text] = uri
    return uri


def _parse_uri(text: str) -> Uri:
    if _BAD_URI_CHAR.search(text) is not None:
        if text[:1] == "<":
            raise SipParseError(f"URI must not be enclosed in <>: {_show(text)}")
        raise SipParseError(f'whitespace, control character or <>" in URI {_show(text)}')
    colon = text.find(":")
    if colon <= 0:
        raise SipParseError(f"missing scheme in URI {_show(text)}")
    scheme = text[:colon]
    if scheme == "sip" or scheme == "sips":  # the common case, skip the scheme checks
        fast = _SIP_FAST.fullmatch(text, colon + 1)
        if fast is not None:
            uri = _sip_from_match(scheme, fast, text)
            if uri is not None:
                return uri
        return _parse_sip(scheme, text[colon + 1 :], text)
    if not _SCHEME.fullmatch(scheme):
        raise SipParseError(f"bad scheme {_show(scheme)} in URI {_show(text)}")
    scheme = scheme.lower()
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, text[colon + 1 :], text)
    if scheme == "tel":
        return _parse_tel(text[colon + 1 :], text)
    rest = text[colon + 1 :]
    if not rest:
        raise SipParseError(f"empty URI after scheme {_show(scheme)}: {_show(text)}")
    return AbsoluteUri(scheme, rest)


def parse_sip_uri(text: str) -> SipUri:
    """Parse a ``sip:`` or ``sips:`` URI; any other scheme raises :class:`SipParseError`."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise SipParseError(f"expected a sip: or sips: URI, got {_show(text)}", status=416)
    return uri


def split_plain_params(text: str) -> Params:
    """``;a=b;c`` as a fast-path regex matched it (tokens only, no quotes or LWS): names lower-cased."""
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for item in text[1:].split(";"):
        name, equals, value = item.partition("=")
        out.append((name.lower(), value if equals else None))
    return tuple(out)


def _sip_from_match(scheme: str, match: re.Match[str], whole: str) -> SipUri | None:
    """The SipUri of a ``_SIP_FAST`` match, or None to leave it to the general parser (and its errors)."""
    user, host, port_text, param_text = match.groups()
    if not _HOSTNAME.fullmatch(host) and (
        not _IPV4.fullmatch(host) or any(int(octet) > 255 for octet in host.split("."))
    ):
        return None
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            return None
    return SipUri(scheme, user, None, host, port, split_plain_params(param_text), ())


def _parse_sip(scheme: str, rest: str, whole: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    # user and password cannot hold a raw '@' while they may hold ';' and '?': the first '@' ends userinfo.
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        raw_user, colon, raw_password = userinfo.partition(":")
        if not raw_user:
            raise SipParseError(f"empty user part in URI {_show(whole)}")
        user = _unescape(raw_user, "user", whole)
        if colon:
            password = _unescape(raw_password, "password", whole)

    # hostport
    if rest[:1] == "[":
        close = rest.find("]")
        if close < 0:
            raise SipParseError(f"unterminated IPv6 reference in URI {_show(whole)}")
        host = rest[: close + 1].lower()
        rest = rest[close + 1 :]
        if rest[:1] == ":":
            end = _component_end(rest)
            port_text = rest[1:end]
            rest = rest[end:]
        elif rest and rest[0] not in ";?":
            raise SipParseError(f"unexpected {rest[0]!r} after IPv6 reference in URI {_show(whole)}")
        else:
            port_text = None
    else:
        end = _component_end(rest)
        hostport = rest[:end]
        rest = rest[end:]
        host, colon, port_text_raw = hostport.partition(":")
        if colon and ":" in port_text_raw:
            raise SipParseError(f"IPv6 address must be enclosed in [] in URI {_show(whole)}")
        port_text = port_text_raw if colon else None
        host = host.lower()
    _check_host(host, whole)
    port: int | None = None
    if port_text is not None:
        if not (0 < len(port_text) <= 5 and port_text.isascii() and port_text.isdigit()):
            raise SipParseError(f"bad port {_show(port_text)} in URI {_show(whole)}")
        port = int(port_text)
        if port > 65535:
            raise SipParseError(f"bad port {port_text!r} in URI {_show(whole)}")

    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    if rest:
        param_text, question, header_text = rest.partition("?")
        if param_text:
            params = _parse_uri_params(param_text[1:], whole)  # param_text starts with ';'
        if question:
            headers = _parse_uri_headers(header_text, whole)
    return SipUri(scheme, user, password, host, port, params, headers)


def _component_end(text: str) -> int:
    """Index of the first ';' or '?' in text, or its length."""
    semi = text.find(";")
    question = text.find("?")
    if semi < 0:
        return len(text) if question < 0 else question
    return semi if question < 0 or semi < question else question


def _parse_uri_params(text: str, whole: str) -> Params:
    out: list[tuple[str, str | None]] = []
    if "%" not in text:  # the common case: nothing to unescape
        for item in text.split(";"):
            name, equals, value = item.partition("=")
            if not name:
                raise SipParseError(f"empty parameter name in URI {_show(whole)}")
            out.append((name.lower(), value if equals else None))
        return tuple(out)
    for item in text.split(";"):
        raw_name, equals, raw_value = item.partition("=")
        if not raw_name:
            raise SipParseError(f"empty parameter name in URI {_show(whole)}")
        name = _unescape(raw_name, "parameter name", whole).lower()
        out.append((name, _unescape(raw_value, "parameter value", whole) if equals else None))
    return tuple(out)


def _parse_uri_headers(text: str, whole: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in text.split("&"):
        raw_name, _, raw_value = item.partition("=")
        if not raw_name:
            raise SipParseError(f"empty header name in URI {_show(whole)}")
        # A header without '=' is taken as having an empty value (the ABNF requires the '=').
        out.append((_unescape(raw_name, "header name", whole), _unescape(raw_value, "header value", whole)))
    return tuple(out)


def _parse_tel(rest: str, whole: str) -> TelUri:
    if "?" in rest:
        raise SipParseError(f"'?' not allowed in tel URI {_show(whole)}")
    number_text, semi, param_text = rest.partition(";")
    number = _unescape(number_text, "number", whole)
    if _TEL_GLOBAL.fullmatch(number):
        is_global = True
    elif _TEL_LOCAL.fullmatch(number):
        is_global = False
    else:
        raise SipParseError(f"bad telephone number {_show(number)} in URI {_show(whole)}")
    params = _parse_uri_params(param_text, whole) if semi else ()
    return TelUri(number.translate(_TEL_SEPARATORS), is_global, params, rest)


# ---------------------------------------------------------------------------------------------------------
# Header-level scanning: comma lists, header parameters, name-addr.
# ---------------------------------------------------------------------------------------------------------


def split_comma_values(text: str) -> list[str]:
    """Split a list-valued header (Contact, Route, Via, Allow …) on its top-level commas.

    Commas inside ``"quoted strings"`` (with ``\\"`` escapes) and inside ``<…>`` do not split. LWS around
    each element is stripped and empty elements are dropped. An unterminated quoted string or ``<`` raises
    :class:`SipParseError`. Not for headers whose single value contains commas (Date, WWW-Authenticate's
    first challenge parameter list is fine: quoted commas stay together).
    """
    if '"' not in text and "<" not in text:
        return [stripped for item in text.split(",") if (stripped := item.strip(_LWS))]
    out: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            match = _QUOTED_STRING.match(text, i)
            if match is None:
                raise SipParseError(f"unterminated quoted string in {_show(text)}")
            i = match.end()
            continue
        if ch == "<":
            close = text.find(">", i + 1)
            if close < 0:
                raise SipParseError(f"unterminated '<' in {_show(text)}")
            i = close + 1
            continue
        if ch == ",":
            item = text[start:i].strip(_LWS)
            if item:
                out.append(item)
            start = i + 1
        i += 1
    item = text[start:].strip(_LWS)
    if item:
        out.append(item)
    return out


def parse_params(text: str) -> Params:
    """Parse header parameters: ``;a=b;c;d="q s"`` → ``(("a", "b"), ("c", None), ("d", '"q s"'))``.

    The leading ``;`` is optional; LWS around ``;`` and ``=`` is allowed. Names are lower-cased; values are
    kept as written, quoted strings with their quotes. An empty name (``;;`` or a trailing ``;``), a name
    that is not a token, an unterminated quoted string or stray text raises :class:`SipParseError`.
    """
    stripped = text.strip(_LWS)
    if not stripped:
        return ()
    if stripped[0] != ";":
        stripped = ";" + stripped
    return _parse_header_params(stripped, 0, text)


def _parse_header_params(text: str, pos: int, whole: str) -> Params:
    out: list[tuple[str, str | None]] = []
    n = len(text)
    while pos < n:
        match = _HEADER_PARAM.match(text, pos)
        if match is None:
            rest = text[pos:].lstrip(_LWS)
            if not rest:
                break
            if rest[0] == "=":
                if rest[1:].lstrip(_LWS)[:1] == '"':
                    raise SipParseError(f"unterminated quoted string in parameters of {_show(whole)}")
                raise SipParseError(f"missing parameter value after '=' in {_show(whole)}")
            if rest[0] != ";":
                raise SipParseError(f"unexpected {_show(rest[:20])} in parameters of {_show(whole)}")
            after = rest[1:].lstrip(_LWS)
            if not after or after[0] in ";=,":
                raise SipParseError(f"empty parameter name in {_show(whole)}")
            raise SipParseError(f"bad parameter {_show(after[:40])} in {_show(whole)}")
        name = match.group(1)
        for ch in name:
            if ch not in _TOKEN_CHARS:
                raise SipParseError(f"bad parameter name {_show(name)} in {_show(whole)}")
        out.append((name.lower(), match.group(2)))
        pos = match.end()
    return tuple(out)


def unquote_string(value: str) -> str:
    """``'"a \\"b\\""'`` → ``'a "b"'``; text that is not a quoted string comes back unchanged."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
    return value


@attrs.frozen
class NameAddr:
    """A name-addr or addr-spec (RFC 3261 §20.10, §25.1) as in From, To, Contact, Route, Record-Route.

    ``display_name`` is unquoted with quoted-pair backslashes removed (runs of LWS in an unquoted name
    become one space); ``None`` when absent, ``""`` for ``"" <sip:…>``. ``params`` are the header parameters
    after the URI (``tag``, ``expires``, ``q``, ``+sip.instance`` …), names lower-cased, values as written
    (quoted values keep their quotes; see :func:`unquote_string`). ``bracketed`` records whether the URI was
    written in ``<…>``; ``str()`` always writes the brackets.
    """

    display_name: str | None
    uri: Uri
    params: Params = ()
    bracketed: bool = True

    def param(self, name: str) -> str | None:
        """The value of header parameter ``name`` (any case): ``""`` for a flag, ``None`` if absent."""
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(pname == name for pname, _ in self.params)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """A copy with header parameter ``name`` set to ``value`` (written as given), replacing others."""
        params = _replace_param(self.params, name, value)
        return NameAddr(self.display_name, self.uri, params, self.bracketed)  # hot: not attrs.evolve

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def __str__(self) -> str:
        uri = f"<{self.uri}>"
        if self.params:
            uri += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self.params)
        name = self.display_name
        if name is None:
            return uri
        if _TOKEN_WORDS.fullmatch(name):
            return f"{name} {uri}"
        # CR and LF cannot be written even as quoted-pairs: they become spaces (no header injection).
        name = name.replace("\r", " ").replace("\n", " ")
        name = _DISPLAY_ESCAPE.sub(lambda m: "\\" + m.group(0), name)
        return f'"{name}" {uri}'


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr (``"Alice" <sip:a@x>;tag=1``) or addr-spec (``sip:a@x;tag=1``).

    * In the addr-spec form the first ``;`` ends the URI and everything after it is header parameters
      (RFC 3261 §20.10; RFC 4475 cparam01). A URI holding ``?`` or ``,`` must be bracketed (regbadct).
    * A quoted display name may touch the ``<`` (RFC 4475 lwsdisp); an unterminated quote raises (quotbal).
    * An unquoted display name must be tokens and LWS (characters beyond ASCII are tolerated): ``Bell,
      Alexander <sip:…>`` raises :class:`SipParseError` (RFC 4475 baddn) rather than being guessed at.
    * LWS just inside the brackets is tolerated; inside the URI it is not.
    The Contact wildcard ``*`` is not a name-addr and raises; callers handle it first.
    """
    cached = _NAME_ADDR_CACHE.get(text)
    if cached is not None:
        return cached
    value = _parse_name_addr(text)
    if len(_NAME_ADDR_CACHE) >= _CACHE_SIZE:
        _NAME_ADDR_CACHE.clear()
    _NAME_ADDR_CACHE[text] = value
    return value


def _parse_name_addr(text: str) -> NameAddr:
    fast = _NAME_ADDR_FAST.fullmatch(text)
    if fast is not None:
        quoted, unquoted, uri_text, param_text = fast.groups()
        display = quoted if quoted is not None else unquoted
        return NameAddr(display, parse_uri(uri_text), split_plain_params(param_text), True)
    return _parse_name_addr_general(text)


def _parse_name_addr_general(text: str) -> NameAddr:
    value = text.strip(_LWS)
    if not value:
        raise SipParseError("empty name-addr")
    display_name: str | None = None
    if value[0] == '"':
        match = _QUOTED_STRING.match(value)
        if match is None:
            raise SipParseError(f"unterminated quoted display name in {_show(text)}")
        inner = match.group(1)
        display_name = _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
        lt = match.end()
        while lt < len(value) and value[lt] in _LWS:
            lt += 1
        if lt >= len(value) or value[lt] != "<":
            raise SipParseError(f"expected '<' after quoted display name in {_show(text)}")
    else:
        lt = value.find("<")
        if lt < 0:
            return _parse_addr_spec(value, text)
        prefix = value[:lt]
        if not _UNQUOTED_DISPLAY.fullmatch(prefix):
            raise SipParseError(
                f"display name {_show(prefix.strip(_LWS))} has characters that need quoting in {_show(text)}"
            )
        prefix = prefix.strip(_LWS)
        if prefix:
            display_name = _LWS_RUN.sub(" ", prefix)
    gt = value.find(">", lt + 1)
    if gt < 0:
        raise SipParseError(f"missing '>' in {_show(text)}")
    uri = parse_uri(value[lt + 1 : gt].strip(_LWS))
    params = _parse_header_params(value, gt + 1, text)
    return NameAddr(display_name, uri, params, True)


def _parse_addr_spec(value: str, text: str) -> NameAddr:
    semi = value.find(";")
    uri_text = value if semi < 0 else value[:semi].rstrip(_LWS)
    if "?" in uri_text or "," in uri_text:
        raise SipParseError(f"a URI with '?' or ',' must be enclosed in <> in {_show(text)}")
    uri = parse_uri(uri_text)
    params = _parse_header_params(value, semi, text) if semi >= 0 else ()
    return NameAddr(None, uri, params, False)
