"""A call rings its route and is connected to the winner.

Every device of an employee rings in parallel, each on the flow its REGISTER came on (NAT-safe). Each B-leg
is a dialog of its own: new Call-ID, tags and CSeq; headers the B2BUA does not own pass through unchanged
and in order. The first 2xx wins and is bridged; the other devices get CANCEL with ``Reason: SIP;cause=200;
text="Call completed elsewhere"``. The caller's CANCEL goes to every B-leg (its ``Reason`` copied).

While devices ring the caller hears 180 — anchored after the greeting, the number's ``music`` or our
ringback (425 Hz, 1 s on, 4 s off) — or the early media of a sole ringing leg (a 183 with SDP: through our
relay when anchored, the leg's SDP itself otherwise). Anchored (``[server] anchor_media``, calls out, greeting
calls), the caller's offer is answered on a port of ours, sent when a destination answers, every destination
is offered another port of ours, and the two are relayed. Calls out send their post-dial digits once the
client has answered.
"""

from __future__ import annotations

import logging

from durchwahl.media.errors import MediaError
from durchwahl.media.sdes import SrtpPolicy
from durchwahl.media.session import PortsExhausted
from durchwahl.sipcore.message import Response
from durchwahl.sipcore.session import (
    Answered,
    Confirmed,
    DialogRequestReceived,
    SessionError,
    SessionEvent,
    Terminated,
)
from durchwahl.sipcore.ua import Call, IncomingCall, OutgoingCall
from durchwahl.sipcore.uri import NameAddr

from ..events import CallAnswered, CallRinging
from ..resolver import Refused, Route, ToExternal
from .anchor import anchor_call, caller_event
from .bridge import HookFactory, bridge
from .leg import CallState, content_type, fail_call, forwarded, hold_request, passthrough
from .media_anchor import ringback
from .outbound import send_post_dial
from .ringing import Ended, Unreached, Won, ring_route
from .services import CallServices

__all__ = ["CallRinger", "connect", "deliver"]

log = logging.getLogger(__name__)


class CallRinger:
    """How a call rings (a :class:`~routing.calls.ringing.Ringer`): the legs carry the caller's identity and
    pass-through headers, and the caller's SDP or our anchored offer; the caller hears them ring."""

    unanswered = "no answer"

    def __init__(self, services: CallServices, call: CallState) -> None:
        self.services = services
        self.call = call
        self.queue = call.queue
        self.caller: Call | None = call.a
        self._forked = False

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def gone(self) -> bool:
        return self.call.a.terminated

    def routed(self, kind: str, ident: str) -> None:
        self.call.record.destination = (kind, ident)

    async def offer(
        self, *, external: bool, srtp: SrtpPolicy = SrtpPolicy.OFF
    ) -> tuple[bytes, str | None] | Unreached:
        call = self.call
        # SDES keys travel in the SDP: a call with SRTP on either leg is anchored, each leg with its keys.
        if call.media is None and (external or srtp is not SrtpPolicy.OFF or call.srtp is not SrtpPolicy.OFF):
            failure = await anchor_call(self.services, call)
            if failure is not None:
                return failure
        media = call.media
        if media is None:
            a = call.a
            assert isinstance(a, IncomingCall)
            return a.request.body, content_type(a.request)
        try:
            return await media.offer_callee(srtp), "application/sdp"
        except PortsExhausted:
            log.error("call %s: no RTP port left", call.call_id)
            return Unreached(503, "Service Unavailable (no media port)")
        except MediaError as exc:
            log.error("call %s: no media for the callee: %s", call.call_id, exc)
            return Unreached(503 if not external else 488, f"Not Acceptable Here ({exc})")

    def identity(self) -> NameAddr:
        """The caller's From, its display name the CRM contact's name when the CRM knows the number."""
        a = self.call.a
        assert isinstance(a, IncomingCall)  # employees are rung for someone who called in
        name = self.call.record.caller_name or a.request.from_.display_name
        return NameAddr(name, a.request.from_.uri)

    def headers(self, *, to_trunk: bool) -> tuple[tuple[str, str], ...]:
        a = self.call.a
        return forwarded(a.request, to_trunk=to_trunk) if isinstance(a, IncomingCall) else ()

    def started(self, legs: list[OutgoingCall]) -> None:
        self.call.legs.extend(legs)
        self._forked = len(legs) > 1

    def ringing(self, leg: OutgoingCall, response: Response) -> None:
        if response.body:
            _early_media(self.call, leg, response, forked=self._forked)
        if response.status in (180, 183):
            tell_ringing(self.services, self.call)

    def request_received(self, leg: Call, event: DialogRequestReceived) -> None:
        hold_request(self.call, leg, event)

    def caller_event(self, event: SessionEvent) -> None:
        caller_event(self.call, event)


async def deliver(
    services: CallServices, call: CallState, route: Route, *, hook: HookFactory | None
) -> Unreached | None:
    """Ring ``route`` for ``call`` (anchoring its media first where configured) and bridge the winner until
    the call ends: None. When nobody answers, the :class:`~routing.calls.ringing.Unreached` (the caller is
    not told yet: the caller of this decides what comes next)."""
    if services.anchor_media and call.media is None and not isinstance(route, ToExternal | Refused):
        failure = await anchor_call(services, call)
        if failure is not None:
            fail_call(call, failure.status, failure.reason)
            return None
        if call.a.terminated:
            return None
    outcome = await ring_route(services, CallRinger(services, call), route)
    if isinstance(outcome, Ended):
        return None
    if isinstance(outcome, Unreached):
        return outcome
    await _bridge_winner(services, call, outcome, hook)
    return None


async def _bridge_winner(services: CallServices, call: CallState, won: Won, hook: HookFactory | None) -> None:
    if call.media is not None:
        call.media.stop_playing()  # the ringback
    if not await connect(services, call, won.leg, won.answer, won.srtp):
        return
    call.record.answered_by, call.record.answered_contact = won.answered_by, won.contact
    if won.party is not None:
        log.info("call %s: answered by %s at %s", call.call_id, won.label, won.contact)
    else:
        log.info("call %s: %s answered", call.call_id, won.label)
    if won.party is not None:
        services.count_busy(call, won.party)
    try:
        if won.post_dial:
            send_post_dial(services, call, won.post_dial)
        await bridge(call, won.leg, answer_owed=won.answer.answer_owed, hook=hook, policy=services.watch)
    finally:
        services.uncount_busy(call)


async def connect(
    services: CallServices,
    call: CallState,
    winner: OutgoingCall,
    answer: Answered,
    srtp: SrtpPolicy = SrtpPolicy.OFFERED,
) -> bool:
    """The callee answered: answer the caller with its SDP, or (anchored) relay media to it — answering a
    caller not answered yet with our own SDP first; ``srtp``: the winner's leg's SRTP policy. False: the
    call is over."""
    a, response = call.a, answer.response
    media = call.media
    if media is not None:
        if isinstance(a, IncomingCall) and a.unanswered:
            try:
                a.answer(
                    body=call.caller_sdp or b"", content_type="application/sdp", headers=call.timer_headers(a)
                )
            except SessionError:
                log.info("call %s: the caller left as %s answered", a.call_id, winner.call_id)
                winner.bye()
                return False
            if media.a_media is None and not await _caller_ack(call, winner):
                return False
        try:
            media.bridge_callee(response.body, srtp)
        except MediaError as exc:
            log.warning("call %s: cannot bridge media of %s: %s", a.call_id, winner.call_id, exc)
            winner.bye()
            fail_call(call, 488)
            return False
    else:
        assert isinstance(a, IncomingCall)  # not anchored: someone called in
        try:
            a.answer(
                body=response.body,
                content_type=content_type(response),
                headers=(*passthrough(response), *call.timer_headers(a)),
            )
        except SessionError:
            log.info("call %s: the caller left as %s answered", a.call_id, winner.call_id)
            winner.bye()
            return False
    call.record.answered_at = services.clock()
    services.emit(CallAnswered(call.call_id))
    return True


async def _caller_ack(call: CallState, winner: OutgoingCall) -> bool:
    """An offerless INVITE: wait for the caller's ACK with the answer to our offer (the callee's leg already
    answered); false: the call is over (both legs are ended)."""
    assert call.media is not None
    a = call.a
    while True:
        leg, event = await call.queue.get()
        if isinstance(event, Terminated) and leg in (a, winner):
            if leg is a:
                winner.bye()
            else:
                a.bye()
            return False
        if leg is a and isinstance(event, Confirmed):
            try:
                call.media.caller_answered(event.ack.body)
            except MediaError as exc:
                log.info("call %s: no usable answer in the ACK: %s", a.call_id, exc)
                a.bye()
                winner.bye()
                return False
            return True
        if leg is a:
            caller_event(call, event)
        elif leg is winner and isinstance(event, DialogRequestReceived):
            hold_request(call, leg, event)


def _early_media(call: CallState, leg: OutgoingCall, response: Response, *, forked: bool) -> None:
    """A ringing leg's 1xx with SDP (the provider's announcement, the far network's ringback): a caller not
    answered yet gets a 183 with SDP and hears it — anchored, through our relay (the caller's answer is the
    one its 200 will carry); not anchored, the leg's SDP itself, only when it is the sole leg (forks could
    answer with other SDP than the 183 had, RFC 6337 §3.1)."""
    a = call.a
    if call.early is not None or not isinstance(a, IncomingCall) or not a.unanswered:
        return
    if content_type(response) != "application/sdp":
        return
    try:
        if call.media is not None:
            if not call.caller_sdp or call.media.a_media is None:
                return  # an offerless INVITE: our offer can only go in the 2xx
            call.media.bridge_callee(response.body)
            a.ring(183, body=call.caller_sdp, content_type="application/sdp")
        elif not forked:
            a.ring(183, body=response.body, content_type="application/sdp", headers=passthrough(response))
        else:
            return
    except MediaError as exc:
        log.info("call %s: early media of %s not usable: %s", a.call_id, leg.call_id, exc)
        return
    except SessionError:
        return
    call.early = leg


def tell_ringing(services: CallServices, call: CallState) -> None:
    """A destination rings: the caller hears it (180, or our ringback or music on an answered anchored
    call) and the ``ringing`` event goes out, once per call."""
    if call.ringing:
        return
    call.ringing = True
    services.emit(CallRinging(call.call_id))
    if call.early is not None:
        return  # the caller hears the early media
    a = call.a
    if isinstance(a, IncomingCall) and a.unanswered:
        a.ring(180)  # not answered yet (a call out anchors media, but answers only with the client)
    elif call.media is not None:
        call.media.play_to_caller(call.music or ringback(), loop=True)
