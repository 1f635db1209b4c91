"""Mid-call requests end to end on the call-flow harness: hold on anchored calls, 491 glare across the
bridge, BYE during a relayed re-INVITE, requests held before the bridge, UPDATE; and the ``evenly``
ring-group state surviving a restart."""

from __future__ import annotations

import asyncio
import itertools
import json

import attrs
import pytest
import test_flows
from harness import CORE, RtpSink, answered, ended, event_of
from phones import Phone, Script, sdp
from test_flows import DIRECT, GROUP, SHORT, Office, audio

import durchwahl.routing.calls.leg as leg_module
from durchwahl.media.sdp import parse_sdp
from durchwahl.routing.b2bua import RING_STATE_FILE, B2bua
from durchwahl.routing.calls.media_anchor import media_address
from durchwahl.routing.directory import Strategy
from durchwahl.routing.resolver import Resolver
from durchwahl.routing.ringgroup import RingGroupState, plan_ring_group
from durchwahl.sipcore.session import (
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteConfirmed,
    ReinviteFailed,
    ReinviteReceived,
    SessionState,
    TerminationReason,
)
from durchwahl.sipcore.ua import Call, IncomingCall, OutgoingCall

office = test_flows.office  # the fixture: an office, a provider trunk and phones on the harness
pytestmark = pytest.mark.virtual_time


def direction(body: bytes) -> str:
    description = parse_sdp(body)
    (stream,) = description.media
    return stream.direction(description.direction())


def with_direction(body: bytes, value: str) -> bytes:
    return body + f"a={value}\r\n".encode()


async def anchored_call(
    office: Office,
) -> tuple[OutgoingCall, RtpSink, tuple[str, int], IncomingCall, RtpSink]:
    """The provider calls SHORT (greeting, no digits → 102 answers): the call, both RTP sockets and where
    the office receives each leg's media."""
    bernd = await office.phone("102")
    bernd_rtp = await office.sink()
    bernd.sdp = sdp("phone-102", bernd_rtp.port)
    rtp = await office.sink()
    call = office.provider.dial(SHORT, sdp("provider", rtp.port))
    where = media_address(parse_sdp(await answered(call)))
    assert where is not None
    leg = await bernd.next_call(timeout=5)
    await event_of(leg, Confirmed)
    return call, rtp, where, leg, bernd_rtp


async def exchange(one: RtpSink, one_to: tuple[str, int], two: RtpSink, two_to: tuple[str, int]) -> None:
    """Both sides send a few audio packets to the office; what arrived before is forgotten."""
    one.packets.clear()
    two.packets.clear()
    for _ in range(5):
        sequence = next(_SEQUENCES)
        one.send(audio(sequence), one_to)
        two.send(audio(1000 + sequence), two_to)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)


_SEQUENCES = itertools.count()


async def settled(office: Office) -> None:
    """The call coroutine is over and every leg of the B2BUA has ended (its BYE answered)."""
    await office.idle()
    async with asyncio.timeout(3):
        while office.b2bua.ua.calls:
            await asyncio.sleep(0.01)


def audio_in(sink: RtpSink) -> int:
    return sum(1 for p in sink.packets if p.payload_type == 0)


# -------------------------------------------------------------------------------------- 1. hold, anchored


async def test_hold_on_an_anchored_call_is_answered_here_told_to_the_other_leg_and_gates_media(
    office: Office,
) -> None:
    call, rtp, where, leg, bernd_rtp = await anchored_call(office)
    office_b = media_address(parse_sdp(leg.request.body))
    assert office_b is not None
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(rtp) and audio_in(bernd_rtp)  # media both ways before the hold

    # The caller holds (sendonly): our answer is recvonly, on the same port.
    call.reinvite(body=with_direction(sdp("provider", rtp.port), "sendonly"))
    told = await event_of(leg, ReinviteReceived)
    assert isinstance(told, ReinviteReceived) and direction(told.offer) == "sendonly"
    assert media_address(parse_sdp(told.offer)) == office_b  # the callee's anchor stays where it was
    leg.answer_reinvite(body=with_direction(sdp("phone-102", bernd_rtp.port), "recvonly"))
    ours = await event_of(call, ReinviteAnswered)
    assert isinstance(ours, ReinviteAnswered) and direction(ours.response.body) == "recvonly"
    assert media_address(parse_sdp(ours.response.body)) == where
    await asyncio.sleep(0.1)

    # RFC 3264 §8.4: nothing goes to the holder; its music on hold still reaches the held party.
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(rtp) == 0
    assert audio_in(bernd_rtp) > 0

    # Resume: sendrecv on both legs, media both ways again.
    call.reinvite(body=sdp("provider", rtp.port))
    told = await event_of(leg, ReinviteReceived)
    assert isinstance(told, ReinviteReceived) and direction(told.offer) == "sendrecv"
    leg.answer_reinvite(body=sdp("phone-102", bernd_rtp.port))
    ours = await event_of(call, ReinviteAnswered)
    assert isinstance(ours, ReinviteAnswered) and direction(ours.response.body) == "sendrecv"
    await asyncio.sleep(0.1)
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(rtp) > 0 and audio_in(bernd_rtp) > 0

    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_callee_holding_with_update_is_answered_here_and_the_caller_is_reinvited(
    office: Office,
) -> None:
    call, rtp, where, leg, bernd_rtp = await anchored_call(office)
    office_b = media_address(parse_sdp(leg.request.body))
    assert office_b is not None

    # RFC 3311 UPDATE with an offer on an anchored leg: answered by the B2BUA like a re-INVITE.
    leg.send_request(
        "UPDATE",
        body=with_direction(sdp("phone-102", bernd_rtp.port), "inactive"),
        content_type="application/sdp",
    )
    reply = await event_of(leg, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200
    assert direction(reply.response.body) == "inactive"
    told = await event_of(call, ReinviteReceived)
    assert isinstance(told, ReinviteReceived) and direction(told.offer) == "inactive"
    call.answer_reinvite(body=with_direction(sdp("provider", rtp.port), "inactive"))
    await event_of(call, ReinviteConfirmed)
    await asyncio.sleep(0.1)
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(rtp) == 0 and audio_in(bernd_rtp) == 0  # inactive: nothing either way

    # An UPDATE without a body only refreshes the dialog.
    leg.send_request("UPDATE")
    reply = await event_of(leg, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200

    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_offerless_reinvite_on_an_anchored_leg_gets_our_offer_and_its_ack_holds(office: Office) -> None:
    """RFC 3261 §14.2: a re-INVITE without SDP is answered with an offer (the leg's anchor, sendrecv); the
    answer comes in the ACK — here a hold (sendonly), which the relay and the other leg learn."""
    call, rtp, where, leg, bernd_rtp = await anchored_call(office)
    office_b = media_address(parse_sdp(leg.request.body))
    assert office_b is not None

    leg.reinvite()
    ours = await event_of(leg, ReinviteAnswered)
    assert isinstance(ours, ReinviteAnswered) and ours.answer_owed and ours.response.status == 200
    assert media_address(parse_sdp(ours.response.body)) == office_b
    assert direction(ours.response.body) == "sendrecv"
    leg.ack(body=with_direction(sdp("phone-102", bernd_rtp.port), "sendonly"), content_type="application/sdp")

    told = await event_of(call, ReinviteReceived)  # the caller is told the callee holds
    assert isinstance(told, ReinviteReceived) and direction(told.offer) == "sendonly"
    call.answer_reinvite(body=with_direction(sdp("provider", rtp.port), "recvonly"))
    await event_of(call, ReinviteConfirmed)
    await asyncio.sleep(0.1)
    await exchange(rtp, where, bernd_rtp, office_b)
    assert audio_in(bernd_rtp) == 0 and audio_in(rtp) > 0  # nothing to the holder; its audio still goes

    leg.bye()
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


# ----------------------------------------------------------------------------- 2. glare across the bridge


async def reinvite_until_answered(
    call: Call, offer: bytes, answer: bytes, seen: list[int], done: asyncio.Event
) -> None:
    """A phone that wants ``offer`` through (``done`` once it is): it answers the peer's re-INVITEs with
    ``answer`` and, when its own re-INVITE lost a glare (491, its back-off overtaken), sends it again once
    the peer's is done. Runs until cancelled."""
    call.reinvite(body=offer)
    again = False
    while True:
        _, event = await call.events.get()
        if isinstance(event, ReinviteReceived):
            call.answer_reinvite(body=answer)
        elif isinstance(event, ReinviteFailed):
            assert event.status == 491, event
            seen.append(491)
            again = True
        elif isinstance(event, ReinviteConfirmed) and again and call.state is SessionState.CONFIRMED:
            again = False
            call.reinvite(body=offer)
        elif isinstance(event, ReinviteAnswered):
            done.set()


async def test_both_ends_reinvite_at_once_back_off_retry_and_the_call_survives(office: Office) -> None:
    anna = await office.phone("101")
    caller_sdp = sdp("provider", 42010)
    call = office.provider.dial(DIRECT, caller_sdp)  # not anchored: re-INVITEs are relayed
    await answered(call)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    seen: list[int] = []
    dones = (asyncio.Event(), asyncio.Event())
    phones = [
        asyncio.create_task(
            reinvite_until_answered(
                call,
                with_direction(caller_sdp, "sendonly"),
                with_direction(caller_sdp, "recvonly"),
                seen,
                dones[0],
            )
        ),
        asyncio.create_task(
            reinvite_until_answered(
                leg,
                with_direction(anna.sdp, "sendonly"),
                with_direction(anna.sdp, "recvonly"),
                seen,
                dones[1],
            )
        ),
    ]
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(dones[0].wait(), dones[1].wait())
            await asyncio.sleep(0.2)  # the last ACKs
    finally:
        for task in phones:
            task.cancel()
        await asyncio.gather(*phones, return_exceptions=True)
    assert 491 in seen  # the glare happened and was resolved by back-off and retry
    assert not call.terminated and not leg.terminated
    assert call.state is SessionState.CONFIRMED or call.state is SessionState.REINVITE_ACK_WAIT
    await asyncio.sleep(0.1)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE
    await office.idle()


# ------------------------------------------------------------------- 3. BYE during a relayed re-INVITE


async def relayed_call(office: Office) -> tuple[OutgoingCall, IncomingCall, Phone]:
    anna = await office.phone("101")
    anna.endpoint.core = CORE  # the phone takes UPDATE
    call = office.provider.dial(DIRECT, sdp("provider", 42012))
    await answered(call)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    return call, leg, anna


async def test_caller_bye_during_a_relayed_reinvite_ends_both_legs(office: Office) -> None:
    call, leg, _ = await relayed_call(office)
    call.reinvite(body=with_direction(sdp("provider", 42012), "sendonly"))
    await event_of(leg, ReinviteReceived)  # the callee has not answered it yet
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE
    await settled(office)


async def test_callee_bye_during_a_relayed_reinvite_fails_it_and_ends_both_legs(office: Office) -> None:
    call, leg, _ = await relayed_call(office)
    call.reinvite(body=with_direction(sdp("provider", 42012), "sendonly"))
    await event_of(leg, ReinviteReceived)
    leg.bye()  # the callee hangs up instead of answering: its re-INVITE transaction gets 487
    failed = await event_of(call, ReinviteFailed)
    assert isinstance(failed, ReinviteFailed) and failed.status == 487  # a final answer, no stray transaction
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(leg)).reason is TerminationReason.LOCAL_BYE
    await settled(office)


async def test_info_before_the_bridge_is_held_and_relayed_once_the_callee_answers(office: Office) -> None:
    bernd = await office.phone("102", Script("answer", delay=0.6))
    call = office.provider.dial(SHORT, sdp("provider", 42014))  # greeting, then 102 rings
    await answered(call)
    leg = await bernd.next_call(timeout=5)  # ringing: the caller's leg is answered, the callee's not yet
    call.send_request("INFO", body=b"Signal=5\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    info = await event_of(leg, DialogRequestReceived)
    assert isinstance(info, DialogRequestReceived) and info.request.method == "INFO"
    assert info.request.body == b"Signal=5\r\nDuration=160\r\n"
    assert leg.state is not SessionState.INCOMING  # relayed only after the answer
    leg.respond(info.request, 200)
    reply = await event_of(call, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200
    call.bye()
    await ended(leg)
    await office.idle()


async def test_a_request_held_too_long_is_answered_408(
    office: Office, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leg_module, "HELD_SECONDS", 0.3)
    bernd = await office.phone("102", Script("ignore"))
    call = office.provider.dial(SHORT, sdp("provider", 42014))  # greeting, then 102 rings and rings
    await answered(call)
    leg = await bernd.next_call(timeout=5)
    call.send_request("INFO", body=b"Signal=5\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    reply = await event_of(call, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 408
    call.bye()
    await ended(leg)
    await office.idle()


# --------------------------------------------------------------------------------- 4. UPDATE, relayed


async def test_update_is_relayed_with_its_offer_and_answer_on_a_bridged_call(office: Office) -> None:
    call, leg, anna = await relayed_call(office)
    offer = with_direction(sdp("provider", 42012), "sendonly")
    call.send_request("UPDATE", body=offer, content_type="application/sdp", headers=[("X-Why", "hold")])
    update = await event_of(leg, DialogRequestReceived)
    assert isinstance(update, DialogRequestReceived) and update.request.method == "UPDATE"
    assert update.request.body == offer and update.request.get("x-why") == "hold"
    leg.respond(
        update.request, 200, body=with_direction(anna.sdp, "recvonly"), content_type="application/sdp"
    )
    reply = await event_of(call, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200
    assert direction(reply.response.body) == "recvonly"
    call.bye()
    await ended(leg)
    await office.idle()


# ---------------------------------------------------------------------- 5. ring groups across a restart


async def test_evenly_state_survives_a_restart(office: Office) -> None:
    directory = office.b2bua.directory
    evenly = attrs.evolve(directory.groups[0], strategy=Strategy.EVENLY)
    office.b2bua.directory = attrs.evolve(directory, groups=(evenly,))
    office.b2bua.resolver = Resolver(office.b2bua.directory)
    anna = await office.phone("101")
    await office.phone("102")
    call = office.provider.dial(GROUP, sdp("provider", 42016))
    assert await answered(call) == anna.sdp  # nothing stored yet: the first member first
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    await ended(leg)
    await office.idle()

    path = office.b2bua.ring_state_path
    assert path == directory.server.state_dir / RING_STATE_FILE
    assert json.loads(path.read_text(encoding="utf-8")) == {"200": "101"}

    # A second B2BUA over the same state_dir (the restarted server) continues the rotation.
    b = office.b2bua
    restarted = B2bua(b.ua, b.registrar, b.directory, b.resolver)
    assert restarted.ring_state == RingGroupState({"200": "101"})
    plan, _ = plan_ring_group(evenly, ["101", "102"], restarted.ring_state)
    assert plan.steps[0].extensions == ("102",)


async def test_unreadable_ring_state_starts_afresh(office: Office) -> None:
    b = office.b2bua
    b.ring_state_path.parent.mkdir(parents=True, exist_ok=True)
    for junk in ("{not json", '["200", "101"]', '{"200": 101}'):
        b.ring_state_path.write_text(junk, encoding="utf-8")
        assert B2bua(b.ua, b.registrar, b.directory, b.resolver).ring_state == RingGroupState()
