"""The small pcap reader, and SIPp's RFC 2833 captures through the telephone-event receiver."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from durchwahl.media.dtmf_rfc4733 import DigitReceived, TelephoneEventReceiver
from durchwahl.media.errors import PcapError
from durchwahl.media.pcap import UdpDatagram, read_udp
from durchwahl.media.rtp import parse

SIPP_DIR = Path("/usr/share/sip-tester")


def _pcap(frames: list[bytes], link_type: int = 1, *, order: str = "<", nano: bool = False) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link_type)]
    for index, frame in enumerate(frames):
        out.append(struct.pack(order + "IIII", 1000 + index, 500, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def _ipv4_udp(payload: bytes, *, fragment: int = 0, protocol: int = 17) -> bytes:
    udp = struct.pack("!HHHH", 5004, 6000, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, fragment, 64, protocol, 0, bytes([10, 0, 0, 1]),
        bytes([10, 0, 0, 2]),
    )  # fmt: skip
    return header + udp


def _ipv6_udp(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 5004, 6000, 8 + len(payload), 0) + payload
    source = bytes(15) + b"\x01"
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, source, source) + udp


ETHERNET_IPV4 = bytes(12) + b"\x08\x00"


def test_ethernet_ipv4_little_endian_microseconds() -> None:
    frame = ETHERNET_IPV4 + _ipv4_udp(b"hello") + b"\x00" * 4  # Ethernet trailer padding is cut off
    assert list(read_udp(_pcap([frame]))) == [
        UdpDatagram(1000.0005, ("10.0.0.1", 5004), ("10.0.0.2", 6000), b"hello")
    ]


def test_big_endian_nanoseconds_sll_vlan_ipv6_and_raw() -> None:
    sll = bytes(14) + b"\x86\xdd" + _ipv6_udp(b"six")
    (datagram,) = read_udp(_pcap([sll], 113, order=">", nano=True))
    assert datagram.timestamp == pytest.approx(1000.0000005)
    assert datagram.source == ("::1", 5004)
    assert datagram.payload == b"six"
    vlan = bytes(12) + b"\x81\x00\x00\x05\x08\x00" + _ipv4_udp(b"tagged")
    assert [d.payload for d in read_udp(_pcap([vlan]))] == [b"tagged"]
    assert [d.payload for d in read_udp(_pcap([_ipv4_udp(b"raw")], 101))] == [b"raw"]
    assert [d.payload for d in read_udp(_pcap([b"\x02\x00\x00\x00" + _ipv4_udp(b"lo")], 0))] == [b"lo"]


def test_skips_what_is_not_a_whole_udp_datagram() -> None:
    frames = [
        ETHERNET_IPV4 + _ipv4_udp(b"tcp", protocol=6),
        ETHERNET_IPV4 + _ipv4_udp(b"frag", fragment=0x2000),  # more fragments follow
        ETHERNET_IPV4 + _ipv4_udp(b"frag", fragment=0x0010),  # not the first fragment
        bytes(12) + b"\x08\x06" + bytes(28),  # ARP
        ETHERNET_IPV4[:10],  # runt
        ETHERNET_IPV4 + _ipv4_udp(b"ok"),
    ]
    assert [d.payload for d in read_udp(_pcap(frames))] == [b"ok"]
    assert list(read_udp(_pcap([_ipv4_udp(b"x")], 228))) == []  # an unsupported link type


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xd4\xc3\xb2", "shorter than"),
        (b"\x0a\x0d\x0d\x0a" + bytes(20), "not a classic pcap"),  # pcapng
        (_pcap([b"abc"])[:-1], "claims 3 octets"),
        (_pcap([]) + bytes(10), "truncated record header"),
    ],
)
def test_garbage_raises(data: bytes, message: str) -> None:
    with pytest.raises(PcapError, match=message):
        list(read_udp(data))


def _sipp_capture(digit: int) -> Path:
    path = SIPP_DIR / f"dtmf_2833_{digit}.pcap"
    if not path.exists():
        reason = f"{path} is missing: install the Debian package sip-tester (apt-get install sip-tester)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.mark.parametrize("digit", range(10))
def test_sipp_rfc2833_capture_yields_exactly_its_digit(digit: int) -> None:
    """SIPp 3.6.1's captures: PT 101, first packet duration 0, +320 per 20 ms, three end packets."""
    datagrams = list(read_udp(_sipp_capture(digit).read_bytes()))
    packets = [(d, parse(d.payload)) for d in datagrams]
    # No SDP comes with a capture: the telephone-event payload type is the dynamic one (96-127) whose
    # payloads are 4 octets long. These captures hold nothing else.
    event_types = {p.payload_type for _, p in packets if p.payload_type >= 96 and len(p.payload) == 4}
    assert event_types == {101}
    receiver = TelephoneEventReceiver()
    out: list[DigitReceived] = []
    for datagram, packet in packets:
        if packet.payload_type not in event_types:
            continue
        timer = receiver.get_timer()
        if timer is not None and timer <= datagram.timestamp:
            receiver.handle_timer(datagram.timestamp)
        receiver.handle_packet(
            packet.timestamp, packet.sequence_number, packet.marker, packet.payload, datagram.timestamp
        )
        out.extend(receiver.events())
    receiver.handle_timer(datagrams[-1].timestamp + 10)
    out.extend(receiver.events())
    assert [(d.digit, d.duration, d.ended) for d in out] == [(str(digit), 2240, True)]
