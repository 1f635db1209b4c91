"""Media for durchwahl: RTP, SDP offer/answer, G.711, RFC 4733 telephone events.

The modules here are pure (no sockets, clocks or tasks); import the one you need, e.g. ``media.rtp``.
Only a future greeting module may import ``aiortc``/``av``.
"""

__all__: list[str] = []
