"""Seeded, labelled test signals for the in-band DTMF detector, shared by its tests and bench/dtmf_corpus.py.

Every generator takes a ``numpy.random.Generator``; with a fixed seed the output is the same on every run.
Signals are float arrays at 8 kHz on the 16-bit scale; :func:`through_g711` clips, encodes and decodes them
as a call would. Talk-off material (speech-like vowels, music-like chords, noise) is synthesised here, no
speech engine needed: harmonic series with vibrato, jitter and formant envelopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import numpy as np
import numpy.typing as npt

from durchwahl.media.dtmf_inband import FRAME, RATE, DigitDetected, InbandDetector, dbm0_to_amplitude
from durchwahl.media.dtmf_tones import dtmf_tone
from durchwahl.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

Float = npt.NDArray[np.float64]


@attrs.frozen
class Press:
    """One tone in a labelled signal: ``digit`` from sample ``start`` for ``length`` samples."""

    digit: str
    start: int
    length: int


@attrs.frozen
class Labelled:
    signal: Float
    presses: tuple[Press, ...]


def ms(value: float) -> int:
    return round(value * RATE / 1000)


def sequence(
    rng: np.random.Generator,
    items: Iterable[tuple[str, float, float]],
    *,
    lead_ms: float | None = None,
    low_dbm0: float = -10.0,
    high_dbm0: float = -10.0,
    deviation: tuple[float, float] = (0.0, 0.0),
    tail_ms: float = 80.0,
) -> Labelled:
    """Tones ``(digit, tone_ms, pause_ms_after)`` one after another with random phases; the lead-in silence
    is random (0–40 ms) unless given, so tones fall anywhere relative to 20 ms frames."""
    lead = ms(lead_ms) if lead_ms is not None else int(rng.integers(0, ms(40)))
    parts: list[Float] = [np.zeros(lead)]
    presses: list[Press] = []
    position = lead
    for digit, tone_ms, pause_ms in items:
        length = ms(tone_ms)
        phases = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
        parts.append(
            dtmf_tone(
                digit, length, low_dbm0=low_dbm0, high_dbm0=high_dbm0, deviation=deviation, phases=phases
            )
        )
        presses.append(Press(digit, position, length))
        parts.append(np.zeros(ms(pause_ms)))
        position += length + ms(pause_ms)
    parts.append(np.zeros(ms(tail_ms)))
    return Labelled(np.concatenate(parts), tuple(presses))


def white_noise(rng: np.random.Generator, samples: int, rms: float) -> Float:
    return rng.normal(0.0, rms, samples)


def tone_rms(level_dbm0: float) -> float:
    return dbm0_to_amplitude(level_dbm0) / np.sqrt(2.0)


def through_g711(signal: Float, law: str) -> npt.NDArray[np.int16]:
    pcm = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    if law == "ulaw":
        return ulaw_decode(ulaw_encode(pcm))
    if law == "alaw":
        return alaw_decode(alaw_encode(pcm))
    return pcm


def detect(pcm: npt.ArrayLike, detector: InbandDetector | None = None) -> list[DigitDetected]:
    """Feed ``pcm`` in 20 ms frames, as a call does, followed by 60 ms of silence."""
    audio = np.asarray(pcm)
    audio = np.concatenate([audio, np.zeros((-len(audio)) % FRAME + 3 * FRAME, dtype=audio.dtype)])
    detector = detector or InbandDetector()
    found: list[DigitDetected] = []
    for offset in range(0, len(audio), FRAME):
        found.extend(detector.feed(audio[offset : offset + FRAME], offset))
    return found


@attrs.frozen
class Score:
    expected: int
    hits: int
    misses: int
    false: int


def score(presses: Sequence[Press], found: Sequence[DigitDetected], *, slack: int = ms(20)) -> Score:
    """Match detections to presses: same digit, start within the press (± ``slack``); each used once."""
    unused = list(found)
    hits = 0
    for press in presses:
        for event in unused:
            if event.digit == press.digit and press.start - slack <= event.start <= press.start + slack:
                unused.remove(event)
                hits += 1
                break
    return Score(len(presses), hits, len(presses) - hits, len(unused))


# --- talk-off material ---------------------------------------------------------------------------------

#: Formant frequencies (F1, F2, F3, Hz) of vowels, roughly those of an adult voice, incl. German ä ö ü.
VOWELS = (
    (730, 1090, 2440),  # a
    (530, 1840, 2480),  # e
    (270, 2290, 3010),  # i
    (570, 840, 2410),  # o
    (300, 870, 2240),  # u
    (660, 1720, 2410),  # ä
    (400, 1600, 2300),  # ö
    (280, 1750, 2200),  # ü
)


def _harmonics(f0: Float, amplitude_of: object, limit: float = 3800.0, *, odd_only: bool = False) -> Float:
    """Sum of the harmonics of the time-varying fundamental ``f0`` (Hz per sample), each weighted by
    ``amplitude_of(frequency_array)``, up to ``limit`` Hz."""
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    out = np.zeros(len(f0))
    top = int(limit // max(float(np.min(f0)), 1.0))
    for k in range(1, top + 1):
        if odd_only and k % 2 == 0:
            continue
        frequency = k * f0
        weight = amplitude_of(frequency)  # type: ignore[operator]
        weight = np.where(frequency < limit, weight, 0.0)
        out += weight * np.sin(k * phase)
    return out


def _formant_envelope(formants: Sequence[float], bandwidths: Sequence[float] = (90, 110, 170)) -> object:
    def weight(frequency: Float) -> Float:
        total = np.zeros_like(frequency)
        for formant, bandwidth in zip(formants, bandwidths, strict=True):
            total += 1.0 / np.sqrt((frequency - formant) ** 2 + (bandwidth / 2) ** 2) * bandwidth
        return total / (1 + frequency / 500.0)  # glottal roll-off

    return weight


def _normalise(signal: Float, rms: float) -> Float:
    current = float(np.sqrt(np.mean(signal**2)))
    return signal * (rms / current) if current > 0 else signal


def speech_like(rng: np.random.Generator, seconds: float, *, level_dbm0: float = -15.0) -> Float:
    """Syllables: a voiced vowel (f0 80–300 Hz gliding, 5 Hz vibrato, jitter; formants of a random vowel
    gliding towards the next) between noise-burst consonants and short pauses."""
    out: list[Float] = []
    total = ms(seconds * 1000)
    length = 0
    while length < total:
        n = int(rng.integers(ms(80), ms(350)))
        f_start, f_end = rng.uniform(80, 300, size=2)
        t = np.arange(n) / RATE
        vibrato = 1 + rng.uniform(0.005, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
        jitter = 1 + np.cumsum(rng.normal(0, 0.002, n)) / np.sqrt(np.arange(1, n + 1))
        f0 = np.linspace(f_start, f_end, n) * vibrato * jitter
        first, second = VOWELS[int(rng.integers(len(VOWELS)))], VOWELS[int(rng.integers(len(VOWELS)))]
        mix = float(rng.uniform(0, 1))
        formants = [a + mix * (b - a) for a, b in zip(first, second, strict=True)]
        voiced = _harmonics(f0, _formant_envelope(formants))
        envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / ms(15))
        out.append(voiced * envelope)
        consonant = int(rng.integers(0, ms(80)))
        out.append(white_noise(rng, consonant, float(np.std(voiced)) * rng.uniform(0.05, 0.5)))
        out.append(np.zeros(int(rng.integers(0, ms(120)))))
        length += sum(len(part) for part in out[-3:])
    return _normalise(np.concatenate(out)[:total], tone_rms(level_dbm0))


_A4 = 440.0


def music_like(rng: np.random.Generator, seconds: float, *, level_dbm0: float = -15.0) -> Float:
    """Chords of 1–4 equal-tempered notes (C4 … C7), each a harmonic-rich instrument — saw-like, odd
    harmonics only (clarinet-like) or soft flute-like (harmonics at −12 dB and below) — with vibrato and an
    attack/decay envelope; chords overlap."""
    total = ms(seconds * 1000)
    out = np.zeros(total + ms(2000))
    position = 0
    while position < total:
        n = int(rng.integers(ms(150), ms(1200)))
        t = np.arange(n) / RATE
        chord = np.zeros(n)
        for _ in range(int(rng.integers(1, 5))):
            semitone = int(rng.integers(-9, 28))  # C4 … C7
            pitch = _A4 * 2 ** (semitone / 12)
            f0 = pitch * (1 + rng.uniform(0, 0.01) * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t))
            kind = int(rng.integers(3))
            if kind == 0:
                voice = _harmonics(f0, lambda f, p=pitch: p / f)
            elif kind == 1:
                voice = _harmonics(f0, lambda f, p=pitch: p / f, odd_only=True)
            else:
                voice = _harmonics(f0, lambda f, p=pitch: np.where(f < 1.5 * p, 1.0, 0.25 * p / f))
            attack = min(n, int(rng.integers(ms(5), ms(80))))
            envelope = np.exp(-t * rng.uniform(0.5, 4))
            envelope[:attack] *= np.linspace(0, 1, attack)
            chord += voice * envelope * rng.uniform(0.3, 1)
        out[position : position + n] += chord
        position += int(rng.integers(ms(100), n + 1))
    return _normalise(out[:total], tone_rms(level_dbm0))


def pink_noise(rng: np.random.Generator, samples: int, rms: float) -> Float:
    spectrum = np.fft.rfft(rng.normal(0, 1, samples))
    frequency = np.fft.rfftfreq(samples, 1 / RATE)
    spectrum[1:] /= np.sqrt(frequency[1:])
    spectrum[0] = 0
    return _normalise(np.fft.irfft(spectrum, samples), rms)
