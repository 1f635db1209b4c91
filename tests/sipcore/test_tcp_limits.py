"""TCP connection limits on loopback, as a peer sees them: idle and unfinished connections are closed, a
source over its cap and the endpoint over its total cap turn connections away (accepted and closed at once),
a registration or a call keeps its connection open, and none of it writes a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from durchwahl.sipcore import Endpoint, IncomingRequest, Limits, Response, parse_message
from durchwahl.sipcore.core import CoreConfig

FAST = Limits(tcp_message_seconds=0.3, tcp_idle_seconds=0.6)


def options(cseq: int = 1, *, branch: str | None = None, method: str = "OPTIONS", extra: str = "") -> bytes:
    return (
        f"{method} sip:101@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 192.0.2.99:5060;branch={branch or f'z9hG4bKtcp{cseq}'};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:caller@example.com>;tag=from1\r\n"
        "To: <sip:101@127.0.0.1>\r\n"
        "Call-ID: tcp-limits@example.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def running(
    limits: Limits = FAST, handler: Callable[[IncomingRequest], None] | None = None
) -> AsyncIterator[tuple[Endpoint, int]]:
    core = CoreConfig(allowed_methods=("REGISTER", "OPTIONS"))
    endpoint = Endpoint(handler, limits=limits, core=core)
    _, port = await endpoint.listen("tcp:127.0.0.1:0")
    try:
        yield endpoint, port
    finally:
        await endpoint.close()


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> Response:
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    response = parse_message(head, stream=True)
    assert isinstance(response, Response)
    return response


# ------------------------------------------------------------------------------------------- timeouts


async def test_a_connection_that_never_sends_a_message_is_closed() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        writer.write(b"\r\n\r\n")  # a keep-alive is answered, but is no message
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(2), 1.0) == b"\r\n"
        assert await closed_within(reader, 2.0)
        writer.close()


async def test_a_body_shorter_than_its_content_length_does_not_hold_the_connection_for_ever() -> None:
    async with running() as (_, port):
        reader, writer = await connect(port)
        assert (await answer(reader, writer, options(1))).status == 200
        short = options(2).replace(b"Content-Length: 0", b"Content-Length: 50") + b"only twenty octets.."
        writer.write(short)
        await writer.drain()
        assert await closed_within(reader, 2.0)  # no longer waits for the 30 missing octets for ever
        writer.close()
        reader, writer = await connect(port)  # the client starts over on a new connection
        assert (await answer(reader, writer, options(3))).status == 200
        writer.close()


async def test_a_used_connection_is_closed_when_idle_but_keep_alives_keep_it() -> None:
    async with running() as (_, port):
        idle_reader, idle_writer = await connect(port)
        kept_reader, kept_writer = await connect(port)
        assert (await answer(idle_reader, idle_writer, options(1))).status == 200
        assert (await answer(kept_reader, kept_writer, options(2))).status == 200
        for _ in range(8):  # 1.2 s: twice the idle time; RFC 5626 pings every 0.15 s on one of them
            kept_writer.write(b"\r\n\r\n")
            await kept_writer.drain()
            assert await asyncio.wait_for(kept_reader.readexactly(2), 1.0) == b"\r\n"
            await asyncio.sleep(0.15)
        assert await closed_within(idle_reader, 0.1)
        assert not await closed_within(kept_reader, 0.05)
        assert (await answer(kept_reader, kept_writer, options(3))).status == 200
        idle_writer.close()
        kept_writer.close()


def registrar(expires: int) -> Callable[[IncomingRequest], None]:
    """A REGISTER handler that binds the request's contact for ``expires`` seconds (0: removes it)."""

    def handle(incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method != "REGISTER":
            incoming.respond(200)
            return
        asked = int(request.contact[0].param("expires") or expires)
        listed = [("Contact", f"<{request.contact[0].uri}>;expires={asked}")] if asked else []
        incoming.respond(200, headers=listed)

    return handle


async def test_a_connection_that_carries_a_registration_stays_open_until_it_expires() -> None:
    contact = "Contact: <sip:101@192.0.2.99;transport=tcp>;expires={}\r\n"
    async with running(handler=registrar(3600)) as (_, port):
        reader, writer = await connect(port)
        ok = await answer(reader, writer, options(1, method="REGISTER", extra=contact.format(3600)))
        assert ok.status == 200 and ok.contact[0].param("expires") == "3600"
        assert not await closed_within(reader, 1.5)  # well past the idle time: the binding holds it
        ok = await answer(reader, writer, options(2, method="REGISTER", extra=contact.format(0)))
        assert ok.status == 200 and not ok.contact  # removed: the idle time applies again
        assert await closed_within(reader, 1.5)
        writer.close()


async def test_a_connection_a_call_uses_is_kept_open() -> None:
    async with running() as (endpoint, port):
        in_use: set[int | None] = set()
        endpoint.connection_in_use = lambda flow: flow.connection_id in in_use
        reader, writer = await connect(port)
        assert (await answer(reader, writer, options(1))).status == 200
        await asyncio.sleep(0.05)
        (conn_id,) = endpoint._transports.tcp[0]._by_id
        in_use.add(conn_id)
        assert not await closed_within(reader, 1.5)
        in_use.clear()  # the call ended
        assert await closed_within(reader, 1.5)
        writer.close()


# ------------------------------------------------------------------------------------------------ caps


async def test_a_source_over_its_cap_is_turned_away_while_another_source_gets_in() -> None:
    limits = Limits(tcp_max_connections=10, tcp_max_connections_per_source=2)
    async with running(limits) as (_, port):
        first = [await connect(port) for _ in range(2)]
        for reader, writer in first:
            assert (await answer(reader, writer, options(1))).status == 200
        third_reader, third_writer = await connect(port)
        assert await closed_within(third_reader, 1.0)  # accepted and closed at once
        other_reader, other_writer = await connect(port, "127.0.0.2")
        assert (await answer(other_reader, other_writer, options(2))).status == 200
        for _, writer in [*first, (third_reader, third_writer), (other_reader, other_writer)]:
            writer.close()


async def test_at_the_total_cap_an_idle_newcomer_makes_way_and_working_connections_stay() -> None:
    limits = Limits(tcp_max_connections=3, tcp_max_connections_per_source=10, tcp_message_seconds=30)
    async with running(limits) as (_, port):
        working = await connect(port)
        assert (await answer(*working, options(1))).status == 200
        idle = [await connect(port, "127.0.0.2") for _ in range(2)]
        phone = await connect(port)  # over the cap: the oldest connection without a message is closed
        assert (await answer(*phone, options(2))).status == 200
        assert await closed_within(idle[0][0], 1.0)
        assert not await closed_within(idle[1][0], 0.1)
        assert (await answer(*working, options(3))).status == 200
        late = await connect(port, "127.0.0.3")
        assert (await answer(*late, options(4))).status == 200  # idle[1] made way
        assert await closed_within(idle[1][0], 1.0)
        refused = await connect(port, "127.0.0.4")  # all three in use: turned away
        assert await closed_within(refused[0], 1.0)
        for _, writer in [working, *idle, phone, late, refused]:
            writer.close()


async def test_refusals_are_logged_once_per_interval_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = Limits(tcp_max_connections=10, tcp_max_connections_per_source=1)
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    async with running(limits) as (_, port):
        keep = await connect(port)
        refused = [await connect(port) for _ in range(30)]
        for reader, _ in refused:
            assert await closed_within(reader, 1.0)
        for _, writer in [keep, *refused]:
            writer.close()
    lines = [r for r in caplog.records if "refusing TCP connection" in r.getMessage()]
    assert len(lines) == 1 and "tcp_max_connections_per_source" in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


# -------------------------------------------------------------------------------- out of descriptors


class _ExhaustedSocket:
    """A listening socket whose accept fails as when the process is out of descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(24, "Too many open files")

    def close(self) -> None:
        self.real.close()


async def test_accept_out_of_descriptors_pauses_with_one_line_not_a_traceback_storm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running() as (endpoint, port):
        tcp = endpoint._transports.tcp[0]
        exhausted = _ExhaustedSocket(tcp._sock)  # type: ignore[arg-type]
        tcp._sock = exhausted  # type: ignore[assignment]
        clients = [await connect(port) for _ in range(20)]  # wait in the listen backlog
        await asyncio.sleep(1.2)  # accepting retries every 0.5 s
        assert 2 <= exhausted.accepts <= 4  # paused between tries, not spinning
        tcp._sock = exhausted.real
        reader, writer = clients[0]
        assert (await answer(reader, writer, options(1))).status == 200  # recovered: the backlog is served
        for _, writer in clients:
            writer.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot accept TCP connections" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


async def test_requests_to_a_peer_without_a_connection_yet_arrive_in_the_order_sent() -> None:
    """TCP messages are written at once on an open connection; those sent while the connection is still
    being made queue behind the first, so nothing overtakes."""
    received = bytearray()
    got_all = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if received.count(b"CSeq: ") == 8:
                got_all.set()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    peer_port = server.sockets[0].getsockname()[1]
    async with running() as (endpoint, _):
        flow = endpoint.flow_to("127.0.0.1", peer_port, "TCP")

        def send(cseq: int) -> None:
            request = endpoint.make_request(
                "OPTIONS", f"sip:x@127.0.0.1:{peer_port}", flow, from_="<sip:a@b>", to="<sip:x@b>", cseq=cseq
            )
            endpoint.send_request(request, flow)

        tcp = endpoint._transports.tcp[0]
        register = tcp._register

        def registered_then_send(conn: object) -> None:
            register(conn)  # type: ignore[arg-type]
            send(6)  # the connection is open, but 1-5 are not written yet

        tcp._register = registered_then_send  # type: ignore[method-assign]
        for cseq in range(1, 6):
            send(cseq)
        await asyncio.sleep(0.2)
        for cseq in range(7, 9):
            send(cseq)
        await asyncio.wait_for(got_all.wait(), 2.0)
    server.close()
    await server.wait_closed()
    order = [int(line.split()[1]) for line in bytes(received).split(b"\r\n") if line.startswith(b"CSeq: ")]
    assert order == list(range(1, 9))
