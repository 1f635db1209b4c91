"""Anchored calls: the caller's media answered on a port of ours, and the SDP renegotiations on an anchored
leg answered here rather than relayed.

On an anchored call a re-INVITE (or an UPDATE with SDP) is answered by the B2BUA on that leg (RFC 3264 §8.4:
our answer mirrors the offered direction; the relay learns it); an offerless re-INVITE gets our offer in
the 2xx and brings its answer in the ACK (RFC 3261 §14.2). The other leg is told with a re-INVITE of ours
declaring the same direction (:class:`HoldSync`): hold and resume cross the bridge without the media moving.
"""

from __future__ import annotations

import logging

from durchwahl.media.errors import MediaError
from durchwahl.media.relay import Side
from durchwahl.media.session import PortsExhausted
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    DialogRequestReceived,
    ReinviteAnswered,
    ReinviteConfirmed,
    ReinviteFailed,
    ReinviteReceived,
    SessionError,
    SessionEvent,
    SessionState,
)
from durchwahl.sipcore.ua import Call, IncomingCall

from .leg import CallState, hold_request, offered_direction
from .media_anchor import AnchoredMedia
from .ringing import Unreached
from .services import CallServices

__all__ = ["HoldSync", "anchor_call", "answer_in_ack", "caller_event", "reanswer", "update_locally"]

log = logging.getLogger(__name__)


async def anchor_call(services: CallServices, call: CallState) -> Unreached | None:
    """Anchor the media of a caller not answered yet: our answer to its offer (or our offer, for an
    offerless INVITE) on a port of ours, sent once a destination answers; every destination is offered
    another port of ours and the two are relayed. Returns why it cannot be anchored (503: no port; 488: no
    usable SDP), None when it is (the caller may have left meanwhile)."""
    a = call.a
    assert isinstance(a, IncomingCall)
    ports, address = services.media_ports(a.flow)
    media = call.media = AnchoredMedia(ports, services.media_clock, address)
    offer = a.request.body
    try:
        call.caller_sdp = await (
            media.answer_caller(offer, call.srtp) if offer else media.offer_caller(call.srtp)
        )
        await media.offer_callee()
    except PortsExhausted:
        log.error("call %s: no RTP port left", a.call_id)
        return Unreached(503, "Service Unavailable (no media port)")
    except MediaError as exc:
        return Unreached(488, f"Not Acceptable Here ({exc})")
    return None


def caller_event(call: CallState, event: SessionEvent) -> None:
    """An event of the caller's leg before the bridge: held for it, or (anchored) handled here."""
    a = call.a
    if call.media is not None:
        if isinstance(event, ReinviteReceived):
            reanswer(call, event)
            return
        if isinstance(event, ReinviteConfirmed):
            answer_in_ack(call, Side.A, event)
            return
        if isinstance(event, DialogRequestReceived) and event.request.method == "UPDATE":
            update_locally(call, a, Side.A, event.request)
            return
    if isinstance(event, DialogRequestReceived):
        hold_request(call, a, event)


def reanswer(
    call: CallState,
    event: ReinviteReceived,
    side: Side = Side.A,
    leg: Call | None = None,
    *,
    direction: str = "sendrecv",
) -> str | None:
    """A re-INVITE (hold, resume) on a leg of an anchored call: answered here, the relay told; returns the
    direction the leg offered (None: not accepted, or no offer yet). An offerless re-INVITE gets our offer
    (``direction``: what the other party wants of this leg) in the 2xx, its answer comes in the ACK."""
    assert call.media is not None
    if leg is None:
        leg = (
            call.a
            if side is Side.A
            else next((b for b in call.legs if b.call_id == event.request.call_id), None)
        )
    if leg is None:
        return None
    if not event.request.body:
        try:
            leg.answer_reinvite(
                body=call.media.offer_again(side, direction),
                content_type="application/sdp",
                headers=call.timer_headers(leg),
            )
        except SessionError as exc:
            log.info("call %s: re-INVITE not answered: %s", call.call_id, exc)
            return None
        call.offered_in_2xx.add(side)
        return None
    try:
        body = call.media.answer_again(side, event.request.body)
    except MediaError as exc:
        log.info("call %s: re-INVITE not acceptable: %s", call.call_id, exc)
        leg.reject_reinvite(488)
        return None
    try:
        leg.answer_reinvite(body=body, content_type="application/sdp", headers=call.timer_headers(leg))
    except SessionError as exc:
        log.info("call %s: re-INVITE not answered: %s", call.call_id, exc)
        return None
    return offered_direction(event.request.body)


def answer_in_ack(call: CallState, side: Side, event: ReinviteConfirmed) -> str | None:
    """The ACK for our 2xx to a re-INVITE: after an offerless one it carries the leg's answer, which the
    relay learns; returns the direction it declares (None: nothing new)."""
    if side not in call.offered_in_2xx or call.media is None:
        return None
    call.offered_in_2xx.discard(side)
    try:
        call.media.answered_again(side, event.ack.body)
    except MediaError as exc:
        log.info("call %s: no usable answer in the ACK: %s", call.call_id, exc)
        return None
    return offered_direction(event.ack.body)


def update_locally(call: CallState, leg: Call, side: Side, request: Request) -> str | None:
    """An UPDATE (RFC 3311) on a leg of an anchored call: an SDP offer is answered here like a re-INVITE's;
    without one it only refreshes the dialog (200). Returns the direction offered."""
    assert call.media is not None
    if not request.body:
        leg.respond(request, 200, headers=call.timer_headers(leg))
        return None
    try:
        body = call.media.answer_again(side, request.body)
    except MediaError as exc:
        log.info("call %s: UPDATE not acceptable: %s", call.call_id, exc)
        leg.respond(request, 488)
        return None
    leg.respond(request, 200, body=body, content_type="application/sdp", headers=call.timer_headers(leg))
    return offered_direction(request.body)


class HoldSync:
    """On an anchored call, tells each leg the direction its peer asked for (hold and resume).

    A leg's re-INVITE or UPDATE is answered by the B2BUA (the relay learns the direction), and the other
    leg gets a re-INVITE of ours declaring the same direction (``sendonly`` from the holder: we only send
    to the held leg; ``inactive`` stays ``inactive``; ``sendrecv`` resumes), so its phone shows the hold
    and stops sending. Its answer updates the relay. One re-INVITE per leg at a time: a wish that comes
    while one is out (or while the leg is busy with its own re-INVITE) is sent once the leg is free.
    Glare with the phone's own re-INVITE is the session's (491, back-off and retry, RFC 3261 §14.1); a
    back-off overtaken by the phone's re-INVITE is tried again afterwards; any other failure gives up
    (the local answer stands, media keeps flowing as the relay allows).
    """

    def __init__(self, media: AnchoredMedia, a: Call, b: Call) -> None:
        self.media = media
        self.legs = {Side.A: a, Side.B: b}
        #: The direction our last SDP to each leg declared, and the one it should declare.
        self.offered = {Side.A: "sendrecv", Side.B: "sendrecv"}
        self.wanted = dict(self.offered)
        #: Our re-INVITE out on a leg: the direction it offers.
        self.pending: dict[Side, str] = {}

    def want(self, side: Side, direction: str) -> None:
        self.wanted[side] = direction

    def replace(self, side: Side, leg: Call) -> None:
        """A transfer target took leg ``side``'s place: it was offered what our last SDP to it declared (a
        target rung for the transfer ``sendrecv``; a party an attended transfer brought, what its call left
        it at), and both legs are to be resumed."""
        self.legs[side] = leg
        self.pending.pop(side, None)
        self.offered[side] = self.media.declared(side)
        self.wanted[side] = self.wanted[side.other] = "sendrecv"

    def sync(self) -> None:
        for side, leg in self.legs.items():
            wanted = self.wanted[side]
            if leg.terminated or side in self.pending or wanted == self.offered[side]:
                continue
            if leg.state is not SessionState.CONFIRMED:
                continue  # busy with a re-INVITE of its own (or ending): after that
            try:
                body = self.media.offer_again(side, wanted)
                leg.reinvite(body=body, content_type="application/sdp")
            except (MediaError, SessionError) as exc:
                log.info("call %s: cannot re-INVITE for %s: %s", leg.call_id, wanted, exc)
                self.offered[side] = wanted  # not again
                continue
            self.pending[side] = wanted

    def outcome(self, side: Side, event: ReinviteAnswered | ReinviteFailed) -> None:
        direction = self.pending.pop(side, None)
        if direction is None:
            return
        leg = self.legs[side]
        if isinstance(event, ReinviteAnswered):
            self.offered[side] = direction
            try:
                self.media.answered_again(side, event.response.body)
            except MediaError as exc:
                log.warning("call %s: unusable answer to our re-INVITE: %s", leg.call_id, exc)
            return
        if event.response is None:
            return  # our 491 back-off was overtaken by the leg's own re-INVITE: sent again after it
        log.info("call %s: re-INVITE (%s) refused with %s", leg.call_id, direction, event.status)
        self.offered[side] = direction
