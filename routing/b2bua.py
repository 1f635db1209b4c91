"""The B2BUA call flows: an INVITE in, legs out, the winner bridged (issue 5).

:class:`B2bua` plugs into the server's request handler (``await b2bua.handle(incoming)`` for an INVITE without
To tag). One coroutine runs per call, owned by the endpoint (cancelled on close); it reads both legs' events
from one queue, so a call flow reads like the call:

1. **Who calls**: digest credentials on the INVITE, checked like a REGISTER's (the registrar's digest server
   and the directory's secrets). An employee who authenticated is ``FromEmployee``; a source inside a trunk's
   ``inbound_from`` is ``FromTrunk``; anyone else is ``Anonymous`` and gets the resolver's 401/407 challenge
   (or 403).
2. **Where to**: the Request-URI's dial string and the caller go to the resolver.
3. **Internal call** (``ToEmployee``): every registered device of the employee rings in parallel, each on the
   flow its REGISTER came on (NAT-safe). Each B-leg is a dialog of its own: new Call-ID, tags and CSeq;
   headers the B2BUA does not own (:data:`OWNED_HEADERS`) pass through unchanged and in order. The first 2xx
   wins and is bridged (its SDP passed through, media not anchored); the other devices get CANCEL with
   ``Reason: SIP;cause=200;text="Call completed elsewhere"``; a 2xx crossing that CANCEL is ACKed and ended
   with BYE (by the session). All busy → 486; a 6xx ends the fork with that 6xx; nobody registered, no
   answer within ``ring_seconds`` or other failures → 480. The caller's CANCEL goes to every B-leg (its
   ``Reason`` copied).
4. **Bridged**: BYE on either side ends both legs; re-INVITEs (an offerless one too, its answer carried in
   the ACK), UPDATE and INFO are relayed to the other leg and their answers back (a request the other leg
   cannot take now gets 491 or 500); requests that arrived before the bridge are held and relayed then.

Routes this module does not ring yet (ring groups, external numbers, extension processing) are answered 480.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from sipcore.auth import Authenticated, Stale
from sipcore.endpoint import IncomingRequest
from sipcore.headers import header_key
from sipcore.message import Request, Response
from sipcore.session import (
    Answered,
    Cancelled,
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ProvisionalReceived,
    ReinviteAnswered,
    ReinviteConfirmed,
    ReinviteFailed,
    ReinviteReceived,
    Rejected,
    SessionError,
    SessionEvent,
    SessionState,
    Terminated,
)
from sipcore.ua import Call, CallEvent, CallFailed, CallQueue, IncomingCall, OutgoingCall, UserAgent
from sipcore.uri import NameAddr, parse_uri

from .dialstring import DialStringError, from_request_uri, to_e164
from .directory import DEFAULT_RING_SECONDS, Directory, Employee
from .registrar_service import RegistrarService
from .resolver import Anonymous, Caller, FromEmployee, FromTrunk, Refused, Resolver, ToEmployee

__all__ = ["COMPLETED_ELSEWHERE", "OWNED_HEADERS", "B2bua", "passthrough"]

log = logging.getLogger(__name__)

#: RFC 3326 Reason for the devices that lost the race (RFC 3261 §16.7 10's wording).
COMPLETED_ELSEWHERE: Final = ("Reason", 'SIP;cause=200;text="Call completed elsewhere"')

#: Headers each leg writes for itself: transport and dialog state, auth, what this B2BUA implements
#: (Allow, Supported, Require: it is the peer of each leg) and references to the other leg's dialog.
OWNED_HEADERS: Final = frozenset(
    {
        "via",
        "route",
        "record-route",
        "max-forwards",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "content-length",
        "content-type",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "rseq",
        "rack",
        "session-expires",
        "min-se",
        "replaces",
        "join",
        "target-dialog",
        "refer-to",
        "referred-by",
    }
)

_EARLY: Final = frozenset({SessionState.CALLING, SessionState.PROCEEDING, SessionState.CANCEL_PENDING})


def passthrough(message: Request | Response, *, also: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """The headers of ``message`` the B2BUA does not own, in order, exactly as they came."""
    owned = OWNED_HEADERS | {header_key(name) for name in also}
    return tuple((h.name, h.value) for h in message.headers if header_key(h.name) not in owned)


def _content_type(message: Request | Response) -> str | None:
    return message.get("content-type") if message.body else None


def _fork_failure(statuses: list[int]) -> int:
    """What the caller hears when no device answered: busy if any was busy, else temporarily unavailable."""
    if any(s >= 600 for s in statuses):
        return next(s for s in statuses if s >= 600)
    return 486 if 486 in statuses else 480


class B2bua:
    """The call flows over ``ua`` (see the module docstring). ``clock`` is wall-clock time (digest nonces)."""

    def __init__(
        self,
        ua: UserAgent,
        registrar: RegistrarService,
        directory: Directory,
        resolver: Resolver,
        *,
        ring_seconds: float = DEFAULT_RING_SECONDS,
        resolve_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ua = ua
        self.registrar = registrar
        self.directory = directory
        self.resolver = resolver
        self.ring_seconds = ring_seconds
        self.resolve_timeout = resolve_timeout
        self._clock = clock
        #: Calls being set up or bridged: (A-leg, B-legs).
        self.active: dict[IncomingCall, list[OutgoingCall]] = {}

    # ---------------------------------------------------------------------------------- entry point

    async def handle(self, incoming: IncomingRequest) -> None:
        """Route one INVITE (without To tag) and run the call until both legs have ended."""
        request = incoming.request
        if request.method != "INVITE" or request.to.tag is not None:
            incoming.respond(405 if request.method != "INVITE" else 481)
            return
        caller = self._who_calls(incoming)
        if caller is None:
            return  # challenged with stale=true
        try:
            dialled = from_request_uri(request.uri)
        except DialStringError as exc:
            incoming.respond(484, f"Address Incomplete ({exc})")
            return
        try:
            async with asyncio.timeout(self.resolve_timeout):
                route = await self.resolver.resolve(dialled, caller)
        except TimeoutError:
            incoming.respond(503, "Service Unavailable (routing timed out)")
            return
        if incoming.final is not None:
            return  # cancelled while resolving: the endpoint answered 487
        log.info("call %s from %s to %s: %s", request.call_id, caller, dialled, route)
        if isinstance(route, Refused):
            self._refuse(incoming, route, caller)
            return
        if not isinstance(route, ToEmployee):
            incoming.respond(480, f"Temporarily Unavailable ({type(route).__name__} not routed yet)")
            return
        queue: CallQueue = asyncio.Queue()
        try:
            a = self.ua.accept(incoming, queue=queue)
        except CallFailed:
            return
        legs: list[OutgoingCall] = []
        self.active[a] = legs
        try:
            await self._call_employee(a, route.employee, legs, queue)
        finally:
            del self.active[a]
            self._tear_down(a, legs)

    def _who_calls(self, incoming: IncomingRequest) -> Caller | None:
        request = incoming.request
        now = self._clock()
        result = self.registrar.digest.verify(request, self.directory.credentials, now)
        if isinstance(result, Authenticated):
            employee = self.directory.employee_by_sip_user(result.username)
            if employee is not None:
                return FromEmployee(employee.extension)
        if isinstance(result, Stale):
            incoming.send(
                self.registrar.digest.challenge_response(request, now, stale=True, to_tag=incoming.to_tag)
            )
            return None
        source = incoming.flow.remote[0]
        for trunk in self.directory.trunks:
            try:
                address = ipaddress.ip_address(source)
            except ValueError:
                break
            # A trunk's source address identifies the trunk only for calls to its numbers: anything else
            # from that address (a phone on the same host or network) must authenticate like any caller.
            if any(address in network for network in trunk.inbound_from) and self._calls_trunk_number(
                request, trunk.name
            ):
                return FromTrunk(trunk.name)
        return Anonymous(str(incoming.flow), challenge=True)

    def _calls_trunk_number(self, request: Request, trunk: str) -> bool:
        config = self.resolver.config
        try:
            dialled = to_e164(
                from_request_uri(request.uri),
                config.country_code,
                config.trunk_prefix,
                config.international_prefix,
            )
        except DialStringError:
            return False
        wanted = {dialled, dialled.lstrip("+")}
        return any(n.trunk == trunk and n.number in wanted for n in self.directory.numbers)

    def _refuse(self, incoming: IncomingRequest, route: Refused, caller: Caller) -> None:
        if route.status in (401, 407) and isinstance(caller, Anonymous):
            response = self.registrar.digest.challenge_response(
                incoming.request, self._clock(), proxy=route.status == 407, to_tag=incoming.to_tag
            )
            incoming.send(response)
        else:
            incoming.respond(route.status, route.reason)

    # --------------------------------------------------------------------------------- flow 1: ring

    async def _call_employee(
        self, a: IncomingCall, employee: Employee, legs: list[OutgoingCall], queue: CallQueue
    ) -> None:
        targets = []
        for binding in await self.registrar.contacts(employee.sip_user):
            flow = self.registrar.flow_for(binding)
            if flow is not None:
                targets.append((binding.uri, flow))
        if a.state is not SessionState.INCOMING:
            return
        if not targets:
            a.reject(480, reason=f"Temporarily Unavailable ({employee.extension} is not registered)")
            return
        invite = a.request
        from_ = NameAddr(invite.from_.display_name, invite.from_.uri)
        to = NameAddr(employee.name, parse_uri(self.registrar_aor(employee)))
        headers = passthrough(invite)
        for uri, flow in targets:
            leg = self.ua.invite(
                uri,
                flow,
                from_=from_,
                to=to,
                body=invite.body,
                content_type=_content_type(invite),
                headers=headers,
                queue=queue,
            )
            legs.append(leg)
        held: list[CallEvent] = []
        won = await self._fork(a, legs, queue, held)
        if won is not None:
            winner, answer = won
            await self._bridge(a, winner, queue, held, answer_owed=answer.answer_owed)

    def registrar_aor(self, employee: Employee) -> str:
        return f"sip:{employee.sip_user}@{self.directory.server.domain}"

    async def _fork(
        self, a: IncomingCall, legs: list[OutgoingCall], queue: CallQueue, held: list[CallEvent]
    ) -> tuple[OutgoingCall, Answered] | None:
        """Ring every leg; the first 2xx wins (returned; the A-leg is answered with it). None: call over."""
        pending: set[Call] = set(legs)
        statuses: list[int] = []
        ringing = False
        winner: OutgoingCall | None = None
        answer: Answered | None = None
        try:
            async with asyncio.timeout(self.ring_seconds):
                while pending and winner is None:
                    call, event = await queue.get()
                    if call is a:
                        if isinstance(event, Cancelled | Terminated):
                            reason: tuple[tuple[str, str], ...] = ()
                            if isinstance(event, Cancelled) and isinstance(event.message, Request):
                                reason = tuple(("Reason", v) for v in event.message.get_all("reason"))
                            self._drop(legs, reason)
                            return None
                        if isinstance(event, DialogRequestReceived):
                            held.append((call, event))
                        continue
                    if call not in pending:
                        continue
                    if isinstance(event, ProvisionalReceived):
                        if event.response.status in (180, 183) and not ringing:
                            ringing = True
                            a.ring(180)
                    elif isinstance(event, Answered):
                        assert isinstance(call, OutgoingCall)
                        winner, answer = call, event
                    elif isinstance(event, DialogRequestReceived):
                        held.append((call, event))
                    elif isinstance(event, Rejected):
                        pending.discard(call)
                        statuses.append(event.status)
                        if event.status >= 600:
                            break
                    elif isinstance(event, Terminated):
                        pending.discard(call)
        except TimeoutError:
            log.info("call %s: no answer within %s s", a.call_id, self.ring_seconds)
        if winner is None or answer is None:
            self._drop(legs, ())
            if a.state is SessionState.INCOMING:
                a.reject(_fork_failure(statuses) if statuses else 480)
            return None
        self._drop([leg for leg in legs if leg is not winner], (COMPLETED_ELSEWHERE,))
        response = answer.response
        try:
            a.answer(body=response.body, content_type=_content_type(response), headers=passthrough(response))
        except SessionError:
            log.info("call %s: the caller left as %s answered", a.call_id, winner.call_id)
            winner.bye()
            return None
        return winner, answer

    @staticmethod
    def _drop(legs: Iterable[OutgoingCall], headers: Iterable[tuple[str, str]]) -> None:
        """CANCEL the legs still ringing, BYE the ones that answered (RFC 3261 §15)."""
        extra = tuple(headers)
        for leg in legs:
            if leg.terminated:
                continue
            if leg.state in _EARLY:
                leg.cancel(headers=extra)
            else:
                leg.bye()

    # ------------------------------------------------------------------------------- bridged call

    async def _bridge(
        self,
        a: IncomingCall,
        b: OutgoingCall,
        queue: CallQueue,
        held: list[CallEvent],
        *,
        answer_owed: bool,
    ) -> None:
        """Relay between the legs until one ends; then end the other."""
        relay = _Relay(a, b)
        if answer_owed:
            relay.owe(b, a)  # an offerless INVITE: B's offer went to A in the 2xx, A's ACK brings the answer
        backlog = list(held)
        while True:
            call, event = backlog.pop(0) if backlog else await queue.get()
            if call is not a and call is not b:
                continue  # a losing leg's late events: its session ends it by itself
            if isinstance(event, Terminated):
                other = b if call is a else a
                log.info(
                    "call %s: %s ended (%s)", a.call_id, "caller" if call is a else "callee", event.reason
                )
                if not other.terminated:
                    other.bye()
                return
            relay.event(call, event)

    def _tear_down(self, a: IncomingCall, legs: list[OutgoingCall]) -> None:
        """Leave nothing behind when the call coroutine ends (also on cancellation at shutdown)."""
        for leg in legs:
            if not leg.terminated:
                try:
                    if leg.state in _EARLY:
                        leg.cancel()
                    else:
                        leg.bye()
                except SessionError:
                    log.debug("call %s: leg %s already going", a.call_id, leg.call_id)
        if a.terminated:
            return
        try:
            if a.state is SessionState.INCOMING:
                a.reject(500)
            else:
                a.bye()
        except SessionError:
            log.debug("call %s: caller leg already going", a.call_id)


class _Relay:
    """In-dialog requests of a bridged call, relayed across and answered back."""

    def __init__(self, a: Call, b: Call) -> None:
        self.a = a
        self.b = b
        #: Our re-INVITE on one leg -> the leg whose re-INVITE it relays.
        self._reinvites: dict[Call, Call] = {}
        #: (leg, CSeq number, method) of a request we sent -> (leg, request) it relays.
        self._requests: dict[tuple[Call, int, str], tuple[Call, Request]] = {}
        #: A leg owing an ACK with the answer (after an offerless (re-)INVITE) -> the leg whose ACK brings it.
        self._owed: dict[Call, Call] = {}

    def owe(self, leg: Call, source: Call) -> None:
        """``leg`` waits for the ACK body that ``source``'s ACK brings."""
        self._owed[leg] = source

    def other(self, call: Call) -> Call:
        return self.b if call is self.a else self.a

    def event(self, call: Call, event: SessionEvent) -> None:
        other = self.other(call)
        try:
            self._event(call, other, event)
        except SessionError as exc:
            log.info("call %s: cannot relay %s: %s", self.a.call_id, type(event).__name__, exc)

    def _event(self, call: Call, other: Call, event: SessionEvent) -> None:
        if isinstance(event, Confirmed | ReinviteConfirmed):
            owing = next((leg for leg, source in self._owed.items() if source is call), None)
            if owing is not None and event.ack.body:
                del self._owed[owing]
                owing.ack(body=event.ack.body, content_type=_content_type(event.ack))
        elif isinstance(event, ReinviteReceived):
            request = event.request
            try:
                other.reinvite(
                    body=request.body, content_type=_content_type(request), headers=passthrough(request)
                )
            except SessionError:
                call.reject_reinvite(491)
                return
            self._reinvites[other] = call
        elif isinstance(event, ReinviteAnswered):
            origin = self._reinvites.pop(call, None)
            if origin is None:
                return
            response = event.response
            if event.answer_owed:
                self._owed[call] = origin
            origin.answer_reinvite(
                body=response.body, content_type=_content_type(response), headers=passthrough(response)
            )
        elif isinstance(event, ReinviteFailed):
            origin = self._reinvites.pop(call, None)
            if origin is not None:
                status = event.status if 300 <= event.status <= 699 and event.status != 481 else 500
                origin.reject_reinvite(status)
        elif isinstance(event, DialogRequestReceived):
            request = event.request
            try:
                sent = other.send_request(
                    request.method,
                    body=request.body,
                    content_type=_content_type(request),
                    headers=passthrough(request),
                )
            except SessionError:
                call.respond(request, 500, headers=(("Retry-After", "1"),))
                return
            self._requests[(other, sent.cseq.seq, sent.method)] = (call, request)
        elif isinstance(event, DialogResponseReceived):
            response = event.response
            found = self._requests.pop((call, response.cseq.seq, response.cseq.method), None)
            if found is not None:
                origin, request = found
                origin.respond(
                    request,
                    response.status,
                    reason=response.reason,
                    body=response.body,
                    content_type=_content_type(response),
                    headers=passthrough(response),
                )
