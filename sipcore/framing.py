"""Split a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3), with CRLF keep-alives.

Pure: ``feed`` takes bytes and returns what became complete. RFC 5626 §4.4.1 keep-alives are reported as
``KeepAlivePing`` (a double CRLF, to be answered with a single CRLF) and ``KeepAlivePong`` (a single CRLF).
A request too large to take (its header section or its Content-Length over the limits) fails with status
513 and, when its start line and Via, From, To, Call-ID and CSeq could be read, those headers, so the
connection can answer it before closing.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from .errors import SipParseError
from .limits import DEFAULT_LIMITS, Limits
from .message import salvage_request_headers

__all__ = ["FramedMessage", "KeepAlivePing", "KeepAlivePong", "StreamEvent", "StreamFramer"]

_CONTENT_LENGTH_RE: Final = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


@attrs.frozen
class FramedMessage:
    """The bytes of exactly one message (header section, empty line, body)."""

    data: bytes


@attrs.frozen
class KeepAlivePing:
    """A double CRLF between messages: the peer wants a single CRLF back."""


@attrs.frozen
class KeepAlivePong:
    """A single CRLF between messages: the answer to our ping."""


StreamEvent = FramedMessage | KeepAlivePing | KeepAlivePong


class StreamFramer:
    """Accumulates stream bytes and cuts them into messages; a framing error is fatal for the connection."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """Octets held waiting for the rest of a message."""
        return len(self._buffer)

    @property
    def in_message(self) -> bool:
        """True while part of a message is buffered (not merely CR/LF that may yet become a keep-alive)."""
        buf = self._buffer
        return bool(buf) and buf[0] not in b"\r\n"

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Add ``data``; return every message and keep-alive that is now complete.

        Raises ``SipParseError`` when the stream cannot be framed (no or bad Content-Length, a message over
        the size limit); the connection must then be closed, as the stream position is lost. Messages
        completed before the error are returned first and the error is raised by the next call, so what is
        delivered does not depend on how the stream was cut into segments.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        events: list[StreamEvent] = []
        try:
            while self._buffer:
                event = self._next()
                if event is None:
                    break
                events.append(event)
        except SipParseError as exc:
            self._error = exc
            if not events:
                raise
        return events

    @property
    def failed(self) -> bool:
        """True once the stream could not be framed; the connection should be closed."""
        return self._error is not None

    @property
    def error(self) -> SipParseError | None:
        """Why the stream could not be framed (None while it can)."""
        return self._error

    def _next(self) -> StreamEvent | None:
        buf = self._buffer
        while buf and buf[0] in b"\r\n":
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                return KeepAlivePing()
            if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return None  # wait: could be a ping or a pong followed by a message
            if buf[:2] == b"\r\n":
                del buf[:2]
                return KeepAlivePong()
            del buf[:1]  # a stray CR or LF between messages: skip it
        if not buf:
            return None
        end = buf.find(b"\r\n\r\n")
        limits = self._limits
        if end < 0:
            if len(buf) > limits.max_header_bytes:
                raise SipParseError(
                    f"no end of headers within {limits.max_header_bytes} bytes",
                    status=513,
                    request_headers=salvage_request_headers(bytes(buf[: limits.max_header_bytes]), limits),
                )
            return None
        lengths = {m.group(1).strip() for m in _CONTENT_LENGTH_RE.finditer(buf, 0, end + 2)}
        if not lengths:
            raise SipParseError("stream message without Content-Length")
        if len(lengths) > 1:
            raise SipParseError("conflicting Content-Length headers")
        (text,) = lengths
        if not text.isdigit():
            raise SipParseError(f"bad Content-Length {text[:20]!r}")
        length = int(text)
        total = end + 4 + length
        if total > limits.max_message_bytes:
            raise SipParseError(
                f"message of {total} bytes exceeds {limits.max_message_bytes}",
                status=513,
                request_headers=salvage_request_headers(bytes(buf[: end + 4]), limits),
            )
        if len(buf) < total:
            if len(buf) > limits.max_stream_buffer:
                raise SipParseError("stream buffer limit exceeded")
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return FramedMessage(message)
