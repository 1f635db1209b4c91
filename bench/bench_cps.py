"""Calls per second through the B2BUA, and memory per held call: durchwahl against the Sippy B2BUA, same run.

    .venv/bin/python bench/bench_cps.py [--rates 50,100,200,300,400,600,800,1000] [--seconds 6]
        [--hold-ms 1000] [--peers durchwahl,sippy] [--profile] [--memory-calls 5000] [--memory-rate 200]
        [--loop asyncio|uvloop] [--anchor]

**Calls per second.** SIPp's built-in ``uac`` scenario (INVITE, ACK, ``--hold-ms`` pause, BYE) calls the B2BUA
under test, which routes every INVITE to a SIPp callee running ``bench/sipp_uas_bye.xml`` (180, 200 with SDP,
then ACK, BYE, 200). By default signalling only: the SDP passes through. With ``--anchor`` durchwahl anchors
the media as ``durchwahl serve`` does (each call's caller and callee get a port of ours in the SDP, bound for
the call; SIPp sends no RTP, so this measures the set-up and tear-down of anchored calls, not relaying);
Sippy still passes the SDP through (it anchors only with an external rtpproxy). A call counts as
successful only when it completed on **both** legs: success = min(caller's successful calls, callee's
successful calls) / calls placed. Each B2BUA runs in its own process, started once for the whole ladder:

* **durchwahl**: ``python bench/bench_cps.py serve`` — one :class:`sipcore.Endpoint` on UDP, a
  :class:`sipcore.ua.UserAgent` and the real :class:`routing.b2bua.B2bua` (its ``handle``, the one
  ``ring_route``, ``connect`` and ``bridge``: an internal call to one employee), with the caller's
  authentication, the resolver and the registrar's device lookup replaced by constants (every caller is
  employee 100, every call goes to employee 200 whose one device is the SIPp callee). No CDR store.
* **Sippy**: ``SIPLOG_BEND=none b2bua -f -l 127.0.0.1 -p PORT -s 127.0.0.1:CALLEE -u -A 0 -c SOCK -P PID``
  (``sippy`` from PyPI; ``-u``/``-A 0`` turn off RADIUS auth and accounting, ``-s`` is a static route).

For each rate the two peers run one after the other (durchwahl, then Sippy), each for ``rate × --seconds``
calls, with a fresh SIPp caller and callee; before each step the peer must be idle (under 3 % of a core
for 2 s running, at least ``--idle`` s after the previous step). A step passes when ≥ 99.9 % of its calls
succeeded and the caller placed them at ≥ 90 % of the target rate; a peer's ladder stops at its first failing
step. Reported: the highest passing rate per peer and the ratio. With ``--profile`` one more durchwahl step
runs at its highest passing rate under cProfile (top functions by own time printed;
``BENCH_PROFILE_FILE=path`` also saves the statistics for ``pstats``).
Diagnostics of the server: ``BENCH_GC_LOG=1`` reports its cyclic-GC passes (see :class:`GcWatch`),
``BENCH_GC_THRESHOLD=a,b,c`` replaces the thresholds ``tune_gc`` sets, ``DURCHWAHL_DEFAULT_GC=1`` keeps
CPython's.

**Memory per held call.** A fresh durchwahl server takes a warm-up of 200 short calls, goes idle, and its
RSS (``VmRSS``) is read; then SIPp holds ``--memory-calls`` calls (``-d`` longer than the run) placed at
``--memory-rate`` per second, and RSS is read once every call is up (the server reports its live calls).
Bytes per call = RSS difference / held calls. The run is bounded (``--memory-timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CALLEE_SCENARIO = ROOT / "bench" / "sipp_uas_bye.xml"
HOST = "127.0.0.1"
PASS_SUCCESS = 0.999
PASS_RATE = 0.9
#: Set from the command line: durchwahl's event loop, and where SIPp's error and statistics files go.
LOOP = "asyncio"
#: Set from the command line: durchwahl anchors (relays) the media of every call.
ANCHOR = False
SIPP_LOGS: Path | None = None
_steps = itertools.count(1)


# ---------------------------------------------------------------------------------- the durchwahl server


class GcWatch:
    """``BENCH_GC_LOG=1``: the server reports every cyclic-GC pass of 5 ms or more, or of an older
    generation, on stderr (wall and CPU time, the objects it walked), and at exit the passes per generation,
    their total time and what is tracked."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.spent_ms = 0.0
        self.cpu_ms = 0.0
        self._started = self._cpu = 0.0
        self._objects = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            self._objects = sum(len(gc.get_objects(g)) for g in range(generation + 1))
            self._started, self._cpu = time.perf_counter(), time.thread_time()
            self.passes[generation] += 1
            return
        took = 1000 * (time.perf_counter() - self._started)
        cpu = 1000 * (time.thread_time() - self._cpu)
        self.spent_ms += took
        self.cpu_ms += cpu
        if generation >= 1 or took >= 5:
            per_object = 1000 * cpu / max(self._objects, 1)
            print(
                f"GC gen{generation} {took:.1f} ms ({cpu:.1f} ms CPU) over {self._objects} objects"
                f" ({per_object:.2f} us each), collected {info['collected']}",
                file=sys.stderr,
            )

    def summary(self) -> None:
        objects = gc.get_objects()
        kinds = Counter(type(o).__qualname__ for o in objects).most_common(25)
        print(
            f"GC passes per generation {self.passes}, {self.spent_ms:.0f} ms in all"
            f" ({self.cpu_ms:.0f} ms CPU)",
            file=sys.stderr,
        )
        print(f"GC tracks {len(objects)} objects: {kinds}", file=sys.stderr)


async def serve(port: int, callee_port: int, anchor: bool) -> None:
    """The B2BUA under test: routing.b2bua.B2bua with constant routing, on one UDP port; with ``anchor``
    every call's media goes through ports of ours, as `durchwahl serve` does by default."""
    sys.path.insert(0, str(ROOT))
    from durchwahl.media.session import PortAllocator
    from durchwahl.routing.b2bua import B2bua
    from durchwahl.routing.calls.services import CallServices
    from durchwahl.routing.directory import Employee
    from durchwahl.routing.resolver import FromEmployee, ToEmployee
    from durchwahl.routing.ringgroup import RingGroupState
    from durchwahl.sipcore import Endpoint, parse_uri
    from durchwahl.sipcore.core import CoreConfig
    from durchwahl.sipcore.ua import UserAgent

    caller = FromEmployee("100")
    callee = Employee(extension="200", name="Bench Callee", sip_user="callee")
    route = ToEmployee(callee)

    class ConstantResolver:
        async def resolve(self, dialled: object, who: object) -> ToEmployee:
            return route

    class OneEmployee:
        """The little of the directory a bridged call still reads (the transfer bookkeeping: who answered)."""

        def employee_by_sip_user(self, user: str) -> Employee | None:
            return callee if user == callee.sip_user else None

    class BenchServices(CallServices):
        """The B2BUA's own services; only where the callee's device is and who it is are constants."""

        async def devices(self, employee: Employee) -> list[tuple[Any, Any]]:
            return [device]

        def employee(self, extension: str) -> Employee | None:
            return callee if extension == callee.extension else None

        def registrar_aor(self, employee: Employee) -> str:
            return f"sip:{employee.sip_user}@{HOST}"

    class BenchB2bua(B2bua):
        """The B2BUA's own call flow; only who calls is a constant."""

        def identify(self, incoming: Any, dialled: Any) -> Any:
            return caller

    endpoint = Endpoint(None, core=CoreConfig(), user_agent="durchwahl-bench")
    ua = UserAgent(endpoint)
    directory: Any = OneEmployee()
    no_registrar: Any = None
    resolver: Any = ConstantResolver()
    ports = PortAllocator(20000, 59999, host=HOST) if anchor else None
    services = BenchServices(
        ua,
        no_registrar,
        directory,
        resolver,
        ring_seconds=30.0,
        ring_state=RingGroupState(),
        ports=ports,
        anchor_media=anchor,
    )
    b2bua = BenchB2bua(ua, no_registrar, directory, resolver, services=services)
    ua.handler = b2bua.handle
    await endpoint.listen(f"udp:{HOST}:{port}")
    device = (parse_uri(f"sip:callee@{HOST}:{callee_port}"), endpoint.flow_to(HOST, callee_port, "UDP"))

    import cProfile
    import pstats

    profiler = cProfile.Profile()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def report() -> None:
        print(f"ACTIVE {len(b2bua.active)} {len(ua.calls)}", flush=True)
        if gc_watch is not None:
            in_use = len(ports._used) if ports is not None else 0
            print(f"open fds {len(os.listdir('/proc/self/fd'))}, RTP ports in use {in_use}", file=sys.stderr)
            gc_watch.summary()

    def profile_stop() -> None:
        profiler.disable()
        if os.environ.get("BENCH_PROFILE_FILE"):
            profiler.dump_stats(os.environ["BENCH_PROFILE_FILE"])
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.print_callers(6)
        print("PROFILE-END", flush=True)

    gc_watch = GcWatch() if os.environ.get("BENCH_GC_LOG") else None
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, report)
    loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    loop.add_signal_handler(signal.SIGUSR2, profile_stop)
    print("READY", flush=True)
    await stop.wait()
    report()
    await endpoint.close()


# ------------------------------------------------------------------------------------------ the driver


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_idle(pid: int, minimum: float, limit: float = 45.0) -> float:
    """Sleep ``minimum`` s, then until ``pid`` used < 3 % of a core for 2 s running (at most ``limit``)."""
    started = time.monotonic()
    time.sleep(minimum)
    quiet = 0
    while time.monotonic() - started < limit and quiet < 2:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.03 else 0
    return time.monotonic() - started


def stop_process(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def sipp_counter(text: str, name: str) -> int:
    """The last value SIPp printed for counter ``name`` (its final screen)."""
    value = -1
    for line in text.splitlines():
        if name in line:
            numbers = [p for p in line.replace("|", " ").split() if p.isdigit()]
            if numbers:
                value = int(numbers[-1])
    return value


def sipp_elapsed(text: str) -> float | None:
    start = re.findall(r"Start Time\s*\|.*?(\d+\.\d+)\s*$", text, re.M)
    end = re.findall(r"Current Time\s*\|.*?(\d+\.\d+)\s*$", text, re.M)
    if start and end:
        return float(end[-1]) - float(start[-1])
    return None


class Peer:
    """One B2BUA process under test."""

    def __init__(self, name: str, process: subprocess.Popen[str], port: int, callee_port: int) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.callee_port = callee_port

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def start_durchwahl() -> Peer:
    port, callee_port = free_udp_port(), free_udp_port()
    args = [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(port)]
    args += ["--callee-port", str(callee_port)]
    if os.environ.get("DURCHWAHL_DEFAULT_GC"):
        args.append("--default-gc")
    args += ["--loop", LOOP]
    if ANCHOR:
        args.append("--anchor")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "READY":
        process.kill()
        raise RuntimeError(f"durchwahl server did not start: {line!r}")
    return Peer("durchwahl", process, port, callee_port)


def answers_options(port: int, timeout: float) -> bool:
    """True once something on ``port`` answers an OPTIONS (Sippy answers 501)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(0.2)
        local = s.getsockname()[1]
        while time.monotonic() < deadline:
            request = (
                f"OPTIONS sip:probe@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK-probe{time.monotonic_ns()}\r\n"
                f"From: <sip:probe@{HOST}>;tag=probe\r\nTo: <sip:probe@{HOST}>\r\n"
                f"Call-ID: probe-{time.monotonic_ns()}@{HOST}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(request.encode(), (HOST, port))
            with contextlib.suppress(TimeoutError):
                if s.recv(65535).startswith(b"SIP/2.0"):
                    return True
    return False


def start_sippy(folder: Path) -> Peer:
    script = Path(sys.executable).with_name("b2bua")
    if not script.exists():
        raise RuntimeError("the Sippy B2BUA is not installed (pip install sippy, the 'bench' extra)")
    port, callee_port = free_udp_port(), free_udp_port()
    args = [str(script), "-f", "-l", HOST, "-p", str(port), "-s", f"{HOST}:{callee_port}", "-u", "-A", "0"]
    args += ["-c", str(folder / "sippy.sock"), "-P", str(folder / "sippy.pid")]
    env = dict(os.environ, SIPLOG_BEND="none")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True)
    if not answers_options(port, 20.0):
        process.kill()
        raise RuntimeError("the Sippy B2BUA did not start")
    return Peer("sippy", process, port, callee_port)


def sipp_logs(name: str) -> list[str]:
    """SIPp options that keep its errors and per-second statistics (``--sipp-logs``) as ``name``-*."""
    if SIPP_LOGS is None:
        return []
    prefix = SIPP_LOGS / name
    return [
        "-trace_err",
        "-error_file",
        f"{prefix}-errors.log",
        "-trace_stat",
        "-stf",
        f"{prefix}-stat.csv",
        "-fd",
        "1",
    ]


def start_callee(
    sipp: str, port: int, calls: int, timeout: float, logs: Sequence[str] = ()
) -> subprocess.Popen[str]:
    args = [sipp, "-sf", str(CALLEE_SCENARIO), "-i", HOST, "-p", str(port), "-m", str(calls)]
    args += ["-recv_timeout", "10000", "-timeout", f"{int(timeout)}s", "-nostdin", *logs]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def caller_args(
    sipp: str, target: int, calls: int, rate: int, limit: int, hold_ms: int, timeout: float
) -> list[str]:
    args = [sipp, "-sn", "uac", f"{HOST}:{target}", "-s", "200", "-i", HOST, "-p", str(free_udp_port())]
    args += ["-m", str(calls), "-r", str(rate), "-l", str(limit), "-d", str(hold_ms)]
    args += ["-recv_timeout", "10000", "-timeout", f"{int(timeout)}s", "-nostdin"]
    return args


def run_step(sipp: str, peer: Peer, rate: int, seconds: float, hold_ms: int) -> dict[str, Any]:
    calls = int(rate * seconds)
    hold = hold_ms / 1000
    timeout = seconds * 4 + hold + 30
    step = f"{next(_steps):02d}-{peer.name}-{rate}cps"
    callee = start_callee(sipp, peer.callee_port, calls, timeout + 5, sipp_logs(f"{step}-callee"))
    time.sleep(0.3)
    limit = max(int(rate * (hold + 3)), 100)
    cpu_before = cpu_seconds(peer.pid)
    started = time.monotonic()
    caller = subprocess.run(
        caller_args(sipp, peer.port, calls, rate, limit, hold_ms, timeout) + sipp_logs(f"{step}-caller"),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    wall = time.monotonic() - started
    cpu = cpu_seconds(peer.pid) - cpu_before
    try:
        callee_out, _ = callee.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        callee.send_signal(signal.SIGUSR1)  # SIPp: print the final screen and quit
        try:
            callee_out, _ = callee.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            callee.kill()
            callee_out, _ = callee.communicate()
    out = caller.stdout
    a_ok, a_failed = sipp_counter(out, "Successful call"), sipp_counter(out, "Failed call")
    b_ok, b_failed = sipp_counter(callee_out, "Successful call"), sipp_counter(callee_out, "Failed call")
    elapsed = sipp_elapsed(out) or wall
    placing = max(elapsed - hold - 0.05, 1e-3)  # the last call still holds and hangs up after the last INVITE
    ok = max(0, min(a_ok, b_ok))
    success = ok / calls
    achieved = max(a_ok, 0) / placing
    if os.environ.get("BENCH_DEBUG"):
        print(out[-2500:], callee_out[-2500:], sep="\n")
    return {
        "peer": peer.name,
        "rate": rate,
        "calls": calls,
        "a_ok": a_ok,
        "a_failed": a_failed,
        "b_ok": b_ok,
        "b_failed": b_failed,
        "success": success,
        "achieved": achieved,
        "cpu_pct": 100 * cpu / wall,
        "cpu_us": 1e6 * cpu / ok if ok else float("nan"),
        "passed": success >= PASS_SUCCESS and achieved >= PASS_RATE * rate,
    }


def print_step(row: dict[str, Any]) -> None:
    print(
        f"| {row['peer']} | {row['rate']} | {row['calls']} | {row['a_ok']}/{row['b_ok']} "
        f"| {row['a_failed']}/{row['b_failed']} | {100 * row['success']:.2f} % | {row['achieved']:.0f} "
        f"| {row['cpu_pct']:.0f} % | {row['cpu_us']:.0f} | {'yes' if row['passed'] else 'NO'} |",
        flush=True,
    )


def profile_step(sipp: str, peer: Peer, rate: int, seconds: float, hold_ms: int) -> None:
    assert peer.process.stdout is not None
    peer.process.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    row = run_step(sipp, peer, rate, seconds, hold_ms)
    print(f"profiled step ({row['rate']} cps, cProfile on, slower): {100 * row['success']:.2f} % succeeded")
    peer.process.send_signal(signal.SIGUSR2)
    for line in peer.process.stdout:
        if line.strip() == "PROFILE-END":
            break
        print(line, end="")


def active_calls(peer: Peer) -> int:
    assert peer.process.stdout is not None
    peer.process.send_signal(signal.SIGHUP)
    line = peer.process.stdout.readline().split()
    return int(line[1]) if len(line) >= 2 and line[0] == "ACTIVE" else -1


def memory_run(sipp: str, calls: int, rate: int, limit_s: float) -> dict[str, Any]:
    peer = start_durchwahl()
    processes: list[subprocess.Popen[str]] = []
    try:
        row = run_step(sipp, peer, 100, 2.0, 0)  # warm-up: imports, caches, first allocations
        print(f"warm-up: {row['a_ok']}/{row['b_ok']} of {row['calls']} calls")
        wait_idle(peer.pid, 3.0)
        before = rss_bytes(peer.pid)
        hold_ms = int(limit_s * 1000) + 60_000
        callee = start_callee(sipp, peer.callee_port, calls, limit_s + 30)
        processes.append(callee)
        time.sleep(0.3)
        args = caller_args(sipp, peer.port, calls, rate, calls, hold_ms, limit_s + 30)
        processes.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        )
        started = time.monotonic()
        held = peak = 0
        stable = 0
        while time.monotonic() - started < limit_s:
            time.sleep(2.0)
            held = active_calls(peer)
            rss = rss_bytes(peer.pid) / 2**20
            print(f"  t={time.monotonic() - started:5.1f} s  held calls {held:5d}  RSS {rss:.1f} MiB")
            stable = stable + 1 if held == peak and held > 0 else 0
            peak = max(peak, held)
            if held >= calls or stable >= 3:
                break
        time.sleep(2.0)
        held = active_calls(peer)
        at_plateau = rss_bytes(peer.pid)
        return {
            "calls": calls,
            "held": held,
            "before": before,
            "plateau": at_plateau,
            "per_call": (at_plateau - before) / held if held > 0 else float("nan"),
            "seconds": time.monotonic() - started,
        }
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        peer.stop()


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {os.cpu_count()}, {model}, CPython {platform.python_version()}, Linux {platform.release()}, "
        f"load average {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve", help="run the durchwahl B2BUA under test (used by the driver)")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--callee-port", type=int, required=True)
    server.add_argument("--default-gc", action="store_true", help="keep CPython's GC settings")
    server.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    server.add_argument("--anchor", action="store_true")
    parser.add_argument("--rates", default="50,100,200,300,400,600,800,1000")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each rate step")
    parser.add_argument("--hold-ms", type=int, default=1000, help="how long each call is held (SIPp -d)")
    parser.add_argument("--idle", type=float, default=3.0, help="least rest before each step, s")
    parser.add_argument("--peers", default="durchwahl,sippy")
    parser.add_argument("--profile", action="store_true", help="profile durchwahl at its highest rate")
    parser.add_argument("--memory-calls", type=int, default=5000, help="0: skip the memory run")
    parser.add_argument("--memory-rate", type=int, default=200)
    parser.add_argument("--memory-timeout", type=float, default=90.0)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="durchwahl's event loop (serve)"
    )
    parser.add_argument("--sipp-logs", type=Path, help="keep SIPp's error and statistics files here")
    parser.add_argument(
        "--anchor", action="store_true", help="durchwahl anchors the media (Sippy passes it through)"
    )
    args = parser.parse_args()
    if args.command == "serve":
        sys.path.insert(0, str(ROOT))
        from durchwahl.routing.server import event_loop_factory, tune_gc

        if not args.default_gc:
            tune_gc()  # what `durchwahl serve` does
            if os.environ.get("BENCH_GC_THRESHOLD"):
                gc.set_threshold(*(int(v) for v in os.environ["BENCH_GC_THRESHOLD"].split(",")))
        with asyncio.Runner(loop_factory=event_loop_factory(args.loop)) as runner:
            runner.run(serve(args.port, args.callee_port, args.anchor))
        return 0

    global LOOP, ANCHOR, SIPP_LOGS
    LOOP = args.loop
    ANCHOR = args.anchor
    if args.sipp_logs is not None:
        SIPP_LOGS = args.sipp_logs.resolve()
        SIPP_LOGS.mkdir(parents=True, exist_ok=True)

    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    version = subprocess.run([sipp, "-v"], capture_output=True, text=True).stdout
    print(f"machine: {machine()}")
    print(f"durchwahl event loop: {LOOP}")
    media = "anchored (every call gets two RTP ports of ours)" if ANCHOR else "passed through"
    print(f"durchwahl media: {media}")
    print(f"sipp: {next((v.strip() for v in version.splitlines() if 'SIPp' in v), '?')}")
    rates = [int(r) for r in args.rates.split(",")]
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    best: dict[str, int] = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory(prefix="bench-cps-") as tmp:
        peers: list[Peer] = []
        try:
            for name in names:
                peers.append(start_durchwahl() if name == "durchwahl" else start_sippy(Path(tmp)))
            for peer in peers:  # warm-up, not counted: imports, caches, first allocations
                row = run_step(sipp, peer, 50, 2.0, 0)
                print(f"warm-up {peer.name}: {row['a_ok']}/{row['b_ok']} of {row['calls']} calls")
            climbing = list(peers)
            print(
                f"\nladder: {args.seconds:g} s per step, calls held {args.hold_ms} ms, success = both legs\n"
            )
            print(
                "| peer | target cps | calls | ok caller/callee | failed caller/callee | success | "
                "achieved cps | peer CPU | CPU µs/call | pass |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for rate in rates:
                for peer in list(climbing):
                    wait_idle(peer.pid, args.idle)
                    row = run_step(sipp, peer, rate, args.seconds, args.hold_ms)
                    print_step(row)
                    if row["passed"]:
                        best[peer.name] = rate
                    else:
                        climbing.remove(peer)
                if not climbing:
                    break
            print()
            for name in names:
                print(
                    f"{name}: highest rate with >= 99.9 % of calls completed on both legs: {best[name]} cps"
                )
            if best.get("durchwahl") and best.get("sippy"):
                print(f"durchwahl / Sippy: {best['durchwahl'] / best['sippy']:.2f}x")
            if args.profile and best.get("durchwahl"):
                peer = next(p for p in peers if p.name == "durchwahl")
                wait_idle(peer.pid, args.idle)
                profile_step(sipp, peer, best["durchwahl"], args.seconds, args.hold_ms)
        finally:
            for peer in peers:
                peer.stop()
    if args.memory_calls > 0:
        print(f"\nmemory: {args.memory_calls} held calls placed at {args.memory_rate} cps (durchwahl)")
        result = memory_run(sipp, args.memory_calls, args.memory_rate, args.memory_timeout)
        print(
            f"held {result['held']} calls; RSS {result['before'] / 2**20:.1f} MiB -> "
            f"{result['plateau'] / 2**20:.1f} MiB; {result['per_call']:,.0f} bytes per held call "
            f"({result['seconds']:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
