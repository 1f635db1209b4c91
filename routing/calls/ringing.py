"""Ringing a route, once for every flow: a call, a blind transfer's target, a click-to-call's number.

:func:`ring_route` follows a route until a destination answers or none can: an employee (every registered
device at once, for the employee's ring time, then the employee's fallback when nobody answered), a ring
group (its plan step by step, then the group's fallback), a number through a trunk. What differs between
the flows — who the new legs say is calling, what they offer, what a ringing leg or the caller leaving does —
comes from the flow's :class:`Ringer`. The outcome is the winner (:class:`Won`), the caller's departure
(:data:`ENDED`) or why nobody answered (:class:`Unreached`), which the flow turns into its own answer.

Decisions, pinned by tests: busy (486) and declined (6xx) do not go to an employee's fallback, only "not
reached" (480: nobody registered, nobody answered); a group met a second time ends the route with 482 Loop
Detected, as do :data:`MAX_HOPS` routes; a route that cannot be rung (an office number's greeting, say) is
480 with the reason; the caller leaving is checked before every hop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

import attrs

from durchwahl.media.sdes import SrtpPolicy
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.session import (
    Answered,
    Cancelled,
    DialogRequestReceived,
    ProvisionalReceived,
    Rejected,
    SessionEvent,
    Terminated,
)
from durchwahl.sipcore.ua import Call, CallQueue, OutgoingCall
from durchwahl.sipcore.uri import NameAddr, parse_uri

from ..dialstring import format_post_dial
from ..directory import Employee, Group
from ..resolver import Refused, Route, ToEmployee, ToExternal, ToGroup
from .describe import describe_route
from .leg import COMPLETED_ELSEWHERE, drop
from .media_anchor import leg_srtp
from .outbound import external_failure, trunk_credentials, trunk_flow, trunk_identity, trunk_uri
from .services import CallServices

__all__ = [
    "ENDED",
    "MAX_HOPS",
    "Ended",
    "Failed",
    "RingOutcome",
    "Ringer",
    "Unreached",
    "Won",
    "fork",
    "fork_failure",
    "ring_route",
]

log = logging.getLogger(__name__)

#: How many routes one call may go through (a group's fallback to another group …) before it is refused.
MAX_HOPS: Final = 8


@attrs.frozen
class Won:
    """A destination answered: its leg and answer, the employee's extension (None: a number out), the CDR's
    words for it (the employee's SIP user or the number; the device's contact) and the post-dial digits to
    send once connected."""

    leg: OutgoingCall
    answer: Answered
    party: str | None
    answered_by: str
    contact: str | None
    post_dial: str = ""
    #: Who answered, for the log: ``101 (Anna Schmidt)``, or the number.
    label: str = ""
    #: The SRTP policy the winner's leg was offered under.
    srtp: SrtpPolicy = SrtpPolicy.OFFERED


@attrs.frozen
class Unreached:
    """Nobody answered: the status the caller is to get, its reason phrase, and whether any device was rung
    at all (``rang`` false: nobody registered)."""

    status: int
    reason: str | None = None
    rang: bool = True


@attrs.frozen
class Ended:
    """The call is over: the caller (the party being connected) left."""


ENDED: Final = Ended()
RingOutcome = Won | Unreached | Ended


@attrs.frozen
class Failed:
    """No leg of one fork answered: the final statuses they sent (none: no answer at all), and whether any
    device was rung."""

    statuses: tuple[int, ...]
    rang: bool = True


class Ringer(Protocol):
    """What a flow tells :func:`ring_route` (see the module docstring)."""

    #: Where the new legs' events go.
    queue: CallQueue
    #: The leg whose CANCEL or BYE ends the ringing (None: nobody can, e.g. a transfer's target ringing).
    caller: Call | None
    #: What the log says when nobody answers in time.
    unanswered: str

    @property
    def call_id(self) -> str:
        """The call's name in the log."""

    @property
    def gone(self) -> bool:
        """The party being connected has left: stop."""

    def routed(self, kind: str, ident: str) -> None:
        """The route now rung: ``employee``/extension, ``group``/extension or ``external``/E.164."""

    async def offer(
        self, *, external: bool, srtp: SrtpPolicy = SrtpPolicy.OFF
    ) -> tuple[bytes, str | None] | Unreached:
        """What the new legs' INVITEs carry (body and type; an empty body: offerless) for legs of SRTP
        policy ``srtp``, or why there is nothing to offer (no RTP port …)."""

    def identity(self) -> NameAddr:
        """Who the new legs to employees say is calling (their From)."""

    def headers(self, *, to_trunk: bool) -> tuple[tuple[str, str], ...]:
        """Extra headers of the new legs' INVITEs."""

    def started(self, legs: list[OutgoingCall]) -> None:
        """These legs are ringing now (the flow keeps them, to end them with the call)."""

    def ringing(self, leg: OutgoingCall, response: Response) -> None:
        """A leg sent a provisional response."""

    def request_received(self, leg: Call, event: DialogRequestReceived) -> None:
        """A ringing leg sent an in-dialog request."""

    def caller_event(self, event: SessionEvent) -> None:
        """Another event of :attr:`caller` while legs ring."""


def fork_failure(statuses: tuple[int, ...] | list[int]) -> int:
    """What the caller hears when no device answered: a 6xx if one came, busy if any was busy, else
    temporarily unavailable."""
    if any(s >= 600 for s in statuses):
        return next(s for s in statuses if s >= 600)
    return 486 if 486 in statuses else 480


async def fork(
    queue: CallQueue,
    legs: list[OutgoingCall],
    seconds: float,
    *,
    ringing: Callable[[OutgoingCall, Response], None],
    request: Callable[[Call, DialogRequestReceived], None],
    caller: Call | None = None,
    caller_event: Callable[[SessionEvent], None] | None = None,
    call_id: str | None,
    unanswered: str = "no answer",
) -> tuple[OutgoingCall, Answered] | Failed | Ended:
    """Ring every leg (their events come on ``queue``) for ``seconds``; the first 2xx wins (returned, the
    others get CANCEL with :data:`~routing.calls.leg.COMPLETED_ELSEWHERE`, a 2xx crossing it BYE), else every
    leg is dropped and their final statuses returned (a 6xx ends the fork at once).

    A leg's 1xx goes to ``ringing``, an in-dialog request from it to ``request``. ``caller``: the leg the
    legs are rung for; its CANCEL or BYE ends the fork (every leg dropped, the CANCEL's Reason passed on),
    its other events go to ``caller_event``. Events of other legs are ignored. When nobody answers in time
    the log says ``unanswered`` for call ``call_id``."""
    pending: set[Call] = set(legs)
    statuses: list[int] = []
    winner: OutgoingCall | None = None
    answer: Answered | None = None
    try:
        async with asyncio.timeout(seconds):
            while pending and winner is None:
                leg, event = await queue.get()
                if caller is not None and leg is caller:
                    if isinstance(event, Cancelled | Terminated):
                        reason: tuple[tuple[str, str], ...] = ()
                        if isinstance(event, Cancelled) and isinstance(event.message, Request):
                            reason = tuple(("Reason", v) for v in event.message.get_all("reason"))
                        drop(legs, reason)
                        return ENDED
                    if caller_event is not None:
                        caller_event(event)
                    continue
                if leg not in pending:
                    continue
                assert isinstance(leg, OutgoingCall)
                if isinstance(event, ProvisionalReceived):
                    ringing(leg, event.response)
                elif isinstance(event, Answered):
                    winner, answer = leg, event
                elif isinstance(event, DialogRequestReceived):
                    request(leg, event)
                elif isinstance(event, Rejected):
                    pending.discard(leg)
                    statuses.append(event.status)
                    if event.status >= 600:
                        break
                elif isinstance(event, Terminated):
                    pending.discard(leg)
    except TimeoutError:
        log.info("call %s: %s within %s s", call_id, unanswered, seconds)
    if winner is None or answer is None:
        drop(legs, ())
        return Failed(tuple(statuses))
    drop([leg for leg in legs if leg is not winner], (COMPLETED_ELSEWHERE,))
    return winner, answer


async def _fork(
    ringer: Ringer, legs: list[OutgoingCall], seconds: float
) -> tuple[OutgoingCall, Answered] | Failed | Ended:
    return await fork(
        ringer.queue,
        legs,
        seconds,
        ringing=ringer.ringing,
        request=ringer.request_received,
        caller=ringer.caller,
        caller_event=ringer.caller_event if ringer.caller is not None else None,
        call_id=ringer.call_id,
        unanswered=ringer.unanswered,
    )


async def ring_employees(
    services: CallServices, ringer: Ringer, employees: list[Employee], seconds: float
) -> Won | Failed | Ended:
    """Ring every registered device of ``employees`` for ``seconds``: the first to answer wins. Each device
    is offered SRTP as its employee's policy says over its flow (``leg_srtp``); one that must use SRTP but
    is not registered over TLS is not rung."""
    targets = []
    for employee in employees:
        for target in await services.devices(employee):
            srtp = leg_srtp(employee.srtp, target.flow)
            if srtp is None:
                log.info(
                    "call %s: %s at %s not rung: SRTP required, not over TLS",
                    ringer.call_id,
                    target.uri,
                    target.flow,
                )
                continue
            targets.append((employee, target, srtp))
    if ringer.gone:
        return ENDED
    if not targets:
        return Failed((), rang=False)
    offers: dict[SrtpPolicy, tuple[bytes, str | None]] = {}
    for srtp in dict.fromkeys(srtp for _, _, srtp in targets):
        offer = await ringer.offer(external=False, srtp=srtp)
        if isinstance(offer, Unreached):
            return Failed((offer.status,))
        offers[srtp] = offer
    identity = ringer.identity()
    headers = ringer.headers(to_trunk=False)
    legs: list[OutgoingCall] = []
    device: dict[OutgoingCall, tuple[Employee, str, SrtpPolicy]] = {}
    for employee, target, srtp in targets:
        body, content_type = offers[srtp]
        leg = services.ua.invite(
            target.uri,
            target.flow,
            route=target.route,
            from_=identity,
            to=NameAddr(employee.name, parse_uri(services.registrar_aor(employee))),
            body=body,
            content_type=content_type,
            headers=headers,
            queue=ringer.queue,
        )
        legs.append(leg)
        device[leg] = (employee, str(target.uri), srtp)
    ringer.started(legs)
    won = await _fork(ringer, legs, seconds)
    if not isinstance(won, tuple):
        return won
    leg, answer = won
    employee, contact, srtp = device[leg]
    label = f"{employee.extension} ({employee.name})"
    return Won(leg, answer, employee.extension, employee.sip_user, contact, label=label, srtp=srtp)


async def _ring_group(services: CallServices, ringer: Ringer, group: Group) -> Won | Ended | None:
    """Ring ``group``'s plan step by step: the winner, the caller's departure, or None (nobody answered)."""
    for employees, seconds in await services.group_steps(group):
        outcome = await ring_employees(services, ringer, employees, seconds)
        if isinstance(outcome, Won | Ended):
            return outcome
        if ringer.gone:
            return ENDED
    return None


async def ring_external(services: CallServices, ringer: Ringer, route: ToExternal) -> RingOutcome:
    """Call ``route``'s number through its trunk (answering the provider's challenge with the trunk's
    credentials), for the services' ``dial_out_seconds``."""
    trunk = services.directory.trunk(route.trunk)
    if trunk is None:
        return Unreached(503, f"Service Unavailable (no trunk {route.trunk})")
    try:
        flow = await trunk_flow(services.ua, trunk)
    except OSError as exc:
        log.error("call %s: trunk %s unreachable: %s", ringer.call_id, trunk.name, exc)
        return Unreached(503, "Service Unavailable (trunk unreachable)")
    srtp = leg_srtp(trunk.srtp, flow)
    if srtp is None:
        return Unreached(503, f"Service Unavailable (trunk {trunk.name} requires SRTP but is not TLS)")
    offer = await ringer.offer(external=True, srtp=srtp)
    if isinstance(offer, Unreached):
        return offer
    if ringer.gone:
        return ENDED
    body, content_type = offer
    uri = trunk_uri(trunk, route.e164)
    leg = services.ua.invite(
        uri,
        flow,
        from_=trunk_identity(trunk, services.directory),
        to=NameAddr(None, attrs.evolve(uri, port=None)),
        body=body,
        content_type=content_type,
        headers=ringer.headers(to_trunk=True),
        credentials=trunk_credentials(trunk),
        queue=ringer.queue,
    )
    ringer.started([leg])
    won = await _fork(ringer, [leg], services.dial_out_seconds)
    if isinstance(won, Failed):
        return Unreached(external_failure(won.statuses))
    if isinstance(won, Ended):
        return won
    leg, answer = won
    post_dial = format_post_dial(route.post_dial)
    contact = answer.response.get("contact")
    return Won(leg, answer, None, route.e164, contact, post_dial, label=route.e164, srtp=srtp)


async def ring_route(services: CallServices, ringer: Ringer, route: Route) -> RingOutcome:
    """Ring ``route`` and its fallbacks (see the module docstring)."""
    seen_groups: set[str] = set()
    for _ in range(MAX_HOPS):
        if ringer.gone:
            return ENDED
        if isinstance(route, ToEmployee):
            employee = route.employee
            ringer.routed("employee", employee.extension)
            outcome = await ring_employees(services, ringer, [employee], services.ring_time(employee))
            if not isinstance(outcome, Failed):
                return outcome
            status = fork_failure(outcome.statuses) if outcome.statuses else 480
            if status != 480 or employee.fallback is None:
                return Unreached(status, rang=outcome.rang)  # busy (486) or declined (6xx): no fallback
            route = services.resolver.resolve_destination(employee.fallback)
            log.info(
                "call %s: %s did not answer, fallback: %s",
                ringer.call_id,
                employee.extension,
                describe_route(route),
            )
            continue
        if isinstance(route, ToGroup):
            group = route.group
            if group.extension in seen_groups:
                break
            seen_groups.add(group.extension)
            ringer.routed("group", group.extension)
            answered = await _ring_group(services, ringer, group)
            if answered is not None:
                return answered
            route = services.resolver.resolve_destination(group.fallback)
            log.info(
                "call %s: group %s did not answer, fallback: %s",
                ringer.call_id,
                group.extension,
                describe_route(route),
            )
            continue
        if isinstance(route, ToExternal):
            ringer.routed(route.kind, route.e164)
            return await ring_external(services, ringer, route)
        if isinstance(route, Refused):
            return Unreached(route.status, route.reason)
        return Unreached(480, f"Temporarily Unavailable ({type(route).__name__} not routed here)")
    log.warning("call %s: routing loops (groups falling back to each other)", ringer.call_id)
    return Unreached(482, "Loop Detected")
