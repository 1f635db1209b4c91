"""A greeting's caller whose chosen extension cannot be reached goes on to the number's default destination;
the CDR says what happened; a REFER during the greeting is answered at once. Over loopback, with the office
and simulated provider of test_flows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from harness import answered, ended, event_of, rtp_socket
from phones import Script, sdp
from test_flows import (
    DIRECT,
    GREETING,
    Office,
    Provider,
    answered_anchored,
    office,
    send_digits,
)
from test_server import copy_office

from durchwahl.routing.cdr import Disposition, InMemoryCdrStore
from durchwahl.routing.server import Server
from durchwahl.sipcore.session import Confirmed, DialogResponseReceived, TerminationReason

__all__ = ["office"]  # the fixture, used by name
pytestmark = pytest.mark.virtual_time  # the harness: a memory network and a virtual clock


async def test_an_extension_with_no_phone_goes_on_to_the_numbers_default(office: Office) -> None:
    """The defect seen: 103 (nobody registered, no fallback) dialled in the greeting hung the caller up."""
    office.b2bua.cdr = records = InMemoryCdrStore()
    bernd = await office.phone("102")  # the number's default; 103 has no phone at all
    call, rtp, where = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)
    await send_digits(rtp, "103", where)
    leg = await bernd.next_call(timeout=3.0)
    await event_of(leg, Confirmed)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    (record,) = records.records
    assert record.digits == "103"
    assert record.disposition is Disposition.ANSWERED and record.answered_by == "102"
    assert (record.destination_kind, record.destination_id) == ("employee", "102")


async def test_a_busy_extension_goes_on_to_the_numbers_default(office: Office) -> None:
    await office.phone("101", Script("reject", status=486))
    bernd = await office.phone("102")
    call, rtp, where = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)
    await send_digits(rtp, "101", where)
    leg = await bernd.next_call(timeout=3.0)
    await event_of(leg, Confirmed)
    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_when_the_default_cannot_be_reached_either_the_cdr_says_nobody_was_registered(
    office: Office,
) -> None:
    office.b2bua.cdr = records = InMemoryCdrStore()
    call, rtp, where = await answered_anchored(office, GREETING)  # neither 103 nor 102 has a phone
    await rtp.wait_for(lambda p: p.payload_type == 0)
    await send_digits(rtp, "103", where)
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE  # answered by us: hung up
    await office.idle()
    (record,) = records.records
    assert record.disposition is Disposition.UNAVAILABLE and record.status == 480
    assert record.digits == "103"


async def test_a_call_whose_employee_has_no_phone_is_unavailable_not_unanswered(office: Office) -> None:
    office.b2bua.cdr = records = InMemoryCdrStore()
    call = office.provider.dial(DIRECT, b"")  # rings 101, who has no phone registered
    await asyncio.wait_for(call.wait_ended(), 3)
    await office.idle()
    (record,) = records.records
    assert record.disposition is Disposition.UNAVAILABLE and record.status == 480


@pytest.mark.virtual_time(False)  # the assembled server, on sockets
async def test_a_refer_during_the_greeting_is_refused_at_once(tmp_path: Path) -> None:
    """Through the assembled server (which takes REFER in dialogs): it waited until the call ended."""
    async with Server(copy_office(tmp_path), listen=("udp:127.0.0.1:0",), control=False) as server:
        provider = await Provider(server.addresses[0][2]).start()
        try:
            rtp = await rtp_socket()
            call = provider.dial("+49301234567", sdp("provider", rtp.port))  # the example's greeting number
            await answered(call)
            loop = asyncio.get_running_loop()
            sent = loop.time()
            call.send_request("REFER", headers=[("Refer-To", "<sip:+4989999999@provider.example>")])
            reply = await event_of(call, DialogResponseReceived, timeout=2.0)
            assert isinstance(reply, DialogResponseReceived) and reply.response.status == 403
            assert loop.time() - sent < 1.0
            call.bye()
            await ended(call)
            assert rtp.transport is not None
            rtp.transport.close()
        finally:
            await provider.close()
