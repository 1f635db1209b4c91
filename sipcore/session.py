"""The INVITE session usage of a dialog (RFC 3261 §13, §14, §15; RFC 6026 for 2xx handling), both roles.

:class:`InviteSession` is a sans-I/O machine above the transaction layer. It takes commands from the TU
(``send_invite``, ``ringing``, ``answer``, ``reject``, ``cancel``, ``bye``, ``reinvite``, ``ack``,
``send_request``, ``respond``), messages the transaction layer hands up (``receive_request``,
``receive_response``, ``transaction_failed``) and the time (``handle_timer``); it says when it next needs
waking (``get_timer``) and queues events, drained with ``next_event``:

* what to send — :class:`SendRequest` (in a *new client transaction*), :class:`SendCancel` (ask the
  transaction layer to CANCEL the INVITE; it builds the CANCEL, §9.1), :class:`SendResponse` (on the
  *server transaction* the response's top Via branch and CSeq method name), :class:`SendDirect` (outside
  any transaction: the ACK for a 2xx, §13.2.2.4, and UAS 2xx retransmissions, §13.3.1.4);
* what happened — :class:`InviteReceived`, :class:`ProvisionalReceived`, :class:`Answered`,
  :class:`Confirmed`, :class:`Rejected`, :class:`Cancelled`, :class:`ReinviteReceived`,
  :class:`ReinviteAnswered`, :class:`ReinviteFailed`, :class:`ReinviteConfirmed`, :class:`ReinviteCancelled`,
  :class:`DialogRequestReceived`, :class:`DialogResponseReceived`, :class:`AckTimedOut` and, last of all,
  :class:`Terminated`. Nothing is emitted after :class:`Terminated`.

All behaviour is in one table, ``_TRANSITIONS``: (state, input) → (action, next state). A command that has
no entry for the current state raises :class:`SessionError` (the TU's bug; nothing changed); a request that
cannot be handled gets the response RFC 3261 asks for (481, 491, 500 with Retry-After); a request reaching
a terminated session raises :class:`SessionError` with ``status`` 481 for the endpoint to answer.

CANCEL is the transaction layer's (``sipcore.transaction``): it answers an incoming CANCEL itself and the
endpoint passes the CANCEL of ``CancelReceived`` to :meth:`InviteSession.receive_request`; the session then
answers the INVITE (or re-INVITE) with 487. An outgoing CANCEL is :class:`SendCancel`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from .dialog import (
    MAX_FORWARDS,
    AnswerRetransmitted,
    Dialog,
    DialogConfirmed,
    DialogError,
    DialogId,
    DialogSet,
    DialogState,
    ForkAnswered,
    via_with_branch,
)
from .headers import CSeq, Header, Via, header_key, parse_via
from .message import Request, Response, make_response, seed_parsed
from .uri import NameAddr, Uri, parse_name_addr, parse_uri

__all__ = [
    "CONFIRMING_STATES",
    "DEFAULT_ALLOW",
    "EARLY_STATES",
    "ESTABLISHED_STATES",
    "AckTimedOut",
    "Answered",
    "Cancelled",
    "Confirmed",
    "DialogRequestReceived",
    "DialogResponseReceived",
    "InviteReceived",
    "InviteSession",
    "ProvisionalReceived",
    "ReinviteAnswered",
    "ReinviteCancelled",
    "ReinviteConfirmed",
    "ReinviteFailed",
    "ReinviteReceived",
    "Rejected",
    "Role",
    "SendCancel",
    "SendDirect",
    "SendRequest",
    "SendResponse",
    "SessionError",
    "SessionEvent",
    "SessionInput",
    "SessionState",
    "SessionTimers",
    "Terminated",
    "TerminationReason",
    "TransactionFailure",
]

_log = logging.getLogger(__name__)

#: Methods with a command of their own; ``send_request`` refuses them.
_OWN_COMMANDS: Final = frozenset({"INVITE", "ACK", "CANCEL", "BYE"})

#: Sent in INVITEs and 2xx unless the caller gives an Allow header (§13.2.1, §13.3.1.4: SHOULD).
DEFAULT_ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"


class SessionError(DialogError):
    """A command the state does not allow, or a message no session state can take.

    ``status`` (when set) is what the endpoint should answer an offending request with.
    """


class Role(enum.Enum):
    UAC = "uac"  # we sent the INVITE (and own the Call-ID, §14.1)
    UAS = "uas"  # we received it


class TransactionFailure(enum.Enum):
    """Why the transaction layer gave up on a transaction (§17.1.1.2 Timer B/F, §17.1.4, §17.2.4)."""

    TIMEOUT = "timeout"
    TRANSPORT = "transport"


class TerminationReason(enum.Enum):
    REJECTED = "rejected"  # non-2xx final to the initial INVITE, either direction
    CANCELLED = "cancelled"  # CANCEL sent or received before the answer
    LOCAL_BYE = "local-bye"
    REMOTE_BYE = "remote-bye"
    TIMEOUT = "timeout"  # initial INVITE client transaction timed out (treated as 408, §13.2.2)
    TRANSPORT_ERROR = "transport-error"
    ACK_TIMEOUT = "ack-timeout"  # 2xx retransmitted for 64*T1 without ACK (§13.3.1.4) -> BYE
    DIALOG_FAILED = "dialog-failed"  # 481/408/timeout for an in-dialog request (§12.2.1.2) -> BYE


@attrs.frozen
class SessionTimers:
    """RFC 3261 §17.1.1.1 timer bases. ``t1`` is the RTT estimate, ``t2`` the cap for 2xx retransmission."""

    t1: float = 0.5
    t2: float = 4.0

    @property
    def ack_wait(self) -> float:
        """How long a UAS retransmits its 2xx waiting for the ACK: 64*T1 (§13.3.1.4)."""
        return 64 * self.t1


# ------------------------------------------------------------------------------------------------ events


@attrs.frozen
class SendRequest:
    """Send ``request`` in a new client transaction (INVITE or non-INVITE by its method). A CANCEL shares
    the INVITE's branch and goes where the INVITE went (§9.1)."""

    request: Request


@attrs.frozen
class SendCancel:
    """Cancel the client transaction of ``invite`` (§9.1): ``TransactionLayer.cancel(handle)`` builds the
    CANCEL. Only emitted once a provisional response has arrived."""

    invite: Request


@attrs.frozen
class SendResponse:
    """Send ``response`` on the server transaction of the request it answers (top Via branch, CSeq method)."""

    response: Response


@attrs.frozen
class SendDirect:
    """Hand ``message`` straight to the transport, outside any transaction: an ACK for a 2xx (§13.2.2.4;
    destination per RFC 3263 from the Request-URI / top Route), or a 2xx retransmission (§13.3.1.4; sent like
    any response, to the top Via)."""

    message: Request | Response


@attrs.frozen
class InviteReceived:
    """UAS: the initial INVITE was accepted as a new session (``request.body`` is the offer, if any)."""

    request: Request


@attrs.frozen
class ProvisionalReceived:
    """UAC: a 1xx to the initial INVITE (``response.to.tag`` tells the fork apart)."""

    response: Response


@attrs.frozen
class Answered:
    """UAC: the first 2xx to the initial INVITE; the dialog is confirmed and (unless ``answer_owed``) ACKed.

    ``answer_owed``: the INVITE had no offer, so the 2xx carries one and the TU must call ``ack(body=...)``
    with the answer (§13.2.1).
    """

    response: Response
    answer_owed: bool = False


@attrs.frozen
class Confirmed:
    """UAS: the ACK for our 2xx arrived (``ack.body`` is the answer to an offer we made in the 2xx)."""

    ack: Request


@attrs.frozen
class Rejected:
    """UAC: the initial INVITE got a non-2xx final response (``response`` is None after a timeout: 408, or
    after a transport error: 503)."""

    status: int
    response: Response | None


@attrs.frozen
class Cancelled:
    """The call was cancelled before the answer: UAC — our CANCEL ended it (``message`` is the final
    response, or None after a timeout); UAS — the peer's CANCEL arrived (``message`` is the CANCEL)."""

    message: Request | Response | None


@attrs.frozen
class ReinviteReceived:
    """A re-INVITE arrived (§14.2); answer with ``answer`` or ``reject`` (488, …)."""

    request: Request

    @property
    def offer(self) -> bytes:
        return self.request.body


@attrs.frozen
class ReinviteAnswered:
    """Our re-INVITE got a 2xx (ACKed unless ``answer_owed``; then call ``ack(body=...)``)."""

    response: Response
    answer_owed: bool = False


@attrs.frozen
class ReinviteFailed:
    """Our re-INVITE failed: non-2xx (the session is unchanged, §14.1), 481/408/timeout (the dialog is being
    torn down), or a 491 back-off overtaken by the peer's own re-INVITE (status 491, response None)."""

    status: int
    response: Response | None


@attrs.frozen
class ReinviteConfirmed:
    """The ACK for our 2xx to a re-INVITE arrived."""

    ack: Request


@attrs.frozen
class ReinviteCancelled:
    """The peer cancelled its pending re-INVITE; we answered it 487."""

    request: Request


@attrs.frozen
class DialogRequestReceived:
    """An in-dialog request other than INVITE/ACK/CANCEL/BYE (INFO, OPTIONS, UPDATE …): ``respond`` to it."""

    request: Request


@attrs.frozen
class DialogResponseReceived:
    """The final response to a request sent with ``send_request``."""

    response: Response


@attrs.frozen
class AckTimedOut:
    """No ACK for our 2xx within 64*T1 (§13.3.1.4); the session is being ended with BYE."""

    cseq: int


@attrs.frozen
class Terminated:
    """The session is over; always the last event."""

    reason: TerminationReason
    status: int | None = None


SessionEvent = (
    SendRequest
    | SendCancel
    | SendResponse
    | SendDirect
    | InviteReceived
    | ProvisionalReceived
    | Answered
    | Confirmed
    | Rejected
    | Cancelled
    | ReinviteReceived
    | ReinviteAnswered
    | ReinviteFailed
    | ReinviteConfirmed
    | ReinviteCancelled
    | DialogRequestReceived
    | DialogResponseReceived
    | AckTimedOut
    | Terminated
)


# ------------------------------------------------------------------------------------------ the machine


class SessionState(enum.Enum):
    """The states of an INVITE session (RFC 3261 §13 for setup, §14 re-INVITE, §15 BYE)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    IDLE = "idle"
    # UAC, initial INVITE (§13.2)
    CALLING = "calling"  # INVITE sent, no provisional yet
    CANCEL_PENDING = "cancel-pending"  # TU cancelled before any provisional: CANCEL waits for one (§9.1)
    PROCEEDING = "proceeding"  # a provisional arrived (early dialogs may exist)
    CANCELLING = "cancelling"  # CANCEL sent, waiting for the INVITE's final response
    ANSWERED = "answered"  # 2xx to an offerless (re-)INVITE: the TU owes the answer for the ACK
    # UAS, initial INVITE (§13.3)
    INCOMING = "incoming"  # INVITE received, no final response yet (1xx may have been sent)
    WAITING_FOR_ACK = "waiting-for-ack"  # 2xx sent, retransmitting it until the ACK (§13.3.1.4)
    HANGUP_PENDING = "hangup-pending"  # as above but the TU hung up: BYE waits for the ACK (§15)
    # both roles, established (§14)
    CONFIRMED = "confirmed"
    REINVITING = "reinviting"  # our re-INVITE is pending
    REINVITE_BACKOFF = "reinvite-backoff"  # our re-INVITE got 491; retry timer running (§14.1)
    REINVITED = "reinvited"  # their re-INVITE waits for the TU's answer
    REINVITE_ACK_WAIT = "reinvite-ack-wait"  # we answered their re-INVITE 2xx; retransmitting until ACK
    # teardown (§15)
    TERMINATING = "terminating"  # our BYE is pending
    TERMINATED = "terminated"


class SessionInput(enum.Enum):
    """Everything that can happen to a session: TU commands, classified messages, failures, timers."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    # TU commands
    SEND_INVITE = "send_invite"
    RINGING = "ringing"
    ANSWER = "answer"
    REJECT = "reject"
    CANCEL = "cancel"
    BYE = "bye"
    REINVITE = "reinvite"
    ACK = "ack"
    SEND_REQUEST = "send_request"
    RESPOND = "respond"
    # requests from the peer
    INVITE_RECEIVED = "invite_received"  # the initial INVITE (UAS)
    REINVITE_RECEIVED = "reinvite_received"  # an INVITE inside the dialog
    ACK_RECEIVED = "ack_received"  # the ACK for the 2xx we are retransmitting
    ACK_STRAY = "ack_stray"  # any other ACK (retransmitted, late, other dialog): nothing to do
    BYE_RECEIVED = "bye_received"
    CANCEL_RECEIVED = "cancel_received"  # cancels the INVITE or re-INVITE still pending here
    CANCEL_LATE = "cancel_late"  # a CANCEL for an INVITE already answered: no effect (§9.2)
    REQUEST_RECEIVED = "request_received"  # other in-dialog requests
    # responses to our requests
    INVITE_1XX = "invite_1xx"
    INVITE_2XX = "invite_2xx"
    INVITE_2XX_DELAYED = "invite_2xx_delayed"  # first 2xx to an offerless INVITE: ACK needs the TU's answer
    INVITE_FAILURE = "invite_failure"  # 300-699
    REINVITE_1XX = "reinvite_1xx"
    REINVITE_2XX = "reinvite_2xx"
    REINVITE_2XX_DELAYED = "reinvite_2xx_delayed"
    REINVITE_2XX_AGAIN = "reinvite_2xx_again"  # a retransmitted 2xx to a re-INVITE already ACKed
    REINVITE_491 = "reinvite_491"
    REINVITE_FAILURE = "reinvite_failure"
    BYE_RESPONSE = "bye_response"  # final response to our BYE
    REQUEST_RESPONSE = "request_response"  # final response to a send_request() request
    DIALOG_GONE = "dialog_gone"  # 481/408/timeout for an in-dialog request of ours (§12.2.1.2)
    STALE = "stale"  # anything that no longer concerns the session (late 1xx, CANCEL's 200, fork BYE's 200)
    # transaction failures
    INVITE_FAILED = "invite_failed"  # initial INVITE client transaction timed out / transport error
    BYE_FAILED = "bye_failed"
    SERVER_FAILED = "server_failed"  # the initial INVITE's server transaction could not deliver a response
    # timers
    RETRANSMIT_DUE = "retransmit_due"  # resend the 2xx (T1, 2*T1, … capped at T2)
    ACK_TIMED_OUT = "ack_timed_out"  # 64*T1 without ACK
    RETRY_DUE = "retry_due"  # 491 back-off over: resend the re-INVITE


_S = SessionState
_I = SessionInput
_Rule = tuple[str, "SessionState | None"]  # (action, next state; None = stay)

_UAC_EARLY: Final = (_S.CALLING, _S.CANCEL_PENDING, _S.PROCEEDING, _S.CANCELLING)
_ESTABLISHED: Final = (_S.CONFIRMED, _S.REINVITING, _S.REINVITE_BACKOFF, _S.REINVITED, _S.REINVITE_ACK_WAIT)
_ACK_WAIT_STATES: Final = frozenset({_S.WAITING_FOR_ACK, _S.HANGUP_PENDING, _S.REINVITE_ACK_WAIT})

#: UAC: the initial INVITE has no final response yet; hanging up means CANCEL (§9.1).
EARLY_STATES: Final = frozenset(_UAC_EARLY)
#: The initial INVITE is complete and no BYE is under way: in-dialog requests may be sent (§12.2.1).
ESTABLISHED_STATES: Final = frozenset(_ESTABLISHED)
#: The initial INVITE was answered with a 2xx whose ACK is not through yet (the peer's awaited, or ours
#: owed with the answer to an offerless INVITE): in-dialog requests wait for it (§13.3.1.4, §14.2).
CONFIRMING_STATES: Final = frozenset({_S.WAITING_FOR_ACK, _S.ANSWERED})
_LIVE: Final = tuple(s for s in SessionState if s not in (_S.IDLE, _S.TERMINATED))


def _build_table() -> dict[tuple[SessionState, SessionInput], _Rule]:
    """The whole behaviour of :class:`InviteSession`, state by state (RFC 3261 sections in comments).

    Each (state, input) pair is written once; the builder refuses a second entry, so a broad rule can never
    quietly override a specific one. Inputs the network can always produce (a BYE, a stale response, a
    retransmitted ACK …) have an entry in every live state.
    """
    t: dict[tuple[SessionState, SessionInput], _Rule] = {}

    def put(state: SessionState, inp: SessionInput, action: str, nxt: SessionState | None = None) -> None:
        if (state, inp) in t:
            raise AssertionError(f"duplicate transition for ({state.name}, {inp.name})")
        t[(state, inp)] = (action, nxt)

    def rule(
        states: Iterable[SessionState], inputs: Iterable[SessionInput], action: str, nxt: _S | None = None
    ) -> None:
        for state in states:
            for inp in inputs:
                put(state, inp, action, nxt)

    ignore = "ignore"
    # Noise every live state absorbs: stale responses, retransmitted ACKs, and CANCELs for INVITEs already
    # answered (the transaction layer answers every CANCEL itself, §9.2).
    rule(_LIVE, (_I.STALE, _I.ACK_STRAY, _I.CANCEL_LATE), ignore)

    # --- §13.2.1 / §13.3.1: the start.
    put(_S.IDLE, _I.SEND_INVITE, "send_invite", _S.CALLING)
    put(_S.IDLE, _I.INVITE_RECEIVED, "invite_received", _S.INCOMING)

    # --- §13.2.2 UAC before the final response; §9.1 CANCEL only after a provisional; §15 hang-up = CANCEL.
    for state in (_S.CALLING, _S.PROCEEDING):
        put(state, _I.INVITE_1XX, "provisional", _S.PROCEEDING)
        put(state, _I.INVITE_2XX, "answered", _S.CONFIRMED)
        put(state, _I.INVITE_2XX_DELAYED, "answered_owing", _S.ANSWERED)
        put(state, _I.INVITE_FAILURE, "rejected", _S.TERMINATED)
        put(state, _I.INVITE_FAILED, "invite_failed", _S.TERMINATED)
    rule((_S.CALLING,), (_I.CANCEL, _I.BYE), ignore, _S.CANCEL_PENDING)
    rule((_S.PROCEEDING,), (_I.CANCEL, _I.BYE), "send_cancel", _S.CANCELLING)
    put(_S.CANCEL_PENDING, _I.INVITE_1XX, "send_cancel", _S.CANCELLING)
    put(_S.CANCELLING, _I.INVITE_1XX, ignore)
    for state in (_S.CANCEL_PENDING, _S.CANCELLING):
        rule((state,), (_I.CANCEL, _I.BYE), ignore)
        # §15: a 2xx that raced our CANCEL is ACKed, then its dialog is ended with BYE.
        rule((state,), (_I.INVITE_2XX, _I.INVITE_2XX_DELAYED), "answered_after_cancel", _S.TERMINATING)
        rule((state,), (_I.INVITE_FAILURE, _I.INVITE_FAILED), "cancel_done", _S.TERMINATED)
    # Requests on the UAC's early dialogs: §14.2 glare with our INVITE; a BYE ends that early dialog only.
    rule(_UAC_EARLY, (_I.REINVITE_RECEIVED,), "reply_491")
    rule(_UAC_EARLY, (_I.BYE_RECEIVED,), "early_bye_received")
    rule(_UAC_EARLY, (_I.REQUEST_RECEIVED,), "request_received")
    rule(_UAC_EARLY, (_I.RESPOND,), "respond")

    # --- §13.3.1 UAS before the final response. No (INCOMING, BYE): the callee MUST NOT send BYE on an
    # early dialog (§15) — reject() instead.
    put(_S.INCOMING, _I.RINGING, "send_provisional")
    put(_S.INCOMING, _I.ANSWER, "send_answer", _S.WAITING_FOR_ACK)
    put(_S.INCOMING, _I.REJECT, "send_reject", _S.TERMINATED)
    put(_S.INCOMING, _I.CANCEL_RECEIVED, "cancel_received", _S.TERMINATED)  # §9.2: the INVITE gets 487
    put(_S.INCOMING, _I.BYE_RECEIVED, "early_bye_to_uas", _S.TERMINATED)  # §15.1.2: 200, INVITE 487
    put(_S.INCOMING, _I.REINVITE_RECEIVED, "reply_500_retry")  # §14.2
    put(_S.INCOMING, _I.REQUEST_RECEIVED, "request_received")
    put(_S.INCOMING, _I.RESPOND, "respond")
    put(_S.INCOMING, _I.SERVER_FAILED, "server_failed", _S.TERMINATED)

    # --- §13.3.1.4 UAS after its 2xx: retransmit until the ACK, BYE after 64*T1; §15 a callee's hang-up
    # waits for that ACK (HANGUP_PENDING). REINVITE_ACK_WAIT is the same for a 2xx to a re-INVITE.
    rule(_ACK_WAIT_STATES, (_I.RETRANSMIT_DUE,), "retransmit_2xx")
    rule(_ACK_WAIT_STATES, (_I.ACK_TIMED_OUT,), "ack_timed_out", _S.TERMINATING)
    put(_S.WAITING_FOR_ACK, _I.ACK_RECEIVED, "ack_received", _S.CONFIRMED)
    put(_S.HANGUP_PENDING, _I.ACK_RECEIVED, "send_bye", _S.TERMINATING)
    put(_S.REINVITE_ACK_WAIT, _I.ACK_RECEIVED, "reinvite_ack_received", _S.CONFIRMED)
    put(_S.WAITING_FOR_ACK, _I.BYE, ignore, _S.HANGUP_PENDING)
    put(_S.HANGUP_PENDING, _I.BYE, ignore)
    for state in (_S.WAITING_FOR_ACK, _S.HANGUP_PENDING):
        put(state, _I.REINVITE_RECEIVED, "reply_500_retry")  # §14.2: our INVITE is not complete
        put(state, _I.BYE_RECEIVED, "bye_received", _S.TERMINATED)
        put(state, _I.RESPOND, "respond")
        put(state, _I.SERVER_FAILED, ignore)  # the 2xx could not go out: the ACK timeout will decide
    put(_S.WAITING_FOR_ACK, _I.REQUEST_RECEIVED, "request_received")
    put(_S.HANGUP_PENDING, _I.REQUEST_RECEIVED, "reply_481")

    # --- A 2xx made an offer (offerless INVITE or re-INVITE, §13.2.1): the TU owes the answer for the ACK.
    put(_S.ANSWERED, _I.ACK, "send_owed_ack", _S.CONFIRMED)
    put(_S.ANSWERED, _I.BYE, "ack_then_bye", _S.TERMINATING)
    put(_S.ANSWERED, _I.REINVITE_RECEIVED, "reply_491")  # our INVITE is not complete until the ACK
    put(_S.ANSWERED, _I.BYE_RECEIVED, "bye_received", _S.TERMINATED)
    put(_S.ANSWERED, _I.REQUEST_RECEIVED, "request_received")
    put(_S.ANSWERED, _I.RESPOND, "respond")
    put(_S.ANSWERED, _I.REQUEST_RESPONSE, "response_received")
    put(_S.ANSWERED, _I.DIALOG_GONE, "dialog_gone", _S.TERMINATING)
    put(_S.ANSWERED, _I.REINVITE_2XX_AGAIN, "resend_reinvite_ack")

    # --- Established (§12.2, §14, §15): what all five established states share ...
    rule(_ESTABLISHED, (_I.BYE,), "send_bye", _S.TERMINATING)
    rule(_ESTABLISHED, (_I.SEND_REQUEST,), "send_request")
    rule(_ESTABLISHED, (_I.RESPOND,), "respond")
    rule(_ESTABLISHED, (_I.REQUEST_RECEIVED,), "request_received")
    rule(_ESTABLISHED, (_I.REQUEST_RESPONSE,), "response_received")
    rule(_ESTABLISHED, (_I.DIALOG_GONE,), "dialog_gone", _S.TERMINATING)  # §12.2.1.2
    rule(_ESTABLISHED, (_I.BYE_RECEIVED,), "bye_received", _S.TERMINATED)  # §15.1.2
    rule(_ESTABLISHED, (_I.REINVITE_2XX_AGAIN,), "resend_reinvite_ack")
    rule(_ESTABLISHED, (_I.SERVER_FAILED,), ignore)
    rule((_S.CONFIRMED, _S.REINVITING, _S.REINVITE_BACKOFF, _S.REINVITED), (_I.ACK_RECEIVED,), ignore)
    # ... and the late messages of the initial INVITE (§13.2.2.4): a retransmitted 2xx is ACKed again, a
    # 2xx from another fork is ACKed and BYEd; late provisionals and failures change nothing.
    for state in (*_ESTABLISHED, _S.ANSWERED, _S.TERMINATING):
        rule((state,), (_I.INVITE_2XX, _I.INVITE_2XX_DELAYED), "late_answer")
        rule((state,), (_I.INVITE_1XX, _I.INVITE_FAILURE, _I.INVITE_FAILED), ignore)

    # §14.1 our re-INVITE; §14.2 theirs.
    put(_S.CONFIRMED, _I.REINVITE, "send_reinvite", _S.REINVITING)
    put(_S.CONFIRMED, _I.REINVITE_RECEIVED, "reinvite_received", _S.REINVITED)
    put(_S.REINVITING, _I.REINVITE_1XX, ignore)
    put(_S.REINVITING, _I.REINVITE_2XX, "reinvite_answered", _S.CONFIRMED)
    put(_S.REINVITING, _I.REINVITE_2XX_DELAYED, "reinvite_answered_owing", _S.ANSWERED)
    put(_S.REINVITING, _I.REINVITE_491, "reinvite_glare", _S.REINVITE_BACKOFF)
    put(_S.REINVITING, _I.REINVITE_FAILURE, "reinvite_failed", _S.CONFIRMED)
    put(_S.REINVITING, _I.REINVITE_RECEIVED, "reply_491")  # §14.2 glare
    put(_S.REINVITE_BACKOFF, _I.RETRY_DUE, "retry_reinvite", _S.REINVITING)
    put(_S.REINVITE_BACKOFF, _I.REINVITE, "replace_retry")
    put(_S.REINVITE_BACKOFF, _I.REINVITE_RECEIVED, "backoff_overtaken", _S.REINVITED)
    put(_S.REINVITED, _I.RINGING, "send_provisional")
    put(_S.REINVITED, _I.ANSWER, "answer_reinvite", _S.REINVITE_ACK_WAIT)
    put(_S.REINVITED, _I.REJECT, "reject_reinvite", _S.CONFIRMED)
    put(_S.REINVITED, _I.CANCEL_RECEIVED, "reinvite_cancelled", _S.CONFIRMED)
    put(_S.REINVITED, _I.REINVITE_RECEIVED, "reply_500_retry")  # §14.2: second INVITE before our final
    put(_S.REINVITE_ACK_WAIT, _I.REINVITE_RECEIVED, "reply_500_retry")

    # --- §15.1.1 our BYE is out: the session is over for the TU; absorb what still arrives.
    put(_S.TERMINATING, _I.BYE_RESPONSE, "bye_done", _S.TERMINATED)
    put(_S.TERMINATING, _I.BYE_FAILED, "bye_done", _S.TERMINATED)
    put(_S.TERMINATING, _I.BYE_RECEIVED, "bye_received", _S.TERMINATED)
    rule((_S.TERMINATING,), (_I.REINVITE_2XX, _I.REINVITE_2XX_DELAYED), "ack_reinvite_quietly")
    put(_S.TERMINATING, _I.REINVITE_2XX_AGAIN, "resend_reinvite_ack")
    rule(
        (_S.TERMINATING,),
        (
            _I.REINVITE_1XX,
            _I.REINVITE_491,
            _I.REINVITE_FAILURE,
            _I.DIALOG_GONE,
            _I.REQUEST_RESPONSE,
            _I.ACK_RECEIVED,
            _I.SERVER_FAILED,
            _I.CANCEL,
            _I.BYE,
        ),
        ignore,
    )
    rule((_S.TERMINATING,), (_I.REINVITE_RECEIVED, _I.REQUEST_RECEIVED), "reply_481")
    put(_S.TERMINATING, _I.RESPOND, "respond")

    # --- Terminated: hang-ups are no-ops and late responses die; requests have no entry, so they raise
    # SessionError(status=481) for the endpoint to answer. Nothing is ever emitted here.
    rule(
        (_S.TERMINATED,),
        (
            _I.CANCEL,
            _I.BYE,
            _I.ACK_STRAY,
            _I.ACK_RECEIVED,
            _I.CANCEL_LATE,
            _I.INVITE_1XX,
            _I.INVITE_2XX,
            _I.INVITE_2XX_DELAYED,
            _I.INVITE_FAILURE,
            _I.INVITE_FAILED,
            _I.REINVITE_1XX,
            _I.REINVITE_2XX,
            _I.REINVITE_2XX_DELAYED,
            _I.REINVITE_2XX_AGAIN,
            _I.REINVITE_491,
            _I.REINVITE_FAILURE,
            _I.BYE_RESPONSE,
            _I.REQUEST_RESPONSE,
            _I.DIALOG_GONE,
            _I.STALE,
            _I.BYE_FAILED,
            _I.SERVER_FAILED,
        ),
        ignore,
    )
    return t


#: (state, input) → (action, next state or None to stay). Anything absent is a protocol error.
_TRANSITIONS: Final = _build_table()


class _Timer(enum.Enum):
    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    ACK_DEADLINE = _I.ACK_TIMED_OUT  # listed first: on a tie, giving up wins over one more retransmission
    RETRANSMIT = _I.RETRANSMIT_DUE
    RETRY = _I.RETRY_DUE


_TIMER_ORDER: Final = {timer: index for index, timer in enumerate(_Timer)}


@attrs.frozen
class _Offer:
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class _Reply:
    status: int
    reason: str | None = None
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    request: Request | None = None


@attrs.frozen
class _Outgoing:
    method: str
    offer: _Offer


@attrs.frozen
class _Failure:
    request: Request
    kind: TransactionFailure


def _as_name_addr(value: NameAddr | str) -> NameAddr:
    return parse_name_addr(value) if isinstance(value, str) else value


def _seq_key(message: Request | Response) -> tuple[int, str]:
    return (message.cseq.seq, message.cseq.method)


class InviteSession:
    """One INVITE session, UAC or UAS, above the transaction layer (see the module docstring).

    Randomness is injected: ``make_tag`` (our From/To tag), ``make_call_id`` (UAC Call-ID), ``make_branch``
    (unique part of each Via branch) and ``rand`` (uniform in [0, 1): the 491 back-off of §14.1 and the
    Retry-After of §14.2). ``via`` is the Via template (transport and sent-by; a branch is added per request),
    ``contact`` our Contact for dialog-creating and target refresh messages; ``allow`` the Allow header of our
    INVITEs and 2xx (the methods the TU takes in the dialog).
    """

    def __init__(
        self,
        role: Role,
        *,
        contact: NameAddr | str,
        via: Via | str,
        make_tag: Callable[[], str],
        make_branch: Callable[[], str],
        rand: Callable[[], float],
        make_call_id: Callable[[], str] | None = None,
        timers: SessionTimers | None = None,
        initial_cseq: int = 1,
        over_tls: bool = False,
        allow: str = DEFAULT_ALLOW,
    ) -> None:
        self._role = role
        self._allow = allow
        self._contact = _as_name_addr(contact)
        self._via = parse_via(via) if isinstance(via, str) else via
        self._make_tag = make_tag
        self._make_branch = make_branch
        self._make_call_id = make_call_id
        self._rand = rand
        self._timers_cfg = timers or SessionTimers()
        self._initial_cseq = initial_cseq
        self._over_tls = over_tls

        self._state = SessionState.IDLE
        self._events: list[SessionEvent] = []  # a few at a time: a list costs 56 bytes, a deque 760
        self._timers: dict[_Timer, float] = {}
        self._reason = TerminationReason.LOCAL_BYE
        self._reason_status: int | None = None

        self._invite: Request | None = None  # the initial INVITE (sent or received)
        self._local_tag: str | None = None
        self._dialog_set: DialogSet | None = None  # UAC
        self._dialog: Dialog | None = None  # the call's dialog (UAS: from the INVITE; UAC: first 2xx)
        self._cancel_sent = False

        self._pending_2xx: Response | None = None  # UAS: the 2xx being retransmitted
        self._await_ack_seq: int | None = None
        self._rtx_interval = 0.0

        self._reinvite_out: Request | None = None
        self._retry_offer: _Offer | None = None
        self._reinvite_acks: dict[int, Request] = {}
        self._owed: tuple[Request, Response] | None = None  # ANSWERED: (INVITE, 2xx) whose ACK the TU owes
        self._reinvite_in: Request | None = None
        self._bye_out: Request | None = None
        self._last_sent: Request | None = None
        self._requests_out: dict[tuple[int, str], Request] = {}
        self._requests_in: dict[tuple[int, str], Request] = {}

    # -------------------------------------------------------------------------------------- reading

    @property
    def role(self) -> Role:
        return self._role

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def invite(self) -> Request | None:
        """The initial INVITE (sent as UAC, received as UAS)."""
        return self._invite

    @property
    def dialog(self) -> Dialog | None:
        """The call's dialog: UAS from the INVITE on; UAC from the first 2xx on."""
        return self._dialog

    @property
    def dialog_id(self) -> DialogId | None:
        return None if self._dialog is None else self._dialog.id

    @property
    def dialog_set(self) -> DialogSet | None:
        """UAC: every early/confirmed dialog of the INVITE (forks), keyed by remote tag."""
        return self._dialog_set

    @property
    def local_tag(self) -> str | None:
        return self._local_tag

    @property
    def call_id(self) -> str | None:
        return None if self._invite is None else self._invite.call_id

    @property
    def terminated(self) -> bool:
        return self._state is SessionState.TERMINATED

    def next_event(self) -> SessionEvent | None:
        """The next queued event, or None."""
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (absolute time, same clock as ``now``), or None."""
        return min(self._timers.values()) if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first; then ``get_timer()`` is None or after now."""
        fired: set[_Timer] = set()
        while True:
            due = [(at, _TIMER_ORDER[timer], timer) for timer, at in self._timers.items() if at <= now]
            if not due:
                return
            _, _, timer = min(due)
            if timer in fired:  # a timer re-armed in the past would spin here forever: a bug, say so
                raise SessionError(f"timer {timer.name} re-armed at or before now ({now})")
            fired.add(timer)
            del self._timers[timer]
            self._dispatch(timer.value, now, None)

    # ------------------------------------------------------------------------------------- commands

    def send_invite(
        self,
        *,
        request_uri: Uri | str,
        to: NameAddr | str,
        from_: NameAddr | str,
        now: float,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        route: Iterable[NameAddr | str] = (),
        call_id: str | None = None,
    ) -> Request:
        """UAC: build and send the initial INVITE (§8.1.1, §13.2.1); returns it.

        An empty ``body`` makes an offerless INVITE: the 2xx will carry the offer and :class:`Answered`
        says ``answer_owed`` (call :meth:`ack` with the answer). ``route`` is a preloaded route set
        (outbound proxy), written as Route headers in order. A ``Max-Forwards`` in ``headers`` replaces
        the default 70.
        """
        if self._role is not Role.UAC:
            raise SessionError("send_invite() is for a UAC session")
        if self._state is not SessionState.IDLE:
            raise SessionError(f"cannot send_invite in state {self._state.value}")
        if call_id is None:
            if self._make_call_id is None:
                raise SessionError("no Call-ID: pass call_id= or give the session make_call_id")
            call_id = self._make_call_id()
        uri = parse_uri(request_uri) if isinstance(request_uri, str) else request_uri
        tag = self._make_tag()
        from_party = _as_name_addr(from_)
        params = tuple(p for p in from_party.params if p[0] != "tag")
        from_party = NameAddr(from_party.display_name, from_party.uri, params, from_party.bracketed)
        to_party = _as_name_addr(to)
        extra = tuple(headers)
        max_forwards = str(MAX_FORWARDS)
        if any(name.lower() == "max-forwards" for name, _ in extra):
            # A B2BUA passes the incoming request's count on, less one, so a routing loop ends (483).
            max_forwards = next(value for name, value in extra if name.lower() == "max-forwards")
            extra = tuple((name, value) for name, value in extra if name.lower() != "max-forwards")
        via = via_with_branch(self._via, self._make_branch)
        lines = [
            Header("Via", str(via)),
            Header("Max-Forwards", max_forwards),
            *(Header("Route", str(_as_name_addr(r))) for r in route),
            Header("From", str(from_party.with_tag(tag))),
            Header("To", str(to_party)),
            Header("Call-ID", call_id),
            Header("CSeq", f"{self._initial_cseq} INVITE"),
            Header("Contact", str(self._contact)),
            *(Header(name, value) for name, value in extra),
        ]
        if not any(name.lower() == "allow" for name, _ in extra):
            lines.append(Header("Allow", self._allow))
        if body:
            lines.append(Header("Content-Type", content_type or "application/sdp"))
        invite = Request("INVITE", uri, tuple(lines), body)
        if not any(header_key(name) in ("via", "cseq") for name, _ in extra):
            seed_parsed(invite, via=(via,), cseq=CSeq(self._initial_cseq, "INVITE"))
        self._local_tag = tag
        self._dispatch(_I.SEND_INVITE, now, invite)
        return invite

    def ringing(
        self,
        *,
        now: float,
        status: int = 180,
        reason: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """UAS: send a provisional response (101-199) to the pending INVITE or re-INVITE (§13.3.1.1)."""
        if not 101 <= status <= 199:
            raise SessionError(f"a provisional response is 101-199, not {status}")
        self._dispatch(_I.RINGING, now, _Reply(status, reason, body, content_type, tuple(headers)))

    def answer(
        self,
        *,
        now: float,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        status: int = 200,
    ) -> None:
        """UAS: accept the pending INVITE or re-INVITE with a 2xx (§13.3.1.4, §14.2), resent until the ACK."""
        if not 200 <= status <= 299:
            raise SessionError(f"an answer is 2xx, not {status}")
        self._dispatch(_I.ANSWER, now, _Reply(status, None, body, content_type, tuple(headers)))

    def reject(
        self,
        status: int,
        *,
        now: float,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        """UAS: refuse the pending INVITE or re-INVITE with a 300-699 response (§13.3.1.2-3, §14.2)."""
        if not 300 <= status <= 699:
            raise SessionError(f"a rejection is 300-699, not {status}")
        self._dispatch(_I.REJECT, now, _Reply(status, reason, body, content_type, tuple(headers)))

    def cancel(self, *, now: float) -> None:
        """UAC: give up the call attempt (§9.1): CANCEL now, or as soon as a provisional arrives."""
        self._dispatch(_I.CANCEL, now, None)

    def bye(self, *, now: float, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Hang up (§15). UAC before the final response: same as :meth:`cancel`. UAS with its 2xx not yet
        ACKed: the BYE waits for the ACK or the ACK timeout. UAS before answering: not allowed, use
        :meth:`reject`. Repeated hang-ups are no-ops."""
        self._dispatch(_I.BYE, now, _Offer(headers=tuple(headers)))

    def reinvite(
        self,
        *,
        now: float,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Send a re-INVITE (§14.1) with a new offer (or none: the offer then comes in the 2xx).

        During a 491 back-off this replaces the offer the retry will carry.
        """
        self._dispatch(_I.REINVITE, now, _Offer(body, content_type, tuple(headers)))

    def ack(self, *, now: float, body: bytes = b"", content_type: str | None = None) -> None:
        """UAC: send the ACK carrying the answer to the offer a 2xx made (after ``answer_owed``)."""
        self._dispatch(_I.ACK, now, _Offer(body, content_type))

    def send_request(
        self,
        method: str,
        *,
        now: float,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """Send another in-dialog request (INFO, OPTIONS, UPDATE, MESSAGE …); returns it. The final response
        comes as :class:`DialogResponseReceived`; 481/408/timeout end the dialog (§12.2.1.2)."""
        method = method.upper()
        if method in _OWN_COMMANDS:
            raise SessionError(f"use the session's own command for {method}")
        self._dispatch(_I.SEND_REQUEST, now, _Outgoing(method, _Offer(body, content_type, tuple(headers))))
        request = self._last_sent
        assert request is not None
        return request

    def respond(
        self,
        request: Request,
        status: int,
        *,
        now: float,
        reason: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer a request announced by :class:`DialogRequestReceived`."""
        if not 100 <= status <= 699:
            raise SessionError(f"bad status {status}")
        self._dispatch(_I.RESPOND, now, _Reply(status, reason, body, content_type, tuple(headers), request))

    # ------------------------------------------------------------------------------------ messages

    def receive_request(self, request: Request, now: float) -> None:
        """A request the transaction layer handed up for this session (the initial INVITE, ACK for a 2xx,
        CANCEL, or any request inside the dialog)."""
        inp = self._classify_request(request)
        if inp is None:
            return
        self._dispatch(inp, now, request)

    def receive_response(self, response: Response, now: float) -> None:
        """A response from a client transaction this session started (with RFC 6026, 2xx retransmissions to
        an INVITE too)."""
        self._dispatch(self._classify_response(response), now, response)

    def transaction_failed(self, request: Request, kind: TransactionFailure, now: float) -> None:
        """The transaction of ``request`` (one we sent, or one we were answering) timed out or hit a
        transport error."""
        self._dispatch(self._classify_failure(request), now, _Failure(request, kind))

    # --------------------------------------------------------------------------------- classifying

    def _classify_request(self, request: Request) -> SessionInput | None:
        method = request.method
        if method == "INVITE" and self._state is SessionState.IDLE and self._role is Role.UAS:
            if request.to.tag is not None:
                raise SessionError("INVITE with a To tag for an unknown dialog", status=481)
            if not request.contact:
                raise SessionError("INVITE without Contact (RFC 3261 §8.1.1.8)", status=400)
            return _I.INVITE_RECEIVED
        if self._state is SessionState.IDLE:
            raise SessionError(f"{method} for a session that has not started", status=481)
        if method == "ACK":
            dialog = self._dialog
            if (
                self._await_ack_seq is not None
                and request.cseq.seq == self._await_ack_seq
                and dialog is not None
                and dialog.matches(request)
            ):
                return _I.ACK_RECEIVED
            return _I.ACK_STRAY
        if method == "CANCEL":
            seq = request.cseq.seq
            if (
                self._state is SessionState.INCOMING
                and self._invite is not None
                and seq == self._invite.cseq.seq
            ):
                return _I.CANCEL_RECEIVED
            if self._reinvite_in is not None and seq == self._reinvite_in.cseq.seq:
                return _I.CANCEL_RECEIVED
            return _I.CANCEL_LATE
        inp = {"INVITE": _I.REINVITE_RECEIVED, "BYE": _I.BYE_RECEIVED}.get(method, _I.REQUEST_RECEIVED)
        if self._state is SessionState.TERMINATED:
            return inp  # the table refuses it (481 for the endpoint)
        dialog = self._dialog_for(request)
        if dialog is None:
            self._emit(SendResponse(make_response(request, 481)))
            return None
        try:
            dialog.receive_request(request)
        except DialogError as exc:
            _log.debug("%s: %s", self.call_id, exc)
            self._emit(SendResponse(make_response(request, exc.status or 500)))
            return None
        return inp

    def _dialog_for(self, request: Request) -> Dialog | None:
        """The dialog an in-dialog request belongs to: ours, or (UAC, before the 2xx) an early one."""
        if self._dialog is not None:
            return self._dialog if self._dialog.matches(request) else None
        if self._dialog_set is not None:
            dialog = self._dialog_set.dialog(request.from_.tag)
            if dialog is not None and dialog.state is DialogState.EARLY and dialog.matches(request):
                return dialog
        return None

    def _classify_response(self, response: Response) -> SessionInput:
        method = response.cseq.method
        seq = response.cseq.seq
        status = response.status
        if method == "INVITE":
            invite = self._invite
            if self._role is Role.UAC and invite is not None and seq == invite.cseq.seq:
                if status < 200:
                    return _I.INVITE_1XX
                if status < 300:
                    return _I.INVITE_2XX if invite.body else _I.INVITE_2XX_DELAYED
                return _I.INVITE_FAILURE
            if status >= 200 and status < 300 and seq in self._reinvite_acks:
                return _I.REINVITE_2XX_AGAIN
            pending = self._reinvite_out
            if pending is not None and seq == pending.cseq.seq:
                if status < 200:
                    return _I.REINVITE_1XX
                if status < 300:
                    return _I.REINVITE_2XX if pending.body else _I.REINVITE_2XX_DELAYED
                if status == 491:
                    return _I.REINVITE_491
                if status in (408, 481):
                    return _I.DIALOG_GONE
                return _I.REINVITE_FAILURE
            return _I.STALE
        if method == "BYE":
            bye = self._bye_out
            if bye is not None and seq == bye.cseq.seq and response.to.tag == bye.to.tag and status >= 200:
                return _I.BYE_RESPONSE
            return _I.STALE
        key = (seq, method)
        if key in self._requests_out and status >= 200:
            return _I.DIALOG_GONE if status in (408, 481) else _I.REQUEST_RESPONSE
        return _I.STALE

    def _classify_failure(self, request: Request) -> SessionInput:
        method = request.method
        seq = request.cseq.seq
        ours = self._local_tag is not None and request.from_.tag == self._local_tag
        if not ours:
            invite = self._invite
            if (
                method == "INVITE"
                and invite is not None
                and seq == invite.cseq.seq
                and self._role is Role.UAS
            ):
                return _I.SERVER_FAILED
            return _I.STALE
        if method == "INVITE":
            if self._role is Role.UAC and self._invite is not None and seq == self._invite.cseq.seq:
                return _I.INVITE_FAILED
            if self._reinvite_out is not None and seq == self._reinvite_out.cseq.seq:
                return _I.DIALOG_GONE
            return _I.STALE
        if method == "BYE":
            bye = self._bye_out
            same = bye is not None and seq == bye.cseq.seq and request.to.tag == bye.to.tag
            return _I.BYE_FAILED if same else _I.STALE
        if (seq, method) in self._requests_out:
            return _I.DIALOG_GONE
        return _I.STALE

    # ----------------------------------------------------------------------------------- dispatching

    def _dispatch(self, inp: SessionInput, now: float, arg: Any) -> None:
        before = self._state
        rule = _TRANSITIONS.get((before, inp))
        if rule is None:
            status: int | None = None
            if isinstance(arg, Request):
                status = 481 if before is SessionState.TERMINATED else 500
            raise SessionError(f"{inp.value} is not allowed in state {before.value}", status=status)
        action, target = rule
        getattr(self, "_do_" + action)(now, arg)
        if target is not None and target is not self._state:
            self._enter(target)
        if _log.isEnabledFor(logging.DEBUG):
            role, after = self._role.value, self._state.value
            _log.debug("%s %s: %s --%s/%s--> %s", self.call_id, role, before.value, inp.value, action, after)

    def _enter(self, state: SessionState) -> None:
        self._state = state
        if state not in _ACK_WAIT_STATES:
            self._timers.pop(_Timer.RETRANSMIT, None)
            self._timers.pop(_Timer.ACK_DEADLINE, None)
            self._pending_2xx = None
            self._await_ack_seq = None
        if state is not SessionState.REINVITE_BACKOFF:
            self._timers.pop(_Timer.RETRY, None)
        if state is SessionState.TERMINATED:
            self._answer_pending_requests()
            if self._dialog_set is not None:
                self._dialog_set.terminate()
            if self._dialog is not None:
                self._dialog.terminate()
            self._emit(Terminated(self._reason, self._reason_status))

    def _emit(self, event: SessionEvent) -> None:
        self._events.append(event)

    def _terminating(self, reason: TerminationReason, status: int | None = None) -> None:
        self._reason = reason
        self._reason_status = status

    # -------------------------------------------------------------------------------- small helpers

    def _response(
        self,
        request: Request,
        status: int,
        *,
        reason: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        extra = list(headers)
        if request.method == "INVITE" and 101 <= status <= 299:
            extra.append(("Contact", str(self._contact)))  # §12.1.1: dialog-creating responses carry Contact
            if status >= 200 and not any(name.lower() == "allow" for name, _ in extra):
                extra.append(("Allow", self._allow))
        if body:
            extra.append(("Content-Type", content_type or "application/sdp"))
        return make_response(request, status, reason, to_tag=self._local_tag, headers=extra, body=body)

    def _reply(self, request: Request, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._emit(SendResponse(self._response(request, status, headers=headers)))

    def _require_dialog(self) -> Dialog:
        if self._dialog is None:
            raise SessionError("no dialog yet")
        return self._dialog

    def _require_invite(self) -> Request:
        if self._invite is None:
            raise SessionError("no INVITE yet")
        return self._invite

    def _require_set(self) -> DialogSet:
        if self._dialog_set is None:
            raise SessionError("no dialog set (not a UAC session)")
        return self._dialog_set

    def _send(self, request: Request) -> None:
        self._last_sent = request
        self._emit(SendRequest(request))

    def _start_2xx(self, response: Response, seq: int, now: float) -> None:
        """§13.3.1.4: retransmit at T1, 2*T1, … capped at T2 until the ACK; give up after 64*T1."""
        self._pending_2xx = response
        self._await_ack_seq = seq
        self._rtx_interval = self._timers_cfg.t1
        self._timers[_Timer.RETRANSMIT] = now + self._rtx_interval
        self._timers[_Timer.ACK_DEADLINE] = now + self._timers_cfg.ack_wait

    def _answer_pending_requests(self) -> None:
        """§15.1.2: requests still pending when the dialog ends get 487."""
        if self._reinvite_in is not None:
            self._reply(self._reinvite_in, 487)
            self._reinvite_in = None
        for request in self._requests_in.values():
            self._reply(request, 487)
        self._requests_in.clear()

    # -------------------------------------------------------------------------------------- actions
    # Each ``_do_<action>`` is named by the table; it emits and updates data, the table moves the state.

    def _do_ignore(self, now: float, arg: Any) -> None:
        if isinstance(arg, Request | Response):
            _log.debug("%s: ignoring %s in %s", self.call_id, _describe(arg), self._state.value)

    # --- UAC setup

    def _do_send_invite(self, now: float, invite: Request) -> None:
        self._invite = invite
        self._dialog_set = DialogSet(
            invite, via=self._via, make_branch=self._make_branch, over_tls=self._over_tls
        )
        self._send(invite)

    def _do_provisional(self, now: float, response: Response) -> None:
        self._require_set().receive_response(response)
        self._emit(ProvisionalReceived(response))

    def _confirm_first(self, response: Response) -> Dialog:
        dialog_set = self._require_set()
        event = dialog_set.receive_response(response)
        if not isinstance(event, DialogConfirmed):
            raise SessionError(f"expected the first 2xx, dialog set says {event}")
        dialog = dialog_set.confirmed
        assert dialog is not None
        self._dialog = dialog
        return dialog

    def _do_answered(self, now: float, response: Response) -> None:
        self._confirm_first(response)
        self._emit(SendDirect(self._require_set().acknowledge(response.to.tag)))
        self._emit(Answered(response, answer_owed=False))

    def _do_answered_owing(self, now: float, response: Response) -> None:
        self._confirm_first(response)
        self._owed = (self._require_invite(), response)
        self._emit(Answered(response, answer_owed=True))

    def _do_answered_after_cancel(self, now: float, response: Response) -> None:
        self._confirm_first(response)
        self._emit(SendDirect(self._require_set().acknowledge(response.to.tag)))
        self._terminating(TerminationReason.CANCELLED, response.status)
        self._send_bye_now(())

    def _do_late_answer(self, now: float, response: Response) -> None:
        event = self._require_set().receive_response(response)
        if isinstance(event, AnswerRetransmitted):
            if event.ack is not None:
                self._emit(SendDirect(event.ack))
        elif isinstance(event, ForkAnswered):
            self._emit(SendDirect(event.ack))
            self._emit(SendRequest(event.bye))
        else:  # pragma: no cover - the set confirmed a dialog already, so nothing else can come
            raise SessionError(f"unexpected dialog-set event {event} for a late 2xx")

    def _do_rejected(self, now: float, response: Response) -> None:
        self._require_set().receive_response(response)
        self._emit(Rejected(response.status, response))
        self._terminating(TerminationReason.REJECTED, response.status)

    def _do_invite_failed(self, now: float, failure: _Failure) -> None:
        # A timeout counts as 408 (§13.2.2), a transport error as 503 (§8.1.3.1).
        if failure.kind is TransactionFailure.TIMEOUT:
            reason, status = TerminationReason.TIMEOUT, 408
        else:
            reason, status = TerminationReason.TRANSPORT_ERROR, 503
        self._emit(Rejected(status, None))
        self._terminating(reason, status)

    def _do_send_cancel(self, now: float, arg: Any) -> None:
        if not self._cancel_sent:
            self._cancel_sent = True
            self._emit(SendCancel(self._require_invite()))

    def _do_cancel_done(self, now: float, arg: Response | _Failure) -> None:
        status: int | None = None
        if isinstance(arg, Response):
            self._require_set().receive_response(arg)
            status = arg.status
            self._emit(Cancelled(arg))
        else:
            self._emit(Cancelled(None))
        self._terminating(TerminationReason.CANCELLED, status)

    def _do_early_bye_received(self, now: float, request: Request) -> None:
        self._reply(request, 200)
        dialog = self._dialog_for_early(request)
        if dialog is not None:
            dialog.terminate()

    def _dialog_for_early(self, request: Request) -> Dialog | None:
        return None if self._dialog_set is None else self._dialog_set.dialog(request.from_.tag)

    def _do_send_owed_ack(self, now: float, offer: _Offer) -> None:
        self._send_owed_ack(offer.body, offer.content_type)

    def _send_owed_ack(self, body: bytes, content_type: str | None) -> None:
        owed = self._owed
        if owed is None:
            raise SessionError("no ACK is owed")
        invite, response = owed
        self._owed = None
        if invite is self._invite:
            ack = self._require_set().acknowledge(response.to.tag, body=body, content_type=content_type)
        else:
            ack = self._require_dialog().create_ack(invite, response, body=body, content_type=content_type)
            self._reinvite_acks[invite.cseq.seq] = ack
        self._emit(SendDirect(ack))

    def _do_ack_then_bye(self, now: float, offer: _Offer) -> None:
        self._send_owed_ack(b"", None)
        self._do_send_bye(now, offer)

    # --- UAS setup

    def _do_invite_received(self, now: float, invite: Request) -> None:
        self._invite = invite
        self._local_tag = self._make_tag()
        self._dialog = Dialog.from_uas(
            invite,
            local_tag=self._local_tag,
            local_contact=self._contact,
            via=self._via,
            make_branch=self._make_branch,
            over_tls=self._over_tls,
            initial_seq=self._initial_cseq,
        )
        self._emit(InviteReceived(invite))

    def _server_invite(self) -> Request:
        """The INVITE our next response answers: a pending re-INVITE, else the initial INVITE."""
        return self._reinvite_in if self._reinvite_in is not None else self._require_invite()

    def _do_send_provisional(self, now: float, reply: _Reply) -> None:
        request = self._server_invite()
        self._emit(
            SendResponse(
                self._response(
                    request,
                    reply.status,
                    reason=reply.reason,
                    body=reply.body,
                    content_type=reply.content_type,
                    headers=reply.headers,
                )
            )
        )

    def _final(self, request: Request, reply: _Reply) -> Response:
        return self._response(
            request,
            reply.status,
            reason=reply.reason,
            body=reply.body,
            content_type=reply.content_type,
            headers=reply.headers,
        )

    def _do_send_answer(self, now: float, reply: _Reply) -> None:
        invite = self._require_invite()
        response = self._final(invite, reply)
        self._require_dialog().confirm()
        self._emit(SendResponse(response))
        self._start_2xx(response, invite.cseq.seq, now)

    def _do_send_reject(self, now: float, reply: _Reply) -> None:
        self._emit(SendResponse(self._final(self._require_invite(), reply)))
        self._terminating(TerminationReason.REJECTED, reply.status)

    def _do_cancel_received(self, now: float, cancel: Request) -> None:
        # The transaction layer has answered the CANCEL itself (§9.2); the INVITE gets 487 from us.
        self._reply(self._require_invite(), 487)
        self._emit(Cancelled(cancel))
        self._terminating(TerminationReason.CANCELLED, 487)

    def _do_early_bye_to_uas(self, now: float, bye: Request) -> None:
        self._reply(bye, 200)
        self._reply(self._require_invite(), 487)
        self._terminating(TerminationReason.REMOTE_BYE)

    def _do_server_failed(self, now: float, failure: _Failure) -> None:
        self._terminating(TerminationReason.TRANSPORT_ERROR)

    def _do_retransmit_2xx(self, now: float, arg: Any) -> None:
        if self._pending_2xx is None:  # pragma: no cover - the timer only runs with a 2xx pending
            raise SessionError("retransmission timer without a 2xx")
        self._emit(SendDirect(self._pending_2xx))
        self._rtx_interval = min(self._rtx_interval * 2, self._timers_cfg.t2)
        self._timers[_Timer.RETRANSMIT] = now + self._rtx_interval

    def _do_ack_timed_out(self, now: float, arg: Any) -> None:
        self._emit(AckTimedOut(self._await_ack_seq or 0))
        self._terminating(TerminationReason.ACK_TIMEOUT)
        self._send_bye_now(())

    def _do_ack_received(self, now: float, ack: Request) -> None:
        self._emit(Confirmed(ack))

    def _do_reinvite_ack_received(self, now: float, ack: Request) -> None:
        self._emit(ReinviteConfirmed(ack))

    # --- requests in the dialog

    def _do_reply_491(self, now: float, request: Request) -> None:
        self._reply(request, 491)

    def _do_reply_500_retry(self, now: float, request: Request) -> None:
        """§14.2: an INVITE while ours is still unanswered: 500 with Retry-After of 0-10 s."""
        retry_after = min(int(self._rand() * 11), 10)
        self._reply(request, 500, headers=(("Retry-After", str(retry_after)),))

    def _do_reply_481(self, now: float, request: Request) -> None:
        self._reply(request, 481)

    def _do_request_received(self, now: float, request: Request) -> None:
        self._requests_in[_seq_key(request)] = request
        self._emit(DialogRequestReceived(request))

    def _do_respond(self, now: float, reply: _Reply) -> None:
        request = reply.request
        if request is None or self._requests_in.get(_seq_key(request)) is not request:
            raise SessionError(
                "respond() answers a request announced by DialogRequestReceived and not yet answered"
            )
        if reply.status >= 200:
            del self._requests_in[_seq_key(request)]
        self._emit(SendResponse(self._final(request, reply)))

    def _do_send_request(self, now: float, outgoing: _Outgoing) -> None:
        offer = outgoing.offer
        request = self._require_dialog().create_request(
            outgoing.method, body=offer.body, content_type=offer.content_type, headers=offer.headers
        )
        self._requests_out[_seq_key(request)] = request
        self._send(request)

    def _do_response_received(self, now: float, response: Response) -> None:
        self._requests_out.pop(_seq_key(response), None)
        self._emit(DialogResponseReceived(response))

    def _do_dialog_gone(self, now: float, arg: Response | _Failure) -> None:
        """§12.2.1.2: 481/408/no response to an in-dialog request ends the dialog with BYE."""
        message = arg if isinstance(arg, Response) else arg.request
        key = _seq_key(message)
        pending = self._reinvite_out
        if pending is not None and key == _seq_key(pending):
            self._reinvite_out = None
            self._emit(
                ReinviteFailed(arg.status if isinstance(arg, Response) else 408, _response_or_none(arg))
            )
        elif key in self._requests_out:
            del self._requests_out[key]
            if isinstance(arg, Response):
                self._emit(DialogResponseReceived(arg))
        status = arg.status if isinstance(arg, Response) else 408
        self._terminating(TerminationReason.DIALOG_FAILED, status)
        self._send_bye_now(())

    def _do_bye_received(self, now: float, bye: Request) -> None:
        self._reply(bye, 200)
        self._terminating(TerminationReason.REMOTE_BYE)

    def _do_send_bye(self, now: float, arg: Any) -> None:
        headers = arg.headers if isinstance(arg, _Offer) else ()
        self._terminating(TerminationReason.LOCAL_BYE)
        self._send_bye_now(headers)

    def _send_bye_now(self, headers: Iterable[tuple[str, str]]) -> None:
        if self._reinvite_in is not None:  # §15.1.2 spirit: answer what is pending before leaving
            self._reply(self._reinvite_in, 487)
            self._reinvite_in = None
        bye = self._require_dialog().create_request("BYE", headers=headers)
        self._bye_out = bye
        self._send(bye)

    def _do_bye_done(self, now: float, arg: Any) -> None:
        """§15.1.1: any final response (481 and 408 included) or none at all ends it."""

    # --- re-INVITE, ours (§14.1)

    def _do_send_reinvite(self, now: float, offer: _Offer) -> None:
        request = self._require_dialog().create_request(
            "INVITE", body=offer.body, content_type=offer.content_type, headers=offer.headers
        )
        self._reinvite_out = request
        self._retry_offer = offer
        self._send(request)

    def _do_reinvite_answered(self, now: float, response: Response) -> None:
        dialog = self._require_dialog()
        request = self._reinvite_out
        assert request is not None
        self._reinvite_out = None
        dialog.refresh_target(response)
        ack = dialog.create_ack(request, response)
        self._reinvite_acks[request.cseq.seq] = ack
        self._emit(SendDirect(ack))
        self._emit(ReinviteAnswered(response, answer_owed=False))

    def _do_reinvite_answered_owing(self, now: float, response: Response) -> None:
        request = self._reinvite_out
        assert request is not None
        self._reinvite_out = None
        self._require_dialog().refresh_target(response)
        self._owed = (request, response)
        self._emit(ReinviteAnswered(response, answer_owed=True))

    def _do_ack_reinvite_quietly(self, now: float, response: Response) -> None:
        request = self._reinvite_out
        if request is None:  # pragma: no cover - classification only says REINVITE_2XX while one is pending
            return
        self._reinvite_out = None
        ack = self._require_dialog().create_ack(request, response)
        self._reinvite_acks[request.cseq.seq] = ack
        self._emit(SendDirect(ack))

    def _do_resend_reinvite_ack(self, now: float, response: Response) -> None:
        self._emit(SendDirect(self._reinvite_acks[response.cseq.seq]))

    def _do_reinvite_failed(self, now: float, response: Response) -> None:
        self._reinvite_out = None
        self._emit(ReinviteFailed(response.status, response))

    def _do_reinvite_glare(self, now: float, response: Response) -> None:
        """§14.1: 491 → retry after 2.1-4 s if we own the Call-ID, else 0-2 s, both in 10 ms steps."""
        self._reinvite_out = None
        if self._role is Role.UAC:
            delay = (210 + min(int(self._rand() * 191), 190)) / 100
        else:
            delay = min(int(self._rand() * 201), 200) / 100
        self._timers[_Timer.RETRY] = now + delay

    def _do_retry_reinvite(self, now: float, arg: Any) -> None:
        self._do_send_reinvite(now, self._retry_offer or _Offer())

    def _do_replace_retry(self, now: float, offer: _Offer) -> None:
        self._retry_offer = offer

    def _do_backoff_overtaken(self, now: float, request: Request) -> None:
        self._retry_offer = None
        self._emit(ReinviteFailed(491, None))
        self._do_reinvite_received(now, request)

    # --- re-INVITE, theirs (§14.2)

    def _do_reinvite_received(self, now: float, request: Request) -> None:
        self._reinvite_in = request
        self._emit(ReinviteReceived(request))

    def _do_answer_reinvite(self, now: float, reply: _Reply) -> None:
        request = self._reinvite_in
        assert request is not None
        self._reinvite_in = None
        self._require_dialog().refresh_target(request)
        response = self._final(request, reply)
        self._emit(SendResponse(response))
        self._start_2xx(response, request.cseq.seq, now)

    def _do_reject_reinvite(self, now: float, reply: _Reply) -> None:
        request = self._reinvite_in
        assert request is not None
        self._reinvite_in = None
        self._emit(SendResponse(self._final(request, reply)))

    def _do_reinvite_cancelled(self, now: float, cancel: Request) -> None:
        request = self._reinvite_in
        assert request is not None
        self._reinvite_in = None
        self._reply(request, 487)
        self._emit(ReinviteCancelled(request))


def _response_or_none(arg: Response | _Failure) -> Response | None:
    return arg if isinstance(arg, Response) else None


def _describe(message: Request | Response) -> str:
    if isinstance(message, Request):
        return f"{message.method} (CSeq {message.cseq})"
    return f"{message.status} (CSeq {message.cseq})"
