"""Session timers (RFC 4028) as the UAS of an INVITE: what the 2xx says, or the 422 that refuses too short an
interval. Pure.

The UAS's part (§9): a ``Session-Expires`` below our ``Min-SE`` is refused with 422 and our ``Min-SE``.
When the UAC supports the extension (``Supported: timer``) and leaves the refreshing to itself (no
``refresher`` parameter, or ``refresher=uac``), the 2xx carries ``Session-Expires: N;refresher=uac`` — the
request's interval, else ours, never below either ``Min-SE`` — and ``Require: timer``; the UAC then
refreshes with re-INVITE or UPDATE, and the UAS ends the session when a refresh does not come (§10).
Otherwise (the UAC does not support timers, or asks us to refresh) the 2xx carries no ``Session-Expires``:
no session timer runs, as with a UAS without the extension.
"""

from __future__ import annotations

from typing import Final

import attrs

from .message import Request

__all__ = ["MIN_SE", "SessionTimer", "TimerPolicy", "negotiate_uas"]

#: RFC 4028 §4: no session interval may be shorter than 90 seconds.
MIN_SE: Final = 90


@attrs.frozen
class TimerPolicy:
    """Our side of the negotiation: the interval we ask for and the shortest we accept."""

    interval: int = 1800
    min_se: int = MIN_SE


@attrs.frozen
class SessionTimer:
    """An agreed session timer: its interval and who refreshes (``uac``: the peer that called us)."""

    interval: int
    refresher: str = "uac"

    def headers(self) -> tuple[tuple[str, str], ...]:
        """What a 2xx to the INVITE, and to each refresh, carries (§9: Require when the UAC refreshes)."""
        expires = ("Session-Expires", f"{self.interval};refresher={self.refresher}")
        return (expires, ("Require", "timer")) if self.refresher == "uac" else (expires,)


def _delta(value: str | None) -> tuple[int, dict[str, str]] | None:
    """``delta-seconds *(;param)`` of Session-Expires or Min-SE (None: absent or unreadable)."""
    if value is None:
        return None
    first, *params = (part.strip() for part in value.split(";"))
    if not first.isdigit() or len(first) > 10:
        return None
    found = {}
    for param in params:
        name, _, text = param.partition("=")
        found[name.strip().lower()] = text.strip().lower()
    return int(first), found


def _supports_timer(request: Request) -> bool:
    for value in (*request.get_all("supported"), *request.get_all("require")):
        if any(token.strip().lower() == "timer" for token in value.split(",")):
            return True
    return False


def negotiate_uas(request: Request, policy: TimerPolicy = TimerPolicy()) -> SessionTimer | int | None:
    """For an INVITE: the session timer its 2xx agrees to, 422 when its interval is too short (answer with
    ``Min-SE: policy.min_se``), or None: no session timer."""
    expires = _delta(request.get("session-expires"))
    if expires is not None and expires[0] < policy.min_se:
        return 422
    if not _supports_timer(request):
        return None
    refresher = expires[1].get("refresher") if expires is not None else None
    if refresher == "uas":
        return None  # we would have to refresh: no timer, as a UAS without the extension
    their_min = _delta(request.get("min-se"))
    floor = max(policy.min_se, their_min[0] if their_min is not None else 0)
    interval = expires[0] if expires is not None else policy.interval
    return SessionTimer(max(interval, floor), "uac")
