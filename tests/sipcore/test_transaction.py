"""Golden sequence tests for sipcore.transaction (RFC 3261 §17, §9; RFC 6026) and the TransactionLayer."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from durchwahl.sipcore import Limits, Request, Response, make_response, parse_message
from durchwahl.sipcore.errors import TransactionError
from durchwahl.sipcore.transaction import (
    AckReceived,
    CancelReceived,
    InviteClientState,
    InviteClientTransaction,
    InviteServerState,
    InviteServerTransaction,
    MessageToSend,
    NonInviteClientState,
    NonInviteClientTransaction,
    NonInviteServerState,
    NonInviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    Terminated,
    TimedOut,
    Timers,
    TransactionEvent,
    TransactionHandle,
    TransactionLayer,
    TransportFailed,
    build_ack,
    build_cancel,
    cancel_target_key,
    client_transaction_key,
    server_transaction_key,
)

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

T = Timers()


def req(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKkjshdyff",
    sent_by: str = "pc33.atlanta.com",
    to_tag: str | None = None,
    cseq: int = 986759,
    call_id: str = "987asjd97y7atg",
    uri: str = "sip:bob@biloxi.com",
    routes: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> Request:
    via = f"Via: SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch else "")
    to = "To: Bob <sip:bob@biloxi.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        via,
        *(f"Route: {r}" for r in routes),
        to,
        "From: Alice <sip:alice@atlanta.com>;tag=88sja8x",
        "Max-Forwards: 70",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def resp(request: Request, status: int, to_tag: str | None = "99sa0xk") -> Response:
    return make_response(request, status, to_tag=to_tag)


def drain(source: object) -> list[TransactionEvent]:
    out: list[TransactionEvent] = []
    while (event := source.next_event()) is not None:  # type: ignore[attr-defined]
        out.append(event)
    return out


def run_timers(machine: object, until: float) -> list[tuple[float, TransactionEvent]]:
    """Fire the machine's timers exactly at their deadlines up to ``until``; (time, event) pairs."""
    log: list[tuple[float, TransactionEvent]] = []
    while (deadline := machine.get_timer()) is not None and deadline <= until:  # type: ignore[attr-defined]
        machine.handle_timer(deadline)  # type: ignore[attr-defined]
        log.extend((deadline, event) for event in drain(machine))
    return log


def sent_at(log: list[tuple[float, TransactionEvent]]) -> list[float]:
    return [t for t, e in log if isinstance(e, MessageToSend)]


INVITE = req()


# ---------------------------------------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------------------------------------


def test_timer_defaults_follow_table_4() -> None:
    assert (T.t1, T.t2, T.t4) == (0.5, 4.0, 5.0)
    assert (T.a, T.b, T.e, T.f, T.g, T.h) == (0.5, 32.0, 0.5, 32.0, 0.5, 32.0)
    assert (T.d(reliable=False), T.i(reliable=False), T.j(reliable=False), T.k(reliable=False)) == (
        32,
        5,
        32,
        5,
    )
    assert (T.d(reliable=True), T.i(reliable=True), T.j(reliable=True), T.k(reliable=True)) == (0, 0, 0, 0)
    assert (T.l, T.m) == (32.0, 32.0)  # RFC 6026: 64*T1


def test_timer_d_is_at_least_32s_and_scales() -> None:
    assert Timers(t1=0.1).d(reliable=False) == 32.0
    assert Timers(t1=1.0).d(reliable=False) == 64.0
    assert Timers(t1=1.0).b == 64.0


@pytest.mark.parametrize("kwargs", [{"t1": 0}, {"t2": -1}, {"t1": 5, "t2": 4}])
def test_timers_reject_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timers(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# INVITE client transaction (RFC 6026 Figure 5)
# ---------------------------------------------------------------------------------------------------------


def test_invite_client_retransmits_at_t1_doubling_until_timer_b() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    assert drain(t) == [MessageToSend(INVITE)]
    assert t.get_timer() == 0.5
    log = run_timers(t, 100.0)
    # §17.1.1.2: intervals T1, 2T1, 4T1 … (seven requests in 64*T1), then Timer B.
    assert sent_at(log) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(e.message is INVITE for _, e in log if isinstance(e, MessageToSend))
    assert log[-2:] == [(32.0, TimedOut("B")), (32.0, Terminated())]
    assert t.state is InviteClientState.TERMINATED and t.get_timer() is None


def test_invite_client_reliable_sends_once_then_timer_b() -> None:
    t = InviteClientTransaction(INVITE, reliable=True, now=10.0)
    assert drain(t) == [MessageToSend(INVITE)]
    assert t.get_timer() == 42.0
    assert run_timers(t, 100.0) == [(42.0, TimedOut("B")), (42.0, Terminated())]


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    run_timers(t, 1.0)  # one retransmission at 0.5
    ringing = resp(INVITE, 180)
    t.handle_response(ringing, 1.2)
    assert drain(t) == [ResponseReceived(ringing)]
    assert t.state is InviteClientState.PROCEEDING
    assert t.get_timer() is None  # no Timer A, no Timer B in Proceeding
    t.handle_response(resp(INVITE, 183), 2.0)
    assert [type(e) for e in drain(t)] == [ResponseReceived]


def test_invite_client_non_2xx_final_builds_ack_per_17_1_1_3() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    busy = resp(INVITE, 486)
    t.handle_response(busy, 0.3)
    events = drain(t)
    assert events[0] == ResponseReceived(busy)
    assert isinstance(events[1], MessageToSend)
    # The RFC's own example of the ACK for a non-2xx final response (§17.1.1.3), plus Content-Length.
    assert bytes(events[1].message) == (
        b"ACK sip:bob@biloxi.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKkjshdyff\r\n"
        b"To: Bob <sip:bob@biloxi.com>;tag=99sa0xk\r\n"
        b"From: Alice <sip:alice@atlanta.com>;tag=88sja8x\r\n"
        b"Max-Forwards: 70\r\n"
        b"Call-ID: 987asjd97y7atg\r\n"
        b"CSeq: 986759 ACK\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert t.state is InviteClientState.COMPLETED
    assert t.get_timer() == 32.3  # Timer D
    # A retransmitted final: the same ACK again, nothing to the TU.
    t.handle_response(busy, 1.0)
    assert drain(t) == [MessageToSend(t.ack)] if t.ack else False
    # Late provisional and a 2xx are absorbed.
    t.handle_response(resp(INVITE, 180), 2.0)
    t.handle_response(resp(INVITE, 200), 2.0)
    assert drain(t) == []
    assert run_timers(t, 100.0) == [(32.3, Terminated())]


def test_ack_copies_route_and_uses_the_response_to_tag() -> None:
    invite = req(routes=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"))
    ack = build_ack(invite, resp(invite, 404, to_tag="abc"))
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.get_all("route") == ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    assert ack.to.tag == "abc" and ack.from_.tag == "88sja8x"
    assert len(ack.via) == 1 and ack.branch == invite.branch
    assert (ack.cseq.seq, ack.cseq.method) == (986759, "ACK")
    assert parse_message(bytes(ack)) == ack


def test_invite_client_non_2xx_over_reliable_terminates_at_once() -> None:
    t = InviteClientTransaction(INVITE, reliable=True, now=0.0)
    drain(t)
    t.handle_response(resp(INVITE, 603), 1.0)
    assert [type(e) for e in drain(t)] == [ResponseReceived, MessageToSend, Terminated]  # Timer D = 0
    assert t.get_timer() is None


def test_invite_client_2xx_enters_accepted_and_passes_every_2xx_up() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    ok = resp(INVITE, 200)
    t.handle_response(ok, 1.0)
    assert drain(t) == [ResponseReceived(ok)]  # no ACK from the transaction for a 2xx
    assert t.state is InviteClientState.ACCEPTED
    assert t.get_timer() == 33.0  # Timer M = 64*T1
    # RFC 6026 §8.4: retransmissions and 2xx from other forks go to the TU, which re-ACKs.
    other_fork = resp(INVITE, 200, to_tag="fork2")
    t.handle_response(ok, 2.0)
    t.handle_response(other_fork, 2.5)
    assert drain(t) == [ResponseReceived(ok), ResponseReceived(other_fork)]
    t.handle_response(resp(INVITE, 180), 3.0)
    t.handle_response(resp(INVITE, 486), 3.0)
    assert drain(t) == []
    assert run_timers(t, 100.0) == [(33.0, Terminated())]
    t.handle_response(ok, 40.0)  # after Terminated: nothing comes out of the machine
    assert drain(t) == []


def test_invite_client_transport_error_terminates() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    t.handle_transport_error(0.1)
    assert drain(t) == [TransportFailed(), Terminated()]
    t.handle_transport_error(0.2)
    assert drain(t) == []


def test_invite_client_gives_up_64_t1_after_cancel() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    t.handle_response(resp(INVITE, 180), 1.0)
    drain(t)
    t.handle_cancel_sent(5.0)
    assert t.get_timer() == 37.0
    assert run_timers(t, 100.0) == [(37.0, TimedOut("cancel")), (37.0, Terminated())]


def test_invite_client_rejects_responses_of_other_transactions() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    with pytest.raises(TransactionError):
        t.handle_response(resp(req(branch="z9hG4bKother"), 200), 1.0)
    with pytest.raises(TransactionError):
        t.handle_response(resp(build_cancel(INVITE), 200), 1.0)  # same branch, method CANCEL
    with pytest.raises(TransactionError):
        InviteClientTransaction(req("OPTIONS"), reliable=False, now=0.0)


def test_invite_client_cancel_sent_after_final_is_a_protocol_error() -> None:
    t = InviteClientTransaction(INVITE, reliable=False, now=0.0)
    t.handle_response(resp(INVITE, 486), 1.0)
    with pytest.raises(TransactionError, match="not allowed in state COMPLETED"):
        t.handle_cancel_sent(1.5)


# ---------------------------------------------------------------------------------------------------------
# non-INVITE client transaction (RFC 3261 Figure 6)
# ---------------------------------------------------------------------------------------------------------

OPTIONS = req("OPTIONS", branch="z9hG4bKnict")


def test_non_invite_client_retransmits_doubling_up_to_t2_until_timer_f() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=False, now=0.0)
    assert drain(t) == [MessageToSend(OPTIONS)]
    log = run_timers(t, 100.0)
    # §17.1.2.2: 500 ms, 1 s, 2 s, 4 s, 4 s, 4 s …
    assert sent_at(log) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-2:] == [(32.0, TimedOut("F")), (32.0, Terminated())]


def test_non_invite_client_with_small_t2_caps_at_t2() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=False, now=0.0, timers=Timers(t1=0.5, t2=1.0))
    drain(t)
    times = [0.0, *sent_at(run_timers(t, 5.0))]
    assert [b - a for a, b in itertools.pairwise(times)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_non_invite_client_keeps_retransmitting_at_t2_after_provisional() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=False, now=0.0)
    drain(t)
    run_timers(t, 0.5)  # retransmission at 0.5; Timer E now due at 1.5
    trying = resp(OPTIONS, 100, to_tag=None)
    t.handle_response(trying, 0.7)
    assert drain(t) == [ResponseReceived(trying)]
    assert t.state is NonInviteClientState.PROCEEDING
    log = run_timers(t, 20.0)
    assert sent_at(log) == [1.5, 5.5, 9.5, 13.5, 17.5]  # then T2 each time


def test_non_invite_client_final_then_timer_k() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=False, now=0.0)
    drain(t)
    ok = resp(OPTIONS, 200)
    t.handle_response(ok, 0.2)
    assert drain(t) == [ResponseReceived(ok)]
    assert t.get_timer() == 5.2  # Timer K = T4, Timer E and F cancelled
    t.handle_response(ok, 1.0)
    t.handle_response(resp(OPTIONS, 500), 1.0)
    assert drain(t) == []  # only a single final response reaches the TU
    assert run_timers(t, 100.0) == [(5.2, Terminated())]


def test_non_invite_client_reliable() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=True, now=0.0)
    drain(t)
    assert t.get_timer() == 32.0  # only Timer F
    t.handle_response(resp(OPTIONS, 404), 1.0)
    assert [type(e) for e in drain(t)] == [ResponseReceived, Terminated]  # Timer K = 0


def test_non_invite_client_transport_error() -> None:
    t = NonInviteClientTransaction(OPTIONS, reliable=False, now=0.0)
    t.handle_response(resp(OPTIONS, 100, to_tag=None), 0.1)
    drain(t)
    t.handle_transport_error(0.2)
    assert drain(t) == [TransportFailed(), Terminated()]


def test_non_invite_client_refuses_invite_and_ack() -> None:
    for method in ("INVITE", "ACK"):
        with pytest.raises(TransactionError):
            NonInviteClientTransaction(req(method), reliable=False, now=0.0)


# ---------------------------------------------------------------------------------------------------------
# INVITE server transaction (RFC 6026 Figure 7)
# ---------------------------------------------------------------------------------------------------------


def test_invite_server_passes_invite_up_and_sends_100_after_200ms() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0)
    assert drain(t) == [RequestReceived(INVITE)]
    assert t.get_timer() == 0.2
    log = run_timers(t, 1.0)
    assert len(log) == 1 and isinstance(log[0][1], MessageToSend)
    trying = log[0][1].message
    assert isinstance(trying, Response) and trying.status == 100 and trying.to.tag is None
    assert t.state is InviteServerState.PROCEEDING


def test_invite_server_no_100_when_tu_answers_quickly() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0)
    drain(t)
    ringing = resp(INVITE, 180)
    t.send_response(ringing, 0.1)
    assert drain(t) == [MessageToSend(ringing)]
    assert t.get_timer() is None
    # A retransmitted INVITE: the most recent provisional again.
    t.handle_request(INVITE, 0.5)
    assert drain(t) == [MessageToSend(ringing)]


def test_invite_server_trying_delay_options() -> None:
    never = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    assert drain(never) == [RequestReceived(INVITE)] and never.get_timer() is None
    # A retransmission before any response gets a 100 at once.
    never.handle_request(INVITE, 0.5)
    (event,) = drain(never)
    assert isinstance(event, MessageToSend) and isinstance(event.message, Response)
    assert event.message.status == 100
    at_once = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=0.0)
    assert [type(e) for e in drain(at_once)] == [RequestReceived, MessageToSend]


def test_invite_server_non_2xx_retransmitted_on_timer_g_until_timer_h() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    drain(t)
    busy = resp(INVITE, 486)
    t.send_response(busy, 1.0)
    assert drain(t) == [MessageToSend(busy)]
    assert t.state is InviteServerState.COMPLETED
    log = run_timers(t, 100.0)
    # Timer G: T1, 2T1, … capped at T2; Timer H = 64*T1 after entering Completed.
    assert sent_at(log) == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert all(e.message is busy for _, e in log if isinstance(e, MessageToSend))
    assert log[-2:] == [(33.0, TimedOut("H")), (33.0, Terminated())]


def test_invite_server_ack_confirms_and_timer_i_terminates() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    drain(t)
    busy = resp(INVITE, 486)
    t.send_response(busy, 1.0)
    drain(t)
    t.handle_request(INVITE, 1.2)  # retransmitted INVITE in Completed: the final again
    assert drain(t) == [MessageToSend(busy)]
    ack = build_ack(INVITE, busy)
    t.handle_request(ack, 1.3)
    assert drain(t) == []  # the ACK for a non-2xx is absorbed, never handed to the TU
    assert t.state is InviteServerState.CONFIRMED
    assert t.get_timer() == 6.3  # Timer I = T4; Timer G stopped
    t.handle_request(ack, 2.0)
    t.handle_request(INVITE, 2.0)
    assert drain(t) == []
    assert run_timers(t, 100.0) == [(6.3, Terminated())]


def test_invite_server_reliable_non_2xx() -> None:
    t = InviteServerTransaction(INVITE, reliable=True, now=0.0, trying_delay=None)
    drain(t)
    t.send_response(resp(INVITE, 404), 1.0)
    drain(t)
    assert t.get_timer() == 33.0  # Timer H only: no Timer G over reliable transports
    t.handle_request(build_ack(INVITE, resp(INVITE, 404)), 1.5)
    assert drain(t) == [Terminated()]  # Timer I = 0


def test_invite_server_2xx_accepted_state_per_rfc_6026() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    drain(t)
    ok = resp(INVITE, 200)
    t.send_response(ok, 1.0)
    assert drain(t) == [MessageToSend(ok)]
    assert t.state is InviteServerState.ACCEPTED
    assert t.get_timer() == 33.0  # Timer L
    t.handle_request(INVITE, 1.5)
    assert drain(t) == []  # retransmitted INVITE absorbed, not passed to the TU
    t.send_response(ok, 1.5)  # the UAS core's 2xx retransmission (§13.3.1.4)
    assert drain(t) == [MessageToSend(ok)]
    ack = req("ACK", to_tag="99sa0xk")
    t.handle_request(ack, 2.0)
    t.handle_request(ack, 2.1)
    assert drain(t) == [AckReceived(ack), AckReceived(ack)]
    with pytest.raises(TransactionError):
        t.send_response(resp(INVITE, 486), 3.0)
    assert run_timers(t, 100.0) == [(33.0, Terminated())]


def test_invite_server_transport_error_keeps_state() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    drain(t)
    t.send_response(resp(INVITE, 500), 1.0)
    drain(t)
    t.handle_transport_error(1.1)
    assert drain(t) == [TransportFailed()]  # RFC 6026 §8.8: inform the TU, remain in the state
    assert t.state is InviteServerState.COMPLETED


def test_invite_server_rejects_tu_responses_after_final() -> None:
    t = InviteServerTransaction(INVITE, reliable=False, now=0.0, trying_delay=None)
    t.send_response(resp(INVITE, 486), 1.0)
    for status in (180, 200, 486):
        with pytest.raises(TransactionError, match="not allowed in state COMPLETED"):
            t.send_response(resp(INVITE, status), 1.1)
    with pytest.raises(TransactionError, match="does not answer"):
        t.send_response(resp(req(cseq=1), 200), 1.1)
    with pytest.raises(TransactionError):
        t.handle_request(req("BYE"), 1.2)


# ---------------------------------------------------------------------------------------------------------
# non-INVITE server transaction (RFC 3261 Figure 8)
# ---------------------------------------------------------------------------------------------------------

BYE = req("BYE", branch="z9hG4bKnist", to_tag="99sa0xk")


def test_non_invite_server_golden_unreliable() -> None:
    t = NonInviteServerTransaction(BYE, reliable=False, now=0.0)
    assert drain(t) == [RequestReceived(BYE)]
    t.handle_request(BYE, 0.5)
    assert drain(t) == []  # Trying: retransmissions discarded
    trying = resp(BYE, 100, to_tag=None)
    t.send_response(trying, 0.6)
    assert drain(t) == [MessageToSend(trying)]
    assert t.state is NonInviteServerState.PROCEEDING
    t.handle_request(BYE, 1.0)
    assert drain(t) == [MessageToSend(trying)]
    ok = resp(BYE, 200)
    t.send_response(ok, 1.5)
    assert drain(t) == [MessageToSend(ok)]
    assert t.get_timer() == 33.5  # Timer J = 64*T1
    t.handle_request(BYE, 2.0)
    assert drain(t) == [MessageToSend(ok)]
    t.send_response(resp(BYE, 500), 2.5)
    assert drain(t) == []  # §17.2.2: other finals discarded in Completed
    with pytest.raises(TransactionError):
        t.send_response(resp(BYE, 180), 2.5)
    assert run_timers(t, 100.0) == [(33.5, Terminated())]


def test_non_invite_server_reliable_terminates_after_final() -> None:
    t = NonInviteServerTransaction(BYE, reliable=True, now=0.0)
    drain(t)
    ok = resp(BYE, 200)
    t.send_response(ok, 0.1)
    assert drain(t) == [MessageToSend(ok), Terminated()]  # Timer J = 0
    with pytest.raises(TransactionError):
        t.send_response(ok, 0.2)


def test_non_invite_server_transport_error_keeps_state() -> None:
    t = NonInviteServerTransaction(BYE, reliable=False, now=0.0)
    t.send_response(resp(BYE, 200), 0.1)
    drain(t)
    t.handle_transport_error(0.2)
    assert drain(t) == [TransportFailed()]
    assert t.state is NonInviteServerState.COMPLETED


# ---------------------------------------------------------------------------------------------------------
# matching (§17.1.3, §17.2.3) and CANCEL construction (§9.1)
# ---------------------------------------------------------------------------------------------------------


def test_server_key_rfc3261() -> None:
    key = server_transaction_key(INVITE)
    assert key == server_transaction_key(req())  # a retransmission
    assert server_transaction_key(req("ACK", to_tag="x")) == key  # ACK matches its INVITE
    assert server_transaction_key(req("CANCEL")) != key  # CANCEL is its own transaction
    assert cancel_target_key(req("CANCEL")) == key
    assert server_transaction_key(req(sent_by="evil.example.com")) != key  # sent-by takes part
    assert server_transaction_key(req(branch="z9hG4bKother")) != key
    assert server_transaction_key(req(call_id="other", cseq=1)) == key  # the branch alone decides


def test_server_key_rfc2543_fallback() -> None:
    old = req(branch=None)
    key = server_transaction_key(old)
    assert key[0] == "2543"
    assert server_transaction_key(req(branch=None)) == key
    assert server_transaction_key(req(branch="1234")) != key  # no magic cookie: full comparison
    for changed in (
        req(branch=None, call_id="x"),
        req(branch=None, cseq=1),
        req(branch=None, uri="sip:carol@biloxi.com"),
        req(branch=None, to_tag="t"),
        req(branch=None, sent_by="other.example.com"),
    ):
        assert server_transaction_key(changed) != key
    assert server_transaction_key(req("CANCEL", branch=None)) != key
    assert cancel_target_key(req("CANCEL", branch=None)) == key


def test_client_key() -> None:
    assert client_transaction_key(INVITE) == ("z9hG4bKkjshdyff", "INVITE")
    assert client_transaction_key(resp(INVITE, 180)) == client_transaction_key(INVITE)
    cancel = build_cancel(INVITE)
    assert client_transaction_key(resp(cancel, 200)) == ("z9hG4bKkjshdyff", "CANCEL")


def test_build_cancel_per_9_1() -> None:
    invite = req(
        routes=("<sip:p1.example.com;lr>",),
        extra=(
            "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKlower",
            "Require: 100rel",
            "Proxy-Require: foo",
            "Content-Type: application/sdp",
        ),
    )
    cancel = build_cancel(invite)
    assert bytes(cancel) == (
        b"CANCEL sip:bob@biloxi.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKkjshdyff\r\n"
        b"Route: <sip:p1.example.com;lr>\r\n"
        b"To: Bob <sip:bob@biloxi.com>\r\n"
        b"From: Alice <sip:alice@atlanta.com>;tag=88sja8x\r\n"
        b"Max-Forwards: 70\r\n"
        b"Call-ID: 987asjd97y7atg\r\n"
        b"CSeq: 986759 CANCEL\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert parse_message(bytes(cancel)) == cancel


# ---------------------------------------------------------------------------------------------------------
# TransactionLayer
# ---------------------------------------------------------------------------------------------------------


def layer(**kwargs: object) -> TransactionLayer:
    tags = (f"tag{n}" for n in itertools.count(1))
    return TransactionLayer(tag_factory=lambda: next(tags), **kwargs)  # type: ignore[arg-type]


def run_layer(tl: TransactionLayer, until: float) -> list[tuple[float, TransactionEvent]]:
    log: list[tuple[float, TransactionEvent]] = []
    while (deadline := tl.get_timer()) is not None and deadline <= until:
        tl.handle_timer(deadline)
        log.extend((deadline, e) for e in drain(tl))
    return log


def new_server(tl: TransactionLayer, request: Request, now: float = 0.0) -> TransactionHandle:
    tl.receive_request(request, now, reliable=False, context=("udp", "192.0.2.1", 5060))
    (event,) = drain(tl)
    assert isinstance(event, RequestReceived) and event.request is request
    assert event.handle is not None and event.handle.is_server
    assert event.handle.context == ("udp", "192.0.2.1", 5060)
    return event.handle


def test_layer_server_invite_non_2xx_flow() -> None:
    tl = layer()
    h = new_server(tl, INVITE)
    assert tl.get_timer() == 0.2
    [(_, trying)] = run_layer(tl, 0.2)
    assert isinstance(trying, MessageToSend) and trying.handle == h
    tl.receive_request(req(), 0.6, reliable=False)  # retransmission absorbed, 100 resent
    assert [type(e) for e in drain(tl)] == [MessageToSend]
    busy = resp(INVITE, 486)
    tl.send_response(h, busy, 1.0)
    assert drain(tl) == [MessageToSend(busy, handle=h)]
    tl.receive_request(build_ack(INVITE, busy), 1.1, reliable=False)
    assert drain(tl) == []  # the ACK for a non-2xx stays in the transaction layer
    assert run_layer(tl, 100.0) == [(6.1, Terminated(handle=h))]
    assert len(tl) == 0 and tl.get_timer() is None


def test_layer_stateless_answer_is_sent_once_and_ends_the_transaction() -> None:
    tl = layer(trying_delay=None)
    h = new_server(tl, INVITE)
    assert tl.is_retransmission(req())
    challenge = resp(INVITE, 401)
    tl.send_stateless(h, challenge)
    assert drain(tl) == [MessageToSend(challenge, handle=h), Terminated(handle=h)]
    assert len(tl) == 0 and tl.get_timer() is None  # no Timer G, nothing retransmitted
    assert not tl.is_retransmission(req())
    tl.receive_request(build_ack(INVITE, challenge), 0.1, reliable=False)
    assert [type(e) for e in drain(tl)] == [AckReceived]  # matches nothing: the TU ignores it
    tl.receive_request(req(), 0.5, reliable=False)  # the INVITE again: a new transaction, asked anew
    (again,) = drain(tl)
    assert isinstance(again, RequestReceived) and again.handle != h
    with pytest.raises(TransactionError):
        tl.send_stateless(h, challenge)


def test_layer_ack_for_2xx_reaches_the_tu() -> None:
    tl = layer(trying_delay=None)
    h = new_server(tl, INVITE)
    tl.send_response(h, resp(INVITE, 200), 1.0)
    drain(tl)
    # The usual ACK for a 2xx has a branch of its own: it matches nothing and goes to the TU.
    ack = req("ACK", branch="z9hG4bKack2xx", to_tag="99sa0xk")
    tl.receive_request(ack, 1.1, reliable=False)
    assert drain(tl) == [AckReceived(ack, handle=None)]
    # One that reuses the INVITE's branch matches the transaction in Accepted: also to the TU (RFC 6026).
    same_branch = req("ACK", to_tag="99sa0xk")
    tl.receive_request(same_branch, 1.2, reliable=False)
    assert drain(tl) == [AckReceived(same_branch, handle=h)]
    tl.receive_request(req(), 1.3, reliable=False)  # retransmitted INVITE absorbed in Accepted
    assert drain(tl) == []
    run_layer(tl, 100.0)
    assert len(tl) == 0
    # After Timer L the same ACK matches nothing and still reaches the TU.
    tl.receive_request(same_branch, 40.0, reliable=False)
    assert drain(tl) == [AckReceived(same_branch, handle=None)]


def test_layer_2xx_retransmission_after_timer_l_is_still_sent() -> None:
    tl = layer(trying_delay=None)
    h = new_server(tl, INVITE)
    ok = resp(INVITE, 200)
    tl.send_response(h, ok, 0.0)
    run_layer(tl, 100.0)
    assert tl.transaction(h) is None
    tl.send_response(h, ok, 40.0)
    assert drain(tl) == [MessageToSend(ok, handle=h)]
    with pytest.raises(TransactionError):
        tl.send_response(h, resp(INVITE, 486), 40.0)


def test_layer_cancel_of_proceeding_invite() -> None:
    tl = layer(trying_delay=None)
    h = new_server(tl, INVITE)
    ringing = resp(INVITE, 180, to_tag="early")
    tl.send_response(h, ringing, 0.1)
    drain(tl)
    cancel = req("CANCEL")
    tl.receive_request(cancel, 1.0, reliable=False, context="flow")
    answer, cancelled = drain(tl)
    assert isinstance(answer, MessageToSend) and isinstance(answer.message, Response)
    assert answer.message.status == 200 and answer.message.cseq.method == "CANCEL"
    assert answer.message.to.tag == "early"  # §9.2: the To tag of the INVITE's response
    assert answer.handle is not None and answer.handle != h and answer.handle.context == "flow"
    assert cancelled == CancelReceived(cancel, "early", handle=h)
    # The CANCEL's retransmission is absorbed by its own transaction, which resends the 200.
    tl.receive_request(req("CANCEL"), 1.5, reliable=False)
    assert drain(tl) == [MessageToSend(answer.message, handle=answer.handle)]
    # The TU answers the INVITE with 487.
    terminated = resp(INVITE, 487, to_tag="early")
    tl.send_response(h, terminated, 1.6)
    assert drain(tl) == [MessageToSend(terminated, handle=h)]


def test_layer_cancel_before_any_tagged_response_uses_a_fresh_tag() -> None:
    tl = layer()
    h = new_server(tl, INVITE)
    run_layer(tl, 0.2)  # 100 Trying carries no tag
    tl.receive_request(req("CANCEL"), 1.0, reliable=False)
    answer, cancelled = drain(tl)
    assert isinstance(answer, MessageToSend) and isinstance(answer.message, Response)
    assert answer.message.to.tag == "tag1"
    assert cancelled == CancelReceived(req("CANCEL"), "tag1", handle=h)


def test_layer_cancel_after_final_gets_200_but_no_event() -> None:
    tl = layer(trying_delay=None)
    h = new_server(tl, INVITE)
    tl.send_response(h, resp(INVITE, 486), 0.1)
    drain(tl)
    tl.receive_request(req("CANCEL"), 1.0, reliable=False)
    (answer,) = drain(tl)
    assert isinstance(answer, MessageToSend) and isinstance(answer.message, Response)
    assert answer.message.status == 200


def test_layer_cancel_of_non_invite_gets_200() -> None:
    tl = layer()
    new_server(tl, req("OPTIONS", branch="z9hG4bKopt"))
    tl.receive_request(req("CANCEL", branch="z9hG4bKopt"), 0.1, reliable=False)
    (answer,) = drain(tl)  # §9.2: 200, and no effect on the OPTIONS
    assert isinstance(answer, MessageToSend) and isinstance(answer.message, Response)
    assert answer.message.status == 200


def test_layer_cancel_without_match_gets_481() -> None:
    tl = layer()
    cancel = req("CANCEL", branch="z9hG4bKnothing")
    tl.receive_request(cancel, 0.0, reliable=True)
    events = drain(tl)
    answer = events[0]
    assert isinstance(answer, MessageToSend) and isinstance(answer.message, Response)
    assert answer.message.status == 481 and answer.message.to.tag == "tag1"
    assert events[1:] == [Terminated(handle=answer.handle)]  # reliable: Timer J = 0
    assert not any(isinstance(e, RequestReceived) for e in events)


def test_layer_client_invite_flow_with_cancel_queued_until_provisional() -> None:
    tl = layer()
    h = tl.send_request(INVITE, 0.0, reliable=False, context="dest")
    assert drain(tl) == [MessageToSend(INVITE, handle=h)]
    assert h.context == "dest" and not h.is_server
    ch = tl.cancel(h, 0.1)
    assert ch is not None and ch.method == "CANCEL"
    assert tl.cancel(h, 0.2) == ch  # asking twice changes nothing
    assert drain(tl) == []  # §9.1: not before a provisional response
    run_layer(tl, 0.5)  # INVITE retransmission
    ringing = resp(INVITE, 180)
    tl.receive_response(ringing, 0.6)
    events = drain(tl)
    assert events[0] == ResponseReceived(ringing, handle=h)
    assert events[1] == MessageToSend(build_cancel(INVITE), handle=ch)
    assert ch.context == "dest"
    ok = resp(build_cancel(INVITE), 200)
    tl.receive_response(ok, 0.7)
    assert drain(tl) == [ResponseReceived(ok, handle=ch)]
    terminated = resp(INVITE, 487)
    tl.receive_response(terminated, 0.8)
    events = drain(tl)
    assert events[0] == ResponseReceived(terminated, handle=h)
    assert isinstance(events[1], MessageToSend) and events[1].message.method == "ACK"  # type: ignore[union-attr]
    run_layer(tl, 100.0)
    assert len(tl) == 0


def test_layer_cancel_twice_while_proceeding_sends_one_cancel() -> None:
    tl = layer()
    h = tl.send_request(INVITE, 0.0, reliable=True)
    tl.receive_response(resp(INVITE, 183), 0.1)
    drain(tl)
    first = tl.cancel(h, 0.2)
    assert tl.cancel(h, 0.3) == first
    cancels = [e for e in drain(tl) if isinstance(e, MessageToSend)]
    assert cancels == [MessageToSend(build_cancel(INVITE), handle=first)]


def test_layer_queued_cancel_dropped_when_final_comes_first() -> None:
    tl = layer()
    h = tl.send_request(INVITE, 0.0, reliable=False)
    drain(tl)
    ch = tl.cancel(h, 0.1)
    tl.receive_response(resp(INVITE, 486), 0.2)
    events = drain(tl)
    assert Terminated(handle=ch) in events
    assert not any(isinstance(e, MessageToSend) and e.message.method == "CANCEL" for e in events)  # type: ignore[union-attr]
    assert tl.cancel(h, 0.3) is None  # a final response arrived: CANCEL would be a no-op


def test_layer_cancelled_invite_gives_up_after_64_t1() -> None:
    tl = layer()
    h = tl.send_request(INVITE, 0.0, reliable=True)
    tl.receive_response(resp(INVITE, 180), 1.0)
    ch = tl.cancel(h, 2.0)
    tl.receive_response(resp(build_cancel(INVITE), 200), 2.1)
    drain(tl)
    log = run_layer(tl, 100.0)
    assert (34.0, TimedOut("cancel", handle=h)) in log
    assert (34.0, Terminated(handle=h)) in log
    assert ch is not None and len(tl) == 0


def test_layer_stray_and_late_responses() -> None:
    tl = layer()
    stray = resp(req(branch="z9hG4bKunknown"), 200)
    tl.receive_response(stray, 0.0)
    assert drain(tl) == [StrayResponse(stray)]
    h = tl.send_request(OPTIONS, 0.0, reliable=True)
    ok = resp(OPTIONS, 200)
    tl.receive_response(ok, 0.1)
    assert drain(tl)[-1] == Terminated(handle=h)
    tl.receive_response(ok, 0.2)  # a late response after termination is a stray
    assert drain(tl) == [StrayResponse(ok)]


def test_layer_send_request_rules() -> None:
    tl = layer()
    with pytest.raises(TransactionError, match="ACK"):
        tl.send_request(req("ACK"), 0.0, reliable=False)
    with pytest.raises(TransactionError, match="z9hG4bK"):
        tl.send_request(req(branch="old"), 0.0, reliable=False)
    tl.send_request(INVITE, 0.0, reliable=False)
    with pytest.raises(TransactionError, match="exists"):
        tl.send_request(INVITE, 0.0, reliable=False)
    h = tl.send_request(OPTIONS, 0.0, reliable=False)
    with pytest.raises(TransactionError, match="only an INVITE"):
        tl.cancel(h, 0.1)
    with pytest.raises(TransactionError, match="client transaction"):
        tl.send_response(h, resp(OPTIONS, 200), 0.1)


def test_layer_transport_error_routing() -> None:
    tl = layer()
    h = tl.send_request(OPTIONS, 0.0, reliable=False)
    drain(tl)
    tl.handle_transport_error(h, 0.1)
    assert drain(tl) == [TransportFailed(handle=h), Terminated(handle=h)]
    tl.handle_transport_error(h, 0.2)  # gone: ignored
    assert drain(tl) == []


def test_layer_rfc2543_fallback_matching() -> None:
    tl = layer(trying_delay=None)
    old = req(branch=None)
    h = new_server(tl, old)
    tl.receive_request(req(branch=None), 0.5, reliable=False)
    (trying,) = drain(tl)  # matched as a retransmission: answered with 100 Trying, not a new transaction
    assert isinstance(trying, MessageToSend) and trying.handle == h
    busy = resp(old, 486, to_tag="2543tag")
    tl.send_response(h, busy, 1.0)
    drain(tl)
    tl.receive_request(req(branch=None), 1.1, reliable=False)
    assert drain(tl) == [MessageToSend(busy, handle=h)]
    # The ACK carries the To tag of the response: matched through it (§17.2.3), and absorbed.
    tl.receive_request(req("ACK", branch=None, to_tag="2543tag"), 1.2, reliable=False)
    assert drain(tl) == []
    server = tl.transaction(h)
    assert server is not None and server.state is InviteServerState.CONFIRMED
    # An ACK with another To tag does not match: it goes to the TU.
    other = req("ACK", branch=None, to_tag="othertag")
    tl.receive_request(other, 1.3, reliable=False)
    assert drain(tl) == [AckReceived(other)]
    # A different Call-ID is a new transaction.
    new_server(tl, req(branch=None, call_id="another"), 1.4)


def test_layer_rejects_beyond_max_server_transactions_with_503() -> None:
    tl = layer(limits=Limits(max_server_transactions=2), retry_after=7)
    new_server(tl, req("OPTIONS", branch="z9hG4bK1"))
    h2 = new_server(tl, req("OPTIONS", branch="z9hG4bK2"))
    tl.receive_request(req("OPTIONS", branch="z9hG4bK3"), 0.0, reliable=False, context="c3")
    (event,) = drain(tl)
    assert isinstance(event, MessageToSend) and isinstance(event.message, Response)
    assert event.message.status == 503 and event.message.get("retry-after") == "7"
    assert event.message.to.tag == "tag1"
    assert event.handle is not None and event.handle.context == "c3" and tl.transaction(event.handle) is None
    assert tl.server_count == 2
    # ACKs are never rejected; a CANCEL of an existing transaction is still honoured.
    ack = req("ACK", branch="z9hG4bK9")
    tl.receive_request(ack, 0.0, reliable=False)
    assert drain(tl) == [AckReceived(ack)]
    tl.receive_request(req("CANCEL", branch="z9hG4bK2"), 0.0, reliable=False)
    (answer,) = drain(tl)
    assert isinstance(answer, MessageToSend) and answer.message.status == 200  # type: ignore[union-attr]
    # Once one ends, requests are accepted again.
    tl.send_response(h2, resp(req("OPTIONS", branch="z9hG4bK2"), 200), 0.1)
    run_layer(tl, 100.0)
    new_server(tl, req("OPTIONS", branch="z9hG4bK4"), 100.0)


def test_layer_timer_heap_scales_to_10000_transactions() -> None:
    tl = layer()
    requests = [
        OPTIONS.replace_header("Via", f"SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK{n}")
        for n in range(10_000)
    ]
    for n, request in enumerate(requests):
        tl.send_request(request, n * 0.001, reliable=False)
    drain(tl)
    assert tl.client_count == 10_000
    assert tl.get_timer() == 0.5
    # Answer half of them; their Timer E entries become stale and are skipped lazily.
    for request in requests[::2]:
        tl.receive_response(resp(request, 200), 12.0)
    drain(tl)
    log = run_layer(tl, 100.0)
    timeouts = [e for _, e in log if isinstance(e, TimedOut)]
    assert len(timeouts) == 5_000 and all(e.timer == "F" for e in timeouts)
    assert len(tl) == 0 and tl.get_timer() is None
    assert len(tl._heap) == 0


# ---------------------------------------------------------------------------------------------------------
# purity
# ---------------------------------------------------------------------------------------------------------


def test_transaction_module_imports_no_io() -> None:
    source = Path(__file__).resolve().parents[2] / "sipcore" / "transaction.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "pyee", "random", "secrets", "threading"}
    assert "transport" not in {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
    }
