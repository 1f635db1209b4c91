"""Giving memory back after a storm: when (a pure policy on a fake clock) and that the release runs."""

from __future__ import annotations

import asyncio
import platform

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.routing import memtrim
from durchwahl.routing.memtrim import IdleTrim, release_memory, run_idle_trim


def test_trims_once_after_a_storm_when_quiet_long_enough() -> None:
    trim = IdleTrim(busy=100, low=2, quiet_seconds=30)
    assert not trim.observe(150, 0.0)  # the storm
    assert not trim.observe(40, 10.0)  # calls still ending
    assert not trim.observe(2, 20.0)  # quiet from here …
    assert not trim.observe(1, 49.0)
    assert trim.observe(0, 50.0)  # … for 30 s: give memory back
    assert not trim.observe(0, 100.0)  # once: nothing freed since
    assert not trim.observe(0, 1000.0)


def test_a_call_in_the_quiet_period_restarts_it_and_small_loads_never_arm() -> None:
    trim = IdleTrim(busy=100, low=2, quiet_seconds=30)
    for t in range(0, 600, 5):
        assert not trim.observe(50 if t % 60 < 30 else 0, float(t))  # busy office, never a storm
    assert not trim.observe(100, 600.0)
    assert not trim.observe(0, 610.0)
    assert not trim.observe(3, 630.0)  # a few calls again: the quiet starts over
    assert not trim.observe(0, 635.0)
    assert not trim.observe(0, 660.0)
    assert trim.observe(0, 665.0)


@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 100)), max_size=50))
def test_never_trims_without_a_storm_before_or_before_the_quiet_period(
    steps: list[tuple[int, float]],
) -> None:
    trim = IdleTrim(busy=100, low=2, quiet_seconds=30)
    now = 0.0
    storm_at: float | None = None
    quiet_since: float | None = None
    for active, step in steps:
        now += step
        if active >= 100:
            storm_at = now
        quiet_since = (quiet_since if quiet_since is not None else now) if active <= 2 else None
        if trim.observe(active, now):
            assert storm_at is not None and quiet_since is not None and now - quiet_since >= 30
            storm_at = None
            quiet_since = None


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        IdleTrim(busy=2, low=2)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's"
)
def test_release_memory_trims_on_glibc() -> None:
    assert release_memory() is True


async def test_the_loop_releases_memory_after_the_storm(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[bool] = []
    monkeypatch.setattr(memtrim, "CHECK_SECONDS", 0.01)
    monkeypatch.setattr(memtrim, "release_memory", lambda: released.append(True) or True)
    active = iter([200, 0, 0, 0])
    task = asyncio.ensure_future(
        run_idle_trim(lambda: next(active, 0), IdleTrim(busy=100, low=2, quiet_seconds=0.02))
    )
    try:
        async with asyncio.timeout(2.0):
            while not released:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert released == [True]
