"""The session layer over loopback endpoints: calls answered, confirmed, cancelled, timed out, hung up."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from durchwahl.sipcore import Endpoint, IncomingRequest
from durchwahl.sipcore.auth import DigestSecret, DigestServer
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import (
    Answered,
    Cancelled,
    Confirmed,
    DialogRequestReceived,
    DialogResponseReceived,
    ReinviteAnswered,
    ReinviteReceived,
    SessionEvent,
    Terminated,
    TerminationReason,
)
from durchwahl.sipcore.transaction import Timers
from durchwahl.sipcore.transport import Flow
from durchwahl.sipcore.ua import Call, CallFailed, IncomingCall, OutgoingCall, UserAgent

FAST = Timers(t1=0.02, t2=0.1, t4=0.1)
SDP_A = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_B = b"v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"


@dataclass
class Side:
    endpoint: Endpoint
    ua: UserAgent
    port: int
    incoming: asyncio.Queue[IncomingCall] = field(default_factory=asyncio.Queue)


@dataclass
class Pair:
    alice: Side
    bob: Side

    @property
    def to_bob(self) -> Flow:
        return self.alice.endpoint.flow_to("127.0.0.1", self.bob.port)

    def call_bob(self, body: bytes = SDP_A, credentials: tuple[str, str] | None = None) -> OutgoingCall:
        return self.alice.ua.invite(
            f"sip:bob@127.0.0.1:{self.bob.port}",
            self.to_bob,
            from_="<sip:alice@example.com>",
            to="<sip:bob@example.com>",
            body=body,
            credentials=credentials,
        )


async def side(handler_accepts: bool = True) -> Side:
    endpoint = Endpoint(timers=FAST)
    _, port = await endpoint.listen("udp:127.0.0.1:0")
    ua = UserAgent(endpoint)
    result = Side(endpoint, ua, port)
    if handler_accepts:

        def handler(incoming: IncomingRequest) -> None:
            result.incoming.put_nowait(ua.accept(incoming))

        ua.handler = handler
    return result


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    alice, bob = await side(), await side()
    try:
        yield Pair(alice, bob)
    finally:
        await alice.endpoint.close()
        await bob.endpoint.close()


async def next_event(call: Call, kind: type[SessionEvent]) -> SessionEvent:
    """Skip events until one of ``kind`` (bounded)."""
    async with asyncio.timeout(3):
        while True:
            _, event = await call.events.get()
            if isinstance(event, kind):
                return event


async def answered_call(pair: Pair) -> tuple[Call, IncomingCall]:
    caller = pair.call_bob()
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    assert callee.request.body == SDP_A
    callee.ring()
    callee.answer(body=SDP_B)
    async with asyncio.timeout(3):
        ok = await caller.wait_answered()
    assert ok.status == 200 and ok.body == SDP_B
    await next_event(callee, Confirmed)
    return caller, callee


async def test_call_answered_confirmed_and_bye_from_caller_ends_both(pair: Pair) -> None:
    caller, callee = await answered_call(pair)
    answered = await next_event(caller, Answered)
    assert isinstance(answered, Answered) and not answered.answer_owed
    assert caller.session.dialog_id is not None and callee.session.dialog_id is not None
    assert caller.session.dialog_id.local_tag == callee.session.dialog_id.remote_tag
    caller.bye()
    async with asyncio.timeout(3):
        ended_callee = await callee.wait_ended()
        ended_caller = await caller.wait_ended()
    assert ended_callee.reason is TerminationReason.REMOTE_BYE
    assert ended_caller.reason is TerminationReason.LOCAL_BYE
    assert pair.alice.ua.calls == () and pair.bob.ua.calls == ()


async def test_a_finished_call_is_freed_without_the_cyclic_collector(pair: Pair) -> None:
    """Once a call has ended, its events are read and its transactions are over (64*T1), reference counting
    frees its legs. A reference cycle (an INVITE's ACK callback back to its call; a call's table of sent
    requests to their response callbacks back to it) would leave every leg to the cyclic collector, which
    with a server's raised GC thresholds (``routing.server.tune_gc``) runs seldom: they piled up."""
    gc.disable()
    try:
        caller, callee = await answered_call(pair)
        caller.bye()
        async with asyncio.timeout(3):
            await callee.wait_ended()
            await caller.wait_ended()
        legs = [caller, callee, caller.session, callee.session]
        refs = [weakref.ref(leg) for leg in legs]
        for call in (caller, callee):
            while not call.events.empty():
                call.events.get_nowait()
        del caller, callee, call, legs
        await asyncio.sleep(64 * FAST.t1 + 0.5)  # the call's transactions end (Timers J, K, L, M)
        assert [ref() for ref in refs] == [None, None, None, None]
    finally:
        gc.enable()


async def test_an_ended_call_is_not_kept_by_its_invite_transaction(pair: Pair) -> None:
    """The INVITE's client transaction outlives the call by 64*T1 (Timer M, for 2xx retransmissions, which
    the endpoint then ACKs from its cache); it must not keep the leg alive that long: at a few hundred calls
    per second that is every ended call's session, dialog and queues, re-walked by each GC pass."""
    gc.disable()
    try:
        caller, _ = await answered_call(pair)
        caller.bye()
        async with asyncio.timeout(3):
            await caller.wait_ended()
        refs = [weakref.ref(caller), weakref.ref(caller.session)]
        while not caller.events.empty():
            caller.events.get_nowait()
        del caller
        await asyncio.sleep(3 * FAST.t4)  # the BYE's transaction is over (Timer K = T4), the INVITE's is not
        assert [ref() for ref in refs] == [None, None]
        assert pair.alice.endpoint._layer.client_count == 1
    finally:
        gc.enable()


async def test_a_2xx_repeated_after_the_call_gets_its_own_dialogs_ack_only(pair: Pair) -> None:
    """After the call, the endpoint answers a retransmitted 2xx with the cached ACK (RFC 3261 §13.2.2.4); a
    2xx of the same INVITE with another To tag (another fork's dialog) must not get that dialog's ACK."""
    seen: list[tuple[str, bytes]] = []
    pair.alice.endpoint.add_tracer(lambda way, data, flow: seen.append((way, data)))
    caller, callee = await answered_call(pair)
    ok = next(
        data for way, data in seen if way == "in" and data.startswith(b"SIP/2.0 200") and b"INVITE" in data
    )
    tag = callee.session.dialog_id.local_tag if callee.session.dialog_id else None
    assert tag and f";tag={tag}".encode() in ok
    caller.bye()
    async with asyncio.timeout(3):
        await caller.wait_ended()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for data, acked in ((ok, True), (ok.replace(tag.encode(), b"another-fork"), False)):
            seen.clear()
            peer.sendto(data, ("127.0.0.1", pair.alice.port))
            await asyncio.sleep(0.1)
            acks = [d for way, d in seen if way == "out" and d.startswith(b"ACK ")]
            assert bool(acks) is acked
            assert all(f";tag={tag}".encode() in d for d in acks)
    finally:
        peer.close()


async def test_bye_from_callee_ends_both(pair: Pair) -> None:
    caller, callee = await answered_call(pair)
    callee.bye()
    async with asyncio.timeout(3):
        assert (await caller.wait_ended()).reason is TerminationReason.REMOTE_BYE
        assert (await callee.wait_ended()).reason is TerminationReason.LOCAL_BYE


async def test_cancel_before_answer_gives_487(pair: Pair) -> None:
    caller = pair.call_bob()
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.ring()
    async with asyncio.timeout(3):
        while not caller.session.dialog_set or not caller.session.dialog_set.dialogs:
            await asyncio.sleep(0.005)  # the 180 made an early dialog: CANCEL may go now
    caller.cancel(headers=[("Reason", 'SIP;cause=200;text="Call completed elsewhere"')])
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await caller.wait_answered()
    assert failed.value.status == 487
    cancelled = await next_event(callee, Cancelled)
    assert isinstance(cancelled, Cancelled) and cancelled.message is not None
    assert cancelled.message.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    async with asyncio.timeout(3):
        assert (await callee.wait_ended()).reason is TerminationReason.CANCELLED
        assert (await caller.wait_ended()).reason is TerminationReason.CANCELLED


async def test_cancel_before_any_provisional_waits_for_one(pair: Pair) -> None:
    caller = pair.call_bob()
    caller.cancel()  # nothing heard yet: the CANCEL waits for the 100/180 (RFC 3261 §9.1)
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.ring()
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await caller.wait_answered()
    assert failed.value.status == 487


async def test_unanswered_call_times_out_cleanly_to_a_silent_address(pair: Pair) -> None:
    dead = await side(handler_accepts=False)
    port = dead.port
    await dead.endpoint.close()  # nobody listens there any more: Timer B (64*T1 = 1.28 s)
    caller = pair.alice.ua.invite(
        f"sip:nobody@127.0.0.1:{port}",
        pair.alice.endpoint.flow_to("127.0.0.1", port),
        from_="<sip:alice@example.com>",
        to="<sip:nobody@example.com>",
        body=SDP_A,
    )
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(5):
            await caller.wait_answered()
    assert failed.value.status == 408
    assert (await caller.wait_ended()).reason is TerminationReason.TIMEOUT
    assert pair.alice.ua.calls == ()


async def test_ringing_forever_is_given_up_by_the_caller(pair: Pair) -> None:
    caller = pair.call_bob()
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.ring()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await caller.wait_answered()
    caller.bye()  # before the answer: a CANCEL
    async with asyncio.timeout(3):
        assert (await callee.wait_ended()).reason is TerminationReason.CANCELLED
        assert (await caller.wait_ended()).reason is TerminationReason.CANCELLED


async def test_rejected_call(pair: Pair) -> None:
    caller = pair.call_bob()
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.reject(486)
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await caller.wait_answered()
    assert failed.value.status == 486 and failed.value.response is not None


async def test_unknown_dialog_gets_481(pair: Pair) -> None:
    flow = pair.to_bob
    bye = pair.alice.endpoint.make_request(
        "BYE",
        f"sip:bob@127.0.0.1:{pair.bob.port}",
        flow,
        from_="<sip:alice@example.com>",
        to="<sip:bob@example.com>;tag=nosuchtag",
    )
    async with asyncio.timeout(3):
        response = await pair.alice.endpoint.request(bye, flow)
    assert response.status == 481


async def test_reinvite_and_info_inside_the_dialog(pair: Pair) -> None:
    caller, callee = await answered_call(pair)
    caller.reinvite(body=SDP_A.replace(b"4000", b"4002"))
    received = await next_event(callee, ReinviteReceived)
    assert isinstance(received, ReinviteReceived) and b"4002" in received.offer
    callee.answer_reinvite(body=SDP_B)
    answered = await next_event(caller, ReinviteAnswered)
    assert isinstance(answered, ReinviteAnswered) and answered.response.body == SDP_B
    callee.send_request("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    info = await next_event(caller, DialogRequestReceived)
    assert isinstance(info, DialogRequestReceived) and info.request.body == b"Signal=5\r\n"
    caller.respond(info.request, 200)
    reply = await next_event(callee, DialogResponseReceived)
    assert isinstance(reply, DialogResponseReceived) and reply.response.status == 200
    caller.bye()
    async with asyncio.timeout(3):
        await callee.wait_ended()


async def test_offerless_invite_gets_the_answer_in_the_ack(pair: Pair) -> None:
    caller = pair.call_bob(body=b"")
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.answer(body=SDP_B)
    answered = await next_event(caller, Answered)
    assert isinstance(answered, Answered) and answered.answer_owed
    caller.ack(body=SDP_A)
    confirmed = await next_event(callee, Confirmed)
    assert isinstance(confirmed, Confirmed) and confirmed.ack.body == SDP_A
    callee.bye()
    async with asyncio.timeout(3):
        await caller.wait_ended()


async def test_digest_challenge_is_answered_once(pair: Pair) -> None:
    digest = DigestServer("example.com", secret=b"0123456789abcdef0123456789abcdef", algorithms=["MD5"])
    bob_ua = pair.bob.ua
    accepted: list[IncomingCall] = []

    def handler(incoming: IncomingRequest) -> None:
        result = digest.verify(incoming.request, lambda user: DigestSecret(password="pw"), 0.0)
        if type(result).__name__ != "Authenticated":
            incoming.send(digest.challenge_response(incoming.request, 0.0, to_tag=incoming.to_tag))
            return
        call = bob_ua.accept(incoming)
        accepted.append(call)
        call.answer(body=SDP_B)

    bob_ua.handler = handler
    caller = pair.call_bob(credentials=("alice", "pw"))
    async with asyncio.timeout(3):
        ok = await caller.wait_answered()
    assert ok.status == 200
    invite = caller.invite
    assert invite is not None and invite.cseq.seq == 2 and invite.get("authorization") is not None
    assert accepted and accepted[0].request.call_id == invite.call_id
    caller.bye()
    async with asyncio.timeout(3):
        event = await accepted[0].wait_ended()
    assert isinstance(event, Terminated)


async def test_wrong_credentials_are_not_sent_twice(pair: Pair) -> None:
    """A second plain 401 for the realm already answered means the password is wrong: no third INVITE."""
    digest = DigestServer("example.com", secret=b"0123456789abcdef0123456789abcdef", algorithms=["MD5"])
    invites: list[str | None] = []

    def handler(incoming: IncomingRequest) -> None:
        invites.append(incoming.request.get("authorization"))
        incoming.send(digest.challenge_response(incoming.request, 0.0, to_tag=incoming.to_tag))

    pair.bob.ua.handler = handler
    caller = pair.call_bob(credentials=("alice", "wrong"))
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await caller.wait_answered()
    assert failed.value.status == 401
    await asyncio.sleep(0.1)
    assert len(invites) == 2 and invites[0] is None and invites[1] is not None


async def test_a_stale_nonce_and_a_second_realm_are_answered_again(pair: Pair) -> None:
    """A proxy's 407, the server's 401, then a stale re-challenge: each answered, earlier answers kept."""
    proxy = DigestServer("proxy.example", secret=b"1" * 32, algorithms=["MD5"])
    server = DigestServer("example.com", secret=b"2" * 32, algorithms=["MD5"])
    bob_ua = pair.bob.ua
    seen: list[Request] = []
    accepted: list[IncomingCall] = []

    def handler(incoming: IncomingRequest) -> None:
        request = incoming.request
        seen.append(request)
        lookup = lambda user: DigestSecret(password="pw")  # noqa: E731
        if type(proxy.verify(request, lookup, 0.0, proxy=True)).__name__ != "Authenticated":
            incoming.send(proxy.challenge_response(request, 0.0, proxy=True, to_tag=incoming.to_tag))
        elif type(server.verify(request, lookup, 0.0)).__name__ != "Authenticated":
            incoming.send(server.challenge_response(request, 0.0, to_tag=incoming.to_tag))
        elif len(seen) == 3:
            incoming.send(server.challenge_response(request, 0.0, stale=True, to_tag=incoming.to_tag))
        else:
            call = bob_ua.accept(incoming)
            accepted.append(call)
            call.answer(body=SDP_B)

    bob_ua.handler = handler
    caller = pair.call_bob(credentials=("alice", "pw"))
    async with asyncio.timeout(3):
        ok = await caller.wait_answered()
    assert ok.status == 200
    assert [r.cseq.seq for r in seen] == [1, 2, 3, 4]
    assert seen[3].get("proxy-authorization") is not None and seen[3].get("authorization") is not None
    assert seen[2].get("authorization") != seen[3].get("authorization")  # a fresh nonce after "stale"
    caller.bye()
    async with asyncio.timeout(3):
        await accepted[0].wait_ended()


async def test_a_2xx_crossing_the_cancel_is_acked_and_ended_with_bye(pair: Pair) -> None:
    caller = pair.call_bob()
    async with asyncio.timeout(3):
        callee = await pair.bob.incoming.get()
    callee.ring()
    async with asyncio.timeout(3):
        while not caller.session.dialog_set or not caller.session.dialog_set.dialogs:
            await asyncio.sleep(0.005)
    callee.answer(body=SDP_B)  # the 200 is on its way ...
    caller.cancel()  # ... as the CANCEL leaves: they cross
    await next_event(callee, Confirmed)
    assert (await asyncio.wait_for(callee.wait_ended(), 3)).reason is TerminationReason.REMOTE_BYE
    assert (await asyncio.wait_for(caller.wait_ended(), 3)).reason is TerminationReason.CANCELLED
    with pytest.raises(CallFailed):
        await caller.wait_answered()
