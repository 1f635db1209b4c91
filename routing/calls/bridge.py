"""A bridged call: both legs' events from one queue until either ends.

BYE on either side ends both legs. Re-INVITEs (an offerless one too, its answer carried in the ACK), UPDATE
and INFO are relayed to the other leg and their answers back (:class:`Relay`; a request the other leg
cannot take now gets 491 or 500); requests that arrived before the bridge were held and are relayed first.
On an anchored call re-INVITEs and UPDATEs are answered here instead (:mod:`routing.calls.anchor`).

Every event goes to the bridge's hook first (:class:`~routing.calls.services.BridgeHook`, made by the
``hook`` factory: call transfer plugs in there): it may take the event, put another leg in a party's place,
or end the bridge (another call took its party).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import attrs

from durchwahl.media.relay import Side
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.session import (
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteConfirmed,
    ReinviteFailed,
    ReinviteReceived,
    SessionError,
    SessionEvent,
    Terminated,
    TerminationReason,
)
from durchwahl.sipcore.ua import Call, CallEvent, CallQueue

from .anchor import HoldSync, answer_in_ack, reanswer, update_locally
from .leg import MAX_HELD, CallState, content_type, passthrough
from .services import BridgeHook
from .watch import CallWatch, WatchPolicy

__all__ = ["HookFactory", "Relay", "bridge"]

log = logging.getLogger(__name__)

#: Headers of our own for the 2xx relayed back to a leg.
ExtraHeaders = Callable[[Call], tuple[tuple[str, str], ...]]
#: Makes the hook of a bridge: ``hook(call, a, b)``.
HookFactory = Callable[[CallState, Call, Call], BridgeHook]


async def bridge(
    call: CallState,
    b: Call,
    *,
    answer_owed: bool,
    hook: HookFactory | None = None,
    policy: WatchPolicy | None = None,
) -> None:
    """Relay between the caller's leg and ``b`` until one ends; then end the other (see the module
    docstring). ``answer_owed``: ``b`` answered an offerless INVITE with its offer, the caller's ACK brings
    the answer. ``policy``: when the call is ended though nobody hangs up (:mod:`routing.calls.watch`)."""
    a, queue = call.a, call.queue
    relay = Relay(a, b, call.timer_headers)
    if answer_owed:
        relay.owe(b, a)
    hold = HoldSync(call.media, a, b) if call.media is not None else None
    hooked = hook(call, a, b) if hook is not None else None
    loop = asyncio.get_running_loop()
    watch: CallWatch | None = None
    timer = call.session_timer
    if (policy is not None and policy.active) or timer is not None:
        policy = policy or WatchPolicy()
        if call.media is None:
            policy = attrs.evolve(policy, rtp_timeout=None)  # no media of ours to see
        watch = CallWatch(policy, loop.time())
        if timer is not None:
            watch.refresh_expected(Side.A, timer.interval, loop.time())
    backlog = list(call.held)
    call.held.clear()
    while True:
        if backlog:
            leg, event = backlog.pop(0)
        else:
            item = await _next(queue, watch, loop)
            if item is None:  # the watch's time came
                assert watch is not None
                reason = _look(call, watch, loop.time())
                if reason is not None:
                    _end(a, b, reason)
                    return
                continue
            leg, event = item
        if watch is not None and _refreshes(event):
            watch.refreshed(Side.A if leg is a else Side.B, loop.time())
        if hooked is not None and hooked.event(leg, event):
            if hooked.released:
                return  # another call took the other party: this one is over
            replaced = hooked.take_replacement()
            if replaced is not None:
                side, target = replaced
                a, b = (target, b) if side is Side.A else (a, target)
                relay = Relay(a, b, call.timer_headers)
                if hold is not None:
                    hold.replace(side, target)
                    hold.sync()
            continue
        if leg is not a and leg is not b:
            continue  # a losing leg's late events: its session ends it by itself
        if isinstance(event, Terminated):
            other = b if leg is a else a
            who = "the caller" if leg is a else "the callee"
            if event.reason is TerminationReason.REMOTE_BYE:
                log.info("call %s: %s hung up", a.call_id, who)
            else:
                log.info("call %s: %s's leg ended (%s)", a.call_id, who, event.reason.value)
            if not other.terminated:
                # Pending requests of the other leg (a re-INVITE or INFO relayed to the leg that ended) are
                # answered 487 by its session as it ends (RFC 3261 §15.1.2).
                other.bye()
            return
        if hold is not None:
            _anchored_event(call, hold, relay, leg, Side.A if leg is a else Side.B, event)
            hold.sync()
        else:
            relay.event(leg, event)
        relay.flush()


def _refreshes(event: SessionEvent) -> bool:
    """A session refresh (RFC 4028 §7): a re-INVITE or an UPDATE."""
    if isinstance(event, ReinviteReceived):
        return True
    return isinstance(event, DialogRequestReceived) and event.request.method == "UPDATE"


async def _next(
    queue: CallQueue, watch: CallWatch | None, loop: asyncio.AbstractEventLoop
) -> CallEvent | None:
    """The next event of the call, or None when the watch wants to look before one comes."""
    due = watch.next_check(loop.time()) if watch is not None else None
    if due is None:
        return await queue.get()
    try:
        async with asyncio.timeout_at(due):
            return await queue.get()
    except TimeoutError:
        return None


def _look(call: CallState, watch: CallWatch, now: float) -> str | None:
    """Tell the watch what the media did (anchored calls), then ask it whether the call must end."""
    media = call.media
    bridge = media.bridge if media is not None else None
    if media is not None and bridge is not None:
        for side, session in ((Side.A, media.a), (Side.B, media.b)):
            if session is not None:
                expected = bridge.relay.media(side).sends
                watch.media(side, session.stats.received, expected=expected, now=now)
    return watch.verdict(now)


def _end(a: Call, b: Call, reason: str) -> None:
    """End both legs of a call nobody hung up, saying why (RFC 3326 Reason; Q.850 102: recovery on timer
    expiry)."""
    log.warning("call %s: ended by the server: %s", a.call_id, reason)
    header = ("Reason", f'Q.850;cause=102;text="{reason}"')
    for leg in (a, b):
        if not leg.terminated:
            try:
                leg.bye(headers=(header,))
            except SessionError as exc:
                log.debug("call %s: %s", leg.call_id, exc)


def _anchored_event(
    call: CallState, hold: HoldSync, relay: Relay, leg: Call, side: Side, event: SessionEvent
) -> None:
    """An event of a leg of an anchored bridge: renegotiations answered here, the rest relayed."""
    direction: str | None = None
    if isinstance(event, ReinviteReceived):
        direction = reanswer(call, event, side, leg, direction=hold.wanted[side])  # media stays anchored
    elif isinstance(event, ReinviteConfirmed) and side in call.offered_in_2xx:
        direction = answer_in_ack(call, side, event)
    elif isinstance(event, DialogRequestReceived) and event.request.method == "UPDATE":
        direction = update_locally(call, leg, side, event.request)
    elif isinstance(event, ReinviteAnswered | ReinviteFailed):
        hold.outcome(side, event)  # only our re-INVITEs: an anchored call relays none
        return
    else:
        relay.event(leg, event)
        return
    if direction is not None:
        hold.want(side.other, direction)


class Relay:
    """In-dialog requests of a bridged call, relayed across and answered back.

    A request for a leg whose INVITE still waits for its ACK (it cannot send requests yet) is held and
    relayed once that leg is confirmed (:meth:`flush`).
    """

    def __init__(
        self, a: Call, b: Call, extra: Callable[[Call], tuple[tuple[str, str], ...]] | None = None
    ) -> None:
        self.a = a
        self.b = b
        #: Headers of our own for the answers relayed back to a leg (the session timer's).
        self._extra = extra
        #: Our re-INVITE on one leg -> the leg whose re-INVITE it relays.
        self._reinvites: dict[Call, Call] = {}
        #: (leg, CSeq number, method) of a request we sent -> (leg, request) it relays.
        self._requests: dict[tuple[Call, int, str], tuple[Call, Request]] = {}
        #: A leg owing an ACK with the answer (after an offerless (re-)INVITE) -> the leg whose ACK brings it.
        self._owed: dict[Call, Call] = {}
        #: Requests (leg they came on, request) waiting for the other leg to be confirmed.
        self._waiting: list[tuple[Call, Request]] = []

    def _headers(self, origin: Call, response: Response) -> tuple[tuple[str, str], ...]:
        """The relayed answer's pass-through headers, and ours for ``origin`` (2xx only)."""
        headers = passthrough(response)
        if self._extra is not None and 200 <= response.status < 300:
            headers = (*headers, *self._extra(origin))
        return headers

    def owe(self, leg: Call, source: Call) -> None:
        """``leg`` waits for the ACK body that ``source``'s ACK brings."""
        self._owed[leg] = source

    def other(self, call: Call) -> Call:
        return self.b if call is self.a else self.a

    def flush(self) -> None:
        """Relay the requests that waited for a leg to be confirmed, once it is."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        for call, request in waiting:
            other = self.other(call)
            if call.terminated:
                continue
            if other.confirming:
                self._waiting.append((call, request))
                continue
            try:
                self._send(call, other, request)
            except SessionError as exc:
                log.info("call %s: cannot relay %s: %s", self.a.call_id, request.method, exc)

    def _send(self, call: Call, other: Call, request: Request) -> None:
        """Relay ``request`` (INFO, UPDATE …) from ``call`` to ``other``; its answer goes back later."""
        if not other.can_send_requests:
            call.respond(request, 500, headers=(("Retry-After", "1"),))
            return
        try:
            sent = other.send_request(
                request.method,
                body=request.body,
                content_type=content_type(request),
                headers=passthrough(request),
            )
        except SessionError:
            call.respond(request, 500, headers=(("Retry-After", "1"),))
            return
        self._requests[(other, sent.cseq.seq, sent.method)] = (call, request)

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
                owing.ack(body=event.ack.body, content_type=content_type(event.ack))
        elif isinstance(event, ReinviteReceived):
            request = event.request
            try:
                other.reinvite(
                    body=request.body, content_type=content_type(request), headers=passthrough(request)
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
                body=response.body,
                content_type=content_type(response),
                headers=self._headers(origin, response),
            )
        elif isinstance(event, ReinviteFailed):
            origin = self._reinvites.pop(call, None)
            if origin is not None:
                status = event.status if 300 <= event.status <= 699 and event.status != 481 else 500
                origin.reject_reinvite(status)
        elif isinstance(event, DialogRequestReceived):
            request = event.request
            if other.confirming and len(self._waiting) < MAX_HELD:
                self._waiting.append((call, request))
                return
            self._send(call, other, request)
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
                    content_type=content_type(response),
                    headers=self._headers(origin, response),
                )
