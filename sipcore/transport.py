"""asyncio transports: UDP, TCP and TLS listeners (IPv4 and IPv6) that move framed SIP message bytes.

The transports know nothing of SIP semantics: they frame (TCP, TLS), answer RFC 5626 CRLF keep-alives,
enforce the stream size limits, and hand ``(data, flow)`` to one callback. Parsing and every protocol
decision live above. TCP and TLS connections are admitted, timed out and logged by one ``TcpGuard`` (the
shell of the pure ``sipcore.connections.ConnectionTable``), so descriptors stay free for RTP and the stores
under any load. A TLS connection opened to us is admitted as soon as it is accepted: its handshake counts
as "no complete message yet" (``tcp_message_seconds``); a failed handshake is logged with the peer's address
and closes the connection (``sipcore.tls`` puts OpenSSL's reason into words).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import itertools
import logging
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import attrs

from .connections import CloseReason, ConnectionTable, LogThrottle, Refusal, connection_caps
from .errors import SipError, SipParseError
from .framing import FramedMessage, KeepAlivePing, StreamFramer
from .headers import is_digits
from .limits import DEFAULT_LIMITS, Limits
from .tls import TlsContexts, describe_handshake_error, peer_names

__all__ = [
    "STREAM_TRANSPORTS",
    "Flow",
    "ListenSpec",
    "TcpGuard",
    "TcpTransport",
    "TransportError",
    "TransportName",
    "TransportSet",
    "UdpTransport",
    "parse_listen_spec",
]

log = logging.getLogger(__name__)

TransportName = Literal["UDP", "TCP", "TLS"]
#: The transports that are streams (framed by Content-Length, connection-oriented).
STREAM_TRANSPORTS: Final = frozenset({"TCP", "TLS"})
#: Seconds a connection we open may take to connect (and, for TLS, to finish its handshake).
CONNECT_SECONDS: Final = 5.0
_connection_ids: Final = itertools.count(1)


class TransportError(SipError):
    """A message could not be sent (no route, connection refused, transport closed)."""


@attrs.frozen
class Flow:
    """Where a message came from or goes to: transport, the local listener, the remote address.

    For TCP and TLS ``connection_id`` names the connection, so a response (or a request to a phone behind
    NAT) can go back on the very connection the peer opened (RFC 5626 flows; RFC 3261 §18.2.2).
    ``server_name`` is the name a TLS peer we connect to must prove in its certificate (a trunk's host
    name; None: its IP address); it is not part of the flow's identity.
    """

    transport: TransportName
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None
    server_name: str | None = attrs.field(default=None, eq=False)

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
    """Parse 'udp:127.0.0.1:5060', 'tcp:[::1]:5060', 'tls:127.0.0.1:5061' or 'udp:127.0.0.1' (port 5060;
    5061 for TLS, RFC 3261 §26.2)."""
    proto, sep, rest = text.partition(":")
    name = proto.upper()
    if not sep or name not in ("UDP", "TCP", "TLS"):
        raise ValueError(
            f"listen address {text!r}: expected 'udp:HOST:PORT', 'tcp:HOST:PORT' or 'tls:HOST:PORT'"
        )
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
    default = 5061 if name == "TLS" else 5060
    port = default if not port_text else int(port_text) if is_digits(port_text) else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {text!r}: bad port {port_text!r}")
    return ListenSpec(name, host, port)  # type: ignore[arg-type]


MessageCallback = Callable[[bytes, Flow], None]

#: The receive buffer asked for on every UDP socket. The kernel default (~208 KiB) holds only ~100 SIP
#: datagrams: a burst arriving during one garbage collection or a busy moment (tens of ms at a few hundred
#: calls per second) overflows it and the kernel drops datagrams, which then cost a 500 ms retransmission
#: each (CPS benchmark: 4,000 drops in a 400 cps step). Linux caps the request at ``net.core.rmem_max``.
UDP_RECEIVE_BUFFER: Final = 8 << 20


#: Linux socket options Python's ``socket`` module does not name: the kernel stamps each datagram with its
#: arrival time (SO_TIMESTAMP, a ``struct timeval``) and reports the socket's count of dropped datagrams
#: (SO_RXQ_OVFL, a 32-bit counter) with every datagram read.
_SO_TIMESTAMP: Final = 29
_SO_RXQ_OVFL: Final = 40
_TIMEVAL: Final = struct.Struct("@ll")


def _ask_arrival_info(sock: Any) -> int:
    """Turn on arrival stamps and the drop count where the platform has them; the ancillary buffer size
    ``recvmsg`` then needs (0: not available, read with ``recvfrom``)."""
    if not sys.platform.startswith("linux") or not hasattr(sock, "recvmsg"):
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
    except OSError as exc:  # pragma: no cover - a kernel without them
        log.debug("no datagram arrival stamps: %s", exc)
        return 0
    return socket.CMSG_SPACE(_TIMEVAL.size) + socket.CMSG_SPACE(4)


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

    On Linux the kernel stamps each datagram with its arrival time and counts what it dropped for a full
    receive buffer: ``queue_delay`` is how long the datagram read last waited in the socket's queue (the
    server's admission control reads it while handling that datagram), ``dropped`` the datagrams the
    kernel dropped at this socket so far. Elsewhere both stay None.
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
        self._ancillary = 0
        self.local: tuple[str, int] = ("", 0)
        #: Seconds the datagram read last waited in the receive queue (None: not measured here).
        self.queue_delay: float | None = None
        #: Datagrams the kernel dropped at this socket, its receive buffer full, as told with the datagram
        #: read last (None: not reported here).
        self.dropped: int | None = None

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
            self._ancillary = _ask_arrival_info(sock)
            if self._ancillary:
                self.queue_delay, self.dropped = 0.0, 0
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
        ancillary = self._ancillary
        for _ in range(limit):
            if sock is None or self._closed:
                return
            try:
                if ancillary:
                    data, notes, _, addr = sock.recvmsg(65536, ancillary)
                    if notes:
                        self._arrival(notes)
                else:
                    data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self.datagram_received(data, addr)

    def _arrival(self, notes: list[tuple[int, int, bytes]]) -> None:
        """Read the kernel's arrival stamp and drop count of the datagram just received."""
        for _, kind, value in notes:
            if kind == _SO_TIMESTAMP and len(value) >= _TIMEVAL.size:
                seconds, micros = _TIMEVAL.unpack_from(value)
                self.queue_delay = max(0.0, time.time() - seconds - micros * 1e-6)
            elif kind == _SO_RXQ_OVFL and len(value) >= 4:
                self.dropped = int.from_bytes(value[:4], sys.byteorder)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data.strip(b"\r\n"):
            return  # NAT keep-alive (CRLF) over UDP: nothing to answer
        # A datagram over the size limit goes up too: the parser reads what it needs to answer 513.
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


#: errno values of ``accept`` meaning "out of descriptors or memory": accepting pauses for a moment.
_ACCEPT_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How long accepting pauses when the process is out of descriptors (the pending connections wait in the
#: listen backlog meanwhile).
ACCEPT_PAUSE: Final = 0.5
#: Connections accepted per wake-up of a listening socket at most.
ACCEPT_BATCH: Final = 64
#: The listen backlog of TCP listeners.
TCP_BACKLOG: Final = 512

UnframableCallback = Callable[[SipParseError, Flow], bytes | None]


def _descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE of this process (None where unknown or unlimited)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


class TcpGuard:
    """The asyncio shell around :class:`~sipcore.connections.ConnectionTable` for the TCP listeners of one
    endpoint: admits connections, arms one timer for the table's deadlines, closes what is due, and logs each
    condition (refusals, evictions, timeouts, accept failures) at most once per 10 s with a count."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        total, per_source = connection_caps(
            _descriptor_limit(), limits.tcp_max_connections, limits.tcp_max_connections_per_source
        )
        self.table = ConnectionTable(
            max_total=total,
            max_per_source=per_source,
            message_seconds=limits.tcp_message_seconds,
            idle_seconds=limits.tcp_idle_seconds,
        )
        #: Asked before a connection is closed for idleness alone: True keeps it (a call uses it).
        self.in_use: Callable[[Flow], bool] | None = None
        self._connections: dict[int, _TcpConnection] = {}
        self._throttle = LogThrottle(10.0)
        self._latest: dict[str, tuple[int, str, tuple[object, ...]]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def note(self, level: int, condition: str, message: str, *args: object) -> None:
        """Log ``message`` unless this condition was logged in the last 10 s; then it is counted, and the
        latest such message is logged with the count once the 10 s are over."""
        quiet = self._throttle.allow(condition, self.now)
        if quiet is None:
            self._latest[condition] = (level, message, args)
            if self._flush is None:
                self._schedule_flush()
            return
        self._latest.pop(condition, None)
        self._emit(level, message, args, quiet)

    def _emit(self, level: int, message: str, args: tuple[object, ...], quiet: int) -> None:
        if quiet:
            message += " (and %d more like it in the last %g s)"
            args = (*args, quiet, self._throttle.interval)
        log.log(level, message, *args)

    def _schedule_flush(self) -> None:
        at = self._throttle.next_due()
        if at is not None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._flush = self._loop.call_at(at, self._flush_quiet)

    def _flush_quiet(self) -> None:
        self._flush = None
        for condition, quiet in self._throttle.due(self.now):
            latest = self._latest.pop(condition, None)
            if latest is not None:
                level, message, args = latest
                self._emit(level, message, args, quiet - 1)
        self._schedule_flush()

    def admit(self, conn: _TcpConnection) -> bool:
        """Admit a connection that just opened, closing one to make room if need be; False: refused."""
        table = self.table
        admission = table.admit(conn.id, conn.remote[0], self.now, inbound=conn.inbound)
        if admission.refused is Refusal.SOURCE:
            self.note(
                logging.WARNING,
                "refused-source",
                "refusing %s connection from %s: %d open from its source (tcp_max_connections_per_source)",
                conn.kind,
                _fmt(conn.remote),
                table.max_per_source,
            )
            return False
        if admission.refused is Refusal.TOTAL:
            self.note(
                logging.WARNING,
                "refused-total",
                "refusing %s connection from %s: %d open in all (tcp_max_connections)",
                conn.kind,
                _fmt(conn.remote),
                table.max_total,
            )
            return False
        self._connections[conn.id] = conn
        if admission.evict is not None:
            evicted = self._connections.pop(admission.evict, None)
            if evicted is not None:
                self.note(
                    logging.WARNING,
                    "evicted",
                    "closing %s connection from %s: %s; %d open in all (tcp_max_connections)",
                    evicted.kind,
                    _fmt(evicted.remote),
                    CloseReason.EVICTED.value,
                    table.max_total,
                )
                evicted.close()
        self.arm()
        return True

    def received(self, conn: _TcpConnection, *, completed: bool, in_message: bool) -> None:
        self.table.received(conn.id, self.now, completed=completed, in_message=in_message)
        self.arm()

    def hold(self, conn: _TcpConnection, until: float) -> None:
        self.table.hold(conn.id, until)
        self.arm()

    def forget(self, conn: _TcpConnection) -> None:
        if self._connections.get(conn.id) is conn:
            del self._connections[conn.id]
        self.table.remove(conn.id)

    def arm(self) -> None:
        """Make sure the timer fires by the table's earliest deadline (a timer armed earlier stays)."""
        at = self.table.get_timer()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _keep(self, connection_id: int) -> bool:
        conn = self._connections.get(connection_id)
        in_use = self.in_use
        if conn is None or in_use is None:
            return False
        try:
            return in_use(conn.flow)
        except Exception:
            log.exception("connection-in-use callback failed for %s", conn.flow)
            return False

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        table = self.table
        for connection_id, reason in table.handle_timer(self.now, self._keep):
            conn = self._connections.pop(connection_id, None)
            if conn is None:
                continue
            if reason is CloseReason.IDLE:
                log.debug("closing %s connection from %s: %s", conn.kind, _fmt(conn.remote), reason.value)
            else:
                self.note(
                    logging.INFO,
                    reason.name,
                    "closing %s connection from %s: %s (%g s, tcp_message_seconds)",
                    conn.kind,
                    _fmt(conn.remote),
                    reason.value,
                    table.message_seconds,
                )
            conn.close()
        self.arm()

    def close(self) -> None:
        for handle in (self._timer, self._flush):
            if handle is not None:
                handle.cancel()
        self._timer = self._timer_at = self._flush = None


class _TcpConnection(asyncio.Protocol):
    """One TCP or TLS connection, framed with ``StreamFramer``; answers CRLF pings with CRLF.

    A TLS connection opened to us is admitted when its socket is accepted (``remote`` given), before its
    handshake, which ``connect_accepted_socket`` does (``handshake_task``); closing it before then cancels
    the handshake. Every other connection is admitted in ``connection_made``; a TLS one is handed over then
    with its handshake done.
    """

    def __init__(self, owner: TcpTransport, *, inbound: bool, remote: tuple[str, int] | None = None) -> None:
        self._owner = owner
        self._guard = owner.guard
        self._framer = StreamFramer(owner.limits)
        self._transport: asyncio.Transport | None = None
        self.id = next(_connection_ids)
        self.inbound = inbound
        self.admitted = False
        self.registered = False
        #: TLS only: the handshake is done (the connection carries messages).
        self.secure = False
        #: TLS only: the names the peer's certificate was verified for (none: it sent none, or we did not
        #: ask: phones have no certificate; see ``sipcore.tls.peer_names``).
        self.peer_names: tuple[str, ...] = ()
        #: TLS opened to us: the handshake under way (``TcpTransport._accept_tls``).
        self.handshake_task: asyncio.Task[Any] | None = None
        #: We are closing it (a deadline, a refusal, the endpoint): a failing handshake is not news then.
        self.closing = False
        self._lost = False
        self.remote: tuple[str, int] = remote if remote is not None else ("", 0)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        if not self.admitted:
            if not self._guard.admit(self):
                self.closing = True
                self._transport.abort()
                return
            self.admitted = True
        if self._owner.name == "TLS":
            self.secure = True
            self.peer_names = peer_names(transport.get_extra_info("peercert"))
        self.registered = True
        self._owner._register(self)

    @property
    def kind(self) -> str:
        """ "TCP" or "TLS", for the log."""
        return self._owner.name

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        framer = self._framer
        try:
            events = framer.feed(data)
        except SipParseError as exc:
            self._unframable(exc)
            return
        completed = False
        flow = self.flow
        for event in events:
            if isinstance(event, FramedMessage):
                completed = True
                try:
                    self._owner.on_message(event.data, flow)
                except Exception:
                    log.exception("error handling message from %s", flow)
            elif isinstance(event, KeepAlivePing):
                with contextlib.suppress(TransportError):  # closed by a message handled just before
                    self.write(b"\r\n")
        if framer.error is not None:  # after delivering what was complete before the framing error
            self._unframable(framer.error)
            return
        self._guard.received(self, completed=completed, in_message=framer.in_message)

    def _unframable(self, exc: SipParseError) -> None:
        """The stream cannot be framed: answer what can be answered (513 for a request too large), close."""
        self._guard.note(
            logging.INFO,
            "unframable",
            "closing %s connection from %s: %s",
            self._owner.name,
            _fmt(self.remote),
            exc,
        )
        reply: bytes | None = None
        answer = self._owner.on_unframable
        if answer is not None:
            try:
                reply = answer(exc, self.flow)
            except Exception:
                log.exception("error answering an unframable message from %s", _fmt(self.remote))
        if reply and self._transport is not None and not self._transport.is_closing():
            self._transport.write(reply)
        self.close()  # after the reply is written out

    @property
    def flow(self) -> Flow:
        return Flow(self._owner.name, self._owner.local, self.remote, self.id)

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise TransportError(f"{self._owner.name} connection to {_fmt(self.remote)} is closed")
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # a failed TLS handshake: told by the handshake and by asyncio
            return
        self._lost = True
        if self.admitted:
            self._guard.forget(self)
        if self.registered:
            self._owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()
        elif self.handshake_task is not None:
            self.handshake_task.cancel()  # closes the socket it was given


class TcpTransport:
    """A TCP (or TLS) listener plus the outgoing connections it made; connections are reused per remote
    address.

    Incoming connections are accepted by the listener's own reader callback (asyncio's accept loop writes
    a traceback for every failed ``accept``: a storm when descriptors run out); when the process is out of
    descriptors, accepting pauses for ``ACCEPT_PAUSE`` with one log line. Admission and closing deadlines
    are the shared ``TcpGuard``'s. With ``contexts`` it is a TLS transport: connections opened to it are
    upgraded with ``contexts.server``, the ones it opens use ``contexts.client_for`` the peer's name.
    """

    def __init__(
        self,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        guard: TcpGuard | None = None,
        contexts: TlsContexts | None = None,
    ) -> None:
        self.on_message = on_message
        self.limits = limits
        self.name: TransportName = "TCP" if contexts is None else "TLS"
        self.contexts = contexts
        self._owns_guard = guard is None
        self.guard = guard if guard is not None else TcpGuard(limits)
        #: Called with the flow of every connection that closes (the registrar drops its bindings).
        self.on_closed: Callable[[Flow], None] | None = None
        #: Asked for the bytes to answer a stream that cannot be framed with (None: close without answer).
        self.on_unframable: UnframableCallback | None = None
        self.local: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None
        #: Accepted sockets being set up, and TLS handshakes of connections opened to us.
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._by_id: dict[int, _TcpConnection] = {}
        self._by_remote: dict[tuple[str, int], _TcpConnection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[_TcpConnection]] = {}
        #: Messages to a remote whose connection is being made, in the order sent (its maker writes them).
        self._queued: dict[tuple[str, int], list[bytes]] = {}

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        guard: TcpGuard | None = None,
        contexts: TlsContexts | None = None,
    ) -> TcpTransport:
        if contexts is not None and contexts.server is None:
            raise TransportError("a TLS listener needs a certificate and key (none configured)")
        self = cls(on_message, limits, guard, contexts)
        loop = self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":  # as asyncio does: rebind while old connections linger in TIME_WAIT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept_ready)
        except NotImplementedError:  # a loop without add_reader (Windows' proactor): asyncio's accept loop
            sock.close()
            self._server = await loop.create_server(lambda: _TcpConnection(self, inbound=True), host, port)
            sockname = self._server.sockets[0].getsockname()
            self.local = (sockname[0], sockname[1])
            return self
        except BaseException:
            sock.close()
            raise
        self._sock, self._accepting = sock, True
        sockname = sock.getsockname()
        self.local = (sockname[0], sockname[1])
        return self

    def _accept_ready(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self.guard.note(
                        logging.ERROR,
                        "accept-exhausted",
                        "cannot accept TCP connections on %s: %s; pausing accepts for %g s "
                        "(lower tcp_max_connections or raise the descriptor limit)",
                        _fmt(self.local),
                        exc.strerror or exc,
                        ACCEPT_PAUSE,
                    )
                    self._pause_accepting()
                else:
                    self.guard.note(
                        logging.ERROR, "accept-failed", "accept on %s failed: %s", _fmt(self.local), exc
                    )
                return
            conn.setblocking(False)
            if self.contexts is not None:
                self._accept_tls(loop, conn, address)
                continue
            task = loop.create_task(
                loop.connect_accepted_socket(lambda: _TcpConnection(self, inbound=True), conn)
            )
            self._handshakes.add(task)
            task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task: asyncio.Task[Any]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.guard.note(
                logging.WARNING,
                "accept-setup",
                "setting up an accepted %s connection failed: %s",
                self.name,
                task.exception(),
            )

    def _accept_tls(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
        """Admit a socket accepted on this TLS listener, then let ``connect_accepted_socket`` do the handshake
        with the server context now in force; a failed one is logged with the peer's address."""
        assert self.contexts is not None
        context = self.contexts.server
        conn = _TcpConnection(self, inbound=True, remote=(str(address[0]), int(address[1])))
        if context is None or not self.guard.admit(conn):  # a reload took the certificate away; refused
            sock.close()
            return
        conn.admitted = True
        task = loop.create_task(
            loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=context,
                ssl_handshake_timeout=self.limits.tcp_message_seconds
                + 5.0,  # the guard's deadline comes first
            )
        )
        conn.handshake_task = task
        self._handshakes.add(task)
        task.add_done_callback(functools.partial(self._tls_accepted, conn))

    def _tls_accepted(self, conn: _TcpConnection, task: asyncio.Task[Any]) -> None:
        self._handshakes.discard(task)
        conn.handshake_task = None
        error = None if task.cancelled() else task.exception()
        if not task.cancelled() and error is None:
            return
        if not conn.closing and not task.cancelled():  # cancelled: closed by us (a deadline, shutdown)
            self.guard.note(
                logging.WARNING,
                "tls-handshake",
                "TLS handshake with %s failed: %s",
                _fmt(conn.remote),
                describe_handshake_error(error),
            )
        conn.connection_lost(None)

    def _pause_accepting(self) -> None:
        if not self._accepting or self._sock is None or self._loop is None:
            return
        self._accepting = False
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._accepting or self._sock is None or self._loop is None:
            return
        self._accepting = True
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)

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

    def hold(self, remote: tuple[str, int], connection_id: int | None, until: float) -> bool:
        """Keep the connection (named, else any open one to ``remote``) from closing for idleness before
        ``until`` (loop time); False when there is no such connection."""
        conn = self._by_id.get(connection_id) if connection_id is not None else self._by_remote.get(remote)
        if conn is None:
            return False
        self.guard.hold(conn, until)
        return True

    def send_now(self, data: bytes, remote: tuple[str, int], connection_id: int | None = None) -> Flow | None:
        """Write on an open connection (the named one, else any to ``remote``), or queue behind the messages
        waiting for a connection to ``remote`` being made; None when a new connection would have to be made
        (use :meth:`send`). Raises ``TransportError`` when the named connection is gone."""
        conn = self._by_id.get(connection_id) if connection_id is not None else None
        if conn is None:
            queue = self._queued.get(remote)
            if queue is not None and connection_id is None:
                queue.append(data)  # written in order once the connection is made
                return Flow(self.name, self.local, remote)
            conn = self._by_remote.get(remote)
        if conn is None:
            if connection_id is not None:
                raise TransportError(f"{self.name} connection {connection_id} to {_fmt(remote)} is gone")
            return None
        conn.write(data)
        return conn.flow

    async def send(
        self,
        data: bytes,
        remote: tuple[str, int],
        connection_id: int | None = None,
        server_name: str | None = None,
    ) -> Flow:
        """Send on the named connection, else on any open one to ``remote``, else on a new one (TLS: whose
        certificate must be valid for ``server_name``, else for the remote's IP address).

        A flow that names a connection the peer opened (a phone behind NAT, RFC 5626) is never dialled
        anew: its address is a NAT mapping that accepts no incoming connection, and trying would hang.
        Messages sent while a connection is being made are written in the order sent, once it is made.
        """
        if connection_id is None and remote in self._queued:
            self._queued[remote].append(data)
            made = await asyncio.shield(self._connecting[remote])
            return made.flow
        conn = self._by_id.get(connection_id) if connection_id is not None else None
        if conn is None:
            conn = self._by_remote.get(remote)
        if conn is None and connection_id is not None:
            raise TransportError(f"{self.name} connection {connection_id} to {_fmt(remote)} is gone")
        if conn is None:
            queue = self._queued[remote] = [data]
            try:
                conn = await self._connect(remote, server_name)
            finally:
                del self._queued[remote]
            for item in queue:
                conn.write(item)
            return conn.flow
        conn.write(data)
        return conn.flow

    async def _connect(self, remote: tuple[str, int], server_name: str | None = None) -> _TcpConnection:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_TcpConnection] = loop.create_future()
        self._connecting[remote] = future
        tls: dict[str, Any] = {}
        if self.contexts is not None:
            name = server_name or remote[0]
            tls = {
                "ssl": self.contexts.client_for(name),
                "server_hostname": name,
                "ssl_handshake_timeout": CONNECT_SECONDS,
            }
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _TcpConnection(self, inbound=False), remote[0], remote[1], **tls
                ),
                timeout=CONNECT_SECONDS,
            )
        except (OSError, TimeoutError) as exc:
            if tls and (isinstance(exc, ssl.SSLError) or not isinstance(exc, ConnectionRefusedError)):
                reason = f"TLS to {tls['server_hostname']}: {describe_handshake_error(exc)}"
                self.guard.note(
                    logging.WARNING,
                    "tls-connect",
                    "TLS connection to %s (%s) failed: %s",
                    _fmt(remote),
                    tls["server_hostname"],
                    describe_handshake_error(exc),
                )
            else:
                reason = str(exc) or type(exc).__name__
            error = TransportError(f"cannot connect to {_fmt(remote)}: {reason}")
            future.set_exception(error)
            future.exception()  # mark retrieved; waiters re-raise it
            raise error from exc
        finally:
            del self._connecting[remote]
        future.set_result(conn)
        return conn

    def peer_names(self, connection_id: int) -> tuple[str, ...] | None:
        """The names the certificate of TLS connection ``connection_id`` was verified for (None: no such
        connection)."""
        conn = self._by_id.get(connection_id)
        return conn.peer_names if conn is not None else None

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        sock, loop = self._sock, self._loop
        if sock is not None:
            if self._accepting and loop is not None and not loop.is_closed():
                loop.remove_reader(sock.fileno())
            self._accepting = False
            sock.close()
            self._sock = None
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        conns = list(self._by_id.values())
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
        if self._owns_guard:
            self.guard.close()


class TransportSet:
    """All listeners of an endpoint; picks the one to send on for a transport and address family."""

    def __init__(
        self,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        on_closed: Callable[[Flow], None] | None = None,
        in_use: Callable[[Flow], bool] | None = None,
    ) -> None:
        self._on_message = on_message
        self._limits = limits
        self._on_closed = on_closed
        self._in_use = in_use
        #: Answers a TCP stream that cannot be framed (see ``TcpTransport.on_unframable``).
        self.on_unframable: UnframableCallback | None = None
        #: The TLS contexts of the TLS listeners and of the TLS connections we open (replaceable).
        self.contexts = TlsContexts()
        self._guard: TcpGuard | None = None
        self.udp: list[UdpTransport] = []
        self.tcp: list[TcpTransport] = []
        self.tls: list[TcpTransport] = []

    @property
    def guard(self) -> TcpGuard:
        """The admission caps and deadlines shared by every TCP and TLS connection of these listeners."""
        if self._guard is None:
            self._guard = TcpGuard(self._limits)
            self._guard.in_use = self._in_use
        return self._guard

    async def listen(self, spec: ListenSpec) -> tuple[str, int]:
        if spec.transport == "UDP":
            udp = await UdpTransport.listen(spec.host, spec.port, self._on_message, self._limits)
            self.udp.append(udp)
            return udp.local
        contexts = self.contexts if spec.transport == "TLS" else None
        stream = await TcpTransport.listen(
            spec.host, spec.port, self._on_message, self._limits, self.guard, contexts
        )
        stream.on_closed = self._on_closed
        stream.on_unframable = self.on_unframable
        (self.tls if contexts is not None else self.tcp).append(stream)
        return stream.local

    def _listeners(self, transport: TransportName) -> list[UdpTransport] | list[TcpTransport]:
        return self.udp if transport == "UDP" else self.tls if transport == "TLS" else self.tcp

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

    def _stream(self, flow: Flow) -> TcpTransport:
        stream = self._pick(self._listeners(flow.transport), flow.local, flow.remote, flow.transport)
        assert isinstance(stream, TcpTransport)
        return stream

    def local_for(self, transport: TransportName, remote: tuple[str, int]) -> tuple[str, int]:
        """The listener address a message to ``remote`` would leave from (for Via and Contact)."""
        return self._pick(self._listeners(transport), None, remote, transport).local

    def queue_delay(self, flow: Flow) -> float | None:
        """How long the datagram last read on ``flow``'s UDP listener waited in its receive queue (None: not
        measured, or not a UDP flow)."""
        if flow.transport != "UDP":
            return None
        for udp in self.udp:
            if udp.local == flow.local:
                return udp.queue_delay
        return None

    @property
    def datagrams_dropped(self) -> int | None:
        """Datagrams the kernel dropped at the UDP listeners for full receive buffers (None: not reported
        on this platform)."""
        counts = [udp.dropped for udp in self.udp if udp.dropped is not None]
        return sum(counts) if counts else None

    def read_pending(self) -> None:
        """Handle what already waits in the UDP sockets' receive buffers (``UdpTransport.read_pending``)."""
        for udp in self.udp:
            udp.read_pending()

    def udp_send(self, data: bytes, flow: Flow) -> None:
        """Send a datagram along a UDP ``flow`` (synchronous: UDP never waits)."""
        udp = self._pick(self.udp, flow.local, flow.remote, "UDP")
        assert isinstance(udp, UdpTransport)
        udp.send(data, flow.remote)

    def send_now(self, data: bytes, flow: Flow) -> Flow | None:
        """Send ``data`` along ``flow`` without waiting: UDP, or TCP/TLS on a connection already open (None
        when one would have to be made: use :meth:`send`)."""
        if flow.transport == "UDP":
            self.udp_send(data, flow)
            return flow
        return self._stream(flow).send_now(data, flow.remote, flow.connection_id)

    async def send(self, data: bytes, flow: Flow) -> Flow:
        """Send ``data`` along ``flow`` (its transport, listener and remote; its connection if still open)."""
        if flow.transport == "UDP":
            udp = self._pick(self.udp, flow.local, flow.remote, "UDP")
            assert isinstance(udp, UdpTransport)
            udp.send(data, flow.remote)
            return Flow("UDP", udp.local, flow.remote)
        return await self._stream(flow).send(data, flow.remote, flow.connection_id, flow.server_name)

    def hold(self, flow: Flow, until: float) -> bool:
        """Keep the TCP or TLS connection of ``flow`` (its id, else any to its remote) from closing for
        idleness before ``until`` (loop time); False for UDP or when no such connection is open."""
        if flow.transport not in STREAM_TRANSPORTS:
            return False
        listeners = self.tls if flow.transport == "TLS" else self.tcp
        return any(stream.hold(flow.remote, flow.connection_id, until) for stream in listeners)

    def peer_names(self, flow: Flow) -> tuple[str, ...] | None:
        """The names the peer certificate of ``flow``'s TLS connection was verified for (empty: it sent
        none); None for a flow that is no open TLS connection."""
        if flow.transport != "TLS" or flow.connection_id is None:
            return None
        for stream in self.tls:
            names = stream.peer_names(flow.connection_id)
            if names is not None:
                return names
        return None

    async def close(self) -> None:
        for udp in self.udp:
            udp.close()
        for stream in (*self.tcp, *self.tls):
            await stream.close()
        if self._guard is not None:
            self._guard.close()
        self.udp.clear()
        self.tcp.clear()
        self.tls.clear()
