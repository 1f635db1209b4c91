"""Dial strings: extensions, national and international numbers, post-dial digits, tel URIs, E.164."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from durchwahl.routing.dialstring import (
    PAUSE,
    DialKind,
    DialString,
    DialStringError,
    NumberingPlan,
    format_dialstring,
    format_post_dial,
    from_request_uri,
    parse_dialstring,
    parse_post_dial,
    to_e164,
)
from durchwahl.routing.directory import parse_external_number
from durchwahl.sipcore.uri import AbsoluteUri, SipUri, TelUri, parse_uri

GERMANY = NumberingPlan("49", "0", "00")
EXT = DialKind.EXTENSION
NAT = DialKind.NATIONAL
INT = DialKind.INTERNATIONAL


def steps(text: str) -> tuple[str | object, ...]:
    return tuple(PAUSE if ch == "," else ch for ch in text)


# ------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("text", "kind", "digits", "post"),
    [
        ("105", EXT, "105", ""),
        ("0", EXT, "0", ""),
        (" 1234 ", EXT, "1234", ""),
        ("105#", EXT, "105", ""),  # '#' as a send key
        ("030 1234-567", NAT, "0301234567", ""),
        ("030/123456", NAT, "030123456", ""),
        ("0049 89 1234567", NAT, "0049891234567", ""),
        ("12345", NAT, "12345", ""),
        ("+49 (30) 123-45 67", INT, "49301234567", ""),
        ("+49 (0)30 1234567", INT, "49301234567", ""),
        ("+49.30.1234567", INT, "49301234567", ""),
        ("+49891234567;105", INT, "49891234567", "105"),
        ("+49 112", INT, "49112", ""),  # a country code and a short number: read, but not E.164
        ("+49891234567#105#", INT, "49891234567", "105#"),
        ("+49891234567;,,105", INT, "49891234567", ",,105"),
        ("+49891234567;pp105", INT, "49891234567", ",,105"),
        ("+49891234567;1a*d", INT, "49891234567", "1A*D"),
        ("+49891234567; 105-2 ", INT, "49891234567", "1052"),
        ("+49891234567;", INT, "49891234567", ""),
        ("030 1234567;12", NAT, "0301234567", "12"),
        ("+49891234567;ext=105", INT, "49891234567", "105"),
        ("+49891234567;ext=1-05;phone-context=+49", INT, "49891234567", "105"),
        ("+49891234567;postd=pp105#", INT, "49891234567", ",,105#"),
        ("+49891234567;isub=12;ext=7", INT, "49891234567", "7"),
        ("105;phone-context=office.example", EXT, "105", ""),
        ("tel:+49-89-1234567", INT, "49891234567", ""),
        ("tel:+49-89-1234567;ext=105", INT, "49891234567", "105"),
        ("TEL:+49-89-1234567;EXT=105", INT, "49891234567", "105"),
        ("tel:105;phone-context=office.example", EXT, "105", ""),
        ("tel:030123456#12", NAT, "030123456", "12"),
    ],
)
def test_parse(text: str, kind: DialKind, digits: str, post: str) -> None:
    assert parse_dialstring(text) == DialString(kind, digits, steps(post))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("alice", "not an extension or a phone number"),
        ("10a", "unexpected 'a'"),
        ("+", "no digits"),
        ("+12", "a country code and a number have 3–15"),
        ("+0049301234567", "cannot start with 0"),
        ("+4930123456789012", "a country code and a number have 3–15"),
        ("012345678901234567", "at most 17"),
        ("+49891234567;1x", "'x' in the post-dial part"),
        ("+49891234567;1w2", "wait for dial tone"),
        ("105;1", "only follow an external number"),
        ("105#1", "only follow an external number"),
        (";105", "has no number"),
        ("#31#+49891234567", "has no number"),
        ("+49891234567;ext=1#", "must be digits"),
        ("+49891234567;ext=", "needs a value"),
        ("+49891234567;ext=1;postd=2", "either 'ext' or 'postd'"),
        ("+49891234567;ext=1;ext=2", "given twice"),
        ("+49891234567;foo=1", "unknown parameter"),
        ("+49891234567;;ext=1", "empty parameter"),
        ("+49891234567;" + "1" * 65, "at most 64"),
        ("1" * 300, "at most 256"),
        ("tel:+49 89", "not a tel URI"),
        ("tel:105#3", "only follow an external number"),
        ("１０５", "unexpected"),  # full-width digits are not ASCII digits
        ("+49891234567;１", "post-dial"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DialStringError, match=message):
        parse_dialstring(text)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_dialstring("x")


@pytest.mark.parametrize(
    ("d", "text"),
    [
        (DialString(EXT, "105"), "105"),
        (DialString(NAT, "0301234567"), "0301234567"),
        (DialString(INT, "49891234567"), "+49891234567"),
        (DialString(INT, "49891234567", steps("105")), "+49891234567;105"),
        (DialString(INT, "49891234567", steps(",,1#*A")), "+49891234567;,,1#*A"),
    ],
)
def test_format(d: DialString, text: str) -> None:
    assert format_dialstring(d) == text == str(d)


@pytest.mark.parametrize(
    ("kind", "digits", "post", "message"),
    [
        (EXT, "", "", "decimal digits"),
        (EXT, "12345", "", "1–4"),
        (EXT, "105", "1", "only follow"),
        (NAT, "1234", "", "5–17"),
        (INT, "0491234567", "", "cannot start with 0"),
        (INT, "49-30", "", "decimal digits"),
        (INT, "4930123456", "x", "not a pause"),
        (INT, "4930123456", "1" * 65, "at most 64"),
    ],
)
def test_invalid_values_cannot_be_built(kind: DialKind, digits: str, post: str, message: str) -> None:
    with pytest.raises(DialStringError, match=message):
        DialString(kind, digits, tuple(post))


def test_post_dial_helpers() -> None:
    assert parse_post_dial("1,2#") == ("1", PAUSE, "2", "#")
    assert parse_post_dial("p b") == (PAUSE, "B")
    assert format_post_dial(("1", PAUSE, "#")) == "1,#"
    with pytest.raises(DialStringError):
        parse_post_dial("1;2")


# -------------------------------------------------------------------------------------- request URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:105@office.example", "105"),
        ("sip:+49891234567;105@office.example", "+49891234567;105"),
        ("sip:+49891234567;105%23@office.example", "+49891234567;105#"),
        ("sip:+49891234567%23105%23@office.example", "+49891234567;105#"),
        ("sip:0301234567@office.example;user=phone", "0301234567"),
        ("sip:+49-89-1234567;ext=105@gw.example;user=phone", "+49891234567;105"),
        ("sips:+49891234567;postd=p1@gw.example", "+49891234567;,1"),
        ("tel:+49-89-1234567;ext=105", "+49891234567;105"),
        ("tel:+49891234567", "+49891234567"),
    ],
)
def test_from_request_uri(uri: str, expected: str) -> None:
    assert format_dialstring(from_request_uri(parse_uri(uri))) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (SipUri("sip", None, None, "office.example"), "no user part"),
        (SipUri("sip", "alice", None, "office.example"), "not an extension"),
        (SipUri("sip", "tel:105", None, "office.example"), "cannot hold a tel URI"),
        (AbsoluteUri("mailto", "a@b"), "mailto"),
        (TelUri("+4930123", True, (("ext", "1#"),)), "must be digits"),
    ],
)
def test_from_request_uri_errors(uri: SipUri | TelUri | AbsoluteUri, message: str) -> None:
    with pytest.raises(DialStringError, match=message):
        from_request_uri(uri)


# --------------------------------------------------------------------------------------------- E.164


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("030 1234567", "+49301234567"),
        ("0049 30 1234567", "+49301234567"),
        ("0044 20 7946 0000", "+442079460000"),
        ("+49 30 1234567;12", "+49301234567"),
    ],
)
def test_to_e164(text: str, e164: str) -> None:
    assert to_e164(parse_dialstring(text), GERMANY) == e164


@pytest.mark.parametrize(
    ("plan", "text", "e164"),
    [
        (NumberingPlan("44", "0", "00"), "020 7946 0000", "+442079460000"),
        (NumberingPlan("1", "1", "011"), "011 49 30 1234567", "+49301234567"),
        (NumberingPlan("1", "1", "011"), "1 212 555 0100", "+12125550100"),
        (NumberingPlan("39", "", "00"), "06 1234 5678", "+390612345678"),  # no trunk prefix: the 0 stays
        (NumberingPlan("39", "", "00"), "0049 30 1234567", "+49301234567"),
        (NumberingPlan("61", "0", "0011"), "0011 49 30 1234567", "+49301234567"),
    ],
)
def test_to_e164_other_countries(plan: NumberingPlan, text: str, e164: str) -> None:
    assert to_e164(parse_dialstring(text), plan) == e164


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("105", "no E.164 form"),
        ("1234567", "dial the area code"),
        ("00049301234", "not E.164"),
        ("0012", "no E.164 form"),  # four digits: an extension
        ("00123", "not E.164"),
        ("+49 12", "4912 is not a valid number"),
        ("+49 112", "not E.164: 6–15 digits"),
    ],
)
def test_to_e164_errors(text: str, message: str) -> None:
    with pytest.raises(DialStringError, match=message):
        to_e164(parse_dialstring(text), GERMANY)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("049", "0", "00"), "country code '049'"),
        (("4949", "0", "00"), "country code"),
        (("", "0", "00"), "country code"),
        (("49", "0000", "00"), "trunk prefix"),
        (("49", "O", "00"), "trunk prefix"),
        (("49", "0", "0"), "international prefix '0'"),
        (("49", "00", "00"), "both '00'"),
    ],
)
def test_a_numbering_plan_is_checked_when_built(values: tuple[str, str, str], message: str) -> None:
    with pytest.raises(DialStringError, match=message):
        NumberingPlan(*values)


# ------------------------------------------------------------------------------------------ properties

_post_step = st.one_of(st.sampled_from(sorted("0123456789*#ABCD")), st.just(PAUSE))


@st.composite
def dial_strings(draw: st.DrawFn) -> DialString:
    kind = draw(st.sampled_from(DialKind))
    if kind is EXT:
        return DialString(kind, draw(st.from_regex(r"[0-9]{1,4}", fullmatch=True)))
    pattern = r"[0-9]{5,17}" if kind is NAT else r"[1-9][0-9]{2,14}"
    digits = draw(st.from_regex(pattern, fullmatch=True))
    return DialString(kind, digits, tuple(draw(st.lists(_post_step, max_size=12))))


@settings(max_examples=300)
@given(dial_strings())
def test_parse_format_round_trip(d: DialString) -> None:
    assert parse_dialstring(format_dialstring(d)) == d


@settings(max_examples=200)
@given(dial_strings())
def test_request_uri_round_trip(d: DialString) -> None:
    """The canonical form survives a trip through a SIP Request-URI user part (``#`` escaped as %23)."""
    uri = parse_uri(str(SipUri("sip", format_dialstring(d), None, "office.example")))
    assert from_request_uri(uri) == d


@settings(max_examples=100)
@given(dial_strings(), st.lists(st.sampled_from([" ", "-", ".", "(", ")", "/"]), max_size=4))
def test_separators_carry_no_meaning(d: DialString, separators: list[str]) -> None:
    text = format_dialstring(d)
    number, semi, post = text.partition(";")
    head, body = (number[:1], number[1:]) if number.startswith("+") else ("", number)
    for i, sep in enumerate(separators):
        cut = (i * 3 + 1) % (len(body) + 1)
        body = body[:cut] + sep + body[cut:]
    if head:
        body = body.replace("(0)", "0")  # "+49 (0)30": a bracketed trunk prefix is dropped; keep this 0
    assert parse_dialstring(head + body + semi + post).digits == d.digits


_alphabet = st.sampled_from(
    [*"0123456789+;#*,-.()/ pPwWaAdDeE=:tlx%\t\xa0１", "ext=", "tel:", "postd=", "(0)"]
)


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=40), st.lists(_alphabet, max_size=30).map("".join)))
def test_arbitrary_text_raises_only_dialstring_error(text: str) -> None:
    try:
        d = parse_dialstring(text)
    except DialStringError:
        return
    assert parse_dialstring(format_dialstring(d)) == d


@settings(max_examples=200)
@given(st.lists(_alphabet, min_size=1, max_size=30).map("".join))
def test_arbitrary_user_parts_raise_only_dialstring_error(user: str) -> None:
    with contextlib.suppress(DialStringError):
        from_request_uri(SipUri("sip", user, None, "office.example"))


@settings(max_examples=200)
@given(st.text(max_size=30))
@example("+49 30 123456-7;105")
@example("+49891234567#105#")
@example("+49 (30) 123.45/67;,,1a")
def test_accepts_what_the_directory_accepts(text: str) -> None:
    """Every CRM number the directory loads is a dial string with the same number and post-dial digits."""
    try:
        stored = parse_external_number(text)
    except ValueError:
        return
    d = parse_dialstring(text)
    assert (to_e164(d, GERMANY), format_post_dial(d.post_dial)) == (stored.e164, stored.post_dial)
