"""Media anchored by default (``[server] anchor_media``, what ``durchwahl serve`` does) for calls to employees
and groups too — internal, trunk and group calls end to end on the call-flow harness, RTP through the real
media code: every leg is offered the office's address, and RTP goes phone → office → phone, renumbered
(NAT-safe: the office answers where packets come from)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import test_flows
from harness import RtpSink, answered, ended, event_of
from phones import Phone, Script, sdp
from test_flows import DIRECT, GROUP, Office, audio

from durchwahl.media.sdp import parse_sdp
from durchwahl.routing.calls.media_anchor import media_address
from durchwahl.sipcore.session import Answered, Confirmed, TerminationReason

office = test_flows.office  # the fixture: an office, a provider trunk and phones on the harness
pytestmark = pytest.mark.virtual_time


@pytest.fixture
async def anchored(office: Office) -> AsyncIterator[Office]:
    office.b2bua.anchor_media = True
    yield office


async def phone_with_rtp(
    office: Office, extension: str, script: Script = test_flows.ANSWER
) -> tuple[Phone, RtpSink]:
    phone = await office.phone(extension, script)
    sink = await office.sink()
    phone.sdp = sdp(f"phone-{extension}", sink.port)
    return phone, sink


def office_address(body: bytes) -> tuple[str, int]:
    where = media_address(parse_sdp(body))
    assert where is not None and where[0] == "127.0.0.1" and 31000 <= where[1] <= 31999, where
    return where


async def talk(one: RtpSink, one_to: tuple[str, int], two: RtpSink, two_to: tuple[str, int]) -> None:
    """Both ends send audio to the office; each must hear the other, renumbered by the office."""
    for sequence in range(4):
        one.send(audio(sequence), one_to)
        two.send(audio(500 + sequence), two_to)
        await asyncio.sleep(0.02)
    heard_by_two = await two.wait_for(lambda p: p.payload_type == 0)
    heard_by_one = await one.wait_for(lambda p: p.payload_type == 0)
    assert heard_by_two.ssrc != 0xCAFE and heard_by_one.ssrc != 0xCAFE  # our streams, not the phones'


async def test_internal_call_is_anchored_both_legs_get_the_offices_media(anchored: Office) -> None:
    anna, anna_rtp = await phone_with_rtp(anchored, "101")
    bernd, bernd_rtp = await phone_with_rtp(anchored, "102")
    call = bernd.dial("101")
    answer = await answered(call)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    to_office_a = office_address(answer)  # bernd's answer is ours, not anna's SDP
    to_office_b = office_address(leg.request.body)  # anna is offered our port, not bernd's
    assert to_office_a != to_office_b and answer != anna.sdp and leg.request.body != bernd.sdp
    await talk(bernd_rtp, to_office_a, anna_rtp, to_office_b)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await anchored.idle()


async def test_trunk_call_to_a_direct_number_is_anchored(anchored: Office) -> None:
    anna, anna_rtp = await phone_with_rtp(anchored, "101")
    provider_rtp = await anchored.sink()
    call = anchored.provider.dial(DIRECT, sdp("provider", provider_rtp.port))
    answer = await answered(call)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await talk(provider_rtp, office_address(answer), anna_rtp, office_address(leg.request.body))
    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await anchored.idle()


async def test_group_call_is_anchored_to_the_member_who_answers(anchored: Office) -> None:
    await anchored.phone("101", Script("ignore"))  # rings first (in turn), never answers
    bernd, bernd_rtp = await phone_with_rtp(anchored, "102")
    provider_rtp = await anchored.sink()
    call = anchored.provider.dial(GROUP, sdp("provider", provider_rtp.port))
    answer = await answered(call, timeout=5.0)
    leg = await bernd.next_call()
    await event_of(leg, Confirmed)
    await talk(provider_rtp, office_address(answer), bernd_rtp, office_address(leg.request.body))
    call.bye()
    await ended(leg)
    await anchored.idle()


async def test_offerless_internal_call_gets_our_offer_and_answers_in_the_ack(anchored: Office) -> None:
    anna, anna_rtp = await phone_with_rtp(anchored, "101")
    bernd, bernd_rtp = await phone_with_rtp(anchored, "102")
    call = bernd.dial("101", body=b"")
    ok = await event_of(call, Answered)
    assert isinstance(ok, Answered) and ok.answer_owed  # our offer in the 200, bernd answers in the ACK
    call.ack(body=bernd.sdp, content_type="application/sdp")
    offer = ok.response.body
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await talk(bernd_rtp, office_address(offer), anna_rtp, office_address(leg.request.body))
    call.bye()
    await ended(leg)
    await anchored.idle()
