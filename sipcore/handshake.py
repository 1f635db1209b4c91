"""The INVITE handshake outside transactions: a 2xx and its ACK (RFC 3261 §13.3.1.4, §13.2.2.4, RFC 6026).

A 2xx to an INVITE ends the INVITE server transaction's say over retransmission: the UAS core itself resends
its 2xx until the ACK comes, and the UAC core re-sends its ACK whenever the 2xx comes again. Both live here,
without I/O (the endpoint is the shell; an INVITE session that owns its dialog does the same in
:mod:`sipcore.session`):

* **UAS** (:meth:`TwoxxSender.sent_2xx`): over an unreliable transport the 2xx is sent again at T1, then at
  doubling intervals capped at T2, until :meth:`TwoxxSender.ack_received` names it; after 64*T1 without an ACK
  the handshake gives up (:class:`AckTimedOut`). Over a reliable transport nothing is resent, only the
  64*T1 wait runs.
* **UAC** (:meth:`AckCache.ack_sent`): the ACK we sent for a 2xx is kept 64*T1, keyed by Call-ID, CSeq and
  the 2xx's To tag — a forked INVITE can bring 2xx from several dialogs, and each gets its own ACK —, so a
  retransmitted 2xx gets the very same ACK again (:meth:`AckCache.ack_for`).

Time is an argument; ``get_timer`` says when to call ``handle_timer``; the sender's outputs come from
:meth:`TwoxxSender.next_event`: :class:`Retransmit2xx` (send these bytes again) and :class:`AckTimedOut`.
Both tables are bounded by what is in flight: every entry leaves within 64*T1.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from typing import Generic, TypeVar

import attrs

from .transaction import Timers

__all__ = ["AckCache", "AckTimedOut", "DialogKey", "HandshakeEvent", "Retransmit2xx", "TwoxxSender"]

#: (Call-ID, CSeq number, the 2xx's To tag): one 2xx of one INVITE, in one dialog.
DialogKey = tuple[str, int, str | None]
C = TypeVar("C")


@attrs.frozen
class Retransmit2xx(Generic[C]):
    """Send the 2xx ``data`` again, where ``context`` says (the request it answers)."""

    data: bytes
    context: C


@attrs.frozen
class AckTimedOut(Generic[C]):
    """No ACK came for the 2xx within 64*T1 (§13.3.1.4: the UAS core should end the dialog)."""

    context: C


HandshakeEvent = Retransmit2xx[C] | AckTimedOut[C]


@attrs.define
class _Pending(Generic[C]):
    data: bytes
    context: C
    reliable: bool
    interval: float
    next_at: float
    give_up_at: float


class TwoxxSender(Generic[C]):
    """The UAS half: our 2xx resent until its ACK (see the module docstring). ``C``: what the shell keeps
    with a 2xx (the request it answers)."""

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers or Timers()
        self._pending: dict[DialogKey, _Pending[C]] = {}
        #: (deadline, sequence, key): the next moment each pending 2xx needs; stale items are skipped.
        self._heap: list[tuple[float, int, DialogKey]] = []
        self._seq = itertools.count()
        self._events: deque[HandshakeEvent[C]] = deque()

    def sent_2xx(self, key: DialogKey, data: bytes, context: C, now: float, *, reliable: bool) -> None:
        """Our 2xx ``data`` to an INVITE went out: resend it (unreliable) until its ACK, give up at 64*T1."""
        t1 = self.timers.t1
        pending = _Pending(data, context, reliable, t1, now + t1, now + 64 * t1)
        self._pending[key] = pending
        self._schedule(key, pending)

    def ack_received(self, key: DialogKey) -> C | None:
        """An ACK for the 2xx ``key``: no more retransmissions; the context it was sent with, if pending."""
        pending = self._pending.pop(key, None)
        return None if pending is None else pending.context

    def waiting(self, key: DialogKey) -> bool:
        """Whether the 2xx ``key`` still waits for its ACK."""
        return key in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next needed (None: no 2xx waits)."""
        heap = self._heap
        while heap and self._stale(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Resend the 2xx that are due; give up on those 64*T1 old."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._stale(item):
                continue
            key = item[2]
            pending = self._pending[key]
            if now >= pending.give_up_at:
                del self._pending[key]
                self._events.append(AckTimedOut(pending.context))
                continue
            self._events.append(Retransmit2xx(pending.data, pending.context))
            pending.interval = min(pending.interval * 2, self.timers.t2)
            pending.next_at = now + pending.interval
            self._schedule(key, pending)

    def next_event(self) -> HandshakeEvent[C] | None:
        return self._events.popleft() if self._events else None

    @staticmethod
    def _deadline(pending: _Pending[C]) -> float:
        return pending.give_up_at if pending.reliable else min(pending.next_at, pending.give_up_at)

    def _schedule(self, key: DialogKey, pending: _Pending[C]) -> None:
        heapq.heappush(self._heap, (self._deadline(pending), next(self._seq), key))

    def _stale(self, item: tuple[float, int, DialogKey]) -> bool:
        pending = self._pending.get(item[2])
        return pending is None or self._deadline(pending) != item[0]


class AckCache(Generic[C]):
    """The UAC half: the ACKs we sent for 2xx, kept 64*T1 for the 2xx's retransmissions (see the module
    docstring). ``C``: where an ACK was sent."""

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers or Timers()
        #: Every entry lives 64*T1, so insertion order is expiry order: the oldest is always first (no scan).
        self._acks: OrderedDict[DialogKey, tuple[bytes, C, float]] = OrderedDict()

    def ack_sent(self, key: DialogKey, data: bytes, context: C, now: float) -> None:
        """We ACKed the 2xx ``key`` with ``data`` (sent as ``context`` says): keep it for 64*T1."""
        self._acks[key] = (data, context, now + 64 * self.timers.t1)
        self._acks.move_to_end(key)

    def ack_for(self, key: DialogKey) -> tuple[bytes, C] | None:
        """The ACK to send again for a retransmitted 2xx ``key`` (None: not one we ACKed lately)."""
        found = self._acks.get(key)
        return None if found is None else (found[0], found[1])

    def __len__(self) -> int:
        return len(self._acks)

    def get_timer(self) -> float | None:
        """When the oldest ACK is to be forgotten (None: none is kept)."""
        return next(iter(self._acks.values()))[2] if self._acks else None

    def handle_timer(self, now: float) -> None:
        """Forget the ACKs 64*T1 old."""
        acks = self._acks
        while acks and next(iter(acks.values()))[2] <= now:
            acks.popitem(last=False)
