"""The sipcore exception hierarchy: every error says what is wrong, where, and how to answer it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import Request, Response

__all__ = ["SipError", "SipParseError", "TransactionError"]


class SipError(Exception):
    """Base class of every error raised by sipcore."""


class SipParseError(SipError, ValueError):
    """Bytes or text that are not valid SIP.

    ``status`` is the response a UAS should answer with (400, 505, 416 …) when the request can still be
    answered; ``partial`` is the message as far as it could be parsed (``None`` when not even the start line
    and the headers needed to answer could be read).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        reason: str | None = None,
        partial: Request | Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message
        self.partial = partial

    def __reduce__(self) -> tuple[object, ...]:
        return (SipParseError, (str(self),))


class TransactionError(SipError):
    """A transaction or dialog was used against the rules of RFC 3261 (a bug in the caller)."""
