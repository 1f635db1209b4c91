"""Admission control: whether a new out-of-dialog request is taken on, or refused with 503 (pure).

A server past its capacity must refuse new work early and cheaply instead of queueing it until every call
is late (RFC 3261 §21.5.4: 503 with Retry-After). The decision is taken in the endpoint's screen, before a
transaction exists and before digest hashing, the resolver, an outbound leg or media ports, from

* **measured load**, fed by the server's shell (:class:`Load`): how long the request waited to be read
  (the UDP socket's queue, or the event loop's lag), the open server transactions, the calls in progress;
* **configured caps** (:class:`AdmissionConfig`, the ``[server]`` keys ``max_calls``, ``max_cps``,
  ``max_registers_per_second``, ``max_requests_per_second``).

Each kind of request has its own budget (:class:`Kind`). Only a **standing** queue counts: the delay must
stay above its target for ``overload_interval`` seconds (CoDel's rule), so a garbage-collector pause or a
burst that the server drains at once refuses nothing. Then new calls are limited to an adaptive rate (see
:class:`_CallRate`: it converges near what the server sustains, where refusing all and admitting all in turn
would swing), and a call that itself waited ``LATE_FACTOR`` times the target is refused at once;
registrations are refused while the queue stands above twice the target, everything else above four times.
In-dialog requests, responses and retransmissions never come here (the endpoint screens new out-of-dialog
requests only). Emergency calls are admitted over every line; the shell says which they are
(:meth:`AdmissionControl.admit_anyway`).
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Final

import attrs

__all__ = [
    "DEFAULT_ADMISSION",
    "AdmissionConfig",
    "AdmissionControl",
    "AdmissionStats",
    "Kind",
    "Load",
    "Reason",
    "Refusal",
    "kind_of",
]


class Kind(enum.Enum):
    """The budgets: new calls, registrations, and every other out-of-dialog request (OPTIONS, MESSAGE …)."""

    CALL = "INVITE"
    REGISTER = "REGISTER"
    OTHER = "other"


def kind_of(method: str) -> Kind:
    """The budget a new request of ``method`` draws on."""
    if method == "INVITE":
        return Kind.CALL
    if method == "REGISTER":
        return Kind.REGISTER
    return Kind.OTHER


class Reason(enum.Enum):
    """Why a request was refused (a label for logs and counters)."""

    MAX_CALLS = "max_calls"
    RATE = "rate"
    DELAY = "queue delay"
    TRANSACTIONS = "transactions"


#: How much longer a queue may stand before each kind is refused, as a multiple of ``overload_delay``.
DELAY_FACTOR: Final = {Kind.CALL: 1.0, Kind.REGISTER: 2.0, Kind.OTHER: 4.0}
#: The share of the endpoint's server-transaction limit new requests may fill; the rest stays for
#: in-dialog requests of the calls already admitted.
TRANSACTION_SHARE: Final = 0.9


@attrs.frozen
class AdmissionConfig:
    """The caps of the ``[server]`` table (None: no cap) and the overload detector's settings."""

    #: Calls in progress at once (set up or bridged); beyond it new calls are refused.
    max_calls: int | None = None
    #: New calls accepted per second (a token bucket holding one second's worth).
    max_cps: float | None = None
    #: REGISTER requests accepted per second, from all phones together.
    max_registers_per_second: float | None = None
    #: Other out-of-dialog requests (OPTIONS, SUBSCRIBE, MESSAGE, NOTIFY, REFER …) accepted per second.
    max_requests_per_second: float | None = None
    #: Queueing delay (seconds) above which new calls are refused once it stands ``overload_interval``;
    #: registrations at twice it, other requests at four times. None: no refusal for measured load.
    overload_delay: float | None = 0.1
    #: How long the delay must stay above its target before requests are refused (seconds): longer than the
    #: queue a garbage-collector pause leaves behind at a high but bearable load.
    overload_interval: float = 0.5
    #: The ``Retry-After`` of a 503 (seconds).
    retry_after: int = 5

    def rate(self, kind: Kind) -> float | None:
        """The configured rate of ``kind`` (None: not capped)."""
        if kind is Kind.CALL:
            return self.max_cps
        if kind is Kind.REGISTER:
            return self.max_registers_per_second
        return self.max_requests_per_second


DEFAULT_ADMISSION: Final = AdmissionConfig()


@attrs.frozen
class Load:
    """What the shell measured when a request was read."""

    #: How long the request waited before it was read (seconds): its time in the socket's receive queue,
    #: or the event loop's lag where that cannot be told.
    delay: float = 0.0
    #: Server transactions open now, and the endpoint's limit of them.
    transactions: int = 0
    max_transactions: int = 65_536
    #: Calls in progress (set up or bridged).
    calls: int = 0


@attrs.frozen
class Refusal:
    """Answer with 503 and ``Retry-After: retry_after``; ``reason`` says why."""

    reason: Reason
    retry_after: int

    @property
    def phrase(self) -> str:
        """The reason phrase of the 503."""
        if self.reason is Reason.DELAY:
            return "Service Unavailable (overloaded)"
        return f"Service Unavailable ({self.reason.value})"


@attrs.define
class AdmissionStats:
    """Counters for operators and metrics (plain attributes, read at any time)."""

    #: Requests admitted, by kind.
    admitted: Counter[Kind] = attrs.Factory(Counter)
    #: Requests refused, by kind and reason.
    refused: Counter[tuple[Kind, Reason]] = attrs.Factory(Counter)
    #: Requests admitted although a line was crossed (emergency calls).
    admitted_anyway: int = 0
    #: The largest queueing delay seen (seconds).
    max_delay: float = 0.0

    def refused_total(self, kind: Kind | None = None) -> int:
        """Requests refused in all, or of ``kind``."""
        return sum(n for (k, _), n in self.refused.items() if kind is None or k is kind)


class _Bucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``burst``; starts full."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None and now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


#: The adaptive limit of new calls: measured in ticks of this many seconds; cut to this share of the rate
#: admitted when a tick's every delay stood above the target; raised by this share of itself (at least one
#: call a second) each tick without; dropped once it has not bound for ``RELEASE_SECONDS``.
TICK: Final = 0.1
DECREASE: Final = 0.95
INCREASE: Final = 0.02
RELEASE_SECONDS: Final = 5.0
#: A new call that itself waited this many times the target is refused at once (its caller resends the
#: INVITE at 500 ms anyway); a garbage-collector pause stays well below it.
LATE_FACTOR: Final = 3.0


class _CallRate:
    """The adaptive limit of new calls a second (AIMD on the measured queueing delay).

    Refusing every new call while a queue stands and admitting all again once it drained overshoots: a call
    admitted costs its work over the next seconds (responses, ACK, BYE, the call record), so admission
    swings between all and nothing and the queue with it. Instead, once a queue has stood for the interval,
    new calls are admitted at a rate: first a share of what was admitted, cut again while the queue stands
    (at most once per the delay seen, which is how long a cut takes to show), raised a little each calm tick,
    and dropped when calm and no longer binding. The rate converges near what the server can do.
    """

    def __init__(self) -> None:
        self.limit: float | None = None
        self.admitted_rate = 0.0
        self._tick_start: float | None = None
        self._count = 0
        self._tick_min = float("inf")
        self._cut_at = float("-inf")
        self._calm_since: float | None = None
        self._bucket: _Bucket | None = None

    def observe(self, now: float, delay: float, standing: bool, target: float) -> None:
        start = self._tick_start
        if start is None or now < start:
            self._tick_start = now
            start = now
        self._tick_min = min(self._tick_min, delay)
        span = now - start
        if span < TICK:
            return
        measured = self._count / span
        before = self.admitted_rate
        self.admitted_rate = measured if before == 0.0 else 0.7 * before + 0.3 * measured
        congested = self._tick_min > target
        limit = self.limit
        if limit is None:
            if standing:
                self._set(max(1.0, self.admitted_rate * DECREASE))
                self._cut_at = now
        elif congested:
            self._calm_since = None
            if now - self._cut_at >= max(2 * TICK, min(self._tick_min, 1.0)):
                self._set(max(1.0, min(limit, self.admitted_rate) * DECREASE))
                self._cut_at = now
        else:
            self._set(limit + max(1.0, limit * INCREASE))
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= RELEASE_SECONDS and limit > 1.5 * self.admitted_rate + 1:
                self.limit, self._bucket = None, None
        self._tick_start, self._count, self._tick_min = now, 0, float("inf")

    def _set(self, limit: float) -> None:
        self.limit = limit
        if self._bucket is None:
            self._bucket = _Bucket(limit)
        self._bucket.rate = limit
        self._bucket.burst = max(1.0, limit * TICK)
        self._bucket.tokens = min(self._bucket.tokens, self._bucket.burst)

    def take(self, now: float) -> bool:
        """Whether a new call may be admitted under the limit (counted when it is)."""
        if self._bucket is not None and not self._bucket.take(now):
            return False
        self._count += 1
        return True


class AdmissionControl:
    """The decision for each new out-of-dialog request (see the module docstring); ``now`` is passed in."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.stats = AdmissionStats()
        self._above_since: dict[Kind, float | None] = dict.fromkeys(Kind)
        self._buckets: dict[Kind, _Bucket] = {}
        self._calls = _CallRate()
        self.config = config or AdmissionConfig()
        self.configure(self.config)

    def configure(self, config: AdmissionConfig) -> None:
        """Use new settings (a reload); a rate that did not change keeps its bucket."""
        buckets: dict[Kind, _Bucket] = {}
        for kind in Kind:
            rate = config.rate(kind)
            if rate is None:
                continue
            old = self._buckets.get(kind)
            buckets[kind] = old if old is not None and old.rate == rate else _Bucket(rate)
        self._buckets = buckets
        self.config = config

    def overloaded(self, kind: Kind, now: float) -> bool:
        """Whether requests of ``kind`` are limited for measured load: new calls to an adaptive rate, the
        others refused while a queue stands (as of the last decision)."""
        if kind is Kind.CALL:
            return self._calls.limit is not None
        since = self._above_since[kind]
        return since is not None and now - since >= self.config.overload_interval

    @property
    def call_limit(self) -> float | None:
        """The adaptive limit of new calls a second in force (None: none)."""
        return self._calls.limit

    def _queue_stands(self, kind: Kind, delay: float, now: float) -> bool:
        target = self.config.overload_delay
        if target is None or delay <= target * DELAY_FACTOR[kind]:
            self._above_since[kind] = None
            return False
        since = self._above_since[kind]
        if since is None:
            self._above_since[kind] = now
            return False
        return now - since >= self.config.overload_interval

    def _late(self, delay: float) -> bool:
        target = self.config.overload_delay
        return target is not None and delay > LATE_FACTOR * target

    def decide(self, kind: Kind, now: float, load: Load) -> Refusal | None:
        """None to admit a new request of ``kind`` (counted, a token taken), else the :class:`Refusal`.

        The caps come first (cheapest, and what an operator set), then the measured load."""
        stats = self.stats
        if load.delay > stats.max_delay:
            stats.max_delay = load.delay
        reason: Reason | None = None
        config = self.config
        # Every kind's detector sees every delay: a standing queue is noticed by all budgets at once.
        standing = {k: self._queue_stands(k, load.delay, now) for k in Kind}
        target = config.overload_delay
        if target is not None:
            self._calls.observe(now, load.delay, standing[Kind.CALL], target)
        if kind is Kind.CALL and config.max_calls is not None and load.calls >= config.max_calls:
            reason = Reason.MAX_CALLS
        elif load.transactions >= TRANSACTION_SHARE * load.max_transactions:
            reason = Reason.TRANSACTIONS
        elif standing[kind] if kind is not Kind.CALL else self._late(load.delay):
            reason = Reason.DELAY
        else:
            bucket = self._buckets.get(kind)
            if bucket is not None and not bucket.take(now):
                reason = Reason.RATE
            elif kind is Kind.CALL and target is not None and not self._calls.take(now):
                reason = Reason.DELAY
        if reason is None:
            stats.admitted[kind] += 1
            return None
        stats.refused[kind, reason] += 1
        return Refusal(reason, config.retry_after)

    def admit_anyway(self, kind: Kind, refusal: Refusal) -> None:
        """A request refused by :meth:`decide` is admitted all the same (an emergency call): counted as
        admitted over the line instead of refused."""
        stats = self.stats
        stats.refused[kind, refusal.reason] -= 1
        if not stats.refused[kind, refusal.reason]:
            del stats.refused[kind, refusal.reason]
        stats.admitted[kind] += 1
        stats.admitted_anyway += 1
