"""The office directory: server settings, employees, ring groups, trunks, numbers and CRM contacts.

Loaded from one TOML file (documented in ``docs/CONFIGURATION.md``) and validated completely before anything
uses it: every problem is collected and reported together, each naming the file, the line and the field
(``office.toml:12: employee[2].extension: "1O1" is not 1–4 digits``). The result is a tree of frozen values.

``tomllib`` gives no positions, so a small scan of the source text maps the n-th ``[[employee]]`` table to its
header line and each ``key =`` inside it to its line. The scan understands the documented layout (one table
header or ``key = value`` per line, multi-line arrays, comments); for anything more exotic (inline tables,
dotted keys) it falls back to the nearest enclosing table's line.

Relative paths (``state_dir``, ``greeting``, ``music``) are resolved against the folder holding the TOML file,
never the current directory, so a configuration means the same wherever the server is started.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import functools
import ipaddress
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from sipcore.auth import ALGORITHMS, DigestSecret
from sipcore.limits import DEFAULT_LIMITS, Limits

from .dialstring import (
    DialStringError,
    NumberingPlan,
    check_country_code,
    check_international_prefix,
    check_trunk_prefix,
)
from .emergency import EMERGENCY_NUMBER_RE, EMERGENCY_NUMBERS, default_emergency_numbers
from .errors import ConfigError, ConfigProblem

__all__ = [
    "DEFAULT_NUMBERING",
    "HANGUP",
    "CrmContact",
    "Destination",
    "Directory",
    "Employee",
    "ExtensionRef",
    "ExternalNumber",
    "Group",
    "Hangup",
    "ListenSpec",
    "Number",
    "ServerConfig",
    "Strategy",
    "Trunk",
    "check_config_main",
    "load_directory",
    "parse_external_number",
]

EXTENSION_RE: Final = re.compile(r"[0-9]{1,4}")
RING_SECONDS_RANGE: Final = (5, 300)
DEFAULT_RING_SECONDS: Final = 20
#: What a directory file without ``country_code``, ``trunk_prefix`` and ``international_prefix`` means:
#: Germany.
DEFAULT_NUMBERING: Final = NumberingPlan("49", "0", "00")

# ------------------------------------------------------------------------------------------- values


class Strategy(enum.Enum):
    """How a ring group rings its members."""

    SIMULTANEOUS = "simultaneous"  #: all at once; the first to answer wins
    IN_TURN = "in_turn"  #: one after another, always in the listed order
    EVENLY = "evenly"  #: one after another, starting after whoever was rung first last time


@attrs.frozen
class ExternalNumber:
    """An E.164 number (``+`` and digits, separators removed) and the post-dial digits sent after answer.

    ``post_dial`` holds 0-9, ``*``, ``#``, A-D and ``,`` (a pause); empty when there are none.
    """

    e164: str
    post_dial: str = ""

    def __str__(self) -> str:
        return f"{self.e164};{self.post_dial}" if self.post_dial else self.e164


@attrs.frozen
class ExtensionRef:
    """A destination inside the office: an employee's or a group's extension."""

    extension: str

    def __str__(self) -> str:
        return self.extension


@attrs.frozen
class Hangup:
    """The destination "end the call"."""

    def __str__(self) -> str:
        return "hangup"


HANGUP: Final = Hangup()

Destination = ExtensionRef | ExternalNumber | Hangup


@attrs.frozen
class ListenSpec:
    """One address the server listens on: transport (``udp``/``tcp``), IP address and port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@attrs.frozen
class ServerConfig:
    domain: str
    listen: tuple[ListenSpec, ...]
    state_dir: Path
    rtp_ports: tuple[int, int]
    auth_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    #: CDR rows of calls that ended more than this many days ago are deleted (0: kept for ever).
    cdr_retention_days: int = 0
    #: Relay the media of every call through our RTP ports (NAT-safe); off, calls between phones pass
    #: their SDP through and media flows phone to phone (greeting calls and calls out are always anchored).
    anchor_media: bool = True
    #: How dialled national numbers become E.164 (a trunk may have its own).
    numbering: NumberingPlan = DEFAULT_NUMBERING
    #: Numbers that always reach the emergency services through a trunk, whoever of the employees dials
    #: them; None: those of the country of ``numbering`` (see :attr:`emergency` and :mod:`routing.emergency`).
    emergency_numbers: tuple[str, ...] | None = None
    #: The trunk emergency calls leave through (None: the outbound trunk).
    emergency_trunk: str | None = None
    #: The SIP stack's limits; the ``tcp_*`` keys set its TCP connection caps and timeouts (read at start).
    limits: Limits = DEFAULT_LIMITS

    @property
    def realm(self) -> str:
        """The digest realm: the SIP domain."""
        return self.domain

    @property
    def emergency(self) -> tuple[str, ...]:
        """The emergency numbers in force: ``emergency_numbers``, else the country's."""
        if self.emergency_numbers is not None:
            return self.emergency_numbers
        return default_emergency_numbers(self.numbering.country_code)


@attrs.frozen
class Employee:
    extension: str
    name: str
    sip_user: str
    password: str | None = attrs.field(default=None, repr=False)
    ha1: str | None = attrs.field(default=None, repr=False)
    ha1_sha256: str | None = attrs.field(default=None, repr=False)
    #: How long the employee's devices ring for a call to the extension (None: the server's ring time).
    ring_seconds: int | None = None
    #: Where a call goes when nobody answers in time or no device is reachable (None: 480). Not for busy.
    fallback: Destination | None = None

    @property
    def digest_secret(self) -> DigestSecret:
        """What the registrar's digest check needs (see ``sipcore.auth.DigestServer.verify``)."""
        return DigestSecret(password=self.password, ha1_md5=self.ha1, ha1_sha256=self.ha1_sha256)


@attrs.frozen
class Group:
    extension: str
    name: str
    strategy: Strategy
    members: tuple[str, ...]
    ring_seconds: int = DEFAULT_RING_SECONDS
    fallback: Destination = HANGUP


@attrs.frozen
class Trunk:
    name: str
    host: str
    port: int = 5060
    transport: str = "udp"
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    register: bool = False
    inbound_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: The numbering plan of calls through this trunk, when it differs from the server's (None: the same).
    numbering: NumberingPlan | None = None


@attrs.frozen
class Number:
    number: str
    trunk: str
    default: Destination
    extension_processing: bool = False
    greeting: Path | None = None
    #: What a caller hears while the dialled extension rings (extension processing only; None: ringback).
    music: Path | None = None


@attrs.frozen
class CrmContact:
    name: str
    number: ExternalNumber


@attrs.frozen
class Directory:
    """Everything one TOML file describes; ``source`` is the file it came from."""

    server: ServerConfig
    employees: tuple[Employee, ...] = ()
    groups: tuple[Group, ...] = ()
    trunks: tuple[Trunk, ...] = ()
    numbers: tuple[Number, ...] = ()
    crm: tuple[CrmContact, ...] = ()
    source: Path | None = None
    #: What :func:`load_directory` found legal but probably not meant (a trunk network that takes in the
    #: whole Internet …); the server logs them at start and on reload, ``check-config`` prints them.
    warnings: tuple[ConfigProblem, ...] = ()

    @functools.cached_property
    def _by_extension(self) -> dict[str, Employee]:
        return {e.extension: e for e in self.employees}

    @functools.cached_property
    def _by_sip_user(self) -> dict[str, Employee]:
        return {e.sip_user: e for e in self.employees}

    def employee(self, extension: str) -> Employee | None:
        return self._by_extension.get(extension)

    def employee_by_sip_user(self, sip_user: str) -> Employee | None:
        """Looked up on every REGISTER and INVITE: an index, not a scan of a long employee list."""
        return self._by_sip_user.get(sip_user)

    def group(self, extension: str) -> Group | None:
        return next((g for g in self.groups if g.extension == extension), None)

    def trunk(self, name: str) -> Trunk | None:
        return next((t for t in self.trunks if t.name == name), None)

    def numbering(self, trunk: str | None = None) -> NumberingPlan:
        """The numbering plan of calls through ``trunk``: its own, else the server's."""
        found = self.trunk(trunk) if trunk is not None else None
        if found is not None and found.numbering is not None:
            return found.numbering
        return self.server.numbering

    def number(self, e164: str) -> Number | None:
        return next((n for n in self.numbers if n.number == e164), None)

    def crm_contacts_for(self, e164: str) -> tuple[CrmContact, ...]:
        """CRM contacts whose number (without post-dial digits) is ``e164``."""
        return tuple(c for c in self.crm if c.number.e164 == e164)

    def credentials(self, sip_user: str) -> DigestSecret | None:
        """A ``sipcore.auth.CredentialsLookup``: the digest secret of the employee with this SIP user name."""
        employee = self.employee_by_sip_user(sip_user)
        return employee.digest_secret if employee is not None else None

    def summary(self) -> str:
        """ "3 employees, 1 group, 1 trunk, 1 number, 1 CRM contact"."""
        counts = [
            (len(self.employees), "employee"),
            (len(self.groups), "group"),
            (len(self.trunks), "trunk"),
            (len(self.numbers), "number"),
            (len(self.crm), "CRM contact"),
        ]
        return ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts)


# ------------------------------------------------------------------------------------ number syntax

_SEPARATORS: Final = " -./()"
_POST_DIAL_RE: Final = re.compile(r"[0-9*#A-Da-d,]*")


def parse_external_number(text: str, *, allow_post_dial: bool = True) -> ExternalNumber:
    """Parse ``"+49 30 123456-7;105"``: ``+``, 6–15 digits (separators `` -./()`` allowed), then optionally
    ``;`` or ``#`` and post-dial digits (0-9 * # A-D, ``,`` for a pause). Raises ValueError saying why not."""
    cut = min((i for i in (text.find(";"), text.find("#")) if i >= 0), default=-1)
    main, post = (text, "") if cut < 0 else (text[:cut], text[cut + 1 :])
    main = main.strip()
    if not main.startswith("+"):
        raise ValueError(f"{text!r} is not an E.164 number (it must start with '+')")
    digits = main[1:]
    for ch in _SEPARATORS:
        digits = digits.replace(ch, "")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{text!r} is not an E.164 number (only digits and separators ' -./()' after '+')")
    if not 6 <= len(digits) <= 15:
        raise ValueError(f"{text!r} has {len(digits)} digits; an E.164 number has 6–15")
    if digits.startswith("0"):
        raise ValueError(f"{text!r} is not an E.164 number (the country code cannot start with 0)")
    if cut >= 0:
        if not allow_post_dial:
            raise ValueError(f"{text!r}: post-dial digits are not allowed here")
        post = post.strip()
        if not post or _POST_DIAL_RE.fullmatch(post) is None:
            raise ValueError(f"{text!r}: post-dial part {post!r} may only hold 0-9 * # A-D and ',' pauses")
    return ExternalNumber("+" + digits, post.upper())


# ---------------------------------------------------------------------------------- source locator

_TABLE_ARRAY_RE: Final = re.compile(r"\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]\s*(#.*)?$")
_TABLE_RE: Final = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY_RE: Final = re.compile(r"\s*([A-Za-z0-9_-]+)\s*[.=]")


class _Locator:
    """Line numbers of tables and keys, found by scanning the TOML source (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self._tables: dict[tuple[str, int], int] = {}
        self._keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current = ("", 0)
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_multiline:
                in_multiline = quotes % 2 == 0
                continue
            if quotes % 2 == 1:
                in_multiline = True
            match = _TABLE_ARRAY_RE.match(line)
            if match:
                name = match.group(1)
                current = (name, counts.get(name, 0))
                counts[name] = current[1] + 1
                self._tables.setdefault(current, number)
                continue
            match = _TABLE_RE.match(line)
            if match:
                current = (match.group(1), 0)
                self._tables.setdefault(current, number)
                continue
            match = _KEY_RE.match(line)
            if match:
                self._keys.setdefault((*current, match.group(1)), number)

    def table(self, table: str, index: int) -> int:
        line = self._tables.get((table, index))
        if line is None:
            line = self._keys.get(("", 0, table), 1)
        return line

    def key(self, table: str, index: int, key: str) -> int:
        line = self._keys.get((table, index, key))
        return line if line is not None else self.table(table, index)


# --------------------------------------------------------------------------------------- validation

T = TypeVar("T")

#: The [server] keys that set ``sipcore.limits.Limits`` fields of the same name, with their least value.
_TCP_KEYS: Final = (
    ("tcp_max_connections", 1),
    ("tcp_max_connections_per_source", 1),
    ("tcp_message_seconds", 1),
    ("tcp_idle_seconds", 0),
)

_TABLES: Final = {
    "server": {
        "domain",
        "listen",
        "state_dir",
        "rtp_ports",
        "auth_algorithms",
        "cdr_retention_days",
        "anchor_media",
        "country_code",
        "trunk_prefix",
        "international_prefix",
        "emergency_numbers",
        "emergency_trunk",
        *(key for key, _ in _TCP_KEYS),
    },
    "employee": {
        "extension",
        "name",
        "sip_user",
        "password",
        "ha1",
        "ha1_sha256",
        "ring_seconds",
        "fallback",
    },
    "group": {"extension", "name", "strategy", "members", "ring_seconds", "fallback"},
    "trunk": {
        "name",
        "host",
        "port",
        "transport",
        "username",
        "password",
        "register",
        "inbound_from",
        "country_code",
        "trunk_prefix",
        "international_prefix",
    },
    "number": {"number", "trunk", "extension_processing", "greeting", "music", "default"},
    "crm": {"name", "number"},
}
_HOST_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_SIP_USER_RE: Final = re.compile(r"[A-Za-z0-9._~+-]{1,64}")
_HEX32_RE: Final = re.compile(r"[0-9a-fA-F]{32}")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_LISTEN_RE: Final = re.compile(r"(udp|tcp):(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):([0-9]{1,5})")
_RTP_RE: Final = re.compile(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*")

_NUMBERING_KEYS: Final = frozenset({"country_code", "trunk_prefix", "international_prefix"})
_TYPE_NAMES: Final = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


class _Missing:
    pass


_MISSING: Final = _Missing()


class _Checker:
    """Collects problems while the loader reads the parsed TOML document."""

    def __init__(self, file: str, locator: _Locator) -> None:
        self.file = file
        self.locator = locator
        self.problems: list[ConfigProblem] = []
        #: Things that work but are probably not meant (``check-config`` prints them, the server logs them).
        self.warnings: list[ConfigProblem] = []

    @staticmethod
    def field_name(table: str, index: int | None, key: str | None) -> str:
        base = table if index is None else f"{table}[{index + 1}]"
        return base if key is None else f"{base}.{key}"

    def line(self, table: str, index: int | None, key: str | None) -> int:
        i = 0 if index is None else index
        return self.locator.table(table, i) if key is None else self.locator.key(table, i, key)

    def report(self, table: str, index: int | None, key: str | None, message: str) -> None:
        self.problems.append(self._problem(table, index, key, message))

    def warn(self, table: str, index: int | None, key: str | None, message: str) -> None:
        self.warnings.append(self._problem(table, index, key, message))

    def _problem(self, table: str, index: int | None, key: str | None, message: str) -> ConfigProblem:
        return ConfigProblem(
            self.file, self.line(table, index, key), self.field_name(table, index, key), message
        )

    def unknown_keys(self, table: str, index: int | None, data: Mapping[str, Any]) -> None:
        known = _TABLES[table]
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                suffix = (
                    f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(sorted(known))}"
                )
                self.report(table, index, key, f"unknown key{suffix}")

    def get(
        self,
        table: str,
        index: int | None,
        data: Mapping[str, Any],
        key: str,
        kind: type[T],
        default: T | _Missing = _MISSING,
    ) -> T | None:
        """``data[key]`` checked to be of ``kind``; None (and a problem) when missing or of another type."""
        if key not in data:
            if isinstance(default, _Missing):
                self.report(table, index, key, "missing (required)")
                return None
            return default
        value = data[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            self.report(table, index, key, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, not {value!r}")
            return None
        if kind is str and not value.strip():
            self.report(table, index, key, "must not be empty")
            return None
        return value  # type: ignore[no-any-return]

    def get_str_list(
        self, table: str, index: int | None, data: Mapping[str, Any], key: str
    ) -> list[str] | None:
        value = self.get(table, index, data, key, list, [])
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            self.report(table, index, key, "must be a list of strings")
            return None
        return list(value)


def _tables(doc: Mapping[str, Any], name: str, checker: _Checker) -> list[tuple[int, Mapping[str, Any]]]:
    """The ``[[name]]`` tables of the document, each with its index."""
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        checker.report(name, None, None, f"must be an array of tables, written [[{name}]]")
        return []
    return list(enumerate(value))


class _Loader:
    def __init__(self, path: Path, doc: Mapping[str, Any], checker: _Checker) -> None:
        self.path = path
        self.base = path.parent
        self.doc = doc
        self.c = checker
        #: extension -> ("employee"/"group", index), first definition wins.
        self.extensions: dict[str, tuple[str, int]] = {}
        #: Every destination read (fallback, default), checked once all extensions are known.
        self.destinations: list[tuple[str, int, str, Destination]] = []
        #: The digest algorithms the server offers (empty when [server] is unusable).
        self.algorithms: tuple[str, ...] = ()
        #: The server's numbering plan (the default when [server] is unusable), which trunks may amend.
        self.numbering = DEFAULT_NUMBERING
        #: The emergency numbers no extension may take.
        self.emergency: tuple[str, ...] = ()

    # ---------------------------------------------------------------------------------- top level

    def load(self) -> Directory | None:
        for key in self.doc:
            if key not in _TABLES:
                hint = difflib.get_close_matches(key, sorted(_TABLES), n=1)
                suffix = f" (did you mean [{hint[0]}] / [[{hint[0]}]]?)" if hint else ""
                self.c.report(key, None, None, f"unknown table{suffix}")
        raw = {name: _tables(self.doc, name, self.c) for name in _TABLES if name != "server"}
        server = self.server()
        self.algorithms = server.auth_algorithms if server is not None else ()
        self.numbering = server.numbering if server is not None else DEFAULT_NUMBERING
        self.emergency = server.emergency if server is not None else ()
        employees = _built(raw["employee"], self.employee)
        groups = _built(raw["group"], self.group)
        trunks = _built(raw["trunk"], self.trunk)
        numbers = _built(raw["number"], self.number)
        crm = _built(raw["crm"], self.crm)
        self.cross_check(raw)
        if self.c.problems or server is None:
            return None
        return Directory(
            server=server,
            employees=tuple(e for _, e in employees),
            groups=tuple(g for _, g in groups),
            trunks=tuple(t for _, t in trunks),
            numbers=tuple(n for _, n in numbers),
            crm=tuple(x for _, x in crm),
            source=self.path,
            warnings=tuple(sorted(self.c.warnings, key=lambda p: p.line)),
        )

    # ------------------------------------------------------------------------------------- server

    def server(self) -> ServerConfig | None:
        data = self.doc.get("server")
        if not isinstance(data, dict):
            self.c.report(
                "server", None, None, "missing [server] table" if data is None else "must be a table"
            )
            return None
        c = self.c
        c.unknown_keys("server", None, data)
        domain = c.get("server", None, data, "domain", str)
        if domain is not None and not _valid_host(domain):
            c.report("server", None, "domain", f"{domain!r} is not a host name or IP address")
            domain = None
        listen: list[ListenSpec] = []
        for text in c.get_str_list("server", None, data, "listen") or []:
            try:
                listen.append(_parse_listen(text))
            except ValueError as exc:
                c.report("server", None, "listen", str(exc))
        if "listen" in data and not listen and isinstance(data["listen"], list) and not data["listen"]:
            c.report("server", None, "listen", "must name at least one address")
        for problem in _listen_clashes(listen):
            c.report("server", None, "listen", problem)
        if "listen" not in data:
            listen = [ListenSpec("udp", "0.0.0.0", 5060)]
        state_dir = c.get("server", None, data, "state_dir", str, "var")
        rtp_text = c.get("server", None, data, "rtp_ports", str, "20000-20999")
        rtp: tuple[int, int] | None = None
        if rtp_text is not None:
            try:
                rtp = _parse_port_range(rtp_text)
            except ValueError as exc:
                c.report("server", None, "rtp_ports", str(exc))
        if rtp is not None:
            for spec in listen:
                if rtp[0] <= spec.port <= rtp[1]:
                    c.report("server", None, "rtp_ports", f"range {rtp_text} contains the SIP port of {spec}")
        algorithms: list[str] = []
        for name in c.get_str_list("server", None, data, "auth_algorithms") or []:
            if name not in ALGORITHMS:
                c.report("server", None, "auth_algorithms", f"{name!r} is not one of {', '.join(ALGORITHMS)}")
            elif name not in algorithms:
                algorithms.append(name)
        if "auth_algorithms" not in data:
            algorithms = ["SHA-256", "MD5"]
        elif not algorithms and isinstance(data["auth_algorithms"], list) and not data["auth_algorithms"]:
            c.report("server", None, "auth_algorithms", "must name at least one algorithm")
        anchor = c.get("server", None, data, "anchor_media", bool, True)
        retention = c.get("server", None, data, "cdr_retention_days", int, 0)
        if retention is not None and retention < 0:
            c.report(
                "server",
                None,
                "cdr_retention_days",
                f"must be 0 (keep for ever) or more days, not {retention}",
            )
            retention = None
        numbering = self.numbering_plan("server", None, data, DEFAULT_NUMBERING)
        emergency = self.emergency_numbers(data, numbering or DEFAULT_NUMBERING)
        emergency_ok = "emergency_numbers" not in data or emergency is not None
        emergency_trunk = c.get("server", None, data, "emergency_trunk", str, None)
        tcp: dict[str, int] = {}
        for key, least in _TCP_KEYS:
            value = c.get("server", None, data, key, int) if key in data else None
            if value is not None and value < least:
                c.report("server", None, key, f"must be at least {least}, not {value}")
            elif value is not None:
                tcp[key] = value
        if (
            domain is None
            or state_dir is None
            or rtp is None
            or not listen
            or not algorithms
            or retention is None
            or numbering is None
            or not emergency_ok
            or any(key in data and key not in tcp for key, _ in _TCP_KEYS)
        ):
            return None
        return ServerConfig(
            domain=domain,
            listen=tuple(listen),
            state_dir=self.base / state_dir,
            rtp_ports=rtp,
            auth_algorithms=tuple(algorithms),
            cdr_retention_days=retention,
            anchor_media=anchor is not False,
            numbering=numbering,
            emergency_numbers=emergency,
            emergency_trunk=emergency_trunk.strip() if emergency_trunk else None,
            limits=attrs.evolve(DEFAULT_LIMITS, **tcp),
        )

    def emergency_numbers(self, data: Mapping[str, Any], numbering: NumberingPlan) -> tuple[str, ...] | None:
        """``emergency_numbers`` as given; None when not given (the country's, warned about when the country
        is not known) or wrong (a problem reported)."""
        c = self.c
        if "emergency_numbers" not in data:
            country = numbering.country_code
            if country not in EMERGENCY_NUMBERS:
                c.warn(
                    "server",
                    None,
                    "country_code" if "country_code" in data else None,
                    f"no emergency numbers are known for country code {country}: only 112 is routed as one; "
                    "list your country's in emergency_numbers",
                )
            return None
        given = c.get_str_list("server", None, data, "emergency_numbers")
        if given is None:
            return None
        numbers: list[str] = []
        for text in given:
            number = text.strip()
            if EMERGENCY_NUMBER_RE.fullmatch(number) is None:
                c.report(
                    "server", None, "emergency_numbers", f"{text!r} is not an emergency number (2–6 digits)"
                )
                return None
            if number not in numbers:
                numbers.append(number)
        if not numbers:
            c.warn(
                "server",
                None,
                "emergency_numbers",
                "is empty: NO number reaches the emergency services from this office's phones",
            )
        return tuple(numbers)

    def numbering_plan(
        self, table: str, index: int | None, data: Mapping[str, Any], base: NumberingPlan
    ) -> NumberingPlan | None:
        """``base`` with the ``country_code``, ``trunk_prefix`` and ``international_prefix`` that ``data``
        gives (None, and problems, when one is wrong)."""
        c = self.c
        values: dict[str, str] = {}
        ok = True
        for key, check in (
            ("country_code", check_country_code),
            ("trunk_prefix", check_trunk_prefix),
            ("international_prefix", check_international_prefix),
        ):
            if key not in data:
                continue
            value = data[key]
            if not isinstance(value, str):
                c.report(table, index, key, f'must be a string of digits (quoted: "{value}"), not {value!r}')
                ok = False
                continue
            try:
                check(value.strip())
            except DialStringError as exc:
                c.report(table, index, key, str(exc))
                ok = False
                continue
            values[key] = value.strip()
        if not ok:
            return None
        try:
            return attrs.evolve(base, **values)
        except DialStringError as exc:
            c.report(
                table,
                index,
                "international_prefix" if "international_prefix" in data else "trunk_prefix",
                str(exc),
            )
            return None

    # ---------------------------------------------------------------------------------- employees

    def claim_extension(self, table: str, index: int, extension: str | None) -> str | None:
        if extension is None:
            return None
        if EXTENSION_RE.fullmatch(extension) is None:
            self.c.report(table, index, "extension", f"{extension!r} is not 1–4 digits")
            return None
        first = self.extensions.get(extension)
        if first is not None:
            where = self.c.line(first[0], first[1], "extension")
            self.c.report(
                table,
                index,
                "extension",
                f"{extension} is already used by {self.c.field_name(*first, None)} (line {where})",
            )
            return None
        clash = self.emergency_clash(extension)
        if clash is not None:
            self.c.report(table, index, "extension", clash)
            return None
        self.extensions[extension] = (table, index)
        return extension

    def emergency_clash(self, extension: str) -> str | None:
        """Why ``extension`` may not be an extension: it is an emergency number, or the start of one (a
        phone or the greeting's digit collection that routes as soon as an extension matches would never
        let the emergency number be dialled)."""
        for number in self.emergency:
            if extension == number:
                return f"{extension} is an emergency number: dialling it must reach the emergency services"
            if number.startswith(extension):
                return (
                    f"{extension} is the start of emergency number {number}: whoever dials {number} could "
                    f"reach extension {extension} instead"
                )
        return None

    def employee(self, i: int, data: Mapping[str, Any]) -> Employee | None:
        c, t = self.c, "employee"
        c.unknown_keys(t, i, data)
        extension = self.claim_extension(t, i, c.get(t, i, data, "extension", str))
        name = c.get(t, i, data, "name", str)
        sip_user = c.get(t, i, data, "sip_user", str, extension or "")
        if sip_user and _SIP_USER_RE.fullmatch(sip_user) is None:
            c.report(t, i, "sip_user", f"{sip_user!r} may only hold letters, digits and . _ ~ + -")
            sip_user = None
        password = c.get(t, i, data, "password", str, None)
        ha1 = c.get(t, i, data, "ha1", str, None)
        ha1_sha256 = c.get(t, i, data, "ha1_sha256", str, None)
        if ha1 is not None and _HEX32_RE.fullmatch(ha1) is None:
            c.report(t, i, "ha1", "must be 32 hex digits (MD5 of 'sip_user:domain:password')")
            ha1 = None
        if ha1_sha256 is not None and _HEX64_RE.fullmatch(ha1_sha256) is None:
            c.report(t, i, "ha1_sha256", "must be 64 hex digits (SHA-256 of 'sip_user:domain:password')")
            ha1_sha256 = None
        present = [k for k in ("password", "ha1", "ha1_sha256") if k in data]
        if not present:
            c.report(t, i, "password", "missing: an employee needs a password (or ha1 / ha1_sha256)")
        elif "password" in data and len(present) > 1:
            c.report(t, i, "password", "give either password or ha1 / ha1_sha256, not both")
        ring = c.get(t, i, data, "ring_seconds", int, None)
        low, high = RING_SECONDS_RANGE
        bad_ring = ring is not None and not low <= ring <= high
        if bad_ring:
            c.report(t, i, "ring_seconds", f"{ring} is outside {low}–{high} seconds")
        fallback = self.destination(t, i, data, "fallback", HANGUP) if "fallback" in data else None
        if extension is None or name is None or not sip_user or not present or bad_ring:
            return None
        if "fallback" in data and fallback is None:
            return None
        if password is None and ha1 is None and ha1_sha256 is None:
            return None
        if password is None and self.algorithms:
            hashes = {"MD5" if a.startswith("MD5") else "SHA-256" for a in self.algorithms}
            have = {h for h, v in (("MD5", ha1), ("SHA-256", ha1_sha256)) if v is not None}
            if not hashes & have:
                c.report(
                    t,
                    i,
                    "ha1" if "ha1" in data else "ha1_sha256",
                    f"no secret for the offered algorithms ({', '.join(self.algorithms)}): this employee "
                    "could never register",
                )
                return None
        return Employee(extension, name, sip_user, password, ha1, ha1_sha256, ring, fallback)

    # ------------------------------------------------------------------------------------- groups

    def group(self, i: int, data: Mapping[str, Any]) -> Group | None:
        c, t = self.c, "group"
        c.unknown_keys(t, i, data)
        extension = self.claim_extension(t, i, c.get(t, i, data, "extension", str))
        name = c.get(t, i, data, "name", str)
        strategy_text = c.get(t, i, data, "strategy", str, "simultaneous")
        strategy: Strategy | None = None
        if strategy_text is not None:
            try:
                strategy = Strategy(strategy_text)
            except ValueError:
                choices = ", ".join(repr(s.value) for s in Strategy)
                c.report(t, i, "strategy", f"{strategy_text!r} is not one of {choices}")
        members = c.get_str_list(t, i, data, "members")
        if members is not None and not members:
            c.report(t, i, "members", "a group needs at least one member")
            members = None
        ring = c.get(t, i, data, "ring_seconds", int, DEFAULT_RING_SECONDS)
        low, high = RING_SECONDS_RANGE
        if ring is not None and not low <= ring <= high:
            c.report(t, i, "ring_seconds", f"{ring} is outside {low}–{high} seconds")
            ring = None
        fallback = self.destination(t, i, data, "fallback", HANGUP)
        if None in (extension, name, strategy, members, ring, fallback):
            return None
        assert extension is not None and name is not None and strategy is not None
        assert members is not None and ring is not None and fallback is not None
        return Group(extension, name, strategy, tuple(members), ring, fallback)

    def destination(
        self, table: str, i: int, data: Mapping[str, Any], key: str, default: Destination | _Missing
    ) -> Destination | None:
        text = self.c.get(table, i, data, key, str, default if isinstance(default, _Missing) else "hangup")
        if text is None:
            return None
        text = text.strip()
        if text == "hangup":
            return HANGUP
        if EXTENSION_RE.fullmatch(text):
            self.destinations.append((table, i, key, ExtensionRef(text)))
            return ExtensionRef(text)
        if text.startswith("+"):
            try:
                external = parse_external_number(text)
            except ValueError as exc:
                self.c.report(table, i, key, str(exc))
                return None
            self.destinations.append((table, i, key, external))
            return external
        self.c.report(
            table, i, key, f"{text!r} is not an extension (1–4 digits), an E.164 number or 'hangup'"
        )
        return None

    # ------------------------------------------------------------------------------------- trunks

    def trunk(self, i: int, data: Mapping[str, Any]) -> Trunk | None:
        c, t = self.c, "trunk"
        c.unknown_keys(t, i, data)
        name = c.get(t, i, data, "name", str)
        host = c.get(t, i, data, "host", str)
        if host is not None and not _valid_host(host):
            c.report(t, i, "host", f"{host!r} is not a host name or IP address")
            host = None
        port = c.get(t, i, data, "port", int, 5060)
        if port is not None and not 1 <= port <= 65535:
            c.report(t, i, "port", f"{port} is not a port number (1–65535)")
            port = None
        transport = c.get(t, i, data, "transport", str, "udp")
        if transport is not None and transport not in ("udp", "tcp"):
            c.report(t, i, "transport", f"{transport!r} is not 'udp' or 'tcp'")
            transport = None
        username = c.get(t, i, data, "username", str, None)
        password = c.get(t, i, data, "password", str, None)
        register = c.get(t, i, data, "register", bool, False)
        if register and (username is None or password is None):
            c.report(t, i, "register", "registering needs a username and a password")
            register = None
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for text in c.get_str_list(t, i, data, "inbound_from") or []:
            try:
                networks.append(ipaddress.ip_network(text.strip()))
            except ValueError as exc:
                hint = ""
                with contextlib.suppress(ValueError):
                    hint = f"; did you mean {ipaddress.ip_network(text.strip(), strict=False)}?"
                c.report(t, i, "inbound_from", f"{text!r} is not an address or network ({exc}){hint}")
        for network in networks:
            warning = _broad_network(network, name)
            if warning is not None:
                c.warn(t, i, "inbound_from", warning)
        numbering: NumberingPlan | None = None
        if _NUMBERING_KEYS & data.keys():
            numbering = self.numbering_plan(t, i, data, self.numbering)
            if numbering is None:
                return None
        if None in (name, host, port, transport, register):
            return None
        assert name is not None and host is not None and port is not None and transport is not None
        return Trunk(
            name, host, port, transport, username, password, bool(register), tuple(networks), numbering
        )

    # ------------------------------------------------------------------------------------ numbers

    def number(self, i: int, data: Mapping[str, Any]) -> Number | None:
        c, t = self.c, "number"
        c.unknown_keys(t, i, data)
        text = c.get(t, i, data, "number", str)
        number: str | None = None
        if text is not None:
            try:
                number = parse_external_number(text, allow_post_dial=False).e164
            except ValueError as exc:
                c.report(t, i, "number", str(exc))
        trunk = c.get(t, i, data, "trunk", str)
        processing = c.get(t, i, data, "extension_processing", bool, False)
        greeting_text = c.get(t, i, data, "greeting", str, None)
        greeting: Path | None = None
        if greeting_text is not None:
            greeting = self.base / greeting_text
            if not greeting.is_file():
                c.report(
                    t, i, "greeting", f"file {str(greeting)!r} does not exist (relative to the config file)"
                )
                greeting = None
        elif processing:
            c.report(
                t,
                i,
                "extension_processing",
                "extension processing needs a greeting (digits are taken while it plays)",
            )
        music_text = c.get(t, i, data, "music", str, None)
        music: Path | None = None
        if music_text is not None:
            music = self.base / music_text
            if not music.is_file():
                c.report(t, i, "music", f"file {str(music)!r} does not exist (relative to the config file)")
                music = None
            elif processing is False:
                c.report(
                    t, i, "music", "music needs extension_processing (only then is the call answered here)"
                )
                music = None
        default = self.destination(t, i, data, "default", _MISSING)
        if number is None or trunk is None or processing is None or default is None:
            return None
        if (greeting_text is not None and greeting is None) or (music_text is not None and music is None):
            return None
        return Number(number, trunk, default, processing, greeting, music)

    def crm(self, i: int, data: Mapping[str, Any]) -> CrmContact | None:
        c, t = self.c, "crm"
        c.unknown_keys(t, i, data)
        name = c.get(t, i, data, "name", str)
        text = c.get(t, i, data, "number", str)
        number: ExternalNumber | None = None
        if text is not None:
            try:
                number = parse_external_number(text)
            except ValueError as exc:
                c.report(t, i, "number", str(exc))
        if name is None or number is None:
            return None
        return CrmContact(name, number)

    # ------------------------------------------------------------------------------- cross checks

    def cross_check(
        self,
        raw: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
    ) -> None:
        c = self.c
        claimed = {(table, i): ext for ext, (table, i) in self.extensions.items()}
        seen_users: dict[str, int] = {}
        for i, data in raw["employee"]:
            user = data.get("sip_user", claimed.get(("employee", i)))
            if not isinstance(user, str):
                continue
            first = seen_users.setdefault(user, i)
            if first != i:
                key = "sip_user" if "sip_user" in data else "extension"
                where = c.line(
                    "employee", first, "sip_user" if "sip_user" in raw["employee"][first][1] else "extension"
                )
                c.report(
                    "employee",
                    i,
                    key,
                    f"SIP user {user!r} is already used by employee[{first + 1}] (line {where})",
                )
        fallbacks: dict[str, str] = {}
        for i, data in raw["employee"]:
            extension = claimed.get(("employee", i))
            fallback = data.get("fallback")
            if extension is not None and isinstance(fallback, str):
                fallbacks[extension] = fallback.strip()
        for i, data in raw["group"]:
            members = data.get("members")
            if isinstance(members, list) and all(isinstance(m, str) for m in members):
                for member in members:
                    kind = self.extensions.get(member, ("", 0))[0]
                    if kind == "group":
                        c.report(
                            "group", i, "members", f"member {member} is a group; members must be employees"
                        )
                    elif kind != "employee":
                        c.report("group", i, "members", f"member {member!r} is not an employee's extension")
                if len(set(members)) != len(members):
                    c.report("group", i, "members", "lists a member twice")
            extension = claimed.get(("group", i))
            fallback = data.get("fallback")
            if extension is not None and isinstance(fallback, str):
                fallbacks[extension] = fallback.strip()
        self.check_cycles(fallbacks)
        for table, i, key, dest in self.destinations:
            if isinstance(dest, ExtensionRef) and dest.extension not in self.extensions:
                c.report(table, i, key, f"extension {dest.extension} is neither an employee nor a group")
        trunk_names = self.unique(raw["trunk"], "trunk", "name", lambda v: v if isinstance(v, str) else None)
        if not raw["trunk"]:
            for table, i, key, dest in self.destinations:
                if isinstance(dest, ExternalNumber) and table != "number":
                    c.report(
                        table,
                        i,
                        key,
                        f"{dest.e164} is an external number, but there is no [[trunk]] to call it",
                    )
        self.unique(raw["number"], "number", "number", _e164_or_none)
        self.unique(raw["crm"], "crm", "number", _crm_key)
        for i, data in raw["number"]:
            trunk = data.get("trunk")
            if isinstance(trunk, str) and trunk not in trunk_names:
                c.report("number", i, "trunk", f"unknown trunk {trunk!r}" + _hint(trunk, trunk_names))
        server = self.doc.get("server")
        emergency_trunk = server.get("emergency_trunk") if isinstance(server, dict) else None
        if isinstance(emergency_trunk, str) and emergency_trunk.strip() not in trunk_names:
            c.report(
                "server",
                None,
                "emergency_trunk",
                f"unknown trunk {emergency_trunk!r}" + _hint(emergency_trunk.strip(), trunk_names),
            )
        if self.emergency and not raw["trunk"]:
            c.warn(
                "server",
                None,
                None,
                f"there is no [[trunk]]: emergency calls ({', '.join(self.emergency)}) CANNOT be connected",
            )

    def unique(
        self,
        tables: list[tuple[int, Mapping[str, Any]]],
        table: str,
        key: str,
        normalise: Callable[[object], str | None],
    ) -> dict[str, int]:
        """Report values of ``key`` that repeat across ``[[table]]`` tables; return value -> first index."""
        first: dict[str, int] = {}
        for i, data in tables:
            value = normalise(data.get(key))
            if value is None:
                continue
            if value in first:
                where = self.c.line(table, first[value], key)
                self.c.report(
                    table, i, key, f"{value} is already defined by {table}[{first[value] + 1}] (line {where})"
                )
            else:
                first[value] = i
        return first

    def check_cycles(self, fallbacks: Mapping[str, str]) -> None:
        """Report each cycle of fallbacks (employees' and groups') once, at its member that comes first in
        the file."""
        reported: set[str] = set()
        for start in fallbacks:
            path: list[str] = []
            current: str | None = start
            while current is not None and current not in path:
                path.append(current)
                current = fallbacks.get(current)
            if current is None:
                continue
            cycle = path[path.index(current) :]
            if reported & set(cycle):
                continue
            reported.update(cycle)
            first = min(
                cycle, key=lambda ext: (self.extensions[ext][0] != "employee", self.extensions[ext][1])
            )
            loop = [*cycle[cycle.index(first) :], *cycle[: cycle.index(first)], first]
            table, index = self.extensions[first]
            self.c.report(table, index, "fallback", f"fallback cycle: {' → '.join(loop)}")


def _built(
    tables: list[tuple[int, Mapping[str, Any]]], build: Callable[[int, Mapping[str, Any]], T | None]
) -> list[tuple[int, T]]:
    out = []
    for i, data in tables:
        value = build(i, data)
        if value is not None:
            out.append((i, value))
    return out


def _crm_key(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(parse_external_number(value))
    except ValueError:
        return None


def _hint(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _e164_or_none(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_external_number(value, allow_post_dial=False).e164
    except ValueError:
        return None


def _valid_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return _HOST_RE.fullmatch(text) is not None


def _parse_listen(text: str) -> ListenSpec:
    match = _LISTEN_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not 'udp:IP:PORT' or 'tcp:IP:PORT'")
    transport, host, port_text = match.groups()
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: {port} is not a port number")
    return ListenSpec(transport, host, port)


def _listen_clashes(listen: Iterable[ListenSpec]) -> list[str]:
    """Listen addresses that cannot all be bound: one given twice, or an address whose port the unspecified
    address of its family (``0.0.0.0``, ``::``) already takes for the same transport. Port 0 picks a free
    port each time and never clashes."""
    problems: list[str] = []
    seen: list[tuple[ListenSpec, ipaddress.IPv4Address | ipaddress.IPv6Address]] = []
    for spec in listen:
        address = ipaddress.ip_address(spec.host)
        for other, other_address in seen:
            if spec.port == 0 or (spec.transport, spec.port) != (other.transport, other.port):
                continue
            if address == other_address:
                problems.append(f"{spec} is given twice" if spec == other else f"{spec} is {other} again")
            elif address.version == other_address.version and (
                address.is_unspecified or other_address.is_unspecified
            ):
                problems.append(
                    f"{spec} and {other} clash: {_host_of(spec, other)} already takes that port on every "
                    f"IPv{address.version} address"
                )
        seen.append((spec, address))
    return problems


def _host_of(*specs: ListenSpec) -> str:
    """The spec among ``specs`` that listens on the unspecified address."""
    return next(str(s) for s in specs if ipaddress.ip_address(s.host).is_unspecified)


#: An ``inbound_from`` network larger than this (IPv4 /16, IPv6 /32) is warned about.
_BROAD_PREFIX: Final = {4: 16, 6: 32}


def _broad_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network, trunk: str | None) -> str | None:
    """Why an ``inbound_from`` network is probably a mistake (None: it is not): every source in it calls the
    trunk's numbers as the trunk, without authentication."""
    who = f"trunk {trunk!r}" if trunk else "the trunk"
    if network.prefixlen == 0:
        return (
            f"{network} is every address: ANYONE on the network becomes {who} and calls its numbers "
            "without authentication; give the provider's addresses"
        )
    if network.prefixlen < _BROAD_PREFIX[network.version]:
        return (
            f"{network} holds {network.num_addresses:,} addresses, each taken as {who} without "
            "authentication; a provider's SIP servers fit in a far smaller network"
        )
    return None


def _parse_port_range(text: str) -> tuple[int, int]:
    match = _RTP_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a port range like '20000-20999'")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low < high <= 65535:
        raise ValueError(f"{text!r} must satisfy 1024 <= first < last <= 65535")
    return low, high


# ----------------------------------------------------------------------------------------- loading


def load_directory(path: str | Path) -> Directory:
    """Read and validate a directory file; raises ConfigError listing every problem found. What is legal but
    probably not meant is in the result's ``warnings``."""
    directory, problems, _ = _read(path)
    if problems or directory is None:
        raise ConfigError(problems or [ConfigProblem(str(path), 1, "file", "incomplete configuration")])
    return directory


def _read(path: str | Path) -> tuple[Directory | None, list[ConfigProblem], list[ConfigProblem]]:
    """The directory (None when there are problems), the problems and the warnings."""
    file = Path(path)
    name = str(path)
    try:
        # utf-8-sig: an editor's byte order mark is not a TOML statement.
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigProblem(name, 1, "file", f"cannot read: {exc}")], []
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else 1
        return None, [ConfigProblem(name, line, "toml", f"not valid TOML: {exc}")], []
    checker = _Checker(name, _Locator(text))
    directory = _Loader(file, doc, checker).load()
    return directory, checker.problems, checker.warnings


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_config_main(path: str, *, out: Callable[[str], None] | None = None) -> int:
    """``durchwahl check-config FILE``: print every problem and warning in file order, then a summary; exit
    status 1 when there are problems, else 0 (warnings alone do not fail)."""
    write = out if out is not None else (lambda line: print(line, file=sys.stdout))
    directory, problems, warnings = _read(path)
    if not problems and directory is None:
        problems = [ConfigProblem(path, 1, "file", "incomplete configuration")]
    found = [(p, "") for p in problems] + [(w, "warning: ") for w in warnings]
    for problem, label in sorted(found, key=lambda item: item[0].line):
        write(f"{problem.file}:{problem.line}: {problem.field}: {label}{problem.message}")
    noted = f" and {_plural(len(warnings), 'warning')}" if warnings else ""
    if problems or directory is None:
        write(f"{_plural(len(problems), 'problem')}{noted} in {path}")
        return 1
    write(f"OK: {directory.summary()}" + (f" ({_plural(len(warnings), 'warning')})" if warnings else ""))
    return 0
