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
  press, run their per-stream duration machine. Sent and received frames are both placed by their RTP
  timestamps (two sample clocks a fixed distance apart), so network jitter of up to ``delay`` ticks, a
  send that slips by a tick and lost packets leave the alignment of the echo with the sent audio intact.

Both treat a stream the same way, block by block (property-tested): the canceller's residual goes to the
detector, and while the detector hears a tone (:attr:`~media.dtmf_inband.InbandDetector.hearing`) the
canceller does not adapt on the next block. Without anything sent (silence as reference) the residual is
the received audio exactly, so detection is what it is without a greeting.

Pure: no clock, no I/O; the caller supplies the ticks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from .dtmf_inband import HOP, WINDOW, DigitDetected, InbandDetector, analyse_windows
from .echo import BLOCK, PARTITIONS, EchoCanceller
from .rowstore import RowStore

__all__ = ["DetectorBank", "GreetingDetector"]

_SENT_RING: Final = 25 * BLOCK  # sent audio kept per stream: half a second
_COUNT: Final = np.arange(BLOCK)

_Float = npt.NDArray[np.float64]


class GreetingDetector:
    """One stream's in-band detection with the greeting's echo removed (see the module docstring)."""

    def __init__(
        self, detector: InbandDetector | None = None, *, partitions: int = PARTITIONS, phase: int = 0
    ) -> None:
        self.detector = detector or InbandDetector()
        self.canceller = EchoCanceller(0, partitions=partitions)
        self.canceller.add(phase)  # when it learns once converged (EchoCanceller.add)
        self._received: _Float = np.zeros(0)
        self._reference: _Float = np.zeros(0)
        self._position = 0  # stream offset of the next block

    def lost(self, reference: npt.ArrayLike | None = None) -> None:
        """A block (160 samples) that never arrived, and what was sent meanwhile: the canceller's reference
        advances, and the detector starts afresh after the gap. Only between whole blocks."""
        if len(self._received):
            raise ValueError("a lost block must come between whole blocks")
        x = np.zeros(BLOCK) if reference is None else np.asarray(reference, dtype=np.float64).reshape(BLOCK)
        adapt = np.array([not self.detector.hearing])
        self.canceller.process(np.zeros((1, BLOCK)), x[None], adapt=adapt, present=np.array([False]))
        self._position += BLOCK
        self.detector.reset(self._position)

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
            found.extend(self.detector.feed(residual[0], self._position))
            self._position += BLOCK
        self._received = self._received[blocks * BLOCK :]
        self._reference = self._reference[blocks * BLOCK :]
        return found


class _Stream:
    """What the bank keeps per stream besides its rows in the arrays."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.detector: InbandDetector | None = None  # made when the stream first needs it
        self.base_slot: int | None = None  # the slot of the first frame received …
        self.base_position = 0  # … and its stream position
        self.sent_origin: int | None = None  # the RTP timestamp of the first frame sent …
        self.sent_end = 0  # … and the position after the last sample sent (also in DetectorBank._sent_end)
        self.primed = False  # the detector has been fed up to the last processed slot


class DetectorBank:
    """Greeting-aware in-band detection for many streams, one vectorised pass per tick (module docstring).

    Per tick: :meth:`sent` for each frame a stream sends (with its RTP timestamp; what was not sent is
    silence), :meth:`received` whenever a frame arrives (with the position its RTP timestamp gives it),
    then :meth:`tick` once. A frame received between two ticks belongs to the next tick's slot (a stream's
    first frame sets where its numbering lies); a slot is analysed ``delay`` ticks later. Its reference is
    the sent audio at the fixed distance found when the stream's first frame arrived: that frame's last
    sample against the newest sample sent by then (the newest its echo can contain). A lost frame is a
    gap: the detector starts afresh after it. A frame later than ``delay`` ticks makes the stream's
    numbering slip by as many slots (see :attr:`slips`).
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
        rows = self._store = RowStore(self)
        #: Received frames waiting for their slot to be analysed (a ring of slots), and which are there.
        self._received: _Float = rows.add_array("_received", (self._ring, 0, BLOCK), np.float64, axis=1)
        self._present: npt.NDArray[np.bool_] = rows.add_array("_present", (self._ring, 0), np.bool_, axis=1)
        #: Sent samples by position (modulo _SENT_RING), and the position after the last one sent.
        self._sent: _Float = rows.add_array("_sent", (0, _SENT_RING), np.float64)
        self._sent_end: npt.NDArray[np.int64] = rows.add_array("_sent_end", (0,), np.int64)
        #: Where each stream's reference block for slot q starts: ``_align + q · BLOCK`` (sent position),
        #: once its first frame arrived (``_based``): that frame's last sample is aligned with the newest
        #: sample sent by then, the newest its echo can contain.
        self._align: npt.NDArray[np.int64] = rows.add_array("_align", (0,), np.int64)
        self._based: npt.NDArray[np.bool_] = rows.add_array("_based", (0,), np.bool_)
        #: The last processed slot's residual, whether the stream had a frame there, whether it hears a tone.
        self._previous: _Float = rows.add_array("_previous", (0, BLOCK), np.float64)
        self._continuous: npt.NDArray[np.bool_] = rows.add_array("_continuous", (0,), np.bool_)
        self._hearing: npt.NDArray[np.bool_] = rows.add_array("_hearing", (0,), np.bool_)
        #: How often a stream's frames came later (or earlier) than the jitter allowance and its numbering
        #: slipped by a slot or more.
        self.slips = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, handle: int) -> bool:
        return handle in self._rows

    def join(self) -> int:
        """A new stream; returns its handle."""
        handle = self._handles
        self._handles += 1
        self._rows[handle] = len(self._streams)
        self._streams.append(_Stream(handle))
        self._canceller.add(phase=handle)  # streams that join together learn on different ticks
        self._store.add()
        return handle

    def leave(self, handle: int) -> None:
        """Forget the stream ``handle`` (unknown handles are ignored)."""
        row = self._rows.pop(handle, None)
        if row is None:
            return
        last = len(self._streams) - 1
        self._canceller.remove(row)
        self._store.remove(row)
        if row != last:
            moved = self._streams[last]
            self._streams[row] = moved
            self._rows[moved.handle] = row
        self._streams.pop()

    def sent(self, handle: int, samples: npt.ArrayLike, timestamp: int) -> None:
        """A frame (160 samples) stream ``handle`` sent, with its RTP timestamp."""
        row = self._rows[handle]
        stream = self._streams[row]
        origin = stream.sent_origin
        if origin is None:
            origin = stream.sent_origin = timestamp
        position = (timestamp - origin) & 0xFFFFFFFF
        position -= position % BLOCK  # frames on the 20 ms grid of the first (a greeting's always are)
        end = stream.sent_end
        if position != end:  # not the frame after the last one
            if position < end - _SENT_RING or position >= 0x80000000:
                return  # from before what we keep: not the greeting's time line
            for start in range(end, min(position, end + _SENT_RING), BLOCK):
                self._sent[row, start % _SENT_RING : start % _SENT_RING + BLOCK] = 0.0  # not sent: silence
        start = position % _SENT_RING
        self._sent[row, start : start + BLOCK] = samples
        if position + BLOCK > end:
            stream.sent_end = position + BLOCK
            self._sent_end[row] = position + BLOCK

    def received(self, handle: int, position: int, samples: npt.ArrayLike) -> None:
        """A received frame (160 samples) of stream ``handle`` starting at stream position ``position``
        (RTP timestamp units, counted on from the stream's first frame)."""
        row = self._rows[handle]
        stream = self._streams[row]
        upcoming = self._ticks + 1
        if stream.base_slot is None:
            stream.base_slot, stream.base_position = upcoming, position
            offset = stream.sent_end - (position + BLOCK)
            self._align[row] = position + offset - upcoming * BLOCK
            self._based[row] = True
        slot = stream.base_slot + (position - stream.base_position) // BLOCK
        earliest = self._ticks - self.delay + 1  # the first slot not yet analysed
        if not earliest <= slot <= upcoming + 1:
            # Later (or earlier) than the jitter allowance: the sender's clock drifts against ours, or its
            # path got longer. Its numbering slips so that this frame is analysed; the echo's alignment,
            # which goes by position, stays; frames already waiting for a slot are dropped.
            shift = earliest - slot if slot < earliest else upcoming + 1 - slot
            stream.base_slot += shift
            self._align[row] -= shift * BLOCK
            self._present[:, row] = False
            self.slips += 1
            slot += shift
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
        self._present[index] = False
        found: list[tuple[int, DigitDetected]] = []
        if n == 0:
            return found
        reference = self._reference(slot)
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
            if detector is None:
                detector = stream.detector = self._factory()
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
        self._previous[...] = residual
        self._continuous[...] = present
        return found

    def _reference(self, slot: int) -> _Float:
        """Each stream's sent block aligned with its received frame of ``slot`` (silence where nothing was
        sent, or before a stream's first frame arrived)."""
        starts = self._align + slot * BLOCK
        positions = starts[:, None] + _COUNT
        reference = np.take_along_axis(self._sent, positions % _SENT_RING, axis=1)
        # A block counts if all of it was sent and is still kept (a block half sent is rare: silence).
        ends = self._sent_end
        known = (self._based & (starts >= 0) & (starts + BLOCK <= ends) & (starts >= ends - _SENT_RING))[
            :, None
        ]
        result: _Float = np.where(known, reference, 0.0)
        return result
