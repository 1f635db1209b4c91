"""Extension processing: a trunk's call to one of the office's numbers is answered, the number's greeting
plays, and an extension dialled while it plays — RFC 4733 events, in-band tones or SIP INFO, merged so a key
press counts once — decides where the call goes (:class:`~routing.collector.DigitCollector`); when that
extension cannot be reached (nobody registered, no answer, busy), the call goes on to the number's default
destination.

:func:`extension_processing` answers the caller with an SDP answer of our own (media anchored on a port of
``[server] rtp_ports``; an offerless INVITE gets our offer and its answer comes in the ACK), plays the
greeting, and returns the dialled extension's route and the number's default destination (:class:`Collected`).
:class:`ExtensionCollection` feeds the collector from the caller's RTP session, SIP INFO, the greeting's end
and the collector's own timer (one ``call_later`` handle).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import attrs

from durchwahl.media.dtmf_info import parse_info_body
from durchwahl.media.dtmf_merge import KeyPressed
from durchwahl.media.errors import MediaError
from durchwahl.media.greeting import Greeting, GreetingError
from durchwahl.media.session import PortsExhausted, RtpSession
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.session import Confirmed, DialogRequestReceived, SessionError, Terminated
from durchwahl.sipcore.ua import CallEvent, IncomingCall

from ..collector import CollectorResult, DigitCollector, ExtensionDialled
from ..directory import ExtensionRef, Number
from ..events import DigitPressed
from ..resolver import Refused, Route
from .anchor import caller_event
from .describe import describe_collected
from .leg import CallState
from .media_anchor import AnchoredMedia
from .services import CallServices

__all__ = ["Collected", "ExtensionCollection", "extension_processing"]

log = logging.getLogger(__name__)


@attrs.frozen
class Collected:
    """What the greeting decided: the route of the extension dialled during it (None: none, or no such
    extension) and the number's default destination — where the call goes when ``chosen`` is None or cannot
    be reached."""

    chosen: Route | None
    default: Route


async def extension_processing(services: CallServices, call: CallState, number: Number) -> Collected | None:
    """Answer, play the greeting, collect an extension (None: the call is over meanwhile)."""
    a = call.a
    assert isinstance(a, IncomingCall)  # a trunk called in
    ports, address = services.media_ports(a.flow)
    media = call.media = AnchoredMedia(ports, services.media_clock, address)
    offerless = not a.request.body
    try:
        body = await (
            media.offer_caller(call.srtp) if offerless else media.answer_caller(a.request.body, call.srtp)
        )
    except PortsExhausted:
        log.error("call %s: no RTP port left", a.call_id)
        a.reject(503, reason="Service Unavailable (no media port)")
        return None
    except MediaError as exc:
        a.reject(488, reason=f"Not Acceptable Here ({exc})")
        return None
    try:
        a.answer(body=body, content_type="application/sdp", headers=call.timer_headers(a))
    except SessionError:
        return None  # the caller left meanwhile
    if offerless and not await _caller_answer(call, media):
        return None
    greeting: Greeting | None = None
    if number.greeting is not None:
        try:
            greeting = services.greetings.get(number.greeting)
        except GreetingError as exc:
            log.error("call %s: greeting of %s: %s", a.call_id, number.number, exc)
    playback = media.play_to_caller(greeting) if greeting is not None and greeting.frames else None
    directory = services.directory
    extensions = [e.extension for e in directory.employees] + [g.extension for g in directory.groups]
    assert media.a is not None
    call_id = call.call_id
    collection = ExtensionCollection(
        DigitCollector(extensions),
        media.a,
        playback,
        on_digit=lambda pressed: services.emit(DigitPressed(call_id, pressed.digit, pressed.source.value)),
    )
    getter: asyncio.Future[CallEvent] | None = None
    try:
        while not collection.result.done():
            getter = asyncio.ensure_future(call.queue.get())
            await asyncio.wait((getter, collection.result), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                continue
            _, event = getter.result()
            getter = None
            if isinstance(event, Terminated):
                return None
            if isinstance(event, DialogRequestReceived) and event.request.method == "INFO":
                _info_digit(call, collection, event.request)
            else:
                caller_event(call, event)
    finally:
        if getter is not None:
            getter.cancel()
        collection.close()
    media.stop_playing()
    result = collection.result.result()
    log.info("call %s to %s: %s", a.call_id, number.number, describe_collected(result))
    call.record.digits = result.extension if isinstance(result, ExtensionDialled) else result.digits
    if number.music is not None:
        try:
            call.music = services.greetings.get(number.music)
        except GreetingError as exc:
            log.error("call %s: music of %s: %s (ringback instead)", a.call_id, number.number, exc)
    default = services.resolver.resolve_destination(number.default, trunk=number.trunk)
    if isinstance(result, ExtensionDialled):
        route = services.resolver.resolve_destination(ExtensionRef(result.extension))
        if not isinstance(route, Refused):
            return Collected(route, default)
    return Collected(None, default)


async def _caller_answer(call: CallState, media: AnchoredMedia) -> bool:
    """Wait for the ACK bringing the answer to our 2xx's offer (offerless INVITE); false: call over."""
    while True:
        _, event = await call.queue.get()
        if isinstance(event, Terminated):
            return False
        if isinstance(event, Confirmed):
            try:
                media.caller_answered(event.ack.body)
            except MediaError as exc:
                log.info("call %s: no usable answer in the ACK: %s", call.call_id, exc)
                call.a.bye()
                return False
            return True
        caller_event(call, event)


def _info_digit(call: CallState, collection: ExtensionCollection, request: Request) -> None:
    try:
        received = parse_info_body(request.get("content-type") or "", request.body)
    except MediaError:
        call.a.respond(request, 415 if request.body else 200)
        return
    call.a.respond(request, 200)
    collection.info_digit(received.digit)


class ExtensionCollection:
    """Runs ``collector`` while ``playback`` (the greeting) plays; ``None`` playback: no greeting at all.

    Digits come from ``session.on_digit`` (which it takes over) and :meth:`info_digit`.
    """

    def __init__(
        self,
        collector: DigitCollector,
        session: RtpSession,
        playback: asyncio.Future[None] | None,
        on_digit: Callable[[KeyPressed], None] | None = None,
    ) -> None:
        self.collector = collector
        self.on_digit = on_digit
        self.session = session
        self._loop = asyncio.get_running_loop()
        self.result: asyncio.Future[CollectorResult] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._playback = playback
        session.on_digit = self._on_digit
        if playback is None:
            self._settle(collector.greeting_ended(self._loop.time()))
        else:
            playback.add_done_callback(self._greeting_ended)

    def info_digit(self, digit: str) -> None:
        """A digit that came as SIP INFO on the caller's dialog (merged with the media's)."""
        self.session.handle_info_digit(digit, self._loop.time())

    def _on_digit(self, pressed: KeyPressed) -> None:
        if not self.result.done():
            log.debug("digit %s (%s)", pressed.digit, pressed.source.value)
            if self.on_digit is not None:
                self.on_digit(pressed)
            self._settle(self.collector.digit(pressed.digit, self._loop.time()))

    def _greeting_ended(self, _: asyncio.Future[None]) -> None:
        if not self.result.done():
            self._settle(self.collector.greeting_ended(self._loop.time()))

    def _on_timer(self) -> None:
        self._timer = None
        self._settle(self.collector.handle_timer(self._loop.time()))

    def _settle(self, result: CollectorResult | None) -> None:
        if result is not None:
            if not self.result.done():
                self.result.set_result(result)
            self.close()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.collector.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def close(self) -> None:
        """Stop listening (the session's digits are no longer taken); the greeting is the caller's to stop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.session.on_digit == self._on_digit:
            self.session.on_digit = None
        if self._playback is not None:
            self._playback.remove_done_callback(self._greeting_ended)
