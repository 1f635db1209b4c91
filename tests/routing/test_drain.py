"""A node's health answer and its drain, as an edge proxy and an administrator see them: OPTIONS 200 or 503,
new calls refused while the calls in progress finish, and `durchwahl serve` exiting once they have."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from phones import Phone, Script
from test_server import copy_office

from durchwahl.routing.cluster_run import free_port
from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint, Response
from durchwahl.sipcore.ua import CallFailed


async def options(server_port: int) -> Response:
    async with Endpoint() as edge:
        await edge.listen("udp:127.0.0.1:0")
        flow = edge.flow_to("127.0.0.1", server_port)
        probe = edge.make_request(
            "OPTIONS", f"sip:127.0.0.1:{server_port}", flow, from_="<sip:dispatcher@localhost>", to="<sip:x>"
        )
        return await edge.request(probe, flow)


async def test_options_says_200_then_503_with_the_reason_while_the_node_takes_no_new_work(
    tmp_path: Path,
) -> None:
    overloaded = False
    async with Server(copy_office(tmp_path), listen=("udp:127.0.0.1:0",), control=False) as server:
        server.add_health_check(lambda: "overloaded" if overloaded else None)
        port = server.addresses[0][2]
        assert (await options(port)).status == 200
        overloaded = True
        busy = await options(port)
        assert (busy.status, busy.reason, busy.get("retry-after")) == (
            503,
            "Service Unavailable (overloaded)",
            "30",
        )
        overloaded = False
        server.drain()
        draining = await options(port)
        assert draining.status == 503 and draining.reason == "Service Unavailable (draining)"


async def test_a_draining_node_finishes_its_call_and_refuses_new_ones(tmp_path: Path) -> None:
    async with Server(copy_office(tmp_path), listen=("udp:127.0.0.1:0",), control=False) as server:
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port, script=Script("answer", delay=0.05)).start()
        bernd = await Phone("bernd", "bernd-102-secret", port).start()
        try:
            call = bernd.dial("101")
            async with asyncio.timeout(5):
                await call.wait_answered()
            assert server.drain() == 1
            refused = bernd.dial("101")
            async with asyncio.timeout(5):
                try:
                    await refused.wait_answered()
                except CallFailed as exc:
                    status = exc.status
                else:
                    status = 200
            assert status == 503  # the edge tries another node
            await asyncio.sleep(0.3)
            assert not server.drained.is_set()  # the call in progress goes on
            assert len(server.b2bua.calls()) == 1
            call.bye()
            async with asyncio.timeout(5):
                await server.drained.wait()
        finally:
            await anna.close()
            await bernd.close()


async def test_durchwahl_drain_makes_serve_exit_once_its_calls_have_ended(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durchwahl.routing.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"udp:127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        async with asyncio.timeout(15):
            while (await options(port)).status != 200:
                await asyncio.sleep(0.1)
        drained = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "durchwahl.routing.cli", "drain", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        assert drained.returncode == 0, drained.stderr
        assert "draining" in drained.stdout and "0 call(s)" in drained.stdout
        code = await asyncio.to_thread(serve.wait, 15)
        output = serve.stdout.read().decode() if serve.stdout else ""
        assert code == 0, output
        assert "durchwahl: drained, stopping" in output
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
