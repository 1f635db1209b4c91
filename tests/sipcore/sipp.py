"""Running SIPp (Debian ``sip-tester``) from tests: on loopback only, bounded in calls and time."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

SIPP = shutil.which("sipp")


def require_sipp() -> str:
    """The sipp binary; in CI its absence fails the test instead of skipping it."""
    if SIPP is None:
        if os.environ.get("CI"):
            pytest.fail("sipp is not installed (Debian package sip-tester); CI must install it")
        pytest.skip("sipp is not installed (apt-get install sip-tester)")
    return SIPP


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    successful: int
    failed: int


def _count(stat_text: str, name: str) -> int:
    """Read a counter (e.g. 'SuccessfulCall(C)') from SIPp's final statistics screen."""
    for line in stat_text.splitlines():
        if name in line:
            parts = [p for p in line.replace("|", " ").split() if p.isdigit()]
            if parts:
                return int(parts[-1])
    return -1


async def run_sipp(args: list[str], cwd: Path, timeout: float = 60.0) -> SippResult:
    """Run sipp with ``args`` (always on 127.0.0.1) and return its exit status and call counts."""
    binary = require_sipp()
    process = await asyncio.create_subprocess_exec(
        binary,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"sipp did not finish within {timeout}s:\n{out.decode(errors='replace')[-3000:]}")
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    return SippResult(
        process.returncode or 0,
        stdout,
        stderr,
        _count(stdout, "Successful call"),
        _count(stdout, "Failed call"),
    )
