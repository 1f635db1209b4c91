"""Calls to CRM contacts end to end on the call-flow harness: an employee dials a CRM number; the call goes
out through the trunk to a simulated provider (which challenges with 407 once), media is anchored, and the
post-dial digits reach the provider's RTP socket after the answer — as RFC 4733 events, or as tones when its
SDP lacks telephone-event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import harness
import pytest
from harness import RtpSink, ended, event_of, failure, network, rtp_socket
from phones import FAST, Phone, sdp

from durchwahl.media.dtmf_inband import InbandDetector
from durchwahl.media.dtmf_rfc4733 import DTMF_EVENTS, parse_telephone_event
from durchwahl.media.g711 import ulaw_decode
from durchwahl.media.rtp import RtpPacket
from durchwahl.media.sdp import parse_sdp
from durchwahl.media.session import PortAllocator
from durchwahl.routing.calls.outbound import external_failure, trunk_identity, trunk_uri
from durchwahl.routing.cdr import Disposition, InMemoryCdrStore
from durchwahl.routing.directory import Directory
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.events import DigitSent
from durchwahl.routing.resolver import Resolver, ResolverConfig
from durchwahl.sipcore import Endpoint, IncomingRequest
from durchwahl.sipcore.auth import Authenticated, DigestSecret, DigestServer
from durchwahl.sipcore.endpoint import TransportFactory
from durchwahl.sipcore.session import Confirmed, ProvisionalReceived, TerminationReason
from durchwahl.sipcore.transport import TransportSet
from durchwahl.sipcore.ua import CallFailed, IncomingCall, UserAgent

SECRET = b"0123456789abcdef0123456789abcdef"
TRUNK_USER, TRUNK_PASSWORD = "office-account", "trunk-secret"

CLIENT = "+49891234567"
CRM_WITH_EXTENSION = "+49891234567;105"
CRM_WITH_PAUSE = "+49891234567;1,05"

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:5060"]
state_dir = "var"
rtp_ports = "32000-32999"

[[employee]]
extension = "101"
name = "Anna"
password = "anna-secret"

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = {port}
username = "{user}"
password = "{password}"

[[number]]
number = "+49 30 1111111"
trunk = "provider"
default = "101"

[[crm]]
name = "Kunde GmbH, Durchwahl 105"
number = "+49 89 1234567;105"

[[crm]]
name = "Kunde GmbH, Zentrale mit Pause"
number = "+49 89 1234567;1,05"
"""


def provider_sdp(port: int, *, telephone_event: bool) -> bytes:
    formats = "0 101" if telephone_event else "0"
    events = "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n" if telephone_event else ""
    return (
        "v=0\r\no=provider 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {formats}\r\na=rtpmap:0 PCMU/8000\r\n{events}"
    ).encode()


class TrunkProvider:
    """The provider's side of the trunk: challenges each new INVITE once with 407, then answers it (or
    rejects it with ``reject``) with SDP pointing at its RTP socket."""

    def __init__(self, transports: TransportFactory = TransportSet) -> None:
        self.endpoint = Endpoint(timers=FAST, user_agent="provider", transports=transports)
        self.ua = UserAgent(self.endpoint, self._handle)
        self.digest = DigestServer("provider.example", secret=SECRET, algorithms=("MD5",))
        self.invites: list[IncomingRequest] = []
        self.calls: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.telephone_event = True
        self.reject: int | None = None
        #: Send a 183 with SDP first (early media: an announcement) and reject only after ``early`` seconds.
        self.early: float | None = None
        self.rtp: RtpSink | None = None
        self.port = 0

    async def start(self) -> TrunkProvider:
        _, self.port = await self.endpoint.listen("udp:127.0.0.1:0")
        self.rtp = await rtp_socket()
        return self

    def _secret(self, user: str) -> DigestSecret | None:
        return DigestSecret(password=TRUNK_PASSWORD) if user == TRUNK_USER else None

    def _handle(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method != "INVITE":
            incoming.respond(405)
            return
        self.invites.append(incoming)
        now = time.time()
        if not isinstance(self.digest.verify(request, self._secret, now, proxy=True), Authenticated):
            incoming.send(self.digest.challenge_response(request, now, proxy=True))
            return
        call = self.ua.accept(incoming)
        self.calls.put_nowait(call)
        assert self.rtp is not None
        if self.early is not None:
            call.ring(
                183, body=provider_sdp(self.rtp.port, telephone_event=False), content_type="application/sdp"
            )
            asyncio.get_running_loop().call_later(self.early, call.reject, self.reject or 404)
            return
        call.ring(180)
        if self.reject is not None:
            call.reject(self.reject)
            return
        call.answer(body=provider_sdp(self.rtp.port, telephone_event=self.telephone_event))

    async def next_call(self, timeout: float = 3.0) -> IncomingCall:
        async with asyncio.timeout(timeout):
            return await self.calls.get()

    async def close(self) -> None:
        self.ua.close()
        await self.endpoint.close()
        if self.rtp is not None and self.rtp.transport is not None:
            self.rtp.transport.close()


class Office(harness.Office):
    """The harness's office with its trunk's provider and a CDR store."""

    provider: TrunkProvider
    cdr: InMemoryCdrStore

    async def anna(self) -> tuple[Phone, RtpSink]:
        phone = await self.phone("101")
        sink = await self.sink()
        phone.sdp = sdp("phone-101", sink.port)
        return phone, sink


pytestmark = pytest.mark.virtual_time  # the harness: a memory network and a virtual clock


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Office]:
    provider = await TrunkProvider(network().transports).start()
    text = OFFICE.format(port=provider.port, user=TRUNK_USER, password=TRUNK_PASSWORD)
    (tmp_path / "office.toml").write_text(text, encoding="utf-8")
    directory = load_directory(tmp_path / "office.toml")
    cdr = InMemoryCdrStore()
    async with Office.open(
        directory,
        resolver=Resolver(directory, ResolverConfig(default_scope="crm")),
        ring_seconds=2.0,
        dial_out_seconds=3.0,
        ports=PortAllocator(*directory.server.rtp_ports),
        cdr=cdr,
    ) as result:
        result.provider, result.cdr = result.add(provider), cdr
        yield result


def events_in(packets: list[RtpPacket]) -> str:
    """The digits of the RFC 4733 events among ``packets`` (one per event, in order of their timestamps)."""
    starts: dict[int, int] = {}
    for packet in packets:
        if packet.payload_type == 101:
            starts.setdefault(packet.timestamp, parse_telephone_event(packet.payload).event)
    return "".join(DTMF_EVENTS[starts[ts]] for ts in sorted(starts))


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_crm_call_goes_out_through_the_trunk_and_sends_rfc4733_digits_after_the_answer(
    office: Office,
) -> None:
    anna, _ = await office.anna()
    provider = office.provider
    assert provider.rtp is not None
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    identity = ("P-Preferred-Identity", "<sip:101@office.example>")
    call = anna.dial(CRM_WITH_EXTENSION, headers=(identity, ("X-Crm-Ticket", "4711")))
    client = await provider.next_call()

    # The office's private identity stays inside (RFC 3325); other headers pass, Max-Forwards counts down.
    assert client.request.get("p-preferred-identity") is None and client.request.get("x-crm-ticket") == "4711"
    assert client.request.max_forwards == 69

    # Challenged once with 407, then the same call again with the trunk's credentials.
    first, second = provider.invites
    assert first.request.call_id == second.request.call_id
    assert second.request.cseq.seq == first.request.cseq.seq + 1
    assert TRUNK_USER in (second.request.get("proxy-authorization") or "")
    invite = client.request
    assert str(invite.uri) == f"sip:{CLIENT}@127.0.0.1:{provider.port}"
    assert invite.from_.uri.user == TRUNK_USER  # type: ignore[union-attr]
    assert invite.call_id != (call.invite.call_id if call.invite else None)

    # Media is anchored: the provider is offered the office's port, not the phone's.
    assert b"127.0.0.1" in invite.body and anna.sdp.split(b"m=audio ")[1][:5] not in invite.body

    async with asyncio.timeout(3):
        answer = await call.wait_answered()
    assert b"m=audio" in answer.body and answer.body != provider_sdp(provider.rtp.port, telephone_event=True)
    await event_of(client, Confirmed)  # our ACK: only now the digits start
    rtp = provider.rtp

    def ended_events() -> set[int]:
        return {
            p.timestamp for p in rtp.packets if p.payload_type == 101 and parse_telephone_event(p.payload).end
        }

    await wait_until(lambda: len(ended_events()) == 3)  # every digit has its end packets
    assert events_in(rtp.packets) == "105"
    await wait_until(lambda: len([f for f in facts if isinstance(f, DigitSent)]) == 3)
    assert [(f.digit, f.method) for f in facts if isinstance(f, DigitSent)] == [
        ("1", "rfc4733"),
        ("0", "rfc4733"),
        ("5", "rfc4733"),
    ]
    events = [p for p in rtp.packets if p.payload_type == 101]
    assert sum(p.marker for p in events) == 3  # one start per digit

    client.bye()  # the client hangs up
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    (record,) = office.cdr.records
    assert record.disposition is Disposition.ANSWERED
    assert (record.caller, record.dialled) == ("101", CRM_WITH_EXTENSION)
    assert (record.destination_kind, record.destination_id, record.answered_by) == (
        "external",
        CLIENT,
        CLIENT,
    )


async def test_client_without_telephone_event_gets_in_band_tones_with_the_pause(office: Office) -> None:
    anna, _ = await office.anna()
    provider = office.provider
    provider.telephone_event = False
    assert provider.rtp is not None
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    call = anna.dial(CRM_WITH_PAUSE)
    client = await provider.next_call()
    await event_of(client, Confirmed)

    detector = InbandDetector()
    found: list[tuple[str, int]] = []
    seen: set[int] = set()

    def decoded() -> str:
        for packet in sorted(provider.rtp.packets, key=lambda p: p.sequence_number):  # type: ignore[union-attr]
            if packet.payload_type == 0 and packet.sequence_number not in seen:
                seen.add(packet.sequence_number)
                found.extend((d.digit, d.start) for d in detector.feed(ulaw_decode(packet.payload)))
        return "".join(digit for digit, _ in found)

    await wait_until(lambda: len(decoded()) >= 3, timeout=6.0)
    assert decoded() == "105"
    assert not any(p.payload_type == 101 for p in provider.rtp.packets)
    (_, one), (_, zero), (_, five) = found
    assert (zero - one) / 8000 == pytest.approx(0.2 + 1.0, abs=0.05)  # tone, gap, and the 1 s pause
    assert (five - zero) / 8000 == pytest.approx(0.2, abs=0.05)
    await wait_until(lambda: len([f for f in facts if isinstance(f, DigitSent)]) == 3)
    assert "".join(f.digit for f in facts if isinstance(f, DigitSent) and f.method == "inband") == "105"

    call.bye()  # the employee hangs up: the client's leg ends too
    assert (await ended(client)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_the_providers_early_media_reaches_the_employee_before_the_failure(office: Office) -> None:
    """An announcement in early media (183 with SDP, then 404): the phone gets a 183 with the office's SDP
    and hears the announcement through the relay, then the failure."""
    anna, sink = await office.anna()
    provider = office.provider
    assert provider.rtp is not None
    provider.early = 1.0
    call = anna.dial(CLIENT)
    client = await provider.next_call()
    early = await event_of(call, ProvisionalReceived)
    assert isinstance(early, ProvisionalReceived) and early.response.status == 183
    description = parse_sdp(early.response.body)
    assert description.media[0].port != provider.rtp.port  # anchored: the office's port, not the provider's
    office_port = parse_sdp(client.request.body).media[0].port
    for seq in range(5):  # the announcement, sent to the port the office offered the provider
        provider.rtp.send(RtpPacket(0, seq, seq * 160, 0xA11CE, b"\xff" * 160), ("127.0.0.1", office_port))
    relayed = await sink.wait_for(lambda p: p.payload == b"\xff" * 160)
    assert relayed.payload_type == 0
    failed = await failure(call)
    assert failed.status == 404


async def test_client_busy_is_486_for_the_employee(office: Office) -> None:
    anna, _ = await office.anna()
    office.provider.reject = 486
    call = anna.dial(CRM_WITH_EXTENSION)
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await call.wait_answered()
    assert failed.value.status == 486
    await office.idle()
    (record,) = office.cdr.records
    assert (record.disposition, record.status) == (Disposition.BUSY, 486)


async def test_numbers_outside_the_crm_are_refused_for_a_crm_scope(office: Office) -> None:
    anna, _ = await office.anna()
    call = anna.dial("+49897654321")
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await call.wait_answered()
    assert failed.value.status == 403
    assert not office.provider.invites


def test_trunk_uri_identity_and_failure_mapping(tmp_path: Path) -> None:
    (tmp_path / "office.toml").write_text(
        OFFICE.format(port=5070, user=TRUNK_USER, password=TRUNK_PASSWORD), encoding="utf-8"
    )
    directory: Directory = load_directory(tmp_path / "office.toml")
    (trunk,) = directory.trunks
    assert str(trunk_uri(trunk, CLIENT)) == f"sip:{CLIENT}@127.0.0.1:5070"
    assert str(trunk_identity(trunk, directory)) == f"<sip:{TRUNK_USER}@127.0.0.1>"
    anonymous = type(trunk)(name="p", host="sip.example.net")
    assert str(trunk_identity(anonymous, directory)) == "<sip:durchwahl@office.example>"
    assert [external_failure(s) for s in ((), (486,), (407,), (302,), (503,), (404,))] == [
        480,
        486,
        503,
        480,
        503,
        404,
    ]
