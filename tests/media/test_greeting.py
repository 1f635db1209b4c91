"""Greeting decoding (WAV at any rate, other formats through av), pre-encoding, caching and pacing."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.media.g711 import alaw_decode, ulaw_decode
from durchwahl.media.greeting import (
    FRAME_SAMPLES,
    GreetingCache,
    GreetingError,
    Pacer,
    decode_audio,
    greeting_from_samples,
)

ROOT = Path(__file__).resolve().parents[2]


def write_wav(path: Path, rate: int, seconds: float, freq: float = 440.0, channels: int = 1) -> None:
    t = np.arange(int(rate * seconds)) / rate
    tone = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    data = np.repeat(tone[:, None], channels, axis=1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def dominant_frequency(samples: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 1), (44100, 2), (48000, 2)])
def test_wav_of_any_rate_decodes_to_8khz_mono(tmp_path: Path, rate: int, channels: int) -> None:
    path = tmp_path / "g.wav"
    write_wav(path, rate, 1.0, 440.0, channels)
    samples = decode_audio(path)
    assert samples.dtype == np.int16
    assert abs(samples.size - 8000) <= 160
    assert abs(dominant_frequency(samples) - 440.0) < 5.0


def test_other_formats_through_av(tmp_path: Path) -> None:
    import av

    path = tmp_path / "g.flac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        t = np.arange(16000) / 16000
        pcm = (6000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    samples = decode_audio(path)
    assert abs(dominant_frequency(samples) - 1000.0) < 5.0


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(GreetingError, match=r"not-audio\.wav"):
        decode_audio(bad)
    with pytest.raises(GreetingError, match=r"missing\.wav"):
        GreetingCache().get(tmp_path / "missing.wav")


def test_frames_are_20ms_and_decode_back() -> None:
    samples = (np.arange(1000) * 7 % 2000 - 1000).astype(np.int16)
    greeting = greeting_from_samples(samples)
    assert greeting.frames == 7  # 1000 samples -> 7 frames of 160, the last padded with silence
    assert all(len(f) == FRAME_SAMPLES for f in greeting.pcmu + greeting.pcma)
    assert greeting.duration == pytest.approx(0.14)
    decoded = ulaw_decode(b"".join(greeting.pcmu))[:1000]
    assert np.max(np.abs(decoded.astype(int) - samples)) < 64
    decoded_a = alaw_decode(b"".join(greeting.pcma))[:1000]
    assert np.max(np.abs(decoded_a.astype(int) - samples)) < 64
    assert greeting.frames_for("pcmu") is greeting.pcmu
    with pytest.raises(GreetingError):
        greeting.frames_for("opus")


def test_cache_shares_and_notices_changes(tmp_path: Path) -> None:
    path = tmp_path / "g.wav"
    write_wav(path, 8000, 0.5)
    cache = GreetingCache()
    first = cache.get(path)
    assert cache.get(path) is first
    write_wav(path, 8000, 1.0)
    second = cache.get(path)
    assert second is not first and second.frames == 50


def test_example_greeting_decodes() -> None:
    greeting = GreetingCache().get(ROOT / "examples" / "greeting.wav")
    assert greeting.duration == pytest.approx(3.0, abs=0.05)


def test_pacer_does_not_drift_and_does_not_burst() -> None:
    pacer = Pacer(start=100.0)
    sent = []
    now = 100.0
    for _ in range(3000):  # one minute of frames, each handled 1-3 ms late
        now = pacer.deadline() + 0.002
        index = pacer.due(now)
        assert index is not None
        sent.append(index)
    assert sent == list(range(3000))
    assert pacer.deadline() == pytest.approx(100.0 + 3000 * 0.02)
    # A 1 s stall: the late frames are skipped, not sent at once.
    now = pacer.deadline() + 1.0
    assert pacer.due(now) is not None
    assert pacer.skipped >= 45
    assert pacer.due(now) is None  # and the next frame waits for its own deadline


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=200))
def test_pacer_indices_strictly_increase(delays: list[float]) -> None:
    pacer = Pacer(start=0.0)
    now = 0.0
    last = -1
    for delay in delays:
        now += delay
        while (index := pacer.due(now)) is not None:
            assert index > last
            last = index
        assert pacer.deadline() > now
