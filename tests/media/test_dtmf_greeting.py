"""Batched detection (DetectorBank, every call per tick) reports what per-stream detection (GreetingDetector)
reports on the same audio: the same digits at the same stream positions, whatever the other streams do,
when each stream joins and leaves, how its packets are jittered and which are lost."""

from __future__ import annotations

import attrs
import numpy as np
from dtmf_synth import Float, sequence, speech_like, white_noise
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durchwahl.media.dtmf_greeting import DetectorBank, GreetingDetector
from durchwahl.media.dtmf_inband import DigitDetected
from durchwahl.media.echo import BLOCK

FRAMES = 110  # 2.2 s per stream


@attrs.frozen
class Stream:
    seed: int
    join: int  # the bank tick at which the stream joins
    frames: int  # frames it receives before it leaves
    first_late: int  # ticks by which its first frame is late (0 or 1)
    jitter: tuple[int, ...]  # per frame: ticks it arrives after its slot's earliest (−1 … delay − 1)
    lost: frozenset[int]  # frames that never arrive
    echo_ms: int


def streams(delay: int) -> st.SearchStrategy[Stream]:
    return st.builds(
        Stream,
        seed=st.integers(0, 2**16),
        join=st.integers(0, 6),
        frames=st.integers(FRAMES // 2, FRAMES),
        first_late=st.integers(0, 1),
        jitter=st.lists(st.integers(-1, delay - 1), min_size=FRAMES, max_size=FRAMES).map(tuple),
        lost=st.frozensets(st.integers(30, 80), max_size=8),  # around the tones
        echo_ms=st.integers(0, 60),
    )


def audio(stream: Stream) -> tuple[Float, Float]:
    """What the stream sends (a speech-like greeting) and receives (its echo, 6 dB down, plus key tones at
    the echo's level and line noise), ``FRAMES`` blocks each."""
    rng = np.random.default_rng(stream.seed)
    sent = speech_like(rng, FRAMES * BLOCK / 8000 + 0.1, level_dbm0=-12.0)[: FRAMES * BLOCK]
    echo = 0.5 * np.concatenate([np.zeros(stream.echo_ms * 8), sent])[: len(sent)]
    tones = sequence(rng, [(d, 70, 180) for d in "159#"], low_dbm0=-21, high_dbm0=-21, lead_ms=700)
    received = echo + white_noise(rng, len(echo), 10.0)
    received[: len(tones.signal)] += tones.signal[: len(received)]
    return sent, received


def run_bank(delay: int, group: list[Stream]) -> list[list[tuple[str, int]]]:
    """Every stream through one bank: returns each stream's digits (digit, start relative to its first
    processed slot)."""
    bank = DetectorBank(delay=delay)
    signals = [audio(s) for s in group]
    handles: dict[int, int] = {}
    origin: dict[int, int] = {}
    found: list[list[tuple[str, int]]] = [[] for _ in group]
    arrivals: dict[int, list[tuple[int, int]]] = {}  # tick → (stream, frame)
    for i, s in enumerate(group):
        received_frames = [j for j in range(s.frames) if j not in s.lost]
        first = received_frames[0]
        base = s.join + 2 + first + s.first_late  # the tick its first frame arrives (and its slot)
        for j in received_frames:
            tick = base if j == first else base + (j - first) + s.jitter[j]
            arrivals.setdefault(max(tick, s.join), []).append((i, j))
        origin[i] = first * BLOCK - (base - (s.join + 1 - delay)) * BLOCK
    last_tick = max(s.join + s.frames + 4 + delay for s in group)
    for tick in range(1, last_tick + 1):
        for i, s in enumerate(group):
            if s.join == tick - 1:
                handles[i] = bank.join()
        for i, s in enumerate(group):
            if i in handles and tick - 1 - s.join < FRAMES:
                m = tick - 1 - s.join  # the frame it sends this tick
                bank.sent(handles[i], signals[i][0][m * BLOCK : (m + 1) * BLOCK], 1000 + m * BLOCK)
        for i, j in arrivals.get(tick, []):
            if i in handles:
                bank.received(handles[i], j * BLOCK, signals[i][1][j * BLOCK : (j + 1) * BLOCK])
        by_handle = {h: i for i, h in handles.items()}
        for handle, digit in bank.tick():
            i = by_handle[handle]
            found[i].append((digit.digit, digit.start - origin[i]))
        for i, s in enumerate(group):
            if i in handles and tick == s.join + s.frames + 2 + delay:
                bank.leave(handles.pop(i))
    return found


def run_alone(delay: int, s: Stream, phase: int = 0) -> list[tuple[str, int]]:
    """The same stream through a GreetingDetector: block by block as the bank sees it, each slot's
    received frame (or a gap) with the sent frame aligned with it: the first frame received with the last
    frame sent by then, and so on (silence until the first frame arrived)."""
    sent, received = audio(s)
    received_frames = [j for j in range(s.frames) if j not in s.lost]
    first = received_frames[0]
    base = s.join + 2 + first + s.first_late  # the tick its first frame arrives, after that tick's send
    detector = GreetingDetector(phase=phase)  # the bank gives its n-th stream the phase n
    digits: list[DigitDetected] = []
    for tick in range(s.join + 1, s.join + s.frames + 3 + delay):
        slot = tick - delay
        j = slot - base + first
        m = j + (base - s.join) - first - 1  # the sent frame aligned with received frame j
        reference = sent[m * BLOCK : (m + 1) * BLOCK] if tick >= base and 0 <= m < FRAMES else np.zeros(BLOCK)
        if slot >= base and 0 <= j < s.frames and j not in s.lost:
            digits += detector.feed(received[j * BLOCK : (j + 1) * BLOCK], reference)
        else:
            detector.lost(reference)
    return [(d.digit, d.start) for d in digits]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 3).flatmap(
        lambda delay: st.tuples(st.just(delay), st.lists(streams(delay), min_size=1, max_size=3))
    )
)
def test_batched_and_per_stream_detection_report_the_same_digits(case: tuple[int, list[Stream]]) -> None:
    delay, group = case
    together = run_bank(delay, group)
    joined = sorted(range(len(group)), key=lambda i: (group[i].join, i))  # the order of the bank's handles
    for i, (stream, digits) in enumerate(zip(group, together, strict=True)):
        assert digits == run_alone(delay, stream, joined.index(i))


def test_the_comparison_sees_digits() -> None:
    """A control for the property above: with no losses and no jitter the streams' tones are found."""
    stream = Stream(3, 0, FRAMES, 0, (0,) * FRAMES, frozenset(), 20)
    assert [d for d, _ in run_alone(2, stream)] == list("159#")
    assert [d for d, _ in run_bank(2, [stream])[0]] == list("159#")
