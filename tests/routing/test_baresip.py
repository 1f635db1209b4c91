"""Interop with a real softphone: baresip (Debian ``baresip``) registers with the server and unregisters.

baresip stays on loopback (``net_interface 127.0.0.1``), loads no audio device, and quits by itself after a
bounded time. Fails (does not skip) in CI when baresip is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from sipp import free_port
from test_server import copy_office

from routing.server import Server

BARESIP = shutil.which("baresip")


def require_baresip() -> str:
    if BARESIP is None:
        if os.environ.get("CI"):
            pytest.fail("baresip is not installed (Debian package baresip); CI must install it")
        pytest.skip("baresip is not installed (apt-get install baresip)")
    return BARESIP


def baresip_config(folder: Path, *, sip_port: int, cons_port: int, account: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config").write_text(
        "\n".join(
            [
                "poll_method epoll",
                f"sip_listen 127.0.0.1:{sip_port}",
                "net_interface 127.0.0.1",
                "module_path /usr/lib/baresip/modules",
                "module g711.so",
                "module_tmp uuid.so",
                "module_tmp account.so",
                "module_app menu.so",
                "module cons.so",
                f"cons_listen 127.0.0.1:{cons_port}",
                "audio_player aufile,/dev/null",
                "audio_source aufile,/dev/null",
                "",
            ]
        ),
        encoding="utf-8",
    )
    (folder / "accounts").write_text(account + "\n", encoding="utf-8")
    return folder


@pytest.mark.interop
async def test_baresip_registers_and_unregisters(tmp_path: Path) -> None:
    binary = require_baresip()
    config = copy_office(tmp_path)
    # baresip 1.0 (libre) gives up with ENOSYS when any challenge in the 401 is SHA-256: offer MD5 only.
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('auth_algorithms = ["SHA-256", "MD5"]', 'auth_algorithms = ["MD5"]'))
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        folder = baresip_config(
            tmp_path / "baresip",
            sip_port=free_port(),
            cons_port=free_port(),
            account=f'<sip:101@office.example>;auth_pass=anna-101-secret;outbound="sip:127.0.0.1:{port}"',
        )
        process = await asyncio.create_subprocess_exec(
            binary,
            "-f",
            str(folder),
            "-t",
            "20",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            bindings = []
            for _ in range(100):
                bindings = await server.registrar.contacts("101")
                if bindings:
                    break
                await asyncio.sleep(0.05)
            assert len(bindings) == 1, "baresip did not register within 5 s"
            assert bindings[0].flow is not None and bindings[0].flow.remote[0] == "127.0.0.1"
            process.send_signal(signal.SIGTERM)  # baresip unregisters on the way out
            out, _ = await asyncio.wait_for(process.communicate(), 10.0)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for _ in range(40):
            if not await server.registrar.contacts("101"):
                break
            await asyncio.sleep(0.05)
        assert await server.registrar.contacts("101") == [], out.decode(errors="replace")[-2000:]


async def _wait_for(predicate: object, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.interop
async def test_two_baresip_phones_call_each_other_by_extension(tmp_path: Path) -> None:
    """bernd (102) dials 101 from baresip's console; 101, another baresip, answers; bernd hangs up."""
    import socket

    binary = require_baresip()
    config = copy_office(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('auth_algorithms = ["SHA-256", "MD5"]', 'auth_algorithms = ["MD5"]'))
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        outbound = f'outbound="sip:127.0.0.1:{port}"'
        cons_b = free_port()
        phones = {
            "101": baresip_config(
                tmp_path / "anna",
                sip_port=free_port(),
                cons_port=free_port(),
                account=f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound};answermode=auto",
            ),
            "bernd": baresip_config(
                tmp_path / "bernd",
                sip_port=free_port(),
                cons_port=cons_b,
                account=f"<sip:bernd@office.example>;auth_pass=bernd-102-secret;{outbound}",
            ),
        }
        processes = [
            await asyncio.create_subprocess_exec(
                binary,
                "-f",
                str(folder),
                "-t",
                "30",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            for folder in phones.values()
        ]
        console = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:

            async def registered() -> bool:
                return all([await server.registrar.contacts(user) for user in phones])

            for _ in range(100):
                if await registered():
                    break
                await asyncio.sleep(0.05)
            assert await registered(), "the baresip phones did not register"
            console.sendto(b"/dial 101\n", ("127.0.0.1", cons_b))
            assert await _wait_for(lambda: server.b2bua.active, 5.0), "no call reached the B2BUA"
            await asyncio.sleep(1.0)  # answered automatically by 101's baresip
            console.sendto(b"/hangup\n", ("127.0.0.1", cons_b))
            assert await _wait_for(lambda: not server.b2bua.active, 5.0), "the call did not end"
            for process in processes:
                process.send_signal(signal.SIGTERM)
            outputs = [
                (await asyncio.wait_for(p.communicate(), 10.0))[0].decode(errors="replace") for p in processes
            ]
        finally:
            console.close()
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    anna, bernd = outputs
    assert "Call established: sip:bernd@office.example" in anna, anna[-2000:]
    assert "Call established: sip:101@office.example" in bernd, bernd[-2000:]
