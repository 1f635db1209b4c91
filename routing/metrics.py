"""The server's Prometheus metrics (``prometheus-client``) and the HTTP endpoint that serves them.

Nothing here costs a call or a packet more than an increment where the event already happens:

* counters and the set-up delay histogram are fed by what the server already announces — its pyee events
  (registrations, calls started, answered and ended, digits), the endpoint's response hook (the first
  answer to each call's INVITE: RFC 6076 session request delay, and its final status: the inputs of the
  session establishment ratios), the screen's verdicts (requests shed) and the loop-lag meter;
* everything else is read when Prometheus scrapes: registrations (from the location store), calls in
  progress, RTP of the live calls' legs, blocks in force, the security log's counts, trunk states.

The names, labels and meanings are documented in docs/OPERATIONS.md (*Metrics*); a dashboard is in
``examples/grafana-dashboard.json``. The endpoint (:class:`MetricsEndpoint`) is a small asyncio HTTP
responder on the event loop, so a scrape reads the server's state in the thread that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from durchwahl.media.relay import MediaRelay, RelayStats, Side
from durchwahl.media.session import SessionStats
from durchwahl.sipcore.endpoint import IncomingRequest
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.transport import Flow

from .cdr import CallRecord, Disposition
from .events import CallAnswered, CallStarted, DigitPressed
from .loadmeter import LoopLag
from .monitoring_config import MetricsAddress
from .registrar_service import Registered, Unregistered
from .security_log import SecurityEvent

if TYPE_CHECKING:
    from .server import Server

__all__ = ["MetricsEndpoint", "MetricsListenError", "ServerMetrics", "call_kind"]

log = logging.getLogger(__name__)

#: RFC 6076 §4.3 session request delay: most answers come within a second; a failure may take a timeout.
SRD_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Destinations that leave through a trunk (CDR ``destination_kind``).
_OUT: Final = frozenset({"external", "emergency"})
_METHODS: Final = frozenset({"INVITE", "REGISTER", "OPTIONS", "SUBSCRIBE", "MESSAGE", "NOTIFY", "PUBLISH"})


def call_kind(source_trunk: str | None, destination_kind: str | None) -> str:
    """``inbound`` (it came in through a trunk), ``outbound`` (it goes out through one) or ``internal``."""
    if source_trunk:
        return "inbound"
    return "outbound" if destination_kind in _OUT else "internal"


class _Folded:
    """A counter over things that come and go (the RTP sessions of calls): the sum of each one's own count,
    kept once it is gone. Each scrape hands the live ones in; one no longer live adds its final count (its
    reader is kept until then, so it still reads the last value)."""

    def __init__(self) -> None:
        self.retired: Tally[str] = Tally()
        self._live: dict[Any, tuple[str, Callable[[], int]]] = {}

    def totals(self, live: dict[Any, tuple[str, Callable[[], int]]]) -> Tally[str]:
        for key, (kind, read) in self._live.items():
            if key not in live:
                self.retired[kind] += read()
        self._live = live
        totals = Tally(self.retired)
        for kind, read in live.values():
            totals[kind] += read()
        return totals


class ServerMetrics:
    """The metrics of one :class:`~routing.server.Server`, in a registry of their own (several servers in
    one process do not mix). :meth:`attach` hooks them to the server; :meth:`refresh` reads what a scrape
    needs asynchronously (the location store) before :meth:`exposition`."""

    def __init__(self, server: Server, lag: LoopLag | None = None) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.registrations = Counter(
            "durchwahl_registrations",
            "Registration bindings added (event=registered), removed by their phone or expired.",
            ["event"],
            registry=registry,
        )
        self.calls_started = Counter(
            "durchwahl_calls_started",
            "Calls accepted for routing, by origin (trunk: from a provider; employee: from a phone).",
            ["origin"],
            registry=registry,
        )
        self.calls_answered = Counter(
            "durchwahl_calls_answered",
            "Calls whose destination answered, by origin, counted when it answers.",
            ["origin"],
            registry=registry,
        )
        self.calls_ended = Counter(
            "durchwahl_calls_ended",
            "Calls that ended (one per CDR row), by kind and disposition.",
            ["kind", "disposition"],
            registry=registry,
        )
        self.setup_delay = Histogram(
            "durchwahl_session_request_delay_seconds",
            "RFC 6076 SRD: from a call's INVITE to the first answer that is not 100 Trying "
            "(outcome=success: a provisional or 2xx; failure: a final failure).",
            ["outcome"],
            buckets=SRD_BUCKETS,
            registry=registry,
        )
        self.session_attempts = Counter(
            "durchwahl_session_attempts",
            "Call INVITEs by the final status sent (digest challenges are no attempt): the inputs of "
            "RFC 6076 SER and SEER.",
            ["status"],
            registry=registry,
        )
        self.shed = Counter(
            "durchwahl_requests_shed",
            "New requests turned away before any transaction: dropped unanswered, or answered 503.",
            ["method", "answer"],
            registry=registry,
        )
        self.digits = Counter(
            "durchwahl_digits_detected",
            "Key presses during greetings, by how they came (rfc4733, inband, info).",
            ["source"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "durchwahl_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due (sampled four times a second).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._zeros()
        self.lag = lag
        if lag is not None:
            lag.listeners.append(self.loop_lag.observe)
        ProcessCollector(registry=registry)
        registry.register(_Collector(self))
        #: Set by :meth:`refresh`: (contacts, employees with one, contacts not answering pings).
        self.bindings: tuple[int, int, int] = (0, 0, 0)
        self._origins: dict[str, str] = {}
        self._early: weakref.WeakSet[IncomingRequest] = weakref.WeakSet()
        self.rtp_received = _Folded()
        self.rtp_sent = _Folded()
        self.rtp_lost = _Folded()

    def _zeros(self) -> None:
        """Every series of a known label value exists from the start (at 0), so a rate over it is 0 rather
        than nothing until the first event."""
        for event in ("registered", "removed", "expired"):
            self.registrations.labels(event)
        for origin in ("trunk", "employee"):
            self.calls_started.labels(origin)
            self.calls_answered.labels(origin)
        for kind in ("internal", "inbound", "outbound"):
            for disposition in Disposition:
                self.calls_ended.labels(kind, disposition.value)
        for outcome in ("success", "failure"):
            self.setup_delay.labels(outcome)
        for source in ("rfc4733", "inband", "info"):
            self.digits.labels(source)
        for method in ("INVITE", "REGISTER"):
            for answer in ("dropped", "503"):
                self.shed.labels(method, answer)

    # ------------------------------------------------------------------------------- event hooks

    def attach(self) -> None:
        """Subscribe to the server's events and hook the endpoint's screen and response observer."""
        server = self.server
        events = server.events
        events.on("registered", self._registered)
        events.on("unregistered", self._unregistered)
        events.on("call_started", self._call_started)
        events.on("answered", self._answered)
        events.on("call_ended", self._call_ended)
        events.on("digit", self._digit)
        endpoint = server.endpoint
        endpoint.on_response = self._response_sent
        screen = endpoint.screen
        if screen is not None:

            def counted(request: Request, flow: Flow) -> Response | bool:
                verdict = screen(request, flow)
                if verdict is False:
                    self.shed.labels(_method(request), "dropped").inc()
                elif isinstance(verdict, Response) and verdict.status == 503:
                    self.shed.labels(_method(request), "503").inc()
                return verdict

            endpoint.screen = counted

    def _registered(self, event: Registered) -> None:
        self.registrations.labels("registered").inc()

    def _unregistered(self, event: Unregistered) -> None:
        self.registrations.labels(event.reason).inc()

    def _call_started(self, fact: CallStarted) -> None:
        origin = "trunk" if fact.source_trunk else "employee"
        self._origins[fact.call_id] = origin
        self.calls_started.labels(origin).inc()

    def _answered(self, fact: CallAnswered) -> None:
        self.calls_answered.labels(self._origins.get(fact.call_id, "employee")).inc()

    def _call_ended(self, record: CallRecord) -> None:
        self._origins.pop(record.call_id, None)
        kind = call_kind(record.source_trunk, record.destination_kind)
        self.calls_ended.labels(kind, record.disposition.value).inc()

    def _digit(self, fact: DigitPressed) -> None:
        self.digits.labels(fact.source).inc()

    def _response_sent(self, incoming: IncomingRequest, response: Response) -> None:
        """The first answer to a call's INVITE other than 100 gives its set-up delay; the final one its
        status. Challenges (401, 407) are no session attempt: the retry with credentials is."""
        request = incoming.request
        status = response.status
        if request.method != "INVITE" or request.to.tag is not None or status in (100, 401, 407):
            return
        first = incoming not in self._early
        if status < 200:
            if first:
                self._early.add(incoming)
                self.setup_delay.labels("success").observe(incoming.endpoint.now - incoming.received_at)
            return
        if first:
            outcome = "success" if status < 300 else "failure"
            self.setup_delay.labels(outcome).observe(incoming.endpoint.now - incoming.received_at)
        self.session_attempts.labels(str(status)).inc()

    # ------------------------------------------------------------------------------------ scraping

    async def refresh(self) -> None:
        """Read what the collector cannot read synchronously: the registrations in the location store."""
        registrar = self.server.registrar
        try:
            async with asyncio.timeout(5.0):
                bindings = await registrar.store.all(now=time.time())
        except Exception as exc:  # a scrape still answers, with the last figures
            log.warning("metrics: registrations not read from the location store: %s", exc)
            return
        unreachable = sum(1 for b in bindings if (b.aor, b.contact) in registrar.unreachable)
        self.bindings = (len(bindings), len({b.aor for b in bindings}), unreachable)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _method(request: Request) -> str:
    return request.method if request.method in _METHODS else "other"


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class _Collector:
    """What is read at scrape time (see the module docstring)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        server = metrics.server
        contacts, employees, unreachable = metrics.bindings
        yield GaugeMetricFamily(
            "durchwahl_registered_contacts", "Registered contacts (bindings) in force.", value=contacts
        )
        yield GaugeMetricFamily(
            "durchwahl_registered_employees",
            "Employees with at least one registered contact.",
            value=employees,
        )
        yield GaugeMetricFamily(
            "durchwahl_unreachable_contacts",
            "Registered contacts that did not answer the last OPTIONS ping (skipped when ringing).",
            value=unreachable,
        )
        yield from self._calls(server)
        yield from self._rtp(server)
        yield from self._security(server)
        trunks = _gauge(
            "durchwahl_trunk_registration_state",
            "1 for the state each registering trunk is in (unregistered, registered, failing).",
            ["trunk", "state"],
        )
        for name, registration in server.trunks.items():
            current = registration.status.state
            for state in type(current):
                trunks.add_metric([name, state.value], 1.0 if state is current else 0.0)
        yield trunks
        yield from self._admission(server)
        lag = metrics.lag
        if lag is not None:
            yield GaugeMetricFamily(
                "durchwahl_event_loop_lag_average_seconds",
                "The event loop's lag, averaged over the last few seconds.",
                value=lag.average,
            )
        info = _gauge("durchwahl_build_info", "The running version (value 1).", ["version"])
        info.add_metric([_version()], 1.0)
        yield info

    @staticmethod
    def _admission(server: Server) -> Iterator[Metric]:
        """Admission control's counters: what it admitted and refused (also the 503s sent from raw headers,
        which no screen sees), and the datagrams the kernel dropped."""
        snapshot = server.overload.snapshot()
        admitted = CounterMetricFamily(
            "durchwahl_admission_admitted",
            "New out-of-dialog requests admitted by admission control, by kind (INVITE, REGISTER, other).",
            labels=["kind"],
        )
        for kind, n in snapshot["admitted"].items():
            admitted.add_metric([kind], n)
        yield admitted
        refused = CounterMetricFamily(
            "durchwahl_admission_refused",
            "New out-of-dialog requests refused with 503 by admission control, by kind and reason.",
            labels=["kind", "reason"],
        )
        for kind, reasons in snapshot["refused"].items():
            for reason, n in reasons.items():
                refused.add_metric([kind, reason], n)
        yield refused
        yield GaugeMetricFamily(
            "durchwahl_overloaded",
            "1 while the node's health answer is 503 for overload (a new call refused for measured load "
            "in the last 2 s, or at max_calls).",
            value=1.0 if server.overload.health() else 0.0,
        )
        dropped = snapshot["datagrams_dropped"]
        if dropped is not None:
            yield CounterMetricFamily(
                "durchwahl_datagrams_dropped",
                "UDP datagrams the kernel dropped because a receive buffer was full (Linux).",
                value=dropped,
            )

    @staticmethod
    def _calls(server: Server) -> Iterator[Metric]:
        active: Tally[tuple[str, str]] = Tally()
        for call in server.b2bua.calls():
            kind = call_kind(call.source_trunk, call.destination_kind)
            active[(kind, call.phase.name.lower())] += 1
        family = _gauge(
            "durchwahl_active_calls",
            "Calls in progress by kind (internal, inbound, outbound) and phase (setting_up, greeting, "
            "ringing, connected).",
            ["kind", "phase"],
        )
        for kind in ("internal", "inbound", "outbound"):
            for phase in ("setting_up", "greeting", "ringing", "connected"):
                family.add_metric([kind, phase], float(active[(kind, phase)]))
        yield family

    def _rtp(self, server: Server) -> Iterator[Metric]:
        """The RTP of every anchored call's legs, by kind of leg: ``phone`` (an employee's device) or
        ``trunk`` (the provider)."""
        received: dict[Any, tuple[str, Callable[[], int]]] = {}
        sent: dict[Any, tuple[str, Callable[[], int]]] = {}
        lost: dict[Any, tuple[str, Callable[[], int]]] = {}
        jitter: dict[str, list[float]] = {"phone": [], "trunk": []}
        legs: Tally[str] = Tally()
        for call in server.b2bua.services.active.values():
            media = call.media
            if media is None:
                continue
            record = call.record
            a_kind = "trunk" if record.source_trunk else "phone"
            b_kind = "trunk" if record.destination is not None and record.destination[0] in _OUT else "phone"
            relay = media.bridge.relay if media.bridge is not None else None
            for session, kind, side in ((media.a, a_kind, Side.A), (media.b, b_kind, Side.B)):
                if session is None:
                    continue
                legs[kind] += 1
                stats = session.stats
                received[id(stats)] = (kind, _reader(stats, "received"))
                sent[id(stats)] = (kind, _reader(stats, "sent"))
                if relay is not None:
                    lost[(id(relay), side)] = (kind, _lost_reader(relay, side))
                    direction: RelayStats = relay.stats(side)
                    if direction.relayed >= 32:  # a jitter estimate from two samples at least
                        jitter[kind].append(direction.jitter)
        metrics = self.metrics
        for name, folded, live, text in (
            ("durchwahl_rtp_packets_received", metrics.rtp_received, received, "RTP packets received"),
            ("durchwahl_rtp_packets_sent", metrics.rtp_sent, sent, "RTP packets sent"),
            ("durchwahl_rtp_packets_lost", metrics.rtp_lost, lost, "RTP packets lost on the way to us"),
        ):
            totals = folded.totals(live)
            family = CounterMetricFamily(name, f"{text}, by kind of leg (phone, trunk).", labels=["leg"])
            for kind in ("phone", "trunk"):
                family.add_metric([kind], float(totals[kind]))
            yield family
        count = _gauge("durchwahl_rtp_legs", "Anchored call legs with an RTP session, by kind.", ["leg"])
        mean = _gauge(
            "durchwahl_rtp_jitter_seconds",
            "Mean RFC 3550 interarrival jitter of the audio bridged calls receive, by kind of leg.",
            ["leg"],
        )
        peak = _gauge(
            "durchwahl_rtp_jitter_max_seconds", "The largest jitter among the bridged legs, by kind.", ["leg"]
        )
        for kind in ("phone", "trunk"):
            count.add_metric([kind], float(legs[kind]))
            values = jitter[kind]
            mean.add_metric([kind], sum(values) / len(values) if values else 0.0)
            peak.add_metric([kind], max(values, default=0.0))
        yield count
        yield mean
        yield peak

    @staticmethod
    def _security(server: Server) -> Iterator[Metric]:
        counts = server.registrar.authenticator.security.counts
        events = CounterMetricFamily(
            "durchwahl_security_events", "Lines written to the security log, by event.", labels=["event"]
        )
        by_event: Tally[str] = Tally()
        digest = CounterMetricFamily(
            "durchwahl_digest_failures",
            "Credentials checked and found wrong, by method (each is an auth-failed line).",
            labels=["method"],
        )
        for (event, method), count in sorted(counts.items(), key=lambda item: (item[0][0].value, item[0][1])):
            by_event[event.value] += count
            if event is SecurityEvent.AUTH_FAILED:
                digest.add_metric([method], float(count))
        for event in SecurityEvent:
            events.add_metric([event.value], float(by_event[event.value]))
        yield events
        yield digest
        blocks = _gauge(
            "durchwahl_blocked_sources",
            "Blocks in force after failed logins: of one user from a source (scope=user), or of a whole "
            "source (scope=source).",
            ["scope"],
        )
        in_force = server.registrar.guard.blocks(time.time())
        scopes = Tally("source" if b.user is None else "user" for b in in_force)
        for scope in ("user", "source"):
            blocks.add_metric([scope], float(scopes[scope]))
        yield blocks


def _reader(stats: SessionStats, name: str) -> Callable[[], int]:
    return lambda: int(getattr(stats, name))


def _lost_reader(relay: MediaRelay, side: Side) -> Callable[[], int]:
    return lambda: max(0, relay.lost(side))


def _version() -> str:
    try:
        return version("durchwahl")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------ endpoint


class MetricsListenError(OSError):
    """The metrics address cannot be bound: the message says which, why, and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


_HINTS: Final = {
    errno.EADDRINUSE: "another program listens there; choose another port in [server] metrics_listen",
    errno.EADDRNOTAVAIL: "not an address of this host; change [server] metrics_listen",
    errno.EACCES: "ports below 1024 need privileges; use a higher port",
}
_MAX_REQUEST: Final = 8192
_MAX_CLIENTS: Final = 16


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1 on ``address``, one request per connection; anything else gets 404
    (another path) or 405 (another method). At most 16 connections at once; a request must arrive within
    5 seconds and fit in 8 KiB. ``address`` is where it listens once started (port 0 resolved)."""

    def __init__(self, metrics: ServerMetrics, address: MetricsAddress) -> None:
        self.metrics = metrics
        self.address = address
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._client, self.address.host, self.address.port, limit=_MAX_REQUEST
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            hint = _HINTS.get(exc.errno or 0)
            message = f"cannot serve metrics on {self.address}: {reason}" + (f" ({hint})" if hint else "")
            raise MetricsListenError(exc.errno, message) from exc
        port = self._server.sockets[0].getsockname()[1]
        self.address = MetricsAddress(self.address.host, port)
        log.info("metrics on http://%s/metrics", self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= _MAX_CLIENTS:
            writer.close()
            return
        self._writers.add(writer)
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path != "/metrics":
                status, body, kind = "404 Not Found", b"the metrics are at /metrics\n", "text/plain"
            else:
                await self.metrics.refresh()
                status, body, kind = "200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head_out if method == "HEAD" else head_out + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
