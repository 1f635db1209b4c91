"""Call flows without sockets: an office on an in-memory network, on an event loop whose clock is virtual.

Like aioquic's ``client_and_server`` and h11's ``ConnectionPair``, the parts of a call talk back to back in
one process; unlike them, the parts are the whole stack: every SIP message is still serialised by the
sender's endpoint and parsed by the receiver's, every RTP packet goes through ``RtpSession``, the relay and
the media clock. Only the sockets and the wall clock are replaced:

* :class:`MemoryNetwork` carries datagrams between bound addresses (``("127.0.0.1", port)``), each delivered
  by ``loop.call_soon`` in the order sent, with UDP's semantics: nothing listening there, the datagram is
  gone; :attr:`MemoryNetwork.drop` loses chosen ones. SIP endpoints reach it through
  ``Endpoint(transports=network.transports)`` (:class:`MemoryTransports`: the real ``TransportSet`` and
  ``UdpTransport``, on a memory binding instead of a socket).
* :class:`VirtualTimeLoop` is an asyncio loop whose ``time()`` jumps to the next timer whenever nothing is
  ready to run, so a ring group's 20 s timeout takes microseconds and every run is the same. It has no real
  network: ``create_datagram_endpoint`` binds on its :attr:`~VirtualTimeLoop.network`, and ``add_reader``
  raises ``NotImplementedError`` — which makes ``media.session.PortAllocator`` fall back, as documented, to
  datagram endpoints, so the office's RTP ports, the tests' ``RtpSink`` and the demo's ``RtpSocket`` all
  live on the memory network unchanged. Work handed to an executor (SQLite stores) is waited for in real
  time, and the virtual clock moves on by the time it took.

Why a loop of our own and not ``looptime`` (a well-kept pytest plugin doing the same): looptime compacts time
only inside the test function (fixtures run on the real clock, so an office set up in a fixture would see
time jump between the two) and spins no-op cycles before each jump; what is needed here is a selector that
moves the clock instead of sleeping, counted in binary ticks so that durations are exact, on the same object
as the network — some forty lines on ``SelectorEventLoop``. Tests choose this loop with
``pytestmark = pytest.mark.virtual_time`` (see ``tests/routing/conftest.py``);
``pytest.mark.virtual_time(False)`` keeps one test of such a module on asyncio's loop and real sockets.

Which tests run here and which stay on loopback. Here, media included: test_b2bua, test_flows,
test_crm_calls, test_midcall, test_anchored, test_transfer, test_originate and test_cdr (its stores' SQLite
work is waited for in real time) — the greeting, digits, the relay, hold and post-dial digits are checked on
packets that went through the real media code, on a 20 ms clock that is now exact. On loopback, because
what they check is the sockets or the assembled server: test_server, test_server_log, test_emergency and the
server test of test_transfer (``routing.server.Server`` builds its own endpoint on sockets, SQLite stores
and a control socket), the transports and RTP sockets (tests/sipcore, tests/media), and the interop tests
against SIPp, baresip and Linphone.

:meth:`Office.open` assembles the stack as the server does (registrar, endpoint, user agent, B2BUA) on the
running loop's network; the office then adds phones, RTP sockets and other devices in a line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import selectors
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, Self, TypeVar, cast

import pytest
from phones import FAST, Phone, Script

from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.routing.b2bua import B2bua
from durchwahl.routing.directory import Directory
from durchwahl.routing.location import InMemoryLocationStore
from durchwahl.routing.registrar_service import RegistrarService
from durchwahl.routing.resolver import Resolver
from durchwahl.sipcore import Endpoint, IncomingRequest
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.limits import DEFAULT_LIMITS, Limits
from durchwahl.sipcore.session import SessionEvent, Terminated
from durchwahl.sipcore.transport import (
    Flow,
    ListenSpec,
    MessageCallback,
    TransportError,
    TransportSet,
    UdpTransport,
)
from durchwahl.sipcore.ua import Call, CallFailed, OutgoingCall, UserAgent

__all__ = [
    "CORE",
    "MemoryNetwork",
    "MemoryTransports",
    "Office",
    "RtpSink",
    "VirtualTimeLoop",
    "answered",
    "ended",
    "event_of",
    "failure",
    "network",
    "rtp_socket",
    "virtual_loop",
]

Address = tuple[str, int]

SECRET = b"0123456789abcdef0123456789abcdef"
#: What the office's endpoint takes (the server's list of methods, REFER aside: tests that transfer add it).
CORE = CoreConfig(allowed_methods=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "REGISTER"))


# ------------------------------------------------------------------------------------------ the network


class MemoryDatagramTransport(asyncio.DatagramTransport):
    """One bound address of a :class:`MemoryNetwork`, as an asyncio datagram transport."""

    def __init__(self, network: MemoryNetwork, local: Address, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__({"sockname": local, "peername": None, "socket": None})
        self._network = network
        self.local = local
        self.protocol = protocol
        self._closing = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        if addr is None:
            raise ValueError("a memory datagram transport is not connected: give the address")
        self._network.send(bytes(data), self.local, (str(addr[0]), int(addr[1])))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._network.unbind(self.local)
        self._network.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0


class MemoryNetwork:
    """Datagrams between bound addresses of one event loop (see the module docstring)."""

    #: Where port 0 binds first (the next free port above it).
    EPHEMERAL = 50000

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._bound: dict[Address, MemoryDatagramTransport] = {}
        self._ephemeral = itertools.count(self.EPHEMERAL)
        #: Asked for every datagram sent, ``drop(data, source, destination)``: True loses it.
        self.drop: Callable[[bytes, Address, Address], bool] | None = None
        self.sent = 0
        self.dropped = 0

    def bind(self, protocol: asyncio.DatagramProtocol, local: Address) -> MemoryDatagramTransport:
        """Bind ``protocol`` at ``local`` (port 0: a free one) and tell it ``connection_made``; raises
        ``OSError`` when the address is taken, as ``bind`` does."""
        host, port = str(local[0]), int(local[1])
        if port == 0:
            port = next(p for p in self._ephemeral if (host, p) not in self._bound)
        elif (host, port) in self._bound:
            raise OSError(98, f"address in use on the memory network: {host}:{port}")
        transport = MemoryDatagramTransport(self, (host, port), protocol)
        self._bound[(host, port)] = transport
        protocol.connection_made(transport)
        return transport

    def unbind(self, local: Address) -> None:
        self._bound.pop(local, None)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        **options: object,
    ) -> tuple[MemoryDatagramTransport, asyncio.DatagramProtocol]:
        """What ``loop.create_datagram_endpoint`` does, on this network (only ``local_addr`` is supported)."""
        if options.get("remote_addr") is not None or options.get("sock") is not None:
            raise NotImplementedError("the memory network binds local addresses only")
        protocol = protocol_factory()
        transport = self.bind(protocol, local_addr or ("127.0.0.1", 0))
        return transport, protocol

    def send(self, data: bytes, source: Address, destination: Address) -> None:
        self.sent += 1
        if self.drop is not None and self.drop(data, source, destination):
            self.dropped += 1
            return
        self.loop.call_soon(self._deliver, data, source, destination)

    def _deliver(self, data: bytes, source: Address, destination: Address) -> None:
        transport = self._bound.get(destination) or self._bound.get(("0.0.0.0", destination[1]))
        if transport is not None and not transport.is_closing():
            transport.protocol.datagram_received(data, source)

    def transports(
        self,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        on_closed: Callable[[Flow], None] | None = None,
        in_use: Callable[[Flow], bool] | None = None,
    ) -> MemoryTransports:
        """An endpoint's transports on this network: pass as ``Endpoint(transports=network.transports)``."""
        return MemoryTransports(self, on_message, limits, on_closed, in_use)


class MemoryTransports(TransportSet):
    """An endpoint's ``TransportSet`` whose UDP listeners are :class:`MemoryNetwork` bindings: the real
    ``UdpTransport`` on a memory datagram transport (no TCP: a stream is not needed by a call flow)."""

    def __init__(
        self,
        network: MemoryNetwork,
        on_message: MessageCallback,
        limits: Limits = DEFAULT_LIMITS,
        on_closed: Callable[[Flow], None] | None = None,
        in_use: Callable[[Flow], bool] | None = None,
    ) -> None:
        super().__init__(on_message, limits, on_closed, in_use)
        self.network = network
        self._receive = on_message
        self._udp_limits = limits

    async def listen(self, spec: ListenSpec) -> tuple[str, int]:
        if spec.transport != "UDP":
            raise TransportError(f"the memory network carries UDP only, not {spec.transport}")
        udp = UdpTransport(self._receive, self._udp_limits)
        self.network.bind(udp, (spec.host, spec.port))
        self.udp.append(udp)
        return udp.local


# ---------------------------------------------------------------------------------------- virtual time


class _VirtualSelector(selectors.DefaultSelector):
    """The loop's selector: it polls without waiting, and where asyncio would sleep until the next timer it
    moves the virtual clock there instead — unless an executor is working, then it waits really."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is not None and not self._loop.executor_busy:
            self._loop.advance(timeout)
            return ready
        started = time.monotonic()  # a thread's result (or shutting its executor down) wakes the loop
        ready = super().select(timeout)
        waited = time.monotonic() - started
        self._loop.advance(waited if timeout is None else min(timeout, waited))
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on a virtual clock with a :class:`MemoryNetwork` (see the module docstring).

    The clock counts ticks of 2**-20 s (about a microsecond) and moves to the next timer rounded up to a
    tick, so every reading and every difference of two readings is exact: a call that lasted 50 ms
    measures at least 0.05 s, as it would on a real clock.
    """

    #: The clock's reading at the start (any value; not 0, which code may take for "never").
    START = 1000.0
    TICK = 2.0**-20

    def __init__(self) -> None:
        self._ticks = 0
        self._epoch = float(int(time.time()))
        self._executor_jobs = 0
        super().__init__(_VirtualSelector(self))
        self.network = MemoryNetwork(self)

    def time(self) -> float:
        return self.START + self._ticks * self.TICK

    def wall_clock(self) -> float:
        """Wall-clock time on the virtual clock (from the real second the loop was made), for the B2BUA's
        and the registrar's ``clock``: call records and bindings age with the calls."""
        return self._epoch + self._ticks * self.TICK

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (rounded up to a tick)."""
        if seconds > 0:
            self._ticks += math.ceil(seconds / self.TICK)

    @property
    def executor_busy(self) -> bool:
        return self._executor_jobs > 0

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1
        future.add_done_callback(self._executor_done)
        return future

    def _executor_done(self, _: asyncio.Future[Any]) -> None:
        self._executor_jobs -= 1

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError("the virtual-time loop has no real sockets: use its memory network")

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError("the virtual-time loop has no real sockets: use its memory network")

    async def create_datagram_endpoint(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: Address | None = None,
        **options: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        return await self.network.create_datagram_endpoint(protocol_factory, local_addr, **options)


def virtual_loop() -> VirtualTimeLoop:
    """The running loop, which must be the virtual-time loop (the test marked ``virtual_time``)."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("not on the virtual-time loop: mark the test with pytest.mark.virtual_time")
    return loop


def network() -> MemoryNetwork:
    """The running loop's memory network (the test must be marked ``virtual_time``)."""
    return virtual_loop().network


# ---------------------------------------------------------------------------------------- the office


class RtpSink(asyncio.DatagramProtocol):
    """A raw RTP socket: remembers what it receives."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(parse(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, packet: RtpPacket, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(packet), to)

    async def wait_for(self, predicate: Callable[[RtpPacket], bool], timeout: float = 3.0) -> RtpPacket:
        async with asyncio.timeout(timeout):
            while True:
                found = next((p for p in self.packets if predicate(p)), None)
                if found is not None:
                    return found
                await asyncio.sleep(0.01)


async def rtp_socket() -> RtpSink:
    """An :class:`RtpSink` on 127.0.0.1 (on the memory network under virtual time, else a real socket)."""
    loop = asyncio.get_running_loop()
    _, sink = await loop.create_datagram_endpoint(RtpSink, local_addr=("127.0.0.1", 0))
    return sink


class Device(Protocol):
    async def close(self) -> None: ...


D = TypeVar("D", bound=Device)
ANSWER = Script("answer")


class Office:
    """The office as the server assembles it — registrar (in-memory bindings), endpoint, user agent, B2BUA —
    on the running loop's memory network, and the devices a test adds, closed with it.

    ``async with Office.open(directory, ring_seconds=2.0) as office:``, then ``await office.phone("101")``
    for a registered phone, ``await office.sink()`` for an RTP socket, ``office.add(device)`` for anything
    else with a ``close()``; ``await office.idle()`` waits until no call is under way.
    """

    def __init__(self, registrar: RegistrarService, endpoint: Endpoint, b2bua: B2bua, port: int) -> None:
        self.registrar = registrar
        self.endpoint = endpoint
        self.b2bua = b2bua
        self.port = port
        self.phones: list[Phone] = []
        self.sinks: list[RtpSink] = []
        self._devices: list[Device] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        directory: Directory,
        *,
        resolver: Resolver | None = None,
        core: CoreConfig = CORE,
        **options: Any,
    ) -> AsyncIterator[Self]:
        """The office for ``directory``; ``options`` go to :class:`~routing.b2bua.B2bua` (its ``clock``, like
        the registrar's, is the loop's :meth:`~VirtualTimeLoop.wall_clock` unless given)."""
        loop = virtual_loop()
        options.setdefault("clock", loop.wall_clock)
        registrar = RegistrarService(directory, InMemoryLocationStore(), secret=SECRET, clock=loop.wall_clock)
        endpoint = Endpoint(core=core, timers=FAST, transports=loop.network.transports)
        holder: list[B2bua] = []

        def dispatch(incoming: IncomingRequest) -> Awaitable[None] | None:
            method = incoming.request.method
            if method == "REGISTER":
                return registrar.handle(incoming)
            if method == "INVITE":
                return holder[0].handle(incoming)
            if method == "OPTIONS":
                endpoint.answer_options(incoming)
            else:
                incoming.respond(405)
            return None

        ua = UserAgent(endpoint, dispatch)
        b2bua = B2bua(ua, registrar, directory, resolver or Resolver(directory), **options)
        holder.append(b2bua)
        _, port = await endpoint.listen("udp:127.0.0.1:0")
        office = cls(registrar, endpoint, b2bua, port)
        try:
            yield office
        finally:
            await office.close()

    async def close(self) -> None:
        for device in reversed(self._devices):
            await device.close()
        for phone in self.phones:
            await phone.close()
        for sink in self.sinks:
            assert sink.transport is not None
            sink.transport.close()
        await self.endpoint.close()
        await self.b2bua.media_clock.close()

    def add(self, device: D) -> D:
        """Close ``device`` with the office; returns it."""
        self._devices.append(device)
        return device

    async def phone(self, extension: str, script: Script = ANSWER) -> Phone:
        """A phone of the employee with ``extension``, registered with the employee's credentials."""
        employee = self.b2bua.directory.employee(extension)
        assert employee is not None, f"no employee {extension} in the directory"
        phone = Phone(
            employee.sip_user,
            employee.password or "",
            self.port,
            script=script,
            domain=self.b2bua.directory.server.domain,
            transports=network().transports,
        )
        await phone.start()
        self.phones.append(phone)
        return phone

    async def sink(self) -> RtpSink:
        sink = await rtp_socket()
        self.sinks.append(sink)
        return sink

    async def idle(self, timeout: float = 3.0) -> None:
        """Wait until the B2BUA has no call under way."""
        async with asyncio.timeout(timeout):
            while self.b2bua.active:
                await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------- waiting for legs


async def event_of(call: Call, kind: type[SessionEvent], timeout: float = 3.0) -> SessionEvent:
    """The next event of ``kind`` on ``call`` (the ones before it are consumed)."""
    async with asyncio.timeout(timeout):
        while True:
            _, event = await call.events.get()
            if isinstance(event, kind):
                return event


async def ended(call: Call, timeout: float = 3.0) -> Terminated:
    async with asyncio.timeout(timeout):
        return await call.wait_ended()


async def answered(call: OutgoingCall, timeout: float = 3.0) -> bytes:
    """The body of ``call``'s 2xx."""
    async with asyncio.timeout(timeout):
        ok = await call.wait_answered()
    return ok.body


async def failure(call: Call, timeout: float = 3.0) -> CallFailed:
    """How ``call`` failed (it must)."""
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(timeout):
            await call.wait_answered()
    return failed.value
