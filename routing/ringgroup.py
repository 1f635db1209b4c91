"""Ring-group strategies as a pure planner: which members ring when, and where the call goes after them.

:func:`plan_ring_group` turns a :class:`~routing.directory.Group`, the set of members that can take a call
now (at least one registered device and not already in a call — the caller decides) and the
:class:`RingGroupState` into a :class:`RingPlan`: steps, each a set of extensions rung together for
``seconds``, then the group's fallback destination (another group, an employee, an external number or
"hangup"; the resolver's ``resolve_destination`` turns it into a route).

* ``simultaneous``: one step, every reachable member, ``ring_seconds``.
* ``in_turn``: one step per reachable member, in the listed order, each ``ring_seconds``.
* ``evenly``: like ``in_turn``, but round robin: the plan starts with the first reachable member after the
  one that was offered the call first last time. An unanswered offer counts like an answered one, so over
  ``N`` calls with the same members reachable each member is offered first ``N / members`` times, ±1.

Unreachable members are skipped; with none reachable the plan has no steps and goes straight to the
fallback. The state is a small frozen value, returned updated with the plan; the shell stores it (see
:meth:`RingGroupState.to_mapping`) so that it survives a restart.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

import attrs

from .directory import Destination, Group, Strategy

__all__ = ["RingGroupState", "RingPlan", "RingStep", "SharedRingState", "plan_ring_group"]


@attrs.frozen
class RingStep:
    """Ring these extensions (every registered device of each) together for ``seconds``."""

    extensions: tuple[str, ...]
    seconds: int


@attrs.frozen
class RingPlan:
    """The steps for one call to ``group`` (its extension), then ``fallback`` once they are exhausted."""

    group: str
    steps: tuple[RingStep, ...]
    fallback: Destination

    @property
    def seconds(self) -> int:
        """How long the members ring in all, before the fallback."""
        return sum(step.seconds for step in self.steps)


def _freeze(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted(dict(items).items()))


@attrs.frozen
class RingGroupState:
    """For each ``evenly`` group (by extension), the member that was offered the last call first."""

    first_offered: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_freeze)

    def last_first(self, group: str) -> str | None:
        """The member that was offered ``group``'s last call first, if any."""
        return next((member for g, member in self.first_offered if g == group), None)

    def with_first(self, group: str, member: str) -> RingGroupState:
        return RingGroupState({**dict(self.first_offered), group: member})

    def to_mapping(self) -> dict[str, str]:
        """``{group extension: member extension}``, for storage; :meth:`from_mapping` reads it back."""
        return dict(self.first_offered)

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> RingGroupState:
        return cls(data)


class SharedRingState(Protocol):
    """The ``evenly`` state kept for several nodes (a cluster's Redis): :func:`plan_ring_group` applied to
    the shared state, which is advanced with the plan, atomically."""

    async def plan(self, group: Group, reachable: Collection[str]) -> RingPlan: ...


def plan_ring_group(
    group: Group, reachable: Collection[str], state: RingGroupState | None = None
) -> tuple[RingPlan, RingGroupState]:
    """The ring plan for one call to ``group`` and the state after it (changed only for ``evenly``).

    ``reachable`` holds the extensions that can take a call now; other members are skipped.
    """
    state = state if state is not None else RingGroupState()
    members = tuple(dict.fromkeys(group.members))  # listed order, each once
    if group.strategy is Strategy.EVENLY:
        last = state.last_first(group.extension)
        start = members.index(last) + 1 if last in members else 0
        members = members[start:] + members[:start]
    available = tuple(m for m in members if m in reachable)
    if not available:
        steps: tuple[RingStep, ...] = ()
    elif group.strategy is Strategy.SIMULTANEOUS:
        steps = (RingStep(available, group.ring_seconds),)
    else:
        steps = tuple(RingStep((m,), group.ring_seconds) for m in available)
    if group.strategy is Strategy.EVENLY and available:
        state = state.with_first(group.extension, available[0])
    return RingPlan(group.extension, steps, group.fallback), state
