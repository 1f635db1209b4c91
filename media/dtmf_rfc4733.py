"""DTMF digits as RTP telephone events (RFC 4733): the payload, a receiver machine and a sender.

The payload (RFC 4733 §2.3)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R| volume    |          duration             |

One key press is one *event*, identified by the RTP timestamp of its start; every packet of it carries that
timestamp and the duration so far (§2.5.1.2). The packet ending it has the E bit set and is sent three times
(§2.5.1.4). An event longer than the 16-bit duration field is split into *segments* (§2.5.1.3): the last
packet of a segment reports duration 0xFFFF without the E bit, and the next segment carries a new RTP
timestamp, the old one plus 0xFFFF, with the marker bit clear.

:class:`TelephoneEventReceiver` is sans-I/O (aioquic style): feed it packets with :meth:`handle_packet`, ask
:meth:`get_timer` when it next needs waking, call :meth:`handle_timer`, and drain :meth:`next_event`. It
reports exactly one :class:`DigitReceived` per key press, when the press ends: on the first end packet, when
a newer event starts, or when no packet of the press arrived for ``timeout`` seconds (its end packets were
lost).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final

import attrs

from .errors import TelephoneEventError

__all__ = [
    "DTMF_EVENTS",
    "MAX_DURATION",
    "DigitReceived",
    "TelephoneEvent",
    "TelephoneEventPacket",
    "TelephoneEventReceiver",
    "TelephoneEventSender",
    "digit_to_event",
    "event_to_digit",
    "parse_telephone_event",
]

logger = logging.getLogger(__name__)

#: The DTMF digits in event-code order (RFC 4733 §3.2, Table 3): 0–9, * = 10, # = 11, A–D = 12–15.
DTMF_EVENTS: Final = "0123456789*#ABCD"
#: The largest duration one packet (one segment) can report (§2.5.1.3).
MAX_DURATION: Final = 0xFFFF
_HALF: Final = 1 << 31
_MASK32: Final = 0xFFFFFFFF


def digit_to_event(digit: str) -> int:
    """The event code of a DTMF digit (``a``–``d`` are accepted for ``A``–``D``)."""
    code = DTMF_EVENTS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise TelephoneEventError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    return code


def event_to_digit(event: int) -> str | None:
    """The DTMF digit of an event code, or ``None`` for events that are not DTMF digits."""
    return DTMF_EVENTS[event] if 0 <= event < len(DTMF_EVENTS) else None


@attrs.frozen
class TelephoneEvent:
    """One telephone-event payload block (RFC 4733 §2.3). ``volume`` is the power in −dBm0 (0…63)."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __bytes__(self) -> bytes:
        if not 0 <= self.event <= 255:
            raise TelephoneEventError(f"event code {self.event} is outside 0…255")
        if not 0 <= self.volume <= 63:
            raise TelephoneEventError(f"volume {self.volume} is outside 0…63")
        if not 0 <= self.duration <= MAX_DURATION:
            raise TelephoneEventError(f"duration {self.duration} is outside 0…65535")
        return bytes(
            (
                self.event,
                (0x80 if self.end else 0) | self.volume,
                self.duration >> 8,
                self.duration & 0xFF,
            )
        )


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Parse the first event block of a telephone-event payload; the R bit is ignored (§2.3.3).

    A packet may carry further blocks (§2.5.1.5, redundant earlier events); they are not returned.

    :raises TelephoneEventError: a payload shorter than one 4-octet block.
    """
    if len(payload) < 4:
        raise TelephoneEventError(f"telephone-event payload of {len(payload)} octets is shorter than 4")
    return TelephoneEvent(
        payload[0],
        payload[1] & 0x80 != 0,
        payload[1] & 0x3F,
        (payload[2] << 8) | payload[3],
    )


@attrs.frozen
class DigitReceived:
    """A key press ended. ``start_timestamp`` is the RTP timestamp of its first segment; ``duration`` is in
    timestamp units over all segments, as far as the packets that arrived tell. ``ended`` is false when the
    press was closed by a timeout or by a newer event because its end packets were lost."""

    digit: str
    start_timestamp: int
    duration: int
    ended: bool = True


@attrs.define
class _Press:
    code: int
    start_timestamp: int
    segment_timestamp: int
    duration: int  # within the current segment
    last_seen: float
    segments: list[int]

    @property
    def total_duration(self) -> int:
        return ((self.segment_timestamp - self.start_timestamp) & _MASK32) + self.duration


class TelephoneEventReceiver:
    """Turns the telephone-event packets of one RTP stream (one SSRC) into one :class:`DigitReceived` per key
    press, tolerating loss, duplication and reordering (RFC 4733 §2.5.2).

    - Packets are grouped by RTP timestamp. Duplicates, the triple end packet and late packets of a press
      already reported are recognised by timestamp (the last ``history`` event timestamps are remembered).
    - The first packets of a press may be lost: any packet of a new timestamp starts it.
    - A press of the same digit with a new timestamp is a new press.
    - A packet whose timestamp is older than the newest one seen (by less than ``stale_window`` units, to
      survive a sender that restarts its timestamps) belongs to a press that is over: it is dropped.
    - A packet with the same event code and a timestamp a multiple of 0xFFFF after the current segment's is a
      new segment of the same press (§2.5.1.3), not a new press.
    - Events other than DTMF digits (codes above 15) and malformed payloads are counted and dropped.

    ``sequence_number`` and ``marker`` are accepted for the shell's convenience and for logging; the RTP
    timestamp and the event duration alone order the packets of telephone events.
    """

    def __init__(self, *, timeout: float = 0.5, history: int = 16, stale_window: int = 8000 * 8) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.stale_window = stale_window
        self.malformed_packets = 0
        self.ignored_events = 0
        self._press: _Press | None = None
        self._history = history
        # Short lists rather than deques: every RTP leg has a receiver, and an empty deque costs 760 bytes.
        self._finished: list[int] = []
        self._newest: int | None = None
        self._events: list[DigitReceived] = []

    def handle_packet(
        self,
        timestamp: int,
        sequence_number: int,
        marker: bool,
        payload: bytes,
        now: float,
    ) -> None:
        """Feed one RTP packet of the telephone-event payload type."""
        try:
            event = parse_telephone_event(payload)
        except TelephoneEventError:
            self.malformed_packets += 1
            return
        if event_to_digit(event.event) is None:
            self.ignored_events += 1
            return
        press = self._press
        if press is not None and timestamp == press.segment_timestamp:
            if event.event != press.code:
                self.ignored_events += 1  # one timestamp, two events: keep the first
                return
            press.duration = max(press.duration, event.duration)
            press.last_seen = now
            if event.end:
                self._finish(ended=True)
            return
        if timestamp in self._finished or (press is not None and timestamp in press.segments):
            return  # a retransmitted end packet, a duplicate, or a late packet of a press already over
        if press is not None and event.event == press.code:
            delta = (timestamp - press.segment_timestamp) & _MASK32
            if 0 < delta < _HALF and delta % MAX_DURATION == 0:
                press.segment_timestamp = timestamp
                press.segments.append(timestamp)
                press.duration = event.duration
                press.last_seen = now
                self._newest = timestamp
                if event.end:
                    self._finish(ended=True)
                return
        if self._newest is not None:
            behind = (self._newest - timestamp) & _MASK32
            if 0 < behind < self.stale_window:
                logger.debug("dropped a stale telephone event: ts=%d seq=%d", timestamp, sequence_number)
                return
        if press is not None:
            self._finish(ended=False)
        logger.debug(
            "telephone event %d started: ts=%d seq=%d m=%s", event.event, timestamp, sequence_number, marker
        )
        self._press = _Press(event.event, timestamp, timestamp, event.duration, now, [timestamp])
        self._newest = timestamp
        if event.end:
            self._finish(ended=True)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None`` when no press is open."""
        return None if self._press is None else self._press.last_seen + self.timeout

    def handle_timer(self, now: float) -> None:
        """Close the open press if no packet of it arrived for ``timeout`` seconds."""
        timer = self.get_timer()
        if timer is not None and now >= timer:
            self._finish(ended=False)

    def next_event(self) -> DigitReceived | None:
        """The oldest event not yet taken, or ``None``."""
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[DigitReceived]:
        """Drain every pending event, oldest first."""
        while self._events:
            yield self._events.pop(0)

    def reset(self) -> None:
        """Forget every press (e.g. when the stream's SSRC changes); an open press is not reported."""
        self._press = None
        self._finished.clear()
        self._newest = None

    def _finish(self, *, ended: bool) -> None:
        press = self._press
        assert press is not None
        self._press = None
        self._finished.extend(press.segments)
        if len(self._finished) > self._history:
            del self._finished[: len(self._finished) - self._history]
        digit = DTMF_EVENTS[press.code]
        self._events.append(DigitReceived(digit, press.start_timestamp, press.total_duration, ended))


@attrs.frozen
class TelephoneEventPacket:
    """One packet to send: at ``send_time`` (timestamp units from the start of the digit string), with the RTP
    timestamp ``timestamp`` (same units and origin: the start of the event's segment)."""

    send_time: int
    timestamp: int
    marker: bool
    event: TelephoneEvent

    @property
    def payload(self) -> bytes:
        return bytes(self.event)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value}")


@attrs.frozen
class TelephoneEventSender:
    """Plans the telephone-event packets for a digit string (RFC 4733 §2.5.1).

    Each digit lasts ``duration_ms`` and is followed by ``gap_ms`` of silence; ``,`` pauses ``pause_ms``.
    Every ``packet_interval_ms`` a packet reports the duration so far (0 in the first, which carries the
    marker bit); at the end, ``end_packets`` identical packets with the E bit report the full duration.
    Presses longer than 0xFFFF timestamp units are split into segments. Times are in units of ``clock_rate``.
    """

    duration_ms: int = attrs.field(default=100, validator=_positive)
    gap_ms: int = attrs.field(default=100, validator=_not_negative)
    volume: int = attrs.field(default=10, validator=attrs.validators.in_(range(64)))
    end_packets: int = attrs.field(default=3, validator=_positive)
    pause_ms: int = attrs.field(default=1000, validator=_not_negative)
    packet_interval_ms: int = attrs.field(default=20, validator=_positive)
    clock_rate: int = attrs.field(default=8000, validator=_positive)

    def _units(self, ms: int) -> int:
        return ms * self.clock_rate // 1000

    def packets(self, digits: str) -> tuple[TelephoneEventPacket, ...]:
        """Every packet for ``digits``, in sending order.

        :raises TelephoneEventError: a character that is neither a DTMF digit nor ``,``.
        """
        codes = [None if digit == "," else digit_to_event(digit) for digit in digits]
        duration = self._units(self.duration_ms)
        interval = self._units(self.packet_interval_ms)
        if not 0 < interval <= MAX_DURATION:
            raise TelephoneEventError(f"a packet interval of {interval} units is outside 1…65535")
        out: list[TelephoneEventPacket] = []
        now = 0
        for code in codes:
            if code is None:
                now += self._units(self.pause_ms)
                continue
            out.extend(self._press(code, now, duration, interval))
            now += duration + self._units(self.gap_ms)
        return tuple(out)

    def _press(self, code: int, start: int, duration: int, interval: int) -> Iterator[TelephoneEventPacket]:
        end = start + duration
        segment = start
        marker = True
        for send_time in range(start, end, interval):
            if send_time - segment >= MAX_DURATION:
                yield TelephoneEventPacket(send_time, segment, False, self._event(code, MAX_DURATION))
                segment += MAX_DURATION
            yield TelephoneEventPacket(send_time, segment, marker, self._event(code, send_time - segment))
            marker = False
        while end - segment > MAX_DURATION:
            yield TelephoneEventPacket(end, segment, False, self._event(code, MAX_DURATION))
            segment += MAX_DURATION
        final = self._event(code, end - segment, end=True)
        for _ in range(self.end_packets):
            yield TelephoneEventPacket(end, segment, False, final)

    def _event(self, code: int, duration: int, *, end: bool = False) -> TelephoneEvent:
        return TelephoneEvent(code, end, self.volume, duration)
