"""The office directory file: a TOML file read into a :class:`~routing.directory.Directory`, validated
completely before anything uses it.

Every problem is collected and reported together, each naming the file, the line and the field
(``office.toml:12: employee[2].extension: "1O1" is not 1–4 digits``); what is legal but probably not meant
comes as a warning. ``tomllib`` gives no positions, so a small scan of the source text maps the n-th
``[[employee]]`` table to its header line and each ``key =`` inside it to its line. The scan understands the
documented layout (one table header or ``key = value`` per line, multi-line arrays, comments); for anything
more exotic (inline tables, dotted keys) it falls back to the nearest enclosing table's line.

Relative paths (``state_dir``, ``greeting``, ``music``) are resolved against the folder holding the TOML file,
never the current directory, so a configuration means the same wherever the server is started.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from durchwahl.sipcore.auth import ALGORITHMS
from durchwahl.sipcore.limits import DEFAULT_LIMITS

from . import directory_transport as transport_keys
from .cluster import CLUSTER_KEYS, read_cluster
from .config_check import MISSING, Checker, Locator, Missing, hint, tables_of
from .dialstring import (
    NumberingPlan,
)
from .directory import (
    DEFAULT_NUMBERING,
    DEFAULT_RING_SECONDS,
    EXTENSION_RE,
    HANGUP,
    RING_SECONDS_RANGE,
    CrmContact,
    Destination,
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
    listen_clashes,
    parse_external_number,
    parse_listen,
    parse_port_range,
    valid_host,
)
from .directory_numbering import read_emergency_numbers, read_numbering_plan
from .errors import ConfigError, ConfigProblem
from .monitoring_config import MONITORING_KEYS, read_monitoring
from .security import broad_network_warning
from .server_keys import ADMISSION_KEYS, read_admission

__all__ = ["load_directory", "read_directory"]

T = TypeVar("T")


# --------------------------------------------------------------------------------------- validation

#: The [server] keys of the call watch (routing.calls.watch) with their defaults, in seconds (0: off).
_WATCH_KEYS: Final = {"max_call_seconds": 14400, "rtp_timeout_seconds": 120}

_TABLES: Final = {
    "server": {
        "domain",
        "listen",
        "state_dir",
        "rtp_ports",
        "auth_algorithms",
        "cdr_retention_days",
        "anchor_media",
        *_WATCH_KEYS,
        "country_code",
        "trunk_prefix",
        "international_prefix",
        "emergency_numbers",
        "emergency_trunk",
        *MONITORING_KEYS,
        *transport_keys.SERVER_KEYS,
        *(key for key, *_ in ADMISSION_KEYS),
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
        *transport_keys.EMPLOYEE_KEYS,
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
        *transport_keys.TRUNK_KEYS,
    },
    "number": {"number", "trunk", "extension_processing", "greeting", "music", "default"},
    "crm": {"name", "number"},
    "cluster": CLUSTER_KEYS,
}
_SIP_USER_RE: Final = re.compile(r"[A-Za-z0-9._~+-]{1,64}")
_HEX32_RE: Final = re.compile(r"[0-9a-fA-F]{32}")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")

_NUMBERING_KEYS: Final = frozenset({"country_code", "trunk_prefix", "international_prefix"})


class _Loader:
    def __init__(self, path: Path, doc: Mapping[str, Any], checker: Checker) -> None:
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
        #: Whether [server] listens for TLS (phones and trunks may use it).
        self.tls_listening = False

    # ---------------------------------------------------------------------------------- top level

    def load(self) -> Directory | None:
        for key in self.doc:
            if key not in _TABLES:
                hint = difflib.get_close_matches(key, sorted(_TABLES), n=1)
                suffix = f" (did you mean [{hint[0]}] / [[{hint[0]}]]?)" if hint else ""
                self.c.report(key, None, None, f"unknown table{suffix}")
        raw = {n: tables_of(self.doc, n, self.c) for n in _TABLES if n not in ("server", "cluster")}
        server = self.server()
        cluster = read_cluster(self.c, self.doc["cluster"]) if "cluster" in self.doc else None
        self.algorithms = server.auth_algorithms if server is not None else ()
        self.numbering = server.numbering if server is not None else DEFAULT_NUMBERING
        self.emergency = server.emergency if server is not None else ()
        self.tls_listening = server is not None and any(spec.transport == "tls" for spec in server.listen)
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
            cluster=cluster,
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
        if domain is not None and not valid_host(domain):
            c.report("server", None, "domain", f"{domain!r} is not a host name or IP address")
            domain = None
        listen: list[ListenSpec] = []
        for text in c.get_str_list("server", None, data, "listen") or []:
            try:
                listen.append(parse_listen(text))
            except ValueError as exc:
                c.report("server", None, "listen", str(exc))
        if "listen" in data and not listen and isinstance(data["listen"], list) and not data["listen"]:
            c.report("server", None, "listen", "must name at least one address")
        for problem in listen_clashes(listen):
            c.report("server", None, "listen", problem)
        if "listen" not in data:
            listen = [ListenSpec("udp", "0.0.0.0", 5060)]
        state_dir = c.get("server", None, data, "state_dir", str, "var")
        rtp_text = c.get("server", None, data, "rtp_ports", str, "20000-20999")
        rtp: tuple[int, int] | None = None
        if rtp_text is not None:
            try:
                rtp = parse_port_range(rtp_text)
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
        numbering = read_numbering_plan(self.c, "server", None, data, DEFAULT_NUMBERING)
        emergency = read_emergency_numbers(self.c, data, numbering or DEFAULT_NUMBERING)
        emergency_ok = "emergency_numbers" not in data or emergency is not None
        emergency_trunk = c.get("server", None, data, "emergency_trunk", str, None)
        watch = {key: c.get("server", None, data, key, int, default) for key, default in _WATCH_KEYS.items()}
        for key, value in watch.items():
            if value is not None and value < 0:
                c.report("server", None, key, f"must be 0 (off) or more seconds, not {value}")
                watch[key] = None
        monitoring = read_monitoring(c, data, self.base)
        tcp = transport_keys.read_tcp_limits(c, data)
        tls = transport_keys.read_server_tls(c, data, self.base, listen, domain)
        admission = read_admission(c, data)
        if (
            domain is None
            or state_dir is None
            or rtp is None
            or not listen
            or not algorithms
            or retention is None
            or numbering is None
            or not emergency_ok
            or tcp is None
            or tls is False
            or None in watch.values()
            or admission is None
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
            max_call_seconds=watch["max_call_seconds"] or 0,
            rtp_timeout_seconds=watch["rtp_timeout_seconds"] or 0,
            monitoring=monitoring,
            tls=tls,
            admission=admission,
        )

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
        srtp = transport_keys.read_srtp(c, t, i, data, tls=self.tls_listening)
        if extension is None or name is None or not sip_user or not present or bad_ring or srtp is None:
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
        return Employee(extension, name, sip_user, password, ha1, ha1_sha256, ring, fallback, srtp)

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
        self, table: str, i: int, data: Mapping[str, Any], key: str, default: Destination | Missing
    ) -> Destination | None:
        text = self.c.get(table, i, data, key, str, default if isinstance(default, Missing) else "hangup")
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
        if host is not None and not valid_host(host):
            c.report(t, i, "host", f"{host!r} is not a host name or IP address")
            host = None
        transport = c.get(t, i, data, "transport", str, "udp")
        if transport is not None and transport not in ("udp", "tcp", "tls"):
            c.report(t, i, "transport", f"{transport!r} is not 'udp', 'tcp' or 'tls'")
            transport = None
        port = c.get(t, i, data, "port", int, 5061 if transport == "tls" else 5060)
        if port is not None and not 1 <= port <= 65535:
            c.report(t, i, "port", f"{port} is not a port number (1–65535)")
            port = None
        tls = transport_keys.read_trunk_tls(c, i, data, self.base, transport, self.tls_listening)
        srtp = transport_keys.read_srtp(c, t, i, data, tls=transport == "tls")
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
            warning = broad_network_warning(network, name)
            if warning is not None:
                c.warn(t, i, "inbound_from", warning)
        numbering: NumberingPlan | None = None
        if _NUMBERING_KEYS & data.keys():
            numbering = read_numbering_plan(self.c, t, i, data, self.numbering)
            if numbering is None:
                return None
        if None in (name, host, port, transport, register, srtp) or tls is False:
            return None
        assert name is not None and host is not None and port is not None and transport is not None
        assert srtp is not None
        nets = tuple(networks)
        return Trunk(
            name, host, port, transport, username, password, bool(register), nets, numbering, tls, srtp
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
        default = self.destination(t, i, data, "default", MISSING)
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
                c.report("number", i, "trunk", f"unknown trunk {trunk!r}" + hint(trunk, trunk_names))
        server = self.doc.get("server")
        emergency_trunk = server.get("emergency_trunk") if isinstance(server, dict) else None
        if isinstance(emergency_trunk, str) and emergency_trunk.strip() not in trunk_names:
            c.report(
                "server",
                None,
                "emergency_trunk",
                f"unknown trunk {emergency_trunk!r}" + hint(emergency_trunk.strip(), trunk_names),
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
    with contextlib.suppress(ValueError):
        return str(parse_external_number(value)) if isinstance(value, str) else None
    return None


def _e164_or_none(value: object) -> str | None:
    with contextlib.suppress(ValueError):
        return parse_external_number(value, allow_post_dial=False).e164 if isinstance(value, str) else None
    return None


# ----------------------------------------------------------------------------------------- loading


def load_directory(path: str | Path) -> Directory:
    """Read and validate a directory file; raises ConfigError listing every problem found. What is legal but
    probably not meant is in the result's ``warnings``."""
    directory, problems, _ = read_directory(path)
    if problems or directory is None:
        raise ConfigError(problems or [ConfigProblem(str(path), 1, "file", "incomplete configuration")])
    return directory


def read_directory(path: str | Path) -> tuple[Directory | None, list[ConfigProblem], list[ConfigProblem]]:
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
    checker = Checker(name, Locator(text), _TABLES)
    directory = _Loader(file, doc, checker).load()
    return directory, checker.problems, checker.warnings
