"""What an RTP leg costs in memory while a call is held: every anchored call has two, so the per-leg objects
(digit queues, send backlog) must not preallocate what most calls never use."""

from __future__ import annotations

import gc
import random
import tracemalloc

from durchwahl.media.session import RtpSession

#: Bytes of Python heap per idle leg; with preallocated deques (760 bytes each when empty) it was about 6,300.
LEG_BUDGET = 4_500


def test_an_idle_rtp_leg_stays_within_its_memory_budget() -> None:
    rng = random.Random(1)
    RtpSession(rng=rng)  # first-use allocations (caches, interned names) are not per leg
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        legs = [RtpSession(rng=rng) for _ in range(200)]
        per_leg = (tracemalloc.get_traced_memory()[0] - before) / len(legs)
    finally:
        tracemalloc.stop()
    assert per_leg < LEG_BUDGET, f"{per_leg:.0f} bytes per idle RTP leg"
