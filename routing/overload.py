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
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

from durchwahl.sipcore import Endpoint, Flow
from durchwahl.sipcore.headers import Header
from durchwahl.sipcore.message import Request, Response, make_response, salvage_request_headers

from .admission import (
    LATE_FACTOR,
    AdmissionConfig,
    AdmissionControl,
    AdmissionStats,
    Kind,
    Load,
    Reason,
    Refusal,
    kind_of,
)

__all__ = ["Overload"]

log = logging.getLogger(__name__)

#: How often the event loop's lag is probed (seconds).
PROBE_SECONDS: Final = 0.05
#: An admitted INVITE whose handler has not started after this long is no longer counted (seconds).
PENDING_SECONDS: Final = 5.0
#: After a new call was refused, new INVITEs are decided from their raw headers for this long (seconds).
RAW_SECONDS: Final = 1.0
#: The To tags of our stateless 503s start with this: the ACKs they draw are dropped before parsing.
TAG_PREFIX: Final = "dw-ov-"
_ACK_MARK: Final = b";tag=" + TAG_PREFIX.encode()
#: The node's health answer says "overloaded" for this long after a new call was refused for measured load
#: (seconds): an edge then sends calls elsewhere; a limit in force that refuses nothing is no reason to.
HEALTH_SECONDS: Final = 2.0
#: While requests are refused, one log line sums them up this often (seconds).
LOG_SECONDS: Final = 10.0


class Overload:
    """Admission control for one endpoint (see the module docstring).

    ``emergency`` says whether an INVITE calls an emergency number; ``maybe_emergency`` says cheaply whether
    a Request-URI as written may (it then goes to the parser and ``emergency``).

    While new calls are limited, :meth:`prescreen` (the endpoint's hook before parsing) refuses new INVITEs
    from their raw headers, and drops the ACKs of our 503s unparsed: refusing costs a fraction of parsing.
    The calls in progress are counted here: an INVITE admitted is
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
        maybe_emergency: Callable[[str], bool],
    ) -> None:
        self.endpoint = endpoint
        self.control = AdmissionControl(config)
        #: Calls whose handler runs; INVITEs admitted whose handler has not started yet (key: when).
        self.running_calls = 0
        self._pending: dict[tuple[str, int], float] = {}
        self._emergency = emergency
        self._maybe_emergency = maybe_emergency
        self._tag_key = secrets.token_bytes(16)
        #: The (Call-ID, CSeq number) of an INVITE the prescreen admitted: the screen then admits it as is.
        self._preadmitted: tuple[str, int] | None = None
        self._raw_until = float("-inf")
        #: When a new call was last refused for measured load (queue delay, open transactions).
        self._shed_call_at = float("-inf")
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

    def health(self) -> str | None:
        """The node's health answer (``Server.add_health_check``): ``"overloaded"`` for ``HEALTH_SECONDS``
        after a new call was refused for measured load, ``"at max_calls"`` at that cap; None otherwise. An
        edge probing with OPTIONS then sends new calls to other nodes until this one has caught up; a short
        stall that refused nothing does not take the node out (an edge marks it inactive on one 503)."""
        if self.endpoint.now - self._shed_call_at < HEALTH_SECONDS:
            return "overloaded"
        cap = self.control.config.max_calls
        if cap is not None and self.calls >= cap:
            return "at max_calls"
        return None

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

    def _stateless_tag(self, call_id: str, from_value: str, cseq_value: str) -> str:
        """The To tag of a stateless 503: the same for a retransmission (RFC 3261 §8.2.7), unguessable."""
        material = f"{call_id}\x00{from_value}\x00{cseq_value}".encode("utf-8", "surrogateescape")
        return TAG_PREFIX + hashlib.blake2b(material, key=self._tag_key, digest_size=6).hexdigest()

    def prescreen(self, data: bytes, flow: Flow) -> bytes | bool:
        """Before parsing (``Endpoint.prescreen``): while new calls are limited or refused (for a second
        after a refusal), or when this datagram waited too long, a new INVITE is decided from its raw headers
        and refused with a 503 built from them; the ACK of one of our 503s is dropped. Everything else goes
        on (True) to the parser and :meth:`screen`."""
        self._preadmitted = None
        if data.startswith(b"ACK "):
            return _ACK_MARK not in data
        if not data.startswith(b"INVITE "):
            return True
        control = self.control
        target = control.config.overload_delay
        delay = self.endpoint.queue_delay(flow)
        now = self.endpoint.now
        if (
            control.call_limit is None
            and now >= self._raw_until
            and (target is None or delay is None or delay <= LATE_FACTOR * target)
        ):
            return True
        headers = salvage_request_headers(data, self.endpoint.limits)
        if headers is None:
            return True  # the parser answers what is wrong with it
        values = {h.name: h.value for h in reversed(headers)}  # the first of each name
        to, call_id, cseq = values["To"], values["Call-ID"], values["CSeq"]
        seq_text = cseq.split(None, 1)[0] if cseq else ""
        if ";tag=" in to.replace(" ", "") or not seq_text.isdigit():
            return True  # in a dialog, or odd: the parser and the screen decide
        seq = int(seq_text)
        uri = data[7 : data.find(b" ", 7)].decode("utf-8", "surrogateescape")
        if self.endpoint.handling_invite(call_id, seq) or self._maybe_emergency(uri):
            return True  # a retransmission of an admitted INVITE, or perhaps a call for help
        self._forget_stale(now)
        load = self.load(flow)
        refusal = control.decide(Kind.CALL, now, load)
        if refusal is None:
            self._preadmitted = (call_id, seq)
            return True
        self._raw_until = now + RAW_SECONDS
        self._shed(now, refusal)
        self._note(now, load)
        tag = self._stateless_tag(call_id, values["From"], cseq)
        answer = [h if h.name != "To" else Header("To", f"{h.value};tag={tag}") for h in headers]
        return bytes(Response(503, refusal.phrase, (*answer, *_retry_after(refusal))))

    def screen(self, request: Request, flow: Flow) -> Response | None:
        """None to admit the new out-of-dialog ``request``, else the 503 to send for it."""
        kind = kind_of(request.method)
        now = self.endpoint.now
        if kind is Kind.CALL:
            preadmitted, self._preadmitted = self._preadmitted, None
            if preadmitted is not None and preadmitted == (request.call_id, request.cseq.seq):
                self._pending[preadmitted] = now
                return None
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
        if kind is Kind.CALL:
            self._raw_until = now + RAW_SECONDS
            self._shed(now, refusal)
        self._note(now, load)
        tag = self._stateless_tag(request.call_id, request.get("from") or "", request.get("cseq") or "")
        return make_response(request, 503, refusal.phrase, to_tag=tag, headers=_retry_after(refusal))

    def _shed(self, now: float, refusal: Refusal) -> None:
        """A new call was refused: remembered for the health answer when measured load refused it."""
        if refusal.reason in (Reason.DELAY, Reason.TRANSACTIONS):
            self._shed_call_at = now

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
            "call_limit_cps": None if (limit := self.control.call_limit) is None else round(limit, 1),
            "event_loop_lag_ms": round(1000 * self.lag, 1),
            "max_event_loop_lag_ms": round(1000 * self.max_lag, 1),
            "max_queue_delay_ms": round(1000 * stats.max_delay, 1),
            "datagrams_dropped": self.endpoint.datagrams_dropped,
        }


def _retry_after(refusal: Refusal) -> tuple[Header, ...]:
    return (Header("Retry-After", str(refusal.retry_after)),)
