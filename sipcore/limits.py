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
    #: TCP connections open at once, ours and our peers', over all listeners of an endpoint. None: derived
    #: from the descriptor limit (RLIMIT_NOFILE) when the first TCP listener starts — half of what is left
    #: after 128 descriptors for the process itself, between 16 and 16,384 (``sipcore.connections``).
    #: At the cap the oldest connection that has sent no complete message yet is closed to make room;
    #: without one a new connection is accepted and closed at once.
    tcp_max_connections: int | None = None
    #: TCP connections one source (an IPv4 address, an IPv6 /64) may hold open; None: half the cap above.
    #: Phones behind one NAT share a source: raise it for an office with many TCP phones behind one address.
    tcp_max_connections_per_source: int | None = None
    #: A TCP connection opened to us must deliver a complete message within this many seconds, and every
    #: later message must be complete this long after its first byte; otherwise the connection is closed.
    tcp_message_seconds: float = 10.0
    #: A TCP connection on which nothing arrived for this many seconds is closed, unless a registration
    #: binding (until it expires) or a call uses it. 0: never for idleness.
    tcp_idle_seconds: float = 120.0


DEFAULT_LIMITS = Limits()
