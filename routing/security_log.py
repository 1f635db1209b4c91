"""The security log: one line per security event, in a format that stays put (an administrator greps it,
fail2ban reads it; ``examples/fail2ban/``, docs/OPERATIONS.md *Security log*).

Every line is ``EVENT source=ADDRESS key=value …``: the event name, then the transport source address (an
IPv4 or IPv6 address as the socket saw it, an IPv4-mapped IPv6 address as IPv4), then fields in a fixed order
per event. The source comes first, before anything a client chose (a user name, a number): a filter anchored
on the event name reads the address there and nowhere else, so no user name can make it ban somebody else.
A value that is not plain (letters, digits, ``. _ - + @ :``) is written JSON-quoted, so it stays on its line.
Behind an edge proxy (:class:`Relayed`) the source and port are the phone's as the edge reported them, and
``edge=`` follows ``transport=``.

========================  =======  ==========================================================================
event                     level    when
========================  =======  ==========================================================================
``auth-failed``           WARNING  credentials were checked and are wrong (every method: REGISTER, INVITE …)
``auth-unchecked``        INFO     credentials came from a throttled or blocked source and user: not checked
``throttled``             WARNING  a source and user start being throttled (checked once per interval)
``blocked``               WARNING  a source and user (``user=*``: the whole source) are blocked
``rate-limited``          WARNING  requests without credentials over the source's challenge rate are dropped
                                   (one line when it starts, then at most one a minute with the count)
``unknown-trunk-source``  WARNING  an INVITE for one of the office's numbers, without credentials, from an
                                   address in no trunk's ``inbound_from`` (a provider whose address changed,
                                   or someone trying the number as if they were the provider)
``policy-refused``        WARNING  a call was refused by policy (403): not allowed to call that number, a
                                   trunk dialling an extension, an anonymous caller where none may call
========================  =======  ==========================================================================

The first challenge every phone gets is no event (nothing is logged for it above DEBUG), and neither is a
correct registration. :class:`SecurityLog` also counts its events (for the metrics endpoint).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Protocol

__all__ = ["SECURITY_LOGGER", "Relayed", "SecurityEvent", "SecurityLog", "log_value"]

#: The logger every security line goes to (its own handler: ``[server] security_log``).
SECURITY_LOGGER: Final = "durchwahl.routing.security"


class SecurityEvent(enum.Enum):
    """The events of the security log (the module docstring says when each is written)."""

    AUTH_FAILED = "auth-failed"
    AUTH_UNCHECKED = "auth-unchecked"
    THROTTLED = "throttled"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate-limited"
    UNKNOWN_TRUNK_SOURCE = "unknown-trunk-source"
    POLICY_REFUSED = "policy-refused"


class _Flow(Protocol):
    """What a line needs of a transport flow (``sipcore.transport.Flow``)."""

    @property
    def transport(self) -> str: ...

    @property
    def remote(self) -> tuple[str, int]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Relayed:
    """A request's flow behind an edge proxy as its lines report it: the phone's address and port as the
    edge reported them (``source=``, ``port=``: what a ban rule needs), then ``edge=`` the edge's."""

    transport: str
    remote: tuple[str, int]
    edge: tuple[str, int]


def log_value(text: str) -> str:
    """A value for a ``key=value`` field: as it is when plain, else JSON-quoted (escaped, one line)."""
    if text and all(c.isalnum() or c in "._-+@:" for c in text):
        return text
    return json.dumps(text)


def _address(host: str) -> str:
    """The source as a ban rule needs it: an IP address without brackets, IPv4-mapped IPv6 as IPv4 (or
    the network a guard counts an IPv6 source under, ``2001:db8:1:2::/64``)."""
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        try:
            return str(ipaddress.ip_network(bare))
        except ValueError:
            return log_value(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class SecurityLog:
    """Writes the security log's lines to ``logger`` and counts them by event (and method, where there is
    one). ``repeat_seconds``: how often a ``rate-limited`` source is reported again while it keeps being
    dropped; at most ``max_sources`` such sources are remembered (the least recently reported go first)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        repeat_seconds: float = 60.0,
        max_sources: int = 10_000,
    ) -> None:
        self.logger = logger or logging.getLogger(SECURITY_LOGGER)
        self.repeat_seconds = repeat_seconds
        self.max_sources = max_sources
        #: Lines written, by (event, method); method is "" for events without one.
        self.counts: collections.Counter[tuple[SecurityEvent, str]] = collections.Counter()
        #: Requests dropped for the challenge rate: source -> (when last reported, dropped since then).
        self._dropped: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _write(
        self,
        event: SecurityEvent,
        level: int,
        source: str,
        fields: Iterable[tuple[str, str]],
        method: str = "",
    ) -> None:
        self.counts[(event, method)] += 1
        if self.logger.isEnabledFor(level):
            rest = "".join(f" {key}={value}" for key, value in fields)
            self.logger.log(level, "%s source=%s%s", event.value, _address(source), rest)

    @staticmethod
    def _flow_fields(flow: _Flow, method: str) -> list[tuple[str, str]]:
        fields = [("port", str(flow.remote[1])), ("transport", flow.transport)]
        if isinstance(flow, Relayed):
            host, port = flow.edge
            fields.append(("edge", log_value(f"{host}:{port}")))
        return [*fields, ("method", log_value(method))]

    # ------------------------------------------------------------------------------------- digest

    def auth_failed(self, flow: _Flow, method: str, user: str, reason: str) -> None:
        fields = [*self._flow_fields(flow, method), ("user", log_value(user)), ("reason", log_value(reason))]
        self._write(SecurityEvent.AUTH_FAILED, logging.WARNING, flow.remote[0], fields, method)

    def auth_unchecked(self, flow: _Flow, method: str, user: str, state: str) -> None:
        fields = [*self._flow_fields(flow, method), ("user", log_value(user)), ("state", state)]
        self._write(SecurityEvent.AUTH_UNCHECKED, logging.INFO, flow.remote[0], fields, method)

    def throttled(self, source: str, user: str, failures: int, interval: float) -> None:
        """``source`` is the guard's key (an address, or an IPv6 network)."""
        fields = [("user", log_value(user)), ("failures", str(failures)), ("check_every", f"{interval:g}")]
        self._write(SecurityEvent.THROTTLED, logging.WARNING, source, fields)

    def blocked(self, source: str, user: str | None, seconds: float, reason: str) -> None:
        """``source`` is the guard's key; ``user`` None: the whole source."""
        fields = [
            ("user", "*" if user is None else log_value(user)),
            ("seconds", f"{seconds:.0f}"),
            ("reason", log_value(reason)),
        ]
        self._write(SecurityEvent.BLOCKED, logging.WARNING, source, fields)

    # ------------------------------------------------------------------------------------ requests

    def rate_limited(self, flow: _Flow, method: str, now: float, rate: float) -> None:
        """A request without credentials from ``flow`` was dropped: over its source's challenge rate. One
        line when a source starts being dropped, then one every ``repeat_seconds`` while it goes on."""
        source = _address(flow.remote[0])
        last, dropped = self._dropped.get(source, (float("-inf"), 0))
        dropped += 1
        if now - last < self.repeat_seconds:
            self._dropped[source] = (last, dropped)
            return
        self._dropped[source] = (now, 0)
        self._dropped.move_to_end(source)
        while len(self._dropped) > self.max_sources:
            self._dropped.popitem(last=False)
        fields = [*self._flow_fields(flow, method), ("dropped", str(dropped)), ("rate", f"{rate:g}")]
        self._write(SecurityEvent.RATE_LIMITED, logging.WARNING, source, fields, method)

    def unknown_trunk_source(self, flow: _Flow, method: str, number: str, trunk: str) -> None:
        fields = [
            *self._flow_fields(flow, method),
            ("number", log_value(number)),
            ("trunk", log_value(trunk)),
        ]
        self._write(SecurityEvent.UNKNOWN_TRUNK_SOURCE, logging.WARNING, flow.remote[0], fields, method)

    def policy_refused(
        self, flow: _Flow, method: str, caller: str, target: str, status: int, reason: str
    ) -> None:
        """``caller``: the employee's extension, the trunk's name, or ``anonymous``."""
        fields = [
            *self._flow_fields(flow, method),
            ("caller", log_value(caller)),
            ("target", log_value(target)),
            ("status", str(status)),
            ("reason", log_value(reason)),
        ]
        self._write(SecurityEvent.POLICY_REFUSED, logging.WARNING, flow.remote[0], fields, method)
