"""Simulated phones for end-to-end tests, built only on sipcore's public API.

Each :class:`Phone` is its own ``Endpoint`` and ``UserAgent`` on 127.0.0.1 (port 0). It REGISTERs with digest
(answering the registrar's 401 with ``sipcore.auth.answer_challenge``), dials with credentials, and answers
incoming INVITEs as its :class:`Script` says: answer (after ringing a while), reject (486, 603 …), or ring
forever. Every incoming call is put on ``phone.calls`` so a test can follow its events.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from sipcore import Endpoint, IncomingRequest, Response
from sipcore.auth import answer_challenge, choose_challenge
from sipcore.transaction import Timers
from sipcore.ua import IncomingCall, OutgoingCall, UserAgent

FAST = Timers(t1=0.02, t2=0.1, t4=0.1)


def sdp(name: str, port: int) -> bytes:
    return (
        f"v=0\r\no={name} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


@dataclass(frozen=True)
class Script:
    """What the phone does with an incoming INVITE: ``answer``, ``reject`` (with ``status``) or ``ignore``
    (ring forever), after ringing ``delay`` seconds (``ring``: send 180 first)."""

    action: str = "answer"
    delay: float = 0.0
    status: int = 486
    ring: bool = True


class Phone:
    _ports = itertools.count(40000, 2)

    def __init__(
        self,
        user: str,
        password: str,
        server_port: int,
        *,
        script: Script = Script(),
        domain: str = "office.example",
    ) -> None:
        self.user = user
        self.password = password
        self.server_port = server_port
        self.script = script
        self.domain = domain
        self.endpoint = Endpoint(timers=FAST, user_agent=f"phone-{user}")
        self.ua = UserAgent(self.endpoint, self._handle)
        self.calls: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.invites: list[IncomingRequest] = []
        self.sdp = sdp(f"phone-{user}", next(self._ports))
        self._later: set[asyncio.TimerHandle] = set()
        self._cseq = itertools.count(1)
        self._reg_call_id = ""

    @property
    def server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server_port)

    async def start(self) -> Phone:
        await self.endpoint.listen("udp:127.0.0.1:0")
        self._reg_call_id = self.endpoint.new_call_id()
        response = await self.register()
        assert response.status == 200, response
        return self

    async def close(self) -> None:
        for handle in self._later:
            handle.cancel()
        self.ua.close()
        await self.endpoint.close()

    # -------------------------------------------------------------------------------------- REGISTER

    async def register(self, expires: int = 600) -> Response:
        flow = self.endpoint.flow_to(*self.server)
        aor = f"<sip:{self.user}@{self.domain}>"
        uri = f"sip:{self.domain}"
        extra: list[tuple[str, str]] = [("Expires", str(expires))]
        response: Response | None = None
        for _ in range(2):
            request = self.endpoint.make_request(
                "REGISTER",
                uri,
                flow,
                from_=aor,
                to=aor,
                call_id=self._reg_call_id,
                cseq=next(self._cseq),
                headers=extra,
            )
            async with asyncio.timeout(3):
                response = await self.endpoint.request(request, flow)
            if response.status != 401:
                return response
            challenge = choose_challenge(response.www_authenticate)
            assert challenge is not None
            creds = answer_challenge(
                challenge, "REGISTER", uri, self.user, self.password, cnonce=self.endpoint.new_tag()
            )
            extra = [("Expires", str(expires)), ("Authorization", str(creds))]
        assert response is not None
        return response

    # ------------------------------------------------------------------------------------------ calls

    def dial(
        self,
        target: str,
        *,
        authenticate: bool = True,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
    ) -> OutgoingCall:
        """Call ``target`` (an extension or number) through the server."""
        return self.ua.invite(
            f"sip:{target}@{self.domain}",
            self.endpoint.flow_to(*self.server),
            from_=f'"Phone {self.user}" <sip:{self.user}@{self.domain}>',
            to=f"<sip:{target}@{self.domain}>",
            body=self.sdp if body is None else body,
            headers=headers,
            credentials=(self.user, self.password) if authenticate else None,
        )

    async def next_call(self, timeout: float = 3.0) -> IncomingCall:
        async with asyncio.timeout(timeout):
            return await self.calls.get()

    def _handle(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method == "OPTIONS":
            self.endpoint.answer_options(incoming)
            return
        if request.method != "INVITE":
            incoming.respond(405)
            return
        self.invites.append(incoming)
        call = self.ua.accept(incoming)
        self.calls.put_nowait(call)
        script = self.script
        if script.ring:
            call.ring()
        if script.action == "ignore":
            return
        if script.delay:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(script.delay, self._finish, call)
            self._later.add(handle)
        else:
            self._finish(call)

    def _finish(self, call: IncomingCall) -> None:
        if call.terminated or call.answered.done():
            return
        if self.script.action == "answer":
            call.answer(body=self.sdp)
        else:
            call.reject(self.script.status)
