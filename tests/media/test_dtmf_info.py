"""SIP INFO DTMF bodies: application/dtmf-relay and application/dtmf."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.media.dtmf_info import (
    MAX_BODY,
    InfoDigitReceived,
    format_dtmf_relay,
    parse_dtmf,
    parse_dtmf_relay,
    parse_info_body,
)
from durchwahl.media.errors import DtmfInfoError, MediaError


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Signal=5\r\nDuration=160\r\n", InfoDigitReceived("5", 160)),
        (b"Signal=5\nDuration=160", InfoDigitReceived("5", 160)),
        (b"Signal=*\r\nDuration=250\r\n", InfoDigitReceived("*", 250)),
        (b"Signal=#\r\n", InfoDigitReceived("#", None)),
        (b"Signal=a\r\nDuration=100\r\n", InfoDigitReceived("A", 100)),
        (b"Signal=D\r\n", InfoDigitReceived("D", None)),
        (b"Signal=10\r\nDuration=100\r\n", InfoDigitReceived("*", 100)),
        (b"Signal=11\r\n", InfoDigitReceived("#", None)),
        (b"Signal=15\r\n", InfoDigitReceived("D", None)),
        (b"  signal = 7 \r\n\r\n DURATION= 90\t\r\n", InfoDigitReceived("7", 90)),
        (b"Duration=160\rSignal=0\r", InfoDigitReceived("0", 160)),
        (b"Signal=3\r\nVolume=10\r\nDuration=60\r\n", InfoDigitReceived("3", 60)),
        (b"Signal=3\r\nSignal=3\r\n", InfoDigitReceived("3", None)),
    ],
)
def test_dtmf_relay(body: bytes, expected: InfoDigitReceived) -> None:
    assert parse_dtmf_relay(body) == expected
    assert parse_info_body("application/dtmf-relay", body) == expected


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "no Signal"),
        (b"Duration=160\r\n", "no Signal"),
        (b"Signal=\r\n", "not a DTMF digit"),
        (b"Signal=E\r\n", "not a DTMF digit"),
        (b"Signal=16\r\n", "not a DTMF digit"),
        (b"Signal=55\r\n", "not a DTMF digit"),
        (b"Signal=-1\r\n", "not a DTMF digit"),
        (b"Signal=1_0\r\n", "not a DTMF digit"),
        ("Signal=\uff15\r\n".encode(), "not a DTMF digit"),  # fullwidth 5
        (b"Signal=5\r\nSignal=6\r\n", "two signals"),
        (b"Signal=5\r\nDuration=abc\r\n", "Duration"),
        (b"Signal=5\r\nDuration=-5\r\n", "Duration"),
        (b"Signal=5\r\nDuration=1234567890\r\n", "Duration"),
        (b"Signal 5\r\n", "has no '='"),
        (b"Signal=5\xff\r\n", "UTF-8"),
        (b"Signal=5\r\n" + b" " * MAX_BODY, "longer than"),
    ],
)
def test_dtmf_relay_garbage(body: bytes, match: str) -> None:
    with pytest.raises(DtmfInfoError, match=match):
        parse_dtmf_relay(body)


@pytest.mark.parametrize(
    ("body", "digit"), [(b"5", "5"), (b"#", "#"), (b" *\r\n", "*"), (b"b", "B"), (b"11", "#")]
)
def test_dtmf(body: bytes, digit: str) -> None:
    assert parse_dtmf(body) == InfoDigitReceived(digit)
    assert parse_info_body("Application/DTMF; charset=us-ascii", body) == InfoDigitReceived(digit)


@pytest.mark.parametrize("body", [b"", b"55", b"5 6", b"Signal=5", b"x", b"\x00"])
def test_dtmf_garbage(body: bytes) -> None:
    with pytest.raises(DtmfInfoError):
        parse_dtmf(body)


def test_other_content_types_are_errors() -> None:
    with pytest.raises(DtmfInfoError, match="carries no DTMF"):
        parse_info_body("application/sdp", b"5")


def test_error_is_in_the_media_hierarchy() -> None:
    assert issubclass(DtmfInfoError, MediaError)
    assert issubclass(DtmfInfoError, ValueError)


def test_format_round_trips() -> None:
    assert format_dtmf_relay("5", 160) == b"Signal=5\r\nDuration=160\r\n"
    for digit in "0123456789*#ABCDabcd":
        assert parse_dtmf_relay(format_dtmf_relay(digit, 100)) == InfoDigitReceived(digit.upper(), 100)
    with pytest.raises(DtmfInfoError):
        format_dtmf_relay("55")
    with pytest.raises(DtmfInfoError):
        format_dtmf_relay("5", -1)


_CONTENT_TYPES = st.sampled_from(["application/dtmf-relay", "application/dtmf", "APPLICATION/DTMF-RELAY;x=y"])


@given(st.binary(max_size=2 * MAX_BODY), _CONTENT_TYPES)
def test_arbitrary_bytes_give_an_event_or_a_typed_error(body: bytes, content_type: str) -> None:
    try:
        event = parse_info_body(content_type, body)
    except DtmfInfoError:
        return
    assert event.digit in "0123456789*#ABCD" and len(event.digit) == 1
    assert event.duration_ms is None or event.duration_ms >= 0


_LINE = st.one_of(
    st.sampled_from(["Signal", "signal", " SIGNAL ", "Duration", "duration", "Volume"]).flatmap(
        lambda key: st.tuples(st.just(key), st.sampled_from(["=", " = ", "", ":"]), st.text(max_size=8))
    ),
    st.tuples(st.just(""), st.just(""), st.text(max_size=10)),
)


@given(st.lists(_LINE, max_size=5), st.sampled_from(["\r\n", "\n", "\r"]))
def test_relay_like_text_gives_an_event_or_a_typed_error(lines: list[tuple[str, str, str]], end: str) -> None:
    body = end.join(k + sep + v for k, sep, v in lines).encode("utf-8", "surrogatepass")
    try:
        event = parse_dtmf_relay(body)
    except DtmfInfoError:
        return
    assert len(event.digit) == 1 and event.digit in "0123456789*#ABCD"
