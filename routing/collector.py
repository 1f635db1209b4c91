"""The digit collector for extension processing: which extension a caller dialled during the greeting.

A pure machine, fed by the call flow with the time as an argument (aioquic style): ``digit(d, now)`` for
each DTMF digit received (RFC 4733, in-band or INFO — whichever source, once), ``digit_started(now)`` when
a tone has begun but its digit is not known yet (optional), ``greeting_ended(now)`` when the greeting has
played out, and ``handle_timer(now)`` once ``get_timer()`` has passed. Each returns the result when that
input completed the collection, else ``None``; the result is also kept in :attr:`DigitCollector.result`.

The rules:

* Digits are taken only while the greeting plays, plus an inter-digit timeout (3 s) for an extension begun
  during it: after the greeting, each further digit must follow the previous one (or the start of its tone)
  within the timeout. Digits after that are ignored. A greeting that ends with no digit and no tone begun
  gives ``NoExtension(no_digits)`` at once.
* The inter-digit timeout also runs while the greeting plays: 3 s after the last digit the collection ends
  with what was dialled. The start of a tone restarts it too, once: another start before that tone's digit
  does not, so tones that never become digits cannot hold the collector open.
* An extension matches early, as soon as no longer valid extension starts with the digits dialled; digits
  that no valid extension starts with end the collection as ``invalid`` at once. Extensions have at most
  four digits, so neither waits for a fifth.
* ``#`` ends input: the digits so far are the extension, if valid. ``*`` and ``A``–``D`` are never part of
  an extension (``invalid``).
* Without a valid extension (``NoExtension``: ``no_digits``, ``invalid`` or ``timeout``) the call goes to
  the number's default destination.

States and transitions are in :data:`TRANSITIONS`; an input the table does not list for a state (the
greeting ending twice) raises :class:`CollectorError`. After the result, every input is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from .errors import RoutingError

__all__ = [
    "INTER_DIGIT_TIMEOUT",
    "TRANSITIONS",
    "CollectorError",
    "CollectorInput",
    "CollectorResult",
    "CollectorState",
    "DigitCollector",
    "ExtensionDialled",
    "NoExtension",
    "NoExtensionReason",
]

INTER_DIGIT_TIMEOUT: Final = 3.0
MAX_DIGITS: Final = 4
_DECIMAL: Final = frozenset("0123456789")
_DTMF: Final = frozenset("0123456789*#ABCD")


class CollectorError(RoutingError):
    """The call flow fed the collector an input that makes no sense in its state."""


class NoExtensionReason(enum.Enum):
    NO_DIGITS = "no_digits"  #: nothing dialled (or only "#")
    INVALID = "invalid"  #: digits that are no extension
    TIMEOUT = "timeout"  #: the start of an extension, then nothing within the inter-digit timeout


@attrs.frozen
class ExtensionDialled:
    """The caller dialled ``extension``, one of the valid extensions."""

    extension: str


@attrs.frozen
class NoExtension:
    """No valid extension was dialled; ``digits`` holds what was (for the CDR)."""

    reason: NoExtensionReason
    digits: str = ""


CollectorResult = ExtensionDialled | NoExtension


class CollectorState(enum.Enum):
    GREETING = "greeting"  #: the greeting plays; digits are taken
    FINISHING = "finishing"  #: the greeting ended during an extension; waiting for the rest of it
    DONE = "done"  #: the result is known; every input is ignored


class CollectorInput(enum.Enum):
    DIGIT = "digit"
    DIGIT_STARTED = "digit_started"
    GREETING_ENDED = "greeting_ended"
    TIMER = "timer"


class DigitCollector:
    """Collects one extension among ``extensions`` (1–4 digits each) during a greeting that has just begun."""

    def __init__(
        self, extensions: Iterable[str], *, inter_digit_timeout: float = INTER_DIGIT_TIMEOUT
    ) -> None:
        valid = frozenset(extensions)
        for extension in valid:
            if not (1 <= len(extension) <= MAX_DIGITS and set(extension) <= _DECIMAL):
                raise ValueError(f"extension {extension!r} is not 1–{MAX_DIGITS} digits")
        if not inter_digit_timeout > 0:
            raise ValueError(f"inter_digit_timeout must be positive, not {inter_digit_timeout}")
        self._valid = valid
        self._prefixes = frozenset(ext[:i] for ext in valid for i in range(1, len(ext)))
        self._timeout = float(inter_digit_timeout)
        self._state = CollectorState.GREETING
        self._digits = ""
        self._deadline: float | None = None
        self._tone_pending = False  # a tone began and its digit has not come yet
        self._result: CollectorResult | None = None

    # --------------------------------------------------------------------------------------- queries

    @property
    def state(self) -> CollectorState:
        return self._state

    @property
    def digits(self) -> str:
        """The digits taken so far (a ``#`` that ended input, or a rejected ``*``, is not among them)."""
        return self._digits

    @property
    def result(self) -> CollectorResult | None:
        return self._result

    @property
    def done(self) -> bool:
        return self._state is CollectorState.DONE

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or ``None``."""
        return None if self.done else self._deadline

    # ---------------------------------------------------------------------------------------- inputs

    def digit(self, digit: str, now: float) -> CollectorResult | None:
        """A DTMF digit (``0-9 * # A-D``) was received at ``now``."""
        if digit not in _DTMF:
            raise ValueError(f"{digit!r} is not a DTMF digit")
        return self._feed(CollectorInput.DIGIT, now, digit)

    def digit_started(self, now: float) -> CollectorResult | None:
        """A DTMF tone began at ``now``; its digit follows with :meth:`digit`."""
        return self._feed(CollectorInput.DIGIT_STARTED, now)

    def greeting_ended(self, now: float) -> CollectorResult | None:
        """The greeting has played out (or was stopped)."""
        return self._feed(CollectorInput.GREETING_ENDED, now)

    def handle_timer(self, now: float) -> CollectorResult | None:
        """The time from :meth:`get_timer` has come (an early call does nothing)."""
        return self._feed(CollectorInput.TIMER, now)

    # ------------------------------------------------------------------------------------- machinery

    def _feed(self, event: CollectorInput, now: float, digit: str = "") -> CollectorResult | None:
        handler = TRANSITIONS.get((self._state, event))
        if handler is None:
            raise CollectorError(f"{event.value} is not expected in state {self._state.value}")
        if (
            event is not CollectorInput.TIMER
            and self._deadline is not None
            and now >= self._deadline
            and not self.done
        ):
            # The timer is overdue (the shell woke late): the timeout came first, this input is too late.
            result = self._on_timer(now, "")
            if result is not None:
                return result
            handler = TRANSITIONS[(self._state, event)]
        return handler(self, now, digit)

    def _ignore(self, now: float, digit: str) -> CollectorResult | None:
        return None

    def _finish(self, result: CollectorResult) -> CollectorResult:
        self._state = CollectorState.DONE
        self._deadline = None
        self._result = result
        return result

    def _on_digit(self, now: float, digit: str) -> CollectorResult | None:
        if digit == "#":
            if not self._digits:
                return self._finish(NoExtension(NoExtensionReason.NO_DIGITS))
            return self._finish(self._complete(NoExtensionReason.INVALID))
        if digit not in _DECIMAL:
            return self._finish(NoExtension(NoExtensionReason.INVALID, self._digits + digit))
        self._tone_pending = False
        self._digits += digit
        if self._digits not in self._prefixes:  # nothing longer can follow
            return self._finish(self._complete(NoExtensionReason.INVALID))
        self._deadline = now + self._timeout
        return None

    def _on_digit_started(self, now: float, digit: str) -> CollectorResult | None:
        if not self._tone_pending:  # a second start without a digit does not extend the time (bounded input)
            self._tone_pending = True
            self._deadline = now + self._timeout
        return None

    def _on_greeting_ended(self, now: float, digit: str) -> CollectorResult | None:
        if self._deadline is None:  # neither a digit nor a tone in progress
            return self._finish(NoExtension(NoExtensionReason.NO_DIGITS))
        self._state = CollectorState.FINISHING
        return None

    def _on_timer(self, now: float, digit: str) -> CollectorResult | None:
        if self._deadline is None or now < self._deadline:
            return None
        if self._digits:
            return self._finish(self._complete(NoExtensionReason.TIMEOUT))
        # Only a tone that never produced a digit.
        self._deadline = None
        self._tone_pending = False
        if self._state is CollectorState.FINISHING:
            return self._finish(NoExtension(NoExtensionReason.NO_DIGITS))
        return None

    def _complete(self, otherwise: NoExtensionReason) -> CollectorResult:
        if self._digits in self._valid:
            return ExtensionDialled(self._digits)
        return NoExtension(otherwise, self._digits)


_S = CollectorState
_I = CollectorInput
_Handler = Callable[[DigitCollector, float, str], CollectorResult | None]

TRANSITIONS: Final[dict[tuple[CollectorState, CollectorInput], _Handler]] = {
    # The greeting plays: digits are taken, each restarting the inter-digit timeout.
    (_S.GREETING, _I.DIGIT): DigitCollector._on_digit,  # match or fail early, else wait
    (_S.GREETING, _I.DIGIT_STARTED): DigitCollector._on_digit_started,  # restart the timeout
    (_S.GREETING, _I.GREETING_ENDED): DigitCollector._on_greeting_ended,  # → DONE (no_digits) or FINISHING
    (_S.GREETING, _I.TIMER): DigitCollector._on_timer,  # → DONE with what was dialled
    # The greeting is over but an extension was begun: its rest within the inter-digit timeout.
    (_S.FINISHING, _I.DIGIT): DigitCollector._on_digit,
    (_S.FINISHING, _I.DIGIT_STARTED): DigitCollector._on_digit_started,
    (_S.FINISHING, _I.TIMER): DigitCollector._on_timer,
    # The result is known: everything else is ignored (late digits, the greeting stopped after a match).
    (_S.DONE, _I.DIGIT): DigitCollector._ignore,
    (_S.DONE, _I.DIGIT_STARTED): DigitCollector._ignore,
    (_S.DONE, _I.GREETING_ENDED): DigitCollector._ignore,
    (_S.DONE, _I.TIMER): DigitCollector._ignore,
}
"""Every (state, input) pair the collector accepts and its handler; any other pair raises CollectorError
(the only one is the greeting ending twice)."""
