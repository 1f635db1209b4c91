"""The calls in progress as an administrator sees them (``durchwahl status``): frozen summaries."""

from __future__ import annotations

import enum

import attrs

from durchwahl.sipcore.ua import Call

from .leg import CallState, Ringing

__all__ = ["ActiveCall", "CallPhase", "summarize"]


class CallPhase(enum.Enum):
    """Where a call in progress is (:class:`ActiveCall`)."""

    SETTING_UP = "setting up"  #: routed, nothing rings yet (media being set up, a trunk's challenge …)
    GREETING = "greeting"  #: answered by us: the number's greeting plays, digits are collected
    RINGING = "ringing"  #: the destination's devices (or the called number) ring
    CONNECTED = "connected"  #: answered: the parties talk


@attrs.frozen
class ActiveCall:
    """A call in progress. The fields mean what they mean in a :class:`~routing.cdr.CallRecord`; times are
    wall-clock seconds."""

    call_id: str
    caller: str
    dialled: str
    phase: CallPhase
    started_at: float
    source_trunk: str | None = None
    destination_kind: str | None = None
    destination_id: str | None = None
    answered_by: str | None = None
    answered_at: float | None = None
    caller_name: str | None = None


def summarize(first: Call, call: CallState | Ringing) -> ActiveCall:
    """``call`` (``first``: its caller's leg, or a click-to-call's first leg) as an :class:`ActiveCall`."""
    record = call.record
    if isinstance(call, Ringing):  # a click-to-call: the employee's devices ring first
        return ActiveCall(
            call_id=first.call_id or "",
            caller=record.caller,
            dialled=record.dialled,
            phase=CallPhase.RINGING,
            started_at=record.started_at,
            destination_kind="employee",
            destination_id=record.caller,
        )
    kind, ident = record.destination if record.destination is not None else (None, None)
    if record.answered_at is not None:
        phase = CallPhase.CONNECTED
    elif kind == "number":
        phase = CallPhase.GREETING
    elif call.legs:
        phase = CallPhase.RINGING
    else:
        phase = CallPhase.SETTING_UP
    return ActiveCall(
        call_id=call.call_id,
        caller=record.caller,
        dialled=record.dialled,
        phase=phase,
        started_at=record.started_at,
        source_trunk=record.source_trunk,
        destination_kind=kind,
        destination_id=ident,
        answered_by=record.answered_by,
        answered_at=record.answered_at,
        caller_name=record.caller_name,
    )
