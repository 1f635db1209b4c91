"""Location stores: the protocol on both implementations, and SQLite's restart survival and purging."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
from cluster_env import redis_server, redis_url

from durchwahl.routing.cluster_run import Part
from durchwahl.routing.location import (
    SCHEMA_VERSION,
    InMemoryLocationStore,
    LocationStore,
    LocationStoreError,
    SqliteLocationStore,
)
from durchwahl.sipcore.registrar import Binding, BindingFlow

T0 = 1_700_000_000.0
AOR = "sip:101@office.example"


def binding(host: str, *, aor: str = AOR, expires_at: float = T0 + 600, conn: int | None = None) -> Binding:
    return Binding(
        aor=aor,
        contact=f'<sip:101@{host}:5060;ob>;+sip.instance="<urn:uuid:{host}>"',
        expires_at=expires_at,
        call_id=f"call-{host}",
        cseq=7,
        registered_at=T0,
        q=0.5,
        flow=BindingFlow("TCP" if conn else "UDP", ("127.0.0.1", 5060), ("203.0.113.9", 40000), conn),
        instance_id=f"<urn:uuid:{host}>",
        reg_id=1,
        user_agent="Phone/1 (ü)",
        path=(f"<sip:edge@127.0.0.1:5060;lr;received=sip:{host}:5060>",),
    )


__all__ = ["redis_server"]  # a fixture


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocationStore]:
    s: LocationStore
    if request.param == "redis":
        from durchwahl.routing.redis_store import RedisLocationStore, connect

        server: Part = request.getfixturevalue("redis_server")
        url = redis_url(server)
        client = connect(url)
        await client.flushdb()
        s = RedisLocationStore(client, url, clock=lambda: T0)
    elif request.param == "memory":
        s = InMemoryLocationStore()
    else:
        s = SqliteLocationStore(tmp_path / "loc.db")
    yield s
    await s.close()


async def test_replace_get_remove(store: LocationStore) -> None:
    a, b = binding("10.0.0.1"), binding("10.0.0.2", conn=None)
    other = binding("10.0.0.3", aor="sip:102@office.example")
    await store.replace(AOR, [a, b])
    await store.replace(other.aor, [other])
    assert await store.get(AOR) == (a, b)
    await store.replace(AOR, [b])
    assert await store.get(AOR) == (b,)
    assert set(await store.all()) == {b, other}
    await store.remove(AOR)
    assert await store.get(AOR) == ()
    assert await store.get("sip:nobody@office.example") == ()
    await store.replace(other.aor, [])
    assert await store.all() == ()


async def test_expire_and_now_filter(store: LocationStore) -> None:
    soon, later = binding("10.0.0.1", expires_at=T0 + 10), binding("10.0.0.2", expires_at=T0 + 100)
    await store.replace(AOR, [soon, later])
    assert await store.get(AOR, now=T0 + 50) == (later,)
    assert await store.all(now=T0 + 50) == (later,)
    assert await store.expire(T0 + 10) == (soon,)
    assert await store.get(AOR) == (later,)
    assert await store.expire(T0 + 10) == ()


async def test_bindings_of_another_aor_are_refused(store: LocationStore) -> None:
    with pytest.raises(ValueError, match="stored under"):
        await store.replace("sip:102@office.example", [binding("10.0.0.1")])


async def test_sqlite_survives_a_restart_and_purges_on_load(tmp_path: Path) -> None:
    path = tmp_path / "state" / "location.db"
    now = T0
    store = SqliteLocationStore(path, clock=lambda: now)
    keep = binding("10.0.0.1", expires_at=T0 + 600, conn=42)
    gone = binding("10.0.0.2", expires_at=T0 + 30)
    other = binding("10.0.0.3", aor="sip:102@office.example", expires_at=T0 + 20)
    await store.replace(AOR, [keep, gone])
    await store.replace(other.aor, [other])
    await store.close()

    now = T0 + 60
    reopened = SqliteLocationStore(path, clock=lambda: now)
    try:
        restored = await reopened.get(AOR)
        # Expired bindings were purged on load; the TCP connection id did not survive the restart.
        flow = BindingFlow("TCP", ("127.0.0.1", 5060), ("203.0.113.9", 40000), None)
        assert restored == (attrs.evolve(keep, flow=flow),)
        assert await reopened.all() == restored
    finally:
        await reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_sqlite_brings_a_version_1_file_up_to_date(tmp_path: Path) -> None:
    """A file written before bindings had a Path keeps its bindings, which get an empty Path."""
    path = tmp_path / "location.db"
    columns = (
        "aor TEXT NOT NULL, position INTEGER NOT NULL, contact TEXT NOT NULL, expires_at REAL NOT NULL, "
        "call_id TEXT NOT NULL, cseq INTEGER NOT NULL, registered_at REAL NOT NULL, q REAL, transport TEXT, "
        "local_host TEXT, local_port INTEGER, remote_host TEXT, remote_port INTEGER, connection_id INTEGER, "
        "instance_id TEXT, reg_id INTEGER, user_agent TEXT, PRIMARY KEY (aor, position)"
    )
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE binding ({columns})")
        db.execute(
            "INSERT INTO binding (aor, position, contact, expires_at, call_id, cseq, registered_at) "
            "VALUES (?, 0, '<sip:101@10.0.0.1>', ?, 'c', 1, ?)",
            (AOR, T0 + 600, T0),
        )
        db.execute("PRAGMA user_version = 1")
    store = SqliteLocationStore(path, clock=lambda: T0)
    try:
        (kept,) = await store.get(AOR)
        assert kept.contact == "<sip:101@10.0.0.1>" and kept.path == ()
        await store.replace(AOR, [binding("10.0.0.2")])
        assert (await store.get(AOR))[0].path == binding("10.0.0.2").path
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "location.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteLocationStore(path)
    with pytest.raises(LocationStoreError, match="newer than this durchwahl"):
        await store.get(AOR)
    await store.close()


async def test_sqlite_names_the_file_when_it_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "location.db"
    path.write_bytes(b"this is not sqlite" * 100)
    store = SqliteLocationStore(path)
    with pytest.raises(LocationStoreError, match=str(path)):
        await store.open()
    await store.close()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems start services with (022): without care, new files are world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("usual_umask")
async def test_sqlite_files_are_the_owners_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Who registered from where is nobody else's business: the file, its WAL companions and a folder made
    for them are owner-only; a file left world-readable by an older release is made owner-only."""
    path = tmp_path / "state" / "location.sqlite3"
    store = SqliteLocationStore(path, clock=lambda: T0)
    await store.replace(AOR, [binding("10.0.0.1")])
    written = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    assert mode(path.parent) == 0o700
    await store.close()

    for p in written:
        if p.exists():
            p.chmod(0o644)
    reopened = SqliteLocationStore(path, clock=lambda: T0)
    assert len(await reopened.get(AOR)) == 1
    assert mode(path) == 0o600
    assert "location.sqlite3 was open to other users (mode 0644): made owner-only" in caplog.text
    await reopened.close()
