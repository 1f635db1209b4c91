"""Talk-off against our own greeting: the greeting echoed back by the caller's line must never become a digit.

A caller's line returns part of what we play (hybrid echo: attenuated, delayed, through G.711 twice, with line
noise). The detector hears that echo while it listens for digits, so it must stay silent on it.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import numpy as np
import pytest
from dtmf_synth import detect, music_like, speech_like, through_g711, white_noise

from durchwahl.media.dtmf_inband import InbandDetector
from durchwahl.media.dtmf_tones import dtmf_tone
from durchwahl.media.g711 import ulaw_decode, ulaw_encode
from durchwahl.media.greeting import decode_audio, greeting_from_samples
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.session import MediaClock, PortAllocator, RtpSession

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
    rng = np.random.default_rng(7)
    greeting = np.concatenate(
        [speech_like(rng, 2.0, level_dbm0=-12.0), dtmf_tone("5", 800, low_dbm0=-6.0, high_dbm0=-6.0)]
    )
    line = through_g711(echo_of(greeting, loss_db=6.0, delay_ms=40, rng=rng), "ulaw")
    assert [d.digit for d in detect(line)] == ["5"]


@pytest.mark.parametrize("kind", ["speech", "example"])
def test_greeting_aware_detection_stays_silent_on_the_echo(kind: str) -> None:
    """With the greeting as reference, the echo alone (6 dB down, 40 ms late, a non-flat path) gives no digit,
    while the filter learns and once it has (the example is a chime: a few pure tones)."""
    from durchwahl.media.dtmf_greeting import GreetingDetector

    rng = np.random.default_rng(11)
    if kind == "example":
        greeting = np.tile(decode_audio(EXAMPLE).astype(np.float64), 4)
    else:
        greeting = speech_like(rng, 12.0, level_dbm0=-12.0)
    sent = through_g711(greeting, "alaw").astype(np.float64)
    path = np.convolve(
        np.concatenate([np.zeros(320), rng.normal(0, 1, 40) * np.exp(-np.arange(40) / 6)]), [1, -0.9]
    )
    echo = np.convolve(sent, path)[: len(sent)]
    echo *= 0.5 * np.std(sent) / np.std(echo)
    line = through_g711(echo + white_noise(rng, len(echo), 30.0), "alaw")
    assert GreetingDetector().feed(line, sent) == []


class Caller:
    """The far end of a greeting call over loopback: it plays out the greeting it receives, its line returns
    an echo of that (``delay_ms`` late, ``loss_db`` down, through a short non-flat path, with line noise), and
    its keypad adds the tones of ``digits`` from ``first_digit`` seconds on, each as loud as the echo."""

    def __init__(
        self,
        sock: socket.socket,
        server: tuple[str, int],
        digits: str,
        *,
        loss_db: float = 6.0,
        delay_ms: int = 30,
        first_digit: float = 1.6,
    ) -> None:
        self.sock = sock
        self.server = server
        self.digits = digits
        self.first_digit = first_digit
        self.gain = 10 ** (-loss_db / 20)
        rng = np.random.default_rng(12)
        self.path = np.convolve(
            np.concatenate([np.zeros(delay_ms * 8), rng.normal(0, 1, 32) * np.exp(-np.arange(32) / 5)]),
            [1, -0.9],
        )
        self.path /= np.sqrt(self.path @ self.path)
        self.noise = rng
        self.heard: list[np.ndarray] = []  # the greeting as played out, frame by frame
        self.tone_dbm0 = -12.0 - loss_db  # the greeting is at -12 dBm0: each tone as loud as its echo

    def keypad(self, frame: int) -> np.ndarray:
        """The tones in frame ``frame`` (20 ms each): 80 ms per digit, 160 ms between digits."""
        start = round(self.first_digit * 50)
        out = np.zeros(160)
        for k, digit in enumerate(self.digits):
            first = start + 12 * k
            if first <= frame < first + 4:
                offset = (frame - first) * 160
                tone = dtmf_tone(digit, offset + 160, low_dbm0=self.tone_dbm0, high_dbm0=self.tone_dbm0)
                out += tone[offset:]
        return out

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        frames = round(seconds * 50)
        start = loop.time()
        played = np.zeros(0)
        for n in range(frames):
            while True:  # the greeting packets that arrived meanwhile go to the playout
                try:
                    data = self.sock.recv(2048)
                except BlockingIOError:
                    break
                self.heard.append(ulaw_decode(parse(data).payload).astype(np.float64))
            played = np.concatenate(self.heard) if self.heard else np.zeros(0)
            taps = len(self.path)
            have = np.zeros(taps + (n + 1) * 160)  # the playout so far, silence before it began
            have[taps : taps + min(len(played), (n + 1) * 160)] = played[: (n + 1) * 160]
            echo = np.convolve(have[-(160 + taps) :], self.path)[taps : taps + 160]
            frame = self.gain * echo + self.keypad(n) + self.noise.normal(0, 10, 160)
            payload = ulaw_encode(np.clip(np.round(frame), -32768, 32767).astype(np.int16))
            packet = RtpPacket(0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, 0x5EED, payload, n == 0)
            self.sock.sendto(bytes(packet), self.server)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


async def test_a_greeting_call_hears_the_extension_through_the_greetings_echo() -> None:
    """Over loopback: we play a speech greeting; the caller's line returns its echo (6 dB down, 30 ms late,
    non-flat) and the caller dials 101 with each tone as loud as the echo. The session reports 1, 0, 1; a
    detector that does not know the greeting, run over the same received audio, does not."""
    rng = np.random.default_rng(13)
    greeting = greeting_from_samples(np.round(speech_like(rng, 4.0, level_dbm0=-12.0)).astype(np.int16))
    allocator = PortAllocator(36000, 36999)
    session = await allocator.open(lambda: RtpSession(rng=random.Random(5)))
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    session.remote = far.getsockname()
    clock = MediaClock()
    digits: list[str] = []
    received: list[np.ndarray] = []
    session.on_audio = lambda samples, now: received.append(samples)
    caller = Caller(far, session.local, "101")
    try:
        session.play(greeting.pcmu, clock)
        session.on_digit = lambda pressed: digits.append(pressed.digit)
        await caller.run(3.2)
        await asyncio.sleep(0.15)  # the bank analyses a slot two ticks after it arrived
    finally:
        session.close()
        await clock.close()
        far.close()
    assert "".join(digits) == "101"
    audio = np.concatenate(received)
    plain = InbandDetector()
    heard_plain = "".join(d.digit for k in range(0, len(audio), 160) for d in plain.feed(audio[k : k + 160]))
    assert heard_plain != "101"


async def test_the_bank_takes_30_ms_packets_and_a_new_source_and_lets_go_of_the_session() -> None:
    """Detection in the clock's bank: packets of 240 samples are cut into 20 ms frames, a new SSRC starts
    the stream afresh, and a session that stops listening leaves the bank."""
    loop = asyncio.get_running_loop()
    greeting = greeting_from_samples(np.zeros(8000 * 3, dtype=np.int16))
    session = await PortAllocator(36000, 36999).open(lambda: RtpSession(rng=random.Random(6)))
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    session.remote = far.getsockname()
    clock = MediaClock()
    digits: list[str] = []
    try:
        session.play(greeting.pcmu, clock)
        session.on_digit = lambda pressed: digits.append(pressed.digit)
        assert len(clock.detectors) == 1
        audio = np.concatenate([np.zeros(800), dtmf_tone("4", 640), np.zeros(800), dtmf_tone("7", 640)])
        audio = np.concatenate([audio, np.zeros(1600)])
        start = loop.time()
        for n, ssrc, at in [(k, 0x1111, k) for k in range(len(audio) // 240)] + [
            (k, 0x2222, len(audio) // 240 + k) for k in range(len(audio) // 240)
        ]:
            chunk = audio[n * 240 : (n + 1) * 240]
            payload = ulaw_encode(np.round(chunk).astype(np.int16))
            far.sendto(
                bytes(RtpPacket(0, at, (100 if ssrc == 0x2222 else 7000) + n * 240, ssrc, payload)),
                session.local,
            )
            await asyncio.sleep(max(0.0, start + (at + 1) * 0.03 - loop.time()))
        await asyncio.sleep(0.1)
        session.on_digit = None
        assert len(clock.detectors) == 0
    finally:
        session.close()
        await clock.close()
        far.close()
    assert digits == ["4", "7", "4", "7"]
