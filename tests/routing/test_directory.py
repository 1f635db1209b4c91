"""The office directory: the example loads; every validation rule names file, line and field; problems are
reported together."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from durchwahl.routing.cli import check_config as check_config_main
from durchwahl.routing.dialstring import NumberingPlan
from durchwahl.routing.directory import (
    HANGUP,
    ExtensionRef,
    ExternalNumber,
    ListenSpec,
    Strategy,
    parse_external_number,
)
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.errors import ConfigError, ConfigProblem
from durchwahl.sipcore.auth import Authenticated, DigestServer, answer_challenge, compute_ha1
from durchwahl.sipcore.headers import Header
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.uri import parse_uri

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "office.toml"

BASE = """\
[server]
domain = "office.example"

[[employee]]
extension = "101"
name = "Anna"
password = "a"

[[employee]]
extension = "102"
name = "Bernd"
password = "b"

[[group]]
extension = "200"
name = "Vertrieb"
members = ["101", "102"]

[[trunk]]
name = "provider"
host = "127.0.0.1"

[[number]]
number = "+49301234567"
trunk = "provider"
default = "200"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "office.toml"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "greeting.wav").write_bytes(b"RIFF")
    return path


def problems_of(tmp_path: Path, text: str) -> list[ConfigProblem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_directory(path)
    return info.value.problems


def line_of(text: str, needle: str, nth: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(f"{needle!r} (#{nth}) not in the text")


def assert_problem(
    tmp_path: Path, text: str, needle: str | tuple[str, int], field: str, fragment: str
) -> None:
    found = problems_of(tmp_path, text)
    needle_text, nth = needle if isinstance(needle, tuple) else (needle, 1)
    expected_line = line_of(text, needle_text, nth)
    file = str(tmp_path / "office.toml")
    matching = [p for p in found if p.field == field and fragment in p.message]
    assert matching, f"no {field} problem with {fragment!r} in:\n" + "\n".join(map(str, found))
    problem = matching[0]
    assert problem.file == file
    assert problem.line == expected_line, str(problem)
    assert str(problem) == f"{file}:{expected_line}: {field}: {problem.message}"


# ------------------------------------------------------------------------------------------ loading


def test_base_loads_with_defaults(tmp_path: Path) -> None:
    d = load_directory(write(tmp_path, BASE))
    assert d.server.domain == d.server.realm == "office.example"
    assert d.server.listen == (ListenSpec("udp", "0.0.0.0", 5060),)
    assert d.server.rtp_ports == (20000, 20999)
    assert d.server.state_dir == tmp_path / "var"
    assert d.server.auth_algorithms == ("SHA-256", "MD5")
    assert [e.sip_user for e in d.employees] == ["101", "102"]
    group = d.groups[0]
    assert (group.strategy, group.ring_seconds, group.fallback) == (Strategy.SIMULTANEOUS, 20, HANGUP)
    trunk = d.trunks[0]
    assert (trunk.port, trunk.transport, trunk.register, trunk.inbound_from) == (5060, "udp", False, ())
    number = d.numbers[0]
    assert (number.default, number.extension_processing, number.greeting) == (
        ExtensionRef("200"),
        False,
        None,
    )
    assert d.source == tmp_path / "office.toml"


def test_example_office_loads() -> None:
    d = load_directory(EXAMPLE)
    assert len(d.employees) == 3 and len(d.groups) == 1 and len(d.trunks) == 1 and len(d.numbers) == 1
    assert d.server.listen == (ListenSpec("udp", "127.0.0.1", 5060), ListenSpec("tcp", "127.0.0.1", 5060))
    assert d.employee("102") is not None and d.employee_by_sip_user("bernd") == d.employee("102")
    group = d.group("200")
    assert group is not None and group.strategy is Strategy.EVENLY and group.members == ("101", "102")
    trunk = d.trunk("provider")
    assert trunk is not None and (trunk.host, trunk.port) == ("127.0.0.1", 5070)
    assert trunk.inbound_from == (ipaddress.ip_network("127.0.0.1/32"),)
    number = d.number("+49301234567")
    assert number is not None and number.extension_processing
    assert number.greeting == EXAMPLE.parent / "greeting.wav" and number.greeting.is_file()
    muller = d.crm_contacts_for("+49891234567")
    assert [(c.name, c.number.post_dial) for c in muller] == [("Müller GmbH", "105")]


def test_example_greeting_is_small_8khz_mono() -> None:
    import wave

    path = EXAMPLE.parent / "greeting.wav"
    assert path.stat().st_size < 100_000
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 8000)
        assert 1 <= w.getnframes() / w.getframerate() <= 10


def test_relative_paths_follow_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE.replace('default = "200"', 'default = "200"\ngreeting = "greeting.wav"')
    path = write(tmp_path, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    d = load_directory(path)
    assert d.numbers[0].greeting == tmp_path / "greeting.wav"


def test_credentials_work_with_the_digest_server() -> None:
    d = load_directory(EXAMPLE)
    server = DigestServer(d.server.realm, secret=b"k" * 32, algorithms=d.server.auth_algorithms)
    for user, password in (
        ("101", "anna-101-secret"),
        ("bernd", "bernd-102-secret"),
        ("103", "carla-103-secret"),
    ):
        for k in range(len(server.algorithms)):
            challenge = server.challenge(1000.0)[k]  # a fresh nonce each time: nc=1 twice would be a replay
            creds = answer_challenge(challenge, "REGISTER", "sip:office.example", user, password, cnonce="c")
            request = Request(
                "REGISTER", parse_uri("sip:office.example"), (Header("Authorization", str(creds)),)
            )
            result = server.verify(request, d.credentials, 1000.0)
            assert isinstance(result, Authenticated) and result.username == user
    assert d.credentials("nobody") is None


def test_ha1_only_employee_and_external_fallback(tmp_path: Path) -> None:
    ha1 = compute_ha1("MD5", "101", "office.example", "a")
    text = BASE.replace('password = "a"', f'ha1 = "{ha1.upper()}"').replace(
        'members = ["101", "102"]', 'members = ["101", "102"]\nfallback = "+49 89 123456#12,3"'
    )
    d = load_directory(write(tmp_path, text))
    assert d.employees[0].password is None and d.employees[0].ha1 == ha1.upper()
    assert d.groups[0].fallback == ExternalNumber("+4989123456", "12,3")


def test_ipv6_listen_and_networks(tmp_path: Path) -> None:
    text = BASE.replace(
        'domain = "office.example"', 'domain = "office.example"\nlisten = ["tcp:[::1]:5080", "udp:0.0.0.0:0"]'
    ).replace(
        'host = "127.0.0.1"', 'host = "sip.provider.example"\ninbound_from = ["2001:db8::/32", "10.1.2.3"]'
    )
    d = load_directory(write(tmp_path, text))
    assert d.server.listen == (ListenSpec("tcp", "::1", 5080), ListenSpec("udp", "0.0.0.0", 0))
    assert str(d.server.listen[0]) == "tcp:[::1]:5080"
    assert [str(n) for n in d.trunks[0].inbound_from] == ["2001:db8::/32", "10.1.2.3/32"]


# ------------------------------------------------------------------------------------ number syntax


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+49301234567", ExternalNumber("+49301234567")),
        ("+49 (30) 123-45.67", ExternalNumber("+49301234567")),
        ("+49891234567;105", ExternalNumber("+49891234567", "105")),
        ("+49891234567#1,,05*#", ExternalNumber("+49891234567", "1,,05*#")),
        ("+49891234567;abcd", ExternalNumber("+49891234567", "ABCD")),
    ],
)
def test_parse_external_number(text: str, expected: ExternalNumber) -> None:
    assert parse_external_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0301234567",
        "+12345",
        "+4930123456789012",
        "+49 30 12x4567",
        "+0301234567",
        "+49891234567;",
        "+4989123456;1e",
    ],
)
def test_parse_external_number_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_external_number(text)


# ----------------------------------------------------------------------------------------- each rule

CASES = [
    # (old, new, needle or (needle, nth), field, message fragment)
    ('extension = "101"', 'extension = "1O1"', 'extension = "1O1"', "employee[1].extension", "1–4 digits"),
    ('extension = "101"', 'extension = "10101"', "10101", "employee[1].extension", "1–4 digits"),
    ('extension = "200"', 'extension = "102"', ('extension = "102"', 2), "group[1].extension", "employee[2]"),
    (
        'extension = "102"',
        'extension = "101"',
        ('extension = "101"', 2),
        "employee[2].extension",
        "already used",
    ),
    (
        'name = "Bernd"',
        'name = "Bernd"\nsip_user = "101"',
        'sip_user = "101"',
        "employee[2].sip_user",
        "SIP user",
    ),
    ('name = "Bernd"', 'name = "Bernd"\nsip_user = "b@x"', "sip_user", "employee[2].sip_user", "letters"),
    ('password = "b"\n', "", ("[[employee]]", 2), "employee[2].password", "needs a password"),
    (
        'password = "b"',
        f'password = "b"\nha1 = "{"0" * 32}"',
        'password = "b"',
        "employee[2].password",
        "not both",
    ),
    ('password = "b"', 'ha1 = "abc"', 'ha1 = "abc"', "employee[2].ha1", "32 hex"),
    ('password = "b"', 'ha1_sha256 = "abc"', "ha1_sha256", "employee[2].ha1_sha256", "64 hex"),
    ('members = ["101", "102"]', 'members = ["101", "999"]', "members", "group[1].members", "'999' is not"),
    ('members = ["101", "102"]', 'members = ["101", "200"]', "members", "group[1].members", "is a group"),
    ('members = ["101", "102"]', 'members = ["101", "101"]', "members", "group[1].members", "twice"),
    ('members = ["101", "102"]', "members = []", "members", "group[1].members", "at least one"),
    ('members = ["101", "102"]', 'members = ["101", 102]', "members", "group[1].members", "list of strings"),
    (
        'name = "Vertrieb"',
        'name = "Vertrieb"\nstrategy = "random"',
        "strategy",
        "group[1].strategy",
        "'random'",
    ),
    (
        'name = "Vertrieb"',
        'name = "Vertrieb"\nring_seconds = 2',
        "ring_seconds",
        "group[1].ring_seconds",
        "5–300",
    ),
    (
        'name = "Vertrieb"',
        'name = "Vertrieb"\nring_seconds = 301',
        "ring_seconds",
        "group[1].ring_seconds",
        "5–300",
    ),
    (
        'name = "Vertrieb"',
        'name = "Vertrieb"\nring_seconds = "15"',
        "ring_seconds",
        "group[1].ring_seconds",
        "an integer",
    ),
    ('name = "Vertrieb"', 'name = "Vertrieb"\nfallback = "abc"', "fallback", "group[1].fallback", "'hangup'"),
    ('name = "Vertrieb"', 'name = "Vertrieb"\nfallback = "999"', "fallback", "group[1].fallback", "neither"),
    ('name = "Vertrieb"', 'name = "Vertrieb"\nfallback = "+49 1"', "fallback", "group[1].fallback", "6–15"),
    (
        'name = "Vertrieb"',
        'name = "Vertrieb"\nfallback = "200"',
        "fallback",
        "group[1].fallback",
        "200 → 200",
    ),
    (
        'trunk = "provider"',
        'trunk = "provder"',
        'trunk = "provder"',
        "number[1].trunk",
        "did you mean 'provider'",
    ),
    (
        'default = "200"',
        'default = "200"\ngreeting = "nope.wav"',
        "greeting",
        "number[1].greeting",
        "nope.wav",
    ),
    (
        'default = "200"',
        'default = "200"\nmusic = "nope.wav"',
        "music",
        "number[1].music",
        "nope.wav",
    ),
    (
        'default = "200"',
        'default = "200"\nmusic = "office.toml"',
        "music",
        "number[1].music",
        "needs extension_processing",
    ),
    (
        'default = "200"',
        'default = "200"\nextension_processing = true',
        "extension_processing",
        "number[1].extension_processing",
        "needs a greeting",
    ),
    ('default = "200"', 'default = "hang up"', "default", "number[1].default", "'hangup'"),
    ('default = "200"\n', "", "[[number]]", "number[1].default", "missing"),
    (
        'number = "+49301234567"',
        'number = "030 1234567"',
        'number = "030',
        "number[1].number",
        "start with '+'",
    ),
    ('number = "+49301234567"', 'number = "+4930"', 'number = "+4930"', "number[1].number", "6–15"),
    ('number = "+49301234567"', 'number = "+49301234567;1"', "number = ", "number[1].number", "not allowed"),
    ('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 70000', "port = 70000", "trunk[1].port", "1–65535"),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ntransport = "sctp"',
        "transport",
        "trunk[1].transport",
        "'sctp' is not 'udp', 'tcp' or 'tls'",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ntransport = "tls"',
        "transport",
        "trunk[1].transport",
        "needs a tls: listen address",
    ),
    ('host = "127.0.0.1"', 'host = "bad host"', "host = ", "trunk[1].host", "not a host name"),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nregister = true',
        "register",
        "trunk[1].register",
        "username",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\nregister = "yes"',
        "register",
        "trunk[1].register",
        "true or false",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ninbound_from = ["10.0.0.1/24"]',
        "inbound_from",
        "trunk[1].inbound_from",
        "did you mean 10.0.0.0/24",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ninbound_from = ["x/8"]',
        "inbound_from",
        "trunk[1].inbound_from",
        "'x/8'",
    ),
    (
        'domain = "office.example"',
        'domain = "office example"',
        "domain = ",
        "server.domain",
        "not a host name",
    ),
    ('domain = "office.example"\n', "", "[server]", "server.domain", "missing"),
    ('domain = "office.example"', 'domain = ""', "domain = ", "server.domain", "empty"),
    (
        'domain = "office.example"',
        'domain = "office.example"\nlisten = ["udp:localhost:5060"]',
        "listen",
        "server.listen",
        "not an IP address",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nlisten = ["sctp:127.0.0.1:5060"]',
        "listen",
        "server.listen",
        "'udp:IP:PORT'",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nlisten = ["udp:127.0.0.1:70000"]',
        "listen",
        "server.listen",
        "not a port",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nlisten = []',
        "listen",
        "server.listen",
        "at least one",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nrtp_ports = "20999-20000"',
        "rtp_ports",
        "server.rtp_ports",
        "first < last",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nrtp_ports = "lots"',
        "rtp_ports",
        "server.rtp_ports",
        "range",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nrtp_ports = "5000-6000"',
        "rtp_ports",
        "server.rtp_ports",
        "contains the SIP port",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nauth_algorithms = ["SHA-512-256"]',
        "auth_algorithms",
        "server.auth_algorithms",
        "'SHA-512-256'",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\ncdr_retention_days = -1',
        "cdr_retention_days",
        "server.cdr_retention_days",
        "keep for ever",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\nlisen = []',
        "lisen",
        "server.lisen",
        "did you mean 'listen'",
    ),
    ('password = "a"', 'pasword = "a"', "pasword", "employee[1].pasword", "did you mean 'password'"),
    ("[[trunk]]", "[[trunks]]", "[[trunks]]", "trunks", "did you mean [trunk]"),
    (
        'domain = "office.example"',
        'domain = "office.example"\ncountry_code = "049"',
        "country_code",
        "server.country_code",
        "1–3 digits, not starting with 0",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\ncountry_code = 44',
        "country_code",
        "server.country_code",
        '(quoted: "44")',
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\ntrunk_prefix = "0x"',
        "trunk_prefix",
        "server.trunk_prefix",
        "up to 3 digits",
    ),
    (
        'domain = "office.example"',
        'domain = "office.example"\ninternational_prefix = "0"',
        "international_prefix",
        "server.international_prefix",
        "2–5 digits",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ninternational_prefix = "0"\ntrunk_prefix = "0"',
        "international_prefix",
        "trunk[1].international_prefix",
        "2–5 digits",
    ),
    (
        'host = "127.0.0.1"',
        'host = "127.0.0.1"\ntrunk_prefix = "00"',
        "trunk_prefix",
        "trunk[1].trunk_prefix",
        "both '00'",
    ),
    ("[[group]]", "[group]", "[group]", "group", "array of tables"),
]


@pytest.mark.parametrize(("old", "new", "needle", "field", "fragment"), CASES)
def test_rule(
    tmp_path: Path, old: str, new: str, needle: str | tuple[str, int], field: str, fragment: str
) -> None:
    assert old in BASE
    assert_problem(tmp_path, BASE.replace(old, new, 1), needle, field, fragment)


def test_fallback_cycle_between_groups(tmp_path: Path) -> None:
    text = BASE.replace('members = ["101", "102"]', 'members = ["101", "102"]\nfallback = "201"') + (
        '\n[[group]]\nextension = "201"\nname = "B"\nmembers = ["102"]\nfallback = "202"\n'
        '\n[[group]]\nextension = "202"\nname = "C"\nmembers = ["101"]\nfallback = "200"\n'
    )
    assert_problem(tmp_path, text, 'fallback = "201"', "group[1].fallback", "200 → 201 → 202 → 200")
    cycles = [p for p in problems_of(tmp_path, text) if "cycle" in p.message]
    assert len(cycles) == 1  # one cycle, reported once
    # A chain that ends (at an employee or hangup) is fine.
    ok = text.replace('fallback = "200"', 'fallback = "101"')
    assert len(load_directory(write(tmp_path, ok)).groups) == 3


def test_employee_fallback_and_ring_time(tmp_path: Path) -> None:
    text = BASE.replace('password = "a"', 'password = "a"\nring_seconds = 15\nfallback = "200"', 1)
    anna = load_directory(write(tmp_path, text)).employees[0]
    assert anna.ring_seconds == 15 and anna.fallback == ExtensionRef("200")
    assert load_directory(write(tmp_path, BASE)).employees[0].fallback is None  # default: 480, as before
    # Employee and group fallbacks close a loop: 200 → 101 → 200 (the group's own fallback).
    looped = text.replace('members = ["101", "102"]', 'members = ["101", "102"]\nfallback = "101"')
    assert_problem(tmp_path, looped, 'fallback = "200"', "employee[1].fallback", "101 → 200 → 101")
    assert_problem(
        tmp_path,
        BASE.replace('password = "a"', 'password = "a"\nring_seconds = 2', 1),
        "ring_seconds = 2",
        "employee[1].ring_seconds",
        "outside 5–300",
    )
    assert_problem(
        tmp_path,
        BASE.replace('password = "a"', 'password = "a"\nfallback = "999"', 1),
        'fallback = "999"',
        "employee[1].fallback",
        "neither an employee nor a group",
    )


def test_duplicates_across_tables(tmp_path: Path) -> None:
    text = BASE + '\n[[trunk]]\nname = "provider"\nhost = "10.0.0.1"\n'
    assert_problem(tmp_path, text, ('name = "provider"', 2), "trunk[2].name", "already defined by trunk[1]")
    text = BASE + '\n[[number]]\nnumber = "+49 30 1234567"\ntrunk = "provider"\ndefault = "101"\n'
    assert_problem(tmp_path, text, ("number = ", 2), "number[2].number", "+49301234567 is already defined")
    text = (
        BASE
        + '\n[[crm]]\nname = "A"\nnumber = "+49891234567;105"\n'
        + '\n[[crm]]\nname = "B"\nnumber = "+49 89 1234567;105"\n'
    )
    assert_problem(tmp_path, text, ("number = ", 3), "crm[2].number", "already defined by crm[1]")


def test_crm_rules(tmp_path: Path) -> None:
    text = BASE + '\n[[crm]]\nname = "Müller GmbH"\nnumber = "+49891234567;1x5"\n'
    assert_problem(tmp_path, text, '"+49891234567;1x5"', "crm[1].number", "post-dial")
    text = BASE + '\n[[crm]]\nnumber = "+49891234567"\n'
    assert_problem(tmp_path, text, "[[crm]]", "crm[1].name", "missing")


def test_ha1_must_cover_an_offered_algorithm(tmp_path: Path) -> None:
    text = BASE.replace('domain = "office.example"', 'domain = "office.example"\nauth_algorithms = ["MD5"]')
    text = text.replace('password = "b"', f'ha1_sha256 = "{"a" * 64}"')
    assert_problem(tmp_path, text, "ha1_sha256", "employee[2].ha1_sha256", "could never register")


def test_missing_server_table_and_toml_syntax(tmp_path: Path) -> None:
    text = BASE.replace("[server]\n", "").replace('domain = "office.example"\n', "")
    found = problems_of(tmp_path, text)
    assert any(p.field == "server" and "missing [server]" in p.message for p in found)
    broken = BASE.replace('name = "Bernd"', 'name = "Bernd')
    (problem,) = problems_of(tmp_path, broken)
    assert problem.field == "toml" and problem.line == line_of(broken, 'name = "Bernd')
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_directory(missing)
    assert info.value.problems[0].field == "file"


# ------------------------------------------------------------------------------- several at once

MANY = """\
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:5060", "sctp:1.2.3.4:5"]
rtp_ports = "2000-1000"

[[employee]]
extension = "1O1"
name = "Anna"
password = "x"

[[employee]]
extension = "102"
name = "Bernd"

[[group]]
extension = "200"
name = "A"
strategy = "random"
members = ["102", "999"]
fallback = "200"

[[number]]
number = "+49 30 1234567"
trunk = "provider"
default = "300"

[[employe]]
extension = "5"
"""


def test_many_problems_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, MANY)
    with pytest.raises(ConfigError) as info:
        load_directory(path)
    problems = info.value.problems
    fields = [p.field for p in problems]
    for field in (
        "server.listen",
        "server.rtp_ports",
        "employee[1].extension",
        "employee[2].password",
        "group[1].strategy",
        "group[1].members",
        "group[1].fallback",
        "number[1].trunk",
        "number[1].default",
        "employe",
    ):
        assert field in fields, field
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    lines = str(info.value).splitlines()
    assert len(lines) == len(problems)
    assert all(line.startswith(f"{path}:") for line in lines)


def test_check_config_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(EXAMPLE)) == 0
    assert capsys.readouterr().out.strip() == "OK: 3 employees, 1 group, 1 trunk, 1 number, 2 CRM contacts"
    path = write(tmp_path, MANY)
    assert check_config_main(str(path)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:3: server.listen: ")
    assert out[-1].endswith(f"problems in {path}")


def test_numbering_plan_of_the_server_and_of_each_trunk(tmp_path: Path) -> None:
    """Germany unless the file says otherwise; a trunk's own keys amend the server's plan for that trunk."""
    d = load_directory(write(tmp_path, BASE))
    assert d.server.numbering == NumberingPlan("49", "0", "00") == d.numbering("provider") == d.numbering()
    assert d.trunks[0].numbering is None
    text = (
        BASE.replace(
            'domain = "office.example"',
            'domain = "office.example"\ncountry_code = "1"\ntrunk_prefix = "1"\ninternational_prefix = "011"',
        )
        + '\n[[trunk]]\nname = "london"\nhost = "192.0.2.44"\ncountry_code = "44"\ntrunk_prefix = "0"\n'
    )
    d = load_directory(write(tmp_path, text))
    assert d.server.numbering == NumberingPlan("1", "1", "011") == d.numbering("provider")
    assert d.numbering("london") == NumberingPlan("44", "0", "011")  # the server's international prefix
    assert d.numbering("nowhere") == d.server.numbering


def test_emergency_numbers_and_trunk(tmp_path: Path) -> None:
    d = load_directory(write(tmp_path, BASE))
    assert (d.server.emergency_numbers, d.server.emergency, d.server.emergency_trunk) == (
        None,
        ("112", "110"),
        None,
    )
    assert d.warnings == ()
    uk = load_directory(write(tmp_path, BASE.replace("[server]", '[server]\ncountry_code = "44"')))
    assert uk.server.emergency == ("999", "112")
    own = BASE.replace(
        "[server]", '[server]\nemergency_numbers = [" 112 ", "112", "19222"]\nemergency_trunk = "provider"'
    )
    d = load_directory(write(tmp_path, own))
    assert (d.server.emergency, d.server.emergency_trunk) == (("112", "19222"), "provider")


def test_media_is_anchored_unless_turned_off(tmp_path: Path) -> None:
    assert load_directory(write(tmp_path, BASE)).server.anchor_media is True
    off = BASE.replace('domain = "office.example"', 'domain = "office.example"\nanchor_media = false')
    assert load_directory(write(tmp_path, off)).server.anchor_media is False
    bad = BASE.replace('domain = "office.example"', 'domain = "office.example"\nanchor_media = "yes"')
    assert_problem(tmp_path, bad, "anchor_media", "server.anchor_media", "must be")


def test_tcp_limits_in_the_server_table(tmp_path: Path) -> None:
    d = load_directory(write(tmp_path, BASE))
    assert d.server.limits.tcp_max_connections is None  # derived from the descriptor limit at start
    assert (d.server.limits.tcp_message_seconds, d.server.limits.tcp_idle_seconds) == (10.0, 120.0)
    text = BASE.replace(
        'domain = "office.example"',
        'domain = "office.example"\ntcp_max_connections = 900\ntcp_max_connections_per_source = 300\n'
        "tcp_message_seconds = 5\ntcp_idle_seconds = 0",
    )
    limits = load_directory(write(tmp_path, text)).server.limits
    assert (limits.tcp_max_connections, limits.tcp_max_connections_per_source) == (900, 300)
    assert (limits.tcp_message_seconds, limits.tcp_idle_seconds) == (5, 0)
    bad = BASE.replace('domain = "office.example"', 'domain = "office.example"\ntcp_message_seconds = 0')
    assert_problem(tmp_path, bad, "tcp_message_seconds", "server.tcp_message_seconds", "at least 1")
    bad = BASE.replace('domain = "office.example"', 'domain = "office.example"\ntcp_idle_seconds = -1')
    assert_problem(tmp_path, bad, "tcp_idle_seconds", "server.tcp_idle_seconds", "at least 0")
    bad = BASE.replace('domain = "office.example"', 'domain = "office.example"\ntcp_max_connections = "many"')
    assert_problem(tmp_path, bad, "tcp_max_connections", "server.tcp_max_connections", "must be")
