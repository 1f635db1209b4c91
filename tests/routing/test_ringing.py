"""The one "ring a route" (routing.calls.ringing.ring_route), for calls and transfers alike: where its copies
had diverged, each decision is pinned here — on a stub office where nobody can be rung, so only the routing
decisions run."""

from __future__ import annotations

from typing import Any

import pytest

from durchwahl.routing.calls.ringing import ENDED, MAX_HOPS, Unreached, ring_route
from durchwahl.routing.directory import Employee, ExtensionRef, Group, Strategy
from durchwahl.routing.resolver import Refused, Route, ToEmployee, ToExtensionProcessing, ToGroup

pytestmark = pytest.mark.virtual_time

ANNA = Employee("101", "Anna", "101", fallback=ExtensionRef("200"))
LOOP_A = Group("200", "A", Strategy.SIMULTANEOUS, ("101",), 15, ExtensionRef("201"))
LOOP_B = Group("201", "B", Strategy.SIMULTANEOUS, ("101",), 15, ExtensionRef("200"))


class Resolver:
    def resolve_destination(self, destination: object, *, trunk: str | None = None) -> Route:
        assert isinstance(destination, ExtensionRef)
        return {"101": ToEmployee(ANNA), "200": ToGroup(LOOP_A), "201": ToGroup(LOOP_B)}[
            destination.extension
        ]


class Services:
    """What ring_route asks of the services, for an office where no phone is registered."""

    resolver = Resolver()
    ring_seconds = 20.0

    def ring_time(self, employee: Employee) -> float:
        return 20.0

    async def devices(self, employee: Employee) -> list[Any]:
        return []

    async def group_steps(self, group: Group) -> list[tuple[list[Employee], float]]:
        return [([ANNA], 15.0)]


class Ringer:
    """A flow that records where it was routed; ``leaves_after``: the caller is gone after that many hops."""

    unanswered = "no answer"
    caller = None
    queue: Any = None
    call_id = "test"

    def __init__(self, leaves_after: int | None = None) -> None:
        self.routes: list[tuple[str, str]] = []
        self.leaves_after = leaves_after

    @property
    def gone(self) -> bool:
        return self.leaves_after is not None and len(self.routes) >= self.leaves_after

    def routed(self, kind: str, ident: str) -> None:
        self.routes.append((kind, ident))


async def ring(route: Route, ringer: Ringer | None = None) -> tuple[object, Ringer]:
    ringer = ringer or Ringer()
    outcome = await ring_route(Services(), ringer, route)  # type: ignore[arg-type]
    return outcome, ringer


async def test_groups_falling_back_to_each_other_end_in_482_loop_detected() -> None:
    outcome, ringer = await ring(ToEmployee(ANNA))
    assert outcome == Unreached(482, "Loop Detected")
    assert ringer.routes == [("employee", "101"), ("group", "200"), ("group", "201")]  # each group once


async def test_nobody_registered_goes_to_the_employees_fallback_and_says_nothing_rang() -> None:
    alone = Employee("102", "Bernd", "bernd")
    outcome, ringer = await ring(ToEmployee(alone))
    assert outcome == Unreached(480, rang=False)
    assert ringer.routes == [("employee", "102")]


async def test_the_caller_leaving_is_checked_before_every_hop() -> None:
    outcome, ringer = await ring(ToEmployee(ANNA), Ringer(leaves_after=1))
    assert outcome is ENDED and ringer.routes == [("employee", "101")]


async def test_a_refusal_keeps_its_status_and_reason_and_a_route_not_rung_is_480_with_a_reason() -> None:
    assert (await ring(Refused(403, "Forbidden: no")))[0] == Unreached(403, "Forbidden: no")
    outcome, _ = await ring(ToExtensionProcessing(object()))  # type: ignore[arg-type]
    assert isinstance(outcome, Unreached) and outcome.status == 480
    assert outcome.reason == "Temporarily Unavailable (ToExtensionProcessing not routed here)"


async def test_at_most_max_hops_routes() -> None:
    chain = {
        str(300 + i): Group(
            str(300 + i), "G", Strategy.SIMULTANEOUS, ("101",), 15, ExtensionRef(str(301 + i))
        )
        for i in range(MAX_HOPS + 2)
    }

    class Chain(Resolver):
        def resolve_destination(self, destination: object, *, trunk: str | None = None) -> Route:
            assert isinstance(destination, ExtensionRef)
            return ToGroup(chain[destination.extension])

    services = Services()
    services.resolver = Chain()
    ringer = Ringer()
    outcome = await ring_route(services, ringer, ToGroup(chain["300"]))  # type: ignore[arg-type]
    assert outcome == Unreached(482, "Loop Detected") and len(ringer.routes) == MAX_HOPS
