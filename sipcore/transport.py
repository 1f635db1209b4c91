"""asyncio transports: UDP and TCP listeners (IPv4 and IPv6) that move framed SIP message bytes.

The transports know nothing of SIP semantics: they frame (TCP), answer RFC 5626 CRLF keep-alives, enforce the
size limits, and hand ``(data, flow)`` to one callback. Parsing and every protocol decision live above.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import attrs

from .errors import SipError, SipParseError
from .framing import FramedMessage, KeepAlivePing, StreamFramer
from .headers import is_digits
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "Flow",
    "ListenSpec",
    "TcpTransport",
    "TransportError",
    "TransportName",
    "TransportSet",
    "UdpTransport",
    "parse_listen_spec",
]

log = logging.getLogger(__name__)

TransportName = Literal["UDP", "TCP"]
_connection_ids: Final = itertools.count(1)


class TransportError(SipError):
    """A message could not be sent (no route, connection refused, transport closed)."""


@attrs.frozen
class Flow:
    """Where a message came from or goes to: transport, the local listener, the remote address.

    For TCP ``connection_id`` names the connection, so a response (or a request to a phone behind NAT)
    can go back on the very connection the peer opened (RFC 5626 flows; RFC 3261 §18.2.2).
    """

    transport: TransportName
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None

    def __str__(self) -> str:
        return f"{self.transport} {_fmt(self.remote)}"


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class ListenSpec:
    """One listener: transport, host, port (0 picks a free port)."""

    transport: TransportName
    host: str
    port: int


def parse_listen_spec(text: str) -> ListenSpec:
    """Parse 'udp:127.0.0.1:5060', 'tcp:[::1]:5060' or 'udp:127.0.0.1' (port 5060)."""
    proto, sep, rest = text.partition(":")
    name = proto.upper()
    if not sep or name not in ("UDP", "TCP"):
        raise ValueError(f"listen address {text!r}: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT'")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"listen address {text!r}: unterminated IPv6 reference")
        host, port_text = rest[1:end], rest[end + 1 :].lstrip(":")
    else:
        host, _, port_text = rest.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen address {text!r}: {host!r} is not an IP address") from None
    port = 5060 if not port_text else int(port_text) if is_digits(port_text) else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {text!r}: bad port {port_text!r}")
    return ListenSpec(name, host, port)  # type: ignore[arg-type]


MessageCallback = Callable[[bytes, Flow], None]

#: The receive buffer asked for on every UDP socket. The kernel default (~208 KiB) holds only ~100 SIP
#: datagrams: a burst arriving during one garbage collection or a busy moment (tens of ms at a few hundred
#: calls per second) overflows it and the kernel drops datagrams, which then cost a 500 ms retransmission
#: each (CPS benchmark: 4,000 drops in a 400 cps step). Linux caps the request at ``net.core.rmem_max``.
UDP_RECEIVE_BUFFER: Final = 8 << 20


def _grow_receive_buffer(sock: Any) -> None:
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < UDP_RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError as exc:  # pragma: no cover - a platform without the option
        log.debug("cannot grow the UDP receive buffer: %s", exc)


class UdpTransport(asyncio.DatagramProtocol):
    """One UDP socket; datagrams are whole messages (RFC 3261 §18.3).

    The socket is read directly from the event loop's reader callback, up to ``READ_BATCH`` datagrams per
    wake-up (asyncio's datagram transport reads one per loop iteration), and written with ``sendto`` —
    queued only when the kernel's send buffer is full. On a loop without ``add_reader`` (Windows' proactor)
    asyncio's datagram transport is used instead.
    """

    name: TransportName = "UDP"
    #: Most datagrams handled per reader wake-up before other callbacks get their turn.
    READ_BATCH: Final = 32

    def __init__(self, on_message: MessageCallback, limits: Limits = DEFAULT_LIMITS) -> None:
        self._on_message = on_message
        self._limits = limits
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._closed = False
        self.local: tuple[str, int] = ("", 0)

    @classmethod
    async def listen(
        cls, host: str, port: int, on_message: MessageCallback, limits: Limits = DEFAULT_LIMITS
    ) -> UdpTransport:
        loop = asyncio.get_running_loop()
        self = cls(on_message, limits)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _grow_receive_buffer(sock)
            sock.bind((host, port))
            loop.add_reader(sock.fileno(), self._read_ready)
        except NotImplementedError:
            sock.close()
            _, protocol = await loop.create_datagram_endpoint(
                lambda: cls(on_message, limits), local_addr=(host, port)
            )
            return protocol
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        sockname = sock.getsockname()
        self.local = (sockname[0], sockname[1])
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _grow_receive_buffer(sock)
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def _read_ready(self) -> None:
        self.read_pending(self.READ_BATCH)

    def read_pending(self, limit: int = 1024) -> None:
        """Handle up to ``limit`` datagrams already waiting in the socket's receive buffer."""
        sock = self._sock
        for _ in range(limit):
            if sock is None or self._closed:
                return
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data.strip(b"\r\n"):
            return  # NAT keep-alive (CRLF) over UDP: nothing to answer
        if len(data) > self._limits.max_message_bytes:
            log.debug("dropped %d-byte datagram from %s: over the size limit", len(data), addr)
            return
        remote = (str(addr[0]), int(addr[1]))
        try:
            self._on_message(data, Flow("UDP", self.local, remote))
        except Exception:  # a bug above must not kill the socket
            log.exception("error handling datagram from %s", _fmt(remote))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on %s: %s", _fmt(self.local), exc)

    def send(self, data: bytes, remote: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None:
            if self._transport is None or self._transport.is_closing():
                raise TransportError(f"UDP transport {_fmt(self.local)} is closed")
            self._transport.sendto(data, remote)
            return
        if self._closed:
            raise TransportError(f"UDP transport {_fmt(self.local)} is closed")
        if self._backlog:
            self._backlog.append((data, remote))
            return
        try:
            sock.sendto(data, remote)
        except (BlockingIOError, InterruptedError):
            self._backlog.append((data, remote))
            assert self._loop is not None
            self._loop.add_writer(sock.fileno(), self._write_ready)
        except OSError as exc:
            self.error_received(exc)

    def _write_ready(self) -> None:
        sock, backlog = self._sock, self._backlog
        while sock is not None and backlog:
            data, remote = backlog[0]
            try:
                sock.sendto(data, remote)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
            backlog.popleft()
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        sock = self._sock
        if sock is not None and not self._closed:
            self._closed = True
            self._backlog.clear()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
            sock.close()


class _TcpConnection(asyncio.Protocol):
    """One TCP connection, framed with ``StreamFramer``; answers CRLF pings with CRLF."""

    def __init__(self, owner: TcpTransport) -> None:
        self._owner = owner
        self._framer = StreamFramer(owner.limits)
        self._transport: asyncio.Transport | None = None
        self.id = next(_connection_ids)
        self.remote: tuple[str, int] = ("", 0)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        self._owner._register(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._framer.feed(data)
        except SipParseError as exc:
            log.info("closing TCP connection from %s: %s", _fmt(self.remote), exc)
            self.close()
            return
        if self._framer.failed:
            self.close()  # after delivering what was complete before the framing error
        flow = self.flow
        for event in events:
            if isinstance(event, FramedMessage):
                try:
                    self._owner.on_message(event.data, flow)
                except Exception:
                    log.exception("error handling message from %s", flow)
            elif isinstance(event, KeepAlivePing):
                self.write(b"\r\n")

    @property
    def flow(self) -> Flow:
        return Flow("TCP", self._owner.local, self.remote, self.id)

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise TransportError(f"TCP connection to {_fmt(self.remote)} is closed")
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpTransport:
    """A TCP listener plus the outgoing connections it made; connections are reused per remote address."""

    name: TransportName = "TCP"

    def __init__(self, on_message: MessageCallback, limits: Limits = DEFAULT_LIMITS) -> None:
        self.on_message = on_message
        self.limits = limits
        #: Called with the flow of every connection that closes (the registrar drops its bindings).
        self.on_closed: Callable[[Flow], None] | None = None
        self.local: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._by_id: dict[int, _TcpConnection] = {}
        self._by_remote: dict[tuple[str, int], _TcpConnection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[_TcpConnection]] = {}

    @classmethod
    async def listen(
        cls, host: str, port: int, on_message: MessageCallback, limits: Limits = DEFAULT_LIMITS
    ) -> TcpTransport:
        self = cls(on_message, limits)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TcpConnection(self), host, port)
        sockname = self._server.sockets[0].getsockname()
        self.local = (sockname[0], sockname[1])
        return self

    def _register(self, conn: _TcpConnection) -> None:
        self._by_id[conn.id] = conn
        self._by_remote[conn.remote] = conn

    def _unregister(self, conn: _TcpConnection) -> None:
        self._by_id.pop(conn.id, None)
        if self._by_remote.get(conn.remote) is conn:
            del self._by_remote[conn.remote]
        if self.on_closed is not None:
            try:
                self.on_closed(conn.flow)
            except Exception:
                log.exception("connection-closed callback failed for %s", conn.flow)

    def has_connection(self, connection_id: int) -> bool:
        return connection_id in self._by_id

    async def send(self, data: bytes, remote: tuple[str, int], connection_id: int | None = None) -> Flow:
        """Send on the named connection, else on any open one to ``remote``, else on a new one.

        A flow that names a connection the peer opened (a phone behind NAT, RFC 5626) is never dialled
        anew: its address is a NAT mapping that accepts no incoming connection, and trying would hang.
        """
        conn = self._by_id.get(connection_id) if connection_id is not None else None
        if conn is None:
            conn = self._by_remote.get(remote)
        if conn is None and connection_id is not None:
            raise TransportError(f"TCP connection {connection_id} to {_fmt(remote)} is gone")
        if conn is None:
            conn = await self._connect(remote)
        conn.write(data)
        return conn.flow

    async def _connect(self, remote: tuple[str, int]) -> _TcpConnection:
        pending = self._connecting.get(remote)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_TcpConnection] = loop.create_future()
        self._connecting[remote] = future
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpConnection(self), remote[0], remote[1]), timeout=5.0
            )
        except (OSError, TimeoutError) as exc:
            future.set_exception(TransportError(f"cannot connect to {_fmt(remote)}: {exc}"))
            future.exception()  # mark retrieved; waiters re-raise it
            raise TransportError(f"cannot connect to {_fmt(remote)}: {exc}") from exc
        finally:
            del self._connecting[remote]
        future.set_result(conn)
        return conn

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        conns = list(self._by_id.values())
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()


class TransportSet:
    """All listeners of an endpoint; picks the one to send on for a transport and address family."""

    def __init__(
        self,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        on_closed: Callable[[Flow], None] | None = None,
    ) -> None:
        self._on_message = on_message
        self._limits = limits
        self._on_closed = on_closed
        self.udp: list[UdpTransport] = []
        self.tcp: list[TcpTransport] = []

    async def listen(self, spec: ListenSpec) -> tuple[str, int]:
        if spec.transport == "UDP":
            udp = await UdpTransport.listen(spec.host, spec.port, self._on_message, self._limits)
            self.udp.append(udp)
            return udp.local
        tcp = await TcpTransport.listen(spec.host, spec.port, self._on_message, self._limits)
        tcp.on_closed = self._on_closed
        self.tcp.append(tcp)
        return tcp.local

    def _pick(
        self,
        listeners: list[UdpTransport] | list[TcpTransport],
        flow_local: tuple[str, int] | None,
        remote: tuple[str, int],
        name: str,
    ) -> UdpTransport | TcpTransport:
        for listener in listeners:
            if flow_local is not None and listener.local == flow_local:
                return listener
        want_v6 = ":" in remote[0]
        for listener in listeners:
            if (":" in listener.local[0]) == want_v6:
                return listener
        raise TransportError(f"no {name} listener for {_fmt(remote)}")

    def local_for(self, transport: TransportName, remote: tuple[str, int]) -> tuple[str, int]:
        """The listener address a message to ``remote`` would leave from (for Via and Contact)."""
        listeners = self.udp if transport == "UDP" else self.tcp
        return self._pick(listeners, None, remote, transport).local

    def read_pending(self) -> None:
        """Handle what already waits in the UDP sockets' receive buffers (``UdpTransport.read_pending``)."""
        for udp in self.udp:
            udp.read_pending()

    def udp_send(self, data: bytes, flow: Flow) -> None:
        """Send a datagram along a UDP ``flow`` (synchronous: UDP never waits)."""
        udp = self._pick(self.udp, flow.local, flow.remote, "UDP")
        assert isinstance(udp, UdpTransport)
        udp.send(data, flow.remote)

    async def send(self, data: bytes, flow: Flow) -> Flow:
        """Send ``data`` along ``flow`` (its transport, listener and remote; TCP connection if still open)."""
        if flow.transport == "UDP":
            udp = self._pick(self.udp, flow.local, flow.remote, "UDP")
            assert isinstance(udp, UdpTransport)
            udp.send(data, flow.remote)
            return Flow("UDP", udp.local, flow.remote)
        tcp = self._pick(self.tcp, flow.local, flow.remote, "TCP")
        assert isinstance(tcp, TcpTransport)
        return await tcp.send(data, flow.remote, flow.connection_id)

    async def close(self) -> None:
        for udp in self.udp:
            udp.close()
        for tcp in self.tcp:
            await tcp.close()
        self.udp.clear()
        self.tcp.clear()
