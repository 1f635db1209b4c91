"""The ``[server]`` keys of monitoring: ``metrics_listen`` (the Prometheus endpoint, off unless given) and
``security_log`` (where the security log goes besides the main log), read into a frozen :class:`Monitoring`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Any, Final

import attrs

from .config_check import Checker

__all__ = [
    "MONITORING_KEYS",
    "NO_MONITORING",
    "MetricsAddress",
    "Monitoring",
    "SecurityLogTarget",
    "parse_metrics_listen",
    "parse_security_log",
    "read_monitoring",
]

MONITORING_KEYS: Final = ("metrics_listen", "security_log")
_ADDRESS_RE: Final = re.compile(r"(\[[^\]]+\]|[^:\[\]]+):([0-9]{1,5})")
#: ``security_log = "syslog"`` writes with this facility (Debian's rsyslog files it under auth.log).
DEFAULT_FACILITY: Final = "auth"


@attrs.frozen
class MetricsAddress:
    """Where the metrics endpoint listens: an IP address and a TCP port (0: any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


@attrs.frozen
class SecurityLogTarget:
    """A file (``path``, appended to; reopened when logrotate moves it) or the local syslog (``facility``)."""

    path: Path | None = None
    facility: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"syslog:{self.facility}"


@attrs.frozen
class Monitoring:
    """``metrics_listen`` None: no metrics endpoint; ``security_log`` None: the main log only."""

    metrics_listen: MetricsAddress | None = None
    security_log: SecurityLogTarget | None = None


#: Neither: no metrics endpoint, the security log in the main log only (the default).
NO_MONITORING: Final = Monitoring()


def parse_metrics_listen(text: str) -> MetricsAddress:
    """``IP:PORT`` (IPv6 in brackets); ValueError saying why not."""
    match = _ADDRESS_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f'{text!r} is not \'IP:PORT\' (e.g. "127.0.0.1:9464", "[::1]:9464")')
    host, port_text = match.group(1).strip("[]"), match.group(2)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: {port} is not a port number")
    return MetricsAddress(host, port)


def parse_security_log(text: str, base: Path) -> SecurityLogTarget:
    """``syslog``, ``syslog:FACILITY`` or a file path (relative to ``base``); ValueError saying why not."""
    value = text.strip()
    if value == "syslog" or value.startswith("syslog:"):
        facility = value.partition(":")[2] or DEFAULT_FACILITY
        if facility not in SysLogHandler.facility_names:
            names = ", ".join(sorted(SysLogHandler.facility_names))
            raise ValueError(f"{facility!r} is not a syslog facility ({names})")
        return SecurityLogTarget(facility=facility)
    path = base / value
    if path.is_dir():
        raise ValueError(f"{value!r} is a folder; name a file in it")
    return SecurityLogTarget(path=path)


def read_monitoring(c: Checker, data: Mapping[str, Any], base: Path) -> Monitoring:
    """The monitoring keys of the ``[server]`` table ``data`` (problems reported to ``c``; a key with a
    problem is left out, and the problem keeps the directory from loading)."""
    metrics: MetricsAddress | None = None
    text = c.get("server", None, data, "metrics_listen", str, None)
    if text is not None:
        try:
            metrics = parse_metrics_listen(text)
        except ValueError as exc:
            c.report("server", None, "metrics_listen", str(exc))
        else:
            if not metrics.is_loopback:
                c.warn(
                    "server",
                    None,
                    "metrics_listen",
                    f"{metrics} is reachable from other hosts: the metrics tell anyone who asks how many "
                    "calls and phones the office has; listen on loopback or firewall the port",
                )
    target: SecurityLogTarget | None = None
    text = c.get("server", None, data, "security_log", str, None)
    if text is not None:
        try:
            target = parse_security_log(text, base)
        except ValueError as exc:
            c.report("server", None, "security_log", str(exc))
    return Monitoring(metrics, target)
