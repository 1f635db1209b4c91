"""The sipcore exception hierarchy: every error says what is wrong, where, and how to answer it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .headers import Header

__all__ = ["SipError", "SipParseError", "TransactionError"]


class SipError(Exception):
    """Base class of every error raised by sipcore."""


class SipParseError(SipError, ValueError):
    """Bytes or text that are not valid SIP.

    ``status`` is the response a UAS should answer with (400, 505, 413 …). When the bytes were a request whose
    header section could be read, ``request_headers`` holds its raw headers so the request can still be
    answered (``sipcore.message.error_response``); it is ``None`` for responses and unreadable input.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        request_headers: tuple[Header, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_headers = request_headers

    def __reduce__(self) -> tuple[object, ...]:
        return (SipParseError, (str(self),))


class TransactionError(SipError):
    """A transaction or dialog was used against the rules of RFC 3261 (a bug in the caller)."""
