"""Call events the server announces on its pyee emitter (``Server.events``), with typed payloads.

The B2BUA reports facts as they happen; the server maps each class to its event name. ``call_ended`` carries
the call's ``routing.cdr.CallRecord`` (written to the CDR store at the same moment).
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = [
    "EVENT_NAMES",
    "CallAnswered",
    "CallFact",
    "CallRinging",
    "CallStarted",
    "CallTransferred",
    "DigitPressed",
    "DigitSent",
]


@attrs.frozen
class CallStarted:
    """A call was accepted for routing: who calls (extension or From URI), what was dialled; ``caller_name``:
    the CRM contact whose number calls (a trunk's caller), if any."""

    call_id: str
    caller: str
    dialled: str
    source_trunk: str | None = None
    caller_name: str | None = None


@attrs.frozen
class CallRinging:
    """A destination rings (the caller hears ringback)."""

    call_id: str


@attrs.frozen
class CallAnswered:
    """A destination answered and the legs are connected."""

    call_id: str


@attrs.frozen
class DigitPressed:
    """A key press during the greeting, counted once however it came (``rfc4733``, ``inband``, ``info``)."""

    call_id: str
    digit: str
    source: str


@attrs.frozen
class CallTransferred:
    """A transfer (REFER) of the call is over: ``transferor`` (an employee's extension) sent ``target`` (the
    Refer-To as dialled), routed to ``destination_kind``/``destination_id`` (as in the CDR). ``status`` is
    200 when the target answered and took the transferor's place, else why it failed (486, 480 …; the call
    stayed as it was). ``attended``: the Refer-To replaced another call of the transferor's (RFC 5589 §7);
    ``target`` is then the party of that call (an extension, else its number), who took the transferor's
    place without being rung again."""

    call_id: str
    transferor: str
    target: str
    destination_kind: str | None
    destination_id: str | None
    status: int
    attended: bool = False

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 300


@attrs.frozen
class DigitSent:
    """A post-dial digit went to the called client (flow 5), as ``rfc4733`` events or ``inband`` tones;
    announced when its packets are due to have left (``,`` pauses are not digits and are not announced)."""

    call_id: str
    digit: str
    method: str


CallFact = CallStarted | CallRinging | CallAnswered | DigitPressed | DigitSent | CallTransferred

EVENT_NAMES: Final[dict[type, str]] = {
    CallStarted: "call_started",
    CallRinging: "ringing",
    CallAnswered: "answered",
    DigitPressed: "digit",
    DigitSent: "digit_sent",
    CallTransferred: "transferred",
}
