"""Talk-off against our own greeting: the greeting echoed back by the caller's line must never become a digit.

A caller's line returns part of what we play (hybrid echo: attenuated, delayed, through G.711 twice, with line
noise). The detector hears that echo while it listens for digits, so it must stay silent on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dtmf_synth import detect, music_like, speech_like, through_g711, white_noise

from media.greeting import decode_audio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "greeting.wav"


def echo_of(greeting: np.ndarray, *, loss_db: float, delay_ms: int, rng: np.random.Generator) -> np.ndarray:
    """The greeting as it comes back: delayed, attenuated by the echo return loss, plus line noise."""
    delayed = np.concatenate([np.zeros(delay_ms * 8), greeting.astype(np.float64)])
    echo = delayed * 10.0 ** (-loss_db / 20.0)
    return echo + white_noise(rng, echo.size, rms=30.0)


@pytest.mark.parametrize("loss_db", [0.0, 6.0, 12.0])
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_echo_of_the_greetings_gives_no_digit(loss_db: float, law: str) -> None:
    rng = np.random.default_rng(7)
    greetings = {
        "example": decode_audio(EXAMPLE).astype(np.float64),
        "speech": speech_like(rng, 20.0, level_dbm0=-12.0),
        "music": music_like(rng, 20.0, level_dbm0=-12.0),
    }
    for name, greeting in greetings.items():
        line = through_g711(echo_of(greeting, loss_db=loss_db, delay_ms=40, rng=rng), law)
        found = detect(line)
        assert found == [], f"{name} greeting echoed at -{loss_db} dB gave {[d.digit for d in found]}"


def test_control_a_greeting_that_contains_a_tone_pair_is_heard() -> None:
    """The same echo path does carry a real key tone: the silence above is the detector's, not the path's."""
    from media.dtmf_tones import dtmf_tone

    rng = np.random.default_rng(7)
    greeting = np.concatenate(
        [speech_like(rng, 2.0, level_dbm0=-12.0), dtmf_tone("5", 800, low_dbm0=-6.0, high_dbm0=-6.0)]
    )
    line = through_g711(echo_of(greeting, loss_db=6.0, delay_ms=40, rng=rng), "ulaw")
    assert [d.digit for d in detect(line)] == ["5"]
