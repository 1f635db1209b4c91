"""Brute-force protection and trunk source checks, without I/O.

:class:`FailureGuard` counts authentication failures in sliding windows. It is a pure machine: every call
takes ``now``; nothing here sleeps, reads a clock or touches a socket. :class:`routing.authenticator.
Authenticator` asks it before checking the credentials of any request — REGISTER, INVITE or another —
(:meth:`FailureGuard.admit`) and tells it the outcome (:meth:`FailureGuard.failed`,
:meth:`FailureGuard.succeeded`); so a password cannot be guessed through one method while another is
guarded, and every method counts toward the same limits.

Decisions, each with the reason:

* **What counts.** Only credentials that were checked and found wrong (``sipcore.auth.Failed``). A request
  without credentials is the normal first step of every phone and is never counted; a correct answer to an
  expired nonce (``Stale``) is not a failure either. Unknown users and wrong passwords count the same, so the
  guard itself does not tell a scanner which extensions exist.
* **Source.** An IPv4 address, or the IPv6 ``/64`` (``ipv6_prefix``) it lies in: one IPv6 subscriber owns a
  whole /64 and could otherwise rotate addresses forever. The port is ignored (it changes with every socket).
* **Per (source, user), not per source.** An office sits behind one NAT address: one phone with an old
  password must not lock out its colleagues. Failures are counted, throttled and blocked per pair of source
  and the user name the credentials claim:

  - **throttle** (``throttle_after`` failures of the pair within ``window``): from then on the pair's
    credentials are *checked* at most once per ``throttle_interval``; attempts in between are not checked at
    all and get a fresh challenge, exactly like a wrong password. Skipping the check instead of delaying the
    answer caps the rate of guesses actually evaluated, whatever the attacker's sending rate (svcrack fires
    answers as fast as challenges arrive), and holds no task per request;
  - **block** (``block_after`` failures of the pair within ``window``): for ``block_for`` seconds no
    credentials of that user from that source are checked.

* **The whole source is blocked** only when it behaves like no phone does: failures for ``source_users``
  different users within ``window`` (guessing across accounts, as svwar + svcrack do), or more than
  ``source_attempts`` credentialed attempts refused unchecked within ``window`` (far beyond a phone's retry
  rate: a phone retrying every 6 s makes 50 in five minutes).
* **The answer stays the ordinary 401 challenge** for throttled and blocked requests — not 403 and not
  silence: 403 would tell scanners something changed (svwar reads any different answer as "extension
  exists"), and silence would leave the client's transaction to time out while ours lingers.
* **Spoofed sources** cannot lock out a victim: the authenticator binds each nonce to the address it was sent
  to and only checks (and so only counts) answers that arrive from that address.
* **Success** clears that pair's failures only: an attacker who knows one valid account cannot register it
  now and then to wipe the count of its guesses at another. A block is not lifted by success (nothing of a
  blocked pair is checked); an administrator lifts it (:meth:`FailureGuard.unblock`).
* **Unauthenticated requests** are limited per source (:meth:`FailureGuard.may_challenge`, a token bucket of
  ``challenge_rate`` per second and ``challenge_burst``): each is answered with a stateless challenge, and one
  source cannot make the server reflect an unbounded stream of them at a spoofed address.
* **Several nodes, one guard.** Every change of state is also told to :attr:`FailureGuard.replica` as a
  :class:`GuardEvent` (a failure, a throttled check made, an attempt refused unchecked, a success that
  cleared failures, an administrator's unblock). A cluster publishes them to the other nodes, which
  :meth:`FailureGuard.apply` them: every node then runs the same machine on the same events, so an attacker
  spreading guesses over N nodes is counted, throttled and blocked as by one. Normal traffic (right
  credentials, no failures) makes no event at all.
* **Bounded memory.** At most ``max_sources`` entries in each table (failure records, sources, blocks,
  challenge buckets); the least recently used goes first, blocks in their own table so that a flood of new
  sources cannot evict them by crowding the others.

:func:`trunk_for_source` is the inbound check for trunks: a request claiming to come from a trunk is accepted
only from an address in that trunk's ``inbound_from`` networks.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from .directory import Directory, Trunk

__all__ = [
    "BROAD_PREFIX",
    "Admission",
    "Block",
    "FailureGuard",
    "GuardEvent",
    "GuardPolicy",
    "SourceStatus",
    "broad_network_warning",
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
    source_users: int = attrs.field(default=5, validator=_positive)
    source_attempts: int = attrs.field(default=300, validator=_positive)
    challenge_rate: float = attrs.field(default=20.0, validator=_positive)
    challenge_burst: int = attrs.field(default=100, validator=_positive)
    max_sources: int = attrs.field(default=10_000, validator=_positive)
    ipv6_prefix: int = attrs.field(default=64)

    def __attrs_post_init__(self) -> None:
        if self.block_after < self.throttle_after:
            raise ValueError("block_after must not be smaller than throttle_after")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 1–128")


class Admission(enum.Enum):
    """What to do with the credentials of one request."""

    CHECK = "check"  #: verify them
    SKIP = "throttled"  #: throttled: answer with a fresh challenge without verifying
    BLOCKED = "blocked"  #: blocked: the same answer as SKIP


@attrs.frozen
class GuardEvent:
    """A change of a guard's state, to replay on another node's guard (:meth:`FailureGuard.apply`).

    ``kind``: ``failed``, ``checked`` (a throttled pair's check slot used), ``unchecked`` (an attempt refused
    unchecked), ``succeeded``, ``unblock``; ``source`` is the source key; ``user`` None only for an unblock of
    a whole source."""

    kind: str
    source: str
    user: str | None
    now: float

    def to_list(self) -> list[Any]:
        return [self.kind, self.source, self.user, self.now]

    @classmethod
    def from_list(cls, data: Any) -> GuardEvent:
        """Raises ValueError for anything :meth:`to_list` did not write."""
        if not isinstance(data, list) or len(data) != 4 or data[0] not in GUARD_EVENT_KINDS:
            raise ValueError(f"not a guard event: {data!r:.100}")
        kind, source, user, now = data
        if not isinstance(source, str) or not (user is None or isinstance(user, str)):
            raise ValueError(f"not a guard event: {data!r:.100}")
        return cls(kind, source, user, float(now))


GUARD_EVENT_KINDS: Final = frozenset({"failed", "checked", "unchecked", "succeeded", "unblock"})


@attrs.frozen
class Block:
    """One block in force: of a user from a source, or (``user`` None) of everything from the source."""

    source: str
    user: str | None
    until: float
    reason: str


@attrs.frozen
class SourceStatus:
    """What the guard knows about one source, or one (source, user) pair (for logs and an admin view).

    ``failures`` counts the pair's failures (or, for a whole source, all of its failures) in the window;
    ``blocked_until`` is set while the pair or the whole source is blocked; ``new_block`` is the block that
    the failure just recorded started.
    """

    source: str
    failures: int
    throttled: bool
    blocked_until: float | None
    user: str | None = None
    new_block: Block | None = None


@attrs.define
class _Pair:
    failures: deque[float] = attrs.field(factory=deque)
    next_check_at: float = float("-inf")


@attrs.define
class _Source:
    failures: deque[tuple[float, str]] = attrs.field(factory=deque)
    unchecked: deque[float] = attrs.field(factory=deque)


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


def _trim(times: deque[Any], horizon: float, *, pairs: bool = False) -> None:
    while times and (times[0][0] if pairs else times[0]) <= horizon:
        times.popleft()


def _bounded_put(table: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


class FailureGuard:
    """Authentication failure counting, throttling and blocking per (source, user) (module docstring)."""

    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy or GuardPolicy()
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        #: (source, user or None for the whole source) -> (until, reason)
        self._blocks: OrderedDict[tuple[str, str | None], tuple[float, str]] = OrderedDict()
        #: source -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        #: Told every change of state (a cluster publishes them to its other nodes; see GuardEvent).
        self.replica: Callable[[GuardEvent], None] | None = None

    def _tell(self, kind: str, key: str, user: str | None, now: float) -> None:
        if self.replica is not None:
            self.replica(GuardEvent(kind, key, user, now))

    def apply(self, event: GuardEvent) -> None:
        """Replay a change another node's guard made (not told to :attr:`replica` again)."""
        replica, self.replica = self.replica, None
        try:
            if event.kind == "failed":
                self.failed(event.source, event.now, event.user or "")
            elif event.kind == "succeeded":
                self.succeeded(event.source, event.now, event.user or "")
            elif event.kind == "unblock":
                self.unblock(event.source, event.user)
            elif event.kind == "checked":
                pair = self._pair(event.source, event.user or "", event.now)
                if pair is not None:
                    until = event.now + self.policy.throttle_interval
                    pair.next_check_at = max(pair.next_check_at, until)
            elif event.kind == "unchecked":
                self._count_unchecked(event.source, event.now)
        finally:
            self.replica = replica

    def _key(self, source: str | IpAddress) -> str:
        return source_key(source, self.policy.ipv6_prefix)

    def _block_of(self, key: str, user: str | None, now: float) -> tuple[float, str] | None:
        """The block in force for ``user`` from ``key`` (its own, or the whole source's); expired ones go."""
        for entry in ((key, None), (key, user)) if user is not None else ((key, None),):
            block = self._blocks.get(entry)
            if block is None:
                continue
            if now >= block[0]:
                del self._blocks[entry]
                continue
            return block
        return None

    def _pair(self, key: str, user: str, now: float) -> _Pair | None:
        """The pair's record with failures older than the window dropped (removed when none are left)."""
        record = self._pairs.get((key, user))
        if record is None:
            return None
        _trim(record.failures, now - self.policy.window)
        if not record.failures:
            del self._pairs[(key, user)]
            return None
        return record

    def _source(self, key: str, now: float, *, create: bool = False) -> _Source | None:
        record = self._sources.get(key)
        if record is None:
            if not create:
                return None
            record = _Source()
            _bounded_put(self._sources, key, record, self.policy.max_sources)
            return record
        horizon = now - self.policy.window
        _trim(record.failures, horizon, pairs=True)
        _trim(record.unchecked, horizon)
        if not create and not record.failures and not record.unchecked:
            del self._sources[key]
            return None
        self._sources.move_to_end(key)
        return record

    def _block(self, key: str, user: str | None, now: float, reason: str) -> Block:
        until = now + self.policy.block_for
        _bounded_put(self._blocks, (key, user), (until, reason), self.policy.max_sources)
        if user is None:  # the whole source: its per-user state no longer matters
            self._sources.pop(key, None)
        else:
            self._pairs.pop((key, user), None)
        return Block(key, user, until, reason)

    # -------------------------------------------------------------------------------------- queries

    def admits(self, source: str | IpAddress, now: float) -> bool:
        """False while everything from ``source`` is blocked."""
        return self._block_of(self._key(source), None, now) is None

    def admit(self, source: str | IpAddress, now: float, user: str = "") -> Admission:
        """Ask before verifying credentials for ``user`` from ``source``; a CHECK while throttled uses up
        the slot. Every attempt refused unchecked counts toward the source's ``source_attempts``."""
        key = self._key(source)
        if self._block_of(key, user, now) is not None:
            admission = Admission.BLOCKED
        else:
            record = self._pair(key, user, now)
            if record is None or len(record.failures) < self.policy.throttle_after:
                return Admission.CHECK
            if now >= record.next_check_at:
                record.next_check_at = now + self.policy.throttle_interval
                self._tell("checked", key, user, now)
                return Admission.CHECK
            admission = Admission.SKIP
        if self._count_unchecked(key, now):
            self._tell("unchecked", key, user, now)
        return admission

    def _count_unchecked(self, key: str, now: float) -> bool:
        """An attempt from ``key`` refused unchecked counts toward its ``source_attempts`` (False: the whole
        source is blocked already)."""
        if self._block_of(key, None, now) is not None:
            return False
        counted = self._source(key, now, create=True)
        assert counted is not None
        counted.unchecked.append(now)
        if len(counted.unchecked) > self.policy.source_attempts:
            self._block(key, None, now, "too many attempts")
        return True

    def status(self, source: str | IpAddress, now: float, user: str | None = None) -> SourceStatus:
        """The pair's state (``user`` given) or the whole source's (failures of every user summed)."""
        key = self._key(source)
        block = self._block_of(key, user, now)
        until = block[0] if block is not None else None
        if user is not None:
            pair = self._pair(key, user, now)
            failures = len(pair.failures) if pair is not None else 0
            throttled = failures >= self.policy.throttle_after
        else:
            record = self._source(key, now)
            failures = len(record.failures) if record is not None else 0
            throttled = any(
                len(p.failures) >= self.policy.throttle_after for (k, _), p in self._pairs.items() if k == key
            )
        return SourceStatus(key, failures, throttled or until is not None, until, user)

    def blocks(self, now: float) -> tuple[Block, ...]:
        """Every block in force, the one that ends first first."""
        for entry in [e for e, (until, _) in self._blocks.items() if now >= until]:
            del self._blocks[entry]
        found = (Block(k, u, until, reason) for (k, u), (until, reason) in self._blocks.items())
        return tuple(sorted(found, key=lambda b: b.until))

    def may_challenge(self, source: str | IpAddress, now: float) -> bool:
        """Whether an unauthenticated request from ``source`` may be answered with a challenge now (a token
        bucket per source); false: drop it unanswered."""
        key = self._key(source)
        policy = self.policy
        tokens, then = self._buckets.get(key, (float(policy.challenge_burst), now))
        tokens = min(float(policy.challenge_burst), tokens + (now - then) * policy.challenge_rate)
        allowed = tokens >= 1.0
        _bounded_put(self._buckets, key, (tokens - 1.0 if allowed else tokens, now), policy.max_sources)
        return allowed

    @property
    def tracked(self) -> int:
        """How many entries the guard holds: bounded by 3 × max_sources (plus the challenge buckets)."""
        return len(self._pairs) + len(self._sources) + len(self._blocks)

    # ------------------------------------------------------------------------------------- outcomes

    def failed(self, source: str | IpAddress, now: float, user: str = "") -> SourceStatus:
        """Credentials for ``user`` from ``source`` were checked and are wrong."""
        policy = self.policy
        key = self._key(source)
        blocked = self._block_of(key, user, now)
        if blocked is not None:
            return SourceStatus(key, policy.block_after, True, blocked[0], user)
        self._tell("failed", key, user, now)
        pair = self._pair(key, user, now)
        if pair is None:
            pair = _Pair()
            _bounded_put(self._pairs, (key, user), pair, policy.max_sources)
        else:
            self._pairs.move_to_end((key, user))
        pair.failures.append(now)
        count = len(pair.failures)
        whole = self._source(key, now, create=True)
        assert whole is not None
        whole.failures.append((now, user))
        if len(whole.failures) > policy.source_users * policy.block_after:
            whole.failures.popleft()
        if len({u for _, u in whole.failures}) >= policy.source_users:
            block = self._block(key, None, now, f"failures for {policy.source_users} or more users")
            return SourceStatus(key, count, True, block.until, user, block)
        if count >= policy.block_after:
            block = self._block(key, user, now, f"{count} failures")
            return SourceStatus(key, count, True, block.until, user, block)
        if count >= policy.throttle_after:
            pair.next_check_at = now + policy.throttle_interval
            return SourceStatus(key, count, True, None, user)
        return SourceStatus(key, count, False, None, user)

    def succeeded(self, source: str | IpAddress, now: float, user: str = "") -> None:
        """Credentials for ``user`` from ``source`` were right: forget that pair's failures."""
        key = self._key(source)
        cleared = self._pairs.pop((key, user), None) is not None
        record = self._source(key, now)
        if record is not None and any(u == user for _, u in record.failures):
            record.failures = deque(f for f in record.failures if f[1] != user)
            cleared = True
        if cleared:
            self._tell("succeeded", key, user, now)

    def unblock(self, source: str | IpAddress, user: str | None = None) -> bool:
        """Lift blocks and forget failures (an administrator's action): of ``user`` from ``source``, or
        (``user`` None) everything of the source. True if there was anything to lift or forget."""
        key = self._key(source)
        self._tell("unblock", key, user, 0.0)
        if user is not None:
            found = self._blocks.pop((key, user), None) is not None
            found = self._pairs.pop((key, user), None) is not None or found
            record = self._sources.get(key)
            if record is not None:
                record.failures = deque(f for f in record.failures if f[1] != user)
            return found
        doomed = [entry for entry in self._blocks if entry[0] == key]
        doomed_pairs = [entry for entry in self._pairs if entry[0] == key]
        for entry in doomed:
            del self._blocks[entry]
        for pair in doomed_pairs:
            del self._pairs[pair]
        had_source = self._sources.pop(key, None) is not None
        return bool(doomed or doomed_pairs or had_source)


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


#: An ``inbound_from`` network larger than this (IPv4 /16, IPv6 /32) is warned about.
BROAD_PREFIX: Final = {4: 16, 6: 32}


def broad_network_warning(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, trunk: str | None
) -> str | None:
    """Why an ``inbound_from`` network is probably a mistake (None: it is not): every source in it calls the
    trunk's numbers as the trunk, without authentication."""
    who = f"trunk {trunk!r}" if trunk else "the trunk"
    if network.prefixlen == 0:
        return (
            f"{network} is every address: ANYONE on the network becomes {who} and calls its numbers "
            "without authentication; give the provider's addresses"
        )
    if network.prefixlen < BROAD_PREFIX[network.version]:
        return (
            f"{network} holds {network.num_addresses:,} addresses, each taken as {who} without "
            "authentication; a provider's SIP servers fit in a far smaller network"
        )
    return None
