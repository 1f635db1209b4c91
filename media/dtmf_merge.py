"""One key press, one digit: merging the digits a call receives from RFC 4733 events, in-band tones and INFO.

A phone or gateway may send the same key press two or three ways at once: as telephone events (RFC 4733),
as tones in the audio (which the in-band detector also hears), and as a SIP INFO request. The digit
collector must count it once. :class:`DigitMerger` is sans-I/O: give it each digit with its source and the
time it was received (``now``, seconds, any monotonic origin), drain :class:`KeyPressed` events.

The rule. Every report gets an estimated start: ``now − elapsed``, where ``elapsed`` is how long the press
had been going when the source reported it (an RFC 4733 digit is reported when the press ends, so its
elapsed time is its duration; the in-band detector reports about 35 ms after the tone began; INFO is taken
as reported at the start). A report joins the *earliest* recent press of the same digit whose start lies
within ``window`` seconds of its own and that this source has not reported yet; otherwise it is a new key
press and is emitted at once. A source never merges with itself, so a digit pressed twice counts twice
whenever any one source saw both presses, however close together; reports of one press from different
sources count once while they start within ``window`` of each other.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final

import attrs

from .dtmf_inband import RATE, DigitDetected
from .dtmf_info import InfoDigitReceived
from .dtmf_rfc4733 import DTMF_EVENTS, DigitReceived

__all__ = ["DigitMerger", "DigitSource", "KeyPressed"]

_INBAND_CLOCK: Final = float(RATE)


class DigitSource(enum.Enum):
    """Where a digit came from."""

    TELEPHONE_EVENT = "rfc4733"
    INBAND = "inband"
    SIP_INFO = "info"


@attrs.frozen
class KeyPressed:
    """A key press, counted once: its digit, the source that reported it first, and its estimated start."""

    digit: str
    source: DigitSource
    started_at: float


@attrs.define
class _Press:
    digit: str
    started_at: float
    reported_at: float
    sources: set[DigitSource]


class DigitMerger:
    """Merges digit reports from several sources into one :class:`KeyPressed` per key press (see module).

    ``window`` is how far apart (seconds) the estimated starts of two sources' reports of one press may be;
    presses are forgotten ``retention`` seconds after their first report, and at most ``history`` are kept.
    """

    def __init__(self, *, window: float = 0.5, retention: float = 5.0, history: int = 32) -> None:
        if window <= 0 or retention < window or history < 1:
            raise ValueError("window must be positive, retention at least window, history at least 1")
        self.window = window
        self.retention = retention
        #: Reports absorbed into a press another source had already reported.
        self.duplicates = 0
        self._history = history
        # Short lists rather than deques: every RTP leg has a merger, and an empty deque costs 760 bytes.
        self._presses: list[_Press] = []
        self._events: list[KeyPressed] = []

    def handle_digit(self, source: DigitSource, digit: str, now: float, *, elapsed: float = 0.0) -> None:
        """One source reported ``digit`` at ``now``, ``elapsed`` seconds after the press began.

        :raises ValueError: ``digit`` is not one of ``0123456789*#ABCD`` (``a``–``d`` are accepted).
        """
        key = digit.upper()
        if len(key) != 1 or key not in DTMF_EVENTS:
            raise ValueError(f"{digit!r} is not a DTMF digit")
        while self._presses and self._presses[0].reported_at < now - self.retention:
            del self._presses[0]
        started_at = now - max(elapsed, 0.0)
        for press in self._presses:
            if (
                press.digit == key
                and source not in press.sources
                and abs(press.started_at - started_at) <= self.window
            ):
                press.sources.add(source)
                self.duplicates += 1
                return
        self._presses.append(_Press(key, started_at, now, {source}))
        if len(self._presses) > self._history:
            del self._presses[0]
        self._events.append(KeyPressed(key, source, started_at))

    def handle_telephone_event(self, event: DigitReceived, now: float, *, clock_rate: int = 8000) -> None:
        """An RFC 4733 digit (reported when the press ended: elapsed = its duration)."""
        self.handle_digit(DigitSource.TELEPHONE_EVENT, event.digit, now, elapsed=event.duration / clock_rate)

    def handle_inband(self, event: DigitDetected, now: float) -> None:
        """An in-band digit (reported when the detector confirmed it, a little after the tone began)."""
        elapsed = (event.detected_at - event.start) / _INBAND_CLOCK
        self.handle_digit(DigitSource.INBAND, event.digit, now, elapsed=elapsed)

    def handle_info(self, event: InfoDigitReceived, now: float) -> None:
        """A SIP INFO digit (taken as sent when the press began)."""
        self.handle_digit(DigitSource.SIP_INFO, event.digit, now)

    def next_event(self) -> KeyPressed | None:
        """The oldest key press not yet taken, or ``None``."""
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[KeyPressed]:
        """Drain every pending key press, oldest first."""
        while self._events:
            yield self._events.pop(0)
