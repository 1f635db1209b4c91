"""Idle TCP connections against ``durchwahl serve`` under a small descriptor limit (a subprocess, loopback):
registrations and calls keep working, the connections are closed, and the log stays a few lines. Scaled down
from the full-size run (2,000 connections under 1,024 descriptors: ``bench/bench_tcp_flood.py``). And a
phone's TCP connection outlives the idle time while its registration lasts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from flood import free_port, register_tcp, run_flood, write_office

from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint


async def test_idle_connections_under_a_descriptor_limit_leave_registrations_and_calls_working(
    tmp_path: Path,
) -> None:
    # 256 descriptors: the derived caps are 64 connections in all and 32 per source.
    result = await run_flood(
        tmp_path, connections=400, nofile=256, wait_after=1.5, extra_config="\ntcp_message_seconds = 1"
    )
    assert result.connected >= 300, result
    assert result.open_during <= 32, result  # the rest were accepted and closed at once
    assert result.register_udp == (200, 200) and result.register_tcp == 200, result
    assert result.call == 200 and result.trunk_call == 200, result
    assert result.open_after == 0, result  # none ever sent a message: closed after tcp_message_seconds
    assert result.tracebacks == 0 and result.log_lines < 25, result.log_tail


async def test_a_tcp_cap_above_the_descriptor_limit_costs_log_lines_not_a_traceback_storm(
    tmp_path: Path,
) -> None:
    """Misconfigured (caps above what the descriptors allow): accepting runs out of descriptors. One line per
    condition, no traceback; once the idle connections are closed, everything works again."""
    extra = "\ntcp_max_connections = 5000\ntcp_max_connections_per_source = 5000\ntcp_message_seconds = 1"
    result = await run_flood(
        tmp_path, connections=400, nofile=256, wait_after=3.5, extra_config=extra, check_after=True
    )
    assert result.tracebacks == 0 and result.log_lines < 25, result.log_tail
    assert "cannot accept TCP connections" in result.log_tail
    assert result.open_after == 0, result
    assert result.register_udp == (200, 200) and result.register_tcp == 200, result
    assert result.call == 200 and result.trunk_call == 200, result


async def test_a_phones_tcp_connection_outlives_the_idle_time_while_it_is_registered(tmp_path: Path) -> None:
    port = free_port()
    config = write_office(tmp_path, port, "\ntcp_idle_seconds = 1")
    async with Server(config, control=False) as server:
        phone = Endpoint(user_agent="tcp-phone")
        await phone.listen("tcp:127.0.0.1:0")
        visitor = Endpoint(user_agent="visitor")  # sends one OPTIONS, registers nothing
        await visitor.listen("tcp:127.0.0.1:0")
        try:
            assert (await register_tcp("103", "carla-103-secret", port, phone)).status == 200
            flow = visitor.flow_to("127.0.0.1", port, "TCP")
            options = visitor.make_request(
                "OPTIONS", "sip:office.example", flow, from_="<sip:v@x>", to="<sip:o@x>"
            )
            assert (await visitor.request(options, flow)).status == 200
            tcp = server.endpoint._transports.tcp[0]
            phone_id, _ = sorted(tcp._by_id)  # connection ids count up: the phone's came first
            await asyncio.sleep(2.5)  # past the idle time
            assert list(tcp._by_id) == [phone_id]  # the visitor's was closed, the registered phone's held
            assert phone._transports.tcp[0]._by_remote and not visitor._transports.tcp[0]._by_remote
        finally:
            await phone.close()
            await visitor.close()
