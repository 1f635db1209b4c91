"""The REFERs of one bridged call: :class:`Transfers`, the bridge's hook (``routing.calls.bridge``).

A party of a bridged call, the *transferor*, sends REFER in its dialog; the other party is the *transferee*.

1. **Who may**: an employee's leg only; a trunk's leg gets 403 (a provider does not re-route our calls). A
   REFER while another is under way gets 491; on a leg that left the bridge 403; a refused target is
   answered as :func:`~routing.transfer.refer.parse_refer` or the resolver says (400, 403, 404, 484 …).
2. **Accepted**: 202, then NOTIFY ``SIP/2.0 100 Trying`` in the transferor's dialog, ``180 Ringing`` once
   the target rings, and the final status (``Refer-Sub: false``: 202 with it, and no NOTIFY).
3. **Ringing**: :mod:`~routing.transfer.blind` or :mod:`~routing.transfer.attended`. If the transferor
   hangs up meanwhile (many phones do right after the 202), the transfer goes on.
4. **Answered**: the target takes the transferor's place (:meth:`Transfers.take_place`). Anchored call: the
   relay now runs between the transferee's session and the target's (a held transferee is re-INVITEd to
   resume) and a number's post-dial digits follow; not anchored: the target's offer goes to the transferee
   in a re-INVITE, the transferee's answer to the target in our ACK (RFC 3725 flow I). NOTIFY ``200 OK``;
   the transferor should now hang up, else it gets our BYE after :attr:`Transfers.bye_after` seconds. The
   CDR names the target as who answered, the transferor in ``transferred_by``.
5. **Failed** (busy, no answer, nobody registered …): NOTIFY with that status; the call stays as it was and
   the transferor may resume it; if the transferor has left meanwhile, the transferee is hung up on.

Each accepted REFER ends in one :class:`~routing.events.CallTransferred` (status 487 when the call ended
before the transfer did). Not handled: REFER outside a dialog (the server answers 403), post-dial digits on a
call whose media is not anchored, an INVITE with ``Replaces`` (routed like any call).
"""

from __future__ import annotations

import asyncio
import logging

from durchwahl.media.errors import MediaError
from durchwahl.media.relay import Side
from durchwahl.sipcore.dialog import DialogId
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    Answered,
    DialogRequestReceived,
    ReinviteAnswered,
    ReinviteFailed,
    SessionError,
    SessionEvent,
    SessionState,
    Terminated,
)
from durchwahl.sipcore.ua import Call, CallQueue

from ..calls.leg import CallState, hang_up, respond
from ..calls.outbound import send_post_dial
from ..calls.ringing import Won
from ..calls.services import CallServices
from ..dialstring import format_dialstring
from ..events import CallTransferred
from ..resolver import Refused
from .attended import AttendedTransfer, Handover
from .blind import BlindTransfer
from .common import Connect, Party, Refer, notify, number_of
from .refer import AttendedTarget, ReferRefused, Replaces, parse_refer

__all__ = ["Transfers"]

log = logging.getLogger(__name__)


class Transfers:
    """The REFERs of one bridged call (see the module docstring).

    ``a`` and ``b`` are the bridged legs of ``call``, listed in ``services.bridged`` by dialog.
    :meth:`event` takes every event of the call first; when a target has taken a leg's place,
    :meth:`take_replacement` says which; once an attended transfer in another call has taken this call's
    party, :attr:`released` says the bridge is over. Ends with the task that runs the bridge (transfers
    still under way are dropped then)."""

    #: Seconds the transferor has to hang up after the final NOTIFY before the B2BUA does.
    bye_after: float = 4.0

    def __init__(self, services: CallServices, call: CallState, a: Call, b: Call) -> None:
        self.services = services
        self.call = call
        self.legs: list[Call] = [a, b]
        self._parties: dict[Call, str | None] = {a: self._party_a(), b: self._party_b()}
        self.pending: BlindTransfer | None = None
        self.attended: AttendedTransfer | None = None
        self.connecting: Connect | None = None
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
        return call.record.caller if call.trunk is None and call.record.caller else None

    def _party_b(self) -> str | None:
        """The callee's employee extension (None: a number called out)."""
        record = self.call.record
        if record.destination is not None and record.destination[0] in ("external", "emergency"):
            return None
        if record.answered_by is None:
            return None
        employee = self.services.directory.employee_by_sip_user(record.answered_by)
        return None if employee is None else employee.extension

    def party_of(self, leg: Call) -> str | None:
        """The employee extension of ``leg``'s party (None: outside the office)."""
        return self._parties.get(leg)

    # ------------------------------------------------------------------------------------ the bridge

    def event(self, leg: Call, event: SessionEvent) -> bool:
        """Take ``event`` if it belongs to a transfer (a REFER, the target's answer, the transferor leaving
        while it rings, the transferee's answer to our re-INVITE, the replaced party's events); true when
        taken (every event once :attr:`released`)."""
        taken = self._event(leg, event)
        if not taken and isinstance(event, Terminated) and leg in self.legs:
            self.close()  # the bridge ends with this leg (not only with the task: originate's may go on)
            return False
        if self.connecting is not None:
            self._connect()
        if self.attended is not None:
            self.attended.step()
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
            self.services.bridged[dialog_id] = self

    def _unindex(self, leg: Call) -> None:
        dialog_id = leg.session.dialog_id
        if dialog_id is not None and self.services.bridged.get(dialog_id) is self:
            del self.services.bridged[dialog_id]

    def _event(self, leg: Call, event: SessionEvent) -> bool:
        if self._released:
            return True
        if isinstance(event, DialogRequestReceived) and event.request.method == "REFER":
            self._refer(leg, event.request)
            return True
        attended = self.attended
        if attended is not None:
            if leg is attended.leg:
                attended.event(leg, event)
                return True
            if leg is attended.transferor and isinstance(event, Terminated):
                log.info("call %s: the transferor left; the transfer goes on", leg.call_id)
                return True
        pending = self.pending
        if pending is not None:
            if pending.won is not None and leg is pending.won.leg and isinstance(event, Answered):
                self._take_over(pending, pending.won)
                return True
            if leg is pending.transferor and isinstance(event, Terminated):
                log.info("call %s: the transferor left; the transfer goes on", leg.call_id)
                return True
        connect = self.connecting
        if connect is not None and connect.sent and leg is connect.transferee:
            if isinstance(event, ReinviteAnswered):
                self.connecting = None
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
                self.connecting = None
                hang_up(connect.target)
                hang_up(connect.transferee)
                return True
        return False

    def close(self) -> None:
        """The bridge is over: stop what is under way (its calls are dropped, the event says 487)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for leg in self.legs:
            self._unindex(leg)
        attended, self.attended = self.attended, None
        if attended is not None:
            if attended.task is not None:
                attended.task.cancel()
            attended.close()
            self.announce(attended, 487)
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if pending.task is not None:
            pending.task.cancel()
        for leg in pending.legs:
            hang_up(leg)
        pending.close()
        self.announce(pending, 487)

    # ------------------------------------------------------------------------------------- the REFER

    def _refer(self, leg: Call, request: Request) -> None:
        if leg not in self.legs:
            respond(leg, request, 403, "Forbidden (not in this call any more)")
            return
        extension = self._parties.get(leg)
        if extension is None:
            respond(leg, request, 403, "Forbidden (a trunk's party cannot transfer calls)")
            return
        if self.busy():
            respond(leg, request, 491, "Request Pending (a transfer is under way)")
            return
        target = parse_refer(request)
        if isinstance(target, ReferRefused):
            respond(leg, request, target.status, target.reason)
            return
        side = Side.A if leg is self.legs[0] else Side.B
        transferee = self.legs[1] if side is Side.A else self.legs[0]
        if isinstance(target, AttendedTarget):
            self._attend(leg, transferee, side, extension, request, target)
            return
        pending = BlindTransfer(leg, transferee, side, extension, request, target, owner=self)
        self.pending = pending
        log.info("call %s: %s transfers to %s", leg.call_id, extension, format_dialstring(target.dialled))
        pending.task = asyncio.ensure_future(self._run(pending))

    async def _run(self, t: BlindTransfer) -> None:
        try:
            route = await t.resolve()
            if isinstance(route, Refused):
                self.pending = None
                respond(t.transferor, t.request, route.status, route.reason)
                return
            self._accept(t)
            outcome = await t.ring(route)
        except Exception:
            log.exception("call %s: transfer failed", t.transferor.call_id)
            outcome = 500
        if self.pending is not t:
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

    def busy(self) -> bool:
        """A transfer is under way in this call (or it is over: another call took its party)."""
        return self._released or any(
            state is not None for state in (self.pending, self.attended, self.connecting)
        )

    def _accept(self, t: Refer) -> None:
        """202 for the REFER, then NOTIFY ``100 Trying`` (``id`` from the dialog's second REFER on)."""
        count = self._accepted[t.transferor] = self._accepted.get(t.transferor, 0) + 1
        if count > 1:
            t.event_id = str(t.request.cseq.seq)
        respond(t.transferor, t.request, 202, headers=() if t.target.subscribe else (("Refer-Sub", "false"),))
        notify(t, 100)

    # ------------------------------------------------------------------------------ attended transfer

    def _attend(
        self,
        leg: Call,
        transferee: Call,
        side: Side,
        extension: str,
        request: Request,
        target: AttendedTarget,
    ) -> None:
        """A REFER with Replaces (RFC 5589 §7): the party of the call it names takes the transferor's
        place (see :mod:`routing.transfer.attended`)."""
        found = self._find(target.replaces)
        if isinstance(found, tuple) and found[0] is not self and found[0].busy():
            respond(leg, request, 491, "Request Pending (a transfer of the other call is under way)")
            return
        t = AttendedTransfer(leg, transferee, side, extension, request, target, owner=self)
        self._accept(t)
        if isinstance(found, int):
            t.failed(found)
            return
        other, replaced = found
        if other is self or other.party_of(replaced) != extension:
            t.failed(403)  # RFC 3891 §3: not the transferor's to replace
            return
        self.attended = t
        t.take(other.release(replaced, self.call.queue, media=self.call.media is not None))

    def _find(self, replaces: Replaces) -> tuple[Transfers, Call] | int:
        """The bridged call and leg ``replaces`` names (RFC 3891 §3: the to-tag is our tag, the from-tag the
        peer's; swapped too), else the status that says why not (481 none, 403 not bridged, 603 ended)."""
        r = replaces
        names = (DialogId(r.call_id, r.to_tag, r.from_tag), DialogId(r.call_id, r.from_tag, r.to_tag))
        for name in names:
            owner = self.services.bridged.get(name)
            if not isinstance(owner, Transfers):
                continue
            leg = next((x for x in owner.legs if x.session.dialog_id == name), None)
            if leg is not None:
                if leg.terminated:
                    return 603
                return 486 if r.early_only else (owner, leg)
        for first, state in self.services.active.items():
            for leg in (first, *state.legs):
                if leg.session.dialog_id in names:
                    return 603 if leg.terminated else 403
        return 481

    def release(self, replaced: Call, queue: CallQueue, *, media: bool) -> Handover:
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
        hang_up(replaced)
        return Handover(party, self._who(party), moved)

    def _who(self, leg: Call) -> Party:
        dialog = leg.session.dialog
        contact = None if dialog is None else str(dialog.remote_target)
        extension = self._parties.get(leg)
        if extension is None:
            number = number_of(leg)
            return Party(None, "external", number, number, contact)
        employee = self.services.employee(extension)
        return Party(extension, "employee", extension, employee.sip_user if employee else extension, contact)

    # ------------------------------------------------------------------------------------ the outcome

    def _take_over(self, t: BlindTransfer, won: Won) -> None:
        """The target answered (its Answered, now on the bridge's queue): it takes the transferor's place."""
        call, winner, answer = self.call, won.leg, won.answer
        media = call.media
        if media is not None:
            assert t.session is not None and t.offer_sdp is not None
            try:
                media.replace(t.side, t.session, t.offer_sdp, answer.response.body)
            except MediaError as exc:
                log.warning("call %s: cannot relay the transfer target's media: %s", winner.call_id, exc)
                hang_up(winner)
                self._fail(t, 488)
                return
            t.session = None
        elif answer.answer_owed and answer.response.body:
            content_type = answer.response.get("content-type")
            self.connecting = Connect(t.transferee, winner, answer.response.body, content_type)
        else:
            log.warning("call %s: the transfer target answered without an offer", winner.call_id)
            hang_up(winner)
            self._fail(t, 488)
            return
        self.pending = None
        self.take_place(t, winner, won.party)
        record = call.record
        record.answered_by, record.answered_contact = won.answered_by, won.contact
        record.destination, record.transferred_by = t.destination, t.extension
        self.services.uncount_busy(call, t.extension)
        if won.party is not None:
            self.services.count_busy(call, won.party)
        if won.post_dial:
            if media is None:
                log.warning("call %s: post-dial digits not sent (media not anchored)", winner.call_id)
            else:
                send_post_dial(self.services, call, won.post_dial, t.side)
        self.announce(t, 200)
        log.info("call %s: transferred by %s to %s", winner.call_id, t.extension, won.answered_by)

    def take_place(self, t: Refer, leg: Call, party: str | None) -> None:
        """``leg`` (employee ``party``, None: outside) takes the transferor's place: the bridge is told, the
        transferor gets NOTIFY 200 and, unless it hangs up first, our BYE after :attr:`bye_after`."""
        self.legs[0 if t.side is Side.A else 1] = leg
        self._parties[leg] = party
        self._unindex(t.transferor)
        self._index(leg)
        self._replacement = (t.side, leg)
        notify(t, 200, final=True)
        if not t.transferor.terminated:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(self.bye_after, hang_up, t.transferor))

    def _connect(self) -> None:
        """Not anchored: re-INVITE the transferee with the target's offer once it is free for it."""
        connect = self.connecting
        if connect is None or connect.sent:
            return
        if connect.target.terminated or connect.transferee.terminated:
            self.connecting = None
            return
        if connect.transferee.state is not SessionState.CONFIRMED:
            return  # busy with a re-INVITE of its own: after that
        try:
            connect.transferee.reinvite(body=connect.offer, content_type=connect.content_type)
        except SessionError as exc:
            log.info("call %s: cannot re-INVITE the transferee: %s", connect.transferee.call_id, exc)
            return
        connect.sent = True

    def _fail(self, t: BlindTransfer, status: int) -> None:
        """The target cannot be reached: tell the transferor; without one, the transferee is hung up on."""
        self.pending = None
        t.close()
        if self.call.media is not None:
            self.call.media.relay_again()  # the ringback ends
        notify(t, status, final=True)
        self.announce(t, status)
        log.info("call %s: transfer by %s failed: %s", t.transferor.call_id, t.extension, status)
        if t.transferor.terminated:
            hang_up(t.transferee)

    def announce(self, t: BlindTransfer | AttendedTransfer, status: int) -> None:
        call_id = self.call.call_id
        if isinstance(t, AttendedTransfer):
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
        self.services.emit(fact)
