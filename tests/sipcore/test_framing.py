"""StreamFramer: cutting a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3), with RFC 5626
§4.4.1 CRLF keep-alives; and the property that chunking never changes what comes out."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.sipcore import (
    FramedMessage,
    KeepAlivePing,
    KeepAlivePong,
    Limits,
    Request,
    SipParseError,
    StreamFramer,
    parse_message,
)


def message(
    body: bytes = b"", *, length: str | None = None, method: str = "OPTIONS", extra: str = ""
) -> bytes:
    """An OPTIONS request (or another method) with ``body`` and Content-Length ``length`` (default: right)."""
    head = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.example.com:5060;branch=z9hG4bK74bf9\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=9fxced76sl\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: 3848276298220188511@example.com\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
    )
    if length is None:
        length = str(len(body))
    if length != "":
        head += f"Content-Length: {length}\r\n"
    return head.encode() + b"\r\n" + body


SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    return events


# ------------------------------------------------------------------------------------------ keep-alives


def test_double_crlf_is_a_ping() -> None:
    assert StreamFramer().feed(b"\r\n\r\n") == [KeepAlivePing()]


def test_single_crlf_waits_then_becomes_a_pong_when_a_message_follows() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []  # could still become a ping
    assert framer.buffered == 2
    assert framer.feed(message()) == [KeepAlivePong(), FramedMessage(message())]
    assert framer.buffered == 0


def test_crlf_split_in_two_is_still_a_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r") == []
    assert framer.feed(b"\n") == [KeepAlivePing()]


def test_pings_and_pongs_between_messages() -> None:
    data = b"\r\n\r\n" + message() + b"\r\n" + message(SDP) + b"\r\n\r\n"
    assert StreamFramer().feed(data) == [
        KeepAlivePing(),
        FramedMessage(message()),
        KeepAlivePong(),
        FramedMessage(message(SDP)),
        KeepAlivePing(),
    ]


# -------------------------------------------------------------------------------------------- messages


def test_several_messages_in_one_chunk() -> None:
    msgs = [message(), message(SDP, method="INVITE"), message(b"hello", method="MESSAGE")]
    events = StreamFramer().feed(b"".join(msgs))
    assert events == [FramedMessage(m) for m in msgs]
    parsed = [parse_message(e.data, stream=True) for e in events if isinstance(e, FramedMessage)]
    assert [p.method for p in parsed if isinstance(p, Request)] == ["OPTIONS", "INVITE", "MESSAGE"]
    assert parsed[1].body == SDP


def test_one_message_byte_by_byte() -> None:
    data = message(SDP, method="INVITE")
    framer = StreamFramer()
    for i in range(len(data) - 1):
        assert framer.feed(data[i : i + 1]) == []
    assert framer.buffered == len(data) - 1
    assert framer.feed(data[-1:]) == [FramedMessage(data)]
    assert framer.buffered == 0


def test_partial_message_is_kept_until_complete() -> None:
    first, second = message(SDP), message(b"xyz")
    stream = first + second
    framer = StreamFramer()
    assert framer.feed(stream[: len(first) + 10]) == [FramedMessage(first)]
    assert framer.buffered == 10
    assert framer.feed(stream[len(first) + 10 :]) == [FramedMessage(second)]


def test_body_holding_an_empty_line_and_a_content_length_is_framed_by_the_header() -> None:
    body = b"line\r\n\r\nContent-Length: 999\r\n\r\n"
    assert StreamFramer().feed(message(body) + message()) == [
        FramedMessage(message(body)),
        FramedMessage(message()),
    ]


@pytest.mark.parametrize(
    "name", ["Content-Length", "content-length", "CONTENT-LENGTH", "l", "L", "Content-Length "]
)
def test_content_length_spellings(name: str) -> None:
    data = message(length="").replace(b"CSeq: 1 OPTIONS\r\n", f"CSeq: 1 OPTIONS\r\n{name}: 3\r\n".encode())
    data += b"abc"
    assert StreamFramer().feed(data + message()) == [FramedMessage(data), FramedMessage(message())]


def test_repeated_equal_content_length_is_accepted() -> None:
    data = message(b"ab", extra="l: 2\r\n")
    assert StreamFramer().feed(data) == [FramedMessage(data)]


def test_zero_length_body() -> None:
    assert StreamFramer().feed(message(length="0")) == [FramedMessage(message())]


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (message(length=""), "without Content-Length"),
        (message(b"x", length="-1"), "bad Content-Length"),
        (message(b"x", length="+1"), "bad Content-Length"),
        (message(b"x", length="1x"), "bad Content-Length"),
        (message(b"x", length="0x1"), "bad Content-Length"),
        (message(b"xy", extra="Content-Length: 1\r\n"), "conflicting Content-Length"),
        (message(b"xy", extra="l: 3\r\n"), "conflicting Content-Length"),
    ],
)
def test_framing_errors(data: bytes, why: str) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError, match=why):
        framer.feed(data)


def test_a_failed_stream_stays_failed() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(message(length="-5"))
    with pytest.raises(SipParseError, match="Content-Length"):
        framer.feed(message())  # the same error again: the stream position is lost for good
    assert framer.failed


def test_message_over_the_size_limit() -> None:
    limits = Limits(max_message_bytes=1000)
    framer = StreamFramer(limits)
    with pytest.raises(SipParseError, match="exceeds") as info:
        framer.feed(message(b"x" * 1000))
    assert info.value.status == 513


def test_over_limit_is_detected_from_the_header_before_the_body_arrives() -> None:
    framer = StreamFramer(Limits(max_message_bytes=1000))
    head = message(b"x" * 5000)[:-5000]
    with pytest.raises(SipParseError, match="exceeds"):
        framer.feed(head)


def test_header_section_without_end_over_the_limit() -> None:
    framer = StreamFramer(Limits(max_header_bytes=500))
    assert framer.feed(message()[:-2]) == []  # no empty line yet, under the limit: wait
    with pytest.raises(SipParseError, match="no end of headers"):
        framer.feed(b"X-Filler: " + b"a" * 600 + b"\r\n")


def test_stream_buffer_limit() -> None:
    limits = Limits(max_message_bytes=100_000, max_body_bytes=100_000, max_stream_buffer=2_000)
    framer = StreamFramer(limits)
    data = message(b"x" * 10_000)
    with pytest.raises(SipParseError, match="buffer limit"):
        framer.feed(data[:5_000])


def test_messages_before_a_framing_error_are_delivered_whatever_the_chunking() -> None:
    bad = message(b"x", length="-1")
    one_chunk = StreamFramer()
    delivered: list[object] = []
    with contextlib.suppress(SipParseError):
        delivered += one_chunk.feed(message() + bad)
    assert delivered == [FramedMessage(message())]


# -------------------------------------------------------------------------------------------- property

bodies = st.one_of(st.just(b""), st.just(SDP), st.binary(max_size=80))
items = st.one_of(
    st.builds(lambda body, method: FramedMessage(message(body, method=method)), bodies,
              st.sampled_from(["OPTIONS", "INVITE", "BYE", "MESSAGE"])),
    st.just(KeepAlivePing()),
    st.just(KeepAlivePong()),
)  # fmt: skip


def _wire(event: object) -> bytes:
    if isinstance(event, FramedMessage):
        return event.data
    return b"\r\n\r\n" if isinstance(event, KeepAlivePing) else b"\r\n"


def _valid_stream(events: list[object]) -> bool:
    """A pong right before a ping, or a ping/pong pair read the other way round, would be ambiguous."""
    return not any(
        not isinstance(a, FramedMessage) and not isinstance(b, FramedMessage)
        for a, b in itertools.pairwise(events)
    )


@settings(max_examples=250, deadline=None)
@given(
    st.lists(items, min_size=1, max_size=8).filter(_valid_stream),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_chunking_yields_the_same_events(events: list[object], cut_seeds: list[int]) -> None:
    stream = b"".join(_wire(e) for e in events)
    cuts = sorted({seed % (len(stream) + 1) for seed in cut_seeds})
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    trailing_pong = isinstance(events[-1], KeepAlivePong)
    expected = events[:-1] if trailing_pong else events  # a final lone CRLF waits: it may become a ping
    assert feed_all(StreamFramer(), [stream]) == expected
    assert feed_all(StreamFramer(), chunks) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(items, min_size=1, max_size=5).filter(_valid_stream))
def test_byte_by_byte_yields_the_same_events(events: list[object]) -> None:
    stream = b"".join(_wire(e) for e in events)
    expected = events[:-1] if isinstance(events[-1], KeepAlivePong) else events
    assert feed_all(StreamFramer(), [stream[i : i + 1] for i in range(len(stream))]) == expected
