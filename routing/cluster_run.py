"""Starting a cluster's parts on one machine, on loopback: Redis, Kamailio and durchwahl nodes, each in its
own process with its own port and files in one folder (``make cluster``, the cluster tests, the cluster
benchmarks). Every part is stopped by the PID it was started with; nothing here is left running.

This is for a developer's machine and CI, not a production launcher (see docs/CLUSTER.md for that).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

__all__ = [
    "KAMAILIO_CONFIG",
    "Part",
    "free_port",
    "missing_binaries",
    "start_redis",
]

#: The edge's configuration that ships with the project (commented; what the tests run).
KAMAILIO_CONFIG: Final = Path(__file__).resolve().parent.parent / "examples" / "cluster" / "kamailio.cfg"


def missing_binaries(*names: str) -> list[str]:
    """Which of the programs ``names`` are not on PATH (nor in /usr/sbin, where Debian puts kamailio)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return [name for name in names if shutil.which(name, path=path) is None]


def _binary(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed")
    return found


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


class Part:
    """One started process: its name, PID, log file; :meth:`stop` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.port = port

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def signal(self, number: int) -> None:
        if self.running:
            self.process.send_signal(number)

    def kill(self) -> None:
        """End it at once, as a crash would (SIGKILL)."""
        if self.running:
            self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, and SIGKILL after ``timeout`` seconds; the exit status."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _spawn(
    name: str, argv: Sequence[str], folder: Path, port: int, *, env: dict[str, str] | None = None
) -> Part:
    log = folder / f"{name}.log"
    out: IO[bytes] = log.open("ab")
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env
        )
    finally:
        out.close()
    return Part(name, process, log, port)


def _wait_tcp(part: Part, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not part.running:
            raise RuntimeError(f"{part.name} exited at start:\n{part.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    part.stop()
    raise RuntimeError(
        f"{part.name} did not listen on 127.0.0.1:{port} within {seconds} s:\n{part.log_tail()}"
    )


def start_redis(folder: Path, port: int | None = None, *, persist: bool = True) -> Part:
    """redis-server on 127.0.0.1 with its files in ``folder``; with ``persist``, an append-only file written
    every second (a restart keeps the registrations: the cluster's documented set-up)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        _binary("redis-server"),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--appendfsync",
        "everysec",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--logfile",
        "",
    ]
    part = _spawn(f"redis-{port}", argv, folder, port)
    _wait_tcp(part, port, 10.0)
    return part


def terminate_all(parts: Sequence[Part]) -> None:
    """Stop ``parts`` in reverse order of starting (each by its PID)."""
    for part in reversed(parts):
        with contextlib.suppress(Exception):
            part.stop()


def _interrupt_handler(parts: Sequence[Part]) -> None:
    def stop(number: int, _frame: object) -> None:
        terminate_all(parts)
        sys.exit(128 + number)

    signal.signal(signal.SIGTERM, stop)
