"""Attended transfer (RFC 5589 §7): the REFER's ``Replaces`` names the transferor's dialog in another call
of ours, whose other party (the *replaced party*) takes the transferor's place here, rung by no one.

The other call hands the party over and ends (:meth:`~routing.transfer.transfers.Transfers.release`: our
BYE to the transferor's leg there, the party's leg untouched). Then:

* both calls anchored: its RTP session moves into this call's relay — no SIP to it at all;
* this call anchored, the other not: a re-INVITE offers it a new port of ours, its answer starts the relay;
* this call not anchored: an offerless re-INVITE; its offer goes to the transferee in a re-INVITE, the
  answer back in our ACK (RFC 3725 flow I).

NOTIFY ``200 OK`` (or the status of a failed re-INVITE; the replaced party is then hung up). The outcome
when no dialog matches: ``481``; not the transferor's, not yet bridged, or this call's own: ``403``; ended:
``603``; ``early-only``: ``486`` (RFC 3891 §3: our dialogs are confirmed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import attrs

from durchwahl.media.errors import MediaError
from durchwahl.media.sdp import SessionDescription
from durchwahl.media.session import RtpSession
from durchwahl.sipcore.session import (
    DialogRequestReceived,
    ReinviteAnswered,
    ReinviteFailed,
    ReinviteReceived,
    SessionError,
    SessionEvent,
    SessionState,
    Terminated,
)
from durchwahl.sipcore.ua import Call

from ..calls.leg import hang_up, respond
from ..calls.media_anchor import MovedLeg
from .common import Connect, Party, Refer, notify
from .refer import AttendedTarget

if TYPE_CHECKING:
    from .transfers import Transfers

__all__ = ["AttendedTransfer", "Handover"]

log = logging.getLogger(__name__)


@attrs.frozen
class Handover:
    """What the other call of an attended transfer hands over: the replaced party's leg, who it is, and
    its RTP session when both calls are anchored."""

    leg: Call
    party: Party
    moved: MovedLeg | None


@attrs.define(eq=False)
class AttendedTransfer(Refer):
    """One accepted REFER with Replaces while it runs (the replaced party's re-INVITE is out)."""

    target: AttendedTarget
    owner: Transfers = attrs.field(kw_only=True)
    #: The replaced party, once the other call handed it over.
    leg: Call | None = attrs.field(default=None, init=False)
    party: Party | None = attrs.field(default=None, init=False)
    #: What its re-INVITE offers: our SDP on ``session`` (anchored), nothing (offerless); None: not yet.
    offer: bytes | None = attrs.field(default=None, init=False)
    session: RtpSession | None = attrs.field(default=None, init=False)
    sdp: SessionDescription | None = attrs.field(default=None, init=False)
    sent: bool = attrs.field(default=False, init=False)

    def take(self, handover: Handover) -> None:
        """The other call handed its party over: bring it into this call (see the module docstring)."""
        owner = self.owner
        self.leg, self.party = handover.leg, handover.party
        owner.call.adopted.append(handover.leg)
        log.info(
            "call %s: %s transfers to %s (attended)",
            self.transferor.call_id,
            self.extension,
            self.party.ident,
        )
        media = owner.call.media
        if media is None:
            self.offer = b""  # offerless: its offer goes to the transferee (RFC 3725 flow I)
            self.step()
            return
        if handover.moved is not None:
            try:
                media.adopt(self.side, handover.moved)
            except MediaError as exc:
                log.warning(
                    "call %s: cannot take over the replaced party's media: %s", self.transferor.call_id, exc
                )
                handover.moved.session.close()
            else:
                self.done()
                return
        self.task = asyncio.ensure_future(self._offer_to())

    async def _offer_to(self) -> None:
        """Anchored here, not in the other call: offer the replaced party a new port of ours."""
        media = self.owner.call.media
        assert media is not None
        try:
            session, sdp = await media.offer_replacement()
        except MediaError as exc:
            log.error("call %s: no media for the replaced party: %s", self.transferor.call_id, exc)
            if self.owner.attended is self:
                self.failed(503)
            return
        if self.owner.attended is not self:
            session.close()
            return
        self.session, self.sdp, self.offer = session, sdp, bytes(sdp)
        self.step()

    def step(self) -> None:
        """Re-INVITE the replaced party (our offer, or none) once it is free for it."""
        if self.sent or self.offer is None or self.leg is None:
            return
        if self.leg.state is not SessionState.CONFIRMED:
            return  # busy with a re-INVITE (or ending: its Terminated follows)
        try:
            self.leg.reinvite(body=self.offer, content_type="application/sdp" if self.offer else None)
        except SessionError as exc:
            log.info("call %s: cannot re-INVITE the replaced party: %s", self.leg.call_id, exc)
            return
        self.sent = True

    def event(self, leg: Call, event: SessionEvent) -> None:
        """An event of the replaced party while its re-INVITE is out."""
        if isinstance(event, ReinviteAnswered) and self.sent:
            self._answered(event)
        elif isinstance(event, ReinviteFailed) and self.sent:
            if event.response is None:
                self.sent = False  # our 491 back-off was overtaken: again once the leg is free
            else:
                self.failed(event.status)
        elif isinstance(event, Terminated):
            self.failed(487)
        elif isinstance(event, ReinviteReceived):
            try:
                leg.reject_reinvite(491)
            except SessionError as exc:
                log.debug("call %s: %s", leg.call_id, exc)
        elif isinstance(event, DialogRequestReceived):
            respond(leg, event.request, 500, headers=(("Retry-After", "1"),))

    def _answered(self, event: ReinviteAnswered) -> None:
        leg, response = self.leg, event.response
        assert leg is not None
        media = self.owner.call.media
        if self.session is not None and self.sdp is not None:
            assert media is not None
            try:
                media.replace(self.side, self.session, self.sdp, response.body)
            except MediaError as exc:
                log.warning("call %s: cannot relay the replaced party's media: %s", leg.call_id, exc)
                self.failed(488)
                return
            self.session = None
        elif event.answer_owed and response.body:
            self.owner.connecting = Connect(self.transferee, leg, response.body, response.get("content-type"))
        else:
            log.warning("call %s: the replaced party answered without an offer", leg.call_id)
            self.failed(488)
            return
        self.done()

    def done(self) -> None:
        """The replaced party takes the transferor's place (relayed, or being connected to the transferee)."""
        assert self.leg is not None and self.party is not None
        owner, party = self.owner, self.party
        owner.attended = None
        owner.take_place(self, self.leg, party.extension)
        record = owner.call.record
        record.answered_by, record.answered_contact = party.answered_by, party.contact
        record.destination, record.transferred_by = (party.kind, party.ident), self.extension
        owner.services.uncount_busy(owner.call, self.extension)
        if party.extension is not None:
            owner.services.count_busy(owner.call, party.extension)
        owner.announce(self, 200)
        log.info("call %s: transferred by %s to %s (attended)", self.leg.call_id, self.extension, party.ident)

    def failed(self, status: int) -> None:
        """Tell the transferor; a replaced party already handed over is hung up (its call is gone), and
        without the transferor the transferee too."""
        if self.owner.attended is self:
            self.owner.attended = None
        self.close()
        notify(self, status, final=True)
        self.owner.announce(self, status)
        log.info(
            "call %s: attended transfer by %s failed: %s", self.transferor.call_id, self.extension, status
        )
        if self.transferor.terminated:
            hang_up(self.transferee)

    def close(self) -> None:
        """Release what the transfer holds: its RTP session, the replaced party's leg."""
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.leg is not None:
            hang_up(self.leg)
