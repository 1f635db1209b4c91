"""The greeting flow against real SIPp: a SIPp "trunk" calls the company number and, while the greeting plays,
dials extension 102 by replaying SIPp's own RFC 4733 captures; the call reaches a SIPp UAS that registered as
employee 102 (bernd) and is hung up by the trunk. Everything on 127.0.0.1, each SIPp bounded by -timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from sipp import free_port, require_sipp, run_sipp
from sipp_office import BOUNDS, HERE, register_bernd, start_uas
from test_server import copy_office

from durchwahl.routing.server import Server

CAPTURES = Path("/usr/share/sip-tester")


@pytest.mark.interop
@pytest.mark.parametrize("run", range(2))  # repeated runs: 0 failed calls each time
async def test_sipp_trunk_dials_an_extension_during_the_greeting(tmp_path: Path, run: int) -> None:
    require_sipp()
    assert (CAPTURES / "dtmf_2833_1.pcap").exists(), "sip-tester's DTMF captures are missing"
    config = copy_office(tmp_path, ("MD5",))  # SIPp answers MD5 only, and only the first challenge
    text = config.read_text(encoding="utf-8")
    # Without (valid) digits the call would go to 103, who is not registered: only the digits reach 102.
    assert 'default = "200"' in text
    config.write_text(text.replace('default = "200"', 'default = "103"', 1))
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        uas_port = await register_bernd(server, tmp_path)
        uas = await start_uas(["-sn", "uas", "-p", str(uas_port), "-m", "1"], tmp_path)
        trunk = await run_sipp(
            [
                "-sf",
                str(HERE / "sipp_trunk_dtmf.xml"),
                f"127.0.0.1:{port}",
                "-p",
                str(free_port()),
                "-mi",
                "127.0.0.1",
                "-mp",
                str(free_port()),
                "-m",
                "1",
                *BOUNDS,
            ],
            tmp_path,
            timeout=30,
        )
        employee = await uas
    assert trunk.returncode == 0 and trunk.failed == 0, trunk.stdout[-3000:] + trunk.stderr[-1500:]
    assert employee.returncode == 0 and employee.successful == 1, employee.stdout[-3000:]
