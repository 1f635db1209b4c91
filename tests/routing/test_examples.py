"""The examples in examples/ run as documented (CI runs them here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from phones import Phone
from test_server import copy_office

from durchwahl.routing.dialstring import parse_dialstring
from durchwahl.routing.resolver import FromEmployee, FromTrunk, ToEmployee
from durchwahl.routing.server import Server

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


async def test_crm_hook_end_to_end_a_known_customer_skips_the_greeting(tmp_path: Path) -> None:
    """The provider delivers a call from a known customer: the hook sends it straight to 101's phone."""
    from phones import Script

    from durchwahl.sipcore import Endpoint

    config = copy_office(tmp_path)
    holder: list[Server] = []
    server = Server(config, listen=("udp:127.0.0.1:0",), resolver_hook=embed.crm_hook(lambda: holder[0]))
    holder.append(server)
    async with server, Endpoint() as provider:
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port, script=Script("answer")).start()
        try:
            await provider.listen("udp:127.0.0.1:0")
            flow = provider.flow_to("127.0.0.1", port)
            invite = provider.make_request(
                "INVITE",
                "sip:+49301234567@office.example",
                flow,
                from_="<sip:+4989555123@provider.example>",
                to="<sip:+49301234567@office.example>",
                body=anna.sdp,
                content_type="application/sdp",
            )
            outgoing = provider.send_request(invite, flow)
            # Without the hook the call would be answered by the 3 s greeting and only then reach the
            # number's default (a group with 101): the hook makes 101 ring at once.
            async with asyncio.timeout(1.5):
                ringing = await anna.next_call()
            assert ringing.request.from_.uri.user == "+4989555123"  # type: ignore[union-attr]
            async with asyncio.timeout(5):
                answer = await outgoing
            assert answer.status == 200
        finally:
            await anna.close()
