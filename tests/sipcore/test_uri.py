"""Golden and property tests for sipcore.uri (RFC 3261 §19/§25, RFC 3966, RFC 4475, RFC 5118)."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl import sipcore
from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.uri import (
    AbsoluteUri,
    NameAddr,
    SipUri,
    TelUri,
    parse_name_addr,
    parse_params,
    parse_sip_uri,
    parse_uri,
    split_comma_values,
    unquote_string,
)

# ---------------------------------------------------------------------------------------------------------
# SIP URI syntax
# ---------------------------------------------------------------------------------------------------------


def test_common_case() -> None:
    uri = parse_uri("sip:alice@atlanta.example.com;transport=udp")
    assert uri == SipUri("sip", "alice", None, "atlanta.example.com", None, (("transport", "udp"),), ())
    assert str(uri) == "sip:alice@atlanta.example.com;transport=udp"


def test_all_components() -> None:
    uri = parse_sip_uri(
        "SIPS:Alice:secret@AtLanTa.COM:5061;Transport=TLS;lr;maddr=239.255.255.1?Subject=hi&x="
    )
    assert uri.scheme == "sips"
    assert uri.is_secure
    assert uri.user == "Alice"
    assert uri.password == "secret"
    assert uri.host == "atlanta.com"
    assert uri.port == 5061
    assert uri.params == (("transport", "TLS"), ("lr", None), ("maddr", "239.255.255.1"))
    assert uri.headers == (("Subject", "hi"), ("x", ""))
    assert uri.transport == "tls"
    assert uri.maddr == "239.255.255.1"
    assert uri.lr
    assert uri.user_param is None


def test_param_semantics() -> None:
    uri = parse_sip_uri("sip:a@b;lr;user=Phone;x=1;x=2")
    assert uri.param("lr") == ""
    assert uri.param("LR") == ""
    assert uri.param("absent") is None
    assert uri.param("x") == "1"
    assert uri.has_param("lr")
    assert not uri.has_param("ttl")
    assert uri.user_param == "phone"
    assert parse_sip_uri("sip:a@b").lr is False


def test_param_helpers() -> None:
    uri = parse_sip_uri("sip:a@b;transport=udp;lr?h=v")
    assert str(uri.with_param("transport", "tcp")) == "sip:a@b;lr;transport=tcp?h=v"
    assert str(uri.with_param("ob")) == "sip:a@b;transport=udp;lr;ob?h=v"
    assert str(uri.without_param("LR")) == "sip:a@b;transport=udp?h=v"
    assert str(uri.without_headers()) == "sip:a@b;transport=udp;lr"


def test_no_userinfo() -> None:
    uri = parse_sip_uri("sip:registrar.biloxi.com")
    assert uri.user is None
    assert uri.password is None
    assert str(uri) == "sip:registrar.biloxi.com"


def test_empty_password_kept() -> None:
    uri = parse_sip_uri("sip:user:@example.com")
    assert uri.password == ""
    assert str(uri) == "sip:user:@example.com"


def test_telephone_subscriber_user() -> None:
    uri = parse_sip_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert uri.user == "+1-212-555-1212"
    assert uri.password == "1234"
    assert uri.user_param == "phone"


def test_user_may_hold_semicolon_and_question_mark() -> None:
    # RFC 4475 wsinv To header: the user part ends at '@', not at ';' or '?'.
    text = (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        "@example.com"
    )
    uri = parse_sip_uri(text)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert uri.params == ()
    assert str(uri) == text


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("example.com", True),
        ("example.com.", True),
        ("a-1.example.com", True),
        ("localhost", True),
        ("9live.example", True),
        ("host_with_underscore.local", True),
        ("192.0.2.1", True),
        ("255.255.255.255", True),
        ("192.0.2.256", False),
        ("1.2.3", False),
        ("example.123", False),
        ("a..b", False),
        (".example.com", False),
        ("exa$mple.com", False),
    ],
)
def test_hosts(host: str, ok: bool) -> None:
    if ok:
        assert parse_sip_uri(f"sip:u@{host}").host == host.lower()
    else:
        with pytest.raises(SipParseError, match=r"host|IPv4"):
            parse_uri(f"sip:u@{host}")


@pytest.mark.parametrize("port", ["0", "5060", "65535"])
def test_ports(port: str) -> None:
    assert parse_sip_uri(f"sip:u@example.com:{port}").port == int(port)


@pytest.mark.parametrize("port", ["65536", "99999", "123456", "", "-1", "5o60", "²"])
def test_bad_ports(port: str) -> None:
    with pytest.raises(SipParseError, match="bad port"):
        parse_uri(f"sip:u@example.com:{port}")


def test_bad_port_message_says_what_and_where() -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri("sip:alice@example.com:99999")
    assert str(info.value) == "bad port '99999' in URI 'sip:alice@example.com:99999'"
    assert info.value.status == 400


# ---------------------------------------------------------------------------------------------------------
# Escaping
# ---------------------------------------------------------------------------------------------------------


def test_esc01_escaped_user() -> None:
    uri = parse_sip_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips:user@example.com"
    assert uri.host == "example.net"
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"


def test_escnull() -> None:
    uri = parse_sip_uri("sip:null-%00-null@example.com")
    assert uri.user == "null-\x00-null"
    assert str(uri) == "sip:null-%00-null@example.com"


def test_semiuri() -> None:
    uri = parse_sip_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == ()


def test_unescape_is_not_recursive() -> None:
    assert parse_sip_uri("sip:value%41@h").user == "valueA"
    assert parse_sip_uri("sip:%2541@h").user == "%41"
    assert str(parse_sip_uri("sip:%2541@h")) == "sip:%2541@h"


def test_escaped_params_and_headers() -> None:
    uri = parse_sip_uri("sip:h;%41b=c%3Bd?to=sip:bob%40biloxi.com&x=a%26b")
    assert uri.params == (("ab", "c;d"),)
    assert uri.headers == (("to", "sip:bob@biloxi.com"), ("x", "a&b"))
    assert str(uri) == "sip:h;ab=c%3Bd?to=sip:bob%40biloxi.com&x=a%26b"


def test_escaped_utf8_and_raw_utf8_agree() -> None:
    assert parse_sip_uri("sip:j%C3%BCrgen@h").user == "jürgen"
    assert parse_sip_uri("sip:jürgen@h").user == "jürgen"
    assert str(parse_sip_uri("sip:jürgen@h")) == "sip:j%C3%BCrgen@h"


def test_invalid_utf8_octets_survive() -> None:
    uri = parse_sip_uri("sip:%FF%FE@h")
    assert str(uri) == "sip:%FF%FE@h"


@pytest.mark.parametrize(
    "text", ["sip:a%4@h", "sip:a%@h", "sip:a%zz@h", "sip:a@h;p=%G1", "sip:a@h?x=%", "sip:a:%+1@h"]
)
def test_bad_escapes(text: str) -> None:
    with pytest.raises(SipParseError, match="%-escape"):
        parse_uri(text)


# ---------------------------------------------------------------------------------------------------------
# Malformed URIs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sip:user@example.com; lr",  # RFC 4475 lwsruri-style LWS
        "sip:user@example.com ;lr",
        " sip:user@example.com",
        "sip:user@example.com\r\n",
        "sip:us er@example.com",
        "<sip:user@example.com>",
        "sip:user@example.com>",
        'sip:"user"@example.com',
    ],
)
def test_lws_and_brackets_rejected(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_brackets_get_a_clear_message() -> None:
    with pytest.raises(SipParseError, match="enclosed in <>"):
        parse_uri("<sip:user@example.com>")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("", "missing scheme"),
        ("example.com", "missing scheme"),
        (":foo", "missing scheme"),
        ("1sip:foo", "bad scheme"),
        ("si_p:foo", "bad scheme"),
        ("sip:", "missing host"),
        ("sip:user@", "missing host"),
        ("sip:@example.com", "empty user"),
        ("sip:example.com;;lr", "empty parameter name"),
        ("sip:example.com;lr;", "empty parameter name"),
        ("sip:example.com;=x", "empty parameter name"),
        ("sip:example.com?=x", "empty header name"),
        ("sip:example.com?a=b&", "empty header name"),
        ("http:", "empty URI"),
    ],
)
def test_malformed(text: str, what: str) -> None:
    with pytest.raises(SipParseError, match=what):
        parse_uri(text)


def test_parse_sip_uri_rejects_other_schemes() -> None:
    with pytest.raises(SipParseError, match="expected a sip"):
        parse_sip_uri("tel:+12015550123")
    with pytest.raises(SipParseError):
        parse_sip_uri("http://example.com/")


def test_header_without_equals_is_empty_value() -> None:
    assert parse_sip_uri("sip:h?flag").headers == (("flag", ""),)


# ---------------------------------------------------------------------------------------------------------
# IPv6 (RFC 5118)
# ---------------------------------------------------------------------------------------------------------


def test_ipv6_reference() -> None:
    uri = parse_sip_uri("sip:[2001:DB8::10]")
    assert uri.host == "[2001:db8::10]"
    assert uri.port is None
    assert str(uri) == "sip:[2001:db8::10]"


def test_ipv6_with_port() -> None:
    uri = parse_sip_uri("sip:user@[2001:db8::10]:5070;transport=tcp")
    assert uri.host == "[2001:db8::10]"
    assert uri.port == 5070
    assert uri.transport == "tcp"


def test_ipv6_port_ambiguous() -> None:
    # RFC 5118 §4.4: everything inside the brackets is the address.
    uri = parse_sip_uri("sip:[2001:db8::10:5070]")
    assert uri.host == "[2001:db8::10:5070]"
    assert uri.port is None


def test_ipv6_bare_rejected() -> None:
    with pytest.raises(SipParseError, match=r"enclosed in \[\]"):
        parse_uri("sip:user@2001:db8::10")


def test_ipv6_three_colon_bug_tolerated() -> None:
    uri = parse_sip_uri("sip:[2001:db8:::192.0.2.1]")
    assert uri.host == "[2001:db8:::192.0.2.1]"
    assert uri.equivalent(parse_sip_uri("sip:[2001:db8::192.0.2.1]"))


def test_ipv4_mapped_ipv6() -> None:
    assert parse_sip_uri("sip:user@[::ffff:192.0.2.1]:19823").host == "[::ffff:192.0.2.1]"


def test_ipv6_maddr_param() -> None:
    uri = parse_sip_uri("sip:user@[2001:db8::10];maddr=[2001:db8::20]")
    assert uri.maddr == "[2001:db8::20]"


def test_ipv6_equivalence_compares_addresses() -> None:
    assert parse_uri("sip:[2001:db8::10]").equivalent(parse_uri("sip:[2001:0DB8:0:0::10]"))


@pytest.mark.parametrize(
    "text",
    [
        "sip:[2001:db8::10",
        "sip:[2001:db8::g]",
        "sip:[1:2:3:4:5:6:7:8:9]",
        "sip:[::1]x",
        "sip:[fe80::1%25eth0]",
    ],
)
def test_bad_ipv6(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


# ---------------------------------------------------------------------------------------------------------
# Comparison (RFC 3261 §19.1.4)
# ---------------------------------------------------------------------------------------------------------

EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    # the intransitivity example: both equal the bare URI ...
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=off"),
    # extra cases
    ("sip:bob@biloxi.com;lr", "sip:bob@biloxi.com"),
    ("sip:bob@biloxi.com?Subject=x", "sip:bob@biloxi.com?subject=x"),
]

NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # different usernames
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # can resolve to different transports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # different port and transport
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # different header component
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even though that's what it resolves to
    # ... but not each other
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    # extra cases
    ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
    ("sip:bob@biloxi.com", "sip:bob:pw@biloxi.com"),
    ("sip:bob@biloxi.com", "sip:biloxi.com"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;user=ip"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;ttl=1"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;method=INVITE"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;maddr=239.255.255.1"),
    ("sip:bob@biloxi.com?a=b", "sip:bob@biloxi.com?a=B"),
    ("sip:bob@biloxi.com?a=b&a=c", "sip:bob@biloxi.com?a=b"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua.equivalent(ub)
    assert ub.equivalent(ua)


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert not ua.equivalent(ub)
    assert not ub.equivalent(ua)


def test_equivalent_across_kinds() -> None:
    assert not parse_uri("sip:a@b").equivalent(parse_uri("tel:+1234"))
    assert not parse_uri("tel:+1234").equivalent("tel:+1234")
    assert not parse_uri("sip:a@b").equivalent("sip:a@b")


# ---------------------------------------------------------------------------------------------------------
# tel URIs (RFC 3966)
# ---------------------------------------------------------------------------------------------------------


def test_tel_global() -> None:
    uri = parse_uri("tel:+1-201-555-0123")
    assert isinstance(uri, TelUri)
    assert uri.number == "+12015550123"
    assert uri.is_global
    assert uri.raw == "+1-201-555-0123"
    assert str(uri) == "tel:+12015550123"
    assert uri.scheme == "tel"


def test_tel_local_with_context() -> None:
    uri = parse_uri("tel:7042;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert uri.number == "7042"
    assert not uri.is_global
    assert uri.phone_context == "example.com"


def test_tel_local_without_context_is_accepted() -> None:
    uri = parse_uri("tel:863-1234")
    assert isinstance(uri, TelUri)
    assert uri.number == "8631234"
    assert not uri.is_global
    assert uri.phone_context is None


def test_tel_ext_isub_and_other_params() -> None:
    uri = parse_uri("tel:+1-201-555-0123;EXT=1234;isub=1411;Foo=Bar;flag")
    assert isinstance(uri, TelUri)
    assert uri.ext == "1234"
    assert uri.isub == "1411"
    assert uri.param("foo") == "Bar"
    assert uri.param("flag") == ""
    assert str(uri) == "tel:+12015550123;ext=1234;isub=1411;foo=Bar;flag"
    assert str(uri.with_param("ext", "99")) == "tel:+12015550123;isub=1411;foo=Bar;flag;ext=99"


def test_tel_hash_and_star() -> None:
    uri = parse_uri("tel:*31%23;phone-context=+49")
    assert isinstance(uri, TelUri)
    assert uri.number == "*31#"
    assert str(uri) == "tel:*31%23;phone-context=+49"
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text", ["tel:", "tel:+", "tel:+-", "tel:abc-xyz", "tel:+12a", "tel:+1?x=y", "tel:+1;;a"]
)
def test_tel_malformed(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("tel:+1-201-555-0123", "tel:+1(201)555.0123"),
        ("tel:+12015550123;ext=12;isub=3", "tel:+12015550123;ISUB=3;ext=1-2"),
        ("tel:7042;phone-context=EXAMPLE.com", "tel:7042;phone-context=example.com"),
        ("tel:7042;phone-context=+1-201", "tel:70-42;phone-context=+1201"),
        ("tel:ABC;phone-context=x.com", "tel:abc;phone-context=x.com"),
    ],
)
def test_tel_equivalent(a: str, b: str) -> None:
    assert parse_uri(a).equivalent(parse_uri(b))
    assert parse_uri(b).equivalent(parse_uri(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("tel:+12015550123", "tel:12015550123"),
        ("tel:+12015550123", "tel:+12015550124"),
        ("tel:+12015550123", "tel:+12015550123;ext=1"),
        ("tel:+12015550123;ext=1", "tel:+12015550123;ext=2"),
        ("tel:7042;phone-context=a.com", "tel:7042;phone-context=b.com"),
    ],
)
def test_tel_not_equivalent(a: str, b: str) -> None:
    assert not parse_uri(a).equivalent(parse_uri(b))


# ---------------------------------------------------------------------------------------------------------
# Other schemes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "rest"),
    [
        ("soap.beep://192.0.2.103:3002", "soap.beep", "//192.0.2.103:3002"),  # RFC 4475 novelsc
        ("kingkong:x", "kingkong", "x"),
        ("isbn:2983792873", "isbn", "2983792873"),  # RFC 4475 unksm2
        ("nobodyKnowsThisScheme:totallyopaque", "nobodyknowsthisscheme", "totallyopaque"),  # unkscm
        ("HTTP://www.example.com/a?b=c", "http", "//www.example.com/a?b=c"),
        ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "urn", "uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
    ],
)
def test_absolute_uri(text: str, scheme: str, rest: str) -> None:
    uri = parse_uri(text)
    assert uri == AbsoluteUri(scheme, rest)
    assert str(uri) == f"{scheme}:{rest}"
    assert uri.equivalent(AbsoluteUri(scheme, rest))
    assert not uri.equivalent(AbsoluteUri(scheme, rest + "x"))


# ---------------------------------------------------------------------------------------------------------
# name-addr / addr-spec
# ---------------------------------------------------------------------------------------------------------


def test_name_addr_quoted() -> None:
    na = parse_name_addr('"Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774')
    assert na.display_name == "Alice Liddell"
    assert na.uri == parse_uri("sip:alice@atlanta.example.com")
    assert na.params == (("tag", "1928301774"),)
    assert na.tag == "1928301774"
    assert na.bracketed
    assert str(na) == "Alice Liddell <sip:alice@atlanta.example.com>;tag=1928301774"


def test_name_addr_token_display_name() -> None:
    na = parse_name_addr("Bob   Smith\t<sip:bob@biloxi.example.com>")
    assert na.display_name == "Bob Smith"
    assert na.params == ()
    assert na.tag is None


def test_name_addr_no_display_name() -> None:
    na = parse_name_addr("<sip:bob@biloxi.example.com;lr>")
    assert na.display_name is None
    assert isinstance(na.uri, SipUri)
    assert na.uri.lr
    assert str(na) == "<sip:bob@biloxi.example.com;lr>"


def test_name_addr_empty_quoted_display_name() -> None:
    na = parse_name_addr('"" <sip:a@b>')
    assert na.display_name == ""
    assert str(na) == '"" <sip:a@b>'


def test_lwsdisp() -> None:
    # RFC 4475 lwsdisp: no LWS between display name and '<'.
    assert parse_name_addr('"caller"<sip:caller@example.com>;tag=323').display_name == "caller"
    assert parse_name_addr("caller<sip:caller@example.com>;tag=323").display_name == "caller"


def test_quoted_pairs_in_display_name() -> None:
    # RFC 4475 wsinv To header.
    na = parse_name_addr('"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:x@example.com>')
    assert na.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert parse_name_addr(str(na)) == na
    na = parse_name_addr(r'"say \"hi\" \\o/" <sip:x@example.com>')
    assert na.display_name == 'say "hi" \\o/'
    assert str(na) == r'"say \"hi\" \\o/" <sip:x@example.com>'
    assert parse_name_addr(str(na)) == na


def test_display_name_quoting_on_output() -> None:
    uri = parse_uri("sip:a@b")
    assert str(NameAddr("Bell, Alexander", uri)) == '"Bell, Alexander" <sip:a@b>'
    assert str(NameAddr("Jürgen", uri)) == '"Jürgen" <sip:a@b>'
    assert str(NameAddr("evil\r\nX-Injected: 1", uri)) == '"evil  X-Injected: 1" <sip:a@b>'
    assert str(NameAddr(None, uri, (("tag", "x"),), bracketed=False)) == "<sip:a@b>;tag=x"


def test_name_addr_params_with_lws_and_quotes() -> None:
    na = parse_name_addr(
        '<sip:a@b> ; tag = 12 ;q=0.5;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABB>";ob'
    )
    assert na.params == (
        ("tag", "12"),
        ("q", "0.5"),
        ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-AABB>"'),
        ("ob", None),
    )
    assert na.param("ob") == ""
    assert na.param("missing") is None
    assert unquote_string(na.param("+sip.instance") or "") == "<urn:uuid:00000000-0000-1000-8000-AABB>"
    assert na.with_tag("abc").tag == "abc"


def test_cparam01_addr_spec_params_are_header_params() -> None:
    na = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    assert na.uri == parse_uri("sip:+19725552222@gw1.example.net")
    assert na.params == (("unknownparam", None),)
    assert not na.bracketed


def test_cparam02_bracketed_params_are_uri_params() -> None:
    na = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert isinstance(na.uri, SipUri)
    assert na.uri.params == (("unknownparam", None),)
    assert na.params == ()


def test_addr_spec_with_tag() -> None:
    na = parse_name_addr("sip:alice@atlanta.example.com ;tag=88sja8x")
    assert na.tag == "88sja8x"
    assert na.uri == parse_uri("sip:alice@atlanta.example.com")


def test_addr_spec_tel() -> None:
    na = parse_name_addr("tel:+1-201-555-0123;tag=x")
    assert isinstance(na.uri, TelUri)
    assert na.uri.params == ()
    assert na.tag == "x"


def test_absolute_uri_in_name_addr() -> None:
    na = parse_name_addr("<http://www.example.com>")
    assert na.uri == AbsoluteUri("http", "//www.example.com")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "must be enclosed"),  # RFC 4475 regbadct
        ("sip:a@b,c", "must be enclosed"),
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated quoted"),  # RFC 4475 quotbal
        ("Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43", "need(s)? quoting"),  # RFC 4475 baddn
        ('"Alice" sip:alice@example.com', "expected '<'"),
        ("<sip:a@b", "missing '>'"),
        ("<sip:a@b>x", "unexpected"),
        ("<sip:a@b>;;x", "empty parameter name"),
        ("<sip:a@b>;x=", "missing parameter value"),
        ('<sip:a@b>;x="unterminated', "unterminated quoted"),
        ("<sip:a@b>;a@b=1", "bad parameter name"),
        ("< sip:a @b>", "whitespace"),
        ("", "empty"),
        ("*", "missing scheme"),
    ],
)
def test_bad_name_addr(text: str, what: str) -> None:
    with pytest.raises(SipParseError, match=what):
        parse_name_addr(text)


def test_lws_inside_brackets_tolerated() -> None:
    assert parse_name_addr("< sip:a@b >").uri == parse_uri("sip:a@b")


# ---------------------------------------------------------------------------------------------------------
# Header-level scanners
# ---------------------------------------------------------------------------------------------------------


def test_split_comma_values() -> None:
    assert split_comma_values("") == []
    assert split_comma_values(" a , b,c ") == ["a", "b", "c"]
    assert split_comma_values("a,,b") == ["a", "b"]
    assert split_comma_values('Digest a="x,y", b=c') == ['Digest a="x,y"', "b=c"]
    assert split_comma_values(r'"a\",b" <sip:x@y>, <sip:c,d@e>;q=1') == [
        r'"a\",b" <sip:x@y>',
        "<sip:c,d@e>;q=1",
    ]
    assert split_comma_values("SIP/2.0/UDP a;branch=z9hG4bK1,\r\n SIP/2.0/TCP b") == [
        "SIP/2.0/UDP a;branch=z9hG4bK1",
        "SIP/2.0/TCP b",
    ]


@pytest.mark.parametrize("text", ['"a, b', "<sip:a@b, c", 'x, "y'])
def test_split_comma_values_unterminated(text: str) -> None:
    with pytest.raises(SipParseError, match="unterminated"):
        split_comma_values(text)


def test_parse_params() -> None:
    assert parse_params(';a=b;c;d="q s"') == (("a", "b"), ("c", None), ("d", '"q s"'))
    assert parse_params("A=B ; C") == (("a", "B"), ("c", None))
    assert parse_params("") == ()
    assert parse_params("  ") == ()
    assert parse_params(";received=[2001:db8::1];rport=5060") == (
        ("received", "[2001:db8::1]"),
        ("rport", "5060"),
    )
    assert parse_params(';x="a;b\\"c"') == (("x", '"a;b\\"c"'),)


@pytest.mark.parametrize("text", [";;", ";a;;b", ";a;", ";=x", ";a=b c", ";a=", ';a="x'])
def test_parse_params_errors(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_params(text)


def test_unquote_string() -> None:
    assert unquote_string('"a \\"b\\""') == 'a "b"'
    assert unquote_string("token") == "token"
    assert unquote_string('""') == ""


# ---------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------


def test_values_are_frozen_and_hashable() -> None:
    uri = parse_sip_uri("sip:a@b;lr")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        uri.host = "c"  # type: ignore[misc]
    assert {uri, parse_sip_uri("sip:a@b;lr")} == {uri}
    assert hash(parse_name_addr("<sip:a@b>;tag=1")) == hash(parse_name_addr("<sip:a@b>;tag=1"))


def test_module_imports_are_pure() -> None:
    # The module's own imports; whether the package __init__ pulls in I/O is tested at package level.
    tree = ast.parse(Path(sipcore.uri.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "ipaddress", "re", "typing", "attrs", ".errors"}


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------

_any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_names = st.text(
    st.characters(exclude_categories=["Cs"], max_codepoint=0x17F), min_size=1, max_size=8
).filter(lambda s: s == s.lower() and s.lower() == s.lower().lower())
_labels = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,6}[a-z0-9])?", fullmatch=True)
_top = st.from_regex(r"[a-z]([a-z0-9\-]{0,6}[a-z0-9])?", fullmatch=True)
_hostnames = st.builds(
    lambda labels, top, dot: ".".join([*labels, top]) + ("." if dot else ""),
    st.lists(_labels, max_size=3),
    _top,
    st.booleans(),
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{ipaddress.IPv6Address(a).compressed}]")


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.none() | _any_text.filter(bool))
    password = draw(st.none() | _any_text) if user is not None else None
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=password,
        host=draw(st.one_of(_hostnames, _ipv4, _ipv6)),
        port=draw(st.none() | st.integers(0, 65535)),
        params=tuple(draw(st.lists(st.tuples(_names, st.none() | _any_text), max_size=4))),
        headers=tuple(draw(st.lists(st.tuples(_any_text.filter(bool), _any_text), max_size=3))),
    )


@given(sip_uris())
@settings(max_examples=300)
def test_sip_uri_round_trip(uri: SipUri) -> None:
    text = str(uri)
    assert parse_uri(text) == uri
    assert parse_uri(text).equivalent(uri)


@given(
    sip_uris(),
    st.none() | _any_text,
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,5}", fullmatch=True),
            st.none() | st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True),
        ),
        max_size=3,
    ),
)
def test_name_addr_round_trip(
    uri: SipUri, display_name: str | None, params: list[tuple[str, str | None]]
) -> None:
    na = NameAddr(
        display_name.replace("\r", " ").replace("\n", " ") if display_name else display_name,
        uri,
        tuple(params),
    )
    assert parse_name_addr(str(na)) == na


_uri_like = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='sip:tel+@[]%;?&=<>"\\,.:0123456789abcdef -', max_size=40),
    st.builds(lambda u, tail: str(u) + tail, sip_uris(), st.text(max_size=5)),
)


@given(_uri_like)
@settings(max_examples=500)
def test_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parser in (parse_uri, parse_name_addr, split_comma_values, parse_params):
        with contextlib.suppress(SipParseError):
            parser(text)
