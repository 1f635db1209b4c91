"""The digit collector: digits only while the greeting plays (plus the inter-digit timeout), early matches,
'#', invalid digits, timeouts; a hypothesis state machine drives it with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from durchwahl.routing.collector import (
    INTER_DIGIT_TIMEOUT,
    TRANSITIONS,
    CollectorError,
    CollectorInput,
    CollectorState,
    DigitCollector,
    ExtensionDialled,
    NoExtension,
    NoExtensionReason,
)

EXTENSIONS = {"101", "102", "103", "10", "200", "2001", "5"}
NO_DIGITS = NoExtension(NoExtensionReason.NO_DIGITS)


def feed(collector: DigitCollector, digits: str, start: float = 0.0, gap: float = 0.5) -> object:
    result = None
    for i, d in enumerate(digits):
        result = collector.digit(d, start + i * gap)
    return result


# ------------------------------------------------------------------------------------------ examples


def test_early_match() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.digit("1", 1.0) is None
    assert c.get_timer() == 1.0 + INTER_DIGIT_TIMEOUT
    assert c.digit("0", 1.5) is None  # "10" is valid, but "101" … start with it
    assert c.digit("2", 2.0) == ExtensionDialled("102")
    assert c.result == ExtensionDialled("102") and c.done and c.get_timer() is None
    assert c.digit("3", 2.5) is None and c.digits == "102"


def test_single_digit_extension_matches_at_once() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.digit("5", 0.2) == ExtensionDialled("5")


def test_four_digits_at_most() -> None:
    c = DigitCollector(EXTENSIONS)
    assert feed(c, "2001") == ExtensionDialled("2001")
    c = DigitCollector({"2001", "2002"})
    assert feed(c, "2003") == NoExtension(NoExtensionReason.INVALID, "2003")


def test_invalid_digits_fail_at_once() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.digit("9", 0.1) == NoExtension(NoExtensionReason.INVALID, "9")
    c = DigitCollector(EXTENSIONS)
    assert feed(c, "104") == NoExtension(NoExtensionReason.INVALID, "104")
    c = DigitCollector(EXTENSIONS)
    assert feed(c, "1*") == NoExtension(NoExtensionReason.INVALID, "1*")
    assert c.digits == "1"


def test_inter_digit_timeout_during_the_greeting() -> None:
    c = DigitCollector(EXTENSIONS)
    feed(c, "10")
    assert c.handle_timer(3.0) is None  # early wake-up
    assert c.handle_timer(0.5 + INTER_DIGIT_TIMEOUT) == ExtensionDialled("10")
    c = DigitCollector(EXTENSIONS)
    feed(c, "20")
    assert c.handle_timer(10.0) == NoExtension(NoExtensionReason.TIMEOUT, "20")


def test_hash_ends_input() -> None:
    c = DigitCollector(EXTENSIONS)
    assert feed(c, "10#") == ExtensionDialled("10")
    c = DigitCollector(EXTENSIONS)
    assert feed(c, "20#") == NoExtension(NoExtensionReason.INVALID, "20")
    c = DigitCollector(EXTENSIONS)
    assert c.digit("#", 1.0) == NO_DIGITS


def test_greeting_ends_without_digits() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.get_timer() is None
    assert c.greeting_ended(12.0) == NO_DIGITS
    assert c.digit("1", 12.5) is None  # digits after the greeting are ignored
    assert c.result == NO_DIGITS and c.digits == ""


def test_an_extension_begun_during_the_greeting_may_be_completed() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.digit("1", 9.0) is None
    assert c.greeting_ended(10.0) is None
    assert c.state is CollectorState.FINISHING
    assert c.digit("0", 11.5) is None
    assert c.digit("3", 14.0) == ExtensionDialled("103")  # 2.5 s after the previous digit


def test_after_the_greeting_a_late_digit_is_too_late() -> None:
    c = DigitCollector(EXTENSIONS)
    c.digit("2", 9.0)
    c.greeting_ended(10.0)
    assert c.get_timer() == 12.0
    # The shell woke late: the timeout happened first, the digit is ignored.
    assert c.digit("0", 12.5) == NoExtension(NoExtensionReason.TIMEOUT, "2")
    assert c.digits == "2"


def test_a_tone_begun_during_the_greeting_counts() -> None:
    c = DigitCollector(EXTENSIONS)
    assert c.digit_started(9.9) is None
    assert c.greeting_ended(10.0) is None  # a digit is on its way
    assert c.digit("5", 10.1) == ExtensionDialled("5")
    c = DigitCollector(EXTENSIONS)
    c.digit_started(9.9)
    c.greeting_ended(10.0)
    assert c.handle_timer(9.9 + INTER_DIGIT_TIMEOUT) == NO_DIGITS  # the tone never became a digit


def test_a_tone_that_never_became_a_digit_during_the_greeting() -> None:
    c = DigitCollector(EXTENSIONS)
    c.digit_started(1.0)
    assert c.handle_timer(4.0) is None and not c.done and c.get_timer() is None
    assert c.greeting_ended(5.0) == NO_DIGITS


def test_greeting_stopped_after_a_match_is_fine_but_twice_is_a_bug() -> None:
    c = DigitCollector(EXTENSIONS)
    c.digit("5", 1.0)
    assert c.greeting_ended(1.1) is None
    c = DigitCollector(EXTENSIONS)
    c.digit("1", 1.0)
    c.greeting_ended(2.0)
    with pytest.raises(CollectorError, match="greeting_ended"):
        c.greeting_ended(2.1)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="1–4 digits"):
        DigitCollector({"12345"})
    with pytest.raises(ValueError, match="1–4 digits"):
        DigitCollector({"1a"})
    with pytest.raises(ValueError, match="positive"):
        DigitCollector({"1"}, inter_digit_timeout=0)
    with pytest.raises(ValueError, match="DTMF"):
        DigitCollector({"1"}).digit("E", 0.0)


def test_no_valid_extensions() -> None:
    c = DigitCollector(())
    assert c.digit("1", 0.0) == NoExtension(NoExtensionReason.INVALID, "1")


def test_the_table_lists_every_pair_but_one() -> None:
    pairs = {(s, i) for s in CollectorState for i in CollectorInput}
    assert pairs - set(TRANSITIONS) == {(CollectorState.FINISHING, CollectorInput.GREETING_ENDED)}


# ------------------------------------------------------------------------------------- state machine

_extension_sets = st.sets(st.from_regex(r"[0-9]{1,4}", fullmatch=True), max_size=8)


class CollectorMachine(RuleBasedStateMachine):
    """Random digits, tones, timers and the greeting's end against a fake clock."""

    @initialize(extensions=_extension_sets, timeout=st.sampled_from([3.0, 1.0]))
    def start(self, extensions: set[str], timeout: float) -> None:
        self.extensions = extensions
        self.timeout = timeout
        self.c = DigitCollector(extensions, inter_digit_timeout=timeout)
        self.now = 0.0
        self.greeting_over = False
        self.results: list[object] = []
        self.early: bool = False

    def _record(self, result: object) -> None:
        if result is not None:
            self.results.append(result)

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.9, 3.0, 3.1, 10.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(d=st.sampled_from(list("0123456789") * 3 + list("*#ABCD")))
    def digit(self, d: str) -> None:
        before, timer, state = self.c.digits, self.c.get_timer(), self.c.state
        result = self.c.digit(d, self.now)
        self._record(result)
        if len(self.c.digits) > len(before):
            assert self.c.digits == before + d
            # Taken only while the greeting plays, or within the inter-digit timeout after it; the digits of
            # an extension follow each other within the inter-digit timeout.
            assert state is not CollectorState.DONE
            if self.greeting_over or before:
                assert timer is not None and self.now < timer
            if isinstance(result, ExtensionDialled):
                # An early match: no longer extension starts with it.
                assert not any(
                    e != result.extension and e.startswith(result.extension) for e in self.extensions
                )
        else:
            assert self.c.digits == before

    @rule()
    def tone(self) -> None:
        self._record(self.c.digit_started(self.now))

    @precondition(lambda self: not self.greeting_over)
    @rule()
    def greeting_ends(self) -> None:
        self.greeting_over = True
        started = self.c.get_timer() is not None
        result = self.c.greeting_ended(self.now)
        self._record(result)
        if not started and not self.results[:-1] and result is not None:
            assert result == NO_DIGITS

    @rule()
    def timer(self) -> None:
        when = self.c.get_timer()
        result = self.c.handle_timer(self.now)
        self._record(result)
        if when is None or self.now < when:
            assert result is None
        else:
            assert self.c.get_timer() is None or self.c.get_timer() > self.now  # type: ignore[operator]

    @invariant()
    def one_result_at_most_and_it_stays(self) -> None:
        if not hasattr(self, "c"):
            return
        assert len(self.results) <= 1
        assert self.c.result == (self.results[0] if self.results else None)
        assert self.c.done == bool(self.results)

    @invariant()
    def results_are_consistent(self) -> None:
        if not hasattr(self, "c"):
            return
        c = self.c
        assert len(c.digits) <= 4 and set(c.digits) <= set("0123456789")
        if isinstance(c.result, ExtensionDialled):
            assert c.result.extension == c.digits and c.digits in self.extensions
        if isinstance(c.result, NoExtension):
            assert c.result.digits.startswith(c.digits)
            if c.result.reason is NoExtensionReason.NO_DIGITS:
                assert c.digits == ""
            if c.result.reason is NoExtensionReason.TIMEOUT:
                assert c.digits not in self.extensions
                assert any(e.startswith(c.digits) and e != c.digits for e in self.extensions)

    @invariant()
    def never_stuck(self) -> None:
        """Once the greeting is over the collector is done or has a timer to finish by."""
        if not hasattr(self, "c"):
            return
        if self.c.done:
            assert self.c.get_timer() is None
        elif self.greeting_over:
            timer = self.c.get_timer()
            assert timer is not None


TestCollectorMachine = CollectorMachine.TestCase
TestCollectorMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_tones_without_digits_do_not_hold_the_collector_forever() -> None:
    c = DigitCollector(EXTENSIONS)
    c.digit("1", 9.0)
    c.greeting_ended(10.0)
    c.digit_started(11.0)
    c.digit_started(13.0)  # no digit for the first tone: the timeout is not restarted
    assert c.get_timer() == 14.0
    assert c.handle_timer(14.0) == NoExtension(NoExtensionReason.TIMEOUT, "1")
