"""State shared by the nodes of a cluster, in Redis (``[cluster] store = "redis://…"``): the connection, the
location service (:class:`RedisLocationStore`) and the digest nonce key (:func:`shared_secret`).

The client is ``redis.asyncio`` (PyPI ``redis``), imported only here, so a single node never loads it.

Location keys (``durchwahl:`` prefix):

* ``loc:<AOR>``: a hash, one field per binding (``00000``, ``00001`` … in registration order), each value
  the binding as JSON (:func:`routing.location.binding_to_json`). A REGISTER's write replaces the hash in one
  MULTI/EXEC, so a reader sees the old list or the new one, never half of each. The key's TTL is an hour past
  its last binding's expiry: a safety net, should no node be left to purge it.
* ``loc-expiry``: a sorted set of AORs scored by their earliest binding expiry. It lists the AORs (``all``)
  without a SCAN, and finds those with something to purge (``expire``).
* Purging runs a Lua script per AOR that deletes the expired fields and returns them, atomically: with several
  nodes purging, each expired binding is reported (``unregistered`` event, log line) by exactly one.

Every Redis failure becomes a :class:`~routing.location.LocationStoreError` naming the store, so the registrar
answers 500 and logs, as with a failing SQLite file. Commands time out after ``timeout`` seconds: a node
whose Redis is gone fails fast instead of holding calls.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from durchwahl.sipcore.registrar import Binding

from .location import LocationStoreError, binding_from_json, binding_to_json

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["KEY_PREFIX", "RedisLocationStore", "connect", "redacted", "shared_secret"]

log = logging.getLogger(__name__)

#: Every key durchwahl keeps in Redis starts with this.
KEY_PREFIX: Final = "durchwahl:"
#: How long past its last binding's expiry an AOR's hash stays, should nobody purge it.
_KEY_GRACE: Final = 3600
_EXPIRY_INDEX: Final = KEY_PREFIX + "loc-expiry"

#: KEYS[1] the AOR's hash, KEYS[2] the expiry index; ARGV[1] the AOR, ARGV[2] now. Returns the expired
#: bindings' JSON (as stored, never re-encoded: Lua's JSON would round the times).
_PURGE: Final = """
local fields = redis.call('HGETALL', KEYS[1])
local gone = {}
local earliest = nil
for i = 1, #fields, 2 do
    local expires = tonumber(cjson.decode(fields[i + 1])['expires_at'])
    if expires <= tonumber(ARGV[2]) then
        redis.call('HDEL', KEYS[1], fields[i])
        gone[#gone + 1] = fields[i + 1]
    elseif earliest == nil or expires < earliest then
        earliest = expires
    end
end
if earliest == nil then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
else
    redis.call('ZADD', KEYS[2], earliest, ARGV[1])
end
return gone
"""


def redacted(url: str) -> str:
    """The store's URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def connect(url: str, *, timeout: float = 2.0) -> Redis:
    """A client for ``url`` (connections are made on first use). Raises ``LocationStoreError`` when the
    ``redis`` package is missing."""
    try:
        from redis.asyncio import Redis
    except ImportError:
        raise LocationStoreError(
            "[cluster] store needs the redis package: pip install 'durchwahl[cluster]'"
        ) from None
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return client


@contextmanager
def _failing_as(what: str, url: str) -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as exc:
        raise LocationStoreError(f"{what} {redacted(url)}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise LocationStoreError(f"{what} {redacted(url)}: {exc}") from exc


async def shared_secret(client: Redis, url: str) -> bytes:
    """The digest nonce key every node of the cluster uses (so any node verifies a nonce another sent): made
    by the first node to start (SET NX), read by the others."""
    key = KEY_PREFIX + "nonce-secret"
    with _failing_as("cannot read the shared nonce key from", url):
        await client.set(key, secrets.token_hex(32), nx=True)
        value = await client.get(key)
    try:
        secret = bytes.fromhex(str(value))
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise LocationStoreError(f"{redacted(url)}: {key} is not a hex key of 16 bytes or more")
    return secret


def _field(position: int) -> str:
    return f"{position:05d}"


class RedisLocationStore:
    """A :class:`~routing.location.LocationStore` in Redis, shared by every node (module docstring).

    ``client`` may be shared with the cluster's other uses; ``close`` closes it only when ``owns_client``.
    ``clock`` (wall-clock seconds) sets the keys' safety TTL.
    """

    def __init__(
        self, client: Redis, url: str, *, owns_client: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._clock = clock
        self.url = url
        self._owns = owns_client
        self._purge: Any = None

    @staticmethod
    def _key(aor: str) -> str:
        return f"{KEY_PREFIX}loc:{aor}"

    def _fail(self) -> Any:
        return _failing_as("location store", self.url)

    @staticmethod
    def _decode(fields: Mapping[Any, Any]) -> tuple[Binding, ...]:
        """A hash's bindings (``decode_responses``: str fields), in registration order."""
        return tuple(binding_from_json(json.loads(fields[name])) for name in sorted(fields))

    async def get(self, aor: str, *, now: float | None = None) -> tuple[Binding, ...]:
        with self._fail():
            fields = await self._client.hgetall(self._key(aor))
        bindings = self._decode(fields)
        return bindings if now is None else tuple(b for b in bindings if b.expires_at > now)

    async def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        for binding in bindings:
            if binding.aor != aor:
                raise ValueError(f"binding for {binding.aor} stored under {aor}")
        key = self._key(aor)
        with self._fail():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if bindings:
                    pipe.hset(
                        key,
                        mapping={
                            _field(i): json.dumps(binding_to_json(b), ensure_ascii=False)
                            for i, b in enumerate(bindings)
                        },
                    )
                    last = max(b.expires_at for b in bindings)
                    pipe.expire(key, max(1, int(last - self._clock())) + _KEY_GRACE)
                    pipe.zadd(_EXPIRY_INDEX, {aor: min(b.expires_at for b in bindings)})
                else:
                    pipe.zrem(_EXPIRY_INDEX, aor)
                await pipe.execute()

    async def remove(self, aor: str) -> None:
        await self.replace(aor, ())

    async def all(self, *, now: float | None = None) -> tuple[Binding, ...]:
        out: list[Binding] = []
        with self._fail():
            aors = sorted(str(aor) for aor in await self._client.zrange(_EXPIRY_INDEX, 0, -1))
            for start in range(0, len(aors), 500):
                async with self._client.pipeline(transaction=False) as pipe:
                    for aor in aors[start : start + 500]:
                        pipe.hgetall(self._key(aor))
                    for fields in await pipe.execute():
                        out.extend(self._decode(fields))
        return tuple(out) if now is None else tuple(b for b in out if b.expires_at > now)

    async def expire(self, now: float) -> tuple[Binding, ...]:
        gone: list[Binding] = []
        with self._fail():
            if self._purge is None:
                self._purge = self._client.register_script(_PURGE)
            due = await self._client.zrangebyscore(_EXPIRY_INDEX, "-inf", now)
            for aor in map(str, due):
                expired = await self._purge(keys=[self._key(aor), _EXPIRY_INDEX], args=[aor, repr(now)])
                gone.extend(binding_from_json(json.loads(raw)) for raw in expired)
        return tuple(gone)

    async def close(self) -> None:
        if self._owns:
            with self._fail():
                await self._client.aclose()
