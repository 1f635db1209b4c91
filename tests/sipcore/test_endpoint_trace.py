"""The endpoint's tracing hook (``Endpoint.add_tracer``) over loopback sockets: every message in (raw, before
parsing) and out (the bytes the peer gets, retransmissions too), on UDP and TCP."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_endpoint import Peer, invite_bytes, running

from durchwahl.sipcore import Flow, IncomingRequest, Response

Entry = tuple[str, bytes, Flow]


class Recorder:
    """A tracer keeping what it is told."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def record(self, direction: str, data: bytes, flow: Flow) -> None:
        self.entries.append((direction, data, flow))

    def out(self) -> list[bytes]:
        return [data for direction, data, _ in self.entries if direction == "out"]


async def raw(peer: Peer, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(peer.loop.sock_recv(peer.sock, 65535), timeout)


def options_bytes(port: int, transport: str = "UDP") -> bytes:
    return (
        invite_bytes(port)
        .replace(b"SIP/2.0/UDP", f"SIP/2.0/{transport}".encode())
        .replace(b"INVITE sip", b"OPTIONS sip")
        .replace(b"1 INVITE", b"1 OPTIONS")
    )


async def test_udp_trace_sees_garbage_request_response_and_2xx_retransmission() -> None:
    trace = Recorder()

    def handler(incoming: IncomingRequest) -> None:
        incoming.respond(180)
        incoming.respond(200, headers=[("Contact", "<sip:101@127.0.0.1>")])  # never ACKed: retransmitted

    async with running(handler) as (endpoint, port):
        endpoint.add_tracer(trace.record)
        peer = Peer()
        garbage = b"\x00\xff garbage"
        await peer.send(garbage, port)
        invite = invite_bytes(port)
        await peer.send(invite, port)
        ringing, ok, again = await raw(peer), await raw(peer), await raw(peer, timeout=1.0)
        assert ringing.startswith(b"SIP/2.0 180 ") and ok.startswith(b"SIP/2.0 200 ") and again == ok
        received = [(direction, data) for direction, data, _ in trace.entries[:5]]
        assert received == [("in", garbage), ("in", invite), ("out", ringing), ("out", ok), ("out", ok)]
        flows = {flow for _, _, flow in trace.entries}
        assert flows == {Flow("UDP", ("127.0.0.1", port), ("127.0.0.1", peer.port))}
        # Removed by equality: a bound method passed again is the same tracer.
        endpoint.remove_tracer(trace.record)
        endpoint.remove_tracer(trace.record)  # not there any more: nothing happens
        count = len(trace.entries)
        assert await raw(peer, timeout=1.0) == ok  # still retransmitted, no longer traced
        assert len(trace.entries) == count
        peer.close()


async def test_udp_trace_sees_client_transaction_retransmission() -> None:
    trace = Recorder()
    async with running(None) as (endpoint, _):
        endpoint.add_tracer(trace.record)
        peer = Peer()  # never answers: Timer E retransmits the request
        flow = endpoint.flow_to("127.0.0.1", peer.port)
        request = endpoint.make_request(
            "OPTIONS", f"sip:x@127.0.0.1:{peer.port}", flow, from_="<sip:a@127.0.0.1>", to="<sip:x@127.0.0.1>"
        )
        endpoint.send_request(request, flow)
        first, second = await raw(peer), await raw(peer)
        assert first == second == bytes(request)
        assert trace.out()[:2] == [first, second]
        assert all(f == flow for direction, _, f in trace.entries if direction == "out")
        peer.close()


async def test_tcp_trace_sees_framed_request_and_response_on_the_connection() -> None:
    trace = Recorder()
    async with running(None, "tcp:127.0.0.1:0") as (endpoint, port):
        endpoint.add_tracer(trace.record)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\r\n\r\n")  # a keep-alive ping: answered by the transport, not a SIP message
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 2.0) == b"\r\n"
        options = options_bytes(port, "TCP")
        writer.write(options[:50])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(options[50:])  # split across segments: traced once, framed
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert head.startswith(b"SIP/2.0 200 OK\r\n") and b"Content-Length: 0\r\n" in head
        for _ in range(50):
            if len(trace.entries) >= 2:
                break
            await asyncio.sleep(0.01)
        assert [(direction, data) for direction, data, _ in trace.entries] == [("in", options), ("out", head)]
        (_, _, inbound), (_, _, outbound) = trace.entries
        assert inbound.transport == "TCP" and inbound.connection_id is not None
        assert outbound == inbound  # the response went back on the very connection
        writer.close()
        await writer.wait_closed()


async def test_failing_tracer_is_logged_and_endpoint_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    trace = Recorder()

    def broken(direction: str, data: bytes, flow: Flow) -> None:
        raise RuntimeError("disk full")

    async with running(None) as (endpoint, port):
        endpoint.add_tracer(broken)
        endpoint.add_tracer(trace.record)
        peer = Peer()
        with caplog.at_level(logging.ERROR, logger="durchwahl.sipcore.endpoint"):
            await peer.send(options_bytes(port), port)
            reply = await peer.recv()
        assert isinstance(reply, Response) and reply.status == 200
        assert [direction for direction, _, _ in trace.entries] == ["in", "out"]
        failures = [r for r in caplog.records if "tracer" in r.getMessage()]
        assert len(failures) == 2 and all(r.exc_info is not None for r in failures)
        peer.close()
