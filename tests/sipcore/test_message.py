"""Golden tests for the message layer: parsing, typed headers, serialisation, responses, core checks."""

from __future__ import annotations

import pytest

from durchwahl.sipcore import Request, Response, SipParseError, make_response, parse_message
from durchwahl.sipcore.core import CoreConfig, check_request
from durchwahl.sipcore.headers import canonical_name, header_key, parse_auth, parse_via
from durchwahl.sipcore.message import error_response

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"X-Custom: keep  me ; as-is\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_parse_request_fields() -> None:
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert str(m.uri) == "sip:bob@biloxi.example.com"
    assert m.via[0].branch == "z9hG4bKnashds8"
    assert m.via[0].rport_requested and m.via[0].rport is None
    assert m.to.display_name == "Bob" and m.to.tag is None
    assert m.from_.tag == "1928301774"
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq.seq, m.cseq.method) == (314159, "INVITE")
    assert m.max_forwards == 70
    assert m.content_type is not None and m.content_type.mime == "application/sdp"
    assert m.body == b"v=0\n"
    assert m.get("x-custom") == "keep  me ; as-is"
    assert not m.has("content-length")  # the body length is the truth


def test_serialise_keeps_unknown_headers_in_order_and_sets_content_length() -> None:
    m = parse_message(INVITE)
    data = bytes(m)
    assert data.endswith(b"Content-Length: 4\r\n\r\nv=0\n")
    assert b"X-Custom: keep  me ; as-is\r\n" in data
    assert parse_message(data) == m


def test_compact_forms_and_case() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\n"
        b"t: sip:a@b\r\ni: cid\r\nCSEQ: 1 OPTIONS\r\nl: 0\r\nk: path, gruu\r\n\r\n"
    )
    m = parse_message(data)
    assert m.call_id == "cid"
    assert m.supported == ("path", "gruu")
    assert m.get("Supported") == "path, gruu"
    assert header_key("K") == "supported" and canonical_name("i") == "Call-ID"


def test_datagram_without_content_length_takes_the_rest() -> None:
    m = parse_message(INVITE.replace(b"Content-Length: 4\r\n", b""))
    assert m.body == b"v=0\n"


def test_stream_requires_content_length() -> None:
    with pytest.raises(SipParseError, match="Content-Length"):
        parse_message(INVITE.replace(b"Content-Length: 4\r\n", b""), stream=True)


@pytest.mark.parametrize(
    ("mutation", "status", "fragment"),
    [
        ((b"SIP/2.0\r\n", b"SIP/3.0\r\n"), 505, "version"),
        ((b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), 400, "CSeq method"),
        ((b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", b""), 400, "missing Call-ID"),
        ((b"Max-Forwards: 70", b"Max-Forwards: 256"), 400, "Max-Forwards"),
        ((b"Content-Length: 4", b"Content-Length: 40"), 400, "Content-Length"),
    ],
)
def test_request_errors_are_answerable(mutation: tuple[bytes, bytes], status: int, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE.replace(*mutation))
    assert info.value.status == status
    assert fragment.lower() in str(info.value).lower()
    response = error_response(info.value, to_tag="t1")
    assert response is not None and response.status == status
    assert fragment.lower() in response.reason.lower()
    assert response.get("Via") is not None
    if "missing" not in fragment:  # an answer to a request without Call-ID lacks one too
        parsed = parse_message(bytes(response))
        assert isinstance(parsed, Response) and parsed.status == status


def test_response_errors_are_not_answerable() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
    assert error_response(info.value) is None


def test_make_response_copies_and_tags() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    response = make_response(request, 180, to_tag="abc")
    assert response.reason == "Ringing"
    assert response.to.tag == "abc"
    assert [h.name for h in response.headers] == ["Via", "To", "From", "Call-ID", "CSeq"]
    trying = make_response(request, 100, to_tag="abc")
    assert trying.to.tag is None


def test_via_parsing() -> None:
    via = parse_via("SIP / 2.0 / udp [2001:db8::1]:5062 ; branch=z9hG4bKx ; received=192.0.2.1;rport=7")
    assert (via.transport, via.host, via.port) == ("UDP", "[2001:db8::1]", 5062)
    assert via.received == "192.0.2.1" and via.rport == 7
    assert str(via.with_param("rport", "9")) == (
        "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKx;received=192.0.2.1;rport=9"
    )
    with pytest.raises(SipParseError):
        parse_via("SIP/2.0/UDP host;;branch=x")
    with pytest.raises(SipParseError):
        parse_via("SIP/2.0/UDP host:99999")


def test_auth_header_parsing() -> None:
    auth = parse_auth(
        'Digest username="101", realm="office.example", nonce="a,b", uri="sip:office.example", '
        'response="0123", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="xyz"'
    )
    assert auth.scheme == "Digest"
    assert auth.param("nonce") == "a,b"
    assert auth.param("ALGORITHM") == "SHA-256"
    assert parse_auth(str(auth)) == auth


@pytest.mark.parametrize(
    ("mutation", "status"),
    [
        ((b"INVITE sip:bob@biloxi.example.com", b"INVITE tel:+4930123"), None),
        ((b"INVITE sip:bob@biloxi.example.com", b"INVITE http://example.com/"), 416),
        ((b"Max-Forwards: 70", b"Max-Forwards: 0"), 483),
        ((b"Content-Type: application/sdp", b"Content-Type: text/plain"), 415),
        ((b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159 INVITE\r\nRequire: 100rel, foo\r\n"), 420),
        ((b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159 INVITE\r\nAccept: text/plain\r\n"), 406),
    ],
)
def test_core_checks(mutation: tuple[bytes, bytes], status: int | None) -> None:
    request = parse_message(INVITE.replace(*mutation))
    assert isinstance(request, Request)
    response = check_request(request)
    assert (response.status if response else None) == status
    if status == 420:
        assert response is not None and response.get("Unsupported") == "100rel, foo"


def test_core_checks_methods() -> None:
    config = CoreConfig(allowed_methods=("INVITE", "ACK", "OPTIONS"))
    bye = parse_message(INVITE.replace(b"INVITE sip", b"BYE sip").replace(b"314159 INVITE", b"314159 BYE"))
    unknown = parse_message(
        INVITE.replace(b"INVITE sip", b"FOO sip").replace(b"314159 INVITE", b"314159 FOO")
    )
    assert isinstance(bye, Request) and isinstance(unknown, Request)
    r405, r501 = check_request(bye, config), check_request(unknown, config)
    assert r405 is not None and r405.status == 405 and r405.get("Allow") == "INVITE, ACK, OPTIONS"
    assert r501 is not None and r501.status == 501 and r501.get("Allow") == "INVITE, ACK, OPTIONS"
