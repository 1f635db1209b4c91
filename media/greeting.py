"""Greeting audio: decode a customer's file once to 8 kHz mono, pre-encode 20 ms G.711 frames, share them.

Any format ``av`` (FFmpeg, the decoder aiortc uses) reads is accepted: WAV of any rate, MP3, OGG, FLAC …
Decoding happens once per file (cached by path, size and modification time); thousands of calls playing
the same greeting share one immutable ``Greeting``. ``av`` is imported only inside ``decode_audio`` so that
importing this module stays cheap.

``Pacer`` is the pure clock for paced sending: frame n is due at ``start + n * 20 ms`` (a deadline clock
does not drift over minutes), and after a stall it skips the frames whose time has passed instead of
sending a burst.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

from .errors import MediaError
from .g711 import alaw_encode, ulaw_encode

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "Greeting",
    "GreetingCache",
    "GreetingError",
    "Pacer",
    "decode_audio",
    "greeting_from_samples",
]

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
FRAME_SECONDS: Final = FRAME_SAMPLES / SAMPLE_RATE


class GreetingError(MediaError):
    """A greeting file that cannot be read or decoded (the message names the file)."""


@attrs.frozen
class Greeting:
    """A decoded greeting: 8 kHz mono samples and its 20 ms frames pre-encoded as PCMU and PCMA."""

    source: str
    samples: npt.NDArray[np.int16] = attrs.field(eq=False, repr=False)
    pcmu: tuple[bytes, ...] = attrs.field(repr=False)
    pcma: tuple[bytes, ...] = attrs.field(repr=False)

    @property
    def frames(self) -> int:
        return len(self.pcmu)

    @property
    def duration(self) -> float:
        """Seconds of audio (whole 20 ms frames; the last one padded with silence)."""
        return self.frames * FRAME_SECONDS

    def frames_for(self, codec: str) -> tuple[bytes, ...]:
        """The encoded frames for "PCMU" or "PCMA" (the names SDP uses)."""
        name = codec.upper()
        if name == "PCMU":
            return self.pcmu
        if name == "PCMA":
            return self.pcma
        raise GreetingError(f"no pre-encoded frames for codec {codec!r} (PCMU and PCMA are)")


def greeting_from_samples(samples: npt.ArrayLike, source: str = "<samples>") -> Greeting:
    """Build a greeting from 8 kHz mono int16 samples: pad to whole frames and encode both laws."""
    pcm = np.asarray(samples, dtype=np.int16).reshape(-1)
    if pcm.size == 0:
        raise GreetingError(f"greeting {source} has no audio")
    padded = np.zeros(-(-pcm.size // FRAME_SAMPLES) * FRAME_SAMPLES, dtype=np.int16)
    padded[: pcm.size] = pcm
    ulaw = ulaw_encode(padded)
    alaw = alaw_encode(padded)
    pcmu = tuple(ulaw[i : i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES))
    pcma = tuple(alaw[i : i + FRAME_SAMPLES] for i in range(0, len(alaw), FRAME_SAMPLES))
    padded.setflags(write=False)
    return Greeting(source, padded, pcmu, pcma)


def decode_audio(path: str | os.PathLike[str], *, max_seconds: float = 600.0) -> npt.NDArray[np.int16]:
    """Decode any audio file ``av`` can read to 8 kHz mono int16 samples (at most ``max_seconds``)."""
    import av  # FFmpeg bindings: loaded only when a greeting is actually decoded

    name = os.fspath(path)
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[npt.NDArray[np.int16]] = []
    total = 0
    try:
        with av.open(name) as container:
            if not container.streams.audio:
                raise GreetingError(f"{name}: no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    chunks.append(chunk)
                    total += chunk.size
                if total >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
    except GreetingError:
        raise
    except (OSError, ValueError, av.FFmpegError) as exc:
        raise GreetingError(f"{name}: cannot decode audio: {exc}") from exc
    if not chunks:
        raise GreetingError(f"{name}: no audio decoded")
    return np.concatenate(chunks)[:limit]


class GreetingCache:
    """Decoded greetings by file, reused while the file's size and modification time stay the same."""

    def __init__(self, max_entries: int = 64) -> None:
        self._max = max_entries
        self._entries: dict[str, tuple[tuple[int, int], Greeting]] = {}

    def get(self, path: str | os.PathLike[str]) -> Greeting:
        """The greeting for ``path``, decoding it on first use or after the file changed."""
        resolved = str(Path(path).resolve())
        try:
            stat = os.stat(resolved)
        except OSError as exc:
            raise GreetingError(f"{path}: {exc.strerror or exc}") from exc
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._entries.get(resolved)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        greeting = greeting_from_samples(decode_audio(resolved), source=resolved)
        if len(self._entries) >= self._max and resolved not in self._entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[resolved] = (stamp, greeting)
        return greeting

    def __len__(self) -> int:
        return len(self._entries)


class Pacer:
    """Deadlines for 20 ms frames: frame n is due at ``start + n * interval``, whatever the loop's jitter.

    ``due(now)`` returns the index of the frame to send now, or None when the next one is not due yet. After
    a stall longer than ``max_late`` frames, the frames already too late are skipped (counted in
    ``skipped``) rather than sent in a burst, which a jitter buffer would only throw away.
    """

    def __init__(self, start: float, interval: float = FRAME_SECONDS, max_late: int = 3) -> None:
        self._start = start
        self._interval = interval
        self._max_late = max_late
        self.next_index = 0
        self.skipped = 0

    def deadline(self) -> float:
        """When the next frame is due."""
        return self._start + self.next_index * self._interval

    def due(self, now: float) -> int | None:
        if now < self.deadline():
            return None
        behind = int((now - self.deadline()) / self._interval)
        if behind > self._max_late:
            self.skipped += behind
            self.next_index += behind
        index = self.next_index
        self.next_index += 1
        return index
