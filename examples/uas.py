"""A small user agent server built only on sipcore's public API.

It answers every INVITE (180 Ringing, then 200 OK with an SDP answer), BYE and OPTIONS, and counts calls.
Run it: ``python examples/uas.py --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from durchwahl.sipcore import Endpoint, IncomingRequest

log = logging.getLogger("example-uas")


def sdp_answer(host: str) -> bytes:
    """A minimal audio answer (PCMU + telephone-event); this example sends no media."""
    return (
        "v=0\r\n"
        f"o=durchwahl 1 1 IN IP4 {host}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=sendrecv\r\n"
    ).encode()


class ExampleUas:
    """Answers calls; keeps the set of confirmed dialogs so BYE for an unknown call gets 481."""

    def __init__(self, ring_seconds: float = 0.0) -> None:
        self.ring_seconds = ring_seconds
        self.dialogs: set[tuple[str, str]] = set()
        self.answered = 0
        self.ended = 0

    async def handle(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method == "INVITE":
            await self.on_invite(incoming)
        elif request.method == "BYE":
            key = (request.call_id, request.to.tag or "")
            if key in self.dialogs:
                self.dialogs.discard(key)
                self.ended += 1
                incoming.respond(200)
            else:
                incoming.respond(481)
        elif request.method == "OPTIONS":
            incoming.respond(200, headers=[("Allow", incoming.endpoint.core.allow_header)])
        else:
            incoming.respond(200)

    async def on_invite(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.to.tag is not None:  # re-INVITE: accept the session as it is
            incoming.respond(
                200, body=sdp_answer(incoming.flow.local[0]), headers=self._answer_headers(incoming)
            )
            return
        incoming.respond(180)
        if self.ring_seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(incoming.cancelled.wait(), self.ring_seconds)
            if incoming.cancelled.is_set():
                return
        incoming.respond(200, body=sdp_answer(incoming.flow.local[0]), headers=self._answer_headers(incoming))
        self.dialogs.add((request.call_id, incoming.to_tag))
        self.answered += 1
        try:
            await incoming.ack
        except Exception as exc:
            log.info("call %s: %s", request.call_id, exc)

    @staticmethod
    def _answer_headers(incoming: IncomingRequest) -> list[tuple[str, str]]:
        contact = incoming.endpoint.contact_uri(incoming.flow)
        return [("Contact", f"<{contact}>"), ("Content-Type", "application/sdp")]


async def serve(listen: list[str], stop: asyncio.Event | None = None) -> None:
    uas = ExampleUas()
    async with Endpoint(uas.handle) as endpoint:
        for spec in listen:
            host, port = await endpoint.listen(spec)
            print(f"listening on {spec.split(':', 1)[0]} {host}:{port}", flush=True)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"answered {uas.answered} calls, {uas.ended} ended", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", action="append", help="udp:HOST:PORT or tcp:HOST:PORT (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(serve(args.listen or ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]))


if __name__ == "__main__":
    main()
