"""RTP packets (RFC 3550 §5.1), the sender's sequencing, and RTP/RTCP demultiplexing (RFC 5761)."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.media.errors import MediaError, RtpError
from durchwahl.media.rtp import RtpHeaderExtension, RtpPacket, RtpSender, is_rtcp, parse

# A hand-assembled packet: V=2, P=1, X=1, CC=2, M=1, PT=101, seq 0x1234, ts 0x01020304, SSRC 0xCAFEBABE,
# CSRCs 1 and 2, extension profile 0xBEDE with one word, payload "abc", 3 octets of padding.
GOLDEN = bytes.fromhex("b2e51234 01020304 cafebabe  00000001 00000002  bede0001 10ff0000  616263 000003")


def test_golden_packet_parses_every_field() -> None:
    packet = parse(GOLDEN)
    assert packet == RtpPacket(
        payload_type=101,
        sequence_number=0x1234,
        timestamp=0x01020304,
        ssrc=0xCAFEBABE,
        payload=b"abc",
        marker=True,
        csrc=(1, 2),
        extension=RtpHeaderExtension(0xBEDE, b"\x10\xff\x00\x00"),
        padding=3,
    )
    assert bytes(packet) == GOLDEN


def test_plain_packet() -> None:
    data = bytes.fromhex("8000ffff00000000ffffffff") + b"\xff" * 160
    packet = parse(data)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (
        0,
        0xFFFF,
        0,
        0xFFFFFFFF,
    )
    assert not packet.marker
    assert packet.csrc == ()
    assert packet.extension is None
    assert packet.padding == 0
    assert bytes(packet) == data


def test_empty_extension_and_payload() -> None:
    data = bytes.fromhex("90080001 00000002 00000003  0001 0000")
    packet = parse(data)
    assert packet.extension == RtpHeaderExtension(1, b"")
    assert packet.payload == b""
    assert bytes(packet) == data


def test_padding_content_is_ignored_and_written_as_zeros() -> None:
    data = bytes.fromhex("a0000001 00000002 00000003") + b"xy" + b"\xaa\xbb\x03"
    packet = parse(data)
    assert packet.payload == b"xy"
    assert packet.padding == 3
    assert bytes(packet) == bytes.fromhex("a0000001 00000002 00000003") + b"xy\x00\x00\x03"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 12-octet header"),
        (bytes(11), "shorter than the 12-octet header"),
        (bytes.fromhex("400000000000000000000000"), "version 1"),
        (bytes.fromhex("c00000000000000000000000"), "version 3"),
        (bytes.fromhex("810000000000000000000000"), "truncates its 1 CSRC"),
        (bytes.fromhex("8f0000000000000000000000") + bytes(56), "truncates its 15 CSRC"),
        (bytes.fromhex("900000000000000000000000") + b"\xbe\xde", "truncates its header extension"),
        (bytes.fromhex("900000000000000000000000") + b"\xbe\xde\x00\x02" + bytes(4), "runs past"),
        (bytes.fromhex("a00000000000000000000000") + b"ab\x00", "padding count 0"),
        (bytes.fromhex("a00000000000000000000000") + b"ab\x04", "padding count 4"),
    ],
)
def test_garbage_raises_rtp_error(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message) as info:
        parse(data)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MediaError)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"payload_type": 128}, "payload type"),
        ({"payload_type": -1}, "payload type"),
        ({"sequence_number": 0x10000}, "out of range"),
        ({"timestamp": -1}, "out of range"),
        ({"ssrc": 1 << 32}, "out of range"),
        ({"csrc": tuple(range(16))}, "at most 15"),
        ({"csrc": (1 << 32,)}, "out of range"),
        ({"padding": 256}, "padding"),
        ({"extension": RtpHeaderExtension(1, b"abc")}, "whole words"),
        ({"extension": RtpHeaderExtension(1 << 16, b"")}, "out of range"),
    ],
)
def test_serialising_invalid_fields_raises(changes: dict[str, object], message: str) -> None:
    packet = attrs.evolve(RtpPacket(0, 0, 0, 0), **changes)  # type: ignore[arg-type]
    with pytest.raises(RtpError, match=message):
        bytes(packet)


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        RtpHeaderExtension,
        st.integers(0, 0xFFFF),
        st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)),
    ),
    padding=st.integers(0, 255),
)


@given(packets)
def test_build_then_parse_round_trips(packet: RtpPacket) -> None:
    assert parse(bytes(packet)) == packet


@given(st.binary(max_size=80))
def test_parse_never_raises_anything_but_rtp_error(data: bytes) -> None:
    try:
        packet = parse(data)
    except RtpError:
        return
    # Whatever parses re-serialises to the same bytes, except for the padding octets' content.
    again = bytes(packet)
    assert len(again) == len(data)
    assert again[: len(data) - packet.padding] == data[: len(data) - packet.padding]


def test_is_rtcp_tells_rtcp_from_rtp() -> None:
    sender_report = bytes.fromhex("80c80006") + bytes(24)
    receiver_report = bytes.fromhex("81c90007") + bytes(28)
    feedback = bytes.fromhex("81cd0003") + bytes(12)
    assert is_rtcp(sender_report)
    assert is_rtcp(receiver_report)
    assert is_rtcp(feedback)
    assert not is_rtcp(bytes(RtpPacket(0, 1, 2, 3, b"x", marker=True)))
    assert not is_rtcp(bytes(RtpPacket(101, 1, 2, 3, b"x", marker=True)))
    assert not is_rtcp(bytes(RtpPacket(8, 1, 2, 3, b"x")))
    assert not is_rtcp(b"")
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(bytes.fromhex("00c8"))  # not version 2 (e.g. a STUN message)


def test_sender_draws_its_initial_values_from_the_rng() -> None:
    first = RtpSender(0, random.Random(7))
    second = RtpSender(0, random.Random(7))
    assert (first.initial_sequence_number, first.initial_timestamp, first.ssrc) == (
        second.initial_sequence_number,
        second.initial_timestamp,
        second.ssrc,
    )
    other = RtpSender(0, random.Random(8))
    assert other.ssrc != first.ssrc
    assert RtpSender(0, random.Random(7), ssrc=5).ssrc == 5


def test_sender_numbers_packets_and_wraps() -> None:
    sender = RtpSender(8, random.Random(1))
    sender.initial_sequence_number = 0xFFFE
    sender.initial_timestamp = 0xFFFFFF00
    packets = [sender.build(b"p", media_time=160 * i) for i in range(4)]
    assert [p.sequence_number for p in packets] == [0xFFFE, 0xFFFF, 0, 1]
    assert [p.timestamp for p in packets] == [0xFFFFFF00, 0xFFFFFFA0, 0x40, 0xE0]
    assert {p.ssrc for p in packets} == {sender.ssrc}
    assert {p.payload_type for p in packets} == {8}
    dtmf = sender.build(b"e", media_time=640, marker=True, payload_type=101)
    assert (dtmf.payload_type, dtmf.marker, dtmf.sequence_number) == (101, True, 2)
    assert sender.next_sequence_number == 3
    assert sender.wire_timestamp(1 << 40) == (0xFFFFFF00 + (1 << 40)) & 0xFFFFFFFF


def test_sender_rejects_a_bad_payload_type() -> None:
    with pytest.raises(ValueError, match="payload type"):
        RtpSender(200, random.Random(0))


def test_sender_datagram_is_the_built_packet_as_octets() -> None:
    """``datagram`` (the greeting's send path) numbers and encodes exactly as ``build`` then ``bytes``."""
    one, two = RtpSender(8, random.Random(4)), RtpSender(8, random.Random(4))
    for index, marker in [(0, True), (1, False), (5, False), (2**31, False)]:
        payload = bytes(range(index % 7, index % 7 + 160))
        data, timestamp = one.datagram(payload, media_time=index * 160, marker=marker)
        packet = two.build(payload, media_time=index * 160, marker=marker)
        assert data == bytes(packet) and timestamp == packet.timestamp
    assert one.packets_sent == two.packets_sent == 4
