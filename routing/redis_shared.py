"""The rest of a cluster's shared state in Redis: the brute-force guard's events, the ``evenly`` ring-group
state and the cluster's call records (the location service and nonce key are in :mod:`routing.redis_store`).

* **Guard** (:class:`GuardStream`): each node keeps its own :class:`~routing.security.FailureGuard` (decisions
  stay in memory, no round trip per request) and publishes every change of it — a failure, a throttled
  check, an unchecked attempt, a success that cleared failures, an unblock — to the stream
  ``durchwahl:guard``; every node replays the others' events into its guard. All guards run the same machine
  on the same events, so guesses spread over N nodes count as against one. A node starting replays the
  stream's last ``horizon`` seconds (the guard's window or block time, whichever is longer), so a restart
  forgets no block. Events are batched by one writer task (a burst of failures costs one round trip); the
  delay to the other nodes is the network's, a millisecond on a LAN. While Redis is unreachable each node
  guards on its own and says so in its log.
* **Ring groups** (:class:`RedisRingState`): the member offered an ``evenly`` group's last call first, in
  the hash ``durchwahl:ring-state``, read and advanced by a compare-and-set (a Lua script), so two nodes
  placing calls to one group at once do not both start with the same member.
* **Call records** (:class:`CdrStream`): each node writes its CDRs to its own SQLite file as ever (the record
  that survives Redis), and appends each to the stream ``durchwahl:cdr`` (capped at ``max_records``), which
  ``durchwahl cdr`` reads to show the calls of the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

import attrs

from .cdr import CallRecord, CdrStore, Disposition
from .directory import Group
from .redis_store import KEY_PREFIX, redacted
from .ringgroup import RingGroupState, RingPlan, plan_ring_group
from .security import FailureGuard, GuardEvent

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CdrStream", "GuardStream", "RedisRingState", "read_cluster_records"]

log = logging.getLogger(__name__)

GUARD_STREAM: Final = KEY_PREFIX + "guard"
RING_STATE: Final = KEY_PREFIX + "ring-state"
CDR_STREAM: Final = KEY_PREFIX + "cdr"
#: How long a blocking read waits (below the client's socket timeout).
_READ_BLOCK_MS: Final = 1000


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class GuardStream:
    """Shares ``guard`` with the other nodes through Redis (see the module docstring). ``run()`` is the
    node's task; ``start()`` replays the recent past first."""

    def __init__(
        self,
        client: Redis,
        url: str,
        guard: FailureGuard,
        *,
        clock: Callable[[], float] = time.time,
        node_id: str | None = None,
    ) -> None:
        self._client: Any = client  # redis-py's command types are too loose to check through
        self._url = url
        self.guard = guard
        self._clock = clock
        #: Tells this process's events from the others' (a restarted node is another process).
        self.node_id = node_id or secrets.token_hex(6)
        policy = guard.policy
        self.horizon = max(policy.window, policy.block_for) + 60.0
        self._pending: list[GuardEvent] = []
        self._wake = asyncio.Event()
        self._last_id = "0-0"
        self._failing = False
        #: Events of other nodes applied (for tests and status).
        self.applied = 0
        guard.replica = self.publish

    def publish(self, event: GuardEvent) -> None:
        """Called by the guard on every change: sent to the other nodes by :meth:`run`'s writer."""
        self._pending.append(event)
        self._wake.set()

    async def start(self) -> None:
        """Replay the other nodes' events of the last ``horizon`` seconds into the guard."""
        since = int((self._clock() - self.horizon) * 1000)
        try:
            entries = await self._client.xrange(GUARD_STREAM, min=f"{max(since, 0)}-0", max="+")
        except _redis_errors() as exc:
            log.warning("guard events from %s not read: %s (guarding on this node alone)", self._where, exc)
            return
        self._apply(entries)
        log.info("brute-force guard: %d recent events of the cluster replayed", len(entries))

    @property
    def _where(self) -> str:
        return redacted(self._url)

    def _apply(self, entries: Any) -> None:
        for entry_id, fields in entries:
            self._last_id = str(entry_id)
            if fields.get("n") == self.node_id:
                continue
            try:
                event = GuardEvent.from_list(json.loads(fields.get("e", "null")))
            except ValueError as exc:
                log.warning("guard stream entry %s ignored: %s", entry_id, exc)
                continue
            self.guard.apply(event)
            self.applied += 1

    async def run(self) -> None:
        """Write this node's events and read the others', until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write())
            tasks.create_task(self._read())

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            oldest = int((self._clock() - self.horizon) * 1000)
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for event in batch:
                        fields = {"n": self.node_id, "e": json.dumps(event.to_list())}
                        pipe.xadd(GUARD_STREAM, fields, minid=max(oldest, 0), approximate=True)
                    await pipe.execute()
                self._recovered()
            except _redis_errors() as exc:
                self._failed(exc, f"{len(batch)} guard events not shared")
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        if self._last_id == "0-0":
            self._last_id = f"{int(self._clock() * 1000)}-0"
        while True:
            try:
                found = await self._client.xread(
                    {GUARD_STREAM: self._last_id}, count=500, block=_READ_BLOCK_MS
                )
                self._recovered()
            except _redis_errors() as exc:
                self._failed(exc, "guard events of the other nodes not read")
                await asyncio.sleep(1.0)
                continue
            for _, entries in found or ():
                self._apply(entries)

    def _failed(self, exc: BaseException, what: str) -> None:
        if not self._failing:
            log.error("%s (%s: %s): guarding on this node alone until it is back", what, self._where, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("guard events shared again through %s", self._where)
        self._failing = False


#: Compare-and-set of one group's field: KEYS[1] the hash; ARGV[1] the group, ARGV[2] the value read ("" for
#: none), ARGV[3] the new one. Returns {1} when set, else {0, the value now}.
_RING_CAS: Final = """
local now = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if now ~= ARGV[2] then return {0, now} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1}
"""


class RedisRingState:
    """The ``evenly`` ring-group state of the whole cluster (see the module docstring): read, planned with
    :func:`~routing.ringgroup.plan_ring_group`, and advanced by a compare-and-set; a node that lost the race
    plans again from the state the winner left (every lost race is another call's progress)."""

    def __init__(self, client: Redis, url: str, *, attempts: int = 64) -> None:
        self._client: Any = client  # redis-py's command types are too loose to check through
        self._url = url
        self._attempts = attempts
        self._cas: Any = None

    async def plan(self, group: Group, reachable: Collection[str]) -> RingPlan:
        """The ring plan of one call to ``group``, the shared state advanced with it. Should Redis fail,
        the plan from the state last read (logged): the call rings all the same."""
        state = RingGroupState()
        try:
            if self._cas is None:
                self._cas = self._client.register_script(_RING_CAS)
            last = await self._client.hget(RING_STATE, group.extension)
            for _ in range(self._attempts):
                state = RingGroupState({group.extension: last} if last else {})
                plan, new = plan_ring_group(group, reachable, state)
                first = new.last_first(group.extension)
                if new == state or first is None:
                    return plan
                answer = await self._cas(keys=[RING_STATE], args=[group.extension, last or "", first])
                if int(answer[0]) == 1:
                    return plan
                last = str(answer[1]) or None
        except _redis_errors() as exc:
            log.error("ring-group state in %s not used: %s", redacted(self._url), exc)
        plan, _ = plan_ring_group(group, reachable, state)
        return plan


def _record_fields(record: CallRecord, node: str | None) -> dict[str, str]:
    row = attrs.asdict(record)
    row["disposition"] = record.disposition.value
    return {"node": node or "", "r": json.dumps(row, ensure_ascii=False)}


def _record(fields: dict[str, str]) -> CallRecord | None:
    try:
        row = json.loads(fields["r"])
        row["disposition"] = Disposition(row["disposition"])
        return CallRecord(**row)
    except (KeyError, TypeError, ValueError):
        return None


class CdrStream:
    """A :class:`~routing.cdr.CdrStore` that writes to ``local`` (the node's SQLite file) and appends the
    record to the cluster's stream (see the module docstring)."""

    def __init__(
        self, client: Redis, url: str, local: CdrStore, *, node: str | None, max_records: int = 100_000
    ) -> None:
        self._client: Any = client  # redis-py's command types are too loose to check through
        self._url = url
        self.local = local
        self.node = node
        self.max_records = max_records
        self._tasks: set[asyncio.Task[None]] = set()

    def write(self, record: CallRecord) -> None:
        self.local.write(record)
        task = asyncio.get_running_loop().create_task(self._append(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, record: CallRecord) -> None:
        try:
            await self._client.xadd(
                CDR_STREAM, _record_fields(record, self.node), maxlen=self.max_records, approximate=True
            )
        except _redis_errors() as exc:
            log.error("call %s: not added to the cluster's records in %s: %s", record.call_id, self._url, exc)

    async def close(self) -> None:
        """Wait for the records still on their way."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


async def read_cluster_records(
    client: Redis, *, since: float | None = None, limit: int = 20
) -> list[tuple[str, CallRecord]]:
    """The newest ``limit`` records of the whole cluster (oldest first), each with its node's name."""
    redis: Any = client
    entries = await redis.xrevrange(CDR_STREAM, max="+", min="-", count=max(limit * 4, 100))
    found: list[tuple[str, CallRecord]] = []
    for _, fields in entries:
        record = _record(fields)
        if record is None or (since is not None and record.started_at < since):
            continue
        found.append((str(fields.get("node", "")), record))
    found.sort(key=lambda item: item[1].started_at)
    return found[-limit:] if limit > 0 else found
