"""Call transfer on a bridged call: REFER (RFC 3515) received by the B2BUA, which then acts for the other
party as RFC 5589's transferee — blind (§6) or attended (§7, Refer-To with ``Replaces``, RFC 3891).

A party of a bridged call, the *transferor*, sends REFER in its dialog; the other party is the *transferee*.
One :class:`Transfers` per bridged call (:meth:`routing.b2bua.B2bua._bridge` hands it every event first):

1. **Who may**: an employee's leg only; a trunk's leg gets 403 (a provider does not re-route our calls). The
   Refer-To (:func:`parse_refer`) is resolved as if that employee had dialled it (their outbound scope
   applies); a refusal answers the REFER (404, 403, 484 …). One Refer-To with a SIP or tel URI, else 400
   (484 when it holds nothing to dial); a ``method`` other than INVITE 403; a REFER while another is under
   way 491; a REFER on a leg that left the bridge 403. With ``Replaces`` it is an attended transfer (below).
2. **Accepted**: 202, then NOTIFY ``SIP/2.0 100 Trying`` in the transferor's dialog (``Event: refer``, with
   ``;id=`` the REFER's CSeq from the second accepted REFER of a dialog on, RFC 3515 §2.4.6; body
   ``message/sipfrag;version=2.0``; ``Subscription-State: active;expires=60``), ``180 Ringing`` once the
   target rings, and the final status with ``terminated;reason=noresource``. With ``Refer-Sub: false``
   (RFC 4488) the 202 carries ``Refer-Sub: false`` and no NOTIFY is sent.
3. **Ringing**: the target is rung like a call to it — every device of an employee (its ring time and
   fallback), a group's plan and fallback, a number through the trunk — with the transferee as the caller
   (From) and a ``Referred-By`` (the REFER's, else the transferor's AOR; none towards a trunk). Meanwhile
   the call stays as it is; if the transferor hangs up (many phones do right after the 202), the transferee
   waits for the target.
4. **Answered**: the target takes the transferor's place. Anchored call: the target was offered a new RTP
   port of ours; the relay now runs between the transferee's session and the target's (a transferee the
   transferor held is re-INVITEd to resume), and a number's post-dial digits follow. Not anchored: the target
   got an offerless INVITE; its offer goes to the transferee in a re-INVITE, the transferee's answer to the
   target in our ACK (RFC 3725 flow I). NOTIFY ``200 OK``; the transferor should now hang up, else it gets
   our BYE after :attr:`Transfers.bye_after` seconds. The CDR names the target as who answered, the
   transferor in ``transferred_by``.
5. **Failed** (busy, no answer, nobody registered …): NOTIFY with that status; the call stays as it was and
   the transferor may resume it. If the transferor has left meanwhile, the transferee is hung up on.
   Anchored call: while the target rings (its first 180/183) the transferee hears our ringback instead of
   the transferor (:meth:`~routing.greeting_flow.AnchoredMedia.ring_back`); the target's answer or the
   failure ends it (the relay to the transferor again). Not anchored, the transferee hears what the
   transferor's phone sends.

**Attended transfer** (RFC 5589 §7). The transferor talks to the transferee in this call (usually holding
it) and to a third party in another call through this B2BUA; its REFER — in either dialog — carries
``Refer-To: <sip:…?Replaces=<Call-ID>;to-tag=<tag>;from-tag=<tag>>`` naming its dialog with us in the *other*
call (RFC 3891 §3: the to-tag is compared with our tag, the from-tag with the transferor's; the swapped
order is accepted too). :attr:`routing.b2bua.B2bua.bridged` finds that call. The REFER is answered 202 and
NOTIFY ``100 Trying`` as above (400 if the Replaces lacks a Call-ID or tag, 491 while either call has a
transfer under way); then the outcome is NOTIFYed: ``481`` when no dialog of ours matches, ``403`` when the
dialog is not the transferor's or not yet bridged (ringing, greeting) or is this call's own, ``603`` when it
has ended, ``486`` for ``early-only`` (RFC 3891 §3: our dialogs are confirmed). On a match the other call
hands its other party (the *replaced party*) over and ends: our BYE to the transferor's leg there, the
party's leg untouched; its CDR record ends as answered, as any call. The replaced party takes the
transferor's place here, rung by no one:

* both calls anchored: its RTP session moves into this call's relay — no SIP to it at all (a party the
  transferor held there, or the transferee held here, gets a re-INVITE of ours to resume);
* this call anchored, the other not: a re-INVITE offers it a new port of ours, its answer starts the relay;
* this call not anchored: an offerless re-INVITE; its offer goes to the transferee in a re-INVITE, the
  answer back in our ACK (RFC 3725 flow I; an anchor the other call had is released).

Then NOTIFY ``200 OK`` (or the status of a failed re-INVITE; the replaced party is then hung up) and the
transferor's BYE (or ours, as above). The CDR names the replaced party as who answered (an employee's SIP
user, else its number: the one called out, or the caller's From user; destination ``employee`` or
``external``) and the transferor in ``transferred_by``; the event has ``attended=True``. An INVITE that
carries ``Replaces`` (pickup, or a transfer done by the transferee's phone) is not taken as one: it is routed
like any call.

Each accepted REFER ends in one :class:`~routing.events.CallTransferred` (status 487 when the call ended
before the transfer did). Not handled: REFER outside a dialog (the server answers 403), post-dial digits
on a call whose media is not anchored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import attrs

from media.errors import MediaError
from media.relay import Side
from media.sdp import SessionDescription
from media.session import RtpSession
from sipcore.dialog import DialogId
from sipcore.errors import SipError
from sipcore.message import REASON_PHRASES, Request, Response
from sipcore.session import (
    DEFAULT_ALLOW,
    Answered,
    DialogRequestReceived,
    ReinviteAnswered,
    ReinviteFailed,
    ReinviteReceived,
    SessionError,
    SessionEvent,
    SessionState,
    Terminated,
)
from sipcore.ua import Call, CallQueue, IncomingCall, OutgoingCall
from sipcore.uri import NameAddr, SipUri, TelUri, Uri, parse_name_addr, parse_uri

from . import b2bua as calls
from .dialstring import DialString, DialStringError, format_dialstring, format_post_dial, from_request_uri
from .directory import Employee
from .events import CallTransferred
from .greeting_flow import MovedLeg
from .resolver import FromEmployee, Refused, Route, ToEmployee, ToExtensionProcessing, ToExternal, ToGroup

__all__ = [
    "ALLOW",
    "SIPFRAG",
    "SUBSCRIPTION_SECONDS",
    "AttendedTarget",
    "ReferRefused",
    "ReferTarget",
    "Replaces",
    "Transfers",
    "parse_refer",
    "parse_replaces",
]

log = logging.getLogger(__name__)

#: What the B2BUA takes inside its dialogs (the Allow of its INVITEs and 2xx).
ALLOW: Final = f"{DEFAULT_ALLOW}, REFER"
#: The body type of the refer event package's NOTIFYs (RFC 3515 §2.4.5, RFC 3420).
SIPFRAG: Final = "message/sipfrag;version=2.0"
#: The ``expires`` of the implicit subscription while it is active; every transfer ends well before.
SUBSCRIPTION_SECONDS: Final = 60


@attrs.frozen
class ReferTarget:
    """What a REFER asks for: the Refer-To URI and its dial string, whether the REFER-Issuer wants NOTIFYs
    (not with ``Refer-Sub: false``, RFC 4488) and its ``Referred-By`` (RFC 3892), to pass on."""

    uri: Uri
    dialled: DialString
    subscribe: bool = True
    referred_by: str | None = None


@attrs.frozen
class Replaces:
    """The dialog a ``Replaces`` names (RFC 3891 §6.1): its Call-ID, ``to_tag`` (the tag of whoever is to
    replace the dialog: here ours) and ``from_tag`` (the asking party's: the transferor's)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


@attrs.frozen
class AttendedTarget:
    """A REFER for an attended transfer: the Refer-To URI, the dialog its ``Replaces`` names, and as in
    :class:`ReferTarget` whether NOTIFYs are wanted and the ``Referred-By``."""

    uri: Uri
    replaces: Replaces
    subscribe: bool = True
    referred_by: str | None = None

    @property
    def label(self) -> str:
        """The Refer-To as dialled (its URI as written when it is no dial string)."""
        try:
            return format_dialstring(from_request_uri(self.uri))
        except DialStringError:
            return str(self.uri.without_headers()) if isinstance(self.uri, SipUri) else str(self.uri)


def parse_replaces(value: str) -> Replaces | None:
    """``<Call-ID>;to-tag=<tag>;from-tag=<tag>[;early-only]`` (RFC 3891 §6.1); None when a part is missing."""
    call_id, *params = (part.strip() for part in value.split(";"))
    tags: dict[str, str] = {}
    early_only = False
    for param in params:
        name, _, tag = param.partition("=")
        name = name.strip().lower()
        if name == "early-only":
            early_only = True
        elif name in ("to-tag", "from-tag"):
            tags[name] = tag.strip()
    to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
    if not call_id or not to_tag or not from_tag:
        return None
    return Replaces(call_id, to_tag, from_tag, early_only)


@attrs.frozen
class ReferRefused:
    """A REFER this B2BUA will not carry out: answer it with ``status`` and ``reason``."""

    status: int
    reason: str


def parse_refer(request: Request) -> ReferTarget | AttendedTarget | ReferRefused:
    """The target of ``request`` (a REFER; with ``Replaces``, attended), or why it is refused (see the module
    docstring). Pure."""
    values = request.get_all("refer-to")
    if len(values) != 1:
        return ReferRefused(400, "Bad Request (a REFER needs exactly one Refer-To)")
    try:
        target = parse_name_addr(values[0].strip())
    except SipError as exc:
        return ReferRefused(400, f"Bad Request (Refer-To: {exc})")
    uri = target.uri
    if not isinstance(uri, SipUri | TelUri):
        return ReferRefused(400, "Bad Request (Refer-To is not a SIP or tel URI)")
    refer_sub = request.get("refer-sub")
    subscribe = refer_sub is None or refer_sub.split(";", 1)[0].strip().lower() != "false"
    if isinstance(uri, SipUri):
        method = uri.param("method")
        if method is not None and method.upper() != "INVITE":
            return ReferRefused(403, f"Forbidden (only INVITE references, not {method})")
        replaces = [value for name, value in uri.headers if name.lower() == "replaces"]
        if len(replaces) > 1:
            return ReferRefused(400, "Bad Request (Refer-To with more than one Replaces)")
        if replaces:
            dialog = parse_replaces(replaces[0])
            if dialog is None:
                return ReferRefused(400, "Bad Request (Replaces needs a Call-ID, to-tag and from-tag)")
            return AttendedTarget(uri, dialog, subscribe, request.get("referred-by"))
    try:
        dialled = from_request_uri(uri)
    except DialStringError as exc:
        return ReferRefused(484, f"Address Incomplete ({exc})")
    return ReferTarget(uri, dialled, subscribe, request.get("referred-by"))


def sipfrag(status: int) -> bytes:
    """A NOTIFY body reporting ``status`` (RFC 3420: the status line of a response)."""
    return f"SIP/2.0 {status} {REASON_PHRASES.get(status, 'Unknown')}\r\n".encode()


@attrs.frozen
class _Won:
    """A target answered: its leg and answer, the employee (None: a number out), the CDR's words for it."""

    leg: OutgoingCall
    answer: Answered
    party: str | None
    answered_by: str
    contact: str | None
    post_dial: str = ""


@attrs.define(eq=False)
class _Refer:
    """An accepted REFER while it runs: who transfers (``transferor``, the employee ``extension``), whom
    (``transferee``), the REFER itself."""

    transferor: Call
    transferee: Call
    #: The transferor's side of the bridge: the target takes it.
    side: Side
    extension: str
    request: Request
    #: The ``id`` of the NOTIFYs' ``Event`` (from the dialog's second accepted REFER on).
    event_id: str | None = attrs.field(default=None, init=False)
    task: asyncio.Task[None] | None = attrs.field(default=None, init=False)


@attrs.define(eq=False)
class _Transfer(_Refer):
    """One accepted REFER while it runs."""

    target: ReferTarget
    queue: CallQueue = attrs.field(factory=asyncio.Queue, init=False)
    legs: list[OutgoingCall] = attrs.field(factory=list, init=False)
    destination: tuple[str, str] | None = attrs.field(default=None, init=False)
    #: Anchored call: the target's RTP session and our offer on it (until the relay takes it over).
    session: RtpSession | None = attrs.field(default=None, init=False)
    offer: SessionDescription | None = attrs.field(default=None, init=False)
    ringing: bool = attrs.field(default=False, init=False)
    won: _Won | None = attrs.field(default=None, init=False)


@attrs.frozen
class _Party:
    """The party an attended transfer brings, as the CDR and the event name it: an employee (its extension
    and SIP user), else a number outside (``external``)."""

    extension: str | None
    kind: str
    ident: str
    answered_by: str
    contact: str | None


@attrs.frozen
class _Handover:
    """What the other call of an attended transfer hands over: the replaced party's leg, who it is, and
    its RTP session when both calls are anchored."""

    leg: Call
    party: _Party
    moved: MovedLeg | None


@attrs.define(eq=False)
class _Attended(_Refer):
    """One accepted REFER with Replaces while it runs (the replaced party's re-INVITE is out)."""

    target: AttendedTarget
    #: The replaced party, once the other call handed it over.
    leg: Call | None = attrs.field(default=None, init=False)
    party: _Party | None = attrs.field(default=None, init=False)
    #: What its re-INVITE offers: our SDP on ``session`` (anchored), nothing (offerless); None: not yet.
    offer: bytes | None = attrs.field(default=None, init=False)
    session: RtpSession | None = attrs.field(default=None, init=False)
    sdp: SessionDescription | None = attrs.field(default=None, init=False)
    sent: bool = attrs.field(default=False, init=False)


@attrs.define
class _Connect:
    """Not anchored: the target's offer (from its 2xx) goes to the transferee in a re-INVITE of ours; the
    answer to it goes to the target in the ACK it waits for."""

    transferee: Call
    target: Call
    offer: bytes
    content_type: str | None
    sent: bool = False


class Transfers:
    """The REFERs of one bridged call (see the module docstring).

    ``legs`` are the bridged legs (side A, side B) of ``call``, listed in :attr:`routing.b2bua.B2bua.bridged`
    by dialog. :meth:`event` takes every event of the call first; when a target has taken a leg's place,
    :meth:`take_replacement` says which; once an attended transfer in another call has taken this call's
    party, :attr:`released` says the bridge is over. Ends with the task that runs the bridge (calls still
    under way are dropped then)."""

    #: Seconds the transferor has to hang up after the final NOTIFY before the B2BUA does.
    bye_after: float = 4.0

    def __init__(self, b2bua: calls.B2bua, call: calls._Call, a: Call, b: Call) -> None:
        self.b2bua = b2bua
        self.call = call
        self.legs: list[Call] = [a, b]
        self._parties: dict[Call, str | None] = {a: self._party_a(), b: self._party_b()}
        self._pending: _Transfer | None = None
        self._attended: _Attended | None = None
        self._connecting: _Connect | None = None
        self._replacement: tuple[Side, Call] | None = None
        self._released = False
        self._accepted: dict[Call, int] = {}
        self._timers: list[asyncio.TimerHandle] = []
        for leg in self.legs:
            self._index(leg)
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self.close())

    def _party_a(self) -> str | None:
        """The caller's employee extension (None: it came from a trunk)."""
        call = self.call
        return call.caller if call.trunk is None and call.caller else None

    def _party_b(self) -> str | None:
        """The callee's employee extension (None: a number called out)."""
        call = self.call
        if call.destination is not None and call.destination[0] == "external":
            return None
        employee = (
            None if call.answered_by is None else self.b2bua.directory.employee_by_sip_user(call.answered_by)
        )
        return None if employee is None else employee.extension

    # ------------------------------------------------------------------------------------ the bridge

    def event(self, leg: Call, event: SessionEvent) -> bool:
        """Take ``event`` if it belongs to a transfer (a REFER, the target's answer, the transferor leaving
        while it rings, the transferee's answer to our re-INVITE, the replaced party's events); true when
        taken (every event once :attr:`released`)."""
        taken = self._event(leg, event)
        if not taken and isinstance(event, Terminated) and leg in self.legs:
            self.close()  # the bridge ends with this leg (not only with the task: originate's may go on)
            return False
        if self._connecting is not None:
            self._connect()
        if self._attended is not None:
            self._attend_step()
        return taken

    def take_replacement(self) -> tuple[Side, Call] | None:
        """The side whose party a transfer target has replaced since the last call, and the target's leg."""
        replacement, self._replacement = self._replacement, None
        return replacement

    @property
    def released(self) -> bool:
        """An attended transfer in another call took this call's party: the bridge is over."""
        return self._released

    def _index(self, leg: Call) -> None:
        dialog_id = leg.session.dialog_id
        if dialog_id is not None:
            self.b2bua.bridged[dialog_id] = self

    def _unindex(self, leg: Call) -> None:
        dialog_id = leg.session.dialog_id
        if dialog_id is not None and self.b2bua.bridged.get(dialog_id) is self:
            del self.b2bua.bridged[dialog_id]

    def _event(self, leg: Call, event: SessionEvent) -> bool:
        if self._released:
            return True
        if isinstance(event, DialogRequestReceived) and event.request.method == "REFER":
            self._refer(leg, event.request)
            return True
        attended = self._attended
        if attended is not None:
            if leg is attended.leg:
                self._attended_event(attended, leg, event)
                return True
            if leg is attended.transferor and isinstance(event, Terminated):
                log.info("call %s: the transferor left; the transfer goes on", leg.call_id)
                return True
        pending = self._pending
        if pending is not None:
            if pending.won is not None and leg is pending.won.leg and isinstance(event, Answered):
                self._take_over(pending, pending.won)
                return True
            if leg is pending.transferor and isinstance(event, Terminated):
                log.info("call %s: the transferor left; the transfer goes on", leg.call_id)
                return True
        connect = self._connecting
        if connect is not None and connect.sent and leg is connect.transferee:
            if isinstance(event, ReinviteAnswered):
                self._connecting = None
                response = event.response
                content_type = response.get("content-type") if response.body else None
                try:
                    connect.target.ack(body=response.body, content_type=content_type)
                except SessionError as exc:
                    log.info("call %s: the target's ACK not sent: %s", leg.call_id, exc)
                return True
            if isinstance(event, ReinviteFailed):
                if event.response is None:
                    connect.sent = False  # our 491 back-off was overtaken: again once the leg is free
                    return True
                log.info("call %s: the transferee refused the target's media (%s)", leg.call_id, event.status)
                self._connecting = None
                _hang_up(connect.target)
                _hang_up(connect.transferee)
                return True
        return False

    def close(self) -> None:
        """The bridge is over: stop what is under way (its calls are dropped, the event says 487)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for leg in self.legs:
            self._unindex(leg)
        attended, self._attended = self._attended, None
        if attended is not None:
            if attended.task is not None:
                attended.task.cancel()
            if attended.leg is not None:
                _hang_up(attended.leg)
            if attended.session is not None:
                attended.session.close()
            self._announce(attended, 487)
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.task is not None:
            pending.task.cancel()
        for leg in pending.legs:
            _hang_up(leg)
        if pending.session is not None:
            pending.session.close()
        self._announce(pending, 487)

    # ------------------------------------------------------------------------------------- the REFER

    def _refer(self, leg: Call, request: Request) -> None:
        if leg not in self.legs:
            _respond(leg, request, 403, "Forbidden (not in this call any more)")
            return
        extension = self._parties.get(leg)
        if extension is None:
            _respond(leg, request, 403, "Forbidden (a trunk's party cannot transfer calls)")
            return
        if self._busy():
            _respond(leg, request, 491, "Request Pending (a transfer is under way)")
            return
        target = parse_refer(request)
        if isinstance(target, ReferRefused):
            _respond(leg, request, target.status, target.reason)
            return
        if isinstance(target, AttendedTarget):
            self._attend(leg, request, target, extension)
            return
        side = Side.A if leg is self.legs[0] else Side.B
        transferee = self.legs[1] if side is Side.A else self.legs[0]
        pending = _Transfer(leg, transferee, side, extension, request, target)
        self._pending = pending
        log.info("call %s: %s transfers to %s", leg.call_id, extension, format_dialstring(target.dialled))
        pending.task = asyncio.ensure_future(self._run(pending))

    async def _run(self, t: _Transfer) -> None:
        try:
            route = await self._resolve(t)
            if isinstance(route, Refused):
                self._pending = None
                _respond(t.transferor, t.request, route.status, route.reason)
                return
            self._accept(t)
            outcome = await self._ring(t, route)
        except Exception:
            log.exception("call %s: transfer failed", t.transferor.call_id)
            outcome = 500
        if self._pending is not t:
            return
        if isinstance(outcome, int):
            self._fail(t, outcome)
            return
        # The target's leg joins the call: its answer (then all it reports) goes to the bridge.
        t.won = outcome
        winner = outcome.leg
        winner.events = self.call.queue
        self.call.queue.put_nowait((winner, outcome.answer))
        while not t.queue.empty():
            leg, event = t.queue.get_nowait()
            if leg is winner:
                self.call.queue.put_nowait((leg, event))

    def _busy(self) -> bool:
        """A transfer is under way in this call (or it is over: another call took its party)."""
        return self._released or any(
            state is not None for state in (self._pending, self._attended, self._connecting)
        )

    def _accept(self, t: _Transfer | _Attended) -> None:
        """202 for the REFER, then NOTIFY ``100 Trying`` (``id`` from the dialog's second REFER on)."""
        count = self._accepted[t.transferor] = self._accepted.get(t.transferor, 0) + 1
        if count > 1:
            t.event_id = str(t.request.cseq.seq)
        _respond(
            t.transferor, t.request, 202, headers=() if t.target.subscribe else (("Refer-Sub", "false"),)
        )
        self._notify(t, 100)

    async def _resolve(self, t: _Transfer) -> Route:
        b2bua = self.b2bua
        try:
            async with asyncio.timeout(b2bua.resolve_timeout):
                route = await b2bua.resolver.resolve(t.target.dialled, FromEmployee(t.extension))
        except TimeoutError:
            return Refused(503, "Service Unavailable (routing timed out)")
        if isinstance(route, ToExtensionProcessing):  # an office number: its destination, no greeting
            route = b2bua.resolver.resolve_destination(route.number.default, trunk=route.number.trunk)
        return route

    # ------------------------------------------------------------------------------ attended transfer

    def _attend(self, leg: Call, request: Request, target: AttendedTarget, extension: str) -> None:
        """A REFER with Replaces (RFC 5589 §7): the party of the call it names takes the transferor's
        place."""
        side = Side.A if leg is self.legs[0] else Side.B
        transferee = self.legs[1] if side is Side.A else self.legs[0]
        found = self._find(target.replaces)
        if isinstance(found, tuple) and found[0] is not self and found[0]._busy():
            _respond(leg, request, 491, "Request Pending (a transfer of the other call is under way)")
            return
        t = _Attended(leg, transferee, side, extension, request, target)
        self._accept(t)
        if isinstance(found, int):
            self._attended_failed(t, found)
            return
        other, replaced = found
        if other is self or other._parties.get(replaced) != extension:
            self._attended_failed(t, 403)  # RFC 3891 §3: not the transferor's to replace
            return
        handover = other._release(replaced, self.call.queue, media=self.call.media is not None)
        t.leg, t.party = handover.leg, handover.party
        self._attended = t
        self.call.adopted.append(handover.leg)
        log.info("call %s: %s transfers to %s (attended)", leg.call_id, extension, t.party.ident)
        media = self.call.media
        if media is None:
            t.offer = b""  # offerless: its offer goes to the transferee (RFC 3725 flow I)
            self._attend_step()
            return
        if handover.moved is not None:
            try:
                media.adopt(t.side, handover.moved)
            except MediaError as exc:
                log.warning("call %s: cannot take over the replaced party's media: %s", leg.call_id, exc)
                handover.moved.session.close()
            else:
                self._attended_done(t)
                return
        t.task = asyncio.ensure_future(self._offer_to(t))

    def _find(self, replaces: Replaces) -> tuple[Transfers, Call] | int:
        """The bridged call and leg ``replaces`` names (RFC 3891 §3: the to-tag is our tag, the from-tag the
        peer's; swapped too), else the status that says why not (481 none, 403 not bridged, 603 ended)."""
        r = replaces
        names = (DialogId(r.call_id, r.to_tag, r.from_tag), DialogId(r.call_id, r.from_tag, r.to_tag))
        for name in names:
            owner = self.b2bua.bridged.get(name)
            leg = (
                None if owner is None else next((x for x in owner.legs if x.session.dialog_id == name), None)
            )
            if owner is not None and leg is not None:
                if leg.terminated:
                    return 603
                return 486 if r.early_only else (owner, leg)
        for a, legs in self.b2bua.active.items():
            for leg in (a, *legs):
                if leg.session.dialog_id in names:
                    return 603 if leg.terminated else 403
        return 481

    def _release(self, replaced: Call, queue: CallQueue, *, media: bool) -> _Handover:
        """An attended transfer in another call takes the party ``replaced`` talks to here: its leg (events
        to ``queue`` from now on; with ``media`` its RTP session too) is handed over, ``replaced`` gets our
        BYE, and this bridge ends without touching that party."""
        party = self.legs[1] if replaced is self.legs[0] else self.legs[0]
        side = Side.A if party is self.legs[0] else Side.B
        self._released = True
        for leg in self.legs:
            self._unindex(leg)
        self.call.given.add(party)
        moved = None
        anchored = self.call.media
        if media and anchored is not None:
            try:
                moved = anchored.detach(side)
            except MediaError as exc:
                log.info("call %s: the replaced party's media stays: %s", party.call_id, exc)
        party.events = queue
        own = self.call.queue
        waiting = []
        while not own.empty():
            waiting.append(own.get_nowait())
        for item in waiting:
            (queue if item[0] is party else own).put_nowait(item)
        _hang_up(replaced)
        return _Handover(party, self._who(party), moved)

    def _who(self, leg: Call) -> _Party:
        dialog = leg.session.dialog
        contact = None if dialog is None else str(dialog.remote_target)
        extension = self._parties.get(leg)
        if extension is None:
            number = _number(leg)
            return _Party(None, "external", number, number, contact)
        employee = self.b2bua._employee(extension)
        return _Party(extension, "employee", extension, employee.sip_user if employee else extension, contact)

    async def _offer_to(self, t: _Attended) -> None:
        """Anchored here, not in the other call: offer the replaced party a new port of ours."""
        media = self.call.media
        assert media is not None
        try:
            session, sdp = await media.offer_replacement()
        except MediaError as exc:
            log.error("call %s: no media for the replaced party: %s", t.transferor.call_id, exc)
            if self._attended is t:
                self._attended_failed(t, 503)
            return
        if self._attended is not t:
            session.close()
            return
        t.session, t.sdp, t.offer = session, sdp, bytes(sdp)
        self._attend_step()

    def _attend_step(self) -> None:
        """Re-INVITE the replaced party (our offer, or none) once it is free for it."""
        t = self._attended
        if t is None or t.sent or t.offer is None or t.leg is None:
            return
        if t.leg.state is not SessionState.CONFIRMED:
            return  # busy with a re-INVITE (or ending: its Terminated follows)
        try:
            t.leg.reinvite(body=t.offer, content_type="application/sdp" if t.offer else None)
        except SessionError as exc:
            log.info("call %s: cannot re-INVITE the replaced party: %s", t.leg.call_id, exc)
            return
        t.sent = True

    def _attended_event(self, t: _Attended, leg: Call, event: SessionEvent) -> None:
        """An event of the replaced party while its re-INVITE is out."""
        if isinstance(event, ReinviteAnswered) and t.sent:
            self._attended_answered(t, event)
        elif isinstance(event, ReinviteFailed) and t.sent:
            if event.response is None:
                t.sent = False  # our 491 back-off was overtaken: again once the leg is free
            else:
                self._attended_failed(t, event.status)
        elif isinstance(event, Terminated):
            self._attended_failed(t, 487)
        elif isinstance(event, ReinviteReceived):
            try:
                leg.reject_reinvite(491)
            except SessionError as exc:
                log.debug("call %s: %s", leg.call_id, exc)
        elif isinstance(event, DialogRequestReceived):
            _respond(leg, event.request, 500, headers=(("Retry-After", "1"),))

    def _attended_answered(self, t: _Attended, event: ReinviteAnswered) -> None:
        leg, response = t.leg, event.response
        assert leg is not None
        media = self.call.media
        if t.session is not None and t.sdp is not None:
            assert media is not None
            try:
                media.replace(t.side, t.session, t.sdp, response.body)
            except MediaError as exc:
                log.warning("call %s: cannot relay the replaced party's media: %s", leg.call_id, exc)
                self._attended_failed(t, 488)
                return
            t.session = None
        elif event.answer_owed and response.body:
            self._connecting = _Connect(t.transferee, leg, response.body, response.get("content-type"))
        else:
            log.warning("call %s: the replaced party answered without an offer", leg.call_id)
            self._attended_failed(t, 488)
            return
        self._attended_done(t)

    def _attended_done(self, t: _Attended) -> None:
        """The replaced party takes the transferor's place (relayed, or being connected to the transferee)."""
        assert t.leg is not None and t.party is not None
        call, party = self.call, t.party
        self._attended = None
        self._take_place(t, t.leg, party.extension)
        call.answered_by, call.answered_contact = party.answered_by, party.contact
        call.destination, call.transferred_by = (party.kind, party.ident), t.extension
        self.b2bua._uncount_busy(call, t.extension)
        if party.extension is not None:
            self.b2bua._count_busy(call, party.extension)
        self._announce(t, 200)
        log.info("call %s: transferred by %s to %s (attended)", t.leg.call_id, t.extension, party.ident)

    def _attended_failed(self, t: _Attended, status: int) -> None:
        """Tell the transferor; a replaced party already handed over is hung up (its call is gone), and
        without the transferor the transferee too."""
        if self._attended is t:
            self._attended = None
        if t.session is not None:
            t.session.close()
            t.session = None
        if t.leg is not None:
            _hang_up(t.leg)
        self._notify(t, status, final=True)
        self._announce(t, status)
        log.info("call %s: attended transfer by %s failed: %s", t.transferor.call_id, t.extension, status)
        if t.transferor.terminated:
            _hang_up(t.transferee)

    # ------------------------------------------------------------------------------------ the target

    async def _ring(self, t: _Transfer, route: Route) -> _Won | int:
        """Ring ``route`` (an employee, a group and its fallbacks, a number out); the winner or a status."""
        b2bua = self.b2bua
        seen_groups: set[str] = set()
        for _ in range(calls.MAX_HOPS):
            if t.transferee.terminated:
                return 487
            if isinstance(route, ToEmployee):
                employee = route.employee
                t.destination = ("employee", employee.extension)
                won = await self._ring_employees(t, [employee], b2bua.ring_time(employee))
                if isinstance(won, _Won):
                    return won
                status = calls._fork_failure(won) if won else 480
                if status != 480 or employee.fallback is None:
                    return status  # busy (486) or declined (6xx): no fallback, as for any call
                route = b2bua.resolver.resolve_destination(employee.fallback)
                continue
            if isinstance(route, ToGroup):
                group = route.group
                if group.extension in seen_groups:
                    return 482
                seen_groups.add(group.extension)
                t.destination = ("group", group.extension)
                answered = await self._ring_group(t, route)
                if answered is not None:
                    return answered
                route = b2bua.resolver.resolve_destination(group.fallback)
                continue
            if isinstance(route, ToExternal):
                t.destination = ("external", route.e164)
                return await self._ring_external(t, route)
            if isinstance(route, Refused):
                return route.status
            return 480
        return 482

    async def _ring_group(self, t: _Transfer, route: ToGroup) -> _Won | None:
        for employees, seconds in await self.b2bua.group_steps(route.group):
            won = await self._ring_employees(t, employees, seconds)
            if isinstance(won, _Won):
                return won
            if t.transferee.terminated:
                return None
        return None

    async def _ring_employees(
        self, t: _Transfer, employees: list[Employee], seconds: float
    ) -> _Won | list[int]:
        """Ring every device of ``employees`` for ``seconds``: the first to answer, else the statuses."""
        b2bua = self.b2bua
        devices = [(e, uri, flow) for e in employees for uri, flow in await b2bua._devices(e)]
        if not devices or t.transferee.terminated:
            return []
        offer = await self._offer(t)
        if offer is None:
            return [503]
        body, content_type = offer
        legs: list[OutgoingCall] = []
        who: dict[OutgoingCall, tuple[Employee, SipUri]] = {}
        for employee, uri, flow in devices:
            leg = b2bua.ua.invite(
                uri,
                flow,
                from_=self._identity(t.transferee),
                to=NameAddr(employee.name, parse_uri(b2bua.registrar_aor(employee))),
                body=body,
                content_type=content_type,
                headers=self._referred_by(t),
                queue=t.queue,
            )
            legs.append(leg)
            who[leg] = (employee, uri)
        t.legs += legs
        self.call.legs.extend(legs)
        won = await self._fork(t, legs, seconds)
        if isinstance(won, list):
            return won
        leg, answer = won
        employee, device = who[leg]
        return _Won(leg, answer, employee.extension, employee.sip_user, str(device))

    async def _ring_external(self, t: _Transfer, route: ToExternal) -> _Won | int:
        b2bua = self.b2bua
        trunk = b2bua.directory.trunk(route.trunk)
        if trunk is None:
            return 503
        try:
            flow = await calls._trunk_flow(b2bua.ua, trunk)
        except OSError as exc:
            log.error("call %s: trunk %s unreachable: %s", t.transferee.call_id, trunk.name, exc)
            return 503
        offer = await self._offer(t)
        if offer is None or t.transferee.terminated:
            return 503 if offer is None else 487
        body, content_type = offer
        uri = calls.trunk_uri(trunk, route.e164)
        credentials = None
        if trunk.username is not None and trunk.password is not None:
            credentials = (trunk.username, trunk.password)
        leg = b2bua.ua.invite(
            uri,
            flow,
            from_=calls.trunk_identity(trunk, b2bua.directory),
            to=NameAddr(None, attrs.evolve(uri, port=None)),
            body=body,
            content_type=content_type,
            credentials=credentials,
            queue=t.queue,
        )
        t.legs.append(leg)
        self.call.legs.append(leg)
        won = await self._fork(t, [leg], b2bua.dial_out_seconds)
        if isinstance(won, list):
            return calls.external_failure(won)
        leg, answer = won
        post_dial = format_post_dial(route.post_dial)
        return _Won(leg, answer, None, route.e164, answer.response.get("contact"), post_dial)

    async def _offer(self, t: _Transfer) -> tuple[bytes, str | None] | None:
        """What the target's INVITE carries: our offer on a new port (anchored), else nothing (offerless);
        None when no RTP port is left."""
        media = self.call.media
        if media is None:
            return b"", None
        if t.session is None or t.offer is None:
            try:
                t.session, t.offer = await media.offer_replacement()
            except MediaError as exc:
                log.error("call %s: no media for the transfer target: %s", t.transferee.call_id, exc)
                return None
        return bytes(t.offer), "application/sdp"

    async def _fork(
        self, t: _Transfer, legs: list[OutgoingCall], seconds: float
    ) -> tuple[OutgoingCall, Answered] | list[int]:
        """The first of ``legs`` to answer within ``seconds`` (the others dropped), else their statuses
        (:func:`routing.b2bua.fork`). The first ring is NOTIFYed; anchored, the transferee hears it."""

        def ringing(leg: OutgoingCall, response: Response) -> None:
            if response.status in (180, 183) and not t.ringing:
                t.ringing = True
                self._notify(t, 180)
                if self.call.media is not None:  # the transferee hears the target ring
                    self.call.media.ring_back(t.side.other)

        def request(leg: Call, event: DialogRequestReceived) -> None:
            _respond(leg, event.request, 500, headers=(("Retry-After", "1"),))

        won = await calls.fork(
            t.queue,
            legs,
            seconds,
            ringing=ringing,
            request=request,
            call_id=t.transferee.call_id,
            unanswered="the transfer target did not answer",
        )
        if isinstance(won, calls._Failed):
            return list(won.statuses)
        assert isinstance(won, tuple)  # without a caller's leg nothing else ends the fork
        return won

    def _identity(self, leg: Call) -> NameAddr:
        """Who ``leg``'s party is, as the From of a call to the target: the caller's From, the employee we
        called, a number as ``sip:<number>@<our domain>``."""
        if isinstance(leg, IncomingCall):
            caller = leg.request.from_
            return NameAddr(caller.display_name, caller.uri)
        invite = leg.invite
        assert invite is not None
        uri = invite.to.uri
        if self._parties.get(leg) is None and isinstance(uri, SipUri) and uri.user:
            uri = SipUri("sip", uri.user, None, self.b2bua.directory.server.domain)
        return NameAddr(invite.to.display_name, uri)

    def _referred_by(self, t: _Transfer) -> tuple[tuple[str, str], ...]:
        if t.target.referred_by is not None:
            return (("Referred-By", t.target.referred_by),)
        employee = self.b2bua._employee(t.extension)
        if employee is None:
            return ()
        return (("Referred-By", f"<{self.b2bua.registrar_aor(employee)}>"),)

    # ------------------------------------------------------------------------------------ the outcome

    def _take_over(self, t: _Transfer, won: _Won) -> None:
        """The target answered (its Answered, now on the bridge's queue): it takes the transferor's place."""
        call, winner, answer = self.call, won.leg, won.answer
        media = call.media
        if media is not None:
            assert t.session is not None and t.offer is not None
            try:
                media.replace(t.side, t.session, t.offer, answer.response.body)
            except MediaError as exc:
                log.warning("call %s: cannot relay the transfer target's media: %s", winner.call_id, exc)
                _hang_up(winner)
                self._fail(t, 488)
                return
            t.session = None
        elif answer.answer_owed and answer.response.body:
            content_type = answer.response.get("content-type")
            self._connecting = _Connect(t.transferee, winner, answer.response.body, content_type)
        else:
            log.warning("call %s: the transfer target answered without an offer", winner.call_id)
            _hang_up(winner)
            self._fail(t, 488)
            return
        self._pending = None
        self._take_place(t, winner, won.party)
        call.answered_by, call.answered_contact = won.answered_by, won.contact
        call.destination, call.transferred_by = t.destination, t.extension
        self.b2bua._uncount_busy(call, t.extension)
        if won.party is not None:
            self.b2bua._count_busy(call, won.party)
        if won.post_dial:
            if media is None:
                log.warning("call %s: post-dial digits not sent (media not anchored)", winner.call_id)
            else:
                self.b2bua._post_dial(call, won.post_dial, t.side)
        self._announce(t, 200)
        log.info("call %s: transferred by %s to %s", winner.call_id, t.extension, won.answered_by)

    def _take_place(self, t: _Transfer | _Attended, leg: Call, party: str | None) -> None:
        """``leg`` (employee ``party``, None: outside) takes the transferor's place: the bridge is told, the
        transferor gets NOTIFY 200 and, unless it hangs up first, our BYE after :attr:`bye_after`."""
        self.legs[0 if t.side is Side.A else 1] = leg
        self._parties[leg] = party
        self._unindex(t.transferor)
        self._index(leg)
        self._replacement = (t.side, leg)
        self._notify(t, 200, final=True)
        if not t.transferor.terminated:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(self.bye_after, _hang_up, t.transferor))

    def _connect(self) -> None:
        """Not anchored: re-INVITE the transferee with the target's offer once it is free for it."""
        connect = self._connecting
        if connect is None or connect.sent:
            return
        if connect.target.terminated or connect.transferee.terminated:
            self._connecting = None
            return
        if connect.transferee.state is not SessionState.CONFIRMED:
            return  # busy with a re-INVITE of its own: after that
        try:
            connect.transferee.reinvite(body=connect.offer, content_type=connect.content_type)
        except SessionError as exc:
            log.info("call %s: cannot re-INVITE the transferee: %s", connect.transferee.call_id, exc)
            return
        connect.sent = True

    def _fail(self, t: _Transfer, status: int) -> None:
        """The target cannot be reached: tell the transferor; without one, the transferee is hung up on."""
        self._pending = None
        if t.session is not None:
            t.session.close()
            t.session = None
        if self.call.media is not None:
            self.call.media.relay_again()  # the ringback ends
        self._notify(t, status, final=True)
        self._announce(t, status)
        log.info("call %s: transfer by %s failed: %s", t.transferor.call_id, t.extension, status)
        if t.transferor.terminated:
            _hang_up(t.transferee)

    def _announce(self, t: _Transfer | _Attended, status: int) -> None:
        call_id = self.b2bua._call_id(self.call)
        if isinstance(t, _Attended):
            party = t.party
            if party is None:
                fact = CallTransferred(
                    call_id, t.extension, t.target.label, None, None, status, attended=True
                )
            else:
                fact = CallTransferred(
                    call_id, t.extension, party.ident, party.kind, party.ident, status, attended=True
                )
        else:
            kind, ident = t.destination if t.destination is not None else (None, None)
            fact = CallTransferred(
                call_id, t.extension, format_dialstring(t.target.dialled), kind, ident, status
            )
        self.b2bua._emit(fact)

    def _notify(self, t: _Transfer | _Attended, status: int, *, final: bool = False) -> None:
        """NOTIFY the transferor of ``status`` (RFC 3515 §2.4.4), unless it asked for none or has left."""
        leg = t.transferor
        if not t.target.subscribe or leg.terminated:
            return
        state = "terminated;reason=noresource" if final else f"active;expires={SUBSCRIPTION_SECONDS}"
        headers = [
            ("Event", "refer" if t.event_id is None else f"refer;id={t.event_id}"),
            ("Subscription-State", state),
        ]
        dialog = leg.session.dialog
        if dialog is not None and dialog.local_contact is not None:
            headers.append(
                ("Contact", str(dialog.local_contact))
            )  # RFC 6665 §4.1.2: NOTIFY is a target refresh
        try:
            leg.send_request("NOTIFY", body=sipfrag(status), content_type=SIPFRAG, headers=headers)
        except SessionError as exc:
            log.info("call %s: NOTIFY %s not sent: %s", leg.call_id, status, exc)


def _respond(
    leg: Call,
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    try:
        leg.respond(request, status, reason=reason, headers=headers)
    except SessionError as exc:
        log.info("call %s: %s to %s not sent: %s", leg.call_id, status, request.method, exc)


def _number(leg: Call) -> str:
    """The number of a party outside: the one we called, or the caller's (its From URI's user)."""
    invite = leg.invite
    if invite is None:
        return ""
    uri = invite.uri if isinstance(leg, OutgoingCall) else invite.from_.uri
    if isinstance(uri, TelUri):
        return uri.number
    if isinstance(uri, SipUri) and uri.user:
        return uri.user
    return str(uri)


def _hang_up(leg: Call) -> None:
    """BYE ``leg`` (CANCEL while it rings) if it is still there."""
    if leg.terminated:
        return
    try:
        leg.bye()
    except SessionError as exc:
        log.debug("call %s: already going: %s", leg.call_id, exc)
