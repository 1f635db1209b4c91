"""One call's state (:class:`CallState`), the headers that cross the B2BUA, and ending legs.

Headers: each leg writes its own transport, dialog and authentication headers (:data:`OWNED_HEADERS`);
everything else passes across unchanged and in order (:func:`passthrough`), a new leg's INVITE counting
Max-Forwards down (:func:`forwarded`). Ending: :func:`drop` (CANCEL what rings, BYE what answered),
:func:`tear_down` (everything a call coroutine leaves behind), :func:`discard_events` (the call's queue once
nobody reads it), :func:`hold_request` (a request that came before the bridge, kept for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterable
from typing import Final

import attrs

from durchwahl.media.errors import SdpError
from durchwahl.media.greeting import Greeting
from durchwahl.media.relay import Side
from durchwahl.media.sdes import SrtpPolicy
from durchwahl.media.sdp import parse_sdp
from durchwahl.sipcore.dialog import MAX_FORWARDS
from durchwahl.sipcore.headers import header_key
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.session import DialogRequestReceived, SessionError
from durchwahl.sipcore.session_timer import SessionTimer
from durchwahl.sipcore.ua import Call, CallEvent, CallQueue, IncomingCall, OutgoingCall

from .media_anchor import AnchoredMedia
from .records import CallDraft

__all__ = [
    "COMPLETED_ELSEWHERE",
    "HELD_SECONDS",
    "MAX_HELD",
    "OWNED_HEADERS",
    "CallState",
    "Ringing",
    "content_type",
    "discard_events",
    "drop",
    "fail_call",
    "forwarded",
    "hang_up",
    "hold_request",
    "offered_direction",
    "passthrough",
    "respond",
    "tear_down",
]

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
        "x-edge-source",  # the edge proxy's word to this node about a request's source: never passed on
    }
)

#: Identity headers a phone may send that are meaningful only inside the office (RFC 3325 §5: a trust
#: domain's boundary removes them); the trunk gets the office's identity in From instead.
PRIVATE_IDENTITY_HEADERS: Final = frozenset(
    {"p-asserted-identity", "p-preferred-identity", "remote-party-id"}
)

#: In-dialog requests held per call before the bridge (or until a leg is confirmed); more get 500.
MAX_HELD: Final = 16
#: How long a request is held at most: then it is answered 408, within the sender's 32 s (Timer F).
HELD_SECONDS = 30.0


def passthrough(message: Request | Response, *, also: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """The headers of ``message`` the B2BUA does not own, in order, exactly as they came."""
    owned = OWNED_HEADERS | {header_key(name) for name in also}
    return tuple((h.name, h.value) for h in message.headers if header_key(h.name) not in owned)


def forwarded(invite: Request, *, to_trunk: bool = False) -> tuple[tuple[str, str], ...]:
    """The headers a new leg's INVITE carries from the caller's: the pass-through ones (toward a trunk
    without the office's private identity headers) and Max-Forwards counted down, so a loop ends in 483."""
    headers = passthrough(invite, also=PRIVATE_IDENTITY_HEADERS if to_trunk else ())
    hops = invite.max_forwards
    return (*headers, ("Max-Forwards", str(MAX_FORWARDS if hops is None else max(hops - 1, 0))))


def content_type(message: Request | Response) -> str | None:
    """The Content-Type of a message that has a body (None without one)."""
    return message.get("content-type") if message.body else None


def offered_direction(body: bytes) -> str | None:
    """The direction (RFC 3264 §6.1) an SDP offer declares for its first active audio stream."""
    try:
        description = parse_sdp(body)
    except SdpError:
        return None
    for media in description.media:
        if media.media == "audio" and media.port != 0:
            return media.direction(description.direction())
    return None


@attrs.define(eq=False)
class CallState:
    """One call's state, as the call coroutine goes from route to route.

    ``a`` is the caller's leg: the INVITE that came in or, for a click-to-call, the employee's device that
    answered our INVITE. ``trunk``: the trunk it came through (None: from an employee).
    """

    a: Call
    queue: CallQueue
    trunk: str | None
    # --- legs
    #: Every B-leg started for this call (all steps of a ring group, transfer targets).
    legs: list[OutgoingCall] = attrs.Factory(list)
    #: In-dialog requests that came before a bridge: relayed once there is one.
    held: list[CallEvent] = attrs.Factory(list)
    #: Attended transfer: legs another call handed over to this one (ended with it), and legs this call
    #: handed over to another (left alone when it ends).
    adopted: list[Call] = attrs.Factory(list)
    given: set[Call] = attrs.Factory(set)
    #: Employees this call counts in ``CallServices.busy`` (the callee, who clicked to call, a transfer
    #: target).
    busy: list[str] = attrs.Factory(list)
    # --- media
    #: Set when the call is anchored: the A-leg's media is answered by us.
    media: AnchoredMedia | None = None
    #: The SRTP policy of the caller's leg (``media_anchor.leg_srtp``: its party's, over TLS only).
    srtp: SrtpPolicy = SrtpPolicy.OFF
    #: Our answer to the caller's offer (or our offer, for an offerless INVITE), sent when a destination
    #: answers.
    caller_sdp: bytes | None = None
    #: A destination rings (the caller was told: 180, or our ringback on an anchored call).
    ringing: bool = False
    #: Played to the caller of an anchored call while its destination rings (the number's music), else the
    #: generated ringback.
    music: Greeting | None = None
    #: Anchored legs whose offerless re-INVITE we answered with an offer: their ACK brings the answer.
    offered_in_2xx: set[Side] = attrs.Factory(set)
    #: The B-leg whose early media (a 1xx with SDP) the caller gets, if any.
    early: OutgoingCall | None = None
    #: RFC 4028: the session timer agreed with the caller (it refreshes; None: none runs).
    session_timer: SessionTimer | None = None
    # --- the call's CDR row
    record: CallDraft = attrs.Factory(CallDraft)

    def timer_headers(self, leg: Call) -> tuple[tuple[str, str], ...]:
        """What a 2xx to ``leg``'s INVITE or refresh carries for the session timer (nothing: none runs)."""
        if self.session_timer is None or leg is not self.a:
            return ()
        return self.session_timer.headers()

    @property
    def call_id(self) -> str:
        """The caller's leg's Call-ID: the call's name in logs, events and the CDR."""
        return self.a.call_id or ""


@attrs.define(eq=False)
class Ringing:
    """A click-to-call while the employee's devices ring: there is no caller's leg yet (what ringing needs
    of a :class:`CallState` otherwise)."""

    queue: CallQueue
    media: AnchoredMedia
    record: CallDraft
    #: The INVITEs to the employee's devices.
    legs: list[OutgoingCall] = attrs.Factory(list)
    held: list[CallEvent] = attrs.Factory(list)
    a: None = None


def fail_call(call: CallState, status: int, reason: str | None = None) -> None:
    """The call cannot be delivered: reject the caller, or hang up on a caller we answered (an anchored
    call's greeting); the CDR keeps ``status``."""
    a = call.a
    call.record.status = status
    if a.terminated:
        return
    try:
        if isinstance(a, IncomingCall) and a.unanswered:
            a.reject(status, reason=reason)
        else:
            a.bye()
    except SessionError:
        log.debug("call %s: caller leg already going", a.call_id)


def respond(
    leg: Call,
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    """Answer an in-dialog request, unless its leg has gone meanwhile (then only a log line)."""
    try:
        leg.respond(request, status, reason=reason, headers=headers)
    except SessionError as exc:
        log.info("call %s: %s to %s not sent: %s", leg.call_id, status, request.method, exc)


def hold_request(call: CallState | Ringing, leg: Call, event: DialogRequestReceived) -> None:
    """Keep an in-dialog request (INFO …) that came before the bridge; relayed once there is one, or
    answered 408 after :data:`HELD_SECONDS` (before the sender's own transaction gives up). A REFER is
    refused at once: there is no call to transfer before the bridge (and a greeting's caller is a trunk)."""
    if event.request.method == "REFER":
        respond(leg, event.request, 403, "Forbidden (no transfer before the call is connected)")
        return
    if len(call.held) >= MAX_HELD:
        leg.respond(event.request, 500, headers=(("Retry-After", "1"),))
        return
    held, item = call.held, (leg, event)
    held.append(item)

    def expire() -> None:
        if item not in held:
            return  # relayed (or the call is over)
        held.remove(item)
        log.info("call %s: held %s timed out before the bridge", leg.call_id, event.request.method)
        with contextlib.suppress(SessionError):  # the leg ended meanwhile
            leg.respond(event.request, 408)

    asyncio.get_running_loop().call_later(HELD_SECONDS, expire)


def hang_up(leg: Call) -> None:
    """BYE ``leg`` (CANCEL while it rings) if it is still there."""
    if leg.terminated:
        return
    try:
        leg.bye()
    except SessionError as exc:
        log.debug("call %s: already going: %s", leg.call_id, exc)


def drop(legs: Iterable[OutgoingCall], headers: Iterable[tuple[str, str]]) -> None:
    """CANCEL the legs still ringing (with ``headers``), BYE the ones that answered (RFC 3261 §15)."""
    extra = tuple(headers)
    for leg in legs:
        if leg.terminated:
            continue
        if leg.is_early:
            leg.cancel(headers=extra)
        else:
            leg.bye()


def tear_down(a: Call | None, legs: Iterable[Call], *, keep: Collection[Call] = frozenset()) -> None:
    """Leave nothing behind when a call coroutine ends (also on cancellation at shutdown); ``a``: the
    caller's leg (none while a click-to-call rings the employee); ``keep``: legs another call took."""
    if a is not None and a in keep:
        a = None
    for leg in legs:
        if not leg.terminated and leg not in keep:
            try:
                if leg.is_early and isinstance(leg, OutgoingCall):
                    leg.cancel()
                else:
                    leg.bye()
            except SessionError:
                log.debug("call %s: leg %s already going", a.call_id if a else None, leg.call_id)
    if a is None or a.terminated:
        return
    try:
        if isinstance(a, IncomingCall) and a.unanswered:
            a.reject(500)
        else:
            a.bye()
    except SessionError:
        log.debug("call %s: caller leg already going", a.call_id)


def discard_events(queue: CallQueue, legs: Iterable[Call], *, keep: Collection[Call] = ()) -> None:
    """A call coroutine ended: nobody reads its queue any more. Empty it now and as each leg ends — a queued
    ``(leg, event)`` holds the leg, whose ``events`` is this queue: a reference cycle that only the cyclic
    garbage collector would free, with the leg's whole session (CPS benchmark: ~110 objects per call)."""
    if any(leg.events is queue for leg in keep):
        return  # a leg handed to another call still reports here

    def discard(_: object = None) -> None:
        while not queue.empty():
            queue.get_nowait()

    discard()
    for leg in legs:
        if leg.events is queue and not leg.ended.done():
            leg.ended.add_done_callback(discard)
