"""The SIP transaction layer (RFC 3261 §17, updated by RFC 6026): four pure state machines and their manager.

Sans-I/O in the manner of h11 and aioquic: every input carries the current time ``now``; output is queued
as events and drained with ``next_event()``; ``get_timer()`` says when the machine next needs waking and the
shell calls ``handle_timer(now)`` then. Nothing here touches a socket, a clock or randomness: a transaction
does not even know addresses — a ``MessageToSend`` goes out on the transaction's own transport and
destination, which the shell remembers (``TransactionHandle.context`` carries whatever the shell put there).

Each machine has its states as an ``Enum`` named as in the RFC and exactly one transition table beside it
(RFC 3261 Figures 5–8 with RFC 6026's replacement Figures 5 and 7). A ``(state, input)`` pair missing from a
table raises ``TransactionError``; inputs the network may legitimately produce in any state (a late
provisional, a retransmission after the final response) are listed as explicit no-op transitions instead.

Decisions taken where the RFC leaves room (the endpoint author should know them):

* Transport errors. Client transactions follow §17.1.4: inform the TU, go to Terminated — also in the INVITE
  "Proceeding" state (a lost connection means no final response can arrive). Server transactions follow
  RFC 6026 §8.8: inform the TU and stay in the current state.
* 100 Trying. The INVITE server transaction sends it ``trying_delay`` seconds (default 0.2) after the INVITE
  unless the TU has sent a response by then (§17.2.1 "unless it knows that the TU will generate a provisional
  or final response within 200 ms"); a retransmitted INVITE before any response gets a 100 at once.
* §9.1's "64*T1 after CANCEL" is timer ``"cancel"`` of the INVITE client transaction (``handle_cancel_sent``):
  if no final response arrives by then, the transaction reports ``TimedOut("cancel")`` and terminates.
* The ``TransactionLayer`` answers CANCEL itself (200 when it matches a server transaction, 481 otherwise,
  §9.2) and reports ``CancelReceived`` for an INVITE still without a final response; the TU then answers the
  INVITE with 487. Requests beyond ``Limits.max_server_transactions`` get a stateless 503 with Retry-After.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Final, Generic, TypeAlias, TypeVar

import attrs

from .errors import TransactionError
from .headers import Header
from .limits import DEFAULT_LIMITS, Limits
from .message import Request, Response, make_response

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "CancelReceived",
    "InviteClientState",
    "InviteClientTransaction",
    "InviteServerState",
    "InviteServerTransaction",
    "MessageToSend",
    "NonInviteClientState",
    "NonInviteClientTransaction",
    "NonInviteServerState",
    "NonInviteServerTransaction",
    "RequestReceived",
    "ResponseReceived",
    "StrayResponse",
    "Terminated",
    "TimedOut",
    "Timers",
    "TransactionEvent",
    "TransactionHandle",
    "TransactionKey",
    "TransactionLayer",
    "TransportFailed",
    "build_ack",
    "build_cancel",
    "cancel_target_key",
    "client_transaction_key",
    "server_transaction_key",
]

log = logging.getLogger(__name__)

#: The branch prefix of RFC 3261 clients (§8.1.1.7); without it §17.2.3's RFC 2543 matching applies.
MAGIC_COOKIE: Final = "z9hG4bK"


# ------------------------------------------------------------------------------------------------ timers


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class Timers:
    """T1, T2, T4 and the timers derived from them (RFC 3261 Table 4; Timers L and M from RFC 6026).

    Timers D, I, J and K are zero over reliable transports; A, E and G are not used there at all.
    """

    t1: float = attrs.field(default=0.5, validator=_positive)
    t2: float = attrs.field(default=4.0, validator=_positive)
    t4: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.t2 < self.t1:
            raise ValueError(f"T2 ({self.t2}) must not be smaller than T1 ({self.t1})")

    @property
    def a(self) -> float:
        """INVITE request retransmit interval, initially (unreliable transports only)."""
        return self.t1

    @property
    def b(self) -> float:
        """INVITE client transaction timeout."""
        return 64 * self.t1

    def d(self, *, reliable: bool) -> float:
        """Wait time for response retransmits: at least 32 s over UDP (§17.1.1.2), zero over TCP."""
        return 0.0 if reliable else max(32.0, 64 * self.t1)

    @property
    def e(self) -> float:
        """Non-INVITE request retransmit interval, initially (unreliable transports only)."""
        return self.t1

    @property
    def f(self) -> float:
        """Non-INVITE client transaction timeout."""
        return 64 * self.t1

    @property
    def g(self) -> float:
        """INVITE final response retransmit interval, initially (unreliable transports only)."""
        return self.t1

    @property
    def h(self) -> float:
        """Wait time for the ACK of a non-2xx final response."""
        return 64 * self.t1

    def i(self, *, reliable: bool) -> float:
        """Wait time for ACK retransmits."""
        return 0.0 if reliable else self.t4

    def j(self, *, reliable: bool) -> float:
        """Wait time for non-INVITE request retransmits."""
        return 0.0 if reliable else 64 * self.t1

    def k(self, *, reliable: bool) -> float:
        """Wait time for non-INVITE response retransmits."""
        return 0.0 if reliable else self.t4

    @property
    def l(self) -> float:  # noqa: E743 - the RFC's name
        """Wait time for retransmissions of an accepted INVITE (RFC 6026)."""
        return 64 * self.t1

    @property
    def m(self) -> float:
        """Wait time for 2xx retransmissions and 2xx from other forks (RFC 6026)."""
        return 64 * self.t1

    @property
    def cancel(self) -> float:
        """How long an INVITE client transaction waits for a final response after CANCEL (§9.1)."""
        return 64 * self.t1


# ------------------------------------------------------------------------------------------------ events


@attrs.frozen
class TransactionHandle:
    """Names one transaction for the TU and the shell.

    ``context`` is opaque to this module: the shell puts there what it needs to send on the transaction's
    transport (the flow a request came in on, or the destination a request goes to). It takes no part in
    equality, so handles compare by ``id``.
    """

    id: int
    method: str
    is_server: bool
    context: object = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class MessageToSend:
    """Pass ``message`` to the transport: on the transaction's transport, to its destination."""

    message: Request | Response
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class ResponseReceived:
    """A response for the TU (client transactions): provisional, final, and every 2xx in Accepted."""

    response: Response
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class RequestReceived:
    """A new request for the TU (server transactions); retransmissions are absorbed."""

    request: Request
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class AckReceived:
    """An ACK the TU must see: one for a 2xx (RFC 6026 Accepted state, or matching no transaction)."""

    ack: Request
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class TimedOut:
    """A transaction timer expired without an answer: ``timer`` is "B", "F", "H" or "cancel" (§9.1).

    The TU treats it as a 408 (§8.1.3.1); Timer H means the ACK for a non-2xx final never came.
    """

    timer: str
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class TransportFailed:
    """The transport reported a failure for this transaction (§17.1.4, §17.2.4; the TU treats it as 503)."""

    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Terminated:
    """The transaction reached the Terminated state; nothing more will come from it."""

    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class StrayResponse:
    """A response that matched no client transaction (TransactionLayer only; RFC 6026 §7.2)."""

    response: Response
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class CancelReceived:
    """A CANCEL matched an INVITE server transaction that has not sent a final response (§9.2).

    ``handle`` is the INVITE's. The layer has already answered the CANCEL with 200, using ``to_tag`` in To;
    the TU SHOULD now answer the INVITE with 487 — with the same To tag if it has not chosen one yet.
    """

    cancel: Request
    to_tag: str
    handle: TransactionHandle | None = attrs.field(default=None, kw_only=True)


TransactionEvent: TypeAlias = (
    MessageToSend
    | ResponseReceived
    | RequestReceived
    | AckReceived
    | TimedOut
    | TransportFailed
    | Terminated
    | StrayResponse
    | CancelReceived
)


# ------------------------------------------------------------------------------------------- machinery


class Input(enum.Enum):
    """What can happen to a transaction. Responses come from the network (client) or the TU (server)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    PROVISIONAL = "1xx response"
    SUCCESS = "2xx response"
    FAILURE = "300-699 response"
    REQUEST = "request retransmission"
    ACK = "ACK"
    TRANSPORT_ERROR = "transport error"
    CANCEL_SENT = "CANCEL sent by the TU"
    # Timers; for simultaneous expiry the order here decides (a timeout before a retransmission).
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_F = "Timer F"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_CANCEL = "64*T1 after CANCEL"
    TIMER_A = "Timer A"
    TIMER_E = "Timer E"
    TIMER_G = "Timer G"
    TIMER_TRYING = "100 Trying timer"


_TIMER_ORDER: Final = {inp: n for n, inp in enumerate(Input)}
_TIMER_NAMES: Final = {
    Input.TIMER_B: "B",
    Input.TIMER_F: "F",
    Input.TIMER_H: "H",
    Input.TIMER_CANCEL: "cancel",
}


class _Action(enum.Enum):
    PASS_UP = "pass the message up to the TU"
    SEND = "pass the TU's response to the transport"
    RETRANSMIT = "pass the last message sent to the transport once more"
    SEND_ACK = "build the ACK for a non-2xx final response (§17.1.1.3), or resend it"
    SEND_TRYING = "send 100 Trying"
    BACK_OFF = "re-arm the timer that fired with twice its interval (capped at T2 for E and G)"
    RESET_T2 = "re-arm the timer that fired with T2"
    START_CANCEL_TIMER = "start the 64*T1 wait for a final response after CANCEL (§9.1)"
    REPORT_TIMEOUT = "inform the TU of a timeout"
    REPORT_TRANSPORT_ERROR = "inform the TU of a transport failure"


S = TypeVar("S", bound=enum.Enum)


@attrs.frozen
class _Rule(Generic[S]):
    """One transition: the actions, in order, then the new state (None: stay)."""

    target: S | None
    actions: tuple[_Action, ...] = ()


def _rule(target: S | None, *actions: _Action) -> _Rule[S]:
    return _Rule(target, actions)


def _response_input(response: Response) -> Input:
    if 100 <= response.status < 200:
        return Input.PROVISIONAL
    if 200 <= response.status < 300:
        return Input.SUCCESS
    if 300 <= response.status < 700:
        return Input.FAILURE
    raise TransactionError(f"status {response.status} is not a SIP status code (100-699)")


class _Transaction(Generic[S]):
    """What the four machines share: the table walk, timers and the event queue."""

    _figure: str = ""

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timers: Timers,
        initial: S,
        terminated: S,
        table: Mapping[tuple[S, Input], _Rule[S]],
        state_timers: Mapping[S, frozenset[Input]],
    ) -> None:
        self._request = request
        self._reliable = reliable
        self._t = timers
        self._state: S = initial
        self._terminated_state: S = terminated
        self._table = table
        self._state_timers = state_timers
        # A list, not a deque: one to three events at a time, and an empty deque costs 760 bytes against a
        # list's 56, in every transaction that lingers for Timer J/K.
        self._events: list[TransactionEvent] = []
        self._deadlines: dict[Input, float] = {}
        self._intervals: dict[Input, float] = {}
        self._firing: Input | None = None
        self._branch = request.branch

    # ---------------------------------------------------------------------------------------------- API

    @property
    def state(self) -> S:
        return self._state

    @property
    def request(self) -> Request:
        """The request that created the transaction."""
        return self._request

    @property
    def reliable(self) -> bool:
        return self._reliable

    @property
    def is_terminated(self) -> bool:
        return self._state is self._terminated_state

    def get_timer(self) -> float | None:
        """The earliest deadline at which ``handle_timer`` must be called, or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (in deadline order)."""
        self._fire_due(now)

    def handle_transport_error(self, now: float) -> None:
        """The transport failed to send a message of this transaction."""
        self._step(Input.TRANSPORT_ERROR, None, now)
        self._fire_due(now)

    def next_event(self) -> TransactionEvent | None:
        """The next queued event, or None."""
        return self._events.pop(0) if self._events else None

    # ----------------------------------------------------------------------------------------- internals

    def _emit(self, event: TransactionEvent) -> None:
        if self.is_terminated and not isinstance(event, Terminated):  # pragma: no cover - table guarantees
            raise TransactionError(f"{type(self).__name__}: event {event!r} after Terminated")
        self._events.append(event)

    def _arm(self, timer: Input, interval: float, now: float) -> None:
        self._intervals[timer] = interval
        self._deadlines[timer] = now + interval

    def _fire_due(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and min(deadlines.values()) <= now:
            timer = min(deadlines, key=lambda t: (deadlines[t], _TIMER_ORDER[t]))
            del deadlines[timer]
            self._firing = timer
            try:
                self._step(timer, None, now)
            finally:
                self._firing = None

    def _step(self, inp: Input, message: Request | Response | None, now: float) -> None:
        rule = self._table.get((self._state, inp))
        if rule is None:
            raise TransactionError(
                f"{type(self).__name__} (branch {self._branch}): {inp.value} is not allowed in state "
                f"{self._state.name} ({self._figure})"
            )
        for action in rule.actions:
            self._perform(action, inp, message, now)
        if rule.target is not None and rule.target is not self._state:
            if log.isEnabledFor(logging.DEBUG):  # the arguments cost (Enum .name is a Python property)
                log.debug(
                    "%s %s: %s -> %s on %s",
                    type(self).__name__,
                    self._branch,
                    self._state.name,
                    rule.target.name,
                    inp.value,
                )
            self._state = rule.target
            keep = self._state_timers[rule.target]
            for timer in [t for t in self._deadlines if t not in keep]:
                del self._deadlines[timer]
            if rule.target is self._terminated_state:
                self._deadlines.clear()
                self._events.append(Terminated())
            else:
                self._enter(rule.target, now)

    def _perform(self, action: _Action, inp: Input, message: Request | Response | None, now: float) -> None:
        if action is _Action.BACK_OFF:
            timer = self._fired()
            interval = 2 * self._intervals[timer]
            if timer is not Input.TIMER_A:
                interval = min(interval, self._t.t2)
            self._arm(timer, interval, now)
        elif action is _Action.RESET_T2:
            self._arm(self._fired(), self._t.t2, now)
        elif action is _Action.REPORT_TIMEOUT:
            self._emit(TimedOut(_TIMER_NAMES[inp]))
        elif action is _Action.REPORT_TRANSPORT_ERROR:
            self._emit(TransportFailed())
        else:
            self._perform_specific(action, message, now)

    def _fired(self) -> Input:
        if self._firing is None:  # pragma: no cover - only timer rules back off
            raise TransactionError("back-off outside a timer expiry")
        return self._firing

    def _enter(self, state: S, now: float) -> None:  # pragma: no cover - every machine overrides
        raise NotImplementedError

    def _perform_specific(
        self, action: _Action, message: Request | Response | None, now: float
    ) -> None:  # pragma: no cover - every machine overrides
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- clients


class _ClientTransaction(_Transaction[S]):
    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timers: Timers,
        initial: S,
        terminated: S,
        table: Mapping[tuple[S, Input], _Rule[S]],
        state_timers: Mapping[S, frozenset[Input]],
    ) -> None:
        if not request.via:
            raise TransactionError("a client transaction needs a request with a Via header")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=initial,
            terminated=terminated,
            table=table,
            state_timers=state_timers,
        )
        self._key = client_transaction_key(request)

    @property
    def key(self) -> TransactionKey:
        """The §17.1.3 matching key: top Via branch and method."""
        return self._key

    def handle_response(self, response: Response, now: float) -> None:
        """A response that matched this transaction (§17.1.3)."""
        if client_transaction_key(response) != self._key:
            raise TransactionError(
                f"response (branch {response.branch}, CSeq {response.get('cseq')}) does not match "
                f"client transaction {self._key}"
            )
        self._step(_response_input(response), response, now)
        self._fire_due(now)

    def _perform_specific(self, action: _Action, message: Request | Response | None, now: float) -> None:
        if action is _Action.PASS_UP and isinstance(message, Response):
            self._emit(ResponseReceived(message))
        elif action is _Action.RETRANSMIT:
            self._emit(MessageToSend(self._request))
        else:
            self._perform_client(action, message, now)

    def _perform_client(
        self, action: _Action, message: Request | Response | None, now: float
    ) -> None:  # pragma: no cover - no such rule in the non-INVITE table
        raise TransactionError(f"{type(self).__name__}: no action {action.name}")


class InviteClientState(enum.Enum):
    """RFC 6026 Figure 5 (replacing RFC 3261 Figure 5)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


_ICS = InviteClientState
_A = _Action

#: INVITE client transaction: RFC 3261 §17.1.1.2 / Figure 5 as replaced by RFC 6026 §8.4 (Accepted, Timer M).
#: Added beyond the figure: a transport error in Proceeding ends the transaction (§17.1.4); §9.1's wait for a
#: final response after CANCEL; late or out-of-place responses absorbed (RFC 6026 §8.4: "takes no action").
INVITE_CLIENT_TABLE: Final[Mapping[tuple[InviteClientState, Input], _Rule[InviteClientState]]] = {
    (_ICS.CALLING, Input.PROVISIONAL): _rule(_ICS.PROCEEDING, _A.PASS_UP),
    (_ICS.CALLING, Input.SUCCESS): _rule(_ICS.ACCEPTED, _A.PASS_UP),
    (_ICS.CALLING, Input.FAILURE): _rule(_ICS.COMPLETED, _A.PASS_UP, _A.SEND_ACK),
    (_ICS.CALLING, Input.TIMER_A): _rule(None, _A.RETRANSMIT, _A.BACK_OFF),
    (_ICS.CALLING, Input.TIMER_B): _rule(_ICS.TERMINATED, _A.REPORT_TIMEOUT),
    (_ICS.CALLING, Input.TIMER_CANCEL): _rule(_ICS.TERMINATED, _A.REPORT_TIMEOUT),
    (_ICS.CALLING, Input.CANCEL_SENT): _rule(None, _A.START_CANCEL_TIMER),
    (_ICS.CALLING, Input.TRANSPORT_ERROR): _rule(_ICS.TERMINATED, _A.REPORT_TRANSPORT_ERROR),
    (_ICS.PROCEEDING, Input.PROVISIONAL): _rule(None, _A.PASS_UP),
    (_ICS.PROCEEDING, Input.SUCCESS): _rule(_ICS.ACCEPTED, _A.PASS_UP),
    (_ICS.PROCEEDING, Input.FAILURE): _rule(_ICS.COMPLETED, _A.PASS_UP, _A.SEND_ACK),
    (_ICS.PROCEEDING, Input.TIMER_CANCEL): _rule(_ICS.TERMINATED, _A.REPORT_TIMEOUT),
    (_ICS.PROCEEDING, Input.CANCEL_SENT): _rule(None, _A.START_CANCEL_TIMER),
    (_ICS.PROCEEDING, Input.TRANSPORT_ERROR): _rule(_ICS.TERMINATED, _A.REPORT_TRANSPORT_ERROR),
    (_ICS.COMPLETED, Input.PROVISIONAL): _rule(None),
    (_ICS.COMPLETED, Input.SUCCESS): _rule(None),
    (_ICS.COMPLETED, Input.FAILURE): _rule(None, _A.SEND_ACK),
    (_ICS.COMPLETED, Input.TIMER_D): _rule(_ICS.TERMINATED),
    (_ICS.COMPLETED, Input.TRANSPORT_ERROR): _rule(_ICS.TERMINATED, _A.REPORT_TRANSPORT_ERROR),
    (_ICS.ACCEPTED, Input.PROVISIONAL): _rule(None),
    (_ICS.ACCEPTED, Input.SUCCESS): _rule(None, _A.PASS_UP),
    (_ICS.ACCEPTED, Input.FAILURE): _rule(None),
    (_ICS.ACCEPTED, Input.TIMER_M): _rule(_ICS.TERMINATED),
    (_ICS.ACCEPTED, Input.TRANSPORT_ERROR): _rule(None),  # the ACK for a 2xx is the TU's, not ours
    (_ICS.TERMINATED, Input.PROVISIONAL): _rule(None),
    (_ICS.TERMINATED, Input.SUCCESS): _rule(None),
    (_ICS.TERMINATED, Input.FAILURE): _rule(None),
    (_ICS.TERMINATED, Input.TRANSPORT_ERROR): _rule(None),
}

_INVITE_CLIENT_TIMERS: Final = {
    _ICS.CALLING: frozenset({Input.TIMER_A, Input.TIMER_B, Input.TIMER_CANCEL}),
    _ICS.PROCEEDING: frozenset({Input.TIMER_CANCEL}),
    _ICS.COMPLETED: frozenset({Input.TIMER_D}),
    _ICS.ACCEPTED: frozenset({Input.TIMER_M}),
    _ICS.TERMINATED: frozenset[Input](),
}


class InviteClientTransaction(_ClientTransaction[InviteClientState]):
    """RFC 3261 §17.1.1 with RFC 6026 §8.4: sends the INVITE at construction, retransmits it on Timer A.

    Every 2xx (the first, retransmissions, other forks) goes to the TU, which sends the ACK for it. For a
    300-699 final response the transaction builds the ACK itself (§17.1.1.3) and resends it for every
    retransmission of that response.
    """

    _figure = "RFC 6026 Figure 5"

    def __init__(self, request: Request, *, reliable: bool, now: float, timers: Timers = Timers()) -> None:
        if request.method != "INVITE":
            raise TransactionError(f"InviteClientTransaction needs an INVITE, not {request.method}")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=_ICS.CALLING,
            terminated=_ICS.TERMINATED,
            table=INVITE_CLIENT_TABLE,
            state_timers=_INVITE_CLIENT_TIMERS,
        )
        self._ack: Request | None = None
        self._emit(MessageToSend(request))
        if not reliable:
            self._arm(Input.TIMER_A, timers.a, now)
        self._arm(Input.TIMER_B, timers.b, now)

    @property
    def ack(self) -> Request | None:
        """The ACK sent for a non-2xx final response, once there is one."""
        return self._ack

    def handle_cancel_sent(self, now: float) -> None:
        """The TU sent a CANCEL for this INVITE: give up 64*T1 later without a final response (§9.1)."""
        self._step(Input.CANCEL_SENT, None, now)

    def _enter(self, state: InviteClientState, now: float) -> None:
        if state is _ICS.COMPLETED:
            self._arm(Input.TIMER_D, self._t.d(reliable=self._reliable), now)
        elif state is _ICS.ACCEPTED:
            self._arm(Input.TIMER_M, self._t.m, now)

    def _perform_client(self, action: _Action, message: Request | Response | None, now: float) -> None:
        if action is _Action.SEND_ACK and isinstance(message, Response):
            if self._ack is None:
                self._ack = build_ack(self._request, message)
            self._emit(MessageToSend(self._ack))
        elif action is _Action.START_CANCEL_TIMER:
            if Input.TIMER_CANCEL not in self._deadlines:
                self._arm(Input.TIMER_CANCEL, self._t.cancel, now)
        else:  # pragma: no cover - table and actions agree
            raise TransactionError(f"InviteClientTransaction: no action {action.name}")


class NonInviteClientState(enum.Enum):
    """RFC 3261 Figure 6."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


_NCS = NonInviteClientState

#: Non-INVITE client transaction: RFC 3261 §17.1.2.2 / Figure 6. Responses after the final are absorbed
#: ("The Completed state exists to buffer any additional response retransmissions").
NON_INVITE_CLIENT_TABLE: Final[Mapping[tuple[NonInviteClientState, Input], _Rule[NonInviteClientState]]] = {
    (_NCS.TRYING, Input.PROVISIONAL): _rule(_NCS.PROCEEDING, _A.PASS_UP),
    (_NCS.TRYING, Input.SUCCESS): _rule(_NCS.COMPLETED, _A.PASS_UP),
    (_NCS.TRYING, Input.FAILURE): _rule(_NCS.COMPLETED, _A.PASS_UP),
    (_NCS.TRYING, Input.TIMER_E): _rule(None, _A.RETRANSMIT, _A.BACK_OFF),
    (_NCS.TRYING, Input.TIMER_F): _rule(_NCS.TERMINATED, _A.REPORT_TIMEOUT),
    (_NCS.TRYING, Input.TRANSPORT_ERROR): _rule(_NCS.TERMINATED, _A.REPORT_TRANSPORT_ERROR),
    (_NCS.PROCEEDING, Input.PROVISIONAL): _rule(None, _A.PASS_UP),
    (_NCS.PROCEEDING, Input.SUCCESS): _rule(_NCS.COMPLETED, _A.PASS_UP),
    (_NCS.PROCEEDING, Input.FAILURE): _rule(_NCS.COMPLETED, _A.PASS_UP),
    (_NCS.PROCEEDING, Input.TIMER_E): _rule(None, _A.RETRANSMIT, _A.RESET_T2),
    (_NCS.PROCEEDING, Input.TIMER_F): _rule(_NCS.TERMINATED, _A.REPORT_TIMEOUT),
    (_NCS.PROCEEDING, Input.TRANSPORT_ERROR): _rule(_NCS.TERMINATED, _A.REPORT_TRANSPORT_ERROR),
    (_NCS.COMPLETED, Input.PROVISIONAL): _rule(None),
    (_NCS.COMPLETED, Input.SUCCESS): _rule(None),
    (_NCS.COMPLETED, Input.FAILURE): _rule(None),
    (_NCS.COMPLETED, Input.TIMER_K): _rule(_NCS.TERMINATED),
    (_NCS.COMPLETED, Input.TRANSPORT_ERROR): _rule(None),  # nothing is sent in Completed
    (_NCS.TERMINATED, Input.PROVISIONAL): _rule(None),
    (_NCS.TERMINATED, Input.SUCCESS): _rule(None),
    (_NCS.TERMINATED, Input.FAILURE): _rule(None),
    (_NCS.TERMINATED, Input.TRANSPORT_ERROR): _rule(None),
}

_NON_INVITE_CLIENT_TIMERS: Final = {
    _NCS.TRYING: frozenset({Input.TIMER_E, Input.TIMER_F}),
    _NCS.PROCEEDING: frozenset({Input.TIMER_E, Input.TIMER_F}),
    _NCS.COMPLETED: frozenset({Input.TIMER_K}),
    _NCS.TERMINATED: frozenset[Input](),
}


class NonInviteClientTransaction(_ClientTransaction[NonInviteClientState]):
    """RFC 3261 §17.1.2: sends the request at construction; Timer E retransmits (doubling up to T2)."""

    _figure = "RFC 3261 Figure 6"

    def __init__(self, request: Request, *, reliable: bool, now: float, timers: Timers = Timers()) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"NonInviteClientTransaction cannot carry {request.method}")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=_NCS.TRYING,
            terminated=_NCS.TERMINATED,
            table=NON_INVITE_CLIENT_TABLE,
            state_timers=_NON_INVITE_CLIENT_TIMERS,
        )
        self._emit(MessageToSend(request))
        if not reliable:
            self._arm(Input.TIMER_E, timers.e, now)
        self._arm(Input.TIMER_F, timers.f, now)

    def _enter(self, state: NonInviteClientState, now: float) -> None:
        if state is _NCS.COMPLETED:
            self._arm(Input.TIMER_K, self._t.k(reliable=self._reliable), now)


# ---------------------------------------------------------------------------------------------- servers


class _ServerTransaction(_Transaction[S]):
    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timers: Timers,
        initial: S,
        terminated: S,
        table: Mapping[tuple[S, Input], _Rule[S]],
        state_timers: Mapping[S, frozenset[Input]],
    ) -> None:
        if not request.via:
            raise TransactionError("a server transaction needs a request with a Via header")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=initial,
            terminated=terminated,
            table=table,
            state_timers=state_timers,
        )
        self._last_response: Response | None = None
        self._emit(RequestReceived(request))

    @property
    def last_response(self) -> Response | None:
        """The response most recently passed to the transport (retransmitted on request retransmissions)."""
        return self._last_response

    def handle_request(self, request: Request, now: float) -> None:
        """A request that matched this transaction (§17.2.3): a retransmission, or the ACK (INVITE)."""
        if request.method == "ACK" and self._request.method == "INVITE":
            inp = Input.ACK
        elif request.method == self._request.method:
            inp = Input.REQUEST
        else:
            raise TransactionError(
                f"{request.method} cannot match a {self._request.method} server transaction (§17.2.3)"
            )
        self._step(inp, request, now)
        self._fire_due(now)

    def send_response(self, response: Response, now: float) -> None:
        """The TU's response to the request (§17.2: the TU passes it to this very transaction)."""
        cseq = response.cseq
        if cseq.seq != self._request.cseq.seq or cseq.method != self._request.method:
            raise TransactionError(
                f"response with CSeq {cseq} does not answer {self._request.method} CSeq {self._request.cseq}"
            )
        self._step(_response_input(response), response, now)
        self._fire_due(now)

    def _perform_specific(self, action: _Action, message: Request | Response | None, now: float) -> None:
        if action is _Action.PASS_UP and isinstance(message, Request):
            self._emit(AckReceived(message) if message.method == "ACK" else RequestReceived(message))
        elif action is _Action.SEND and isinstance(message, Response):
            self._deadlines.pop(Input.TIMER_TRYING, None)
            self._last_response = message
            self._emit(MessageToSend(message))
        elif action is _Action.RETRANSMIT:
            if self._last_response is None:
                self._send_trying()
            else:
                self._emit(MessageToSend(self._last_response))
        elif action is _Action.SEND_TRYING:
            self._send_trying()
        else:  # pragma: no cover - table and actions agree
            raise TransactionError(f"{type(self).__name__}: no action {action.name}")

    def _send_trying(self) -> None:
        self._deadlines.pop(Input.TIMER_TRYING, None)
        self._last_response = make_response(self._request, 100)
        self._emit(MessageToSend(self._last_response))


class InviteServerState(enum.Enum):
    """RFC 6026 Figure 7 (replacing RFC 3261 Figure 7)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


_ISS = InviteServerState

#: INVITE server transaction: RFC 3261 §17.2.1 / Figure 7 as replaced by RFC 6026 §8.5-8.8: a 2xx leads to
#: Accepted (Timer L), where INVITE retransmissions are absorbed, ACKs go to the TU and the TU's 2xx
#: retransmissions are sent; transport errors are reported and the state kept (§8.8). Responses from the TU
#: after a final one (other than 2xx in Accepted) are TU bugs and raise.
INVITE_SERVER_TABLE: Final[Mapping[tuple[InviteServerState, Input], _Rule[InviteServerState]]] = {
    (_ISS.PROCEEDING, Input.REQUEST): _rule(None, _A.RETRANSMIT),
    (_ISS.PROCEEDING, Input.ACK): _rule(None),  # nothing to acknowledge yet: absorbed
    (_ISS.PROCEEDING, Input.PROVISIONAL): _rule(None, _A.SEND),
    (_ISS.PROCEEDING, Input.SUCCESS): _rule(_ISS.ACCEPTED, _A.SEND),
    (_ISS.PROCEEDING, Input.FAILURE): _rule(_ISS.COMPLETED, _A.SEND),
    (_ISS.PROCEEDING, Input.TIMER_TRYING): _rule(None, _A.SEND_TRYING),
    (_ISS.PROCEEDING, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_ISS.COMPLETED, Input.REQUEST): _rule(None, _A.RETRANSMIT),
    (_ISS.COMPLETED, Input.ACK): _rule(_ISS.CONFIRMED),
    (_ISS.COMPLETED, Input.TIMER_G): _rule(None, _A.RETRANSMIT, _A.BACK_OFF),
    (_ISS.COMPLETED, Input.TIMER_H): _rule(_ISS.TERMINATED, _A.REPORT_TIMEOUT),
    (_ISS.COMPLETED, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_ISS.CONFIRMED, Input.REQUEST): _rule(None),
    (_ISS.CONFIRMED, Input.ACK): _rule(None),
    (_ISS.CONFIRMED, Input.TIMER_I): _rule(_ISS.TERMINATED),
    (_ISS.CONFIRMED, Input.TRANSPORT_ERROR): _rule(None),  # nothing is sent in Confirmed
    (_ISS.ACCEPTED, Input.REQUEST): _rule(None),
    (_ISS.ACCEPTED, Input.ACK): _rule(None, _A.PASS_UP),
    (_ISS.ACCEPTED, Input.SUCCESS): _rule(None, _A.SEND),
    (_ISS.ACCEPTED, Input.TIMER_L): _rule(_ISS.TERMINATED),
    (_ISS.ACCEPTED, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_ISS.TERMINATED, Input.REQUEST): _rule(None),
    (_ISS.TERMINATED, Input.ACK): _rule(None),
    (_ISS.TERMINATED, Input.TRANSPORT_ERROR): _rule(None),
}

_INVITE_SERVER_TIMERS: Final = {
    _ISS.PROCEEDING: frozenset({Input.TIMER_TRYING}),
    _ISS.COMPLETED: frozenset({Input.TIMER_G, Input.TIMER_H}),
    _ISS.CONFIRMED: frozenset({Input.TIMER_I}),
    _ISS.ACCEPTED: frozenset({Input.TIMER_L}),
    _ISS.TERMINATED: frozenset[Input](),
}


class InviteServerTransaction(_ServerTransaction[InviteServerState]):
    """RFC 3261 §17.2.1 with RFC 6026: passes the INVITE to the TU at construction (``RequestReceived``).

    ``trying_delay``: seconds after which 100 Trying is sent if the TU has not responded (None: never,
    the TU answers at once; 0: immediately).
    """

    _figure = "RFC 6026 Figure 7"

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: Timers = Timers(),
        trying_delay: float | None = 0.2,
    ) -> None:
        if request.method != "INVITE":
            raise TransactionError(f"InviteServerTransaction needs an INVITE, not {request.method}")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=_ISS.PROCEEDING,
            terminated=_ISS.TERMINATED,
            table=INVITE_SERVER_TABLE,
            state_timers=_INVITE_SERVER_TIMERS,
        )
        if trying_delay is not None:
            self._arm(Input.TIMER_TRYING, trying_delay, now)
            self._fire_due(now)

    def _enter(self, state: InviteServerState, now: float) -> None:
        if state is _ISS.COMPLETED:
            if not self._reliable:
                self._arm(Input.TIMER_G, self._t.g, now)
            self._arm(Input.TIMER_H, self._t.h, now)
        elif state is _ISS.CONFIRMED:
            self._arm(Input.TIMER_I, self._t.i(reliable=self._reliable), now)
        elif state is _ISS.ACCEPTED:
            self._arm(Input.TIMER_L, self._t.l, now)


class NonInviteServerState(enum.Enum):
    """RFC 3261 Figure 8."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


_NSS = NonInviteServerState

#: Non-INVITE server transaction: RFC 3261 §17.2.2 / Figure 8, with §17.2.4 as replaced by RFC 6026 §8.8
#: (a transport error is reported, the state kept). Further finals from the TU in Completed are discarded
#: (§17.2.2 "MUST be discarded"); a provisional after the final is a TU bug and raises.
NON_INVITE_SERVER_TABLE: Final[Mapping[tuple[NonInviteServerState, Input], _Rule[NonInviteServerState]]] = {
    (_NSS.TRYING, Input.REQUEST): _rule(None),
    (_NSS.TRYING, Input.PROVISIONAL): _rule(_NSS.PROCEEDING, _A.SEND),
    (_NSS.TRYING, Input.SUCCESS): _rule(_NSS.COMPLETED, _A.SEND),
    (_NSS.TRYING, Input.FAILURE): _rule(_NSS.COMPLETED, _A.SEND),
    (_NSS.TRYING, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_NSS.PROCEEDING, Input.REQUEST): _rule(None, _A.RETRANSMIT),
    (_NSS.PROCEEDING, Input.PROVISIONAL): _rule(None, _A.SEND),
    (_NSS.PROCEEDING, Input.SUCCESS): _rule(_NSS.COMPLETED, _A.SEND),
    (_NSS.PROCEEDING, Input.FAILURE): _rule(_NSS.COMPLETED, _A.SEND),
    (_NSS.PROCEEDING, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_NSS.COMPLETED, Input.REQUEST): _rule(None, _A.RETRANSMIT),
    (_NSS.COMPLETED, Input.SUCCESS): _rule(None),
    (_NSS.COMPLETED, Input.FAILURE): _rule(None),
    (_NSS.COMPLETED, Input.TIMER_J): _rule(_NSS.TERMINATED),
    (_NSS.COMPLETED, Input.TRANSPORT_ERROR): _rule(None, _A.REPORT_TRANSPORT_ERROR),
    (_NSS.TERMINATED, Input.REQUEST): _rule(None),
    (_NSS.TERMINATED, Input.TRANSPORT_ERROR): _rule(None),
}

_NON_INVITE_SERVER_TIMERS: Final = {
    _NSS.TRYING: frozenset[Input](),
    _NSS.PROCEEDING: frozenset[Input](),
    _NSS.COMPLETED: frozenset({Input.TIMER_J}),
    _NSS.TERMINATED: frozenset[Input](),
}


class NonInviteServerTransaction(_ServerTransaction[NonInviteServerState]):
    """RFC 3261 §17.2.2: passes the request to the TU at construction (``RequestReceived``)."""

    _figure = "RFC 3261 Figure 8"

    def __init__(self, request: Request, *, reliable: bool, now: float, timers: Timers = Timers()) -> None:
        if request.method in ("INVITE", "ACK"):
            raise TransactionError(f"NonInviteServerTransaction cannot carry {request.method}")
        super().__init__(
            request,
            reliable=reliable,
            timers=timers,
            initial=_NSS.TRYING,
            terminated=_NSS.TERMINATED,
            table=NON_INVITE_SERVER_TABLE,
            state_timers=_NON_INVITE_SERVER_TIMERS,
        )

    def _enter(self, state: NonInviteServerState, now: float) -> None:
        if state is _NSS.COMPLETED:
            self._arm(Input.TIMER_J, self._t.j(reliable=self._reliable), now)


ClientTransaction: TypeAlias = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction: TypeAlias = InviteServerTransaction | NonInviteServerTransaction
AnyTransaction: TypeAlias = ClientTransaction | ServerTransaction


# --------------------------------------------------------------------------------------------- matching

#: A hashable matching key; its last element is always the method the transaction was created for.
TransactionKey: TypeAlias = tuple[Hashable, ...]


def server_transaction_key(request: Request) -> TransactionKey:
    """The §17.2.3 key of the server transaction ``request`` belongs to (an ACK maps to its INVITE).

    With a magic-cookie branch: branch, top Via sent-by and method. Otherwise the RFC 2543 rules: Request-URI,
    To tag, From tag, Call-ID, CSeq number, top Via and method (for the ACK of a non-2xx final response the
    To tag is the one of the response: see ``TransactionLayer`` for that lookup).
    """
    if not request.via:
        raise TransactionError("request without Via cannot be matched to a transaction")
    top = request.via[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = top.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, top.sent_by, method)
    return (
        "2543",
        str(request.uri),
        request.to.tag,
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        str(top),
        method,
    )


def cancel_target_key(cancel: Request) -> TransactionKey:
    """The key of the INVITE server transaction a CANCEL targets (§9.2 with §17.2.3)."""
    return server_transaction_key(attrs.evolve(cancel, method="INVITE"))


def client_transaction_key(message: Request | Response) -> TransactionKey:
    """The §17.1.3 key: the top Via branch and the CSeq method (of a response, or of the request sent)."""
    branch = message.via[0].branch if message.via else None
    method = message.method if isinstance(message, Request) else message.cseq.method
    return (branch, method)


# ------------------------------------------------------------------------------------- ACK and CANCEL


def _max_forwards(request: Request) -> str:
    value = request.get("max-forwards")
    return value if value is not None else "70"


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 300-699 response, built by the INVITE client transaction (§17.1.1.3).

    Request-URI, Call-ID and From from the INVITE; To from the response; the INVITE's top Via only (same
    branch); CSeq number of the INVITE with method ACK; the INVITE's Route header fields; no body.
    """
    headers = [Header("Via", invite.values("via")[0])]
    headers.extend(Header("Route", value) for value in invite.get_all("route"))
    headers += [
        Header("To", response.get("to") or ""),
        Header("From", invite.get("from") or ""),
        Header("Max-Forwards", _max_forwards(invite)),
        Header("Call-ID", invite.call_id),
        Header("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    return Request("ACK", invite.uri, tuple(headers))


def build_cancel(request: Request) -> Request:
    """A CANCEL for ``request`` (§9.1).

    Request-URI, Call-ID, To, From and the CSeq number identical (tags included); only the top Via; method
    CANCEL in CSeq; the Route header fields copied; no Require or Proxy-Require; no body.
    """
    headers = [Header("Via", request.values("via")[0])]
    headers.extend(Header("Route", value) for value in request.get_all("route"))
    headers += [
        Header("To", request.get("to") or ""),
        Header("From", request.get("from") or ""),
        Header("Max-Forwards", _max_forwards(request)),
        Header("Call-ID", request.call_id),
        Header("CSeq", f"{request.cseq.seq} CANCEL"),
    ]
    return Request("CANCEL", request.uri, tuple(headers))


# ---------------------------------------------------------------------------------------------- manager


@attrs.define(eq=False)
class _Entry:
    handle: TransactionHandle
    machine: AnyTransaction
    key: TransactionKey
    #: The deadline last pushed on the heap for this transaction (heap entries with another one are stale).
    scheduled: float | None = None
    #: INVITE client only: the handle of the CANCEL the TU asked for (§9.1), and whether it still waits for a
    #: provisional response before it may go out.
    cancel: TransactionHandle | None = None
    cancel_queued: bool = False

    @property
    def server(self) -> ServerTransaction:
        machine = self.machine
        if not isinstance(machine, InviteServerTransaction | NonInviteServerTransaction):
            raise TransactionError(f"{self.handle} is a client transaction")
        return machine

    @property
    def client(self) -> ClientTransaction:
        machine = self.machine
        if not isinstance(machine, InviteClientTransaction | NonInviteClientTransaction):
            raise TransactionError(f"{self.handle} is a server transaction")
        return machine


class TransactionLayer:
    """Owns every transaction of an endpoint: routes messages to them, creates server transactions.

    Inputs: ``receive_request``/``receive_response`` (from the transport), ``send_request``/``send_response``/
    ``cancel`` (from the TU), ``handle_timer`` and ``handle_transport_error`` (from the shell). Output: events
    from ``next_event()``, each carrying the ``TransactionHandle`` it concerns (``MessageToSend`` goes out on
    that transaction's transport: ``handle.context`` is what the shell gave when the transaction was created).

    What the layer decides by itself:

    * A retransmitted request is absorbed by its server transaction (which resends the last response).
    * An ACK matching an INVITE server transaction goes to it: absorbed in Completed/Confirmed (ACK for a
      non-2xx), handed to the TU as ``AckReceived`` in Accepted (RFC 6026). An ACK matching none — the usual
      ACK for a 2xx, which has its own branch — is handed to the TU as ``AckReceived`` with ``handle=None``.
    * CANCEL (§9.2) is answered here: 200 when it matches a server transaction (then ``CancelReceived`` for
      an INVITE that has no final response yet; the TU answers that INVITE with 487), 481 when it matches
      none. The TU never sees ``RequestReceived`` for a CANCEL.
    * A new request while ``max_server_transactions`` are open is answered statelessly with 503 and
      Retry-After (``retry_after`` seconds); its ``MessageToSend`` carries a handle of no live transaction.
      (A client ACKs a 503 to INVITE; that ACK matches nothing and reaches the TU like any unmatched ACK.)
    * A response matching no client transaction becomes ``StrayResponse`` (with ``handle=None``).

    ``tag_factory`` supplies To tags for the responses the layer builds (CANCEL 200 when the INVITE has no
    tag yet, 481, 503): randomness is injected, never drawn here.
    """

    def __init__(
        self,
        *,
        tag_factory: Callable[[], str],
        timers: Timers = Timers(),
        limits: Limits = DEFAULT_LIMITS,
        retry_after: int = 5,
        trying_delay: float | None = 0.2,
    ) -> None:
        self._tag_factory = tag_factory
        self._timers = timers
        self._max_server = limits.max_server_transactions
        self._retry_after = retry_after
        self._trying_delay = trying_delay
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._entries: dict[int, _Entry] = {}
        self._client: dict[TransactionKey, _Entry] = {}
        self._server: dict[TransactionKey, _Entry] = {}
        #: Server transactions (except CANCEL) by key without the method: what a CANCEL may target.
        self._cancellable: dict[TransactionKey, _Entry] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._events: deque[TransactionEvent] = deque()

    # ------------------------------------------------------------------------------------- inspection

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def server_count(self) -> int:
        return len(self._server)

    @property
    def client_count(self) -> int:
        return len(self._client)

    def is_retransmission(self, request: Request) -> bool:
        """Whether ``request`` (not an ACK) belongs to a server transaction already open: a retransmission."""
        return server_transaction_key(request) in self._server

    def transaction(self, handle: TransactionHandle) -> AnyTransaction | None:
        """The live transaction behind ``handle`` (read-only use: state, last response), or None."""
        entry = self._entries.get(handle.id)
        return entry.machine if entry is not None else None

    def next_event(self) -> TransactionEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline over all transactions (a heap with lazy deletion)."""
        heap = self._heap
        while heap and self._stale(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ---------------------------------------------------------------------------------- from the network

    def receive_request(
        self, request: Request, now: float, *, reliable: bool, context: object = None
    ) -> None:
        """A request from the transport; ``context`` says where it came from (kept in the new handle)."""
        if request.method == "ACK":
            self._receive_ack(request, now)
            return
        key = server_transaction_key(request)
        entry = self._server.get(key)
        if entry is not None:
            entry.server.handle_request(request, now)
            self._drain(entry, now)
            return
        if request.method == "CANCEL":
            self._receive_cancel(request, key, now, reliable=reliable, context=context)
            return
        if len(self._server) >= self._max_server:
            self._reject_overloaded(request, context)
            return
        self._drain(self._create_server(request, key, now, reliable=reliable, context=context), now)

    def receive_response(self, response: Response, now: float) -> None:
        """A response from the transport: to its client transaction (§17.1.3) or ``StrayResponse``."""
        entry = self._client.get(client_transaction_key(response))
        if entry is None:
            log.debug("stray response %s %s (branch %s)", response.status, response.reason, response.branch)
            self._events.append(StrayResponse(response))
            return
        entry.client.handle_response(response, now)
        self._drain(entry, now)

    # -------------------------------------------------------------------------------------- from the TU

    def send_request(
        self, request: Request, now: float, *, reliable: bool, context: object = None
    ) -> TransactionHandle:
        """Start a client transaction for ``request`` (the caller supplied the Via with a fresh branch)."""
        if request.method == "ACK":
            raise TransactionError("ACK has no client transaction (§17.1): pass it to the transport directly")
        branch = request.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise TransactionError(
                f"top Via branch must begin with {MAGIC_COOKIE} (§8.1.1.7), got {branch!r}"
            )
        key = client_transaction_key(request)
        if key in self._client:
            raise TransactionError(
                f"a client transaction with branch {branch} and method {request.method} exists"
            )
        handle = TransactionHandle(next(self._ids), request.method, False, context)
        self._start_client(handle, request, key, now, reliable=reliable)
        return handle

    def send_response(self, handle: TransactionHandle, response: Response, now: float) -> None:
        """Pass the TU's response to the server transaction ``handle``.

        A 2xx to an INVITE whose transaction has already ended (Timer L) is still sent: its retransmission is
        the UAS core's business (§13.3.1.4), so it comes out as a ``MessageToSend`` on ``handle``.
        """
        entry = self._entries.get(handle.id)
        if entry is None:
            if handle.is_server and handle.method == "INVITE" and 200 <= response.status < 300:
                self._events.append(MessageToSend(response, handle=handle))
                return
            raise TransactionError(f"no live transaction {handle}")
        entry.server.send_response(response, now)
        self._drain(entry, now)

    def send_stateless(self, handle: TransactionHandle, response: Response) -> None:
        """Send ``response`` once and end server transaction ``handle`` at once, as a stateless UAS would
        (RFC 3261 §8.2.7): nothing is retransmitted, a retransmitted request starts afresh. For challenges
        decided after the request was read, so that a spoofed source draws one answer, not eleven."""
        entry = self._entries.get(handle.id)
        if entry is None or not handle.is_server:
            raise TransactionError(f"no live server transaction {handle}")
        self._remove(entry)
        self._events.append(MessageToSend(response, handle=handle))
        self._events.append(Terminated(handle=handle))

    def cancel(self, handle: TransactionHandle, now: float) -> TransactionHandle | None:
        """CANCEL the INVITE of client transaction ``handle`` (§9.1); returns the CANCEL's handle.

        The CANCEL goes out once a provisional response has arrived (queued until then; if a final response
        comes first, it is dropped with a ``Terminated`` for its handle). None when the INVITE already has a
        final response or is gone: CANCEL would be a no-op.
        """
        entry = self._entries.get(handle.id)
        if entry is None:
            return None
        machine = entry.machine
        if not isinstance(machine, InviteClientTransaction):
            raise TransactionError(f"only an INVITE client transaction can be cancelled (§9.1), not {handle}")
        if machine.state not in (InviteClientState.CALLING, InviteClientState.PROCEEDING):
            return None  # a final response arrived: CANCEL would be a no-op
        if entry.cancel is not None:
            return entry.cancel  # asked before: the same CANCEL
        entry.cancel = TransactionHandle(next(self._ids), "CANCEL", False, handle.context)
        if machine.state is InviteClientState.CALLING:
            entry.cancel_queued = True  # §9.1: not before a provisional response
        else:
            self._send_cancel(entry, machine, entry.cancel, now)
        return entry.cancel

    # ------------------------------------------------------------------------------------- from the shell

    def handle_timer(self, now: float) -> None:
        """Fire every transaction timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._stale(item):
                continue
            entry = self._entries[item[2]]
            entry.scheduled = None
            entry.machine.handle_timer(now)
            self._drain(entry, now)

    def handle_transport_error(self, handle: TransactionHandle, now: float) -> None:
        """The transport could not send a message of ``handle``; ignored when the transaction is gone."""
        entry = self._entries.get(handle.id)
        if entry is None:
            return
        entry.machine.handle_transport_error(now)
        self._drain(entry, now)

    # ---------------------------------------------------------------------------------------- internals

    def _stale(self, item: tuple[float, int, int]) -> bool:
        entry = self._entries.get(item[2])
        return entry is None or entry.scheduled != item[0]

    def _schedule(self, entry: _Entry) -> None:
        deadline = entry.machine.get_timer()
        if deadline == entry.scheduled:
            return
        entry.scheduled = deadline
        if deadline is None:
            return
        heapq.heappush(self._heap, (deadline, next(self._seq), entry.handle.id))
        if len(self._heap) > 2 * len(self._entries) + 1024:
            self._heap = [
                (e.scheduled, next(self._seq), e.handle.id)
                for e in self._entries.values()
                if e.scheduled is not None
            ]
            heapq.heapify(self._heap)

    def _register(self, entry: _Entry) -> None:
        self._entries[entry.handle.id] = entry
        if entry.handle.is_server:
            self._server[entry.key] = entry
            if entry.handle.method != "CANCEL":
                self._cancellable[entry.key[:-1]] = entry
        else:
            self._client[entry.key] = entry

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.handle.id]
        table = self._server if entry.handle.is_server else self._client
        if table.get(entry.key) is entry:
            del table[entry.key]
        if self._cancellable.get(entry.key[:-1]) is entry:
            del self._cancellable[entry.key[:-1]]

    def _drain(self, entry: _Entry, now: float, *, swallow_request: bool = False) -> None:
        machine = entry.machine
        while (event := machine.next_event()) is not None:
            if swallow_request and isinstance(event, RequestReceived):
                continue
            # The machine's events are fresh objects nobody else holds: stamp the handle in place
            # (attrs.evolve per event was a measurable share of the CPS benchmark).
            object.__setattr__(event, "handle", entry.handle)
            self._events.append(event)
            if isinstance(event, Terminated):
                self._remove(entry)
        if entry.cancel_queued and entry.cancel is not None and isinstance(machine, InviteClientTransaction):
            if machine.state is InviteClientState.PROCEEDING:
                entry.cancel_queued = False
                self._send_cancel(entry, machine, entry.cancel, now)
            elif machine.state is not InviteClientState.CALLING:
                entry.cancel_queued = False
                self._events.append(Terminated(handle=entry.cancel))
        if entry.handle.id in self._entries:
            self._schedule(entry)

    def _start_client(
        self, handle: TransactionHandle, request: Request, key: TransactionKey, now: float, *, reliable: bool
    ) -> _Entry:
        machine: AnyTransaction
        if request.method == "INVITE":
            machine = InviteClientTransaction(request, reliable=reliable, now=now, timers=self._timers)
        else:
            machine = NonInviteClientTransaction(request, reliable=reliable, now=now, timers=self._timers)
        entry = _Entry(handle, machine, key)
        self._register(entry)
        self._drain(entry, now)
        return entry

    def _send_cancel(
        self, invite: _Entry, machine: InviteClientTransaction, handle: TransactionHandle, now: float
    ) -> None:
        cancel = build_cancel(machine.request)
        key = client_transaction_key(cancel)
        if key in self._client:
            raise TransactionError(f"a CANCEL with branch {cancel.branch} is already under way")
        machine.handle_cancel_sent(now)
        self._schedule(invite)
        self._start_client(handle, cancel, key, now, reliable=machine.reliable)

    def _create_server(
        self, request: Request, key: TransactionKey, now: float, *, reliable: bool, context: object
    ) -> _Entry:
        machine: AnyTransaction
        if request.method == "INVITE":
            machine = InviteServerTransaction(
                request, reliable=reliable, now=now, timers=self._timers, trying_delay=self._trying_delay
            )
        else:
            machine = NonInviteServerTransaction(request, reliable=reliable, now=now, timers=self._timers)
        entry = _Entry(TransactionHandle(next(self._ids), request.method, True, context), machine, key)
        self._register(entry)
        return entry

    def _receive_ack(self, ack: Request, now: float) -> None:
        key = server_transaction_key(ack)
        entry = self._server.get(key)
        if entry is None and key[0] == "2543" and ack.to.tag is not None:
            # §17.2.3: an RFC 2543 ACK carries the To tag of the response; the INVITE had none.
            candidate = self._server.get(("2543", key[1], None, *key[3:]))
            if candidate is not None:
                sent = candidate.server.last_response
                if sent is not None and sent.to.tag == ack.to.tag:
                    entry = candidate
        if entry is None or not isinstance(entry.machine, InviteServerTransaction):
            self._events.append(AckReceived(ack))
            return
        entry.machine.handle_request(ack, now)
        self._drain(entry, now)

    def _receive_cancel(
        self, cancel: Request, key: TransactionKey, now: float, *, reliable: bool, context: object
    ) -> None:
        target = self._cancellable.get(key[:-1])
        if target is None:
            if len(self._server) >= self._max_server:
                self._events.append(
                    MessageToSend(
                        make_response(cancel, 481, to_tag=self._tag_factory()),
                        handle=TransactionHandle(next(self._ids), "CANCEL", True, context),
                    )
                )
                return
            entry = self._create_server(cancel, key, now, reliable=reliable, context=context)
            self._drain(entry, now, swallow_request=True)
            self.send_response(entry.handle, make_response(cancel, 481, to_tag=self._tag_factory()), now)
            return
        invite = target.server
        sent = invite.last_response
        to_tag = sent.to.tag if sent is not None and sent.status > 100 else None
        if to_tag is None:
            to_tag = self._tag_factory()
        entry = self._create_server(cancel, key, now, reliable=reliable, context=context)
        self._drain(entry, now, swallow_request=True)
        self.send_response(entry.handle, make_response(cancel, 200, to_tag=to_tag), now)
        if isinstance(invite, InviteServerTransaction) and invite.state is InviteServerState.PROCEEDING:
            self._events.append(CancelReceived(cancel, to_tag, handle=target.handle))

    def _reject_overloaded(self, request: Request, context: object) -> None:
        log.debug(
            "%d server transactions open: 503 to %s (Call-ID %s)",
            len(self._server),
            request.method,
            request.call_id,
        )
        response = make_response(
            request, 503, to_tag=self._tag_factory(), headers=[("Retry-After", str(self._retry_after))]
        )
        handle = TransactionHandle(next(self._ids), request.method, True, context)
        self._events.append(MessageToSend(response, handle=handle))
