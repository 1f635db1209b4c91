"""One key press, one digit: merging RFC 4733, in-band and INFO reports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durchwahl.media.dtmf_inband import DigitDetected
from durchwahl.media.dtmf_info import InfoDigitReceived
from durchwahl.media.dtmf_merge import DigitMerger, DigitSource, KeyPressed
from durchwahl.media.dtmf_rfc4733 import DigitReceived

RTP, INBAND, INFO = DigitSource.TELEPHONE_EVENT, DigitSource.INBAND, DigitSource.SIP_INFO


def _drain(merger: DigitMerger) -> list[str]:
    return [event.digit for event in merger.events()]


def test_one_press_from_three_sources_counts_once() -> None:
    merger = DigitMerger()
    merger.handle_info(InfoDigitReceived("5", 160), now=10.00)
    merger.handle_inband(DigitDetected("5", start=80_000, detected_at=80_280), now=10.04)
    merger.handle_telephone_event(DigitReceived("5", 1234, duration=1280), now=10.17)
    assert list(merger.events()) == [KeyPressed("5", INFO, 10.0)]
    assert merger.duplicates == 2


def test_a_repeated_digit_counts_twice_when_any_source_saw_both() -> None:
    merger = DigitMerger()
    # "55" dialled fast: presses of 100 ms, 60 ms apart; RTP reports at the end, in-band near the start.
    merger.handle_digit(INBAND, "5", 1.035, elapsed=0.035)
    merger.handle_digit(RTP, "5", 1.10, elapsed=0.10)
    merger.handle_digit(INBAND, "5", 1.195, elapsed=0.035)
    merger.handle_digit(RTP, "5", 1.26, elapsed=0.10)
    assert _drain(merger) == ["5", "5"]
    assert merger.duplicates == 2


def test_repeats_from_one_source_are_never_merged() -> None:
    merger = DigitMerger()
    for k in range(4):
        merger.handle_digit(INFO, "1", 2.0 + 0.01 * k)
    assert _drain(merger) == ["1"] * 4


def test_reports_further_apart_than_the_window_are_separate_presses() -> None:
    merger = DigitMerger(window=0.3)
    merger.handle_digit(INBAND, "7", 1.0)
    merger.handle_digit(RTP, "7", 1.5)
    assert _drain(merger) == ["7", "7"]


def test_different_digits_never_merge() -> None:
    merger = DigitMerger()
    merger.handle_digit(INBAND, "1", 1.0)
    merger.handle_digit(RTP, "2", 1.0)
    merger.handle_digit(INFO, "a", 1.0)
    assert _drain(merger) == ["1", "2", "A"]


def test_a_long_rfc4733_press_merges_by_its_start() -> None:
    merger = DigitMerger()
    merger.handle_digit(INBAND, "#", 5.04, elapsed=0.035)
    merger.handle_telephone_event(DigitReceived("#", 0, duration=8000 * 3), now=8.0)  # a 3 s press
    assert _drain(merger) == ["#"]


def test_old_presses_are_forgotten() -> None:
    merger = DigitMerger(window=0.5, retention=1.0)
    merger.handle_digit(INBAND, "9", 1.0)
    merger.handle_digit(RTP, "9", 3.0, elapsed=2.2)  # starts near 0.8, but press 1 is forgotten
    assert _drain(merger) == ["9", "9"]


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        DigitMerger().handle_digit(INFO, "E", 0.0)
    with pytest.raises(ValueError):
        DigitMerger(window=0)


_DIGITS = st.sampled_from("0123456789*#ABCD")


@given(st.lists(st.tuples(_DIGITS, st.integers(0, 2)), min_size=1, max_size=20), st.data())
def test_every_press_counts_once_whatever_the_sources(
    presses: list[tuple[str, int]], data: st.DataObject
) -> None:
    # Presses 150 ms long, 100 ms apart; each is reported by a non-empty subset of sources, with jitter.
    merger = DigitMerger(window=0.1)
    reports: list[tuple[float, DigitSource, str, float]] = []
    for index, (digit, _) in enumerate(presses):
        start = index * 0.25
        sources = data.draw(st.sets(st.sampled_from(list(DigitSource)), min_size=1))
        for source in sources:
            jitter = data.draw(st.floats(0, 0.04))
            elapsed = {RTP: 0.15, INBAND: 0.035, INFO: 0.0}[source]
            reports.append((start + elapsed + jitter, source, digit, elapsed))
    reports.sort(key=lambda r: r[0])
    for now, source, digit, elapsed in reports:
        merger.handle_digit(source, digit, now, elapsed=elapsed)
    assert _drain(merger) == [digit for digit, _ in presses]
