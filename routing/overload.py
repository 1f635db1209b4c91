"""The shell of admission control: it measures the load, asks ``routing.admission`` about each new
out-of-dialog request in the endpoint's screen, and answers a refused one statelessly with 503 and
Retry-After (RFC 3261 §21.5.4, §8.2.7) before any transaction, digest check, routing or media exists.

Measured: how long the request's datagram waited in the UDP socket's receive queue (the kernel's arrival
stamp, Linux), the event loop's lag (a timer every 50 ms notes how late it runs; the measure for TCP and
where the stamp is missing), the server transactions open and the calls in progress. Emergency calls are
admitted over every line. Counters for operators and metrics: :attr:`Overload.stats` and
:meth:`Overload.snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from sipcore import Endpoint, Flow
from sipcore.message import Request, Response, make_response

from .admission import AdmissionConfig, AdmissionControl, AdmissionStats, Kind, Load, Reason, kind_of

__all__ = ["Overload"]

log = logging.getLogger(__name__)

#: How often the event loop's lag is probed (seconds).
PROBE_SECONDS: Final = 0.05
#: An admitted INVITE whose handler has not started after this long is no longer counted (seconds).
PENDING_SECONDS: Final = 5.0
#: While requests are refused, one log line sums them up this often (seconds).
LOG_SECONDS: Final = 10.0


class Overload:
    """Admission control for one endpoint (see the module docstring).

    ``emergency`` says whether an INVITE calls an emergency number, ``tag`` gives a stateless response its
    To tag (the same for a retransmission). The calls in progress are counted here: an INVITE admitted is
    pending until its handler starts (:meth:`call_began`) and runs until the handler returns
    (:meth:`call_ended`); a pending one whose handler never starts (the UAS core refused it) is forgotten
    after ``PENDING_SECONDS``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        config: AdmissionConfig,
        *,
        emergency: Callable[[Request], bool],
        tag: Callable[[Request], str],
    ) -> None:
        self.endpoint = endpoint
        self.control = AdmissionControl(config)
        #: Calls whose handler runs; INVITEs admitted whose handler has not started yet (key: when).
        self.running_calls = 0
        self._pending: dict[tuple[str, int], float] = {}
        self._emergency = emergency
        self._tag = tag
        #: The event loop's lag at the last probe, and the largest seen (seconds).
        self.lag = 0.0
        self.max_lag = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._logged_at: float | None = None

    @property
    def stats(self) -> AdmissionStats:
        """Requests admitted and refused, by kind and reason (plain counters)."""
        return self.control.stats

    def configure(self, config: AdmissionConfig) -> None:
        """Use the caps of a reloaded directory."""
        self.control.configure(config)

    def start(self) -> None:
        """Start probing the event loop's lag."""
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + PROBE_SECONDS
        self._probe = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.lag = max(0.0, now - self._due)
        self.max_lag = max(self.max_lag, self.lag)
        self._due = now + PROBE_SECONDS
        self._probe = self._loop.call_at(self._due, self._tick)

    @property
    def calls(self) -> int:
        """Calls in progress: handlers running and INVITEs admitted for which none has started yet."""
        return self.running_calls + len(self._pending)

    def call_began(self, request: Request) -> None:
        """The handler of an admitted INVITE starts."""
        self._pending.pop((request.call_id, request.cseq.seq), None)
        self.running_calls += 1

    def call_ended(self) -> None:
        """The handler of an INVITE returned."""
        self.running_calls -= 1

    def _forget_stale(self, now: float) -> None:
        pending = self._pending
        while pending:
            key, since = next(iter(pending.items()))
            if now - since < PENDING_SECONDS:
                return
            del pending[key]

    def load(self, flow: Flow) -> Load:
        """The load as measured while the request from ``flow`` is handled."""
        endpoint = self.endpoint
        delay = endpoint.queue_delay(flow)
        lag = self.lag
        return Load(
            delay=delay if delay is not None and delay > lag else lag,
            transactions=endpoint.server_transactions,
            max_transactions=endpoint.limits.max_server_transactions,
            calls=self.calls,
        )

    def screen(self, request: Request, flow: Flow) -> Response | None:
        """None to admit the new out-of-dialog ``request``, else the 503 to send for it."""
        kind = kind_of(request.method)
        now = self.endpoint.now
        if kind is Kind.CALL:
            self._forget_stale(now)
        load = self.load(flow)
        refusal = self.control.decide(kind, now, load)
        if refusal is None:
            if kind is Kind.CALL:
                self._pending[request.call_id, request.cseq.seq] = now
            return None
        if kind is Kind.CALL and self._emergency(request):
            self.control.admit_anyway(kind, refusal)
            self._pending[request.call_id, request.cseq.seq] = now
            reason = refusal.reason.value
            log.warning("emergency call %s from %s admitted despite %s", request.call_id, flow, reason)
            return None
        self._note(now, load)
        return make_response(
            request,
            503,
            refusal.phrase,
            to_tag=self._tag(request),
            headers=[("Retry-After", str(refusal.retry_after))],
        )

    def _note(self, now: float, load: Load) -> None:
        """One warning when refusing begins and one every LOG_SECONDS while it goes on."""
        if self._logged_at is not None and now - self._logged_at < LOG_SECONDS:
            return
        refused = self.stats.refused_total()
        by = ", ".join(
            f"{n} {kind.value} ({reason.value})"
            for (kind, reason), n in sorted(self.stats.refused.items(), key=lambda item: -item[1])
        )
        log.warning(
            "overload: refusing new requests with 503 (%d so far: %s); queue delay %.0f ms, event-loop lag "
            "%.0f ms, %d calls, %d server transactions, %s datagrams dropped",
            refused,
            by,
            1000 * load.delay,
            1000 * self.lag,
            load.calls,
            load.transactions,
            self.endpoint.datagrams_dropped if self.endpoint.datagrams_dropped is not None else "unknown",
        )
        self._logged_at = now

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data (``durchwahl status``, metrics)."""
        stats = self.stats
        now = self.endpoint.now
        return {
            "admitted": {kind.value: stats.admitted[kind] for kind in Kind},
            "refused": {
                kind.value: {reason.value: n for reason in Reason if (n := stats.refused[kind, reason])}
                for kind in Kind
            },
            "admitted_over_the_line": stats.admitted_anyway,
            "refusing": [kind.value for kind in Kind if self.control.overloaded(kind, now)],
            "event_loop_lag_ms": round(1000 * self.lag, 1),
            "max_event_loop_lag_ms": round(1000 * self.max_lag, 1),
            "max_queue_delay_ms": round(1000 * stats.max_delay, 1),
            "datagrams_dropped": self.endpoint.datagrams_dropped,
        }
