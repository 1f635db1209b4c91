"""sipcore: a sans-I/O SIP stack (RFC 3261) with thin asyncio transports.

The protocol layers (syntax, transactions, dialogs) are pure: bytes, messages and the current time in; events
and bytes out. Only ``sipcore.transport`` and ``sipcore.endpoint`` do I/O.
"""

from .errors import SipError, SipParseError, TransactionError
from .framing import FramedMessage, KeepAlivePing, KeepAlivePong, StreamFramer
from .headers import Challenge, ContentType, CSeq, Header, Via
from .limits import DEFAULT_LIMITS, Limits
from .message import REASON_PHRASES, Request, Response, make_response, parse_message
from .uri import AbsoluteUri, NameAddr, SipUri, TelUri, Uri, parse_name_addr, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "AbsoluteUri",
    "CSeq",
    "Challenge",
    "ContentType",
    "FramedMessage",
    "Header",
    "KeepAlivePing",
    "KeepAlivePong",
    "Limits",
    "NameAddr",
    "Request",
    "Response",
    "SipError",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "TelUri",
    "TransactionError",
    "Uri",
    "Via",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
]
