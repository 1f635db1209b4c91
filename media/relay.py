"""The RTP relay of a bridged call: what one leg sends, rewritten for the other leg.

Pure core (no sockets, clocks or tasks; ``now`` is an argument):

* :class:`LegMedia` — what a leg negotiated: its audio payload type and codec, its telephone-event payload
  type (or none), and the direction its peer declared (hold: ``sendonly`` / ``recvonly`` / ``inactive``).
* :class:`OutgoingStream` — numbers everything sent to one leg: one SSRC, sequence numbers and timestamps
  without breaks, whatever the sources do (RFC 7667 §3.7: a middlebox that switches sources rewrites them).
  Within one *epoch* (one source, numbered consistently) the mapping is a fixed offset, so real losses stay
  visible as gaps (up to ``max_gap`` packets) and a slightly late packet keeps its place. A new SSRC, a
  sequence jump beyond those bounds, locally generated packets, or a resumption after hold start a new
  epoch: its first packet carries the highest sequence number sent plus one and the timestamp the old epoch
  would have reached by now (wall-clock elapsed since the last packet), so the far end's jitter buffer sees
  one continuous stream.
* :class:`MediaRelay` — both directions of a bridge: payload type remapping (audio and telephone-event,
  e.g. 101 ↔ 96), PCMU ↔ PCMA conversion, hold, dropping packets of payload types the leg did not
  negotiate, telephone-events turned into in-band tones for a leg without telephone-event, and locally
  sent digits (:func:`plan_digits`: RFC 4733 events where the leg negotiated telephone-event, else G.711
  tones; ``,`` pauses one second) during which the relayed audio to that leg is muted.

The thin glue :class:`MediaBridge` connects two :class:`~media.session.RtpSession` sockets to the core; it
is driven by the sessions' packet callbacks and the shared :class:`~media.session.MediaClock` ticks and
owns no socket, task or clock of its own.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Final

import attrs
import numpy as np
import numpy.typing as npt

from .dtmf_rfc4733 import DTMF_EVENTS, TelephoneEventSender, parse_telephone_event
from .dtmf_tones import dtmf_tone, keypad_frequencies
from .errors import MediaError, TelephoneEventError
from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .rtp import RtpPacket, parse

if TYPE_CHECKING:
    from .sdp import SessionDescription
    from .session import MediaClock, RtpSession

__all__ = [
    "LegMedia",
    "MediaBridge",
    "MediaRelay",
    "OutgoingStream",
    "PlannedPacket",
    "RelayStats",
    "Side",
    "leg_media_from_sdp",
    "plan_digits",
]

_MASK16: Final = 0xFFFF
_MASK32: Final = 0xFFFFFFFF
_DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_G711: Final = ("PCMU", "PCMA")
_FRAME: Final = 160  # samples of one 20 ms frame at 8 kHz
#: A telephone-event for a leg without telephone-event stops sounding after this long without packets.
_EVENT_TIMEOUT: Final = 0.12
#: The fixed RTP header (RFC 3550 §5.1), and its sequence number, timestamp and SSRC from octet 2 on.
_HEADER: Final = struct.Struct("!BBHII")
_NUMBERS: Final = struct.Struct("!HII")


class Side(enum.Enum):
    """The two legs of a bridge."""

    A = "a"
    B = "b"

    # Members are singletons compared by identity: hash them by identity too (a C slot, where Enum's own
    # __hash__ is a Python function called on every dictionary lookup of the relay's per-packet path).
    __hash__ = object.__hash__

    @property
    def other(self) -> Side:
        return Side.B if self is Side.A else Side.A


def _direction(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _DIRECTIONS:
        raise MediaError(f"unknown media direction {value!r} (one of {', '.join(_DIRECTIONS)})")


@attrs.frozen
class LegMedia:
    """What one leg negotiated. ``direction`` is the one the leg's *peer* declared in its SDP: a peer that
    says ``sendonly`` (it holds us) gets nothing, one that says ``recvonly`` sends nothing we relay."""

    payload_type: int = 0
    codec: str = "PCMU"
    telephone_event_pt: int | None = 101
    direction: str = attrs.field(default="sendrecv", validator=_direction)
    clock_rate: int = 8000

    @property
    def sends(self) -> bool:
        """The peer sends media we relay."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """The peer wants media."""
        return self.direction in ("sendrecv", "recvonly")


def leg_media_from_sdp(description: SessionDescription) -> LegMedia:
    """The :class:`LegMedia` of a leg from the SDP its peer sent (the answer, or its offer once answered):
    the first active audio stream, its first format as the codec, telephone-event at that clock rate."""
    for media in description.media:
        if media.media != "audio" or media.port == 0:
            continue
        maps = media.rtp_maps()
        codec = next((m for m in maps if m.encoding.lower() != "telephone-event"), None)
        if codec is None:
            continue
        event = next(
            (m for m in maps if m.encoding.lower() == "telephone-event" and m.clock_rate == codec.clock_rate),
            None,
        )
        return LegMedia(
            codec.payload_type,
            codec.encoding.upper(),
            None if event is None else event.payload_type,
            media.direction(description.direction()),
            codec.clock_rate,
        )
    raise MediaError("the SDP has no active audio stream to relay")


# ------------------------------------------------------------------------------------------ numbering


class OutgoingStream:
    """Numbers every packet sent to one leg (see the module docstring for the epochs).

    Start it where the leg's previous sender stopped: ``next_sequence`` and ``timestamp`` (the RTP timestamp
    that sender had reached at ``time``; ``time=None`` when nothing was sent yet).
    """

    def __init__(
        self,
        ssrc: int,
        next_sequence: int,
        timestamp: int,
        time: float | None = None,
        *,
        clock_rate: int = 8000,
        max_gap: int = 50,
        max_misorder: int = 50,
    ) -> None:
        if not 0 < max_gap < 0x8000 or not 0 <= max_misorder < 0x8000:
            raise ValueError("max_gap must be 1…32767 and max_misorder 0…32767")
        self.ssrc = ssrc & _MASK32
        self.clock_rate = clock_rate
        self.max_gap = max_gap
        self.max_misorder = max_misorder
        self.epochs = 0
        #: Packets missing from the sources' numbering: gaps within an epoch (up to ``max_gap``), less the
        #: late packets that filled one (RFC 3550 §6.4.1's cumulative loss, per epoch).
        self.lost = 0
        self._highest_out = (next_sequence - 1) & _MASK16
        self._position = timestamp & _MASK32
        self._position_time = time
        self._source: Hashable | None = None
        self._first_in = 0
        self._highest_in = 0
        self._seen = 0  # bit k: the packet numbered highest_in − k was relayed (a window of max_misorder)
        self._window = (1 << (max_misorder + 1)) - 1
        self._previous: tuple[Hashable, int] | None = None  # the last epoch's source and highest number
        self._seq_offset = 0
        self._ts_offset = 0

    @property
    def next_sequence(self) -> int:
        return (self._highest_out + 1) & _MASK16

    def interrupt(self) -> None:
        """The source was not relayed for a while (hold): its next packet starts an epoch."""
        self._source = None

    def rewrite(
        self, source: Hashable, sequence: int, timestamp: int, now: float, *, span: int = 0
    ) -> tuple[int, int, bool] | None:
        """The sequence number and timestamp to send a packet of ``source`` with, and whether it starts a
        new epoch (set the marker bit on audio); ``None`` for a duplicate or a packet from before the epoch.

        ``span`` is how far past ``timestamp`` the packet's media reaches when it is sent (an RFC 4733
        event's duration so far; 0 for audio, whose timestamp is the frame that is due now).
        """
        if source == self._source:
            delta = ((sequence - self._highest_in + 0x8000) & _MASK16) - 0x8000
            if 0 < delta <= self.max_gap:
                if delta > 1:
                    self.lost += delta - 1
                self._highest_in = sequence
                self._seen = ((self._seen << delta) | 1) & self._window
                out_sequence = (sequence + self._seq_offset) & _MASK16
                out_timestamp = (timestamp + self._ts_offset) & _MASK32
                self._highest_out = out_sequence
                self._position = (out_timestamp + span) & _MASK32
                self._position_time = now
                return out_sequence, out_timestamp, False
            if -self.max_misorder <= delta <= 0:
                since_first = ((sequence - self._first_in + 0x8000) & _MASK16) - 0x8000
                if since_first < 0 or self._seen >> -delta & 1:
                    return None  # a duplicate, or a late packet of the previous epoch's numbering
                self._seen |= 1 << -delta
                self.lost -= 1  # it was counted lost when the packets after it came
                return (sequence + self._seq_offset) & _MASK16, (timestamp + self._ts_offset) & _MASK32, False
            # Anything further is a new numbering of the same SSRC (a restarted source): a new epoch.
        if self._previous is not None and source == self._previous[0]:
            behind = ((sequence - self._previous[1] + 0x8000) & _MASK16) - 0x8000
            if -self.max_misorder <= behind <= 0:
                return None  # a straggler of the epoch before, arriving after the switch
        if self._source is not None:
            self._previous = (self._source, self._highest_in)
        step = 0
        if self._position_time is not None:
            step = max(round((now - self._position_time) * self.clock_rate), 1)
        out_sequence = (self._highest_out + 1) & _MASK16
        out_timestamp = (self._position + step) & _MASK32
        self._source = source
        self._first_in = self._highest_in = sequence & _MASK16
        self._seen = 1
        self._seq_offset = out_sequence - self._first_in
        self._ts_offset = out_timestamp - timestamp
        self._highest_out = out_sequence
        self._position = (out_timestamp + span) & _MASK32
        self._position_time = now
        self.epochs += 1
        return out_sequence, out_timestamp, True


# ------------------------------------------------------------------------------------- local digits


@attrs.frozen
class PlannedPacket:
    """A locally generated packet: due ``send_at`` seconds after the digit string starts, RTP timestamp
    ``timestamp`` units after its start; ``span`` as in :meth:`OutgoingStream.rewrite`."""

    send_at: float
    timestamp: int
    payload_type: int
    payload: bytes
    marker: bool
    span: int = 0


def _encode(codec: str, samples: npt.NDArray[np.int16]) -> bytes:
    return ulaw_encode(samples) if codec == "PCMU" else alaw_encode(samples)


def _tone_samples(
    digit: str, start: int, count: int, *, low_dbm0: float = -9.0, high_dbm0: float = -7.0
) -> npt.NDArray[np.int16]:
    """``count`` samples of ``digit``'s tone pair from sample ``start`` of the tone on (phase-continuous)."""
    low, high = keypad_frequencies(digit)
    phases = (2 * np.pi * low * start / 8000, 2 * np.pi * high * start / 8000)
    tone = dtmf_tone(digit, count, low_dbm0=low_dbm0, high_dbm0=high_dbm0, phases=phases)
    return np.clip(np.rint(tone), -32768, 32767).astype(np.int16)


def plan_digits(
    digits: str,
    media: LegMedia,
    *,
    duration_ms: int = 100,
    gap_ms: int = 100,
    pause_ms: int = 1000,
    low_dbm0: float = -9.0,
    high_dbm0: float = -7.0,
) -> tuple[PlannedPacket, ...]:
    """The packets that send ``digits`` to a leg: RFC 4733 events if it negotiated telephone-event, else
    its G.711 codec carrying the tones (Q.23; the high group 2 dB louder, as telephones send them) in 20 ms
    frames with silence between. ``,`` pauses ``pause_ms``.

    :raises TelephoneEventError: a character that is neither a DTMF digit nor ``,``.
    :raises MediaError: tones are needed but the leg's codec is not G.711.
    """
    if media.telephone_event_pt is not None:
        sender = TelephoneEventSender(
            duration_ms=duration_ms, gap_ms=gap_ms, pause_ms=pause_ms, clock_rate=media.clock_rate
        )
        return tuple(
            PlannedPacket(
                p.send_time / media.clock_rate,
                p.timestamp,
                media.telephone_event_pt,
                p.payload,
                p.marker,
                p.send_time - p.timestamp,
            )
            for p in sender.packets(digits)
        )
    if media.codec not in _G711 or media.clock_rate != 8000:
        raise MediaError(f"cannot send DTMF tones in {media.codec}/{media.clock_rate} (only G.711)")
    parts: list[npt.NDArray[np.int16]] = []
    for digit in digits:
        if digit == ",":
            parts.append(np.zeros(pause_ms * 8, dtype=np.int16))
            continue
        try:
            tone = _tone_samples(digit, 0, duration_ms * 8, low_dbm0=low_dbm0, high_dbm0=high_dbm0)
        except ValueError as exc:
            raise TelephoneEventError(str(exc)) from None
        parts.append(tone)
        parts.append(np.zeros(gap_ms * 8, dtype=np.int16))
    if not parts:
        return ()
    audio = np.concatenate(parts)
    frames = -(-audio.size // _FRAME)
    padded = np.zeros(frames * _FRAME, dtype=np.int16)
    padded[: audio.size] = audio
    encoded = _encode(media.codec, padded)
    return tuple(
        PlannedPacket(
            i * _FRAME / 8000,
            i * _FRAME,
            media.payload_type,
            encoded[i * _FRAME : (i + 1) * _FRAME],
            i == 0,
        )
        for i in range(frames)
    )


# ------------------------------------------------------------------------------------------- relay


class RelayStats:
    """Per-direction counters (packets *from* the leg).

    ``jitter`` (seconds) is RFC 3550 §6.4.1's interarrival jitter of the leg's audio, estimated from one
    pair of consecutive packets in every 16 relayed (:meth:`sample`): the per-packet cost stays one bit
    test, and the estimate smooths over about 16 pairs (some five seconds of 20 ms packets).
    """

    def __init__(self) -> None:
        self.relayed = 0
        self.dropped_hold = 0
        self.dropped_payload_type = 0
        self.dropped_duplicate = 0
        self.dropped_muted = 0
        self.tone_frames = 0
        self.jitter = 0.0
        self._mark: tuple[int, int, float] | None = None

    def sample(self, sequence: int, timestamp: int, now: float, clock_rate: int) -> None:
        """An audio packet was relayed as the ``relayed``-th (received at ``now``): the 16th of a series is
        remembered, the 17th, when it follows it directly, updates ``jitter``."""
        if not self.relayed & 15:
            self._mark = (sequence, timestamp, now)
            return
        mark, self._mark = self._mark, None
        if mark is None or (sequence - mark[0]) & _MASK16 != 1:
            return
        elapsed = ((timestamp - mark[1] + 0x80000000) & _MASK32) - 0x80000000
        difference = abs((now - mark[2]) - elapsed / clock_rate)
        self.jitter += (difference - self.jitter) / 16


def _conversion(source: LegMedia, target: LegMedia) -> bytes | None:
    """A ``bytes.translate`` table from the source's G.711 law to the target's, or None if the same."""
    if source.codec == target.codec and source.clock_rate == target.clock_rate:
        return None
    if source.codec not in _G711 or target.codec not in _G711:
        raise MediaError(f"cannot relay {source.codec} to {target.codec} without a transcoder")
    every = bytes(range(256))
    linear = ulaw_decode(every) if source.codec == "PCMU" else alaw_decode(every)
    return _encode(target.codec, linear)


class _EventTones:
    """Turns one source's telephone-events into tone frames for a leg without telephone-event."""

    def __init__(self) -> None:
        self.key: int | None = None  # the RTP timestamp of the event being played
        self.digit = ""
        self.covered = 0  # samples of the event already sent as tone
        self.ended = True
        self.last_seen = 0.0
        self.sequence = 0  # numbering of the frames made (their own source for OutgoingStream)

    def active(self, now: float) -> bool:
        return not self.ended and now - self.last_seen < _EVENT_TIMEOUT


class _Direction:
    """Packets from ``source`` to ``target``: remapping tables, hold and mute state."""

    def __init__(self, source: LegMedia, target: LegMedia, stream: OutgoingStream) -> None:
        self.stream = stream
        self.stats = RelayStats()
        self.open = True
        self.muted = False  # local digits are being sent to the target
        self.tones = _EventTones()
        self.configure(source, target)

    def configure(self, source: LegMedia, target: LegMedia) -> None:
        was_open = self.open
        self.source = source
        self.target = target
        self.open = source.sends and target.receives
        self.conversion = _conversion(source, target)
        #: The source's audio payload type while :meth:`MediaRelay.handle_datagram` may relay it (open, and
        #: a target payload type that fits the header); -1: never.
        self.plain_audio = source.payload_type if self.open and 0 <= target.payload_type <= 0x7F else -1
        if self.open and not was_open:
            self.stream.interrupt()


class MediaRelay:
    """Both directions of a bridged call (pure): feed it each packet a leg sent, send what it returns to
    the other leg; drain :meth:`due_packets` on the media clock for locally sent digits."""

    def __init__(self, a: LegMedia, b: LegMedia, a_stream: OutgoingStream, b_stream: OutgoingStream) -> None:
        self._media = {Side.A: a, Side.B: b}
        self._streams = {Side.A: a_stream, Side.B: b_stream}
        #: Keyed by the side packets come *from*.
        self._directions = {
            Side.A: _Direction(a, b, b_stream),
            Side.B: _Direction(b, a, a_stream),
        }
        #: Digits queued for a leg; a leg's queue is made when it first gets digits (most calls never do, and
        #: an empty deque costs 760 bytes).
        self._digits: dict[Side, deque[tuple[float, Hashable, int, PlannedPacket]]] = {}
        self._digit_sources = itertools.count()

    def media(self, side: Side) -> LegMedia:
        return self._media[side]

    def stats(self, side: Side) -> RelayStats:
        """The counters of packets received from ``side``."""
        return self._directions[side].stats

    def lost(self, side: Side) -> int:
        """Packets of ``side``'s numbering that never arrived (see :attr:`OutgoingStream.lost`)."""
        return self._directions[side].stream.lost

    def update(self, side: Side, media: LegMedia) -> None:
        """The leg renegotiated (re-INVITE: hold, resume, other payload types)."""
        self._media[side] = media
        a, b = self._media[Side.A], self._media[Side.B]
        self._directions[Side.A].configure(a, b)
        self._directions[Side.B].configure(b, a)

    # -------------------------------------------------------------------------------- relayed packets

    def handle_datagram(self, side: Side, data: bytes, now: float) -> bytes | bytearray | None:
        """:meth:`handle_packet` without packet objects, for the packet of nearly every call's life: ``data``
        is a plain RTP datagram (version 2, no padding, extension or CSRC: first octet 0x80, 12 octets or
        more) of the leg's audio payload type, in an open and unmuted direction, no telephone-event's tone
        sounding instead. Returns the datagram to send to the other leg (the same octets
        :meth:`handle_packet` would give), ``b""`` for a duplicate (dropped and counted), or ``None`` for
        any other packet: parse it and call :meth:`handle_packet`.
        """
        direction = self._directions[side]
        second = data[1]
        if (second & 0x7F) != direction.plain_audio or direction.muted:
            return None
        tones = direction.tones
        if not tones.ended and now - tones.last_seen < _EVENT_TIMEOUT:
            return None
        stream = direction.stream
        sequence, timestamp, ssrc = _NUMBERS.unpack_from(data, 2)
        numbered = stream.rewrite(ssrc, sequence, timestamp, now)
        if numbered is None:
            direction.stats.dropped_duplicate += 1
            return b""
        out_sequence, out_timestamp, new_epoch = numbered
        stats = direction.stats
        stats.relayed += 1
        if stats.relayed & 15 < 2:
            stats.sample(sequence, timestamp, now, direction.source.clock_rate)
        out_pt = direction.target.payload_type
        if second & 0x80 or new_epoch:
            out_pt |= 0x80
        if direction.conversion is not None:
            header = _HEADER.pack(0x80, out_pt, out_sequence, out_timestamp, stream.ssrc)
            return header + data[12:].translate(direction.conversion)
        out = bytearray(data)  # one copy, the new header written over the old
        _HEADER.pack_into(out, 0, 0x80, out_pt, out_sequence, out_timestamp, stream.ssrc)
        return out

    def handle_packet(self, side: Side, packet: RtpPacket, now: float) -> list[RtpPacket]:
        """The packets to send to the other leg for one packet received from ``side``."""
        direction = self._directions[side]
        source = direction.source
        stats = direction.stats
        if not direction.open:
            stats.dropped_hold += 1
            return []
        if direction.muted:
            stats.dropped_muted += 1
            return []
        payload_type = packet.payload_type
        target = direction.target
        if payload_type == source.payload_type:
            if direction.tones.active(now):
                stats.dropped_muted += 1  # the event's tone is sounding instead
                return []
            payload = packet.payload
            if direction.conversion is not None:
                payload = payload.translate(direction.conversion)
            out_pt = target.payload_type
            span = 0
        elif payload_type == source.telephone_event_pt and payload_type is not None:
            if target.telephone_event_pt is None:
                return self._event_as_tones(direction, packet, now)
            try:
                span = parse_telephone_event(packet.payload).duration
            except TelephoneEventError:
                stats.dropped_payload_type += 1
                return []
            payload = packet.payload
            out_pt = target.telephone_event_pt
        else:
            stats.dropped_payload_type += 1  # comfort noise, a codec not negotiated, or junk
            return []
        numbered = direction.stream.rewrite(
            packet.ssrc, packet.sequence_number, packet.timestamp, now, span=span
        )
        if numbered is None:
            stats.dropped_duplicate += 1
            return []
        sequence, timestamp, new_epoch = numbered
        stats.relayed += 1
        if not span and payload_type == source.payload_type and stats.relayed & 15 < 2:
            stats.sample(packet.sequence_number, packet.timestamp, now, source.clock_rate)
        marker = packet.marker or (new_epoch and out_pt == target.payload_type)
        return [RtpPacket(out_pt, sequence, timestamp, direction.stream.ssrc, payload, marker)]

    def _event_as_tones(self, direction: _Direction, packet: RtpPacket, now: float) -> list[RtpPacket]:
        """A telephone-event for a leg without telephone-event: the tone frames it covers so far."""
        stats = direction.stats
        try:
            event = parse_telephone_event(packet.payload)
        except TelephoneEventError:
            stats.dropped_payload_type += 1
            return []
        tones = direction.tones
        target = direction.target
        if event.event >= 16 or target.codec not in _G711:
            stats.dropped_payload_type += 1
            return []
        if tones.key != packet.timestamp:
            older = ((packet.timestamp - (tones.key or 0)) & _MASK32) >= 1 << 31
            if tones.key is not None and tones.ended and older:
                stats.dropped_duplicate += 1  # a late packet of an event already played
                return []
            tones.key = packet.timestamp
            tones.digit = DTMF_EVENTS[event.event]
            tones.covered = 0
            tones.ended = False
        tones.last_seen = now
        if tones.ended:
            stats.dropped_duplicate += 1  # a retransmitted end packet
            return []
        goal = event.duration
        if event.end:
            tones.ended = True
            goal = -(-goal // _FRAME) * _FRAME  # round the last frame up
        out: list[RtpPacket] = []
        while tones.covered + _FRAME <= goal:
            samples = _tone_samples(tones.digit, tones.covered, _FRAME)
            numbered = direction.stream.rewrite(
                ("tones", packet.ssrc),
                tones.sequence,
                tones.key + tones.covered,
                now,
                span=_FRAME,
            )
            tones.sequence = (tones.sequence + 1) & _MASK16
            tones.covered += _FRAME
            if numbered is None:
                continue
            sequence, timestamp, new_epoch = numbered
            payload = _encode(target.codec, samples)
            out.append(
                RtpPacket(target.payload_type, sequence, timestamp, direction.stream.ssrc, payload, new_epoch)
            )
            stats.tone_frames += 1
        return out

    # ----------------------------------------------------------------------------------- local digits

    def send_digits(
        self,
        side: Side,
        digits: str,
        now: float,
        *,
        duration_ms: int = 100,
        gap_ms: int = 100,
        pause_ms: int = 1000,
    ) -> float:
        """Queue ``digits`` for the leg ``side`` (post-dial digits; after any still queued); relayed audio to
        it is muted until they are sent. Returns when the last packet is due."""
        planned = plan_digits(
            digits, self._media[side], duration_ms=duration_ms, gap_ms=gap_ms, pause_ms=pause_ms
        )
        queue = self._digits.setdefault(side, deque())
        start = max(now, queue[-1][0] + 0.02) if queue else now
        source = ("digits", next(self._digit_sources))
        for index, packet in enumerate(planned):
            queue.append((start + packet.send_at, source, index, packet))
        if queue:
            self._directions[side.other].muted = True
        return queue[-1][0] if queue else now

    def digits_pending(self, side: Side | None = None) -> bool:
        sides = (Side.A, Side.B) if side is None else (side,)
        return any(self._digits.get(s) for s in sides)

    def next_due(self) -> float | None:
        """When :meth:`due_packets` next has something, or None."""
        times = [queue[0][0] for queue in self._digits.values() if queue]
        return min(times) if times else None

    def due_packets(self, now: float) -> Iterator[tuple[Side, RtpPacket]]:
        """The locally generated packets due by ``now``, with the leg each goes to."""
        for side, queue in self._digits.items():
            if not queue:
                continue
            stream = self._streams[side]
            while queue and queue[0][0] <= now:
                at, source, index, planned = queue.popleft()
                numbered = stream.rewrite(source, index, planned.timestamp, at, span=planned.span)
                if numbered is None:  # cannot happen: a batch's numbering only goes forward
                    continue
                sequence, timestamp, _ = numbered
                yield (
                    side,
                    RtpPacket(
                        planned.payload_type,
                        sequence,
                        timestamp,
                        stream.ssrc,
                        planned.payload,
                        planned.marker,
                    ),
                )
            if not queue:
                self._directions[side.other].muted = False


# ------------------------------------------------------------------------------------------- glue


def _continue_from(session: RtpSession) -> OutgoingStream:
    """An outgoing stream that continues the numbering of what the session has sent so far."""
    sender = session.sender
    last = session.last_sent
    if last is None:
        return OutgoingStream(sender.ssrc, sender.next_sequence_number, sender.initial_timestamp)
    timestamp, time = last
    return OutgoingStream(sender.ssrc, sender.next_sequence_number, timestamp, time)


class MediaBridge:
    """Relays media between two :class:`~media.session.RtpSession` legs through a :class:`MediaRelay`.

    Creating it stops any playback on both legs and takes over their received packets; :meth:`close`
    hands them back. Local digits are sent on ``clock`` ticks (every 20 ms).
    """

    def __init__(
        self,
        a: RtpSession,
        b: RtpSession,
        a_media: LegMedia,
        b_media: LegMedia,
        clock: MediaClock,
        *,
        on_digits_sent: Callable[[Side], None] | None = None,
    ) -> None:
        self._sessions = {Side.A: a, Side.B: b}
        self._clock = clock
        self.on_digits_sent = on_digits_sent
        a.stop()
        b.stop()
        self.relay = MediaRelay(a_media, b_media, _continue_from(a), _continue_from(b))
        a.on_packet = self._from_a
        b.on_packet = self._from_b
        a.on_datagram = self._datagram_from_a
        b.on_datagram = self._datagram_from_b

    def _from_a(self, packet: RtpPacket, now: float) -> None:
        send = self._sessions[Side.B].send_packet
        for out in self.relay.handle_packet(Side.A, packet, now):
            send(out)

    def _from_b(self, packet: RtpPacket, now: float) -> None:
        send = self._sessions[Side.A].send_packet
        for out in self.relay.handle_packet(Side.B, packet, now):
            send(out)

    def _datagram_from_a(self, data: bytes, now: float) -> None:
        out = self.relay.handle_datagram(Side.A, data, now)
        if out is None:
            self._from_a(parse(data), now)
        elif out:
            self._sessions[Side.B].send_datagram(out)

    def _datagram_from_b(self, data: bytes, now: float) -> None:
        out = self.relay.handle_datagram(Side.B, data, now)
        if out is None:
            self._from_b(parse(data), now)
        elif out:
            self._sessions[Side.A].send_datagram(out)

    def update(self, side: Side, media: LegMedia) -> None:
        """A re-INVITE changed what leg ``side`` negotiated (hold, resume, payload types)."""
        self.relay.update(side, media)

    def send_digits(
        self, side: Side, digits: str, *, duration_ms: int = 100, gap_ms: int = 100, pause_ms: int = 1000
    ) -> float:
        """Send ``digits`` to leg ``side`` (RFC 4733 or tones, see :func:`plan_digits`); returns the clock
        time at which the last packet is due. ``on_digits_sent(side)`` is called once they are all sent."""
        done_at = self.relay.send_digits(
            side, digits, self._clock.now(), duration_ms=duration_ms, gap_ms=gap_ms, pause_ms=pause_ms
        )
        self._clock.add(self)
        return done_at

    def tick(self, now: float) -> None:
        """Called by the media clock: send the local packets that are due."""
        pending = [side for side in Side if self.relay.digits_pending(side)]
        for side, packet in self.relay.due_packets(now):
            self._sessions[side].send_packet(packet)
        for side in pending:
            if not self.relay.digits_pending(side) and self.on_digits_sent is not None:
                self.on_digits_sent(side)
        if not self.relay.digits_pending():
            self._clock.discard(self)

    def close(self) -> None:
        """Stop relaying; the sessions keep their sockets."""
        for session in self._sessions.values():
            session.on_packet = None
            session.on_datagram = None
        self._clock.discard(self)
