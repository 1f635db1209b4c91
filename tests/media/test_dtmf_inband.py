"""In-band DTMF detection at the ITU-T Q.24 limits, through G.711 μ-law and A-law, and talk-off.

Every signal comes from a seeded generator (tests/media/dtmf_synth.py); accept cases must yield exactly their
digits (each within 20 ms of where its tone began), reject cases nothing at all.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dtmf_synth import (
    Press,
    detect,
    ms,
    music_like,
    pink_noise,
    score,
    sequence,
    speech_like,
    through_g711,
    tone_rms,
    white_noise,
)

from durchwahl.media.dtmf_inband import (
    DBM0_AMPLITUDE,
    FRAME,
    RATE,
    WINDOW,
    DigitDetected,
    InbandDetector,
    analyse_windows,
    dbm0_to_amplitude,
)
from durchwahl.media.dtmf_tones import dtmf_tone, keypad_frequencies

DIGITS = "0123456789*#ABCD"
LAWS = ("ulaw", "alaw")


def _assert_exact(labelled_presses: object, found: list[DigitDetected]) -> None:
    result = score(labelled_presses, found)  # type: ignore[arg-type]
    assert (result.misses, result.false) == (0, 0), (labelled_presses, found)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def test_dbm0_reference() -> None:
    # G.711: μ-law's +3.17 dBm0 sine peaks at the overload point 8,159 (14-bit) = 32,636 (16-bit).
    assert round(DBM0_AMPLITUDE) == 22657
    assert dbm0_to_amplitude(3.17) == pytest.approx(32636)
    assert dbm0_to_amplitude(-26) == pytest.approx(1136, abs=1)


def test_keypad_frequencies() -> None:
    assert keypad_frequencies("5") == (770.0, 1336.0)
    assert keypad_frequencies("d") == (941.0, 1633.0)
    with pytest.raises(ValueError):
        keypad_frequencies("E")


# --- accept -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("law", LAWS)
def test_every_digit_nominal(rng: np.random.Generator, law: str) -> None:
    labelled = sequence(rng, [(d, 60, 60) for d in DIGITS])
    _assert_exact(labelled.presses, detect(through_g711(labelled.signal, law)))


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("deviation", list(itertools.product((-0.015, 0.015), repeat=2)))
def test_frequency_deviation_1_5_percent_is_detected(
    rng: np.random.Generator, law: str, deviation: tuple[float, float]
) -> None:
    labelled = sequence(rng, [(d, 50, 50) for d in DIGITS], deviation=deviation)
    _assert_exact(labelled.presses, detect(through_g711(labelled.signal, law)))


@pytest.mark.parametrize("law", LAWS)
def test_40_ms_tones_at_every_frame_alignment(rng: np.random.Generator, law: str) -> None:
    # 40 ms tones separated by 40 ms pauses, starting at 20 different offsets within a 20 ms frame.
    for lead in range(0, 20):
        digits = rng.choice(list(DIGITS), size=4)
        labelled = sequence(rng, [(str(d), 40, 40) for d in digits], lead_ms=lead)
        _assert_exact(labelled.presses, detect(through_g711(labelled.signal, law)))


@pytest.mark.parametrize("law", LAWS)
def test_40_ms_pauses_separate_repeated_digits(rng: np.random.Generator, law: str) -> None:
    for digit in DIGITS:
        labelled = sequence(rng, [(digit, 40, 40)] * 3)
        found = detect(through_g711(labelled.signal, law))
        assert [e.digit for e in found] == [digit] * 3
        _assert_exact(labelled.presses, found)


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("gap_ms", [1, 2.5, 5, 7.5, 10])
def test_an_interruption_of_10_ms_or_less_does_not_split_a_digit(
    rng: np.random.Generator, law: str, gap_ms: float
) -> None:
    for digit in DIGITS:
        labelled = sequence(rng, [(digit, 50, gap_ms), (digit, 50, 0)])
        found = detect(through_g711(labelled.signal, law))
        assert [e.digit for e in found] == [digit], (digit, gap_ms, found)
        assert abs(found[0].start - labelled.presses[0].start) <= ms(20)


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize(
    ("low", "high"),
    [(-26, -26), (-18, -26), (-26, -22), (0, 0), (-2, -10), (-4, 0)],
    ids=["-26dBm0", "twist+8@-26", "twist-4@-26", "0dBm0", "twist+8@0", "twist-4@0"],
)
def test_levels_and_twist(rng: np.random.Generator, law: str, low: float, high: float) -> None:
    labelled = sequence(rng, [(d, 40, 40) for d in DIGITS], low_dbm0=low, high_dbm0=high)
    _assert_exact(labelled.presses, detect(through_g711(labelled.signal, law)))


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("level", [-10, -20, -26])
def test_white_noise_at_15_db_snr(rng: np.random.Generator, law: str, level: float) -> None:
    # SNR of each tone to the noise over the whole band (0–4 kHz).
    for _ in range(2):
        labelled = sequence(rng, [(d, 40, 40) for d in DIGITS], low_dbm0=level, high_dbm0=level)
        noise = white_noise(rng, len(labelled.signal), tone_rms(level) / 10 ** (15 / 20))
        _assert_exact(labelled.presses, detect(through_g711(labelled.signal + noise, law)))


# --- reject -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize(
    "deviation",
    [(-0.035, 0.0), (0.035, 0.0), (0.0, -0.035), (0.0, 0.035), (0.035, 0.035), (-0.035, -0.035)],
)
def test_frequency_deviation_3_5_percent_is_rejected(
    rng: np.random.Generator, law: str, deviation: tuple[float, float]
) -> None:
    labelled = sequence(rng, [(d, 80, 60) for d in DIGITS], deviation=deviation)
    assert detect(through_g711(labelled.signal, law)) == []


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("tone_ms", [5, 10, 15, 20, 22.5])
def test_tones_shorter_than_23_ms_are_rejected(rng: np.random.Generator, law: str, tone_ms: float) -> None:
    for lead in range(0, 20, 3):
        labelled = sequence(rng, [(d, tone_ms, 60) for d in DIGITS], lead_ms=lead)
        assert detect(through_g711(labelled.signal, law)) == [], (tone_ms, lead)


def test_tones_below_minus_55_dbm0_are_rejected(rng: np.random.Generator) -> None:
    labelled = sequence(rng, [(d, 80, 60) for d in DIGITS], low_dbm0=-55, high_dbm0=-55)
    assert detect(through_g711(labelled.signal, "ulaw")) == []


def test_single_tones_and_same_group_pairs_are_rejected(rng: np.random.Generator) -> None:
    t = np.arange(ms(200)) / 8000
    amplitude = dbm0_to_amplitude(-10)
    for f in (697, 770, 852, 941, 1209, 1336, 1477, 1633):
        assert detect(through_g711(amplitude * np.sin(2 * np.pi * f * t), "ulaw")) == []
    for f, g in ((697, 770), (852, 941), (1209, 1336), (1477, 1633)):
        signal = amplitude * (np.sin(2 * np.pi * f * t) + np.sin(2 * np.pi * g * t))
        assert detect(through_g711(signal, "ulaw")) == []


def test_a_tone_with_a_strong_second_harmonic_is_rejected() -> None:
    t = np.arange(ms(200)) / 8000
    low, high = keypad_frequencies("5")
    a = dbm0_to_amplitude(-10)
    clean = a * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    assert [e.digit for e in detect(clean)] == ["5"]
    for harmonic_of in (low, high):
        distorted = clean + 0.2 * a * np.sin(2 * np.pi * 2 * harmonic_of * t)  # −14 dB
        assert detect(distorted) == []


# --- talk-off -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [-25, -15, -5])
def test_talk_off_speech_like(level: float) -> None:
    # 3 × 30 s of synthetic voiced speech (f0 80–300 Hz, vibrato, German/English vowel formants): 0 digits.
    rng = np.random.default_rng(1000 + level)
    assert detect(through_g711(speech_like(rng, 30, level_dbm0=level), "ulaw")) == []


@pytest.mark.parametrize("level", [-25, -15, -5])
def test_talk_off_music_like(level: float) -> None:
    # 3 × 30 s of chords of harmonic-rich instruments with vibrato: 0 digits.
    rng = np.random.default_rng(2000 + level)
    assert detect(through_g711(music_like(rng, 30, level_dbm0=level), "alaw")) == []


def test_talk_off_noise() -> None:
    rng = np.random.default_rng(3000)
    signal = np.concatenate(
        [white_noise(rng, ms(10_000), tone_rms(-10)), pink_noise(rng, ms(10_000), tone_rms(-10))]
    )
    assert detect(through_g711(signal, "ulaw")) == []


def test_digits_over_speech(rng: np.random.Generator) -> None:
    # Dialled while a greeting plays: tones at −10 dBm0, speech at −25 dBm0 RMS.
    labelled = sequence(rng, [(d, 60, 60) for d in DIGITS])
    speech = speech_like(np.random.default_rng(4000), len(labelled.signal) / 8000, level_dbm0=-25)
    result = score(labelled.presses, detect(through_g711(labelled.signal + speech, "ulaw")))
    assert result.false == 0
    assert result.hits >= 14  # measured: 16 of 16 with this seed


# --- the machine --------------------------------------------------------------------------------------


def test_start_offsets_are_accurate(rng: np.random.Generator) -> None:
    labelled = sequence(rng, [(d, 60, 60) for d in DIGITS])
    found = detect(labelled.signal)
    assert [e.digit for e in found] == list(DIGITS)
    for press, event in zip(labelled.presses, found, strict=True):
        assert abs(event.start - press.start) <= ms(2)
        assert event.start < event.detected_at <= press.start + ms(50)


def test_any_chunking_gives_the_same_digits(rng: np.random.Generator) -> None:
    labelled = sequence(rng, [(d, 45, 45) for d in "1A*#9"])
    pcm = through_g711(labelled.signal, "ulaw")
    expected = detect(pcm)
    detector = InbandDetector()
    found: list[DigitDetected] = []
    position = 0
    while position < len(pcm) + 3 * FRAME:
        size = int(rng.integers(1, 400))
        chunk = pcm[position : position + size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros(size - len(chunk), dtype=pcm.dtype)])
        found.extend(detector.feed(chunk))
        position += size
    assert found == expected


def test_a_skipped_stretch_restarts_the_detector(rng: np.random.Generator) -> None:
    tone = dtmf_tone("7", ms(100))
    detector = InbandDetector()
    assert detector.feed(tone[:FRAME], 0) == []
    # 1 s of lost packets, then the same digit again: a new press at the new position.
    found = []
    for k in range(5):
        found += detector.feed(tone[:FRAME] if k < 4 else np.zeros(FRAME), 8000 + k * FRAME)
    assert [e.digit for e in found] == ["7"]
    assert abs(found[0].start - 8000) <= ms(2)
    with pytest.raises(ValueError, match="goes back"):
        detector.feed(np.zeros(FRAME), 0)


def test_analyse_windows_batches_streams(rng: np.random.Generator) -> None:
    streams = np.stack([dtmf_tone(d, 4 * WINDOW) for d in "15#D"]).reshape(4, 4, WINDOW)
    batch = analyse_windows(streams)
    assert batch.digits.shape == (4, 4)
    for i in range(4):
        single = analyse_windows(streams[i])
        assert list(single.digits) == list(batch.digits[i])
    assert ["123A456B789C*0#D"[d] for d in batch.digits[:, 0]] == list("15#D")
    with pytest.raises(ValueError):
        analyse_windows(np.zeros((2, 79)))


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        InbandDetector(confirm_windows=1)


def _found_in_time(presses: tuple[Press, ...], found: list[DigitDetected]) -> tuple[int, int]:
    """(tones whose digit was reported between their start and 40 ms after their end, other reports)."""
    unused = list(found)
    hits = 0
    for press in presses:
        match = next(
            (
                d
                for d in unused
                if d.digit == press.digit
                and press.start <= d.detected_at <= press.start + press.length + ms(40)
            ),
            None,
        )
        if match is not None:
            unused.remove(match)
            hits += 1
    return hits, len(unused)


def test_tones_in_white_noise_at_3_db_snr_are_mostly_found() -> None:
    """At 3 dB SNR per tone the two tones leave about a fifth of the energy unexplained: the residual check
    accepts that much when what is left is noise spread over the band (it found 2 of 128 when it did not)."""
    hits = expected = false = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        labelled = sequence(rng, [(d, 40, 40) for d in DIGITS] * 2, low_dbm0=-20, high_dbm0=-20)
        noise = white_noise(rng, len(labelled.signal), tone_rms(-20) / 10 ** (3 / 20))
        found = detect(through_g711(labelled.signal + noise, "ulaw"))
        h, f = _found_in_time(labelled.presses, found)
        hits, expected, false = hits + h, expected + len(labelled.presses), false + f
    assert hits >= expected / 2 and false == 0


def test_tones_over_a_background_voice_are_found() -> None:
    """Tones at -10 dBm0 over a voice at -16 dBm0 RMS: the high tone exactly on frequency, the low one
    within 1.6 %, a keypad's twist — a voice explains what is left (101 of 144 were found before)."""
    hits = expected = false = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        items = [(d, float(rng.uniform(50, 90)), float(rng.uniform(80, 200))) for d in "0123456789*#" * 3]
        labelled = sequence(rng, items, low_dbm0=-10, high_dbm0=-10)
        voice = speech_like(rng, len(labelled.signal) / RATE + 0.1, level_dbm0=-16)[: len(labelled.signal)]
        found = detect(through_g711(labelled.signal + voice, "ulaw"))
        h, f = _found_in_time(labelled.presses, found)
        hits, expected, false = hits + h, expected + len(labelled.presses), false + f
    assert hits >= 0.9 * expected and false == 0
