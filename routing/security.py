"""Brute-force protection and trunk source checks, without I/O (issue 3, "Security").

:class:`FailureGuard` counts authentication failures per source in a sliding window. It is a pure machine:
every call takes ``now``; nothing here sleeps, reads a clock or touches a socket. The registrar service
asks it before checking credentials (:meth:`FailureGuard.admit`) and tells it the outcome
(:meth:`FailureGuard.failed`, :meth:`FailureGuard.succeeded`).

Decisions, each with the reason:

* **What counts.** Only credentials that were checked and found wrong (``sipcore.auth.Failed``). A REGISTER
  without credentials is the normal first step of every phone and is never counted; a correct answer to an
  expired nonce (``Stale``) is not a failure either. Unknown users and wrong passwords count the same, so the
  guard itself does not tell a scanner which extensions exist.
* **Source.** An IPv4 address, or the IPv6 ``/64`` (``ipv6_prefix``) it lies in: one IPv6 subscriber owns a
  whole /64 and could otherwise rotate addresses forever. The port is ignored (it changes with every socket).
* **Throttle** (``throttle_after`` failures within ``window``): from then on the source's credentials are
  *checked* at most once per ``throttle_interval``; attempts in between are not checked at all and are
  answered with a fresh challenge, exactly like a wrong password. We skip the check rather than delay the
  answer: a delayed answer holds a task per request and does not slow an attacker who sends in parallel
  (svcrack collects fresh nonces and fires answers as fast as challenges arrive), while skipping caps the
  rate of guesses that are actually evaluated, whatever the attacker's sending rate.
* **Block** (``block_after`` failures within ``window``): for ``block_for`` seconds no credentials from the
  source are checked. The answer stays the ordinary 401 challenge — not 403 and not silence:

  - 403 would tell scanners something changed, and svwar treats any answer that differs from the one for an
    unknown user as "extension exists";
  - silence needs the request to be dropped *before* the endpoint opens a server transaction (an unanswered
    non-INVITE server transaction never ends, so dropping inside the handler would fill the transaction table
    and lock *everybody* out with 503s). :meth:`FailureGuard.admits` is ready for such a pre-transaction hook
    in the endpoint; until it exists, the block is invisible from outside and simply makes guessing useless.

* **No lock-out of others.** Only the source itself is throttled or blocked. Spoofed UDP sources are the
  remaining way to lock out a victim (send wrong answers "from" its address): the registrar service binds
  each nonce to the address it was sent to and only checks (and so only counts) answers that arrive from that
  address, so a spoofer, who never receives the victim's challenges, cannot make a failure count against it.
* **Success** clears the failures recorded *for that user* from that source only: an attacker who knows one
  valid account cannot register it now and then to wipe the count of its guesses at another account.
  A block is not lifted by success (nothing from a blocked source is checked).
* **Bounded memory.** At most ``max_sources`` sources with recent failures (least recently failed evicted
  first) and, separately, at most ``max_sources`` blocked sources (the block that ends first evicted first),
  so a flood of new sources cannot evict existing blocks by crowding the failure table. Each source keeps at
  most ``block_after`` failure timestamps.

:func:`trunk_for_source` is the inbound check for trunks: a request claiming to come from a trunk is accepted
only from an address in that trunk's ``inbound_from`` networks.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import attrs

from .directory import Directory, Trunk

__all__ = [
    "Admission",
    "FailureGuard",
    "GuardPolicy",
    "SourceStatus",
    "source_key",
    "trunk_accepts",
    "trunk_for_source",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_positive: Any = attrs.validators.gt(0)


@attrs.frozen
class GuardPolicy:
    """The numbers of :class:`FailureGuard` (see the module docstring for what each one does)."""

    window: float = attrs.field(default=300.0, validator=_positive)
    throttle_after: int = attrs.field(default=5, validator=_positive)
    throttle_interval: float = attrs.field(default=5.0, validator=_positive)
    block_after: int = attrs.field(default=10, validator=_positive)
    block_for: float = attrs.field(default=900.0, validator=_positive)
    max_sources: int = attrs.field(default=10_000, validator=_positive)
    ipv6_prefix: int = attrs.field(default=64)

    def __attrs_post_init__(self) -> None:
        if self.block_after < self.throttle_after:
            raise ValueError("block_after must not be smaller than throttle_after")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 1–128")


class Admission(enum.Enum):
    """What to do with the credentials of one request from a source."""

    CHECK = "check"  #: verify them
    SKIP = "skip"  #: throttled: answer with a fresh challenge without verifying
    BLOCKED = "blocked"  #: blocked: the same answer as SKIP


@attrs.frozen
class SourceStatus:
    """What the guard knows about one source (for logs and an admin view)."""

    source: str
    failures: int
    throttled: bool
    blocked_until: float | None


@attrs.define
class _Record:
    failures: deque[tuple[float, str]] = attrs.field(factory=deque)
    next_check_at: float = float("-inf")


@functools.lru_cache(maxsize=4096)
def source_key(address: str | IpAddress, ipv6_prefix: int = 64) -> str:
    """The key a source is counted under: the IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits.

    IPv4-mapped IPv6 addresses count as their IPv4 address. Anything that is not an IP address is used as it
    is (never raises: the source comes from the transport).
    """
    try:
        ip = ipaddress.ip_address(address.strip("[]") if isinstance(address, str) else address)
    except ValueError:
        return str(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


class FailureGuard:
    """Per-source authentication failure counting, throttling and blocking (module docstring)."""

    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy or GuardPolicy()
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._blocks: OrderedDict[str, float] = OrderedDict()

    def _key(self, source: str | IpAddress) -> str:
        return source_key(source, self.policy.ipv6_prefix)

    def _blocked_until(self, key: str, now: float) -> float | None:
        until = self._blocks.get(key)
        if until is None:
            return None
        if now >= until:
            del self._blocks[key]
            return None
        return until

    def _live(self, key: str, now: float) -> _Record | None:
        """The record with failures older than the window dropped (and removed when none are left)."""
        record = self._records.get(key)
        if record is None:
            return None
        horizon = now - self.policy.window
        failures = record.failures
        while failures and failures[0][0] <= horizon:
            failures.popleft()
        if not failures:
            del self._records[key]
            return None
        return record

    # -------------------------------------------------------------------------------------- queries

    def admits(self, source: str | IpAddress, now: float) -> bool:
        """False while ``source`` is blocked: for a hook that drops its packets before any transaction."""
        return self._blocked_until(self._key(source), now) is None

    def admit(self, source: str | IpAddress, now: float) -> Admission:
        """Ask before verifying credentials from ``source``; a CHECK while throttled uses up the slot."""
        key = self._key(source)
        if self._blocked_until(key, now) is not None:
            return Admission.BLOCKED
        record = self._live(key, now)
        if record is None or len(record.failures) < self.policy.throttle_after:
            return Admission.CHECK
        if now < record.next_check_at:
            return Admission.SKIP
        record.next_check_at = now + self.policy.throttle_interval
        return Admission.CHECK

    def status(self, source: str | IpAddress, now: float) -> SourceStatus:
        key = self._key(source)
        until = self._blocked_until(key, now)
        record = self._live(key, now)
        failures = len(record.failures) if record is not None else 0
        return SourceStatus(key, failures, failures >= self.policy.throttle_after, until)

    def blocked(self, now: float) -> tuple[tuple[str, float], ...]:
        """Every blocked source with the time its block ends."""
        for key in [k for k, until in self._blocks.items() if now >= until]:
            del self._blocks[key]
        return tuple(self._blocks.items())

    @property
    def tracked(self) -> int:
        """How many sources the guard holds (failure records plus blocks): bounded by 2 × max_sources."""
        return len(self._records) + len(self._blocks)

    # ------------------------------------------------------------------------------------- outcomes

    def failed(self, source: str | IpAddress, now: float, username: str = "") -> SourceStatus:
        """Credentials from ``source`` (for ``username``) were checked and are wrong."""
        policy = self.policy
        key = self._key(source)
        until = self._blocked_until(key, now)
        if until is not None:
            return SourceStatus(key, policy.block_after, True, until)
        record = self._live(key, now)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > policy.max_sources:
                self._records.popitem(last=False)
        self._records.move_to_end(key)
        record.failures.append((now, username))
        count = len(record.failures)
        if count >= policy.block_after:
            del self._records[key]
            until = now + policy.block_for
            self._blocks[key] = until
            self._blocks.move_to_end(key)
            while len(self._blocks) > policy.max_sources:
                self._blocks.popitem(last=False)
            return SourceStatus(key, count, True, until)
        if count >= policy.throttle_after:
            record.next_check_at = now + policy.throttle_interval
            return SourceStatus(key, count, True, None)
        return SourceStatus(key, count, False, None)

    def succeeded(self, source: str | IpAddress, now: float, username: str = "") -> None:
        """Credentials from ``source`` for ``username`` were right: forget that user's failures from there."""
        key = self._key(source)
        record = self._live(key, now)
        if record is None:
            return
        kept = deque(f for f in record.failures if f[1] != username)
        if kept:
            record.failures = kept
            if len(kept) < self.policy.throttle_after:
                record.next_check_at = float("-inf")
        else:
            del self._records[key]

    def unblock(self, source: str | IpAddress) -> bool:
        """Lift a block and forget the failures (an administrator's action); True if there was any."""
        key = self._key(source)
        had = self._blocks.pop(key, None) is not None
        return self._records.pop(key, None) is not None or had


# ---------------------------------------------------------------------------------------------- trunks


@functools.lru_cache(maxsize=4096)
def _address(source: str | IpAddress) -> IpAddress | None:
    if not isinstance(source, str):
        ip: IpAddress = source
    else:
        try:
            ip = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def trunk_accepts(trunk: Trunk, source: str | IpAddress) -> bool:
    """Whether ``source`` (an IP address) lies in one of the trunk's ``inbound_from`` networks.

    A trunk without ``inbound_from`` accepts nothing: calls from a provider must be allowed explicitly.
    """
    ip = _address(source)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in trunk.inbound_from)


def trunk_for_source(directory: Directory | Iterable[Trunk], source: str | IpAddress) -> Trunk | None:
    """The trunk whose ``inbound_from`` contains ``source``, or None (then the request is not a trunk's).

    Where several trunks' networks contain the address, the most specific network wins (the longest
    prefix), then the first trunk in the file. ``source`` is the transport source address (never a header).
    """
    ip = _address(source)
    if ip is None:
        return None
    trunks = directory.trunks if isinstance(directory, Directory) else tuple(directory)
    best: Trunk | None = None
    best_prefix = -1
    for trunk in trunks:
        for net in trunk.inbound_from:
            if ip.version == net.version and ip in net and net.prefixlen > best_prefix:
                best, best_prefix = trunk, net.prefixlen
    return best
