"""The media I/O shell: one UDP socket per call leg, all legs paced by one shared 20 ms clock.

``RtpSession`` receives RTP (garbage and foreign packets are dropped and counted, never raised; with SRTP
every packet is authenticated and decrypted first, and one that does not authenticate is dropped before it
can latch), latches onto the address the peer's packets really come from (symmetric RTP: phones behind
NAT), turns RFC 4733 telephone-events into digits, hands decoded audio to an optional consumer (the in-band
detector), and plays pre-encoded greeting frames (protected, with SRTP). ``MediaClock`` is the single timer
that drives every session's sending.

In-band detection of a session that plays on a clock (the greeting) runs in the clock's
:class:`~media.dtmf_greeting.DetectorBank`: the session hands it each frame it sends and each 20 ms of
audio it receives (placed by RTP timestamp), and the clock, after every tick's sends, analyses all such
sessions at once — echo of what they sent removed — and hands each its digits. A session that never played
detects in-band digits on its own, packet by packet, as before.

The sockets :class:`PortAllocator` opens are read through one epoll of their own, registered once with the
event loop (where the loop and the platform allow it): one wake-up serves every leg with a packet waiting,
instead of a pass through asyncio's selector, a callback handle and a transport per packet. Elsewhere (no
``select.epoll``, or a loop without ``add_reader``) they are asyncio datagram endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from .dtmf_greeting import DetectorBank
from .dtmf_inband import DigitDetected, InbandDetector
from .dtmf_merge import DigitMerger, DigitSource, KeyPressed
from .dtmf_rfc4733 import TelephoneEventReceiver
from .errors import MediaError, RtpError
from .g711 import alaw_decode, ulaw_decode
from .greeting import FRAME_SAMPLES, FRAME_SECONDS, Pacer
from .rtp import RtpPacket, RtpSender, is_rtcp, parse
from .srtp import SrtpError, SrtpStreams

__all__ = [
    "Listening",
    "MediaClock",
    "PortAllocator",
    "PortsExhausted",
    "RtpSession",
    "SessionStats",
    "Ticking",
]

log = logging.getLogger(__name__)

PCMU: Final = 0
PCMA: Final = 8
_TIME_AND_SOURCE: Final = struct.Struct("!II")  # an RTP header's timestamp and SSRC, from octet 4


@functools.lru_cache(maxsize=32)
def _decoded(frames: tuple[bytes, ...], payload_type: int) -> npt.NDArray[np.int16]:
    """``frames`` (G.711 of ``payload_type``) decoded, a row per frame (silence for frames not 20 ms long)."""
    decode = ulaw_decode if payload_type == PCMU else alaw_decode
    rows = [decode(f) if len(f) == FRAME_SAMPLES else np.zeros(FRAME_SAMPLES, np.int16) for f in frames]
    return np.stack(rows)


class PortsExhausted(MediaError):
    """No free RTP port is left in the configured range."""


class PortAllocator:
    """Hands out even UDP ports from a range (RTP on the even port, RFC 3550 §11), binding as it goes."""

    def __init__(self, first: int, last: int, host: str = "127.0.0.1") -> None:
        if not 0 < first <= last <= 65535:
            raise ValueError(f"bad RTP port range {first}-{last}")
        self.host = host
        self._ports = list(range(first + (first & 1), last + 1, 2))
        self._next = 0
        self._used: set[int] = set()
        self._reader: _EpollReader | None = None
        self._direct = hasattr(select, "epoll")

    async def open(self, factory: Callable[[], RtpSession]) -> RtpSession:
        """Bind a new session on the next free port of the range."""
        loop = asyncio.get_running_loop()
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port in self._used:
                continue
            try:
                session = self._open_direct(loop, factory, port) if self._direct else None
                if session is None:
                    _, session = await loop.create_datagram_endpoint(factory, local_addr=(self.host, port))
            except OSError:
                continue  # taken by another process: try the next one
            self._used.add(port)
            session._release = functools.partial(self._used.discard, port)
            return session
        raise PortsExhausted(f"no free RTP port in {self._ports[0]}-{self._ports[-1]}")

    def _open_direct(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], RtpSession], port: int
    ) -> RtpSession | None:
        """A session on its own socket, read through the shared epoll; None where the loop cannot."""
        reader = self._reader
        if reader is None or reader.loop is not loop or reader.closed:
            try:
                reader = self._reader = _EpollReader(loop)
            except NotImplementedError:  # a loop without add_reader (Windows' proactor)
                self._direct = False
                return None
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.host, port))
            session = factory()
            transport = _RtpTransport(reader, sock, session)
            session.connection_made(transport)
        except BaseException:
            sock.close()
            reader.release_if_unused()
            raise
        reader.add(sock.fileno(), transport)
        return session


class _EpollReader:
    """The RTP sockets of one event loop, read through one epoll that the loop watches: when it is readable,
    one datagram is read from each socket that has one (level-triggered: what is left waits for the next
    turn, so a flood on one leg cannot starve the loop's timers). Closed with its last socket."""

    #: Most sockets served per wake-up before the loop's other callbacks get their turn.
    BATCH: Final = 64

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed = False
        self._epoll = select.epoll()
        self._transports: dict[int, _RtpTransport] = {}
        try:
            loop.add_reader(self._epoll.fileno(), self._ready)
        except BaseException:
            self._epoll.close()
            raise

    def add(self, fd: int, transport: _RtpTransport) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._transports[fd] = transport

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before its socket is closed)."""
        if self._transports.pop(fd, None) is not None:
            self._epoll.unregister(fd)
        self.release_if_unused()

    def release_if_unused(self) -> None:
        if not self._transports and not self.closed:
            self.closed = True
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def _ready(self) -> None:
        transports = self._transports
        now = self.loop.time()  # one reading of the clock for the whole batch
        for fd, _ in self._epoll.poll(0, self.BATCH):
            transport = transports.get(fd)  # None: closed by an earlier datagram of this batch
            if transport is None:
                continue
            try:
                data, addr = transport.recvfrom(_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                transport.protocol.error_received(exc)
                continue
            try:
                transport.deliver(data, addr, now)
            except Exception:  # one session's bug must not cost the others their packets
                log.exception("RTP socket %d: error handling a datagram", fd)


#: What a closed transport points at instead of its session.
_GONE: Final = asyncio.DatagramProtocol()
#: The most an RTP datagram read from a leg's socket may carry (a longer one is cut short): audio packets
#: are a few hundred octets; a 64 KiB buffer per read cost 1.5-2 µs of allocation per packet.
_DATAGRAM: Final = 4096


def _ignore(data: bytes, addr: Any, now: float) -> None:
    """What a closed transport delivers to."""


class _RtpTransport(asyncio.DatagramTransport):
    """A datagram transport on a socket read by an :class:`_EpollReader`; sends go straight to the socket
    and are queued (until it is writable again) only when the kernel's send buffer is full."""

    def __init__(self, reader: _EpollReader, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(), "peername": None})
        self._reader = reader
        self._sock = sock
        self._fd = sock.fileno()
        self.protocol = protocol
        self.recvfrom = sock.recvfrom  # read by the reader
        #: Hands the reader's datagrams on: the session's own entry, which takes the reader's clock reading.
        self.deliver: Callable[[bytes, Any, float], None] = getattr(
            protocol, "deliver", lambda data, addr, now: protocol.datagram_received(data, addr)
        )
        self._closing = False
        #: Datagrams the socket would not take yet; made on the first such (an empty deque costs 760 bytes).
        self._backlog: deque[tuple[bytes, Any]] | None = None

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing or not data:
            return
        if self._backlog:
            self._backlog.append((bytes(data), addr))
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            if self._backlog is None:
                self._backlog = deque()
            self._backlog.append((bytes(data), addr))
            self._reader.loop.add_writer(self._fd, self._write_ready)
        except OSError as exc:
            self.protocol.error_received(exc)

    def _write_ready(self) -> None:
        backlog = self._backlog
        assert backlog is not None  # the writer is added with the first datagram backlogged
        while backlog:
            data, addr = backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.protocol.error_received(exc)
            backlog.popleft()
        self._reader.loop.remove_writer(self._fd)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reader.remove(self._fd)
        if self._backlog:
            self._backlog.clear()
            self._reader.loop.remove_writer(self._fd)
        self._sock.close()
        self._reader.loop.call_soon(self._lost)

    def _lost(self) -> None:
        # The session holds this transport and this transport the session: let go, so that reference
        # counting frees both when the call ends (else each anchored call left a cycle for the GC).
        protocol, self.protocol = self.protocol, _GONE
        self.deliver = _ignore
        protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


class SessionStats:
    """Counters a telephony engineer asks for first."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.dropped_garbage = 0
        self.dropped_foreign = 0
        #: SRTP packets that did not authenticate (forged, replayed, or plain RTP on an SRTP leg).
        self.dropped_srtp = 0
        self.skipped_frames = 0


class RtpSession(asyncio.DatagramProtocol):
    """One call leg's RTP: receive, latch, detect digits (RFC 4733 and in-band, only while ``on_digit`` is
    set), play frames on the shared clock."""

    def __init__(
        self,
        *,
        payload_type: int = PCMU,
        telephone_event_pt: int | None = 101,
        rng: random.Random | None = None,
        on_digit: Callable[[KeyPressed], None] | None = None,
        on_audio: Callable[[npt.NDArray[np.int16], float], None] | None = None,
        detect_inband: bool = True,
    ) -> None:
        self.payload_type = payload_type
        self.telephone_event_pt = telephone_event_pt
        self._on_digit = on_digit
        self.on_audio = on_audio
        self._inband = InbandDetector() if detect_inband else None
        self._detect_inband = detect_inband
        #: The handle of this session's stream in its clock's detector bank, while it is in there.
        self._bank_handle: int | None = None
        self._bank_clock: MediaClock | None = None
        self._rx_ssrc: int | None = None  # the SSRC of the audio the bank gets …
        self._rx_origin: int | None = None  # … the RTP timestamp of the first of it …
        self._rx_next = 0  # … the stream position the next received sample has …
        self._rx_pending: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)  # … and a partial frame
        self._merger = DigitMerger()
        self.remote: tuple[str, int] | None = None
        self.latched = False
        self.stats = SessionStats()
        self._sender = RtpSender(payload_type, rng or random.Random())
        self._events = TelephoneEventReceiver()
        self._transport: asyncio.DatagramTransport | None = None
        self._frames: tuple[bytes, ...] = ()
        self._decoded_frames: npt.NDArray[np.int16] | None = None
        self._loop_playback = False
        self._pacer: Pacer | None = None
        self._media_time = 0
        self._first_packet = True
        self._playback_done: asyncio.Future[None] | None = None
        self._clock: MediaClock | None = None
        self._release: Callable[[], None] = lambda: None
        self.local: tuple[str, int] = ("", 0)
        #: Every valid RTP packet received from the peer, with the loop time (a bridge's relay hooks in here).
        self.on_packet: Callable[[RtpPacket, float], None] | None = None
        #: If set, takes the place of ``on_packet`` for a plain RTP datagram (version 2, no padding,
        #: extension or CSRC) while nobody listens for digits or audio: the bytes as received, unparsed.
        self.on_datagram: Callable[[bytes, float], None] | None = None
        self._time: Callable[[], float] | None = None  # the loop's clock, once a datagram arrived
        #: The RTP timestamp of the last packet sent and the loop time it was sent at.
        self.last_sent: tuple[int, float] | None = None
        #: The leg's SRTP (None: plain RTP): everything sent is protected, everything received unprotected
        #: first. Set once both keys are known (our SDP and the peer's).
        self.srtp: SrtpStreams | None = None

    @property
    def sender(self) -> RtpSender:
        """The numbering of this leg's own packets (greeting playback)."""
        return self._sender

    @property
    def on_digit(self) -> Callable[[KeyPressed], None] | None:
        """Takes each key press (RFC 4733, in-band and SIP INFO merged); detection runs only while set."""
        return self._on_digit

    @on_digit.setter
    def on_digit(self, callback: Callable[[KeyPressed], None] | None) -> None:
        self._on_digit = callback
        if callback is None:
            self._leave_bank()
        else:
            self._join_bank()

    # ------------------------------------------------------------------------------ detector bank

    def _join_bank(self) -> None:
        """Detect in-band digits in the clock's bank (echo of what we send removed) once we play on one."""
        clock = self._clock
        if (
            clock is None
            or self._bank_handle is not None
            or not self._detect_inband
            or self._on_digit is None
        ):
            return
        self._bank_clock = clock
        self._bank_handle = clock.listen(self)
        self._rx_ssrc = self._rx_origin = None
        self._rx_pending = np.zeros(0, dtype=np.int16)

    def _leave_bank(self) -> None:
        if self._bank_handle is not None and self._bank_clock is not None:
            self._bank_clock.unlisten(self._bank_handle)
        self._bank_handle = self._bank_clock = None

    def _to_bank(self, handle: int, samples: npt.NDArray[np.int16], timestamp: int, ssrc: int) -> None:
        """Received audio for the bank, cut into 160-sample frames numbered by RTP timestamp."""
        if ssrc != self._rx_ssrc and self._rx_ssrc is not None:
            # Another source (the caller's side restarted its stream): its timing is its own, so the
            # stream starts afresh in the bank, echo canceller included.
            self._leave_bank()
            self._join_bank()
            if self._bank_handle is None:
                return
            handle = self._bank_handle
        bank = self._bank_clock.detectors  # type: ignore[union-attr]
        if self._rx_origin is None:
            self._rx_ssrc, self._rx_origin, self._rx_next = ssrc, timestamp, 0
        position = (timestamp - self._rx_origin) & 0xFFFFFFFF
        if position == self._rx_next and len(samples) == FRAME_SAMPLES and not len(self._rx_pending):
            bank.received(handle, position, samples)  # the usual packet: one whole frame, in order
            self._rx_next = position + FRAME_SAMPLES
            return
        if position >= 0x80000000:
            return  # older than the stream's start: a stray late packet
        if position != self._rx_next:
            if position < self._rx_next:
                return  # a duplicate or reordered packet: its frame's slot is taken or gone
            self._rx_pending = np.zeros(0, dtype=np.int16)  # lost packets: the partial frame is useless
        pending = np.concatenate([self._rx_pending, samples]) if len(self._rx_pending) else samples
        start = position - len(self._rx_pending)
        whole = len(pending) // FRAME_SAMPLES * FRAME_SAMPLES
        for offset in range(0, whole, FRAME_SAMPLES):
            bank.received(handle, start + offset, pending[offset : offset + FRAME_SAMPLES])
        self._rx_pending = pending[whole:]
        self._rx_next = position + len(samples)

    def inband_detected(self, detected: DigitDetected, now: float) -> None:
        """A digit the bank confirmed in this session's audio (called by the clock)."""
        if self._on_digit is None:
            return
        self._merger.handle_inband(detected, now)
        self._drain_merged()

    # ------------------------------------------------------------------------------------- datagrams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.deliver(data, addr, None)

    def deliver(self, data: bytes, addr: tuple[str | Any, int], now: float | None) -> None:
        """A datagram from the socket, and the loop's time if the caller read it already (the shared
        reader reads it once per wake-up for every datagram it hands out)."""
        if self.latched:
            remote = self.remote
            if remote is None or addr[1] != remote[1] or addr[0] != remote[0]:
                self.stats.dropped_foreign += 1
                return
        srtp = self.srtp
        if srtp is not None:
            if is_rtcp(data):
                return  # SRTCP: not used, like RTCP
            plain = srtp.unprotect(data)
            if plain is None:
                self.stats.dropped_srtp += 1
                return
            data = plain
        on_datagram = self.on_datagram
        if (
            on_datagram is not None
            and len(data) >= 12
            and data[0] == 0x80
            and not 192 <= data[1] <= 223  # RTCP (see is_rtcp)
            and self._on_digit is None
            and self.on_audio is None
        ):
            # A bridged call's packet (a valid plain one, so no parse): the relay rewrites the bytes.
            if not self.latched:
                self.remote = (str(addr[0]), int(addr[1]))
                self.latched = True
            self.stats.received += 1
            if now is None:
                time = self._time
                if time is None:
                    time = self._time = asyncio.get_running_loop().time
                now = time()
            on_datagram(data, now)
            return
        handle = self._bank_handle
        if (
            handle is not None
            and len(data) == 12 + FRAME_SAMPLES
            and data[0] == 0x80
            and (data[1] & 0x7F == PCMU or data[1] & 0x7F == PCMA)
            and self.on_packet is None
            and self.on_audio is None
        ):
            # A 20 ms G.711 frame while the bank listens (every packet of a greeting call): no parse.
            if not self.latched:
                self.remote = (str(addr[0]), int(addr[1]))
                self.latched = True
            self.stats.received += 1
            timestamp, ssrc = _TIME_AND_SOURCE.unpack_from(data, 4)
            decode = ulaw_decode if data[1] & 0x7F == PCMU else alaw_decode
            self._to_bank(handle, decode(data[12:]), timestamp, ssrc)
            return
        if is_rtcp(data):
            return  # RTCP is not used yet; it is not an error either
        try:
            packet = parse(data)
        except RtpError:
            self.stats.dropped_garbage += 1
            return
        if not self.latched:
            # Symmetric RTP: answer where the packets come from, not where the SDP said (NAT).
            self.remote = (str(addr[0]), int(addr[1]))
            self.latched = True
        self.stats.received += 1
        if now is None:
            now = asyncio.get_running_loop().time()
        if self.on_packet is not None:
            self.on_packet(packet, now)
        # Digits are detected only while someone listens (a greeting's collection): the in-band detector is
        # most of an anchored call's CPU, and a bridged call needs none of it.
        listening = self._on_digit is not None
        if packet.payload_type == self.telephone_event_pt:
            if listening:
                self._events.handle_packet(
                    packet.timestamp, packet.sequence_number, packet.marker, packet.payload, now
                )
                self._drain_digits()
        elif packet.payload_type in (PCMU, PCMA) and (
            (listening and self._inband is not None) or self.on_audio is not None
        ):
            decode = ulaw_decode if packet.payload_type == PCMU else alaw_decode
            samples = decode(packet.payload)
            handle = self._bank_handle
            if listening and handle is not None:
                self._to_bank(handle, samples, packet.timestamp, packet.ssrc)
            elif listening and self._inband is not None:
                for detected in self._inband.feed(samples):
                    self._merger.handle_inband(detected, now)
                self._drain_merged()
            if self.on_audio is not None:
                self.on_audio(samples, now)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket %s: %s", self.local, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()  # the port is free again once the socket is really closed

    def handle_info_digit(self, digit: str, now: float) -> None:
        """A digit that arrived as SIP INFO on this leg's dialog: merged with what the media carried."""
        self._merger.handle_digit(DigitSource.SIP_INFO, digit, now)
        self._drain_merged()

    def _drain_digits(self) -> None:
        now = asyncio.get_running_loop().time()
        while (event := self._events.next_event()) is not None:
            self._merger.handle_telephone_event(event, now)
        self._drain_merged()

    def _drain_merged(self) -> None:
        """Each key press once, however many ways (RFC 4733, in-band, INFO) it arrived."""
        while (pressed := self._merger.next_event()) is not None:
            if self.on_digit is not None:
                self.on_digit(pressed)

    # -------------------------------------------------------------------------------------- playback

    def play(
        self, frames: tuple[bytes, ...], clock: MediaClock, *, loop: bool = False
    ) -> asyncio.Future[None]:
        """Start sending ``frames`` (one per 20 ms); the future resolves when they have all been sent."""
        if not frames:
            raise MediaError("nothing to play")
        self.stop()
        self._frames = frames
        self._decoded_frames = None  # for the detector bank, when needed
        self._loop_playback = loop
        self._pacer = Pacer(clock.pacing_start())
        self._playback_done = asyncio.get_running_loop().create_future()
        self._clock = clock
        clock.add(self)
        self._join_bank()
        return self._playback_done

    @property
    def playing(self) -> bool:
        return self._pacer is not None

    def stop(self) -> None:
        """Stop playback now (the digits a caller dials interrupt nothing else)."""
        if self._clock is not None:
            self._clock.discard(self)
        self._pacer = None
        if self._playback_done is not None and not self._playback_done.done():
            self._playback_done.set_result(None)

    def tick(self, now: float) -> None:
        """Send the frame that is due (called by the clock); also times out pending telephone-events."""
        timer = self._events.get_timer()
        if timer is not None and now >= timer:
            self._events.handle_timer(now)
            self._drain_digits()
        pacer = self._pacer
        if pacer is None:
            return
        skipped_before = pacer.skipped
        while (index := pacer.due(now)) is not None:
            self.stats.skipped_frames += pacer.skipped - skipped_before
            skipped_before = pacer.skipped
            frame_number = index
            if frame_number >= len(self._frames):
                if not self._loop_playback:
                    self.stop()
                    return
                frame_number %= len(self._frames)
            self._send(self._frames[frame_number], index, now)

    def _send(self, payload: bytes, index: int, now: float) -> None:
        if self._transport is None or self.remote is None:
            return
        data, timestamp = self._sender.datagram(
            payload, media_time=index * FRAME_SAMPLES, marker=self._first_packet
        )
        self._first_packet = False
        if self.srtp is not None:
            try:
                data = self.srtp.protect(data)
            except SrtpError as exc:
                log.debug("RTP socket %s: %s", self.local, exc)
                return
        self._transport.sendto(data, self.remote)
        self.stats.sent += 1
        self.last_sent = (timestamp, now)
        if self._bank_handle is not None and len(payload) == FRAME_SAMPLES:
            # What the caller's line will echo: the frame as its far end decodes it (decoded once per
            # greeting and codec, for every call that plays it).
            decoded = self._decoded_frames
            if decoded is None:
                decoded = self._decoded_frames = _decoded(self._frames, self.payload_type)
            detectors = self._bank_clock.detectors  # type: ignore[union-attr]
            detectors.sent(self._bank_handle, decoded[index % len(decoded)], timestamp)

    def send_packet(self, packet: RtpPacket) -> None:
        """Send a packet numbered by someone else (the relay of a bridge) to where the peer is."""
        if self._transport is None or self.remote is None:
            return
        self.send_datagram(bytes(packet))

    def send_datagram(self, data: bytes | bytearray) -> None:
        """Send an RTP datagram built by someone else (the relay of a bridge) to where the peer is."""
        if self._transport is None or self.remote is None:
            return
        if self.srtp is not None:
            try:
                data = self.srtp.protect(bytes(data))
            except SrtpError as exc:
                log.debug("RTP socket %s: %s", self.local, exc)
                return
        self._transport.sendto(data, self.remote)
        self.stats.sent += 1

    def close(self) -> None:
        self.stop()
        self._leave_bank()
        if self._transport is not None:
            self._transport.close()


class Ticking(Protocol):
    """Anything the media clock drives: a playing session, a bridge sending digits."""

    def tick(self, now: float) -> None: ...


class Listening(Protocol):
    """Anything whose received audio the clock's detector bank analyses: it takes the digits found."""

    def inband_detected(self, detected: DigitDetected, now: float) -> None: ...


class MediaClock:
    """One timer for every playing session: wakes at each 20 ms deadline and lets them send; then runs the
    in-band detection of every listening session at once (:attr:`detectors`)."""

    def __init__(self, interval: float = FRAME_SECONDS) -> None:
        self._interval = interval
        self._sessions: set[Ticking] = set()
        self._task: asyncio.Task[None] | None = None
        self._origin = 0.0  # the loop time of the current run's first tick: the grid of all its ticks
        #: Greeting-aware in-band detection of the sessions that listen while they play on this clock.
        self.detectors = DetectorBank()
        self._listeners: dict[int, Listening] = {}

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def add(self, session: Ticking) -> None:
        self._sessions.add(session)
        self._start()

    def discard(self, session: Ticking) -> None:
        self._sessions.discard(session)

    def listen(self, listener: Listening) -> int:
        """Analyse ``listener``'s audio in the bank from now on; returns its handle there."""
        handle = self.detectors.join()
        self._listeners[handle] = listener
        self._start()
        return handle

    def unlisten(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        self.detectors.leave(handle)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            self._origin = loop.time()
            self._task = loop.create_task(self._run(), name="media-clock")

    def pacing_start(self) -> float:
        """Where a playback that starts now puts its frame 0 (:class:`~media.greeting.Pacer`'s start): half
        a tick before the clock's next tick, so that each tick finds exactly one frame due even when the
        loop wakes it a few milliseconds late. (A start at an arbitrary moment put some playbacks' deadlines
        right at the tick, and the loop's wake-up jitter then sent their frames alternately on time and a
        tick late.)"""
        self._start()
        now = self.now()
        ticks = math.ceil((now - self._origin) / self._interval)
        return self._origin + ticks * self._interval - self._interval / 2

    def _detect(self, now: float) -> None:
        """One tick of the bank; its digits go to their sessions (dated back by the bank's delay)."""
        found = self.detectors.tick()
        then = now - self.detectors.delay * self._interval
        for handle, detected in found:
            listener = self._listeners.get(handle)
            if listener is None:
                continue
            try:
                listener.inband_detected(detected, then)
            except Exception:
                log.exception("media session %r failed to take an in-band digit", listener)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._origin
        while self._sessions or self._listeners:
            now = loop.time()
            for session in list(self._sessions):
                try:
                    session.tick(now)
                except Exception:
                    log.exception("media session %r failed to tick", session)
                    self._sessions.discard(session)
            if self._listeners:
                self._detect(now)
            deadline += self._interval
            if deadline < now:  # a stall: do not try to catch up tick by tick, but keep the grid's phase
                deadline += math.ceil((now - deadline) / self._interval) * self._interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def close(self) -> None:
        self._sessions.clear()
        for handle in list(self._listeners):
            self.unlisten(handle)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
