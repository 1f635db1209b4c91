"""No call left behind: a lost BYE, a far end that vanished (no RTP), a maximum duration and session timers
(RFC 4028) all end both legs. The watch alone on a fake clock, then the calls over loopback (the office and
simulated provider of test_flows, with short limits)."""

from __future__ import annotations

import asyncio

import pytest
from harness import answered, ended, event_of, network
from hypothesis import given, settings
from hypothesis import strategies as st
from phones import sdp
from test_flows import DIRECT, Office, office

from durchwahl.media.relay import Side
from durchwahl.routing.calls.watch import CallWatch, WatchPolicy
from durchwahl.routing.cdr import Disposition, InMemoryCdrStore
from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    Confirmed,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteReceived,
    TerminationReason,
)
from durchwahl.sipcore.session_timer import SessionTimer, TimerPolicy, negotiate_uas
from durchwahl.sipcore.ua import CallFailed, OutgoingCall

__all__ = ["office"]  # the fixture, used by name

T0 = 1000.0


# ------------------------------------------------------------------------------------------ the watch


def test_the_maximum_duration_ends_the_call() -> None:
    watch = CallWatch(WatchPolicy(max_seconds=3600), T0)
    assert watch.next_check(T0) == T0 + 3600
    assert watch.verdict(T0 + 3599) is None
    assert watch.verdict(T0 + 3600) == "maximum call duration (3600 s) reached"


def test_a_leg_that_stops_sending_ends_the_call_and_a_held_one_does_not() -> None:
    watch = CallWatch(WatchPolicy(rtp_timeout=60), T0)
    for t in range(0, 50, 10):  # both legs send for 40 s
        watch.media(Side.A, t, expected=True, now=T0 + t)
        watch.media(Side.B, t, expected=True, now=T0 + t)
    watch.media(Side.A, 40, expected=True, now=T0 + 90)  # the caller went silent at T0 + 40
    watch.media(Side.B, 90, expected=True, now=T0 + 90)
    assert watch.verdict(T0 + 99) is None
    assert watch.verdict(T0 + 100) == "no RTP from the caller for 60 s"
    held = CallWatch(WatchPolicy(rtp_timeout=60), T0)
    held.media(Side.A, 5, expected=False, now=T0)  # put on hold: its peer said inactive
    held.media(Side.B, 5, expected=False, now=T0)
    assert held.verdict(T0 + 3600) is None
    held.media(Side.A, 5, expected=True, now=T0 + 3600)  # resumed: the clock starts now
    held.media(Side.B, 5, expected=True, now=T0 + 3600)
    assert held.verdict(T0 + 3659) is None and held.verdict(T0 + 3660) is not None
    assert held.next_check(T0) == T0 + 15  # a quarter of the timeout


def test_a_missed_session_refresh_ends_the_call_a_refresh_keeps_it() -> None:
    watch = CallWatch(WatchPolicy(), T0)
    watch.refresh_expected(Side.A, 1800, T0)
    assert watch.next_check(T0) == T0 + 1800 - 32  # RFC 4028 §10: interval less min(32, interval / 3)
    watch.refreshed(Side.A, T0 + 900)
    assert watch.verdict(T0 + 1800) is None
    assert watch.verdict(T0 + 900 + 1768) == "no session refresh from the caller within 1800 s (RFC 4028)"
    watch.refreshed(Side.B, T0 + 1000)  # the callee's refreshes are not watched
    small = CallWatch(WatchPolicy(), T0)
    small.refresh_expected(Side.A, 90, T0)
    assert small.next_check(T0) == T0 + 60
    assert CallWatch(WatchPolicy(), T0).next_check(T0) is None


def invite(*headers: tuple[str, str]) -> Request:
    from durchwahl.sipcore.message import parse_message

    text = (
        "INVITE sip:101@office.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKst\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:101@office.example>\r\nCall-ID: st\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        + "".join(f"{n}: {v}\r\n" for n, v in headers)
        + "Content-Length: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return request


def test_session_timer_negotiation_as_the_uas() -> None:
    assert negotiate_uas(invite()) is None  # no support: no timer
    assert negotiate_uas(invite(("Supported", "timer"))) == SessionTimer(1800, "uac")
    assert negotiate_uas(invite(("Supported", "100rel, timer"), ("Session-Expires", "600"))) == SessionTimer(
        600
    )
    assert negotiate_uas(invite(("Supported", "timer"), ("Session-Expires", "60"))) == 422  # below 90
    assert negotiate_uas(invite(("Session-Expires", "60"))) == 422
    assert negotiate_uas(invite(("Supported", "timer"), ("Session-Expires", "600;refresher=uas"))) is None
    assert negotiate_uas(invite(("Session-Expires", "600"))) is None  # a proxy's: we would refresh
    assert negotiate_uas(invite(("Supported", "timer"), ("Min-SE", "300"))) == SessionTimer(1800)
    assert negotiate_uas(invite(("Supported", "timer"), ("Session-Expires", "garbage"))) == SessionTimer(1800)
    assert SessionTimer(600).headers() == (("Session-Expires", "600;refresher=uac"), ("Require", "timer"))
    assert negotiate_uas(invite(("Supported", "timer"), ("Session-Expires", "5")), TimerPolicy(3, 2)) == (
        SessionTimer(5)
    )


# ------------------------------------------------------------------------------------------ on the wire


async def direct_call(office: Office, *headers: tuple[str, str]) -> OutgoingCall:
    provider = office.provider
    return provider.ua.invite(
        f"sip:{DIRECT}@office.example",
        provider.endpoint.flow_to("127.0.0.1", provider.server_port),
        from_="<sip:+4989123456@provider.example>",
        to=f"<sip:{DIRECT}@office.example>",
        body=sdp("provider", 42020),
        headers=headers,
    )


@pytest.mark.virtual_time
async def test_a_callee_that_never_answers_our_bye_still_leaves_no_call(office: Office) -> None:
    office.b2bua.cdr = records = InMemoryCdrStore()
    anna = await office.phone("101")
    phone = anna.endpoint.local_address("UDP")
    call = await direct_call(office)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await answered(call)
    network().drop = lambda data, source, destination: destination == phone  # the phone vanished
    call.bye()
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE  # the caller's BYE is answered at once
    await office.idle()  # the call is over on our side: status lists nothing
    (record,) = records.records
    assert record.disposition is Disposition.ANSWERED
    assert office.b2bua.ua.calls  # our BYE to the phone is still retransmitted …
    async with asyncio.timeout(8):  # … and gives up after Timer F (64 * T1 = 3.2 s here)
        while office.b2bua.ua.calls:
            await asyncio.sleep(0.05)
    assert network().dropped >= 2  # the BYE and its retransmissions went nowhere


@pytest.mark.virtual_time
async def test_rtp_silence_ends_an_anchored_call_on_both_legs(office: Office) -> None:
    office.b2bua.anchor_media = True
    office.b2bua.watch = WatchPolicy(rtp_timeout=1.0)
    anna = await office.phone("101")
    call = await direct_call(office)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await answered(call)  # neither side sends a single RTP packet
    ended_a, ended_b = await asyncio.gather(ended(call, timeout=5), ended(leg, timeout=5))
    assert ended_a.reason is ended_b.reason is TerminationReason.REMOTE_BYE
    await office.idle()


@pytest.mark.virtual_time
async def test_a_held_call_is_not_ended_for_its_silence(office: Office) -> None:
    office.b2bua.anchor_media = True
    office.b2bua.watch = WatchPolicy(rtp_timeout=1.0)
    anna = await office.phone("101")
    call = await direct_call(office)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await answered(call)
    held = sdp("provider", 42020).replace(b"o=provider 1 1", b"o=provider 1 2") + b"a=inactive\r\n"
    call.reinvite(body=held, content_type="application/sdp")
    reply = await event_of(call, ReinviteAnswered)
    assert isinstance(reply, ReinviteAnswered) and b"a=inactive" in reply.response.body
    await event_of(leg, ReinviteReceived)  # the hold told to the phone, which takes it
    leg.answer_reinvite(body=sdp("phone-101", 42030) + b"a=inactive\r\n", content_type="application/sdp")
    await asyncio.sleep(2.5)  # no RTP for 2.5 s, more than twice the timeout
    assert not call.terminated and not leg.terminated
    call.bye()
    await ended(leg)
    await office.idle()


@pytest.mark.virtual_time
async def test_the_maximum_duration_ends_both_legs_with_a_reason(office: Office) -> None:
    office.b2bua.watch = WatchPolicy(max_seconds=1.0)
    anna = await office.phone("101")
    seen: list[bytes] = []
    anna.endpoint.add_tracer(lambda direction, data, flow: seen.append(data) if direction == "in" else None)
    call = await direct_call(office)
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    await answered(call)
    assert (await ended(leg, timeout=4)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(call, timeout=4)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    (bye,) = [data for data in seen if data.startswith(b"BYE ")]
    assert b'Reason: Q.850;cause=102;text="maximum call duration (1 s) reached"' in bye


@pytest.mark.virtual_time
async def test_session_timers_a_refresh_keeps_the_call_a_missed_one_ends_it(office: Office) -> None:
    office.b2bua.timers = TimerPolicy(interval=3, min_se=2)
    office.b2bua.anchor_media = True  # the UPDATEs are answered by us (relayed, the phone here says 405)
    anna = await office.phone("101")
    call = await direct_call(office, ("Supported", "timer"), ("Session-Expires", "3"))
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    ok = await asyncio.wait_for(call.wait_answered(), 3)
    assert ok.get("session-expires") == "3;refresher=uac" and ok.get("require") == "timer"
    for _ in range(3):  # refreshed every second: the call outlives the 2 s deadline
        await asyncio.sleep(1.0)
        call.send_request("UPDATE")
        reply = await event_of(call, DialogResponseReceived)
        assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200
        assert reply.response.get("session-expires") == "3;refresher=uac"
    assert not call.terminated and not leg.terminated
    # No more refreshes: 3 s less min(32, 1) = 2 s after the last one, both legs get our BYE.
    ended_a, ended_b = await asyncio.gather(ended(call, timeout=5), ended(leg, timeout=5))
    assert ended_a.reason is ended_b.reason is TerminationReason.REMOTE_BYE
    await office.idle()


@pytest.mark.virtual_time
async def test_too_short_a_session_interval_is_422_with_our_min_se(office: Office) -> None:
    office.b2bua.timers = TimerPolicy(interval=1800, min_se=90)
    call = await direct_call(office, ("Supported", "timer"), ("Session-Expires", "30"))
    with pytest.raises(CallFailed) as failed:
        await asyncio.wait_for(call.wait_answered(), 3)
    assert failed.value.status == 422
    assert failed.value.response is not None and failed.value.response.get("min-se") == "90"


@settings(max_examples=300, deadline=None)
@given(
    expires=st.one_of(st.none(), st.text(alphabet="0123456789;=rfeshuac -x", max_size=30)),
    min_se=st.one_of(st.none(), st.text(alphabet="0123456789; ", max_size=12)),
    supported=st.sampled_from([None, "timer", "100rel", "timer, 100rel", ""]),
)
def test_negotiation_never_fails_on_what_a_peer_sends(
    expires: str | None, min_se: str | None, supported: str | None
) -> None:
    headers = [
        (n, v) for n, v in (("Session-Expires", expires), ("Min-SE", min_se), ("Supported", supported)) if v
    ]
    try:
        request = invite(*headers)
    except SipParseError:
        return  # not a message at all: the endpoint answers it 400 before any of this
    result = negotiate_uas(request)
    assert result is None or result == 422 or isinstance(result, SessionTimer)
    if isinstance(result, SessionTimer):
        assert result.interval >= 90 and result.refresher == "uac"
