"""FailureGuard (per-source throttling and blocking) and the trunk inbound check, pure, with a fake clock."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.routing.directory import Directory, ServerConfig, Trunk
from durchwahl.routing.security import (
    Admission,
    Block,
    FailureGuard,
    GuardPolicy,
    source_key,
    trunk_accepts,
    trunk_for_source,
)

T0 = 1_000.0
POLICY = GuardPolicy(
    window=60,
    throttle_after=3,
    throttle_interval=5,
    block_after=6,
    block_for=120,
    source_users=4,
    source_attempts=50,
    max_sources=100,
)
OFFICE = "192.0.2.1"  # one NAT address with several phones behind it


def fail(guard: FailureGuard, source: str, times: int, now: float = T0, user: str = "101") -> None:
    for _ in range(times):
        guard.failed(source, now, user)


def test_below_the_throttle_every_attempt_is_checked() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 2)
    assert [guard.admit(OFFICE, T0, "101") for _ in range(5)] == [Admission.CHECK] * 5
    status = guard.status(OFFICE, T0, "101")
    assert status.failures == 2 and not status.throttled and status.blocked_until is None


def test_throttled_pair_is_checked_once_per_interval() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 3)
    assert guard.status(OFFICE, T0, "101").throttled
    assert guard.admit(OFFICE, T0 + 1, "101") is Admission.SKIP
    assert guard.admit(OFFICE, T0 + 4.9, "101") is Admission.SKIP
    assert guard.admit(OFFICE, T0 + 5, "101") is Admission.CHECK
    assert guard.admit(OFFICE, T0 + 5.1, "101") is Admission.SKIP  # the slot is used up
    assert guard.admit(OFFICE, T0 + 10, "101") is Admission.CHECK


def test_block_after_m_failures_and_it_ends() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 5)
    status = guard.failed(OFFICE, T0 + 1, "101")
    assert status.blocked_until == T0 + 1 + 120
    assert status.new_block == Block(OFFICE, "101", T0 + 121, "6 failures")
    assert guard.admit(OFFICE, T0 + 2, "101") is Admission.BLOCKED
    assert guard.blocks(T0 + 2) == (Block(OFFICE, "101", T0 + 121, "6 failures"),)
    assert guard.admit(OFFICE, T0 + 121, "101") is Admission.CHECK  # the block ended, the count starts over
    assert guard.status(OFFICE, T0 + 121, "101").failures == 0
    assert guard.blocks(T0 + 121) == ()


def test_one_phone_with_an_old_password_does_not_lock_out_its_office() -> None:
    """The defect seen: a phone retrying every 6 s with an old password blocked every phone behind the same
    NAT address for 15 minutes. Now only that phone's user is blocked there."""
    guard = FailureGuard(GuardPolicy())
    now = T0
    for _ in range(60):  # six minutes of retries, each answered with a challenge and an old password
        if guard.admit(OFFICE, now, "104") is Admission.CHECK:
            guard.failed(OFFICE, now, "104")
        now += 6
    assert guard.admit(OFFICE, now, "104") is Admission.BLOCKED
    assert guard.admits(OFFICE, now)
    for colleague in ("101", "102", "103"):
        assert guard.admit(OFFICE, now, colleague) is Admission.CHECK
        guard.succeeded(OFFICE, now, colleague)
    assert [b.user for b in guard.blocks(now)] == ["104"]


def test_failures_for_many_users_block_the_whole_source() -> None:
    guard = FailureGuard(POLICY)
    for user in ("101", "102", "103"):
        guard.failed(OFFICE, T0, user)
    assert guard.admits(OFFICE, T0)
    status = guard.failed(OFFICE, T0, "104")  # the fourth user: guessing across accounts
    assert status.new_block is not None and status.new_block.user is None
    assert not guard.admits(OFFICE, T0 + 1)
    assert guard.admit(OFFICE, T0 + 1, "105") is Admission.BLOCKED  # every user from there
    assert guard.admit("192.0.2.2", T0 + 1, "105") is Admission.CHECK  # not other sources


def test_a_flood_of_unchecked_attempts_blocks_the_whole_source() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 3)  # throttled
    answers = [guard.admit(OFFICE, T0 + i * 0.01, "101") for i in range(POLICY.source_attempts + 1)]
    assert set(answers) == {Admission.SKIP}  # within one throttle interval: none checked
    assert not guard.admits(OFFICE, T0 + 1)
    assert guard.admit(OFFICE, T0 + 1, "102") is Admission.BLOCKED


def test_a_phone_retrying_while_blocked_does_not_block_its_office() -> None:
    guard = FailureGuard(GuardPolicy())
    fail(guard, OFFICE, 10, user="104")
    now = T0
    for _ in range(150):  # the 15 minutes of its block, a retry every 6 s
        assert guard.admit(OFFICE, now, "104") is Admission.BLOCKED
        now += 6
    assert guard.admits(OFFICE, now)


def test_a_blocked_source_does_not_affect_others() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 6)
    assert guard.admit(OFFICE, T0, "101") is Admission.BLOCKED
    assert guard.admit("192.0.2.2", T0, "101") is Admission.CHECK
    assert guard.admit("2001:db8::1", T0, "101") is Admission.CHECK


def test_failures_slide_out_of_the_window() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 2, now=T0)
    fail(guard, OFFICE, 2, now=T0 + 30)
    assert guard.status(OFFICE, T0 + 30, "101").failures == 4
    assert guard.status(OFFICE, T0 + 60, "101").failures == 2  # the first two are 60 s old now
    assert guard.admit(OFFICE, T0 + 60, "101") is Admission.CHECK
    assert guard.status(OFFICE, T0 + 90, "101").failures == 0
    assert guard.status(OFFICE, T0 + 90).failures == 0
    assert guard.tracked == 0


def test_success_clears_only_that_users_failures() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 2, user="102")  # guesses at 102's password …
    fail(guard, OFFICE, 1, user="101")
    guard.succeeded(OFFICE, T0, "101")  # … then registers its own account 101
    assert guard.status(OFFICE, T0).failures == 2
    assert guard.status(OFFICE, T0, "102").failures == 2
    guard.succeeded(OFFICE, T0, "102")
    assert guard.status(OFFICE, T0).failures == 0 and guard.tracked == 0


def test_success_below_the_threshold_ends_the_throttle() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 3, user="101")
    assert guard.admit(OFFICE, T0 + 1, "101") is Admission.SKIP
    guard.succeeded(OFFICE, T0 + 1, "101")
    assert guard.admit(OFFICE, T0 + 1, "101") is Admission.CHECK


def test_success_does_not_lift_a_block_an_administrator_does() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, OFFICE, 6)
    guard.succeeded(OFFICE, T0, "101")
    assert guard.admit(OFFICE, T0 + 1, "101") is Admission.BLOCKED
    assert not guard.unblock(OFFICE, "102")  # nothing of 102's
    assert guard.unblock(OFFICE, "101")
    assert guard.admit(OFFICE, T0 + 1, "101") is Admission.CHECK
    for user in ("101", "102", "103", "104"):
        guard.failed(OFFICE, T0 + 2, user)
    assert not guard.admits(OFFICE, T0 + 2)
    assert guard.unblock(OFFICE)  # the whole source, and everything it had counted
    assert guard.admits(OFFICE, T0 + 2) and guard.tracked == 0


def test_ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    guard = FailureGuard(POLICY)
    for i in range(6):
        guard.failed(f"2001:db8:1:2::{i + 1:x}", T0, "101")  # rotating addresses inside one /64
    assert guard.admit("2001:db8:1:2::ffff", T0, "101") is Admission.BLOCKED
    assert guard.admit("2001:db8:1:3::1", T0, "101") is Admission.CHECK
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("[2001:db8::1]") == "2001:db8::/64"
    assert source_key("not-an-address") == "not-an-address"


def test_memory_is_bounded_and_blocks_survive_a_flood_of_new_sources() -> None:
    policy = GuardPolicy(throttle_after=2, block_after=3, max_sources=10)
    guard = FailureGuard(policy)
    fail(guard, OFFICE, 3)  # blocked
    for i in range(1000):
        guard.failed(f"10.0.{i // 256}.{i % 256}", T0, "x")
        guard.may_challenge(f"10.1.{i // 256}.{i % 256}", T0)
    assert guard.tracked <= 3 * policy.max_sources
    assert len(guard._buckets) <= policy.max_sources
    assert guard.admit(OFFICE, T0, "101") is Admission.BLOCKED


def test_challenges_to_one_source_are_rate_limited() -> None:
    guard = FailureGuard(GuardPolicy(challenge_rate=10, challenge_burst=20))
    burst = [guard.may_challenge(OFFICE, T0) for _ in range(30)]
    assert burst == [True] * 20 + [False] * 10
    assert guard.may_challenge("192.0.2.2", T0)  # per source
    assert [guard.may_challenge(OFFICE, T0 + 0.5) for _ in range(6)] == [True] * 5 + [False]
    assert all(guard.may_challenge(OFFICE, T0 + 100 + i * 0.1) for i in range(50))  # 10/s is allowed


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        GuardPolicy(throttle_after=5, block_after=4)
    with pytest.raises(ValueError):
        GuardPolicy(window=0)
    with pytest.raises(ValueError):
        GuardPolicy(ipv6_prefix=0)
    with pytest.raises(ValueError):
        GuardPolicy(source_users=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "failed", "succeeded"]),
            st.integers(0, 5),  # which source
            st.integers(0, 6),  # which user
            st.floats(0, 30),  # time step
        ),
        max_size=200,
    )
)
def test_invariants_under_any_sequence(steps: list[tuple[str, int, int, float]]) -> None:
    """Whatever happens: bounded memory, and the guesses actually checked for one (source, user) never
    exceed the policy's budget in any window."""
    policy = GuardPolicy(
        window=60, throttle_after=3, throttle_interval=5, block_after=6, block_for=100, source_users=3
    )
    guard = FailureGuard(policy)
    now = T0
    checked: dict[tuple[int, int], list[float]] = {}
    for action, source, user, step in steps:
        now += step
        address, name = f"198.51.100.{source}", f"10{user}"
        if action == "admit":
            if guard.admit(address, now, name) is Admission.CHECK:
                checked.setdefault((source, user), []).append(now)
                guard.failed(address, now, name)  # every checked guess is wrong
        elif action == "failed":
            guard.failed(address, now, name)
        else:
            guard.succeeded(address, now, "999")  # another user's success never resets these failures
        assert guard.tracked <= 3 * policy.max_sources
        assert guard.status(address, now, name).failures < policy.block_after
    for times in checked.values():
        for i, start in enumerate(times):
            in_span = [t for t in times[i:] if t < start + policy.window]
            assert len(in_span) <= policy.block_after


# ---------------------------------------------------------------------------------------------- trunks


def directory(*trunks: Trunk) -> Directory:
    server = ServerConfig("office.example", (), Path("var"), (20000, 20999))
    return Directory(server, trunks=trunks)


def net(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


PROVIDER = Trunk("provider", "203.0.113.5", inbound_from=net("203.0.113.0/24", "2001:db8:5::/48"))
BACKUP = Trunk("backup", "203.0.113.9", inbound_from=net("203.0.113.9/32"))
CLOSED = Trunk("closed", "198.51.100.1")


def test_trunk_for_source_matches_inbound_networks_only() -> None:
    d = directory(PROVIDER, BACKUP, CLOSED)
    assert trunk_for_source(d, "203.0.113.77") is PROVIDER
    assert trunk_for_source(d, "203.0.113.9") is BACKUP  # the longest prefix wins
    assert trunk_for_source(d, "2001:db8:5:1::1") is PROVIDER
    assert trunk_for_source(d, "::ffff:203.0.113.77") is PROVIDER
    assert trunk_for_source(d, "198.51.100.1") is None  # the host itself is not enough: no inbound_from
    assert trunk_for_source(d, "192.0.2.1") is None
    assert trunk_for_source(d, "not an address") is None
    assert trunk_for_source([PROVIDER], ipaddress.ip_address("203.0.113.1")) is PROVIDER


def test_trunk_accepts() -> None:
    assert trunk_accepts(PROVIDER, "203.0.113.200")
    assert not trunk_accepts(PROVIDER, "203.0.114.1")
    assert not trunk_accepts(CLOSED, "198.51.100.1")
    assert not trunk_accepts(PROVIDER, "")


# ---------------------------------------------------------------------------- several nodes, one guard

CLUSTER_POLICY = GuardPolicy(
    window=60.0, throttle_after=2, throttle_interval=5.0, block_after=4, source_users=3, source_attempts=6
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),  # the node the attempt reaches
            st.sampled_from(["10.0.0.1", "10.0.0.2"]),
            st.sampled_from(["101", "102", "103", "104"]),
            st.booleans(),  # right credentials
            st.floats(0.0, 8.0),  # seconds since the previous attempt
        ),
        max_size=60,
    )
)
def test_guards_that_replay_each_others_events_decide_as_one_guard(
    attempts: list[tuple[int, str, str, bool, float]],
) -> None:
    """Spreading attempts over two nodes whose guards replay each other's events gets an attacker no check
    that one node alone would not have made: the same admissions, the same blocks."""
    single = FailureGuard(CLUSTER_POLICY)
    nodes = (FailureGuard(CLUSTER_POLICY), FailureGuard(CLUSTER_POLICY))
    nodes[0].replica, nodes[1].replica = nodes[1].apply, nodes[0].apply
    now = 1000.0
    for node, source, user, right, pause in attempts:
        now += pause
        admissions = []
        for guard in (single, nodes[node]):
            admission = guard.admit(source, now, user)
            admissions.append(admission)
            if admission is Admission.CHECK:
                if right:
                    guard.succeeded(source, now, user)
                else:
                    guard.failed(source, now, user)
        assert admissions[0] is admissions[1]
        expected = single.status(source, now, user)
        for guard in nodes:
            assert guard.status(source, now, user) == expected
        assert {(b.source, b.user) for b in nodes[0].blocks(now)} == {
            (b.source, b.user) for b in single.blocks(now)
        }
