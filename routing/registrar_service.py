"""The registrar as a service: digest authentication, authorisation and the location store around
:func:`sipcore.registrar.process_register` (RFC 3261 §10.3), driven by an ``sipcore.Endpoint``.

Wiring::

    store = SqliteLocationStore(directory.server.state_dir / "location.db")
    registrar = RegistrarService(directory, store, secret=os.urandom(32))
    endpoint = Endpoint(dispatch, core=CoreConfig(allowed_methods=(..., "REGISTER")))
    # in dispatch: if incoming.request.method == "REGISTER": await registrar.handle(incoming)

What :meth:`RegistrarService.handle` does, in §10.3's order:

1. The Request-URI must name this registrar's domain: the configured ``domain``, an alias, or any IP address
   literal (phones configured with the server's address instead of the domain), else 404.
2. (Require is checked by the endpoint's UAS core.)
3. Digest authentication against the directory's credentials (``routing.authenticator``, shared with the
   B2BUA): no or wrong credentials get a fresh 401 challenge (the configured algorithms in order,
   ``qop="auth"``); a correct answer to an expired nonce gets 401 with ``stale=true``. Unknown users and
   wrong passwords are answered identically (no enumeration: same status, reason, headers and challenge;
   ``sipcore.auth`` hashes as much for either). Brute force (``routing.security.FailureGuard``): failures
   are counted per source and user; a throttled pair has its credentials checked at most once per interval,
   a blocked one not at all, and both get the ordinary fresh 401 otherwise. Nonces are bound to the address
   they were sent to. A REGISTER without credentials is normally challenged before it reaches this service,
   statelessly (``Authenticator.screen``).
4. The authenticated user may only register its own AOR, ``sip:<sip_user>@<domain>``: anything else is 403.
5-8. :func:`~sipcore.registrar.process_register` on the stored bindings, under a per-AOR lock so that two
   REGISTERs for one AOR never interleave their read and write; a failed store write answers 500.

Behind an edge proxy (``[cluster] edges``, RFC 3327): a REGISTER from an edge carries the edge's Path; each
binding keeps it, and :meth:`RegistrarService.reach` gives the Path as the route set and the flow to its
first hop, so the node reaches the phone through the edge that holds its NAT flow — whichever node the
REGISTER reached. A Path from anywhere else is ignored (a phone must not choose where a node sends).

NAT: each binding remembers the flow its REGISTER came on (transport, listener, source address and port as
seen here, TCP connection), and :meth:`RegistrarService.flow_for` gives the flow to reach the phone by,
whatever private address its Contact claims. Registered TCP connections stay open because the transport never
closes idle connections (it answers RFC 5626 CRLF keep-alives). :meth:`RegistrarService.ping` sends OPTIONS
to every binding through its flow and marks the ones that do not answer, so calls skip dead devices until
they register again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import attrs

from durchwahl.media.sdes import SrtpPolicy
from durchwahl.sipcore.auth import DigestServer
from durchwahl.sipcore.endpoint import Endpoint, IncomingRequest, RequestTimeout
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.registrar import (
    Binding,
    BindingFlow,
    RegisterOutcome,
    RegisterRejected,
    RegistrarConfig,
    address_of_record,
    by_preference,
    process_register,
)
from durchwahl.sipcore.transport import Flow, TransportError, TransportName
from durchwahl.sipcore.uri import NameAddr, SipUri, parse_name_addr

from .authenticator import Authenticator, Unverified
from .challenge_watch import ChallengeWatch, Unanswered
from .cluster import EdgeAddress, from_edge
from .directory import Directory
from .location import LocationStore, LocationStoreError
from .security import FailureGuard

__all__ = ["Device", "RegistrarService"]

log = logging.getLogger(__name__)

_DEFAULT_CONFIG = RegistrarConfig()


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    """Phones often register with the server's address as domain; parsing it is slow, hosts repeat."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _via(flow: BindingFlow | None) -> str:
    """How a binding's phone is reached, for a log line: ``UDP 192.0.2.7:5062`` (or "an unknown flow")."""
    if flow is None:
        return "an unknown flow"
    host, port = flow.remote
    return f"{flow.transport} [{host}]:{port}" if ":" in host else f"{flow.transport} {host}:{port}"


@attrs.frozen
class Device:
    """Where a registered device is reached: its contact URI, the flow to send on and the route set (the
    binding's Path: the flow then leads to its first hop, the edge)."""

    uri: SipUri
    flow: Flow
    route: tuple[NameAddr, ...] = ()
    binding: Binding | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Registered:
    """A device registered (a new binding): emitted as the server's ``registered`` event."""

    aor: str
    contact: str
    flow: BindingFlow | None
    user_agent: str | None


@attrs.frozen
class Unregistered:
    """A binding went away: ``reason`` is "removed" (REGISTER), "expired" or "evicted"."""

    aor: str
    contact: str
    reason: str


RegistrationEvent = Registered | Unregistered


class RegistrarService:
    """Answers REGISTER requests for the directory's employees and keeps their bindings in ``store``.

    ``secret`` keys the digest nonces (32 random bytes; the same across restarts and nodes keeps issued
    nonces valid). ``clock`` is wall-clock time: bindings and nonces outlive a restart. ``algorithms``
    overrides the directory's ``auth_algorithms`` (the order is the order offered). ``random_bytes`` makes
    nonces unpredictable beyond their MAC (see ``sipcore.auth.DigestServer``). ``guard`` counts
    authentication failures per source (a default ``FailureGuard`` when not given).
    """

    def __init__(
        self,
        directory: Directory,
        store: LocationStore,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        config: RegistrarConfig = _DEFAULT_CONFIG,
        algorithms: Sequence[str] | None = None,
        aliases: Iterable[str] = (),
        nonce_lifetime: float = 300.0,
        random_bytes: Callable[[int], bytes] | None = None,
        guard: FailureGuard | None = None,
        authenticator: Authenticator | None = None,
        watch: ChallengeWatch | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self.authenticator = authenticator or Authenticator(
            directory,
            secret=secret,
            guard=guard,
            clock=clock,
            algorithms=algorithms,
            nonce_lifetime=nonce_lifetime,
            random_bytes=random_bytes,
        )
        if watch is not None:
            self.authenticator.watch = watch
        self._watch_wake = asyncio.Event()
        self.authenticator.on_challenge = self._watch_wake.set
        self._aliases = frozenset(a.lower() for a in aliases)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: (aor, contact) of bindings that did not answer the last OPTIONS ping; cleared by a REGISTER.
        self.unreachable: set[tuple[str, str]] = set()
        #: Called with every ``Registered`` / ``Unregistered`` (the server turns them into pyee events).
        self.on_event: Callable[[RegistrationEvent], None] | None = None
        self.directory = directory
        #: The edge proxies whose Path this registrar stores (``[cluster] edges``).
        self.edges: tuple[EdgeAddress, ...] = directory.cluster.edges if directory.cluster else ()

    @property
    def guard(self) -> FailureGuard:
        """The brute-force guard of the authenticator (shared with every other authenticated method)."""
        return self.authenticator.guard

    @guard.setter
    def guard(self, guard: FailureGuard) -> None:
        self.authenticator.guard = guard

    @property
    def digest(self) -> DigestServer:
        return self.authenticator.digest

    @property
    def watch(self) -> ChallengeWatch:
        """Challenges not answered yet: a phone that gives up after one is logged (:meth:`run_watch`)."""
        return self.authenticator.watch

    def update_directory(self, directory: Directory) -> None:
        """Use a reloaded directory; bindings stay (see ``Authenticator.update_directory``)."""
        self.directory = directory
        self.edges = directory.cluster.edges if directory.cluster else ()
        self.authenticator.update_directory(directory)

    # ---------------------------------------------------------------------------------------- REGISTER

    async def handle(self, incoming: IncomingRequest) -> None:
        """Answer one REGISTER (see the module docstring); any other method gets 405."""
        request = incoming.request
        if request.method != "REGISTER":
            incoming.respond(405, headers=[("Allow", "REGISTER")])
            return
        now = self._clock()
        domain = self.directory.server.domain
        if not self.serves(request):
            incoming.respond(404, f"Not Found (this registrar serves {domain})")
            return

        verdict = self.authenticator.verify(request, incoming.flow)
        if isinstance(verdict, Unverified):  # every such path answers with the same fresh challenge
            log.debug("REGISTER from %s: challenged (%s)", incoming.flow, verdict.reason)
            incoming.send(
                self.authenticator.challenge(
                    request, incoming.flow, to_tag=incoming.to_tag, stale=verdict.stale
                )
            )
            return
        username = verdict.username

        try:
            address_of_record(request)  # the To URI must be sip/sips (400 otherwise)
        except RegisterRejected as exc:
            incoming.respond(exc.status, exc.reason, headers=exc.headers)
            return
        to = request.to.uri
        assert isinstance(to, SipUri)
        employee = self.directory.employee_by_sip_user(username)
        aor = f"sip:{username}@{domain}"
        if employee is None or to.user != employee.sip_user or not self._serves(to.host):
            log.info("REGISTER from %s: %s may not register %s", incoming.flow, username, to)
            incoming.respond(403, f"Forbidden ({username} may only register {aor})")
            return

        if employee.srtp is SrtpPolicy.REQUIRED and incoming.flow.transport != "TLS":
            log.info("REGISTER from %s: %s must register over TLS (srtp = required)", incoming.flow, username)
            incoming.respond(403, f"Forbidden ({username} must register over TLS: SRTP is required)")
            return
        async with self._locked(aor):
            outcome = await self._register(incoming, aor, now)
        if outcome is not None:
            incoming.send(outcome.response)

    async def _register(self, incoming: IncomingRequest, aor: str, now: float) -> RegisterOutcome | None:
        path = incoming.request.values("path") if from_edge(self.edges, incoming.flow.remote) else ()
        try:
            current = await self.store.get(aor)
            outcome = process_register(
                incoming.request,
                bindings=current,
                now=now,
                aor=aor,
                config=self.config,
                flow=incoming.flow,
                to_tag=incoming.to_tag,
                path=path,
            )
            if outcome.changed and outcome.accepted:
                await self.store.replace(aor, outcome.bindings)
            elif outcome.expired:
                await self.store.replace(aor, outcome.bindings)  # rejected, but the expired ones may go
        except LocationStoreError:
            log.exception("REGISTER for %s: location store failed", aor)
            incoming.respond(500, "Server Internal Error (location store failed)")
            return None
        for binding in outcome.added:
            agent = f" ({binding.user_agent})" if binding.user_agent else ""
            log.info("registered %s at %s via %s%s", aor, binding.contact, _via(binding.flow), agent)
            self._emit(Registered(aor, binding.contact, binding.flow, binding.user_agent))
        for binding in (*outcome.added, *outcome.refreshed, *outcome.removed):
            self.unreachable.discard((aor, binding.contact))
        for binding in outcome.removed:
            log.info("unregistered %s at %s", aor, binding.contact)
            self._emit(Unregistered(aor, binding.contact, "removed"))
        for binding in outcome.expired:
            self._emit(Unregistered(aor, binding.contact, "expired"))
        if not outcome.accepted:
            log.info("REGISTER for %s from %s: %s", aor, incoming.flow, outcome.response.reason)
        return outcome

    @contextlib.asynccontextmanager
    async def _locked(self, aor: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(aor, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[aor] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[aor]
            if users == 1:
                del self._locks[aor]
            else:
                self._locks[aor] = (lock, users - 1)

    def serves(self, request: Request) -> bool:
        """Whether a REGISTER's Request-URI names this registrar's domain (else it is answered 404)."""
        return isinstance(request.uri, SipUri) and self._serves(request.uri.host)

    def _serves(self, host: str) -> bool:
        host = host.lower()
        if host == self.directory.server.domain.lower() or host in self._aliases:
            return True
        return _is_ip_literal(host)

    # ------------------------------------------------------------------------------ given-up challenges

    def report_unanswered(self, now: float | None = None) -> list[Unanswered]:
        """Log the challenges nobody answered in time (one INFO line per source and client) and return
        them: the phone gave up, and says only "registration failed" on its own screen."""
        found = self.watch.due(self._clock() if now is None else now)
        groups: dict[tuple[str, str | None, tuple[str, ...]], list[Unanswered]] = {}
        for challenge in found:
            groups.setdefault((challenge.source, challenge.user_agent, challenge.algorithms), []).append(
                challenge
            )
        realm = self.digest.realm
        for (_, agent, algorithms), challenges in groups.items():
            users = ", ".join(c.user or "(no user)" for c in challenges[:5])
            if len(challenges) > 5:
                users += f" and {len(challenges) - 5} more"
            if any(a.startswith("SHA-256") for a in algorithms):
                hint = (
                    "A phone that cannot answer SHA-256 (baresip 1.0) needs "
                    '[server] auth_algorithms = ["MD5"]; otherwise check its'
                )
            else:
                hint = "Check the phone's"
            log.info(
                "REGISTER for %s from %s (%s): challenged with %s, no answer within %.0f s: "
                "the phone gave up. %s user name and password for realm %s",
                users,
                challenges[0].flow,
                agent or "no User-Agent",
                ", ".join(algorithms),
                self.watch.answer_within,
                hint,
                realm,
            )
        return found

    async def run_watch(self) -> None:
        """Report given-up challenges as they fall due, until cancelled (a task of the server's)."""
        while True:
            due = self.watch.next_due()
            if due is None:
                self._watch_wake.clear()
                await self._watch_wake.wait()
                continue
            # A second past the first due: the ones falling due meanwhile (a scanner's burst) share a line.
            await asyncio.sleep(max(0.0, due - self._clock()) + 1.0)
            self.report_unanswered()

    # ------------------------------------------------------------------------------------------ lookup

    async def contacts(self, sip_user: str, *, include_unreachable: bool = False) -> list[Binding]:
        """The live bindings of an employee's AOR, in the order to try them (q, then freshest).

        Bindings that did not answer the last OPTIONS ping (:meth:`ping`) are left out unless asked for.
        """
        aor = f"sip:{sip_user}@{self.directory.server.domain}"
        try:
            bindings = await self.store.get(aor, now=self._clock())
        except LocationStoreError as exc:  # a shared store gone: the call finds nobody, the node stays up
            log.error("looking up %s: %s", aor, exc)
            return []
        if not include_unreachable:
            bindings = tuple(b for b in bindings if (b.aor, b.contact) not in self.unreachable)
        return by_preference(bindings)

    @staticmethod
    def flow_for(binding: Binding) -> Flow | None:
        """The flow to reach the phone by: the one its REGISTER came on (None if unknown)."""
        flow = binding.flow
        if flow is None or flow.transport not in ("UDP", "TCP", "TLS"):
            return None
        transport: TransportName = (
            "UDP" if flow.transport == "UDP" else "TLS" if flow.transport == "TLS" else "TCP"
        )
        return Flow(transport, flow.local, flow.remote, flow.connection_id)

    def reach(self, binding: Binding, endpoint: Endpoint) -> Device | None:
        """How this node reaches a binding's device (None: it cannot).

        With a Path, through the Path's first hop (an edge: the flow goes there, the Path becomes the route
        set), wherever the REGISTER arrived. Without one, on the flow its REGISTER came on (the transport
        sends from a listener of its own when the binding names another node's).
        """
        if binding.path:
            route = tuple(parse_name_addr(value) for value in binding.path)
            first = route[0].uri
            if not isinstance(first, SipUri) or not _is_ip_literal(first.host):
                return None
            transport = (first.param("transport") or "udp").upper()
            port = first.port or (5061 if first.scheme == "sips" else 5060)
            if self.edges and not from_edge(self.edges, (first.host.strip("[]"), port)):
                log.warning("binding %s: its Path leads to %s, not an edge; not used", binding.contact, first)
                return None
            try:
                flow = endpoint.flow_to(first.host.strip("[]"), port, transport)
            except (OSError, TransportError, LookupError):
                return None
            return Device(binding.uri, flow, route, binding)
        direct = self.flow_for(binding)
        return None if direct is None else Device(binding.uri, direct, (), binding)

    async def ping(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 5.0,
        concurrency: int = 20,
        own: Callable[[], Iterable[tuple[str, int]]] | None = None,
    ) -> int:
        """Send OPTIONS to every live binding the way a call would reach it (its Path, else its flow); mark
        those that do not answer in ``timeout``.

        Any response counts as an answer (a 404 or 405 still proves the phone is there). ``own``: this node's
        listening addresses, when several nodes share the store: only the bindings whose REGISTER reached
        one of them are pinged here (each binding by one node). Returns how many are unreachable now.
        """
        bindings = await self.store.all(now=self._clock())
        if own is not None:
            mine = set(own())
            bindings = tuple(b for b in bindings if b.flow is None or tuple(b.flow.local) in mine)
        domain = self.directory.server.domain
        limit = asyncio.Semaphore(concurrency)

        async def one(binding: Binding) -> tuple[Binding, bool]:
            device = self.reach(binding, endpoint)
            if device is None:
                return binding, True  # nothing known to ping through; leave it alone
            flow = device.flow
            request = endpoint.make_request(
                "OPTIONS",
                binding.uri,
                flow,
                from_=f"<sip:registrar@{domain}>",
                to=f"<{binding.uri}>",
                headers=[("Route", str(hop)) for hop in device.route],
            )
            async with limit:
                try:
                    async with asyncio.timeout(timeout):
                        await endpoint.request(request, flow)
                except (TimeoutError, RequestTimeout, TransportError):
                    return binding, False
            return binding, True

        results = await asyncio.gather(*(one(b) for b in bindings))
        live = {(b.aor, b.contact) for b in bindings}
        self.unreachable &= live
        for binding, answered in results:
            key = (binding.aor, binding.contact)
            if answered:
                self.unreachable.discard(key)
            elif key not in self.unreachable:
                log.info(
                    "registered contact unreachable (no answer to OPTIONS): %s at %s via %s",
                    *key,
                    _via(binding.flow),
                )
                self.unreachable.add(key)
        return len(self.unreachable)

    async def run_pinger(
        self,
        endpoint: Endpoint,
        interval: float = 30.0,
        timeout: float = 5.0,
        own: Callable[[], Iterable[tuple[str, int]]] | None = None,
    ) -> None:
        """Ping registered contacts every ``interval`` seconds until cancelled (a task of the server's)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.ping(endpoint, timeout=timeout, own=own)
            except LocationStoreError:
                log.exception("pinging registered contacts failed; retrying in %.0f s", interval)

    async def expire(self) -> int:
        """Purge expired bindings now; returns how many went."""
        gone = await self.store.expire(self._clock())
        for binding in gone:
            log.info("registration expired: %s at %s", binding.aor, binding.contact)
            self._emit(Unregistered(binding.aor, binding.contact, "expired"))
        return len(gone)

    def _emit(self, event: RegistrationEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("registration event handler failed on %s", event)

    async def run_expiry(self, interval: float = 30.0) -> None:
        """Purge expired bindings every ``interval`` seconds until cancelled (a task of the server's)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire()
            except LocationStoreError:
                log.exception("purging expired registrations failed; retrying in %.0f s", interval)
