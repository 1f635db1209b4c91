"""Golden tests for sipcore.dialog: dialog state from RFC 3261 §12, request building, forks (§13.2.2.4)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from durchwahl.sipcore.dialog import (
    AnswerRetransmitted,
    Dialog,
    DialogConfirmed,
    DialogError,
    DialogId,
    DialogSet,
    DialogState,
    EarlyDialogCreated,
    EarlyDialogsTerminated,
    ForkAnswered,
    via_with_branch,
)
from durchwahl.sipcore.message import Request, Response, parse_message

VIA = "SIP/2.0/UDP pc33.atlanta.com:5060"


def make_branch_factory(prefix: str = "br") -> object:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def msg(text: str) -> Request | Response:
    data = text.strip("\n").replace("\n", "\r\n") + "\r\n\r\n"
    return parse_message(data.encode())


def req(text: str) -> Request:
    message = msg(text)
    assert isinstance(message, Request)
    return message


def resp(text: str) -> Response:
    message = msg(text)
    assert isinstance(message, Response)
    return message


INVITE = """
INVITE sip:bob@biloxi.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.com:5060;branch=z9hG4bKnashds8
Max-Forwards: 70
To: Bob <sip:bob@biloxi.com>
From: Alice <sip:alice@atlanta.com>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.com>
Authorization: Digest username="alice", realm="atlanta.com", nonce="n", uri="sip:bob@biloxi.com", response="r"
"""


def ok(
    tag: str = "a6c85cf", *, contact: str = "<sip:bob@192.0.2.4>", rr: str | None = None, status: int = 200
) -> Response:
    lines = [
        f"SIP/2.0 {status} OK",
        "Via: SIP/2.0/UDP pc33.atlanta.com:5060;branch=z9hG4bKnashds8",
        f"To: Bob <sip:bob@biloxi.com>;tag={tag}",
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 314159 INVITE",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if rr is not None:
        lines.append(f"Record-Route: {rr}")
    return resp("\n".join(lines))


def uac_dialog(response: Response | None = None) -> Dialog:
    return Dialog.from_uac(req(INVITE), response or ok(), via=VIA, make_branch=make_branch_factory())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- creation


def test_uac_dialog_state_from_invite_and_2xx() -> None:
    """§12.1.2: ids from From tag / To tag, route set = Record-Route reversed, target = Contact."""
    dialog = uac_dialog(ok(rr="<sip:p2.biloxi.com;lr>, <sip:p1.atlanta.com;lr>"))
    assert dialog.id == DialogId("a84b4c76e66710", "1928301774", "a6c85cf")
    assert dialog.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.atlanta.com;lr", "sip:p2.biloxi.com;lr"]
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4"
    assert dialog.local_seq == 314159
    assert dialog.remote_seq is None
    assert str(dialog.local_uri) == "sip:alice@atlanta.com"
    assert str(dialog.remote_uri) == "sip:bob@biloxi.com"
    assert dialog.is_uac and not dialog.secure


def test_uac_dialog_from_provisional_is_early() -> None:
    dialog = uac_dialog(ok(status=180))
    assert dialog.state is DialogState.EARLY


def test_provisional_without_contact_targets_request_uri() -> None:
    dialog = uac_dialog(ok(status=183, contact=""))
    assert str(dialog.remote_target) == "sip:bob@biloxi.com"


def test_secure_flag_needs_tls_and_sips() -> None:
    sips_invite = req(INVITE.replace("INVITE sip:bob@biloxi.com", "INVITE sips:bob@biloxi.com"))
    secure = Dialog.from_uac(sips_invite, ok(), via=VIA, make_branch=lambda: "x", over_tls=True)
    assert secure.secure
    assert not Dialog.from_uac(sips_invite, ok(), via=VIA, make_branch=lambda: "x").secure
    assert not Dialog.from_uac(req(INVITE), ok(), via=VIA, make_branch=lambda: "x", over_tls=True).secure


def test_uas_dialog_keeps_record_route_order() -> None:
    """§12.1.1: route set = Record-Route of the request in order; remote seq = its CSeq; local seq empty."""
    invite = req(INVITE + "Record-Route: <sip:p2.biloxi.com;lr>\nRecord-Route: <sip:p1.atlanta.com;lr>\n")
    dialog = Dialog.from_uas(
        invite, local_tag="xyz", local_contact="<sip:bob@192.0.2.4>", via=VIA, make_branch=lambda: "1"
    )
    assert dialog.id == DialogId("a84b4c76e66710", "xyz", "1928301774")
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p2.biloxi.com;lr", "sip:p1.atlanta.com;lr"]
    assert str(dialog.remote_target) == "sip:alice@pc33.atlanta.com"
    assert dialog.remote_seq == 314159 and dialog.local_seq is None
    assert dialog.state is DialogState.EARLY and not dialog.is_uac
    dialog.confirm()
    assert dialog.state is DialogState.CONFIRMED


def test_uas_dialog_needs_contact() -> None:
    invite = req(INVITE.replace("Contact: <sip:alice@pc33.atlanta.com>\n", ""))
    with pytest.raises(DialogError) as info:
        Dialog.from_uas(invite, local_tag="t", local_contact="<sip:b@h>", via=VIA, make_branch=lambda: "1")
    assert info.value.status == 400


def test_only_dialog_creating_responses() -> None:
    with pytest.raises(DialogError):
        uac_dialog(ok(status=100))
    with pytest.raises(DialogError):
        uac_dialog(ok(status=486))


# --------------------------------------------------------------------------------------------- building


def test_bye_golden_bytes_with_loose_route_set() -> None:
    dialog = uac_dialog(ok(rr="<sip:p2.biloxi.com;lr>, <sip:p1.atlanta.com;lr>"))
    bye = dialog.create_request("BYE")
    assert bytes(bye) == (
        b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.com:5060;branch=z9hG4bKbr1\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.atlanta.com;lr>\r\n"
        b"Route: <sip:p2.biloxi.com;lr>\r\n"
        b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
        b"To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\r\n"
        b"Call-ID: a84b4c76e66710\r\n"
        b"CSeq: 314160 BYE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert parse_message(bytes(bye)) == bye


def test_empty_route_set_puts_target_in_request_uri_and_no_route() -> None:
    bye = uac_dialog().create_request("BYE")
    assert str(bye.uri) == "sip:bob@192.0.2.4"
    assert not bye.has("Route")


def test_strict_router_rfc3261_example() -> None:
    """§12.2.1.1's example: first route without ;lr goes to the Request-URI, target rides last in Route."""
    invite = req(
        INVITE.replace("Contact: <sip:alice@pc33.atlanta.com>", "Contact: <sip:user@remoteua>")
        + "Record-Route: <sip:proxy1>,<sip:proxy2>,<sip:proxy3;lr>,<sip:proxy4>\n"
    )
    dialog = Dialog.from_uas(
        invite, local_tag="t", local_contact="<sip:b@h>", via=VIA, make_branch=lambda: "1"
    )
    request = dialog.create_request("INFO")
    assert bytes(request).split(b"\r\n")[0] == b"INFO sip:proxy1 SIP/2.0"
    assert request.values("route") == (
        "<sip:proxy2>",
        "<sip:proxy3;lr>",
        "<sip:proxy4>",
        "<sip:user@remoteua>",
    )


def test_strict_router_uri_loses_parameters_not_allowed_in_request_uri() -> None:
    invite = req(INVITE + "Record-Route: <sip:proxy1;method=INVITE;transport=tcp?X=1>\n")
    dialog = Dialog.from_uas(
        invite, local_tag="t", local_contact="<sip:b@h>", via=VIA, make_branch=lambda: "1"
    )
    request = dialog.create_request("BYE")
    assert str(request.uri) == "sip:proxy1;transport=tcp"
    assert request.values("route") == ("<sip:alice@pc33.atlanta.com>",)


def test_cseq_increments_per_request_and_ack_reuses_invite_number() -> None:
    invite = req(INVITE)
    response = ok()
    dialog = Dialog.from_uac(invite, response, via=VIA, make_branch=make_branch_factory())  # type: ignore[arg-type]
    ack = dialog.create_ack(invite, response)
    assert str(ack.cseq) == "314159 ACK"
    assert [str(dialog.create_request(m).cseq) for m in ("INFO", "INVITE", "BYE")] == [
        "314160 INFO",
        "314161 INVITE",
        "314162 BYE",
    ]
    assert dialog.local_seq == 314162
    for method in ("ACK", "CANCEL"):
        with pytest.raises(DialogError):
            dialog.create_request(method)


def test_uas_local_cseq_starts_at_initial_value() -> None:
    dialog = Dialog.from_uas(
        req(INVITE), local_tag="t", local_contact="<sip:b@h>", via=VIA, make_branch=lambda: "1", initial_seq=7
    )
    assert dialog.create_request("INFO").cseq.seq == 7
    assert dialog.create_request("BYE").cseq.seq == 8
    with pytest.raises(DialogError):
        Dialog.from_uas(
            req(INVITE),
            local_tag="t",
            local_contact="<sip:b@h>",
            via=VIA,
            make_branch=lambda: "1",
            initial_seq=2**31,
        )


def test_target_refresh_requests_carry_contact_others_do_not() -> None:
    dialog = Dialog.from_uas(req(INVITE), local_tag="t", local_contact="<sip:bob@192.0.2.4>", via=VIA,
                             make_branch=lambda: "1")  # fmt: skip
    assert dialog.create_request("INVITE").values("contact") == ("<sip:bob@192.0.2.4>",)
    assert dialog.create_request("UPDATE").has("contact")
    assert not dialog.create_request("INFO").has("contact")
    body = dialog.create_request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
    assert body.get("content-type") == "application/dtmf-relay" and body.body == b"Signal=1\r\n"


def test_ack_for_2xx_is_built_like_an_in_dialog_request() -> None:
    """§13.2.2.4: route set and target from the 2xx, INVITE's CSeq number, new branch, same credentials."""
    invite = req(INVITE + "Route: <sip:outbound.atlanta.com;lr>\n")
    response = ok(contact="<sip:bob@192.0.2.4;transport=tcp>", rr="<sip:p1.atlanta.com;lr>")
    dialog = Dialog.from_uac(invite, response, via=VIA, make_branch=lambda: "ackbranch")
    ack = dialog.create_ack(invite, response, body=b"v=0\r\n")
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@192.0.2.4;transport=tcp"
    assert ack.values("route") == ("<sip:p1.atlanta.com;lr>",)
    assert ack.branch == "z9hG4bKackbranch" != invite.branch
    assert ack.get("authorization") == invite.get("authorization")
    assert ack.to.tag == "a6c85cf" and ack.from_.tag == "1928301774"
    assert ack.get("content-type") == "application/sdp" and ack.body == b"v=0\r\n"
    assert not ack.has("contact")


def test_ack_refuses_non_2xx_and_foreign_responses() -> None:
    invite = req(INVITE)
    dialog = uac_dialog()
    with pytest.raises(DialogError):
        dialog.create_ack(invite, ok(status=486))
    with pytest.raises(DialogError):
        dialog.create_ack(invite, ok(tag="other"))


def test_via_with_branch_adds_magic_cookie_once() -> None:
    assert via_with_branch("SIP/2.0/TCP h:5;rport", lambda: "abc").branch == "z9hG4bKabc"
    assert via_with_branch("SIP/2.0/TCP h:5", lambda: "z9hG4bKdef").branch == "z9hG4bKdef"
    assert (
        str(via_with_branch("SIP/2.0/TCP h:5;rport", lambda: "x")) == "SIP/2.0/TCP h:5;rport;branch=z9hG4bKx"
    )


# --------------------------------------------------------------------------------------- requests in


def in_dialog(method: str, seq: int, *, contact: str | None = None, from_tag: str = "a6c85cf") -> Request:
    lines = [
        f"{method} sip:alice@pc33.atlanta.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKx" + str(seq),
        f"From: Bob <sip:bob@biloxi.com>;tag={from_tag}",
        "To: Alice <sip:alice@atlanta.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        f"CSeq: {seq} {method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    return req("\n".join(lines))


def test_remote_cseq_order_rule() -> None:
    """§12.2.2: empty → set; lower (or equal) → 500; higher, even with gaps → accepted; ACK/CANCEL skip."""
    dialog = uac_dialog()
    dialog.receive_request(in_dialog("INFO", 10))
    assert dialog.remote_seq == 10
    dialog.receive_request(in_dialog("INFO", 15))
    assert dialog.remote_seq == 15
    for stale in (9, 15):
        with pytest.raises(DialogError) as info:
            dialog.receive_request(in_dialog("BYE", stale))
        assert info.value.status == 500
    assert dialog.remote_seq == 15
    dialog.receive_request(in_dialog("ACK", 1))
    assert dialog.remote_seq == 15


def test_remote_target_refresh() -> None:
    """§12.2: re-INVITE (accepted) and 2xx to our re-INVITE move the target; BYE/INFO Contact does not."""
    dialog = uac_dialog()
    dialog.refresh_target(in_dialog("INFO", 2, contact="<sip:bob@198.51.100.9>"))
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4"
    dialog.refresh_target(in_dialog("INVITE", 3, contact="<sip:bob@198.51.100.9>"))
    assert str(dialog.remote_target) == "sip:bob@198.51.100.9"
    assert str(dialog.create_request("BYE").uri) == "sip:bob@198.51.100.9"
    reinvite_ok = ok(contact="<sip:bob@203.0.113.1>").replace_header("CSeq", "314160 INVITE")
    dialog.refresh_target(reinvite_ok)
    assert str(dialog.remote_target) == "sip:bob@203.0.113.1"
    dialog.refresh_target(in_dialog("INVITE", 4))  # no Contact: unchanged
    assert str(dialog.remote_target) == "sip:bob@203.0.113.1"


def test_matches_swaps_tag_roles() -> None:
    dialog = uac_dialog()
    assert dialog.matches(in_dialog("BYE", 2))
    assert not dialog.matches(in_dialog("BYE", 2, from_tag="other"))
    assert dialog.matches(ok())
    assert not dialog.matches(ok(tag="zzz"))


def test_terminated_dialog_builds_nothing_and_state_table_is_strict() -> None:
    dialog = uac_dialog()
    dialog.terminate()
    dialog.terminate()  # idempotent
    with pytest.raises(DialogError):
        dialog.create_request("BYE")
    with pytest.raises(DialogError):
        dialog.confirm()


# -------------------------------------------------------------------------------------------- forks


def test_forked_invite_two_early_dialogs_then_two_2xx() -> None:
    """§13.2.2.4: each To tag is a dialog; the first 2xx wins; a second fork's 2xx is ACKed and BYEd."""
    invite = req(INVITE)
    dialogs = DialogSet(invite, via=VIA, make_branch=make_branch_factory())  # type: ignore[arg-type]
    assert dialogs.key == ("a84b4c76e66710", "1928301774")
    assert dialogs.receive_response(ok(status=100).replace_header("To", "Bob <sip:bob@biloxi.com>")) is None
    assert dialogs.receive_response(ok(status=180).replace_header("To", "Bob <sip:bob@biloxi.com>")) is None
    first = dialogs.receive_response(ok(tag="aaa", status=180, contact="<sip:bob@10.0.0.1>"))
    second = dialogs.receive_response(ok(tag="bbb", status=183, contact="<sip:bob@10.0.0.2>"))
    assert first == EarlyDialogCreated(DialogId("a84b4c76e66710", "1928301774", "aaa"))
    assert isinstance(second, EarlyDialogCreated)
    assert dialogs.receive_response(ok(tag="aaa", status=180)) is None  # same fork again

    answer_a = ok(tag="aaa", contact="<sip:bob@10.0.0.1>", rr="<sip:edge;lr>")
    assert dialogs.receive_response(answer_a) == DialogConfirmed(
        DialogId("a84b4c76e66710", "1928301774", "aaa")
    )
    confirmed = dialogs.confirmed
    assert confirmed is not None and confirmed.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in confirmed.route_set] == ["sip:edge;lr"]  # recomputed from the 2xx
    ack_a = dialogs.acknowledge("aaa")
    assert dialogs.acknowledge("aaa") is ack_a

    answer_b = ok(tag="bbb", contact="<sip:bob@10.0.0.2>")
    extra = dialogs.receive_response(answer_b)
    assert isinstance(extra, ForkAnswered)
    assert extra.dialog_id.remote_tag == "bbb"
    assert (extra.ack.method, str(extra.ack.cseq), extra.ack.to.tag, str(extra.ack.uri)) == (
        "ACK",
        "314159 ACK",
        "bbb",
        "sip:bob@10.0.0.2",
    )
    assert (str(extra.bye.cseq), extra.bye.to.tag) == ("314160 BYE", "bbb")
    assert dialogs.dialog("bbb").state is DialogState.TERMINATED  # type: ignore[union-attr]

    assert dialogs.receive_response(answer_a) == AnswerRetransmitted(confirmed.id, ack_a)
    again_b = dialogs.receive_response(answer_b)
    assert isinstance(again_b, AnswerRetransmitted) and again_b.ack == extra.ack
    assert len(dialogs.dialogs) == 2


def test_2xx_without_early_dialog_creates_confirmed_one() -> None:
    dialogs = DialogSet(req(INVITE), via=VIA, make_branch=lambda: "1")
    event = dialogs.receive_response(ok(tag="ccc"))
    assert isinstance(event, DialogConfirmed)
    assert dialogs.dialog("ccc").state is DialogState.CONFIRMED  # type: ignore[union-attr]
    retransmitted = dialogs.receive_response(ok(tag="ccc"))
    assert retransmitted == AnswerRetransmitted(event.dialog_id, None)  # not ACKed yet (TU owes an answer)


def test_non_2xx_final_ends_all_early_dialogs() -> None:
    dialogs = DialogSet(req(INVITE), via=VIA, make_branch=lambda: "1")
    dialogs.receive_response(ok(tag="aaa", status=180))
    dialogs.receive_response(ok(tag="bbb", status=180))
    event = dialogs.receive_response(ok(tag="bbb", status=486))
    assert isinstance(event, EarlyDialogsTerminated)
    assert {d.remote_tag for d in event.dialog_ids} == {"aaa", "bbb"}
    assert all(d.state is DialogState.TERMINATED for d in dialogs.dialogs.values())


def test_dialog_set_refuses_other_transactions() -> None:
    dialogs = DialogSet(req(INVITE), via=VIA, make_branch=lambda: "1")
    other = ok().replace_header("CSeq", "1 INVITE")
    with pytest.raises(DialogError):
        dialogs.receive_response(other)
    with pytest.raises(DialogError):
        dialogs.acknowledge("nobody")


# ----------------------------------------------------------------------------------------- purity

FORBIDDEN = {"asyncio", "socket", "time", "random", "pyee", "selectors", "threading"}
SIPCORE = Path(__file__).resolve().parents[2] / "sipcore"


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(top-level external imports, sipcore siblings imported) of sipcore/<module>.py."""
    tree = ast.parse((SIPCORE / f"{module}.py").read_text())
    external: set[str] = set()
    siblings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 1 and node.module:
                siblings.add(node.module.split(".")[0])
            elif node.module:
                external.add(node.module.split(".")[0])
    return external, siblings


@pytest.mark.parametrize("module", ["dialog", "session"])
def test_dialog_layer_imports_no_io_transitively(module: str) -> None:
    """The module and every sipcore module it pulls in import no I/O, clock or randomness."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        external, siblings = _imports(current)
        assert not external & FORBIDDEN, f"durchwahl.sipcore.{current} imports {external & FORBIDDEN}"
        todo.extend(siblings)
    assert {"dialog", "message", "uri", "headers"} <= seen | {"dialog"}
