"""Golden tests for sipcore.session: the INVITE session in both roles with a fake clock (RFC 3261 §13-15)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest

from durchwahl.sipcore.dialog import DialogState
from durchwahl.sipcore.message import Request, Response, make_response, parse_message
from durchwahl.sipcore.session import (
    AckTimedOut,
    Answered,
    Cancelled,
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    InviteReceived,
    InviteSession,
    ReinviteConfirmed,
    ReinviteFailed,
    ReinviteReceived,
    Rejected,
    Role,
    SendCancel,
    SendDirect,
    SendRequest,
    SendResponse,
    SessionError,
    SessionEvent,
    SessionState,
    SessionTimers,
    Terminated,
    TerminationReason,
    TransactionFailure,
)

SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


# ------------------------------------------------------------------------------------------- harness


def make_session(
    role: Role,
    *,
    name: str | None = None,
    rand: Callable[[], float] | Iterable[float] = (0.5,),
    timers: SessionTimers | None = None,
) -> InviteSession:
    """A session with counter-based tags/branches/Call-ID and a scripted ``rand``."""
    name = name or ("alice" if role is Role.UAC else "bob")
    host = "10.0.0.1" if role is Role.UAC else "10.0.0.2"
    counter = itertools.count(1)
    if callable(rand):
        rand_fn = rand
    else:
        values = itertools.cycle(list(rand))
        rand_fn = lambda: next(values)  # noqa: E731
    return InviteSession(
        role,
        contact=f"<sip:{name}@{host}:5060>",
        via=f"SIP/2.0/UDP {host}:5060;rport",
        make_tag=lambda: f"{name}-tag{next(counter)}",
        make_branch=lambda: f"{name}{next(counter)}",
        make_call_id=lambda: f"call-{name}",
        rand=rand_fn,
        timers=timers,
    )


def drain(session: InviteSession) -> list[SessionEvent]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def wire(message: Request | Response) -> Request | Response:
    """Through bytes and back, as the network would hand it over."""
    return parse_message(bytes(message))


def wreq(message: Request) -> Request:
    out = wire(message)
    assert isinstance(out, Request)
    return out


def wresp(message: Response) -> Response:
    out = wire(message)
    assert isinstance(out, Response)
    return out


def only(events: list[SessionEvent], kind: type) -> object:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


def kinds(events: list[SessionEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def start_uac(session: InviteSession, *, body: bytes = SDP, now: float = 0.0) -> Request:
    session.send_invite(
        request_uri="sip:bob@10.0.0.2", to="Bob <sip:bob@example.com>", from_="Alice <sip:alice@example.com>",
        body=body, now=now,
    )  # fmt: skip
    (event,) = drain(session)
    assert isinstance(event, SendRequest)
    return event.request


def respond_to(request: Request, status: int, *, tag: str | None = "bob-tag", contact: str | None = None,
               body: bytes = b"", rr: str | None = None) -> Response:  # fmt: skip
    headers = []
    if contact is None and 101 <= status <= 299 and request.method == "INVITE":
        contact = "<sip:bob@10.0.0.2:5060>"
    if contact:
        headers.append(("Contact", contact))
    if body:
        headers.append(("Content-Type", "application/sdp"))
    response = make_response(
        request, status, to_tag=tag if status != 100 else None, headers=headers, body=body
    )
    if rr is not None:
        response = response.add_header("Record-Route", rr)
    return wresp(response)


def connected() -> tuple[InviteSession, InviteSession, Request]:
    """A UAC and a UAS with a confirmed call between them; returns them and the INVITE."""
    uac, uas = make_session(Role.UAC), make_session(Role.UAS)
    invite = start_uac(uac)
    uas.receive_request(wreq(invite), 0.0)
    drain(uas)
    uas.answer(body=SDP, now=0.1)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    uac.receive_response(wresp(ok), 0.1)
    ack = only(drain(uac), SendDirect).message  # type: ignore[attr-defined]
    uas.receive_request(wreq(ack), 0.2)
    assert kinds(drain(uas)) == ["Confirmed"]
    assert uac.state is uas.state is SessionState.CONFIRMED
    return uac, uas, invite


# --------------------------------------------------------------------------------------------- UAC


def test_uac_invite_golden() -> None:
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    assert bytes(invite).split(b"\r\n")[:11] == [
        b"INVITE sip:bob@10.0.0.2 SIP/2.0",
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKalice2",
        b"Max-Forwards: 70",
        b"From: Alice <sip:alice@example.com>;tag=alice-tag1",
        b"To: Bob <sip:bob@example.com>",
        b"Call-ID: call-alice",
        b"CSeq: 1 INVITE",
        b"Contact: <sip:alice@10.0.0.1:5060>",
        b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE",
        b"Content-Type: application/sdp",
        b"Content-Length: 85",
    ]
    assert uac.state is SessionState.CALLING
    assert uac.local_tag == "alice-tag1" and uac.call_id == "call-alice"


def test_uac_call_answer_ack_retransmission_and_bye() -> None:
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.receive_response(respond_to(invite, 100), 0.05)
    uac.receive_response(respond_to(invite, 180), 0.1)
    events = drain(uac)
    assert kinds(events) == ["ProvisionalReceived", "ProvisionalReceived"]
    assert uac.state is SessionState.PROCEEDING
    ok = respond_to(invite, 200, body=SDP, contact="<sip:bob@192.0.2.7>", rr="<sip:edge.example.com;lr>")
    uac.receive_response(ok, 1.0)
    events = drain(uac)
    assert kinds(events) == ["SendDirect", "Answered"]
    ack = events[0].message  # type: ignore[union-attr]
    assert isinstance(ack, Request)
    assert (ack.method, str(ack.cseq), str(ack.uri), ack.route[0].uri.host) == (  # type: ignore[union-attr]
        "ACK", "1 ACK", "sip:bob@192.0.2.7", "edge.example.com",
    )  # fmt: skip
    assert events[1] == Answered(ok, answer_owed=False)
    assert uac.state is SessionState.CONFIRMED and uac.dialog is not None
    assert uac.dialog.state is DialogState.CONFIRMED

    uac.receive_response(ok, 1.5)  # retransmitted 2xx: the same ACK again (§13.2.2.4)
    assert drain(uac) == [SendDirect(ack)]

    uac.bye(now=5.0)
    (send,) = drain(uac)
    assert isinstance(send, SendRequest)
    bye = send.request
    assert (bye.method, str(bye.cseq), str(bye.uri)) == ("BYE", "2 BYE", "sip:bob@192.0.2.7")
    assert uac.state is SessionState.TERMINATING
    uac.receive_response(ok, 5.1)  # a 2xx retransmission still gets its ACK while the BYE is out
    assert drain(uac) == [SendDirect(ack)]
    uac.receive_response(respond_to(bye, 200), 5.2)
    assert drain(uac) == [Terminated(TerminationReason.LOCAL_BYE)]
    uac.receive_response(ok, 6.0)
    assert drain(uac) == []
    with pytest.raises(SessionError) as info:
        uac.receive_request(wreq(bye), 6.0)
    assert info.value.status == 481


def test_uac_rejected_and_timeout() -> None:
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    busy = respond_to(invite, 486)
    uac.receive_response(busy, 1.0)
    assert drain(uac) == [Rejected(486, busy), Terminated(TerminationReason.REJECTED, 486)]

    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.transaction_failed(invite, TransactionFailure.TIMEOUT, 32.0)
    assert drain(uac) == [Rejected(408, None), Terminated(TerminationReason.TIMEOUT, 408)]

    # §8.1.3.1: a transport error (no connection, a certificate refused) counts as 503.
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.transaction_failed(invite, TransactionFailure.TRANSPORT, 0.1)
    assert drain(uac) == [Rejected(503, None), Terminated(TerminationReason.TRANSPORT_ERROR, 503)]


def test_uac_cancel_waits_for_a_provisional() -> None:
    """§9.1: no CANCEL before a provisional response; then it goes; 487 ends the attempt."""
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.cancel(now=0.1)
    assert drain(uac) == []
    assert uac.state is SessionState.CANCEL_PENDING
    uac.receive_response(respond_to(invite, 100), 0.2)
    assert drain(uac) == [SendCancel(invite)]
    assert uac.state is SessionState.CANCELLING
    uac.receive_response(respond_to(invite, 180), 0.3)
    uac.cancel(now=0.3)  # idempotent
    assert drain(uac) == []
    terminated = respond_to(invite, 487)
    uac.receive_response(terminated, 0.4)
    assert drain(uac) == [Cancelled(terminated), Terminated(TerminationReason.CANCELLED, 487)]


def test_uac_2xx_after_cancel_is_acked_then_byed() -> None:
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.receive_response(respond_to(invite, 180), 0.1)
    uac.bye(now=0.2)  # hang-up before the answer = CANCEL (§15)
    assert drain(uac)[-1] == SendCancel(invite)
    uac.receive_response(respond_to(invite, 200, body=SDP), 0.3)
    events = drain(uac)
    assert kinds(events) == ["SendDirect", "SendRequest"]
    assert events[0].message.method == "ACK"  # type: ignore[union-attr]
    bye = events[1].request  # type: ignore[union-attr]
    assert bye.method == "BYE" and bye.to.tag == "bob-tag"
    uac.receive_response(respond_to(bye, 200), 0.4)
    assert drain(uac) == [Terminated(TerminationReason.CANCELLED, 200)]


def test_uac_forked_second_2xx_is_acked_and_byed() -> None:
    uac = make_session(Role.UAC)
    invite = start_uac(uac)
    uac.receive_response(respond_to(invite, 180, tag="fork-a"), 0.1)
    uac.receive_response(respond_to(invite, 180, tag="fork-b", contact="<sip:bob@10.0.0.3>"), 0.1)
    drain(uac)
    uac.receive_response(respond_to(invite, 200, tag="fork-a", body=SDP), 1.0)
    assert kinds(drain(uac)) == ["SendDirect", "Answered"]
    late = respond_to(invite, 200, tag="fork-b", contact="<sip:bob@10.0.0.3>", body=SDP)
    uac.receive_response(late, 1.2)
    events = drain(uac)
    assert kinds(events) == ["SendDirect", "SendRequest"]
    ack, bye = events[0].message, events[1].request  # type: ignore[union-attr]
    assert (ack.method, ack.to.tag, str(ack.uri)) == ("ACK", "fork-b", "sip:bob@10.0.0.3")
    assert (bye.method, bye.to.tag, str(bye.uri)) == ("BYE", "fork-b", "sip:bob@10.0.0.3")
    uac.receive_response(late, 1.4)  # its retransmission gets the same ACK, no second BYE
    assert drain(uac) == [SendDirect(ack)]
    uac.receive_response(respond_to(bye, 200, tag="fork-b"), 1.5)  # the fork's BYE answer is absorbed
    assert drain(uac) == []
    assert uac.state is SessionState.CONFIRMED
    assert uac.dialog_id is not None and uac.dialog_id.remote_tag == "fork-a"


def test_uac_delayed_offer_ack_carries_the_answer() -> None:
    """Offerless INVITE: the offer is in the 2xx, the answer in the ACK (§13.2.1)."""
    uac = make_session(Role.UAC)
    invite = start_uac(uac, body=b"")
    assert not invite.has("content-type")
    ok = respond_to(invite, 200, body=SDP)
    uac.receive_response(ok, 1.0)
    assert drain(uac) == [Answered(ok, answer_owed=True)]
    assert uac.state is SessionState.ANSWERED
    uac.receive_response(ok, 1.5)  # retransmission before the TU answered: nothing to resend yet
    assert drain(uac) == []
    with pytest.raises(SessionError):
        uac.reinvite(now=1.6, body=SDP)
    uac.ack(body=b"v=0 answer\r\n", now=1.7)
    (send,) = drain(uac)
    assert isinstance(send, SendDirect) and send.message.body == b"v=0 answer\r\n"
    assert uac.state is SessionState.CONFIRMED
    uac.receive_response(ok, 2.0)
    assert drain(uac) == [send]


# --------------------------------------------------------------------------------------------- UAS


def incoming(invite_body: bytes = SDP) -> tuple[InviteSession, Request]:
    uac, uas = make_session(Role.UAC), make_session(Role.UAS)
    invite = wreq(start_uac(uac, body=invite_body))
    uas.receive_request(invite, 0.0)
    assert drain(uas) == [InviteReceived(invite)]
    assert uas.state is SessionState.INCOMING
    return uas, invite


def test_uas_ringing_and_answer_responses() -> None:
    uas, _ = incoming()
    uas.ringing(now=0.1)
    ringing = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    assert (ringing.status, ringing.to.tag, ringing.values("contact")) == (
        180, "bob-tag1", ("<sip:bob@10.0.0.2:5060>",),
    )  # fmt: skip
    uas.answer(body=SDP, now=1.0)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    assert (ok.status, ok.to.tag, ok.body, ok.get("content-type")) == (
        200,
        "bob-tag1",
        SDP,
        "application/sdp",
    )
    assert ok.has("allow") and ok.has("contact")
    assert uas.state is SessionState.WAITING_FOR_ACK
    assert uas.dialog is not None and uas.dialog.state is DialogState.CONFIRMED


def test_uas_2xx_retransmission_schedule_then_bye_after_64_t1() -> None:
    """§13.3.1.4: T1, 2T1, 4T1 … capped at T2 until the ACK; after 64*T1 without one, BYE."""
    uas, _ = incoming()
    uas.answer(body=SDP, now=10.0)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    fired = []
    while (at := uas.get_timer()) is not None and uas.state is SessionState.WAITING_FOR_ACK:
        uas.handle_timer(at)
        events = drain(uas)
        if kinds(events) == ["SendDirect"]:
            assert events[0] == SendDirect(ok)
            fired.append(round(at - 10.0, 6))
        else:
            assert kinds(events) == ["AckTimedOut", "SendRequest"]
            assert events[0] == AckTimedOut(1)
            assert events[1].request.method == "BYE"  # type: ignore[union-attr]
            assert at == 10.0 + 32.0
        next_at = uas.get_timer()
        assert next_at is None or next_at > at
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert uas.state is SessionState.TERMINATING
    assert uas.get_timer() is None


def test_uas_ack_stops_retransmission() -> None:
    uas, invite = incoming()
    uas.answer(body=SDP, now=0.0)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    uas.handle_timer(0.5)
    assert kinds(drain(uas)) == ["SendDirect"]
    ack = wreq(
        Request("ACK", invite.contact[0].uri, (*ok.headers[:1], *ok.headers[1:5]))
        .replace_header("CSeq", "1 ACK")
        .replace_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack")
    )
    uas.receive_request(ack, 0.7)
    assert drain(uas) == [Confirmed(ack)]
    assert uas.state is SessionState.CONFIRMED and uas.get_timer() is None
    uas.receive_request(ack, 0.9)  # retransmitted ACK: nothing
    assert drain(uas) == []


def test_uas_retransmission_when_the_shell_wakes_late() -> None:
    uas, _ = incoming()
    uas.answer(body=SDP, now=0.0)
    drain(uas)
    uas.handle_timer(5.0)  # late: one retransmission, next one relative to now
    assert kinds(drain(uas)) == ["SendDirect"]
    assert uas.get_timer() == 6.0


def test_uas_bye_waits_for_ack() -> None:
    """§15: the callee MUST NOT send BYE before the ACK for its 2xx (or the ACK timeout)."""
    uac, uas = make_session(Role.UAC), make_session(Role.UAS)
    invite = start_uac(uac)
    uas.receive_request(wreq(invite), 0.0)
    uas.answer(body=SDP, now=0.0)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    uas.bye(now=0.1)
    assert drain(uas) == [] and uas.state is SessionState.HANGUP_PENDING
    uac.receive_response(wresp(ok), 0.2)
    ack = only(drain(uac), SendDirect).message  # type: ignore[attr-defined]
    uas.receive_request(wreq(ack), 0.3)
    (send,) = drain(uas)
    assert isinstance(send, SendRequest) and send.request.method == "BYE"
    assert uas.state is SessionState.TERMINATING


def test_uas_cannot_bye_early_dialog_but_can_reject() -> None:
    uas, _ = incoming()
    with pytest.raises(SessionError):
        uas.bye(now=0.1)
    assert uas.state is SessionState.INCOMING and drain(uas) == []
    uas.reject(486, now=0.2)
    events = drain(uas)
    assert kinds(events) == ["SendResponse", "Terminated"]
    assert events[0].response.status == 486 and events[0].response.to.tag == "bob-tag1"  # type: ignore[union-attr]
    assert events[1] == Terminated(TerminationReason.REJECTED, 486)
    with pytest.raises(SessionError):
        uas.answer(now=0.3)
    assert drain(uas) == []


def test_uas_cancel_answers_invite_487() -> None:
    """§9.2: the transaction layer answered the CANCEL; the session answers the INVITE with 487."""
    uas, invite = incoming()
    uas.ringing(now=0.1)
    drain(uas)
    cancel = wreq(
        Request("CANCEL", invite.uri, invite.headers)
        .replace_header("CSeq", "1 CANCEL")
        .replace_header("Contact", None)
    )
    uas.receive_request(cancel, 0.2)
    events = drain(uas)
    assert kinds(events) == ["SendResponse", "Cancelled", "Terminated"]
    response = events[0].response  # type: ignore[union-attr]
    assert (response.status, response.cseq.method, response.to.tag) == (487, "INVITE", "bob-tag1")
    assert events[2] == Terminated(TerminationReason.CANCELLED, 487)


def test_uas_bye_on_early_dialog_gets_200_and_invite_487() -> None:
    uas, invite = incoming()
    uas.ringing(now=0.1)
    ringing = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    bye = wreq(
        Request("BYE", invite.contact[0].uri, invite.headers, b"")
        .replace_header("To", ringing.get("to"))
        .replace_header("CSeq", "2 BYE")
        .replace_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye")
        .replace_header("Content-Type", None)
    )
    uas.receive_request(bye, 0.2)
    events = drain(uas)
    assert [(e.response.status, e.response.cseq.method) for e in events[:2]] == [
        (200, "BYE"),
        (487, "INVITE"),
    ]  # type: ignore[union-attr]
    assert events[2] == Terminated(TerminationReason.REMOTE_BYE)


def test_uas_reinvite_during_initial_invite_gets_500_with_retry_after() -> None:
    """§14.2: a second INVITE before our final response to the first: 500 + Retry-After 0-10 s."""
    uac, uas = make_session(Role.UAC), make_session(Role.UAS, rand=(0.75,))
    invite = start_uac(uac)
    uas.receive_request(wreq(invite), 0.0)
    uas.ringing(now=0.0)
    ringing = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    uac.receive_response(wresp(ringing), 0.1)
    drain(uac)
    early = uac.dialog_set.dialog("bob-tag1")  # type: ignore[union-attr]
    assert early is not None
    reinvite = wreq(early.create_request("INVITE", body=SDP))
    uas.receive_request(reinvite, 0.2)
    response = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    assert (response.status, response.get("retry-after")) == (500, "8")
    assert uas.state is SessionState.INCOMING


def test_invite_without_contact_is_refused_with_400() -> None:
    uac, uas = make_session(Role.UAC), make_session(Role.UAS)
    invite = start_uac(uac).replace_header("Contact", None)
    with pytest.raises(SessionError) as info:
        uas.receive_request(wreq(invite), 0.0)
    assert info.value.status == 400
    assert uas.state is SessionState.IDLE


# ------------------------------------------------------------------------------------ in the dialog


def test_reinvite_both_ways_with_target_refresh() -> None:
    uac, uas, _ = connected()
    uac.reinvite(body=SDP + b"a=sendonly\r\n", now=1.0)
    reinvite = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    assert (str(reinvite.cseq), reinvite.values("contact")) == ("2 INVITE", ("<sip:alice@10.0.0.1:5060>",))
    uas.receive_request(wreq(reinvite), 1.0)
    assert drain(uas) == [ReinviteReceived(wreq(reinvite))]
    uas.dialog.set_local_contact("<sip:bob@192.0.2.99:5070>")  # type: ignore[union-attr]
    uas.answer(body=SDP, now=1.1)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    assert ok.values("contact") == ("<sip:bob@10.0.0.2:5060>",)  # the session's Contact in responses
    ok = wresp(ok.replace_header("Contact", "<sip:bob@192.0.2.99:5070>"))
    assert uas.state is SessionState.REINVITE_ACK_WAIT
    uac.receive_response(ok, 1.2)
    events = drain(uac)
    assert kinds(events) == ["SendDirect", "ReinviteAnswered"]
    ack = events[0].message  # type: ignore[union-attr]
    assert (str(ack.cseq), str(ack.uri)) == ("2 ACK", "sip:bob@192.0.2.99:5070")  # 2xx Contact refreshed
    uac.receive_response(ok, 1.3)
    assert drain(uac) == [SendDirect(ack)]
    uas.handle_timer(1.6)
    assert kinds(drain(uas)) == ["SendDirect"]
    uas.receive_request(wreq(ack), 1.7)
    assert drain(uas) == [ReinviteConfirmed(wreq(ack))]
    assert uac.state is uas.state is SessionState.CONFIRMED
    uac.bye(now=2.0)
    bye = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    assert (str(bye.cseq), str(bye.uri)) == ("3 BYE", "sip:bob@192.0.2.99:5070")


def test_reinvite_rejected_leaves_session_unchanged() -> None:
    uac, uas, _ = connected()
    uac.reinvite(body=SDP, now=1.0)
    reinvite = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    uas.receive_request(wreq(reinvite), 1.0)
    drain(uas)
    uas.reject(488, now=1.1)
    refusal = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    assert uas.state is SessionState.CONFIRMED
    uac.receive_response(wresp(refusal), 1.2)
    assert drain(uac) == [ReinviteFailed(488, wresp(refusal))]
    assert uac.state is SessionState.CONFIRMED


def test_glare_491_and_retry_timing() -> None:
    """§14.1/§14.2: crossing re-INVITEs both get 491; the Call-ID owner (UAC) waits 2.1-4 s, the other 0-2."""
    for rand, owner_delay, other_delay in ((0.0, 2.1, 0.0), (0.5, 3.05, 1.0), (0.999999, 4.0, 2.0)):
        uac, uas, _ = connected()
        uac._rand = uas._rand = lambda r=rand: r  # type: ignore[misc]
        uac.reinvite(body=SDP, now=10.0)
        uas.reinvite(body=SDP, now=10.0)
        from_uac = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
        from_uas = only(drain(uas), SendRequest).request  # type: ignore[attr-defined]
        uac.receive_request(wreq(from_uas), 10.1)
        uas.receive_request(wreq(from_uac), 10.1)
        glare_for_uas = only(drain(uac), SendResponse).response  # type: ignore[attr-defined]
        glare_for_uac = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
        assert glare_for_uas.status == glare_for_uac.status == 491
        uac.receive_response(wresp(glare_for_uac), 10.2)
        uas.receive_response(wresp(glare_for_uas), 10.2)
        assert drain(uac) == drain(uas) == []
        assert uac.state is uas.state is SessionState.REINVITE_BACKOFF
        assert uac.get_timer() == pytest.approx(10.2 + owner_delay)
        assert uas.get_timer() == pytest.approx(10.2 + other_delay)
        at = uac.get_timer()
        assert at is not None
        uac.handle_timer(at - 0.001)
        assert drain(uac) == []
        uac.handle_timer(at)
        retry = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
        assert (retry.method, str(retry.cseq), retry.body) == ("INVITE", "3 INVITE", SDP)
        assert retry.branch != from_uac.branch
        assert uac.state is SessionState.REINVITING and uac.get_timer() is None


def test_backoff_overtaken_by_peer_reinvite() -> None:
    uac, uas, _ = connected()
    uac.reinvite(body=SDP, now=1.0)
    mine = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    uac.receive_response(respond_to(mine, 491, tag=uac.dialog.id.remote_tag), 1.1)  # type: ignore[union-attr]
    assert uac.state is SessionState.REINVITE_BACKOFF
    uas.reinvite(body=SDP, now=1.2)
    theirs = only(drain(uas), SendRequest).request  # type: ignore[attr-defined]
    uac.receive_request(wreq(theirs), 1.3)
    assert drain(uac) == [ReinviteFailed(491, None), ReinviteReceived(wreq(theirs))]
    assert uac.state is SessionState.REINVITED and uac.get_timer() is None


def test_in_dialog_request_out_of_order_gets_500_and_wrong_dialog_481() -> None:
    uac, uas, _ = connected()
    uas.send_request("INFO", now=1.0)
    uas.send_request("INFO", now=1.0)
    first, second = (e.request for e in drain(uas))  # type: ignore[union-attr]
    uac.receive_request(wreq(second), 1.1)
    assert kinds(drain(uac)) == ["DialogRequestReceived"]
    uac.receive_request(wreq(first), 1.2)
    response = only(drain(uac), SendResponse).response  # type: ignore[attr-defined]
    assert response.status == 500
    stranger = wreq(second.replace_header("From", "<sip:x@y>;tag=nobody").replace_header("CSeq", "9 INFO"))
    uac.receive_request(stranger, 1.3)
    assert only(drain(uac), SendResponse).response.status == 481  # type: ignore[attr-defined]


def test_info_round_trip() -> None:
    uac, uas, _ = connected()
    info = uac.send_request("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay", now=1.0)
    assert drain(uac) == [SendRequest(info)]
    uas.receive_request(wreq(info), 1.1)
    (received,) = drain(uas)
    assert isinstance(received, DialogRequestReceived)
    uas.respond(received.request, 200, now=1.2)
    ok = only(drain(uas), SendResponse).response  # type: ignore[attr-defined]
    with pytest.raises(SessionError):
        uas.respond(received.request, 200, now=1.2)  # answered already
    uac.receive_response(wresp(ok), 1.3)
    assert drain(uac) == [DialogResponseReceived(wresp(ok))]
    with pytest.raises(SessionError):
        uac.send_request("BYE", now=1.4)


def test_481_to_reinvite_tears_the_dialog_down() -> None:
    """§12.2.1.2 / §14.1: 481 or 408 (or no answer) to an in-dialog request ends the dialog with BYE."""
    uac, _, _ = connected()
    uac.reinvite(body=SDP, now=1.0)
    mine = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    gone = respond_to(mine, 481, tag=uac.dialog.id.remote_tag)  # type: ignore[union-attr]
    uac.receive_response(gone, 1.1)
    events = drain(uac)
    assert kinds(events) == ["ReinviteFailed", "SendRequest"]
    assert events[1].request.method == "BYE"  # type: ignore[union-attr]
    uac.transaction_failed(events[1].request, TransactionFailure.TIMEOUT, 40.0)  # type: ignore[union-attr]
    assert drain(uac) == [Terminated(TerminationReason.DIALOG_FAILED, 481)]


def test_info_timeout_tears_down() -> None:
    uac, _, _ = connected()
    info = uac.send_request("INFO", now=1.0)
    drain(uac)
    uac.transaction_failed(info, TransactionFailure.TIMEOUT, 33.0)
    events = drain(uac)
    assert kinds(events) == ["SendRequest"] and events[0].request.method == "BYE"  # type: ignore[union-attr]
    assert uac.state is SessionState.TERMINATING


def test_remote_bye_answers_pending_reinvite_487() -> None:
    uac, uas, _ = connected()
    uac.reinvite(body=SDP, now=1.0)
    reinvite = only(drain(uac), SendRequest).request  # type: ignore[attr-defined]
    uas.receive_request(wreq(reinvite), 1.0)
    drain(uas)
    uac2_bye = uac.dialog.create_request("BYE")  # type: ignore[union-attr]
    uas.receive_request(wreq(uac2_bye), 1.1)
    events = drain(uas)
    assert [(e.response.status, e.response.cseq.method) for e in events[:2]] == [
        (200, "BYE"),
        (487, "INVITE"),
    ]  # type: ignore[union-attr]
    assert events[-1] == Terminated(TerminationReason.REMOTE_BYE)


def test_commands_refused_in_wrong_state_change_nothing() -> None:
    uac = make_session(Role.UAC)
    for command in (
        lambda: uac.answer(now=0.0),
        lambda: uac.reinvite(now=0.0),
        lambda: uac.ringing(now=0.0),
        lambda: uac.ack(now=0.0),
    ):
        with pytest.raises(SessionError):
            command()
        assert uac.state is SessionState.IDLE and drain(uac) == []
    uas = make_session(Role.UAS)
    with pytest.raises(SessionError):
        uas.send_invite(request_uri="sip:a@b", to="<sip:a@b>", from_="<sip:c@d>", now=0.0)
    with pytest.raises(SessionError):
        make_session(Role.UAS).ringing(status=200, now=0.0)


def test_terminated_is_the_last_event() -> None:
    uac, uas, _ = connected()
    uas.bye(now=1.0)
    bye = only(drain(uas), SendRequest).request  # type: ignore[attr-defined]
    uac.receive_request(wreq(bye), 1.1)
    events = drain(uac)
    assert isinstance(events[-1], Terminated)
    uac.bye(now=1.2)
    uac.cancel(now=1.2)
    uac.handle_timer(100.0)
    assert drain(uac) == [] and uac.get_timer() is None
    with pytest.raises(SessionError):
        uac.reinvite(now=1.3)


def test_table_handles_what_the_network_can_always_deliver() -> None:
    """One machine, one table: every live state has an entry for the requests a peer may send at any time,
    and a terminated session refuses requests (the endpoint answers 481) while absorbing late responses."""
    from durchwahl.sipcore.session import _TRANSITIONS, SessionInput

    always = (
        SessionInput.BYE_RECEIVED,
        SessionInput.REINVITE_RECEIVED,
        SessionInput.REQUEST_RECEIVED,
        SessionInput.ACK_STRAY,
        SessionInput.CANCEL_LATE,
        SessionInput.STALE,
    )
    for state in SessionState:
        if state in (SessionState.IDLE, SessionState.TERMINATED):
            continue
        for inp in always:
            assert (state, inp) in _TRANSITIONS, (state, inp)
    for inp in (SessionInput.BYE_RECEIVED, SessionInput.REINVITE_RECEIVED, SessionInput.REQUEST_RECEIVED):
        assert (SessionState.TERMINATED, inp) not in _TRANSITIONS
    assert all(
        _TRANSITIONS[(SessionState.TERMINATED, i)][0] == "ignore"
        for s, i in _TRANSITIONS
        if s is SessionState.TERMINATED
    )
