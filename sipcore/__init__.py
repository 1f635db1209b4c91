"""sipcore: a sans-I/O SIP stack (RFC 3261) with thin asyncio transports.

The protocol layers (syntax, transactions, dialogs) are pure: bytes, messages and the current time in; events
and bytes out. Only ``sipcore.transport`` and ``sipcore.endpoint`` do I/O.
"""

from typing import TYPE_CHECKING, Any

from .errors import SipError, SipParseError, TransactionError
from .framing import FramedMessage, KeepAlivePing, KeepAlivePong, StreamFramer
from .headers import Challenge, ContentType, CSeq, Header, Via
from .limits import DEFAULT_LIMITS, Limits
from .message import REASON_PHRASES, Request, Response, error_response, make_response, parse_message
from .uri import AbsoluteUri, NameAddr, SipUri, TelUri, Uri, parse_name_addr, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "AbsoluteUri",
    "CSeq",
    "Challenge",
    "ContentType",
    "Endpoint",
    "Flow",
    "FramedMessage",
    "Header",
    "IncomingRequest",
    "KeepAlivePing",
    "KeepAlivePong",
    "Limits",
    "NameAddr",
    "OutgoingRequest",
    "Request",
    "RequestTimeout",
    "Response",
    "SipError",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "TelUri",
    "TransactionError",
    "TransportError",
    "Uri",
    "Via",
    "error_response",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
]

if TYPE_CHECKING:
    from .endpoint import Endpoint, IncomingRequest, OutgoingRequest, RequestTimeout
    from .transport import Flow, TransportError

#: The asyncio shell is loaded on first use, so ``import sipcore`` (and every pure module) stays I/O-free.
_LAZY = {
    "Endpoint": "endpoint",
    "IncomingRequest": "endpoint",
    "OutgoingRequest": "endpoint",
    "RequestTimeout": "endpoint",
    "Flow": "transport",
    "TransportError": "transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
