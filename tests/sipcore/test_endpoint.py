"""The endpoint over loopback sockets: what a peer sees on the wire (UDP, TCP, IPv4, IPv6)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from durchwahl.sipcore import Endpoint, IncomingRequest, Request, RequestTimeout, Response, parse_message
from durchwahl.sipcore.transaction import Timers

FAST = Timers(t1=0.05, t2=0.2, t4=0.25)


def invite_bytes(
    port: int, *, branch: str = "z9hG4bKabc1", host: str = "127.0.0.1", extra: str = ""
) -> bytes:
    return (
        f"INVITE sip:101@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.99:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:caller@example.com>;tag=from1\r\n"
        f"To: <sip:101@{host}>\r\n"
        "Call-ID: call-1@example.com\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:caller@192.0.2.99>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Peer:
    """A raw UDP socket on loopback playing the far end."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.setblocking(False)
        self.loop = asyncio.get_running_loop()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        await self.loop.sock_sendto(self.sock, data, (host, port))

    async def recv(self, timeout: float = 2.0) -> Request | Response:
        data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65535), timeout)
        return parse_message(data)

    async def silent(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loop.sock_recv(self.sock, 65535), timeout)
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@contextlib.asynccontextmanager
async def running(
    handler: object = None, spec: str = "udp:127.0.0.1:0"
) -> AsyncIterator[tuple[Endpoint, int]]:
    endpoint = Endpoint(handler, timers=FAST)  # type: ignore[arg-type]
    _, port = await endpoint.listen(spec)
    try:
        yield endpoint, port
    finally:
        await endpoint.close()


async def test_invite_answered_and_2xx_retransmitted_until_ack() -> None:
    acked = asyncio.Event()

    async def handler(incoming: IncomingRequest) -> None:
        incoming.respond(180)
        incoming.respond(200, headers=[("Contact", "<sip:101@127.0.0.1>")])
        await incoming.ack
        acked.set()

    async with running(handler) as (_, port):
        peer = Peer()
        await peer.send(invite_bytes(port), port)
        ringing = await peer.recv()
        assert isinstance(ringing, Response) and ringing.status == 180
        # received= and rport= filled in the top Via (RFC 3581): the response came back to our source.
        assert ringing.via[0].received == "127.0.0.1" and ringing.via[0].rport == peer.port
        ok = await peer.recv()
        assert isinstance(ok, Response) and ok.status == 200 and ok.to.tag == ringing.to.tag
        again = await peer.recv(timeout=1.0)  # 2xx retransmitted (RFC 3261 §13.3.1.4) while no ACK
        assert isinstance(again, Response) and again.status == 200
        ack = (
            f"ACK sip:101@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKack1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:caller@example.com>;tag=from1\r\n"
            f"To: <sip:101@127.0.0.1>;tag={ok.to.tag}\r\n"
            "Call-ID: call-1@example.com\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        await peer.send(ack, port)
        await asyncio.wait_for(acked.wait(), 2.0)
        assert await peer.silent(0.5), "no 2xx after the ACK"
        peer.close()


async def test_retransmitted_invite_is_absorbed_and_merged_request_gets_482() -> None:
    seen: list[IncomingRequest] = []

    def handler(incoming: IncomingRequest) -> None:
        seen.append(incoming)
        incoming.respond(180)

    async with running(handler) as (_, port):
        peer = Peer()
        await peer.send(invite_bytes(port), port)
        assert (await peer.recv()).status == 180  # type: ignore[union-attr]
        await peer.send(invite_bytes(port), port)  # retransmission: the 180 again, no new request
        assert (await peer.recv()).status == 180  # type: ignore[union-attr]
        await peer.send(invite_bytes(port, branch="z9hG4bKother"), port)  # same request, another path
        merged = await peer.recv()
        assert isinstance(merged, Response) and merged.status == 482
        assert len(seen) == 1
        peer.close()


async def test_merge_check_forgets_a_request_once_its_transaction_ended() -> None:
    """The keys of the merged-request check (RFC 3261 §8.2.2.2) live as long as their transaction: after
    many calls' requests have come and gone, none is kept (they grew by about 300 bytes per call)."""
    endpoint = Endpoint(None, timers=Timers(t1=0.005, t2=0.02, t4=0.025))
    _, port = await endpoint.listen("udp:127.0.0.1:0")
    peer = Peer()
    try:
        for n in range(20):
            options = (
                invite_bytes(port, branch=f"z9hG4bKopt{n}")
                .replace(b"INVITE sip", b"OPTIONS sip")
                .replace(b"1 INVITE", b"1 OPTIONS")
                .replace(b"call-1@", f"call-{n}@".encode())
            )
            await peer.send(options, port)
            assert (await peer.recv()).status == 200  # type: ignore[union-attr]
        assert len(endpoint._merged) == 20  # under way: a merged copy of any of them would get 482
        async with asyncio.timeout(3.0):
            while len(endpoint._layer):  # Timer J (64 * T1) ends each transaction
                await asyncio.sleep(0.05)
        assert endpoint._merged == {}
    finally:
        peer.close()
        await endpoint.close()


async def test_cancel_gets_200_and_invite_487() -> None:
    cancelled = asyncio.Event()

    async def handler(incoming: IncomingRequest) -> None:
        incoming.respond(180)
        await incoming.cancelled.wait()
        cancelled.set()

    async with running(handler) as (_, port):
        peer = Peer()
        await peer.send(invite_bytes(port), port)
        ringing = await peer.recv()
        cancel = invite_bytes(port).replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
        await peer.send(cancel, port)
        answers = {}
        for _ in range(2):
            reply = await peer.recv()
            assert isinstance(reply, Response)
            answers[reply.cseq.method] = reply
        assert answers["CANCEL"].status == 200
        assert answers["INVITE"].status == 487
        assert answers["INVITE"].to.tag == ringing.to.tag  # type: ignore[union-attr]
        await asyncio.wait_for(cancelled.wait(), 1.0)
        peer.close()


async def test_options_answered_without_handler_and_unknown_cancel_481() -> None:
    async with running(None) as (_endpoint, port):
        peer = Peer()
        options = invite_bytes(port).replace(b"INVITE sip", b"OPTIONS sip").replace(b"1 INVITE", b"1 OPTIONS")
        await peer.send(options, port)
        reply = await peer.recv()
        assert isinstance(reply, Response) and reply.status == 200
        assert "INVITE" in reply.allow
        cancel = invite_bytes(port, branch="z9hG4bKnone").replace(b"INVITE sip", b"CANCEL sip")
        await peer.send(cancel.replace(b"1 INVITE", b"1 CANCEL"), port)
        reply = await peer.recv()
        assert isinstance(reply, Response) and reply.status == 481
        peer.close()


async def test_oversized_and_garbage_datagrams_are_dropped_and_endpoint_survives() -> None:
    async with running(None) as (_, port):
        peer = Peer()
        await peer.send(b"\x00\xff garbage", port)
        await peer.send(b"\r\n\r\n", port)  # keep-alive
        await peer.send(b"X" * 65000, port)
        assert await peer.silent(0.3)
        options = invite_bytes(port).replace(b"INVITE sip", b"OPTIONS sip").replace(b"1 INVITE", b"1 OPTIONS")
        await peer.send(options, port)
        assert (await peer.recv()).status == 200  # type: ignore[union-attr]
        peer.close()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 is not configured")
    async with running(None, "udp:[::1]:0") as (_, port):
        peer = Peer(socket.AF_INET6)
        options = (
            invite_bytes(port, host="[::1]")
            .replace(b"INVITE sip", b"OPTIONS sip")
            .replace(b"1 INVITE", b"1 OPTIONS")
        )
        await peer.send(options, port, "::1")
        reply = await peer.recv()
        assert isinstance(reply, Response) and reply.status == 200
        assert reply.via[0].received == "::1"
        peer.close()


async def test_tcp_keepalive_and_response_on_same_connection() -> None:
    async with running(None, "tcp:127.0.0.1:0") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\r\n\r\n")  # RFC 5626 ping
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 2.0) == b"\r\n"
        options = (
            invite_bytes(port)
            .replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
            .replace(b"INVITE sip", b"OPTIONS sip")
            .replace(b"1 INVITE", b"1 OPTIONS")
        )
        writer.write(options[:50])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(options[50:])  # split across segments: framed by Content-Length
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert head.startswith(b"SIP/2.0 200 OK\r\n")
        writer.close()
        await writer.wait_closed()


async def test_tcp_framing_error_closes_connection() -> None:
    async with running(None, "tcp:127.0.0.1:0") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()


async def test_uac_request_times_out_with_timer_f() -> None:
    async with running(None) as (endpoint, _):
        peer = Peer()  # never answers
        flow = endpoint.flow_to("127.0.0.1", peer.port)
        request = endpoint.make_request(
            "OPTIONS", f"sip:x@127.0.0.1:{peer.port}", flow, from_="<sip:a@127.0.0.1>", to="<sip:x@127.0.0.1>"
        )
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(endpoint.request(request, flow), 10.0)
        # The request was retransmitted on the way (Timer E).
        first = await peer.recv()
        second = await peer.recv()
        assert isinstance(first, Request) and isinstance(second, Request) and first.branch == second.branch
        peer.close()


async def test_uac_gets_final_response_and_provisionals() -> None:
    async with running(None) as (endpoint, _):
        peer = Peer()
        flow = endpoint.flow_to("127.0.0.1", peer.port)
        request = endpoint.make_request(
            "INVITE", f"sip:x@127.0.0.1:{peer.port}", flow, from_="<sip:a@127.0.0.1>", to="<sip:x@127.0.0.1>"
        )
        provisional: list[int] = []
        outgoing = endpoint.send_request(request, flow, on_provisional=lambda r: provisional.append(r.status))
        received = await peer.recv()
        assert isinstance(received, Request)
        from durchwahl.sipcore import make_response

        await peer.send(bytes(make_response(received, 180, to_tag="t9")), flow.local[1])
        await peer.send(bytes(make_response(received, 486, to_tag="t9")), flow.local[1])
        final = await asyncio.wait_for(outgoing, 2.0)
        assert final.status == 486 and provisional == [180]
        ack = await peer.recv()  # the INVITE client transaction ACKs the non-2xx itself
        assert isinstance(ack, Request) and ack.method == "ACK" and ack.branch == received.branch
        peer.close()


async def test_tcp_flow_close_is_reported_and_never_redialled() -> None:
    from durchwahl.sipcore import Flow, TransportError

    flows: list[Flow] = []
    async with running(None, "tcp:127.0.0.1:0") as (endpoint, port):
        endpoint.on_connection_closed = flows.append
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        options = (
            invite_bytes(port)
            .replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
            .replace(b"INVITE sip", b"OPTIONS sip")
            .replace(b"1 INVITE", b"1 OPTIONS")
        )
        writer.write(options)
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        writer.close()
        await writer.wait_closed()
        for _ in range(50):
            if flows:
                break
            await asyncio.sleep(0.02)
        assert len(flows) == 1 and flows[0].transport == "TCP" and flows[0].connection_id is not None
        # The phone's NAT mapping takes no incoming connection: a flow naming a gone connection fails fast.
        with pytest.raises(TransportError, match="gone"):
            await asyncio.wait_for(endpoint._transports.send(b"\r\n\r\n", flows[0]), 1.0)


async def test_screen_answers_or_drops_new_requests_before_any_transaction() -> None:
    """The screen sees a new out-of-dialog request first: its answer goes out once (no Timer G), a False
    drops the request, and once a request got a transaction its retransmissions are not screened."""
    seen: list[str] = []
    handled: list[str] = []

    def screen(request: Request, flow: object) -> Response | bool:
        seen.append(request.branch or "")
        if request.branch == "z9hG4bKanswer":
            from durchwahl.sipcore.message import make_response

            return make_response(request, 401, to_tag="stateless")
        return request.branch != "z9hG4bKdrop"

    async def handler(incoming: IncomingRequest) -> None:
        handled.append(incoming.request.branch or "")
        await asyncio.sleep(0.3)
        incoming.respond(486)

    async with running(handler) as (endpoint, port):
        endpoint.screen = screen
        peer = Peer()
        try:
            await peer.send(invite_bytes(port, branch="z9hG4bKanswer"), port)
            answer = await peer.recv()
            assert isinstance(answer, Response) and answer.status == 401 and answer.to.tag == "stateless"
            assert await peer.silent(0.3)  # never retransmitted (Timer G would fire at T1 = 50 ms)
            await peer.send(invite_bytes(port, branch="z9hG4bKdrop"), port)
            assert await peer.silent(0.3)
            await peer.send(invite_bytes(port, branch="z9hG4bKpass"), port)
            await asyncio.sleep(0.05)
            await peer.send(invite_bytes(port, branch="z9hG4bKpass"), port)  # retransmission: absorbed
            statuses = []
            while not statuses or statuses[-1] < 200:
                response = await peer.recv()
                assert isinstance(response, Response)
                statuses.append(response.status)
            assert statuses[-1] == 486 and set(statuses[:-1]) <= {100}
        finally:
            peer.close()
    assert seen == ["z9hG4bKanswer", "z9hG4bKdrop", "z9hG4bKpass"]
    assert handled == ["z9hG4bKpass"]
