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
    #: Server transactions open at once (across all peers); beyond it new requests get 503.
    max_server_transactions: int = 10_000


DEFAULT_LIMITS = Limits()
