"""CDRs: the SQLite store, the disposition rules, and the rows flows 1 and 3 produce."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import answered, ended, event_of, network
from phones import Phone, Script, sdp
from test_flows import (
    DIRECT,
    GREETING,
    GROUP,
    PASSWORDS,
    SHORT,
    Office,
    answered_anchored,
    office,
    send_digits,
)

from durchwahl.routing.cdr import CallRecord, CdrStoreError, Disposition, SqliteCdrStore, disposition_for
from durchwahl.sipcore.session import Confirmed
from durchwahl.sipcore.ua import CallFailed

__all__ = ["office"]  # the fixture of test_flows, shared
pytestmark = pytest.mark.virtual_time  # the call-flow harness: a memory network and a virtual clock


def record(call_id: str, **changes: object) -> CallRecord:
    values: dict[str, object] = {
        "call_id": call_id,
        "caller": "101",
        "dialled": "102",
        "started_at": 1000.0,
        "ended_at": 1010.0,
        "disposition": Disposition.ANSWERED,
    }
    values.update(changes)
    return CallRecord(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- store


async def test_rows_are_written_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cdr.sqlite3"
    store = SqliteCdrStore(path)
    first = record(
        "a",
        source_trunk="provider",
        destination_kind="employee",
        destination_id="102",
        answered_by="102",
        answered_contact="sip:102@127.0.0.1:5062",
        digits="102",
        answered_at=1002.5,
    )
    second = record("b", disposition=Disposition.BUSY, status=486)
    store.write(first)
    store.write(second)
    assert await store.records() == (first, second)
    await store.close()
    store.write(record("late"))  # after close: logged, not raised
    reopened = SqliteCdrStore(path)
    assert [r.call_id for r in await reopened.records()] == ["a", "b"]
    await reopened.close()


async def test_a_newer_schema_is_refused_and_a_full_queue_drops_rows(tmp_path: Path) -> None:
    path = tmp_path / "cdr.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    store = SqliteCdrStore(path)
    with pytest.raises(CdrStoreError, match="newer"):
        await store.records()
    await store.close()

    bounded = SqliteCdrStore(tmp_path / "bounded.sqlite3", max_pending=1)
    bounded.write(record("kept"))
    bounded.write(record("dropped"))  # the first is still queued: nothing waits on the disk for this one
    assert bounded.dropped == 1
    assert [r.call_id for r in await bounded.records()] == ["kept"]
    await bounded.close()


async def test_rows_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    day = 86400.0
    now = 100 * day
    store = SqliteCdrStore(tmp_path / "cdr.sqlite3", retention_days=30)
    store.write(record("old", started_at=now - 40 * day, ended_at=now - 40 * day + 60))
    store.write(record("edge", started_at=now - 30 * day - 60, ended_at=now - 30 * day + 1))
    store.write(record("new", started_at=now - day, ended_at=now - day + 60))
    assert await store.prune(now) == 1
    assert [r.call_id for r in await store.records()] == ["edge", "new"]
    store.retention_days = 0  # keep for ever
    assert await store.prune(now + 365 * day) == 0
    assert len(await store.records()) == 2
    await store.close()


def test_disposition_rules() -> None:
    assert disposition_for(answered=True, status=None) is Disposition.ANSWERED
    assert disposition_for(answered=False, status=None) is Disposition.CANCELLED
    assert disposition_for(answered=False, status=487) is Disposition.CANCELLED
    assert disposition_for(answered=False, status=486) is Disposition.BUSY
    assert disposition_for(answered=False, status=600) is Disposition.BUSY
    assert disposition_for(answered=False, status=480) is Disposition.NO_ANSWER
    assert disposition_for(answered=False, status=404) is Disposition.FAILED


# ------------------------------------------------------------------------------------ calls → rows


@pytest.fixture
async def cdr(office: Office, tmp_path: Path) -> AsyncIterator[SqliteCdrStore]:
    store = SqliteCdrStore(tmp_path / "var" / "cdr.sqlite3")
    office.b2bua.cdr = store
    try:
        yield store
    finally:
        await store.close()


async def test_internal_call_answered_and_busy_rows(office: Office, cdr: SqliteCdrStore) -> None:
    anna = await office.phone("101")
    bernd = await Phone("102", PASSWORDS["102"], office.port, transports=network().transports).start()
    office.phones.append(bernd)
    call = bernd.dial("101")
    async with asyncio.timeout(3):
        await call.wait_answered()
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await asyncio.sleep(0.05)
    call.bye()
    await ended(leg)
    await office.idle()

    anna.script = Script("reject", status=486)
    busy = bernd.dial("101")
    with pytest.raises(CallFailed):
        async with asyncio.timeout(3):
            await busy.wait_answered()
    await office.idle()

    answered, rejected = await cdr.records()
    assert call.invite is not None and answered.call_id == call.invite.call_id
    assert (answered.caller, answered.source_trunk, answered.dialled) == ("102", None, "101")
    assert (answered.destination_kind, answered.destination_id) == ("employee", "101")
    assert answered.answered_by == "101" and answered.answered_contact is not None
    assert answered.answered_contact.startswith("sip:101@127.0.0.1:")
    assert answered.disposition is Disposition.ANSWERED and answered.status is None
    assert answered.answered_at is not None
    assert answered.started_at <= answered.answered_at < answered.ended_at
    assert answered.ended_at - answered.answered_at >= 0.05
    assert answered.digits == ""

    assert (rejected.disposition, rejected.status, rejected.answered_by) == (Disposition.BUSY, 486, None)
    assert rejected.answered_at is None


async def test_greeting_call_rows_with_digits_default_and_hang_up(
    office: Office, cdr: SqliteCdrStore
) -> None:
    anna = await office.phone("101")
    bernd = await office.phone("102")

    call, rtp, where = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)
    await send_digits(rtp, "101", where)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    await ended(leg)
    await office.idle()

    call, _, _ = await answered_anchored(office, SHORT)  # no digits: the default, 102
    leg = await bernd.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    await ended(call)
    await office.idle()

    call, rtp, _ = await answered_anchored(office, GREETING)  # hangs up during the greeting
    await rtp.wait_for(lambda p: p.payload_type == 0)
    call.bye()
    await ended(call)
    await office.idle()

    dialled_ext, default, hung_up = await cdr.records()
    assert dialled_ext.caller == "sip:+4989123456@provider.example"
    assert (dialled_ext.source_trunk, dialled_ext.dialled) == ("provider", GREETING)
    assert (dialled_ext.destination_kind, dialled_ext.destination_id) == ("employee", "101")
    assert (dialled_ext.digits, dialled_ext.answered_by) == ("101", "101")
    assert dialled_ext.disposition is Disposition.ANSWERED

    assert (default.dialled, default.digits) == (SHORT, "")
    assert (default.destination_kind, default.destination_id, default.answered_by) == (
        "employee",
        "102",
        "102",
    )
    assert default.disposition is Disposition.ANSWERED

    assert (hung_up.destination_kind, hung_up.destination_id) == ("number", GREETING)
    assert hung_up.disposition is Disposition.CANCELLED and hung_up.answered_at is None


async def test_trunk_call_to_a_direct_number_and_a_group_call_rows(
    office: Office, cdr: SqliteCdrStore
) -> None:
    """Flow 2 (a number's default employee) and flow 4 (a group whose first member does not answer)."""
    await office.phone("101", Script("ignore"))
    bernd = await office.phone("102")

    call = office.provider.dial(DIRECT, sdp("provider", 42000))  # rings 101, who never answers
    await asyncio.sleep(0.3)
    call.bye()  # the customer gives up
    await ended(call)
    await office.idle()

    call = office.provider.dial(GROUP, sdp("provider", 42000))  # in turn: 101 (no answer), then 102
    await answered(call)
    leg = await bernd.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    await ended(leg)
    await office.idle()

    direct, group = await cdr.records()
    assert (direct.source_trunk, direct.dialled) == ("provider", DIRECT)
    assert (direct.destination_kind, direct.destination_id) == ("employee", "101")
    assert direct.disposition is Disposition.CANCELLED and direct.answered_by is None

    assert (group.dialled, group.destination_kind, group.destination_id) == (GROUP, "group", "200")
    assert group.answered_by == "102" and group.disposition is Disposition.ANSWERED
    assert group.answered_at is not None and group.started_at < group.answered_at <= group.ended_at


async def test_call_records_are_the_owners_alone(tmp_path: Path) -> None:
    """Who called whom is nobody else's business: the CDR file (and its WAL companions) is created 0600 and
    a folder made for it 0700, whatever the umask."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "cdr.sqlite3"
        store = SqliteCdrStore(path)
        store.write(record("a"))
        assert len(await store.records()) == 1
        for name in ("cdr.sqlite3", "cdr.sqlite3-wal", "cdr.sqlite3-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        await store.close()
    finally:
        os.umask(old)
