"""Click-to-call end to end on the call-flow harness: ``B2bua.originate`` rings the
employee's phone first and, once it answers, calls the client through the trunk (the simulated provider of
:mod:`test_crm_calls`, which challenges with 407 once), sends the post-dial digits as RFC 4733 events after
the client's answer, and bridges the two legs."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import test_crm_calls
from harness import ended, event_of
from phones import Script
from test_crm_calls import CLIENT, CRM_WITH_EXTENSION, TRUNK_USER, Office, events_in, wait_until

from durchwahl.media.dtmf_rfc4733 import parse_telephone_event
from durchwahl.routing.cdr import Disposition
from durchwahl.routing.events import CallStarted
from durchwahl.sipcore.session import Confirmed, TerminationReason

office = test_crm_calls.office  # the fixture: the office, the provider trunk and its RTP socket
pytestmark = pytest.mark.virtual_time  # the call-flow harness: a memory network and a virtual clock


async def test_originate_rings_the_employee_then_calls_the_client_and_bridges(office: Office) -> None:
    anna, _ = await office.anna()
    provider = office.provider
    assert provider.rtp is not None
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    task = asyncio.create_task(office.b2bua.originate("101", CRM_WITH_EXTENSION))

    # Anna's phone rings first (our INVITE with an anchored offer) and answers; only then the trunk.
    async with asyncio.timeout(3):
        leg = await anna.calls.get()
    invite = leg.request
    assert invite.from_.uri.user == CLIENT  # type: ignore[union-attr]
    assert b"m=audio" in invite.body and b"127.0.0.1" in invite.body
    client = await provider.next_call()

    first, second = provider.invites  # 407 answered with the trunk's credentials
    assert first.request.call_id == second.request.call_id
    assert TRUNK_USER in (second.request.get("proxy-authorization") or "")
    assert str(client.request.uri) == f"sip:{CLIENT}@127.0.0.1:{provider.port}"
    assert client.request.call_id != invite.call_id
    assert invite.body.split(b"m=audio ")[1][:5] not in client.request.body  # each leg its own port

    await event_of(client, Confirmed)  # our ACK: only now the digits start
    rtp = provider.rtp

    def ended_events() -> set[int]:
        return {
            p.timestamp for p in rtp.packets if p.payload_type == 101 and parse_telephone_event(p.payload).end
        }

    await wait_until(lambda: len(ended_events()) == 3)
    assert events_in(rtp.packets) == "105"
    assert office.b2bua.busy == {"101": 1}

    leg.bye()  # Anna hangs up: the client's leg ends too
    assert (await ended(client)).reason is TerminationReason.REMOTE_BYE
    async with asyncio.timeout(3):
        record = await task
    await office.idle()
    assert office.cdr.records == [record]
    assert record.disposition is Disposition.ANSWERED
    assert (record.caller, record.dialled) == ("101", CRM_WITH_EXTENSION)
    assert (record.destination_kind, record.destination_id, record.answered_by) == (
        "external",
        CLIENT,
        CLIENT,
    )
    assert not office.b2bua.busy
    # The embedding API sees a click-to-call like any call: started, ringing, answered, one digit_sent each.
    kinds = [type(f).__name__ for f in facts]
    assert kinds[:3] == ["CallStarted", "CallRinging", "CallAnswered"] and kinds.count("DigitSent") == 3
    started = facts[0]
    assert isinstance(started, CallStarted) and (started.caller, started.dialled) == (
        "101",
        CRM_WITH_EXTENSION,
    )


async def test_originate_gives_up_when_the_employee_does_not_answer(office: Office) -> None:
    anna = await office.phone("101", Script("ignore"))
    async with asyncio.timeout(5):
        record = await office.b2bua.originate("101", CRM_WITH_EXTENSION)  # ring_seconds=2
    (leg,) = [anna.calls.get_nowait()]
    assert (await ended(leg)).reason is TerminationReason.CANCELLED
    assert not office.provider.invites  # the client was never called
    await office.idle()
    assert office.cdr.records == [record]
    assert (record.disposition, record.status) == (Disposition.NO_ANSWER, 480)
    assert (record.destination_kind, record.destination_id) == ("employee", "101")


async def test_a_click_to_call_nobody_took_is_freed_without_the_cyclic_collector(office: Office) -> None:
    """Its event queue held ``(leg, event)`` for legs whose ``events`` is that queue: a cycle per leg that
    only the cyclic GC (run seldom in a server, ``routing.server.tune_gc``) would free, with the session."""
    await office.phone("101", Script("ignore"))
    gc.collect()
    gc.disable()
    try:
        task = asyncio.create_task(office.b2bua.originate("101", CRM_WITH_EXTENSION))  # ring_seconds=2
        await wait_until(lambda: bool(office.b2bua.ua.calls))
        refs = [weakref.ref(leg) for leg in office.b2bua.ua.calls]
        async with asyncio.timeout(5):
            await task
        await asyncio.sleep(0.2)
        assert refs and [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


async def test_originate_hangs_up_on_the_employee_when_the_client_is_busy(office: Office) -> None:
    anna, _ = await office.anna()
    office.provider.reject = 486
    task = asyncio.create_task(office.b2bua.originate("101", CRM_WITH_EXTENSION))
    async with asyncio.timeout(3):
        leg = await anna.calls.get()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    async with asyncio.timeout(3):
        record = await task
    assert (record.disposition, record.status) == (Disposition.BUSY, 486)


async def test_originate_refuses_what_it_cannot_call(office: Office) -> None:
    assert (await office.b2bua.originate("999", CLIENT)).status == 404
    assert (await office.b2bua.originate("101", "+49 89 abc")).status == 484
    assert (await office.b2bua.originate("101", "+49897654321")).status == 403  # not in the CRM
    assert (await office.b2bua.originate("101", CLIENT)).status == 480  # nobody registered
    assert len(office.cdr.records) == 4
    assert not office.provider.invites
