"""The parsers' fast paths (one regex for the common forms) give exactly what the general scanners give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.sipcore import SipParseError
from durchwahl.sipcore.headers import _VIA_FAST, _parse_via_general, parse_via
from durchwahl.sipcore.uri import (
    _NAME_ADDR_FAST,
    _SIP_FAST,
    _parse_name_addr_general,
    _parse_sip,
    _sip_from_match,
    parse_name_addr,
)


def _outcome(func: object, *args: object) -> object:
    try:
        return func(*args)  # type: ignore[operator]
    except SipParseError:
        return SipParseError


@settings(max_examples=150, deadline=None)
@given(st.from_regex(_SIP_FAST, fullmatch=True))
def test_sip_uri_fast_path_matches_general(rest: str) -> None:
    whole = "sip:" + rest
    match = _SIP_FAST.fullmatch(whole, 4)
    assert match is not None
    fast = _sip_from_match("sip", match, whole)
    general = _outcome(_parse_sip, "sip", rest, whole)
    if fast is None:
        return  # declined: the general parser decides (and raises where it must)
    assert fast == general


@settings(max_examples=150, deadline=None)
@given(st.from_regex(_NAME_ADDR_FAST, fullmatch=True))
def test_name_addr_fast_path_matches_general(text: str) -> None:
    assert _outcome(parse_name_addr, text) == _outcome(_parse_name_addr_general, text)


@settings(max_examples=150, deadline=None)
@given(st.from_regex(_VIA_FAST, fullmatch=True))
def test_via_fast_path_matches_general(text: str) -> None:
    assert _outcome(parse_via, text) == _outcome(_parse_via_general, text)


def test_common_values_take_the_fast_path() -> None:
    assert _NAME_ADDR_FAST.fullmatch('"Alice Example" <sip:alice@trunk.example.net>;tag=1928301774')
    assert _NAME_ADDR_FAST.fullmatch("<sip:+4930123456@pbx.example.com;user=phone>")
    assert _VIA_FAST.fullmatch("SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport")
    assert _SIP_FAST.fullmatch("sip:alice@198.51.100.10:5060;transport=udp", 4)
