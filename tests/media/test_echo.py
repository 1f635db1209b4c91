"""The greeting's echo canceller alone: it learns a synthetic echo path, survives double talk, leaves audio
without echo as it was, and its rows are independent.

An echo path here is a bulk delay followed by a short, decaying, high-passed random impulse response (a
hybrid's dispersion, not flat in frequency), scaled to a given echo return loss; the echo goes through
G.711 with line noise, as a caller's line returns it.
"""

from __future__ import annotations

import numpy as np
import pytest
from dtmf_synth import Float, sequence, speech_like, through_g711, tone_rms, white_noise

from durchwahl.media.dtmf_greeting import GreetingDetector
from durchwahl.media.dtmf_inband import InbandDetector
from durchwahl.media.echo import BLOCK, PARTITIONS, EchoCanceller


def echo_path(rng: np.random.Generator, delay_ms: float) -> Float:
    dispersion = rng.normal(0.0, 1.0, 48) * np.exp(-np.arange(48) / 8.0)
    return np.concatenate([np.zeros(round(delay_ms * 8)), np.convolve(dispersion, [1.0, -0.9])])


def echo_of(reference: Float, path: Float, loss_db: float) -> Float:
    echo = np.convolve(reference, path)[: len(reference)]
    return echo * (10 ** (-loss_db / 20) * np.std(reference) / np.std(echo))


def cancel(canceller: EchoCanceller, received: Float, reference: Float) -> Float:
    blocks = len(received) // BLOCK
    out = [
        canceller.process(
            received[None, b * BLOCK : (b + 1) * BLOCK], reference[None, b * BLOCK : (b + 1) * BLOCK]
        )
        for b in range(blocks)
    ]
    return np.concatenate(out, axis=1)[0]


def erle_db(before: Float, after: Float) -> float:
    """Echo return loss enhancement: how much weaker the echo is after cancellation."""
    return float(10 * np.log10((before @ before) / (after @ after)))


def spans(seconds: tuple[float, float]) -> slice:
    return slice(round(seconds[0] * 8000), round(seconds[1] * 8000))


@pytest.mark.parametrize("delay_ms", [0, 32, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_converges_within_a_second_on_an_echo_path_of_up_to_64_ms(delay_ms: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = through_g711(speech_like(rng, 4.0, level_dbm0=-12.0), "alaw").astype(np.float64)
    path = echo_path(rng, delay_ms)
    echo = echo_of(reference, path, 6.0)
    received = through_g711(echo + white_noise(rng, len(echo), 10.0), "alaw").astype(np.float64)
    canceller = EchoCanceller(1)
    residual = cancel(canceller, received, reference)

    assert erle_db(received[spans((1.0, 2.0))], residual[spans((1.0, 2.0))]) >= 12.0
    assert erle_db(received[spans((2.0, 4.0))], residual[spans((2.0, 4.0))]) >= 20.0
    taps = canceller.taps(0)
    truth = np.zeros(len(taps))
    truth[: len(path)] = path
    assert len(taps) == PARTITIONS * BLOCK
    assert taps @ truth / (np.linalg.norm(taps) * np.linalg.norm(truth)) >= 0.95  # it learnt the path


def test_double_talk_does_not_make_it_diverge() -> None:
    """Two seconds of the caller talking and dialling at the echo's level, after the filter converged: the
    echo stays cancelled during and after, and the learnt path stays the path."""
    rng = np.random.default_rng(3)
    reference = through_g711(speech_like(rng, 7.0, level_dbm0=-12.0), "ulaw").astype(np.float64)
    path = echo_path(rng, 24.0)
    echo = echo_of(reference, path, 6.0)
    near = np.zeros(len(echo))
    talk = spans((3.0, 5.0))
    near[talk] = speech_like(rng, 2.0, level_dbm0=-18.0)
    tones = sequence(rng, [(d, 60, 140) for d in "1234567890"], low_dbm0=-21, high_dbm0=-21, lead_ms=0)
    near[talk][: len(tones.signal)] += tones.signal[: talk.stop - talk.start]
    received = through_g711(echo + near + white_noise(rng, len(echo), 10.0), "ulaw").astype(np.float64)
    canceller = EchoCanceller(1)
    residual = cancel(canceller, received, reference)
    taps_before = canceller.taps(0)
    echo_left = residual - near[: len(residual)]  # what is left of the echo (plus G.711 noise)

    assert erle_db(echo[spans((2.0, 3.0))], echo_left[spans((2.0, 3.0))]) >= 20.0
    assert erle_db(echo[talk], echo_left[talk]) >= 15.0
    assert erle_db(echo[spans((5.0, 7.0))], echo_left[spans((5.0, 7.0))]) >= 20.0
    truth = np.zeros(len(taps_before))
    truth[: len(path)] = path
    assert canceller.taps(0) @ truth / (np.linalg.norm(canceller.taps(0)) * np.linalg.norm(truth)) >= 0.95


def test_without_reference_the_audio_passes_unchanged() -> None:
    rng = np.random.default_rng(4)
    received = through_g711(speech_like(rng, 2.0, level_dbm0=-15.0), "ulaw").astype(np.float64)
    canceller = EchoCanceller(1)
    assert np.array_equal(
        cancel(canceller, received, np.zeros(len(received))), received[: len(received) // BLOCK * BLOCK]
    )


def test_a_greeting_without_echo_is_detected_as_before() -> None:
    """A line that returns no echo: with the greeting as reference, the digits found are the plain
    detector's, at the same places."""
    rng = np.random.default_rng(5)
    greeting = through_g711(speech_like(rng, 6.0, level_dbm0=-12.0), "ulaw").astype(np.float64)
    tones = sequence(rng, [(d, 60, 400) for d in "0123456789*#"], low_dbm0=-20, high_dbm0=-20, lead_ms=300)
    background = speech_like(rng, 6.0, level_dbm0=-30.0)
    audio = background[: len(tones.signal)] + tones.signal
    received = through_g711(audio + white_noise(rng, len(audio), 10.0), "ulaw").astype(np.float64)
    plain = InbandDetector()
    expected = [d for b in range(0, len(received), BLOCK) for d in plain.feed(received[b : b + BLOCK])]
    aware = GreetingDetector().feed(received, greeting[: len(received)])
    assert len(expected) >= 10
    assert [(d.digit, d.start) for d in aware] == [(d.digit, d.start) for d in expected]


def test_digits_at_the_echos_level_are_found_in_the_echo() -> None:
    """The greeting's echo (6 dB return loss) and key tones each as loud as the echo: the plain detector
    misses most of them, the greeting-aware one none after its first second."""
    rng = np.random.default_rng(6)
    greeting = through_g711(speech_like(rng, 8.0, level_dbm0=-12.0), "alaw").astype(np.float64)
    echo = echo_of(greeting, echo_path(rng, 40.0), 6.0)
    level = 20 * np.log10(np.std(echo) / tone_rms(0.0))
    digits = "1472580369*#" * 2
    tones = sequence(rng, [(d, 70, 200) for d in digits], low_dbm0=level, high_dbm0=level, lead_ms=1000)
    audio = echo[: len(tones.signal)] + tones.signal
    received = through_g711(audio + white_noise(rng, len(audio), 10.0), "alaw").astype(np.float64)
    plain = InbandDetector()
    found_plain = [
        d.digit for b in range(0, len(received), BLOCK) for d in plain.feed(received[b : b + BLOCK])
    ]
    found = [d.digit for d in GreetingDetector().feed(received, greeting[: len(received)])]
    assert "".join(found) == digits
    assert len(found_plain) < len(digits) / 2


def test_rows_are_independent() -> None:
    rng = np.random.default_rng(7)
    received = rng.normal(0.0, 2000.0, (3, 40, BLOCK))
    reference = rng.normal(0.0, 4000.0, (3, 40, BLOCK))
    together = EchoCanceller(3)
    alone = [EchoCanceller(1) for _ in range(3)]
    for b in range(40):
        adapt = np.array([True, b % 3 != 0, True])
        out = together.process(received[:, b], reference[:, b], adapt=adapt)
        for row in range(3):
            mine = alone[row].process(
                received[row, None, b], reference[row, None, b], adapt=adapt[row : row + 1]
            )
            assert np.array_equal(out[row], mine[0])


def test_rows_can_be_added_removed_and_reset() -> None:
    rng = np.random.default_rng(8)
    canceller = EchoCanceller(0)
    assert canceller.add() == 0 and canceller.add() == 1 and canceller.add() == 2
    for _ in range(10):
        canceller.process(rng.normal(0, 1000, (3, BLOCK)), rng.normal(0, 1000, (3, BLOCK)))
    last = canceller.taps(2)
    canceller.remove(0)  # the last row moves into its place
    assert canceller.streams == 2 and np.array_equal(canceller.taps(0), last)
    canceller.reset(0)
    assert not canceller.taps(0).any()
    with pytest.raises(ValueError, match="shape"):
        canceller.process(np.zeros((3, BLOCK)), np.zeros((3, BLOCK)))
