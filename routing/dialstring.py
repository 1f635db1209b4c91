"""Dial strings: what users dial and what the CRM stores, parsed once into a :class:`DialString`.

A dial string is a number and, optionally, post-dial digits::

    105                         an extension (1–4 digits)
    030 1234-567                a national number (5 or more digits, visual separators allowed)
    +49 (30) 123-45 67          an international number ("+", 6–15 digits; "+49 (0)30 …" drops the "(0)";
                                3–5 digits are read too, for "+49 112", but have no E.164 form)
    +49891234567;105            post-dial digits after the first ";" …
    +49891234567#105#           … or the first "#" (after it, "#" is a digit like any other)
    +49891234567;,,105          "," is a one-second pause

After the separator, ``0-9 * # A-D`` are DTMF digits to send once the callee answers and ``,`` is a one-second
pause (``p`` is accepted for it, as in RFC 2806). Visual separators (space, ``- . / ( )``) carry no meaning
and are dropped everywhere; RFC 3966 §5.1.1 lists ``- . ( )``, people also write spaces and slashes.

The same text arrives in a Request-URI user part, where ``;`` is legal and ``#`` arrives escaped as ``%23``
(the URI parser unescapes it), or as a ``tel:`` URI. Telephone-subscriber parameters (RFC 3966 §3) after the
number are understood too: ``;ext=105`` (digits and visual separators only) is post-dial, so is RFC 2806's
``;postd=pp105`` (obsolete since RFC 3966, still stored by old CRMs; its wait-for-dial-tone ``w`` is refused
because a callee who has answered gives no dial tone); ``phone-context`` and ``isub`` are ignored. Post-dial
digits are not part of RFC 3966, so the number and the post-dial part are split here, before any URI is
built — :func:`format_dialstring` writes the canonical ``number;post-dial`` form, which is also a legal
SIP user part.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

from .errors import RoutingError

__all__ = [
    "DTMF_DIGITS",
    "PAUSE",
    "DialKind",
    "DialString",
    "DialStringError",
    "NumberingPlan",
    "Pause",
    "PostDialStep",
    "check_country_code",
    "check_international_prefix",
    "check_trunk_prefix",
    "format_dialstring",
    "format_post_dial",
    "from_request_uri",
    "parse_dialstring",
    "parse_post_dial",
    "to_e164",
]

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
EXTENSION_DIGITS: Final = (1, 4)
NATIONAL_DIGITS: Final = (5, 17)  # an international prefix ("00") and 15 digits fit
INTERNATIONAL_DIGITS: Final = (6, 15)  # E.164 allows 15 digits; the directory asks for at least 6
#: After a dialled "+": a country code and a short number ("+49 112", an emergency number) up to E.164's 15.
DIALLED_INTERNATIONAL_DIGITS: Final = (3, 15)
MAX_POST_DIAL: Final = 64
MAX_TEXT: Final = 256

_DECIMAL: Final = frozenset("0123456789")
_SEPARATORS: Final = frozenset(" \t\u00a0-./()")
_SEPARATOR_TABLE: Final = str.maketrans("", "", "".join(_SEPARATORS))
_PAUSE_CHARS: Final = frozenset(",pP")
_IGNORED_TEL_PARAMS: Final = frozenset({"phone-context", "isub", "isub-encoding", "user"})


class DialStringError(RoutingError, ValueError):
    """Text that is not a dial string; the message says what is wrong and quotes the text."""


class DialKind(enum.Enum):
    """What a dial string's number is."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, without Enum's Python-level hash

    EXTENSION = "extension"  #: 1–4 digits, inside the office
    NATIONAL = "national"  #: 5 or more digits without "+": needs a country code (see :func:`to_e164`)
    INTERNATIONAL = "international"  #: "+" and an E.164 number (or a country code and a short number)


@attrs.frozen
class Pause:
    """A one-second pause between post-dial digits (written ``,``)."""

    def __str__(self) -> str:
        return ","


PAUSE: Final = Pause()

PostDialStep = str | Pause
"""One post-dial step: a DTMF digit (one of ``0-9 * # A-D``) or :data:`PAUSE`."""


def _steps(value: Iterable[PostDialStep]) -> tuple[PostDialStep, ...]:
    return tuple(value)


def _check_post_dial(instance: object, attribute: object, value: tuple[PostDialStep, ...]) -> None:
    if len(value) > MAX_POST_DIAL:
        raise DialStringError(f"{len(value)} post-dial steps; at most {MAX_POST_DIAL} are allowed")
    for step in value:
        if not isinstance(step, Pause) and step not in DTMF_DIGITS:
            raise DialStringError(f"post-dial step {step!r} is not a pause or one of 0-9 * # A-D")


@attrs.frozen
class DialString:
    """A parsed dial string.

    ``digits`` holds decimal digits only: the extension, the national number as dialled (trunk or
    international prefix included), or the international number without its ``+``. ``post_dial`` is what to
    send after the callee answers; only external numbers have it. Constructing an invalid value raises
    :class:`DialStringError`, so every ``DialString`` can be formatted and parsed back to itself.
    """

    kind: DialKind
    digits: str
    post_dial: tuple[PostDialStep, ...] = attrs.field(
        default=(), converter=_steps, validator=_check_post_dial
    )

    def __attrs_post_init__(self) -> None:
        low, high = {
            DialKind.EXTENSION: EXTENSION_DIGITS,
            DialKind.NATIONAL: NATIONAL_DIGITS,
            DialKind.INTERNATIONAL: DIALLED_INTERNATIONAL_DIGITS,
        }[self.kind]
        if not (self.digits and set(self.digits) <= _DECIMAL):
            raise DialStringError(f"{self.kind.value} number {_show(self.digits)} must be decimal digits")
        if not low <= len(self.digits) <= high:
            raise DialStringError(
                f"{self.kind.value} number {_show(self.digits)} has {len(self.digits)} digits, "
                f"not {low}–{high}"
            )
        if self.kind is DialKind.INTERNATIONAL and self.digits[0] == "0":
            raise DialStringError(f"+{self.digits}: a country code cannot start with 0")
        if self.kind is DialKind.EXTENSION and self.post_dial:
            raise DialStringError(f"extension {self.digits}: post-dial digits only follow an external number")

    @property
    def is_external(self) -> bool:
        return self.kind is not DialKind.EXTENSION

    def __str__(self) -> str:
        return format_dialstring(self)


def _show(text: str) -> str:
    """``repr`` of text for an error message, shortened."""
    return repr(text if len(text) <= 60 else text[:60] + "…")


# ------------------------------------------------------------------------------------------ formatting


def format_post_dial(steps: tuple[PostDialStep, ...]) -> str:
    """``("1", "0", PAUSE, "#")`` → ``"10,#"``."""
    return "".join(str(step) for step in steps)


def format_dialstring(d: DialString) -> str:
    """The canonical text: ``105``, ``0301234567``, ``+49891234567;105,#``."""
    number = "+" + d.digits if d.kind is DialKind.INTERNATIONAL else d.digits
    return f"{number};{format_post_dial(d.post_dial)}" if d.post_dial else number


# ---------------------------------------------------------------------------------------------- parsing


def parse_post_dial(text: str, *, whole: str | None = None) -> tuple[PostDialStep, ...]:
    """Post-dial text (``"105"``, ``",,1#"``, ``"pp 105"``) as steps; visual separators are dropped and
    ``a-d`` read as ``A-D``. Raises :class:`DialStringError`."""
    context = _show(text if whole is None else whole)
    steps: list[PostDialStep] = []
    for ch in text:
        if ch in _SEPARATORS:
            continue
        if ch in _PAUSE_CHARS:
            steps.append(PAUSE)
        elif ch.upper() in DTMF_DIGITS:
            steps.append(ch.upper())
        elif ch in "wW":
            raise DialStringError(
                f"{context}: 'w' (wait for dial tone) cannot be honoured after answer; use ',' pauses"
            )
        else:
            raise DialStringError(
                f"{context}: {ch!r} in the post-dial part is not 0-9 * # A-D or a ',' pause"
            )
    if len(steps) > MAX_POST_DIAL:
        raise DialStringError(f"{context}: {len(steps)} post-dial steps; at most {MAX_POST_DIAL} are allowed")
    return tuple(steps)


def _parse_number(text: str, whole: str) -> tuple[DialKind, str]:
    """The number part (before any post-dial separator) as kind and digits."""
    number = text.strip()
    if not number:
        raise DialStringError(f"{_show(whole)} has no number")
    international = number.startswith("+")
    body = number[1:] if international else number
    if international:
        # "+49 (0)30 …": the bracketed trunk prefix is not dialled from abroad.
        body = body.replace("(0)", "", 1)
    digits = body.translate(_SEPARATOR_TABLE)
    bad = next((ch for ch in digits if ch not in _DECIMAL), None)
    if bad is not None:
        what = "an extension or a phone number" if not international else "a phone number"
        raise DialStringError(f"{_show(whole)} is not {what}: unexpected {bad!r}")
    if not digits:
        raise DialStringError(f"{_show(whole)} has no digits")
    if international:
        low, high = DIALLED_INTERNATIONAL_DIGITS
        if not low <= len(digits) <= high:
            raise DialStringError(
                f"{_show(whole)} has {len(digits)} digits after '+'; a country code and a number have "
                f"{low}–{high}"
            )
        if digits[0] == "0":
            raise DialStringError(f"{_show(whole)}: a country code cannot start with 0")
        return DialKind.INTERNATIONAL, digits
    if len(digits) <= EXTENSION_DIGITS[1]:
        return DialKind.EXTENSION, digits
    if len(digits) > NATIONAL_DIGITS[1]:
        raise DialStringError(f"{_show(whole)} has {len(digits)} digits; at most {NATIONAL_DIGITS[1]}")
    return DialKind.NATIONAL, digits


def _split_params(text: str) -> list[tuple[str, str | None]]:
    """``ext=105;phone-context=+49`` → ``[("ext", "105"), ("phone-context", "+49")]``."""
    out: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, equals, value = item.partition("=")
        out.append((name.strip().lower(), value if equals else None))
    return out


def _parse_tel_params(params: list[tuple[str, str | None]], whole: str) -> tuple[PostDialStep, ...]:
    """Telephone-subscriber parameters (RFC 3966 §3, RFC 2806 ``postd``) as post-dial steps."""
    found: dict[str, str] = {}
    for name, value in params:
        if not name:
            raise DialStringError(f"{_show(whole)}: empty parameter")
        if name in _IGNORED_TEL_PARAMS:
            continue
        if name not in ("ext", "postd"):
            raise DialStringError(f"{_show(whole)}: unknown parameter {_show(name)}")
        if value is None or not value.strip():
            raise DialStringError(f"{_show(whole)}: parameter {name!r} needs a value")
        if name in found:
            raise DialStringError(f"{_show(whole)}: parameter {name!r} given twice")
        found[name] = value
    if len(found) > 1:
        raise DialStringError(f"{_show(whole)}: give either 'ext' or 'postd', not both")
    if "ext" in found:
        ext = found["ext"].translate(_SEPARATOR_TABLE)
        if not ext or not set(ext) <= _DECIMAL:
            raise DialStringError(f"{_show(whole)}: ext={found['ext']!r} must be digits (RFC 3966 §3)")
        return parse_post_dial(ext, whole=whole)
    if "postd" in found:
        return parse_post_dial(found["postd"], whole=whole)
    return ()


def _build(kind: DialKind, digits: str, post_dial: tuple[PostDialStep, ...], whole: str) -> DialString:
    if kind is DialKind.EXTENSION and post_dial:
        raise DialStringError(f"{_show(whole)}: post-dial digits only follow an external number")
    return DialString(kind, digits, post_dial)


def parse_dialstring(text: str) -> DialString:
    """Parse what a user dialled or the CRM stores (see the module docstring).

    A ``tel:`` URI is accepted too. Raises :class:`DialStringError` — and nothing else — saying what is
    wrong.
    """
    if not isinstance(text, str):
        raise DialStringError(f"a dial string is text, not {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise DialStringError(f"dial string of {len(text)} characters; at most {MAX_TEXT} are allowed")
    return _parse_text(text.strip(), text)


def _parse_text(stripped: str, text: str) -> DialString:
    if not stripped:
        raise DialStringError("empty dial string")
    if stripped[:4].lower() == "tel:":
        try:
            uri = parse_uri(stripped)
        except SipParseError as exc:
            raise DialStringError(f"{_show(text)} is not a tel URI: {exc}") from None
        if not isinstance(uri, TelUri):  # pragma: no cover - "tel:" always parses as a TelUri
            raise DialStringError(f"{_show(text)} is not a tel URI")
        return _from_tel(uri, text)
    cuts = [i for i in (stripped.find(";"), stripped.find("#")) if i >= 0]
    if not cuts:
        kind, digits = _parse_number(stripped, text)
        return _build(kind, digits, (), text)
    cut = min(cuts)
    kind, digits = _parse_number(stripped[:cut], text)
    rest = stripped[cut + 1 :]
    if stripped[cut] == ";" and "=" in rest:
        return _build(kind, digits, _parse_tel_params(_split_params(rest), text), text)
    # "105#" and "+4989…;" : the separator alone (a phone's send key) adds no post-dial digits.
    return _build(kind, digits, parse_post_dial(rest, whole=text), text)


def _from_tel(uri: TelUri, whole: str) -> DialString:
    number = _parse_text(uri.number, whole)
    extra = _parse_tel_params(list(uri.params), whole)
    if extra and number.post_dial:
        raise DialStringError(f"{_show(whole)}: post-dial digits both after '#' and in a parameter")
    return _build(number.kind, number.digits, number.post_dial or extra, whole)


def from_request_uri(uri: Uri) -> DialString:
    """The dial string in a Request-URI: a SIP(S) URI's user part or a ``tel:`` URI (with ``;ext=``).

    Raises :class:`DialStringError` when there is no dial string in it.
    """
    if isinstance(uri, TelUri):
        return _from_tel(uri, str(uri))
    if isinstance(uri, SipUri):
        if not uri.user:
            raise DialStringError(f"{_show(str(uri))} has no user part to dial")
        if uri.user.strip()[:4].lower() == "tel:":
            raise DialStringError(f"{_show(str(uri))}: a user part cannot hold a tel URI")
        return parse_dialstring(uri.user)
    if isinstance(uri, AbsoluteUri):
        raise DialStringError(f"cannot dial a {uri.scheme}: URI")
    raise DialStringError(f"cannot dial {type(uri).__name__}")


# ----------------------------------------------------------------------------------------------- E.164


def check_country_code(value: str) -> None:
    """Raise :class:`DialStringError` unless ``value`` is a country calling code: 1–3 digits, not 0…."""
    if not (isinstance(value, str) and 0 < len(value) <= 3 and set(value) <= _DECIMAL) or value[0] == "0":
        raise DialStringError(f"country code {value!r} must be 1–3 digits, not starting with 0")


def check_trunk_prefix(value: str) -> None:
    """Raise :class:`DialStringError` unless ``value`` is a trunk (national) prefix: 0–3 digits (empty where
    national numbers are dialled without one, as in Italy or Denmark)."""
    if not (isinstance(value, str) and len(value) <= 3 and set(value) <= _DECIMAL):
        raise DialStringError(f"trunk prefix {value!r} must be up to 3 digits (empty: none)")


def check_international_prefix(value: str) -> None:
    """Raise :class:`DialStringError` unless ``value`` is an international prefix: 2–5 digits."""
    if not (isinstance(value, str) and 2 <= len(value) <= 5 and set(value) <= _DECIMAL):
        raise DialStringError(f"international prefix {value!r} must be 2–5 digits")


def _checked(check: Callable[[str], None]) -> Callable[[object, object, str], None]:
    """An attrs validator that runs ``check`` on the value."""

    def validator(instance: object, attribute: object, value: str) -> None:
        check(value)

    return validator


@attrs.frozen
class NumberingPlan:
    """How a country's dialled numbers become E.164 (:func:`to_e164`): its ``country_code`` (``"49"``),
    ``trunk_prefix`` (``"0"``: dialled before a national number, dropped for E.164) and
    ``international_prefix`` (``"00"``: dialled before a country code). The directory file sets them
    (``[server]``, per ``[[trunk]]``)."""

    country_code: str = attrs.field(validator=_checked(check_country_code))
    trunk_prefix: str = attrs.field(validator=_checked(check_trunk_prefix))
    international_prefix: str = attrs.field(validator=_checked(check_international_prefix))

    def __attrs_post_init__(self) -> None:
        if self.trunk_prefix == self.international_prefix:
            raise DialStringError(
                f"trunk prefix and international prefix are both {self.trunk_prefix!r}: a number could be "
                "either"
            )


def to_e164(d: DialString, plan: NumberingPlan) -> str:
    """The E.164 form (``+4930123456``) of an external number under ``plan``.

    A national number that starts with the international prefix (``0049 …``) is international; one that
    starts with the trunk prefix (``030 …``) gets the country code in its place; where the plan has no trunk
    prefix every other national number gets the country code in front. A number with neither prefix (a
    local number without its area code) has no E.164 form. Raises :class:`DialStringError`.
    """
    if d.kind is DialKind.EXTENSION:
        raise DialStringError(f"extension {d.digits} has no E.164 form")
    international, trunk = plan.international_prefix, plan.trunk_prefix
    if d.kind is DialKind.INTERNATIONAL:
        e164 = d.digits
    elif d.digits.startswith(international):
        e164 = d.digits[len(international) :]
    elif d.digits.startswith(trunk):  # always true for an empty trunk prefix
        e164 = plan.country_code + d.digits[len(trunk) :]
    else:
        raise DialStringError(
            f"{d.digits} starts with neither the trunk prefix {trunk!r} nor the international prefix "
            f"{international!r}: dial the area code"
        )
    low, high = INTERNATIONAL_DIGITS
    if not low <= len(e164) <= high or e164[0] == "0":
        shown = "+" + d.digits if d.kind is DialKind.INTERNATIONAL else d.digits
        raise DialStringError(f"{shown} is not a valid number (+{e164} is not E.164: {low}–{high} digits)")
    return "+" + e164
