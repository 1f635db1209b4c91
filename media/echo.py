"""Line echo cancellation for the greeting: remove what we play from what the caller's line returns.

A caller's line returns part of the audio sent to it (hybrid echo, ITU-T G.168: typically 6–12 dB down,
delayed by tens of milliseconds, through a non-flat path). While the greeting plays, that echo reaches the
DTMF detector together with the caller's key tones. We know, sample by sample, what we sent (the
*reference*), so an adaptive filter can model the echo path and subtract its estimate of the echo: what is
left (the *residual*) carries the caller's tones and little else.

:class:`EchoCanceller` runs such a filter for each of any number of streams at once, in lockstep: every
call of :meth:`~EchoCanceller.process` takes one block for every row (one vectorised pass per 20 ms tick for
every call in the greeting). Pure: arrays in, arrays out; no clock, no I/O.

How it works — a partitioned-block frequency-domain NLMS filter (the "multidelay" filter of Soo and Pang,
IEEE Trans. ASSP 1990) in the two-filter arrangement of Ochiai et al. (1977):

* **Blocks** of ``BLOCK = 160`` samples (one RTP frame) and FFTs of twice that (overlap-save). The filter
  is cut into ``partitions`` pieces of ``BLOCK`` taps (default 6: 120 ms of echo path, enough for an echo
  delayed by up to 64 ms, plus the up to 20 ms by which the received and the sent frames are out of
  phase, plus the path's own dispersion). The last reference blocks' spectra are kept, so a block costs
  one FFT of the reference, one inverse FFT of the two estimates and one FFT of a residual.
* **Step normalised per frequency bin** by the reference power in that bin over the filter's span, plus a
  floor of a tenth of its mean over all bins. The per-bin normalisation whitens speech (the filter
  converges within a second); the floor keeps the bins a tonal reference (music) hardly excites from
  learning from leakage.
* **Gradient constraint** on one partition per block, in turn: its taps beyond ``BLOCK`` are zeroed, which
  keeps the filter a linear (not circular) convolution at a fraction of the cost of constraining every
  partition every block.
* **Double talk.** The caller's key tones and voice are not in the reference; adapting on them pulls the
  filter away from the echo path and smears noise over the tones. So the filter that adapts (the
  *background*) is not the one whose residual is returned (the *foreground*): the foreground takes a copy
  of the background only after the background's residual has been clearly the smaller (by 1.5 dB over
  about three blocks), and the background starts again from the foreground when it has gone clearly wrong.
  A caller's tone is in both residuals and so does not make the background look better. And each block's
  update is applied one block late, so that the DTMF detector, which has by then looked at the block's
  residual, can veto it (``adapt=False``) when it heard a tone there: the filters never learn from a
  block that carried a key tone.
* **Schedule.** The background adapts on every block for the first two seconds and while the residual is
  less than 20 dB below the received audio; once the echo is cancelled that well (speech converges to
  25–30 dB), on every fourth block, which is enough to track a line's echo path and costs a third.

Where a row's reference has been silent for the whole span (nothing played yet, or the greeting is over),
the estimate is exactly zero and the residual is the received block, unchanged. Spectra and filters are
single precision (half the memory traffic; the FFTs run in double precision, numpy's fast path).

A greeting of a few pure tones (a chime) is the hard case for any such filter: only a handful of
frequencies are excited, so the filter is right at those and arbitrary elsewhere; it cancels the chime's
echo by 10–20 dB, not 25–30.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from .rowstore import RowStore

__all__ = ["BLOCK", "PARTITIONS", "EchoCanceller"]

_Float = npt.NDArray[np.float64]
_Complex = npt.NDArray[np.complex64]

#: Samples per block: one 20 ms RTP frame at 8 kHz.
BLOCK: Final = 160
#: Filter partitions of ``BLOCK`` taps: 6 × 20 ms = 120 ms of echo path.
PARTITIONS: Final = 6
_BINS: Final = BLOCK + 1  # rfft of 2 · BLOCK samples
_RATE: Final = 0.8  # share of a block's residual the background's update removes from that block
_FLOOR_SHARE: Final = 0.1  # the step's floor, as a share of the mean reference power over the bins
_FLOOR: Final = 1.0e3  # and in absolute terms (a silent reference learns nothing)
_SMOOTHING: Final = 0.3  # residual powers are compared over about three blocks
_COPY_BELOW: Final = 0.7  # the background is copied when its residual is under 0.7 × the foreground's
_RESET_ABOVE: Final = 4.0  # and replaced by the foreground when over 4 × (6 dB worse)
_YOUNG: Final = 100  # blocks (2 s) during which the background adapts on every block
_PERIOD: Final = 4  # and afterwards on every fourth …
_CONVERGED: Final = 100.0  # … once the residual is 20 dB below the received audio (else on every block)
_SLOW: Final = 0.1  # smoothing of those powers (about ten blocks)


def _echo(weights: _Complex, spectra: list[_Complex]) -> _Float:
    """The echo estimate (time domain, one block per row) of a filter on the given reference spectra."""
    total = np.multiply(weights[0], spectra[0])
    product = np.empty_like(total)
    for p in range(1, len(spectra)):
        np.multiply(weights[p], spectra[p], out=product)
        total += product
    echo: _Float = np.fft.irfft(total, 2 * BLOCK, axis=1)[:, BLOCK:]
    return echo


class EchoCanceller:
    """Adaptive echo cancellers for independent streams (rows), stepped in lockstep; see the module
    docstring.

    :meth:`process` takes one block of received samples per row and the block of reference samples aligned
    with it (the block sent when the echo path's delay starts to count) and returns the residual. A row's
    output depends only on that row's inputs and on how many blocks it has processed, whatever the other
    rows do.
    """

    def __init__(self, streams: int = 1, *, partitions: int = PARTITIONS) -> None:
        if streams < 0 or partitions < 1:
            raise ValueError("streams must be ≥ 0 and partitions ≥ 1")
        self.partitions = partitions
        k = partitions
        rows = self._store = RowStore(self, capacity=max(streams, 16))
        #: The reference of the current and the previous block, per row (overlap-save input).
        self._input: _Float = rows.add_array("_input", (0, 2 * BLOCK), np.float64)
        #: Spectra of the last k reference blocks: partition p of the current block is at index
        #: (newest − p) mod k, the same for every row (they move in lockstep).
        self._spectra: _Complex = rows.add_array("_spectra", (k, 0, _BINS), np.complex64, axis=1)
        self._newest = 0
        self._fore: _Complex = rows.add_array("_fore", (k, 0, _BINS), np.complex64, axis=1)
        self._back: _Complex = rows.add_array("_back", (k, 0, _BINS), np.complex64, axis=1)
        #: Reference power per bin over the filter's span.
        self._norm: _Float = rows.add_array("_norm", (0, _BINS), np.float64)
        #: Smoothed powers of the input and the output, and of the two filters' residuals.
        self._received_power: _Float = rows.add_array("_received_power", (0,), np.float64)
        self._residual_power: _Float = rows.add_array("_residual_power", (0,), np.float64)
        self._fore_power: _Float = rows.add_array("_fore_power", (0,), np.float64)
        self._back_power: _Float = rows.add_array("_back_power", (0,), np.float64)
        #: Blocks processed, and updates made (which partition the next one constrains).
        self._blocks: npt.NDArray[np.intp] = rows.add_array("_blocks", (0,), np.intp)
        self._updates: npt.NDArray[np.intp] = rows.add_array("_updates", (0,), np.intp)
        self._phase: npt.NDArray[np.intp] = rows.add_array("_phase", (0,), np.intp)  # see add()
        #: The background's residual, zero first half (overlap-save).
        self._error: _Float = rows.add_array("_error", (0, 2 * BLOCK), np.float64)
        #: The background's step found at the last block, to be applied at the next one unless vetoed; and
        #: the foreground/background decisions that go with it.
        self._pending: npt.NDArray[np.bool_] = rows.add_array("_pending", (0,), np.bool_)
        self._step: _Complex = rows.add_array("_step", (0, _BINS), np.complex64)
        self._copy: npt.NDArray[np.bool_] = rows.add_array("_copy", (0,), np.bool_)
        self._reset: npt.NDArray[np.bool_] = rows.add_array("_reset", (0,), np.bool_)
        for _ in range(streams):
            self.add()

    @property
    def streams(self) -> int:
        return self._store.rows

    def add(self, phase: int = 0) -> int:
        """A new row: its filter empty, its reference silent so far; returns its index. Once converged, the
        row learns on the blocks where ``blocks + phase`` is a multiple of four: rows that started together
        but have different phases spread that work over the ticks."""
        row = self._store.add()
        self._phase[row] = phase % _PERIOD
        return row

    def remove(self, row: int) -> None:
        """Drop row ``row``: the last row moves into its place (the caller renumbers it)."""
        self._store.remove(row)

    def reset(self, row: int) -> None:
        """Forget row ``row``'s filter and reference (a new echo path)."""
        phase = int(self._phase[row])
        self._store.clear(row)
        self._phase[row] = phase

    def process(
        self,
        received: npt.ArrayLike,
        reference: npt.ArrayLike,
        *,
        adapt: npt.ArrayLike | None = None,
        present: npt.ArrayLike | None = None,
    ) -> _Float:
        """The residual of one block for every row.

        ``received`` and ``reference`` have the shape ``(streams, BLOCK)``. ``adapt`` (one flag per row,
        default all true) says whether the filters may learn from the *previous* block: a row's update is
        applied one block late, so that a detector that heard a tone in the previous block's residual can
        veto it. Where ``present`` is false the row received nothing this block (a lost frame): only its
        reference history advances, and its residual means nothing.
        """
        n = self.streams
        d = np.asarray(received, dtype=np.float64)
        if d.shape != (n, BLOCK) or np.shape(reference) != (n, BLOCK):
            raise ValueError(f"received and reference must have the shape ({n}, {BLOCK})")
        k = self.partitions
        spectra = self._spectra
        current = [spectra[(self._newest - p) % k] for p in range(k)]

        # Learn from the previous block, unless vetoed.
        pending = self._pending
        if adapt is not None:
            pending &= np.asarray(adapt, dtype=bool).reshape(n)
        if pending.any():
            self._learn(np.flatnonzero(pending), current)
        pending[:] = False

        # The newest reference block's spectrum takes the place of the oldest (and in the power sum).
        self._input[:, :BLOCK] = self._input[:, BLOCK:]
        self._input[:, BLOCK:] = reference
        self._newest = newest = (self._newest + 1) % k
        gone = spectra[newest]
        norm = self._norm
        norm -= gone.real**2 + gone.imag**2
        spectra[newest] = np.fft.rfft(self._input, axis=1)
        new = spectra[newest]
        norm += new.real**2 + new.imag**2
        np.maximum(norm, 0.0, out=norm)
        current = [spectra[(newest - p) % k] for p in range(k)]
        residual: _Float = d - _echo(self._fore, current)

        # The background's step for this block, on its schedule: every block while young, then every
        # PERIOD-th; applied at the next block unless vetoed.
        blocks = self._blocks
        received_power = self._received_power
        received_power += _SLOW * (np.einsum("ij,ij->i", d, d) - received_power)
        residual_power = self._residual_power
        residual_power += _SLOW * (np.einsum("ij,ij->i", residual, residual) - residual_power)
        due = (blocks < _YOUNG) | ((blocks + self._phase) % _PERIOD == 0)
        due |= received_power < _CONVERGED * residual_power
        if present is None:
            blocks += 1
        else:
            there = np.asarray(present, dtype=bool).reshape(n)
            due &= there
            blocks += there
        if not due.any():
            return residual
        rows = np.flatnonzero(due)
        everyone = len(rows) == n
        part = current if everyone else [c[rows] for c in current]
        back_residual = d[rows] - _echo(self._back if everyone else self._back[:, rows], part)
        self._error[rows, BLOCK:] = back_residual
        error = np.fft.rfft(self._error[rows], axis=1)
        row_norm = norm[rows]
        gain = row_norm.astype(np.float32)
        gain += (_FLOOR_SHARE * row_norm.mean(axis=1, keepdims=True) + _FLOOR).astype(np.float32)
        np.divide(np.float32(_RATE), gain, out=gain)
        step = error.astype(np.complex64)
        step *= gain
        self._step[rows] = step

        # Whether the foreground should follow the background (it has been clearly better), or the
        # background start again from the foreground (it has gone clearly wrong): decided now, done with
        # the update.
        mine = residual[rows]
        fore_now = np.einsum("ij,ij->i", mine, mine)
        back_now = np.einsum("ij,ij->i", back_residual, back_residual)
        fore_power = self._fore_power[rows] + _SMOOTHING * (fore_now - self._fore_power[rows])
        back_power = self._back_power[rows] + _SMOOTHING * (back_now - self._back_power[rows])
        self._copy[rows] = (back_power < _COPY_BELOW * fore_power) & (back_now < fore_now)
        self._reset[rows] = back_power > _RESET_ABOVE * fore_power
        self._fore_power[rows] = fore_power
        self._back_power[rows] = back_power
        pending[rows] = True
        return residual

    def _learn(self, rows: npt.NDArray[np.intp], current: list[_Complex]) -> None:
        """Apply the steps found at the last block (whose reference spectra are ``current``) to ``rows``."""
        k = self.partitions
        everyone = len(rows) == self.streams
        part = current if everyone else [c[rows] for c in current]
        back = self._back if everyone else self._back[:, rows]
        step = self._step[rows]
        product = np.empty_like(step)
        for p in range(k):
            np.conjugate(part[p], out=product)
            product *= step
            back[p] += product
        # Constrain one partition per update, in turn: its taps beyond BLOCK are zeroed.
        which = self._updates[rows] % k
        index = np.arange(len(rows))
        taps = np.zeros((len(rows), 2 * BLOCK))  # float64: numpy's float32 FFT is several times slower
        taps[:, :BLOCK] = np.fft.irfft(back[which, index], 2 * BLOCK, axis=1)[:, :BLOCK]
        back[which, index] = np.fft.rfft(taps, axis=1).astype(np.complex64)
        self._updates[rows] += 1
        reset = self._reset[rows]
        if reset.any():
            back[:, reset] = self._fore[:, rows[reset]]
            self._back_power[rows[reset]] = self._fore_power[rows[reset]]
        if not everyone:
            self._back[:, rows] = back
        copy = self._copy[rows] & ~reset
        if copy.any():
            self._fore[:, rows[copy]] = back[:, copy]
            self._fore_power[rows[copy]] = self._back_power[rows[copy]]

    def taps(self, row: int) -> _Float:
        """Row ``row``'s estimate of the echo path's impulse response (``partitions · BLOCK`` taps)."""
        taps = np.fft.irfft(self._fore[:, row].astype(np.complex128), 2 * BLOCK, axis=-1)[:, :BLOCK]
        return np.ascontiguousarray(taps.reshape(-1))
