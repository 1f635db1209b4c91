"""The resolver: every caller kind against every kind of dialled string, the scopes, the hook."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.routing.dialstring import PAUSE, DialString, NumberingPlan, parse_dialstring
from durchwahl.routing.directory import (
    HANGUP,
    CrmContact,
    Directory,
    Employee,
    ExtensionRef,
    ExternalNumber,
    Group,
    ListenSpec,
    Number,
    ServerConfig,
    Strategy,
    Trunk,
)
from durchwahl.routing.errors import RoutingError
from durchwahl.routing.resolver import (
    Anonymous,
    Caller,
    FromEmployee,
    FromTrunk,
    OutboundScope,
    Refused,
    Resolver,
    ResolverConfig,
    Route,
    ToEmployee,
    ToExtensionProcessing,
    ToExternal,
    ToGroup,
)

SERVER = ServerConfig("office.example", (ListenSpec("udp", "127.0.0.1", 5060),), Path("var"), (20000, 20999))
ANNA = Employee("101", "Anna", "101", password="a")
BERND = Employee("102", "Bernd", "bernd", password="b")
CARLA = Employee("103", "Carla", "103", password="c")
SALES = Group("200", "Vertrieb", Strategy.EVENLY, ("101", "102"), 15, ExtensionRef("103"))
MAIN = Number("+49301234567", "provider", ExtensionRef("200"), True, Path("greeting.wav"))
FAX = Number("+49301234500", "provider", ExternalNumber("+491701234567", "1,2"))
NIGHT = Number("+49301234599", "provider", HANGUP)
OTHER = Number("+49401111111", "other", ExtensionRef("101"))
DIRECTORY = Directory(
    server=SERVER,
    employees=(ANNA, BERND, CARLA),
    groups=(SALES,),
    trunks=(Trunk("provider", "192.0.2.1"), Trunk("other", "192.0.2.2")),
    numbers=(MAIN, FAX, NIGHT, OTHER),
    crm=(CrmContact("Müller GmbH", ExternalNumber("+49891234567", "105")),),
)
CONFIG = ResolverConfig(scopes={"102": "crm", "103": OutboundScope.NONE})


def resolve(text: str, caller: Caller, config: ResolverConfig = CONFIG) -> Route:
    return Resolver(DIRECTORY, config).resolve_builtin(parse_dialstring(text), caller)


# -------------------------------------------------------------------------------------------- callers

EMPLOYEE_CASES = [
    ("101", FromEmployee("102"), ToEmployee(ANNA)),
    ("101", FromEmployee("101"), ToEmployee(ANNA)),
    ("200", FromEmployee("103"), ToGroup(SALES)),
    ("999", FromEmployee("101"), Refused(404, "Not Found: no extension 999")),
    ("+49 89 7654321;1,2", FromEmployee("101"), ToExternal("+49897654321", ("1", PAUSE, "2"), "provider")),
    ("089 7654321", FromEmployee("101"), ToExternal("+49897654321", (), "provider")),
    ("0044 20 79460000", FromEmployee("101"), ToExternal("+442079460000", (), "provider")),
    ("+49891234567;105", FromEmployee("102"), ToExternal("+49891234567", ("1", "0", "5"), "provider")),
    ("089 1234567", FromEmployee("102"), ToExternal("+49891234567", (), "provider")),
    ("+49897654321", FromEmployee("102"), Refused(403, "Forbidden: 102 may only call CRM numbers")),
    ("+49891234567", FromEmployee("103"), Refused(403, "Forbidden: 103 may not call external numbers")),
    ("030 1234567", FromEmployee("103"), ToExtensionProcessing(MAIN)),  # an own number, whatever the scope
    ("+49301234500", FromEmployee("103"), ToExternal("+491701234567", ("1", PAUSE, "2"), "provider")),
    ("+49401111111", FromEmployee("102"), ToEmployee(ANNA)),
    ("101", FromEmployee("999"), Refused(403, "Forbidden: 999 is not an employee")),
]


@pytest.mark.parametrize(("text", "caller", "route"), EMPLOYEE_CASES)
def test_employee(text: str, caller: Caller, route: Route) -> None:
    assert resolve(text, caller) == route


def test_local_number_without_area_code_is_incomplete() -> None:
    route = resolve("1234567", FromEmployee("101"))
    assert isinstance(route, Refused) and route.status == 484 and "area code" in route.reason


TRUNK_CASES = [
    ("+49301234567", FromTrunk("provider"), ToExtensionProcessing(MAIN)),
    ("030 1234567", FromTrunk("provider"), ToExtensionProcessing(MAIN)),
    ("49301234567", FromTrunk("provider"), ToExtensionProcessing(MAIN)),  # E.164 without "+"
    ("+49301234500", FromTrunk("provider"), ToExternal("+491701234567", ("1", PAUSE, "2"), "provider")),
    ("+49301234599", FromTrunk("provider"), Refused(480, "Temporarily Unavailable")),
    ("+49401111111", FromTrunk("other"), ToEmployee(ANNA)),
    (
        "+49401111111",
        FromTrunk("provider"),
        Refused(403, "Forbidden: +49401111111 is not a number of trunk provider"),
    ),
    (
        "101",
        FromTrunk("provider"),
        Refused(403, "Forbidden: trunk provider may only call the office's numbers"),
    ),
    (
        "+49891234567",
        FromTrunk("provider"),
        Refused(404, "Not Found: +49891234567 is not a number of this office"),
    ),
    ("1234567", FromTrunk("provider"), Refused(404, "Not Found: 1234567 is not a number of this office")),
]


@pytest.mark.parametrize(("text", "caller", "route"), TRUNK_CASES)
def test_trunk(text: str, caller: Caller, route: Route) -> None:
    assert resolve(text, caller) == route


def test_number_default_external_leaves_through_the_numbers_trunk() -> None:
    directory = Directory(
        server=SERVER,
        employees=(ANNA,),
        trunks=(Trunk("out", "192.0.2.3"), Trunk("provider", "192.0.2.1")),
        numbers=(FAX,),
    )
    resolver = Resolver(directory)
    assert resolver.outbound_trunk == "out"
    assert resolver.resolve_builtin(parse_dialstring("+49301234500"), FromTrunk("provider")) == ToExternal(
        "+491701234567", ("1", PAUSE, "2"), "provider"
    )
    assert resolver.resolve_builtin(parse_dialstring("+4917099"), FromEmployee("101")) == ToExternal(
        "+4917099", (), "out"
    )


@pytest.mark.parametrize(
    ("caller", "config", "route"),
    [
        (Anonymous("udp:198.51.100.7:5060"), CONFIG, Refused(401, "Unauthorized")),
        (
            Anonymous("udp:198.51.100.7:5060"),
            ResolverConfig(challenge_status=407),
            Refused(407, "Proxy Authentication Required"),
        ),
        (
            Anonymous("udp:198.51.100.7:5060", challenge=False),
            CONFIG,
            Refused(403, "Forbidden: not authenticated"),
        ),
    ],
)
@pytest.mark.parametrize("text", ["101", "200", "999", "+49891234567", "+49301234567", "030 1234567"])
def test_anonymous_reaches_nothing(text: str, caller: Caller, config: ResolverConfig, route: Route) -> None:
    assert resolve(text, caller, config) == route


_dialled = st.one_of(
    st.from_regex(r"[0-9]{1,4}", fullmatch=True),
    st.from_regex(r"\+[1-9][0-9]{5,14}(;[0-9,#*]{0,5})?", fullmatch=True),
    st.from_regex(r"0[0-9]{4,16}", fullmatch=True),
    st.sampled_from(["+49301234567", "+49891234567;105", "200", "101"]),
).map(parse_dialstring)


@settings(max_examples=200)
@given(_dialled, st.text(max_size=20), st.booleans())
def test_never_a_free_outbound_call(dialled: DialString, source: str, challenge: bool) -> None:
    """Property: whatever an unauthenticated source dials, it is refused with 401/407/403."""
    route = Resolver(DIRECTORY, CONFIG).resolve_builtin(dialled, Anonymous(source, challenge))
    assert isinstance(route, Refused) and route.status in ((401,) if challenge else (403,))


@settings(max_examples=200)
@given(_dialled, st.sampled_from(["provider", "other", "unknown"]))
def test_trunks_reach_only_their_numbers(dialled: DialString, trunk: str) -> None:
    resolver = Resolver(DIRECTORY, CONFIG)
    route = resolver.resolve_builtin(dialled, FromTrunk(trunk))
    flows = [resolver.number_flow(n) for n in DIRECTORY.numbers if n.trunk == trunk]
    assert route in flows or (isinstance(route, Refused) and route.status in (403, 404))


@settings(max_examples=200)
@given(_dialled)
def test_scope_none_never_calls_out_except_office_numbers(dialled: DialString) -> None:
    route = Resolver(DIRECTORY, CONFIG).resolve_builtin(dialled, FromEmployee("103"))
    if isinstance(route, ToExternal) and route.emergency:
        assert route.e164 in ("112", "110")  # the emergency services, whatever the scope
    elif isinstance(route, ToExternal):
        assert route.e164 == "+491701234567"  # FAX's configured default, reached through an own number


# ------------------------------------------------------------------------------------ emergency calls


def emergency(number: str, trunk: str = "provider") -> ToExternal:
    return ToExternal(number, (), trunk, emergency=True)


@pytest.mark.parametrize("extension", ["101", "102", "103"])  # scope any, crm, none
@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("112", "112"),
        ("110", "110"),
        ("112#", "112"),
        ("+49 112", "112"),
        ("+49110", "110"),
        ("0049 112", "112"),
        ("00 49 110", "110"),
        ("tel:112", "112"),
        ("+49112;5", "112"),  # post-dial digits never stop a call for help (and are not sent)
        ("00112", "112"),
        ("+110", "110"),
    ],
)
def test_every_employee_reaches_the_emergency_services(text: str, number: str, extension: str) -> None:
    assert resolve(text, FromEmployee(extension)) == emergency(number)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("0112", 404),  # an extension, not an emergency number
        ("1120", 404),
        ("+44 112", 484),  # another country's 112 is no number that can be called from here
        ("0044 999", 484),
    ],
)
def test_only_the_office_countrys_emergency_numbers(text: str, status: int) -> None:
    route = resolve(text, FromEmployee("101"))
    assert isinstance(route, Refused) and route.status == status


def test_nothing_shadows_an_emergency_number() -> None:
    """Not an extension that a directory built in code (no check-config) gives the number, not a CRM entry
    or the caller's scope: the employee reaches the emergency services."""
    shadow = Employee("112", "Shadow", "shadow", password="s")
    directory = attrs.evolve(DIRECTORY, employees=(*DIRECTORY.employees, shadow))
    route = Resolver(directory, CONFIG).resolve_builtin(parse_dialstring("112"), FromEmployee("103"))
    assert route == emergency("112")


async def test_the_hook_cannot_shadow_an_emergency_number() -> None:
    async def hook(dialled: DialString, caller: Caller) -> Route | None:
        return ToEmployee(CARLA)

    resolver = Resolver(DIRECTORY, CONFIG, hook)
    assert await resolver.resolve(parse_dialstring("110"), FromEmployee("103")) == emergency("110")
    assert await resolver.resolve(parse_dialstring("101"), FromEmployee("103")) == ToEmployee(CARLA)


@pytest.mark.parametrize("text", ["112", "+49112", "0049110"])
async def test_emergency_numbers_are_for_employees_only(text: str) -> None:
    """A trunk's caller or an unauthenticated source gets no call out of the office, emergency or not."""
    resolver = Resolver(DIRECTORY, CONFIG)
    trunk = await resolver.resolve(parse_dialstring(text), FromTrunk("provider"))
    assert isinstance(trunk, Refused) and trunk.status in (403, 404)
    assert await resolver.resolve(parse_dialstring(text), Anonymous("x")) == Refused(401, "Unauthorized")


def test_the_emergency_trunk(caplog: pytest.LogCaptureFixture) -> None:
    to_other = attrs.evolve(DIRECTORY, server=attrs.evolve(SERVER, emergency_trunk="other"))
    assert Resolver(to_other, CONFIG).resolve_builtin(parse_dialstring("112"), FromEmployee("101")) == (
        emergency("112", "other")
    )
    assert Resolver(DIRECTORY, ResolverConfig(outbound_trunk="other")).emergency_trunk == "other"
    with pytest.raises(RoutingError, match="emergency trunk 'nowhere'"):
        Resolver(attrs.evolve(DIRECTORY, server=attrs.evolve(SERVER, emergency_trunk="nowhere")))
    no_trunk = Resolver(Directory(server=SERVER, employees=(ANNA,)))
    with caplog.at_level(logging.ERROR, logger="durchwahl.routing.resolver"):
        route = no_trunk.resolve_builtin(parse_dialstring("112"), FromEmployee("101"))
    assert isinstance(route, Refused) and route.status == 503
    assert "emergency call to 112 from 101 CANNOT be connected: there is no trunk" in caplog.text


def test_emergency_numbers_follow_the_country() -> None:
    uk = Directory(
        server=attrs.evolve(SERVER, numbering=NumberingPlan("44", "0", "00")),
        employees=(ANNA,),
        trunks=(Trunk("provider", "192.0.2.1"),),
    )
    assert uk.server.emergency == ("999", "112")
    resolver = Resolver(uk)
    for text, number in (("999", "999"), ("112", "112"), ("+44 999", "999"), ("0044 112", "112")):
        assert resolver.resolve_builtin(parse_dialstring(text), FromEmployee("101")) == emergency(number)
    assert resolver.resolve_builtin(parse_dialstring("110"), FromEmployee("101")) == Refused(
        404, "Not Found: no extension 110"
    )
    own = attrs.evolve(uk, server=attrs.evolve(uk.server, emergency_numbers=("999",)))
    assert Resolver(own).resolve_builtin(parse_dialstring("112"), FromEmployee("101")) == Refused(
        404, "Not Found: no extension 112"
    )


# ----------------------------------------------------------------------------------- numbering plans

UK = NumberingPlan("44", "0", "00")


def test_national_numbers_follow_the_directorys_numbering_plan() -> None:
    """A British office: 020 … is London, not +4920… (the country code is the directory's, not fixed)."""
    london = Number("+442079461111", "provider", ExtensionRef("101"))
    directory = Directory(
        server=attrs.evolve(SERVER, numbering=UK),
        employees=(ANNA,),
        trunks=(Trunk("provider", "192.0.2.1"),),
        numbers=(london,),
    )
    resolver = Resolver(directory)
    assert resolver.resolve_builtin(parse_dialstring("020 7946 0000"), FromEmployee("101")) == ToExternal(
        "+442079460000", (), "provider"
    )
    assert resolver.resolve_builtin(parse_dialstring("020 7946 1111"), FromTrunk("provider")) == ToEmployee(
        ANNA
    )


def test_a_trunk_with_its_own_numbering_plan() -> None:
    """A German office with a London trunk: national numbers through that trunk are British, the rest
    German; each trunk's national forms of its own numbers are read by its plan."""
    directory = Directory(
        server=SERVER,
        employees=(ANNA,),
        trunks=(Trunk("berlin", "192.0.2.1"), Trunk("london", "192.0.2.2", numbering=UK)),
        numbers=(
            Number("+49301234567", "berlin", ExtensionRef("101")),
            Number("+442079461111", "london", ExtensionRef("101")),
        ),
    )
    national = parse_dialstring("020 7946 0000")
    assert Resolver(directory).resolve_builtin(national, FromEmployee("101")) == ToExternal(
        "+492079460000", (), "berlin"
    )
    assert Resolver(directory, ResolverConfig(outbound_trunk="london")).resolve_builtin(
        national, FromEmployee("101")
    ) == ToExternal("+442079460000", (), "london")
    resolver = Resolver(directory)
    assert resolver.resolve_builtin(parse_dialstring("020 7946 1111"), FromTrunk("london")) == ToEmployee(
        ANNA
    )
    assert resolver.resolve_builtin(parse_dialstring("030 1234567"), FromTrunk("berlin")) == ToEmployee(ANNA)


# -------------------------------------------------------------------------------------- configuration


def test_scope_config() -> None:
    config = ResolverConfig(default_scope="none", scopes=[("101", "any")])
    assert config.scope_of("101") is OutboundScope.ANY
    assert config.scope_of("102") is OutboundScope.NONE
    assert ResolverConfig().default_scope is OutboundScope.ANY
    with pytest.raises(ValueError):
        ResolverConfig(scopes={"101": "everything"})
    with pytest.raises(ValueError):
        ResolverConfig(challenge_status=403)


def test_extensions_must_be_unique_across_employees_and_groups() -> None:
    clash = Group("101", "Clash", Strategy.SIMULTANEOUS, ("102",))
    with pytest.raises(RoutingError, match="101"):
        Resolver(Directory(server=SERVER, employees=(ANNA, BERND), groups=(clash,)))
    with pytest.raises(RoutingError, match="102"):
        Resolver(Directory(server=SERVER, employees=(ANNA, BERND, BERND)))


def test_unknown_outbound_trunk() -> None:
    with pytest.raises(RoutingError, match="nowhere"):
        Resolver(DIRECTORY, ResolverConfig(outbound_trunk="nowhere"))
    assert Resolver(DIRECTORY, ResolverConfig(outbound_trunk="other")).outbound_trunk == "other"


def test_no_trunk_no_calls_out() -> None:
    resolver = Resolver(Directory(server=SERVER, employees=(ANNA,)))
    route = resolver.resolve_builtin(parse_dialstring("+49891234567"), FromEmployee("101"))
    assert isinstance(route, Refused) and route.status == 503
    assert resolver.resolve_destination(ExternalNumber("+49891234567")).status == 503  # type: ignore[union-attr]


def test_resolve_destination() -> None:
    resolver = Resolver(DIRECTORY, CONFIG)
    assert resolver.resolve_destination(ExtensionRef("200")) == ToGroup(SALES)
    assert resolver.resolve_destination(ExtensionRef("777")) == Refused(404, "Not Found: no extension 777")
    assert resolver.resolve_destination(ExternalNumber("+4930999", ",1")) == ToExternal(
        "+4930999", (PAUSE, "1"), "provider"
    )
    assert resolver.resolve_destination(ExternalNumber("+4930999"), trunk="other").trunk == "other"  # type: ignore[union-attr]
    assert resolver.resolve_destination(HANGUP) == Refused(480, "Temporarily Unavailable")
    with pytest.raises(TypeError):
        resolver.resolve_destination("101")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- hook


async def test_hook_is_consulted_first() -> None:
    seen: list[tuple[DialString, Caller]] = []

    async def hook(dialled: DialString, caller: Caller) -> Route | None:
        seen.append((dialled, caller))
        if isinstance(caller, FromTrunk):
            return ToEmployee(CARLA)  # "the responsible employee"
        return None

    resolver = Resolver(DIRECTORY, CONFIG, hook)
    main = parse_dialstring("+49301234567")
    assert await resolver.resolve(main, FromTrunk("provider")) == ToEmployee(CARLA)
    assert await resolver.resolve(parse_dialstring("101"), FromEmployee("102")) == ToEmployee(ANNA)
    assert seen == [(main, FromTrunk("provider")), (parse_dialstring("101"), FromEmployee("102"))]


async def test_hook_is_not_consulted_for_anonymous_callers() -> None:
    async def hook(dialled: DialString, caller: Caller) -> Route | None:
        raise AssertionError("consulted")

    resolver = Resolver(DIRECTORY, CONFIG, hook)
    assert await resolver.resolve(parse_dialstring("+49891234567"), Anonymous("x")) == Refused(
        401, "Unauthorized"
    )


async def test_a_failing_hook_falls_through(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(dialled: DialString, caller: Caller) -> Route | None:
        raise RuntimeError("CRM down")

    async def wrong(dialled: DialString, caller: Caller) -> Route | None:
        return "101"  # type: ignore[return-value]

    with caplog.at_level(logging.ERROR, logger="durchwahl.routing.resolver"):
        assert await Resolver(DIRECTORY, CONFIG, broken).resolve(
            parse_dialstring("101"), FromEmployee("102")
        ) == (ToEmployee(ANNA))
        assert await Resolver(DIRECTORY, CONFIG, wrong).resolve(
            parse_dialstring("101"), FromEmployee("102")
        ) == (ToEmployee(ANNA))
    assert "CRM down" in caplog.text and "not a route" in caplog.text


async def test_resolve_without_hook_is_the_builtin() -> None:
    resolver = Resolver(DIRECTORY, CONFIG)
    for text, caller, route in EMPLOYEE_CASES + TRUNK_CASES:
        assert await resolver.resolve(parse_dialstring(text), caller) == route


# ------------------------------------------------------------------------------------------------ purity

PURE = ("dialstring", "emergency", "resolver", "ringgroup", "collector", "challenge_watch")
FORBIDDEN = {"asyncio", "socket", "time", "random", "pyee", "selectors", "threading", "aiortc", "av", "numpy"}


@pytest.mark.parametrize("module", PURE)
def test_pure_routing_modules_import_no_io(module: str) -> None:
    """House rule 1: the routing cores take the time as an argument and import no I/O, clock or randomness."""
    path = Path(__file__).resolve().parents[2] / "routing" / f"{module}.py"
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & FORBIDDEN
