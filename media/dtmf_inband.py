"""In-band DTMF detection (ITU-T Q.23 tones, Q.24 reception limits) on 8 kHz linear audio.

Feed :class:`InbandDetector` the decoded samples of one stream, frame by frame as a call delivers them (20 ms,
160 samples, after G.711 decoding); it returns one :class:`DigitDetected` per key press, carrying the digit
and the sample offset (8 kHz) at which the tone began. The detector is pure and keeps its state across
frames: no clock, no I/O; the stream position is the time.

Reception limits aimed at (ITU-T Q.24 and the Bell System figures it tabulates):

============================== ======================== ==========================
limit                          must detect              must not detect
============================== ======================== ==========================
frequency deviation, each tone ≤ ±1.5 %                 ≥ ±3.5 %
tone duration                  ≥ 40 ms                  < 23 ms
pause between digits           ≥ 40 ms separates        —
interruption within a tone     ≤ 10 ms does not split   —
twist (low − high group)       −4 dB … +8 dB            —
level, each tone               ≥ −26 dBm0               ≤ −55 dBm0 (see ``min_level_dbm0``)
white noise                    SNR 15 dB                —
============================== ======================== ==========================

**dBm0 on 16-bit linear PCM.** G.711 §5 gives the theoretical load capacity (the largest undistorted sine)
as +3.17 dBm0 for μ-law and +3.14 dBm0 for A-law. μ-law's overload point is the decision value 8,159 of the
14-bit scale (G.711 Table 2a), 32,636 on the 16-bit scale used here (A-law: 4,096 of 13 bits, 32,768), so a
0 dBm0 sine has the peak amplitude 32,636 · 10^(−3.17/20) ≈ 22,657 (A-law's figure, 22,827, is 0.07 dB
away). ``DBM0_AMPLITUDE`` is that value; −26 dBm0 per tone is a peak of ≈ 1,136. (8,031, sometimes quoted,
is μ-law's largest *decoder output* on the 14-bit scale, i.e. ≈ +3.17 dBm0 − 0.1 dB, not 0 dBm0.)

How it works:

1. **Analysis windows** of ``N = 80`` samples (10 ms, rectangular) every ``HOP = 40`` samples (5 ms). All
   windows a frame completes are analysed at once: one matrix product against cosine/sine rows at the eight
   Q.23 frequencies and the second harmonics of the four high-group ones (a vectorised Goertzel bank).
2. **Window checks** — a window names a digit only if: both tones reach ``min_level_dbm0``; the strongest
   tone of each group beats the group's runner-up by ``dominance_db``; the twist lies within the limits
   below plus 4 dB; the high tone's second harmonic is ``harmonic_db`` weaker than
   the tone; and the two tones carry at least ``purity`` of the window's energy (out-of-band energy check).
   The purity of a window that a tone fills only partly is about the filled fraction, which is what lets
   short windows measure duration: a window counts only when the tone fills ≥ ``purity`` of it.
3. **Duration machine** — a digit begins after ``confirm_windows`` windows name it (35 ms of analysis
   span: a 40 ms tone yields ≥ 7 such windows, a 23 ms tone ≤ 4), consecutive but for at most one window
   in between that names nothing (a voice or noise spoiling one window of a key tone), and it ends after
   ``release_windows`` consecutive windows that do not (30 ms: a 10 ms interruption spoils ≤ 3 windows, a
   40 ms pause ≥ 8).
4. **Confirmation checks**, once per key press, on the 20 ms in the middle of the confirming windows (too
   short a span for 10 ms windows to resolve ±3.5 % at 697 Hz, which is 24 Hz): each tone's frequency is
   measured as the peak of a Hann-windowed spectrum on a 0.25 % grid (with parabolic refinement) and must
   lie within ``max_deviation`` of nominal. Then the two tones and their second harmonics are fitted by least
   squares at the measured frequencies (which separates 2 · 697 Hz from 1336 Hz where 10 ms windows cannot):
   the twist from the fitted amplitudes must lie within ``−reverse_twist_db … +normal_twist_db`` (the
   windows only apply these limits loosely, as 10 ms windows misjudge twist by up to ±2.5 dB), the tones
   must leave at most ``max_residual`` of the energy unexplained and each second harmonic must be
   ``confirm_harmonic_db`` below its tone (instruments have harmonics, DTMF generators hardly any). Up to
   ``loose_residual`` may be left unexplained in two cases that talk-off does not produce: what is left is
   noise — spread over the band, ``noise_peakiness`` or less of its energy in its 12 strongest spectral
   bins, where voices and instruments put most of theirs (white noise: about 0.18; voiced speech, music:
   0.4–0.9) — or the tones sit where a keypad puts them (the high tone within ``exact_deviation``, which
   a voice hardly pulls, the low one within 1.6 %, twist within ±``exact_twist_db``). Measured on the
   corpus of bench/dtmf_corpus.py: speech and music that passed for key tones left their peaks 1–2 %
   off nominal or their twist beyond 4 dB, real tones under noise or a voice did not. A press that fails
   is suppressed until it ends. The start of the tone is then found to about a sample by extrapolating
   the fit backwards: the split of the preceding audio into "no tone" and "the fitted tone" that leaves
   the least energy unexplained.

The window analysis (:func:`analyse_windows`) takes any array of shape ``(..., 80)``, so many streams can be
classified in one call; the duration machine is per stream.
"""

from __future__ import annotations

from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "DBM0_AMPLITUDE",
    "FRAME",
    "HIGH_GROUP",
    "HOP",
    "KEYPAD",
    "LOW_GROUP",
    "RATE",
    "WINDOW",
    "DigitDetected",
    "InbandDetector",
    "WindowAnalysis",
    "analyse_windows",
    "dbm0_to_amplitude",
]

_Float = npt.NDArray[np.float64]

#: Sample rate of the audio the detector takes.
RATE: Final = 8000
#: Samples of one 20 ms RTP frame.
FRAME: Final = 160
#: Samples of one analysis window (10 ms).
WINDOW: Final = 80
#: Samples between the starts of consecutive windows (5 ms).
HOP: Final = 40
#: ITU-T Q.23 frequencies, Hz.
LOW_GROUP: Final = (697.0, 770.0, 852.0, 941.0)
HIGH_GROUP: Final = (1209.0, 1336.0, 1477.0, 1633.0)
#: Digits by low-group row and high-group column.
KEYPAD: Final = ("123A", "456B", "789C", "*0#D")
#: Peak amplitude of a 0 dBm0 sine on the 16-bit scale (μ-law: +3.17 dBm0 at 32,636; see module docstring).
DBM0_AMPLITUDE: Final = 32636.0 * 10.0 ** (-3.17 / 20.0)

_DIGITS: Final = "".join(KEYPAD)  # index = 4 · row + column
_P0: Final = DBM0_AMPLITUDE**2 / 2.0  # mean power of a 0 dBm0 sine
_SEGMENT: Final = 160  # samples of the confirmation segment
_GRID_STEP: Final = 0.0025
_GRID_SPAN: Final = 0.05
_TWIST_SLACK_DB: Final = 4.0  # 10 ms windows misjudge twist by up to ±2.5 dB (leakage of the other tone)
_HISTORY: Final = 480  # samples kept behind the next window (covers the confirmation segment)


def dbm0_to_amplitude(level_dbm0: float) -> float:
    """The peak amplitude (16-bit scale) of a sine at ``level_dbm0``."""
    return float(DBM0_AMPLITUDE * 10.0 ** (level_dbm0 / 20.0))


@attrs.frozen
class DigitDetected:
    """A DTMF tone pair was recognised. ``start`` is the sample offset (8 kHz, in the stream's numbering)
    at which the tone began, estimated to about a millisecond; ``detected_at`` is the offset of the end of
    the analysis window that confirmed it (the earliest moment a call could have known)."""

    digit: str
    start: int
    detected_at: int


@attrs.frozen
class WindowAnalysis:
    """What :func:`analyse_windows` found in each window: ``digits`` holds an index into
    ``"123A456B789C*0#D"`` or −1, ``purity`` the share of the window's energy in the strongest tone of each
    group."""

    digits: npt.NDArray[np.intp]
    purity: _Float


def _basis() -> _Float:
    freqs = np.array([*LOW_GROUP, *HIGH_GROUP, *(2.0 * f for f in HIGH_GROUP)])
    phase = 2.0 * np.pi * np.outer(np.arange(WINDOW), freqs) / RATE
    basis: _Float = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
    return basis


_BASIS: Final = _basis()
_NFREQ: Final = 12


def _grid_basis() -> npt.NDArray[np.complex128]:
    offsets = np.arange(-_GRID_SPAN, _GRID_SPAN + _GRID_STEP / 2, _GRID_STEP)
    nominal = np.array([*LOW_GROUP, *HIGH_GROUP])
    freqs = nominal[:, None] * (1.0 + offsets[None, :])  # (8, G)
    n = np.arange(_SEGMENT)
    hann = np.hanning(_SEGMENT)
    grid: npt.NDArray[np.complex128] = hann * np.exp(-2j * np.pi * freqs[:, :, None] * n / RATE)
    return grid


_GRID: Final = _grid_basis()
# complex @ real takes a slow generic path in numpy (12 ms per call here): keep the parts as real arrays.
_GRID_REAL: Final = np.ascontiguousarray(_GRID.real)
_GRID_IMAG: Final = np.ascontiguousarray(_GRID.imag)
_GRID_OFFSETS: Final = np.arange(-_GRID_SPAN, _GRID_SPAN + _GRID_STEP / 2, _GRID_STEP)


def analyse_windows(
    windows: npt.ArrayLike,
    *,
    min_level_dbm0: float = -40.0,
    purity: float = 0.7,
    dominance_db: float = 3.0,
    normal_twist_db: float = 14.0,
    reverse_twist_db: float = 10.0,
    harmonic_db: float = 15.0,
) -> WindowAnalysis:
    """Classify analysis windows, shape ``(..., 80)``, each on its own (step 2 of the module docstring)."""
    w = np.asarray(windows, dtype=np.float64)
    if w.shape[-1] != WINDOW:
        raise ValueError(f"windows must have {WINDOW} samples on the last axis, not {w.shape[-1]}")
    proj = w @ _BASIS
    power = proj[..., :_NFREQ] ** 2 + proj[..., _NFREQ:] ** 2
    # 2|X|²/N is the energy in the window of a sinusoid whose DFT at its frequency is X.
    tone_energy = power * (2.0 / WINDOW)
    energy = np.einsum("...i,...i->...", w, w)
    low = tone_energy[..., 0:4]
    high = tone_energy[..., 4:8]
    low_peak = low.max(axis=-1)
    high_peak = high.max(axis=-1)
    threshold = _P0 * 10.0 ** (min_level_dbm0 / 10.0) * WINDOW
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(energy > 0, (low_peak + high_peak) / energy, 0.0)
    ok = (low_peak >= threshold) & (high_peak >= threshold) & (share >= purity)
    if not ok.any():  # silence, speech, music: most windows end here
        return WindowAnalysis(np.full(ok.shape, -1, dtype=np.intp), share)
    row = np.argmax(low, axis=-1)
    col = np.argmax(high, axis=-1)
    low_second = np.partition(low, 2, axis=-1)[..., 2]
    high_second = np.partition(high, 2, axis=-1)[..., 2]
    harmonic = np.take_along_axis(tone_energy[..., 8:12], col[..., None], axis=-1)[..., 0]
    dominance = 10.0 ** (dominance_db / 10.0)
    ok &= (low_peak >= dominance * low_second) & (high_peak >= dominance * high_second)
    ok &= low_peak <= high_peak * 10.0 ** (normal_twist_db / 10.0)
    ok &= high_peak <= low_peak * 10.0 ** (reverse_twist_db / 10.0)
    ok &= harmonic * 10.0 ** (harmonic_db / 10.0) <= high_peak
    digits = np.where(ok, 4 * row + col, -1).astype(np.intp)
    return WindowAnalysis(digits, share)


_SEGMENT_INDEX: Final = np.arange(_SEGMENT)
_PEAKINESS_WINDOW: Final = np.hanning(_SEGMENT)


def _peakiness(rest: _Float) -> float:
    """The share of a signal's energy (Hann window, 512-point spectrum) in its 12 strongest bins: about 0.18
    for white noise, 0.4–0.9 for voiced speech and music, whose energy sits at harmonics."""
    power = np.abs(np.fft.rfft(rest * _PEAKINESS_WINDOW, 512)) ** 2
    total = float(power.sum())
    return float(np.partition(power, -12)[-12:].sum()) / total if total > 0 else 1.0


def _peak_offset(segment: _Float, tone: int) -> float | None:
    """The relative deviation of the tone's frequency from nominal, or ``None`` outside the ±5 % grid."""
    spectrum = np.hypot(_GRID_REAL[tone] @ segment, _GRID_IMAG[tone] @ segment)
    k = int(np.argmax(spectrum))
    if k == 0 or k == len(spectrum) - 1:
        return None
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    denominator = a - 2.0 * b + c
    shift = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
    return float(_GRID_OFFSETS[k] + shift * _GRID_STEP)


@attrs.frozen
class _Fit:
    """Two tones (and their second harmonics) fitted to a segment by least squares."""

    frequencies: tuple[float, float]
    coefficients: tuple[float, float, float, float]  # cos low, cos high, sin low, sin high
    residual: float  # share of the segment's energy the two tones leave unexplained
    harmonic: float  # the stronger second harmonic's amplitude relative to its tone
    twist_db: float  # low − high

    def model(self, n: npt.NDArray[np.int_]) -> _Float:
        """The two tones at sample indices ``n`` (0 = the segment's first sample)."""
        phase = 2.0 * np.pi * n[:, None] * np.array(self.frequencies) / RATE
        basis = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
        result: _Float = basis @ np.array(self.coefficients)
        return result


def _fit(segment: _Float, low_hz: float, high_hz: float) -> _Fit:
    energy = float(segment @ segment)
    freqs = np.array([low_hz, high_hz, 2.0 * low_hz, 2.0 * high_hz])
    phase = 2.0 * np.pi * np.arange(len(segment))[:, None] * freqs / RATE
    basis = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)  # columns: cos f…, sin f…
    tones = basis[:, [0, 1, 4, 5]]
    fitted = np.linalg.lstsq(tones, segment, rcond=None)[0]
    rest = segment - tones @ fitted
    coefficients = np.linalg.lstsq(basis, segment, rcond=None)[0]
    amplitude = np.hypot(coefficients[:4], coefficients[4:])
    low, high = float(np.hypot(fitted[0], fitted[2])), float(np.hypot(fitted[1], fitted[3]))
    if energy <= 0.0 or amplitude[0] <= 0 or amplitude[1] <= 0 or low <= 0 or high <= 0:
        return _Fit((low_hz, high_hz), (0.0, 0.0, 0.0, 0.0), 1.0, 1.0, 0.0)
    return _Fit(
        (low_hz, high_hz),
        (float(fitted[0]), float(fitted[1]), float(fitted[2]), float(fitted[3])),
        float(rest @ rest) / energy,
        float(max(amplitude[2] / amplitude[0], amplitude[3] / amplitude[1])),
        20.0 * float(np.log10(low / high)),
    )


class InbandDetector:
    """The DTMF detector of one audio stream (8 kHz linear samples); see the module docstring.

    :meth:`feed` takes the next samples (any length; a call feeds 160 at a time) and returns the digits
    whose tones were confirmed in them. ``sample_offset`` is the stream position of the first sample; when
    it skips ahead (lost packets), the detector restarts at the new position as after silence.
    """

    def __init__(
        self,
        *,
        min_level_dbm0: float = -40.0,
        purity: float = 0.7,
        dominance_db: float = 3.0,
        normal_twist_db: float = 10.0,
        reverse_twist_db: float = 6.0,
        harmonic_db: float = 15.0,
        confirm_windows: int = 6,
        release_windows: int = 6,
        max_deviation: float = 0.02,
        max_residual: float = 0.15,
        confirm_harmonic_db: float = 20.0,
        loose_residual: float = 0.30,
        noise_peakiness: float = 0.30,
        exact_deviation: float = 0.005,
        exact_twist_db: float = 4.0,
    ) -> None:
        if confirm_windows < 2 or release_windows < 1:
            raise ValueError("confirm_windows must be at least 2 and release_windows at least 1")
        self._checks = {
            "min_level_dbm0": min_level_dbm0,
            "purity": purity,
            "dominance_db": dominance_db,
            "normal_twist_db": normal_twist_db + _TWIST_SLACK_DB,
            "reverse_twist_db": reverse_twist_db + _TWIST_SLACK_DB,
            "harmonic_db": harmonic_db,
        }
        self.normal_twist_db = normal_twist_db
        self.reverse_twist_db = reverse_twist_db
        self.confirm_windows = confirm_windows
        self.release_windows = release_windows
        self.max_deviation = max_deviation
        self.max_residual = max_residual
        self._max_harmonic = 10.0 ** (-confirm_harmonic_db / 20.0)
        self.loose_residual = loose_residual
        self.noise_peakiness = noise_peakiness
        self.exact_deviation = exact_deviation
        self.exact_twist_db = exact_twist_db
        #: Presses that reached ``confirm_windows`` but failed the confirmation checks.
        self.rejected = 0
        self._buffer: _Float = np.zeros(0)
        self._buffer_start = 0  # stream offset of _buffer[0]
        self._next_window = 0  # stream offset where the next analysis window starts
        self._candidate = -1
        self._run = 0
        self._run_start = 0
        self._active = -1
        self._misses = 0
        self._heard = False
        self._bridged = False  # the candidate's run has already passed over a window that did not name it

    @property
    def position(self) -> int:
        """The stream offset just after the last sample fed."""
        return self._buffer_start + len(self._buffer)

    def reset(self, sample_offset: int = 0) -> None:
        """Forget all audio and any tone in progress; the next sample fed has offset ``sample_offset``."""
        self._buffer = np.zeros(0)
        self._buffer_start = self._next_window = sample_offset
        self._candidate = self._active = -1
        self._run = self._misses = 0
        self._heard = False

    @property
    def hearing(self) -> bool:
        """A tone may be on: a window of the last feed named a digit, or a press is in progress."""
        return self._heard or self._active >= 0 or self._candidate >= 0

    def windows_due(self, samples: int) -> int:
        """How many analysis windows feeding ``samples`` more samples (no offset jump) completes."""
        available = self.position + samples - WINDOW - self._next_window
        return 0 if available < 0 else available // HOP + 1

    def feed(
        self,
        samples: npt.ArrayLike,
        sample_offset: int | None = None,
        *,
        verdicts: npt.ArrayLike | None = None,
    ) -> list[DigitDetected]:
        """Analyse the next samples of the stream; return the digits confirmed in them, oldest first.

        ``verdicts``, if given, are the window digits (``WindowAnalysis.digits``) of the windows these
        samples complete (:meth:`windows_due`), found by a batched :func:`analyse_windows` over many
        streams with this detector's limits; they are used instead of analysing the windows here.
        """
        chunk = np.asarray(samples, dtype=np.float64).reshape(-1)
        if sample_offset is not None and sample_offset != self.position:
            if sample_offset < self.position:
                raise ValueError(f"sample offset {sample_offset} goes back before {self.position}")
            self.reset(sample_offset)
        self._buffer = np.concatenate([self._buffer, chunk])
        available = self.position - WINDOW - self._next_window
        count = 0 if available < 0 else available // HOP + 1
        if verdicts is not None:
            digits = np.asarray(verdicts, dtype=np.intp).reshape(-1)
            if len(digits) != count:
                raise ValueError(f"{len(digits)} verdicts given for {count} windows")
        elif count:
            first = self._next_window - self._buffer_start
            halves = self._buffer[first : first + (count + 1) * HOP].reshape(count + 1, HOP)
            digits = analyse_windows(np.concatenate([halves[:-1], halves[1:]], axis=1), **self._checks).digits
        if count == 0:
            self._heard = False
            return []
        found: list[DigitDetected] = []
        self._heard = bool((digits >= 0).any())
        idle = self._active < 0 and self._candidate < 0 and not self._heard
        for i in range(0 if idle else count):
            start = self._next_window + i * HOP
            event = self._step(int(digits[i]), start)
            if event is not None:
                found.append(event)
        self._next_window += count * HOP
        keep_from = max(self._next_window - _HISTORY, self._buffer_start)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return found

    @property
    def checks(self) -> dict[str, float]:
        """The window limits, as keyword arguments of :func:`analyse_windows` (for batched analysis)."""
        return dict(self._checks)

    def _step(self, digit: int, start: int) -> DigitDetected | None:
        """Advance the duration machine by one window that starts at ``start`` and names ``digit`` (or −1)."""
        if self._active >= 0:
            if digit == self._active:
                self._misses = 0
                self._candidate, self._run = -1, 0
                return None
            self._misses += 1
            if self._misses >= self.release_windows:
                self._active = -1
        if digit < 0 and self._candidate >= 0 and not self._bridged:
            self._bridged = True  # one window lost to interference does not end a candidate's run
            return None
        if digit < 0 or digit == self._active:
            self._candidate, self._run = -1, 0
            return None
        if digit != self._candidate:
            self._candidate, self._run, self._run_start = digit, 0, start
            self._bridged = False
        self._run += 1
        if self._run < self.confirm_windows:
            return None
        # Confirmed by duration: the old digit (if any) is over, this one is on, reported or not.
        self._active, self._misses = digit, 0
        self._candidate, self._run = -1, 0
        end = start + WINDOW
        segment_end = end - (end - self._run_start - _SEGMENT) // 2
        offset = segment_end - _SEGMENT - self._buffer_start
        segment = self._buffer[offset : offset + _SEGMENT]
        fit = self._confirm(digit, segment)
        if fit is None:
            self.rejected += 1
            return None
        return DigitDetected(_DIGITS[digit], self._onset(fit, offset), end)

    def _confirm(self, digit: int, segment: _Float) -> _Fit | None:
        """The fit of the tone pair to ``segment`` if it passes the confirmation checks, else ``None``."""
        row, col = divmod(digit, 4)
        low = _peak_offset(segment, row)
        high = _peak_offset(segment, 4 + col)
        if low is None or high is None:
            return None
        if abs(low) > self.max_deviation or abs(high) > self.max_deviation:
            return None
        fit = _fit(segment, LOW_GROUP[row] * (1 + low), HIGH_GROUP[col] * (1 + high))
        if not -self.reverse_twist_db <= fit.twist_db <= self.normal_twist_db:
            return None
        if fit.residual <= self.max_residual and fit.harmonic <= self._max_harmonic:
            return fit
        if fit.residual > self.loose_residual:
            return None
        # More left unexplained: still a key tone if what is left is noise (spread over the band, not the
        # peaks of a voice or an instrument), or if the tones sit where a keypad puts them — the high one
        # exactly (voices have little energy up there to pull it), the low one within 1.6 %, a keypad's
        # twist — and a voice in the background explains the rest.
        deviation = max(abs(low), abs(high))
        if _peakiness(segment - fit.model(_SEGMENT_INDEX)) <= self.noise_peakiness:
            return fit if fit.harmonic <= 2 * self._max_harmonic and deviation <= 0.015 else None
        exact = (
            abs(high) <= self.exact_deviation
            and abs(low) <= 0.016
            and abs(fit.twist_db) <= self.exact_twist_db
        )
        return fit if exact and fit.harmonic <= 1.5 * self._max_harmonic else None

    def _onset(self, fit: _Fit, segment_offset: int) -> int:
        """Where the tone began: the split of the audio before the segment into 'no tone' and 'the fitted
        tone pair, extrapolated' that leaves the least energy unexplained."""
        first = max(self._run_start - HOP, self._buffer_start) - self._buffer_start
        x = self._buffer[first : segment_offset + _SEGMENT]
        model = fit.model(np.arange(first - segment_offset, _SEGMENT))
        before = np.concatenate([[0.0], np.cumsum(x**2)])
        misfit = (x - model) ** 2
        after = np.concatenate([np.cumsum(misfit[::-1])[::-1], [0.0]])
        split = int(np.argmin((before + after)[: len(x) - _SEGMENT + 1]))
        return self._buffer_start + first + split
