"""Admission control's decision (routing.admission), on a fake clock: the caps, the standing-queue rule and
the budgets of each kind of request; and the [server] keys that configure it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.admission import AdmissionConfig, AdmissionControl, Kind, Load, Reason, kind_of
from routing.directory_file import load_directory
from routing.errors import ConfigError

IDLE = Load()


def busy(delay: float) -> Load:
    return Load(delay=delay)


def test_without_caps_and_load_everything_is_admitted() -> None:
    control = AdmissionControl()
    for i in range(1000):
        assert control.decide(Kind.CALL, i * 0.001, IDLE) is None
    assert control.stats.admitted[Kind.CALL] == 1000 and control.stats.refused_total() == 0


def test_max_calls_refuses_at_the_cap_with_retry_after() -> None:
    control = AdmissionControl(AdmissionConfig(max_calls=2, retry_after=7))
    assert control.decide(Kind.CALL, 0.0, Load(calls=1)) is None
    refusal = control.decide(Kind.CALL, 0.0, Load(calls=2))
    assert refusal is not None and refusal.reason is Reason.MAX_CALLS and refusal.retry_after == 7
    assert refusal.phrase == "Service Unavailable (max_calls)"
    # Registrations and other requests are not calls.
    assert control.decide(Kind.REGISTER, 0.0, Load(calls=5)) is None
    assert control.decide(Kind.OTHER, 0.0, Load(calls=5)) is None


def test_max_cps_is_a_bucket_of_one_seconds_worth_refilled_with_time() -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=3))
    verdicts = [control.decide(Kind.CALL, 10.0, IDLE) for _ in range(5)]
    assert [v is None for v in verdicts] == [True, True, True, False, False]
    assert verdicts[3] is not None and verdicts[3].reason is Reason.RATE
    assert control.decide(Kind.CALL, 10.2, IDLE) is not None  # 0.6 of a token: not yet
    assert control.decide(Kind.CALL, 10.34, IDLE) is None  # one token back after 1/3 s
    # The other budgets are their own: no cap on them.
    assert all(control.decide(Kind.OTHER, 10.34, IDLE) is None for _ in range(10))


def test_each_kind_has_its_own_rate() -> None:
    config = AdmissionConfig(max_cps=1, max_registers_per_second=2, max_requests_per_second=0.5)
    control = AdmissionControl(config)
    admitted = {kind: sum(control.decide(kind, 0.0, IDLE) is None for _ in range(5)) for kind in Kind}
    assert admitted == {Kind.CALL: 1, Kind.REGISTER: 2, Kind.OTHER: 1}  # a bucket holds at least one


def test_a_short_spike_of_delay_refuses_nothing_a_standing_queue_refuses_calls_first() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1, overload_interval=0.2))
    # A garbage-collector pause: 0.3 s of delay for 0.15 s, then drained.
    for t in (0.0, 0.05, 0.1, 0.15):
        assert control.decide(Kind.CALL, t, busy(0.3)) is None
    assert control.decide(Kind.CALL, 0.16, busy(0.01)) is None
    # A standing queue of 0.15 s: calls refused after 0.2 s, registrations (0.2 s target) and others not.
    assert control.decide(Kind.CALL, 1.0, busy(0.15)) is None
    refusal = control.decide(Kind.CALL, 1.21, busy(0.15))
    assert refusal is not None and refusal.reason is Reason.DELAY
    assert refusal.phrase == "Service Unavailable (overloaded)"
    assert control.overloaded(Kind.CALL, 1.21) and not control.overloaded(Kind.REGISTER, 1.21)
    assert control.decide(Kind.REGISTER, 1.22, busy(0.15)) is None
    assert control.decide(Kind.OTHER, 1.22, busy(0.15)) is None
    # A deeper queue: registrations go next, then the rest.
    for t in (2.0, 2.1, 2.25):
        control.decide(Kind.OTHER, t, busy(0.3))
    assert control.decide(Kind.REGISTER, 2.26, busy(0.3)) is not None
    assert control.decide(Kind.OTHER, 2.26, busy(0.3)) is None
    for t in (3.0, 3.1, 3.25):
        control.decide(Kind.OTHER, t, busy(0.5))
    assert control.decide(Kind.OTHER, 3.26, busy(0.5)) is not None
    # Drained: admitted again at once.
    assert control.decide(Kind.CALL, 3.3, busy(0.02)) is None
    assert not control.overloaded(Kind.CALL, 3.3)
    refused = control.stats.refused
    assert refused[Kind.CALL, Reason.DELAY] == 1 and refused[Kind.REGISTER, Reason.DELAY] == 1
    assert control.stats.max_delay == 0.5


def test_no_overload_delay_means_no_refusal_for_measured_delay() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=None))
    assert all(control.decide(Kind.CALL, t / 10, busy(5.0)) is None for t in range(100))


def test_open_transactions_near_the_limit_keep_room_for_calls_already_admitted() -> None:
    control = AdmissionControl()
    assert control.decide(Kind.OTHER, 0.0, Load(transactions=899, max_transactions=1000)) is None
    refusal = control.decide(Kind.OTHER, 0.0, Load(transactions=900, max_transactions=1000))
    assert refusal is not None and refusal.reason is Reason.TRANSACTIONS


def test_a_request_admitted_anyway_counts_as_admitted() -> None:
    control = AdmissionControl(AdmissionConfig(max_calls=1))
    refusal = control.decide(Kind.CALL, 0.0, Load(calls=1))
    assert refusal is not None
    control.admit_anyway(Kind.CALL, refusal)
    assert control.stats.admitted[Kind.CALL] == 1 and control.stats.admitted_anyway == 1
    assert control.stats.refused_total() == 0


def test_a_reload_keeps_a_bucket_whose_rate_did_not_change() -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=2))
    assert control.decide(Kind.CALL, 0.0, IDLE) is None and control.decide(Kind.CALL, 0.0, IDLE) is None
    control.configure(AdmissionConfig(max_cps=2, max_calls=100))
    assert control.decide(Kind.CALL, 0.0, IDLE) is not None  # still empty
    control.configure(AdmissionConfig(max_cps=4))
    assert control.decide(Kind.CALL, 0.0, IDLE) is None  # a new rate, a new (full) bucket


def test_kinds() -> None:
    assert kind_of("INVITE") is Kind.CALL and kind_of("REGISTER") is Kind.REGISTER
    assert kind_of("OPTIONS") is Kind.OTHER and kind_of("MESSAGE") is Kind.OTHER


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=500),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=400),
)
def test_calls_admitted_in_any_window_stay_within_the_rate_and_one_seconds_burst(
    rate: float, gaps: list[float]
) -> None:
    control = AdmissionControl(AdmissionConfig(max_cps=rate))
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if control.decide(Kind.CALL, now, IDLE) is None:
            admitted.append(now)
    burst = max(1.0, rate)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - start) + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=0.3), st.floats(0, 0.099)), max_size=200))
def test_a_delay_under_the_target_never_refuses(steps: list[tuple[float, float]]) -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1))
    now = 0.0
    for gap, delay in steps:
        now += gap
        for kind in Kind:
            assert control.decide(kind, now, busy(delay)) is None


# ------------------------------------------------------------------------------------- the [server] keys


def office(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "office.toml"
    path.write_text(f'[server]\ndomain = "office.example"\nlisten = ["udp:127.0.0.1:0"]\n{extra}\n')
    return path


def test_the_admission_keys_are_read(tmp_path: Path) -> None:
    text = (
        "max_calls = 40\nmax_cps = 7.5\nmax_registers_per_second = 100\nmax_requests_per_second = 50\n"
        "overload_queue_ms = 250\nretry_after = 3\n"
    )
    admission = load_directory(office(tmp_path, text)).server.admission
    assert admission == AdmissionConfig(
        max_calls=40,
        max_cps=7.5,
        max_registers_per_second=100.0,
        max_requests_per_second=50.0,
        overload_delay=0.25,
        retry_after=3,
    )
    assert load_directory(office(tmp_path, "overload_queue_ms = 0")).server.admission.overload_delay is None
    assert load_directory(office(tmp_path, "")).server.admission == AdmissionConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_calls = 0", "max_calls: must be at least 1, not 0"),
        ("max_calls = 2.5", "max_calls: must be an integer, not 2.5"),
        ("max_cps = 0", "max_cps: must be greater than 0, not 0"),
        ('max_cps = "10"', "max_cps: must be a number, not '10'"),
        ("retry_after = 0", "retry_after: must be at least 1, not 0"),
        ("overload_queue_ms = -1", "overload_queue_ms: must be at least 0, not -1"),
        ("tcp_max_connections = 0", "tcp_max_connections: must be at least 1, not 0"),
        ("max_cpss = 3", "max_cpss: unknown key (did you mean 'max_cps'?)"),
    ],
)
def test_a_wrong_admission_key_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_directory(office(tmp_path, text))
    assert f"office.toml:4: server.{message}" in str(raised.value)
