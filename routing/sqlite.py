"""Opening the SQLite files the server keeps in its state directory (location store, CDRs)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

__all__ = ["open_versioned"]


def open_versioned(
    path: Path,
    schema: str,
    version: int,
    what: str,
    error: type[Exception],
    upgrades: Mapping[int, str] | None = None,
) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode, create ``schema`` in a new file, refuse a newer schema version.

    An older file is brought up to ``version`` by ``upgrades``: the SQL that takes version ``n`` to ``n + 1``,
    by ``n`` (each step in one transaction). Raises ``error`` with a message naming ``what`` and the file. The
    connection may be used from one worker thread other than the one that opened it
    (``check_same_thread=False``).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {what} {path}: {exc}") from exc
    try:
        db.execute("PRAGMA journal_mode=WAL")  # a power cut may lose the last writes, never the file
        db.execute("PRAGMA synchronous=NORMAL")
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise error(
                f"{what} {path} has schema version {found}, newer than this durchwahl "
                f"understands ({version}); upgrade durchwahl or move the file away"
            )
        if found == 0:
            db.executescript(schema)  # idempotent (IF NOT EXISTS); executescript commits by itself
            db.execute(f"PRAGMA user_version = {version}")
        for step in range(found or version, version):
            script = (upgrades or {}).get(step)
            if script is None:
                raise error(f"{what} {path} has schema version {step}, which cannot be upgraded to {version}")
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {step + 1}; COMMIT;")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise error(f"{what} {path} is not usable: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db
