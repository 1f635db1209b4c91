"""Property test: a UAC and a UAS InviteSession talking through a fake network with a fake clock.

Between them sits a minimal stand-in for the transaction layer (reliable requests and final responses unless a
rule times a transaction out; CANCEL answered by the "layer"; 2xx retransmissions and ACKs travel outside any
transaction and may be lost). Hypothesis interleaves TU commands on both sides, deliveries in any order,
losses, timeouts and the passing of time, and checks after every step:

* nothing is emitted after ``Terminated`` (and ``Terminated`` comes once);
* CSeq numbers of new requests a session sends strictly increase;
* no server transaction ever gets two final responses (in particular: one final response per INVITE);
* every response a session sends answers a request it received;
* after ``handle_timer(now)``, ``get_timer()`` is never at or before ``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from durchwahl.sipcore.message import Request, Response, make_response, parse_message
from durchwahl.sipcore.session import (
    DialogRequestReceived,
    InviteSession,
    Role,
    SendCancel,
    SendDirect,
    SendRequest,
    SendResponse,
    SessionError,
    SessionEvent,
    SessionState,
    Terminated,
    TransactionFailure,
)

ESTABLISHED = (
    SessionState.CONFIRMED,
    SessionState.REINVITING,
    SessionState.REINVITE_BACKOFF,
    SessionState.REINVITED,
    SessionState.REINVITE_ACK_WAIT,
)
MID_INVITE = (
    SessionState.REINVITING,
    SessionState.REINVITE_BACKOFF,
    SessionState.REINVITED,
    SessionState.REINVITE_ACK_WAIT,
    SessionState.WAITING_FOR_ACK,
    SessionState.ANSWERED,
)
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _wire_request(message: Request) -> Request:
    out = parse_message(bytes(message))
    assert isinstance(out, Request)
    return out


def _wire_response(message: Response) -> Response:
    out = parse_message(bytes(message))
    assert isinstance(out, Response)
    return out


@attrs.define
class ClientTxn:
    request: Request
    owner: int
    final: bool = False
    dead: bool = False


@attrs.define
class ServerTxn:
    request: Request
    owner: int
    finals: int = 0


@attrs.frozen
class Packet:
    kind: str  # "request", "response", "direct", "cancel"
    to: int  # index of the receiving side
    message: Request | Response


def _txn_key(message: Request | Response) -> tuple[str | None, str]:
    return (message.branch, message.cseq.method)


class InviteSessionPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.sides: list[InviteSession] = []
        self.terminated = [False, False]
        self.last_seq: list[int | None] = [None, None]
        self.in_flight: list[Packet] = []
        self.clients: dict[tuple[str | None, str], ClientTxn] = {}
        self.servers: dict[tuple[str | None, str], ServerTxn] = {}
        self.pending_in: list[list[Request]] = [[], []]

    # ------------------------------------------------------------------------------------ setup

    @initialize(
        rands=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=5), offer=st.booleans()
    )
    def start(self, rands: list[float], offer: bool) -> None:
        cycle = itertools.cycle(rands)

        def make(role: Role, name: str, host: str) -> InviteSession:
            counter = itertools.count(1)
            return InviteSession(
                role,
                contact=f"<sip:{name}@{host}:5060>",
                via=f"SIP/2.0/UDP {host}:5060",
                make_tag=lambda: f"{name}-t{next(counter)}",
                make_branch=lambda: f"{name}{next(counter)}",
                make_call_id=lambda: "call-1",
                rand=lambda: next(cycle),
            )

        self.sides = [make(Role.UAC, "alice", "10.0.0.1"), make(Role.UAS, "bob", "10.0.0.2")]
        self.sides[0].send_invite(
            request_uri="sip:bob@10.0.0.2", to="<sip:bob@example.com>", from_="<sip:alice@example.com>",
            body=SDP if offer else b"", now=self.now,
        )  # fmt: skip
        self.collect()

    # ------------------------------------------------------------------------------- plumbing

    def collect(self) -> None:
        """Drain both sessions' events into the network, checking the invariants on the way."""
        for index, session in enumerate(self.sides):
            while (event := session.next_event()) is not None:
                self.on_event(index, event)

    def on_event(self, index: int, event: SessionEvent) -> None:
        assert not self.terminated[index], f"side {index} emitted {event} after Terminated"
        peer = 1 - index
        if isinstance(event, Terminated):
            self.terminated[index] = True
        elif isinstance(event, SendRequest):
            request = event.request
            seq = request.cseq.seq
            last = self.last_seq[index]
            assert last is None or seq > last, f"CSeq {seq} after {last}"
            self.last_seq[index] = seq
            self.clients[_txn_key(request)] = ClientTxn(request, index)
            self.in_flight.append(Packet("request", peer, request))
        elif isinstance(event, SendCancel):
            self.in_flight.append(Packet("cancel", peer, event.invite))
        elif isinstance(event, SendResponse):
            self.send_response(index, event.response)
        elif isinstance(event, SendDirect):
            message = event.message
            if isinstance(message, Request):
                assert message.method == "ACK"
                assert _txn_key(message) not in self.clients  # the ACK for a 2xx has a branch of its own
            else:
                assert message.cseq.method == "INVITE" and 200 <= message.status < 300
            self.in_flight.append(Packet("direct", peer, message))
        elif isinstance(event, DialogRequestReceived):
            self.pending_in[index].append(event.request)

    def send_response(self, index: int, response: Response) -> None:
        server = self.servers.get(_txn_key(response))
        assert server is not None and server.owner == index, f"{response.status} answers no request received"
        if response.status >= 200:
            server.finals += 1
            assert server.finals == 1, f"second final response {response.status} to {server.request.method}"
        self.in_flight.append(Packet("response", 1 - index, response))

    def deliver_request(self, to: int, request: Request) -> None:
        session = self.sides[to]
        self.servers[_txn_key(request)] = ServerTxn(request, to)
        try:
            session.receive_request(_wire_request(request), self.now)
        except SessionError as exc:
            # The endpoint's job for a session that cannot take it (terminated): answer with exc.status.
            assert exc.status is not None, exc
            self.send_response(to, make_response(request, exc.status, to_tag="endpoint"))

    def deliver(self, packet: Packet) -> None:
        session = self.sides[packet.to]
        message = packet.message
        if packet.kind == "request":
            assert isinstance(message, Request)
            self.deliver_request(packet.to, message)
        elif packet.kind == "cancel":
            # The transaction layer answers CANCEL; the TU hears of it while the INVITE has no final response.
            assert isinstance(message, Request)
            server = self.servers.get(_txn_key(message))
            if server is not None and server.finals == 0:
                cancel = message.replace_header("CSeq", f"{message.cseq.seq} CANCEL")
                session.receive_request(
                    _wire_request(Request("CANCEL", cancel.uri, cancel.headers)), self.now
                )
        elif packet.kind == "response":
            assert isinstance(message, Response)
            client = self.clients.get(_txn_key(message))
            if client is None or client.dead:
                return  # stray: the transaction layer drops it
            if client.final and not (message.cseq.method == "INVITE" and 200 <= message.status < 300):
                return  # absorbed by a completed transaction
            if message.status >= 200:
                client.final = True
            session.receive_response(_wire_response(message), self.now)
        else:  # direct: ACK for a 2xx, or a 2xx retransmission (RFC 6026 Accepted state passes it up)
            if isinstance(message, Request):
                self.servers.setdefault(_txn_key(message), ServerTxn(message, packet.to))
                session.receive_request(_wire_request(message), self.now)
            else:
                client = self.clients.get(_txn_key(message))
                if client is not None and not client.dead:
                    session.receive_response(_wire_response(message), self.now)

    def command(self, index: int, action: Callable[[InviteSession], object]) -> None:
        """Run a TU command; a refused one must change nothing and emit nothing."""
        session = self.sides[index]
        before = session.state
        try:
            action(session)
        except SessionError:
            assert session.state is before
            assert session.next_event() is None
        self.collect()

    def sides_in(self, *states: SessionState) -> list[int]:
        return [i for i, session in enumerate(self.sides) if session.state in states]

    # ---------------------------------------------------------------------------------- network rules

    @precondition(lambda self: bool(self.in_flight))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def deliver_one(self, pick: int) -> None:
        """Deliver any message in flight: the network reorders freely."""
        packet = self.in_flight.pop(pick % len(self.in_flight))
        self.deliver(packet)
        self.collect()

    @precondition(lambda self: bool(self.in_flight))
    @rule()
    def deliver_all_in_order(self) -> None:
        for _ in range(50):
            if not self.in_flight:
                break
            self.deliver(self.in_flight.pop(0))
            self.collect()

    @precondition(lambda self: any(p.kind == "direct" for p in self.in_flight))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def lose_direct(self, pick: int) -> None:
        """ACKs and 2xx retransmissions travel without a transaction and may be lost."""
        directs = [p for p in self.in_flight if p.kind == "direct"]
        self.in_flight.remove(directs[pick % len(directs)])

    @precondition(lambda self: any(p.kind == "direct" for p in self.in_flight))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def duplicate_direct(self, pick: int) -> None:
        """UDP may duplicate: a second copy of an ACK or 2xx retransmission."""
        directs = [p for p in self.in_flight if p.kind == "direct"]
        self.in_flight.append(directs[pick % len(directs)])

    @precondition(lambda self: any(not c.final and not c.dead for c in self.clients.values()))
    @rule(pick=st.integers(min_value=0, max_value=1000), transport=st.booleans(), dice=st.integers(0, 3))
    def time_out_transaction(self, pick: int, transport: bool, dice: int) -> None:
        if dice:
            return
        open_txns = [c for c in self.clients.values() if not c.final and not c.dead]
        client = open_txns[pick % len(open_txns)]
        client.dead = True
        self.in_flight = [
            p
            for p in self.in_flight
            if not (p.kind == "request" and _txn_key(p.message) == _txn_key(client.request))
        ]
        kind = TransactionFailure.TRANSPORT if transport else TransactionFailure.TIMEOUT
        self.sides[client.owner].transaction_failed(client.request, kind, self.now)
        self.collect()

    @rule(dt=st.sampled_from([0.01, 0.3, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 4.5, 10.0, 40.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for session in self.sides:
            session.handle_timer(self.now)
            at = session.get_timer()
            assert at is None or at > self.now, f"timer {at} not after now {self.now}"
        self.collect()

    # ----------------------------------------------------------------------------------- TU rules
    # Steered: each command is tried on a side whose state can take it; hang-ups are rarer so calls live
    # long enough to reach re-INVITEs. ``any_command`` keeps throwing commands at any state.

    @precondition(lambda self: bool(self.sides_in(SessionState.INCOMING, SessionState.REINVITED)))
    @rule(pick=st.integers(0, 1), status=st.sampled_from([180, 183]))
    def ringing(self, pick: int, status: int) -> None:
        sides = self.sides_in(SessionState.INCOMING, SessionState.REINVITED)
        self.command(sides[pick % len(sides)], lambda s: s.ringing(status=status, now=self.now))

    @precondition(lambda self: bool(self.sides_in(SessionState.INCOMING, SessionState.REINVITED)))
    @rule(pick=st.integers(0, 1), offer=st.booleans())
    def answer(self, pick: int, offer: bool) -> None:
        sides = self.sides_in(SessionState.INCOMING, SessionState.REINVITED)
        self.command(sides[pick % len(sides)], lambda s: s.answer(body=SDP if offer else b"", now=self.now))

    @precondition(lambda self: bool(self.sides_in(SessionState.INCOMING, SessionState.REINVITED)))
    @rule(pick=st.integers(0, 1), status=st.sampled_from([486, 488, 603]), dice=st.integers(0, 2))
    def reject(self, pick: int, status: int, dice: int) -> None:
        sides = self.sides_in(SessionState.INCOMING, SessionState.REINVITED)
        if dice == 0 or self.sides[sides[pick % len(sides)]].state is SessionState.REINVITED:
            self.command(sides[pick % len(sides)], lambda s: s.reject(status, now=self.now))

    @precondition(lambda self: bool(self.sides_in(SessionState.CALLING, SessionState.PROCEEDING)))
    @rule(dice=st.integers(0, 3))
    def cancel(self, dice: int) -> None:
        if dice == 0:
            self.command(0, lambda s: s.cancel(now=self.now))

    @rule(side=st.integers(0, 1), dice=st.integers(0, 5))
    def bye(self, side: int, dice: int) -> None:
        if dice == 0:
            self.command(side, lambda s: s.bye(now=self.now))

    @precondition(lambda self: bool(self.sides_in(*MID_INVITE)))
    @rule(side=st.integers(0, 1), dice=st.integers(0, 2))
    def bye_mid_invite(self, side: int, dice: int) -> None:
        """Hang up while an INVITE transaction is half-way (§15.1.2: pending requests get 487)."""
        if dice == 0:
            self.command(side, lambda s: s.bye(now=self.now))

    @precondition(lambda self: bool(self.sides_in(SessionState.CONFIRMED, SessionState.REINVITE_BACKOFF)))
    @rule(pick=st.integers(0, 1), offer=st.sampled_from([True, True, False]))
    def reinvite(self, pick: int, offer: bool) -> None:
        sides = self.sides_in(SessionState.CONFIRMED, SessionState.REINVITE_BACKOFF)
        self.command(sides[pick % len(sides)], lambda s: s.reinvite(body=SDP if offer else b"", now=self.now))

    @rule(side=st.integers(0, 1), offer=st.booleans())
    def reinvite_both(self, side: int, offer: bool) -> None:
        """Both sides re-INVITE at once: the glare case of §14."""
        for index in (side, 1 - side):
            self.command(index, lambda s: s.reinvite(body=SDP if offer else b"", now=self.now))

    @precondition(lambda self: bool(self.sides_in(SessionState.ANSWERED)))
    @rule()
    def ack_with_answer(self) -> None:
        self.command(self.sides_in(SessionState.ANSWERED)[0], lambda s: s.ack(body=SDP, now=self.now))

    @precondition(lambda self: bool(self.sides_in(*ESTABLISHED)))
    @rule(pick=st.integers(0, 1))
    def info(self, pick: int) -> None:
        sides = self.sides_in(*ESTABLISHED)
        self.command(
            sides[pick % len(sides)], lambda s: s.send_request("INFO", body=b"Signal=1\r\n", now=self.now)
        )

    @precondition(lambda self: any(self.pending_in))
    @rule(side=st.integers(0, 1), status=st.sampled_from([200, 415]))
    def respond(self, side: int, status: int) -> None:
        if not self.pending_in[side]:
            side = 1 - side
        request = self.pending_in[side].pop(0)
        self.command(side, lambda s: s.respond(request, status, now=self.now))

    @rule(side=st.integers(0, 1), which=st.integers(0, 8), dice=st.integers(0, 3))
    def any_command(self, side: int, which: int, dice: int) -> None:
        """Any command in any state: refused ones must change nothing (protocol error, no fall-through)."""
        if dice:
            return
        commands: list[Callable[[InviteSession], object]] = [
            lambda s: s.ringing(now=self.now),
            lambda s: s.answer(body=SDP, now=self.now),
            lambda s: s.reject(486, now=self.now),
            lambda s: s.cancel(now=self.now),
            lambda s: s.bye(now=self.now),
            lambda s: s.reinvite(body=SDP, now=self.now),
            lambda s: s.ack(body=SDP, now=self.now),
            lambda s: s.send_request("OPTIONS", now=self.now),
            lambda s: s.reinvite(now=self.now),
        ]
        self.command(side, commands[which])

    # ---------------------------------------------------------------------------------- invariants

    @invariant()
    def terminated_sessions_are_quiet(self) -> None:
        for index, session in enumerate(self.sides):
            if self.terminated[index]:
                assert session.state is SessionState.TERMINATED
                assert session.get_timer() is None
            else:
                assert session.state is not SessionState.TERMINATED


TestInviteSessionPair = InviteSessionPair.TestCase
TestInviteSessionPair.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
