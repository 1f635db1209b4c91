"""Every bound the stack enforces, in one frozen object with sane defaults (STYLE rule 6)."""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT_LIMITS", "Limits"]


@attrs.frozen
class Limits:
    """Size and count limits applied to everything that arrives from the network."""

    #: Largest message accepted, datagram or stream (a UDP datagram cannot exceed 65,507 octets anyway).
    max_message_bytes: int = 65_535
    #: Largest header section (start line and headers).
    max_header_bytes: int = 32_768
    #: Most header fields (lines after unfolding) in one message.
    max_headers: int = 256
    #: Largest body.
    max_body_bytes: int = 32_768
    #: Bytes a TCP connection may buffer while waiting for the rest of a message.
    max_stream_buffer: int = 131_072
    #: Server transactions open at once (across all peers); beyond it new requests get 503. A UDP
    #: non-INVITE transaction lives 32 s after its answer (Timer J = 64*T1), so this caps the sustained
    #: request rate at about N / 32 per second: 65,536 allows ~2,000 requests/s (1,000 authenticated
    #: REGISTERs/s, each a 401 and a retry); the old 10,000 refused traffic above ~150 registrations/s.
    max_server_transactions: int = 65_536


DEFAULT_LIMITS = Limits()
