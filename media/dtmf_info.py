"""DTMF digits carried in SIP INFO bodies: ``application/dtmf-relay`` and ``application/dtmf``.

Neither type is registered with IANA or specified in an RFC; the forms below are what equipment sends
(Cisco's SIP INFO method for DTMF tone generation and its copies)::

    Content-Type: application/dtmf-relay        Content-Type: application/dtmf

    Signal=5                                    5
    Duration=160

``Signal`` is the digit: ``0``–``9``, ``*``, ``#``, ``A``–``D`` (any case), or the RFC 4733 event code
``10`` … ``15`` (``10`` = ``*``, ``11`` = ``#``, ``12``–``15`` = ``A``–``D``). ``Duration`` is in
milliseconds and optional. Parsing is lenient in what it accepts (any line ending, stray whitespace around
keys and values, keys in any case, unknown keys ignored) and strict in what it returns: one
:class:`InfoDigitReceived`, or :class:`~media.errors.DtmfInfoError` for anything that names no digit.

:class:`InfoDigitReceived` is its own event rather than :class:`media.dtmf_rfc4733.DigitReceived`: an INFO
body has no RTP timestamp, and its duration is in milliseconds, not timestamp units.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from .dtmf_rfc4733 import DTMF_EVENTS
from .errors import DtmfInfoError

__all__ = [
    "DTMF_CONTENT_TYPE",
    "DTMF_RELAY_CONTENT_TYPE",
    "MAX_BODY",
    "InfoDigitReceived",
    "format_dtmf_relay",
    "parse_dtmf",
    "parse_dtmf_relay",
    "parse_info_body",
]

DTMF_RELAY_CONTENT_TYPE: Final = "application/dtmf-relay"
DTMF_CONTENT_TYPE: Final = "application/dtmf"
#: Longest body accepted; real ones are under 40 octets.
MAX_BODY: Final = 1024
_NUMBER: Final = re.compile(r"[0-9]{1,9}")
_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class InfoDigitReceived:
    """A SIP INFO request reported a key press: ``digit`` as in ``"0123456789*#ABCD"``, ``duration_ms`` as
    the body stated it (``None`` when it did not)."""

    digit: str
    duration_ms: int | None = None


def _text(body: bytes) -> str:
    if len(body) > MAX_BODY:
        raise DtmfInfoError(f"INFO body of {len(body)} octets is longer than {MAX_BODY}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DtmfInfoError(f"INFO body is not UTF-8 text (octet {exc.start})") from exc


def _digit(value: str) -> str:
    value = value.strip()
    if len(value) == 1 and value.upper() in DTMF_EVENTS:
        return value.upper()
    if _NUMBER.fullmatch(value) and int(value) < len(DTMF_EVENTS):
        return DTMF_EVENTS[int(value)]
    raise DtmfInfoError(f"{value[:20]!r} is not a DTMF digit (0-9, *, #, A-D, or event code 10-15)")


def parse_dtmf_relay(body: bytes) -> InfoDigitReceived:
    """Parse an ``application/dtmf-relay`` body.

    :raises DtmfInfoError: no ``Signal``, two different ones, a signal that is no digit, a ``Duration`` that
        is no number of milliseconds, a line without ``=``, a body over :data:`MAX_BODY` or not UTF-8.
    """
    digit: str | None = None
    duration: int | None = None
    for number, raw in enumerate(_LINE_END.split(_text(body)), 1):
        line = raw.strip()
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise DtmfInfoError(f"line {number} of the dtmf-relay body has no '=': {line[:20]!r}")
        key = key.strip().lower()
        if key == "signal":
            signal = _digit(value)
            if digit is not None and signal != digit:
                raise DtmfInfoError(f"the dtmf-relay body names two signals, {digit} and {signal}")
            digit = signal
        elif key == "duration":
            value = value.strip()
            if not _NUMBER.fullmatch(value):
                raise DtmfInfoError(
                    f"Duration {value[:20]!r} on line {number} is not a number of milliseconds"
                )
            duration = int(value)
    if digit is None:
        raise DtmfInfoError("the dtmf-relay body has no Signal line")
    return InfoDigitReceived(digit, duration)


def parse_dtmf(body: bytes) -> InfoDigitReceived:
    """Parse an ``application/dtmf`` body: the digit alone, whitespace around it ignored.

    :raises DtmfInfoError: a body that is not exactly one digit (or event code 0–15).
    """
    return InfoDigitReceived(_digit(_text(body)))


def parse_info_body(content_type: str, body: bytes) -> InfoDigitReceived:
    """Parse an INFO body by its ``Content-Type`` (parameters and case ignored).

    :raises DtmfInfoError: another content type, or a body its parser rejects.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == DTMF_RELAY_CONTENT_TYPE:
        return parse_dtmf_relay(body)
    if media_type == DTMF_CONTENT_TYPE:
        return parse_dtmf(body)
    raise DtmfInfoError(f"content type {media_type[:40]!r} carries no DTMF digit")


def format_dtmf_relay(digit: str, duration_ms: int = 250) -> bytes:
    """An ``application/dtmf-relay`` body in the canonical form, e.g. ``b"Signal=5\\r\\nDuration=160\\r\\n"``.

    :raises DtmfInfoError: not a DTMF digit, or a negative duration.
    """
    if len(digit) != 1 or digit.upper() not in DTMF_EVENTS:
        raise DtmfInfoError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    if duration_ms < 0:
        raise DtmfInfoError(f"duration {duration_ms} ms is negative")
    return f"Signal={digit.upper()}\r\nDuration={duration_ms}\r\n".encode("ascii")
