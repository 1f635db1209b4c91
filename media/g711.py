"""ITU-T G.711 μ-law and A-law, table-based and vectorised with numpy.

Linear samples are 16-bit signed (``numpy.int16``); G.711 works on their top 14 bits (μ-law) or 13 bits
(A-law). The conversion follows the ITU-T G.191 reference software for G.711: negative samples are folded
with one's complement (so that −1 is the negative zero of μ-law, code 0x7F), μ-law adds the bias 33 before
finding the segment, A-law's first two segments share one step, and the output is inverted (μ-law: all bits;
A-law: the even bits, XOR 0x55). Decoding yields the middle of each quantisation interval, scaled to 16 bits.

Both encoders are a 65,536-entry lookup table indexed by the sample's bit pattern; both decoders are a
256-entry table. Tables are built once at import with numpy (no per-sample Python loop).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

_Int16Array = npt.NDArray[np.int16]
_UInt8Array = npt.NDArray[np.uint8]

_ULAW_BIAS: Final = 33
_ULAW_CLIP: Final = 0x1FFF


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its unsigned bit pattern (the encode tables' index)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> _UInt8Array:
    x = _all_samples()
    negative = x < 0
    # One's complement folds −1 onto 0; the arithmetic shift keeps the top 14 bits.
    magnitude = np.where(negative, ~x, x) >> 2
    biased = np.minimum(magnitude + _ULAW_BIAS, _ULAW_CLIP)
    # The segment is the position of the highest set bit above bit 5 (biased is always >= 33).
    segment = np.zeros_like(biased)
    for bit in range(6, 13):
        segment += (biased >> bit) > 0
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (segment << 4) | mantissa
    table: _UInt8Array = (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)
    return table


def _build_ulaw_decode() -> _Int16Array:
    code = np.arange(256, dtype=np.int32)
    inverted = ~code & 0xFF
    segment = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    # Middle of the interval in the 14-bit domain: ((2·mantissa + 33) << segment) − 33, then scaled by 4.
    magnitude = ((((mantissa << 1) + _ULAW_BIAS) << segment) - _ULAW_BIAS) << 2
    return np.where(code < 0x80, -magnitude, magnitude).astype(np.int16)


def _build_alaw_encode() -> _UInt8Array:
    x = _all_samples()
    negative = x < 0
    magnitude = np.where(negative, ~x, x) >> 4  # 0 … 2047: the 12 magnitude bits of a 13-bit sample, less one
    segment = np.zeros_like(magnitude)
    for bit in range(4, 11):
        segment += (magnitude >> bit) > 0
    # Segments 0 and 1 share one step; segment s >= 1 keeps the four bits below its leading one.
    mantissa = (magnitude >> np.maximum(segment - 1, 0)) & 0x0F
    code = (segment << 4) | mantissa
    code = np.where(negative, code, code | 0x80)
    table: _UInt8Array = (code ^ 0x55).astype(np.uint8)
    return table


def _build_alaw_decode() -> _Int16Array:
    code = np.arange(256, dtype=np.int32)
    plain = code ^ 0x55
    segment = (plain >> 4) & 0x07
    mantissa = plain & 0x0F
    step_base = np.where(segment == 0, mantissa, mantissa + 16)
    magnitude = ((step_base << 4) + 8) << np.maximum(segment - 1, 0)
    table: _Int16Array = np.where(plain & 0x80, magnitude, -magnitude).astype(np.int16)
    return table


ULAW_ENCODE_TABLE: Final[_UInt8Array] = _build_ulaw_encode()
ULAW_DECODE_TABLE: Final[_Int16Array] = _build_ulaw_decode()
ALAW_ENCODE_TABLE: Final[_UInt8Array] = _build_alaw_encode()
ALAW_DECODE_TABLE: Final[_Int16Array] = _build_alaw_decode()
for _table in (ULAW_ENCODE_TABLE, ULAW_DECODE_TABLE, ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE):
    _table.flags.writeable = False


def _as_index(samples: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    array = np.asarray(samples)
    if array.dtype != np.int16:
        if array.size and (array.min() < -32768 or array.max() > 32767):
            raise ValueError("samples must fit in int16")
        array = array.astype(np.int16)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint16)


def ulaw_encode(samples: npt.ArrayLike) -> bytes:
    """Encode 16-bit linear samples (any array-like of int16 values) to μ-law bytes."""
    return ULAW_ENCODE_TABLE[_as_index(samples)].tobytes()


def alaw_encode(samples: npt.ArrayLike) -> bytes:
    """Encode 16-bit linear samples (any array-like of int16 values) to A-law bytes."""
    return ALAW_ENCODE_TABLE[_as_index(samples)].tobytes()


def ulaw_decode(data: bytes) -> _Int16Array:
    """Decode μ-law bytes to a new int16 array of 16-bit linear samples."""
    return ULAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> _Int16Array:
    """Decode A-law bytes to a new int16 array of 16-bit linear samples."""
    return ALAW_DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)]
