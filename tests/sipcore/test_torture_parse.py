"""RFC 4475 / RFC 5118 torture corpus, parser level: every message, with the values the RFCs describe.

Valid messages must parse and yield the described values. Invalid ones must raise ``SipParseError`` unless
the index allows accepting them ("accept" among the expectations, or a status the endpoint gives after
parsing, such as 416 or 420); what the endpoint answers on the wire is checked in ``test_torture_endpoint``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torture import TortureCase, load_cases

from durchwahl.sipcore import Request, Response, SipParseError, SipUri, TelUri, parse_message
from durchwahl.sipcore.uri import AbsoluteUri, parse_uri

CASES = load_cases()

#: Messages that do not (yet) behave as the RFC says, with the reason. Kept visible; empty is the goal.
EXPECTED_FAILURES: dict[str, str] = {}

#: Expectations that mean "the parser must reject it" (the endpoint answers from the error's headers).
_REJECT_AT_PARSE = {"400", "505", "drop", "err"}


def _request(case: TortureCase) -> Request:
    message = parse_message(case.data)
    assert isinstance(message, Request)
    return message


def check_wsinv(m: Request) -> None:
    assert m.method == "INVITE"
    assert m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.get("s") == ""
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.route[0].uri.lr is True  # type: ignore[union-attr]
    (contact,) = m.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.has_param("secondparam")
    assert contact.param("q") == "0.33"
    assert len(m.body) == 150 and m.body.startswith(b"v=0\r\n")


def check_intmeth(m: Request) -> None:
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.method == m.method
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert m.max_forwards == 255
    assert isinstance(m.uri, SipUri) and m.uri.password is not None


def check_esc01(m: Request) -> None:
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "sips:user@example.com"
    assert m.to.uri.equivalent(parse_uri("sip:user@example.com"))
    assert m.from_.uri.user == "I have spaces"  # type: ignore[union-attr]
    (contact,) = m.contact
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.user == "caller"
    assert contact.uri.has_param("lr")
    assert contact.uri.param("name") == "value%41"  # no recursive unescaping
    assert contact.uri.equivalent(parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))


def check_escnull(m: Request) -> None:
    assert m.to.uri.user == "null-\x00-null"  # type: ignore[union-attr]
    users = [c.uri.user for c in m.contact]  # type: ignore[union-attr]
    assert users == ["\x00", "\x00\x00"]


def check_esc02(m: Request) -> None:
    assert m.method == "RE%47IST%45R"
    assert m.method != "REGISTER"
    assert m.to.display_name == "%Z%45"
    assert len(m.contact) == 2  # "C%6Fntact" is another header, not Contact
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def check_lwsdisp(m: Request) -> None:
    assert m.from_.display_name == "caller"
    assert m.from_.tag == "323"


def check_longreq(m: Request) -> None:
    assert len(m.via) >= 30
    assert m.to.display_name is not None and "extreme" in m.to.display_name
    assert len(m.call_id) > 100


def check_dblreq(m: Request) -> None:
    assert m.method == "REGISTER"
    assert m.body == b""


def check_semiuri(m: Request) -> None:
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u@example.net"
    assert m.uri.host == "example.com"
    assert m.uri.params == ()
    assert len(m.values("Accept")) == 6


def check_transports(m: Request) -> None:
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def check_mpart01(m: Request) -> None:
    assert m.content_type is not None and m.content_type.mime == "multipart/mixed"
    assert len(m.body) == 553
    assert b"\x00" in m.body or b"\n" in m.body


def check_unreason(m: Response) -> None:
    assert m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(m.body) == 154


def check_noreason(m: Response) -> None:
    assert m.status == 100 and m.reason == ""


def check_bext01(m: Request) -> None:
    assert m.require == ("nothingSupportsThis", "nothingSupportsThisEither")
    assert m.proxy_require == ("noProxiesSupportThis", "norDoAnyProxiesSupportThis")


def check_unkscm(m: Request) -> None:
    assert isinstance(m.uri, AbsoluteUri) and m.uri.scheme == "nobodyknowsthisscheme"


def check_novelsc(m: Request) -> None:
    assert isinstance(m.uri, AbsoluteUri) and m.uri.scheme == "soap.beep"


def check_unksm2(m: Request) -> None:
    assert isinstance(m.to.uri, AbsoluteUri) and m.to.uri.scheme == "isbn"
    assert isinstance(m.from_.uri, AbsoluteUri) and m.from_.uri.scheme == "http"
    assert isinstance(m.contact[0].uri, AbsoluteUri)


def check_regaut01(m: Request) -> None:
    (credentials,) = m.authorization
    assert credentials.scheme == "NoOneKnowsThisScheme"


def check_zeromf(m: Request) -> None:
    assert m.max_forwards == 0


def check_cparam01(m: Request) -> None:
    (contact,) = m.contact
    assert contact.has_param("unknownparam")
    assert isinstance(contact.uri, SipUri) and not contact.uri.has_param("unknownparam")


def check_cparam02(m: Request) -> None:
    (contact,) = m.contact
    assert not contact.has_param("unknownparam")
    assert isinstance(contact.uri, SipUri) and contact.uri.has_param("unknownparam")


def check_regescrt(m: Request) -> None:
    (contact,) = m.contact
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.headers == (("Route", "<sip:sip.example.com>"),)


def check_inv2543(m: Request) -> None:
    assert m.max_forwards is None
    assert m.from_.tag is None
    assert m.via[0].branch is None
    assert m.body.startswith(b"v=0")


def check_sdp01(m: Request) -> None:
    assert m.values("Accept") == ("text/nobodyKnowsThis",)


def check_ipv6_good(m: Request) -> None:
    assert isinstance(m.uri, SipUri) and m.uri.host == "[2001:db8::10]"


def check_port_ambiguous(m: Request) -> None:
    assert isinstance(m.uri, SipUri) and m.uri.host == "[2001:db8::10:5070]" and m.uri.port is None


def check_port_unambiguous(m: Request) -> None:
    assert isinstance(m.uri, SipUri) and m.uri.host == "[2001:db8::10]" and m.uri.port == 5070


def check_via_received(m: Request) -> None:
    assert m.via[0].received is not None and "2001:db8::" in m.via[0].received


def check_mult_ip_in_header(m: Request) -> None:
    hosts = [v.host for v in m.via]
    assert any(h.startswith("[") for h in hosts) and any(not h.startswith("[") for h in hosts)


def check_ipv4_mapped(m: Request) -> None:
    assert "::ffff:" in str(m.uri).lower() or any("::ffff:" in v.host.lower() for v in m.via)


CHECKS: dict[str, Callable[..., None]] = {
    "wsinv": check_wsinv,
    "intmeth": check_intmeth,
    "esc01": check_esc01,
    "escnull": check_escnull,
    "esc02": check_esc02,
    "lwsdisp": check_lwsdisp,
    "longreq": check_longreq,
    "dblreq": check_dblreq,
    "semiuri": check_semiuri,
    "transports": check_transports,
    "mpart01": check_mpart01,
    "unreason": check_unreason,
    "noreason": check_noreason,
    "bext01": check_bext01,
    "unkscm": check_unkscm,
    "novelsc": check_novelsc,
    "unksm2": check_unksm2,
    "regaut01": check_regaut01,
    "zeromf": check_zeromf,
    "cparam01": check_cparam01,
    "cparam02": check_cparam02,
    "regescrt": check_regescrt,
    "inv2543": check_inv2543,
    "sdp01": check_sdp01,
    "rfc5118/ipv6-good": check_ipv6_good,
    "rfc5118/port-ambiguous": check_port_ambiguous,
    "rfc5118/port-unambiguous": check_port_unambiguous,
    "rfc5118/via-received-param-with-delim": check_via_received,
    "rfc5118/via-received-param-no-delim": check_via_received,
    "rfc5118/mult-ip-in-header": check_mult_ip_in_header,
    "rfc5118/ipv4-mapped-ipv6": check_ipv4_mapped,
}


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = []
        if case.name in EXPECTED_FAILURES:
            marks.append(pytest.mark.xfail(reason=EXPECTED_FAILURES[case.name], strict=True))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


def test_corpus_is_complete() -> None:
    assert len(CASES) == 62
    assert all(case.data for case in CASES)


@pytest.mark.parametrize("case", _params())
def test_torture_message(case: TortureCase) -> None:
    if case.syntax == "valid" or case.name in CHECKS:
        message = parse_message(case.data)
        check = CHECKS.get(case.name)
        if check is not None:
            check(message)
        # Serialising and parsing again yields the same message.
        assert parse_message(bytes(message)) == message
        return
    if set(case.expect) <= _REJECT_AT_PARSE:
        with pytest.raises(SipParseError):
            parse_message(case.data)
        return
    # Invalid syntax that an element may accept liberally, or a valid message the endpoint answers
    # after parsing (416, 420 ...): either outcome of the parser is fine here; the endpoint test decides.
    try:
        parse_message(case.data)
    except SipParseError as exc:
        assert "accept" not in case.expect[:1], f"{case.name}: preferred outcome is accept, got {exc}"


def test_tel_uri_in_corpus_style() -> None:
    uri = parse_uri("tel:+1-201-555-0123")
    assert isinstance(uri, TelUri) and uri.equivalent(parse_uri("tel:+12015550123"))
