"""Event-loop lag: how late the loop runs a callback that was due — the first sign that the process has more
work than it can do, seen before queues overflow or timers fire late enough to matter to SIP.

:class:`LoopLag` is the pure part (samples in, figures out, ``now`` given); :func:`measure_loop_lag` is the
task that feeds it: it sleeps ``interval`` and reports how much later than asked it woke up. One such task
per process costs a few wake-ups a second. The metrics endpoint reads it; so can admission control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["LoopLag", "measure_loop_lag"]


class LoopLag:
    """The event loop's lag as measured: ``last`` sample, ``average`` (exponentially weighted over about
    ``1 / weight`` samples) and ``peak`` (the largest since :meth:`take_peak`). Each sample also goes to
    every callable in ``listeners`` (a metrics histogram)."""

    def __init__(self, weight: float = 0.1) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError("weight must be in (0, 1]")
        self.weight = weight
        self.last = 0.0
        self.average = 0.0
        self.peak = 0.0
        self.samples = 0
        self.listeners: list[Callable[[float], None]] = []

    def sample(self, due: float, now: float) -> float:
        """A callback due at ``due`` ran at ``now``: record (and return) the lag, never below 0."""
        lag = max(0.0, now - due)
        self.last = lag
        self.average = lag if not self.samples else self.average + self.weight * (lag - self.average)
        self.peak = max(self.peak, lag)
        self.samples += 1
        for listener in self.listeners:
            listener(lag)
        return lag

    def take_peak(self) -> float:
        """The largest lag since the last call (then forgotten)."""
        peak, self.peak = self.peak, 0.0
        return peak


async def measure_loop_lag(meter: LoopLag, interval: float = 0.25) -> None:
    """Sleep ``interval`` again and again and record each time how late the wake-up came (runs until
    cancelled)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        meter.sample(due, loop.time())
