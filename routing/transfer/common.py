"""What blind and attended transfers share: the accepted REFER's record, the NOTIFYs to the transferor, and
the connection of a party whose media is not anchored (RFC 3725 flow I)."""

from __future__ import annotations

import asyncio
import logging

import attrs

from durchwahl.media.relay import Side
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import SessionError
from durchwahl.sipcore.ua import Call, OutgoingCall
from durchwahl.sipcore.uri import SipUri, TelUri

from .refer import SIPFRAG, AttendedTarget, ReferTarget, notify_headers, sipfrag

__all__ = ["Connect", "Party", "Refer", "notify", "number_of"]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Refer:
    """An accepted REFER while it runs: who transfers (``transferor``, the employee ``extension``), whom
    (``transferee``), the REFER itself and what it asks for."""

    transferor: Call
    transferee: Call
    #: The transferor's side of the bridge: the target takes it.
    side: Side
    extension: str
    request: Request
    target: ReferTarget | AttendedTarget
    #: The ``id`` of the NOTIFYs' ``Event`` (from the dialog's second accepted REFER on).
    event_id: str | None = attrs.field(default=None, init=False)
    task: asyncio.Task[None] | None = attrs.field(default=None, init=False)


def notify(t: Refer, status: int, *, final: bool = False) -> None:
    """NOTIFY the transferor of ``status`` (RFC 3515 §2.4.4), unless it asked for none or has left."""
    leg = t.transferor
    if not t.target.subscribe or leg.terminated:
        return
    headers = notify_headers(t.event_id, final=final)
    dialog = leg.session.dialog
    if dialog is not None and dialog.local_contact is not None:
        headers.append(("Contact", str(dialog.local_contact)))  # RFC 6665 §4.1.2: NOTIFY is a target refresh
    try:
        leg.send_request("NOTIFY", body=sipfrag(status), content_type=SIPFRAG, headers=headers)
    except SessionError as exc:
        log.info("call %s: NOTIFY %s not sent: %s", leg.call_id, status, exc)


@attrs.define
class Connect:
    """Not anchored: the target's offer (from its 2xx) goes to the transferee in a re-INVITE of ours; the
    answer to it goes to the target in the ACK it waits for."""

    transferee: Call
    target: Call
    offer: bytes
    content_type: str | None
    sent: bool = False


@attrs.frozen
class Party:
    """The party an attended transfer brings, as the CDR and the event name it: an employee (its extension
    and SIP user), else a number outside (``external``)."""

    extension: str | None
    kind: str
    ident: str
    answered_by: str
    contact: str | None


def number_of(leg: Call) -> str:
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
