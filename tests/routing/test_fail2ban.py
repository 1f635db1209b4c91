"""fail2ban (Debian ``fail2ban``) reads the security log: over the log of an svcrack run, the example filter
matches every failed attempt, each with the attacker's address, and no line of a phone that registers
correctly meanwhile; the example jail is a valid fail2ban configuration.

The server writes its security log to a file (``[server] security_log``); svcrack guesses 101's password
from 127.0.0.1 (see test_sipvicious.py for how it is run) while a phone on 127.0.0.2 keeps registering.
Every REGISTER with credentials svcrack sends is counted on the wire (a tracer on the server's endpoint,
retransmissions once): each is a failed attempt, checked and wrong or refused unchecked while throttled or
blocked. fail2ban is a system tool: in CI (``CI`` set) a missing install fails these tests, elsewhere they
skip.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_auth_guard import EXAMPLES, OFFICE, register_with
from test_sipvicious import ATTACKER, PHONE, require_tool, run_tool, svcrack_args

from durchwahl.routing.monitoring import open_security_log
from durchwahl.routing.monitoring_config import SecurityLogTarget
from durchwahl.routing.security import FailureGuard, GuardPolicy
from durchwahl.routing.security_log import Relayed, SecurityLog
from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint
from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.message import Request, parse_message
from durchwahl.sipcore.transport import Flow

FAIL2BAN = EXAMPLES / "fail2ban"
#: The guard throttles after 3 failures and blocks after 6, so the run has every kind of failed attempt.
POLICY = GuardPolicy(
    throttle_after=3,
    throttle_interval=0.1,
    block_after=6,
    block_for=600,
    challenge_rate=1000,
    challenge_burst=1000,
)


def require_fail2ban() -> tuple[str, Path]:
    """fail2ban-regex and the folder of fail2ban's shipped filters (for common.conf)."""
    found = shutil.which("fail2ban-regex")
    common = Path("/etc/fail2ban/filter.d/common.conf")
    if found is None or not common.is_file():
        message = "fail2ban is not installed (apt-get install fail2ban; CI installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found, common.parent


def filter_folder(tmp_path: Path, shipped: Path) -> Path:
    """Our filter beside fail2ban's common.conf, as it is once installed into /etc/fail2ban/filter.d."""
    folder = tmp_path / "filter.d"
    folder.mkdir()
    shutil.copy(shipped / "common.conf", folder / "common.conf")
    shutil.copy(FAIL2BAN / "filter.d" / "durchwahl.conf", folder / "durchwahl.conf")
    return folder


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "office.toml"
    path.write_text(
        OFFICE.replace('state_dir = "var"\n', 'state_dir = "var"\nsecurity_log = "security.log"\n')
    )
    shutil.copy(EXAMPLES / "greeting.wav", tmp_path / "greeting.wav")
    async with Server(path, control=False) as server:
        server.registrar.guard = FailureGuard(POLICY)
        yield server


class Attempts:
    """The attacker's REGISTERs with credentials as they reach the server, once each (by branch)."""

    def __init__(self) -> None:
        self.branches: set[str] = set()

    def __call__(self, way: str, data: bytes, flow: Flow) -> None:
        if way != "in" or flow.remote[0] != ATTACKER:
            return
        try:
            message = parse_message(data)
        except SipParseError:
            return
        if isinstance(message, Request) and message.method == "REGISTER" and message.get("authorization"):
            self.branches.add(message.branch or "")


async def test_fail2ban_matches_every_failed_attempt_and_no_legitimate_registration(
    server: Server, tmp_path: Path
) -> None:
    regex, shipped = require_fail2ban()
    svcrack = require_tool("sipvicious_svcrack")
    attempts = Attempts()
    server.endpoint.add_tracer(attempts)
    dictionary = tmp_path / "words.txt"
    dictionary.write_text("".join(f"guess{i}\n" for i in range(120)), encoding="utf-8")
    port = server.addresses[0][2]
    registered: list[int] = []
    async with Endpoint() as phone:  # the office's phone, registering correctly throughout
        await phone.listen(f"udp:{PHONE}:0")
        flow = phone.flow_to("127.0.0.1", port)
        attack = asyncio.ensure_future(
            run_tool(svcrack_args(svcrack, _Target(port), dictionary), tmp_path, timeout=90)
        )
        n = 0
        while not attack.done():
            n += 1
            registered.append((await register_with(phone, flow, "bernd", "bernd-secret", n)).status)
            await asyncio.sleep(0.2)
        await attack
    assert len(registered) >= 3 and set(registered) == {200}, registered
    assert len(attempts.branches) >= 20, "svcrack made too few attempts to show anything"

    log = tmp_path / "security.log"
    lines = log.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if f"source={PHONE} " in line]  # a correct registration is silent
    events = {line.split(": ", 1)[1].split(" ", 1)[0] for line in lines}
    assert {"auth-failed", "throttled", "blocked", "auth-unchecked"} <= events, events

    folder = filter_folder(tmp_path, shipped)
    done = subprocess.run(
        [regex, "-o", "ip", str(log), str(folder / "durchwahl.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    banned = done.stdout.split()
    assert len(banned) == len(attempts.branches), (len(banned), len(attempts.branches), done.stdout[-2000:])
    assert set(banned) == {ATTACKER}


class _Target:
    """What ``svcrack_args`` needs of the server under attack (see test_sipvicious)."""

    def __init__(self, port: int) -> None:
        self.port = port


def test_the_example_jail_is_a_valid_fail2ban_configuration(tmp_path: Path) -> None:
    require_fail2ban()
    client = shutil.which("fail2ban-client")
    assert client is not None
    config = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", config)
    shutil.copy(FAIL2BAN / "filter.d" / "durchwahl.conf", config / "filter.d" / "durchwahl.conf")
    log = tmp_path / "security.log"
    log.write_text("")
    jail = (FAIL2BAN / "jail.d" / "durchwahl.conf").read_text(encoding="utf-8")
    jail = "\n".join(
        f"logpath  = {log}" if line.startswith("logpath ") else line for line in jail.splitlines()
    )
    (config / "jail.d" / "durchwahl.conf").write_text(jail + "\n", encoding="utf-8")
    (config / "jail.d" / "zz-only-durchwahl.conf").write_text("[sshd]\nenabled = false\n", encoding="utf-8")
    tested = subprocess.run(
        [client, "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert tested.returncode == 0 and "configuration test is successful" in tested.stdout + tested.stderr, (
        tested
    )
    dumped = subprocess.run(
        [client, "-c", str(config), "-d"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "['add', 'durchwahl', 'auto']" in dumped.stdout, dumped.stdout[-2000:]
    assert f"['set', 'durchwahl', 'addlogpath', '{log}', 'head']" in dumped.stdout


def test_a_cluster_node_s_lines_name_the_phone_the_edge_relayed(tmp_path: Path) -> None:
    """Behind an edge proxy the lines carry the phone's address as the edge reported it, and ``edge=``:
    the filter bans the phone, never the edge (which would cut off every phone)."""
    regex, shipped = require_fail2ban()
    log = tmp_path / "security.log"
    handler = open_security_log(SecurityLogTarget(path=log))
    logger = logging.getLogger("test.fail2ban.relayed")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        security = SecurityLog(logger)
        relayed = Relayed("UDP", ("198.51.100.7", 5071), ("10.0.0.2", 5060))
        security.auth_failed(relayed, "REGISTER", "101", "wrong password")
        security.auth_unchecked(relayed, "INVITE", "101", "throttled")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert (
        "auth-failed source=198.51.100.7 port=5071 transport=UDP edge=10.0.0.2:5060 method=REGISTER "
        in lines[0]
    )
    folder = filter_folder(tmp_path, shipped)
    done = subprocess.run(
        [regex, "-o", "ip", str(log), str(folder / "durchwahl.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["198.51.100.7", "198.51.100.7"]
