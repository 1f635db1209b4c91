"""Calls between employees end to end on the call-flow harness: simulated phones register and call each
other via the B2BUA, over the memory network on a virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Office, ended, event_of, failure
from phones import Script

from durchwahl.routing.calls.leg import passthrough
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.resolver import Resolver
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    Answered,
    Cancelled,
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ProvisionalReceived,
    ReinviteAnswered,
    ReinviteFailed,
    ReinviteReceived,
    TerminationReason,
)

PASSWORDS = {"101": "anna-secret", "102": "bernd-secret", "103": "carla-secret"}
ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'

pytestmark = pytest.mark.virtual_time  # the harness: a memory network and a virtual clock


def write_office(folder: Path) -> Path:
    lines = ["[server]", 'domain = "office.example"', 'listen = ["udp:127.0.0.1:5060"]', 'state_dir = "var"']
    for extension, password in PASSWORDS.items():
        lines += ["[[employee]]", f'extension = "{extension}"', f'name = "User {extension}"']
        lines += [f'password = "{password}"']
    path = folder / "office.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Office]:
    async with Office.open(load_directory(write_office(tmp_path)), ring_seconds=2.0) as result:
        yield result


async def test_every_device_rings_the_first_answer_wins_the_other_is_cancelled(office: Office) -> None:
    desk = await office.phone("101", Script("answer", delay=0.2))
    mobile = await office.phone("101", Script("ignore"))
    caller = await office.phone("102")
    call = caller.dial("101", headers=(("X-Crm-Ticket", "4711"), ("Subject", "Angebot")))
    async with asyncio.timeout(3):
        ok = await call.wait_answered()
    assert ok.status == 200 and ok.body == desk.sdp  # SDP passed through, media not anchored
    at_desk, at_mobile = await desk.next_call(), await mobile.next_call()
    cancelled = await event_of(at_mobile, Cancelled)
    assert isinstance(cancelled, Cancelled) and isinstance(cancelled.message, Request)
    assert cancelled.message.get("reason") == ELSEWHERE
    assert (await ended(at_mobile)).reason is TerminationReason.CANCELLED
    await event_of(at_desk, Confirmed)

    # Each B-leg is its own dialog; headers the B2BUA does not own pass through in order.
    a_invite, b_invite = call.invite, at_desk.request
    assert a_invite is not None
    assert b_invite.call_id != a_invite.call_id and b_invite.from_.tag != a_invite.from_.tag
    assert b_invite.call_id != at_mobile.request.call_id
    assert b_invite.body == caller.sdp
    assert b_invite.get("x-crm-ticket") == "4711" and b_invite.get("subject") == "Angebot"
    assert b_invite.from_.uri == a_invite.from_.uri and b_invite.from_.display_name == "Phone 102"
    assert b_invite.get("authorization") is None
    assert a_invite.max_forwards == 70 and b_invite.max_forwards == 69  # counted down: loops end
    assert [h for h in passthrough(b_invite) if h[0] in ("X-Crm-Ticket", "Subject")] == [
        ("X-Crm-Ticket", "4711"),
        ("Subject", "Angebot"),
    ]

    call.bye()
    assert (await ended(at_desk)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE
    async with asyncio.timeout(3):
        while office.b2bua.active:
            await asyncio.sleep(0.01)


async def test_both_answer_the_loser_gets_ack_and_bye(office: Office) -> None:
    first = await office.phone("101", Script("answer"))
    second = await office.phone("101", Script("answer"))
    caller = await office.phone("102")
    call = caller.dial("101")
    async with asyncio.timeout(3):
        await call.wait_answered()
    legs = [await first.next_call(), await second.next_call()]
    for leg in legs:  # both 2xx were ACKed
        await event_of(leg, Confirmed)
    async with asyncio.timeout(3):
        while not any(leg.terminated for leg in legs):
            await asyncio.sleep(0.01)
    (loser,) = [leg for leg in legs if leg.terminated]
    (winner,) = [leg for leg in legs if not leg.terminated]
    assert (await ended(loser)).reason is TerminationReason.REMOTE_BYE
    await asyncio.sleep(0.1)
    assert not winner.terminated and not call.terminated
    call.bye()
    assert (await ended(winner)).reason is TerminationReason.REMOTE_BYE


async def test_max_forwards_counts_down_across_the_b2bua_so_a_loop_ends_in_483(office: Office) -> None:
    callee = await office.phone("101")
    caller = await office.phone("102")
    call = caller.dial("101", headers=(("Max-Forwards", "2"),))
    async with asyncio.timeout(3):
        await call.wait_answered()
    assert (await callee.next_call()).request.max_forwards == 1
    call.bye()
    await ended(call)
    assert (await failure(caller.dial("101", headers=(("Max-Forwards", "0"),)))).status == 483


async def test_early_media_of_a_single_device_reaches_the_caller(office: Office) -> None:
    desk = await office.phone("101", Script("ignore"))
    caller = await office.phone("102")
    call = caller.dial("101")
    at_desk = await desk.next_call()
    at_desk.ring(183, body=desk.sdp, content_type="application/sdp")
    early = await event_of(call, ProvisionalReceived)
    while isinstance(early, ProvisionalReceived) and early.response.status == 180:
        early = await event_of(call, ProvisionalReceived)
    assert isinstance(early, ProvisionalReceived)
    assert early.response.status == 183 and early.response.body == desk.sdp
    at_desk.answer(body=desk.sdp)
    async with asyncio.timeout(3):
        assert (await call.wait_answered()).body == desk.sdp  # the same answer as the 183's (RFC 6337)
    call.bye()
    await ended(at_desk)


async def test_early_media_is_not_relayed_from_one_of_several_devices(office: Office) -> None:
    desk = await office.phone("101", Script("ignore"))
    await office.phone("101", Script("ignore"))
    caller = await office.phone("102")
    call = caller.dial("101")
    at_desk = await desk.next_call()
    at_desk.ring(183, body=desk.sdp, content_type="application/sdp")
    await asyncio.sleep(0.3)
    events = [call.events.get_nowait()[1] for _ in range(call.events.qsize())]
    provisional = [e.response for e in events if isinstance(e, ProvisionalReceived)]
    assert provisional and all(not r.body for r in provisional)  # the other device may answer
    call.bye()
    await ended(at_desk)


async def test_busy_everywhere_is_486(office: Office) -> None:
    await office.phone("101", Script("reject", status=486))
    await office.phone("101", Script("reject", status=486, delay=0.1))
    caller = await office.phone("102")
    assert (await failure(caller.dial("101"))).status == 486


async def test_nobody_registered_is_480(office: Office) -> None:
    caller = await office.phone("102")
    assert (await failure(caller.dial("103"))).status == 480


async def test_unknown_extension_is_404_and_unauthenticated_is_challenged(office: Office) -> None:
    caller = await office.phone("102")
    assert (await failure(caller.dial("999"))).status == 404
    challenged = await failure(caller.dial("101", authenticate=False))
    assert challenged.status == 401 and challenged.response is not None
    assert challenged.response.www_authenticate


async def test_no_answer_within_ring_time_is_480_and_devices_are_cancelled(office: Office) -> None:
    office.b2bua.ring_seconds = 0.5
    desk = await office.phone("101", Script("ignore"))
    mobile = await office.phone("101", Script("ignore"))
    caller = await office.phone("102")
    call = caller.dial("101")
    provisional = await event_of(call, ProvisionalReceived)
    assert isinstance(provisional, ProvisionalReceived) and provisional.response.status == 180
    assert (await failure(call)).status == 480
    for phone in (desk, mobile):
        leg = await phone.next_call()
        assert (await ended(leg)).reason is TerminationReason.CANCELLED


async def test_no_answer_goes_to_the_employees_fallback_but_busy_does_not(
    office: Office, tmp_path: Path
) -> None:
    text = write_office(tmp_path).read_text(encoding="utf-8")
    text = text.replace('name = "User 101"\n', 'name = "User 101"\nring_seconds = 5\nfallback = "103"\n', 1)
    (tmp_path / "office.toml").write_text(text, encoding="utf-8")
    directory = load_directory(tmp_path / "office.toml")
    assert directory.employees[0].fallback is not None and directory.employees[0].ring_seconds == 5
    office.b2bua.directory, office.b2bua.resolver = directory, Resolver(directory)

    anna = await office.phone("101", Script("ignore"))
    carla = await office.phone("103")
    caller = await office.phone("102")
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = caller.dial("101")
    at_anna = await anna.next_call()
    async with asyncio.timeout(8):
        ok = await call.wait_answered()
    assert ok.body == carla.sdp and loop.time() - started >= 4.9  # 101's own ring time, then 103
    assert (await ended(at_anna)).reason is TerminationReason.CANCELLED
    at_carla = await carla.next_call()
    await event_of(at_carla, Confirmed)
    call.bye()
    await ended(at_carla)

    await anna.close()
    office.phones.remove(anna)
    await office.phone("101", Script("reject", status=486))
    assert (await failure(caller.dial("101"))).status == 486  # busy is not diverted
    assert carla.calls.empty()


async def test_caller_cancel_reaches_every_device(office: Office) -> None:
    desk = await office.phone("101", Script("ignore"))
    mobile = await office.phone("101", Script("ignore"))
    caller = await office.phone("102")
    call = caller.dial("101")
    await event_of(call, ProvisionalReceived)
    call.cancel(headers=[("Reason", 'SIP;cause=487;text="Caller gave up"')])
    assert (await failure(call)).status == 487
    for phone in (desk, mobile):
        leg = await phone.next_call()
        cancelled = await event_of(leg, Cancelled)
        assert isinstance(cancelled, Cancelled) and isinstance(cancelled.message, Request)
        assert cancelled.message.get("reason") == 'SIP;cause=487;text="Caller gave up"'


async def test_bye_from_callee_ends_the_caller_leg(office: Office) -> None:
    desk = await office.phone("101", Script("answer"))
    caller = await office.phone("102")
    call = caller.dial("101")
    async with asyncio.timeout(3):
        await call.wait_answered()
    leg = await desk.next_call()
    await event_of(leg, Confirmed)
    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(leg)).reason is TerminationReason.LOCAL_BYE


async def test_bridged_call_relays_reinvite_and_info_both_ways(office: Office) -> None:
    desk = await office.phone("101", Script("answer"))
    caller = await office.phone("102")
    call = caller.dial("101")
    async with asyncio.timeout(3):
        await call.wait_answered()
    leg = await desk.next_call()
    await event_of(leg, Confirmed)

    hold = caller.sdp + b"a=sendonly\r\n"
    call.reinvite(body=hold, headers=[("X-Why", "hold")])
    received = await event_of(leg, ReinviteReceived)
    assert isinstance(received, ReinviteReceived) and received.offer == hold
    assert received.request.get("x-why") == "hold"
    leg.answer_reinvite(body=desk.sdp + b"a=recvonly\r\n")
    answered = await event_of(call, ReinviteAnswered)
    assert isinstance(answered, ReinviteAnswered) and answered.response.body.endswith(b"a=recvonly\r\n")

    leg.send_request("INFO", body=b"Signal=7\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    info = await event_of(call, DialogRequestReceived)
    assert (
        isinstance(info, DialogRequestReceived)
        and info.request.get("content-type") == "application/dtmf-relay"
    )
    call.respond(info.request, 200)
    reply = await event_of(leg, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200

    call.reinvite(body=caller.sdp)
    received = await event_of(leg, ReinviteReceived)
    leg.reject_reinvite(488)
    failed = await event_of(call, ReinviteFailed)
    assert isinstance(failed, ReinviteFailed) and failed.status == 488
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE


async def test_offerless_invite_gets_its_answer_through_the_acks(office: Office) -> None:
    desk = await office.phone("101", Script("answer"))
    caller = await office.phone("102")
    call = caller.dial("101", body=b"")
    answered = await event_of(call, Answered)
    assert isinstance(answered, Answered) and answered.answer_owed and answered.response.body == desk.sdp
    call.ack(body=caller.sdp)
    leg = await desk.next_call()
    assert leg.request.body == b""
    confirmed = await event_of(leg, Confirmed)
    assert isinstance(confirmed, Confirmed) and confirmed.ack.body == caller.sdp
    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
