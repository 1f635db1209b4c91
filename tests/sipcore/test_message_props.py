"""Property tests for SIP messages: round trip through bytes, and no crash on any input.

* A realistic request or response (methods, sip/sips/tel URIs, the core headers, random extra headers with
  token names and safe values, a body) survives ``parse_message(bytes(m)) == m``.
* Arbitrary bytes, and torture messages (RFC 4475/5118) mutated at random, make ``parse_message`` return a
  message or raise ``SipParseError`` — nothing else; the typed accessors of whatever parsed raise only
  ``SipParseError`` too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torture import CORPUS

from durchwahl.sipcore import Request, Response, SipParseError, SipUri, TelUri, parse_message
from durchwahl.sipcore.headers import Header, header_key
from durchwahl.sipcore.message import TYPED_ACCESSORS as ACCESSORS

TORTURE_DIR = CORPUS  # ../shared/sip-torture beside the checkout (tests/sipcore/torture.py)
TORTURE = sorted(TORTURE_DIR.rglob("*.dat"))

PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ strategies

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = st.text(LOWER_ALNUM + "-_", min_size=1, max_size=10)

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "REFER", "NOTIFY")
methods = st.one_of(st.sampled_from(METHODS), st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10))

labels = st.text(LOWER_ALNUM, min_size=1, max_size=8)
hostnames = st.builds(
    lambda parts, top: ".".join([*parts, top]),
    st.lists(labels, max_size=3),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6),
)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.sampled_from(["[2001:db8::10]", "[::1]", "[2001:db8:0:0:1:0:0:1]", "[::ffff:192.0.2.1]"])
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))

# User parts: mostly plain, sometimes with characters that must be %-escaped on the wire.
users = st.one_of(
    st.text(ALNUM + "-_.+", min_size=1, max_size=12),
    st.text(ALNUM + "-_.!~*'()&=+$,;?/ %@:#äß€", min_size=1, max_size=12),
)
uri_params = st.lists(
    st.tuples(lower_tokens, st.one_of(st.none(), st.text(ALNUM + "-_.", min_size=1, max_size=8))), max_size=3
).map(tuple)

sip_uris = st.builds(
    SipUri,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.one_of(st.none(), users),
    password=st.none(),
    host=hosts,
    port=ports,
    params=uri_params,
)
tel_uris = st.builds(
    lambda digits: TelUri("+" + digits, True), st.text("0123456789", min_size=3, max_size=15)
)
request_uris = st.one_of(sip_uris, sip_uris, sip_uris, tel_uris)

display_names = st.one_of(
    st.none(),
    st.text(ALNUM + " ", min_size=1, max_size=16).map(str.strip).filter(bool),
    st.text(ALNUM + " ,;:<>@\\\"'äé", min_size=1, max_size=16),
)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name_addr(name: str | None, uri: SipUri | TelUri, tag: str | None) -> str:
    value = f"<{uri}>" if name is None else f"{_quote(name)} <{uri}>"
    return value if tag is None else f"{value};tag={tag}"


def name_addrs(with_tag: bool | None = None) -> st.SearchStrategy[str]:
    tag = st.none() if with_tag is False else tokens if with_tag else st.one_of(st.none(), tokens)
    return st.builds(_name_addr, display_names, request_uris, tag)


transports = st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"])
vias = st.builds(
    lambda transport, host, port, branch, extra: (
        f"SIP/2.0/{transport} {host}{'' if port is None else f':{port}'};branch=z9hG4bK{branch}{extra}"
    ),
    transports,
    hosts,
    ports,
    st.text(ALNUM, min_size=1, max_size=16),
    st.sampled_from(["", ";rport", ";rport=5060;received=192.0.2.1", ";alias", ";ttl=16"]),
)

# Header names the message layer treats specially (validated at parse time or dropped): never "extra".
_RESERVED = {"via", "from", "to", "call-id", "cseq", "max-forwards", "content-length"}
extra_names = tokens.filter(lambda name: header_key(name) not in _RESERVED)
# Safe values: printable ASCII and some UTF-8, no CR/LF, no leading/trailing SP/HTAB (they are trimmed).
safe_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("äöü€—"), max_size=40
).map(lambda s: s.strip(" \t"))
extra_headers = st.lists(st.builds(Header, extra_names, safe_values), max_size=6)

bodies = st.one_of(
    st.just(b""), st.binary(max_size=300), st.just(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n")
)


@st.composite
def core_headers(draw: st.DrawFn, method: str) -> list[Header]:
    headers = [Header("Via", draw(vias)) for _ in range(draw(st.integers(1, 3)))]
    headers.append(Header("Max-Forwards", str(draw(st.integers(0, 255)))))
    headers.append(Header("From", draw(name_addrs(with_tag=True))))
    headers.append(Header("To", draw(name_addrs())))
    headers.append(Header("Call-ID", draw(tokens) + draw(st.sampled_from(["", "@host.example.com"]))))
    headers.append(Header("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"))
    for name in draw(st.lists(st.sampled_from(["Contact", "Route", "Record-Route"]), max_size=3)):
        headers.append(Header(name, draw(name_addrs(with_tag=False))))
    return headers


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(methods)
    headers = draw(core_headers(method)) + draw(extra_headers)
    headers = draw(st.permutations(headers))
    body = draw(bodies)
    if body:
        headers.append(Header("Content-Type", "application/sdp"))
    return Request(method, draw(request_uris), tuple(headers), body)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(methods)
    headers = draw(st.permutations(draw(core_headers(method)) + draw(extra_headers)))
    reason = draw(safe_values)
    return Response(draw(st.integers(100, 699)), reason, tuple(headers), draw(bodies))


messages = st.one_of(requests(), responses())


# ------------------------------------------------------------------------------------------- round trip


@PROPS
@given(messages, st.sampled_from(["Content-Length", "content-length", "l", "CONTENT-LENGTH"]))
def test_round_trip(message: Request | Response, length_name: str) -> None:
    wire = bytes(message)
    parsed = parse_message(wire)
    assert parsed == message
    assert bytes(parsed) == wire
    # The same bytes framed from a stream.
    assert parse_message(wire, stream=True) == message
    # A received Content-Length (any spelling) frames the body and is dropped: the body length is the truth.
    head, _, _ = wire.partition(b"\r\nContent-Length: ")
    wire = head + f"\r\n{length_name}: {len(message.body)}\r\n\r\n".encode() + message.body + b"trailing junk"
    parsed = parse_message(wire)
    assert parsed == message
    assert not parsed.has("content-length")


def test_core_header_accessors_of_a_generated_request() -> None:
    request = Request(
        "INVITE",
        SipUri("sip", "bob", None, "example.com"),
        (
            Header("Via", "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKabc"),
            Header("From", '"A" <sip:a@example.com>;tag=1'),
            Header("To", "<sip:bob@example.com>"),
            Header("Call-ID", "x@y"),
            Header("CSeq", "1 INVITE"),
        ),
    )
    parsed = parse_message(bytes(request))
    assert parsed == request
    assert parsed.via[0].branch == "z9hG4bKabc"
    assert parsed.from_.tag == "1"
    assert parsed.cseq.seq == 1


# ---------------------------------------------------------------------------------------- robustness


def parse_or_none(data: bytes) -> Request | Response | None:
    """parse_message may only return a message or raise SipParseError (anything else fails the test)."""
    try:
        return parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 699
        str(exc)
        return None


def touch_accessors(message: Request | Response) -> None:
    for name in ACCESSORS:
        try:
            value = getattr(message, name)
        except SipParseError:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            str(item)
    for name in ("via", "contact", "route", "record-route", "allow"):
        with contextlib.suppress(SipParseError):
            message.values(name)
    str(message)


@PROPS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        touch_accessors(message)


_START = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
_CORE = b"From: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"


LAZY_HEADERS = (
    "Contact",
    "Route",
    "Record-Route",
    "Content-Type",
    "Expires",
    "Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Require",
    "Supported",
    "Allow",
    "Max-Forwards",
    "Via",
)


@PROPS
@given(st.lists(st.tuples(st.sampled_from(LAZY_HEADERS), st.binary(max_size=60)), min_size=1, max_size=4))
def test_accessors_on_random_header_values(fields: list[tuple[str, bytes]]) -> None:
    """A valid request whose lazily parsed headers hold random octets: accessors raise only SipParseError."""
    extra = b"".join(
        name.encode() + b": " + value.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
        for name, value in fields
    )
    message = parse_or_none(_START + _CORE + extra + b"\r\n")
    if message is not None:
        touch_accessors(message)


@st.composite
def mutated_torture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TORTURE)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "duplicate-line", "drop-line"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=4),
                    st.sampled_from([b"\r\n", b"\r\n ", b";", b",", b"<", b">", b'"', b"%", b"\\", b":"]),
                )
            )
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            lines = bytes(data).split(b"\r\n")
            index = draw(st.integers(0, len(lines) - 1))
            if kind == "duplicate-line":
                lines.insert(index, lines[index])
            else:
                del lines[index]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


@PROPS
@given(mutated_torture())
def test_mutated_torture_messages_raise_only_sip_parse_error(data: bytes) -> None:
    message = parse_or_none(data)
    if message is not None:
        touch_accessors(message)
        # What parsed must serialise to something that parses to the same message.
        assert parse_message(bytes(message)) == message


@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_torture_messages_parse_or_fail_cleanly(path: Path) -> None:
    message = parse_or_none(path.read_bytes())
    if message is not None:
        touch_accessors(message)
        assert parse_message(bytes(message)) == message


def test_the_torture_corpus_is_there() -> None:
    """The corpus-based properties above must never pass on an empty corpus."""
    assert len(TORTURE) == 62, f"expected the 62 torture messages under {TORTURE_DIR}"
