"""``durchwahl dtmf FILE`` on generated WAV files, and the resampler it uses."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from dtmf_synth import ms, sequence

from durchwahl.media.dtmf_cli import main, read_wav
from durchwahl.media.resample import resample


def _write_wav(path: Path, signal: np.ndarray, rate: int, *, channels: int = 1, width: int = 2) -> None:
    data = np.repeat(np.clip(np.round(signal), -32768, 32767).astype("<i2")[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        if width == 2:
            wav.writeframes(data.tobytes())
        else:  # 24-bit: the 16-bit value shifted left by 8
            wide = data.astype("<i4") << 8
            wav.writeframes(wide.view(np.uint8).reshape(-1, 4)[:, :3].tobytes())


@pytest.mark.parametrize(("rate", "channels", "width"), [(8000, 1, 2), (44100, 2, 2), (16000, 1, 3)])
def test_prints_digit_and_start_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: int, channels: int, width: int
) -> None:
    rng = np.random.default_rng(5)
    labelled = sequence(rng, [(d, 60, 60) for d in "0815*#"], lead_ms=123)
    signal = labelled.signal
    if rate != 8000:
        signal = resample(signal, 8000, rate)
    path = tmp_path / "digits.wav"
    _write_wav(path, signal, rate, channels=channels, width=width)
    assert main([str(path), "--g711", "alaw"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list("0815*#")
    for line, press in zip(lines, labelled.presses, strict=True):
        assert abs(int(line.split()[1]) - press.start) <= ms(2)


def test_unreadable_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.wav"
    assert main([str(missing)]) == 2
    assert "cannot read" in capsys.readouterr().err
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wave file at all")
    assert main([str(junk)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_read_wav_scales_8_bit(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes([128, 255, 0]))
    samples, rate = read_wav(str(path))
    assert rate == 8000
    assert list(samples) == [0.0, 127 * 256.0, -128 * 256.0]


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 16000, 11025, 6000])
def test_resample_keeps_a_tone_and_its_timing(rate: int) -> None:
    t = np.arange(rate // 2) / rate
    out = resample(np.sin(2 * np.pi * 1000 * t), rate, 8000)
    assert len(out) == 4000
    expected = np.sin(2 * np.pi * 1000 * np.arange(4000) / 8000)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 1e-3


def test_resample_removes_what_8_khz_cannot_carry() -> None:
    t = np.arange(48000) / 48000
    assert np.max(np.abs(resample(np.sin(2 * np.pi * 5000 * t), 48000, 8000)[200:-200])) < 1e-3
    with pytest.raises(ValueError):
        resample([0.0], 0, 8000)


def test_other_formats_are_decoded_through_av(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    av = pytest.importorskip("av")
    labelled = sequence(np.random.default_rng(3), [(d, 60, 60) for d in "42#"], lead_ms=50)
    pcm = np.clip(np.round(labelled.signal), -32768, 32767).astype(np.int16)
    path = tmp_path / "digits.flac"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list("42#")
    for line, press in zip(lines, labelled.presses, strict=True):
        assert abs(int(line.split()[1]) - press.start) <= ms(2)
