"""TCP connection bookkeeping without I/O: which connections may open, and when each must be closed.

A stream transport holds one descriptor per connection, and a process has a fixed number of descriptors
(``RLIMIT_NOFILE``, often 1,024) shared with its RTP sockets, stores and logs. :class:`ConnectionTable` keeps
TCP from taking them all:

* **Admission**: at most ``max_per_source`` connections from one source (an IPv4 address or an IPv6 /64,
  :func:`source_of`) and ``max_total`` in all. At the global cap, the oldest connection that has not yet
  delivered a complete message is closed to make room (:class:`Admission` ``evict``); with none such, a new
  connection is refused. Connections we open ourselves are always admitted (our own traffic) and counted.
* **Deadlines** (the rule of ``tcp_connection_lifetime`` in Kamailio and OpenSIPS, with OpenSIPS' registrar
  ``tcp_persistent_flag`` and its ``tcp_max_msg_time``):

  - a connection opened to us must deliver its first complete message within ``message_seconds``
    (keep-alive CRLFs do not count);
  - once a message's first byte has arrived, the message must be complete within ``message_seconds`` (a
    body shorter than its Content-Length would otherwise hold the stream, and the next request, for ever);
  - a connection that has carried a message is closed after ``idle_seconds`` in which nothing arrived
    (RFC 5626 keep-alives count), unless it is held (:meth:`ConnectionTable.hold`: a registration binding
    uses it, until it expires) or the ``keep`` callback of :meth:`ConnectionTable.handle_timer` says it is in
    use (a call's dialog runs over it).

Time is an argument (``now``); the shell arms one timer at :meth:`ConnectionTable.get_timer` and calls
:meth:`ConnectionTable.handle_timer`, which returns the connections to close, already forgotten here.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
from collections.abc import Callable
from typing import Final

import attrs

__all__ = [
    "RESERVED_DESCRIPTORS",
    "Admission",
    "CloseReason",
    "ConnectionTable",
    "LogThrottle",
    "Refusal",
    "connection_caps",
    "source_of",
]

#: Descriptors left to the process itself when the TCP cap is derived from the descriptor limit: standard
#: streams, the event loop, listeners, the SQLite stores with their journals, the control socket, log
#: files, greeting files being read.
RESERVED_DESCRIPTORS: Final = 128
#: The derived TCP cap never exceeds this (each connection may buffer up to ``max_stream_buffer`` bytes).
MAX_DERIVED_CONNECTIONS: Final = 16_384
#: The derived cap never goes below this (a tiny descriptor limit still lets some phones in).
MIN_DERIVED_CONNECTIONS: Final = 16


def connection_caps(
    nofile: int | None, max_total: int | None = None, max_per_source: int | None = None
) -> tuple[int, int]:
    """The caps ``(total, per source)``: the configured values, or derived from the descriptor limit.

    Derived: half of what ``nofile`` leaves after :data:`RESERVED_DESCRIPTORS` (the other half stays free
    for RTP sockets, one per anchored call leg), between 16 and 16,384; per source, half the total, so one
    source never takes every slot. ``nofile`` None (no limit known) gives the upper bound.
    """
    if max_total is None:
        if nofile is None or nofile < 0:
            max_total = MAX_DERIVED_CONNECTIONS
        else:
            spare = (nofile - RESERVED_DESCRIPTORS) // 2
            max_total = min(MAX_DERIVED_CONNECTIONS, max(MIN_DERIVED_CONNECTIONS, spare))
    if max_per_source is None:
        max_per_source = max(1, max_total // 2)
    return max_total, max_per_source


def source_of(host: str) -> str:
    """Whom a connection counts against: the IPv4 address, or the /64 of an IPv6 address (one subscriber
    line usually gets a whole /64); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Refusal(enum.Enum):
    """Why a new connection was refused."""

    SOURCE = "its source already has the most connections allowed per source"
    TOTAL = "the most connections allowed in all are open"


class CloseReason(enum.Enum):
    """Why a connection was closed by the table's rules."""

    NO_MESSAGE = "no complete message within the message time after it opened"
    INCOMPLETE = "a message was not completed within the message time"
    IDLE = "nothing arrived within the idle time"
    EVICTED = "made room for a new connection (this one had sent no complete message)"


@attrs.frozen
class Admission:
    """The answer to a new connection: admitted (closing ``evict`` first, when set) or refused."""

    refused: Refusal | None = None
    evict: int | None = None

    @property
    def admitted(self) -> bool:
        return self.refused is None


ADMITTED: Final = Admission()


@attrs.define(slots=True)
class _Entry:
    source: str
    inbound: bool
    opened: float
    #: Has delivered a complete message (or is ours: we opened it).
    proven: bool
    #: When the first byte of a message not yet complete arrived; None between messages.
    started: float | None
    #: When bytes last arrived (or the connection opened).
    last: float
    #: Not closed for idleness before this moment (a registration uses it).
    held_until: float
    #: The deadline of this entry's live heap item (earlier items are pushed, later ones found on pop).
    scheduled: float


class ConnectionTable:
    """The open TCP connections of an endpoint, by connection id: admission and closing deadlines."""

    def __init__(
        self,
        *,
        max_total: int,
        max_per_source: int,
        message_seconds: float = 10.0,
        idle_seconds: float = 120.0,
    ) -> None:
        if max_total < 1 or max_per_source < 1:
            raise ValueError("connection caps must be at least 1")
        if message_seconds <= 0 or idle_seconds < 0:
            raise ValueError("message_seconds must be positive and idle_seconds 0 (never) or positive")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.message_seconds = message_seconds
        self.idle_seconds = idle_seconds if idle_seconds > 0 else math.inf
        self._entries: dict[int, _Entry] = {}
        self._per_source: dict[str, int] = {}
        #: Inbound connections that have not delivered a complete message, oldest first.
        self._unproven: dict[int, None] = {}
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._entries

    def from_source(self, host: str) -> int:
        """How many inbound connections count against ``host``'s source."""
        return self._per_source.get(source_of(host), 0)

    # ----------------------------------------------------------------------------------- admission

    def admit(self, connection_id: int, host: str, now: float, *, inbound: bool = True) -> Admission:
        """Decide on a new connection from (inbound) or to ``host``; one admitted is tracked from ``now``."""
        source = source_of(host)
        evict: int | None = None
        if inbound:
            if self._per_source.get(source, 0) >= self.max_per_source:
                return Admission(Refusal.SOURCE)
            if len(self._entries) >= self.max_total:
                if not self._unproven:
                    return Admission(Refusal.TOTAL)
                evict = next(iter(self._unproven))
                self.remove(evict)
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self._unproven[connection_id] = None
        entry = _Entry(source, inbound, now, not inbound, None, now, -math.inf, math.inf)
        self._entries[connection_id] = entry
        self._schedule(connection_id, entry)
        return ADMITTED if evict is None else Admission(evict=evict)

    def remove(self, connection_id: int) -> None:
        """Forget a connection (it closed); unknown ids are ignored."""
        entry = self._entries.pop(connection_id, None)
        if entry is None:
            return
        self._unproven.pop(connection_id, None)
        if entry.inbound:
            left = self._per_source[entry.source] - 1
            if left:
                self._per_source[entry.source] = left
            else:
                del self._per_source[entry.source]

    # -------------------------------------------------------------------------------------- events

    def received(self, connection_id: int, now: float, *, completed: bool, in_message: bool) -> None:
        """Bytes arrived: ``completed`` when they finished at least one message, ``in_message`` when a
        message is now partly buffered (its first byte arrived no earlier than this call)."""
        entry = self._entries.get(connection_id)
        if entry is None:
            return
        entry.last = now
        if completed:
            if not entry.proven:
                entry.proven = True
                self._unproven.pop(connection_id, None)
            entry.started = now if in_message else None
        elif not in_message:
            entry.started = None
        elif entry.started is None:
            entry.started = now
        self._schedule(connection_id, entry)

    def hold(self, connection_id: int, until: float) -> None:
        """Do not close the connection for idleness before ``until`` (a registration binding uses it until
        then); a later call replaces the moment, so a shorter registration (or 0: removed) shortens it."""
        entry = self._entries.get(connection_id)
        if entry is not None:
            entry.held_until = until
            self._schedule(connection_id, entry)

    def held_until(self, connection_id: int) -> float | None:
        entry = self._entries.get(connection_id)
        return None if entry is None or entry.held_until == -math.inf else entry.held_until

    # --------------------------------------------------------------------------------------- timer

    def _deadline(self, entry: _Entry) -> float:
        if not entry.proven:
            return entry.opened + self.message_seconds
        deadline = max(entry.last + self.idle_seconds, entry.held_until)
        if entry.started is not None:
            deadline = min(deadline, entry.started + self.message_seconds)
        return deadline

    def _schedule(self, connection_id: int, entry: _Entry) -> None:
        deadline = self._deadline(entry)
        if deadline < entry.scheduled:
            entry.scheduled = deadline
            heapq.heappush(self._heap, (deadline, connection_id))

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (None: no deadline)."""
        heap = self._heap
        while heap:
            deadline, connection_id = heap[0]
            entry = self._entries.get(connection_id)
            if entry is not None and entry.scheduled == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the connection is gone or was rescheduled
        return None

    def handle_timer(
        self, now: float, keep: Callable[[int], bool] | None = None
    ) -> list[tuple[int, CloseReason]]:
        """The connections due to close at ``now``, with the reason; they are forgotten here already.

        ``keep(connection_id)`` is asked about a connection about to close for idleness alone; True keeps it
        for another idle period (a call is using it).
        """
        due: list[tuple[int, CloseReason]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, connection_id = heapq.heappop(heap)
            entry = self._entries.get(connection_id)
            if entry is None or entry.scheduled != deadline:
                continue
            entry.scheduled = math.inf
            actual = self._deadline(entry)
            if actual > now:
                self._schedule(connection_id, entry)
                continue
            if not entry.proven:
                reason = CloseReason.NO_MESSAGE
            elif entry.started is not None and entry.started + self.message_seconds <= now:
                reason = CloseReason.INCOMPLETE
            else:
                reason = CloseReason.IDLE
                if keep is not None and keep(connection_id):
                    entry.last = now
                    self._schedule(connection_id, entry)
                    continue
            self.remove(connection_id)
            due.append((connection_id, reason))
        return due


class LogThrottle:
    """One log line per condition per ``interval`` seconds. :meth:`allow` says whether to write a line now
    (and how many occurrences were kept quiet before it); :meth:`due` gives the conditions whose quiet
    occurrences should now be summed up in one line, so a flood that stops is still reported."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def allow(self, condition: str, now: float) -> int | None:
        """None: stay quiet (counted). Otherwise log now; the number is how many were kept quiet before."""
        last = self._last.get(condition)
        if last is not None and now - last < self.interval:
            self._quiet[condition] = self._quiet.get(condition, 0) + 1
            return None
        self._last[condition] = now
        return self._quiet.pop(condition, 0)

    def next_due(self) -> float | None:
        """When the earliest summary of quiet occurrences is due (None: nothing kept quiet)."""
        if not self._quiet:
            return None
        return min(self._last[condition] + self.interval for condition in self._quiet)

    def due(self, now: float) -> list[tuple[str, int]]:
        """The conditions with occurrences kept quiet for a whole interval, and how many; each counts as
        logged at ``now``."""
        ready = [(c, n) for c, n in self._quiet.items() if now - self._last[c] >= self.interval]
        for condition, _ in ready:
            del self._quiet[condition]
            self._last[condition] = now
        return ready
