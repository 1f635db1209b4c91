"""The RTP relay: numbering (properties), remapping, hold, digits; then two real legs on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from durchwahl.media.dtmf_inband import InbandDetector
from durchwahl.media.dtmf_rfc4733 import TelephoneEventReceiver, TelephoneEventSender, parse_telephone_event
from durchwahl.media.dtmf_tones import dtmf_tone
from durchwahl.media.errors import MediaError, TelephoneEventError
from durchwahl.media.g711 import alaw_decode, ulaw_decode, ulaw_encode
from durchwahl.media.relay import (
    LegMedia,
    MediaBridge,
    MediaRelay,
    OutgoingStream,
    Side,
    leg_media_from_sdp,
    plan_digits,
)
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.sdp import parse_sdp
from durchwahl.media.session import MediaClock, PortAllocator, RtpSession


def _signed16(value: int) -> int:
    return ((value + 0x8000) & 0xFFFF) - 0x8000


# ------------------------------------------------------------------------------------ OutgoingStream

#: A packet as (ssrc, sequence number, timestamp); sources switch and jump arbitrarily.
_packets = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)),
    min_size=1,
    max_size=200,
)


@given(_packets)
@settings(max_examples=300, deadline=None)
def test_sequence_numbers_out_stay_continuous_whatever_the_input_does(
    packets: list[tuple[int, int, int]],
) -> None:
    """Every packet relayed is at most ``max_gap`` ahead of the highest number sent (a real loss, kept
    visible) or a little behind it (a late packet keeping its place): never a jump, never a repeat."""
    stream = OutgoingStream(0xABCD, 65530, 0, max_gap=10, max_misorder=10)
    highest = 65529
    sent: set[int] = set()
    for now, (ssrc, sequence, timestamp) in enumerate(packets):
        out = stream.rewrite(ssrc, sequence, timestamp, now * 0.02)
        if out is None:
            continue
        step = _signed16(out[0] - highest)
        assert -10 <= step <= 10 and step != 0
        if out[2]:
            assert step == 1  # a new epoch continues exactly where the last one stopped
        if step > 0:
            highest = out[0]
        else:
            assert out[0] not in sent  # a late packet fills a hole, it never repeats a number
        sent.add(out[0])


@given(
    st.lists(
        st.tuples(st.sampled_from([7, 8, 9]), st.integers(0, 0xFFFF), st.integers(1, 60)),
        min_size=1,
        max_size=20,
    )
)
@settings(max_examples=200, deadline=None)
def test_gapless_sources_give_consecutive_numbers_across_every_switch(
    runs: list[tuple[int, int, int]],
) -> None:
    """Runs of gapless packets, switching between SSRCs; an SSRC starts anywhere and, when it comes back,
    goes on from where it was: the output counts 1, 2, 3 … across every switch. (A source restarting its
    numbering is covered by the arbitrary-input property above and the unit test below.)"""
    stream = OutgoingStream(0x1, 0xFFF0, 1000)
    out = []
    now = 0.0
    ends: dict[int, int] = {}
    for ssrc, start, length in runs:
        start = ends.get(ssrc, start)
        ends[ssrc] = start + length
        for i in range(length):
            now += 0.02
            numbered = stream.rewrite(ssrc, (start + i) & 0xFFFF, random.getrandbits(32), now)
            assert numbered is not None
            out.append(numbered[0])
    assert out[0] == 0xFFF0
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(out))


def test_timestamps_keep_the_source_timing_within_an_epoch_and_wall_time_across() -> None:
    stream = OutgoingStream(5, 100, 50_000, 10.0)
    first = stream.rewrite(1, 4000, 777, 10.02)
    assert first == (100, 50_160, True)  # 20 ms after the last packet sent: 160 units on
    assert stream.rewrite(1, 4001, 777 + 160, 10.04) == (101, 50_320, False)
    assert stream.rewrite(1, 4003, 777 + 480, 10.08) == (103, 50_640, False)  # a loss stays a gap
    assert stream.rewrite(1, 4002, 777 + 320, 10.09) == (102, 50_480, False)  # late: keeps its place
    assert stream.rewrite(1, 4003, 777 + 480, 10.09) is None  # duplicate
    # The far end switches to another source (a re-INVITE to a media server): a new epoch, seamless.
    switched = stream.rewrite(2, 9, 123_456_789, 10.10)
    assert switched == (104, 50_640 + 160, True)
    # The same SSRC restarting its numbering is a new epoch too.
    assert stream.rewrite(2, 30_000, 5, 10.12) == (105, 50_800 + 160, True)
    assert stream.rewrite(2, 9, 123_456_789, 10.13) is None  # a straggler from before the restart
    assert stream.rewrite(2, 30_001, 165, 10.14) == (106, 50_960 + 160, False)
    assert stream.epochs == 3


def test_sequence_and_timestamp_wrap() -> None:
    stream = OutgoingStream(5, 0xFFFF, 0xFFFF_FFC0, 0.0)
    assert stream.rewrite(1, 0xFFFF, 0xFFFF_FFF0, 0.02) == (0xFFFF, 0x60, True)
    assert stream.rewrite(1, 0, 0x90, 0.04) == (0, 0x100, False)


# --------------------------------------------------------------------------------------- MediaRelay


def _relay(a: LegMedia, b: LegMedia) -> MediaRelay:
    return MediaRelay(a, b, OutgoingStream(0xAAAA, 1, 0), OutgoingStream(0xBBBB, 1, 0))


def _event_packets(digit: str, ssrc: int, pt: int, first_seq: int, base_ts: int) -> list[RtpPacket]:
    return [
        RtpPacket(pt, first_seq + i, base_ts + p.timestamp, ssrc, p.payload, p.marker)
        for i, p in enumerate(TelephoneEventSender().packets(digit))
    ]


def test_payload_types_are_remapped_and_g711_laws_converted() -> None:
    relay = _relay(LegMedia(0, "PCMU", 101), LegMedia(8, "PCMA", 96))
    audio = ulaw_encode((np.sin(np.arange(160) / 3) * 8000).astype(np.int16))
    [out] = relay.handle_packet(Side.A, RtpPacket(0, 10, 1600, 0x55, audio), 1.0)
    assert (out.payload_type, out.ssrc, out.sequence_number, out.marker) == (8, 0xBBBB, 1, True)
    # A-law of the μ-law samples: the same audio within one quantisation step.
    assert np.abs(alaw_decode(out.payload).astype(int) - ulaw_decode(audio)).max() <= 512
    [event] = relay.handle_packet(Side.A, _event_packets("5", 0x55, 101, 11, 1760)[0], 1.02)
    assert event.payload_type == 96 and event.marker and event.sequence_number == 2
    [back] = relay.handle_packet(Side.B, RtpPacket(96, 70, 0, 0x66, bytes(4)), 1.0)
    assert back.payload_type == 101 and back.ssrc == 0xAAAA


def test_packets_of_payload_types_not_negotiated_are_dropped() -> None:
    relay = _relay(LegMedia(0, "PCMU", 101), LegMedia(0, "PCMU", None))
    assert relay.handle_packet(Side.A, RtpPacket(13, 1, 0, 1, b"\x40"), 0.0) == []  # comfort noise
    assert relay.handle_packet(Side.A, RtpPacket(8, 2, 0, 1, bytes(160)), 0.0) == []  # PCMA, not agreed
    assert relay.handle_packet(Side.B, RtpPacket(101, 3, 0, 1, bytes(4)), 0.0) == []  # B has no events
    assert relay.stats(Side.A).dropped_payload_type == 2
    assert relay.stats(Side.B).dropped_payload_type == 1


def test_hold_stops_one_direction_and_resuming_starts_a_new_epoch() -> None:
    relay = _relay(LegMedia(), LegMedia())
    frame = bytes(160)
    assert relay.handle_packet(Side.A, RtpPacket(0, 1, 0, 9, frame), 0.0)
    # B holds A: B says sendonly (it sends music, wants nothing); A answers recvonly.
    relay.update(Side.B, LegMedia(direction="sendonly"))
    relay.update(Side.A, LegMedia(direction="recvonly"))
    assert relay.handle_packet(Side.A, RtpPacket(0, 2, 160, 9, frame), 0.02) == []
    assert relay.handle_packet(Side.B, RtpPacket(0, 50, 0, 7, frame), 0.02)  # the music reaches A
    assert relay.stats(Side.A).dropped_hold == 1
    relay.update(Side.B, LegMedia())
    relay.update(Side.A, LegMedia())
    [resumed] = relay.handle_packet(Side.A, RtpPacket(0, 3, 320, 9, frame), 10.0)
    assert resumed.sequence_number == 2 and resumed.marker  # seamless numbering, a new talkspurt
    assert resumed.timestamp == 80_000  # ten seconds of wall time later


def test_inactive_drops_both_ways() -> None:
    relay = _relay(LegMedia(direction="inactive"), LegMedia())
    assert relay.handle_packet(Side.A, RtpPacket(0, 1, 0, 9, bytes(160)), 0.0) == []
    assert relay.handle_packet(Side.B, RtpPacket(0, 1, 0, 9, bytes(160)), 0.0) == []


def test_events_become_tones_for_a_leg_without_telephone_event() -> None:
    relay = _relay(LegMedia(0, "PCMU", 101), LegMedia(0, "PCMU", None))
    out: list[RtpPacket] = []
    now = 0.0
    seq = 1
    silence = ulaw_encode(np.zeros(160, dtype=np.int16))
    for n in range(10):  # audio, then the event (the phone mutes its audio meanwhile), then audio
        out += relay.handle_packet(Side.A, RtpPacket(0, seq, n * 160, 0x42, silence), now)
        seq += 1
        now += 0.02
    events = _event_packets("9", 0x42, 101, seq, 1600)
    for packet in events:
        out += relay.handle_packet(Side.A, packet, now)
        now += 0.02 if not parse_telephone_event(packet.payload).end else 0.0
    seq += len(events)
    for n in range(20):
        out += relay.handle_packet(Side.A, RtpPacket(0, seq + n, 2400 + n * 160, 0x42, silence), now)
        now += 0.02
    assert all(p.payload_type == 0 for p in out)
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(out))
    audio = np.concatenate([ulaw_decode(p.payload) for p in out])
    detector = InbandDetector()
    assert [d.digit for d in detector.feed(audio)] == ["9"]
    assert relay.stats(Side.A).tone_frames == 5  # 100 ms of tone


def test_relaying_a_codec_other_than_g711_needs_the_same_on_both_legs() -> None:
    _relay(LegMedia(9, "G722", None), LegMedia(9, "G722", None))
    with pytest.raises(MediaError, match="G722 to PCMU"):
        _relay(LegMedia(9, "G722", None), LegMedia())


def test_leg_media_from_sdp() -> None:
    sdp = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 8 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n"
    )
    assert leg_media_from_sdp(sdp) == LegMedia(8, "PCMA", 96, "sendonly")
    with pytest.raises(MediaError):
        leg_media_from_sdp(
            parse_sdp("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
        )


# ------------------------------------------------------------------------------------- local digits


def test_digits_as_telephone_events_with_a_pause() -> None:
    planned = plan_digits("1,2", LegMedia(0, "PCMU", 96))
    assert {p.payload_type for p in planned} == {96}
    starts = [p.send_at for p in planned if p.marker]
    assert starts == [0.0, pytest.approx(0.2 + 1.0)]  # 100 ms + 100 ms gap, then the 1 s pause
    receiver = TelephoneEventReceiver()
    for seq, p in enumerate(planned):
        receiver.handle_packet(p.timestamp, seq, p.marker, p.payload, p.send_at)
    assert [e.digit for e in receiver.events()] == ["1", "2"]


def test_digits_as_tones_for_a_leg_without_telephone_event() -> None:
    planned = plan_digits("4,#", LegMedia(8, "PCMA", None))
    assert {p.payload_type for p in planned} == {8}
    assert [p.timestamp for p in planned] == [160 * i for i in range(len(planned))]
    assert len(planned) == (200 + 1000 + 200) // 20
    audio = np.concatenate([alaw_decode(p.payload) for p in planned])
    found = InbandDetector().feed(audio)
    assert [d.digit for d in found] == ["4", "#"]
    assert found[1].start - found[0].start == pytest.approx((200 + 1000) * 8, abs=40)
    with pytest.raises(TelephoneEventError):
        plan_digits("1x", LegMedia(0, "PCMU", None))


def test_local_digits_mute_the_relayed_audio_and_continue_the_numbering() -> None:
    relay = _relay(LegMedia(), LegMedia(0, "PCMU", 101))
    frame = bytes(160)
    [first] = relay.handle_packet(Side.A, RtpPacket(0, 500, 0, 3, frame), 0.0)
    done = relay.send_digits(Side.B, "7", 0.01)
    assert done == pytest.approx(0.01 + 0.1)
    assert relay.handle_packet(Side.A, RtpPacket(0, 501, 160, 3, frame), 0.02) == []  # muted
    sent = [p for _, p in relay.due_packets(1.0)]
    assert [p.sequence_number for p in sent] == list(range(2, 2 + len(sent)))
    assert all(p.payload_type == 101 and p.ssrc == 0xBBBB for p in sent)
    assert sent[0].timestamp == first.timestamp + 80  # 10 ms after the audio packet
    [after] = relay.handle_packet(Side.A, RtpPacket(0, 502, 320, 3, frame), 1.02)
    assert after.sequence_number == sent[-1].sequence_number + 1 and after.marker
    assert not relay.digits_pending()


_LEGS = st.builds(
    LegMedia,
    st.sampled_from([0, 8]),
    st.sampled_from(["PCMU", "PCMA"]),
    st.sampled_from([101, 96, None]),
    st.sampled_from(["sendrecv", "sendrecv", "sendonly", "recvonly", "inactive"]),
)
_SIDES = st.sampled_from([Side.A, Side.B])
#: What happens to a bridge: a datagram from a leg, a re-INVITE, local digits, a clock tick.
_STEPS = st.one_of(
    st.tuples(
        st.just("packet"),
        _SIDES,
        st.sampled_from([0, 8, 101, 96, 13]),  # payload type
        st.sampled_from([0x11, 0x22]),  # SSRC
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.booleans(),  # marker
        st.sampled_from(["plain", "plain", "plain", "csrc", "padding"]),
        st.one_of(  # audio, or a telephone-event (RFC 4733 §2.3: event, E, volume, duration)
            st.binary(max_size=12),
            st.builds(
                lambda event, end, duration: (
                    bytes((event, 0x8A if end else 0x0A)) + duration.to_bytes(2, "big")
                ),
                st.integers(0, 17),
                st.booleans(),
                st.integers(0, 1200),
            ),
        ),
        st.floats(0.0, 0.2),  # time since the previous step
    ),
    st.tuples(st.just("update"), _SIDES, _LEGS),
    st.tuples(st.just("digits"), _SIDES, st.sampled_from(["1", "4,", "#9"])),
    st.tuples(st.just("tick"), st.floats(0.0, 1.5)),
)


def _datagram(pt: int, ssrc: int, seq: int, ts: int, marker: bool, shape: str, payload: bytes) -> bytes:
    if shape == "csrc":
        return bytes(RtpPacket(pt, seq, ts, ssrc, payload, marker, csrc=(7,)))
    if shape == "padding":
        return bytes(RtpPacket(pt, seq, ts, ssrc, payload, marker, padding=4))
    return bytes(RtpPacket(pt, seq, ts, ssrc, payload, marker))


@given(_LEGS, _LEGS, st.lists(_STEPS, max_size=60))
@example(  # audio while a telephone-event sounds as tones for a leg without telephone-event: dropped
    LegMedia(0, "PCMU", 101),
    LegMedia(0, "PCMU", None),
    [
        ("packet", Side.A, 101, 0x11, 5, 1000, False, "plain", bytes((5, 0x0A, 0, 160)), 0.01),
        ("packet", Side.A, 0, 0x11, 6, 1160, False, "plain", b"abc", 0.02),
        ("packet", Side.A, 0, 0x11, 7, 1320, False, "plain", b"abc", 0.2),
    ],
)
@example(  # audio while local digits are sent to the other leg: muted
    LegMedia(),
    LegMedia(),
    [
        ("packet", Side.A, 0, 0x11, 5, 1000, False, "plain", b"abc", 0.01),
        ("digits", Side.B, "1"),
        ("packet", Side.A, 0, 0x11, 6, 1160, True, "plain", b"abc", 0.02),
        ("tick", 0.5),
        ("packet", Side.A, 0, 0x11, 7, 1320, False, "plain", b"abc", 0.02),
    ],
)
@settings(max_examples=300, deadline=None)
def test_the_datagram_fast_path_relays_exactly_what_handle_packet_does(
    a: LegMedia, b: LegMedia, steps: list[tuple[object, ...]]
) -> None:
    """A bridge hands plain datagrams to ``handle_datagram`` (falling back to ``handle_packet`` when it
    returns None): the same octets out, the same counters and numbering as ``handle_packet`` alone."""
    fast, reference = _relay(a, b), _relay(a, b)
    now = 0.0
    for step in steps:
        if step[0] == "packet":
            _, side, pt, ssrc, seq, ts, marker, shape, payload, dt = step
            assert isinstance(side, Side) and isinstance(dt, float)
            now += dt
            data = _datagram(pt, ssrc, seq, ts, marker, shape, payload)  # type: ignore[arg-type]
            expected = [bytes(p) for p in reference.handle_packet(side, parse(data), now)]
            out = fast.handle_datagram(side, data, now) if data[0] == 0x80 else None
            got = [bytes(p) for p in fast.handle_packet(side, parse(data), now)] if out is None else [out]
            assert [d for d in got if d] == expected
        elif step[0] == "update":
            _, side, media = step
            for relay in (fast, reference):
                relay.update(side, media)  # type: ignore[arg-type]
        elif step[0] == "digits":
            _, side, digits = step
            for relay in (fast, reference):
                with contextlib.suppress(MediaError):
                    relay.send_digits(side, digits, now)  # type: ignore[arg-type]
        else:
            now += step[1]  # type: ignore[operator]
            assert [(s, bytes(p)) for s, p in fast.due_packets(now)] == [
                (s, bytes(p)) for s, p in reference.due_packets(now)
            ]
        for side in Side:
            assert vars(fast.stats(side)) == vars(reference.stats(side))


# ----------------------------------------------------------------------------------------- loopback


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _receive_all(sock: socket.socket, quiet: float = 0.15) -> list[RtpPacket]:
    loop = asyncio.get_running_loop()
    packets = []
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), quiet)
        except TimeoutError:
            return packets
        packets.append(parse(data))


async def test_two_legs_bridged_on_loopback() -> None:
    """Caller A (PCMU, telephone-event 101) ↔ relay ↔ callee B (PCMA, telephone-event 96)."""
    loop = asyncio.get_running_loop()
    allocator = PortAllocator(34000, 34999)
    leg_a = await allocator.open(lambda: RtpSession(rng=random.Random(1), detect_inband=False))
    leg_b = await allocator.open(
        lambda: RtpSession(payload_type=8, rng=random.Random(2), detect_inband=False)
    )
    peer_a, peer_b = _peer(), _peer()
    leg_a.remote, leg_b.remote = peer_a.getsockname(), peer_b.getsockname()
    clock = MediaClock()
    sent_to: list[Side] = []
    bridge = MediaBridge(leg_a, leg_b, LegMedia(0, "PCMU", 101), LegMedia(8, "PCMA", 96), clock)
    bridge.on_digits_sent = sent_to.append
    try:
        tone = ulaw_encode((np.sin(np.arange(160) / 4) * 5000).astype(np.int16))
        for n in range(10):
            ssrc, seq = (0x1111, 100 + n) if n < 5 else (0x2222, 40_000 + n)  # A's source changes halfway
            await loop.sock_sendto(peer_a, bytes(RtpPacket(0, seq, n * 160, ssrc, tone)), leg_a.local)
            await asyncio.sleep(0.02)
        await loop.sock_sendto(peer_a, b"\x00\x01garbage", leg_a.local)
        for packet in _event_packets("3", 0x2222, 101, 40_010, 1600):
            await loop.sock_sendto(peer_a, bytes(packet), leg_a.local)
        at_b = await _receive_all(peer_b)
        assert [p.payload_type for p in at_b] == [8] * 10 + [96] * 8
        assert len({p.ssrc for p in at_b}) == 1 and at_b[0].ssrc == leg_b.sender.ssrc
        assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(at_b))
        assert all(
            0 < (b.timestamp - a.timestamp) & 0xFFFFFFFF < 2000 for a, b in itertools.pairwise(at_b[:10])
        )
        assert at_b[0].marker and at_b[5].marker  # each new source starts a talkspurt
        assert np.abs(alaw_decode(at_b[0].payload).astype(int) - ulaw_decode(tone)).max() <= 512
        assert leg_a.stats.dropped_garbage == 1

        # B sends back; then B holds A (sendonly): A's audio no longer reaches B.
        await loop.sock_sendto(peer_b, bytes(RtpPacket(8, 1, 0, 0x3333, bytes(160))), leg_b.local)
        [at_a] = await _receive_all(peer_a)
        assert at_a.payload_type == 0 and at_a.ssrc == leg_a.sender.ssrc
        bridge.update(Side.B, LegMedia(8, "PCMA", 96, "sendonly"))
        await loop.sock_sendto(peer_a, bytes(RtpPacket(0, 50_000, 0, 0x2222, tone)), leg_a.local)
        assert await _receive_all(peer_b, 0.1) == []
        bridge.update(Side.B, LegMedia(8, "PCMA", 96))

        # Post-dial digits: as RFC 4733 to B (it negotiated telephone-event), as tones to A (it has none).
        bridge.update(Side.A, LegMedia(0, "PCMU", None))
        done = bridge.send_digits(Side.B, "1,2")
        bridge.send_digits(Side.A, "45")
        assert done == pytest.approx(clock.now() + 1.3, abs=0.05)
        events_b, audio_a = await asyncio.gather(_receive_all(peer_b, 1.2), _receive_all(peer_a, 1.2))
        assert sorted(sent_to, key=str) == [Side.A, Side.B]
    finally:
        bridge.close()
        await clock.close()
        leg_a.close()
        leg_b.close()
        peer_a.close()
        peer_b.close()
    receiver = TelephoneEventReceiver()
    for p in events_b:
        assert p.payload_type == 96
        receiver.handle_packet(p.timestamp, p.sequence_number, p.marker, p.payload, 0.0)
    assert [e.digit for e in receiver.events()] == ["1", "2"]
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(events_b))
    assert events_b[0].sequence_number == (at_b[-1].sequence_number + 1) & 0xFFFF
    assert {p.payload_type for p in audio_a} == {0}
    samples = np.concatenate([ulaw_decode(p.payload) for p in audio_a])
    assert [d.digit for d in InbandDetector().feed(samples)] == ["4", "5"]


async def test_bridge_continues_the_numbering_of_the_greeting() -> None:
    """The caller heard the greeting on leg A; the bridge's packets continue its SSRC, sequence and time."""
    from durchwahl.media.greeting import greeting_from_samples

    allocator = PortAllocator(35000, 35999)
    leg_a = await allocator.open(lambda: RtpSession(rng=random.Random(3), detect_inband=False))
    leg_b = await allocator.open(lambda: RtpSession(rng=random.Random(4), detect_inband=False))
    peer_a, peer_b = _peer(), _peer()
    leg_a.remote, leg_b.remote = peer_a.getsockname(), peer_b.getsockname()
    clock = MediaClock()
    greeting = greeting_from_samples(dtmf_tone("1", 800).astype(np.int16) // 4)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(leg_a.play(greeting.pcmu, clock), 1.0)
        bridge = MediaBridge(leg_a, leg_b, LegMedia(), LegMedia(), clock)
        await asyncio.sleep(0.04)
        await loop.sock_sendto(peer_b, bytes(RtpPacket(0, 9, 0, 0x99, bytes(160))), leg_b.local)
        packets = await _receive_all(peer_a)
        bridge.close()
    finally:
        await clock.close()
        leg_a.close()
        leg_b.close()
        peer_a.close()
        peer_b.close()
    assert len(packets) == greeting.frames + 1
    assert len({p.ssrc for p in packets}) == 1
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    gap = (packets[-1].timestamp - packets[-2].timestamp) & 0xFFFFFFFF
    assert 160 + 300 < gap < 160 + 1200  # about 60 ms of wall time after the last greeting frame


# ------------------------------------------------------------------------------------ loss and jitter


@given(
    st.integers(0, 0xFFFF),
    st.lists(st.booleans(), min_size=2, max_size=300),
    st.lists(st.integers(0, 299), max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_loss_is_what_the_numbering_expected_less_what_arrived(
    first: int, delivered: list[bool], swaps: list[int]
) -> None:
    """RFC 3550 §6.4.1's cumulative loss: expected (highest − first + 1) less received, whatever the wrap,
    with late packets (neighbours swapped) filling the gap they were counted in, and duplicates ignored."""
    numbers = [(first + i) & 0xFFFF for i, kept in enumerate(delivered) if kept or i == 0]
    for i in swaps:  # a packet overtaken by its successor
        if i + 1 < len(numbers) and i > 0:
            numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]
    stream = OutgoingStream(7, 1, 0, max_gap=400, max_misorder=50)
    for n, sequence in enumerate(numbers):
        stream.rewrite(0x42, sequence, sequence * 160, n * 0.02)
        if n % 7 == 3:
            stream.rewrite(0x42, sequence, sequence * 160, n * 0.02)  # a duplicate: neither lost nor found
    highest = max(((s - first) & 0xFFFF) for s in numbers)
    assert stream.lost == highest + 1 - len(numbers)


def test_the_relay_counts_what_a_leg_lost_on_the_way() -> None:
    relay = _relay(LegMedia(), LegMedia())
    for sequence in [*range(1, 10), *range(12, 20), 10]:  # 10 and 11 missing, 10 arrives late
        relay.handle_packet(Side.A, RtpPacket(0, sequence, sequence * 160, 0x55, bytes(160)), sequence * 0.02)
    assert relay.lost(Side.A) == 1 and relay.lost(Side.B) == 0


def _jitter_after(arrivals: list[float]) -> float:
    relay = _relay(LegMedia(), LegMedia())
    for n, at in enumerate(arrivals):
        data = bytes(RtpPacket(0, 100 + n, 8000 + n * 160, 0x55, bytes(160)))
        assert relay.handle_datagram(Side.A, data, at)
    return relay.stats(Side.A).jitter


def test_jitter_is_zero_for_packets_on_time_and_the_transit_variation_otherwise() -> None:
    assert _jitter_after([n * 0.02 for n in range(3200)]) == pytest.approx(0.0, abs=1e-12)
    # Every other packet 10 ms late: each pair differs by 10 ms in transit, so J tends to 10 ms.
    late = [n * 0.02 + (0.01 if n % 2 else 0.0) for n in range(3200)]
    assert _jitter_after(late) == pytest.approx(0.01, rel=0.01)
    # A constant delay is no jitter.
    assert _jitter_after([5.0 + n * 0.02 for n in range(3200)]) == pytest.approx(0.0, abs=1e-9)
