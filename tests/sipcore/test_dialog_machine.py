"""Hypothesis state machines for the dialog layer: a UAS dialog under random in-dialog traffic, and a UAC
dialog set under random forked responses (RFC 3261 §12, §13.2.2.4)."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from durchwahl.sipcore.dialog import (
    AnswerRetransmitted,
    Dialog,
    DialogConfirmed,
    DialogError,
    DialogSet,
    DialogState,
    EarlyDialogCreated,
    EarlyDialogsTerminated,
    ForkAnswered,
)
from durchwahl.sipcore.message import Request, Response, parse_message

VIA = "SIP/2.0/UDP 192.0.2.1:5060"

INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _request(method: str, seq: int, *, to_tag: str = "uas1", contact: str | None = None) -> Request:
    text = (
        f"{method} sip:bob@192.0.2.4 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKx\r\n"
        "Max-Forwards: 70\r\n"
        f"To: Bob <sip:bob@biloxi.example.com>;tag={to_tag}\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710\r\n"
        f"CSeq: {seq} {method}\r\n" + (f"Contact: <{contact}>\r\n" if contact else "") + "\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def _response(status: int, tag: str | None, contact: str) -> Response:
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8\r\n"
        "To: Bob <sip:bob@biloxi.example.com>" + (f";tag={tag}" if tag else "") + "\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <{contact}>\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Response)
    return message


class UasDialogMachine(RuleBasedStateMachine):
    """A UAS dialog: the peer's requests must climb in CSeq, ours climb strictly, nothing after teardown."""

    def __init__(self) -> None:
        super().__init__()
        invite = parse_message(INVITE.encode())
        assert isinstance(invite, Request)
        counter = itertools.count()
        self.dialog = Dialog.from_uas(
            invite,
            local_tag="uas1",
            local_contact="<sip:bob@192.0.2.4>",
            via=VIA,
            make_branch=lambda: f"z9hG4bK{next(counter)}",
        )
        self.remote_seq = 1
        self.local_seqs: list[int] = []
        self.target = "sip:alice@pc33.atlanta.example.com"

    @rule()
    def confirm(self) -> None:
        """Confirming is idempotent (a retransmitted 2xx) but impossible once terminated."""
        if self.dialog.state is not DialogState.TERMINATED:
            self.dialog.confirm()
            assert self.dialog.state is DialogState.CONFIRMED
            return
        try:
            self.dialog.confirm()
        except DialogError:
            return
        raise AssertionError("a terminated dialog was confirmed")

    @rule(step=st.integers(min_value=-3, max_value=3), method=st.sampled_from(["BYE", "INFO", "INVITE"]))
    def peer_request(self, step: int, method: str) -> None:
        seq = max(1, self.remote_seq + step)
        try:
            self.dialog.receive_request(_request(method, seq))
        except DialogError as exc:
            assert exc.status == 500
            assert seq <= self.remote_seq
            return
        assert seq > self.remote_seq
        self.remote_seq = seq

    @rule(host=st.sampled_from(["192.0.2.7", "192.0.2.8"]))
    def peer_target_refresh(self, host: str) -> None:
        self.dialog.refresh_target(_request("INVITE", self.remote_seq, contact=f"sip:alice@{host}"))
        self.target = f"sip:alice@{host}"

    @rule(method=st.sampled_from(["BYE", "INFO", "INVITE", "UPDATE"]))
    def our_request(self, method: str) -> None:
        if self.dialog.state is DialogState.TERMINATED:
            try:
                self.dialog.create_request(method)
            except DialogError:
                return
            raise AssertionError("a terminated dialog built a request")
        request = self.dialog.create_request(method)
        self.local_seqs.append(request.cseq.seq)
        assert str(request.uri) == self.target
        assert request.to.tag == "1928301774" and request.from_.tag == "uas1"

    @precondition(lambda self: self.dialog.state is not DialogState.TERMINATED)
    @rule()
    def terminate(self) -> None:
        self.dialog.terminate()

    @invariant()
    def our_cseq_strictly_increases(self) -> None:
        assert all(a < b for a, b in itertools.pairwise(self.local_seqs))


class ForkedInviteMachine(RuleBasedStateMachine):
    """A UAC dialog set: forks answer in any order; exactly one dialog is the call, the rest are ended."""

    def __init__(self) -> None:
        super().__init__()
        invite = parse_message(INVITE.encode())
        assert isinstance(invite, Request)
        counter = itertools.count()
        self.dialogs = DialogSet(invite, via=VIA, make_branch=lambda: f"z9hG4bK{next(counter)}")
        self.confirmed_tag: str | None = None
        self.answered: set[str] = set()
        self.rejected = False

    @rule(tag=st.sampled_from(["f1", "f2", "f3"]), status=st.sampled_from([100, 180, 183]))
    def provisional(self, tag: str, status: int) -> None:
        event = self.dialogs.receive_response(_response(status, tag, f"sip:bob@{tag}.example.com"))
        assert event is None or isinstance(event, EarlyDialogCreated)

    @rule(tag=st.sampled_from(["f1", "f2", "f3"]))
    def answer(self, tag: str) -> None:
        event = self.dialogs.receive_response(_response(200, tag, f"sip:bob@{tag}.example.com"))
        if tag in self.answered:
            assert isinstance(event, AnswerRetransmitted)
        elif self.confirmed_tag is None:
            assert isinstance(event, DialogConfirmed)
            self.confirmed_tag = tag
        else:
            assert isinstance(event, ForkAnswered)
            assert event.ack.method == "ACK" and event.bye.method == "BYE"
            assert event.bye.to.tag == tag
        self.answered.add(tag)

    @rule(status=st.sampled_from([486, 603]))
    def failure(self, status: int) -> None:
        event = self.dialogs.receive_response(_response(status, "f9", "sip:bob@f9.example.com"))
        assert isinstance(event, EarlyDialogsTerminated)

    @invariant()
    def one_call_dialog(self) -> None:
        confirmed = self.dialogs.confirmed
        if self.confirmed_tag is None:
            assert confirmed is None
        else:
            assert confirmed is not None and confirmed.id.remote_tag == self.confirmed_tag
            assert confirmed.state is DialogState.CONFIRMED
            others = [d for t, d in self.dialogs.dialogs.items() if t in self.answered - {self.confirmed_tag}]
            assert all(d.state is DialogState.TERMINATED for d in others)


TestUasDialog = UasDialogMachine.TestCase
TestUasDialog.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestForkedInvite = ForkedInviteMachine.TestCase
TestForkedInvite.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
