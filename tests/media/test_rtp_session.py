"""The media shell on real loopback sockets: greeting playback timing and content, RFC 4733 digits in."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import socket
import statistics
import weakref
from collections.abc import Callable

import numpy as np
import pytest

from durchwahl.media.dtmf_rfc4733 import TelephoneEventSender
from durchwahl.media.greeting import greeting_from_samples
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.session import (
    MediaClock,
    PortAllocator,
    PortsExhausted,
    RtpSession,
    _EpollReader,
    _RtpTransport,
)


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def test_greeting_is_played_paced_and_in_order() -> None:
    loop = asyncio.get_running_loop()
    greeting = greeting_from_samples((np.sin(np.arange(4000) / 5) * 6000).astype(np.int16))  # 0.5 s
    allocator = PortAllocator(30000, 30999)
    session = await allocator.open(lambda: RtpSession(rng=random.Random(1)))
    clock = MediaClock()
    peer = _peer()
    session.remote = peer.getsockname()
    arrivals: list[tuple[float, RtpPacket]] = []
    done = session.play(greeting.pcmu, clock)
    try:
        while len(arrivals) < greeting.frames:
            data = await asyncio.wait_for(loop.sock_recv(peer, 2048), 2.0)
            arrivals.append((loop.time(), parse(data)))
        await asyncio.wait_for(done, 1.0)
    finally:
        session.close()
        await clock.close()
        peer.close()
    packets = [p for _, p in arrivals]
    assert [p.payload for p in packets] == list(greeting.pcmu)
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    assert len({p.ssrc for p in packets}) == 1
    assert all((b.sequence_number - a.sequence_number) % 65536 == 1 for a, b in itertools.pairwise(packets))
    assert all((b.timestamp - a.timestamp) % 2**32 == 160 for a, b in itertools.pairwise(packets))
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) == pytest.approx(0.020, abs=0.004)
    span = arrivals[-1][0] - arrivals[0][0]
    assert span == pytest.approx((greeting.frames - 1) * 0.020, abs=0.06)
    assert session.stats.sent == greeting.frames


async def test_rfc4733_digits_arrive_once_and_garbage_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    digits: list[str] = []
    session = await PortAllocator(31000, 31999).open(
        lambda: RtpSession(on_digit=lambda pressed: digits.append(pressed.digit))
    )
    peer = _peer()
    peer_address = peer.getsockname()
    try:
        await loop.sock_sendto(peer, b"\x00garbage", session.local)
        await loop.sock_sendto(peer, b"\x80" * 5, session.local)
        ssrc, seq, base = 0x1234, 100, 5000
        for packet in TelephoneEventSender().packets("105#"):
            rtp = RtpPacket(101, seq & 0xFFFF, base + packet.timestamp, ssrc, packet.payload, packet.marker)
            seq += 1
            await loop.sock_sendto(peer, bytes(rtp), session.local)
            if packet.event.end:
                await loop.sock_sendto(peer, bytes(rtp), session.local)  # a duplicate end packet
        for _ in range(50):
            if len(digits) == 4:
                break
            await asyncio.sleep(0.02)
        # A packet from another address after latching is foreign and dropped.
        stranger = _peer()
        await loop.sock_sendto(stranger, bytes(rtp), session.local)
        await asyncio.sleep(0.05)
        stranger.close()
    finally:
        session.close()
        peer.close()
    assert digits == ["1", "0", "5", "#"]
    assert session.stats.dropped_garbage == 2
    assert session.stats.dropped_foreign == 1
    assert session.remote == peer_address


async def test_a_closed_session_is_freed_without_the_cyclic_collector() -> None:
    """An anchored call's sessions are closed when it ends; nothing may keep them (and their socket,
    sender and digit state) for the cyclic GC, which a server runs seldom (routing.server.tune_gc)."""
    gc.disable()
    try:
        allocator = PortAllocator(32000, 32999)
        session = await allocator.open(lambda: RtpSession(on_digit=lambda pressed: None))
        ref = weakref.ref(session)
        session.close()
        del session
        await asyncio.sleep(0.01)  # connection_lost comes on the next loop turn
        assert ref() is None
    finally:
        gc.enable()


async def test_port_range_exhaustion_is_a_clear_error() -> None:
    allocator = PortAllocator(32000, 32003)  # two even ports
    sessions = [await allocator.open(RtpSession) for _ in range(2)]
    try:
        with pytest.raises(PortsExhausted, match="32000-32002"):
            await allocator.open(RtpSession)
    finally:
        for session in sessions:
            session.close()
    await asyncio.sleep(0.01)
    again = await allocator.open(RtpSession)  # closing releases the ports
    again.close()


@pytest.mark.parametrize("ways", [("inband",), ("rfc4733",), ("inband", "rfc4733")])
async def test_a_key_press_counts_once_however_it_arrives(ways: tuple[str, ...]) -> None:
    """A gateway may send a digit as tones in the audio, as telephone-events, or both: one digit each time."""
    from durchwahl.media.dtmf_tones import dtmf_tone
    from durchwahl.media.g711 import ulaw_encode

    loop = asyncio.get_running_loop()
    pressed: list[tuple[str, str]] = []
    session = await PortAllocator(33000, 33999).open(
        lambda: RtpSession(on_digit=lambda p: pressed.append((p.digit, p.source.value)))
    )
    peer = _peer()
    tone = dtmf_tone("7", 800) if "inband" in ways else np.zeros(800)
    audio = np.concatenate([np.zeros(800), tone, np.zeros(1600)]).astype(np.int16)
    events = TelephoneEventSender().packets("7") if "rfc4733" in ways else ()
    try:
        seq = 1
        for n in range(audio.size // 160):
            ts = n * 160
            frame = ulaw_encode(audio[ts : ts + 160])
            await loop.sock_sendto(peer, bytes(RtpPacket(0, seq, ts, 0x77, frame)), session.local)
            seq += 1
            for packet in events:
                if 800 + packet.send_time == ts:
                    rtp = RtpPacket(101, seq, 800 + packet.timestamp, 0x77, packet.payload, packet.marker)
                    await loop.sock_sendto(peer, bytes(rtp), session.local)
                    seq += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    finally:
        session.close()
        peer.close()
    assert [digit for digit, _ in pressed] == ["7"]
    assert pressed[0][1] in ways


async def test_digits_are_detected_only_while_someone_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridged call has no collector: its audio is not run through the in-band detector (its CPU cost),
    and a collector that starts listening gets the digits from then on."""
    from durchwahl.media.dtmf_inband import InbandDetector
    from durchwahl.media.dtmf_tones import dtmf_tone
    from durchwahl.media.g711 import ulaw_encode

    fed: list[int] = []
    real_feed = InbandDetector.feed

    def counting_feed(self: InbandDetector, samples: np.ndarray) -> list[object]:
        fed.append(len(samples))
        return real_feed(self, samples)  # type: ignore[return-value]

    monkeypatch.setattr(InbandDetector, "feed", counting_feed)
    loop = asyncio.get_running_loop()
    session = await PortAllocator(33000, 33999).open(RtpSession)
    peer = _peer()
    audio = np.concatenate([np.zeros(800), dtmf_tone("7", 800), np.zeros(1600)]).astype(np.int16)

    async def send_audio(first_seq: int) -> None:
        for n in range(audio.size // 160):
            frame = ulaw_encode(audio[n * 160 : (n + 1) * 160])
            packet = RtpPacket(0, first_seq + n, (first_seq + n) * 160, 0x77, frame)
            await loop.sock_sendto(peer, bytes(packet), session.local)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)

    pressed: list[str] = []
    try:
        await send_audio(1)  # nobody listens
        assert session.stats.received == 20 and fed == []
        session.on_digit = lambda p: pressed.append(p.digit)
        await send_audio(100)
    finally:
        session.close()
        peer.close()
    assert len(fed) == 20 and pressed == ["7"]


# ------------------------------------------------------------------------------ the sockets' reader


async def _wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_the_sessions_of_a_loop_share_one_reader_released_with_the_last() -> None:
    allocator = PortAllocator(36000, 36999)
    sessions = [await allocator.open(RtpSession) for _ in range(3)]
    peer = _peer()
    try:
        transports = [s._transport for s in sessions]
        assert all(isinstance(t, _RtpTransport) for t in transports)
        reader = allocator._reader
        assert reader is not None and not reader.closed
        for n, session in enumerate(sessions):
            for k in range(n + 1):
                peer.sendto(bytes(RtpPacket(0, k, k * 160, 0x10 + n, bytes(160))), session.local)
        await _wait_until(lambda: [s.stats.received for s in sessions] == [1, 2, 3])
        # The reader sends from each session's own socket (symmetric RTP), to the latched peer.
        sessions[1].send_datagram(b"\x80\x00hello")
        await _wait_until(lambda: sessions[1].stats.sent == 1)
        data, source = peer.recvfrom(2048)
        assert data == b"\x80\x00hello" and source == sessions[1].local
        for session in sessions:
            session.close()
        assert reader.closed
        again = await allocator.open(RtpSession)  # a new reader serves the next session
        assert allocator._reader is not reader and not allocator._reader.closed
        again.close()
    finally:
        for session in sessions:
            session.close()
        peer.close()


async def test_one_failing_session_does_not_cost_the_others_their_packets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    allocator = PortAllocator(36000, 36999)
    broken, fine = await allocator.open(RtpSession), await allocator.open(RtpSession)
    peer = _peer()

    def fail(packet: RtpPacket, now: float) -> None:
        raise RuntimeError("a bug above the media shell")

    broken.on_packet = fail
    try:
        for seq in range(3):
            peer.sendto(bytes(RtpPacket(0, seq, 0, 1, bytes(160))), broken.local)
            peer.sendto(bytes(RtpPacket(0, seq, 0, 1, bytes(160))), fine.local)
        await _wait_until(lambda: fine.stats.received == 3 and broken.stats.received == 3)
    finally:
        broken.close()
        fine.close()
        peer.close()
    assert [r.getMessage().endswith("error handling a datagram") for r in caplog.records] == [True] * 3


async def test_without_add_reader_the_sessions_are_asyncio_datagram_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop that cannot watch file descriptors (Windows' proactor) gets asyncio's datagram transports."""
    loop = asyncio.get_running_loop()

    def no_readers(*args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(loop, "add_reader", no_readers)
    allocator = PortAllocator(36000, 36999)
    session = await allocator.open(RtpSession)
    peer = _peer()
    try:
        assert not isinstance(session._transport, _RtpTransport)
        peer.sendto(bytes(RtpPacket(0, 1, 0, 1, bytes(160))), session.local)
        await _wait_until(lambda: session.stats.received == 1)
        session.send_datagram(b"\x80\x00back")
        await _wait_until(lambda: session.stats.sent == 1)
    finally:
        session.close()
        peer.close()


class _FullSocket(socket.socket):
    """A socket whose send buffer is full for its first ``full`` sends."""

    full = 2

    def sendto(self, data: object, *args: object) -> int:  # type: ignore[override]
        if self.full:
            self.full -= 1
            raise BlockingIOError
        return super().sendto(data, *args)  # type: ignore[call-overload, no-any-return]


async def test_sends_wait_in_order_while_the_kernel_buffer_is_full() -> None:
    loop = asyncio.get_running_loop()
    reader = _EpollReader(loop)
    sock = _FullSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    session = RtpSession()
    transport = _RtpTransport(reader, sock, session)
    session.connection_made(transport)
    reader.add(sock.fileno(), transport)
    peer = _peer()
    try:
        for n in range(4):
            transport.sendto(bytes([0x80, 0, 0, n]), peer.getsockname())
        received = []
        for _ in range(4):
            received.append(await asyncio.wait_for(loop.sock_recv(peer, 2048), 1.0))
        assert [d[3] for d in received] == [0, 1, 2, 3]
    finally:
        transport.close()
        peer.close()
    assert reader.closed


async def test_plain_datagrams_go_to_on_datagram_while_nobody_listens() -> None:
    """A bridge takes plain RTP datagrams unparsed; anything else, and everything while a digit collector
    listens, arrives parsed through ``on_packet``; RTCP and garbage reach neither."""
    session = await PortAllocator(37000, 37999).open(RtpSession)
    raw: list[bytes] = []
    parsed: list[RtpPacket] = []
    session.on_datagram = lambda data, now: raw.append(data)
    session.on_packet = lambda packet, now: parsed.append(packet)
    peer = _peer()
    plain = bytes(RtpPacket(0, 1, 0, 5, bytes(160)))
    with_csrc = bytes(RtpPacket(0, 2, 160, 5, bytes(160), csrc=(9,)))
    receiver_report = bytes([0x80, 201, 0, 1]) + bytes(4)
    try:
        for data in (plain, with_csrc, receiver_report, b"\x80\x00"):
            peer.sendto(data, session.local)
        await _wait_until(lambda: session.stats.received == 2 and session.stats.dropped_garbage == 1)
        session.on_digit = lambda pressed: None
        peer.sendto(plain, session.local)
        await _wait_until(lambda: session.stats.received == 3)
    finally:
        session.close()
        peer.close()
    assert raw == [plain]
    assert [p.sequence_number for p in parsed] == [2, 1]
    assert session.latched and session.stats.dropped_foreign == 0


async def test_a_playback_started_at_any_moment_is_paced_half_a_tick_off_the_clock() -> None:
    """Frames are due half a tick before the clock's ticks, so a tick that the loop wakes up to 9 ms late
    still finds exactly one frame due. (Pacing a playback from the moment it started put some playbacks'
    deadlines right at the ticks: the loop's wake-up jitter then sent their frames a tick late.)"""
    from durchwahl.media.greeting import Pacer

    class Idle:
        def tick(self, now: float) -> None:
            pass

    clock = MediaClock()
    clock.add(Idle())
    rng = random.Random(3)
    try:
        for _ in range(5):
            await asyncio.sleep(rng.uniform(0.001, 0.05))  # any moment between ticks
            start = clock.pacing_start()
            grid = clock._origin + 0.02 * round((start + 0.01 - clock._origin) / 0.02)
            assert start == pytest.approx(grid - 0.01, abs=1e-9) and start <= clock.now() + 0.02
            pacer = Pacer(start)
            first_tick = grid if grid >= clock.now() else grid + 0.02
            for m in range(50):
                now = first_tick + 0.02 * m + rng.uniform(0.0, 0.009)  # the loop wakes a little late
                frames = []
                while (index := pacer.due(now)) is not None:
                    frames.append(index)
                assert len(frames) == 1 or (m == 0 and frames)
    finally:
        await clock.close()
