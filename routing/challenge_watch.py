"""Phones that give up after a digest challenge, noticed so the log can say so.

A phone that cannot answer any challenge in a 401 (baresip 1.0 gives up as soon as one of them is SHA-256; a
phone without a password for the realm) sends nothing more: it shows "registration failed" while the server,
which only sent an ordinary 401, has nothing to log. :class:`ChallengeWatch` remembers each (source address,
user) that was challenged and forgets it when credentials come from there for that user; one still waiting
after ``answer_within`` seconds has given up. Pure: time is an argument, the registrar drives it and logs.

Bounded: at most ``max_tracked`` waiting challenges (the oldest is forgotten first) and as many remembered
reports; a (source, user) reported once is not reported again for ``quiet_for`` seconds, so a phone retrying
every minute, or a scanner trying every extension, does not fill the log.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

__all__ = ["ChallengeWatch", "Unanswered"]


@attrs.frozen
class Unanswered:
    """A challenge nobody answered: to ``user`` (the REGISTER's To user) at ``source`` (IP address), sent
    along ``flow`` (``UDP 192.0.2.7:5062``) to a client calling itself ``user_agent``, offering
    ``algorithms``."""

    source: str
    user: str
    flow: str
    user_agent: str | None
    algorithms: tuple[str, ...]
    challenged_at: float


class ChallengeWatch:
    """See the module docstring."""

    def __init__(
        self, *, answer_within: float = 10.0, quiet_for: float = 3600.0, max_tracked: int = 1024
    ) -> None:
        if answer_within <= 0 or max_tracked < 1:
            raise ValueError("answer_within must be positive and max_tracked at least 1")
        self.answer_within = answer_within
        self.quiet_for = quiet_for
        self.max_tracked = max_tracked
        # Oldest first: every entry waits the same time, so the first one is always the next due.
        self._waiting: OrderedDict[tuple[str, str], Unanswered] = OrderedDict()
        self._reported: OrderedDict[tuple[str, str], float] = OrderedDict()

    def challenged(self, challenge: Unanswered) -> None:
        """A challenge went out; a second one before the first was answered changes nothing (it still
        waits from the first)."""
        key = (challenge.source, challenge.user)
        if key in self._waiting:
            return
        self._waiting[key] = challenge
        while len(self._waiting) > self.max_tracked:
            self._waiting.popitem(last=False)

    def answered(self, source: str, user: str) -> None:
        """Credentials came from ``source`` for ``user`` (right or wrong: the phone did not give up)."""
        self._waiting.pop((source, user), None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def next_due(self) -> float | None:
        """When the oldest waiting challenge counts as given up (None: none waits)."""
        first = next(iter(self._waiting.values()), None)
        return None if first is None else first.challenged_at + self.answer_within

    def due(self, now: float) -> list[Unanswered]:
        """The challenges given up by ``now`` that are to be reported (each forgotten here)."""
        found = []
        while self._waiting:
            key, challenge = next(iter(self._waiting.items()))
            if challenge.challenged_at + self.answer_within > now:
                break
            del self._waiting[key]
            last = self._reported.get(key)
            if last is not None and now - last < self.quiet_for:
                continue
            self._reported[key] = now
            self._reported.move_to_end(key)
            while len(self._reported) > self.max_tracked:
                self._reported.popitem(last=False)
            found.append(challenge)
        return found
