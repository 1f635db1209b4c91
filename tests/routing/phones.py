"""Simulated phones for end-to-end tests: the ones ``durchwahl demo`` uses (see :mod:`routing.demo`).

Each :class:`Phone` is its own ``Endpoint`` and ``UserAgent`` on 127.0.0.1 (port 0). It REGISTERs with digest,
dials with credentials, and answers incoming INVITEs as its :class:`Script` says: answer (after ringing a
while), reject (486, 603 …), or ring forever. Every incoming call is put on ``phone.calls``.
"""

from __future__ import annotations

from durchwahl.routing.demo import FAST, Phone, Script, sdp

__all__ = ["FAST", "Phone", "Script", "sdp"]
