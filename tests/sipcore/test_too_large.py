"""Requests too large to take are answered 513 Message Too Large (RFC 3261 §21.5.11) when the part that fits
names the request (start line, Via, From, To, Call-ID, CSeq): in the parser, the stream framer, and on the
wire over UDP (never a reply bigger than the datagram) and TCP (answered, then the connection closes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.sipcore import Endpoint, Limits, Response, SipParseError, StreamFramer, parse_message
from durchwahl.sipcore.message import error_response, salvage_request_headers

HEAD = (
    "OPTIONS sip:101@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} 192.0.2.99:5060;branch=z9hG4bKbig1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:caller@example.com>;tag=from1\r\n"
    "To: <sip:101@127.0.0.1>\r\n"
    "Call-ID: too-large-1@example.com\r\n"
    "CSeq: 7 OPTIONS\r\n"
)


def big_request(
    *, filler: int = 0, body: int = 0, transport: str = "UDP", length: int | None = None, end: bool = True
) -> bytes:
    """An OPTIONS with ``filler`` octets of an X- header after the headers that matter, ``body`` octets."""
    text = HEAD.format(transport=transport)
    if filler:
        text += "X-Filler: " + "a" * filler + "\r\n"
    text += f"Content-Length: {body if length is None else length}\r\n"
    data = text.encode() + (b"\r\n" if end else b"")
    return data + b"b" * body if end else data


def assert_answerable(error: SipParseError) -> Response:
    assert error.status == 513
    response = error_response(error, to_tag="t1")
    assert response is not None
    reply = parse_message(bytes(response))
    assert isinstance(reply, Response) and reply.status == 513
    assert reply.call_id == "too-large-1@example.com" and reply.cseq.seq == 7 and reply.to.tag == "t1"
    assert reply.via[0].branch == "z9hG4bKbig1"
    return reply


# ---------------------------------------------------------------------------------------------- parser


def test_a_datagram_over_the_message_limit_is_answerable() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(big_request(body=3000), Limits(max_message_bytes=2000, max_body_bytes=10_000))
    assert_answerable(info.value)


def test_a_header_section_over_its_limit_is_answerable_from_the_part_that_fits() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(big_request(filler=40_000))  # the header section exceeds 32,768 octets
    assert "header section" in str(info.value)
    assert_answerable(info.value)


def test_when_the_needed_headers_lie_beyond_the_limit_there_is_no_answer() -> None:
    data = HEAD.format(transport="UDP").replace("Call-ID", "X-Filler: " + "a" * 40_000 + "\r\nCall-ID")
    with pytest.raises(SipParseError) as info:
        parse_message((data + "Content-Length: 0\r\n\r\n").encode())
    assert info.value.status == 513 and error_response(info.value) is None


def test_an_oversized_response_is_not_answered() -> None:
    data = b"SIP/2.0 200 OK\r\n" + big_request(filler=40_000).split(b"\r\n", 1)[1]
    assert salvage_request_headers(data) is None


def test_salvage_takes_complete_lines_only_and_compact_forms() -> None:
    data = (
        b"\r\nINVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\n"
        b"t: <sip:a@b>\r\ni: abc\r\nCSeq: 1\r\n INVITE\r\nX: y\r\nContact: <sip:x@cut-her"
    )
    headers = salvage_request_headers(data, Limits(max_header_bytes=len(data)))
    assert headers is not None
    assert [(h.name, h.value) for h in headers] == [
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
        ("From", "<sip:x@y>;tag=1"),
        ("To", "<sip:a@b>"),
        ("Call-ID", "abc"),
        ("CSeq", "1 INVITE"),  # a folded line joins its header
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=700))
def test_salvage_never_fails_and_its_answer_parses(data: bytes, limit: int) -> None:
    headers = salvage_request_headers(big_request()[:40] + data, Limits(max_header_bytes=limit))
    if headers is None:
        return
    assert {h.name for h in headers} == {"Via", "From", "To", "Call-ID", "CSeq"}
    response = error_response(SipParseError("too large", status=513, request_headers=headers))
    assert response is not None
    with contextlib.suppress(SipParseError):  # copied raw: a header may be malformed, never the framing
        parse_message(bytes(response))


# ---------------------------------------------------------------------------------------------- framer


def test_the_framer_reports_a_started_message() -> None:
    framer = StreamFramer()
    assert not framer.in_message
    assert framer.feed(b"\r\n") == [] and not framer.in_message  # may still become a keep-alive
    request = big_request(transport="TCP")
    framer.feed(request[:30])
    assert framer.in_message
    framer.feed(request[30:])
    assert not framer.in_message and framer.error is None


def test_the_framer_salvages_a_request_whose_content_length_is_too_large() -> None:
    framer = StreamFramer(Limits(max_message_bytes=2000))
    with pytest.raises(SipParseError) as info:
        framer.feed(big_request(transport="TCP", length=5000, body=0))
    assert_answerable(info.value)
    assert framer.error is info.value


def test_the_framer_salvages_a_header_section_that_never_ends() -> None:
    framer = StreamFramer(Limits(max_header_bytes=600))
    with pytest.raises(SipParseError) as info:
        framer.feed(big_request(transport="TCP", filler=800, end=False))
    assert "no end of headers" in str(info.value)
    assert_answerable(info.value)


# ------------------------------------------------------------------------------------------- on the wire


@contextlib.asynccontextmanager
async def endpoint(spec: str, limits: Limits | None = None) -> AsyncIterator[int]:
    ep = Endpoint(None, limits=limits or Limits())
    _, port = await ep.listen(spec)
    try:
        yield port
    finally:
        await ep.close()


async def test_udp_oversized_header_section_gets_a_smaller_513() -> None:
    data = big_request(filler=40_000)
    async with endpoint("udp:127.0.0.1:0") as port:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.sendto(data, ("127.0.0.1", port))
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
    response = parse_message(reply)
    assert isinstance(response, Response) and response.status == 513
    assert response.call_id == "too-large-1@example.com"
    assert len(reply) < len(data) // 10


async def test_udp_datagram_over_the_message_limit_gets_513() -> None:
    data = big_request(body=3000)
    async with endpoint("udp:127.0.0.1:0", Limits(max_message_bytes=2000)) as port:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.sendto(data, ("127.0.0.1", port))
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
    response = parse_message(reply)
    assert isinstance(response, Response) and response.status == 513 and response.cseq.seq == 7


async def test_udp_513_is_never_bigger_than_the_datagram() -> None:
    """A datagram just over the header limit, made of little but the headers a reply copies: a 513 would be
    bigger than what it answers (an amplifier for a forged source), so none is sent."""
    data = HEAD.format(transport="UDP").replace("Max-Forwards: 70\r\n", "").encode() + b"X: y\r\n\r\n"
    limits = Limits(max_header_bytes=len(data) - 8)  # the last line, "X: y", is cut off
    with pytest.raises(SipParseError) as info:
        parse_message(data, limits)
    response = error_response(info.value, to_tag="0123456789ab")
    assert response is not None and len(bytes(response)) >= len(data)  # it could be answered, but bigger
    async with endpoint("udp:127.0.0.1:0", limits) as port:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.sendto(data, ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_recv(sock, 65535), 0.5)


@pytest.mark.parametrize(
    ("request_bytes", "limits"),
    [
        (big_request(transport="TCP", length=100_000), Limits()),  # Content-Length over 65,535
        (big_request(transport="TCP", filler=40_000, end=False), Limits()),  # headers that never end
    ],
    ids=["content-length", "endless-headers"],
)
async def test_tcp_request_too_large_gets_513_then_the_connection_closes(
    request_bytes: bytes, limits: Limits
) -> None:
    async with endpoint("tcp:127.0.0.1:0", limits) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3.0)  # everything up to the close
        writer.close()
    response = parse_message(answer, stream=True)
    assert isinstance(response, Response) and response.status == 513
    assert response.call_id == "too-large-1@example.com"


async def test_tcp_complete_request_before_a_too_large_one_is_answered_too() -> None:
    ok = big_request(transport="TCP").replace(b"CSeq: 7", b"CSeq: 6")
    async with endpoint("tcp:127.0.0.1:0") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ok + big_request(transport="TCP", length=100_000))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 3.0)
        writer.close()
    first_end = answer.index(b"\r\n\r\n") + 4
    first, second = (
        parse_message(answer[:first_end], stream=True),
        parse_message(answer[first_end:], stream=True),
    )
    assert isinstance(first, Response) and (first.status, first.cseq.seq) == (200, 6)
    assert isinstance(second, Response) and (second.status, second.cseq.seq) == (513, 7)
