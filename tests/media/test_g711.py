"""G.711: bit-exact against a slow reference written from the standard's interval tables."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.media.g711 import (
    ALAW_DECODE_TABLE,
    ULAW_DECODE_TABLE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

# μ-law (G.711 Table 2a) on the 14-bit linear scale: (highest value, lowest value, step, first code).
# Positive values count down from 0x80; zero is 0xFF. Negative values are folded by one's complement
# (−1 is the negative zero 0x7F, −2…−31 share the intervals of +1…+30) and use the codes with bit 7 clear.
_ULAW_POSITIVE = (
    (8158, 4063, 256, 0x80),
    (4062, 2015, 128, 0x90),
    (2014, 991, 64, 0xA0),
    (990, 479, 32, 0xB0),
    (478, 223, 16, 0xC0),
    (222, 95, 8, 0xD0),
    (94, 31, 4, 0xE0),
    (30, 1, 2, 0xF0),
)

# A-law (G.711 Table 1a) on the 13-bit scale: (lowest magnitude, highest magnitude, step, first code before
# the even-bit inversion). Codes count up; bit 7 is set for positive values.
_ALAW_POSITIVE = (
    (0, 31, 2, 0x80),
    (32, 63, 2, 0x90),
    (64, 127, 4, 0xA0),
    (128, 255, 8, 0xB0),
    (256, 511, 16, 0xC0),
    (512, 1023, 32, 0xD0),
    (1024, 2047, 64, 0xE0),
    (2048, 4095, 128, 0xF0),
)


def _ulaw_reference_encode(sample: int) -> int:
    value = sample >> 2  # 16-bit → 14-bit
    negative = value < 0
    magnitude = ~value if negative else value
    if magnitude == 0:
        return 0x7F if negative else 0xFF
    magnitude = min(magnitude, 8158)
    for high, low, step, first in _ULAW_POSITIVE:
        if low <= magnitude <= high:
            code = first + (high - magnitude) // step
            return code & 0x7F if negative else code
    raise AssertionError(sample)


def _ulaw_reference_decode(code: int) -> int:
    """The middle of the code's interval between decision values, scaled to 16 bits."""
    if code & 0x7F == 0x7F:
        return 0
    positive = code | 0x80
    for high, _low, step, first in _ULAW_POSITIVE:
        if first <= positive < first + 16:
            top = high - (positive - first) * step + 1  # the upper decision value
            middle = top - step // 2
            return (middle if code & 0x80 else -middle) * 4
    raise AssertionError(code)


def _alaw_reference_encode(sample: int) -> int:
    value = sample >> 3  # 16-bit → 13-bit
    negative = value < 0
    magnitude = ~value if negative else value
    for low, high, step, first in _ALAW_POSITIVE:
        if low <= magnitude <= high:
            code = first + (magnitude - low) // step
            return (code & 0x7F if negative else code) ^ 0x55
    raise AssertionError(sample)


def _alaw_reference_decode(code: int) -> int:
    plain = code ^ 0x55
    positive = plain | 0x80
    for low, _high, step, first in _ALAW_POSITIVE:
        if first <= positive < first + 16:
            middle = low + (positive - first) * step + step // 2
            return (middle if plain & 0x80 else -middle) * 8
    raise AssertionError(code)


ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decodes_every_code_to_the_itu_value() -> None:
    expected = [_ulaw_reference_decode(code) for code in range(256)]
    assert ULAW_DECODE_TABLE.tolist() == expected
    assert ulaw_decode(bytes(range(256))).tolist() == expected
    # Anchors quoted by every G.711 table.
    assert ulaw_decode(b"\x00\x80\xff\x7f\xfe").tolist() == [-32124, 32124, 0, 0, 8]


def test_alaw_decodes_every_code_to_the_itu_value() -> None:
    expected = [_alaw_reference_decode(code) for code in range(256)]
    assert ALAW_DECODE_TABLE.tolist() == expected
    assert alaw_decode(bytes(range(256))).tolist() == expected
    assert alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


def test_ulaw_round_trips_every_code() -> None:
    for code in range(256):
        again = ulaw_encode(ulaw_decode(bytes([code])))[0]
        # 0x7F and 0xFF both mean zero; zero encodes as the positive zero 0xFF.
        assert again == (0xFF if code == 0x7F else code), hex(code)


def test_alaw_round_trips_every_code() -> None:
    codes = bytes(range(256))
    assert alaw_encode(alaw_decode(codes)) == codes


def test_ulaw_encode_matches_reference_for_every_int16() -> None:
    expected = bytes(_ulaw_reference_encode(int(x)) for x in ALL_SAMPLES)
    assert ulaw_encode(ALL_SAMPLES) == expected


def test_alaw_encode_matches_reference_for_every_int16() -> None:
    expected = bytes(_alaw_reference_encode(int(x)) for x in ALL_SAMPLES)
    assert alaw_encode(ALL_SAMPLES) == expected


def test_encode_accepts_lists_and_other_integer_dtypes() -> None:
    assert ulaw_encode([0, -1, 32767, -32768]) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert alaw_encode(np.array([0, -1], dtype=np.int32)) == bytes([0xD5, 0x55])
    assert ulaw_encode(np.zeros((2, 3), dtype=np.int16)) == b"\xff" * 6
    assert ulaw_encode([]) == b""


def test_encode_rejects_out_of_range_samples() -> None:
    with pytest.raises(ValueError, match="int16"):
        ulaw_encode([40000])


def test_decode_returns_int16_arrays() -> None:
    assert ulaw_decode(b"\x00\x01").dtype == np.int16
    assert alaw_decode(b"").shape == (0,)


@given(st.binary(max_size=400))
def test_decode_then_encode_is_idempotent(data: bytes) -> None:
    once = ulaw_encode(ulaw_decode(data))
    assert ulaw_encode(ulaw_decode(once)) == once
    assert alaw_encode(alaw_decode(data)) == data


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        ULAW_DECODE_TABLE[0] = 1
