"""The assembled server: a directory file becomes an endpoint, a registrar, a location store, the B2BUA and
its CDR store (``state_dir/cdr.sqlite3``). One object, usable as an async context manager inside another
asyncio service.

Events (pyee, on ``server.events``): ``started`` (listen addresses), ``registered`` (a
``routing.registrar_service.Registered``), ``unregistered`` (an ``Unregistered``), ``call_started``,
``ringing``, ``answered``, ``digit``, ``transferred`` (``routing.events``), ``call_ended`` (the call's
``routing.cdr.CallRecord``, as written to the CDR store), ``reloaded`` (the new Directory),
``reload_failed`` (the ConfigError; the old directory stays in force), ``draining``, ``drained``,
``stopped``, and ``error``.

Health: :meth:`Server.health` is None while the node takes new work, else the reason it does not; an
OPTIONS outside a dialog (an edge proxy's probe) is answered 200, or 503 with the reason and Retry-After.
Draining (:meth:`Server.drain`, ``durchwahl drain``, SIGUSR1) is one reason; what else may make a node
refuse new work (overload) is added with :meth:`Server.add_health_check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
from pyee.asyncio import AsyncIOEventEmitter

from durchwahl.sipcore import Endpoint, Flow, IncomingRequest
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.tls import TlsError
from durchwahl.sipcore.ua import UserAgent

from .b2bua import B2bua
from .calls.watch import WatchPolicy
from .cdr import CallRecord, CdrStoreError, SqliteCdrStore
from .control import ControlChannel, socket_path
from .dialstring import DialStringError, from_request_uri
from .directory import Directory
from .directory_file import load_directory
from .emergency import emergency_number
from .errors import ConfigError
from .events import EVENT_NAMES, CallFact
from .location import LocationStore, SqliteLocationStore
from .monitoring import Monitor
from .overload import Overload
from .redis_shared import CdrStream, GuardStream, RedisRingState
from .redis_store import RedisLocationStore, connect, shared_secret
from .registrar_service import Registered, RegistrarService, RegistrationEvent
from .resolver import Resolver, ResolverConfig, ResolverHook
from .tls_setup import configure_tls
from .trunk import TrunkRegistration

__all__ = ["EVENT_LOOPS", "ListenError", "Server", "event_loop_factory", "load_secret", "tune_gc"]

log = logging.getLogger(__name__)

#: What the server answers itself; everything else gets 405 with this Allow list.
#: How often old CDR rows are pruned (``[server] cdr_retention_days``).
CDR_PRUNE_SECONDS = 86400.0

#: What a node that takes no new work says in Retry-After (seconds).
RETRY_AFTER_SECONDS: Final = 30

SERVER_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REGISTER", "UPDATE", "REFER")

CallHandler = Callable[[IncomingRequest], Awaitable[None] | None]


def tune_gc() -> None:
    """Garbage-collector settings for a long-running server process (``durchwahl serve`` calls this).

    Every held call keeps thousands of small objects alive; with CPython's default thresholds the cyclic
    collector re-walks them all many times a second, stalling the event loop (CPS benchmark: 100 cps
    before, 300 cps after, at lower CPU per call). Start-up objects are frozen out of collection and the
    young-generation threshold is raised. An embedding application decides this for its own process.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


#: The event loops ``durchwahl serve --loop`` offers: asyncio's own, or uvloop (``pip install
#: durchwahl[speed]``; about a fifth less CPU per call in the CPS benchmark, docs/PERFORMANCE.md).
EVENT_LOOPS = ("asyncio", "uvloop")


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner`` (None: asyncio's default loop). Raises ``ValueError`` for a
    name not in :data:`EVENT_LOOPS` and for uvloop when it is not installed."""
    if name == "asyncio":
        return None
    if name != "uvloop":
        raise ValueError(f"unknown event loop {name!r} (choose from {', '.join(EVENT_LOOPS)})")
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        raise ValueError("--loop uvloop: uvloop is not installed (pip install 'durchwahl[speed]')") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def load_secret(state_dir: Path) -> bytes:
    """The nonce key, kept in ``state_dir/secret`` (made 0600 on first start) so nonces survive restarts; a
    ``state_dir`` made here is the server user's alone (0700)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / "secret"
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


class ListenError(OSError):
    """A listen address cannot be bound: the message names it, the reason and what to do (an ``OSError``
    with the original ``errno``, so code catching ``OSError`` still does)."""

    def __str__(self) -> str:
        return str(self.strerror)


_LISTEN_HINTS: Final = {
    errno.EADDRINUSE: "another durchwahl or SIP server listens there; stop it, or change [server] listen "
    "(or durchwahl serve --listen)",
    errno.EADDRNOTAVAIL: "not an address of this host; change [server] listen",
    errno.EACCES: "ports below 1024 need privileges; use a higher port",
}


def _listen_error(spec: str, exc: OSError) -> ListenError:
    reason = exc.strerror or str(exc)
    hint = _LISTEN_HINTS.get(exc.errno or 0)
    return ListenError(exc.errno, f"cannot listen on {spec}: {reason}" + (f" ({hint})" if hint else ""))


def _log_warnings(directory: Directory) -> None:
    """What the directory file allows but probably does not mean (see ``durchwahl check-config``)."""
    for warning in directory.warnings:
        log.warning("%s", warning)


def watch_policy(directory: Directory) -> WatchPolicy:
    """The call watch of ``[server] max_call_seconds`` and ``rtp_timeout_seconds`` (0: that rule off)."""
    server = directory.server
    return WatchPolicy(
        max_seconds=float(server.max_call_seconds) or None,
        rtp_timeout=float(server.rtp_timeout_seconds) or None,
    )


class _Announcing:
    """The B2BUA's CDR sink: writes the row, then announces the call as the server's ``call_ended`` event."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def write(self, record: CallRecord) -> None:
        sink = self._server.cdr_stream or self._server.cdr
        sink.write(record)
        self._server.events.emit("call_ended", record)


class Server:
    """durchwahl as one object: ``async with Server("office.toml") as server: ...``.

    ``store`` replaces the location store (SQLite, or Redis with ``[cluster]``); ``resolver_hook`` is an
    async callable consulted before the built-in routing policy (e.g. route known CRM callers to their
    employee); ``calls`` replaces the B2BUA's INVITE handling altogether. ``node`` names this node of a
    cluster: its state (control socket, CDRs, nonce key outside a cluster) goes to ``state_dir/NODE``.
    """

    def __init__(
        self,
        config: str | Path | Directory,
        *,
        store: LocationStore | None = None,
        calls: CallHandler | None = None,
        listen: tuple[str, ...] | None = None,
        resolver_hook: ResolverHook | None = None,
        resolver_config: ResolverConfig | None = None,
        control: bool = True,
        node: str | None = None,
    ) -> None:
        self.node = node
        self.directory = self._localize(config if isinstance(config, Directory) else load_directory(config))
        _log_warnings(self.directory)
        self.events = AsyncIOEventEmitter()
        self.events.on("error", self._log_error)
        self.calls = calls
        self._listen_override = listen
        self.endpoint = Endpoint(
            self._handle,
            core=CoreConfig(allowed_methods=SERVER_METHODS, supported=("norefersub",)),
            limits=self.directory.server.limits,
            user_agent="durchwahl",
        )
        configure_tls(self.endpoint.tls, self.directory)
        state_dir = self.directory.server.state_dir
        cluster = self.directory.cluster
        #: The cluster's Redis client (None: one node on its own).
        self.shared: Any = None
        if store is None and cluster is not None:
            self.shared = connect(cluster.store)
            store = RedisLocationStore(self.shared, cluster.store, owns_client=False)
        self.store = store if store is not None else SqliteLocationStore(state_dir / "location.sqlite3")
        self.registrar = RegistrarService(self.directory, self.store, secret=load_secret(state_dir))
        self.registrar.on_event = self._registration_event
        self.ua = UserAgent(self.endpoint, self._handle)
        self.endpoint.connection_in_use = self._call_uses
        self._resolver_config = resolver_config
        self._resolver_hook = resolver_hook
        self.resolver = Resolver(self.directory, resolver_config, resolver_hook)
        self.cdr = SqliteCdrStore(state_dir / "cdr.sqlite3")
        self.b2bua = B2bua(
            self.ua,
            self.registrar,
            self.directory,
            self.resolver,
            cdr=_Announcing(self),
            anchor_media=self.directory.server.anchor_media,
        )
        self.b2bua.watch = watch_policy(self.directory)
        self.b2bua.on_event = self._call_fact
        #: A cluster's shares: the guard's events, the ``evenly`` state, the calls of every node.
        self.guard_stream: GuardStream | None = None
        self.cdr_stream: CdrStream | None = None
        if self.shared is not None and cluster is not None:
            self.guard_stream = GuardStream(self.shared, cluster.store, self.registrar.guard)
            self.b2bua.services.shared_ring = RedisRingState(self.shared, cluster.store)
            self.cdr_stream = CdrStream(self.shared, cluster.store, self.cdr, node=cluster.node)
        if self.calls is None:
            self.calls = self.b2bua.handle
        #: Admission control: new out-of-dialog requests over the measured load or the caps get 503.
        self.overload = Overload(
            self.endpoint,
            self.directory.server.admission,
            emergency=self._is_emergency,
            maybe_emergency=self._maybe_emergency,
        )
        self.endpoint.screen = self._screen
        self.endpoint.prescreen = self.overload.prescreen
        #: The local control socket (``durchwahl status``/``originate``), in the state directory.
        self.control: ControlChannel | None = (
            ControlChannel(self, socket_path(state_dir)) if control else None
        )
        #: Outbound registrations of the trunks with ``register = true`` (their ``.status`` shows the state).
        self.trunks: dict[str, TrunkRegistration] = {}
        self.addresses: list[tuple[str, str, int]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The security log's target and the metrics endpoint (``[server] security_log``, ``metrics_listen``).
        self.monitor = Monitor(self)
        #: Set by :meth:`drain`: new calls are refused (503), the node's own calls finish.
        self.draining = False
        #: Set once a draining node has no call left (``durchwahl serve`` then exits).
        self.drained = asyncio.Event()
        self._health_checks: list[Callable[[], str | None]] = [self.overload.health]

    def _own_addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for _, host, port in self.addresses]

    def _call_uses(self, flow: Flow) -> bool:
        """Whether a live call runs over ``flow``'s TCP connection (it is then not closed for idleness)."""
        return any(call.flow.connection_id == flow.connection_id for call in self.ua.calls)

    def _call_fact(self, fact: CallFact) -> None:
        self.events.emit(EVENT_NAMES[type(fact)], fact)

    def _registration_event(self, event: RegistrationEvent) -> None:
        self.events.emit("registered" if isinstance(event, Registered) else "unregistered", event)

    @staticmethod
    def _log_error(error: Exception) -> None:
        log.error("event handler failed: %s", error)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _localize(self, directory: Directory) -> Directory:
        """The directory as this node uses it: with ``node``, its own state folder and name."""
        if self.node is None:
            return directory
        server = attrs.evolve(directory.server, state_dir=directory.server.state_dir / self.node)
        cluster = attrs.evolve(directory.cluster, node=self.node) if directory.cluster else None
        return attrs.evolve(directory, server=server, cluster=cluster)

    async def start(self) -> None:
        await self.monitor.start()  # before the SIP listeners: a metrics address in use stops the start
        cluster = self.directory.cluster
        try:
            if self.shared is not None and cluster is not None:
                # Any node verifies the answer to a challenge another node sent (a node failing over mid-way).
                self.registrar.authenticator.use_secret(await shared_secret(self.shared, cluster.store))
            if self.guard_stream is not None:
                await self.guard_stream.start()
        except BaseException:
            await self.monitor.stop()
            raise
        specs = self._listen_override or tuple(str(spec) for spec in self.directory.server.listen)
        for spec in specs:
            try:
                host, port = await self.endpoint.listen(spec)
            except OSError as exc:
                await self.endpoint.close()
                await self.monitor.stop()
                raise _listen_error(spec, exc) from exc
            self.addresses.append((spec.split(":", 1)[0].upper(), host, port))
        if self.control is not None:
            try:
                await self.control.start()
            except OSError as exc:  # e.g. a state_dir path too long for a Unix socket (~107 bytes)
                log.warning(
                    "control socket %s unavailable (%s): durchwahl status will not reach this server",
                    self.control.path,
                    exc,
                )
                self.control = None
        self.overload.start()
        self._spawn(self.registrar.run_expiry(30.0), "registration expiry")
        self._spawn(self.registrar.run_watch(), "unanswered challenges")
        own = self._own_addresses if self.shared is not None else None  # a cluster: each node its own
        self._spawn(self.registrar.run_pinger(self.endpoint, 30.0, 5.0, own), "contact pinger")
        self._spawn(self._prune_cdrs(CDR_PRUNE_SECONDS), "CDR retention")
        if self.guard_stream is not None:
            self._spawn(self.guard_stream.run(), "guard events of the cluster")
        for trunk in self.directory.trunks:
            if trunk.register:
                registration = TrunkRegistration(self.endpoint, trunk)
                self.trunks[trunk.name] = registration
                self._spawn(registration.run(), f"trunk {trunk.name} registration")
        self.events.emit("started", list(self.addresses))

    async def _prune_cdrs(self, every: float) -> None:
        """Delete CDR rows older than ``[server] cdr_retention_days`` now and every ``every`` seconds (the
        setting is read each time, so a reload changes it)."""
        while True:
            self.cdr.retention_days = self.directory.server.cdr_retention_days
            try:
                await self.cdr.prune(time.time())
            except CdrStoreError as exc:
                log.error("CDR retention: %s", exc)
            await asyncio.sleep(every)

    def spawn_call(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run a call the server places itself (click-to-call) as one of its supervised tasks."""
        return self._spawn(coro, name)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed: %s", task.get_name(), task.exception())

    async def stop(self) -> None:
        """Stop serving: trunks unregister, background tasks end, the endpoint closes, the store is closed."""
        for registration in self.trunks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(registration.stop(), 2.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.overload.stop()
        if self.control is not None:
            await self.control.close()
        self.ua.close()
        await self.endpoint.close()
        await self.store.close()
        if self.cdr_stream is not None:
            await self.cdr_stream.close()
        if self.shared is not None:
            with contextlib.suppress(Exception):
                await self.shared.aclose()
        await self.cdr.close()
        await self.monitor.stop()
        self.events.emit("stopped")

    def reload(self, path: str | Path | None = None) -> bool:
        """Reload the directory (SIGHUP). A bad file is rejected and the old directory stays in force."""
        source = path or self.directory.source
        if source is None:
            return False
        try:
            directory = self._localize(load_directory(source))
        except ConfigError as exc:
            log.error("reload of %s rejected, the old directory stays in force:\n%s", source, exc)
            self.events.emit("reload_failed", exc)
            return False
        try:
            configure_tls(self.endpoint.tls, directory)
        except TlsError as exc:
            log.error("reload of %s rejected, the old directory stays in force: %s", source, exc)
            self.events.emit("reload_failed", exc)
            return False
        self.directory = directory
        _log_warnings(directory)
        self.registrar.update_directory(directory)
        self.resolver = Resolver(directory, self._resolver_config, self._resolver_hook)
        self.b2bua.directory = directory
        self.b2bua.resolver = self.resolver
        self.b2bua.anchor_media = directory.server.anchor_media
        self.b2bua.watch = watch_policy(directory)
        self.overload.configure(directory.server.admission)
        log.info("reloaded %s", source)
        self.events.emit("reloaded", directory)
        return True

    # ------------------------------------------------------------------------------- health and drain

    def add_health_check(self, check: Callable[[], str | None]) -> None:
        """``check()`` is asked on every health question (an edge's OPTIONS): None when the node may take
        new work, else why not (``"overloaded"`` …). Keep it cheap: it runs per probe."""
        self._health_checks.append(check)

    def health(self) -> str | None:
        """None when this node takes new calls, else the reason it does not (draining, or a check's)."""
        if self.draining:
            return "draining"
        for check in self._health_checks:
            reason = check()
            if reason:
                return reason
        return None

    def drain(self) -> int:
        """Refuse new calls from now on (503, so the edge sends them elsewhere; OPTIONS says 503 too) and let
        the calls in progress finish; :attr:`drained` is set once none is left. Returns how many there are."""
        calls = len(self.b2bua.calls())
        if not self.draining:
            self.draining = True
            log.warning("draining: new calls refused, %d call(s) to finish", calls)
            self.events.emit("draining", calls)
            self._spawn(self._wait_drained(), "drain")
        return calls

    async def _wait_drained(self, every: float = 0.2) -> None:
        while self.b2bua.calls() or self.ua.calls:
            await asyncio.sleep(every)
        log.warning("drained: no call left")
        self.drained.set()
        self.events.emit("drained")

    def _options(self, incoming: IncomingRequest) -> None:
        """The answer to an OPTIONS: capabilities with 200, or 503 while the node takes no new work."""
        reason = self.health()
        if reason is not None:
            incoming.respond(
                503, f"Service Unavailable ({reason})", headers=[("Retry-After", str(RETRY_AFTER_SECONDS))]
            )
            return
        incoming.respond(200, headers=[("Allow", ", ".join(SERVER_METHODS)), ("Accept", "application/sdp")])

    def _maybe_emergency(self, uri: str) -> bool:
        """Whether a Request-URI as written contains one of the emergency numbers (then it is parsed and
        looked at properly before any refusal)."""
        return any(number in uri for number in self.directory.server.emergency)

    def _is_emergency(self, request: Request) -> bool:
        """Whether an INVITE's Request-URI is one of the emergency numbers (admitted over every line)."""
        try:
            dialled = from_request_uri(request.uri)
        except DialStringError:
            return False
        server = self.directory.server
        return emergency_number(dialled, server.emergency, server.numbering) is not None

    def _screen(self, request: Request, flow: Flow) -> Response | bool:
        """Before any transaction: REGISTERs for this registrar and INVITEs for the B2BUA that carry no
        credentials are challenged statelessly (``Authenticator.screen``); what goes on meets admission
        control (503 over the measured load or the caps, ``routing.overload``). A challenge costs no more
        than a 503, and so the caps count calls and registrations, not the attempts challenged."""
        method = request.method
        if method == "REGISTER" and not self.registrar.serves(request):
            verdict: Response | bool = True  # answered 404 by the registrar
        elif method == "INVITE" and self.calls != self.b2bua.handle:
            verdict = True  # an embedding application's own call handling decides
        else:
            verdict = self.registrar.authenticator.screen(request, flow)
        if verdict is not True:
            return verdict
        refusal = self.overload.screen(request, flow)
        return True if refusal is None else refusal

    async def _handle(self, incoming: IncomingRequest) -> None:
        method = incoming.request.method
        if method == "REGISTER":
            await self.registrar.handle(incoming)
        elif method == "OPTIONS":
            self._options(incoming)
        elif method == "INVITE" and self.draining and incoming.request.to.tag is None:
            incoming.respond(
                503, "Service Unavailable (draining)", headers=[("Retry-After", str(RETRY_AFTER_SECONDS))]
            )
        elif method == "INVITE" and self.calls is not None:
            self.overload.call_began(incoming.request)
            try:
                result = self.calls(incoming)
                if result is not None:
                    await result
            finally:
                self.overload.call_ended()
        elif method == "INVITE" and incoming.request.to.tag is None:
            incoming.respond(480, "Temporarily Unavailable (no call routing configured)")
        elif method == "REFER" and incoming.request.to.tag is None:
            incoming.respond(403, "Forbidden (REFER only inside a call)")
        else:
            incoming.respond(481)
