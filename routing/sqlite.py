"""Opening the SQLite files the server keeps in its state directory (location store, CDRs).

The files hold who is registered from where and who called whom: they are the server user's alone. A new
file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file), a
folder created for it 0700; an existing file that others may read is made owner-only, with a warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = ["make_private", "open_versioned"]

log = logging.getLogger(__name__)

#: What SQLite keeps beside a database file in WAL mode.
_COMPANIONS = ("-wal", "-shm")


def make_private(path: Path) -> None:
    """Create ``path`` (and missing folders, 0700) readable by its owner only; if it or its WAL companions
    exist with permissions for group or others, take those away (logged). Raises ``OSError`` when the file
    cannot be created."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            try:
                os.chmod(file, mode & 0o700)
            except OSError as exc:
                log.warning(
                    "%s is open to other users (mode %04o) and cannot be changed: %s", file, mode, exc
                )
            else:
                log.warning("%s was open to other users (mode %04o): made owner-only", file, mode)


def open_versioned(
    path: Path,
    schema: str,
    version: int,
    what: str,
    error: type[Exception],
    upgrades: Mapping[int, str] | None = None,
) -> sqlite3.Connection:
    """Open (creating, owner-only: :func:`make_private`) ``path`` in WAL mode, create ``schema`` in a new
    file, refuse a newer schema version.

    An older file is brought up to ``version`` by ``upgrades``: the SQL that takes version ``n`` to ``n + 1``,
    by ``n`` (each step in one transaction). Raises ``error`` with a message naming ``what`` and the file. The
    connection may be used from one worker thread other than the one that opened it
    (``check_same_thread=False``).
    """
    try:
        make_private(path)
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
