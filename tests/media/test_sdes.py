"""SDES (RFC 4568): the ``a=crypto`` attribute parsed and written, and what each SRTP policy accepts, offers
and takes from an answer."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.media.errors import SdpError
from durchwahl.media.sdes import (
    KEY_OCTETS,
    CryptoAttribute,
    SrtpPolicy,
    acceptable,
    answer_crypto,
    answered_crypto,
    choose_crypto,
    offer_profile,
    parse_crypto,
)
from durchwahl.media.sdp import Attribute, MediaDescription

KEY = bytes(range(KEY_OCTETS))
INLINE = base64.b64encode(KEY).decode()
OURS = bytes(range(100, 100 + KEY_OCTETS))


def stream(protocol: str, *crypto: str) -> MediaDescription:
    return MediaDescription(
        "audio", 4000, protocol, ("0",), attributes=tuple(Attribute("crypto", c) for c in crypto)
    )


def test_the_rfc_4568_example_parses() -> None:
    # RFC 4568 §4's example, with our key: a lifetime is accepted.
    parsed = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20")
    assert parsed == CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY)
    assert str(parsed) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"
    assert parse_crypto(f"7 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}").suite == "AES_CM_128_HMAC_SHA1_32"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE}", "not supported"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4", "MKI"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} UNENCRYPTED_SRTP", "session parameters"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE};inline:{INLINE}", "several keys"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "needs 30"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!", "base64"),
        (f"1 AES_CM_128_HMAC_SHA1_80 uri:{INLINE}", "not 'inline'"),
        ("AES_CM_128_HMAC_SHA1_80", "malformed"),
    ],
)
def test_what_we_cannot_honour_is_refused_saying_why(value: str, why: str) -> None:
    with pytest.raises(SdpError, match=why):
        parse_crypto(value)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_sdp_error(value: str) -> None:
    with contextlib.suppress(SdpError):
        parse_crypto(value)


def test_the_first_usable_line_of_an_offer_is_chosen() -> None:
    media = stream(
        "RTP/SAVP",
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE}",
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}",
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",
    )
    assert choose_crypto(media) == CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_32", KEY)
    answer = answer_crypto(media, SrtpPolicy.OFFERED, OURS)
    assert answer == CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_32", OURS)


@pytest.mark.parametrize(
    ("protocol", "crypto", "policy", "accepted"),
    [
        ("RTP/AVP", False, SrtpPolicy.OFF, True),
        ("RTP/AVP", True, SrtpPolicy.OFF, True),  # answered without a=crypto: plain RTP
        ("RTP/SAVP", True, SrtpPolicy.OFF, False),
        ("RTP/AVP", False, SrtpPolicy.OFFERED, True),
        ("RTP/AVP", True, SrtpPolicy.OFFERED, True),
        ("RTP/SAVP", True, SrtpPolicy.OFFERED, True),
        ("RTP/SAVP", False, SrtpPolicy.OFFERED, False),
        ("RTP/AVP", False, SrtpPolicy.REQUIRED, False),
        ("RTP/AVP", True, SrtpPolicy.REQUIRED, True),
        ("RTP/SAVPF", True, SrtpPolicy.REQUIRED, True),
        ("UDP/TLS/RTP/SAVPF", True, SrtpPolicy.REQUIRED, False),  # DTLS-SRTP: not ours
    ],
)
def test_each_policy_accepts(protocol: str, crypto: bool, policy: SrtpPolicy, accepted: bool) -> None:
    lines = (f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",) if crypto else ()
    media = stream(protocol, *lines)
    assert acceptable(media, policy) is accepted
    if accepted:
        answer = answer_crypto(media, policy, OURS)
        assert (answer is not None) is (crypto and policy is not SrtpPolicy.OFF)


def test_our_offer_and_what_the_answer_gives() -> None:
    assert offer_profile(SrtpPolicy.REQUIRED) == "RTP/SAVP"
    assert offer_profile(SrtpPolicy.OFFERED) == offer_profile(SrtpPolicy.OFF) == "RTP/AVP"
    ours = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", OURS)
    theirs = stream("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}")
    assert answered_crypto(ours, theirs, SrtpPolicy.REQUIRED) == CryptoAttribute(1, ours.suite, KEY)
    plain = stream("RTP/AVP")
    assert answered_crypto(ours, plain, SrtpPolicy.OFFERED) is None  # the peer took plain RTP
    with pytest.raises(SdpError, match="required"):
        answered_crypto(ours, plain, SrtpPolicy.REQUIRED)
    with pytest.raises(SdpError, match="does not answer ours"):
        answered_crypto(
            ours, stream("RTP/SAVP", f"2 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"), SrtpPolicy.OFFERED
        )
