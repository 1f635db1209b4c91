"""Call transfer (REFER, RFC 3515; RFC 5589 §6; Replaces, RFC 3891) end to end on the call-flow harness:
simulated phones send REFER inside their call through the B2BUA; what they see on the wire is checked (202,
NOTIFY with message/sipfrag, the target's INVITE, the re-INVITE that connects the transferee, BYE), and the
media that flows after."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import attrs
import pytest
import test_flows
from harness import CORE, RtpSink, answered, ended, event_of, network
from phones import Phone, Script, sdp
from test_flows import DIRECT, SHORT, Office
from test_midcall import audio_in, direction, exchange, with_direction
from test_server import copy_office

from durchwahl.media.sdp import parse_sdp
from durchwahl.routing.calls.media_anchor import media_address
from durchwahl.routing.cdr import SCHEMA_VERSION, CallRecord, Disposition, InMemoryCdrStore, SqliteCdrStore
from durchwahl.routing.demo import Provider as DemoProvider
from durchwahl.routing.events import CallFact, CallTransferred, DigitSent
from durchwahl.routing.resolver import Resolver
from durchwahl.routing.server import Server
from durchwahl.routing.transfer import (
    ALLOW,
    AttendedTarget,
    ReferRefused,
    ReferTarget,
    Replaces,
    Transfers,
    parse_refer,
    parse_replaces,
)
from durchwahl.sipcore import Endpoint
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteConfirmed,
    ReinviteReceived,
    SessionEvent,
    TerminationReason,
)
from durchwahl.sipcore.ua import Call, IncomingCall, OutgoingCall
from durchwahl.sipcore.uri import SipUri

flows_office = test_flows.office  # the fixture: an office, a provider trunk and phones on the harness
pytestmark = pytest.mark.virtual_time

#: What the simulated phones take: NOTIFY besides the usual (the transferor's side of RFC 3515).
PHONE_CORE = CoreConfig(
    allowed_methods=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "NOTIFY")
)

ANSWER = Script("answer")
MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


@pytest.fixture
def office(flows_office: Office) -> Office:
    """test_flows' office, its endpoint taking REFER (the server's list of methods has it)."""
    flows_office.b2bua.ua.endpoint.core = attrs.evolve(CORE, allowed_methods=(*CORE.allowed_methods, "REFER"))
    return flows_office


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


def replacing(user: str, dialog: Call) -> str:
    """A Refer-To for an attended transfer: ``user`` with a Replaces naming ``dialog`` as its phone sees it
    (RFC 3891: the to-tag is the far end's tag, the from-tag the phone's own)."""
    ident = dialog.session.dialog_id
    assert ident is not None
    value = f"{ident.call_id};to-tag={ident.remote_tag};from-tag={ident.local_tag}"
    return f"<sip:{user}@office.example?Replaces={quote(value, safe='')}>"


def reinvited(wanted: str) -> Callable[[SessionEvent], bool]:
    return lambda e: isinstance(e, ReinviteReceived) and direction(e.offer) == wanted


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


async def direct_call(
    office: Office, anna: Phone, port: int
) -> tuple[OutgoingCall, IncomingCall, Watch, Watch]:
    """The provider calls DIRECT (not anchored: rings 101) with its RTP at ``port``; ``anna`` (101) answers.
    The caller's leg and 101's, and a watch on each (the caller answers re-INVITEs with its own SDP), once
    101's leg is confirmed."""
    call = office.provider.dial(DIRECT, sdp("provider", port))
    await answered(call)
    leg = await anna.next_call()
    caller = Watch(call, lambda offer: sdp("provider", port))
    transferor = Watch(leg)
    await transferor.wait_for(lambda e: isinstance(e, Confirmed))
    return call, leg, caller, transferor


def watched(call: OutgoingCall, rtp: RtpSink, leg: IncomingCall) -> tuple[Watch, Watch]:
    """Watches on an :func:`anchored` call: the caller's (answering re-INVITEs in the mirrored direction)
    and the transferor's (102's leg)."""
    return Watch(call, mirrored(sdp("provider", rtp.port))), Watch(leg)


async def settle(office: Office, *watches: Watch) -> None:
    """Waits until the office has no calls left, then stops the ``watches``."""
    await office.idle()
    for watch in watches:
        watch.close()


async def hang_up(office: Office, call: Call, far_end: Call, *watches: Watch) -> None:
    """``call``'s phone hangs up: waits for ``far_end`` (the leg it talks to) to end, then :func:`settle`."""
    call.bye()
    await ended(far_end)
    await settle(office, *watches)


async def internal_call(anna: Phone, bernd: Phone) -> tuple[OutgoingCall, IncomingCall]:
    """``anna`` (101) calls 102, ``bernd`` answers: the two legs."""
    call = anna.dial("102")
    await answered(call)
    return call, await bernd.next_call()


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
        from durchwahl.sipcore import parse_message

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
    attended = parse_refer(
        request(("Refer-To", "<sip:103@office.example?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>"))
    )
    assert isinstance(attended, AttendedTarget) and attended.label == "103" and attended.subscribe
    assert attended.replaces == Replaces("abc@h", "1", "2")
    assert parse_replaces("x; from-tag=b ;to-tag=a;early-only") == Replaces("x", "a", "b", early_only=True)
    refusals = {
        (): 400,
        (("Refer-To", "<sip:103@office.example>"), ("Refer-To", "<sip:104@office.example>")): 400,
        (("Refer-To", "<sip:103@office"),): 400,
        (("Refer-To", "<http://example.com/>"),): 400,
        (("Refer-To", "<sip:office.example>"),): 484,
        (("Refer-To", "<sip:103@office.example?Replaces=abc%3Bto-tag%3D1>"),): 400,
        (("Refer-To", "<sip:103@office.example?Replaces=a%3Bto-tag%3D1%3Bfrom-tag%3D2&Replaces=b>"),): 400,
        (("Refer-To", "<sip:103@office.example;method=BYE>"),): 403,
    }
    for headers, status in refusals.items():
        refused = parse_refer(request(*headers))
        assert isinstance(refused, ReferRefused) and refused.status == status, (headers, refused)


# ---------------------------------------------------------------------------------- successful transfers


async def test_callee_transfers_an_anchored_trunk_call_and_the_held_caller_is_resumed_with_the_target(
    office: Office,
) -> None:
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
    await settle(office, caller, transferor)
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
    anna, _ = await phone(office, "101")
    bernd, _ = await phone(office, "102")
    carla, _ = await phone(office, "103")
    call, at_bernd = await internal_call(anna, bernd)
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
    await settle(office, callee, transferor)


async def test_refer_sub_false_gets_no_notify_and_a_transferor_that_stays_gets_our_bye(
    office: Office, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Transfers, "bye_after", 0.3)
    anna, _ = await phone(office, "101")
    carla, _ = await phone(office, "103")
    call, leg, caller, transferor = await direct_call(office, anna, 42100)

    refer(leg, "<sip:103@office.example>", ("Refer-Sub", "false"))
    accepted = await transferor.wait_for(lambda e: isinstance(e, DialogResponseReceived))
    assert isinstance(accepted, DialogResponseReceived) and accepted.response.status == 202
    assert accepted.response.get("refer-sub") == "false"  # RFC 4488: no subscription, no NOTIFY
    at_carla = await carla.next_call()
    await event_of(at_carla, Confirmed)
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE  # after bye_after, from us
    assert transferor.notifies == []
    assert caller.reinvite_offers() == [carla.sdp]
    await hang_up(office, call, at_carla, caller, transferor)


async def test_transfer_to_a_ring_group_rings_the_members_but_not_the_transferor(office: Office) -> None:
    """Group 200 rings 101, then 102 (in turn); 101 is the transferor, busy in this call: 102 rings first."""
    anna, _ = await phone(office, "101")
    bernd, _ = await phone(office, "102")
    call, leg, caller, transferor = await direct_call(office, anna, 42120)
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
    await hang_up(office, call, at_bernd, caller, transferor)


async def test_transferor_hanging_up_right_after_the_202_leaves_the_transferee_for_the_target(
    office: Office,
) -> None:
    call, rtp, where, leg, _, _ = await anchored(office)
    carla, carla_rtp = await phone(office, "103", Script("answer", delay=0.5))
    caller, transferor = watched(call, rtp, leg)
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
    await hang_up(office, call, at_carla, caller, transferor)


async def test_transfer_to_an_external_number_goes_out_through_the_trunk_with_its_post_dial_digits(
    office: Office,
) -> None:
    cdr = InMemoryCdrStore()
    office.b2bua.cdr = cdr
    facts = facts_of(office)
    # The provider's side of calls out: answers them at once.
    client = await DemoProvider(transports=network().transports).start()
    try:
        point_trunk_at(office, client.port)
        call, rtp, where, leg, _, _ = await anchored(office)
        caller, transferor = watched(call, rtp, leg)
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
        await hang_up(office, call, out, caller, transferor)
    finally:
        await client.close()
    (record,) = cdr.records
    assert (record.destination_kind, record.destination_id) == ("external", "+49891234567")
    assert record.answered_by == "+49891234567" and record.transferred_by == "102"


async def test_employee_transfers_the_client_of_a_click_to_call_to_a_colleague(office: Office) -> None:
    """The caller's side of an anchored call is replaced: the target takes the employee's RTP side."""
    client = await DemoProvider(transports=network().transports).start()
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
    facts = facts_of(office)
    call, rtp, where, leg, bernd, bernd_rtp = await anchored(office)
    if registered:
        await phone(office, "103", Script("reject", status=486))
    caller, transferor = watched(call, rtp, leg)
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
    await settle(office, caller, transferor)
    transferred = [f for f in facts if isinstance(f, CallTransferred)]
    assert [f.status for f in transferred] == [486 if registered else 480] * 2
    assert not transferred[0].answered


# ------------------------------------------------------------------------------------------ refusals


async def test_refer_from_the_trunk_and_unusable_refers_are_refused_and_the_call_goes_on(
    office: Office,
) -> None:
    call, rtp, _, leg, _, _ = await anchored(office)
    caller, transferor = watched(call, rtp, leg)

    async def answered_with(leg: Call, watch: Watch, *headers: tuple[str, str]) -> int:
        watch.events.clear()
        leg.send_request("REFER", headers=headers)
        return await watch.response("REFER")

    # A provider cannot re-route our calls.
    assert await answered_with(call, caller, ("Refer-To", "<sip:103@office.example>")) == 403
    assert await answered_with(leg, transferor) == 400
    assert await answered_with(leg, transferor, ("Refer-To", "<sip:103@office.example?Replaces=x>")) == 400
    assert await answered_with(leg, transferor, ("Refer-To", "<sip:199@office.example>")) == 404
    assert transferor.notifies == [] and caller.notifies == []
    assert not call.terminated and not leg.terminated
    await hang_up(office, call, leg, caller, transferor)


async def test_a_second_refer_while_one_rings_is_491_and_the_call_ending_stops_the_transfer(
    office: Office,
) -> None:
    facts = facts_of(office)
    call, rtp, _, leg, _, _ = await anchored(office)
    carla, _ = await phone(office, "103", Script("ignore"))  # rings for ever
    caller, transferor = watched(call, rtp, leg)
    refer(leg, "<sip:103@office.example>")
    at_carla = await carla.next_call()
    transferor.events.clear()
    refer(leg, "<sip:101@office.example>")
    assert await transferor.response("REFER") == 491
    call.bye()  # the transferee leaves while the target rings: everything ends
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(at_carla)).reason is TerminationReason.CANCELLED
    await settle(office, caller, transferor)
    (transferred,) = [f for f in facts if isinstance(f, CallTransferred)]
    assert transferred.status == 487


# ------------------------------------------------------------------------------- attended transfers


async def test_attended_transfer_connects_the_held_customer_with_the_consulted_colleague(
    office: Office,
) -> None:
    """Call 1 is anchored (a customer through the greeting to 102), call 2 is not (102 dialled 103): 103 is
    not rung again; a re-INVITE in its own dialog offers it a port of ours, and the customer hears 103."""
    cdr = InMemoryCdrStore()
    office.b2bua.cdr = cdr
    facts = facts_of(office)
    call, rtp, where, leg, bernd, _ = await anchored(office)
    carla, carla_rtp = await phone(office, "103")
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    leg.reinvite(body=with_direction(bernd.sdp, "sendonly"))  # 102 holds the customer …
    await event_of(leg, ReinviteAnswered)
    await caller.wait_for(reinvited("sendonly"))
    consult = bernd.dial("103")  # … and calls 103
    await answered(consult)
    at_carla = await carla.next_call()
    target = Watch(at_carla, mirrored(carla.sdp))
    await target.wait_for(lambda e: isinstance(e, Confirmed))
    consulting = Watch(consult)

    transferor = Watch(leg)
    refer(leg, replacing("103", consult))
    assert await transferor.response("REFER") == 202
    await transferor.notify(b"SIP/2.0 100 Trying\r\n")
    offer = await target.wait_for(lambda e: isinstance(e, ReinviteReceived))
    assert isinstance(offer, ReinviteReceived) and direction(offer.offer) == "sendrecv"
    carla_to = media_address(parse_sdp(offer.offer))
    office_b = media_address(parse_sdp(leg.request.body))
    assert carla_to is not None and carla_to not in (where, office_b)  # an anchor of call 1 for 103
    done = await transferor.notify(b"SIP/2.0 200 OK\r\n")
    assert done.get("subscription-state") == "terminated;reason=noresource"
    assert (await ended(consult)).reason is TerminationReason.REMOTE_BYE  # our BYE ends 102's call 2
    leg.bye()
    assert (await ended(leg)).reason is TerminationReason.LOCAL_BYE

    await caller.wait_for(reinvited("sendrecv"))  # the customer is resumed, towards 103
    await asyncio.sleep(0.1)
    await exchange(rtp, where, carla_rtp, carla_to)
    assert audio_in(rtp) > 0 and audio_in(carla_rtp) > 0
    assert carla.calls.empty() and not at_carla.terminated  # nobody rang 103 again
    assert office.b2bua.busy == {"103": 1}
    call.bye()
    assert (await ended(at_carla)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    assert not office.b2bua.bridged  # the dialog index empties with the calls
    for watch in (caller, target, consulting, transferor):
        watch.close()
    assert call.invite is not None
    transfers = [f for f in facts if isinstance(f, CallTransferred)]
    assert transfers == [
        CallTransferred(call.invite.call_id, "102", "103", "employee", "103", 200, attended=True)
    ]
    consultation, transferred = cdr.records
    assert consultation.call_id == consult.call_id and consultation.caller == "102"
    assert consultation.answered_by == "103" and consultation.disposition is Disposition.ANSWERED
    assert consultation.transferred_by is None
    assert transferred.call_id == call.invite.call_id and transferred.answered_by == "103"
    assert transferred.transferred_by == "102"
    assert (transferred.destination_kind, transferred.destination_id) == ("employee", "103")


@pytest.mark.parametrize("both_held", [False, True])
async def test_attended_transfer_between_two_anchored_calls_moves_the_media_without_any_invite(
    office: Office, both_held: bool
) -> None:
    """Two customers through the greeting, both answered by 102: the second customer's RTP session joins
    the first one's relay, so no customer gets an INVITE; only a held one is resumed (the second with the
    origin its call gave it, the version counted up)."""
    facts = facts_of(office)
    call, rtp, where, leg, bernd, _ = await anchored(office)
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    leg.reinvite(body=with_direction(bernd.sdp, "sendonly"))
    await event_of(leg, ReinviteAnswered)
    await caller.wait_for(reinvited("sendonly"))
    rtp2 = await office.sink()
    second = office.provider.dial(SHORT, sdp("provider-2", rtp2.port))
    where2 = media_address(parse_sdp(await answered(second, timeout=5)))
    assert where2 is not None and where2 != where
    leg2 = await bernd.next_call(timeout=5)
    await event_of(leg2, Confirmed)
    caller2 = Watch(second, mirrored(sdp("provider-2", rtp2.port)))
    if both_held:
        leg2.reinvite(body=with_direction(bernd.sdp, "sendonly"))
        await event_of(leg2, ReinviteAnswered)
        await caller2.wait_for(reinvited("sendonly"))
    consulting = Watch(leg2)

    transferor = Watch(leg)
    refer(leg, replacing("103", leg2))  # the user part does not matter: Replaces names the call
    assert await transferor.response("REFER") == 202
    await transferor.notify(b"SIP/2.0 200 OK\r\n")
    assert (await ended(leg2)).reason is TerminationReason.REMOTE_BYE
    leg.bye()
    await ended(leg)
    await caller.wait_for(reinvited("sendrecv"))
    if both_held:
        await caller2.wait_for(reinvited("sendrecv"))
        held, resumed = (parse_sdp(offer).origin for offer in caller2.reinvite_offers())
        assert resumed.session_id == held.session_id
        assert resumed.session_version == held.session_version + 1
    await asyncio.sleep(0.1)
    await exchange(rtp, where, rtp2, where2)  # each customer keeps sending to its own anchor
    assert audio_in(rtp) > 0 and audio_in(rtp2) > 0
    assert len(caller2.reinvite_offers()) == (2 if both_held else 0) and not second.terminated
    assert not office.b2bua.busy
    second.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    assert not office.b2bua.bridged
    for watch in (caller, caller2, consulting, transferor):
        watch.close()
    assert call.invite is not None
    (transferred,) = [f for f in facts if isinstance(f, CallTransferred)]
    assert transferred == CallTransferred(
        call.invite.call_id, "102", "+4989123456", "external", "+4989123456", 200, attended=True
    )


@pytest.mark.parametrize("refer_in", ["held call", "consultation"])
async def test_attended_transfer_of_internal_calls_hands_the_sdp_across(
    office: Office, refer_in: str
) -> None:
    """Not anchored (RFC 3725 flow I): the replaced party gets an offerless re-INVITE, its offer goes to the
    transferee in a re-INVITE and the answer back in the ACK. Some phones send the REFER in the held call,
    others in the consultation: the call the REFER came in survives."""
    anna, _ = await phone(office, "101")
    bernd, _ = await phone(office, "102")
    carla, _ = await phone(office, "103")
    call, at_bernd = await internal_call(anna, bernd)
    consult = bernd.dial("103")
    await answered(consult)
    at_carla = await carla.next_call()
    watches = {
        "anna": Watch(call, lambda offer: anna.sdp),
        "carla": Watch(at_carla, lambda offer: carla.sdp),
        "held": Watch(at_bernd),
        "consultation": Watch(consult),
    }
    await watches["held"].wait_for(lambda e: isinstance(e, Confirmed))
    await watches["carla"].wait_for(lambda e: isinstance(e, Confirmed))
    if refer_in == "held call":
        transferor, other = at_bernd, consult
        refer(at_bernd, replacing("103", consult))
        transferee, party = (watches["anna"], anna), (watches["carla"], carla)
    else:
        transferor, other = consult, at_bernd
        refer(consult, replacing("101", at_bernd))
        transferee, party = (watches["carla"], carla), (watches["anna"], anna)
    sender = watches["held" if refer_in == "held call" else "consultation"]
    assert await sender.response("REFER") == 202
    await sender.notify(b"SIP/2.0 200 OK\r\n")
    assert (await ended(other)).reason is TerminationReason.REMOTE_BYE

    party_watch, party_phone = party
    transferee_watch, transferee_phone = transferee
    confirmed = await party_watch.wait_for(lambda e: isinstance(e, ReinviteConfirmed))
    assert isinstance(confirmed, ReinviteConfirmed) and confirmed.ack.body == transferee_phone.sdp
    assert party_watch.reinvite_offers() == [b""]  # offerless
    assert transferee_watch.reinvite_offers() == [party_phone.sdp]
    transferor.bye()
    await ended(transferor)
    # The callee of the surviving call is busy with it (ring groups skip them), and the party brought.
    assert office.b2bua.busy == ({"103": 1} if refer_in == "held call" else {"101": 1, "103": 1})
    call.bye()  # 101 hangs up: 103's leg ends
    assert (await ended(at_carla)).reason is TerminationReason.REMOTE_BYE
    await settle(office, *watches.values())


async def test_attended_transfer_to_an_anchored_call_out_releases_its_anchor(office: Office) -> None:
    """The held call is internal (not anchored), the consultation a call out (anchored): the client gets an
    offerless re-INVITE, its own offer goes to the transferee, and media flows between them directly."""
    facts = facts_of(office)
    client = await DemoProvider(transports=network().transports).start()
    try:
        point_trunk_at(office, client.port)
        anna, _ = await phone(office, "101")
        bernd, _ = await phone(office, "102")
        call, at_bernd = await internal_call(anna, bernd)
        consult = bernd.dial("+49891234567")
        await answered(consult)
        out = await asyncio.wait_for(client.calls.get(), 3)
        client_sdp = sdp("provider", client.rtp.port)
        transferee = Watch(call, lambda offer: anna.sdp)
        party = Watch(out, lambda offer: client_sdp)
        consulting = Watch(consult)
        transferor = Watch(at_bernd)
        await transferor.wait_for(lambda e: isinstance(e, Confirmed))
        refer(at_bernd, replacing("+49891234567", consult))
        assert await transferor.response("REFER") == 202
        await transferor.notify(b"SIP/2.0 200 OK\r\n")
        assert (await ended(consult)).reason is TerminationReason.REMOTE_BYE
        confirmed = await party.wait_for(lambda e: isinstance(e, ReinviteConfirmed))
        assert isinstance(confirmed, ReinviteConfirmed) and confirmed.ack.body == anna.sdp
        assert party.reinvite_offers() == [b""] and transferee.reinvite_offers() == [client_sdp]
        at_bernd.bye()
        await ended(at_bernd)
        out.bye()  # the client hangs up: 101's leg ends
        assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
        await settle(office, transferee, party, consulting, transferor)
    finally:
        await client.close()
    (transferred,) = [f for f in facts if isinstance(f, CallTransferred)]
    assert (transferred.target, transferred.destination_kind, transferred.status) == (
        "+49891234567",
        "external",
        200,
    )


async def test_replaces_naming_no_call_of_ours_or_someone_elses_is_notified_and_the_calls_go_on(
    office: Office,
) -> None:
    facts = facts_of(office)
    call, rtp, _, leg, _, _ = await anchored(office)
    anna, _ = await phone(office, "101")
    carla, _ = await phone(office, "103")
    theirs = anna.dial("103")  # a call of 101 and 103, not 102's
    await answered(theirs)
    at_carla = await carla.next_call()
    caller, transferor = watched(call, rtp, leg)

    async def notified(target: str) -> bytes:
        transferor.events.clear()
        refer(leg, target)
        assert await transferor.response("REFER") == 202
        final = await transferor.wait_for(
            lambda e: (
                isinstance(e, DialogRequestReceived)
                and e.request.method == "NOTIFY"
                and (e.request.get("subscription-state") or "").startswith("terminated")
            )
        )
        assert isinstance(final, DialogRequestReceived)
        return final.request.body

    nowhere = "<sip:103@office.example?Replaces=nosuch%3Bto-tag%3Da%3Bfrom-tag%3Db>"
    assert await notified(nowhere) == b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n"
    assert (await notified(replacing("103", theirs))).startswith(b"SIP/2.0 403 ")
    assert (await notified(replacing("103", leg))).startswith(b"SIP/2.0 403 ")  # its own call
    await asyncio.sleep(0.1)
    assert not any(c.terminated for c in (call, leg, theirs, at_carla))
    for ended_call in (call, theirs):
        ended_call.bye()
    await ended(leg)
    await ended(at_carla)
    await settle(office, caller, transferor)
    transferred = [f for f in facts if isinstance(f, CallTransferred)]
    assert [(f.status, f.attended) for f in transferred] == [(481, True), (403, True), (403, True)]
    assert transferred[0].target == "103" and transferred[0].destination_kind is None


# ------------------------------------------------------------------------------ transferee ringback


@pytest.mark.parametrize("outcome", ["answer", "reject"])
async def test_the_transferee_hears_ringback_while_the_target_rings(office: Office, outcome: str) -> None:
    """Anchored: from the target's 180 on, the transferee gets our ringback (numbered on from the relay);
    the target's answer or refusal ends it."""
    call, rtp, where, leg, _, bernd_rtp = await anchored(office)
    carla, carla_rtp = await phone(office, "103", Script(outcome, delay=0.8, status=486))
    caller = Watch(call, mirrored(sdp("provider", rtp.port)))
    office_b = media_address(parse_sdp(leg.request.body))
    assert office_b is not None
    await asyncio.sleep(0.1)
    await exchange(rtp, where, bernd_rtp, office_b)
    last = max(p.sequence_number for p in rtp.packets if p.payload_type == 0)

    transferor = Watch(leg)
    refer(leg, "<sip:103@office.example>")
    assert await transferor.response("REFER") == 202
    await transferor.notify(b"SIP/2.0 180 Ringing\r\n")
    rtp.packets.clear()
    await asyncio.sleep(0.3)  # nobody sends: what the customer gets is the ringback
    ringback = [p for p in rtp.packets if p.payload_type == 0]
    assert len(ringback) >= 8
    assert any(p.payload != b"\xff" * 160 for p in ringback)  # the 425 Hz tone, not silence
    assert 0 < (ringback[0].sequence_number - last) % 65536 < 1000  # on from the relay, not back

    if outcome == "answer":
        await transferor.notify(b"SIP/2.0 200 OK\r\n")
        at_carla = await carla.next_call()
        await event_of(at_carla, Confirmed)
        carla_to = media_address(parse_sdp(at_carla.request.body))
        assert carla_to is not None
        rtp.packets.clear()
        await asyncio.sleep(0.2)
        assert rtp.packets == []  # the ringback stopped
        await exchange(rtp, where, carla_rtp, carla_to)
        assert audio_in(rtp) > 0 and audio_in(carla_rtp) > 0
    else:
        await transferor.notify(b"SIP/2.0 486 Busy Here\r\n")
        await asyncio.sleep(0.05)
        rtp.packets.clear()
        await asyncio.sleep(0.2)
        assert rtp.packets == []  # the ringback stopped …
        await exchange(rtp, where, bernd_rtp, office_b)  # … and 102 is relayed again
        assert audio_in(rtp) > 0 and audio_in(bernd_rtp) > 0
    call.bye()
    await settle(office, caller, transferor)


# ------------------------------------------------------------------------------------ the server


@pytest.mark.virtual_time(False)  # the assembled server, on loopback
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
    assert old.call_id == "old" and old.transferred_by is None and old.caller_name is None
    assert new.transferred_by == "101"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3  # and caller_name
    db.close()
