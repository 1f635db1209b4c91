"""Call events the server announces on its pyee emitter (``Server.events``), with typed payloads.

The B2BUA reports facts as they happen; the server maps each class to its event name. ``call_ended`` carries
the call's ``routing.cdr.CallRecord`` (written to the CDR store at the same moment).
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["EVENT_NAMES", "CallAnswered", "CallFact", "CallRinging", "CallStarted", "DigitPressed"]


@attrs.frozen
class CallStarted:
    """A call was accepted for routing: who calls (extension or From URI), what was dialled."""

    call_id: str
    caller: str
    dialled: str
    source_trunk: str | None = None


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


CallFact = CallStarted | CallRinging | CallAnswered | DigitPressed

EVENT_NAMES: Final[dict[type, str]] = {
    CallStarted: "call_started",
    CallRinging: "ringing",
    CallAnswered: "answered",
    DigitPressed: "digit",
}
