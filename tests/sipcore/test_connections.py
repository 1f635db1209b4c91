"""ConnectionTable: TCP admission caps and closing deadlines on a fake clock; LogThrottle; derived caps."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from durchwahl.sipcore.connections import (
    RESERVED_DESCRIPTORS,
    CloseReason,
    ConnectionTable,
    LogThrottle,
    Refusal,
    connection_caps,
    source_of,
)


def table(**kwargs: float) -> ConnectionTable:
    settings_ = {"max_total": 10, "max_per_source": 5, "message_seconds": 10.0, "idle_seconds": 120.0}
    settings_.update(kwargs)
    return ConnectionTable(**settings_)  # type: ignore[arg-type]


def run_until(t: ConnectionTable, now: float, keep: object = None) -> list[tuple[int, CloseReason]]:
    """Fire the table's timer at every deadline up to ``now``, like a perfect shell."""
    closed: list[tuple[int, CloseReason]] = []
    while (at := t.get_timer()) is not None and at <= now:
        closed += t.handle_timer(at, keep)  # type: ignore[arg-type]
    return closed


# ------------------------------------------------------------------------------------------------ caps


def test_caps_derived_from_the_descriptor_limit_leave_room_for_rtp_and_stores() -> None:
    assert connection_caps(1024) == (448, 224)  # 1024 - 128 reserved, half of the rest, half of it per source
    assert connection_caps(65536) == (16384, 8192)  # bounded: each connection may buffer a message
    assert connection_caps(100) == (16, 8)  # a tiny limit still lets some in
    assert connection_caps(None) == (16384, 8192)
    for nofile in (256, 1024, 4096, 20000):
        total, _ = connection_caps(nofile)
        assert nofile - RESERVED_DESCRIPTORS - total >= total  # as many left for RTP as TCP may take


def test_configured_caps_win() -> None:
    assert connection_caps(1024, 50) == (50, 25)
    assert connection_caps(1024, 50, 50) == (50, 50)
    assert connection_caps(1024, None, 7) == (448, 7)


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("fe80::1%eth0") == "fe80::/64"


# ------------------------------------------------------------------------------------------- admission


def test_a_source_over_its_cap_is_refused_while_others_get_in() -> None:
    t = table(max_per_source=2)
    assert t.admit(1, "192.0.2.1", 0.0).admitted
    assert t.admit(2, "192.0.2.1", 0.0).admitted
    assert t.admit(3, "192.0.2.1", 0.0).refused is Refusal.SOURCE
    assert t.admit(4, "192.0.2.2", 0.0).admitted
    assert t.from_source("192.0.2.1") == 2
    t.remove(1)
    assert t.admit(5, "192.0.2.1", 0.0).admitted


def test_at_the_total_cap_the_oldest_connection_without_a_message_makes_room() -> None:
    t = table(max_total=3)
    for cid in (1, 2, 3):
        t.admit(cid, f"192.0.2.{cid}", float(cid))
    t.received(1, 4.0, completed=True, in_message=False)  # 1 has delivered a message: it stays
    admission = t.admit(4, "192.0.2.4", 5.0)
    assert admission.admitted and admission.evict == 2
    assert 2 not in t and len(t) == 3 and t.from_source("192.0.2.2") == 0


def test_at_the_total_cap_with_every_connection_in_use_a_new_one_is_refused() -> None:
    t = table(max_total=2)
    for cid in (1, 2):
        t.admit(cid, f"192.0.2.{cid}", 0.0)
        t.received(cid, 0.1, completed=True, in_message=False)
    assert t.admit(3, "192.0.2.3", 1.0).refused is Refusal.TOTAL
    assert len(t) == 2


def test_connections_we_open_are_always_admitted_and_counted() -> None:
    t = table(max_total=1)
    assert t.admit(1, "192.0.2.1", 0.0).admitted
    t.received(1, 0.1, completed=True, in_message=False)
    assert t.admit(2, "198.51.100.1", 0.0, inbound=False).admitted
    assert len(t) == 2
    assert t.admit(3, "192.0.2.9", 0.0).refused is Refusal.TOTAL


# ------------------------------------------------------------------------------------------- deadlines


def test_a_connection_that_sends_nothing_closes_after_the_message_time() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 100.0)
    assert t.get_timer() == 110.0
    assert run_until(t, 109.9) == []
    assert run_until(t, 110.0) == [(1, CloseReason.NO_MESSAGE)]
    assert 1 not in t and t.from_source("192.0.2.1") == 0


def test_keep_alives_do_not_stand_in_for_a_first_message() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    for now in (2.0, 4.0, 6.0, 8.0):
        t.received(1, now, completed=False, in_message=False)  # CRLF pings
    assert run_until(t, 10.0) == [(1, CloseReason.NO_MESSAGE)]


def test_a_first_message_in_time_makes_the_idle_time_apply() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 3.0, completed=True, in_message=False)
    assert run_until(t, 122.9) == []
    assert run_until(t, 123.0) == [(1, CloseReason.IDLE)]


def test_a_message_started_and_not_finished_closes_the_connection() -> None:
    """A body shorter than its Content-Length must not hold the stream (and the next request) for ever."""
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    t.received(1, 50.0, completed=False, in_message=True)  # headers of the next message, body short
    t.received(1, 55.0, completed=False, in_message=True)  # more of it, still short
    assert run_until(t, 59.9) == []
    assert run_until(t, 60.0) == [(1, CloseReason.INCOMPLETE)]


def test_a_message_finished_in_time_is_fine_and_the_next_one_gets_its_own_time() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    t.received(1, 50.0, completed=False, in_message=True)
    t.received(1, 59.0, completed=True, in_message=True)  # finished, and the next one began in the segment
    assert run_until(t, 68.9) == []
    assert run_until(t, 69.0) == [(1, CloseReason.INCOMPLETE)]


def test_keep_alives_keep_a_used_connection_open() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    for now in range(90, 1000, 90):  # RFC 5626 CRLF pings every 90 s
        assert run_until(t, float(now)) == []
        t.received(1, float(now), completed=False, in_message=False)
    assert 1 in t


def test_a_registration_holds_the_connection_until_it_expires() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    t.hold(1, 3601.0)
    assert run_until(t, 3600.0) == []
    assert run_until(t, 3601.0) == [(1, CloseReason.IDLE)]


def test_a_removed_registration_ends_the_hold() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    t.hold(1, 3601.0)
    t.received(1, 10.0, completed=True, in_message=False)
    t.hold(1, 10.0)  # de-registered at 10 s
    assert run_until(t, 130.0) == [(1, CloseReason.IDLE)]


def test_a_held_connection_still_times_out_an_unfinished_message() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    t.hold(1, 3601.0)
    t.received(1, 20.0, completed=False, in_message=True)
    assert run_until(t, 30.0) == [(1, CloseReason.INCOMPLETE)]


def test_a_connection_in_use_is_kept_for_another_idle_period() -> None:
    t = table()
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 0.0, completed=True, in_message=False)
    asked: list[int] = []

    def in_use(cid: int) -> bool:
        asked.append(cid)
        return len(asked) < 3

    assert run_until(t, 360.0, in_use) == [(1, CloseReason.IDLE)]
    assert asked == [1, 1, 1]  # at 120 and 240 a call still used it; at 360 no more


def test_idle_time_zero_means_never_for_idleness() -> None:
    t = table(idle_seconds=0)
    t.admit(1, "192.0.2.1", 0.0)
    t.received(1, 1.0, completed=True, in_message=False)
    assert run_until(t, 1e9) == []
    assert t.get_timer() is None
    t.received(1, 2e9, completed=False, in_message=True)
    assert run_until(t, 2e9 + 10) == [(1, CloseReason.INCOMPLETE)]


def test_outgoing_connections_need_no_first_message() -> None:
    t = table()
    t.admit(1, "198.51.100.1", 0.0, inbound=False)
    assert run_until(t, 119.0) == []
    assert run_until(t, 120.0) == [(1, CloseReason.IDLE)]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        table(max_total=0)
    with pytest.raises(ValueError):
        table(message_seconds=0)
    with pytest.raises(ValueError):
        table(idle_seconds=-1)


# ------------------------------------------------------------------------------------------ the machine


class TableMachine(RuleBasedStateMachine):
    """Random admissions, traffic, holds and removals on a fake clock that never skips a deadline. Checked:
    the caps hold, nothing stays open past its deadline, and nothing closes before it."""

    def __init__(self) -> None:
        super().__init__()
        self.t = ConnectionTable(max_total=6, max_per_source=3, message_seconds=10.0, idle_seconds=30.0)
        self.now = 0.0
        self.next_id = 1
        #: What this test knows of each open connection: source, inbound, opened, proven, started, last, held.
        self.model: dict[int, dict[str, object]] = {}
        self.busy: set[int] = set()

    def _deadline(self, m: dict[str, object]) -> float:
        if not m["proven"]:
            return float(m["opened"]) + 10.0  # type: ignore[arg-type]
        deadline = max(float(m["last"]) + 30.0, float(m["held"]))  # type: ignore[arg-type]
        if m["started"] is not None:
            deadline = min(deadline, float(m["started"]) + 10.0)  # type: ignore[arg-type]
        return deadline

    @rule(
        source=st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]),
        inbound=st.booleans(),
    )
    def connect(self, source: str, inbound: bool) -> None:
        cid = self.next_id
        self.next_id += 1
        admission = self.t.admit(cid, source, self.now, inbound=inbound)
        same = sum(1 for m in self.model.values() if m["inbound"] and m["source"] == source_of(source))
        inbound_total = sum(1 for m in self.model.values() if m["inbound"])
        if not inbound:
            assert admission.admitted and admission.evict is None
        elif same >= 3:
            assert admission.refused is Refusal.SOURCE
            return
        elif len(self.model) >= 6:
            unproven = [c for c, m in self.model.items() if m["inbound"] and not m["proven"]]
            if not unproven:
                assert admission.refused is Refusal.TOTAL
                return
            assert admission.evict == min(unproven)  # the oldest
            del self.model[min(unproven)]
        else:
            assert admission.admitted and admission.evict is None, (inbound_total, admission)
        self.model[cid] = {
            "source": source_of(source),
            "inbound": inbound,
            "opened": self.now,
            "proven": not inbound,
            "started": None,
            "last": self.now,
            "held": -math.inf,
        }

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), completed=st.booleans(), in_message=st.booleans())
    def receive(self, data: st.DataObject, completed: bool, in_message: bool) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        m = self.model[cid]
        self.t.received(cid, self.now, completed=completed, in_message=in_message)
        m["last"] = self.now
        if completed:
            m["proven"] = True
            m["started"] = self.now if in_message else None
        elif not in_message:
            m["started"] = None
        elif m["started"] is None:
            m["started"] = self.now

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), seconds=st.floats(0, 100))
    def hold(self, data: st.DataObject, seconds: float) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        self.t.hold(cid, self.now + seconds)
        self.model[cid]["held"] = self.now + seconds

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def close_by_peer(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        self.t.remove(cid)
        del self.model[cid]
        self.busy.discard(cid)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def call_uses(self, data: st.DataObject) -> None:
        self.busy.add(data.draw(st.sampled_from(sorted(self.model))))

    @rule(seconds=st.floats(0, 50))
    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while (at := self.t.get_timer()) is not None and at <= target:
            self.now = max(self.now, at)
            for cid, reason in self.t.handle_timer(self.now, self.busy.__contains__):
                m = self.model.pop(cid)
                deadline = self._deadline(m)
                assert deadline <= self.now, (cid, reason, deadline, self.now)
                if reason is CloseReason.IDLE:
                    assert cid not in self.busy
                expected = (
                    CloseReason.NO_MESSAGE
                    if not m["proven"]
                    else CloseReason.INCOMPLETE
                    if m["started"] is not None and float(m["started"]) + 10.0 <= self.now  # type: ignore[arg-type]
                    else CloseReason.IDLE
                )
                assert reason is expected
            for cid in self.busy & set(self.model):  # kept for another idle period: it counts as activity
                if self._deadline(self.model[cid]) <= self.now:
                    self.model[cid]["last"] = self.now
        self.now = target
        assert all(self._deadline(m) > self.now for m in self.model.values())

    @invariant()
    def nothing_open_past_its_deadline_and_the_timer_covers_every_deadline(self) -> None:
        timer = self.t.get_timer()
        for cid, m in self.model.items():
            deadline = self._deadline(m)
            assert deadline >= self.now, (cid, m, self.now)  # equal: due now (a hold until now), timer next
            assert deadline == math.inf or (timer is not None and timer <= deadline), (cid, m, timer)
            assert cid in self.t

    @invariant()
    def caps_hold(self) -> None:
        assert len(self.t) == len(self.model)
        inbound = [m for m in self.model.values() if m["inbound"]]
        assert len(inbound) <= 6
        for source in {m["source"] for m in inbound}:
            assert sum(1 for m in inbound if m["source"] == source) <= 3


TableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_connection_table_machine = TableMachine.TestCase


# -------------------------------------------------------------------------------------------- logging


def test_one_line_per_condition_per_interval_with_the_count_of_the_quiet_ones() -> None:
    throttle = LogThrottle(10.0)
    assert throttle.allow("refused", 0.0) == 0
    assert throttle.allow("refused", 1.0) is None
    assert throttle.allow("refused", 2.0) is None
    assert throttle.allow("evicted", 2.0) == 0  # another condition has its own line
    assert throttle.next_due() == 10.0
    assert throttle.due(9.0) == []
    assert throttle.due(10.0) == [("refused", 2)]
    assert throttle.next_due() is None
    assert throttle.allow("refused", 15.0) is None  # the summary at 10 s counts as the line of its interval
    assert throttle.allow("refused", 20.0) == 1
