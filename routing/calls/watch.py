"""When a bridged call must end though nobody hangs up: a far end that vanished, a lost BYE, a refresh that
never came. Pure: the bridge feeds it what it sees with the time, and asks when to look again and whether
the call is over.

Three rules, each off when its setting is None:

* **Maximum duration** (``[server] max_call_seconds``): the call ends that long after it was answered.
* **RTP inactivity** (``[server] rtp_timeout_seconds``, anchored calls only): a leg whose peer should send
  media — its SDP says ``sendrecv`` or ``sendonly`` — and from which no packet arrived for that long has
  vanished. A held or ``inactive`` leg (its peer declared ``recvonly``/``inactive``) is not expected to
  send and is never ended by this rule; its clock starts again when it is resumed.
* **Session timers** (RFC 4028): a leg whose session is refreshed by its peer (``refresher=uac`` on a call
  that came in) must refresh (re-INVITE or UPDATE) within the interval; the call ends at the interval less
  ``min(32, interval / 3)`` after the last refresh (§10), as the RFC asks of the side that does not refresh.
"""

from __future__ import annotations

from typing import Final

import attrs

from durchwahl.media.relay import Side

__all__ = ["CallWatch", "WatchPolicy"]

#: How often media activity is sampled at most (a fraction of the timeout, but never busier than this).
MIN_SAMPLE_SECONDS: Final = 1.0


@attrs.frozen
class WatchPolicy:
    """The limits of a bridged call (None: the rule is off)."""

    max_seconds: float | None = None
    rtp_timeout: float | None = None

    @property
    def active(self) -> bool:
        return self.max_seconds is not None or self.rtp_timeout is not None


@attrs.define
class _Media:
    received: int = -1
    since: float = 0.0
    expected: bool = True


class CallWatch:
    """The watch of one bridged call (see the module docstring); ``now`` is when it was answered."""

    def __init__(self, policy: WatchPolicy, now: float) -> None:
        self.policy = policy
        self.answered_at = now
        self._media: dict[Side, _Media] = {Side.A: _Media(since=now), Side.B: _Media(since=now)}
        #: Session timers: the side whose peer refreshes -> (the deadline of its next refresh, interval).
        self._refresh: dict[Side, tuple[float, float]] = {}

    # ----------------------------------------------------------------------------------------- input

    def media(self, side: Side, received: int, *, expected: bool, now: float) -> None:
        """The count of packets received so far from ``side``, and whether its peer should send now."""
        state = self._media[side]
        if received != state.received or expected != state.expected:
            state.received, state.since, state.expected = received, now, expected

    def refresh_expected(self, side: Side, interval: float, now: float) -> None:
        """Session timers (RFC 4028) run on ``side`` with ``interval``, its peer refreshing; a refresh was
        just seen (or the session just started)."""
        self._refresh[side] = (now + interval - min(32.0, interval / 3), interval)

    def refreshed(self, side: Side, now: float) -> None:
        """A refresh (re-INVITE or UPDATE) came from ``side``."""
        found = self._refresh.get(side)
        if found is not None:
            self.refresh_expected(side, found[1], now)

    # ---------------------------------------------------------------------------------------- output

    def next_check(self, now: float) -> float | None:
        """When :meth:`verdict` may change next (None: nothing is watched)."""
        times: list[float] = []
        if self.policy.max_seconds is not None:
            times.append(self.answered_at + self.policy.max_seconds)
        timeout = self.policy.rtp_timeout
        if timeout is not None:
            times.append(now + max(MIN_SAMPLE_SECONDS, timeout / 4))
        times.extend(deadline for deadline, _ in self._refresh.values())
        return min(times) if times else None

    def verdict(self, now: float) -> str | None:
        """Why the call must end now (for the log and the BYE's Reason), or None."""
        policy = self.policy
        if policy.max_seconds is not None and now >= self.answered_at + policy.max_seconds:
            return f"maximum call duration ({policy.max_seconds:.0f} s) reached"
        for side, (deadline, interval) in self._refresh.items():
            if now >= deadline:
                return f"no session refresh from the {_who(side)} within {interval:.0f} s (RFC 4028)"
        if policy.rtp_timeout is not None:
            for side, state in self._media.items():
                if state.expected and now - state.since >= policy.rtp_timeout:
                    return f"no RTP from the {_who(side)} for {policy.rtp_timeout:.0f} s"
        return None


def _who(side: Side) -> str:
    return "caller" if side is Side.A else "callee"
