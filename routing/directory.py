"""The office directory: server settings, employees, ring groups, trunks, numbers and CRM contacts, as a
tree of frozen values. It is read from one TOML file (documented in ``docs/CONFIGURATION.md``) by
:func:`routing.directory_file.load_directory`, which validates it completely first.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from durchwahl.media.sdes import SrtpPolicy
from durchwahl.sipcore.auth import DigestSecret
from durchwahl.sipcore.limits import DEFAULT_LIMITS, Limits

from .admission import DEFAULT_ADMISSION, AdmissionConfig
from .cluster import ClusterConfig
from .dialstring import (
    NumberingPlan,
)
from .emergency import default_emergency_numbers
from .errors import ConfigProblem
from .monitoring_config import NO_MONITORING, Monitoring

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
    "SrtpPolicy",
    "Strategy",
    "TlsFiles",
    "Trunk",
    "TrunkTls",
    "listen_clashes",
    "parse_external_number",
    "parse_listen",
    "parse_port_range",
    "valid_host",
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
    """One address the server listens on: transport (``udp``/``tcp``/``tls``), IP address and port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@attrs.frozen
class TlsFiles:
    """The server's certificate (PEM: its chain, leaf first) and its private key (PEM, unencrypted)."""

    certificate: Path
    private_key: Path


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
    #: A bridged call ends this long after its answer (0: never) …
    max_call_seconds: int = 14400
    #: … or when an anchored leg that should send has sent no RTP for this long (0: never).
    rtp_timeout_seconds: int = 120
    #: The metrics endpoint and the security log's own target (both read at start).
    monitoring: Monitoring = NO_MONITORING
    #: The certificate and key of the ``tls:`` listen addresses (and shown to a trunk that asks for ours).
    tls: TlsFiles | None = None
    #: Admission control: the caps ``max_calls``, ``max_cps`` … and the overload detector's queueing delay
    #: (``routing.admission``; a reload applies them).
    admission: AdmissionConfig = DEFAULT_ADMISSION

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
    #: SRTP on calls with this employee's phones (only those signalling over TLS; ``required``: the
    #: phones must register and call over TLS).
    srtp: SrtpPolicy = SrtpPolicy.OFFERED

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
class TrunkTls:
    """A trunk over TLS: the CA file the provider's certificate must chain to (None: the system's CAs),
    and whether requests from it count as the trunk's only over a TLS connection whose client certificate
    is valid for its host (``verify_client``)."""

    ca_file: Path | None = None
    verify_client: bool = False


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
    #: How the provider is trusted over TLS (set when ``transport`` is ``tls``).
    tls: TrunkTls | None = None
    #: SRTP on this trunk's calls (only with ``transport = "tls"``).
    srtp: SrtpPolicy = SrtpPolicy.OFFERED


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
    #: ``[cluster]``: the shared store and the edge proxies (None: one node on its own, SQLite).
    cluster: ClusterConfig | None = None
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

    def crm_contact(self, name: str) -> CrmContact | None:
        """The CRM contact called ``name`` (case and surrounding spaces do not matter), or None."""
        wanted = name.strip().casefold()
        return next((c for c in self.crm if c.name.strip().casefold() == wanted), None)

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


# ------------------------------------------------------------------------------------ value syntax

_HOST_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_LISTEN_RE: Final = re.compile(r"(udp|tcp|tls):(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):([0-9]{1,5})")
_RTP_RE: Final = re.compile(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*")


def valid_host(text: str) -> bool:
    """An IP address (IPv6 in brackets or not) or a host name."""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return _HOST_RE.fullmatch(text) is not None


def parse_listen(text: str) -> ListenSpec:
    """``udp:IP:PORT``, ``tcp:IP:PORT`` or ``tls:IP:PORT`` (IPv6 in brackets); ValueError saying why not."""
    match = _LISTEN_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not 'udp:IP:PORT', 'tcp:IP:PORT' or 'tls:IP:PORT'")
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


def listen_clashes(listen: Iterable[ListenSpec]) -> list[str]:
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


def parse_port_range(text: str) -> tuple[int, int]:
    """``"20000-20999"`` within 1024–65535; ValueError saying why not."""
    match = _RTP_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a port range like '20000-20999'")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low < high <= 65535:
        raise ValueError(f"{text!r} must satisfy 1024 <= first < last <= 65535")
    return low, high
