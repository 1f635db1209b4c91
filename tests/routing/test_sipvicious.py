"""SIPVicious (PyPI ``sipvicious``) against the registrar: svwar must find no extension, svcrack no password.

Both tools run as subprocesses, bounded by a subprocess timeout, sending to 127.0.0.1 only, with ``-x`` set
so they never look up their own address (without it they resolve the host name) and never with
``--reportback``/``-R`` or ``--autogetip``/``-A`` (the latter connects to an outside host). No ``--save``:
nothing is written under ``~/.sipvicious`` (HOME is the test's temporary folder anyway). Note that
sipvicious 0.3.8 ignores ``-b``: its socket binds to all interfaces on the ``-P`` port for the run (it only
ever sends to the target), so its packets reach us from 127.0.0.1.

The legitimate phone therefore runs on 127.0.0.2 (still the loopback interface), a *different source* for
the brute-force guard than the attacker on 127.0.0.1.

sipvicious is a test-only tool: in CI (``CI`` set) a missing install fails these tests, elsewhere they skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sipp import free_port
from test_registrar_service import SECRET, USERS, write_directory

from durchwahl.routing.location import InMemoryLocationStore
from durchwahl.routing.registrar_service import RegistrarService
from durchwahl.routing.security import Admission, FailureGuard, GuardPolicy
from durchwahl.sipcore import Endpoint, Response
from durchwahl.sipcore.auth import answer_challenge
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.transport import Flow

CORE = CoreConfig(allowed_methods=("REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL"))
ATTACKER = "127.0.0.1"
PHONE = "127.0.0.2"


def require_tool(name: str) -> str:
    """The path of a sipvicious console script; fails in CI when missing, skips elsewhere."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed (pip install sipvicious; test-only tool)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    return found


async def run_tool(args: list[str], cwd: Path, timeout: float) -> str:
    """Run a sipvicious tool; returns stdout + stderr (its logging goes to stderr)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"{args[0]} did not finish within {timeout}s:\n{(out + err).decode(errors='replace')}")
    return (out + err).decode(errors="replace")


@dataclass
class Server:
    service: RegistrarService
    endpoint: Endpoint
    port: int


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    policy: GuardPolicy = getattr(request, "param", GuardPolicy())
    # svcrack computes MD5 only and takes the first challenge (like SIPp): offer MD5 so that its guesses are
    # real guesses, not answers that fail for the wrong algorithm.
    service = RegistrarService(
        write_directory(tmp_path),
        InMemoryLocationStore(),
        secret=SECRET,
        algorithms=("MD5",),
        guard=FailureGuard(policy),
    )
    async with Endpoint(service.handle, core=CORE) as endpoint:
        _, port = await endpoint.listen("udp:127.0.0.1:0")
        yield Server(service, endpoint, port)


async def register(client: Endpoint, flow: Flow, user: str, password: str, n: int) -> Response:
    to = f"<sip:{user}@office.example>"

    async def send(cseq: int, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        request = client.make_request(
            "REGISTER",
            "sip:office.example",
            flow,
            from_=to,
            to=to,
            call_id=f"legit-{n}",
            cseq=cseq,
            headers=[("Expires", "600"), *headers],
        )
        async with asyncio.timeout(5):
            return await client.request(request, flow)

    first = await send(1)
    assert first.status == 401, first
    creds = answer_challenge(
        first.www_authenticate[0], "REGISTER", "sip:office.example", user, password, cnonce=f"c{n}"
    )
    return await send(2, (("Authorization", str(creds)),))


# ------------------------------------------------------------------------------------------------ svwar


async def test_svwar_finds_no_extensions(server: Server, tmp_path: Path) -> None:
    svwar = require_tool("sipvicious_svwar")
    common = [
        svwar,
        "-b",
        "127.0.0.1",
        "-x",
        "127.0.0.1",
        "-P",
        str(free_port()),
        "-p",
        str(server.port),
        "--maximumtime",
        "3",
        "-e",
        "95-125",  # includes the real extensions 100–121
    ]
    # --force: scan even though an unknown extension already got a 401 (the sanity check svwar does first).
    forced = await run_tool([*common, "--force", "127.0.0.1"], tmp_path, timeout=60)
    assert "found nothing" in forced, forced
    assert "exists" not in forced and "Extension" not in forced, forced
    # Without --force svwar gives up at once: an unknown extension gets the same 401 as any other.
    checked = await run_tool([*common, "127.0.0.1"], tmp_path, timeout=60)
    assert "authentication request for an unknown extension" in checked, checked
    assert "exists" not in checked, checked


# ---------------------------------------------------------------------------------------------- svcrack

PERMISSIVE = GuardPolicy(throttle_after=10_000, block_after=10_000)
STRICT = GuardPolicy(throttle_after=3, throttle_interval=0.1, block_after=6, block_for=600)


def svcrack_args(tool: str, server: Server, dictionary: Path) -> list[str]:
    return [
        tool,
        "-u",
        "101",
        "-d",
        str(dictionary),
        "-b",
        ATTACKER,
        "-x",
        ATTACKER,
        "-P",
        str(free_port()),
        "-p",
        str(server.port),
        "--maximumtime",
        "3",
        "127.0.0.1",
    ]


@pytest.mark.parametrize("server", [PERMISSIVE], indirect=True)
async def test_svcrack_control_finds_a_password_when_nothing_stops_it(server: Server, tmp_path: Path) -> None:
    """Without the guard, svcrack talks to us successfully: the strict test below is not vacuous."""
    svcrack = require_tool("sipvicious_svcrack")
    dictionary = tmp_path / "words.txt"
    dictionary.write_text("".join(f"guess{i}\n" for i in range(5)) + USERS["101"] + "\n", encoding="utf-8")
    output = await run_tool(svcrack_args(svcrack, server, dictionary), tmp_path, timeout=60)
    assert re.search(rf"\|\s*101\s*\|\s*{USERS['101']}\s*\|", output), output  # its result table


@pytest.mark.parametrize("server", [STRICT], indirect=True)
async def test_svcrack_is_blocked_and_other_sources_keep_registering(server: Server, tmp_path: Path) -> None:
    svcrack = require_tool("sipvicious_svcrack")
    dictionary = tmp_path / "words.txt"
    # 300 wrong guesses; the run ends when they are used up (plus svcrack's own 10 s socket timeout).
    dictionary.write_text("".join(f"guess{i}\n" for i in range(300)), encoding="utf-8")

    async with Endpoint() as phone:  # a legitimate phone on another source address
        await phone.listen(f"udp:{PHONE}:0")
        flow = phone.flow_to("127.0.0.1", server.port)
        attack = asyncio.ensure_future(run_tool(svcrack_args(svcrack, server, dictionary), tmp_path, 60))
        answers: list[int] = []
        n = 0
        while not attack.done():
            n += 1
            answers.append((await register(phone, flow, "102", USERS["102"], n)).status)
            await asyncio.sleep(0.2)
        output = await attack
        after = await register(phone, flow, "103", USERS["103"], n + 1)

    assert "Password" not in output and "The password for" not in output, output  # no result table
    assert server.service.guard.admit(ATTACKER, server.service._clock(), "101") is Admission.BLOCKED
    assert server.service.guard.admit(PHONE, server.service._clock(), "101") is Admission.CHECK
    assert len(answers) >= 5 and set(answers) == {200}, answers  # served throughout the attack
    assert after.status == 200
    assert await server.service.contacts("101") == []
