"""The endpoint: the asyncio shell that drives the pure layers with one timer (DESIGN: thin, supervised).

It owns the transports, parses what arrives, answers what the UAS core must answer by itself (malformed
requests, RFC 3261 §8.2 checks, merged requests, CANCEL), feeds the transaction layer, and hands requests to
the application as ``IncomingRequest`` objects; outgoing requests return awaitable ``OutgoingRequest``s.
An INVITE session layer (``sipcore.ua``) plugs in through three hooks: ``IncomingRequest.take_over`` (the
session gets the INVITE's ACKs and CANCEL and retransmits its own 2xx), ``send_request(on_response=,
on_failure=)`` (every response of a client transaction, 2xx retransmissions included) and ``add_timer_user``
(its machines share the endpoint's one timer).

Responses go back on the flow their request came on (symmetric response routing, RFC 3581): never to an
address taken from a message, which also keeps a PBX behind NAT reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, Protocol

import attrs

from .core import CoreConfig, check_request
from .errors import SipError, SipParseError
from .handshake import AckCache, Retransmit2xx, TwoxxSender
from .headers import Header, Via, is_digits
from .limits import DEFAULT_LIMITS, Limits
from .message import Request, Response, error_response, make_response, parse_message
from .tls import TlsContexts
from .transaction import (
    AckReceived,
    CancelReceived,
    MessageToSend,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    Terminated,
    TimedOut,
    Timers,
    TransactionHandle,
    TransactionLayer,
    TransportFailed,
)
from .transport import (
    STREAM_TRANSPORTS,
    Flow,
    ListenSpec,
    MessageCallback,
    TransportError,
    TransportName,
    TransportSet,
    parse_listen_spec,
)
from .uri import NameAddr, SipUri, parse_name_addr

__all__ = [
    "Endpoint",
    "IncomingRequest",
    "OutgoingRequest",
    "Prescreen",
    "RequestTimeout",
    "Screen",
    "TimerUser",
    "Tracer",
    "TransportFactory",
]

log = logging.getLogger(__name__)

RequestHandler = Callable[["IncomingRequest"], Awaitable[None] | None]
#: Told when a client transaction gives up: the transaction layer's ``TimedOut`` or ``TransportFailed``.
FailureCallback = Callable[[TimedOut | TransportFailed], None]
#: Decides about a new out-of-dialog request before any transaction exists for it (see ``Endpoint.screen``):
#: ``True`` lets it through, a ``Response`` answers it statelessly, ``False`` drops it unanswered.
Screen = Callable[[Request, Flow], Response | bool]
#: Decides about a message from its raw bytes, before it is parsed (see ``Endpoint.prescreen``): ``True``
#: goes on, bytes are sent back on the flow as the answer, ``False`` drops the message.
Prescreen = Callable[[bytes, Flow], bytes | bool]
#: Sees every SIP message the endpoint receives ("in") or sends ("out"): its raw bytes and its flow
#: (see :meth:`Endpoint.add_tracer`).
Tracer = Callable[[Literal["in", "out"], bytes, Flow], None]
#: Builds an endpoint's transports from the callbacks it hands them (a message received, a TCP connection
#: closed, "does a call use this flow"): ``TransportSet``, whose listeners are sockets, unless a test
#: harness hands in one whose datagrams travel in memory.
TransportFactory = Callable[
    [MessageCallback, Limits, Callable[[Flow], None], Callable[[Flow], bool]], TransportSet
]
_MAGIC = "z9hG4bK"


def _transport_name(transport: str) -> TransportName:
    """ "udp", "TCP", "tls" … as a transport name (anything unknown: TCP)."""
    upper = transport.upper()
    return "UDP" if upper == "UDP" else "TLS" if upper == "TLS" else "TCP"


class TimerUser(Protocol):
    """A sans-I/O machine that shares the endpoint's one timer (the INVITE sessions of ``sipcore.ua``)."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class RequestTimeout(SipError):
    """An outgoing request got no final response (Timer B or F fired, or the transport failed)."""


def _registered_seconds(request: Request, response: Response) -> int:
    """How long a 2xx to the REGISTER ``request`` binds one of its contacts: the largest ``expires`` among the
    response's Contacts that the request named (RFC 3261 §10.3 step 8 lists each binding with it); 0 when
    none is listed (every contact removed)."""
    try:
        if request.contact_is_wildcard:
            return 0
        asked = request.contact
        seconds = 0
        for listed in response.contact:
            value = listed.param("expires")
            if value is not None and is_digits(value) and any(listed.uri.equivalent(c.uri) for c in asked):
                seconds = max(seconds, int(value))
        return seconds
    except SipParseError:
        return 0


def _summary(message: Request | Response) -> str:
    if isinstance(message, Request):
        first = f"{message.method} {message.uri}"
    else:
        first = f"{message.status} {message.reason}"
    try:
        return f"{first} (Call-ID {message.call_id}, CSeq {message.cseq})"
    except SipParseError:
        return first


class IncomingRequest:
    """A request handed to the application; answer it with ``respond`` (any number of 1xx, one final)."""

    def __init__(self, endpoint: Endpoint, request: Request, flow: Flow, handle: TransactionHandle) -> None:
        self.endpoint = endpoint
        self.request = request
        self.flow = flow
        self._handle = handle
        self.final: Response | None = None
        self.sent_tagged = False
        #: When the request reached the transaction layer (the endpoint's clock): set-up delays start here.
        self.received_at = endpoint.now
        self.to_tag = endpoint.new_tag() if request.to.tag is None else request.to.tag
        self._cancelled: asyncio.Event | None = None
        #: For an INVITE answered with 2xx: resolves with the ACK (or an exception after 64*T1 without one).
        self.ack: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        self._on_ack: Callable[[Request], None] | None = None
        self._on_cancel: Callable[[Request], None] | None = None

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when a CANCEL for this INVITE arrived (the endpoint already answered it and the INVITE 487).
        Made on first use: most requests never need it, and each outlives its call by 64*T1."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    @property
    def taken_over(self) -> bool:
        """Whether an INVITE session owns this request's ACK, CANCEL and 2xx retransmission."""
        return self._on_ack is not None

    def take_over(self, *, on_ack: Callable[[Request], None], on_cancel: Callable[[Request], None]) -> None:
        """Let an INVITE session (``sipcore.ua``) own this INVITE: each ACK for its 2xx goes to ``on_ack``,
        a CANCEL (already answered 200 by the transaction layer) to ``on_cancel`` — which must answer the
        INVITE with 487 — and the endpoint no longer retransmits a 2xx itself (the owner calls
        :meth:`retransmit`)."""
        self._on_ack = on_ack
        self._on_cancel = on_cancel

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Send a response built from the request (To tag added); returns it."""
        response = make_response(self.request, status, reason, to_tag=self.to_tag, headers=headers, body=body)
        self.send(response)
        return response

    def send(self, response: Response) -> None:
        """Send a ready-made response on this request's server transaction."""
        if self.final is not None:
            raise SipError(f"{self.request.method} already answered with {self.final.status}")
        if response.status >= 200:
            self.final = response
        if response.status > 100:
            self.sent_tagged = True
        self.endpoint._send_response(self, response)

    def send_stateless(self, response: Response) -> None:
        """Send a final response once and forget the transaction (RFC 3261 §8.2.7): no retransmission, the
        ACK for it is ignored, a retransmitted request is handled anew. For challenges and refusals that
        must cost no state (give it a To tag derived from the request, so a retransmission gets the same)."""
        if self.final is not None:
            raise SipError(f"{self.request.method} already answered with {self.final.status}")
        if response.status < 300:
            raise SipError("only a failure response can be sent statelessly")
        self.final = response
        self.sent_tagged = True
        self.endpoint._send_stateless(self, response)

    def retransmit(self, response: Response) -> None:
        """Send a 2xx again (RFC 3261 §13.3.1.4) — for an owner that took this INVITE over."""
        self.endpoint._retransmit(self, response)


class OutgoingRequest:
    """A request sent in a client transaction: await ``final`` for the final response."""

    def __init__(
        self,
        request: Request,
        flow: Flow,
        on_provisional: Callable[[Response], None] | None = None,
        *,
        on_response: Callable[[Response], None] | None = None,
        on_failure: FailureCallback | None = None,
    ) -> None:
        self.request = request
        self.flow = flow
        self.on_provisional = on_provisional
        #: Every response of the transaction, 2xx retransmissions and other forks' 2xx included (RFC 6026);
        #: when set, the endpoint does not ACK a repeated 2xx itself: the owner does.
        self.on_response = on_response
        self.on_failure = on_failure
        self._handle: TransactionHandle | None = None
        #: Why the transport could not send the request (the final's RequestTimeout says so).
        self.transport_error: str | None = None
        self.provisional: list[Response] = []
        self._responses: asyncio.Queue[Response] | None = None
        self._final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    @property
    def responses(self) -> asyncio.Queue[Response]:
        """Every response, in order — unless ``on_response`` takes them. Made on first use (the UA's
        requests never need one, and each outlives its call by 64*T1)."""
        if self._responses is None:
            self._responses = asyncio.Queue()
        return self._responses

    @property
    def final(self) -> asyncio.Future[Response]:
        return self._final

    def __await__(self) -> Any:
        return asyncio.shield(self._final).__await__()


class Endpoint:
    """A SIP endpoint: listeners, transactions, the UAS core and the application's request handler.

    Tracing: :meth:`add_tracer` registers a callable ``tracer(direction, data, flow)`` (a :data:`Tracer`)
    that sees every SIP message on the wire — for a sngrep-like log, a pcap writer or a test. ``direction``
    is ``"in"`` for a message received, called before it is parsed (so malformed input is traced too), and
    ``"out"`` for one sent, called with exactly the bytes handed to the socket once the transport took them
    (every retransmission included; for TCP with the flow of the connection used). UDP and TCP alike;
    CRLF keep-alives, the bytes of a TCP stream that cannot be framed (the 513 answering one is traced) and
    messages that could not be sent are not traced, and nothing is traced once the endpoint is closed.
    Tracers run synchronously on the event loop, in the order added: keep them quick (queue the bytes if
    writing them may block). One that raises is logged and the endpoint carries on. With no tracer the
    receive and send paths pay one truth test.

    ``transports`` builds the listeners (:data:`TransportFactory`): sockets by default; a test harness
    passes one that carries the same bytes through memory, so whole call flows run without sockets.
    """

    def __init__(
        self,
        handler: RequestHandler | None = None,
        *,
        core: CoreConfig | None = None,
        timers: Timers | None = None,
        limits: Limits = DEFAULT_LIMITS,
        user_agent: str = "durchwahl/0.1",
        rng: random.Random | None = None,
        transports: TransportFactory = TransportSet,
    ) -> None:
        self.handler = handler
        self.core = core or CoreConfig()
        self.timers = timers or Timers()
        self.limits = limits
        self.user_agent = user_agent
        self._rng = rng or random.Random()
        #: Called with the flow of each TCP connection that closes (a registrar drops the bindings on it).
        self.on_connection_closed: Callable[[Flow], None] | None = None
        #: Asked about every new out-of-dialog request (no To tag; not ACK, CANCEL or a retransmission of a
        #: request whose transaction is open) before a transaction is made: the place for decisions that
        #: must cost little and keep no state — a stateless challenge (RFC 3261 §8.2.7), shedding load.
        #: A response it returns is sent as it is (no retransmission; the ACK a client sends for it matches
        #: nothing and is ignored); ``False`` drops the request.
        self.screen: Screen | None = None
        #: Asked about every message received, from its raw bytes, before it is parsed: the place for what
        #: must cost even less than a parse while the server is overloaded (refusing new INVITEs from their
        #: raw headers). It must let through what it does not recognise; see :data:`Prescreen`.
        self.prescreen: Prescreen | None = None
        #: Asked before a TCP connection is closed for idleness (``Limits.tcp_idle_seconds``): True keeps it
        #: open for another idle period — set it to say whether a call runs over the flow. Connections that
        #: carry a registration are kept until it expires without asking (see ``_hold_registration``).
        self.connection_in_use: Callable[[Flow], bool] | None = None
        #: Called after every response sent on a server transaction (statefully or statelessly; not for
        #: retransmissions), with its request: for measurements such as set-up delay. Must not raise.
        self.on_response: Callable[[IncomingRequest, Response], None] | None = None
        self._tracers: tuple[Tracer, ...] = ()
        self._transports = transports(self._on_bytes, limits, self._connection_closed, self._in_use)
        self._transports.on_unframable = self._answer_unframable
        self._layer = TransactionLayer(tag_factory=self.new_tag, timers=self.timers, limits=limits)
        self._incoming: dict[TransactionHandle, IncomingRequest] = {}
        self._outgoing: dict[TransactionHandle, OutgoingRequest] = {}
        self._invites: dict[tuple[str, int], IncomingRequest] = {}
        #: Our 2xx to INVITEs resent until their ACK (RFC 3261 §13.3.1.4) and the ACKs we sent for 2xx, kept
        #: for the 2xx's retransmissions (§13.2.2.4): the pure machines of ``sipcore.handshake``.
        self._twoxx: TwoxxSender[IncomingRequest] = TwoxxSender(self.timers)
        self._acks: AckCache[Flow] = AckCache(self.timers)
        self._merged: dict[tuple[str, str, int], str] = {}
        self._cancel_headers: dict[TransactionHandle, tuple[tuple[str, str], ...]] = {}
        self._timer_users: list[TimerUser] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._arm_asked = False
        #: Ticks come at most this often (see ``_arm_timer``); far below any SIP timer's precision.
        self._tick = min(0.01, self.timers.t1 / 50)
        self._last_tick = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------ life cycle

    @property
    def tls(self) -> TlsContexts:
        """The TLS contexts in force: configure them before a TLS listener starts (``tls:`` needs the server
        context); replaced contexts apply to connections made afterwards."""
        return self._transports.contexts

    def peer_names(self, flow: Flow) -> tuple[str, ...] | None:
        """The names the peer certificate of ``flow``'s TLS connection was verified for (empty: it sent none
        or none was asked for); None when ``flow`` is no open TLS connection."""
        return self._transports.peer_names(flow)

    async def listen(self, spec: str | ListenSpec) -> tuple[str, int]:
        """Start a listener ("udp:127.0.0.1:5060", "tcp:[::1]:0", "tls:127.0.0.1:5061" …); returns the
        bound address. A TLS listener needs ``tls.server`` configured first."""
        self._loop = asyncio.get_running_loop()
        if isinstance(spec, str):
            spec = parse_listen_spec(spec)
        local = await self._transports.listen(spec)
        log.info(
            "listening on %s %s",
            spec.transport,
            f"[{local[0]}]:{local[1]}" if ":" in local[0] else f"{local[0]}:{local[1]}",
        )
        return local

    async def close(self) -> None:
        """Stop listening, cancel handler tasks, close connections."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._transports.close()
        for outgoing in self._outgoing.values():
            if not outgoing.final.done():
                outgoing.final.set_exception(RequestTimeout("endpoint closed"))
                outgoing.final.exception()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def local_address(
        self, transport: str = "UDP", remote: tuple[str, int] = ("127.0.0.1", 5060)
    ) -> tuple[str, int]:
        """The listener address used towards ``remote`` (for Via sent-by and Contact)."""
        return self._transports.local_for(_transport_name(transport), remote)

    # ------------------------------------------------------------------------------------ randomness

    def new_tag(self) -> str:
        return f"{self._rng.getrandbits(48):012x}"

    def new_branch(self) -> str:
        return f"{_MAGIC}{self._rng.getrandbits(64):016x}"

    def new_call_id(self) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def add_tracer(self, tracer: Tracer) -> None:
        """Call ``tracer(direction, data, flow)`` for every SIP message received (``"in"``, raw, before
        parsing) or sent (``"out"``, the bytes on the wire, retransmissions included); see the class
        docstring. May be called at any time, before or after :meth:`listen`."""
        self._tracers = (*self._tracers, tracer)

    def remove_tracer(self, tracer: Tracer) -> None:
        """Stop calling ``tracer`` (added with :meth:`add_tracer`; nothing happens if it was not)."""
        tracers = list(self._tracers)
        with contextlib.suppress(ValueError):
            tracers.remove(tracer)  # by equality: a bound method passed again is found
        self._tracers = tuple(tracers)

    def _trace(self, direction: Literal["in", "out"], data: bytes, flow: Flow) -> None:
        for tracer in self._tracers:
            try:
                tracer(direction, data, flow)
            except Exception:
                log.exception("tracer %r failed on a message %s %s", tracer, direction, flow)

    def _connection_closed(self, flow: Flow) -> None:
        if self.on_connection_closed is not None and not self._closed:
            self.on_connection_closed(flow)

    def _in_use(self, flow: Flow) -> bool:
        return self.connection_in_use is not None and self.connection_in_use(flow)

    def _hold_registration(self, request: Request, response: Response, flow: Flow) -> None:
        """A 2xx to a REGISTER over TCP, sent or received: the connection carries the registration (RFC 5626
        flows), so it is not closed for idleness while the binding lasts; a removal ends the hold."""
        seconds = _registered_seconds(request, response)
        self._transports.hold(flow, self._now + seconds)

    def _answer_unframable(self, error: SipParseError, flow: Flow) -> bytes | None:
        """The answer to a TCP stream that cannot be framed (a request too large: 513), if it can be given."""
        if self._closed:
            return None
        response = error_response(error, to_tag=self.new_tag())
        if response is None:
            return None
        data = bytes(response)
        if self._tracers:
            self._trace("out", data, flow)
        return data

    # --------------------------------------------------------------------------------------- receive

    @property
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @property
    def now(self) -> float:
        """The clock every machine driven by this endpoint runs on (the event loop's)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def queue_delay(self, flow: Flow) -> float | None:
        """How long the message being handled from ``flow`` waited in its UDP socket's receive queue,
        seconds (None where the platform does not tell, and for TCP): for a screen's admission decision."""
        return self._transports.queue_delay(flow)

    @property
    def datagrams_dropped(self) -> int | None:
        """Datagrams the kernel dropped at our UDP sockets for full receive buffers since they opened
        (None: the platform does not tell)."""
        return self._transports.datagrams_dropped

    def handling_invite(self, call_id: str, seq: int) -> bool:
        """Whether an INVITE with this Call-ID and CSeq number has a transaction here (another copy of it
        is a retransmission, never a new call)."""
        return (call_id, seq) in self._invites

    @property
    def server_transactions(self) -> int:
        """Server transactions open now (their limit is ``limits.max_server_transactions``)."""
        return self._layer.server_count

    def add_timer_user(self, user: TimerUser) -> None:
        """Drive ``user`` from the endpoint's one timer; call :meth:`reschedule` when its deadline moved."""
        self._timer_users.append(user)

    def remove_timer_user(self, user: TimerUser) -> None:
        with contextlib.suppress(ValueError):
            self._timer_users.remove(user)

    def reschedule(self) -> None:
        """Re-arm the timer after a timer user's deadline changed outside the endpoint's own callbacks."""
        self._arm_timer()

    def _on_bytes(self, data: bytes, flow: Flow) -> None:
        if self._closed:
            return
        if self._tracers:
            self._trace("in", data, flow)
        if self.prescreen is not None:
            verdict = self.prescreen(data, flow)
            if verdict is not True:
                if isinstance(verdict, bytes) and verdict:
                    self._transmit(verdict, flow)
                return
        try:
            message = parse_message(data, self.limits, stream=flow.transport != "UDP")
        except SipParseError as exc:
            response = error_response(exc, to_tag=self.new_tag())
            reply = bytes(response) if response is not None else None
            if (
                reply is not None
                and exc.status == 513
                and flow.transport == "UDP"
                and len(reply) >= len(data)
            ):
                reply = None  # an answer to a datagram is never bigger than the datagram (no amplification)
            log.info("malformed message from %s: %s%s", flow, exc, "" if reply else " (dropped)")
            if reply is not None:
                self._transmit(reply, flow)
            return
        if log.isEnabledFor(logging.DEBUG):  # the summary formats the URI: not for nothing, per message
            log.debug("recv from %s: %s", flow, _summary(message))
        if isinstance(message, Response):
            if len(message.via) != 1:
                # RFC 3261 §8.1.3.3: a response with more than one Via was meant for someone else.
                log.info("dropped response with %d Via values from %s", len(message.via), flow)
                return
            self._layer.receive_response(message, self._now)
        else:
            self._receive_request(message, flow)
        self._drain()

    def _receive_request(self, request: Request, flow: Flow) -> None:
        request = self._stamp_via(request, flow)
        reliable = flow.transport != "UDP"
        if request.method == "ACK":
            self._layer.receive_request(request, self._now, reliable=reliable, context=flow)
            return
        if (
            self.screen is not None
            and request.to.tag is None
            and request.method != "CANCEL"
            and not self._layer.is_retransmission(request)
        ):
            verdict = self.screen(request, flow)
            if verdict is not True:
                if isinstance(verdict, Response):
                    self._transmit(bytes(verdict), flow)
                return
        # Merged request (RFC 3261 §8.2.2.2): same From tag, Call-ID and CSeq as a request already being
        # handled, but another branch (it forked back to us) -> 482.
        if request.to.tag is None and request.method not in ("CANCEL", "ACK"):
            key = (request.from_.tag or "", request.call_id, request.cseq.seq)
            branch = request.branch or ""
            known = self._merged.get(key)
            if known is not None and known != branch:
                self._transmit(bytes(make_response(request, 482)), flow)
                return
            if len(self._merged) > self.limits.max_server_transactions:
                self._merged.clear()
            self._merged[key] = branch
        self._layer.receive_request(request, self._now, reliable=reliable, context=flow)

    @staticmethod
    def _stamp_via(request: Request, flow: Flow) -> Request:
        """Add received= and fill rport (RFC 3261 §18.2.1, RFC 3581 §4) to the top Via."""
        top = request.via[0]
        host = flow.remote[0]
        host_ref = f"[{host}]" if ":" in host else host
        set_params: dict[str, str] = {}
        if top.host != host_ref.lower() or top.rport_requested:
            set_params["received"] = host
        if top.rport_requested:
            set_params["rport"] = str(flow.remote[1])
        if not set_params:
            return request
        params = [(k, set_params.pop(k)) if k in set_params else (k, v) for k, v in top.params]
        params.extend(set_params.items())
        stamped = attrs.evolve(top, params=tuple(params))
        headers = list(request.headers)
        old_value = new_value = ""
        for i, header in enumerate(headers):
            if header.key == "via":
                old_value = header.value
                values = old_value.split(",", 1) if "," in old_value else [old_value]
                rest = f", {values[1].strip()}" if len(values) > 1 else ""
                new_value = str(stamped) + rest
                headers[i] = Header(header.name, new_value)
                break
        stamped_request = attrs.evolve(request, headers=tuple(headers))
        # Carry over what was already parsed: only the top Via changed.
        cache = stamped_request.__dict__
        old_cache = request.__dict__
        index = dict(request._index)
        index["via"] = tuple(new_value if v is old_value else v for v in index["via"])
        cache["_index"] = index
        cache["via"] = (stamped, *request.via[1:])
        for name in ("from_", "to", "call_id", "cseq", "max_forwards"):
            if name in old_cache:
                cache[name] = old_cache[name]
        return stamped_request

    # --------------------------------------------------------------------------------- layer events

    def _drain(self) -> None:
        layer = self._layer
        while (event := layer.next_event()) is not None:
            try:
                self._dispatch(event)
            except Exception:
                log.exception("error handling %r", event)
        self._arm_timer()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, MessageToSend):
            flow = event.handle.context if event.handle is not None else None
            message = event.message
            extra = self._cancel_headers.get(event.handle) if event.handle is not None else None
            if extra and isinstance(message, Request) and message.method == "CANCEL":
                for name, value in extra:
                    message = message.add_header(name, value)
            if isinstance(flow, Flow):
                self._transmit(bytes(message), flow, event.handle)
        elif isinstance(event, RequestReceived):
            assert event.handle is not None
            self._on_request(event.request, event.handle)
        elif isinstance(event, ResponseReceived):
            assert event.handle is not None
            self._on_response(event.response, event.handle)
        elif isinstance(event, AckReceived):
            self._on_ack(event.ack)
        elif isinstance(event, CancelReceived):
            self._on_cancel(event)
        elif isinstance(event, StrayResponse):
            self._on_stray(event.response)
        elif isinstance(event, TimedOut | TransportFailed):
            outgoing = self._outgoing.get(event.handle) if event.handle is not None else None
            if outgoing is not None and not outgoing.final.done():
                why = outgoing.transport_error or "no final response"
                outgoing.final.set_exception(RequestTimeout(f"{outgoing.request.method}: {why}"))
                outgoing.final.exception()
            if outgoing is not None and outgoing.on_failure is not None:
                outgoing.on_failure(event)
        elif isinstance(event, Terminated) and event.handle is not None:
            self._outgoing.pop(event.handle, None)
            self._cancel_headers.pop(event.handle, None)
            incoming = self._incoming.pop(event.handle, None)
            if incoming is not None:
                self._forget_merged(incoming.request)
            if incoming is not None and incoming.request.method == "INVITE":
                key = (incoming.request.call_id, incoming.request.cseq.seq)
                final = incoming.final
                if self._invites.get(key) is incoming and (
                    incoming.taken_over
                    or (final is not None and (final.status >= 300 or incoming.ack.done()))
                ):
                    del self._invites[key]

    def _forget_merged(self, request: Request) -> None:
        """A server transaction ended: a request merged with it can no longer arrive (§8.2.2.2 checks
        against transactions under way), so its key goes; kept, the keys would grow with every call."""
        if request.to.tag is None:
            key = (request.from_.tag or "", request.call_id, request.cseq.seq)
            if self._merged.get(key) == (request.branch or ""):
                del self._merged[key]

    def _on_request(self, request: Request, handle: TransactionHandle) -> None:
        flow = handle.context
        assert isinstance(flow, Flow)
        incoming = IncomingRequest(self, request, flow, handle)
        self._incoming[handle] = incoming
        rejection = check_request(request, self.core, secure=flow.transport == "TLS")
        if rejection is not None:
            incoming.send(rejection)
            return
        if request.method == "INVITE":
            self._invites[(request.call_id, request.cseq.seq)] = incoming
        if request.method == "OPTIONS" and self.handler is None:
            self._answer_options(incoming)
            return
        if self.handler is None:
            incoming.respond(501 if request.method != "OPTIONS" else 200)
            return
        result = self.handler(incoming)
        if result is not None:
            self._spawn(self._run_handler(incoming, result))

    def answer_options(self, incoming: IncomingRequest) -> None:
        """Answer OPTIONS with what this endpoint implements (RFC 3261 §11.2)."""
        self._answer_options(incoming)

    def _answer_options(self, incoming: IncomingRequest) -> None:
        incoming.respond(
            200,
            headers=[
                ("Allow", self.core.allow_header),
                ("Accept", ", ".join(self.core.accepted_types)),
                ("Supported", ", ".join(self.core.supported)),
                ("Server", self.user_agent),
            ],
        )

    async def _run_handler(self, incoming: IncomingRequest, result: Awaitable[None]) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed on %s", _summary(incoming.request))
            if incoming.final is None:
                incoming.respond(500)

    def _on_ack(self, ack: Request) -> None:
        to_tag = ack.to.tag or ""
        pending = self._twoxx.ack_received((ack.call_id, ack.cseq.seq, to_tag))
        incoming = pending if pending is not None else self._invites.get((ack.call_id, ack.cseq.seq))
        if incoming is not None and incoming._on_ack is not None:
            # An INVITE session owns it: every ACK (retransmissions too) goes there, the entry stays until
            # the INVITE transaction ends.
            if not incoming.ack.done():
                incoming.ack.set_result(ack)
            incoming._on_ack(ack)
            return
        if incoming is not None and not incoming.ack.done():
            incoming.ack.set_result(ack)
            self._invites.pop((ack.call_id, ack.cseq.seq), None)

    def _on_cancel(self, event: CancelReceived) -> None:
        # The layer already answered the CANCEL (200); the INVITE gets 487 with the same To tag (§9.2).
        incoming = self._incoming.get(event.handle) if event.handle is not None else None
        if incoming is None or incoming.final is not None:
            return
        if incoming._on_cancel is not None:
            incoming.cancelled.set()
            incoming._on_cancel(event.cancel)  # the owner answers the INVITE with 487
            return
        if not incoming.sent_tagged:
            incoming.to_tag = event.to_tag
        incoming.respond(487)
        incoming.cancelled.set()

    def _on_stray(self, response: Response) -> None:
        # A 2xx retransmission for an INVITE whose transaction is gone: re-send our ACK (RFC 3261 §13.2.2.4),
        # only to the dialog it was for (another fork's 2xx has another To tag).
        try:
            key = (response.call_id, response.cseq.seq, response.to.tag)
        except SipParseError:
            return
        found = self._acks.ack_for(key) if response.cseq.method == "INVITE" else None
        if found is not None and 200 <= response.status < 300:
            self._transmit(*found)
        else:
            log.debug("stray response dropped: %s", _summary(response))

    def _on_response(self, response: Response, handle: TransactionHandle) -> None:
        outgoing = self._outgoing.get(handle)
        if outgoing is None:
            if handle.method == "CANCEL":
                log.debug("CANCEL answered: %s", _summary(response))
            else:
                self._on_stray(response)
            return
        if (
            outgoing.flow.transport in STREAM_TRANSPORTS
            and handle.method == "REGISTER"
            and 200 <= response.status < 300
        ):
            self._hold_registration(outgoing.request, response, outgoing.flow)
        if outgoing.on_response is not None:
            if response.status < 200:
                outgoing.provisional.append(response)
            elif not outgoing.final.done():
                outgoing.final.set_result(response)
            outgoing.on_response(response)
            return
        if response.status < 200:
            outgoing.provisional.append(response)
            if outgoing.on_provisional is not None:
                outgoing.on_provisional(response)
        outgoing.responses.put_nowait(response)
        if response.status >= 200 and not outgoing.final.done():
            outgoing.final.set_result(response)
        elif response.status >= 200:
            self._on_stray(response)

    # ------------------------------------------------------------------------------------------ send

    def _send_response(self, incoming: IncomingRequest, response: Response) -> None:
        request = incoming.request
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send to %s: %s", incoming.flow, _summary(response))
        if (
            incoming.flow.transport in STREAM_TRANSPORTS
            and request.method == "REGISTER"
            and 200 <= response.status < 300
        ):
            self._hold_registration(request, response, incoming.flow)
        if request.method == "INVITE" and 200 <= response.status < 300 and not incoming.taken_over:
            self._layer.send_response(incoming._handle, response, self._now)
            key = (request.call_id, request.cseq.seq, incoming.to_tag)
            reliable = incoming.flow.transport != "UDP"
            self._twoxx.sent_2xx(key, bytes(response), incoming, self._now, reliable=reliable)
        else:
            self._layer.send_response(incoming._handle, response, self._now)
        self._drain()
        if self.on_response is not None:
            self.on_response(incoming, response)

    def _send_stateless(self, incoming: IncomingRequest, response: Response) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send (stateless) to %s: %s", incoming.flow, _summary(response))
        self._layer.send_stateless(incoming._handle, response)
        self._drain()
        if self.on_response is not None:
            self.on_response(incoming, response)

    def _retransmit(self, incoming: IncomingRequest, response: Response) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("resend to %s: %s", incoming.flow, _summary(response))
        self._layer.send_response(incoming._handle, response, self._now)
        self._drain()

    def send_request(
        self,
        request: Request,
        flow: Flow,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        on_response: Callable[[Response], None] | None = None,
        on_failure: FailureCallback | None = None,
    ) -> OutgoingRequest:
        """Send ``request`` in a new client transaction along ``flow``; await the result for the final.

        ``on_response`` sees every response (see :class:`OutgoingRequest`), ``on_failure`` a timeout or
        transport failure (the final then raises ``RequestTimeout``).
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        outgoing = OutgoingRequest(
            request, flow, on_provisional, on_response=on_response, on_failure=on_failure
        )
        handle = self._layer.send_request(request, self._now, reliable=flow.transport != "UDP", context=flow)
        outgoing._handle = handle
        self._outgoing[handle] = outgoing
        if log.isEnabledFor(logging.DEBUG):
            log.debug("send to %s: %s", flow, _summary(request))
        self._drain()
        return outgoing

    def cancel(self, outgoing: OutgoingRequest, *, headers: Iterable[tuple[str, str]] = ()) -> bool:
        """CANCEL an outgoing INVITE (RFC 3261 §9.1), with extra ``headers`` (e.g. ``Reason``, RFC 3326).

        The CANCEL goes out once a provisional response has arrived. False when there is nothing left to
        cancel (a final response arrived, or the transaction is gone).
        """
        if outgoing._handle is None:
            return False
        cancel = self._layer.cancel(outgoing._handle, self._now)
        if cancel is None:
            return False
        extra = tuple(headers)
        if extra:
            self._cancel_headers[cancel] = extra
        self._drain()
        return True

    async def request(self, request: Request, flow: Flow) -> Response:
        """Send ``request`` and return its final response (raises ``RequestTimeout``)."""
        outgoing = self.send_request(request, flow)
        return await asyncio.shield(outgoing.final)

    def send_ack(self, ack: Request, flow: Flow) -> None:
        """Send an ACK for a 2xx directly (no transaction); it is re-sent if the 2xx is retransmitted."""
        data = bytes(ack)
        self._acks.ack_sent((ack.call_id, ack.cseq.seq, ack.to.tag), data, flow, self._now)
        self._transmit(data, flow)
        self._arm_timer()

    def flow_to(
        self, host: str, port: int, transport: str = "UDP", *, server_name: str | None = None
    ) -> Flow:
        """A flow towards ``host:port`` (an IP address) leaving from a matching listener; over TLS the peer's
        certificate must be valid for ``server_name`` (None: for ``host``)."""
        name = _transport_name(transport)
        local = self._transports.local_for(name, (host, port))
        return Flow(name, local, (host, port), server_name=server_name if name == "TLS" else None)

    def make_request(
        self,
        method: str,
        uri: SipUri | str,
        flow: Flow,
        *,
        from_: NameAddr | str,
        to: NameAddr | str,
        call_id: str | None = None,
        cseq: int = 1,
        contact: bool = True,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """Build an out-of-dialog request with a fresh Via branch, From tag, Call-ID and Max-Forwards."""
        from .uri import parse_uri

        target = parse_uri(uri) if isinstance(uri, str) else uri
        from_addr = parse_name_addr(from_) if isinstance(from_, str) else from_
        if from_addr.tag is None:
            from_addr = from_addr.with_tag(self.new_tag())
        to_addr = parse_name_addr(to) if isinstance(to, str) else to
        via = self.make_via(flow)
        out: list[Header] = [
            Header("Via", str(via)),
            Header("Max-Forwards", "70"),
            Header("From", str(from_addr)),
            Header("To", str(to_addr)),
            Header("Call-ID", call_id or self.new_call_id()),
            Header("CSeq", f"{cseq} {method}"),
        ]
        if contact:
            out.append(Header("Contact", f"<{self.contact_uri(flow, from_addr)}>"))
        out.append(Header("User-Agent", self.user_agent))
        out.extend(Header(name, value) for name, value in headers)
        if content_type is not None:
            out.append(Header("Content-Type", content_type))
        return Request(method, target, tuple(out), body)

    def make_via(self, flow: Flow) -> Via:
        host, port = flow.local
        host = f"[{host}]" if ":" in host else host
        return Via(flow.transport, host, port, (("branch", self.new_branch()), ("rport", None)))

    def contact_uri(self, flow: Flow, who: NameAddr | None = None, *, sips: bool = False) -> SipUri:
        """Our Contact on ``flow``: ``sip:…;transport=tcp`` over TCP; over TLS a ``sips:`` URI for a SIPS
        request or dialog (RFC 3261 §8.1.1.8, §12.1.1), else ``sip:…;transport=tls`` — which §26.2.2
        deprecates in favour of ``sips:``, but which phones send and understand (baresip 1.0 cannot send
        to a ``sips:`` Contact at all), and which tells the peer to reach us over TLS all the same."""
        host, port = flow.local
        host = f"[{host}]" if ":" in host else host
        user = who.uri.user if who is not None and isinstance(who.uri, SipUri) else None
        if flow.transport == "TLS":
            if sips:
                return SipUri("sips", user, None, host, port)
            return SipUri("sip", user, None, host, port, (("transport", "tls"),))
        params = (("transport", "tcp"),) if flow.transport == "TCP" else ()
        return SipUri("sip", user, None, host, port, params)

    def _transmit(self, data: bytes, flow: Flow, handle: TransactionHandle | None = None) -> None:
        """Send ``data`` along ``flow``; a message of transaction ``handle`` that cannot be sent (no
        connection can be made: refused, TLS certificate not accepted …) ends that transaction at once
        (RFC 3261 §17.1.4: a transport error), rather than by its timeout 32 s later."""
        if flow.transport == "UDP":
            try:
                self._transports.udp_send(data, flow)
            except TransportError as exc:
                log.info("cannot send to %s: %s", flow, exc)
                return
            if self._tracers:
                self._trace("out", data, flow)
            return
        # TCP, TLS: written at once on an open connection (in order with everything else on it, and before
        # the connection may close); a connection to be made first is a task.
        try:
            sent = self._transports.send_now(data, flow)
        except TransportError as exc:
            log.info("cannot send to %s: %s", flow, exc)
            self._transport_failed(handle, exc)
            return
        if sent is None:
            self._spawn(self._transmit_stream(data, flow, handle))
        elif self._tracers:
            self._trace("out", data, sent)

    async def _transmit_stream(self, data: bytes, flow: Flow, handle: TransactionHandle | None) -> None:
        try:
            sent = await self._transports.send(data, flow)
        except TransportError as exc:
            log.info("cannot send to %s: %s", flow, exc)
            self._transport_failed(handle, exc)
            return
        if self._tracers:
            self._trace("out", data, sent)

    def _transport_failed(self, handle: TransactionHandle | None, error: TransportError) -> None:
        if handle is None or self._closed:
            return
        outgoing = self._outgoing.get(handle)
        if outgoing is not None:
            outgoing.transport_error = str(error)
        self._layer.handle_transport_error(handle, self._now)
        self._drain()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------------------------------- timer

    def _arm_timer(self) -> None:
        """Make sure the timer fires by the earliest deadline. Asked for after every event, it looks once
        per turn of the event loop (a burst of datagrams or a call's several requests arm it once)."""
        if self._arm_asked or self._closed or self._loop is None:
            return
        self._arm_asked = True
        self._loop.call_soon(self._arm_now)

    def _arm_now(self) -> None:
        """Arm lazily: a timer already armed for an earlier moment stays (a wake-up with nothing due is
        cheap; re-arming on every change of the earliest deadline cost a timer handle and a cancellation
        per message)."""
        self._arm_asked = False
        if self._closed or self._loop is None:
            return
        at = self._layer.get_timer()
        for user in self._timer_users:
            due = user.get_timer()
            if due is not None and (at is None or due < at):
                at = due
        for due in (self._twoxx.get_timer(), self._acks.get_timer()):
            if due is not None and (at is None or due < at):
                at = due
        if at is None:
            return
        # At a few hundred calls per second some transaction expires every few milliseconds; a tick for
        # each cost more than the precision is worth, so ticks are at least ``_tick`` apart.
        at = max(at, self._last_tick + self._tick)
        armed = self._timer_at
        if armed is not None and armed <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._last_tick = self._now
        # Input first: a response or ACK already waiting in a socket buffer must stop the retransmission
        # this timer may be due for. Under load the buffer holds a backlog, and resending an INVITE whose
        # 180 is queued there makes the callee drop the call (SIPp does).
        self._transports.read_pending()
        now = self._now
        self._layer.handle_timer(now)
        for user in list(self._timer_users):
            try:
                user.handle_timer(now)
            except Exception:
                log.exception("timer user %r failed", user)
        self._twoxx.handle_timer(now)
        while (event := self._twoxx.next_event()) is not None:
            incoming = event.context
            if isinstance(event, Retransmit2xx):
                self._transmit(event.data, incoming.flow)
            elif not incoming.ack.done():
                incoming.ack.set_exception(RequestTimeout("no ACK for 2xx"))
                incoming.ack.exception()
        self._acks.handle_timer(now)
        self._drain()
