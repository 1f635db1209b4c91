"""Call detail records: one :class:`CallRecord` per call, written when the call ends.

The B2BUA hands each finished call to a :class:`CdrStore` (``store.write(record)``), a small protocol so a
shared store can replace the default later. ``write`` must return at once: it is called on the event loop.

* :class:`SqliteCdrStore`, the default: one SQLite file under ``state_dir`` (``cdr.sqlite3``). As in
  :mod:`routing.location`, every SQLite call runs on one dedicated worker thread (the loop never waits on a
  commit; one thread keeps the connection single-threaded and the rows in the order the calls ended). At
  most ``max_pending`` rows wait for the disk; beyond that a row is dropped with an error in the log rather
  than memory growing without bound. ``await store.close()`` writes what is pending and closes the file.
  With ``retention_days`` set, :meth:`SqliteCdrStore.prune` deletes the rows of calls that ended longer
  ago (the server prunes at start and once a day).
* :class:`InMemoryCdrStore`, for tests and for embedding without a disk.
* :func:`read_records`: the newest rows of a CDR file, read-only (``durchwahl cdr``; safe beside a running
  server, SQLite's WAL lets a reader in while the server writes).

:func:`disposition_for` is the one place that turns how a call ended into its :class:`Disposition`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol

import attrs

from .errors import RoutingError
from .sqlite import open_versioned

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "CdrStore",
    "CdrStoreError",
    "Disposition",
    "InMemoryCdrStore",
    "SqliteCdrStore",
    "disposition_for",
    "read_records",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3


class CdrStoreError(RoutingError):
    """The CDR store cannot be opened or read (names the file and what went wrong)."""


class Disposition(enum.Enum):
    """How a call ended."""

    ANSWERED = "answered"  #: a destination answered (an employee, a group member, the client of a call out)
    BUSY = "busy"  #: every device was busy (486, 600)
    NO_ANSWER = "no-answer"  #: devices rang, nobody answered in time (408, 480)
    UNAVAILABLE = "unavailable"  #: nothing rang: the destination has no registered device (480)
    CANCELLED = "cancelled"  #: the caller gave up before anyone answered (487, or hung up during a greeting)
    FAILED = "failed"  #: refused or failed otherwise; the record's ``status`` says with what


_BUSY: Final = frozenset({486, 600})
_NO_ANSWER: Final = frozenset({408, 480})


def disposition_for(*, answered: bool, status: int | None, rang: bool = True) -> Disposition:
    """The disposition of a call that was ``answered`` or else ended with final ``status`` (None: the caller
    left before any status was given); ``rang`` false: no device of the destination could be rung."""
    if answered:
        return Disposition.ANSWERED
    if not rang and status == 480:
        return Disposition.UNAVAILABLE
    if status is None or status == 487:
        return Disposition.CANCELLED
    if status in _BUSY:
        return Disposition.BUSY
    if status in _NO_ANSWER:
        return Disposition.NO_ANSWER
    return Disposition.FAILED


@attrs.frozen
class CallRecord:
    """One call. Times are wall-clock seconds (Unix time).

    ``caller``: the employee's extension, else the caller's From URI (``source_trunk``: the trunk it came
    through). ``dialled``: the dialled string in canonical form. ``destination_kind`` / ``destination_id``:
    where the call was last routed — ``employee``/extension, ``group``/extension, ``external``/E.164,
    ``emergency``/the emergency number (``112``), or ``number``/E.164 when a greeting's caller never reached
    a destination. ``answered_by``: the SIP user of
    the employee who answered (or the E.164 number called out), ``answered_contact``: the device's contact.
    ``digits``: what the caller keyed in during the greeting (flow 3). ``status``: the final status when the
    call was not answered. ``transferred_by``: the employee whose transfer (REFER) brought the call to
    ``answered_by`` (the last one, if several). ``caller_name``: the CRM contact whose number called in.
    """

    call_id: str
    caller: str
    dialled: str
    started_at: float
    ended_at: float
    disposition: Disposition
    source_trunk: str | None = None
    destination_kind: str | None = None
    destination_id: str | None = None
    answered_by: str | None = None
    answered_contact: str | None = None
    digits: str = ""
    answered_at: float | None = None
    status: int | None = None
    transferred_by: str | None = None
    caller_name: str | None = None


class CdrStore(Protocol):
    """Where finished calls go. ``write`` is called on the event loop and must not block."""

    def write(self, record: CallRecord) -> None: ...


class InMemoryCdrStore:
    """A :class:`CdrStore` in a list: for tests and for embedding."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def write(self, record: CallRecord) -> None:
        self.records.append(record)

    async def close(self) -> None:
        return None


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cdr (
    id                INTEGER PRIMARY KEY,
    call_id           TEXT    NOT NULL,
    caller            TEXT    NOT NULL,
    source_trunk      TEXT,
    dialled           TEXT    NOT NULL,
    destination_kind  TEXT,
    destination_id    TEXT,
    answered_by       TEXT,
    answered_contact  TEXT,
    digits            TEXT    NOT NULL,
    started_at        REAL    NOT NULL,
    answered_at       REAL,
    ended_at          REAL    NOT NULL,
    disposition       TEXT    NOT NULL,
    status            INTEGER,
    transferred_by    TEXT,
    caller_name       TEXT
);
CREATE INDEX IF NOT EXISTS cdr_started_at ON cdr (started_at);
"""

_COLUMNS: Final = (
    "call_id, caller, source_trunk, dialled, destination_kind, destination_id, answered_by, "
    "answered_contact, digits, started_at, answered_at, ended_at, disposition, status, transferred_by, "
    "caller_name"
)
_INSERT: Final = f"INSERT INTO cdr ({_COLUMNS}) VALUES ({', '.join('?' * 16)})"
#: Schema upgrades (version n to n + 1) of files written by older releases.
_UPGRADES: Final = {
    1: "ALTER TABLE cdr ADD COLUMN transferred_by TEXT",
    2: "ALTER TABLE cdr ADD COLUMN caller_name TEXT",
}


def _row(r: CallRecord) -> tuple[Any, ...]:
    return (
        r.call_id,
        r.caller,
        r.source_trunk,
        r.dialled,
        r.destination_kind,
        r.destination_id,
        r.answered_by,
        r.answered_contact,
        r.digits,
        r.started_at,
        r.answered_at,
        r.ended_at,
        r.disposition.value,
        r.status,
        r.transferred_by,
        r.caller_name,
    )


def _record(row: tuple[Any, ...]) -> CallRecord:
    (call_id, caller, trunk, dialled, kind, ident, by, contact, digits) = row[:9]
    (started_at, answered_at, ended_at, disposition, status, transferred_by, caller_name) = row[9:]
    return CallRecord(
        call_id=call_id,
        caller=caller,
        source_trunk=trunk,
        dialled=dialled,
        destination_kind=kind,
        destination_id=ident,
        answered_by=by,
        answered_contact=contact,
        digits=digits,
        started_at=started_at,
        answered_at=answered_at,
        ended_at=ended_at,
        disposition=Disposition(disposition),
        status=status,
        transferred_by=transferred_by,
        caller_name=caller_name,
    )


class SqliteCdrStore:
    """A :class:`CdrStore` in one SQLite file (see the module docstring); the file is opened on the first
    write or read."""

    def __init__(self, path: str | Path, *, max_pending: int = 10_000, retention_days: int = 0) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        #: Rows of calls that ended longer ago are deleted by :meth:`prune` (0: kept for ever).
        self.retention_days = retention_days
        self.dropped = 0
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cdr-store"
        )
        self._db: sqlite3.Connection | None = None  # touched only on the worker thread
        self._pending = 0

    # ------------------------------------------------------------------------------ worker thread

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        db = open_versioned(self.path, _SCHEMA, SCHEMA_VERSION, "CDR store", CdrStoreError, _UPGRADES)
        self._db = db
        return db

    def _insert(self, row: tuple[Any, ...]) -> None:
        db = self._connect()
        with db:
            db.execute(_INSERT, row)

    def _select(self) -> list[tuple[Any, ...]]:
        return self._connect().execute(f"SELECT {_COLUMNS} FROM cdr ORDER BY id").fetchall()

    def _delete_before(self, cutoff: float) -> int:
        db = self._connect()
        with db:
            return db.execute("DELETE FROM cdr WHERE ended_at < ?", (cutoff,)).rowcount

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -------------------------------------------------------------------------------- event loop

    def write(self, record: CallRecord) -> None:
        """Queue ``record`` for the worker thread; returns at once."""
        if self._executor is None:
            log.error("CDR store %s is closed: call %s not recorded", self.path, record.call_id)
            return
        if self._pending >= self.max_pending:
            self.dropped += 1
            log.error(
                "CDR store %s: %d rows waiting for the disk, call %s dropped",
                self.path,
                self._pending,
                record.call_id,
            )
            return
        self._pending += 1
        future = self._executor.submit(self._insert, _row(record))
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._written, f, record.call_id))

    def _written(self, future: Future[None], call_id: str) -> None:
        self._pending -= 1
        error = future.exception()
        if error is not None:
            log.error("CDR store %s: call %s not recorded: %s", self.path, call_id, error)

    @property
    def pending(self) -> int:
        """Rows queued for the disk and not yet written."""
        return self._pending

    async def records(self) -> tuple[CallRecord, ...]:
        """Every row, oldest first (after the writes queued so far)."""
        if self._executor is None:
            raise CdrStoreError(f"CDR store {self.path} is closed")
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._executor, self._select)
        except sqlite3.Error as exc:
            raise CdrStoreError(f"CDR store {self.path}: {exc}") from exc
        return tuple(_record(row) for row in rows)

    async def prune(self, now: float) -> int:
        """Delete the rows of calls that ended more than ``retention_days`` before ``now`` (Unix time);
        returns how many. Does nothing when ``retention_days`` is 0."""
        if self.retention_days <= 0 or self._executor is None:
            return 0
        cutoff = now - self.retention_days * 86400
        try:
            deleted = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._delete_before, cutoff
            )
        except sqlite3.Error as exc:
            raise CdrStoreError(f"CDR store {self.path}: {exc}") from exc
        if deleted:
            log.info(
                "CDR store %s: %d rows older than %d days deleted", self.path, deleted, self.retention_days
            )
        return deleted

    async def close(self) -> None:
        """Write what is pending, then close the file."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        executor.shutdown(wait=True)


def read_records(
    path: str | Path, *, since: float | None = None, limit: int | None = None
) -> list[CallRecord]:
    """The rows of the CDR file at ``path`` (calls started at or after ``since``; the newest ``limit``),
    oldest first. Opens the file read-only and never creates it.

    :raises CdrStoreError: no such file, or not a CDR store this version can read.
    """
    path = Path(path)
    if not path.is_file():
        raise CdrStoreError(f"no CDR file at {path} (the server writes it when the first call ends)")
    query = f"SELECT {_COLUMNS} FROM cdr"
    params: list[Any] = []
    if since is not None:
        query += " WHERE started_at >= ?"
        params.append(since)
    query += " ORDER BY id DESC"
    if limit is not None:
        query += " LIMIT ?"
        params.append(limit)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise CdrStoreError(
                    f"{path}: CDR schema version {version}, this durchwahl reads {SCHEMA_VERSION}"
                )
            rows = db.execute(query, params).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise CdrStoreError(f"{path}: {exc}") from exc
    return [_record(row) for row in reversed(rows)]
