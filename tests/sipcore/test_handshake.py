"""The 2xx/ACK handshake outside transactions (sipcore.handshake), pure, on a fake clock: unit tests and
hypothesis state machines against a model of RFC 3261 §13.3.1.4 and §13.2.2.4."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from durchwahl.sipcore.handshake import AckCache, AckTimedOut, Retransmit2xx, TwoxxSender
from durchwahl.sipcore.transaction import Timers

TIMERS = Timers(t1=0.5, t2=4.0)
KEYS = [("call-a", 1, "tag-1"), ("call-a", 1, "tag-2"), ("call-b", 7, "x"), ("call-c", 2, None)]


def schedule(sent_at: float, timers: Timers = TIMERS) -> list[float]:
    """When §13.3.1.4 resends a 2xx sent at ``sent_at``: T1, then doubling intervals capped at T2, until
    64*T1."""
    times, at, interval = [], sent_at + timers.t1, timers.t1
    while at < sent_at + 64 * timers.t1:
        times.append(at)
        interval = min(interval * 2, timers.t2)
        at += interval
    return times


def run(sender: TwoxxSender[str], until: float) -> list[tuple[float, object]]:
    out: list[tuple[float, object]] = []
    while (due := sender.get_timer()) is not None and due <= until:
        sender.handle_timer(due)
        while (event := sender.next_event()) is not None:
            out.append((due, event))
    return out


def test_a_2xx_is_resent_on_the_rfc_schedule_and_given_up_after_64_t1() -> None:
    sender: TwoxxSender[str] = TwoxxSender(TIMERS)
    sender.sent_2xx(KEYS[0], b"200", "invite-a", 10.0, reliable=False)
    events = run(sender, 100.0)
    resent = [at for at, e in events if isinstance(e, Retransmit2xx)]
    assert resent == schedule(10.0)
    assert resent[:4] == [10.5, 11.5, 13.5, 17.5] and resent[4] - resent[3] == 4.0  # capped at T2
    assert events[-1] == (10.0 + 32.0, AckTimedOut("invite-a"))
    assert len(sender) == 0 and sender.get_timer() is None


def test_the_ack_stops_it_and_names_the_request() -> None:
    sender: TwoxxSender[str] = TwoxxSender(TIMERS)
    sender.sent_2xx(KEYS[0], b"200", "invite-a", 0.0, reliable=False)
    sender.sent_2xx(KEYS[1], b"200 other fork", "invite-b", 0.0, reliable=False)
    run(sender, 1.6)  # two retransmissions each
    assert sender.ack_received(KEYS[0]) == "invite-a"
    assert sender.ack_received(KEYS[0]) is None  # a retransmitted ACK: nothing more
    events = run(sender, 100.0)
    assert all(e.context == "invite-b" for _, e in events)  # the other dialog's 2xx goes on
    assert isinstance(events[-1][1], AckTimedOut)


def test_over_a_reliable_transport_nothing_is_resent_but_the_wait_runs() -> None:
    sender: TwoxxSender[str] = TwoxxSender(TIMERS)
    sender.sent_2xx(KEYS[2], b"200", "invite", 5.0, reliable=True)
    assert sender.get_timer() == 5.0 + 32.0
    assert run(sender, 100.0) == [(37.0, AckTimedOut("invite"))]


def test_the_ack_cache_answers_each_dialogs_2xx_with_its_own_ack_for_64_t1() -> None:
    cache: AckCache[str] = AckCache(TIMERS)
    cache.ack_sent(KEYS[0], b"ACK 1", "flow-1", 0.0)
    cache.ack_sent(KEYS[1], b"ACK 2", "flow-2", 1.0)
    assert cache.ack_for(KEYS[0]) == (b"ACK 1", "flow-1")
    assert cache.ack_for(KEYS[1]) == (b"ACK 2", "flow-2")  # another fork's 2xx: its own ACK
    assert cache.ack_for(KEYS[2]) is None
    assert cache.get_timer() == 32.0
    cache.handle_timer(32.0)
    assert cache.ack_for(KEYS[0]) is None and cache.ack_for(KEYS[1]) is not None
    cache.handle_timer(33.0)
    assert len(cache) == 0 and cache.get_timer() is None


class TwoxxMachine(RuleBasedStateMachine):
    """Any interleaving of 2xx sent, ACKs and time: the sender resends exactly on the schedule, stops at the
    ACK, gives up exactly once at 64*T1, and never asks to be woken in the past."""

    def __init__(self) -> None:
        super().__init__()
        self.sender: TwoxxSender[int] = TwoxxSender(TIMERS)
        self.now = 0.0
        self.serial = 0
        #: key -> (sent at, reliable, serial) for every 2xx not yet ACKed or given up on.
        self.pending: dict[tuple[str, int, str | None], tuple[float, bool, int]] = {}
        self.seen: dict[int, list[float]] = {}

    @rule(key=st.sampled_from(KEYS), reliable=st.booleans())
    def send(self, key: tuple[str, int, str | None], reliable: bool) -> None:
        if key in self.pending:
            return  # one 2xx per dialog at a time
        self.serial += 1
        self.pending[key] = (self.now, reliable, self.serial)
        self.seen[self.serial] = []
        self.sender.sent_2xx(key, b"200", self.serial, self.now, reliable=reliable)

    @rule(key=st.sampled_from(KEYS))
    def ack(self, key: tuple[str, int, str | None]) -> None:
        expected = self.pending.pop(key, None)
        assert self.sender.ack_received(key) == (None if expected is None else expected[2])

    @precondition(lambda self: self.sender.get_timer() is not None)
    @rule(step=st.floats(0, 40, allow_nan=False))
    def advance(self, step: float) -> None:
        until = self.now + step
        for at, event in run(self.sender, until):
            assert at >= self.now - 1e-9
            key = next(k for k, (_, _, serial) in self.pending.items() if serial == event.context)
            sent_at, reliable, serial = self.pending[key]
            if isinstance(event, Retransmit2xx):
                assert not reliable
                self.seen[serial].append(at)
                expected = schedule(sent_at)[len(self.seen[serial]) - 1]
                assert math.isclose(at, expected), (at, expected)
            else:
                assert isinstance(event, AckTimedOut)
                assert math.isclose(at, sent_at + 64 * TIMERS.t1)
                if not reliable:
                    assert len(self.seen[serial]) == len(schedule(sent_at))
                del self.pending[key]
        self.now = until

    @invariant()
    def bookkeeping_matches(self) -> None:
        assert len(self.sender) == len(self.pending)
        due = self.sender.get_timer()
        assert due is None or due > self.now - 1e-9 or math.isclose(due, self.now)
        assert (due is None) == (not self.pending)


TwoxxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestTwoxxMachine = TwoxxMachine.TestCase


class AckCacheMachine(RuleBasedStateMachine):
    """The ACK cache keeps each dialog's latest ACK for exactly 64*T1 and forgets it then."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: AckCache[int] = AckCache(TIMERS)
        self.now = 0.0
        self.serial = 0
        self.model: dict[tuple[str, int, str | None], tuple[int, float]] = {}

    @rule(key=st.sampled_from(KEYS))
    def ack_sent(self, key: tuple[str, int, str | None]) -> None:
        self.serial += 1
        self.cache.ack_sent(key, b"ACK", self.serial, self.now)
        self.model[key] = (self.serial, self.now + 64 * TIMERS.t1)

    @rule(step=st.floats(0, 40, allow_nan=False))
    def advance(self, step: float) -> None:
        self.now += step
        while (due := self.cache.get_timer()) is not None and due <= self.now:
            self.cache.handle_timer(due)
        self.model = {k: v for k, v in self.model.items() if v[1] > self.now}

    @invariant()
    def answers_match(self) -> None:
        for key in KEYS:
            found = self.cache.ack_for(key)
            expected = self.model.get(key)
            assert (found is None) == (expected is None)
            if found is not None and expected is not None:
                assert found[1] == expected[0]
        assert len(self.cache) == len(self.model)


AckCacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestAckCacheMachine = AckCacheMachine.TestCase
