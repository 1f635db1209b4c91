"""RFC 4733 telephone events: payload, receiver machine, sender, and the two together under loss."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.media.dtmf_rfc4733 import (
    DTMF_EVENTS,
    MAX_DURATION,
    DigitReceived,
    TelephoneEvent,
    TelephoneEventPacket,
    TelephoneEventReceiver,
    TelephoneEventSender,
    digit_to_event,
    event_to_digit,
    parse_telephone_event,
)
from durchwahl.media.errors import TelephoneEventError

# --- payload -----------------------------------------------------------------------------------------


def test_payload_golden_bytes_from_sipp() -> None:
    # The first and the end packet of SIPp's dtmf_2833_5.pcap.
    assert parse_telephone_event(bytes.fromhex("050a0000")) == TelephoneEvent(5, False, 10, 0)
    assert parse_telephone_event(bytes.fromhex("058a08c0")) == TelephoneEvent(5, True, 10, 2240)
    assert bytes(TelephoneEvent(5, True, 10, 2240)) == bytes.fromhex("058a08c0")


def test_payload_ignores_the_reserved_bit_and_extra_blocks() -> None:
    assert parse_telephone_event(bytes.fromhex("0bff ffff 0000 0000")) == TelephoneEvent(11, True, 63, 0xFFFF)


def test_short_payload_raises() -> None:
    with pytest.raises(TelephoneEventError, match="shorter than 4"):
        parse_telephone_event(b"\x01\x02\x03")


@pytest.mark.parametrize(
    "event",
    [TelephoneEvent(256), TelephoneEvent(1, volume=64), TelephoneEvent(1, duration=0x10000)],
)
def test_payload_out_of_range_raises(event: TelephoneEvent) -> None:
    with pytest.raises(TelephoneEventError):
        bytes(event)


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_payload_round_trips(code: int, end: bool, volume: int, duration: int) -> None:
    event = TelephoneEvent(code, end, volume, duration)
    assert parse_telephone_event(bytes(event)) == event


def test_digit_codes() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("d") == 15
    assert event_to_digit(10) == "*"
    assert event_to_digit(16) is None
    for bad in ("E", "", "12", ","):
        with pytest.raises(TelephoneEventError):
            digit_to_event(bad)


# --- receiver ----------------------------------------------------------------------------------------


def _event(code: int, duration: int, end: bool = False) -> bytes:
    return bytes(TelephoneEvent(code, end, 10, duration))


class Feeder:
    """Drives a receiver like the shell would: fires due timers before each packet."""

    def __init__(self, **kwargs: float) -> None:
        self.receiver = TelephoneEventReceiver(**kwargs)  # type: ignore[arg-type]
        self.seq = 0

    def packet(
        self, ts: int, code: int, duration: int, end: bool = False, *, now: float
    ) -> list[DigitReceived]:
        self.tick(now)
        self.seq += 1
        self.receiver.handle_packet(ts, self.seq, duration == 0, _event(code, duration, end), now)
        return list(self.receiver.events())

    def tick(self, now: float) -> list[DigitReceived]:
        timer = self.receiver.get_timer()
        if timer is not None and timer <= now:
            self.receiver.handle_timer(now)
        return list(self.receiver.events())


def test_one_press_with_triple_end_is_one_digit() -> None:
    feed = Feeder()
    assert feed.receiver.get_timer() is None
    out: list[DigitReceived] = []
    for i, duration in enumerate((0, 160, 320, 480)):
        out += feed.packet(1000, 1, duration, now=i * 0.02)
    assert out == []
    assert feed.receiver.get_timer() == pytest.approx(0.06 + 0.5)
    out += feed.packet(1000, 1, 640, True, now=0.08)
    out += feed.packet(1000, 1, 640, True, now=0.081)
    out += feed.packet(1000, 1, 640, True, now=0.082)
    assert out == [DigitReceived("1", 1000, 640, True)]
    assert feed.receiver.get_timer() is None
    assert feed.tick(10.0) == []


def test_lost_first_packets() -> None:
    feed = Feeder()
    out = feed.packet(5000, 11, 480, now=0.0) + feed.packet(5000, 11, 800, True, now=0.04)
    assert out == [DigitReceived("#", 5000, 800, True)]


def test_only_an_end_packet_arrives() -> None:
    feed = Feeder()
    assert feed.packet(5000, 10, 800, True, now=0.0) == [DigitReceived("*", 5000, 800, True)]
    assert feed.packet(5000, 10, 800, True, now=0.01) == []


def test_lost_end_packets_finish_by_timeout() -> None:
    feed = Feeder(timeout=0.3)
    feed.packet(100, 7, 0, now=1.0)
    feed.packet(100, 7, 160, now=1.02)
    assert feed.receiver.get_timer() == pytest.approx(1.32)
    assert feed.tick(1.31) == []
    assert feed.tick(1.32) == [DigitReceived("7", 100, 160, False)]
    assert feed.receiver.get_timer() is None
    # A late packet of the same press does not report it again.
    assert feed.packet(100, 7, 320, True, now=1.4) == []


def test_lost_end_packets_finish_when_the_next_press_starts() -> None:
    feed = Feeder()
    feed.packet(100, 1, 0, now=0.0)
    assert feed.packet(2000, 2, 0, now=0.2) == [DigitReceived("1", 100, 0, False)]
    assert feed.packet(2000, 2, 800, True, now=0.3) == [DigitReceived("2", 2000, 800, True)]


def test_same_digit_pressed_twice_counts_twice() -> None:
    feed = Feeder()
    out = feed.packet(100, 5, 0, now=0.0) + feed.packet(100, 5, 800, True, now=0.1)
    out += feed.packet(1700, 5, 0, now=0.2) + feed.packet(1700, 5, 800, True, now=0.3)
    assert [d.digit for d in out] == ["5", "5"]
    assert [d.start_timestamp for d in out] == [100, 1700]


def test_reordered_packets_within_a_press() -> None:
    feed = Feeder()
    out = feed.packet(100, 3, 320, now=0.0)
    out += feed.packet(100, 3, 0, now=0.001)  # the first packet arrives late
    out += feed.packet(100, 3, 800, True, now=0.1)
    out += feed.packet(100, 3, 640, now=0.101)  # a middle packet after the end
    assert out == [DigitReceived("3", 100, 800, True)]


def test_stale_packet_of_an_older_press_is_dropped() -> None:
    feed = Feeder()
    feed.packet(2000, 2, 0, now=0.0)
    assert feed.packet(100, 1, 160, now=0.01) == []  # older than the current press: dropped
    assert feed.packet(2000, 2, 800, True, now=0.1) == [DigitReceived("2", 2000, 800, True)]


def test_timestamp_restart_far_behind_is_a_new_press() -> None:
    feed = Feeder()
    feed.packet(1_000_000, 2, 800, True, now=0.0)
    assert feed.packet(100, 4, 800, True, now=1.0) == [DigitReceived("4", 100, 800, True)]


def test_timestamp_wrap() -> None:
    feed = Feeder()
    out = feed.packet(0xFFFFFF00, 8, 800, True, now=0.0)
    out += feed.packet(0x00000400, 9, 800, True, now=0.3)
    assert [d.digit for d in out] == ["8", "9"]


def test_long_press_in_segments_is_one_digit() -> None:
    feed = Feeder(timeout=60.0)  # the packets every 50 ms between are left out
    start = 0xFFFF0000  # the segments cross the timestamp wrap as well
    out = feed.packet(start, 0, 0, now=0.0)
    out += feed.packet(start, 0, MAX_DURATION, now=8.0)  # end of segment 1, no E bit
    second = (start + MAX_DURATION) & 0xFFFFFFFF
    out += feed.packet(second, 0, 100, now=8.02)
    out += feed.packet(start, 0, MAX_DURATION, now=8.03)  # duplicate of segment 1's last packet
    out += feed.packet(second, 0, 2000, True, now=8.25)
    out += feed.packet(second, 0, 2000, True, now=8.26)
    assert out == [DigitReceived("0", start, MAX_DURATION + 2000, True)]


def test_long_press_with_a_lost_segment_boundary() -> None:
    feed = Feeder(timeout=60.0)
    out = feed.packet(0, 6, 60000, now=0.0)
    out += feed.packet(MAX_DURATION, 6, 4000, True, now=8.7)
    assert out == [DigitReceived("6", 0, MAX_DURATION + 4000, True)]


def test_non_dtmf_events_and_garbage_are_counted_and_dropped() -> None:
    feed = Feeder()
    assert feed.packet(100, 16, 800, True, now=0.0) == []  # flash
    feed.receiver.handle_packet(200, 1, False, b"\x01", 0.0)
    assert feed.receiver.next_event() is None
    assert (feed.receiver.ignored_events, feed.receiver.malformed_packets) == (1, 1)


def test_reset_forgets_everything() -> None:
    feed = Feeder()
    feed.packet(100, 1, 800, True, now=0.0)
    feed.packet(200, 2, 0, now=0.1)
    feed.receiver.reset()
    assert feed.receiver.get_timer() is None
    assert feed.packet(100, 1, 800, True, now=0.2) == [DigitReceived("1", 100, 800, True)]


def test_receiver_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        TelephoneEventReceiver(timeout=0)


# --- sender ------------------------------------------------------------------------------------------


def test_sender_default_digit() -> None:
    packets = TelephoneEventSender().packets("1")
    assert [(p.send_time, p.timestamp, p.marker) for p in packets] == [
        (0, 0, True),
        (160, 0, False),
        (320, 0, False),
        (480, 0, False),
        (640, 0, False),
        (800, 0, False),
        (800, 0, False),
        (800, 0, False),
    ]
    assert [p.event.duration for p in packets] == [0, 160, 320, 480, 640, 800, 800, 800]
    assert [p.event.end for p in packets] == [False] * 5 + [True] * 3
    assert packets[0].payload == bytes.fromhex("010a0000")
    assert packets[-1].payload == bytes.fromhex("018a0320")


def test_sender_gap_pause_and_options() -> None:
    sender = TelephoneEventSender(duration_ms=60, gap_ms=40, volume=7, end_packets=2)
    packets = sender.packets("#,a")
    starts = sorted({p.timestamp for p in packets})
    assert starts == [0, 480 + 320 + 8000]
    assert {p.event.volume for p in packets} == {7}
    assert [p.event.event for p in packets if p.event.end] == [11, 11, 12, 12]
    assert sender.packets("") == ()
    assert TelephoneEventSender().packets(",")[:1] == ()


def test_sender_wideband_clock() -> None:
    packets = TelephoneEventSender(clock_rate=16000).packets("9")
    assert packets[1].send_time == 320
    assert packets[-1].event.duration == 1600


def test_sender_long_press_is_segmented() -> None:
    packets = TelephoneEventSender(duration_ms=20_000).packets("5")
    segments = sorted({p.timestamp for p in packets})
    assert segments == [0, MAX_DURATION, 2 * MAX_DURATION]
    boundaries = [p for p in packets if p.event.duration == MAX_DURATION]
    assert [(p.timestamp, p.event.end) for p in boundaries] == [(0, False), (MAX_DURATION, False)]
    assert [p.marker for p in packets].count(True) == 1
    assert packets[-1].event == TelephoneEvent(5, True, 10, 160_000 - 2 * MAX_DURATION)
    send_times = [p.send_time for p in packets]
    assert send_times == sorted(send_times)


def test_sender_rejects_bad_input() -> None:
    with pytest.raises(TelephoneEventError, match="'x'"):
        TelephoneEventSender().packets("1x")
    with pytest.raises(ValueError):
        TelephoneEventSender(duration_ms=0)
    with pytest.raises(ValueError):
        TelephoneEventSender(volume=64)
    with pytest.raises(TelephoneEventError, match="packet interval"):
        TelephoneEventSender(packet_interval_ms=10_000).packets("1")


# --- sender → lossy, duplicating, reordering network → receiver ---------------------------------------

CLOCK = 8000


def _deliver(
    packets: tuple[TelephoneEventPacket, ...], fates: list[tuple[int, int]]
) -> list[tuple[int, int, TelephoneEventPacket]]:
    """(arrival time in units, tiebreak, packet) for every copy that arrives; fate = (copies, delay)."""
    arrivals = []
    for index, (packet, (copies, delay)) in enumerate(zip(packets, fates, strict=True)):
        for copy in range(copies):
            arrivals.append((packet.send_time + delay + copy, index, packet))
    arrivals.sort(key=lambda item: (item[0], item[1]))
    return arrivals


def _run(arrivals: list[tuple[int, int, TelephoneEventPacket]]) -> list[DigitReceived]:
    receiver = TelephoneEventReceiver(timeout=0.5)
    out: list[DigitReceived] = []
    for seq, (arrival, _index, packet) in enumerate(arrivals):
        now = arrival / CLOCK
        timer = receiver.get_timer()
        if timer is not None and timer <= now:
            receiver.handle_timer(now)
        receiver.handle_packet(packet.timestamp + 12345, seq, packet.marker, packet.payload, now)
        out.extend(receiver.events())
    receiver.handle_timer(1e9)
    out.extend(receiver.events())
    return out


digit_strings = st.text(alphabet=DTMF_EVENTS + ",", min_size=1, max_size=8)
senders = st.builds(
    TelephoneEventSender,
    duration_ms=st.integers(40, 400),
    gap_ms=st.integers(50, 200),
    end_packets=st.integers(1, 3),
    pause_ms=st.just(200),
)


@settings(max_examples=200, deadline=None)
@given(st.data(), digit_strings, senders)
def test_each_press_reported_once_in_order_under_local_jitter(
    data: st.DataObject, digits: str, sender: TelephoneEventSender
) -> None:
    """Loss and duplication anywhere; reordering only within a press (jitter below the inter-digit gap)."""
    packets = sender.packets(digits)
    max_delay = sender.gap_ms * CLOCK // 1000 - 3
    fates = data.draw(
        st.lists(
            st.tuples(st.sampled_from([0, 1, 1, 1, 2, 3]), st.integers(0, max_delay)),
            min_size=len(packets),
            max_size=len(packets),
        )
    )
    out = _run(_deliver(packets, fates))
    delivered = {p.timestamp for p, (copies, _) in zip(packets, fates, strict=True) if copies}
    expected = [
        (DTMF_EVENTS[p.event.event], p.timestamp + 12345)
        for p in packets
        if p.marker and p.timestamp in delivered
    ]
    assert [(d.digit, d.start_timestamp) for d in out] == expected
    for digit in out:
        assert digit.ended or not all(copies for _, (copies, _) in zip(packets, fates, strict=True))


@settings(max_examples=200, deadline=None)
@given(st.data(), digit_strings, senders)
def test_no_press_reported_twice_or_out_of_order_under_any_reordering(
    data: st.DataObject, digits: str, sender: TelephoneEventSender
) -> None:
    packets = sender.packets(digits)
    fates = data.draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 4000)),
            min_size=len(packets),
            max_size=len(packets),
        )
    )
    out = _run(_deliver(packets, fates))
    pressed = [(DTMF_EVENTS[p.event.event], p.timestamp + 12345) for p in packets if p.marker]
    reported = [(d.digit, d.start_timestamp) for d in out]
    # A subsequence of the presses: nothing invented, nothing repeated, order kept.
    remaining = iter(pressed)
    assert all(item in remaining for item in reported)


def test_lossless_delivery_reports_every_digit_with_its_duration() -> None:
    sender = TelephoneEventSender(duration_ms=120)
    packets = sender.packets("0123456789*#ABCD")
    out = _run(_deliver(packets, [(1, 0)] * len(packets)))
    assert "".join(d.digit for d in out) == "0123456789*#ABCD"
    assert {d.duration for d in out} == {960}
    assert all(d.ended for d in out)


def test_segmented_long_press_round_trips_as_one_digit() -> None:
    packets = TelephoneEventSender(duration_ms=20_000).packets("5#")
    out = _run(_deliver(packets, [(1, 0)] * len(packets)))
    assert [(d.digit, d.duration, d.ended) for d in out] == [("5", 160_000, True), ("#", 160_000, True)]
