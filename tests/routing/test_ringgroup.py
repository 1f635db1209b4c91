"""Ring-group plans: simultaneous, in turn, evenly; skipping unreachable members; the fallback last."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.routing.directory import HANGUP, ExtensionRef, ExternalNumber, Group, Strategy
from durchwahl.routing.ringgroup import RingGroupState, RingPlan, RingStep, plan_ring_group

MEMBERS = ("101", "102", "103", "104")
ALL = frozenset(MEMBERS)


def group(strategy: Strategy, members: tuple[str, ...] = MEMBERS, fallback: object = HANGUP) -> Group:
    return Group("200", "Sales", strategy, members, 15, fallback)  # type: ignore[arg-type]


def test_simultaneous() -> None:
    plan, state = plan_ring_group(group(Strategy.SIMULTANEOUS, fallback=ExtensionRef("300")), ALL - {"102"})
    assert plan == RingPlan("200", (RingStep(("101", "103", "104"), 15),), ExtensionRef("300"))
    assert plan.seconds == 15
    assert state == RingGroupState()


def test_in_turn() -> None:
    plan, state = plan_ring_group(group(Strategy.IN_TURN), {"104", "101", "103"})
    assert plan.steps == (RingStep(("101",), 15), RingStep(("103",), 15), RingStep(("104",), 15))
    assert plan.seconds == 45
    assert plan.fallback == HANGUP
    again, _ = plan_ring_group(group(Strategy.IN_TURN), {"104", "101", "103"}, state)
    assert again == plan  # always the listed order


def test_evenly_rotates() -> None:
    g = group(Strategy.EVENLY)
    state = RingGroupState()
    firsts = []
    for _ in range(6):
        plan, state = plan_ring_group(g, ALL, state)
        assert sorted(s.extensions[0] for s in plan.steps) == sorted(MEMBERS)
        firsts.append(plan.steps[0].extensions[0])
    assert firsts == ["101", "102", "103", "104", "101", "102"]
    assert state.to_mapping() == {"200": "102"}


def test_evenly_skips_unreachable_members_and_keeps_its_place() -> None:
    g = group(Strategy.EVENLY)
    plan, state = plan_ring_group(g, ALL, RingGroupState({"200": "101"}))
    assert [s.extensions for s in plan.steps] == [("102",), ("103",), ("104",), ("101",)]
    plan, state = plan_ring_group(g, {"101", "104"}, state)
    assert [s.extensions for s in plan.steps] == [("104",), ("101",)]
    plan, state = plan_ring_group(g, ALL, state)
    assert plan.steps[0].extensions == ("101",)


def test_evenly_after_the_last_member_left_the_group() -> None:
    plan, _ = plan_ring_group(group(Strategy.EVENLY), ALL, RingGroupState({"200": "999"}))
    assert plan.steps[0].extensions == ("101",)


def test_nobody_reachable_goes_straight_to_the_fallback() -> None:
    fallback = ExternalNumber("+491701234567")
    for strategy in Strategy:
        state = RingGroupState({"200": "102"})
        plan, after = plan_ring_group(group(strategy, fallback=fallback), set(), state)
        assert plan == RingPlan("200", (), fallback)
        assert after == state


def test_state_is_per_group_and_survives_a_round_trip() -> None:
    state = RingGroupState({"200": "101"}).with_first("201", "105").with_first("200", "102")
    assert state.last_first("200") == "102" and state.last_first("201") == "105"
    assert state.last_first("202") is None
    assert RingGroupState.from_mapping(state.to_mapping()) == state
    assert RingGroupState([("201", "105"), ("200", "102")]) == state


# ------------------------------------------------------------------------------------------ properties

_members = st.lists(st.from_regex(r"1[0-9]{2}", fullmatch=True), min_size=1, max_size=6, unique=True)


@settings(max_examples=150)
@given(_members, st.data(), st.integers(min_value=1, max_value=40))
def test_evenly_spreads_first_offers(members: list[str], data: st.DataObject, calls: int) -> None:
    reachable = data.draw(st.sets(st.sampled_from(members), min_size=1))
    start = data.draw(st.one_of(st.none(), st.sampled_from(members)))
    state = RingGroupState({"200": start} if start else {})
    g = group(Strategy.EVENLY, tuple(members))
    counts: Counter[str] = Counter()
    for _ in range(calls):
        plan, state = plan_ring_group(g, reachable, state)
        counts[plan.steps[0].extensions[0]] += 1
    offered = [counts[m] for m in reachable]
    assert max(offered) - min(offered) <= 1
    assert sum(offered) == calls


@settings(max_examples=200)
@given(
    _members,
    st.sampled_from(Strategy),
    st.data(),
    st.sampled_from([HANGUP, ExtensionRef("300"), ExternalNumber("+4930123456")]),
)
def test_plans_ring_only_reachable_members_once_and_end_with_the_fallback(
    members: list[str], strategy: Strategy, data: st.DataObject, fallback: object
) -> None:
    reachable = data.draw(st.sets(st.sampled_from([*members, "999"])))
    start = data.draw(st.one_of(st.none(), st.sampled_from(members)))
    g = group(strategy, tuple(members), fallback)
    plan, state = plan_ring_group(g, reachable, RingGroupState({"200": start} if start else {}))
    rung = [ext for step in plan.steps for ext in step.extensions]
    assert set(rung) == reachable & set(members)
    assert len(rung) == len(set(rung))
    assert all(step.extensions and step.seconds == 15 for step in plan.steps)
    assert plan.fallback == fallback
    if strategy is Strategy.SIMULTANEOUS:
        assert len(plan.steps) <= 1
    else:
        assert all(len(step.extensions) == 1 for step in plan.steps)
    if strategy is Strategy.IN_TURN:
        assert rung == [m for m in members if m in reachable]
    if strategy is Strategy.EVENLY and rung:
        assert state.last_first("200") == rung[0]
        i = members.index(rung[0])
        assert rung == [m for m in members[i:] + members[:i] if m in reachable]
