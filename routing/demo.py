"""``durchwahl demo``: a scripted office day over loopback, needing no phone.

It starts :class:`routing.server.Server` on the example office (the one inside the installed package, see
``routing.starter``; copied to a temporary folder, so its state goes there, and pointed at 127.0.0.1 port 0)
and plays the day with simulated devices built only on the public sipcore and media APIs:

1. two phones of employee 101 and one of 102 register;
2. a customer (through the simulated provider) calls the company number, hears the greeting, dials 101 as
   RFC 4733 digits; both of 101's phones ring, one answers, media is relayed both ways, the customer hangs up;
3. a customer dials an extension that does not exist and lands in the number's default, the ring group;
4. 102 calls a CRM contact whose number carries post-dial digits; the provider answers the trunk's INVITE and
   receives the digits.

Each step prints a ladder of what happened and has its own time limit; :func:`main` returns 0 only when every
step happened as scripted, else 1 with a message naming the step that failed.

The simulated devices (:class:`Phone`, :class:`Provider`, :class:`RtpSocket`) are usable by tests as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sys
import tempfile
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar, cast

from durchwahl.media.dtmf_rfc4733 import DTMF_EVENTS, TelephoneEventSender, parse_telephone_event
from durchwahl.media.errors import MediaError
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.sdp import parse_sdp
from durchwahl.sipcore import Endpoint, IncomingRequest, Response
from durchwahl.sipcore.auth import answer_challenge, choose_challenge
from durchwahl.sipcore.endpoint import TransportFactory
from durchwahl.sipcore.session import SessionState, Terminated, TerminationReason
from durchwahl.sipcore.transaction import Timers
from durchwahl.sipcore.transport import TransportSet
from durchwahl.sipcore.ua import Call, IncomingCall, OutgoingCall, UserAgent

from .calls.media_anchor import media_address
from .errors import ConfigError
from .server import Server
from .starter import GREETING, OFFICE, example_file

__all__ = [
    "FAST",
    "DemoFailed",
    "Phone",
    "Provider",
    "RtpSocket",
    "Script",
    "main",
    "run_demo",
    "sdp",
]

#: Short SIP timers for the simulated devices (loopback: nothing is lost, retransmissions are rare).
FAST = Timers(t1=0.02, t2=0.1, t4=0.1)

T = TypeVar("T")


class DemoFailed(Exception):
    """A step of the demo did not happen as scripted."""


def sdp(name: str, port: int) -> bytes:
    """A PCMU + telephone-event offer or answer for a device with its RTP on 127.0.0.1:``port``."""
    return (
        f"v=0\r\no={name} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


# ------------------------------------------------------------------------------------------ devices


@dataclass(frozen=True)
class Script:
    """What the phone does with an incoming INVITE: ``answer``, ``reject`` (with ``status``) or ``ignore``
    (ring forever), after ringing ``delay`` seconds (``ring``: send 180 first)."""

    action: str = "answer"
    delay: float = 0.0
    status: int = 486
    ring: bool = True


class Phone:
    """A simulated phone: its own ``Endpoint`` and ``UserAgent`` on 127.0.0.1 (port 0), its listener made
    by ``transports`` (a socket by default).

    It REGISTERs with digest (answering the registrar's 401 with ``sipcore.auth.answer_challenge``), dials
    with credentials, and answers incoming INVITEs as its :class:`Script` says. Every incoming call is put on
    ``phone.calls``.
    """

    _ports = itertools.count(40000, 2)

    def __init__(
        self,
        user: str,
        password: str,
        server_port: int,
        *,
        script: Script = Script(),
        domain: str = "office.example",
        transports: TransportFactory = TransportSet,
        transport: str = "udp",
    ) -> None:
        self.user = user
        #: "udp", "tcp" or "tls" (configure ``endpoint.tls`` before :meth:`start`).
        self.transport = transport
        self.password = password
        self.server_port = server_port
        self.script = script
        self.domain = domain
        self.endpoint = Endpoint(timers=FAST, user_agent=f"phone-{user}", transports=transports)
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
        await self.endpoint.listen(f"{self.transport}:127.0.0.1:0")
        self._reg_call_id = self.endpoint.new_call_id()
        response = await self.register()
        if response.status != 200:
            raise DemoFailed(f"phone {self.user}: REGISTER answered {response.status} {response.reason}")
        return self

    async def close(self) -> None:
        for handle in self._later:
            handle.cancel()
        self.ua.close()
        await self.endpoint.close()

    async def register(self, expires: int = 600) -> Response:
        flow = self.endpoint.flow_to(*self.server, self.transport)
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
            if challenge is None:
                raise DemoFailed(f"phone {self.user}: the registrar's 401 has no usable challenge")
            creds = answer_challenge(
                challenge, "REGISTER", uri, self.user, self.password, cnonce=self.endpoint.new_tag()
            )
            extra = [("Expires", str(expires)), ("Authorization", str(creds))]
        assert response is not None
        return response

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
            self.endpoint.flow_to(*self.server, self.transport),
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


class RtpSocket(asyncio.DatagramProtocol):
    """A raw RTP socket on 127.0.0.1: keeps what it receives, sends what it is given."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> RtpSocket:
        loop = asyncio.get_running_loop()
        _, sock = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(MediaError):
            self.packets.append(parse(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, packet: RtpPacket, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(packet), to)

    async def send_digits(self, digits: str, to: tuple[str, int], ssrc: int = 0x4711) -> None:
        """RFC 4733 telephone-events (payload type 101) for ``digits``, paced as a phone sends them."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for number, planned in enumerate(TelephoneEventSender().packets(digits)):
            await asyncio.sleep(max(0.0, start + planned.send_time / 8000 - loop.time()))
            packet = RtpPacket(
                101, 100 + number, 5000 + planned.timestamp, ssrc, planned.payload, planned.marker
            )
            self.send(packet, to)

    def digits(self) -> tuple[str, int]:
        """The RFC 4733 digits received (one per event, by timestamp) and how many of them have ended."""
        starts: dict[int, str] = {}
        ended: set[int] = set()
        for packet in self.packets:
            if packet.payload_type == 101:
                event = parse_telephone_event(packet.payload)
                starts.setdefault(packet.timestamp, DTMF_EVENTS[event.event])
                if event.end:
                    ended.add(packet.timestamp)
        return "".join(starts[ts] for ts in sorted(starts)), len(ended)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Provider:
    """The telephone provider's side of the trunk: calls the office's numbers (no credentials: the office
    trusts its source address) and answers the office's calls out, with SDP pointing at :attr:`rtp`. Its
    listener is made by ``transports`` (a socket by default)."""

    def __init__(
        self,
        user_agent: str = "provider",
        transport: str = "udp",
        *,
        transports: TransportFactory = TransportSet,
    ) -> None:
        self.endpoint = Endpoint(timers=FAST, user_agent=user_agent, transports=transports)
        #: "udp", "tcp" or "tls" (configure ``endpoint.tls`` before :meth:`start`).
        self.transport = transport
        self.ua = UserAgent(self.endpoint, self._handle)
        self.calls: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.rtp = RtpSocket()
        self.port = 0
        self.server_port = 0

    async def start(self) -> Provider:
        _, self.port = await self.endpoint.listen(f"{self.transport}:127.0.0.1:0")
        self.rtp = await RtpSocket.open()
        return self

    def dial(self, number: str, body: bytes, caller: str = "+4940555123") -> OutgoingCall:
        return self.ua.invite(
            f"sip:{number}@office.example",
            self.endpoint.flow_to("127.0.0.1", self.server_port, self.transport),
            from_=f'"Kunde" <sip:{caller}@provider.example>',
            to=f"<sip:{number}@office.example>",
            body=body,
        )

    def _handle(self, incoming: IncomingRequest) -> None:
        if incoming.request.method == "OPTIONS":
            self.endpoint.answer_options(incoming)
            return
        if incoming.request.method != "INVITE":
            incoming.respond(405)
            return
        call = self.ua.accept(incoming)
        self.calls.put_nowait(call)
        call.ring(180)
        call.answer(body=sdp("provider", self.rtp.port))

    async def close(self) -> None:
        self.ua.close()
        await self.endpoint.close()
        self.rtp.close()


# ------------------------------------------------------------------------------------------ the day


class Ladder:
    """Prints what happened, step by step, for someone who never saw the code."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = ""

    def title(self, step: str) -> None:
        self.step = step
        self.say("")
        self.say(step)
        self.say("-" * len(step))

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def arrow(self, source: str, target: str, what: str) -> None:
        self.say(f"  {source:<22} -> {target:<22} {what}")

    def note(self, text: str) -> None:
        self.say(f"  {'':<22}    {text}")

    async def wait(self, awaitable: Awaitable[T], what: str, timeout: float = 5.0) -> T:
        """``awaitable``'s result, or :class:`DemoFailed` naming ``what`` did not happen in time."""
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError:
            raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}") from None

    async def until(self, predicate: object, what: str, timeout: float = 5.0) -> None:
        assert callable(predicate)

        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.01)

        await self.wait(poll(), what, timeout)


def _media_address(body: bytes, whose: str) -> tuple[str, int]:
    try:
        where = media_address(parse_sdp(body))
    except MediaError as exc:
        raise DemoFailed(f"{whose} SDP is not valid: {exc}") from None
    if where is None:
        raise DemoFailed(f"{whose} SDP has no audio stream")
    return where


def _caller(leg: IncomingCall) -> str:
    """Who the phone shows as calling: the From URI's user part (or the whole URI)."""
    uri = leg.request.from_.uri
    return str(getattr(uri, "user", None) or uri)


def _drain(phones: dict[str, Phone]) -> Iterator[tuple[str, IncomingCall]]:
    for label, phone in phones.items():
        while not phone.calls.empty():
            yield label, phone.calls.get_nowait()


def _prepare(source: Path | None, folder: Path, trunk_port: int) -> Path:
    """Copy the office (``source``, or the example office inside the installed package) and its greeting
    into ``folder`` with the trunk pointed at the provider's port."""
    office = example_file(OFFICE) if source is None else source
    greeting = example_file(GREETING) if source is None else source.parent / GREETING
    text = office.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^(port\s*=\s*)5070\b", rf"\g<1>{trunk_port}", text)
    if count != 1:
        raise DemoFailed(f"{office}: expected one trunk with 'port = 5070' to point at the demo provider")
    (folder / GREETING).write_bytes(greeting.read_bytes())
    target = folder / OFFICE
    target.write_text(text, encoding="utf-8")
    return target


async def run_demo(out: TextIO, source: Path | None = None, timeout: float = 30.0) -> None:
    """Play the office day within ``timeout`` seconds, printing its ladder to ``out``; raises
    :class:`DemoFailed` naming the step that did not happen as scripted."""
    ladder = Ladder(out)
    provider = await Provider().start()
    phones: dict[str, Phone] = {}
    sockets: list[RtpSocket] = []
    try:
        with tempfile.TemporaryDirectory(prefix="durchwahl-demo-") as folder:
            config = _prepare(source, Path(folder), provider.port)
            async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
                _, host, port = server.addresses[0]
                provider.server_port = port
                name = source.name if source is not None else f"{OFFICE} (installed with durchwahl)"
                ladder.say(f"durchwahl demo: the example office {name}, server on udp {host}:{port}")
                ladder.say(f"  state in {folder}; the provider's trunk is udp 127.0.0.1:{provider.port}")
                try:
                    async with asyncio.timeout(timeout):
                        await _play(ladder, server, provider, phones, sockets)
                except DemoFailed as exc:
                    raise DemoFailed(f"{ladder.step}: {exc}") from None
                except TimeoutError:
                    raise DemoFailed(f"{ladder.step}: the demo did not finish within {timeout:g} s") from None
                except Exception as exc:  # a device or the server broke: still name the step
                    raise DemoFailed(f"{ladder.step}: {type(exc).__name__}: {exc}") from exc
                finally:
                    for phone in phones.values():
                        await phone.close()
    finally:
        await provider.close()
        for sock in sockets:
            sock.close()


async def _play(
    ladder: Ladder, server: Server, provider: Provider, phones: dict[str, Phone], sockets: list[RtpSocket]
) -> None:
    directory = server.directory
    port = provider.server_port

    async def socket() -> RtpSocket:
        sock = await RtpSocket.open()
        sockets.append(sock)
        return sock

    async def idle() -> None:
        await ladder.until(lambda: not server.b2bua.active, "the server to finish the call")

    # ------------------------------------------------------------------------------------------ 1
    ladder.title("Step 1: the phones register")
    devices = (("101 desk phone", "101", "answer"), ("101 mobile", "101", "ignore"), ("102 phone", "102", ""))
    for label, extension, action in devices:
        employee = next(e for e in directory.employees if e.extension == extension)
        phone = Phone(
            employee.sip_user,
            employee.password or "",
            port,
            script=Script(action or "answer"),
            domain=directory.server.domain,
        )
        phones[label] = phone
        rtp = await socket()
        phone.sdp = sdp(label.replace(" ", "-"), rtp.port)
        await ladder.wait(phone.start(), f"{label} ({employee.name}) to register")
        ladder.arrow(
            label,
            "durchwahl",
            f"REGISTER {employee.name}, user {employee.sip_user!r}: 401 -> digest -> 200 OK",
        )
    rtp_of = {label: sockets[n] for n, label in enumerate(phones)}
    ladder.note("(in this script the 101 mobile rings but is never picked up)")

    # ------------------------------------------------------------------------------------------ 2
    ladder.title("Step 2: a customer calls the company number and dials 101")
    number = next((n for n in directory.numbers if n.extension_processing), None)
    if number is None:
        raise DemoFailed("the office has no number with extension processing")
    customer = "customer +4940555123"
    customer_rtp = await socket()
    call = provider.dial(number.number, sdp("customer", customer_rtp.port), caller=customer.split()[1])
    ladder.arrow(customer, "durchwahl", f"INVITE {number.number} (the company number)")
    answer = await ladder.wait(call.wait_answered(), "durchwahl to answer the company number")
    office_a = _media_address(answer.body, "durchwahl's answer")
    ladder.arrow("durchwahl", customer, f"200 OK, media from {office_a[0]}:{office_a[1]}")
    await ladder.until(
        lambda: sum(p.payload_type == 0 for p in customer_rtp.packets) >= 25,
        "greeting audio (25 RTP packets)",
    )
    heard = sum(p.payload_type == 0 for p in customer_rtp.packets)
    ladder.arrow("durchwahl", customer, f"greeting plays: {heard} RTP audio packets so far")
    ladder.arrow(customer, "durchwahl", "dials 1 0 1 during the greeting (RFC 4733 events)")
    await customer_rtp.send_digits("101", office_a)
    desk, mobile = phones["101 desk phone"], phones["101 mobile"]
    at_desk = await ladder.wait(desk.calls.get(), "the 101 desk phone to ring")
    at_mobile = await ladder.wait(mobile.calls.get(), "the 101 mobile to ring")
    ladder.arrow("durchwahl", "101 desk phone", f"INVITE from {_caller(at_desk)} (rings)")
    ladder.arrow("durchwahl", "101 mobile", f"INVITE from {_caller(at_mobile)} (rings)")
    if not phones["102 phone"].calls.empty():
        raise DemoFailed("the 102 phone rang although the customer dialled 101")
    await ladder.wait(call_confirmed(at_desk), "the 101 desk phone's answer to be confirmed")
    ladder.arrow("101 desk phone", "durchwahl", "200 OK: answered")
    cancelled = await ladder.wait(at_mobile.wait_ended(), "the 101 mobile to stop ringing")
    if cancelled.reason is not TerminationReason.CANCELLED:
        raise DemoFailed(f"the 101 mobile's call ended {cancelled.reason.value}, not cancelled")
    ladder.arrow("durchwahl", "101 mobile", "CANCEL: answered elsewhere")

    office_b = _media_address(at_desk.request.body, "durchwahl's offer to the desk phone")
    desk_rtp = rtp_of["101 desk phone"]
    sent = 25
    from_customer, from_desk = b"\x11" * 160, b"\x22" * 160
    for sequence in range(sent):
        customer_rtp.send(RtpPacket(0, sequence, sequence * 160, 0xC0FFEE, from_customer), office_a)
        desk_rtp.send(RtpPacket(0, sequence, sequence * 160, 0xDE5C, from_desk), office_b)
        await asyncio.sleep(0.02)

    def relayed() -> tuple[int, int]:
        forward = sum(p.payload == from_customer for p in desk_rtp.packets)
        back = sum(p.payload == from_desk for p in customer_rtp.packets)
        return forward, back

    await ladder.until(lambda: min(relayed()) >= sent * 0.8, "RTP to be relayed both ways", timeout=2.0)
    forward, back = relayed()
    ladder.arrow(customer, "101 desk phone", f"audio relayed by durchwahl: {forward}/{sent} packets")
    ladder.arrow("101 desk phone", customer, f"audio relayed by durchwahl: {back}/{sent} packets")
    call.bye()
    ladder.arrow(customer, "durchwahl", "BYE: hangs up")
    ended = await ladder.wait(at_desk.wait_ended(), "the 101 desk phone to be hung up")
    if ended.reason is not TerminationReason.REMOTE_BYE:
        raise DemoFailed(f"the 101 desk phone's call ended {ended.reason.value}, not by a BYE")
    ladder.arrow("durchwahl", "101 desk phone", "BYE: call over")
    await idle()

    # ------------------------------------------------------------------------------------------ 3
    ladder.title("Step 3: a customer dials an extension that does not exist (9)")
    customer = "customer +4922155566"
    customer_rtp = await socket()
    call = provider.dial(number.number, sdp("customer", customer_rtp.port), caller=customer.split()[1])
    ladder.arrow(customer, "durchwahl", f"INVITE {number.number}")
    answer = await ladder.wait(call.wait_answered(), "durchwahl to answer the company number")
    office_a = _media_address(answer.body, "durchwahl's answer")
    await ladder.until(lambda: any(p.payload_type == 0 for p in customer_rtp.packets), "the greeting")
    ladder.arrow("durchwahl", customer, "200 OK, greeting plays")
    ladder.arrow(customer, "durchwahl", "dials 9 (RFC 4733): no such extension")
    await customer_rtp.send_digits("9", office_a)
    group = next((g for g in directory.groups if g.extension == str(number.default)), None)
    if group is None:
        raise DemoFailed(f"the number's default {str(number.default)!r} is not a ring group")
    ladder.note(
        f"-> the number's default: ring group {group.extension} {group.name!r} ({group.strategy.value})"
    )
    rang: list[tuple[str, IncomingCall]] = []

    def someone_answered() -> bool:
        rang.extend(_drain(phones))
        return any(leg.state is SessionState.CONFIRMED for _, leg in rang)

    await ladder.until(someone_answered, f"a member of group {group.extension} to answer")
    members = {e.extension for e in directory.employees if e.extension in group.members}
    for label, leg in rang:
        if label.split()[0] not in members:
            raise DemoFailed(f"the {label} rang but is not a member of group {group.extension}")
        ladder.arrow("durchwahl", label, f"INVITE from {_caller(leg)} (rings: group {group.extension})")
    winner, leg = next((label, leg) for label, leg in rang if leg.state is SessionState.CONFIRMED)
    ladder.arrow(winner, "durchwahl", "200 OK: answered")
    for label, other in rang:
        if other is not leg:
            await ladder.wait(other.wait_ended(), f"the {label} to stop ringing")
            ladder.arrow("durchwahl", label, "CANCEL: answered elsewhere")
    call.bye()
    ladder.arrow(customer, "durchwahl", "BYE: hangs up")
    await ladder.wait(leg.wait_ended(), f"the {winner} to be hung up")
    ladder.arrow("durchwahl", winner, "BYE: call over")
    await idle()

    # ------------------------------------------------------------------------------------------ 4
    ladder.title("Step 4: 102 calls a CRM contact whose number has post-dial digits")
    contact = next((c for c in directory.crm if c.number.post_dial), None)
    if contact is None:
        raise DemoFailed("the office has no CRM contact with post-dial digits")
    dialled, e164, post_dial = str(contact.number), contact.number.e164, contact.number.post_dial
    ladder.note(f"(the contact: {contact.name}, {e164}, then the digits {post_dial!r} after the answer)")
    bernd = phones["102 phone"]
    out_call = bernd.dial(dialled)
    ladder.arrow("102 phone", "durchwahl", f"INVITE {dialled} (digest authenticated)")
    far_end = await ladder.wait(provider.calls.get(), "the trunk's INVITE at the provider")
    ladder.arrow("durchwahl", "provider (trunk)", f"INVITE {far_end.request.uri}")
    if far_end.request.uri.user != e164:  # type: ignore[union-attr]
        raise DemoFailed(f"the provider was asked for {far_end.request.uri}, not {e164}")
    ladder.arrow("provider (trunk)", "durchwahl", "180 Ringing, 200 OK: the contact answers")
    await ladder.wait(out_call.wait_answered(), "the 102 phone's call to be answered")
    ladder.arrow("durchwahl", "102 phone", "200 OK: connected")
    await ladder.wait(call_confirmed(far_end), "durchwahl's ACK to the provider")
    want = post_dial.replace(",", "")
    await ladder.until(
        lambda: provider.rtp.digits()[1] >= len(want), f"the post-dial digits {want!r} at the provider"
    )
    digits, _ = provider.rtp.digits()
    if digits != want:
        raise DemoFailed(f"the provider received the digits {digits!r}, not {want!r}")
    ladder.arrow("durchwahl", "provider (trunk)", f"post-dial digits {' '.join(digits)} (RFC 4733 events)")
    out_call.bye()
    ladder.arrow("102 phone", "durchwahl", "BYE: hangs up")
    ended = await ladder.wait(far_end.wait_ended(), "the provider's leg to end")
    if ended.reason is not TerminationReason.REMOTE_BYE:
        raise DemoFailed(f"the provider's leg ended {ended.reason.value}, not by a BYE")
    ladder.arrow("durchwahl", "provider (trunk)", "BYE: call over")
    await idle()
    ladder.step = ""


async def call_confirmed(call: Call) -> None:
    """Wait until ``call`` is established (its 2xx was ACKed)."""
    while call.state is not SessionState.CONFIRMED:
        if call.terminated:
            ended: Terminated = await call.wait_ended()
            raise DemoFailed(f"the call ended ({ended.reason.value}) before it was established")
        await asyncio.sleep(0.01)


def main(out: TextIO | None = None, config: str | Path | None = None, timeout: float = 30.0) -> int:
    """Run the demo; 0 when every step happened as scripted, 1 (with the failed step named) otherwise."""
    stream = out or sys.stdout

    try:
        asyncio.run(run_demo(stream, Path(config) if config else None, timeout))
    except DemoFailed as exc:
        print(f"\nFAILED: {exc}", file=stream, flush=True)
        return 1
    except (ConfigError, OSError) as exc:
        print(f"\nFAILED: the demo office could not start: {exc}", file=stream, flush=True)
        return 1
    print("\nOK: every step happened as scripted.", file=stream, flush=True)
    return 0
