"""Admission control's decision (routing.admission), on a fake clock: the caps, the standing-queue rule and
the budgets of each kind of request; and the [server] keys that configure it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.routing.admission import AdmissionConfig, AdmissionControl, Kind, Load, Reason, kind_of
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.errors import ConfigError

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


def test_a_short_spike_of_delay_refuses_nothing() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1, overload_interval=0.2))
    # A garbage-collector pause: 0.25 s of delay for 0.15 s, then drained.
    for t in (0.0, 0.05, 0.1, 0.15):
        for kind in Kind:
            assert control.decide(kind, t, busy(0.25)) is None
    assert control.decide(Kind.CALL, 0.16, busy(0.01)) is None
    assert control.call_limit is None and control.stats.refused_total() == 0


def test_a_new_call_that_waited_three_times_the_target_is_refused_at_once() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1))
    refusal = control.decide(Kind.CALL, 0.0, busy(0.31))
    assert refusal is not None and refusal.reason is Reason.DELAY
    assert refusal.phrase == "Service Unavailable (overloaded)"
    assert control.decide(Kind.REGISTER, 0.0, busy(0.31)) is None  # not yet standing


def offer(
    control: AdmissionControl, kind: Kind, start: float, seconds: float, rate: float, delay: float
) -> int:
    """``rate`` requests a second for ``seconds``, each having waited ``delay``: how many were admitted."""
    n = int(seconds * rate)
    return sum(control.decide(kind, start + i / rate, busy(delay)) is None for i in range(n))


def test_a_standing_queue_limits_new_calls_to_a_rate_that_falls_while_it_stands_and_goes_when_calm() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1, overload_interval=0.2))
    assert offer(control, Kind.CALL, 0.0, 2.0, 100, 0.01) == 200
    # A queue of 0.15 s stands: after 0.2 s new calls are limited to 95 % of the rate admitted.
    assert offer(control, Kind.CALL, 2.0, 0.3, 100, 0.15) >= 29
    assert control.call_limit is not None and 90 <= control.call_limit <= 96
    assert control.overloaded(Kind.CALL, 2.3)
    # Registrations (target 0.2 s) and the rest (0.4 s) go on.
    assert control.decide(Kind.REGISTER, 2.3, busy(0.15)) is None
    assert control.decide(Kind.OTHER, 2.3, busy(0.15)) is None
    # While it stands, the limit is cut again, at most every 0.2 s (the delay it takes a cut to show).
    admitted = offer(control, Kind.CALL, 2.3, 2.0, 100, 0.15)
    assert 120 <= admitted <= 180
    assert control.call_limit < 70
    assert control.stats.refused[Kind.CALL, Reason.DELAY] >= 200 - admitted
    # Drained: the limit rises a little each tick, then goes once it no longer binds.
    low = control.call_limit
    offer(control, Kind.CALL, 4.3, 1.0, 20, 0.01)
    assert control.call_limit is not None and control.call_limit > low
    offer(control, Kind.CALL, 5.3, 6.0, 20, 0.01)
    assert control.call_limit is None and not control.overloaded(Kind.CALL, 11.3)
    assert offer(control, Kind.CALL, 11.3, 1.0, 100, 0.01) == 100


def test_a_deeper_queue_refuses_registrations_then_the_rest() -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1, overload_interval=0.2))
    for t in (2.0, 2.1, 2.25):
        control.decide(Kind.OTHER, t, busy(0.3))
    assert control.decide(Kind.REGISTER, 2.26, busy(0.3)) is not None
    assert control.decide(Kind.OTHER, 2.26, busy(0.3)) is None
    for t in (3.0, 3.1, 3.25):
        control.decide(Kind.OTHER, t, busy(0.5))
    assert control.decide(Kind.OTHER, 3.26, busy(0.5)) is not None
    assert control.decide(Kind.REGISTER, 3.3, busy(0.02)) is None  # drained: admitted again at once
    assert control.stats.max_delay == 0.5


def simulate(
    control: AdmissionControl, capacity: int, factor: float, shed_cost: float
) -> tuple[float, float]:
    """A server doing ``capacity`` calls a second, offered ``factor`` times that for 25 s: an admitted call
    costs 40 % of its work at once (the INVITE, the call out) and the rest over the next second (ACK, BYE,
    the call record), a refused one ``shed_cost`` of a call. Returns the calls admitted a second after the
    first 10 s, and the 99th percentile of the queueing delay they met."""
    cost, rate = 1.0 / capacity, capacity * factor
    step = 1.0 / rate
    backlog, due, admitted, delays, tick = 0.0, [0.0] * 10, 0, [], 0
    for i in range(int(25 * rate)):
        now = i * step
        if int(now / 0.1) != tick:
            tick = int(now / 0.1)
            backlog += due.pop(0)
            due.append(0.0)
        backlog = max(0.0, backlog - step)
        if control.decide(Kind.CALL, now, busy(backlog)) is None:
            backlog += 0.4 * cost
            due = [d + 0.06 * cost for d in due]
            if now >= 10:
                admitted += 1
                delays.append(backlog)
        else:
            backlog += shed_cost * cost
    delays.sort()
    return admitted / 15, delays[int(0.99 * len(delays))]


@settings(max_examples=8, deadline=None)
@given(
    capacity=st.integers(min_value=50, max_value=300),
    factor=st.sampled_from([1.5, 2.0, 4.0]),
    shed_cost=st.floats(min_value=0.0, max_value=0.03),
)
def test_an_overloaded_simulated_server_admits_near_its_capacity_with_a_short_queue(
    capacity: int, factor: float, shed_cost: float
) -> None:
    control = AdmissionControl(AdmissionConfig(overload_delay=0.1, overload_interval=0.2))
    goodput, p99 = simulate(control, capacity, factor, shed_cost)
    best = capacity * (1 - (factor - 1) * shed_cost)  # what is left after refusing the excess
    assert 0.8 * best <= goodput <= 1.02 * capacity
    assert p99 <= 0.31  # a new call that waited 3 × 100 ms is refused at once


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
