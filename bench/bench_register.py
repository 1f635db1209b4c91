"""Authenticated registrations per second: SIPp against a RegistrarService on an Endpoint in its own process.

    .venv/bin/python bench/bench_register.py [--users 2000] [--rates 200,400,600,800,1000,1200]
                                             [--duration 5] [--repeat 3]

Each SIPp "call" is one registration: REGISTER → 401 (digest challenge) → REGISTER with MD5 credentials
→ 200 (``tests/routing/sipp_register.xml``), one user per call from an injection file of ``--users`` users
(SIPp answers MD5 only and the first challenge: the server offers MD5 first, INTEROP.md). The server runs
``routing.registrar_service.RegistrarService`` with the in-memory location store on one UDP port, in a
separate process (with ``--pin`` the server runs on CPU 0 and SIPp on CPU 1: only on a quiet machine;
on a shared one a neighbour on CPU 0 stalls the pinned server). For each rising step SIPp
places ``rate × duration`` registrations at ``rate`` per second; reported per step (median of ``--repeat``
runs): the rate achieved (successful registrations over SIPp's elapsed time), failed registrations, and the
server's CPU time from ``/proc/<pid>/stat`` (utime + stime) before and after, as % of one core and as
microseconds per registration. The run stops at the first step with failures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "routing" / "sipp_register.xml"
SECRET = b"bench-secret-0123456789abcdef012"


def write_directory(folder: Path, users: int) -> Path:
    lines = ["[server]", 'domain = "office.example"', 'listen = ["udp:127.0.0.1:5060"]', 'state_dir = "var"']
    for i in range(users):
        lines += ["[[employee]]", f'extension = "{1000 + i}"', f'name = "User {i}"', f'password = "pw-{i}"']
    path = folder / "office.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv = folder / "users.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        + "".join(f"{1000 + i};[authentication username={1000 + i} password=pw-{i}]\n" for i in range(users)),
        encoding="utf-8",
    )
    return path


# ----------------------------------------------------------------------------------------- the server


async def serve(directory_path: str, port: int, profile: bool, max_transactions: int) -> None:
    sys.path.insert(0, str(ROOT))
    from durchwahl.routing.directory_file import load_directory
    from durchwahl.routing.location import InMemoryLocationStore
    from durchwahl.routing.registrar_service import RegistrarService
    from durchwahl.sipcore import Endpoint
    from durchwahl.sipcore.core import CoreConfig
    from durchwahl.sipcore.limits import Limits

    service = RegistrarService(
        load_directory(directory_path),
        InMemoryLocationStore(),
        secret=SECRET,
        algorithms=("MD5", "SHA-256"),
    )
    # UDP non-INVITE server transactions live 32 s after their answer (Timer J = 64·T1), so the default
    # 10,000 open transactions cap a sustained rate at 10,000 / 32 s ≈ 312 requests/s ≈ 156 registrations/s
    # (beyond it: stateless 503). Raise the cap to measure the CPU-bound rate.
    limits = Limits(max_server_transactions=max_transactions)
    endpoint = Endpoint(
        service.handle, core=CoreConfig(allowed_methods=("REGISTER", "OPTIONS")), limits=limits
    )
    await endpoint.listen(f"udp:127.0.0.1:{port}")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    if profiler is not None:
        import pstats

        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    await endpoint.close()


# ------------------------------------------------------------------------------------------ the driver


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counter(text: str, name: str) -> int:
    for line in text.splitlines():
        if name in line:
            numbers = [p for p in line.replace("|", " ").split() if p.isdigit()]
            if numbers:
                return int(numbers[-1])
    return -1


def run_step(
    sipp: str, folder: Path, port: int, server_pid: int, rate: int, duration: float, pin: bool
) -> dict[str, float]:
    calls = int(rate * duration)
    args = [
        sipp,
        "-sf",
        str(SCENARIO),
        "-inf",
        str(folder / "users.csv"),
        f"127.0.0.1:{port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-t",
        "u1",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(max(rate * 2, 100)),
        "-timeout",
        f"{int(duration * 4 + 20)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(folder / "stat.csv"),
    ]
    cpu_before = cpu_seconds(server_pid)
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if pin and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(process.pid, {1})
    out, _err = process.communicate(timeout=duration * 6 + 60)
    wall = time.monotonic() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    ok = counter(out, "Successful call")
    failed = counter(out, "Failed call")
    elapsed = wall
    start = re.search(r"Start Time\s*\|.*?(\d+\.\d+)\s*$", out, re.M)
    end = re.search(r"Current Time\s*\|.*?(\d+\.\d+)\s*$", out, re.M)
    if start and end:
        elapsed = float(end.group(1)) - float(start.group(1))
    if os.environ.get("BENCH_DEBUG"):
        print(out[-3000:])
    return {
        "target": rate,
        "ok": ok,
        "failed": failed,
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "cpu_pct": 100 * cpu / wall,
        "cpu_us": 1e6 * cpu / ok if ok > 0 else float("nan"),
        "returncode": process.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rates", default="200,400,600,800,1000,1200")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--max-transactions", type=int, default=200_000, help="the server's Limits.max_server_transactions"
    )
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, SIPp on CPU 1 (a quiet machine)")
    parser.add_argument("--profile", action="store_true", help="cProfile the server; print its top 25")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.profile, args.max_transactions))
        return 0

    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}")
    print(f"python {platform.python_version()}, {platform.system()} {platform.release()}")
    version = subprocess.run([sipp, "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    print(f"sipp: {next((v for v in version if 'SIPp' in v), '?').strip()}")
    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp:
        folder = Path(tmp)
        directory = write_directory(folder, args.users)
        port = free_udp_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(directory), "--port", str(port)]
            + ["--max-transactions", str(args.max_transactions)]
            + (["--profile"] if args.profile else []),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if args.pin:
                os.sched_setaffinity(server.pid, {0})
            assert server.stdout is not None
            if server.stdout.readline().strip() != "READY":
                print("server did not start", file=sys.stderr)
                return 1
            print(f"users: {args.users}; {args.duration:g} s per run; median of {args.repeat} runs per step")
            print(f"server: Limits.max_server_transactions = {args.max_transactions}")
            columns = (
                ("target/s", 9),
                ("achieved/s", 11),
                ("failed", 7),
                ("server CPU %", 13),
                ("CPU µs/reg", 11),
            )
            print(" ".join(f"{name:>{width}}" for name, width in columns) + "  runs")
            for rate in (int(r) for r in args.rates.split(",")):
                runs = []
                for _ in range(args.repeat):
                    runs.append(run_step(sipp, folder, port, server.pid, rate, args.duration, args.pin))
                    time.sleep(1.0)
                achieved = statistics.median(r["achieved"] for r in runs)
                failed = max(r["failed"] for r in runs)
                cpu_pct = statistics.median(r["cpu_pct"] for r in runs)
                cpu_us = statistics.median(r["cpu_us"] for r in runs)
                detail = ", ".join(f"{r['achieved']:.0f}/s {r['failed']:.0f}f" for r in runs)
                print(
                    f"{rate:>9} {achieved:>11.0f} {failed:>7.0f} {cpu_pct:>13.0f} {cpu_us:>11.0f}  {detail}"
                )
                if failed > 0:
                    print("stopping: failures at this step")
                    break
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
