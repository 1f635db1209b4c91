"""Hypothesis state machines for the four transaction machines and the TransactionLayer, on a fake clock.

The clock never skips a deadline: advancing time stops at the next ``get_timer()`` and fires it there, the way
a perfect shell would. That makes retransmission gaps and lifetimes exact enough to check against the RFC.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from durchwahl.sipcore import Request, Response, make_response, parse_message
from durchwahl.sipcore.errors import TransactionError
from durchwahl.sipcore.limits import Limits
from durchwahl.sipcore.transaction import (
    AckReceived,
    CancelReceived,
    InviteClientState,
    InviteClientTransaction,
    InviteServerState,
    InviteServerTransaction,
    MessageToSend,
    NonInviteClientState,
    NonInviteClientTransaction,
    NonInviteServerState,
    NonInviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    Terminated,
    TimedOut,
    Timers,
    TransactionEvent,
    TransactionHandle,
    TransactionLayer,
    build_ack,
    build_cancel,
)

EPS = 1e-9
TIMERS = st.sampled_from([Timers(), Timers(t1=0.1, t2=0.4, t4=1.0), Timers(t1=1.0, t2=8.0, t4=5.0)])
STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 487, 500, 603])
#: Responses arriving back to back (reordering, retransmissions, forks).
BURSTS = st.lists(STATUSES, min_size=1, max_size=3)
#: Mostly short steps, so that runs live long enough to reach the later states; sometimes long ones.
DT = st.one_of(
    st.sampled_from([0.01, 0.1, 0.25, 0.5, 1.0, 2.0]),
    st.floats(min_value=0.001, max_value=40.0, allow_nan=False),
)
#: A transport error ends a client transaction: make it one rule choice in five, not every other one.
RARELY = st.sampled_from([False, False, False, False, True])
SETTINGS = settings(
    max_examples=100, stateful_step_count=35, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@functools.cache
def req(method: str, *, branch: str = "z9hG4bKprop", to_tag: str | None = None, cseq: int = 1) -> Request:
    to = "<sip:bob@biloxi.com>" + (f";tag={to_tag}" if to_tag else "")
    message = parse_message(
        (
            f"{method} sip:bob@biloxi.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP pc33.atlanta.com;branch={branch}\r\n"
            f"To: {to}\r\n"
            "From: <sip:alice@atlanta.com>;tag=88sja8x\r\n"
            "Call-ID: prop@atlanta.com\r\n"
            f"CSeq: {cseq} {method}\r\n"
            "Max-Forwards: 70\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


#: Responses built so far, with their request pinned so that its id() cannot be reused.
_RESPONSES: dict[tuple[int, int, str], tuple[Request, Response]] = {}


def resp(request: Request, status: int, to_tag: str = "uas") -> Response:
    """A response to ``request`` (cached: the state machines build thousands)."""
    key = (id(request), status, to_tag)
    if key not in _RESPONSES:
        _RESPONSES[key] = (request, make_response(request, status, to_tag=to_tag))
    return _RESPONSES[key][1]


class _MachineHarness(RuleBasedStateMachine):
    """Clock, event log and the invariants every machine shares."""

    machine: Any
    timers: Timers
    reliable: bool

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.log: list[tuple[float, TransactionEvent]] = []
        self.terminated_at: float | None = None
        self.state_since = 0.0
        self.last_state: Any = None

    # ------------------------------------------------------------------------------------------ plumbing

    def start(self, machine: Any, timers: Timers, reliable: bool) -> None:
        self.machine, self.timers, self.reliable = machine, timers, reliable
        self.last_state = machine.state
        self.collect()

    def collect(self) -> list[TransactionEvent]:
        new: list[TransactionEvent] = []
        while (event := self.machine.next_event()) is not None:
            assert self.terminated_at is None, f"event {event!r} after Terminated"
            if isinstance(event, Terminated):
                self.terminated_at = self.now
            new.append(event)
            self.log.append((self.now, event))
        if self.machine.state is not self.last_state:
            self.last_state, self.state_since = self.machine.state, self.now
        assert (self.terminated_at is not None) == self.machine.is_terminated
        return new

    def dwell(self) -> float:
        return self.now - self.state_since

    def sends(self, predicate: Any = lambda message: True) -> list[float]:
        return [t for t, e in self.log if isinstance(e, MessageToSend) and predicate(e.message)]

    # -------------------------------------------------------------------------------------- time, errors

    @rule(dt=DT)
    def advance(self, dt: float) -> None:
        target = self.now + dt
        deadline = self.machine.get_timer()
        if deadline is not None and deadline <= target:
            self.now = deadline
            self.machine.handle_timer(self.now)
        else:
            self.now = target
        self.collect()

    @precondition(lambda self: self.machine.get_timer() is not None)
    @rule(count=st.integers(min_value=1, max_value=8))
    def fire_next_timers(self, count: int) -> None:
        for _ in range(count):
            deadline = self.machine.get_timer()
            if deadline is None:
                return
            self.now = deadline
            self.machine.handle_timer(self.now)
            self.collect()

    @rule(happens=RARELY)
    def transport_error(self, happens: bool) -> None:
        if happens:
            self.machine.handle_transport_error(self.now)
            self.collect()

    # --------------------------------------------------------------------------------------- invariants

    @invariant()
    def timer_never_in_the_past(self) -> None:
        deadline = self.machine.get_timer()
        assert deadline is None or deadline > self.now
        if self.machine.is_terminated:
            assert deadline is None

    @invariant()
    def terminated_once_and_last(self) -> None:
        terminations = [e for _, e in self.log if isinstance(e, Terminated)]
        assert len(terminations) <= 1
        if terminations:
            assert isinstance(self.log[-1][1], Terminated)

    @invariant()
    def a_timeout_ends_the_transaction(self) -> None:
        for n, (_, event) in enumerate(self.log):
            if isinstance(event, TimedOut):
                assert isinstance(self.log[n + 1][1], Terminated)


# -------------------------------------------------------------------------------------------------- ICT


class InviteClientMachine(_MachineHarness):
    @initialize(reliable=st.booleans(), timers=TIMERS)
    def create(self, reliable: bool, timers: Timers) -> None:
        self.invite = req("INVITE")
        self.cancel_sent_at: float | None = None
        self.start(
            InviteClientTransaction(self.invite, reliable=reliable, now=0.0, timers=timers), timers, reliable
        )

    @rule(statuses=BURSTS, tag=st.sampled_from(["uas", "fork2"]))
    def responses(self, statuses: list[int], tag: str) -> None:
        for status in statuses:
            self.machine.handle_response(resp(self.invite, status, tag), self.now)
            self.collect()

    @rule()
    def cancel_sent(self) -> None:
        if self.machine.state in (InviteClientState.CALLING, InviteClientState.PROCEEDING):
            self.machine.handle_cancel_sent(self.now)
            if self.cancel_sent_at is None:
                self.cancel_sent_at = self.now
        else:
            before = self.machine.state
            try:
                self.machine.handle_cancel_sent(self.now)
            except TransactionError:
                pass
            else:  # pragma: no cover
                raise AssertionError("CANCEL after a final response must be refused")
            assert self.machine.state is before
        self.collect()

    def to_tu(self) -> list[Response]:
        return [e.response for _, e in self.log if isinstance(e, ResponseReceived)]

    @invariant()
    def never_two_finals_except_rfc6026_2xx(self) -> None:
        finals = [r.status for r in self.to_tu() if r.status >= 200]
        failures = [s for s in finals if s >= 300]
        assert len(failures) <= 1
        if failures:
            assert finals == failures  # a non-2xx final is the only final the TU ever sees
        first_final = next((n for n, r in enumerate(self.to_tu()) if r.status >= 200), None)
        if first_final is not None:
            assert all(r.status >= 200 for r in self.to_tu()[first_final:])  # no 1xx after a final

    @invariant()
    def invite_retransmitted_at_doubling_intervals_only_while_calling(self) -> None:
        times = self.sends(lambda m: m.method == "INVITE")
        assert times[0] == 0.0
        if self.reliable:
            assert times == [0.0]
        for n, (a, b) in enumerate(itertools.pairwise(times)):
            assert math.isclose(b - a, self.timers.t1 * 2**n)
        first_response = next((t for t, e in self.log if isinstance(e, ResponseReceived)), None)
        if first_response is not None:
            assert all(t <= first_response for t in times)

    @invariant()
    def acks_only_for_a_non_2xx(self) -> None:
        acks = [e.message for _, e in self.log if isinstance(e, MessageToSend) and e.message.method == "ACK"]
        if acks:
            assert any(r.status >= 300 for r in self.to_tu())
            assert all(ack == self.machine.ack for ack in acks)
            assert self.machine.ack.branch == self.invite.branch

    @invariant()
    def lifetimes(self) -> None:
        t = self.timers
        state = self.machine.state
        if state is InviteClientState.CALLING:
            assert self.dwell() <= t.b + EPS
        elif state is InviteClientState.COMPLETED:
            assert self.dwell() <= t.d(reliable=self.reliable) + EPS
        elif state is InviteClientState.ACCEPTED:
            assert self.dwell() <= t.m + EPS
        if self.cancel_sent_at is not None and state in (
            InviteClientState.CALLING,
            InviteClientState.PROCEEDING,
        ):
            assert self.now - self.cancel_sent_at <= t.cancel + EPS  # §9.1: 64*T1 without a final response
        if not any(isinstance(e, ResponseReceived) for _, e in self.log):
            assert self.machine.is_terminated or self.now <= t.b + EPS

    @invariant()
    def timeouts_named(self) -> None:
        assert all(e.timer in ("B", "cancel") for _, e in self.log if isinstance(e, TimedOut))


# ------------------------------------------------------------------------------------------------- NICT


class NonInviteClientMachine(_MachineHarness):
    @initialize(reliable=st.booleans(), timers=TIMERS)
    def create(self, reliable: bool, timers: Timers) -> None:
        self.request = req("OPTIONS")
        self.start(
            NonInviteClientTransaction(self.request, reliable=reliable, now=0.0, timers=timers),
            timers,
            reliable,
        )

    @rule(statuses=BURSTS)
    def responses(self, statuses: list[int]) -> None:
        for status in statuses:
            self.machine.handle_response(resp(self.request, status), self.now)
            self.collect()

    @invariant()
    def at_most_one_final_to_tu(self) -> None:
        statuses = [e.response.status for _, e in self.log if isinstance(e, ResponseReceived)]
        finals = [s for s in statuses if s >= 200]
        assert len(finals) <= 1
        if finals:
            assert statuses[-1] == finals[0]

    @invariant()
    def retransmission_gaps_within_t1_and_t2(self) -> None:
        times = self.sends()
        if self.reliable:
            assert times == [0.0]
        for a, b in itertools.pairwise(times):
            assert self.timers.t1 - EPS <= b - a <= self.timers.t2 + EPS
        final = next(
            (t for t, e in self.log if isinstance(e, ResponseReceived) and e.response.status >= 200), None
        )
        if final is not None:
            assert all(t <= final for t in times)

    @invariant()
    def bounded_lifetime(self) -> None:
        t = self.timers
        limit = t.f + t.k(reliable=self.reliable)
        assert self.machine.is_terminated or self.now <= limit + EPS
        if self.machine.state is NonInviteClientState.COMPLETED:
            assert self.dwell() <= t.k(reliable=self.reliable) + EPS
        assert all(e.timer == "F" for _, e in self.log if isinstance(e, TimedOut))


# -------------------------------------------------------------------------------------------------- IST


class InviteServerMachine(_MachineHarness):
    @initialize(reliable=st.booleans(), timers=TIMERS, trying_delay=st.sampled_from([None, 0.0, 0.2]))
    def create(self, reliable: bool, timers: Timers, trying_delay: float | None) -> None:
        self.invite = req("INVITE")
        self.trying_delay = trying_delay
        self.start(
            InviteServerTransaction(
                self.invite, reliable=reliable, now=0.0, timers=timers, trying_delay=trying_delay
            ),
            timers,
            reliable,
        )

    @rule()
    def invite_retransmitted(self) -> None:
        self.machine.handle_request(self.invite, self.now)
        self.collect()

    @rule()
    def ack(self) -> None:
        self.machine.handle_request(req("ACK", to_tag="uas"), self.now)
        self.collect()

    @rule(statuses=BURSTS)
    def tu_responses(self, statuses: list[int]) -> None:
        for status in statuses:
            state = self.machine.state
            allowed = state is InviteServerState.PROCEEDING or (
                state is InviteServerState.ACCEPTED and 200 <= status < 300
            )
            try:
                self.machine.send_response(resp(self.invite, status), self.now)
            except TransactionError:
                assert not allowed
                assert self.machine.state is state
            else:
                assert allowed
            self.collect()

    def responses_sent(self) -> list[tuple[float, Response]]:
        return [
            (t, e.message)
            for t, e in self.log
            if isinstance(e, MessageToSend) and isinstance(e.message, Response)
        ]

    @invariant()
    def invite_to_tu_exactly_once(self) -> None:
        assert isinstance(self.log[0][1], RequestReceived)
        assert sum(isinstance(e, RequestReceived) for _, e in self.log) == 1

    @invariant()
    def one_final_and_its_retransmissions(self) -> None:
        failures = {id(r) for _, r in self.responses_sent() if r.status >= 300}
        assert len(failures) <= 1
        successes = [r for _, r in self.responses_sent() if 200 <= r.status < 300]
        assert not (failures and successes)

    @invariant()
    def final_retransmission_gaps_up_to_t2(self) -> None:
        # Timer G doubles up to T2; a retransmitted INVITE may add sends in between, never remove any.
        times = [t for t, r in self.responses_sent() if r.status >= 300]
        if not self.reliable:
            for a, b in itertools.pairwise(times):
                assert b - a <= self.timers.t2 + EPS

    @invariant()
    def acks_reach_the_tu_only_in_accepted(self) -> None:
        if any(isinstance(e, AckReceived) for _, e in self.log):
            assert any(200 <= r.status < 300 for _, r in self.responses_sent())

    @invariant()
    def trying_sent_in_time(self) -> None:
        if self.trying_delay is not None and self.now >= self.trying_delay:
            sent = self.responses_sent()
            assert sent and sent[0][0] <= self.trying_delay + EPS

    @invariant()
    def lifetimes(self) -> None:
        t = self.timers
        state = self.machine.state
        if state is InviteServerState.COMPLETED:
            assert self.dwell() <= t.h + EPS
            if self.reliable:
                assert len({id(r) for _, r in self.responses_sent() if r.status >= 300}) == 1
        elif state is InviteServerState.CONFIRMED:
            assert self.dwell() <= t.i(reliable=self.reliable) + EPS
        elif state is InviteServerState.ACCEPTED:
            assert self.dwell() <= t.l + EPS
        assert all(e.timer == "H" for _, e in self.log if isinstance(e, TimedOut))

    @invariant()
    def no_retransmission_by_timer_after_ack(self) -> None:
        if self.machine.state is InviteServerState.CONFIRMED:
            assert self.machine.get_timer() == self.state_since + self.timers.i(reliable=self.reliable)


# ------------------------------------------------------------------------------------------------- NIST


class NonInviteServerMachine(_MachineHarness):
    @initialize(reliable=st.booleans(), timers=TIMERS)
    def create(self, reliable: bool, timers: Timers) -> None:
        self.request = req("BYE", to_tag="uas")
        self.start(
            NonInviteServerTransaction(self.request, reliable=reliable, now=0.0, timers=timers),
            timers,
            reliable,
        )

    @rule()
    def retransmitted(self) -> None:
        state = self.machine.state
        self.machine.handle_request(self.request, self.now)
        new = self.collect()
        if state is NonInviteServerState.TRYING or state is NonInviteServerState.TERMINATED:
            assert new == []  # Trying: discarded (§17.2.2)
        else:
            assert [type(e) for e in new] == [MessageToSend]
            assert new[0].message is self.machine.last_response

    @rule(statuses=BURSTS)
    def tu_responses(self, statuses: list[int]) -> None:
        for status in statuses:
            state = self.machine.state
            allowed = state in (NonInviteServerState.TRYING, NonInviteServerState.PROCEEDING) or (
                state is NonInviteServerState.COMPLETED and status >= 200
            )
            try:
                self.machine.send_response(resp(self.request, status), self.now)
            except TransactionError:
                assert not allowed
                assert self.machine.state is state
                assert self.collect() == []
                continue
            assert allowed
            new = self.collect()
            if state is NonInviteServerState.COMPLETED:
                assert new == []  # §17.2.2: discarded

    @invariant()
    def request_to_tu_exactly_once(self) -> None:
        assert isinstance(self.log[0][1], RequestReceived)
        assert sum(isinstance(e, RequestReceived) for _, e in self.log) == 1

    @invariant()
    def a_single_final_on_the_wire(self) -> None:
        finals = {
            id(e.message)
            for _, e in self.log
            if isinstance(e, MessageToSend) and isinstance(e.message, Response) and e.message.status >= 200
        }
        assert len(finals) <= 1

    @invariant()
    def lifetimes(self) -> None:
        if self.machine.state is NonInviteServerState.COMPLETED:
            assert self.dwell() <= self.timers.j(reliable=self.reliable) + EPS
        assert not any(isinstance(e, TimedOut) for _, e in self.log)


TestInviteClientMachine = InviteClientMachine.TestCase
TestNonInviteClientMachine = NonInviteClientMachine.TestCase
TestInviteServerMachine = InviteServerMachine.TestCase
TestNonInviteServerMachine = NonInviteServerMachine.TestCase
for _case in (
    TestInviteClientMachine,
    TestNonInviteClientMachine,
    TestInviteServerMachine,
    TestNonInviteServerMachine,
):
    _case.settings = SETTINGS
del _case


# ------------------------------------------------------------------------------------------------ layer

cancel_of = functools.cache(build_cancel)
BRANCHES = st.sampled_from(["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "z9hG4bK4"])
SERVER_METHODS = st.sampled_from(["INVITE", "OPTIONS", "BYE"])


class LayerMachine(RuleBasedStateMachine):
    """Random traffic through a TransactionLayer: the heap agrees with the machines, handles stay honest."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        tags = (f"t{n}" for n in itertools.count())
        self.max_server = 3
        self.layer = TransactionLayer(
            tag_factory=lambda: next(tags), limits=Limits(max_server_transactions=3)
        )
        self.handles: dict[int, TransactionHandle] = {}
        self.requests: dict[int, Request] = {}
        self.terminated: set[int] = set()
        self.client_invites: dict[int, Request] = {}
        self.new_requests = 0
        self.request_received = 0

    def collect(self) -> list[TransactionEvent]:
        out = []
        while (event := self.layer.next_event()) is not None:
            out.append(event)
            handle = event.handle
            if handle is not None:
                assert handle.id not in self.terminated, f"{event!r} after Terminated"
                if isinstance(event, Terminated):
                    self.terminated.add(handle.id)
                    self.handles.pop(handle.id, None)
            if isinstance(event, RequestReceived):
                assert event.handle is not None and event.request.method not in ("ACK", "CANCEL")
                self.handles[event.handle.id] = event.handle
                self.requests[event.handle.id] = event.request
                self.request_received += 1
            if isinstance(event, CancelReceived):
                assert event.handle is not None and event.handle.method == "INVITE"
        return out

    @rule(method=SERVER_METHODS, branch=BRANCHES, reliable=st.booleans())
    def request_arrives(self, method: str, branch: str, reliable: bool) -> None:
        self.layer.receive_request(req(method, branch=branch), self.now, reliable=reliable)
        self.collect()

    @rule(branch=BRANCHES)
    def cancel_arrives(self, branch: str) -> None:
        self.layer.receive_request(req("CANCEL", branch=branch), self.now, reliable=False)
        events = self.collect()
        answers = [e for e in events if isinstance(e, MessageToSend)]
        assert answers and answers[0].message.status in (200, 481)  # type: ignore[union-attr]

    @rule(branch=BRANCHES)
    def ack_arrives(self, branch: str) -> None:
        self.layer.receive_request(req("ACK", branch=branch, to_tag="uas"), self.now, reliable=False)
        self.collect()

    @precondition(lambda self: bool(self.handles))
    @rule(data=st.data(), status=STATUSES)
    def tu_responds(self, data: st.DataObject, status: int) -> None:
        handle_id = data.draw(st.sampled_from(sorted(self.handles)))
        handle, request = self.handles[handle_id], self.requests[handle_id]
        try:
            self.layer.send_response(handle, resp(request, status), self.now)
        except TransactionError:
            machine = self.layer.transaction(handle)
            assert machine is not None
            assert machine.state.name in ("COMPLETED", "CONFIRMED", "ACCEPTED")
        self.collect()

    @rule(branch=BRANCHES)
    def tu_sends_invite(self, branch: str) -> None:
        invite = req("INVITE", branch=branch + "c")
        try:
            handle = self.layer.send_request(invite, self.now, reliable=False)
        except TransactionError:
            return  # that branch is still in use
        self.client_invites[handle.id] = invite
        self.collect()

    @precondition(lambda self: bool(self.client_invites))
    @rule(data=st.data(), status=STATUSES)
    def response_arrives(self, data: st.DataObject, status: int) -> None:
        handle_id = data.draw(st.sampled_from(sorted(self.client_invites)))
        invite = self.client_invites[handle_id]
        cancel = data.draw(st.booleans())
        target = cancel_of(invite) if cancel else invite
        self.layer.receive_response(resp(target, status), self.now)
        self.collect()

    @precondition(lambda self: bool(self.client_invites))
    @rule(data=st.data())
    def tu_cancels(self, data: st.DataObject) -> None:
        handle_id = data.draw(st.sampled_from(sorted(self.client_invites)))
        handle = TransactionHandle(handle_id, "INVITE", False)
        self.layer.cancel(handle, self.now)
        self.collect()

    @rule(dt=DT)
    def advance(self, dt: float) -> None:
        target = self.now + dt
        deadline = self.layer.get_timer()
        if deadline is not None and deadline <= target:
            self.now = deadline
            self.layer.handle_timer(self.now)
        else:
            self.now = target
        self.collect()

    @invariant()
    def heap_agrees_with_machines(self) -> None:
        machines = [entry.machine for entry in self.layer._entries.values()]
        deadlines = [d for d in (m.get_timer() for m in machines) if d is not None]
        assert self.layer.get_timer() == (min(deadlines) if deadlines else None)
        assert all(not m.is_terminated for m in machines)
        got = self.layer.get_timer()
        assert got is None or got > self.now

    @invariant()
    def bounded(self) -> None:
        # Only CANCELs of open transactions may go beyond the bound: at most one per open transaction.
        assert self.layer.server_count <= 2 * self.max_server


TestLayerMachine = LayerMachine.TestCase
TestLayerMachine.settings = SETTINGS


def test_ack_of_reference_final_is_stable() -> None:
    """build_ack is deterministic: a retransmitted final gets the very same ACK (§17.1.1.2)."""
    invite = req("INVITE")
    assert build_ack(invite, resp(invite, 486)) == build_ack(invite, resp(invite, 486))
