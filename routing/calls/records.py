"""A call's CDR row, drafted as the call goes and finished once when it ends (one builder for every flow)."""

from __future__ import annotations

import attrs

from ..cdr import CallRecord, disposition_for

__all__ = ["CallDraft"]


@attrs.define
class CallDraft:
    """What the CDR will say about a call, filled in as it goes (the fields of
    :class:`~routing.cdr.CallRecord`); ``destination`` is ``(kind, id)``, ``status`` the final status of a
    call that was not answered."""

    caller: str = ""
    caller_name: str | None = None
    dialled: str = ""
    started_at: float = 0.0
    source_trunk: str | None = None
    destination: tuple[str, str] | None = None
    answered_at: float | None = None
    answered_by: str | None = None
    answered_contact: str | None = None
    digits: str = ""
    status: int | None = None
    transferred_by: str | None = None
    #: False when the call failed without any device of its destination ringing (nobody registered).
    rang: bool = True

    def finish(self, call_id: str, ended_at: float) -> CallRecord:
        """The row of the call, ended at ``ended_at``; its disposition follows from answer and status."""
        answered = self.answered_at is not None
        return CallRecord(
            call_id=call_id,
            caller=self.caller,
            source_trunk=self.source_trunk,
            dialled=self.dialled,
            destination_kind=self.destination[0] if self.destination else None,
            destination_id=self.destination[1] if self.destination else None,
            answered_by=self.answered_by,
            answered_contact=self.answered_contact,
            digits=self.digits,
            started_at=self.started_at,
            answered_at=self.answered_at,
            ended_at=ended_at,
            disposition=disposition_for(answered=answered, status=self.status, rang=self.rang),
            status=None if answered else self.status,
            transferred_by=self.transferred_by,
            caller_name=self.caller_name,
        )
