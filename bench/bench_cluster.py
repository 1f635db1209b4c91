"""Registrations and calls per second through a cluster: one durchwahl node alone (``durchwahl serve``,
SQLite), one node behind Kamailio with Redis, and two nodes behind Kamailio with Redis, on this machine, with
the CPU time of every part (Kamailio's processes, Redis, each node, SIPp) per registration and per call.

    flock /tmp/durchwahl-bench.lock .venv/bin/python bench/bench_cluster.py register \\
        --topology single,one,two --rates 300,600,900,1200 --duration 5 --users 1000
    flock /tmp/durchwahl-bench.lock .venv/bin/python bench/bench_cluster.py calls \\
        --topology single,one,two --rates 50,100,150,200 --duration 5 --hold-ms 1000

Every part is started by :mod:`routing.cluster_run` on free loopback ports with its own files, stopped by
PID at the end. **register**: SIPp (``tests/routing/sipp_register.xml``) registers ``--users`` users in turn
(REGISTER → 401 → REGISTER with MD5 digest → 200), ``rate × duration`` registrations per step, to the node
itself (single) or to Kamailio (one, two). **calls**: a phone (a SIPp UAS, registered first through the same
entry) answers calls that a SIPp "trunk" places to a number ringing it directly (``bench/
sipp_cluster_call.xml``: INVITE, 200, ACK, ``--hold-ms``, BYE; no RTP), ``rate × duration`` calls per step.
A step counts when ≥ 99.9 % succeeded (calls: on both legs) and SIPp kept up (its own "Call Rate", over its
whole run including the last calls' hold, ≥ 80 % of what placing them at the target rate gives); *achieved*
is that rate times the share completed. The ladder stops at the first
step that does not count. CPU: utime + stime from ``/proc`` before and after the
step for every process of each part (Kamailio's main process and its children), SIPp's from
``getrusage(RUSAGE_CHILDREN)``. The parts share this machine's cores: read the CPU per registration or call,
and what it implies per added core, not only the rates.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durchwahl.routing.cluster_run import CLUSTER_OFFICE, Cluster, Part, free_port, start_node  # noqa: E402

REGISTER = ROOT / "tests" / "routing" / "sipp_register.xml"
CALL = ROOT / "bench" / "sipp_cluster_call.xml"
UAS = ROOT / "tests" / "routing" / "sipp_cluster_uas.xml"
SIPP = shutil.which("sipp") or "sipp"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


#: How the benchmark runs a node: ``durchwahl serve`` with two limits raised (see :func:`serve_node`).
NODE_PROGRAM = (str(Path(__file__).resolve()), "node")


def serve_node(argv: list[str]) -> int:
    """``durchwahl serve`` with the two limits that would measure something else than the node raised, as
    bench_register.py does: every registration comes from one address (SIPp's), and the guard answers at
    most 20 unauthenticated requests a second per source (beyond: silence, by design); and a UDP non-INVITE
    server transaction lives 32 s (Timer J), so 1,000 registrations/s need 64,000 open transactions, the
    default cap. Everything else is as shipped."""
    import attrs

    from durchwahl import routing
    from durchwahl.routing.cli import main as cli_main

    policy = routing.security.GuardPolicy
    names = [field.name for field in attrs.fields(policy)]
    defaults = list(policy.__init__.__defaults__ or ())
    defaults[names.index("challenge_rate")] = 1e9
    defaults[names.index("challenge_burst")] = 10**9
    policy.__init__.__defaults__ = tuple(defaults)
    assert policy().challenge_rate == 1e9
    limits = routing.directory_file.DEFAULT_LIMITS
    routing.directory_file.DEFAULT_LIMITS = attrs.evolve(limits, max_server_transactions=1_000_000)
    return cli_main(argv)


def office(folder: Path, users: int, cluster: bool) -> Path:
    """The example cluster office with ``users`` more employees (user N, password pw-N) and a number that
    rings 102 at once; without ``cluster`` its [cluster] table is left out (one node, SQLite)."""
    text = CLUSTER_OFFICE.read_text(encoding="utf-8")
    text = text.replace('"../greeting.wav"', f'"{ROOT / "examples" / "greeting.wav"}"')
    if not cluster:
        start = text.index("\n[cluster]\n")
        end = text.index("\n[[employee]]", start)
        text = text[:start] + text[end:]
    text += '\n[[number]]\nnumber = "+49 30 7654321"\ntrunk = "provider"\ndefault = "102"\n'
    for i in range(users):
        text += f'\n[[employee]]\nextension = "{4000 + i}"\nname = "User {i}"\npassword = "pw-{i}"\n'
    path = folder / "office-template.toml"
    path.write_text(text, encoding="utf-8")
    csv = folder / "users.csv"
    csv.write_text(
        "SEQUENTIAL\n"
        + "".join(f"{4000 + i};[authentication username={4000 + i} password=pw-{i}]\n" for i in range(users)),
        encoding="utf-8",
    )
    return path


def pids_of(part: Part) -> list[int]:
    """The process and, for Kamailio, every process of its session (its workers)."""
    found = [part.pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == part.pid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == part.pid:  # session id: the parts start their own sessions
            found.append(int(entry.name))
    return found


def cpu(part: Part) -> float:
    total = 0.0
    for pid in pids_of(part):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def sipp_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def counter(text: str, name: str) -> int:
    for line in text.splitlines():
        if name in line:
            numbers = [p for p in line.replace("|", " ").split() if p.isdigit()]
            if numbers:
                return int(numbers[-1])
    return -1


def placed_rate(text: str) -> float:
    """SIPp's own cumulative rate of calls placed (the last "Call Rate" column of its final screen)."""
    found = re.findall(r"Call Rate\s*\|.*\|\s*([0-9.]+) cps", text)
    return float(found[-1]) if found else 0.0


def sipp(args: list[str], folder: Path, timeout: float) -> tuple[int, str]:
    done = subprocess.run(
        [SIPP, *args, "-i", "127.0.0.1", "-t", "u1", "-nostdin", "-timeout", f"{int(timeout)}s"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    return done.returncode, done.stdout + done.stderr


class Topology:
    """The parts of one topology, started for a whole ladder."""

    def __init__(self, name: str, folder: Path, users: int) -> None:
        self.name = name
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cluster: Cluster | None = None
        self.single: Part | None = None
        self.redis: Part | None = None
        self.template = office(folder, users, cluster=name != "single")
        if name == "single":
            self.port = free_port()
            config = folder / "office.toml"
            text = self.template.read_text(encoding="utf-8")
            config.write_text(text, encoding="utf-8")
            self.single = start_node(folder / "node", config, "node1", self.port, program=NODE_PROGRAM)
        else:
            nodes = 1 if name == "one" else 2
            self.cluster = Cluster(
                folder / "cluster",
                nodes=nodes,
                office=self.template,
                ping_interval=2,
                kamailio_memory_mb=1024,  # INTEROP.md: 64 MB runs out near 430 transactions/s
                node_program=NODE_PROGRAM,
            )
            self.cluster.start()
            self.port = self.cluster.edge_port

    def parts(self) -> dict[str, Part]:
        if self.single is not None:
            return {"node1": self.single}
        assert self.cluster is not None
        named: dict[str, Part] = {}
        if self.cluster.kamailio is not None:
            named["kamailio"] = self.cluster.kamailio
        if self.cluster.redis is not None:
            named["redis"] = self.cluster.redis
        named.update(self.cluster.nodes)
        return named

    def stop(self) -> None:
        if self.single is not None:
            self.single.stop()
        if self.cluster is not None:
            self.cluster.stop()


def measure(topology: Topology, run: Callable[[], object]) -> tuple[dict[str, float], float, object]:
    parts = topology.parts()
    before = {name: cpu(part) for name, part in parts.items()}
    sipp_before = sipp_cpu()
    started = time.monotonic()
    result = run()
    elapsed = time.monotonic() - started
    used = {name: cpu(part) - before[name] for name, part in parts.items()}
    used["sipp"] = sipp_cpu() - sipp_before
    return used, elapsed, result


def register_step(topology: Topology, rate: int, duration: float) -> tuple[int, int, str]:
    total = int(rate * duration)
    args = ["-sf", str(REGISTER), "-inf", str(topology.folder / "users.csv"), f"127.0.0.1:{topology.port}"]
    args += ["-p", str(free_port()), "-r", str(rate), "-m", str(total), "-l", str(max(rate * 4, 100))]
    args += ["-timeout_error"]
    _, out = sipp(args, topology.folder, duration * 4 + 20)
    return counter(out, "Successful call"), counter(out, "Failed call"), out


def register_phone(topology: Topology, port: int) -> None:
    users = topology.folder / "bernd.csv"
    users.write_text("SEQUENTIAL\nbernd;[authentication username=bernd password=bernd-102-secret]\n")
    code, out = sipp(
        ["-sf", str(REGISTER), "-inf", str(users), f"127.0.0.1:{topology.port}", "-p", str(port), "-m", "1"],
        topology.folder,
        20,
    )
    if code != 0:
        raise RuntimeError(f"the bench phone did not register:\n{out[-2000:]}")


def calls_step(
    topology: Topology, rate: int, duration: float, hold_ms: int, phone: int
) -> tuple[int, int, str]:
    total = int(rate * duration)
    argv = [SIPP, "-sf", str(UAS), "-p", str(phone), "-key", "sink", "9", "-m", str(total), "-i", "127.0.0.1"]
    argv += ["-t", "u1", "-nostdin", "-timeout", f"{int(duration * 4 + 30)}s"]
    uas = subprocess.Popen(
        argv,
        cwd=topology.folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    callers = topology.folder / "trunk.csv"
    callers.write_text("SEQUENTIAL\n+4989555123;\n")
    args = ["-sf", str(CALL), "-inf", str(callers), "-s", "+49307654321", "-d", str(hold_ms)]
    args += [f"127.0.0.1:{topology.port}", "-p", str(free_port()), "-r", str(rate), "-m", str(total)]
    args += ["-l", str(max(rate * 3, 50)), "-timeout_error"]
    _, out = sipp(args, topology.folder, duration * 4 + 20)
    try:
        callee_out, _ = uas.communicate(timeout=duration * 4 + 40)
    except subprocess.TimeoutExpired:
        uas.kill()
        callee_out, _ = uas.communicate()
    ok = min(counter(out, "Successful call"), counter(callee_out, "Successful call"))
    return ok, counter(out, "Failed call"), out


def main() -> int:
    if sys.argv[1:2] == ["node"]:
        return serve_node(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("register", "calls"))
    parser.add_argument("--topology", default="single,one,two")
    parser.add_argument("--rates", default="300,600,900,1200")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--hold-ms", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the folder with the parts' logs")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    print(
        f"# {platform.node()} {platform.machine()} nproc={os.cpu_count()} python {platform.python_version()}"
    )
    print(f"# load average before: {os.getloadavg()}")
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        for name in args.topology.split(","):
            topology = Topology(name, root / name, args.users)
            try:
                phone = free_port()
                if args.what == "calls":
                    register_phone(topology, phone)
                unit = "registration" if args.what == "register" else "call"
                print(f"\n## {args.what}, topology {name}: {', '.join(topology.parts())}")
                print(
                    f"| target/s | achieved/s | failed | CPU ms per {unit}: "
                    + " / ".join([*topology.parts(), "sipp"])
                    + " | total ms |"
                )
                for rate in rates:
                    if args.what == "register":
                        step = functools.partial(register_step, topology, rate, args.duration)
                    else:
                        step = functools.partial(
                            calls_step, topology, rate, args.duration, args.hold_ms, phone
                        )
                    used, _, result = measure(topology, step)
                    ok, failed, out = result  # type: ignore[misc]
                    placed = int(rate * args.duration)
                    # Completed ones at the rate SIPp placed them (its run also holds each call and waits).
                    achieved = placed_rate(out) * ok / placed if placed else 0.0
                    per = [1000 * used[k] / ok if ok > 0 else 0.0 for k in [*topology.parts(), "sipp"]]
                    print(
                        f"| {rate} | {achieved:.0f} | {failed} | "
                        + " / ".join(f"{v:.2f}" for v in per)
                        + f" | {sum(per):.2f} |",
                        flush=True,
                    )
                    # SIPp's rate is over its whole run: the placing, plus the last calls' hold and end.
                    hold = args.hold_ms / 1000 if args.what == "calls" else 0.0
                    if ok < placed * 0.999 or placed_rate(out) < 0.8 * rate * args.duration / (
                        args.duration + hold
                    ):
                        if ok < placed * 0.5:
                            print(out[-1500:])
                        break
                    time.sleep(2.0)
            finally:
                topology.stop()
    finally:
        if args.keep:
            print(f"# logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
