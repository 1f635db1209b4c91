"""The location service: where registration bindings live (RFC 3261 §10), behind a small async protocol.

Two stores implement :class:`LocationStore`:

* :class:`SqliteLocationStore`, the default: one SQLite file under ``state_dir``, so registrations survive a
  restart. Every SQLite call runs on one dedicated worker thread. A commit can wait on the disk (an fsync
  takes milliseconds to tens of milliseconds on real hardware, far longer on a busy SD card), and the event
  loop must never wait on the disk; one thread also keeps the connection single-threaded, as sqlite3 wants,
  and orders the writes as they were issued. WAL journal with ``synchronous=NORMAL``: a power cut may lose
  the last few registrations (phones re-register anyway) but never corrupts the file.
* :class:`InMemoryLocationStore`, for tests and for embedding without a disk.
* ``routing.redis_store.RedisLocationStore``, for several nodes sharing their bindings (``[cluster]``).

The schema carries a version (``PRAGMA user_version``); a file written by a newer durchwahl is refused with
a message saying so, never silently rewritten. TCP connection ids are meaningless after a restart (the
connections are gone and their ids are reused), so the SQLite store forgets them when it opens: a restored
binding is reached through its remote address, on a new connection if need be.

Writes replace the whole binding list of one AOR (what :func:`sipcore.registrar.process_register` returns),
in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from durchwahl.sipcore.registrar import Binding, BindingFlow

from .errors import RoutingError
from .sqlite import open_versioned

__all__ = [
    "SCHEMA_VERSION",
    "InMemoryLocationStore",
    "LocationStore",
    "LocationStoreError",
    "SqliteLocationStore",
    "binding_from_json",
    "binding_to_json",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2

_T = TypeVar("_T")


class LocationStoreError(RoutingError):
    """The location store cannot be opened, read or written (names the file and what went wrong)."""


class LocationStore(Protocol):
    """Registration bindings by AOR. Every method may be awaited concurrently; each call is atomic."""

    async def get(self, aor: str, *, now: float | None = None) -> tuple[Binding, ...]:
        """The AOR's bindings in registration order; with ``now``, only those not yet expired."""
        ...

    async def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        """Make ``bindings`` the AOR's complete binding list (empty removes the AOR)."""
        ...

    async def remove(self, aor: str) -> None:
        """Forget every binding of the AOR."""
        ...

    async def all(self, *, now: float | None = None) -> tuple[Binding, ...]:
        """Every binding of every AOR (with ``now``, only those not yet expired)."""
        ...

    async def expire(self, now: float) -> tuple[Binding, ...]:
        """Delete the bindings whose ``expires_at`` is not after ``now``; returns them."""
        ...

    async def close(self) -> None: ...


def _check(aor: str, bindings: Sequence[Binding]) -> None:
    for binding in bindings:
        if binding.aor != aor:
            raise ValueError(f"binding for {binding.aor} stored under {aor}")


class InMemoryLocationStore:
    """A :class:`LocationStore` in a dict: for tests and for embedding; forgets everything on exit."""

    def __init__(self) -> None:
        self._by_aor: dict[str, tuple[Binding, ...]] = {}

    async def get(self, aor: str, *, now: float | None = None) -> tuple[Binding, ...]:
        bindings = self._by_aor.get(aor, ())
        return bindings if now is None else tuple(b for b in bindings if b.expires_at > now)

    async def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        _check(aor, bindings)
        if bindings:
            self._by_aor[aor] = tuple(bindings)
        else:
            self._by_aor.pop(aor, None)

    async def remove(self, aor: str) -> None:
        self._by_aor.pop(aor, None)

    async def all(self, *, now: float | None = None) -> tuple[Binding, ...]:
        out = tuple(b for bindings in self._by_aor.values() for b in bindings)
        return out if now is None else tuple(b for b in out if b.expires_at > now)

    async def expire(self, now: float) -> tuple[Binding, ...]:
        gone: list[Binding] = []
        for aor, bindings in list(self._by_aor.items()):
            kept = tuple(b for b in bindings if b.expires_at > now)
            if len(kept) != len(bindings):
                gone.extend(b for b in bindings if b.expires_at <= now)
                await self.replace(aor, kept)
        return tuple(gone)

    async def close(self) -> None:
        return None


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS binding (
    aor            TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    contact        TEXT    NOT NULL,
    expires_at     REAL    NOT NULL,
    call_id        TEXT    NOT NULL,
    cseq           INTEGER NOT NULL,
    registered_at  REAL    NOT NULL,
    q              REAL,
    transport      TEXT,
    local_host     TEXT,
    local_port     INTEGER,
    remote_host    TEXT,
    remote_port    INTEGER,
    connection_id  INTEGER,
    instance_id    TEXT,
    reg_id         INTEGER,
    user_agent     TEXT,
    path           TEXT,
    PRIMARY KEY (aor, position)
);
CREATE INDEX IF NOT EXISTS binding_expires_at ON binding (expires_at);
"""

_COLUMNS: Final = (
    "aor, position, contact, expires_at, call_id, cseq, registered_at, q, transport, local_host, local_port, "
    "remote_host, remote_port, connection_id, instance_id, reg_id, user_agent, path"
)
_INSERT: Final = f"INSERT INTO binding ({_COLUMNS}) VALUES ({', '.join('?' * 18)})"
#: Version 1 had no Path (RFC 3327) column.
_UPGRADES: Final = {1: "ALTER TABLE binding ADD COLUMN path TEXT"}
_SELECT: Final = f"SELECT {_COLUMNS} FROM binding"


def _row(binding: Binding, position: int) -> tuple[Any, ...]:
    flow = binding.flow
    return (
        binding.aor,
        position,
        binding.contact,
        binding.expires_at,
        binding.call_id,
        binding.cseq,
        binding.registered_at,
        binding.q,
        flow.transport if flow else None,
        flow.local[0] if flow else None,
        flow.local[1] if flow else None,
        flow.remote[0] if flow else None,
        flow.remote[1] if flow else None,
        flow.connection_id if flow else None,
        binding.instance_id,
        binding.reg_id,
        binding.user_agent,
        json.dumps(binding.path) if binding.path else None,
    )


def _binding(row: tuple[Any, ...]) -> Binding:
    (aor, _, contact, expires_at, call_id, cseq, registered_at, q) = row[:8]
    (transport, lhost, lport, rhost, rport, conn, instance_id, reg_id, user_agent, path) = row[8:]
    flow = None
    if transport is not None:
        flow = BindingFlow(transport, (lhost, lport), (rhost, rport), conn)
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        call_id=call_id,
        cseq=cseq,
        registered_at=registered_at,
        q=q,
        flow=flow,
        instance_id=instance_id,
        reg_id=reg_id,
        user_agent=user_agent,
        path=tuple(json.loads(path)) if path else (),
    )


def binding_to_json(binding: Binding) -> dict[str, Any]:
    """A binding as a JSON object (a shared store keeps bindings so); :func:`binding_from_json` reads it."""
    flow = binding.flow
    return {
        "aor": binding.aor,
        "contact": binding.contact,
        "expires_at": binding.expires_at,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "registered_at": binding.registered_at,
        "q": binding.q,
        "flow": None
        if flow is None
        else [flow.transport, list(flow.local), list(flow.remote), flow.connection_id],
        "instance_id": binding.instance_id,
        "reg_id": binding.reg_id,
        "user_agent": binding.user_agent,
        "path": list(binding.path),
    }


def binding_from_json(data: Mapping[str, Any]) -> Binding:
    """The binding :func:`binding_to_json` wrote. Raises ``LocationStoreError`` for anything else."""
    try:
        flow = data.get("flow")
        return Binding(
            aor=str(data["aor"]),
            contact=str(data["contact"]),
            expires_at=float(data["expires_at"]),
            call_id=str(data["call_id"]),
            cseq=int(data["cseq"]),
            registered_at=float(data["registered_at"]),
            q=None if data.get("q") is None else float(data["q"]),
            flow=None
            if flow is None
            else BindingFlow(
                str(flow[0]),
                (str(flow[1][0]), int(flow[1][1])),
                (str(flow[2][0]), int(flow[2][1])),
                None if flow[3] is None else int(flow[3]),
            ),
            instance_id=data.get("instance_id"),
            reg_id=None if data.get("reg_id") is None else int(data["reg_id"]),
            user_agent=data.get("user_agent"),
            path=tuple(str(p) for p in data.get("path") or ()),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise LocationStoreError(f"a stored binding is not readable ({exc!r}): {data!r:.200}") from exc


class SqliteLocationStore:
    """A :class:`LocationStore` in one SQLite file (see the module docstring).

    Opened on first use, or explicitly with ``await store.open()``; opening creates the file and schema if
    needed, forgets TCP connection ids, and purges bindings expired by ``clock()`` (wall-clock seconds).
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._opening: asyncio.Lock | None = None

    # ------------------------------------------------------------------------------------ plumbing

    async def _run(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._db is None:
            await self.open()
        db, executor = self._db, self._executor
        assert db is not None and executor is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, func, db)
        except sqlite3.Error as exc:
            raise LocationStoreError(f"location store {self.path}: {exc}") from exc

    async def open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._db is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="location-store")
            loop = asyncio.get_running_loop()
            try:
                self._db = await loop.run_in_executor(executor, self._open_sync, self._clock())
            except BaseException:
                executor.shutdown(wait=False)
                raise
            self._executor = executor

    def _open_sync(self, now: float) -> sqlite3.Connection:
        db = open_versioned(
            self.path, _SCHEMA, SCHEMA_VERSION, "location store", LocationStoreError, _UPGRADES
        )
        try:
            with db:
                db.execute("BEGIN")
                purged = db.execute("DELETE FROM binding WHERE expires_at <= ?", (now,)).rowcount
                db.execute("UPDATE binding SET connection_id = NULL WHERE connection_id IS NOT NULL")
            kept = db.execute("SELECT COUNT(*) FROM binding").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LocationStoreError(f"location store {self.path} is not usable: {exc}") from exc
        except BaseException:
            db.close()
            raise
        log.info("location store %s: %d bindings restored, %d expired ones purged", self.path, kept, purged)
        return db

    async def close(self) -> None:
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------------ protocol

    async def get(self, aor: str, *, now: float | None = None) -> tuple[Binding, ...]:
        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if now is None:
                return db.execute(f"{_SELECT} WHERE aor = ? ORDER BY position", (aor,)).fetchall()
            query = f"{_SELECT} WHERE aor = ? AND expires_at > ? ORDER BY position"
            return db.execute(query, (aor, now)).fetchall()

        return tuple(_binding(row) for row in await self._run(read))

    async def replace(self, aor: str, bindings: Sequence[Binding]) -> None:
        _check(aor, bindings)
        rows = [_row(b, i) for i, b in enumerate(bindings)]

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM binding WHERE aor = ?", (aor,))
                db.executemany(_INSERT, rows)

        await self._run(write)

    async def remove(self, aor: str) -> None:
        await self.replace(aor, ())

    async def all(self, *, now: float | None = None) -> tuple[Binding, ...]:
        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if now is None:
                return db.execute(f"{_SELECT} ORDER BY aor, position").fetchall()
            return db.execute(f"{_SELECT} WHERE expires_at > ? ORDER BY aor, position", (now,)).fetchall()

        return tuple(_binding(row) for row in await self._run(read))

    async def expire(self, now: float) -> tuple[Binding, ...]:
        def purge(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            with db:
                db.execute("BEGIN")
                rows = db.execute(f"{_SELECT} WHERE expires_at <= ?", (now,)).fetchall()
                db.execute("DELETE FROM binding WHERE expires_at <= ?", (now,))
            return rows

        return tuple(_binding(row) for row in await self._run(purge))
