"""RFC 3261 §10.3 REGISTER processing (pure): a test per rule, hypothesis over random REGISTER sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.sipcore.message import Request, Response, parse_message
from durchwahl.sipcore.registrar import (
    Binding,
    BindingFlow,
    RegisterOutcome,
    RegistrarConfig,
    address_of_record,
    by_preference,
    http_date,
    process_register,
)
from durchwahl.sipcore.uri import parse_name_addr

T0 = 1_700_000_000.0
AOR = "sip:101@office.example"
DEFAULT = RegistrarConfig()
FLOW = BindingFlow("UDP", ("127.0.0.1", 5060), ("203.0.113.7", 40123))


def register(
    *contacts: str,
    expires: int | str | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    to: str = "<sip:101@office.example>",
    extra: tuple[str, ...] = (),
) -> Request:
    lines = [
        "REGISTER sip:office.example SIP/2.0",
        "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-1;rport",
        "Max-Forwards: 70",
        f"To: {to}",
        f"From: {to};tag=ft",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "User-Agent: TestPhone/1.0",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def run(
    request: Request,
    bindings: tuple[Binding, ...] = (),
    now: float = T0,
    config: RegistrarConfig = DEFAULT,
) -> RegisterOutcome:
    return process_register(request, bindings=bindings, now=now, config=config, flow=FLOW, to_tag="tt")


def listed(response: Response) -> dict[str, int]:
    """Contact URI text -> expires, from a 200."""
    out = {}
    for value in response.values("contact"):
        addr = parse_name_addr(value)
        expires = addr.param("expires")
        assert expires is not None
        out[str(addr.uri)] = int(expires)
    return out


# ------------------------------------------------------------------------------------------- add / query


def test_add_binding_records_everything_and_lists_it() -> None:
    out = run(register('<sip:101@192.168.1.20:5060>;+sip.instance="<urn:uuid:1>"', expires=600))
    assert out.response.status == 200 and out.accepted
    (b,) = out.bindings
    assert out.added == (b,) and not out.refreshed and not out.removed and out.changed
    assert b.aor == AOR and b.expires_at == T0 + 600 and b.call_id == "call-1" and b.cseq == 1
    assert b.flow == FLOW and b.user_agent == "TestPhone/1.0" and b.registered_at == T0
    assert b.instance_id == "<urn:uuid:1>" and b.reg_id is None
    assert str(b.uri) == "sip:101@192.168.1.20:5060"
    assert listed(out.response) == {"sip:101@192.168.1.20:5060": 600}
    assert out.response.get("date") == http_date(T0) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert out.response.to.tag == "tt"


def test_query_without_contact_lists_bindings_and_changes_nothing() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600))
    out = run(register(call_id="other", cseq=9), first.bindings, now=T0 + 100)
    assert out.accepted and not out.changed and out.bindings == first.bindings
    assert listed(out.response) == {"sip:101@10.0.0.1": 500}


def test_default_expires_when_neither_param_nor_header() -> None:
    out = run(register("<sip:101@10.0.0.1>"), config=RegistrarConfig(default_expires=1800))
    assert out.bindings[0].expires_at == T0 + 1800


def test_contact_expires_param_wins_over_header() -> None:
    out = run(register("<sip:101@10.0.0.1>;expires=120", "<sip:101@10.0.0.2>", expires=900))
    assert listed(out.response) == {"sip:101@10.0.0.1": 120, "sip:101@10.0.0.2": 900}
    assert "expires" not in out.bindings[0].contact  # stored without it; the 200 adds the remaining time


def test_expiry_clamped_to_max() -> None:
    out = run(register("<sip:101@10.0.0.1>", expires=86400))
    assert listed(out.response) == {"sip:101@10.0.0.1": 3600}


@pytest.mark.parametrize("asked", [1, 59])
def test_interval_too_brief_gives_423_with_min_expires(asked: int) -> None:
    out = run(register("<sip:101@10.0.0.1>", "<sip:101@10.0.0.2>;expires=3000", expires=asked))
    assert out.response.status == 423 and out.response.get("min-expires") == "60"
    assert not out.bindings and not out.changed


def test_min_expires_itself_is_accepted() -> None:
    assert run(register("<sip:101@10.0.0.1>", expires=60)).accepted


# ------------------------------------------------------------------------------------ refresh / remove


def test_refresh_same_call_id_higher_cseq_updates_in_place() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600))
    out = run(register("<sip:101@10.0.0.1>", expires=900, cseq=2), first.bindings, now=T0 + 300)
    (b,) = out.bindings
    assert out.refreshed == (b,) and not out.added and b.expires_at == T0 + 1200 and b.cseq == 2


def test_uri_comparison_matches_equivalent_contacts() -> None:
    first = run(register("<sip:101@10.0.0.1:5060;transport=udp;ob>", expires=600))
    out = run(register("<sip:101@10.0.0.1:5060;TRANSPORT=UDP>", expires=600, cseq=2), first.bindings)
    assert len(out.bindings) == 1 and out.refreshed


@pytest.mark.parametrize("cseq", [1, 0])
def test_same_call_id_not_higher_cseq_fails_with_500(cseq: int) -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600))
    out = run(register("<sip:101@10.0.0.1>", expires=600, cseq=cseq), first.bindings)
    assert out.response.status == 500 and "out-of-order" in out.response.reason
    assert out.bindings == first.bindings and not out.changed


def test_different_call_id_replaces_whatever_the_cseq() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600, cseq=50))
    out = run(register("<sip:101@10.0.0.1>", expires=600, cseq=1, call_id="rebooted"), first.bindings)
    assert out.accepted and out.bindings[0].call_id == "rebooted" and out.bindings[0].cseq == 1


def test_expires_zero_removes_one_binding() -> None:
    first = run(register("<sip:101@10.0.0.1>", "<sip:101@10.0.0.2>", expires=600))
    out = run(register("<sip:101@10.0.0.1>;expires=0", cseq=2), first.bindings)
    assert [str(b.uri) for b in out.bindings] == ["sip:101@10.0.0.2"]
    assert [str(b.uri) for b in out.removed] == ["sip:101@10.0.0.1"]
    assert listed(out.response) == {"sip:101@10.0.0.2": 600}


def test_expires_zero_for_unknown_contact_is_a_no_op() -> None:
    out = run(register("<sip:101@10.0.0.9>", expires=0))
    assert out.accepted and not out.bindings and not out.changed


def test_expires_zero_with_stale_cseq_fails() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600, cseq=5))
    out = run(register("<sip:101@10.0.0.1>", expires=0, cseq=5), first.bindings)
    assert out.response.status == 500 and out.bindings == first.bindings


def test_all_or_nothing_when_a_later_contact_fails() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600, cseq=5))
    request = register("<sip:101@10.0.0.2>", "<sip:101@10.0.0.1>", expires=600, cseq=5)
    out = run(request, first.bindings)
    assert out.response.status == 500 and out.bindings == first.bindings and not out.added


# ------------------------------------------------------------------------------------------- wildcard


def test_wildcard_with_expires_zero_removes_everything() -> None:
    first = run(register("<sip:101@10.0.0.1>", "<sip:101@10.0.0.2>", expires=600))
    other = run(register("<sip:101@10.0.0.3>", expires=600, call_id="other-phone"), first.bindings)
    out = run(register("*", expires=0, cseq=2), other.bindings)
    assert out.accepted and not out.bindings and len(out.removed) == 3
    assert not out.response.values("contact")


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), None), (("*",), 60), (("*", "<sip:101@10.0.0.1>"), 0), (("<sip:101@10.0.0.1>", "*"), 0)],
)
def test_wildcard_misuse_is_400(contacts: tuple[str, ...], expires: int | None) -> None:
    out = run(register(*contacts, expires=expires))
    assert out.response.status == 400 and "*" in out.response.reason


def test_wildcard_with_stale_cseq_fails() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600, cseq=3))
    out = run(register("*", expires=0, cseq=3), first.bindings)
    assert out.response.status == 500 and out.bindings == first.bindings


# ----------------------------------------------------------------------------------- limits and syntax


def test_beyond_max_contacts_the_least_recently_refreshed_gives_way() -> None:
    config = RegistrarConfig(max_contacts=3)
    bindings: tuple[Binding, ...] = ()
    for i in range(3):
        out = run(register(f"<sip:101@10.0.0.{i}>", expires=600, call_id=f"c{i}"), bindings, T0 + i, config)
        bindings = out.bindings
    # Refresh the first, so the second is now the stalest.
    bindings = run(
        register("<sip:101@10.0.0.0>", expires=600, call_id="c0", cseq=2), bindings, T0 + 10
    ).bindings
    out = run(register("<sip:101@10.0.0.9>", expires=600, call_id="c9"), bindings, T0 + 20, config)
    assert [str(b.uri.host) for b in out.bindings] == ["10.0.0.0", "10.0.0.2", "10.0.0.9"]
    assert [b.uri.host for b in out.removed] == ["10.0.0.1"]
    assert len(out.response.values("contact")) == 3


def test_more_contacts_in_one_request_than_allowed_is_400() -> None:
    request = register(*(f"<sip:101@10.0.0.{i}>" for i in range(3)))
    out = run(request, config=RegistrarConfig(max_contacts=2))
    assert out.response.status == 400 and "more than 2 contacts" in out.response.reason


@pytest.mark.parametrize(
    ("q", "ok"),
    [
        ("0", True),
        ("0.5", True),
        ("1.000", True),
        ("0.123", True),
        ("1.5", False),
        ("0.1234", False),
        ("-1", False),
        ("abc", False),
    ],
)
def test_q_values(q: str, ok: bool) -> None:
    out = run(register(f"<sip:101@10.0.0.1>;q={q}", expires=600))
    assert out.accepted is ok
    if ok:
        assert out.bindings[0].q == float(q)
        assert parse_name_addr(out.response.values("contact")[0]).param("q") == q
    else:
        assert out.response.status == 400 and "q=" in out.response.reason


def test_by_preference_orders_by_q_then_freshness() -> None:
    out = run(register("<sip:a@h1>;q=0.5", "<sip:a@h2>", "<sip:a@h3>;q=0.9", expires=600))
    assert [b.uri.host for b in by_preference(out.bindings)] == ["h2", "h3", "h1"]


@pytest.mark.parametrize(
    ("to", "status"),
    [("<tel:+4930123>", 400), ("<http://example.com/x>", 400), ("<sips:101@office.example>", 200)],
)
def test_to_must_be_sip_or_sips(to: str, status: int) -> None:
    out = run(register("<sips:101@10.0.0.1>", expires=600, to=to))
    assert out.response.status == status


def test_address_of_record_is_canonical() -> None:
    request = register(to='"Anna" <sip:%31%30%31@Office.Example;user=phone;transport=tcp>')
    assert address_of_record(request) == "sip:101@office.example"
    assert address_of_record(register(to="<sip:101@office.example:5070>")) == "sip:101@office.example:5070"


@pytest.mark.parametrize(
    "contact",
    ["<tel:+4915112345>", "<mailto:a@b.c>", "<sip:101@10.0.0.1>;expires=soon", "<sip:101@10.0.0.1"],
)
def test_bad_contacts_are_400(contact: str) -> None:
    out = run(register(contact, expires=600))
    assert out.response.status == 400 and not out.bindings


def test_bad_expires_header_is_400() -> None:
    assert run(register("<sip:101@10.0.0.1>", expires="later")).response.status == 400


def test_expired_bindings_are_dropped_and_reported() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=60))
    out = run(register(call_id="q"), first.bindings, now=T0 + 61)
    assert not out.bindings and out.expired == first.bindings and out.changed
    assert not out.response.values("contact")


def test_remaining_expires_counts_down() -> None:
    first = run(register("<sip:101@10.0.0.1>", expires=600))
    assert listed(run(register(call_id="q"), first.bindings, now=T0 + 599.6).response) == {
        "sip:101@10.0.0.1": 1
    }


def test_flow_of_refresh_replaces_the_old_flow() -> None:
    first = run(register("<sip:101@192.168.1.20>", expires=600))
    moved = BindingFlow("TCP", ("127.0.0.1", 5060), ("198.51.100.1", 50000), 17)
    request = register("<sip:101@192.168.1.20>", expires=600, cseq=2)
    out = process_register(request, bindings=first.bindings, now=T0, flow=moved)
    assert out.bindings[0].flow == moved


# ----------------------------------------------------------------------------------- RFC 5626 outbound

INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
OUTBOUND = ("Supported: path, outbound",)


def test_outbound_binding_matched_by_instance_and_reg_id() -> None:
    first = run(
        register(
            f"<sip:101@192.168.1.20:5060;ob>;+sip.instance={INSTANCE};reg-id=1", expires=600, extra=OUTBOUND
        )
    )
    assert first.response.get("require") == "outbound"
    assert first.bindings[0].reg_id == 1
    # Same phone, new address (it moved networks), new Call-ID: the binding is replaced, not added.
    out = run(
        register(
            f"<sip:101@10.9.9.9:5062;ob>;+sip.instance={INSTANCE};reg-id=1",
            expires=600,
            call_id="new",
            extra=OUTBOUND,
        ),
        first.bindings,
    )
    assert [b.uri.host for b in out.bindings] == ["10.9.9.9"] and out.refreshed
    # A second flow (reg-id 2) of the same instance is a second binding.
    two = run(
        register(
            f"<sip:101@10.9.9.9:5062;ob>;+sip.instance={INSTANCE};reg-id=2",
            expires=600,
            call_id="new2",
            extra=OUTBOUND,
        ),
        out.bindings,
    )
    assert len(two.bindings) == 2


def test_reg_id_ignored_without_supported_outbound() -> None:
    out = run(register(f"<sip:101@192.168.1.20>;+sip.instance={INSTANCE};reg-id=1", expires=600))
    assert out.bindings[0].reg_id is None and out.response.get("require") is None


def test_two_contacts_with_reg_id_is_400() -> None:
    out = run(
        register(
            f"<sip:a@h1>;+sip.instance={INSTANCE};reg-id=1",
            f"<sip:a@h2>;+sip.instance={INSTANCE};reg-id=2",
            expires=600,
            extra=OUTBOUND,
        )
    )
    assert out.response.status == 400


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="min_expires"):
        RegistrarConfig(min_expires=7200, default_expires=7200, max_expires=7200)
    with pytest.raises(ValueError, match="default_expires"):
        RegistrarConfig(default_expires=10)
    with pytest.raises(ValueError, match="max_contacts"):
        RegistrarConfig(max_contacts=0)


# ------------------------------------------------------------------------------------------ hypothesis

HOSTS = [f"10.0.0.{i}" for i in range(14)]

step = st.one_of(
    st.tuples(
        st.just("register"),
        st.lists(st.sampled_from(HOSTS), min_size=1, max_size=4, unique=True),
        st.sampled_from([0, 30, 60, 300, 3600, 99999]),
        st.sampled_from(["a", "b", "c"]),
    ),
    st.tuples(st.just("wildcard"), st.just([]), st.just(0), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("wait"), st.just([]), st.integers(0, 4000), st.just("")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=25))
def test_random_sequences_keep_the_invariants(steps: list[tuple[str, list[str], int, str]]) -> None:
    config = RegistrarConfig(max_contacts=4)
    bindings: tuple[Binding, ...] = ()
    now = T0
    cseqs = {"a": 0, "b": 0, "c": 0}
    for kind, hosts, value, call_id in steps:
        if kind == "wait":
            now += value
            continue
        cseqs[call_id] += 1
        if kind == "wildcard":
            request = register("*", expires=0, call_id=call_id, cseq=cseqs[call_id])
        else:
            request = register(
                *(f"<sip:u@{h}>" for h in hosts), expires=value, call_id=call_id, cseq=cseqs[call_id]
            )
        before = bindings
        out = process_register(request, bindings=bindings, now=now, config=config, flow=FLOW)
        bindings = out.bindings
        assert len(bindings) <= config.max_contacts
        assert all(b.expires_at > now for b in bindings)
        assert all(b.expires_at <= now + config.max_expires for b in bindings)
        uris = [b.uri for b in bindings]
        assert not any(u.equivalent(v) for i, u in enumerate(uris) for v in uris[i + 1 :])
        if out.accepted:
            assert len(out.response.values("contact")) == len(bindings)
            if kind == "register" and value == 0:
                assert not {b.uri.host for b in bindings} & set(hosts)
            if kind == "register" and value >= config.min_expires:
                assert {b.uri.host for b in bindings} >= set(hosts)
            if kind == "wildcard":
                assert not bindings
        else:
            assert bindings == tuple(b for b in before if b.expires_at > now)
            assert out.response.status in (423, 500)
        # Whatever disappeared was reported: removed (or evicted), or replaced by its refresh.
        gone = {b.uri.host for b in before if b.expires_at > now} - {b.uri.host for b in bindings}
        assert gone <= {b.uri.host for b in out.removed}
        assert {b.uri.host for b in out.removed} & {b.uri.host for b in bindings} == set()


# ------------------------------------------------------------------------------------------ RFC 3327 Path

EDGE_PATH = ("<sip:edge@198.51.100.1:5060;lr;received=sip:203.0.113.7:40123>",)


def test_path_given_by_the_caller_is_kept_with_the_bindings_it_adds_and_refreshes() -> None:
    request = register("<sip:101@192.168.1.20>", expires=600, extra=("Path: <sip:forged@192.0.2.66;lr>",))
    first = process_register(request, bindings=(), now=T0, flow=FLOW, path=EDGE_PATH)
    assert first.bindings[0].path == EDGE_PATH  # what the caller trusts, not the request's own Path
    unpathed = process_register(register("<sip:101@192.168.1.20>", cseq=2), bindings=first.bindings, now=T0)
    assert unpathed.bindings[0].path == ()  # a refresh without Path: the phone is reached directly again


def test_path_is_listed_in_the_200_only_when_the_phone_supports_it() -> None:
    plain = process_register(register("<sip:101@192.168.1.20>"), bindings=(), now=T0, path=EDGE_PATH)
    assert plain.response.status == 200 and plain.response.values("path") == ()
    supported = register("<sip:101@192.168.1.20>", extra=("Supported: path",))
    echoed = process_register(supported, bindings=(), now=T0, path=EDGE_PATH)
    assert echoed.response.values("path") == EDGE_PATH


def test_a_binding_the_request_does_not_touch_keeps_its_own_path() -> None:
    first = process_register(register("<sip:101@192.168.1.20>"), bindings=(), now=T0, path=EDGE_PATH)
    second = process_register(
        register("<sip:101@192.168.1.21>", call_id="other"), bindings=first.bindings, now=T0 + 1
    )
    paths = {b.contact: b.path for b in second.bindings}
    assert paths == {"<sip:101@192.168.1.20>": EDGE_PATH, "<sip:101@192.168.1.21>": ()}
