"""Calls through a trunk: the Request-URI and identity of the leg, the answer a caller hears when it fails,
and the post-dial digits sent once the client has answered.

Post-dial digits go to the client's leg as RFC 4733 events if it negotiated telephone-event, else as in-band
tones; each lasts :data:`DIGIT_MS`, :data:`DIGIT_GAP_MS` of silence follow, ``,`` pauses :data:`PAUSE_MS`.
Each digit is announced (:class:`~routing.events.DigitSent`) when its tone or event is over.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Final

from durchwahl.media.errors import MediaError
from durchwahl.media.relay import MediaBridge, Side
from durchwahl.sipcore.transport import Flow
from durchwahl.sipcore.ua import UserAgent
from durchwahl.sipcore.uri import NameAddr, SipUri

from ..directory import Directory, Trunk
from ..events import DigitSent
from .leg import CallState
from .services import CallServices

__all__ = [
    "DIGIT_GAP_MS",
    "DIGIT_MS",
    "PAUSE_MS",
    "external_failure",
    "send_post_dial",
    "trunk_credentials",
    "trunk_flow",
    "trunk_identity",
    "trunk_uri",
]

log = logging.getLogger(__name__)

DIGIT_MS: Final = 100
DIGIT_GAP_MS: Final = 100
PAUSE_MS: Final = 1000


def external_failure(statuses: Iterable[int]) -> int:
    """What the caller hears when the client's leg failed with ``statuses`` (none: no answer in time).

    The provider's status is passed on, except a challenge the trunk's credentials did not satisfy (503:
    the caller's phone must not try its own credentials) and a redirection (not followed: 480)."""
    status = next(iter(statuses), None)
    if status is None:
        return 480
    if status in (401, 407):
        return 503
    if status < 400:
        return 480
    return status


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def trunk_uri(trunk: Trunk, e164: str) -> SipUri:
    """The Request-URI of a call to ``e164`` through ``trunk``: ``sip:<e164>@<host>:<port>``."""
    return SipUri("sip", e164, None, _host(trunk.host), trunk.port)


def trunk_identity(trunk: Trunk, directory: Directory) -> NameAddr:
    """The office's identity on ``trunk`` (the From of calls out): the trunk account's AOR (the one it
    registers), else the first of the office's numbers on that trunk at the trunk's host, else the
    office's domain."""
    if trunk.username is not None:
        return NameAddr(None, SipUri("sip", trunk.username, None, _host(trunk.host)))
    number = next((n.number for n in directory.numbers if n.trunk == trunk.name), None)
    if number is not None:
        return NameAddr(None, SipUri("sip", number, None, _host(trunk.host)))
    return NameAddr(None, SipUri("sip", "durchwahl", None, directory.server.domain))


def trunk_credentials(trunk: Trunk) -> tuple[str, str] | None:
    """The trunk account's (username, password) for answering the provider's 401/407, if configured."""
    if trunk.username is not None and trunk.password is not None:
        return trunk.username, trunk.password
    return None


async def trunk_flow(ua: UserAgent, trunk: Trunk) -> Flow:
    """A flow to the trunk's host (resolved if it is a name; over TLS its certificate must be valid for that
    name). Raises ``OSError`` when it does not resolve."""
    try:
        address = str(ipaddress.ip_address(trunk.host.strip("[]")))
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(trunk.host, trunk.port, type=socket.SOCK_DGRAM)
        address = str(infos[0][4][0])
    return ua.endpoint.flow_to(address, trunk.port, trunk.transport, server_name=trunk.host.strip("[]"))


def send_post_dial(services: CallServices, call: CallState, digits: str, side: Side = Side.B) -> None:
    """Send ``digits`` to the client's leg (``side``) of the call's bridge (see the module docstring)."""
    bridge = call.media.bridge if call.media is not None else None
    if bridge is None:
        return
    call_id = call.call_id

    def sent(side: Side) -> None:
        log.info("call %s: post-dial digits %s sent", call_id, digits)

    bridge.on_digits_sent = sent
    method = "rfc4733" if bridge.relay.media(side).telephone_event_pt is not None else "inband"
    try:
        start = services.media_clock.now()
        bridge.send_digits(side, digits, duration_ms=DIGIT_MS, gap_ms=DIGIT_GAP_MS, pause_ms=PAUSE_MS)
    except MediaError as exc:
        log.warning("call %s: cannot send post-dial digits %s: %s", call_id, digits, exc)
        return
    loop, offset = asyncio.get_running_loop(), 0.0
    for digit in digits:
        if digit == ",":
            offset += PAUSE_MS / 1000
            continue
        offset += DIGIT_MS / 1000
        loop.call_at(start + offset, _digit_sent, services, call, bridge, DigitSent(call_id, digit, method))
        offset += DIGIT_GAP_MS / 1000


def _digit_sent(services: CallServices, call: CallState, bridge: MediaBridge, fact: DigitSent) -> None:
    if call.media is not None and call.media.bridge is bridge:  # the call is still on that bridge
        services.emit(fact)
