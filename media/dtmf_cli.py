"""``durchwahl dtmf FILE``: the in-band DTMF digits in an audio file, found as a call would find them.

A WAV file is read with the standard library's :mod:`wave` (PCM, 8/16/24/32-bit, any rate, any channel
count; channels are averaged), brought to 8 kHz (:func:`media.resample.resample`), optionally passed through
a G.711 round trip (``--g711 ulaw|alaw``, what a call's audio goes through), and fed to
:class:`media.dtmf_inband.InbandDetector` in 20 ms frames of 160 samples. One line per digit: the digit, a
space, and the sample offset (8 kHz) at which its tone began. Exit status 0; 1 with a message on standard
error when the file holds no digits (as ``grep`` does when nothing matches); 2 when it cannot be read.

Any other format is decoded through ``av`` by :func:`media.greeting.decode_audio` (imported only then; it
yields 8 kHz mono directly).
"""

from __future__ import annotations

import argparse
import sys
import wave
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .dtmf_inband import FRAME, RATE, DigitDetected, InbandDetector
from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .resample import resample

__all__ = ["AudioFileError", "detect_digits", "main", "read_audio", "read_wav"]


class AudioFileError(Exception):
    """An audio file that cannot be read; the message names the file and the reason."""


def read_wav(path: str) -> tuple[npt.NDArray[np.float64], int]:
    """The mono samples of a PCM WAV file on the 16-bit scale, and its sample rate.

    :raises AudioFileError: the file is missing, unreadable, not WAV, or not integer PCM.
    """
    try:
        with wave.open(path, "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        reason = str(exc) or ("not a WAV file" if isinstance(exc, EOFError) else type(exc).__name__)
        raise AudioFileError(f"cannot read {path}: {reason}") from exc
    if rate <= 0 or channels <= 0:
        raise AudioFileError(f"cannot read {path}: invalid WAV header ({channels} channels at {rate} Hz)")
    usable = len(data) - len(data) % (width * channels)
    data = data[:usable]
    if width == 1:
        pcm = (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif width == 2:
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float64)
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        pcm = (np.where(value >= 1 << 23, value - (1 << 24), value) / 256.0).astype(np.float64)
    elif width == 4:
        pcm = np.frombuffer(data, dtype="<i4").astype(np.float64) / 65536.0
    else:
        raise AudioFileError(f"cannot read {path}: {8 * width}-bit samples are not supported")
    mono: npt.NDArray[np.float64] = pcm.reshape(-1, channels).mean(axis=1)
    return mono, rate


def read_audio(path: str) -> tuple[npt.NDArray[np.float64], int]:
    """The mono samples (16-bit scale) and rate of a WAV file, or of any file ``av`` decodes (at 8 kHz).

    :raises AudioFileError: the file cannot be read or decoded.
    """
    try:
        return read_wav(path)
    except AudioFileError as wav_error:
        if not isinstance(wav_error.__cause__, (EOFError, wave.Error)):
            raise
        from .greeting import GreetingError, decode_audio  # loads av only now

        try:
            return decode_audio(path).astype(np.float64), RATE
        except GreetingError as exc:
            raise AudioFileError(f"cannot read {path}: {exc}") from exc


def detect_digits(
    samples: npt.ArrayLike, rate: int = RATE, *, g711: str | None = None
) -> list[DigitDetected]:
    """Run the detector over a whole recording as a call would: 8 kHz, 20 ms frames, optional G.711."""
    audio = resample(samples, rate, RATE) if rate != RATE else np.asarray(samples, dtype=np.float64)
    pcm = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
    if g711 == "ulaw":
        pcm = ulaw_decode(ulaw_encode(pcm))
    elif g711 == "alaw":
        pcm = alaw_decode(alaw_encode(pcm))
    elif g711 is not None:
        raise ValueError(f"g711 must be 'ulaw', 'alaw' or None, not {g711!r}")
    # A call's audio ends with silence or hangs up; pad so a tone at the very end is still heard out.
    pcm = np.concatenate([pcm, np.zeros(FRAME - len(pcm) % FRAME + 2 * FRAME, dtype=np.int16)])
    detector = InbandDetector()
    found: list[DigitDetected] = []
    for offset in range(0, len(pcm), FRAME):
        found.extend(detector.feed(pcm[offset : offset + FRAME], offset))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="durchwahl dtmf",
        description="Print the in-band DTMF digits of a WAV file: digit and start sample (8 kHz) a line.",
    )
    parser.add_argument(
        "file", metavar="FILE", help="an audio file: WAV (read directly) or any format av reads"
    )
    parser.add_argument(
        "--g711", choices=("ulaw", "alaw"), help="pass the audio through a G.711 round trip first"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        samples, rate = read_audio(args.file)
    except AudioFileError as exc:
        print(f"durchwahl dtmf: {exc}", file=sys.stderr)
        return 2
    digits = detect_digits(samples, rate, g711=args.g711)
    for digit in digits:
        print(f"{digit.digit} {digit.start}")
    if not digits:
        seconds = len(samples) / rate if rate else 0.0
        print(f"durchwahl dtmf: no DTMF digits in {args.file} ({seconds:.1f} s of audio)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
