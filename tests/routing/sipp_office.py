"""SIPp as employee 102 of the test office (``test_server.copy_office``) in the interop flows: SIPp registers
bernd with digest from a port where a SIPp UAS then answers bernd's calls. On 127.0.0.1, each SIPp bounded
by -timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipp import SippResult, free_port, run_sipp

from durchwahl.routing.server import Server

HERE = Path(__file__).parent
#: What every SIPp run gets: loopback, one UDP socket, no keyboard, and a bounded wait for each message.
BOUNDS = ("-i", "127.0.0.1", "-t", "u1", "-timeout", "20s", "-timeout_error", "-nostdin")


async def register_bernd(server: Server, tmp_path: Path) -> int:
    """SIPp registers bernd (102) at ``server`` from a free port, the port returned: where a SIPp UAS is to
    answer bernd's calls (:func:`start_uas`)."""
    users = tmp_path / "bernd.csv"
    users.write_text("SEQUENTIAL\nbernd;[authentication username=bernd password=bernd-102-secret]\n")
    port = server.addresses[0][2]
    uas_port = free_port()
    registered = await run_sipp(
        [
            "-sf",
            str(HERE / "sipp_register.xml"),
            "-inf",
            str(users),
            f"127.0.0.1:{port}",
            "-p",
            str(uas_port),
            "-m",
            "1",
            *BOUNDS,
        ],
        tmp_path,
        timeout=30,
    )
    assert registered.returncode == 0, registered.stdout[-2000:]
    assert await server.registrar.contacts("bernd")
    return uas_port


async def start_uas(args: list[str], tmp_path: Path) -> asyncio.Future[SippResult]:
    """A SIPp run with ``args`` and :data:`BOUNDS` in the background, after half a second to bind its port."""
    uas = asyncio.ensure_future(run_sipp([*args, *BOUNDS], tmp_path, timeout=30))
    await asyncio.sleep(0.5)  # let the UAS bind its port
    return uas
