"""The cluster as it runs: Kamailio (examples/cluster/kamailio.cfg), Redis and two durchwahl nodes, each its
own process on loopback (routing.cluster_run), with SIPp phones and a SIPp trunk that talk to Kamailio only.

Each test starts its own cluster on free ports and stops every part by PID. Which node a request reaches is
Kamailio's choice (a hash of the AOR's user for REGISTER, of the Call-ID for INVITE); the tests read where
things went from the shared state (a binding's node, the CDRs' node) rather than assume it. In CI a missing
kamailio, redis-server or sipp fails the test; elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_env import require
from sipp import SippResult, free_port, run_sipp

from durchwahl.routing.cdr import CallRecord
from durchwahl.routing.cluster_run import CLUSTER_OFFICE, Cluster, options_status
from durchwahl.routing.redis_shared import read_cluster_records
from durchwahl.routing.redis_store import RedisLocationStore, connect

HERE = Path(__file__).parent
BOUNDS = ("-i", "127.0.0.1", "-t", "u1", "-timeout", "30s", "-timeout_error", "-nostdin")
USERS = {"101": "anna-101-secret", "bernd": "bernd-102-secret"}
#: A number of the trunk that rings bernd (102) at once, without a greeting.
DIRECT = "+49307654321"

pytestmark = pytest.mark.interop


def office(tmp_path: Path) -> Path:
    """The example cluster office, plus a number that rings 102 directly."""
    text = CLUSTER_OFFICE.read_text(encoding="utf-8")
    text += '\n[[number]]\nnumber = "+49 30 7654321"\ntrunk = "provider"\ndefault = "102"\n'
    path = tmp_path / "office-template.toml"
    path.write_text(text.replace('"../greeting.wav"', f'"{CLUSTER_OFFICE.parent.parent / "greeting.wav"}"'))
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require("kamailio", "redis-server", "sipp")
    running = Cluster(tmp_path / "cluster", office=office(tmp_path), ping_interval=1)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        for part in running.parts():
            assert not part.running, f"{part.name} still running"


class RtpCounter:
    """A UDP port that counts the datagrams it gets: where a phone's SDP sends the call's audio."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(2048)
            except OSError:
                continue
            self.count += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


async def register(cluster: Cluster, tmp_path: Path, user: str, port: int) -> None:
    """SIPp registers ``user`` through the edge from ``port`` (where its phone then answers)."""
    users = tmp_path / f"{user}.csv"
    users.write_text(f"SEQUENTIAL\n{user};[authentication username={user} password={USERS[user]}]\n")
    result = await run_sipp(
        [
            "-sf",
            str(HERE / "sipp_register.xml"),
            "-inf",
            str(users),
            f"127.0.0.1:{cluster.edge_port}",
            "-p",
            str(port),
            "-m",
            "1",
            *BOUNDS,
        ],
        tmp_path,
        timeout=40,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-1000:]


async def node_of(cluster: Cluster, user: str) -> str:
    """The node whose listener the user's REGISTER reached (from the shared store)."""
    client = connect(cluster.store)
    store = RedisLocationStore(client, cluster.store)
    try:
        (binding,) = await store.get(f"sip:{user}@office.example", now=time.time())
    finally:
        await store.close()
    assert binding.flow is not None and binding.path, binding  # registered through the edge, with its Path
    return cluster.names[cluster.node_ports.index(binding.flow.local[1])]


def phone(tmp_path: Path, port: int, sink: int, calls: int) -> asyncio.Future[SippResult]:
    """A SIPp phone answering ``calls`` calls on ``port``, its audio going to ``sink``."""
    args = ["-sf", str(HERE / "sipp_cluster_uas.xml"), "-p", str(port), "-key", "sink", str(sink)]
    return asyncio.ensure_future(run_sipp([*args, "-m", str(calls), *BOUNDS], tmp_path, timeout=90))


async def call(
    cluster: Cluster,
    tmp_path: Path,
    service: str,
    *,
    caller: str = "+4989555123",
    calls: int = 1,
    hold_ms: int = 1500,
    call_ids: str = "%u-%p@durchwahl-test",
) -> SippResult:
    """SIPp calls ``service`` through the edge ``calls`` times, one after another (a trunk by default)."""
    callers = tmp_path / f"caller-{caller}.csv"
    auth = f"[authentication username={caller} password={USERS[caller]}]" if caller in USERS else ""
    callers.write_text(f"SEQUENTIAL\n{caller};{auth}\n")
    args = [
        "-sf",
        str(HERE / "sipp_cluster_call.xml"),
        "-inf",
        str(callers),
        "-s",
        service,
        "-d",
        str(hold_ms),
        "-cid_str",
        call_ids,
        f"127.0.0.1:{cluster.edge_port}",
        "-p",
        str(free_port()),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(free_port()),
        "-m",
        str(calls),
        "-l",
        "1",
        *BOUNDS,
    ]
    return await run_sipp(args, tmp_path, timeout=90)


async def records(cluster: Cluster, count: int) -> list[tuple[str, CallRecord]]:
    """The cluster's newest call records once ``count`` are there (within 10 s)."""
    client = connect(cluster.store)
    try:
        async with asyncio.timeout(10):
            while len(found := await read_cluster_records(client, limit=100)) < count:
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    return found


async def test_a_trunk_call_through_kamailio_rings_a_phone_registered_through_either_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    phone_port = free_port()
    await register(cluster, tmp_path, "bernd", phone_port)
    registered_at = await node_of(cluster, "bernd")
    sink = RtpCounter()
    try:
        answering = phone(tmp_path, phone_port, sink.port, calls=4)
        await asyncio.sleep(0.5)
        # Four calls with fixed Call-IDs: Kamailio's hash sends them to both nodes (the same way each run).
        trunk = await call(cluster, tmp_path, DIRECT, calls=4, call_ids="cluster-trunk-%u")
        answered = await answering
    finally:
        sink.close()
    assert trunk.returncode == 0 and trunk.successful == 4, trunk.stdout[-3000:] + trunk.stderr[-1000:]
    assert answered.returncode == 0 and answered.successful == 4, answered.stdout[-3000:]
    assert sink.count >= 4 * 20, sink.count  # the trunk's audio reached the phone, call after call
    found = await records(cluster, 4)
    nodes = {node for node, _ in found}
    assert all(r.answered_by == "bernd" and r.disposition.value == "answered" for _, r in found), found
    other = next(name for name in cluster.names if name != registered_at)
    assert other in nodes, f"every call went to {nodes}; bernd registered at {registered_at}"


async def test_employees_registered_through_different_nodes_call_each_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    anna_port, bernd_port = free_port(), free_port()
    await register(cluster, tmp_path, "101", anna_port)
    await register(cluster, tmp_path, "bernd", bernd_port)
    where = {await node_of(cluster, "101"), await node_of(cluster, "bernd")}
    assert len(where) == 2, f"101 and bernd both registered at {where}: Kamailio's hash put them together"
    sink = RtpCounter()
    try:
        answering = phone(tmp_path, bernd_port, sink.port, calls=1)
        await asyncio.sleep(0.5)
        anna = await call(cluster, tmp_path, "102", caller="101")  # by extension, with her credentials
        answered = await answering
    finally:
        sink.close()
    assert anna.returncode == 0 and anna.successful == 1, anna.stdout[-3000:] + anna.stderr[-1000:]
    assert answered.returncode == 0 and answered.successful == 1, answered.stdout[-3000:]
    assert sink.count >= 20
    ((_, record),) = await records(cluster, 1)
    assert record.caller == "101" and record.answered_by == "bernd"


async def test_a_killed_node_phones_stay_reachable_and_calls_go_to_the_survivor(
    cluster: Cluster, tmp_path: Path
) -> None:
    phone_port = free_port()
    await register(cluster, tmp_path, "bernd", phone_port)
    dead = await node_of(cluster, "bernd")
    cluster.nodes[dead].kill()  # as a crash: no goodbye
    killed_at = time.monotonic()
    # Within the probing interval (1 s) and Kamailio's 2 s timeout the edge stops sending to it.
    sink = RtpCounter()
    try:
        answering = phone(tmp_path, phone_port, sink.port, calls=3)
        await asyncio.sleep(0.5)
        trunk = await call(cluster, tmp_path, DIRECT, calls=3, call_ids="cluster-kill-%u", hold_ms=500)
        answered = await answering
    finally:
        sink.close()
    assert trunk.returncode == 0 and trunk.successful == 3, trunk.stdout[-3000:] + trunk.stderr[-1000:]
    assert answered.successful == 3, answered.stdout[-3000:]
    found = await records(cluster, 3)
    assert {node for node, _ in found} == {n for n in cluster.names if n != dead}
    assert time.monotonic() - killed_at < 30


async def test_a_drained_node_finishes_its_call_and_new_calls_go_to_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    phone_port = free_port()
    await register(cluster, tmp_path, "bernd", phone_port)
    sink = RtpCounter()
    try:
        answering = phone(tmp_path, phone_port, sink.port, calls=4)
        await asyncio.sleep(0.5)
        long_call = asyncio.ensure_future(
            call(cluster, tmp_path, DIRECT, call_ids="cluster-drain-long-%u", hold_ms=6000)
        )
        busy = await _node_with_a_call(cluster)
        drained = await asyncio.to_thread(_durchwahl, cluster, "drain", "--node", busy)
        assert f"node {busy} is draining" in drained and "1 call(s)" in drained, drained
        async with asyncio.timeout(10):
            while options_status(cluster.node_ports[cluster.names.index(busy)]) != 503:
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # Kamailio's next probe marks it inactive
        more = await call(cluster, tmp_path, DIRECT, calls=3, call_ids="cluster-drain-new-%u", hold_ms=300)
        first = await long_call
        answered = await answering
    finally:
        sink.close()
    assert first.returncode == 0 and first.successful == 1, first.stdout[-3000:]  # completed normally
    assert more.returncode == 0 and more.successful == 3, more.stdout[-3000:]
    assert answered.successful == 4
    found = await records(cluster, 4)
    by_call = {r.call_id: node for node, r in found}
    assert [n for cid, n in by_call.items() if "drain-new" in cid] == [_other(cluster, busy)] * 3
    node = cluster.nodes[busy]
    await asyncio.to_thread(node.process.wait, 15)  # it exits once its call has ended
    assert node.process.returncode == 0
    assert "drained, stopping" in node.log_tail()


async def test_registrations_survive_a_redis_restart(cluster: Cluster, tmp_path: Path) -> None:
    """Redis is configured with an append-only file (fsync every second): bindings outlive its restart."""
    phone_port = free_port()
    await register(cluster, tmp_path, "bernd", phone_port)
    await asyncio.sleep(1.2)  # the append-only file is written once a second
    await asyncio.to_thread(cluster.restart_redis)
    assert await node_of(cluster, "bernd")  # still there, with its Path
    sink = RtpCounter()
    try:
        answering = phone(tmp_path, phone_port, sink.port, calls=1)
        await asyncio.sleep(0.5)
        trunk = await call(cluster, tmp_path, DIRECT, hold_ms=500)
        answered = await answering
    finally:
        sink.close()
    assert trunk.returncode == 0 and trunk.successful == 1, trunk.stdout[-3000:]
    assert answered.successful == 1


def _other(cluster: Cluster, name: str) -> str:
    return next(n for n in cluster.names if n != name)


async def _node_with_a_call(cluster: Cluster) -> str:
    async with asyncio.timeout(10):
        while True:
            for name in cluster.names:
                status = await asyncio.to_thread(_durchwahl, cluster, "status", "--node", name)
                if re.search(r"active calls: [1-9]", status):
                    return name
            await asyncio.sleep(0.1)


def _durchwahl(cluster: Cluster, *args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "durchwahl.routing.cli", *args, "--config", str(cluster.config)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=Path(__file__).resolve().parents[2],
    )
    return done.stdout + done.stderr


async def test_svcrack_against_two_nodes_through_kamailio_is_throttled_as_against_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two svcrack runs guess 101's password through the edge at once, their REGISTERs' To users chosen so
    that Kamailio's hash sends one run to each node. Every guess is counted by both nodes' guards: together
    they check as many guesses as one node alone would (throttle_after, then one per throttle_interval),
    and both then refuse the pair's further guesses unchecked."""
    from test_sipvicious import require_tool, run_tool

    from durchwahl.routing.security import GuardPolicy

    svcrack = require_tool("sipvicious_svcrack")
    dictionary = tmp_path / "words.txt"
    dictionary.write_text("".join(f"guess{i}\n" for i in range(60)), encoding="utf-8")

    def attack(to_user: str) -> asyncio.Future[str]:
        args = [svcrack, "-u", "101", "-e", to_user, "-d", str(dictionary), "-x", "127.0.0.1"]
        args += ["-P", str(free_port()), "-p", str(cluster.edge_port), "--maximumtime", "3", "127.0.0.1"]
        return asyncio.ensure_future(run_tool(args, tmp_path, timeout=90))

    started = time.monotonic()
    outputs = await asyncio.gather(attack("101"), attack("bernd"))
    elapsed = time.monotonic() - started
    assert not any("The password for" in out or "| guess" in out for out in outputs), outputs
    logs = {name: part.log_tail(10**7) for name, part in cluster.nodes.items()}
    # Security log lines of a request the edge relayed: the phone's address as source=, the edge's as edge=.
    checked = {
        name: len(re.findall(r"auth-failed source=\S+ .*edge=\S+ .*user=101 ", log))
        for name, log in logs.items()
    }
    refused = {
        name: len(re.findall(r"auth-unchecked source=\S+ .*edge=\S+ .*user=101 ", log))
        for name, log in logs.items()
    }
    # Both nodes got guesses (each run went to its own node) and both refused some unchecked: the pair was
    # throttled on each, whichever node had counted the failures (one may have checked none at all).
    assert all(refused.values()), f"checked {checked}, refused {refused}"
    policy = GuardPolicy()
    # What one node alone would check in this time: throttle_after, then one guess per throttle_interval.
    alone = policy.throttle_after + int(elapsed // policy.throttle_interval)
    assert sum(checked.values()) <= alone + 1, (checked, elapsed)  # without sharing: one such count per node


def test_the_shipped_examples_are_valid(tmp_path: Path) -> None:
    """examples/cluster: the office passes check-config with its [cluster] table, and Kamailio accepts the
    edge's configuration (kamailio -c)."""
    import subprocess

    from durchwahl.routing.cluster_run import KAMAILIO_CONFIG, binary
    from durchwahl.routing.directory_file import read_directory

    directory, problems, _ = read_directory(CLUSTER_OFFICE)
    assert directory is not None and not problems, problems
    assert directory.cluster is not None and directory.cluster.edges
    require("kamailio")
    (tmp_path / "nodes.list").write_text("1 sip:127.0.0.1:5071\n")
    argv = [binary("kamailio"), "-c", "-f", str(KAMAILIO_CONFIG), "-l", f"udp:127.0.0.1:{free_port()}"]
    argv += ["-Y", str(tmp_path), "-A", f'DS_LIST="{tmp_path / "nodes.list"}"']
    checked = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "config file ok" in checked.stdout + checked.stderr, checked.stderr[-2000:]
