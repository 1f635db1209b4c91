"""The B2BUA: an INVITE in, the caller identified, the route resolved and rung, the winner bridged.

:class:`B2bua` plugs into the server's request handler (``await b2bua.handle(incoming)`` for an INVITE
without To tag). One coroutine runs per call, owned by the endpoint (cancelled on close); it reads both legs'
events from one queue, so a call flow reads like the call:

1. **Who calls** (:mod:`routing.calls.caller`): an employee by digest credentials, a trunk by its source
   address for its own numbers, else an anonymous source, which is challenged (statelessly) before anything
   about the call is said.
2. **Where to**: the dial string and the caller go to the resolver (:mod:`routing.resolver`).
3. **Extension processing** (a trunk's number with a greeting, :mod:`routing.calls.greeting`): answered,
   the greeting plays, an extension dialled while it plays decides the route.
4. **Ringing** (:mod:`routing.calls.deliver` and :mod:`routing.calls.ringing`): an employee's devices, a
   ring group's plan, a number through the trunk, each with its fallbacks; media anchored where configured.
5. **Bridged** (:mod:`routing.calls.bridge`): in-dialog requests relayed or answered on anchored legs;
   REFER transfers the other party (:mod:`routing.transfer`).

When a call ends, one :class:`~routing.cdr.CallRecord` goes to the ``cdr`` store (if there is one).
Click-to-call is :meth:`B2bua.originate` (:mod:`routing.calls.originate`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar, overload

from durchwahl.media.greeting import GreetingCache
from durchwahl.media.sdes import SrtpPolicy
from durchwahl.media.session import MediaClock, PortAllocator
from durchwahl.sipcore.dialog import DialogId
from durchwahl.sipcore.endpoint import IncomingRequest
from durchwahl.sipcore.session_timer import TimerPolicy, negotiate_uas
from durchwahl.sipcore.ua import Call, CallFailed, CallQueue, UserAgent

from .calls.bridge import HookFactory
from .calls.caller import caller_label, caller_srtp, identify_caller, refuse
from .calls.deliver import deliver
from .calls.describe import describe_caller, describe_route
from .calls.greeting import extension_processing
from .calls.leg import CallState, Ringing, discard_events, fail_call, tear_down
from .calls.originate import StatusListener, originate, refuse_click_to_call
from .calls.records import CallDraft
from .calls.ringing import Unreached
from .calls.services import RING_STATE_FILE, BridgeHook, CallServices
from .calls.summary import ActiveCall, CallPhase, summarize
from .calls.watch import WatchPolicy
from .cdr import CallRecord, CdrStore
from .dialstring import DialString, DialStringError, format_dialstring, from_request_uri
from .directory import DEFAULT_RING_SECONDS, Directory, Employee, Group
from .events import CallFact, CallStarted
from .registrar_service import RegistrarService
from .resolver import Anonymous, Caller, FromTrunk, Refused, Resolver, Route, ToExtensionProcessing
from .ringgroup import RingGroupState
from .transfer import ALLOW, Transfers

__all__ = ["RING_STATE_FILE", "ActiveCall", "B2bua", "CallPhase"]

log = logging.getLogger(__name__)


T = TypeVar("T")


def _unreached_words(unreached: Unreached) -> str:
    if not unreached.rang:
        return "nobody registered"
    if unreached.status in (486, 600):
        return "busy"
    if unreached.status >= 600:
        return "declined"
    return "no answer" if unreached.status in (408, 480) else "not reached"


class _Service(Generic[T]):
    """An attribute of :class:`B2bua` that is its :class:`CallServices`' (read and written through)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Service[T]: ...
    @overload
    def __get__(self, obj: B2bua, owner: type) -> T: ...
    def __get__(self, obj: B2bua | None, owner: type) -> _Service[T] | T:
        if obj is None:
            return self
        value: T = getattr(obj.services, self.name)
        return value

    def __set__(self, obj: B2bua, value: T) -> None:
        setattr(obj.services, self.name, value)


class B2bua:
    """The call flows over ``ua`` (see the module docstring). ``clock`` is wall-clock time.

    Anchored calls take RTP ports from ``ports`` (default: the directory's ``rtp_ports`` on its first
    listen address), play on ``media_clock`` and read greetings through ``greetings``. ``ring_state`` is the
    ``evenly`` groups' state: by default read at start from :attr:`ring_state_path` and written there
    whenever a call to such a group changes it. Calls out ring the client for at most ``dial_out_seconds``.
    ``cdr`` gets one record per call (refusals other than challenges included). ``anchor_media``: also
    anchor calls to employees and groups, as the server does by default (``[server] anchor_media``).
    """

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
        ports: PortAllocator | None = None,
        media_clock: MediaClock | None = None,
        greetings: GreetingCache | None = None,
        ring_state: RingGroupState | None = None,
        dial_out_seconds: float = 120.0,
        cdr: CdrStore | None = None,
        anchor_media: bool = False,
        services: CallServices | None = None,
    ) -> None:
        self.services = services or CallServices(
            ua,
            registrar,
            directory,
            resolver,
            ring_seconds=ring_seconds,
            resolve_timeout=resolve_timeout,
            clock=clock,
            ports=ports,
            media_clock=media_clock,
            greetings=greetings,
            ring_state=ring_state,
            dial_out_seconds=dial_out_seconds,
            cdr=cdr,
            anchor_media=anchor_media,
        )
        ua.allow = ALLOW  # REFER: call transfer
        #: Makes the hook of each bridged call: REFER transfers its other party.
        self.transfers: HookFactory = self._transfers

    def _transfers(self, call: CallState, a: Call, b: Call) -> BridgeHook:
        return Transfers(self.services, call, a, b)

    # ---------------------------------------------------------------------------------- entry points

    async def handle(self, incoming: IncomingRequest) -> None:
        """Route one INVITE (without To tag) and run the call until both legs have ended."""
        request = incoming.request
        if request.method != "INVITE" or request.to.tag is not None:
            incoming.respond(405 if request.method != "INVITE" else 481)
            return
        services = self.services
        dialled: DialString | None = None
        try:
            dialled = from_request_uri(request.uri)
        except DialStringError as exc:
            unparsable: DialStringError | None = exc
        else:
            unparsable = None
        caller = self.identify(incoming, dialled)
        if caller is None:
            return  # challenged with stale=true
        if isinstance(caller, Anonymous):  # challenged (or refused) before anything about the call is said
            log.debug("call %s from %s: challenged for credentials", request.call_id, caller.source)
            refuse(services, incoming, services.resolver.refuse_anonymous(caller), caller)
            return
        if dialled is None:
            incoming.respond(484, f"Address Incomplete ({unparsable})")
            return
        timer = negotiate_uas(request, services.timers) if services.timers is not None else None
        if isinstance(timer, int):  # 422: its session interval is below our Min-SE (RFC 4028 §9)
            assert services.timers is not None
            incoming.respond(timer, headers=[("Min-SE", str(services.timers.min_se))])
            return
        try:
            async with asyncio.timeout(services.resolve_timeout):
                route = await services.resolver.resolve(dialled, caller)
        except TimeoutError:
            incoming.respond(503, "Service Unavailable (routing timed out)")
            return
        if incoming.final is not None:
            return  # cancelled while resolving: the endpoint answered 487
        srtp = caller_srtp(services, caller, incoming)
        if srtp is None:
            route = Refused(403, "Forbidden (SRTP is required for this caller: call over TLS)")
        log.info(
            "call %s from %s to %s: %s",
            request.call_id,
            describe_caller(caller),
            dialled,
            describe_route(route),
        )
        label, trunk = caller_label(request, caller)
        draft = CallDraft(caller=label, source_trunk=trunk, dialled=format_dialstring(dialled))
        if isinstance(caller, FromTrunk) and caller.calling:
            contact = services.resolver.calling_contact(caller.calling, caller.name)
            draft.caller_name = contact.name if contact is not None else None
        draft.started_at = services.clock()
        if isinstance(route, Refused):
            refuse(services, incoming, route, caller)
            if route.status not in (401, 407):
                draft.status = route.status
                services.write_cdr(draft.finish(request.call_id, services.clock()))
            return
        queue: CallQueue = asyncio.Queue()
        try:
            a = services.ua.accept(incoming, queue=queue)
        except CallFailed:
            return
        call = CallState(
            a,
            queue,
            caller.name if isinstance(caller, FromTrunk) else None,
            record=draft,
            srtp=srtp or SrtpPolicy.OFF,
        )
        call.session_timer = timer
        services.emit(
            CallStarted(request.call_id, draft.caller, draft.dialled, draft.source_trunk, draft.caller_name)
        )
        services.active[a] = call
        try:
            await self._run(call, route)
        finally:
            del services.active[a]
            tear_down(a, [*call.legs, *call.adopted], keep=call.given)
            discard_events(call.queue, [a, *call.legs, *call.adopted], keep=call.given)
            if call.media is not None:
                call.media.close()
            services.write_cdr(call.record.finish(call.call_id, services.clock()))

    def identify(self, incoming: IncomingRequest, dialled: DialString | None) -> Caller | None:
        """Who calls (:func:`routing.calls.caller.identify_caller`)."""
        return identify_caller(self.services, incoming, dialled)

    async def _run(self, call: CallState, route: Route) -> None:
        """The call's flow: the greeting first for a number that has one (the extension dialled in it, else
        or when that cannot be reached, the number's default destination), then the route rung and bridged."""
        if isinstance(route, ToExtensionProcessing):
            call.record.destination = ("number", route.number.number)
            collected = await extension_processing(self.services, call, route.number)
            if collected is None:
                return
            route = collected.default
            if collected.chosen is not None:
                unreached = await deliver(self.services, call, collected.chosen, hook=self.transfers)
                if unreached is None or call.a.terminated or collected.chosen == collected.default:
                    self._fail(call, unreached)
                    return
                log.info(
                    "call %s: %s (%s), so the number's default: %s",
                    call.call_id,
                    _unreached_words(unreached),
                    unreached.status,
                    describe_route(route),
                )
                call.early = None  # the first destination's early media is over
        self._fail(call, await deliver(self.services, call, route, hook=self.transfers))

    @staticmethod
    def _fail(call: CallState, unreached: Unreached | None) -> None:
        """Nobody answered (``unreached``; None: the call was answered or is over): the caller is told, and
        the CDR keeps whether anything rang at all."""
        if unreached is None:
            return
        call.record.rang = unreached.rang
        fail_call(call, unreached.status, unreached.reason)

    async def originate(
        self, extension: str, number: str, *, on_status: StatusListener | None = None
    ) -> CallRecord:
        """Click-to-call: ring the employee ``extension``, then call ``number`` for them
        (:func:`routing.calls.originate.originate`)."""
        return await originate(self.services, extension, number, hook=self.transfers, on_status=on_status)

    async def originate_contact(
        self, extension: str, contact: str, *, on_status: StatusListener | None = None
    ) -> CallRecord:
        """Click-to-call a CRM contact by name: its stored number, post-dial digits included (a number an
        employee dials by hand is sent as dialled). An unknown name is refused with 404."""
        found = self.services.directory.crm_contact(contact)
        if found is None:
            draft = CallDraft(caller=extension, dialled=contact, started_at=self.services.clock())
            return refuse_click_to_call(
                self.services, draft, 404, f"no CRM contact is named {contact!r}", on_status
            )
        return await self.originate(extension, str(found.number), on_status=on_status)

    def calls(self) -> tuple[ActiveCall, ...]:
        """The calls in progress, oldest first, as frozen summaries (``durchwahl status``)."""
        return tuple(summarize(first, call) for first, call in self.services.active.items())

    # ------------------------------------------------------------------ the services, as attributes

    directory: _Service[Directory] = _Service()
    resolver: _Service[Resolver] = _Service()
    anchor_media: _Service[bool] = _Service()
    #: When a bridged call is ended though nobody hangs up (routing.calls.watch).
    watch: _Service[WatchPolicy] = _Service()
    #: Session timers (RFC 4028) offered to callers that support them (None: never).
    timers: _Service[TimerPolicy | None] = _Service()
    #: Called with every call event (routing.events); the server turns them into pyee events.
    on_event: _Service[Callable[[CallFact], None] | None] = _Service()
    cdr: _Service[CdrStore | None] = _Service()
    ring_seconds: _Service[float] = _Service()
    resolve_timeout: _Service[float] = _Service()
    dial_out_seconds: _Service[float] = _Service()
    ua: _Service[UserAgent] = _Service()
    registrar: _Service[RegistrarService] = _Service()
    media_clock: _Service[MediaClock] = _Service()
    ring_state: _Service[RingGroupState] = _Service()
    #: Calls being set up or bridged, by the caller's leg.
    active: _Service[dict[Call, CallState | Ringing]] = _Service()
    #: The legs of bridged calls by dialog: where an attended transfer's Replaces finds its call.
    bridged: _Service[dict[DialogId, BridgeHook]] = _Service()
    #: Extensions of employees in a bridged call (ring groups skip them).
    busy: _Service[Counter[str]] = _Service()

    @property
    def ring_state_path(self) -> Path:
        return self.services.ring_state_path

    def ring_time(self, employee: Employee) -> float:
        return self.services.ring_time(employee)

    async def group_steps(self, group: Group) -> list[tuple[list[Employee], float]]:
        return await self.services.group_steps(group)

    def registrar_aor(self, employee: Employee) -> str:
        return self.services.registrar_aor(employee)
