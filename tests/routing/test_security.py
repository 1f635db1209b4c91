"""FailureGuard (per-source throttling and blocking) and the trunk inbound check, pure, with a fake clock."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.directory import Directory, ServerConfig, Trunk
from routing.security import (
    Admission,
    FailureGuard,
    GuardPolicy,
    source_key,
    trunk_accepts,
    trunk_for_source,
)

T0 = 1_000.0
POLICY = GuardPolicy(
    window=60, throttle_after=3, throttle_interval=5, block_after=6, block_for=120, max_sources=100
)


def fail(guard: FailureGuard, source: str, times: int, now: float = T0, user: str = "101") -> None:
    for _ in range(times):
        guard.failed(source, now, user)


def test_below_the_throttle_every_attempt_is_checked() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 2)
    assert [guard.admit("192.0.2.1", T0) for _ in range(5)] == [Admission.CHECK] * 5
    status = guard.status("192.0.2.1", T0)
    assert status.failures == 2 and not status.throttled and status.blocked_until is None


def test_throttled_source_is_checked_once_per_interval() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 3)
    assert guard.status("192.0.2.1", T0).throttled
    assert guard.admit("192.0.2.1", T0 + 1) is Admission.SKIP
    assert guard.admit("192.0.2.1", T0 + 4.9) is Admission.SKIP
    assert guard.admit("192.0.2.1", T0 + 5) is Admission.CHECK
    assert guard.admit("192.0.2.1", T0 + 5.1) is Admission.SKIP  # the slot is used up
    assert guard.admit("192.0.2.1", T0 + 10) is Admission.CHECK


def test_block_after_m_failures_and_it_ends() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 5)
    status = guard.failed("192.0.2.1", T0 + 1, "101")
    assert status.blocked_until == T0 + 1 + 120
    assert guard.admit("192.0.2.1", T0 + 2) is Admission.BLOCKED
    assert not guard.admits("192.0.2.1", T0 + 2)
    assert guard.blocked(T0 + 2) == (("192.0.2.1", T0 + 121),)
    assert guard.admit("192.0.2.1", T0 + 121) is Admission.CHECK  # the block ended, the count starts over
    assert guard.status("192.0.2.1", T0 + 121).failures == 0
    assert guard.blocked(T0 + 121) == ()


def test_a_blocked_source_does_not_affect_others() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 6)
    assert guard.admit("192.0.2.1", T0) is Admission.BLOCKED
    assert guard.admit("192.0.2.2", T0) is Admission.CHECK
    assert guard.admit("2001:db8::1", T0) is Admission.CHECK


def test_failures_slide_out_of_the_window() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 2, now=T0)
    fail(guard, "192.0.2.1", 2, now=T0 + 30)
    assert guard.status("192.0.2.1", T0 + 30).failures == 4
    assert guard.status("192.0.2.1", T0 + 60).failures == 2  # the first two are 60 s old now
    assert guard.admit("192.0.2.1", T0 + 60) is Admission.CHECK
    assert guard.status("192.0.2.1", T0 + 90).failures == 0
    assert guard.tracked == 0


def test_success_clears_only_that_users_failures() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 2, user="102")  # guesses at 102's password …
    fail(guard, "192.0.2.1", 1, user="101")
    guard.succeeded("192.0.2.1", T0, "101")  # … then registers its own account 101
    assert guard.status("192.0.2.1", T0).failures == 2
    guard.succeeded("192.0.2.1", T0, "102")
    assert guard.status("192.0.2.1", T0).failures == 0 and guard.tracked == 0


def test_success_below_the_threshold_ends_the_throttle() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 3, user="101")
    assert guard.admit("192.0.2.1", T0 + 1) is Admission.SKIP
    guard.succeeded("192.0.2.1", T0 + 1, "101")
    assert guard.admit("192.0.2.1", T0 + 1) is Admission.CHECK


def test_success_does_not_lift_a_block() -> None:
    guard = FailureGuard(POLICY)
    fail(guard, "192.0.2.1", 6)
    guard.succeeded("192.0.2.1", T0, "101")
    assert guard.admit("192.0.2.1", T0 + 1) is Admission.BLOCKED
    assert guard.unblock("192.0.2.1")
    assert guard.admit("192.0.2.1", T0 + 1) is Admission.CHECK


def test_ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    guard = FailureGuard(POLICY)
    for i in range(6):
        guard.failed(f"2001:db8:1:2::{i + 1:x}", T0, "101")  # rotating addresses inside one /64
    assert guard.admit("2001:db8:1:2::ffff", T0) is Admission.BLOCKED
    assert guard.admit("2001:db8:1:3::1", T0) is Admission.CHECK
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("[2001:db8::1]") == "2001:db8::/64"
    assert source_key("not-an-address") == "not-an-address"


def test_memory_is_bounded_and_blocks_survive_a_flood_of_new_sources() -> None:
    policy = GuardPolicy(throttle_after=2, block_after=3, max_sources=10)
    guard = FailureGuard(policy)
    fail(guard, "192.0.2.1", 3)  # blocked
    for i in range(1000):
        guard.failed(f"10.0.{i // 256}.{i % 256}", T0, "x")
    assert guard.tracked <= 2 * policy.max_sources
    assert guard.admit("192.0.2.1", T0) is Admission.BLOCKED


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        GuardPolicy(throttle_after=5, block_after=4)
    with pytest.raises(ValueError):
        GuardPolicy(window=0)
    with pytest.raises(ValueError):
        GuardPolicy(ipv6_prefix=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "failed", "succeeded"]),
            st.integers(0, 5),  # which source
            st.floats(0, 30),  # time step
        ),
        max_size=200,
    )
)
def test_invariants_under_any_sequence(steps: list[tuple[str, int, float]]) -> None:
    """Whatever happens: bounded memory, a source's checked guesses never exceed the policy's budget."""
    policy = GuardPolicy(window=60, throttle_after=3, throttle_interval=5, block_after=6, block_for=100)
    guard = FailureGuard(policy)
    now = T0
    checked: dict[int, list[float]] = {}
    for action, source, step in steps:
        now += step
        address = f"198.51.100.{source}"
        if action == "admit":
            if guard.admit(address, now) is Admission.CHECK:
                checked.setdefault(source, []).append(now)
                guard.failed(address, now, "101")  # every checked guess is wrong
        elif action == "failed":
            guard.failed(address, now, "101")
        else:
            guard.succeeded(address, now, "999")  # another user's success never resets 101's failures
        assert guard.tracked <= 2 * policy.max_sources
        status = guard.status(address, now)
        assert status.failures < policy.block_after
    # Wrong guesses that were actually checked: never more than block_after in any window + block period.
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
