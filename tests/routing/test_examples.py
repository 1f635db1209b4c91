"""The examples in examples/ run as documented (CI runs them here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from phones import Phone
from test_server import copy_office

from routing.dialstring import parse_dialstring
from routing.resolver import FromEmployee, FromTrunk, ToEmployee
from routing.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import embed


async def test_embedding_example_starts_and_stops_on_time(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    async with asyncio.timeout(5):
        lines = await embed.run(str(config), seconds=0.5, listen=("udp:127.0.0.1:0",))
    assert lines == []  # nobody registered in this run, and it ended by itself


async def test_embedding_example_logs_a_phone_registering(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    server = Server(config, listen=("udp:127.0.0.1:0",))
    lines: list[str] = []
    embed.log_events(server, lines)
    async with server:
        phone = await Phone("101", "anna-101-secret", server.addresses[0][2]).start()
        await phone.close()
    assert lines and lines[0].startswith("registered sip:101@office.example at ")


async def test_crm_hook_routes_a_known_customer_to_the_account_manager(tmp_path: Path) -> None:
    server = Server(copy_office(tmp_path), listen=("udp:127.0.0.1:0",))
    hook = embed.crm_hook(lambda: server)
    dialled = parse_dialstring("+49301234567")
    route = await hook(dialled, FromTrunk("provider", calling="+4989555123"))
    assert isinstance(route, ToEmployee) and route.employee.extension == "101"
    assert await hook(dialled, FromTrunk("provider", calling="+4930999")) is None
    assert await hook(dialled, FromEmployee("102")) is None
    await server.store.close()
