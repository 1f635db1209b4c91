"""Blind call transfer (REFER, RFC 3515; RFC 5589 §6) end to end over loopback: simulated phones send REFER
inside their call through the B2BUA; what they see on the wire is checked (202, NOTIFY with message/sipfrag,
the target's INVITE, the re-INVITE that connects the transferee, BYE), and the media that flows after."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import test_flows
from phones import Phone, Script, sdp
from test_flows import CORE, DIRECT, SHORT, Office, RtpSink, answered, ended, event_of
from test_midcall import audio_in, direction, exchange, with_direction
from test_server import copy_office

from media.sdp import parse_sdp
from routing.cdr import SCHEMA_VERSION, CallRecord, Disposition, InMemoryCdrStore, SqliteCdrStore
from routing.demo import Provider as DemoProvider
from routing.events import CallFact, CallTransferred, DigitSent
from routing.greeting_flow import media_address
from routing.resolver import Resolver
from routing.server import Server
from routing.transfer import ALLOW, ReferRefused, ReferTarget, Transfers, parse_refer
from sipcore import Endpoint
from sipcore.core import CoreConfig
from sipcore.message import Request
from sipcore.session import (
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteReceived,
    SessionEvent,
    TerminationReason,
)
from sipcore.ua import Call, IncomingCall, OutgoingCall
from sipcore.uri import SipUri

office = test_flows.office  # the fixture: an office, a provider trunk and phones on loopback

#: What the simulated phones take: NOTIFY besides the usual (the transferor's side of RFC 3515).
PHONE_CORE = CoreConfig(
    allowed_methods=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "NOTIFY")
)

ANSWER = Script("answer")
MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def takes_refer(office: Office) -> None:
    """The test office's endpoint takes REFER (the server's list of methods has it)."""
    office.b2bua.ua.endpoint.core = attrs.evolve(CORE, allowed_methods=(*CORE.allowed_methods, "REFER"))


async def phone(office: Office, extension: str, script: Script = ANSWER) -> tuple[Phone, RtpSink]:
    """A phone that takes NOTIFY, with its SDP pointing at a real RTP socket."""
    device = await office.phone(extension, script)
    device.endpoint.core = PHONE_CORE
    rtp = await office.sink()
    device.sdp = sdp(f"phone-{extension}", rtp.port)
    return device, rtp


class Watch:
    """Every event of one call leg, kept in order. NOTIFYs are answered 200 (the REFER-Issuer's part); with
    ``answer`` a re-INVITE is answered with ``answer(offer)``."""

    def __init__(self, call: Call, answer: Callable[[bytes], bytes] | None = None) -> None:
        self.call = call
        self.answer = answer
        self.events: list[SessionEvent] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            _, event = await self.call.events.get()
            self.events.append(event)
            if isinstance(event, DialogRequestReceived) and event.request.method == "NOTIFY":
                self.call.respond(event.request, 200)
            elif isinstance(event, ReinviteReceived) and self.answer is not None:
                self.call.answer_reinvite(body=self.answer(event.offer))

    async def wait_for(self, predicate: Callable[[SessionEvent], bool], timeout: float = 3.0) -> SessionEvent:
        """The first event so far or to come that ``predicate`` accepts."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((e for e in self.events if predicate(e)), None)
                if found is not None:
                    return found
                await asyncio.sleep(0.01)

    async def response(self, method: str) -> int:
        event = await self.wait_for(
            lambda e: isinstance(e, DialogResponseReceived) and e.response.cseq.method == method
        )
        assert isinstance(event, DialogResponseReceived)
        return event.response.status

    async def notify(self, status_line: bytes, timeout: float = 3.0) -> Request:
        """The NOTIFY whose sipfrag body starts with ``status_line``."""
        event = await self.wait_for(
            lambda e: (
                isinstance(e, DialogRequestReceived)
                and e.request.method == "NOTIFY"
                and e.request.body.startswith(status_line)
            ),
            timeout,
        )
        assert isinstance(event, DialogRequestReceived)
        return event.request

    @property
    def notifies(self) -> list[Request]:
        return [
            e.request
            for e in self.events
            if isinstance(e, DialogRequestReceived) and e.request.method == "NOTIFY"
        ]

    def reinvite_offers(self) -> list[bytes]:
        return [e.offer for e in self.events if isinstance(e, ReinviteReceived)]

    def close(self) -> None:
        self._task.cancel()


def refer(leg: Call, target: str, *extra: tuple[str, str]) -> Request:
    return leg.send_request("REFER", headers=[("Refer-To", target), *extra])


def mirrored(phone_sdp: bytes) -> Callable[[bytes], bytes]:
    """Answers an offer with ``phone_sdp`` in the mirrored direction (RFC 3264 §6.1)."""
    return lambda offer: with_direction(phone_sdp, MIRROR[direction(offer)])


async def anchored(
    office: Office,
) -> tuple[OutgoingCall, RtpSink, tuple[str, int], IncomingCall, Phone, RtpSink]:
    """The provider calls SHORT (greeting, no digits → 102 answers, media anchored): the caller's leg, its RTP
    socket and where the office receives it; 102's leg, phone and RTP socket."""
    bernd, bernd_rtp = await phone(office, "102")
    rtp = await office.sink()
    call = office.provider.dial(SHORT, sdp("provider", rtp.port))
    where = media_address(parse_sdp(await answered(call, timeout=5)))
    assert where is not None
    leg = await bernd.next_call(timeout=5)
    await event_of(leg, Confirmed)
    return call, rtp, where, leg, bernd, bernd_rtp


def point_trunk_at(office: Office, port: int) -> None:
    """Calls out go to ``port`` on 127.0.0.1 (a simulated provider that answers them)."""
    directory = office.b2bua.directory
    trunk = attrs.evolve(directory.trunks[0], port=port)
    office.b2bua.directory = attrs.evolve(directory, trunks=(trunk,))
    office.b2bua.resolver = Resolver(office.b2bua.directory)


def digits_sent(facts: list[CallFact]) -> list[str]:
    return [f.digit for f in facts if isinstance(f, DigitSent)]


def facts_of(office: Office) -> list[CallFact]:
    facts: list[CallFact] = []
    office.b2bua.on_event = facts.append
    return facts


# --------------------------------------------------------------------------------------- the REFER parsed


def test_parse_refer_takes_a_target_and_refuses_what_it_cannot_do() -> None:
    def request(*headers: tuple[str, str]) -> Request:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        text = (
            "REFER sip:server SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
            "From: <sip:102@office.example>;tag=1\r\nTo: <sip:x@office.example>;tag=2\r\n"
            f"Call-ID: c1\r\nCSeq: 5 REFER\r\n{lines}Content-Length: 0\r\n\r\n"
        )
        from sipcore import parse_message

        parsed = parse_message(text.encode())
        assert isinstance(parsed, Request)
        return parsed

    target = parse_refer(
        request(("r", "sip:103@office.example"), ("Referred-By", "<sip:102@office.example>"))
    )
    assert isinstance(target, ReferTarget) and target.dialled.digits == "103" and target.subscribe
    assert target.referred_by == "<sip:102@office.example>"
    tel = parse_refer(request(("Refer-To", "<tel:+49891234567>"), ("Refer-Sub", "false")))
    assert isinstance(tel, ReferTarget) and tel.dialled.digits == "49891234567" and not tel.subscribe
    refusals = {
        (): 400,
        (("Refer-To", "<sip:103@office.example>"), ("Refer-To", "<sip:104@office.example>")): 400,
        (("Refer-To", "<sip:103@office"),): 400,
        (("Refer-To", "<http://example.com/>"),): 400,
        (("Refer-To", "<sip:office.example>"),): 484,
        (("Refer-To", "<sip:103@office.example?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>"),): 501,
        (("Refer-To", "<sip:103@office.example;method=BYE>"),): 403,
    }
    for headers, status in refusals.items():
        refused = parse_refer(request(*headers))
        assert isinstance(refused, ReferRefused) and refused.status == status, (headers, refused)


# ---------------------------------------------------------------------------------- successful transfers


async def test_callee_transfers_an_anchored_trunk_call_and_the_held_caller_is_resumed_with_the_target(
    office: Office,
) -> None:
    takes_refer(office)
    cdr = InMemoryCdrStore()
    office.b2bua.cdr = cdr
    facts = facts_of(office)
    call, rtp, where, leg, bernd, _ = await anchored(office)
    carla, carla_rtp = await phone(office, "103", Script("answer", delay=0.3))
    assert call.invite is not None and leg.request.get("allow") is not None
    assert "REFER" in (leg.request.get("allow") or "")  # advertised to the phones

    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    # RFC 5589 §6: the transferor usually holds the transferee first.
    leg.reinvite(body=with_direction(bernd.sdp, "sendonly"))
    await event_of(leg, ReinviteAnswered)
    await caller.wait_for(lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == "sendonly")

    transferor = Watch(leg)
    refer(leg, "<sip:103@office.example>")
    assert await transferor.response("REFER") == 202
    trying = await transferor.notify(b"SIP/2.0 100 Trying\r\n")
    assert trying.get("event") == "refer"
    assert trying.get("subscription-state") == "active;expires=60"
    assert trying.get("content-type") == "message/sipfrag;version=2.0"

    at_carla = await carla.next_call()
    assert at_carla.request.from_.uri == call.invite.from_.uri  # the customer calls, as far as 103 sees
    assert at_carla.request.get("referred-by") == "<sip:102@office.example>"  # the transferor
    carla_to = media_address(parse_sdp(at_carla.request.body))
    office_b = media_address(parse_sdp(leg.request.body))
    assert carla_to is not None and carla_to not in (where, office_b)  # a new anchor for the target
    await transferor.notify(b"SIP/2.0 180 Ringing\r\n")

    done = await transferor.notify(b"SIP/2.0 200 OK\r\n")
    assert done.get("subscription-state") == "terminated;reason=noresource"
    leg.bye()  # the transferor hangs up after the final NOTIFY
    assert (await ended(leg)).reason is TerminationReason.LOCAL_BYE
    await event_of(at_carla, Confirmed)

    # The customer, held by 102, is resumed towards 103 and talks to 103 through the same anchor.
    await caller.wait_for(lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == "sendrecv")
    assert media_address(parse_sdp(caller.reinvite_offers()[-1])) == where
    await asyncio.sleep(0.1)
    await exchange(rtp, where, carla_rtp, carla_to)
    assert audio_in(rtp) > 0 and audio_in(carla_rtp) > 0
    assert not call.terminated
    assert office.b2bua.busy == {"103": 1}  # 102 is free for group calls again

    call.bye()
    assert (await ended(at_carla)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    caller.close()
    transferor.close()
    (record,) = cdr.records
    assert record.answered_by == "103" and record.transferred_by == "102"
    assert (record.destination_kind, record.destination_id) == ("employee", "103")
    assert record.disposition is Disposition.ANSWERED
    transfers = [f for f in facts if isinstance(f, CallTransferred)]
    assert (
        transfers == [CallTransferred(call.invite.call_id, "102", "103", "employee", "103", 200)]
        and transfers[0].answered
    )


async def test_caller_transfers_an_internal_call_and_the_target_offer_reaches_the_transferee(
    office: Office,
) -> None:
    """Not anchored (RFC 3725 flow I): the target gets an offerless INVITE, its offer goes to the transferee
    in a re-INVITE and the transferee's answer comes back to the target in the ACK."""
    takes_refer(office)
    anna, _ = await phone(office, "101")
    bernd, _ = await phone(office, "102")
    carla, _ = await phone(office, "103")
    call = anna.dial("102")
    await answered(call)
    at_bernd = await bernd.next_call()
    callee = Watch(at_bernd, lambda offer: bernd.sdp)
    await callee.wait_for(lambda e: isinstance(e, Confirmed))

    transferor = Watch(call)
    refer(call, "sip:103@office.example")  # addr-spec, as baresip writes it
    assert await transferor.response("REFER") == 202
    await transferor.notify(b"SIP/2.0 100 Trying\r\n")
    at_carla = await carla.next_call()
    assert at_carla.request.body == b""  # offerless
    assert at_carla.request.from_.display_name == "Bernd"
    assert at_carla.request.from_.uri == SipUri("sip", "102", None, "office.example")

    confirmed = await event_of(at_carla, Confirmed)
    assert isinstance(confirmed, Confirmed) and confirmed.ack.body == bernd.sdp  # the transferee's answer
    assert callee.reinvite_offers() == [carla.sdp]  # the target's offer, in our re-INVITE
    await transferor.notify(b"SIP/2.0 200 OK\r\n")
    call.bye()
    await ended(call)

    # 102 and 103 are bridged now: a hold from 103 reaches 102, and 102's BYE ends 103.
    at_carla.reinvite(body=with_direction(carla.sdp, "sendonly"))
    await callee.wait_for(lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == "sendonly")
    await event_of(at_carla, ReinviteAnswered)
    at_bernd.bye()
    assert (await ended(at_carla)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    callee.close()
    transferor.close()


async def test_refer_sub_false_gets_no_notify_and_a_transferor_that_stays_gets_our_bye(
    office: Office, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Transfers, "bye_after", 0.3)
    takes_refer(office)
    anna, _ = await phone(office, "101")
    carla, _ = await phone(office, "103")
    call = office.provider.dial(DIRECT, sdp("provider", 42100))  # not anchored: rings 101
    await answered(call)
    leg = await anna.next_call()
    caller = Watch(call, lambda offer: sdp("provider", 42100))
    transferor = Watch(leg)
    await transferor.wait_for(lambda e: isinstance(e, Confirmed))

    refer(leg, "<sip:103@office.example>", ("Refer-Sub", "false"))
    accepted = await transferor.wait_for(lambda e: isinstance(e, DialogResponseReceived))
    assert isinstance(accepted, DialogResponseReceived) and accepted.response.status == 202
    assert accepted.response.get("refer-sub") == "false"  # RFC 4488: no subscription, no NOTIFY
    at_carla = await carla.next_call()
    await event_of(at_carla, Confirmed)
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE  # after bye_after, from us
    assert transferor.notifies == []
    assert caller.reinvite_offers() == [carla.sdp]
    call.bye()
    await ended(at_carla)
    await office.idle()
    caller.close()
    transferor.close()


async def test_transfer_to_a_ring_group_rings_the_members_but_not_the_transferor(office: Office) -> None:
    """Group 200 rings 101, then 102 (in turn); 101 is the transferor, busy in this call: 102 rings first."""
    takes_refer(office)
    anna, _ = await phone(office, "101")
    bernd, _ = await phone(office, "102")
    call = office.provider.dial(DIRECT, sdp("provider", 42120))  # not anchored: rings 101
    await answered(call)
    leg = await anna.next_call()
    caller = Watch(call, lambda offer: sdp("provider", 42120))
    transferor = Watch(leg)
    await transferor.wait_for(lambda e: isinstance(e, Confirmed))
    refer(leg, "<sip:200@office.example>")
    assert await transferor.response("REFER") == 202
    at_bernd = await bernd.next_call()
    await transferor.notify(b"SIP/2.0 200 OK\r\n")
    await event_of(at_bernd, Confirmed)
    assert anna.calls.empty()  # the transferor's phones were not rung
    assert caller.reinvite_offers() == [bernd.sdp]
    assert office.b2bua.busy == {"102": 1}
    leg.bye()
    await ended(leg)
    call.bye()
    await ended(at_bernd)
    await office.idle()
    caller.close()
    transferor.close()


async def test_transferor_hanging_up_right_after_the_202_leaves_the_transferee_for_the_target(
    office: Office,
) -> None:
    takes_refer(office)
    call, rtp, where, leg, _, _ = await anchored(office)
    carla, carla_rtp = await phone(office, "103", Script("answer", delay=0.5))
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    transferor = Watch(leg)
    refer(leg, "<sip:103@office.example>")
    assert await transferor.response("REFER") == 202
    leg.bye()
    await ended(leg)
    at_carla = await carla.next_call()
    await event_of(at_carla, Confirmed)
    carla_to = media_address(parse_sdp(at_carla.request.body))
    assert carla_to is not None and not call.terminated
    await exchange(rtp, where, carla_rtp, carla_to)
    assert audio_in(rtp) > 0 and audio_in(carla_rtp) > 0
    call.bye()
    await ended(at_carla)
    await office.idle()
    caller.close()
    transferor.close()


async def test_transfer_to_an_external_number_goes_out_through_the_trunk_with_its_post_dial_digits(
    office: Office,
) -> None:
    takes_refer(office)
    cdr = InMemoryCdrStore()
    office.b2bua.cdr = cdr
    facts = facts_of(office)
    client = await DemoProvider().start()  # the provider's side of calls out: answers them at once
    try:
        point_trunk_at(office, client.port)
        call, rtp, where, leg, _, _ = await anchored(office)
        caller = Watch(call, mirrored(sdp("provider", rtp.port)))
        transferor = Watch(leg)
        refer(leg, "<sip:+49891234567;105@office.example>")
        assert await transferor.response("REFER") == 202
        await transferor.notify(b"SIP/2.0 200 OK\r\n")
        out = await asyncio.wait_for(client.calls.get(), 3)
        assert str(out.request.uri) == f"sip:+49891234567@127.0.0.1:{client.port}"
        assert out.request.get("referred-by") is None  # the office's internals stay inside
        leg.bye()
        async with asyncio.timeout(3):  # RFC 4733 events for 1, 0, 5 after the answer
            while client.rtp.digits() != ("105", 3) or len(sent := digits_sent(facts)) < 3:
                await asyncio.sleep(0.05)
        assert sent == ["1", "0", "5"]
        client_to = media_address(parse_sdp(out.request.body))
        assert client_to is not None and client_to != where
        await exchange(rtp, where, client.rtp, client_to)
        assert audio_in(rtp) > 0 and audio_in(client.rtp) > 0
        call.bye()
        await ended(out)
        await office.idle()
        caller.close()
        transferor.close()
    finally:
        await client.close()
    (record,) = cdr.records
    assert (record.destination_kind, record.destination_id) == ("external", "+49891234567")
    assert record.answered_by == "+49891234567" and record.transferred_by == "102"


async def test_employee_transfers_the_client_of_a_click_to_call_to_a_colleague(office: Office) -> None:
    """The caller's side of an anchored call is replaced: the target takes the employee's RTP side."""
    takes_refer(office)
    client = await DemoProvider().start()
    try:
        point_trunk_at(office, client.port)
        anna, _ = await phone(office, "101")
        carla, carla_rtp = await phone(office, "103")
        task = asyncio.create_task(office.b2bua.originate("101", "+49891234567"))
        at_anna = await anna.next_call()
        out = await asyncio.wait_for(client.calls.get(), 3)
        await event_of(at_anna, Confirmed)
        transferor = Watch(at_anna)
        refer(at_anna, "<sip:103@office.example>")
        assert await transferor.response("REFER") == 202
        at_carla = await carla.next_call()
        assert at_carla.request.from_.uri == SipUri("sip", "+49891234567", None, "office.example")
        await transferor.notify(b"SIP/2.0 200 OK\r\n")
        at_anna.bye()
        await event_of(at_carla, Confirmed)
        assert office.b2bua.busy == {"103": 1}
        client_to = media_address(parse_sdp(out.request.body))
        carla_to = media_address(parse_sdp(at_carla.request.body))
        assert client_to is not None and carla_to is not None
        await exchange(client.rtp, client_to, carla_rtp, carla_to)
        assert audio_in(client.rtp) > 0 and audio_in(carla_rtp) > 0
        out.bye()  # the client hangs up: 103's leg ends too
        assert (await ended(at_carla)).reason is TerminationReason.REMOTE_BYE
        async with asyncio.timeout(3):
            record = await task
        transferor.close()
    finally:
        await client.close()
    assert (record.caller, record.answered_by, record.transferred_by) == ("101", "103", "101")
    assert not office.b2bua.busy


# ------------------------------------------------------------------------------------- failed transfers


@pytest.mark.parametrize(
    ("registered", "status"), [(True, b"SIP/2.0 486 Busy Here"), (False, b"SIP/2.0 480 ")]
)
async def test_transfer_to_a_busy_or_unregistered_target_fails_and_the_call_stays_up(
    office: Office, registered: bool, status: bytes
) -> None:
    takes_refer(office)
    facts = facts_of(office)
    call, rtp, where, leg, bernd, bernd_rtp = await anchored(office)
    if registered:
        await phone(office, "103", Script("reject", status=486))
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    transferor = Watch(leg)
    refer(leg, "<sip:103@office.example>")
    assert await transferor.response("REFER") == 202
    failed = await transferor.notify(status)
    assert failed.get("subscription-state") == "terminated;reason=noresource"
    assert failed.get("event") == "refer"
    # RFC 3515 §2.4.6: the NOTIFYs of a second REFER in the dialog name it by its CSeq.
    transferor.events.clear()
    again = refer(leg, "<sip:103@office.example>")
    assert await transferor.response("REFER") == 202
    failed = await transferor.notify(status)
    assert failed.get("event") == f"refer;id={again.cseq.seq}"

    # The call is as it was: 102's hold and resume still reach the customer, media flows both ways.
    leg.reinvite(body=with_direction(bernd.sdp, "sendonly"))
    await caller.wait_for(lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == "sendonly")
    await transferor.wait_for(lambda e: isinstance(e, ReinviteAnswered))
    transferor.events.clear()
    leg.reinvite(body=bernd.sdp)
    await transferor.wait_for(lambda e: isinstance(e, ReinviteAnswered))
    await caller.wait_for(lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == "sendrecv")
    office_b = media_address(parse_sdp(leg.request.body))
    assert office_b is not None
    await asyncio.sleep(0.1)
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(rtp) > 0 and audio_in(bernd_rtp) > 0
    assert not call.terminated and not leg.terminated
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    caller.close()
    transferor.close()
    transferred = [f for f in facts if isinstance(f, CallTransferred)]
    assert [f.status for f in transferred] == [486 if registered else 480] * 2
    assert not transferred[0].answered


# ------------------------------------------------------------------------------------------ refusals


async def test_refer_from_the_trunk_and_unusable_refers_are_refused_and_the_call_goes_on(
    office: Office,
) -> None:
    takes_refer(office)
    call, rtp, _, leg, _, _ = await anchored(office)
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    transferor = Watch(leg)

    async def answered_with(leg: Call, watch: Watch, *headers: tuple[str, str]) -> int:
        watch.events.clear()
        leg.send_request("REFER", headers=headers)
        return await watch.response("REFER")

    # A provider cannot re-route our calls.
    assert await answered_with(call, caller, ("Refer-To", "<sip:103@office.example>")) == 403
    assert await answered_with(leg, transferor) == 400
    assert await answered_with(leg, transferor, ("Refer-To", "<sip:103@office.example?Replaces=x>")) == 501
    assert await answered_with(leg, transferor, ("Refer-To", "<sip:199@office.example>")) == 404
    assert transferor.notifies == [] and caller.notifies == []
    assert not call.terminated and not leg.terminated
    call.bye()
    await ended(leg)
    await office.idle()
    caller.close()
    transferor.close()


async def test_a_second_refer_while_one_rings_is_491_and_the_call_ending_stops_the_transfer(
    office: Office,
) -> None:
    takes_refer(office)
    facts = facts_of(office)
    call, rtp, _, leg, _, _ = await anchored(office)
    carla, _ = await phone(office, "103", Script("ignore"))  # rings for ever
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    transferor = Watch(leg)
    refer(leg, "<sip:103@office.example>")
    at_carla = await carla.next_call()
    transferor.events.clear()
    refer(leg, "<sip:101@office.example>")
    assert await transferor.response("REFER") == 491
    call.bye()  # the transferee leaves while the target rings: everything ends
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(at_carla)).reason is TerminationReason.CANCELLED
    await office.idle()
    caller.close()
    transferor.close()
    (transferred,) = [f for f in facts if isinstance(f, CallTransferred)]
    assert transferred.status == 487


# ------------------------------------------------------------------------------------ the server


async def test_the_server_announces_transferred_and_refuses_a_refer_outside_a_call(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    seen: list[CallTransferred] = []
    ended_calls: list[CallRecord] = []
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        server.events.on("transferred", seen.append)
        server.events.on("call_ended", ended_calls.append)
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port).start()
        bernd = await Phone("bernd", "bernd-102-secret", port).start()
        carla = await Phone("103", "carla-103-secret", port).start()
        anna.endpoint.core = PHONE_CORE
        watches: list[Watch] = []
        try:
            assert ALLOW.endswith("REFER") and "REFER" in server.endpoint.core.allowed_methods
            call = bernd.dial("101")
            async with asyncio.timeout(5):
                await call.wait_answered()
            at_anna = await anna.next_call()
            watches.append(Watch(call, lambda offer: bernd.sdp))
            transferor = Watch(at_anna)
            watches.append(transferor)
            refer(at_anna, "<sip:103@office.example>")
            assert await transferor.response("REFER") == 202
            await transferor.notify(b"SIP/2.0 200 OK\r\n", timeout=5)
            at_anna.bye()
            at_carla = await carla.next_call()
            call.bye()
            await ended(at_carla)
            async with asyncio.timeout(3):
                while not ended_calls:
                    await asyncio.sleep(0.02)

            # REFER outside any dialog: there is nothing to transfer.
            async with Endpoint() as stranger:
                await stranger.listen("udp:127.0.0.1:0")
                flow = stranger.flow_to("127.0.0.1", port)
                lone = stranger.make_request(
                    "REFER",
                    "sip:101@office.example",
                    flow,
                    from_="<sip:stranger@example.com>",
                    to="<sip:101@office.example>",
                    headers=[("Refer-To", "<sip:103@office.example>")],
                )
                assert (await stranger.request(lone, flow)).status == 403
        finally:
            for watch in watches:
                watch.close()
            for device in (anna, bernd, carla):
                await device.close()
    (transferred,) = seen
    assert (transferred.transferor, transferred.target, transferred.status) == ("101", "103", 200)
    assert (transferred.destination_kind, transferred.destination_id) == ("employee", "103")
    (record,) = ended_calls
    assert record.answered_by == "103" and record.transferred_by == "101" and record.caller == "102"


# ---------------------------------------------------------------------------------------- the CDR file


async def test_a_version_1_cdr_file_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "cdr.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE cdr (id INTEGER PRIMARY KEY, call_id TEXT NOT NULL, caller TEXT NOT NULL,"
            " source_trunk TEXT, dialled TEXT NOT NULL, destination_kind TEXT, destination_id TEXT,"
            " answered_by TEXT, answered_contact TEXT, digits TEXT NOT NULL, started_at REAL NOT NULL,"
            " answered_at REAL, ended_at REAL NOT NULL, disposition TEXT NOT NULL, status INTEGER);"
            "INSERT INTO cdr (call_id, caller, dialled, digits, started_at, ended_at, disposition)"
            " VALUES ('old', '101', '102', '', 1.0, 2.0, 'answered');"
            "PRAGMA user_version = 1;"
        )
    db.close()
    store = SqliteCdrStore(path)
    try:
        store.write(
            CallRecord(
                "new", "102", "101", 3.0, 4.0, Disposition.ANSWERED, answered_by="103", transferred_by="101"
            )
        )
        old, new = await store.records()
    finally:
        await store.close()
    assert old.call_id == "old" and old.transferred_by is None
    assert new.transferred_by == "101"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()
