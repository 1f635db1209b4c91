"""The media exception hierarchy: every error says what is wrong and where."""

from __future__ import annotations

__all__ = ["DtmfInfoError", "MediaError", "PcapError", "RtpError", "SdpError", "TelephoneEventError"]


class MediaError(Exception):
    """Base class of every error raised by the media package."""


class RtpError(MediaError, ValueError):
    """Bytes that are not a valid RTP packet, or an RTP packet that cannot be serialised."""


class TelephoneEventError(MediaError, ValueError):
    """A malformed RFC 4733 telephone-event payload, or an event that cannot be encoded."""


class SdpError(MediaError, ValueError):
    """Text that is not valid SDP, or an offer that cannot be answered."""


class PcapError(MediaError, ValueError):
    """A capture file that is not classic libpcap, or is truncated."""


class DtmfInfoError(MediaError, ValueError):
    """A SIP INFO body (``application/dtmf-relay`` or ``application/dtmf``) that names no DTMF digit."""
