"""RTP data packets (RFC 3550 §5.1), a sending-side sequencer, and RTP/RTCP demultiplexing (RFC 5761 §4).

The fixed header::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |
    |            contributing source (CSRC) identifiers (CC × 32)   |
    | [X] profile-defined (16) | length in 32-bit words (16) | data |
    |                  payload …                | [P] padding, count |

:func:`parse` is lenient only where RFC 3550 is (padding octets are ignored) and raises :class:`RtpError` on
anything else; ``bytes(packet)`` is strict and canonical (padding is written as zeros and its count).
"""

from __future__ import annotations

import random
import struct
from typing import Final

import attrs

from .errors import RtpError

__all__ = [
    "RTP_VERSION",
    "RtpHeaderExtension",
    "RtpPacket",
    "RtpSender",
    "is_rtcp",
    "parse",
]

RTP_VERSION: Final = 2
_HEADER: Final = struct.Struct("!BBHII")
_HEADER_SIZE: Final = 12
_EXTENSION_HEADER: Final = struct.Struct("!HH")


@attrs.frozen(slots=True)
class RtpHeaderExtension:
    """The header extension (RFC 3550 §5.3.1): a 16-bit profile-defined value and whole 32-bit words.

    The contents are kept as bytes; RFC 8285 one-byte/two-byte element parsing belongs to a later module.
    """

    profile: int
    data: bytes = b""


@attrs.frozen(slots=True)
class RtpPacket:
    """One RTP data packet; ``padding`` counts the padding octets including the count octet (0: none)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpHeaderExtension | None = None
    padding: int = 0

    def __bytes__(self) -> bytes:
        csrc = self.csrc
        extension = self.extension
        padding = self.padding
        if not 0 <= self.payload_type <= 0x7F:
            raise RtpError(f"payload type {self.payload_type} is outside 0…127")
        if len(csrc) > 15:
            raise RtpError(f"{len(csrc)} CSRC identifiers; at most 15 fit")
        if not 0 <= padding <= 255:
            raise RtpError(f"padding of {padding} octets is outside 0…255")
        first = 0x80 | len(csrc)
        if padding:
            first |= 0x20
        if extension is not None:
            first |= 0x10
        try:
            header = _HEADER.pack(
                first,
                (0x80 | self.payload_type) if self.marker else self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
            if not csrc and extension is None and not padding:
                return header + self.payload
            parts = [header]
            if csrc:
                parts.append(struct.pack(f"!{len(csrc)}I", *csrc))
            if extension is not None:
                words, remainder = divmod(len(extension.data), 4)
                if remainder:
                    raise RtpError(f"header extension of {len(extension.data)} octets is not whole words")
                parts.append(_EXTENSION_HEADER.pack(extension.profile, words))
                parts.append(extension.data)
        except struct.error as exc:
            raise RtpError(f"RTP header field out of range: {exc}") from None
        parts.append(self.payload)
        if padding:
            parts.append(bytes(padding - 1))
            parts.append(bytes((padding,)))
        return b"".join(parts)


def parse(data: bytes) -> RtpPacket:
    """Parse one RTP packet (RFC 3550 §5.1, with the §A.1 checks a single packet allows).

    :raises RtpError: short packet, version other than 2, truncated CSRC list or header extension, or a
        padding count of zero or longer than the payload.
    """
    size = len(data)
    if size < _HEADER_SIZE:
        raise RtpError(f"RTP packet of {size} octets is shorter than the 12-octet header")
    first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    if not first & 0x3F:
        # The common case: no padding, no extension, no CSRC.
        return RtpPacket(second & 0x7F, sequence_number, timestamp, ssrc, data[12:], second > 0x7F)
    count = first & 0x0F
    position = _HEADER_SIZE + 4 * count
    if size < position:
        raise RtpError(f"RTP packet of {size} octets truncates its {count} CSRC identifiers")
    csrc: tuple[int, ...] = struct.unpack_from(f"!{count}I", data, _HEADER_SIZE) if count else ()
    extension = None
    if first & 0x10:
        if size < position + 4:
            raise RtpError(f"RTP packet of {size} octets truncates its header extension at octet {position}")
        profile, words = _EXTENSION_HEADER.unpack_from(data, position)
        position += 4
        end = position + 4 * words
        if size < end:
            raise RtpError(f"RTP header extension of {words} words runs past the packet end at octet {size}")
        extension = RtpHeaderExtension(profile, data[position:end])
        position = end
    padding = 0
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > size - position:
            raise RtpError(
                f"RTP padding count {padding} is invalid for {size - position} octets after the header"
            )
        end = size - padding
    return RtpPacket(
        second & 0x7F,
        sequence_number,
        timestamp,
        ssrc,
        data[position:end],
        second > 0x7F,
        csrc,
        extension,
        padding,
    )


def is_rtcp(data: bytes) -> bool:
    """Tell an RTCP packet from an RTP packet arriving on one port (RFC 5761 §4).

    The second octet is the RTCP packet type; RTCP types 192–223 collide only with RTP payload types 64–95
    with the marker bit set, which RFC 5761 says must not be used when RTP and RTCP share a port. That range
    holds SR (200), RR (201), SDES (202), BYE (203), APP (204) and the feedback and XR types (205–207).
    """
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


class RtpSender:
    """Numbers the packets of one outgoing RTP stream (RFC 3550 §5.1).

    The initial sequence number, timestamp and SSRC are drawn from the injected ``rng`` (RFC 3550 says they
    SHOULD be random). Callers count media time in samples from 0 (an ever-growing ``int``); the sender adds
    the random offset and wraps the timestamp at 2**32 and the sequence number at 2**16.
    """

    def __init__(self, payload_type: int, rng: random.Random, *, ssrc: int | None = None) -> None:
        if not 0 <= payload_type <= 0x7F:
            raise ValueError(f"payload type {payload_type} is outside 0…127")
        self.payload_type = payload_type
        self.initial_sequence_number = rng.getrandbits(16)
        self.initial_timestamp = rng.getrandbits(32)
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        self.packets_sent = 0

    @property
    def next_sequence_number(self) -> int:
        """The sequence number the next packet will carry."""
        return (self.initial_sequence_number + self.packets_sent) & 0xFFFF

    def wire_timestamp(self, media_time: int) -> int:
        """The RTP timestamp for a media time in samples counted from the start of the stream."""
        return (self.initial_timestamp + media_time) & 0xFFFFFFFF

    def datagram(self, payload: bytes, *, media_time: int, marker: bool = False) -> tuple[bytes, int]:
        """The next packet as octets (those of ``bytes(build(...))`` for this sender's payload type,
        without making the packet object), and its RTP timestamp."""
        timestamp = (self.initial_timestamp + media_time) & 0xFFFFFFFF
        second = self.payload_type | 0x80 if marker else self.payload_type
        sequence = (self.initial_sequence_number + self.packets_sent) & 0xFFFF
        self.packets_sent += 1
        return _HEADER.pack(0x80, second, sequence, timestamp, self.ssrc) + payload, timestamp

    def build(
        self,
        payload: bytes,
        *,
        media_time: int,
        marker: bool = False,
        payload_type: int | None = None,
    ) -> RtpPacket:
        """The next packet: a new sequence number, the timestamp of ``media_time`` (samples from 0)."""
        packet = RtpPacket(
            self.payload_type if payload_type is None else payload_type,
            self.next_sequence_number,
            self.wire_timestamp(media_time),
            self.ssrc,
            payload,
            marker,
        )
        self.packets_sent += 1
        return packet
