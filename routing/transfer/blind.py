"""Blind transfer (RFC 5589 §6): the REFER's target is rung like a call to it, for the transferee.

The Refer-To is resolved as if the transferring employee had dialled it (their outbound scope applies; an
office number goes to its default destination, no greeting). The target is rung by the one ring routine of
every call (:func:`routing.calls.ringing.ring_route`): every device of an employee (its ring time and
fallback), a group's plan and fallback, a number through the trunk — with the transferee as the caller
(From) and a ``Referred-By`` (the REFER's, else the transferor's AOR; none towards a trunk). Meanwhile the
call stays as it is; anchored, the transferee hears our ringback once the target rings. NOTIFY ``180`` on
the first ring, then the final status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import attrs

from durchwahl.media.errors import MediaError
from durchwahl.media.sdes import SrtpPolicy
from durchwahl.media.sdp import SessionDescription
from durchwahl.media.session import RtpSession
from durchwahl.sipcore.message import Response
from durchwahl.sipcore.session import DialogRequestReceived, SessionEvent
from durchwahl.sipcore.ua import Call, CallQueue, IncomingCall, OutgoingCall
from durchwahl.sipcore.uri import NameAddr, SipUri

from ..calls.leg import respond
from ..calls.ringing import Ended, Unreached, Won, ring_route
from ..resolver import FromEmployee, Refused, Route, ToExtensionProcessing
from .common import Refer, notify
from .refer import ReferTarget

if TYPE_CHECKING:
    from .transfers import Transfers

__all__ = ["BlindTransfer"]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class BlindTransfer(Refer):
    """One accepted REFER without Replaces while it runs; rings its target as a
    :class:`~routing.calls.ringing.Ringer`."""

    target: ReferTarget
    owner: Transfers = attrs.field(kw_only=True)
    queue: CallQueue = attrs.field(factory=asyncio.Queue, init=False)
    legs: list[OutgoingCall] = attrs.field(factory=list, init=False)
    destination: tuple[str, str] | None = attrs.field(default=None, init=False)
    #: Anchored call: the target's RTP session and our offer on it (until the relay takes it over).
    session: RtpSession | None = attrs.field(default=None, init=False)
    offer_sdp: SessionDescription | None = attrs.field(default=None, init=False)
    rang: bool = attrs.field(default=False, init=False)
    won: Won | None = attrs.field(default=None, init=False)
    #: What the Ringer protocol asks: nobody's CANCEL ends the ringing; the log line for no answer.
    caller: Call | None = attrs.field(default=None, init=False)
    unanswered: str = attrs.field(default="the transfer target did not answer", init=False)

    # -------------------------------------------------------------------------------------- the run

    async def resolve(self) -> Route:
        """The target as a route, resolved as if the transferor had dialled it."""
        services = self.owner.services
        try:
            async with asyncio.timeout(services.resolve_timeout):
                route = await services.resolver.resolve(self.target.dialled, FromEmployee(self.extension))
        except TimeoutError:
            return Refused(503, "Service Unavailable (routing timed out)")
        if isinstance(route, ToExtensionProcessing):  # an office number: its destination, no greeting
            route = services.resolver.resolve_destination(route.number.default, trunk=route.number.trunk)
        return route

    async def ring(self, route: Route) -> Won | int:
        """Ring ``route`` and its fallbacks: the winner, or the status to report."""
        outcome = await ring_route(self.owner.services, self, route)
        if isinstance(outcome, Won):
            return outcome
        if isinstance(outcome, Ended):
            return 487
        assert isinstance(outcome, Unreached)
        return outcome.status

    def close(self) -> None:
        """The transfer is over without its target in the call: release what it holds."""
        if self.session is not None:
            self.session.close()
            self.session = None

    # --------------------------------------------------------------------------------- as a Ringer

    @property
    def call_id(self) -> str:
        return self.transferee.call_id or ""

    @property
    def gone(self) -> bool:
        return self.transferee.terminated

    def routed(self, kind: str, ident: str) -> None:
        self.destination = (kind, ident)

    async def offer(
        self, *, external: bool, srtp: SrtpPolicy = SrtpPolicy.OFF
    ) -> tuple[bytes, str | None] | Unreached:
        """Our offer on a new port (anchored), else nothing (offerless: RFC 3725 flow I). A transfer target
        is offered plain RTP whatever its SRTP policy (``srtp``): one that requires SRTP refuses it."""
        media = self.owner.call.media
        if media is None:
            return b"", None
        if self.session is None or self.offer_sdp is None:
            try:
                self.session, self.offer_sdp = await media.offer_replacement()
            except MediaError as exc:
                log.error("call %s: no media for the transfer target: %s", self.transferee.call_id, exc)
                return Unreached(503)
        return bytes(self.offer_sdp), "application/sdp"

    def identity(self) -> NameAddr:
        """Who the transferee is, as the From of a call to the target: the caller's From, the employee we
        called, a number as ``sip:<number>@<our domain>``."""
        leg = self.transferee
        if isinstance(leg, IncomingCall):
            caller = leg.request.from_
            return NameAddr(caller.display_name, caller.uri)
        invite = leg.invite
        assert invite is not None
        uri = invite.to.uri
        if self.owner.party_of(leg) is None and isinstance(uri, SipUri) and uri.user:
            uri = SipUri("sip", uri.user, None, self.owner.services.directory.server.domain)
        return NameAddr(invite.to.display_name, uri)

    def headers(self, *, to_trunk: bool) -> tuple[tuple[str, str], ...]:
        """``Referred-By`` (RFC 3892): the REFER's, else the transferor's AOR; none towards a trunk."""
        if to_trunk:
            return ()
        if self.target.referred_by is not None:
            return (("Referred-By", self.target.referred_by),)
        services = self.owner.services
        employee = services.employee(self.extension)
        if employee is None:
            return ()
        return (("Referred-By", f"<{services.registrar_aor(employee)}>"),)

    def started(self, legs: list[OutgoingCall]) -> None:
        self.legs += legs
        self.owner.call.legs.extend(legs)

    def ringing(self, leg: OutgoingCall, response: Response) -> None:
        """The first ring is NOTIFYed; anchored, the transferee hears it."""
        if response.status in (180, 183) and not self.rang:
            self.rang = True
            notify(self, 180)
            media = self.owner.call.media
            if media is not None:
                media.ring_back(self.side.other)

    def request_received(self, leg: Call, event: DialogRequestReceived) -> None:
        respond(leg, event.request, 500, headers=(("Retry-After", "1"),))

    def caller_event(self, event: SessionEvent) -> None:
        """Never called: a transfer target's ringing has no caller's leg."""
