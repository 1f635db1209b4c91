"""The B2BUA call flows: an INVITE in, legs out, the winner bridged (issue 5).

:class:`B2bua` plugs into the server's request handler (``await b2bua.handle(incoming)`` for an INVITE without
To tag). One coroutine runs per call, owned by the endpoint (cancelled on close); it reads both legs' events
from one queue, so a call flow reads like the call:

1. **Who calls**: digest credentials on the INVITE, checked like a REGISTER's (the registrar's digest server
   and the directory's secrets). An employee who authenticated is ``FromEmployee``; a source inside a trunk's
   ``inbound_from`` is ``FromTrunk``; anyone else is ``Anonymous`` and gets the resolver's 401/407 challenge
   (or 403).
2. **Where to**: the Request-URI's dial string and the caller go to the resolver.
3. **Ringing an employee** (``ToEmployee``; flow 1, and flow 2 for a trunk's number without extension
   processing): every registered device of the employee rings in parallel, each on the flow its REGISTER
   came on (NAT-safe). Each B-leg is a dialog of its own: new Call-ID, tags and CSeq; headers the B2BUA does
   not own (:data:`OWNED_HEADERS`) pass through unchanged and in order. The first 2xx wins and is bridged;
   the other devices get CANCEL with ``Reason: SIP;cause=200;text="Call completed elsewhere"``; a 2xx
   crossing that CANCEL is ACKed and ended with BYE (by the session). All busy → 486; a 6xx ends the fork
   with that 6xx; nobody registered, no answer within ``ring_seconds`` or other failures → 480. The
   caller's CANCEL goes to every B-leg (its ``Reason`` copied). Unless the call is anchored (below), the
   SDP is passed through: media flows between the phones.
4. **Ring groups** (``ToGroup``; flow 4): :func:`~routing.ringgroup.plan_ring_group` over the members that
   have a registered device and are not in a bridged call (:attr:`B2bua.busy`); each step rings its
   members' devices as above for the step's seconds; after the last step the group's fallback is routed
   (another group, an employee, "hangup" → 480; at most :data:`MAX_HOPS` routes, a group twice → 482). The
   ``evenly`` state is :attr:`B2bua.ring_state`.
5. **Extension processing** (``ToExtensionProcessing``; flow 3): the caller is answered with an SDP
   answer of our own (PCMU/PCMA and telephone-event, media anchored on an RTP port of
   ``directory.server.rtp_ports``), the number's greeting plays, and digits (RFC 4733, in-band and SIP
   INFO, merged) feed the :class:`~routing.collector.DigitCollector` while it plays; see
   :mod:`routing.greeting_flow`. A valid extension is rung, anything else goes to the number's default
   destination. While devices ring the caller hears the number's ``music`` or a generated ringback
   (425 Hz, 1 s on, 4 s off); the callee is offered
   a second anchored port and, once it answers, RTP is relayed between the two ports
   (:class:`~media.relay.MediaBridge`). On an anchored call a re-INVITE (or an UPDATE with SDP) is
   answered by the B2BUA on that leg (the relay learns the new direction; an offerless re-INVITE gets
   our offer and brings its answer in the ACK) and the other leg gets a
   re-INVITE of ours with the same direction (hold/resume told across, :class:`_HoldSync`).
6. **Bridged**: BYE on either side ends both legs; re-INVITEs (an offerless one too, its answer carried in
   the ACK), UPDATE and INFO are relayed to the other leg and their answers back (a request the other leg
   cannot take now gets 491 or 500); requests that arrived before the bridge are held and relayed then.
   With ``anchor_media`` (the server's default) calls to employees and groups are anchored too: the
   caller's offer is answered on a port of ours (sent when a device answers), every device is offered
   another port of ours, and re-INVITEs are handled as on any anchored call (5.).

7. **Calls out** (``ToExternal``; flow 5): the call leaves through the route's trunk — Request-URI
   ``sip:<e164>@<trunk host>:<port>``, From the office's identity on that trunk (:func:`trunk_identity`),
   one 401/407 answered with the trunk's username and password. Media is anchored: the caller's offer is
   answered on one of our ports (sent only once the client answers), the client is offered another, and
   the two are relayed by a :class:`~media.relay.MediaBridge`. Once the client has answered (its 2xx
   received and our ACK sent — never on early media) the post-dial digits go to the client's leg as
   RFC 4733 events if it negotiated telephone-event, else as in-band tones, ``,`` pausing one second.
   While the client rings the caller gets 180 — or, when the provider sends early media (a 183 with SDP:
   an announcement, the far network's ringback), a 183 with our SDP and that audio through the relay; a
   failure is mapped back (:func:`external_failure`). Not anchored, a sole ringing device's early media
   goes to the caller as it came.

When a call ends, one :class:`~routing.cdr.CallRecord` goes to the ``cdr`` store (if there is one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Final

import attrs

from media.dtmf_info import parse_info_body
from media.errors import MediaError, SdpError
from media.greeting import Greeting, GreetingCache, GreetingError
from media.relay import MediaBridge, Side
from media.sdp import parse_sdp
from media.session import MediaClock, PortAllocator, PortsExhausted
from sipcore.dialog import MAX_FORWARDS, DialogId
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
    TerminationReason,
)
from sipcore.transport import Flow
from sipcore.ua import Call, CallEvent, CallFailed, CallQueue, IncomingCall, OutgoingCall, UserAgent
from sipcore.uri import NameAddr, SipUri, TelUri, parse_uri

from . import transfer  # imports this module back: by module, not by name
from .authenticator import Unverified, Verified
from .cdr import CallRecord, CdrStore, disposition_for
from .collector import DigitCollector, ExtensionDialled, NoExtension
from .dialstring import (
    DialStringError,
    format_dialstring,
    format_post_dial,
    from_request_uri,
    parse_dialstring,
)
from .directory import DEFAULT_RING_SECONDS, Directory, Employee, ExtensionRef, Group, Number, Trunk
from .events import CallAnswered, CallFact, CallRinging, CallStarted, DigitPressed, DigitSent
from .greeting_flow import AnchoredMedia, ExtensionCollection, ringback
from .registrar_service import RegistrarService
from .resolver import (
    Anonymous,
    Caller,
    FromEmployee,
    FromTrunk,
    Refused,
    Resolver,
    Route,
    ToEmployee,
    ToExtensionProcessing,
    ToExternal,
    ToGroup,
)
from .ringgroup import RingGroupState, plan_ring_group
from .security import trunk_accepts

__all__ = [
    "COMPLETED_ELSEWHERE",
    "OWNED_HEADERS",
    "RING_STATE_FILE",
    "ActiveCall",
    "B2bua",
    "CallPhase",
    "external_failure",
    "fork",
    "forwarded",
    "passthrough",
    "trunk_identity",
    "trunk_uri",
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
    }
)

_EARLY: Final = frozenset({SessionState.CALLING, SessionState.PROCEEDING, SessionState.CANCEL_PENDING})

#: States in which a leg can send an in-dialog request (its INVITE is complete).
_ESTABLISHED: Final = frozenset(
    {
        SessionState.CONFIRMED,
        SessionState.REINVITING,
        SessionState.REINVITE_BACKOFF,
        SessionState.REINVITED,
        SessionState.REINVITE_ACK_WAIT,
    }
)
#: States in which a leg's INVITE still waits for its ACK: requests for it are held until it is confirmed.
_AWAITING_ACK: Final = frozenset({SessionState.WAITING_FOR_ACK, SessionState.ANSWERED})

#: The ``evenly`` ring-group state is kept in this file under the directory's ``state_dir``.
RING_STATE_FILE: Final = "ring_state.json"

#: In-dialog requests held per call before the bridge (or until a leg is confirmed); more get 500.
MAX_HELD: Final = 16
#: Post-dial digits: each tone or event lasts DIGIT_MS, DIGIT_GAP_MS of silence follow, ``,`` pauses PAUSE_MS.
DIGIT_MS: Final = 100
DIGIT_GAP_MS: Final = 100
PAUSE_MS: Final = 1000
#: How long a request is held at most: then it is answered 408, within the sender's 32 s (Timer F).
HELD_SECONDS = 30.0


def passthrough(message: Request | Response, *, also: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """The headers of ``message`` the B2BUA does not own, in order, exactly as they came."""
    owned = OWNED_HEADERS | {header_key(name) for name in also}
    return tuple((h.name, h.value) for h in message.headers if header_key(h.name) not in owned)


#: Identity headers a phone may send that are meaningful only inside the office (RFC 3325 §5: a trust
#: domain's boundary removes them); the trunk gets the office's identity in From instead.
PRIVATE_IDENTITY_HEADERS: Final = frozenset(
    {"p-asserted-identity", "p-preferred-identity", "remote-party-id"}
)


def forwarded(invite: Request, *, to_trunk: bool = False) -> tuple[tuple[str, str], ...]:
    """The headers a new leg's INVITE carries from the caller's: the pass-through ones (toward a trunk
    without the office's private identity headers) and Max-Forwards counted down, so a loop ends in 483."""
    headers = passthrough(invite, also=PRIVATE_IDENTITY_HEADERS if to_trunk else ())
    hops = invite.max_forwards
    return (*headers, ("Max-Forwards", str(MAX_FORWARDS if hops is None else max(hops - 1, 0))))


def _content_type(message: Request | Response) -> str | None:
    return message.get("content-type") if message.body else None


def _offered_direction(body: bytes) -> str | None:
    """The direction (RFC 3264 §6.1) an SDP offer declares for its first active audio stream."""
    try:
        description = parse_sdp(body)
    except SdpError:
        return None
    for media in description.media:
        if media.media == "audio" and media.port != 0:
            return media.direction(description.direction())
    return None


def _fork_failure(statuses: list[int]) -> int:
    """What the caller hears when no device answered: busy if any was busy, else temporarily unavailable."""
    if any(s >= 600 for s in statuses):
        return next(s for s in statuses if s >= 600)
    return 486 if 486 in statuses else 480


def external_failure(statuses: Iterable[int]) -> int:
    """What the caller hears when the client's leg failed with ``statuses`` (none: no answer in time).

    The provider's status is passed on, except a challenge the trunk's credentials did not satisfy (503:
    the caller's phone must not try its own credentials) and a redirection (not followed: 480)."""
    status = next(iter(statuses), None)
    if status is None:
        return 480
    if status in (401, 407):
        return 503
    if status < 400:
        return 480
    return status


def _describe_caller(caller: Caller) -> str:
    """Who calls, for a log line: an extension, a trunk (and the number it gave), or the source address."""
    if isinstance(caller, FromEmployee):
        return caller.extension
    if isinstance(caller, FromTrunk):
        return f"{caller.calling or 'an unknown number'} via trunk {caller.name}"
    return caller.source


def _describe_route(route: Route) -> str:
    """Where a call goes, for a log line (``ringing employee 101 (Anna Schmidt)`` …)."""
    if isinstance(route, ToEmployee):
        return f"ringing employee {route.employee.extension} ({route.employee.name})"
    if isinstance(route, ToGroup):
        return f"ringing group {route.group.extension} ({route.group.name}, {route.group.strategy.value})"
    if isinstance(route, ToExternal):
        post_dial = f", then digits {format_post_dial(route.post_dial)}" if route.post_dial else ""
        return f"calling {route.e164} via trunk {route.trunk}{post_dial}"
    if isinstance(route, ToExtensionProcessing):
        return f"answering with the greeting of {route.number.number}"
    return f"refused with {route.status} {route.reason}"


def _describe_collected(result: ExtensionDialled | NoExtension) -> str:
    """What a caller keyed in during the greeting, for a log line."""
    if isinstance(result, ExtensionDialled):
        return f"extension {result.extension} dialled"
    digits = f" (digits {result.digits})" if result.digits else ""
    return f"no extension dialled: {result.reason.value.replace('_', ' ')}{digits}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def trunk_uri(trunk: Trunk, e164: str) -> SipUri:
    """The Request-URI of a call to ``e164`` through ``trunk``: ``sip:<e164>@<host>:<port>``."""
    return SipUri("sip", e164, None, _host(trunk.host), trunk.port)


def trunk_identity(trunk: Trunk, directory: Directory) -> NameAddr:
    """The office's identity on ``trunk`` (the From of calls out): the trunk account's AOR (the one it
    registers), else the first of the office's numbers on that trunk at the trunk's host, else the
    office's domain."""
    if trunk.username is not None:
        return NameAddr(None, SipUri("sip", trunk.username, None, _host(trunk.host)))
    number = next((n.number for n in directory.numbers if n.trunk == trunk.name), None)
    if number is not None:
        return NameAddr(None, SipUri("sip", number, None, _host(trunk.host)))
    return NameAddr(None, SipUri("sip", "durchwahl", None, directory.server.domain))


async def _trunk_flow(ua: UserAgent, trunk: Trunk) -> Flow:
    """A flow to the trunk's host (resolved if it is a name)."""
    try:
        address = str(ipaddress.ip_address(trunk.host.strip("[]")))
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(trunk.host, trunk.port, type=socket.SOCK_DGRAM)
        address = str(infos[0][4][0])
    return ua.endpoint.flow_to(address, trunk.port, trunk.transport)


def _caller_label(request: Request, caller: Caller) -> tuple[str, str | None]:
    """Who calls, for the CDR: an employee's extension, else the From URI; and the trunk it came from."""
    if isinstance(caller, FromEmployee):
        return caller.extension, None
    return str(request.from_.uri), caller.name if isinstance(caller, FromTrunk) else None


@attrs.define(eq=False)
class _Call:
    """One call's mutable state, as the call coroutine goes from route to route.

    ``a`` is the caller's leg: the INVITE that came in or, for a click-to-call (:meth:`B2bua.originate`),
    the employee's device that answered our INVITE.
    """

    a: Call
    queue: CallQueue
    trunk: str | None
    #: Every B-leg started for this call (all steps of a ring group).
    legs: list[OutgoingCall] = attrs.Factory(list)
    #: In-dialog requests that came before a bridge: relayed once there is one.
    held: list[CallEvent] = attrs.Factory(list)
    #: Set when the call is anchored (extension processing): the A-leg is answered by us.
    media: AnchoredMedia | None = None
    #: Flow 5: our answer to the caller's offer (or our offer, for an offerless INVITE), sent when the
    #: client answers.
    caller_sdp: bytes | None = None
    ringing: bool = False
    #: Played to the caller of an anchored call while its destination rings (the number's music), else the
    #: generated ringback.
    music: Greeting | None = None
    #: Anchored legs whose offerless re-INVITE we answered with an offer: their ACK brings the answer.
    offered_in_2xx: set[Side] = attrs.Factory(set)
    #: The B-leg whose early media (a 1xx with SDP) the caller gets, if any.
    early: OutgoingCall | None = None
    # What the CDR says about the call (see routing.cdr.CallRecord).
    caller: str = ""
    source_trunk: str | None = None
    dialled: str = ""
    started_at: float = 0.0
    destination: tuple[str, str] | None = None
    answered_at: float | None = None
    answered_by: str | None = None
    answered_contact: str | None = None
    digits: str = ""
    status: int | None = None
    transferred_by: str | None = None
    #: Employees this call counts in :attr:`B2bua.busy` (the callee, or who clicked to call; a transfer
    #: target).
    busy: list[str] = attrs.Factory(list)
    #: Attended transfer: legs another call handed over to this one (ended with it), and legs this call
    #: handed over to another (left alone when it ends).
    adopted: list[Call] = attrs.Factory(list)
    given: set[Call] = attrs.Factory(set)


@attrs.define(eq=False)
class _Ringing:
    """A click-to-call while the employee's devices ring: there is no caller's leg yet (what
    :meth:`B2bua._fork` needs of a :class:`_Call` otherwise). ``caller``, ``dialled``, ``started_at``: as in
    the CDR, for :meth:`B2bua.calls`."""

    queue: CallQueue
    media: AnchoredMedia
    held: list[CallEvent] = attrs.Factory(list)
    a: None = None
    caller: str = ""
    dialled: str = ""
    started_at: float = 0.0


class CallPhase(enum.Enum):
    """Where a call in progress is (:class:`ActiveCall`)."""

    SETTING_UP = "setting up"  #: routed, nothing rings yet (media being set up, a trunk's challenge …)
    GREETING = "greeting"  #: answered by us: the number's greeting plays, digits are collected
    RINGING = "ringing"  #: the destination's devices (or the called number) ring
    CONNECTED = "connected"  #: answered: the parties talk


@attrs.frozen
class ActiveCall:
    """A call in progress, as :meth:`B2bua.calls` reports it (``durchwahl status``). The fields mean what
    they mean in a :class:`~routing.cdr.CallRecord`; times are wall-clock seconds."""

    call_id: str
    caller: str
    dialled: str
    phase: CallPhase
    started_at: float
    source_trunk: str | None = None
    destination_kind: str | None = None
    destination_id: str | None = None
    answered_by: str | None = None
    answered_at: float | None = None


def _summary(first: Call, call: _Call | _Ringing) -> ActiveCall:
    """``call`` (``first``: its caller's leg, or a click-to-call's first leg) as an :class:`ActiveCall`."""
    if isinstance(call, _Ringing):  # a click-to-call: the employee's devices ring first
        return ActiveCall(
            call_id=first.call_id or "",
            caller=call.caller,
            dialled=call.dialled,
            phase=CallPhase.RINGING,
            started_at=call.started_at,
            destination_kind="employee",
            destination_id=call.caller,
        )
    kind, ident = call.destination if call.destination is not None else (None, None)
    if call.answered_at is not None:
        phase = CallPhase.CONNECTED
    elif kind == "number":
        phase = CallPhase.GREETING
    elif call.legs:
        phase = CallPhase.RINGING
    else:
        phase = CallPhase.SETTING_UP
    return ActiveCall(
        call_id=B2bua._call_id(call),
        caller=call.caller,
        dialled=call.dialled,
        phase=phase,
        started_at=call.started_at,
        source_trunk=call.source_trunk,
        destination_kind=kind,
        destination_id=ident,
        answered_by=call.answered_by,
        answered_at=call.answered_at,
    )


@attrs.frozen
class _Failed:
    """No device of a ring step answered: the final statuses they sent (none: no answer at all)."""

    statuses: tuple[int, ...]


@attrs.frozen
class _Ended:
    """The call is over: it was answered and has ended, or the caller left."""


_ENDED: Final = _Ended()
_RingOutcome = _Failed | _Ended

#: How many routes one call may go through (a group's fallback to another group …) before it is refused.
MAX_HOPS: Final = 8


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
) -> tuple[OutgoingCall, Answered] | _RingOutcome:
    """Ring every leg (their events come on ``queue``) for ``seconds``; the first 2xx wins (returned, the
    others get CANCEL with :data:`COMPLETED_ELSEWHERE`, a 2xx crossing it BYE), else every leg is dropped
    and their final statuses returned (a 6xx ends the fork at once).

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
                        _drop(legs, reason)
                        return _ENDED
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
        _drop(legs, ())
        return _Failed(tuple(statuses))
    _drop([leg for leg in legs if leg is not winner], (COMPLETED_ELSEWHERE,))
    return winner, answer


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


class B2bua:
    """The call flows over ``ua`` (see the module docstring). ``clock`` is wall-clock time (digest nonces).

    Anchored calls (extension processing) take RTP ports from ``ports`` (default: the directory's
    ``rtp_ports`` on its first listen address), play on ``media_clock`` and read greetings through
    ``greetings``. ``ring_state`` is the ``evenly`` groups' state: by default it is read at start from
    :attr:`ring_state_path` (``state_dir/ring_state.json``) and written there, as JSON, whenever a call to
    such a group changes it, so the rotation survives a restart. Calls out ring the client for at most
    ``dial_out_seconds``. ``cdr`` gets one record per call (refusals other than challenges included).
    ``anchor_media``: also anchor calls to employees and groups (flows 1, 2, 4), as :class:`~routing.server.
    Server` does by default (``[server] anchor_media``); off, their SDP passes through between the phones.
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
    ) -> None:
        self.ua = ua
        self.anchor_media = anchor_media
        self.registrar = registrar
        self.directory = directory
        self.resolver = resolver
        self.ring_seconds = ring_seconds
        self.resolve_timeout = resolve_timeout
        self._clock = clock
        self._ports = ports
        self.media_clock = media_clock if media_clock is not None else MediaClock()
        self.greetings = greetings if greetings is not None else GreetingCache()
        self.ring_state = ring_state if ring_state is not None else self._load_ring_state()
        self.dial_out_seconds = dial_out_seconds
        self.cdr = cdr
        ua.allow = transfer.ALLOW  # REFER: call transfer
        #: Calls being set up or bridged: (A-leg, B-legs).
        #: Called with every call event (routing.events); the server turns them into pyee events.
        self.on_event: Callable[[CallFact], None] | None = None
        self.active: dict[Call, list[OutgoingCall]] = {}
        #: The same calls' state, for :meth:`calls`.
        self._calls: dict[Call, _Call | _Ringing] = {}
        #: The legs of bridged calls by dialog (Call-ID, our tag, the peer's tag) -> their call's transfers:
        #: where an attended transfer's Replaces finds the call it names.
        self.bridged: dict[DialogId, transfer.Transfers] = {}
        #: Extensions of employees in a bridged call (ring groups skip them).
        self.busy: collections.Counter[str] = collections.Counter()

    def calls(self) -> tuple[ActiveCall, ...]:
        """The calls in progress, oldest first, as frozen summaries (``durchwahl status``)."""
        return tuple(_summary(first, call) for first, call in self._calls.items())

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
        if isinstance(caller, Anonymous):  # challenged (or refused) before anything about the call is said
            self._refuse(incoming, self.resolver.refuse_anonymous(caller), caller)
            return
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
        challenge = (
            isinstance(route, Refused) and route.status in (401, 407) and isinstance(caller, Anonymous)
        )
        log.log(
            logging.DEBUG if challenge else logging.INFO,  # every phone's first INVITE is challenged
            "call %s from %s to %s: %s",
            request.call_id,
            _describe_caller(caller),
            dialled,
            "challenged for credentials" if challenge else _describe_route(route),
        )
        started_at = self._clock()
        if isinstance(route, Refused):
            self._refuse(incoming, route, caller)
            if route.status not in (401, 407):
                self._write_cdr(
                    self._refused_record(request, caller, format_dialstring(dialled), route, started_at)
                )
            return
        queue: CallQueue = asyncio.Queue()
        try:
            a = self.ua.accept(incoming, queue=queue)
        except CallFailed:
            return
        call = _Call(a, queue, caller.name if isinstance(caller, FromTrunk) else None)
        call.caller, call.source_trunk = _caller_label(request, caller)
        call.dialled, call.started_at = format_dialstring(dialled), started_at
        self._emit(CallStarted(request.call_id, call.caller, call.dialled, call.source_trunk))
        self.active[a] = call.legs
        self._calls[a] = call
        try:
            next_route: Route | None = route
            if isinstance(route, ToExtensionProcessing):
                call.destination = ("number", route.number.number)
                next_route = await self._extension_processing(call, route.number)
            if next_route is not None:
                await self._deliver(call, next_route)
        finally:
            del self.active[a]
            del self._calls[a]
            self._tear_down(a, [*call.legs, *call.adopted], keep=call.given)
            _discard_events(call.queue, [a, *call.legs, *call.adopted], keep=call.given)
            if call.media is not None:
                call.media.close()
            self._write_cdr(self._record(call))

    # ------------------------------------------------------------------------------- ring-group state

    @property
    def ring_state_path(self) -> Path:
        """Where the ``evenly`` state is kept: ``ring_state.json`` in the directory's ``state_dir``."""
        return self.directory.server.state_dir / RING_STATE_FILE

    def _load_ring_state(self) -> RingGroupState:
        path = self.ring_state_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return RingGroupState()
        except (OSError, ValueError) as exc:
            log.warning("ring-group state %s not read (starting afresh): %s", path, exc)
            return RingGroupState()
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            log.warning("ring-group state %s is not a {group: member} object (starting afresh)", path)
            return RingGroupState()
        return RingGroupState.from_mapping(data)

    def _save_ring_state(self) -> None:
        """Write :attr:`ring_state` atomically (a temporary file renamed over the old one)."""
        path = self.ring_state_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(json.dumps(self.ring_state.to_mapping(), sort_keys=True), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            log.error("ring-group state not saved to %s: %s", path, exc)

    # ------------------------------------------------------------------------------------------ CDRs

    def _emit(self, event: CallFact) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("call event handler failed on %s", event)

    @staticmethod
    def _call_id(call: _Call) -> str:
        return call.a.request.call_id if isinstance(call.a, IncomingCall) else call.a.call_id or ""

    def _write_cdr(self, record: CallRecord) -> None:
        if self.cdr is None:
            return
        try:
            self.cdr.write(record)
        except Exception:
            log.exception("call %s: CDR not written", record.call_id)

    def _record(self, call: _Call) -> CallRecord:
        answered = call.answered_at is not None
        return CallRecord(
            call_id=call.a.request.call_id if isinstance(call.a, IncomingCall) else call.a.call_id or "",
            caller=call.caller,
            source_trunk=call.source_trunk,
            dialled=call.dialled,
            destination_kind=call.destination[0] if call.destination else None,
            destination_id=call.destination[1] if call.destination else None,
            answered_by=call.answered_by,
            answered_contact=call.answered_contact,
            digits=call.digits,
            started_at=call.started_at,
            answered_at=call.answered_at,
            ended_at=self._clock(),
            disposition=disposition_for(answered=answered, status=call.status),
            status=None if answered else call.status,
            transferred_by=call.transferred_by,
        )

    def _refused_record(
        self, request: Request, caller: Caller, dialled: str, route: Refused, started_at: float
    ) -> CallRecord:
        label, trunk = _caller_label(request, caller)
        return CallRecord(
            call_id=request.call_id,
            caller=label,
            source_trunk=trunk,
            dialled=dialled,
            started_at=started_at,
            ended_at=self._clock(),
            disposition=disposition_for(answered=False, status=route.status),
            status=route.status,
        )

    def _who_calls(self, incoming: IncomingRequest) -> Caller | None:
        """An employee (by digest credentials), a trunk (by source address, for its own numbers) or an
        anonymous source; None when the request was answered here (``stale=true``)."""
        request = incoming.request
        authenticator = self.registrar.authenticator
        verdict = authenticator.verify(request, incoming.flow)
        if isinstance(verdict, Verified):
            employee = self.directory.employee_by_sip_user(verdict.username)
            if employee is not None:
                return FromEmployee(employee.extension)
        source = incoming.flow.remote[0]
        for trunk in self.directory.trunks:
            # A trunk's source address identifies the trunk only for calls to its numbers: anything else
            # from that address (a phone on the same host or network) must authenticate like any caller.
            if trunk_accepts(trunk, source) and self._calls_trunk_number(request, trunk.name):
                calling = request.from_.uri.user if isinstance(request.from_.uri, SipUri) else None
                if isinstance(request.from_.uri, TelUri):
                    calling = request.from_.uri.number
                return FromTrunk(trunk.name, calling)
        if isinstance(verdict, Unverified) and verdict.stale:
            self._challenge(incoming, stale=True)
            return None
        return Anonymous(str(incoming.flow), challenge=True)

    def _challenge(self, incoming: IncomingRequest, *, stale: bool = False, proxy: bool = False) -> None:
        """Challenge an INVITE statelessly: a stateful 401 would be retransmitted ten times towards a
        source that may be spoofed (it need not know a nonce to send wrong credentials)."""
        authenticator = self.registrar.authenticator
        request = incoming.request
        tag = authenticator.stateless_tag(request)
        incoming.send_stateless(
            authenticator.challenge(request, incoming.flow, to_tag=tag, stale=stale, proxy=proxy)
        )

    def _calls_trunk_number(self, request: Request, trunk: str) -> bool:
        """Whether the Request-URI names one of ``trunk``'s numbers, in any form the resolver accepts."""
        try:
            number = self.resolver.inbound_number(from_request_uri(request.uri), trunk)
        except DialStringError:
            return False
        return number is not None and number.trunk == trunk

    def _refuse(self, incoming: IncomingRequest, route: Refused, caller: Caller) -> None:
        if route.status in (401, 407) and isinstance(caller, Anonymous):
            self._challenge(incoming, proxy=route.status == 407)
        else:
            incoming.respond(route.status, route.reason)

    # ------------------------------------------------------------------------ destinations (flows 1, 2, 4)

    def ring_time(self, employee: Employee) -> float:
        """How long an employee's devices ring: their own ``ring_seconds``, else the server's."""
        return float(employee.ring_seconds) if employee.ring_seconds is not None else self.ring_seconds

    async def _deliver(self, call: _Call, route: Route) -> None:
        """Ring ``route`` (an employee, a group and its fallbacks); the call ends answered or refused."""
        anchor = self.anchor_media and call.media is None and not isinstance(route, ToExternal | Refused)
        if anchor and not await self._anchor(call):
            return
        seen_groups: set[str] = set()
        for _ in range(MAX_HOPS):
            if call.a.terminated:
                return
            if isinstance(route, ToEmployee):
                employee = route.employee
                call.destination = ("employee", employee.extension)
                outcome = await self._ring(call, [employee], self.ring_time(employee))
                if not isinstance(outcome, _Failed):
                    return
                status = _fork_failure(list(outcome.statuses)) if outcome.statuses else 480
                if status != 480 or employee.fallback is None or call.a.terminated:
                    self._fail(call, status)  # busy (486) or declined (6xx) stays with the caller
                    return
                route = self.resolver.resolve_destination(employee.fallback)
                log.info(
                    "call %s: %s did not answer, fallback: %s",
                    call.a.call_id,
                    employee.extension,
                    _describe_route(route),
                )
                continue
            if isinstance(route, ToGroup):
                group = route.group
                if group.extension in seen_groups:
                    break
                seen_groups.add(group.extension)
                call.destination = ("group", group.extension)
                ended = await self._ring_group(call, group)
                if ended:
                    return
                route = self.resolver.resolve_destination(group.fallback)
                log.info(
                    "call %s: group %s did not answer, fallback: %s",
                    call.a.call_id,
                    group.extension,
                    _describe_route(route),
                )
                continue
            if isinstance(route, ToExternal):
                call.destination = (route.kind, route.e164)
                await self._call_out(call, route)
                return
            if isinstance(route, Refused):
                self._fail(call, route.status, route.reason)
                return
            self._fail(call, 480, f"Temporarily Unavailable ({type(route).__name__} not routed here)")
            return
        log.warning("call %s: routing loops (groups falling back to each other)", call.a.call_id)
        self._fail(call, 482, "Loop Detected")

    async def group_steps(self, group: Group) -> list[tuple[list[Employee], float]]:
        """``group``'s ring plan over its members that have a device and are not in a call: the employees
        of each step and how long they ring (the ``evenly`` state is advanced and saved)."""
        reachable = []
        for extension in group.members:
            employee = self._employee(extension)
            if employee is not None and not self.busy[extension] and await self._devices(employee):
                reachable.append(extension)
        plan, state = plan_ring_group(group, reachable, self.ring_state)
        if state != self.ring_state:
            self.ring_state = state
            self._save_ring_state()
        return [
            ([e for e in map(self._employee, step.extensions) if e is not None], float(step.seconds))
            for step in plan.steps
        ]

    async def _ring_group(self, call: _Call, group: Group) -> bool:
        """Ring ``group``'s plan step by step; true when the call is over (answered or the caller left)."""
        for employees, seconds in await self.group_steps(group):
            outcome = await self._ring(call, employees, seconds)
            if isinstance(outcome, _Ended):
                return True
            if call.a.terminated:
                return True
        return False

    def _employee(self, extension: str) -> Employee | None:
        return next((e for e in self.directory.employees if e.extension == extension), None)

    async def _devices(self, employee: Employee) -> list[tuple[SipUri, Flow]]:
        targets = []
        for binding in await self.registrar.contacts(employee.sip_user):
            flow = self.registrar.flow_for(binding)
            if flow is not None:
                targets.append((binding.uri, flow))
        return targets

    def _fail(self, call: _Call, status: int, reason: str | None = None) -> None:
        """The call cannot be delivered: reject the caller, or hang up on an anchored (answered) caller."""
        a = call.a
        call.status = status
        if a.terminated:
            return
        try:
            if isinstance(a, IncomingCall) and a.state is SessionState.INCOMING:
                a.reject(status, reason=reason)
            else:
                a.bye()
        except SessionError:
            log.debug("call %s: caller leg already going", a.call_id)

    # --------------------------------------------------------------------------------- flow 1: ring

    async def _ring(self, call: _Call, employees: list[Employee], seconds: float) -> _RingOutcome:
        """Ring every registered device of ``employees`` for ``seconds``; bridge the first to answer."""
        targets: list[tuple[Employee, SipUri, Flow]] = []
        for employee in employees:
            targets += [(employee, uri, flow) for uri, flow in await self._devices(employee)]
        a = call.a
        assert isinstance(a, IncomingCall)  # flows 1-4: someone called in
        if a.terminated:
            return _ENDED
        if not targets:
            return _Failed(())
        invite = a.request
        from_ = NameAddr(invite.from_.display_name, invite.from_.uri)
        headers = forwarded(invite)
        if call.media is not None:
            try:
                body: bytes = await call.media.offer_callee()
            except MediaError as exc:
                log.error("call %s: no media for the callee: %s", a.call_id, exc)
                return _Failed((503,))
            content_type: str | None = "application/sdp"
        else:
            body, content_type = invite.body, _content_type(invite)
        legs: list[OutgoingCall] = []
        answerer: dict[OutgoingCall, tuple[Employee, SipUri]] = {}
        for employee, uri, flow in targets:
            to = NameAddr(employee.name, parse_uri(self.registrar_aor(employee)))
            leg = self.ua.invite(
                uri,
                flow,
                from_=from_,
                to=to,
                body=body,
                content_type=content_type,
                headers=headers,
                queue=call.queue,
            )
            legs.append(leg)
            answerer[leg] = (employee, uri)
        call.legs.extend(legs)
        won = await self._fork(call, legs, seconds)
        if not isinstance(won, tuple):
            return won
        winner, answer = won
        if not await self._connect(call, winner, answer):
            return _ENDED
        employee, device = answerer[winner]
        call.answered_by, call.answered_contact = employee.sip_user, str(device)
        log.info(
            "call %s: answered by %s (%s) at %s", call.a.call_id, employee.extension, employee.name, device
        )
        self._count_busy(call, employee.extension)
        try:
            await self._bridge(call, winner, answer_owed=answer.answer_owed)
        finally:
            self._uncount_busy(call)
        return _ENDED

    def _count_busy(self, call: _Call, extension: str) -> None:
        call.busy.append(extension)
        self.busy[extension] += 1

    def _uncount_busy(self, call: _Call, extension: str | None = None) -> None:
        """``extension`` (default: every employee ``call`` counts) is no longer busy with ``call``."""
        for counted in [e for e in call.busy if extension is None or e == extension]:
            call.busy.remove(counted)
            self.busy[counted] -= 1
            if not self.busy[counted]:
                del self.busy[counted]

    async def _connect(self, call: _Call, winner: OutgoingCall, answer: Answered) -> bool:
        """The callee answered: answer the caller with its SDP, or (anchored) relay media to it — on a call
        out, answering the caller with our own SDP first."""
        a, response = call.a, answer.response
        media = call.media
        if media is not None:
            if isinstance(a, IncomingCall) and a.state is SessionState.INCOMING:
                try:
                    a.answer(body=call.caller_sdp or b"", content_type="application/sdp")
                except SessionError:
                    log.info("call %s: the caller left as %s answered", a.call_id, winner.call_id)
                    winner.bye()
                    return False
                if media.a_media is None and not await self._caller_ack(call, winner):
                    return False
            try:
                media.bridge_callee(response.body)
            except MediaError as exc:
                log.warning("call %s: cannot bridge media of %s: %s", a.call_id, winner.call_id, exc)
                winner.bye()
                self._fail(call, 488)
                return False
            call.answered_at = self._clock()
            self._emit(CallAnswered(self._call_id(call)))
            return True
        assert isinstance(a, IncomingCall)  # not anchored: someone called in (flows 1, 2, 4)
        try:
            a.answer(body=response.body, content_type=_content_type(response), headers=passthrough(response))
        except SessionError:
            log.info("call %s: the caller left as %s answered", a.call_id, winner.call_id)
            winner.bye()
            return False
        call.answered_at = self._clock()
        self._emit(CallAnswered(self._call_id(call)))
        return True

    async def _caller_ack(self, call: _Call, winner: OutgoingCall) -> bool:
        """Flow 5 with an offerless INVITE: wait for the caller's ACK with the answer to our offer (the
        client's leg already answered); false: the call is over (both legs are ended)."""
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
                self._caller_event(call, event)
            elif leg is winner and isinstance(event, DialogRequestReceived):
                self._hold(call, leg, event)

    def registrar_aor(self, employee: Employee) -> str:
        return f"sip:{employee.sip_user}@{self.directory.server.domain}"

    async def _fork(
        self, call: _Call | _Ringing, legs: list[OutgoingCall], seconds: float
    ) -> tuple[OutgoingCall, Answered] | _RingOutcome:
        """:func:`fork` for a call: a ringing leg's early media and ringback go to the caller, its requests
        are held for the bridge, the caller leaving ends the fork; the ringback stops once a leg answers.
        While a click-to-call rings the employee (``_Ringing``) there is no caller to tell about it."""
        caller = call if isinstance(call, _Call) else None

        def ringing(leg: OutgoingCall, response: Response) -> None:
            if caller is None:
                return
            if response.body:
                self._early_media(caller, leg, response, forked=len(legs) > 1)
            if response.status in (180, 183):
                self._ringback(caller)

        won = await fork(
            call.queue,
            legs,
            seconds,
            ringing=ringing,
            request=functools.partial(self._hold, call),
            caller=None if caller is None else caller.a,
            caller_event=None if caller is None else functools.partial(self._caller_event, caller),
            call_id=(call.a or legs[0]).call_id,
        )
        if isinstance(won, tuple) and call.media is not None:
            call.media.stop_playing()  # the ringback
        return won

    def _early_media(self, call: _Call, leg: OutgoingCall, response: Response, *, forked: bool) -> None:
        """A ringing leg sends early media (a 1xx with SDP: the provider's announcement or ringback): the
        unanswered caller gets a 183 with SDP and hears it — anchored, through our relay (the caller's
        answer is the one its 200 will carry); not anchored, the leg's SDP itself, only when it is the sole
        leg (forks could answer with other SDP than the 183 had, RFC 6337 §3.1)."""
        a = call.a
        if call.early is not None or not isinstance(a, IncomingCall) or a.state is not SessionState.INCOMING:
            return
        if _content_type(response) != "application/sdp":
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
        self._ringback(call)

    def _ringback(self, call: _Call) -> None:
        """A device rings: the caller hears it (180, or our generated ringback on an anchored call)."""
        if call.ringing:
            return
        call.ringing = True
        self._emit(CallRinging(self._call_id(call)))
        if call.early is not None:
            return  # the caller hears the early media
        if isinstance(call.a, IncomingCall) and call.a.state is SessionState.INCOMING:
            call.a.ring(180)  # not answered yet (a call out anchors media, but answers only with the client)
        elif call.media is not None:
            call.media.play_to_caller(call.music or ringback(), loop=True)

    def _caller_event(self, call: _Call, event: SessionEvent) -> None:
        """An event of the caller's leg before the bridge: held for it, or (anchored) handled here."""
        a = call.a
        if call.media is not None:
            if isinstance(event, ReinviteReceived):
                self._reanswer(call, event)
                return
            if isinstance(event, ReinviteConfirmed):
                self._answer_in_ack(call, Side.A, event)
                return
            if isinstance(event, DialogRequestReceived) and event.request.method == "UPDATE":
                self._update_locally(call, a, Side.A, event.request)
                return
        if isinstance(event, DialogRequestReceived):
            self._hold(call, a, event)

    @staticmethod
    def _hold(call: _Call | _Ringing, leg: Call, event: DialogRequestReceived) -> None:
        """Keep an in-dialog request (INFO …) that came before the bridge; relayed once there is one, or
        answered 408 after :data:`HELD_SECONDS` (before the sender's own transaction gives up)."""
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

    def _reanswer(
        self,
        call: _Call,
        event: ReinviteReceived,
        side: Side = Side.A,
        leg: Call | None = None,
        *,
        direction: str = "sendrecv",
    ) -> str | None:
        """A re-INVITE (hold, resume) on a leg of an anchored call: answered here (RFC 3264 §8.4: our answer
        mirrors the offered direction), the relay told; returns the direction the leg offered (None: not
        accepted, or no offer yet). An offerless re-INVITE gets our offer (``direction``: what the other
        party wants of this leg) in the 2xx, its answer comes in the ACK (RFC 3261 §14.2)."""
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
                    body=call.media.offer_again(side, direction), content_type="application/sdp"
                )
            except SessionError as exc:
                log.info("call %s: re-INVITE not answered: %s", call.a.call_id, exc)
                return None
            call.offered_in_2xx.add(side)
            return None
        try:
            body = call.media.answer_again(side, event.request.body)
        except MediaError as exc:
            log.info("call %s: re-INVITE not acceptable: %s", call.a.call_id, exc)
            leg.reject_reinvite(488)
            return None
        try:
            leg.answer_reinvite(body=body, content_type="application/sdp")
        except SessionError as exc:
            log.info("call %s: re-INVITE not answered: %s", call.a.call_id, exc)
            return None
        return _offered_direction(event.request.body)

    @staticmethod
    def _answer_in_ack(call: _Call, side: Side, event: ReinviteConfirmed) -> str | None:
        """The ACK for our 2xx to a re-INVITE: after an offerless one it carries the leg's answer, which
        the relay learns; returns the direction it declares (None: nothing new)."""
        if side not in call.offered_in_2xx or call.media is None:
            return None
        call.offered_in_2xx.discard(side)
        try:
            call.media.answered_again(side, event.ack.body)
        except MediaError as exc:
            log.info("call %s: no usable answer in the ACK: %s", call.a.call_id, exc)
            return None
        return _offered_direction(event.ack.body)

    def _update_locally(self, call: _Call, leg: Call, side: Side, request: Request) -> str | None:
        """An UPDATE (RFC 3311) on a leg of an anchored call: an SDP offer is answered here like a
        re-INVITE's; without one it only refreshes the dialog (200). Returns the direction offered."""
        assert call.media is not None
        if not request.body:
            leg.respond(request, 200)
            return None
        try:
            body = call.media.answer_again(side, request.body)
        except MediaError as exc:
            log.info("call %s: UPDATE not acceptable: %s", call.a.call_id, exc)
            leg.respond(request, 488)
            return None
        leg.respond(request, 200, body=body, content_type="application/sdp")
        return _offered_direction(request.body)

    async def _anchor(self, call: _Call) -> bool:
        """Anchor the media of a caller not answered yet: our answer to its offer (or our offer, for an
        offerless INVITE) on a port of ours, sent once a destination answers; every destination is offered
        another port of ours and the two are relayed. False: the caller got 503/488 (no port, no usable
        SDP) or has left."""
        a = call.a
        assert isinstance(a, IncomingCall)
        ports, address = self._media_ports(a.flow)
        media = call.media = AnchoredMedia(ports, self.media_clock, address)
        offer = a.request.body
        try:
            call.caller_sdp = await (media.answer_caller(offer) if offer else media.offer_caller())
            await media.offer_callee()
        except PortsExhausted:
            log.error("call %s: no RTP port left", a.call_id)
            self._fail(call, 503, "Service Unavailable (no media port)")
            return False
        except MediaError as exc:
            self._fail(call, 488, f"Not Acceptable Here ({exc})")
            return False
        return not a.terminated

    # --------------------------------------------------------------------------------- flow 5: call out

    async def _call_out(self, call: _Call, route: ToExternal) -> None:
        """Call ``route``'s number through its trunk, anchored; send the post-dial digits once it answers."""
        a = call.a
        trunk = self.directory.trunk(route.trunk)
        if trunk is None:
            self._fail(call, 503, f"Service Unavailable (no trunk {route.trunk})")
            return
        try:
            flow = await _trunk_flow(self.ua, trunk)
        except OSError as exc:
            log.error("call %s: trunk %s unreachable: %s", a.call_id, trunk.name, exc)
            self._fail(call, 503, "Service Unavailable (trunk unreachable)")
            return
        if call.media is None and not await self._anchor(call):
            return  # a click-to-call anchors media as it rings the employee
        media = call.media
        assert media is not None
        try:
            body = await media.offer_callee()
        except PortsExhausted:
            log.error("call %s: no RTP port left", a.call_id)
            self._fail(call, 503, "Service Unavailable (no media port)")
            return
        except MediaError as exc:
            self._fail(call, 488, f"Not Acceptable Here ({exc})")
            return
        if a.terminated:
            return
        uri = trunk_uri(trunk, route.e164)
        credentials = None
        if trunk.username is not None and trunk.password is not None:
            credentials = (trunk.username, trunk.password)
        leg = self.ua.invite(
            uri,
            flow,
            from_=trunk_identity(trunk, self.directory),
            to=NameAddr(None, attrs.evolve(uri, port=None)),
            body=body,
            content_type="application/sdp",
            headers=forwarded(a.request, to_trunk=True) if isinstance(a, IncomingCall) else (),
            credentials=credentials,
            queue=call.queue,
        )
        call.legs.append(leg)
        won = await self._fork(call, [leg], self.dial_out_seconds)
        if isinstance(won, _Failed):
            self._fail(call, external_failure(won.statuses))
            return
        if not isinstance(won, tuple):
            return
        winner, answer = won
        # Answered: the 2xx came and the session has sent our ACK (we made the offer) — the client is there.
        if not await self._connect(call, winner, answer):
            return
        call.answered_by = route.e164
        log.info("call %s: %s answered", call.a.call_id, route.e164)
        contact = answer.response.get("contact")
        call.answered_contact = contact
        if route.post_dial:
            self._post_dial(call, format_post_dial(route.post_dial))
        await self._bridge(call, winner, answer_owed=False)

    def _post_dial(self, call: _Call, digits: str, side: Side = Side.B) -> None:
        """Send ``digits`` to the client's leg (``side``): RFC 4733 if it negotiated telephone-event, else
        tones; each digit is announced (:class:`~routing.events.DigitSent`) when its tone or event is over."""
        bridge = call.media.bridge if call.media is not None else None
        if bridge is None:
            return
        call_id = call.a.call_id

        def sent(side: Side) -> None:
            log.info("call %s: post-dial digits %s sent", call_id, digits)

        bridge.on_digits_sent = sent
        method = "rfc4733" if bridge.relay.media(side).telephone_event_pt is not None else "inband"
        try:
            start = self.media_clock.now()
            bridge.send_digits(side, digits, duration_ms=DIGIT_MS, gap_ms=DIGIT_GAP_MS, pause_ms=PAUSE_MS)
        except MediaError as exc:
            log.warning("call %s: cannot send post-dial digits %s: %s", call_id, digits, exc)
            return
        loop, offset = asyncio.get_running_loop(), 0.0
        for digit in digits:
            if digit == ",":
                offset += PAUSE_MS / 1000
                continue
            offset += DIGIT_MS / 1000
            loop.call_at(
                start + offset, self._digit_sent, call, bridge, DigitSent(self._call_id(call), digit, method)
            )
            offset += DIGIT_GAP_MS / 1000

    def _digit_sent(self, call: _Call, bridge: MediaBridge, fact: DigitSent) -> None:
        if call.media is not None and call.media.bridge is bridge:  # the call is still on that bridge
            self._emit(fact)

    # ------------------------------------------------------------------------ flow 5: click-to-call

    async def originate(
        self, extension: str, number: str, *, on_status: Callable[[int, str], None] | None = None
    ) -> CallRecord:
        """Click-to-call (flow 5): ring the employee ``extension``, then call ``number`` for them.

        Every registered device of the employee gets an INVITE of ours (From: the number called, media
        anchored: the offer is one of our RTP ports). If none answers within ``ring_seconds`` the devices
        get CANCEL and nothing goes to the trunk. When one answers, ``number`` (a dial string, post-dial
        digits included) is resolved as if the employee had dialled it and called through the trunk the
        way flow 5 calls out (:meth:`_call_out`: 401/407 answered, the employee hears ringback, post-dial
        digits after the client's 2xx and our ACK); a client that fails gets the employee's leg a BYE.
        Once the client answers the legs are bridged until either hangs up.

        Runs until the call is over and returns its CDR record (written to ``cdr`` too). A click-to-call
        that cannot start gives a record with ``status``: no such employee 404, an unparsable number 484,
        the resolver's refusal (a number outside the employee's scope: 403), a route other than a number
        out 403, nobody registered 480, no RTP port 503. Cancelling the coroutine ends every leg.

        ``on_status`` hears how the start went, once: ``(180, ...)`` when the employee's devices ring, or the
        refusal's status and reason (``durchwahl originate`` reports it before the call goes on).
        """
        started_at = self._clock()
        dialled_text = number

        def refused(status: int, reason: str) -> CallRecord:
            log.info("click-to-call %s -> %s refused: %s %s", extension, number, status, reason)
            if on_status is not None:
                on_status(status, reason)
            record = CallRecord(
                call_id=self.ua.endpoint.new_call_id(),
                caller=extension,
                dialled=dialled_text,
                started_at=started_at,
                ended_at=self._clock(),
                disposition=disposition_for(answered=False, status=status),
                status=status,
            )
            self._write_cdr(record)
            return record

        employee = self._employee(extension)
        if employee is None:
            return refused(404, f"no employee has extension {extension}")
        try:
            dialled = parse_dialstring(number)
        except DialStringError as exc:
            return refused(484, str(exc))
        dialled_text = format_dialstring(dialled)
        try:
            async with asyncio.timeout(self.resolve_timeout):
                route = await self.resolver.resolve(dialled, FromEmployee(extension))
        except TimeoutError:
            return refused(503, "routing timed out")
        if isinstance(route, Refused):
            return refused(route.status, route.reason)
        if not isinstance(route, ToExternal):
            return refused(
                403, f"click-to-call calls numbers outside the office, and {dialled_text} is not one"
            )
        devices = await self._devices(employee)
        if not devices:
            return refused(480, f"no phone of {extension} is registered")
        log.info(
            "click-to-call %s -> %s: ringing %s first, then %s",
            extension,
            dialled_text,
            extension,
            _describe_route(route),
        )

        ports, address = self._media_ports(devices[0][1])
        media = AnchoredMedia(ports, self.media_clock, address)
        ringing = _Ringing(
            asyncio.Queue(), media, caller=extension, dialled=dialled_text, started_at=started_at
        )
        legs: list[OutgoingCall] = []
        call: _Call | None = None
        try:
            try:
                offer = await media.offer_caller()
            except PortsExhausted:
                log.error("click-to-call %s -> %s: no RTP port left", extension, dialled_text)
                return refused(503, "no media port")
            from_ = NameAddr(None, SipUri("sip", route.e164, None, self.directory.server.domain))
            to = NameAddr(employee.name, parse_uri(self.registrar_aor(employee)))
            for uri, flow in devices:
                leg = self.ua.invite(
                    uri,
                    flow,
                    from_=from_,
                    to=to,
                    body=offer,
                    content_type="application/sdp",
                    queue=ringing.queue,
                )
                legs.append(leg)
            self.active[legs[0]] = legs
            self._calls[legs[0]] = ringing
            if on_status is not None:
                on_status(180, f"the phones of {extension} ring")
            won = await self._fork(ringing, legs, self.ring_seconds)
            if not isinstance(won, tuple):
                statuses = won.statuses if isinstance(won, _Failed) else ()
                status = _fork_failure(list(statuses)) if statuses else 480
                log.info("click-to-call %s -> %s: not taken (%s)", extension, dialled_text, status)
                return self._originate_record(legs, extension, dialled_text, started_at, status)
            winner, answer = won
            try:
                media.caller_answered(answer.response.body)
            except MediaError as exc:
                log.info("click-to-call %s: no usable answer from %s: %s", extension, winner.call_id, exc)
                winner.bye()
                return self._originate_record(legs, extension, dialled_text, started_at, 488)
            call = _Call(winner, ringing.queue, None, legs=[leg for leg in legs if leg is not winner])
            call.held, call.media = ringing.held, media
            call.caller, call.dialled, call.started_at = extension, dialled_text, started_at
            call.destination = (route.kind, route.e164)
            self.active[legs[0]] = call.legs
            self._calls[legs[0]] = call
            self._emit(CallStarted(self._call_id(call), extension, dialled_text))  # ringing, answered follow
            self._count_busy(call, extension)
            try:
                await self._call_out(call, route)
            finally:
                self._uncount_busy(call)
            record = self._record(call)
            self._write_cdr(record)
            return record
        finally:
            if legs:
                self.active.pop(legs[0], None)
                self._calls.pop(legs[0], None)
            if call is None:
                self._tear_down(None, legs)
                _discard_events(ringing.queue, legs)
            else:
                self._tear_down(call.a, [*call.legs, *call.adopted], keep=call.given)
                _discard_events(call.queue, [call.a, *call.legs, *call.adopted], keep=call.given)
            media.close()

    def _originate_record(
        self, legs: list[OutgoingCall], extension: str, dialled: str, started_at: float, status: int
    ) -> CallRecord:
        """The CDR record of a click-to-call the employee did not take (``status``), written."""
        record = CallRecord(
            call_id=legs[0].call_id or "",
            caller=extension,
            dialled=dialled,
            destination_kind="employee",
            destination_id=extension,
            started_at=started_at,
            ended_at=self._clock(),
            disposition=disposition_for(answered=False, status=status),
            status=status,
        )
        self._write_cdr(record)
        return record

    # ---------------------------------------------------------------------- flow 3: extension processing

    def _media_ports(self, flow: Flow) -> tuple[PortAllocator, str]:
        """The RTP ports and the address our SDP gives for a call whose leg goes along ``flow``."""
        if self._ports is None:
            first, last = self.directory.server.rtp_ports
            listen = self.directory.server.listen
            host = listen[0].host if listen else flow.local[0]
            self._ports = PortAllocator(first, last, host=host)
        host = self._ports.host
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = flow.local[0]
        except ValueError:
            host = flow.local[0]
        return self._ports, host

    async def _extension_processing(self, call: _Call, number: Number) -> Route | None:
        """Answer, play the greeting, collect an extension; the route to ring next (None: call over)."""
        a = call.a
        assert isinstance(a, IncomingCall)  # flow 3: a trunk called in
        ports, address = self._media_ports(a.flow)
        media = call.media = AnchoredMedia(ports, self.media_clock, address)
        offerless = not a.request.body
        try:
            body = await (media.offer_caller() if offerless else media.answer_caller(a.request.body))
        except PortsExhausted:
            log.error("call %s: no RTP port left", a.call_id)
            a.reject(503, reason="Service Unavailable (no media port)")
            return None
        except MediaError as exc:
            a.reject(488, reason=f"Not Acceptable Here ({exc})")
            return None
        try:
            a.answer(body=body, content_type="application/sdp")
        except SessionError:
            return None  # the caller left meanwhile
        if offerless and not await self._caller_answer(call, media):
            return None
        greeting: Greeting | None = None
        if number.greeting is not None:
            try:
                greeting = self.greetings.get(number.greeting)
            except GreetingError as exc:
                log.error("call %s: greeting of %s: %s", a.call_id, number.number, exc)
        playback = media.play_to_caller(greeting) if greeting is not None and greeting.frames else None
        extensions = [e.extension for e in self.directory.employees] + [
            g.extension for g in self.directory.groups
        ]
        assert media.a is not None
        call_id = self._call_id(call)
        collection = ExtensionCollection(
            DigitCollector(extensions),
            media.a,
            playback,
            on_digit=lambda pressed: self._emit(DigitPressed(call_id, pressed.digit, pressed.source.value)),
        )
        getter: asyncio.Future[CallEvent] | None = None
        try:
            while not collection.result.done():
                getter = asyncio.ensure_future(call.queue.get())
                await asyncio.wait((getter, collection.result), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    continue
                _, event = getter.result()
                getter = None
                if isinstance(event, Terminated):
                    return None
                if isinstance(event, DialogRequestReceived) and event.request.method == "INFO":
                    self._info_digit(call, collection, event.request)
                else:
                    self._caller_event(call, event)
        finally:
            if getter is not None:
                getter.cancel()
            collection.close()
        media.stop_playing()
        result = collection.result.result()
        log.info("call %s to %s: %s", a.call_id, number.number, _describe_collected(result))
        call.digits = result.extension if isinstance(result, ExtensionDialled) else result.digits
        if number.music is not None:
            try:
                call.music = self.greetings.get(number.music)
            except GreetingError as exc:
                log.error("call %s: music of %s: %s (ringback instead)", a.call_id, number.number, exc)
        if isinstance(result, ExtensionDialled):
            route = self.resolver.resolve_destination(ExtensionRef(result.extension))
            if not isinstance(route, Refused):
                return route
        return self.resolver.resolve_destination(number.default, trunk=number.trunk)

    async def _caller_answer(self, call: _Call, media: AnchoredMedia) -> bool:
        """Wait for the ACK bringing the answer to our 2xx's offer (offerless INVITE); false: call over."""
        while True:
            _, event = await call.queue.get()
            if isinstance(event, Terminated):
                return False
            if isinstance(event, Confirmed):
                try:
                    media.caller_answered(event.ack.body)
                except MediaError as exc:
                    log.info("call %s: no usable answer in the ACK: %s", call.a.call_id, exc)
                    call.a.bye()
                    return False
                return True
            self._caller_event(call, event)

    @staticmethod
    def _info_digit(call: _Call, collection: ExtensionCollection, request: Request) -> None:
        try:
            received = parse_info_body(request.get("content-type") or "", request.body)
        except MediaError:
            call.a.respond(request, 415 if request.body else 200)
            return
        call.a.respond(request, 200)
        collection.info_digit(received.digit)

    # ------------------------------------------------------------------------------- bridged call

    async def _bridge(self, call: _Call, b: Call, *, answer_owed: bool) -> None:
        """Relay between the legs until one ends; then end the other. A REFER on either leg transfers the
        other party (:mod:`routing.transfer`): the target takes the transferor's place (attended: the other
        party of the transferor's other call, which then ends here without touching that party)."""
        a, queue = call.a, call.queue
        relay = _Relay(a, b)
        if answer_owed:
            relay.owe(b, a)  # an offerless INVITE: B's offer went to A in the 2xx, A's ACK brings the answer
        hold = _HoldSync(call.media, a, b) if call.media is not None else None
        transfers = transfer.Transfers(self, call, a, b)
        backlog = list(call.held)
        call.held.clear()
        while True:
            leg, event = backlog.pop(0) if backlog else await queue.get()
            if transfers.event(leg, event):
                if transfers.released:
                    return  # an attended transfer took the other party to its call: this one is over
                replaced = transfers.take_replacement()
                if replaced is not None:
                    side, target = replaced
                    a, b = (target, b) if side is Side.A else (a, target)
                    relay = _Relay(a, b)
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
                    # Pending requests of the other leg (a re-INVITE or INFO relayed to the leg that
                    # ended) are answered 487 by its session as it ends (RFC 3261 §15.1.2).
                    other.bye()
                return
            if hold is not None:
                side = Side.A if leg is a else Side.B
                if isinstance(event, ReinviteReceived):
                    wish = hold.wanted[side]  # offered to an offerless re-INVITE
                    direction = self._reanswer(call, event, side, leg, direction=wish)  # media stays anchored
                    if direction is not None:
                        hold.want(side.other, direction)
                elif isinstance(event, ReinviteConfirmed) and side in call.offered_in_2xx:
                    direction = self._answer_in_ack(call, side, event)
                    if direction is not None:
                        hold.want(side.other, direction)
                elif isinstance(event, DialogRequestReceived) and event.request.method == "UPDATE":
                    direction = self._update_locally(call, leg, side, event.request)
                    if direction is not None:
                        hold.want(side.other, direction)
                elif isinstance(event, ReinviteAnswered | ReinviteFailed):
                    hold.outcome(side, event)  # only our re-INVITEs: an anchored call relays none
                else:
                    relay.event(leg, event)
                hold.sync()
            else:
                relay.event(leg, event)
            relay.flush()

    def _tear_down(
        self, a: Call | None, legs: Iterable[Call], *, keep: Collection[Call] = frozenset()
    ) -> None:
        """Leave nothing behind when the call coroutine ends (also on cancellation at shutdown); ``a``:
        the caller's leg (none while a click-to-call rings the employee); ``keep``: legs another call took."""
        if a is not None and a in keep:
            a = None
        for leg in legs:
            if not leg.terminated and leg not in keep:
                try:
                    if leg.state in _EARLY and isinstance(leg, OutgoingCall):
                        leg.cancel()
                    else:
                        leg.bye()
                except SessionError:
                    log.debug("call %s: leg %s already going", a.call_id if a else None, leg.call_id)
        if a is None or a.terminated:
            return
        try:
            if isinstance(a, IncomingCall) and a.state is SessionState.INCOMING:
                a.reject(500)
            else:
                a.bye()
        except SessionError:
            log.debug("call %s: caller leg already going", a.call_id)


def _discard_events(queue: CallQueue, legs: Iterable[Call], *, keep: Collection[Call] = ()) -> None:
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


class _HoldSync:
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


class _Relay:
    """In-dialog requests of a bridged call, relayed across and answered back.

    A request for a leg whose INVITE still waits for its ACK (it cannot send requests yet) is held and
    relayed once that leg is confirmed (:meth:`flush`).
    """

    def __init__(self, a: Call, b: Call) -> None:
        self.a = a
        self.b = b
        #: Our re-INVITE on one leg -> the leg whose re-INVITE it relays.
        self._reinvites: dict[Call, Call] = {}
        #: (leg, CSeq number, method) of a request we sent -> (leg, request) it relays.
        self._requests: dict[tuple[Call, int, str], tuple[Call, Request]] = {}
        #: A leg owing an ACK with the answer (after an offerless (re-)INVITE) -> the leg whose ACK brings it.
        self._owed: dict[Call, Call] = {}
        #: Requests (leg they came on, request) waiting for the other leg to be confirmed.
        self._waiting: list[tuple[Call, Request]] = []

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
            if other.state in _AWAITING_ACK:
                self._waiting.append((call, request))
                continue
            try:
                self._send(call, other, request)
            except SessionError as exc:
                log.info("call %s: cannot relay %s: %s", self.a.call_id, request.method, exc)

    def _send(self, call: Call, other: Call, request: Request) -> None:
        """Relay ``request`` (INFO, UPDATE …) from ``call`` to ``other``; its answer goes back later."""
        if other.state not in _ESTABLISHED:
            call.respond(request, 500, headers=(("Retry-After", "1"),))
            return
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
            if other.state in _AWAITING_ACK and len(self._waiting) < MAX_HELD:
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
                    content_type=_content_type(response),
                    headers=passthrough(response),
                )
