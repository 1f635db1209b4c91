"""Emergency calls end to end over loopback: the server built from a directory file, an employee's phone
(digest-authenticated) whose outbound calls are restricted dials 112, and a simulated provider gets the
INVITE through the trunk — the emergency number in the Request-URI, the office's identity on the trunk in
From — answers, and the call is bridged (RTP both ways). The CDR row says it was an emergency call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import RtpSink, ended, rtp_socket
from phones import Phone, Script, sdp
from test_crm_calls import TRUNK_PASSWORD, TRUNK_USER, TrunkProvider

from durchwahl.media.rtp import RtpPacket
from durchwahl.media.sdp import parse_sdp
from durchwahl.routing.cdr import CallRecord, Disposition
from durchwahl.routing.dialstring import NumberingPlan, parse_dialstring
from durchwahl.routing.emergency import (
    EMERGENCY_NUMBER_RE,
    EMERGENCY_NUMBERS,
    UNKNOWN_COUNTRY,
    default_emergency_numbers,
    emergency_number,
)
from durchwahl.routing.resolver import ResolverConfig
from durchwahl.routing.server import Server
from durchwahl.sipcore.session import TerminationReason
from durchwahl.sipcore.ua import CallFailed

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:0"]
state_dir = "var"
rtp_ports = "33000-33999"
{server}

[[employee]]
extension = "101"
name = "Anna"
password = "anna-secret"

[[employee]]
extension = "102"
name = "Bernd"
password = "bernd-secret"

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = {port}
username = "{user}"
password = "{password}"

[[number]]
number = "{number}"
trunk = "provider"
default = "101"
"""

#: Anna may call no external number at all; Bernd may call any.
SCOPES = ResolverConfig(default_scope="none", scopes={"102": "any"})


@dataclass
class Office:
    server: Server
    provider: TrunkProvider
    records: list[CallRecord] = field(default_factory=list)
    phones: list[Phone] = field(default_factory=list)
    sinks: list[RtpSink] = field(default_factory=list)

    async def phone(self, extension: str) -> tuple[Phone, RtpSink]:
        password = {"101": "anna-secret", "102": "bernd-secret"}[extension]
        port = self.server.addresses[0][2]
        phone = await Phone(extension, password, port, script=Script("answer")).start()
        self.phones.append(phone)
        sink = await rtp_socket()
        self.sinks.append(sink)
        phone.sdp = sdp(f"phone-{extension}", sink.port)
        return phone, sink

    async def record(self) -> CallRecord:
        async with asyncio.timeout(3):
            while not self.records:
                await asyncio.sleep(0.01)
        return self.records.pop(0)


StartOffice = Callable[..., Awaitable[Office]]


@pytest.fixture
async def start_office(tmp_path: Path) -> AsyncIterator[StartOffice]:
    """Start the office with extra ``[server]`` lines (and the office number in that country)."""
    offices: list[Office] = []

    async def start(server: str = "", number: str = "+49 30 1111111") -> Office:
        provider = await TrunkProvider().start()
        text = OFFICE.format(
            server=server, port=provider.port, user=TRUNK_USER, password=TRUNK_PASSWORD, number=number
        )
        config = tmp_path / "office.toml"
        config.write_text(text, encoding="utf-8")
        office = Office(Server(config, resolver_config=SCOPES, control=False), provider)
        office.server.events.on("call_ended", office.records.append)
        offices.append(office)
        await office.server.start()
        return office

    yield start
    for office in offices:
        for phone in office.phones:
            await phone.close()
        for sink in office.sinks:
            assert sink.transport is not None
            sink.transport.close()
        await office.provider.close()
        await office.server.stop()
        await office.server.b2bua.media_clock.close()


async def bridged(phone_sink: RtpSink, provider: TrunkProvider, answer: bytes, offer: bytes) -> None:
    """RTP flows both ways through the office's relay: provider → phone and phone → provider."""
    assert provider.rtp is not None
    office_to_provider = parse_sdp(offer).media[0].port  # where the office wants the provider's RTP
    office_to_phone = parse_sdp(answer).media[0].port  # where the office wants the phone's RTP
    for seq in range(5):
        provider.rtp.send(
            RtpPacket(0, seq, seq * 160, 0xA11CE, b"\xd5" * 160), ("127.0.0.1", office_to_provider)
        )
        phone_sink.send(RtpPacket(0, seq, seq * 160, 0xB0B, b"\x55" * 160), ("127.0.0.1", office_to_phone))
    await phone_sink.wait_for(lambda p: p.payload == b"\xd5" * 160)
    await provider.rtp.wait_for(lambda p: p.payload == b"\x55" * 160)


@pytest.mark.parametrize(
    ("dialled", "number"),
    [("112", "112"), ("110", "110"), ("+49 112", "112"), ("0049110", "110"), ("00112", "112")],
)
async def test_an_employee_without_outbound_calls_reaches_the_emergency_services(
    start_office: StartOffice, dialled: str, number: str
) -> None:
    office: Office = await start_office()
    anna, sink = await office.phone("101")
    provider = office.provider

    # Anna may not call out: an ordinary number is refused, and nothing reaches the provider.
    refused = anna.dial("+49897654321")
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await refused.wait_answered()
    assert failed.value.status == 403 and not provider.invites
    await office.record()

    call = anna.dial(dialled.replace(" ", ""))
    client = await provider.next_call()
    invite = client.request
    assert str(invite.uri) == f"sip:{number}@127.0.0.1:{provider.port}"
    assert str(invite.from_.uri) == f"sip:{TRUNK_USER}@127.0.0.1"  # the office's identity on the trunk
    assert TRUNK_USER in (invite.get("proxy-authorization") or "")  # the trunk's credentials, after its 407
    async with asyncio.timeout(3):
        answer = await call.wait_answered()
    await bridged(sink, provider, answer.body, invite.body)

    call.bye()
    assert (await ended(client)).reason is TerminationReason.REMOTE_BYE
    record = await office.record()
    assert (record.caller, record.destination_kind, record.destination_id) == ("101", "emergency", number)
    assert record.disposition is Disposition.ANSWERED and record.answered_by == number


async def test_a_british_office_dials_999_and_london_numbers(start_office: StartOffice) -> None:
    """The country is the directory's: 999 is the emergency number and 020 … is London (+44 20 …)."""
    office: Office = await start_office('country_code = "44"', number="+44 20 7946 1111")
    anna, _ = await office.phone("101")
    call = anna.dial("999")
    client = await office.provider.next_call()
    assert str(client.request.uri) == f"sip:999@127.0.0.1:{office.provider.port}"
    async with asyncio.timeout(3):
        await call.wait_answered()
    client.bye()
    await ended(call)
    assert (await office.record()).destination_kind == "emergency"

    bernd, _ = await office.phone("102")
    call = bernd.dial("02079460000")
    client = await office.provider.next_call()
    assert str(client.request.uri) == f"sip:+442079460000@127.0.0.1:{office.provider.port}"
    async with asyncio.timeout(3):
        await call.wait_answered()
    call.bye()
    await ended(client)
    record = await office.record()
    assert (record.destination_kind, record.destination_id) == ("external", "+442079460000")


async def test_the_emergency_trunk_and_a_country_of_its_own(start_office: StartOffice) -> None:
    """``emergency_numbers`` replaces the country's list: 110 is then an ordinary (unknown) extension."""
    office: Office = await start_office('emergency_numbers = ["112", "19222"]\nemergency_trunk = "provider"')
    anna, _ = await office.phone("101")
    office.provider.reject = 486
    call = anna.dial("19222")
    client = await office.provider.next_call()
    assert client.request.uri.user == "19222"  # type: ignore[union-attr]
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await call.wait_answered()
    assert failed.value.status == 486
    record = await office.record()
    assert (record.destination_kind, record.status) == ("emergency", 486)

    refused = anna.dial("110")
    with pytest.raises(CallFailed) as failed:
        async with asyncio.timeout(3):
            await refused.wait_answered()
    assert failed.value.status == 404


# ------------------------------------------------------------------------------------------- the table

#: The country codes of the 27 EU and the three other EEA countries (Iceland, Liechtenstein, Norway).
EU_AND_EEA = (
    "30 31 32 33 34 36 39 40 43 45 46 48 49 351 352 353 356 357 358 359 370 371 372 385 386 420 421"
    " 354 423 47"
)


def test_the_default_table() -> None:
    """Every EU and EEA country has 112; every entry is an emergency number that check-config accepts."""
    for code in EU_AND_EEA.split():
        assert "112" in default_emergency_numbers(code), code
    for code, numbers in EMERGENCY_NUMBERS.items():
        NumberingPlan(code, "0", "00")  # a valid country code
        assert numbers and len(set(numbers)) == len(numbers), code
        assert all(EMERGENCY_NUMBER_RE.fullmatch(n) for n in numbers), code
    assert default_emergency_numbers("1") == ("911",)
    assert default_emergency_numbers("44") == ("999", "112")
    assert default_emergency_numbers("998") == UNKNOWN_COUNTRY == ("112",)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("112", "112"),
        ("+49 112", "112"),
        ("0049112", "112"),
        ("00 49 110;1", "110"),
        ("00112", "112"),  # an international prefix before the bare number: people try it
        ("+112", "112"),
        ("+44 112", None),
        ("0044112", None),
        ("0112", None),
        ("1120", None),
        ("+49 30 112", None),
        ("030 112", None),
    ],
)
def test_which_emergency_number_was_dialled(text: str, number: str | None) -> None:
    germany = NumberingPlan("49", "0", "00")
    assert emergency_number(parse_dialstring(text), ("112", "110"), germany) == number
