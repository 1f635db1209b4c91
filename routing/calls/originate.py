"""Click-to-call: ring an employee's phones, then call a number for them through the trunk.

Every registered device of the employee gets an INVITE of ours (From: the number to be called, media
anchored: the offer is one of our RTP ports). If none answers within ``ring_seconds`` the devices get CANCEL
and nothing goes to the trunk. When one answers, the number (a dial string, post-dial digits included) is
resolved as if the employee had dialled it and rung the way any call out is (the provider's 401/407
answered, the employee hears ringback, post-dial digits after the client's 2xx and our ACK); a client that
fails gets the employee's leg a BYE. Once the client answers the legs are bridged until either hangs up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from durchwahl.media.errors import MediaError
from durchwahl.media.sdes import SrtpPolicy
from durchwahl.media.session import PortsExhausted
from durchwahl.sipcore.ua import OutgoingCall
from durchwahl.sipcore.uri import NameAddr, SipUri, parse_uri

from ..cdr import CallRecord
from ..dialstring import DialStringError, format_dialstring, parse_dialstring
from ..events import CallStarted
from ..resolver import FromEmployee, Refused, ToExternal
from .bridge import HookFactory
from .deliver import deliver
from .describe import describe_route
from .leg import CallState, Ringing, discard_events, fail_call, hold_request, tear_down
from .media_anchor import AnchoredMedia, leg_srtp
from .records import CallDraft
from .ringing import Failed, fork, fork_failure
from .services import CallServices

__all__ = ["StatusListener", "originate", "refuse_click_to_call"]

log = logging.getLogger(__name__)

#: Hears how a click-to-call's start went, once: ``(180, reason)`` when the phones ring, else the refusal.
StatusListener = Callable[[int, str], None]


async def originate(
    services: CallServices,
    extension: str,
    number: str,
    *,
    hook: HookFactory | None = None,
    on_status: StatusListener | None = None,
) -> CallRecord:
    """Click-to-call (see the module docstring): runs until the call is over and returns its CDR record
    (written to the CDR store too). One that cannot start gives a record with ``status``: no such employee
    404, an unparsable number 484, the resolver's refusal (a number outside the employee's scope: 403), a
    route other than a number out 403, nobody registered 480, no RTP port 503. ``on_status`` hears how the
    start went (``durchwahl originate`` reports it before the call goes on). Cancelling the coroutine ends
    every leg."""
    draft = CallDraft(caller=extension, dialled=number, started_at=services.clock())

    def refused(status: int, reason: str) -> CallRecord:
        return refuse_click_to_call(services, draft, status, reason, on_status)

    employee = services.employee(extension)
    if employee is None:
        return refused(404, f"no employee has extension {extension}")
    try:
        dialled = parse_dialstring(number)
    except DialStringError as exc:
        return refused(484, str(exc))
    draft.dialled = format_dialstring(dialled)
    try:
        async with asyncio.timeout(services.resolve_timeout):
            route = await services.resolver.resolve(dialled, FromEmployee(extension))
    except TimeoutError:
        return refused(503, "routing timed out")
    if isinstance(route, Refused):
        return refused(route.status, route.reason)
    if not isinstance(route, ToExternal):
        return refused(403, f"click-to-call calls numbers outside the office, and {draft.dialled} is not one")
    devices = [
        (device, srtp)
        for device in await services.devices(employee)
        if (srtp := leg_srtp(employee.srtp, device.flow)) is not None  # SRTP required: only its phones on TLS
    ]
    if not devices:
        return refused(480, f"no phone of {extension} is registered")
    log.info(
        "click-to-call %s -> %s: ringing %s first, then %s",
        extension,
        draft.dialled,
        extension,
        describe_route(route),
    )

    ports, address = services.media_ports(devices[0][0].flow)
    media = AnchoredMedia(ports, services.media_clock, address)
    ringing = Ringing(asyncio.Queue(), media, record=draft)
    legs = ringing.legs
    policies: dict[OutgoingCall, SrtpPolicy] = {}
    call: CallState | None = None
    try:
        try:
            offers = {
                srtp: await media.offer_caller(srtp)
                for srtp in dict.fromkeys(policy for _, policy in devices)
            }
        except PortsExhausted:
            log.error("click-to-call %s -> %s: no RTP port left", extension, draft.dialled)
            return refused(503, "no media port")
        from_ = NameAddr(None, SipUri("sip", route.e164, None, services.directory.server.domain))
        to = NameAddr(employee.name, parse_uri(services.registrar_aor(employee)))
        for device, srtp in devices:
            leg = services.ua.invite(
                device.uri,
                device.flow,
                route=device.route,
                from_=from_,
                to=to,
                body=offers[srtp],
                content_type="application/sdp",
                queue=ringing.queue,
            )
            legs.append(leg)
            policies[leg] = srtp
        services.active[legs[0]] = ringing
        if on_status is not None:
            on_status(180, f"the phones of {extension} ring")
        won = await fork(
            ringing.queue,
            legs,
            services.ring_seconds,
            ringing=lambda leg, response: None,  # there is no caller to tell
            request=lambda leg, event: hold_request(ringing, leg, event),
            call_id=legs[0].call_id,
        )
        if not isinstance(won, tuple):
            statuses = won.statuses if isinstance(won, Failed) else ()
            draft.status = fork_failure(statuses) if statuses else 480
            draft.destination = ("employee", extension)
            log.info("click-to-call %s -> %s: not taken (%s)", extension, draft.dialled, draft.status)
            record = draft.finish(legs[0].call_id or "", services.clock())
            services.write_cdr(record)
            return record
        winner, answer = won
        media.stop_playing()
        try:
            media.caller_answered(answer.response.body, policies[winner])
        except MediaError as exc:
            log.info("click-to-call %s: no usable answer from %s: %s", extension, winner.call_id, exc)
            winner.bye()
            draft.status, draft.destination = 488, ("employee", extension)
            record = draft.finish(legs[0].call_id or "", services.clock())
            services.write_cdr(record)
            return record
        call = _answered(ringing, winner, route)
        call.srtp = policies[winner]
        services.active[legs[0]] = call
        services.emit(CallStarted(call.call_id, extension, draft.dialled))  # ringing, answered follow
        services.count_busy(call, extension)
        try:
            unreached = await deliver(services, call, route, hook=hook)
            if unreached is not None:
                fail_call(call, unreached.status, unreached.reason)
        finally:
            services.uncount_busy(call)
        record = call.record.finish(call.call_id, services.clock())
        services.write_cdr(record)
        return record
    finally:
        if legs:
            services.active.pop(legs[0], None)
        if call is None:
            tear_down(None, legs)
            discard_events(ringing.queue, legs)
        else:
            tear_down(call.a, [*call.legs, *call.adopted], keep=call.given)
            discard_events(call.queue, [call.a, *call.legs, *call.adopted], keep=call.given)
        media.close()


def refuse_click_to_call(
    services: CallServices, draft: CallDraft, status: int, reason: str, on_status: StatusListener | None
) -> CallRecord:
    """A click-to-call that cannot start: ``on_status`` hears why, the CDR keeps a row with ``status``."""
    log.info("click-to-call %s -> %s refused: %s %s", draft.caller, draft.dialled, status, reason)
    if on_status is not None:
        on_status(status, reason)
    draft.status = status
    record = draft.finish(services.ua.endpoint.new_call_id(), services.clock())
    services.write_cdr(record)
    return record


def _answered(ringing: Ringing, winner: OutgoingCall, route: ToExternal) -> CallState:
    """The employee took the click-to-call on ``winner``: from now on it is the caller of a call out."""
    call = CallState(winner, ringing.queue, None, legs=[leg for leg in ringing.legs if leg is not winner])
    call.held, call.media, call.record = ringing.held, ringing.media, ringing.record
    call.record.destination = (route.kind, route.e164)
    return call
