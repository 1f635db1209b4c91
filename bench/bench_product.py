"""Calls through the product: ``durchwahl serve`` with a directory file, side by side with the Sippy B2BUA;
overload at 1×, 2× and 4× its capacity; memory per held call; a soak.

    .venv/bin/python bench/bench_product.py ladder [--rates 100,200,...] [--seconds 12] [--confirm 30]
    .venv/bin/python bench/bench_product.py ladder --path employee [--rates ...]
    .venv/bin/python bench/bench_product.py overload --capacity CPS [--seconds 30] [--factors 1,2,4]
    .venv/bin/python bench/bench_product.py memory [--calls 5000] [--rate 200]
    .venv/bin/python bench/bench_product.py soak --rate CPS [--minutes 30]

``BENCH_SERVE="python wrapper.py"`` runs the server through a wrapper (e.g. one that reports GC passes).
Run each under ``flock /tmp/durchwahl-bench.lock`` (one benchmark at a time on a shared machine).

**The product path.** A real ``durchwahl serve --config office.toml`` process (its own log, CDR store and
registrations under a temporary folder) with a directory file of two employees, a trunk and one number:

* ``--path trunk`` (the default): a SIPp caller on 127.0.0.2 — the trunk's ``inbound_from``, so identified
  by its source address — calls the number +49301234567, whose default destination is an external number;
  the call goes out through the same trunk (host 127.0.0.2) to a SIPp callee: trunk identification, the
  resolver, an outbound leg with media anchored (two RTP ports of ours per call), a CDR row per call.
* ``--path employee``: employee 101 calls employee 102 with MD5 digest (INVITE, 401, ACK, INVITE with
  credentials); 102 is a SIPp callee that registered first. The server answers at most 20 unauthenticated
  requests a second per source address (its brute-force guard), so the caller is split over several SIPp
  processes on addresses 127.0.0.11, .12, … each placing at most 15 calls a second.

The caller is ``bench/sipp_uac.xml`` (``bench/sipp_uac_digest.xml`` for employees): SIPp's stock ``uac``
(INVITE, ACK, ``--hold-ms`` pause, BYE) that also takes a 503 as an answer (ACK; the call ends) and ACKs a
retransmitted 200 during the hold (the stock one aborts the call on it, which Sippy's calls hit), with
Response Time 1 from the first INVITE to the 200 traced per call (``-trace_rtt``): the set-up time of each
answered call. The callee is ``bench/sipp_uas_now.xml``: SIPp's stock ``uas`` (180 and 200 at once), with
a Contact that the Sippy B2BUA's BYE reaches, absorbing a retransmitted INVITE. A call **completed** when
both SIPps counted it done and it was answered (min of the caller's answered calls completed and the
callee's successful calls).

**Sippy** 2.5.0 runs the same caller against ``b2bua -s`` (a static route to the same callee, no
authentication, resolver or CDR: it cannot do those), one step after durchwahl's at each rate.

``ladder``: steps of ``--seconds`` rising until a step fails (< 99.9 % of calls completed, or the caller below
90 % of the rate), per peer; then ``--confirm`` second runs at the highest passing rate, stepping down until
one passes: the sustained rate. Then the p99 set-up time at half of durchwahl's sustained rate.

``overload``: durchwahl at ``--factors`` × ``--capacity`` for ``--seconds`` each (a fresh server per run; SIPp
callers split so that none places more than 600 calls a second). Reported: goodput (completed calls per
second of the run), admitted calls lost (answered on the caller's side but not completed on the callee's),
the 503s, p99 set-up of answered calls, calls still active 40 s after the end (``durchwahl status``), the
datagrams the kernel dropped, and the server's resident size before, at its peak and after.

``memory``: ``--calls`` calls held (``-d`` longer than the run), resident size before and with all held, 40 s
after the last was placed (the set-up's transactions have ended by then).

``soak``: ``--rate`` for ``--minutes``; resident size, descriptors, RTP ports (UDP sockets) and active calls
once a minute; growth of the resident size after the first 5 minutes; leaks once traffic stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cps import answers_options, cpu_seconds, machine, rss_bytes, sipp_counter, stop_process, wait_idle

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DURCHWAHL = Path(sys.executable).with_name("durchwahl")
SERVER = "127.0.0.1"
TRUNK = "127.0.0.2"
NUMBER = "+49301234567"
PASS_SUCCESS = 0.999
PASS_RATE = 0.9
#: Most calls a second one SIPp caller process is asked to place.
PER_CALLER = 600

OFFICE = """\
[server]
domain = "office.example"
listen = ["udp:{server}:{port}"]
state_dir = "var"
rtp_ports = "20000-31999"
auth_algorithms = ["MD5"]
{caps}

[[employee]]
extension = "101"
name = "Bench Caller"
password = "bench-101-secret"

[[employee]]
extension = "102"
name = "Bench Callee"
password = "bench-102-secret"

[[trunk]]
name = "provider"
host = "{trunk}"
port = {callee_port}
inbound_from = ["{trunk}/32"]

[[number]]
number = "{number}"
trunk = "provider"
default = "+4940999888"
"""


def free_port(host: str) -> int:
    """A free UDP port on ``host`` outside the RTP range of the office (20000-31999)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not 20000 <= port <= 31999:
            return port


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# ------------------------------------------------------------------------------------------ the servers


class Durchwahl:
    """``durchwahl serve`` on a fresh office in ``folder``."""

    name = "durchwahl"

    def __init__(self, folder: Path, caps: str = "", loop: str = "asyncio") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port(SERVER)
        self.callee_port = free_port(TRUNK)
        self.config = folder / "office.toml"
        self.config.write_text(
            OFFICE.format(
                server=SERVER,
                port=self.port,
                caps=caps,
                trunk=TRUNK,
                callee_port=self.callee_port,
                number=NUMBER,
            )
        )
        self.log = (folder / "serve.log").open("w")
        command = os.environ.get("BENCH_SERVE", str(DURCHWAHL)).split()
        args = [*command, "serve", "--config", str(self.config), "--loop", loop]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=folder)
        if not answers_options(self.port, 20.0):
            self.stop()
            raise RuntimeError(f"durchwahl serve did not start: see {folder / 'serve.log'}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict[str, Any]:
        """``durchwahl status``: its text, and the active calls in it."""
        out = subprocess.run(
            [str(DURCHWAHL), "status", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        found = re.search(r"active calls: (\d+)", out)
        return {"active": int(found.group(1)) if found else -1, "text": out}

    def stop(self) -> None:
        stop_process(self.process, 15.0)
        self.log.close()


class Sippy:
    """The Sippy B2BUA with a static route to the callee."""

    name = "sippy"

    def __init__(self, folder: Path) -> None:
        script = Path(sys.executable).with_name("b2bua")
        if not script.exists():
            raise RuntimeError("the Sippy B2BUA is not installed (pip install -e '.[bench]')")
        self.port = free_port(SERVER)
        self.callee_port = free_port(TRUNK)
        args = [str(script), "-f", "-l", SERVER, "-p", str(self.port), "-s", f"{TRUNK}:{self.callee_port}"]
        args += ["-u", "-A", "0", "-c", str(folder / "sippy.sock"), "-P", str(folder / "sippy.pid")]
        env = dict(os.environ, SIPLOG_BEND="none")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if not answers_options(self.port, 20.0):
            self.stop()
            raise RuntimeError("the Sippy B2BUA did not start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


Peer = Durchwahl | Sippy


# ---------------------------------------------------------------------------------------------- SIPp


def table_count(out: str, message: str, arrow: str) -> int:
    """The first count of the scenario screen row for ``message`` (``200 <----``), summed over its rows."""
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == message and parts[1].startswith(arrow):
            numbers = [p for p in parts[2:] if p.isdigit()]
            if numbers:
                total = max(total, int(numbers[0]))
    return total


def answered_calls(out: str) -> int:
    """Calls answered on the caller's side: the first ``200 <----`` row (the INVITE's)."""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "200" and parts[1].startswith("<") and "RTD1" in line:
            return int(next(p for p in parts[2:] if p.isdigit()))
    return 0


def bye_answered(out: str) -> int:
    """Calls completed on the caller's side: the last ``200 <----`` row (the BYE's)."""
    rows = [line.split() for line in out.splitlines()]
    counts = [int(next(p for p in r[2:] if p.isdigit())) for r in rows if len(r) >= 3 and r[0] == "200"]
    return counts[-1] if counts else 0


def refused_calls(out: str) -> int:
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "503" and parts[1].startswith("<"):
            return int(next(p for p in parts[2:] if p.isdigit()))
    return 0


@contextlib.contextmanager
def stopping(processes: list[subprocess.Popen[str]]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def run_load(
    peer: Peer,
    rate: int,
    seconds: float,
    *,
    hold_ms: int,
    path: str,
    work: Path,
    per_source: int = 15,
    watch: Any = None,
) -> dict[str, Any]:
    """``rate`` calls a second for ``seconds`` through ``peer``; the SIPp counts, set-up times and CPU."""
    calls = int(rate * seconds)
    hold = hold_ms / 1000
    timeout = seconds + hold + 60
    sipp = shutil.which("sipp") or "sipp"
    work.mkdir(parents=True, exist_ok=True)
    if path == "employee" and isinstance(peer, Durchwahl):
        # 102 registers again before each step: between steps nobody answers the registrar's OPTIONS pings
        # on its port, and a contact that does not answer them is skipped when ringing.
        register(peer, work / "register")
    callee_args = [sipp, "-sf", str(BENCH / "sipp_uas_now.xml"), "-i", TRUNK, "-p", str(peer.callee_port)]
    if path != "employee":
        # As 102 the callee also answers the registrar's OPTIONS pings, which SIPp counts against -m: it
        # would stop one call early. It is stopped after the callers instead.
        callee_args += ["-m", str(calls)]
    callee_args += ["-nostdin", "-timeout", f"{int(timeout + 10)}s"]
    # Its counters once a second to a file as well: a callee still waiting for a call that failed on the
    # caller's side is killed, and then prints no final screen.
    callee_stats = work / "callee_stats.csv"
    callee_stats.unlink(missing_ok=True)
    callee_args += ["-trace_stat", "-stf", str(callee_stats), "-fd", "1"]
    if path == "employee":
        callee_args += ["-aa"]  # answers the registrar's OPTIONS pings
    callee = subprocess.Popen(
        callee_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work
    )
    time.sleep(0.3)
    if path == "employee":
        per = max(1, per_source)
        sources = [f"127.0.0.{11 + i}" for i in range(math.ceil(rate / per))]
        template, service = BENCH / "sipp_uac_digest.xml", "102"
    else:
        sources = [TRUNK] * math.ceil(rate / PER_CALLER)
        template, service = BENCH / "sipp_uac.xml", NUMBER
    scenario = work / template.name
    scenario.write_text(template.read_text().replace("HOLD_MS", str(max(1, hold_ms))))
    shares = [rate // len(sources) + (1 if i < rate % len(sources) else 0) for i in range(len(sources))]
    callers: list[subprocess.Popen[str]] = []
    cpu_before = cpu_seconds(peer.pid)
    started = time.monotonic()
    with stopping([callee]):
        for i, (source, share) in enumerate(zip(sources, shares, strict=True)):
            n = int(share * seconds)
            args = [sipp, "-sf", str(scenario), "-s", service, f"{SERVER}:{peer.port}", "-i", source]
            args += ["-p", str(free_port(source)), "-m", str(n), "-r", str(share), "-d", str(hold_ms)]
            args += ["-l", str(max(int(share * (hold + 5)), 100)), "-nostdin", "-timeout", f"{int(timeout)}s"]
            args += ["-trace_rtt", "-rtt_freq", "1", "-trace_err"]
            if path == "employee":
                args += ["-au", "101", "-ap", "bench-101-secret", "-auth_uri", "office.example"]
            folder = work / f"c{i}"
            folder.mkdir(exist_ok=True)
            callers.append(
                subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder)
            )
        with stopping(callers):
            peak = rss_bytes(peer.pid) if isinstance(peer, Durchwahl) else 0
            while any(c.poll() is None for c in callers):
                time.sleep(0.5)
                if isinstance(peer, Durchwahl):
                    with contextlib.suppress(OSError, RuntimeError):
                        peak = max(peak, rss_bytes(peer.pid))
                if watch is not None:
                    watch()
            outs = [c.communicate()[0] for c in callers]
        wall = time.monotonic() - started
        cpu = cpu_seconds(peer.pid) - cpu_before
        try:
            callee_out, _ = callee.communicate(timeout=3 if path == "employee" else 20)
        except subprocess.TimeoutExpired:
            callee.send_signal(signal.SIGUSR1)
            try:
                callee_out, _ = callee.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                callee.kill()
                callee_out, _ = callee.communicate()
    rtts: list[float] = []
    for i in range(len(callers)):
        for rtt_file in (work / f"c{i}").glob("*_rtt.csv"):
            for line in rtt_file.read_text().splitlines()[1:]:
                fields = line.split(";")
                if len(fields) >= 2:
                    with contextlib.suppress(ValueError):
                        rtts.append(float(fields[1]))
            rtt_file.unlink()
    errors: dict[str, int] = {}
    for i in range(len(callers)):
        for error_file in (work / f"c{i}").glob("*_errors.log"):
            for line in error_file.read_text(errors="replace").splitlines():
                if "Aborting" in line or "unexpected" in line.lower() or "timeout" in line.lower():
                    text = re.sub(r"'[^']*'", "'…'", line.split(": ", 1)[-1])[:90]
                    errors[text] = errors.get(text, 0) + 1
            error_file.unlink()
    answered = sum(answered_calls(o) for o in outs)
    completed_a = sum(bye_answered(o) for o in outs)
    refused = sum(refused_calls(o) for o in outs)
    failed_a = sum(max(0, sipp_counter(o, "Failed call")) for o in outs)
    b_ok = sipp_counter(callee_out, "Successful call")
    b_failed = sipp_counter(callee_out, "Failed call")
    if b_ok < 0:
        b_ok, b_failed = stat_counters(callee_stats)
    completed = min(completed_a, b_ok)
    placed = sum(int(s * seconds) for s in shares)
    return {
        "peer": peer.name,
        "rate": rate,
        "calls": placed,
        "answered": answered,
        "completed_a": completed_a,
        "completed_b": b_ok,
        "completed": completed,
        "refused": refused,
        "failed_a": failed_a,
        "failed_b": b_failed,
        "lost": max(0, answered - b_ok),
        "success": completed / placed if placed else 0.0,
        "wall": wall,
        "goodput": completed / seconds,
        "cpu_pct": 100 * cpu / wall,
        "cpu_ms": 1000 * cpu / completed if completed else float("nan"),
        "p50": percentile(rtts, 0.5),
        "p99": percentile(rtts, 0.99),
        "rtts": len(rtts),
        "peak_rss": peak,
        "errors": sorted(errors.items(), key=lambda item: -item[1])[:3],
    }


def stat_counters(path: Path) -> tuple[int, int]:
    """(successful, failed) calls in the last line of a SIPp ``-trace_stat`` file (0, 0 without one)."""
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) >= 2:
            row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
            return int(row.get("SuccessfulCall(C)", 0) or 0), int(row.get("FailedCall(C)", 0) or 0)
    return 0, 0


def passed(row: dict[str, Any], seconds: float) -> bool:
    # The caller placed its calls within seconds/PASS_RATE (SIPp falls behind when the peer is slow).
    return row["success"] >= PASS_SUCCESS and row["wall"] <= seconds / PASS_RATE + row["hold"] + 15


def print_row(row: dict[str, Any]) -> None:
    print(
        f"| {row['peer']} | {row['rate']} | {row['seconds']:.0f} s | {row['calls']} | {row['completed_a']}/"
        f"{row['completed_b']} | {100 * row['success']:.2f} % | {row['refused']} | {row['p50']:.0f} / "
        f"{row['p99']:.0f} ms | {row['cpu_pct']:.0f} % | {row['cpu_ms']:.2f} "
        f"| {'yes' if row['ok'] else 'NO'} |",
        flush=True,
    )


def ladder(args: argparse.Namespace, tmp: Path) -> None:
    rates = [int(r) for r in args.rates.split(",")]
    names = ["durchwahl"] + (["sippy"] if args.path == "trunk" and not args.no_sippy else [])
    peers: dict[str, Peer] = {}
    try:
        for name in names:
            peers[name] = (
                Durchwahl(tmp / name, caps=args.caps.replace(";", "\n"), loop=args.loop)
                if name == "durchwahl"
                else Sippy(tmp)
            )
        if args.path == "employee":
            register(peers["durchwahl"], tmp / "register")
        for peer in peers.values():
            row = run_load(peer, 50, 2, hold_ms=0, path=args.path, work=tmp / "warm")
            print(f"warm-up {peer.name}: {row['completed']} of {row['calls']} calls completed")
        print(
            f"\n{args.path} path, {args.seconds:g} s steps, calls held {args.hold_ms} ms; "
            "completed = both legs\n"
        )
        header = (
            "| peer | cps | length | calls | completed caller/callee | completed | 503 | set-up p50 / p99 "
            "| peer CPU | CPU ms/call | pass |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        )
        print(header)
        best: dict[str, int] = {}
        climbing = list(peers.values())
        for rate in rates:
            for peer in list(climbing):
                wait_idle(peer.pid, args.idle)
                row = run_load(
                    peer, rate, args.seconds, hold_ms=args.hold_ms, path=args.path, work=tmp / "run"
                )
                row.update(seconds=args.seconds, hold=args.hold_ms / 1000)
                row["ok"] = passed(row, args.seconds)
                print_row(row)
                if args.verbose and row["errors"]:
                    print("\n".join(f"    caller: {n} × {text}" for text, n in row["errors"]), flush=True)
                if args.verbose and isinstance(peer, Durchwahl):
                    text = peer.status()["text"]
                    print("\n".join(f"    {line}" for line in text.splitlines()[-2:]), flush=True)
                if row["ok"]:
                    best[peer.name] = rate
                else:
                    climbing.remove(peer)
            if not climbing:
                break
        if args.confirm:
            print(
                f"\nconfirmation: {args.confirm:g} s at the highest passing rate, "
                "stepping down until it passes"
            )
            print(header)
            for peer in peers.values():
                candidates = [r for r in rates if r <= best.get(peer.name, 0)][::-1]
                sustained = 0
                for rate in candidates:
                    wait_idle(peer.pid, args.idle)
                    row = run_load(
                        peer, rate, args.confirm, hold_ms=args.hold_ms, path=args.path, work=tmp / "run"
                    )
                    row.update(seconds=args.confirm, hold=args.hold_ms / 1000)
                    row["ok"] = passed(row, args.confirm)
                    print_row(row)
                    if row["ok"]:
                        sustained = rate
                        break
                best[peer.name] = sustained
        print()
        for name in names:
            print(f"{name}: sustained {best.get(name, 0)} cps ({args.path} path)")
        if best.get("durchwahl") and best.get("sippy"):
            print(f"durchwahl / Sippy: {best['durchwahl'] / best['sippy']:.2f}x")
        half = best.get("durchwahl", 0) // 2
        if half:
            peer = peers["durchwahl"]
            wait_idle(peer.pid, args.idle)
            row = run_load(
                peer,
                half,
                args.confirm or args.seconds,
                hold_ms=args.hold_ms,
                path=args.path,
                work=tmp / "run",
            )
            print(
                f"durchwahl at half its sustained rate ({half} cps): set-up p50 {row['p50']:.0f} ms, "
                f"p99 {row['p99']:.0f} ms over {row['rtts']} answered calls; "
                f"{100 * row['success']:.2f} % completed"
            )
        if "durchwahl" in peers:
            time.sleep(5)
            print(f"durchwahl status afterwards: {peers['durchwahl'].status()['active']} active calls")  # type: ignore[union-attr]
    finally:
        for peer in peers.values():
            peer.stop()


def register(server: Durchwahl, work: Path) -> None:
    """Employee 102 registers from the callee's port (where SIPp's uas then answers)."""
    work.mkdir(parents=True, exist_ok=True)
    sipp = shutil.which("sipp") or "sipp"
    args = [
        sipp,
        "-sf",
        str(BENCH / "sipp_register.xml"),
        "-s",
        "102",
        f"{SERVER}:{server.port}",
        "-i",
        TRUNK,
    ]
    args += ["-p", str(server.callee_port), "-m", "1", "-au", "102", "-ap", "bench-102-secret"]
    args += ["-auth_uri", "office.example", "-nostdin", "-timeout", "10s"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=work, timeout=30)
    if sipp_counter(done.stdout, "Successful call") != 1:
        raise RuntimeError(f"employee 102 did not register:\n{done.stdout[-1500:]}")


def sockets_of(pid: int) -> tuple[int, int]:
    """(open descriptors, UDP sockets) of ``pid``: the RTP ports show as UDP sockets."""
    fds = os.listdir(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    udp = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                if line.split()[9] in inodes:
                    udp += 1
    return len(fds), udp


def overload(args: argparse.Namespace, tmp: Path) -> None:
    factors = [float(f) for f in args.factors.split(",")]
    print(f"capacity {args.capacity} cps; {args.seconds:g} s per run; calls held {args.hold_ms} ms\n")
    print(
        "| offered | calls | answered | completed (both legs) | goodput | of capacity | admitted lost | 503 "
        "| set-up p50 / p99 | active 40 s after | dropped datagrams | RSS before / peak / after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for factor in factors:
        rate = round(args.capacity * factor)
        server = Durchwahl(tmp / f"over-{factor:g}", caps=args.caps.replace(";", "\n"), loop=args.loop)
        try:
            row = run_load(server, 30, 2, hold_ms=0, path="trunk", work=tmp / "warm")
            wait_idle(server.pid, 3)
            before = rss_bytes(server.pid)
            row = run_load(server, rate, args.seconds, hold_ms=args.hold_ms, path="trunk", work=tmp / "run")
            time.sleep(40)
            active = server.status()
            after = rss_bytes(server.pid)
            dropped = re.search(r"datagrams dropped: ([^;\s]+)", active["text"])
            print(
                f"| {factor:g}× = {rate} cps | {row['calls']} | {row['answered']} | {row['completed']} "
                f"| {row['goodput']:.0f} cps | {100 * row['goodput'] / args.capacity:.0f} % | {row['lost']} "
                f"| {row['refused']} | {row['p50']:.0f} / {row['p99']:.0f} ms | {active['active']} "
                f"| {dropped.group(1) if dropped else '?'} | {before / 2**20:.0f} / "
                f"{row['peak_rss'] / 2**20:.0f} / "
                f"{after / 2**20:.0f} MiB |",
                flush=True,
            )
            if args.verbose:
                print(active["text"])
        finally:
            server.stop()


def memory(args: argparse.Namespace, tmp: Path) -> None:
    server = Durchwahl(tmp / "memory", loop=args.loop)
    try:
        run_load(server, 100, 2, hold_ms=0, path="trunk", work=tmp / "warm")
        wait_idle(server.pid, 3)
        before = rss_bytes(server.pid)
        held: list[int] = []

        def watch() -> None:
            held.append(server.status()["active"])

        seconds = args.calls / args.rate
        # Measured 40 s after the last call was placed: the set-up's transactions (kept 32 s after their
        # final answer, RFC 3261 Timer J/K/M) are gone by then, so what is counted is what a held call keeps.
        hold_ms = int(seconds * 1000) + 60_000
        sipp_rows: dict[str, Any] = {}

        def measure() -> None:
            time.sleep(seconds + 40)
            sipp_rows["rss"] = rss_bytes(server.pid)
            status = server.status()
            sipp_rows["held"] = status["active"]
            sipp_rows["status"] = status["text"].splitlines()[-2:]

        import threading

        probe = threading.Thread(target=measure)
        probe.start()
        run_load(server, args.rate, seconds, hold_ms=hold_ms, path="trunk", work=tmp / "run")
        probe.join()
        per_call = (sipp_rows["rss"] - before) / max(sipp_rows["held"], 1)
        print(
            f"held {sipp_rows['held']} calls (placed {args.calls} at {args.rate} cps): "
            f"RSS {before / 2**20:.1f} MiB "
            f"-> {sipp_rows['rss'] / 2**20:.1f} MiB; {per_call:,.0f} bytes per held call"
        )
        print("\n".join(f"    {line}" for line in sipp_rows["status"]))
    finally:
        server.stop()


def soak(args: argparse.Namespace, tmp: Path) -> None:
    server = Durchwahl(tmp / "soak", loop=args.loop)
    try:
        run_load(server, 30, 2, hold_ms=0, path="trunk", work=tmp / "warm")
        wait_idle(server.pid, 3)
        fds0, udp0 = sockets_of(server.pid)
        rss0 = rss_bytes(server.pid)
        print(f"before: RSS {rss0 / 2**20:.1f} MiB, {fds0} descriptors, {udp0} UDP sockets")
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        last = [0.0]

        def watch() -> None:
            now = time.monotonic() - started
            if now - last[0] >= 60:
                last[0] = now
                rss = rss_bytes(server.pid)
                fds, udp = sockets_of(server.pid)
                samples.append((now, rss))
                print(
                    f"  t={now / 60:4.1f} min  RSS {rss / 2**20:.1f} MiB  descriptors {fds}  "
                    f"UDP sockets {udp}  "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )

        row = run_load(
            server,
            args.rate,
            args.minutes * 60,
            hold_ms=args.hold_ms,
            path="trunk",
            work=tmp / "run",
            watch=watch,
        )
        print(
            f"soak: {row['calls']} calls at {args.rate} cps, {row['completed']} completed "
            f"({100 * row['success']:.3f} %), {row['refused']} refused, {row['lost']} admitted lost, "
            f"set-up p50 {row['p50']:.0f} / p99 {row['p99']:.0f} ms"
        )
        at5 = next((rss for t, rss in samples if t >= 300), None)
        end = samples[-1][1] if samples else None
        if at5 and end:
            print(
                f"RSS after 5 min {at5 / 2**20:.1f} MiB, at the end {end / 2**20:.1f} MiB: "
                f"{100 * (end - at5) / at5:+.1f} %"
            )
        time.sleep(40)
        fds, udp = sockets_of(server.pid)
        print(
            f"40 s after: {server.status()['active']} active calls, "
            f"RSS {rss_bytes(server.pid) / 2**20:.1f} MiB, "
            f"{fds} descriptors (before {fds0}), {udp} UDP sockets (before {udp0})"
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("ladder", "overload", "memory", "soak"))
    parser.add_argument("--path", choices=("trunk", "employee"), default="trunk")
    parser.add_argument("--rates", default="100,150,200,250,300,350,400,450,500")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--confirm", type=float, default=30.0, help="0: no confirmation runs")
    parser.add_argument("--hold-ms", type=int, default=1000, help="how long each call is held (SIPp -d)")
    parser.add_argument("--idle", type=float, default=5.0, help="least rest before each step, s")
    parser.add_argument("--no-sippy", action="store_true")
    parser.add_argument("--capacity", type=int, default=300)
    parser.add_argument("--factors", default="1,2,4")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--caps", default="", help="[server] lines for the office, ';' between them")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--keep", type=Path, help="keep the servers' folders (logs, CDRs) here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    print(f"durchwahl serve --loop {args.loop}; {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="bench-product-") as name:
        tmp = args.keep.resolve() if args.keep else Path(name)
        {"ladder": ladder, "overload": overload, "memory": memory, "soak": soak}[args.mode](args, tmp)
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
