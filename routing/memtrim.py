"""Give the heap freed by a storm of calls back to the operating system once the server has gone quiet.

CPython and glibc keep memory a process freed: after thousands of concurrent calls have ended, the resident
size stays at its peak although the objects are gone. :class:`IdleTrim` (pure: active calls and the time in,
a yes/no out) decides when: after the active calls reached ``busy``, once they have stayed at or below
``low`` for ``quiet_seconds``, once. :func:`release_memory` then runs a full collection and glibc's
``malloc_trim(0)`` (Linux with glibc only; elsewhere just the collection). :func:`run_idle_trim` is the
asyncio loop ``durchwahl serve`` runs; an embedding application decides this for its own process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import platform
from collections.abc import Callable
from typing import Final

__all__ = ["IdleTrim", "release_memory", "run_idle_trim"]

log = logging.getLogger(__name__)

#: How often :func:`run_idle_trim` looks at the active calls (seconds).
CHECK_SECONDS: Final = 5.0


class IdleTrim:
    """When to give memory back (see the module docstring): armed by ``busy`` active calls, fired by
    ``quiet_seconds`` at or below ``low``; disarmed by firing."""

    def __init__(self, *, busy: int = 100, low: int = 2, quiet_seconds: float = 30.0) -> None:
        if not 0 <= low < busy or quiet_seconds < 0:
            raise ValueError("need 0 <= low < busy and quiet_seconds >= 0")
        self.busy = busy
        self.low = low
        self.quiet_seconds = quiet_seconds
        self._armed = False
        self._quiet_since: float | None = None

    def observe(self, active: int, now: float) -> bool:
        """``active`` calls at ``now``: whether to give memory back now."""
        if active >= self.busy:
            self._armed = True
        if not self._armed or active > self.low:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        if now - self._quiet_since < self.quiet_seconds:
            return False
        self._armed = False
        self._quiet_since = None
        return True


def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_memory() -> bool:
    """A full garbage collection, then glibc's ``malloc_trim(0)``: freed heap pages go back to the OS.
    Returns whether the trim ran (False: not Linux with glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


async def run_idle_trim(active: Callable[[], int], policy: IdleTrim | None = None) -> None:
    """Every ``CHECK_SECONDS``, ask ``policy`` (default :class:`IdleTrim`) with ``active()`` calls and
    release memory when it says so."""
    policy = policy or IdleTrim()
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        if policy.observe(active(), loop.time()):
            trimmed = release_memory()
            log.info("the server went quiet: memory %s", "given back" if trimmed else "collected")
