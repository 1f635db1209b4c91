"""DTMF tone pairs (ITU-T Q.23) as 8 kHz linear samples, for sending digits in band and for testing.

Levels are per tone in dBm0 on the 16-bit scale of :mod:`media.dtmf_inband` (0 dBm0 = peak 22,657).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .dtmf_inband import HIGH_GROUP, KEYPAD, LOW_GROUP, RATE, dbm0_to_amplitude

__all__ = ["dtmf_tone", "keypad_frequencies"]


def keypad_frequencies(digit: str) -> tuple[float, float]:
    """The low-group and high-group frequency (Hz) of ``digit`` (``a``–``d`` accepted for ``A``–``D``)."""
    key = digit.upper()
    for row, keys in enumerate(KEYPAD):
        if len(key) == 1 and key in keys:
            return LOW_GROUP[row], HIGH_GROUP[keys.index(key)]
    raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")


def dtmf_tone(
    digit: str,
    samples: int,
    *,
    low_dbm0: float = -10.0,
    high_dbm0: float = -10.0,
    deviation: tuple[float, float] = (0.0, 0.0),
    phases: tuple[float, float] = (0.0, 0.0),
    rate: int = RATE,
) -> npt.NDArray[np.float64]:
    """``samples`` samples of ``digit``'s tone pair (float, not clipped).

    ``deviation`` scales each frequency by ``1 + deviation`` (e.g. ``0.015`` for +1.5 %); ``phases`` are the
    starting phases in radians. Twist is ``low_dbm0 − high_dbm0``.
    """
    low, high = keypad_frequencies(digit)
    t = np.arange(samples) / rate
    tone: npt.NDArray[np.float64] = dbm0_to_amplitude(low_dbm0) * np.sin(
        2 * np.pi * low * (1 + deviation[0]) * t + phases[0]
    ) + dbm0_to_amplitude(high_dbm0) * np.sin(2 * np.pi * high * (1 + deviation[1]) * t + phases[1])
    return tone
