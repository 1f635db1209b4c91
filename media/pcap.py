"""A small reader of classic libpcap capture files, for tests and tools: UDP datagrams out.

Supported: the classic format in either byte order with microsecond or nanosecond timestamps; link types
Ethernet (with 802.1Q/802.1ad VLAN tags), Linux cooked capture (SLL), BSD loopback and raw IP; IPv4 (no
fragments) and IPv6 (UDP directly after the fixed header). Other packets are skipped. pcapng is not supported.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import Final

import attrs

from .errors import PcapError

__all__ = ["UdpDatagram", "read_udp"]

_MAGIC: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_LINKTYPE_NULL: Final = 0
_LINKTYPE_ETHERNET: Final = 1
_LINKTYPE_RAW: Final = 101
_LINKTYPE_LINUX_SLL: Final = 113
_LINKTYPE_RAW_ALT: Final = (12, 14)
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_ETHERTYPE_VLAN: Final = (0x8100, 0x88A8)
_UDP: Final = 17


@attrs.frozen
class UdpDatagram:
    """One UDP datagram from a capture; ``timestamp`` is seconds since the epoch as the capture recorded."""

    timestamp: float
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def read_udp(data: bytes) -> Iterator[UdpDatagram]:
    """Yield the UDP datagrams of a classic pcap file's contents, in capture order.

    :raises PcapError: not a classic pcap file, or a record header or record that is truncated.
    """
    if len(data) < 24:
        raise PcapError(f"pcap file of {len(data)} octets is shorter than its 24-octet header")
    try:
        order, unit = _MAGIC[data[:4]]
    except KeyError:
        raise PcapError(f"not a classic pcap file (magic {data[:4].hex()})") from None
    link_type = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    position = 24
    while position < len(data):
        if position + 16 > len(data):
            raise PcapError(f"truncated record header at octet {position}")
        seconds, fraction, captured, _original = record.unpack_from(data, position)
        position += 16
        if position + captured > len(data):
            raise PcapError(f"record at octet {position - 16} claims {captured} octets; the file ends first")
        frame = data[position : position + captured]
        position += captured
        datagram = _udp(_network(frame, link_type), seconds + fraction * unit)
        if datagram is not None:
            yield datagram


def _network(frame: bytes, link_type: int) -> tuple[int, bytes] | None:
    """(ethertype, network-layer packet) of a link-layer frame, or ``None`` to skip it."""
    if link_type == _LINKTYPE_ETHERNET:
        offset, ethertype = 14, _u16(frame, 12)
        while ethertype in _ETHERTYPE_VLAN:
            ethertype = _u16(frame, offset + 2)
            offset += 4
        return (ethertype, frame[offset:]) if ethertype >= 0 else None
    if link_type == _LINKTYPE_LINUX_SLL:
        return _u16(frame, 14), frame[16:]
    if link_type == _LINKTYPE_NULL:
        return (_ETHERTYPE_IPV4 if frame[4:5] and frame[4] >> 4 == 4 else _ETHERTYPE_IPV6), frame[4:]
    if link_type == _LINKTYPE_RAW or link_type in _LINKTYPE_RAW_ALT:
        return (_ETHERTYPE_IPV4 if frame[:1] and frame[0] >> 4 == 4 else _ETHERTYPE_IPV6), frame
    return None


def _u16(data: bytes, offset: int) -> int:
    if len(data) < offset + 2:
        return -1
    return (data[offset] << 8) | data[offset + 1]


def _udp(network: tuple[int, bytes] | None, timestamp: float) -> UdpDatagram | None:
    if network is None:
        return None
    ethertype, packet = network
    if ethertype == _ETHERTYPE_IPV4:
        if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != _UDP:
            return None
        header = (packet[0] & 0x0F) * 4
        flags_fragment = _u16(packet, 6)
        if flags_fragment & 0x3FFF:  # more fragments, or not the first fragment
            return None
        end = min(len(packet), _u16(packet, 2))
        source: str = str(ipaddress.IPv4Address(packet[12:16]))
        destination: str = str(ipaddress.IPv4Address(packet[16:20]))
    elif ethertype == _ETHERTYPE_IPV6:
        if len(packet) < 40 or packet[0] >> 4 != 6 or packet[6] != _UDP:
            return None
        header = 40
        end = min(len(packet), 40 + _u16(packet, 4))
        source = str(ipaddress.IPv6Address(packet[8:24]))
        destination = str(ipaddress.IPv6Address(packet[24:40]))
    else:
        return None
    udp = packet[header:end]
    if len(udp) < 8:
        return None
    length = _u16(udp, 4)
    if length < 8:
        return None
    return UdpDatagram(
        timestamp,
        (source, _u16(udp, 0)),
        (destination, _u16(udp, 2)),
        udp[8:length],
    )
