"""Starting a cluster's parts on one machine, on loopback: Redis, Kamailio and durchwahl nodes, each in its
own process with its own port and files in one folder (``make cluster``, the cluster tests, the cluster
benchmarks). Every part is stopped by the PID it was started with; nothing here is left running.

This is for a developer's machine and CI, not a production launcher (see docs/CLUSTER.md for that).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
    "CLUSTER_OFFICE",
    "KAMAILIO_CONFIG",
    "Cluster",
    "Part",
    "binary",
    "free_port",
    "main",
    "missing_binaries",
    "options_status",
    "start_kamailio",
    "start_node",
    "start_redis",
]

_EXAMPLES: Final = Path(__file__).resolve().parent.parent / "examples" / "cluster"
#: The edge's configuration that ships with the project (commented; what the tests run).
KAMAILIO_CONFIG: Final = _EXAMPLES / "kamailio.cfg"
#: The example office as a cluster: every node reads it (``make cluster``).
CLUSTER_OFFICE: Final = _EXAMPLES / "office.toml"


def missing_binaries(*names: str) -> list[str]:
    """Which of the programs ``names`` are not on PATH (nor in /usr/sbin, where Debian puts kamailio)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return [name for name in names if shutil.which(name, path=path) is None]


def binary(name: str) -> str:
    """Where program ``name`` is (PATH, /usr/sbin, /usr/local/sbin); FileNotFoundError when nowhere."""
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
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops the parts in order
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
        binary("redis-server"),
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


def options_status(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> int | None:
    """The status a SIP server at ``host:port`` (UDP) answers an OPTIONS with; None when it does not."""
    branch = f"z9hG4bK-probe-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        probe = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=probe\r\n"
            f"To: <sip:{host}:{port}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        sock.sendto(probe.encode(), (host, port))
        try:
            data = sock.recv(65535)
        except OSError:
            return None
    first = data.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None


def _wait_sip(part: Part, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not part.running:
            raise RuntimeError(f"{part.name} exited at start:\n{part.log_tail()}")
        if options_status(port, timeout=0.2) is not None:
            return
        time.sleep(0.05)
    part.stop()
    raise RuntimeError(
        f"{part.name} did not answer OPTIONS on 127.0.0.1:{port} in {seconds} s:\n{part.log_tail()}"
    )


def start_kamailio(
    folder: Path,
    port: int,
    nodes: Sequence[int],
    *,
    ping_interval: int = 1,
    workers: int = 4,
    memory_mb: int = 64,
    config: Path = KAMAILIO_CONFIG,
) -> Part:
    """Kamailio on 127.0.0.1:``port`` (UDP) with the project's edge configuration, dispatching to the
    durchwahl nodes on 127.0.0.1 at ``nodes`` (their ports), probing them every ``ping_interval`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes_list = folder / "nodes.list"
    nodes_list.write_text("".join(f"1 sip:127.0.0.1:{node}\n" for node in nodes), encoding="utf-8")
    argv = [
        binary("kamailio"),
        "-f",
        str(config),
        "-DD",
        "-E",
        "-l",
        f"udp:127.0.0.1:{port}",
        "-Y",
        str(folder),
        "-P",
        str(folder / "kamailio.pid"),
        "-m",
        str(memory_mb),
        "-A",
        f'DS_LIST="{nodes_list}"',
        "-A",
        f"DS_PING_INTERVAL={ping_interval}",
        "-A",
        f"WORKERS={workers}",
    ]
    part = _spawn(f"kamailio-{port}", argv, folder, port)
    _wait_sip(part, port, 15.0)
    return part


def start_node(
    folder: Path,
    config: Path,
    name: str,
    port: int,
    *,
    wait: bool = True,
    extra: Sequence[str] = (),
    program: Sequence[str] = ("-m", "durchwahl.routing.cli"),
) -> Part:
    """``durchwahl serve --node NAME`` on udp:127.0.0.1:``port`` for the directory file ``config``
    (``program``: what Python runs instead of ``-m routing.cli``, taking the same arguments)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    argv = [
        sys.executable,
        *program,
        "serve",
        "--config",
        str(config),
        "--node",
        name,
        "--listen",
        f"udp:127.0.0.1:{port}",
        *extra,
    ]
    part = _spawn(f"node-{name}", argv, folder, port, env=env)
    if wait:
        _wait_sip(part, port, 20.0)
    return part


class Cluster:
    """Redis, Kamailio and ``nodes`` durchwahl nodes on loopback, from ``office`` (a directory file whose
    ``[cluster]`` store and edges are rewritten to the ports chosen here). ``stop()`` ends them all."""

    def __init__(
        self,
        folder: Path,
        *,
        nodes: int = 2,
        office: Path = CLUSTER_OFFICE,
        edge_port: int | None = None,
        node_ports: Sequence[int] | None = None,
        redis_port: int | None = None,
        ping_interval: int = 1,
        kamailio_workers: int = 4,
        kamailio_memory_mb: int = 64,
        node_program: Sequence[str] = ("-m", "durchwahl.routing.cli"),
    ) -> None:
        self.folder = folder
        self._program = tuple(node_program)
        self.edge_port = edge_port or free_port()
        self.node_ports = list(node_ports or [free_port() for _ in range(nodes)])
        self.redis_port = redis_port or free_port()
        self.names = [f"node{i + 1}" for i in range(len(self.node_ports))]
        self.config = folder / "office.toml"
        self._office = office
        self._ping_interval = ping_interval
        self._workers = kamailio_workers
        self._memory = kamailio_memory_mb
        self.redis: Part | None = None
        self.kamailio: Part | None = None
        self.nodes: dict[str, Part] = {}

    @property
    def store(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def write_office(self) -> Path:
        """The office file with this cluster's store and edge (everything else as in ``office``)."""
        text = self._office.read_text(encoding="utf-8")
        text = re.sub(r"(?m)^store\s*=.*$", f'store = "{self.store}"', text)
        text = re.sub(r"(?m)^edges\s*=.*$", f'edges = ["127.0.0.1:{self.edge_port}"]', text)
        greeting = (self._office.parent / "../greeting.wav").resolve()
        text = text.replace('"../greeting.wav"', json.dumps(str(greeting)))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def start(self) -> Cluster:
        try:
            self.write_office()
            self.redis = start_redis(self.folder / "redis", self.redis_port)
            for name, port in zip(self.names, self.node_ports, strict=True):
                self.start_node(name, port)
            self.kamailio = start_kamailio(
                self.folder / "kamailio",
                self.edge_port,
                self.node_ports,
                ping_interval=self._ping_interval,
                workers=self._workers,
                memory_mb=self._memory,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, name: str, port: int) -> Part:
        part = start_node(self.folder / name, self.config, name, port, program=self._program)
        self.nodes[name] = part
        return part

    def restart_redis(self) -> Part:
        """Stop Redis (SIGTERM: it writes its append-only file) and start it again on its port."""
        assert self.redis is not None
        self.redis.stop()
        self.redis = start_redis(self.folder / "redis", self.redis_port)
        return self.redis

    def parts(self) -> list[Part]:
        return [p for p in (self.redis, *self.nodes.values(), self.kamailio) if p is not None]

    def stop(self) -> None:
        """Kamailio first, then the nodes, then Redis; each by its PID."""
        for part in (self.kamailio, *self.nodes.values(), self.redis):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``make cluster``: Redis, Kamailio and two nodes of the example office on loopback until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="durchwahl-cluster", description=main.__doc__)
    parser.add_argument("--folder", default="var/cluster", help="where the parts keep their files and logs")
    parser.add_argument("--edge-port", type=int, default=5060, help="Kamailio's port (the phones' server)")
    parser.add_argument("--node-ports", default="5071,5072", help="the nodes' ports, comma-separated")
    parser.add_argument("--redis-port", type=int, default=6390)
    args = parser.parse_args(argv)
    missing = missing_binaries("redis-server", "kamailio")
    if missing:
        print(
            f"durchwahl-cluster: not installed: {', '.join(missing)} (apt-get install kamailio redis-server)"
        )
        return 1
    ports = [int(p) for p in args.node_ports.split(",") if p]
    for port in (args.edge_port, *ports, args.redis_port):
        if not _port_free(port):
            print(
                f"durchwahl-cluster: port {port} on 127.0.0.1 is in use (another make run or make cluster?)"
            )
            return 1
    folder = Path(args.folder).resolve()
    cluster = Cluster(
        folder, edge_port=args.edge_port, node_ports=ports, redis_port=args.redis_port, ping_interval=2
    )
    stopping = False

    def stop(number: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        _announce(cluster)
        while not stopping:
            time.sleep(0.5)
            for part in cluster.parts():
                if not part.running and not stopping:
                    print(
                        f"durchwahl-cluster: {part.name} exited ({part.process.returncode}); see {part.log}"
                    )
                    stopping = True
    except RuntimeError as exc:
        print(f"durchwahl-cluster: {exc}")
        return 1
    finally:
        print("durchwahl-cluster: stopping Kamailio, the nodes and Redis", flush=True)
        cluster.stop()
    return 0


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _announce(cluster: Cluster) -> None:
    from .directory_file import load_directory

    directory = load_directory(cluster.config)
    print(f"durchwahl-cluster: Redis on 127.0.0.1:{cluster.redis_port} (files in {cluster.folder / 'redis'})")
    for name, port in zip(cluster.names, cluster.node_ports, strict=True):
        print(f"durchwahl-cluster: {name} on UDP 127.0.0.1:{port} (log {cluster.folder / name})")
    print(
        f"durchwahl-cluster: Kamailio, the edge, on UDP 127.0.0.1:{cluster.edge_port}: point the phones here"
    )
    print(f"durchwahl-cluster: register a phone with domain/realm {directory.server.domain}:")
    for employee in directory.employees:
        secret = employee.password or "(see the config)"
        print(
            f"  extension {employee.extension} {employee.name}: user {employee.sip_user}, password {secret}"
        )
    print(
        f"durchwahl-cluster: durchwahl status --config {cluster.config} --node node1; "
        f"durchwahl drain ... --node node1; durchwahl cdr --config {cluster.config}"
    )
    print("durchwahl-cluster: Ctrl-C stops all of it", flush=True)


if __name__ == "__main__":
    sys.exit(main())
