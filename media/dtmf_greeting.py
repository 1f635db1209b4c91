"""In-band DTMF detection while the greeting plays: the caller's audio with the greeting's echo removed.

While we play the greeting, the caller's line sends part of it back (hybrid echo) on top of the caller's
key tones. Both classes here run the received audio through an :class:`~media.echo.EchoCanceller` fed
with what we sent, then through the :class:`~media.dtmf_inband.InbandDetector`:

* :class:`GreetingDetector` — one stream, received and sent samples given side by side, already aligned
  (``reference[i]`` is what was sent when the echo path's delay starts to count for ``received[i]``). The
  benchmark corpus and the tests use it.
* :class:`DetectorBank` — every call in the greeting at once, in lockstep with the media clock: each 20 ms
  tick, one vectorised echo cancellation and one window analysis (:func:`~media.dtmf_inband.analyse_windows`)
  for all streams; only the streams whose windows name a digit, or whose detector is in the middle of a
  press, run their per-stream duration machine. Received frames are placed by their RTP position, so
  network jitter of up to ``delay`` ticks and lost packets leave the alignment with the sent audio intact.

Both treat a stream the same way, block by block (property-tested): the canceller's residual goes to the
detector, and while the detector hears a tone (:attr:`~media.dtmf_inband.InbandDetector.hearing`) the
canceller does not adapt on the next block. Without anything sent (silence as reference) the residual is
the received audio exactly, so detection is what it is without a greeting.

Pure: no clock, no I/O; the caller supplies the ticks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .dtmf_inband import HOP, WINDOW, DigitDetected, InbandDetector, analyse_windows
from .echo import BLOCK, PARTITIONS, EchoCanceller

__all__ = ["DetectorBank", "GreetingDetector"]

_Float = npt.NDArray[np.float64]


class GreetingDetector:
    """One stream's in-band detection with the greeting's echo removed (see the module docstring)."""

    def __init__(self, detector: InbandDetector | None = None, *, partitions: int = PARTITIONS) -> None:
        self.detector = detector or InbandDetector()
        self.canceller = EchoCanceller(1, partitions=partitions)
        self._received: _Float = np.zeros(0)
        self._reference: _Float = np.zeros(0)

    def feed(self, received: npt.ArrayLike, reference: npt.ArrayLike | None = None) -> list[DigitDetected]:
        """The next received samples and, aligned with them, the samples sent (``None``: silence); returns
        the digits confirmed. Samples are processed in blocks of 160; a remainder waits for the next feed."""
        d = np.asarray(received, dtype=np.float64).reshape(-1)
        x = np.zeros(len(d)) if reference is None else np.asarray(reference, dtype=np.float64).reshape(-1)
        if len(x) != len(d):
            raise ValueError("received and reference must have the same length")
        self._received = np.concatenate([self._received, d])
        self._reference = np.concatenate([self._reference, x])
        found: list[DigitDetected] = []
        blocks = len(self._received) // BLOCK
        for b in range(blocks):
            part = slice(b * BLOCK, (b + 1) * BLOCK)
            adapt = np.array([not self.detector.hearing])
            received_block, sent_block = self._received[None, part], self._reference[None, part]
            residual = self.canceller.process(received_block, sent_block, adapt=adapt)
            found.extend(self.detector.feed(residual[0]))
        self._received = self._received[blocks * BLOCK :]
        self._reference = self._reference[blocks * BLOCK :]
        return found


class _Stream:
    """What the bank keeps per stream besides its rows in the arrays."""

    def __init__(self, handle: int, detector: InbandDetector) -> None:
        self.handle = handle
        self.detector = detector
        self.base_slot: int | None = None  # the slot of the first frame received …
        self.base_position = 0  # … and its stream position
        self.primed = False  # the detector has been fed up to the last processed slot


class DetectorBank:
    """Greeting-aware in-band detection for many streams, one vectorised pass per tick (module docstring).

    Per tick, in this order: :meth:`sent` for every stream that sent a frame this tick (a stream that sent
    nothing sent silence), :meth:`received` whenever a frame arrives, then :meth:`tick` once. A frame
    received between two ticks belongs to the next tick's slot (the first frame of a stream sets where its
    numbering lies); a slot is analysed ``delay`` ticks later, with the frame sent at the tick before the
    slot's frames arrived as its reference block (the newest their echo can contain). Frames later than
    that, or lost, are gaps: the detector starts afresh after one.
    """

    def __init__(
        self,
        *,
        delay: int = 2,
        partitions: int = PARTITIONS,
        detector_factory: Callable[[], InbandDetector] = InbandDetector,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be ≥ 0")
        self.delay = delay
        self._ring = delay + 3
        self._factory = detector_factory
        self._checks = detector_factory().checks
        self._canceller = EchoCanceller(0, partitions=partitions)
        self._ticks = 0
        self._handles = 0
        self._rows: dict[int, int] = {}
        self._streams: list[_Stream] = []
        self._received: _Float = np.zeros((self._ring, 0, BLOCK))
        self._present: npt.NDArray[np.bool_] = np.zeros((self._ring, 0), dtype=bool)
        self._sent: _Float = np.zeros((self._ring, 0, BLOCK))
        self._previous: _Float = np.zeros((0, BLOCK))  # the last processed slot's residual
        self._continuous: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)  # … and whether it was there
        self._hearing: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        #: Received frames dropped because they came after their slot was analysed (or far too early).
        self.late = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, handle: int) -> bool:
        return handle in self._rows

    def join(self) -> int:
        """A new stream; returns its handle."""
        handle = self._handles
        self._handles += 1
        self._rows[handle] = len(self._streams)
        self._streams.append(_Stream(handle, self._factory()))
        self._canceller.add()
        self._received = np.concatenate([self._received, np.zeros((self._ring, 1, BLOCK))], axis=1)
        self._present = np.concatenate([self._present, np.zeros((self._ring, 1), dtype=bool)], axis=1)
        self._sent = np.concatenate([self._sent, np.zeros((self._ring, 1, BLOCK))], axis=1)
        self._previous = np.concatenate([self._previous, np.zeros((1, BLOCK))])
        self._continuous = np.concatenate([self._continuous, [False]])
        self._hearing = np.concatenate([self._hearing, [False]])
        return handle

    def leave(self, handle: int) -> None:
        """Forget the stream ``handle`` (unknown handles are ignored)."""
        row = self._rows.pop(handle, None)
        if row is None:
            return
        last = len(self._streams) - 1
        self._canceller.remove(row)
        if row != last:
            moved = self._streams[last]
            self._streams[row] = moved
            self._rows[moved.handle] = row
            for array in (self._received, self._present, self._sent):
                array[:, row] = array[:, last]
            for array in (self._previous, self._continuous, self._hearing):
                array[row] = array[last]
        self._streams.pop()
        self._received = self._received[:, :last]
        self._present = self._present[:, :last]
        self._sent = self._sent[:, :last]
        self._previous = self._previous[:last]
        self._continuous = self._continuous[:last]
        self._hearing = self._hearing[:last]

    def sent(self, handle: int, samples: npt.ArrayLike) -> None:
        """The frame (160 samples) stream ``handle`` sent this tick."""
        self._sent[self._ticks % self._ring, self._rows[handle]] = samples

    def received(self, handle: int, position: int, samples: npt.ArrayLike) -> None:
        """A received frame (160 samples) of stream ``handle`` starting at stream position ``position``
        (RTP timestamp units, counted on from the stream's first frame)."""
        row = self._rows[handle]
        stream = self._streams[row]
        upcoming = self._ticks + 1
        if stream.base_slot is None:
            stream.base_slot, stream.base_position = upcoming, position
        slot = stream.base_slot + (position - stream.base_position) // BLOCK
        if slot <= self._ticks - self.delay or slot > upcoming + 1:
            self.late += 1
            return
        self._received[slot % self._ring, row] = samples
        self._present[slot % self._ring, row] = True

    def tick(self) -> list[tuple[int, DigitDetected]]:
        """Analyse the slot that is ``delay`` ticks old for every stream; returns ``(handle, digit)`` for the
        digits confirmed, streams in no particular order."""
        self._ticks += 1
        slot = self._ticks - self.delay
        index = slot % self._ring
        n = len(self._streams)
        present = self._present[index].copy()
        received = np.where(present[:, None], self._received[index], 0.0)
        # The slot's frames arrived before this slot's tick sent anything: their echo can only come from
        # what was sent at the tick before, and earlier.
        reference = self._sent[(slot - 2) % self._ring]
        self._present[index] = False
        self._sent[self._ticks % self._ring] = 0.0  # what the next tick sends, silence until it does
        found: list[tuple[int, DigitDetected]] = []
        if n == 0:
            return found
        residual = self._canceller.process(received, reference, adapt=~self._hearing, present=present)
        # The four windows each slot completes: the last HOP samples of the slot before, then this slot's.
        joined = np.concatenate([self._previous[:, BLOCK - HOP :], residual], axis=1)
        windows = np.lib.stride_tricks.sliding_window_view(joined, WINDOW, axis=1)[:, ::HOP]
        verdicts = analyse_windows(windows, **self._checks).digits
        verdicts[~self._continuous, 0] = -1
        verdicts[~present] = -1
        busy = ((verdicts >= 0).any(axis=1) | self._hearing) & present
        for row in np.flatnonzero(busy):
            stream = self._streams[row]
            assert stream.base_slot is not None
            position = stream.base_position + (slot - stream.base_slot) * BLOCK
            detector = stream.detector
            if not stream.primed:
                if self._continuous[row]:
                    detector.reset(position - BLOCK)
                    detector.feed(self._previous[row])
                else:
                    detector.reset(position)
            mine = verdicts[row] if self._continuous[row] else verdicts[row, 1:]
            for digit in detector.feed(residual[row], verdicts=mine):
                found.append((stream.handle, digit))
            stream.primed = detector.hearing
            self._hearing[row] = detector.hearing
        for row in np.flatnonzero(~busy & self._hearing):  # a gap ended what the detector heard
            self._streams[row].primed = False
        self._hearing &= busy
        self._previous = residual
        self._continuous = present
        return found
