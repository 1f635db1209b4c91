"""Calls from the trunk end to end on the call-flow harness: a simulated provider (a trunk, no auth) calls
the office's numbers; simulated phones ring and answer; greetings, RTP digits and relayed media go through
the real media code over the memory network, on a virtual clock."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import harness
import numpy as np
import pytest
from harness import RtpSink, answered, ended, event_of, network
from phones import FAST, Script, sdp

from durchwahl.media.dtmf_info import DTMF_RELAY_CONTENT_TYPE, format_dtmf_relay
from durchwahl.media.dtmf_rfc4733 import TelephoneEventSender
from durchwahl.media.errors import SdpError
from durchwahl.media.g711 import ulaw_decode
from durchwahl.media.rtp import RtpPacket
from durchwahl.media.sdp import Origin, parse_sdp
from durchwahl.media.session import PortAllocator, RtpSession
from durchwahl.routing.calls.greeting import ExtensionCollection
from durchwahl.routing.calls.media_anchor import media_address, plan_answer, ringback
from durchwahl.routing.collector import DigitCollector, ExtensionDialled, NoExtension, NoExtensionReason
from durchwahl.routing.directory import Directory, Strategy
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.resolver import Resolver
from durchwahl.sipcore import Endpoint
from durchwahl.sipcore.endpoint import TransportFactory
from durchwahl.sipcore.session import Answered, Confirmed, TerminationReason
from durchwahl.sipcore.transport import TransportSet
from durchwahl.sipcore.ua import CallFailed, OutgoingCall, UserAgent

PASSWORDS = {"101": "anna-secret", "102": "bernd-secret", "103": "carla-secret"}
ANSWER = Script("answer")
pytestmark = pytest.mark.virtual_time  # the harness: a memory network and a virtual clock

DIRECT = "+49301111111"  # no extension processing: rings 101
GREETING = "+49302222222"  # extension processing, a long greeting; default 102
SHORT = "+49303333333"  # extension processing, a short greeting; default 102
GROUP = "+49304444444"  # no extension processing: group 200 (in turn: 101, then 102)
HANGUP = "+49305555555"  # no extension processing: hang up

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:5060"]
state_dir = "var"
rtp_ports = "31000-31999"

[[employee]]
extension = "101"
name = "Anna"
password = "anna-secret"

[[employee]]
extension = "102"
name = "Bernd"
password = "bernd-secret"

[[employee]]
extension = "103"
name = "Carla"
password = "carla-secret"

[[group]]
extension = "200"
name = "Vertrieb"
strategy = "in_turn"
members = ["101", "102"]
ring_seconds = 5
fallback = "103"

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = 5070
inbound_from = ["127.0.0.1/32"]

[[number]]
number = "+49 30 1111111"
trunk = "provider"
default = "101"

[[number]]
number = "+49 30 2222222"
trunk = "provider"
extension_processing = true
greeting = "long.wav"
default = "102"

[[number]]
number = "+49 30 3333333"
trunk = "provider"
extension_processing = true
greeting = "short.wav"
default = "102"

[[number]]
number = "+49 30 4444444"
trunk = "provider"
default = "200"

[[number]]
number = "+49 30 5555555"
trunk = "provider"
default = "hangup"
"""


def write_wav(path: Path, seconds: float) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.tobytes())


class Provider:
    """A trunk calling in: no registration, no credentials (the office trusts its source address)."""

    def __init__(self, server_port: int, transports: TransportFactory = TransportSet) -> None:
        self.server_port = server_port
        self.endpoint = Endpoint(timers=FAST, user_agent="provider", transports=transports)
        self.ua = UserAgent(self.endpoint)

    async def start(self) -> Provider:
        await self.endpoint.listen("udp:127.0.0.1:0")
        return self

    def dial(self, number: str, body: bytes) -> OutgoingCall:
        return self.ua.invite(
            f"sip:{number}@office.example",
            self.endpoint.flow_to("127.0.0.1", self.server_port),
            from_='"Kunde" <sip:+4989123456@provider.example>',
            to=f"<sip:{number}@office.example>",
            body=body,
        )

    async def close(self) -> None:
        self.ua.close()
        await self.endpoint.close()


class Office(harness.Office):
    """The harness's office with a provider trunk calling in."""

    provider: Provider


def short_rings(directory: Directory) -> Directory:
    """Ring groups ring 1 s per step (the config's minimum of 5 s would make the tests slow)."""
    return attrs.evolve(directory, groups=tuple(attrs.evolve(g, ring_seconds=1) for g in directory.groups))


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Office]:
    write_wav(tmp_path / "long.wav", 4.0)
    write_wav(tmp_path / "short.wav", 0.3)
    (tmp_path / "office.toml").write_text(OFFICE, encoding="utf-8")
    directory = short_rings(load_directory(tmp_path / "office.toml"))
    ports = PortAllocator(*directory.server.rtp_ports)
    async with Office.open(directory, ring_seconds=2.0, ports=ports) as result:
        result.provider = result.add(await Provider(result.port, network().transports).start())
        yield result


async def send_digits(sink: RtpSink, digits: str, to: tuple[str, int]) -> None:
    """RFC 4733 telephone-events (payload type 101) for ``digits``, paced as a phone sends them."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for number, planned in enumerate(TelephoneEventSender().packets(digits)):
        await asyncio.sleep(max(0.0, start + planned.send_time / 8000 - loop.time()))
        sink.send(
            RtpPacket(101, 100 + number, 5000 + planned.timestamp, 0x4711, planned.payload, planned.marker),
            to,
        )


def audio(sequence: int) -> RtpPacket:
    return RtpPacket(0, sequence, sequence * 160, 0xCAFE, bytes(160))


# --------------------------------------------------------------------------------------------- flow 2


async def test_trunk_call_to_a_number_without_extension_processing_rings_its_employee(office: Office) -> None:
    desk = await office.phone("101")
    mobile = await office.phone("101", Script("ignore"))
    caller_sdp = sdp("provider", 42000)
    call = office.provider.dial(DIRECT, caller_sdp)
    assert await answered(call) == desk.sdp  # not anchored: SDP passed through
    at_desk, at_mobile = await desk.next_call(), await mobile.next_call()
    assert at_desk.request.body == caller_sdp
    assert call.invite is not None and at_desk.request.from_.uri == call.invite.from_.uri
    assert (await ended(at_mobile)).reason is TerminationReason.CANCELLED
    await event_of(at_desk, Confirmed)
    call.bye()
    assert (await ended(at_desk)).reason is TerminationReason.REMOTE_BYE
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE
    await office.idle()


async def test_trunk_call_to_a_number_that_hangs_up_is_480(office: Office) -> None:
    call = office.provider.dial(HANGUP, sdp("provider", 42000))
    with pytest.raises(CallFailed) as failed:
        await answered(call)
    assert failed.value.status == 480


# --------------------------------------------------------------------------------------------- flow 3


async def answered_anchored(office: Office, number: str) -> tuple[OutgoingCall, RtpSink, tuple[str, int]]:
    """Call ``number`` from the provider with a real RTP socket; returns the call, the socket and where the
    office's media for it is (from the SDP answer)."""
    rtp = await office.sink()
    call = office.provider.dial(number, sdp("provider", rtp.port))
    answer = parse_sdp(await answered(call))
    where = media_address(answer)
    assert where is not None and where[0] == "127.0.0.1" and 31000 <= where[1] <= 31999
    (audio_stream,) = answer.media
    assert [m.encoding for m in audio_stream.rtp_maps()] == ["PCMU", "telephone-event"]
    return call, rtp, where


async def test_digits_during_the_greeting_ring_that_extension_and_media_is_relayed(office: Office) -> None:
    anna = await office.phone("101")
    bernd = await office.phone("102", Script("ignore"))
    phone_rtp = await office.sink()
    anna.sdp = sdp("phone-101", phone_rtp.port)
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    call, rtp, where = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)  # the greeting plays
    await send_digits(rtp, "101", where)

    leg = await anna.next_call()
    offer = parse_sdp(leg.request.body)
    assert media_address(offer) != ("127.0.0.1", rtp.port)  # the callee is offered the office's media
    assert leg.request.get("content-type") == "application/sdp"
    await event_of(leg, Confirmed)
    assert bernd.calls.empty()

    # Media flows both ways through the anchor, renumbered for each leg.
    office_b = media_address(offer)
    assert office_b is not None
    rtp.packets.clear()
    for sequence in range(3):
        rtp.send(audio(sequence), where)
        phone_rtp.send(audio(sequence), office_b)
        await asyncio.sleep(0.02)
    relayed = await phone_rtp.wait_for(lambda p: p.payload_type == 0)
    back = await rtp.wait_for(lambda p: p.payload_type == 0 and p.ssrc != relayed.ssrc)
    assert relayed.ssrc != 0xCAFE and back.ssrc != 0xCAFE

    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    from durchwahl.routing.events import CallAnswered, CallStarted, DigitPressed

    assert isinstance(facts[0], CallStarted) and facts[0].source_trunk == "provider"
    assert [(f.digit, f.source) for f in facts if isinstance(f, DigitPressed)] == [
        ("1", "rfc4733"),
        ("0", "rfc4733"),
        ("1", "rfc4733"),
    ]
    assert any(isinstance(f, CallAnswered) for f in facts)


async def test_the_numbers_music_plays_while_the_extension_rings(office: Office, tmp_path: Path) -> None:
    """A number with ``music``: after the greeting the caller hears it (a 1 kHz tone here), not ringback."""
    t = np.arange(8000) / 8000
    with wave.open(str(tmp_path / "music.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes((3000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes())
    directory = office.b2bua.directory
    numbers = tuple(
        attrs.evolve(n, music=tmp_path / "music.wav") if n.number == SHORT else n for n in directory.numbers
    )
    directory = attrs.evolve(directory, numbers=numbers)
    office.b2bua.directory, office.b2bua.resolver = directory, Resolver(directory)

    bernd = await office.phone("102", Script("ignore"))
    call, rtp, _ = await answered_anchored(office, SHORT)  # no digits: the default, 102, rings
    await bernd.next_call()
    await asyncio.sleep(0.3)
    rtp.packets.clear()
    await asyncio.sleep(0.6)
    payload = b"".join(p.payload for p in sorted(rtp.packets, key=lambda p: p.sequence_number))
    samples = ulaw_decode(payload[:4000]).astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    assert len(samples) == 4000 and np.argmax(spectrum) * 8000 / len(samples) == pytest.approx(1000, abs=4)
    call.bye()
    await ended(call)
    await office.idle()


async def test_info_digits_during_the_greeting_are_taken_too(office: Office) -> None:
    carla = await office.phone("103")
    call, _, _ = await answered_anchored(office, GREETING)
    for digit in "103":
        call.send_request("INFO", body=format_dtmf_relay(digit), content_type=DTMF_RELAY_CONTENT_TYPE)
        await asyncio.sleep(0.05)
    leg = await carla.next_call()
    await event_of(leg, Confirmed)
    leg.bye()  # the callee hangs up: the caller's leg ends too
    assert (await ended(call)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_tones_dialled_through_the_greetings_echo_ring_that_extension(
    office: Office, tmp_path: Path
) -> None:
    """The caller's line returns the greeting (a voice-like 4 s greeting here) 6 dB down and 40 ms late, and
    the caller dials 101 in-band, each tone as loud as that echo: Anna (101) rings, not the default."""
    from durchwahl.media.dtmf_tones import dtmf_tone
    from durchwahl.media.g711 import ulaw_encode

    rng = np.random.default_rng(21)
    t = np.arange(4 * 8000) / 8000
    pitch = 2 * np.pi * np.cumsum(140 + 40 * np.sin(2 * np.pi * 0.7 * t)) / 8000
    voice = sum(np.sin(k * pitch) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)
    voice *= 5000 / np.std(voice)  # about -13 dBm0
    with wave.open(str(tmp_path / "long.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(voice.astype("<i2").tobytes())
    anna = await office.phone("101")
    bernd = await office.phone("102", Script("ignore"))
    facts: list[object] = []
    office.b2bua.on_event = facts.append
    call, rtp, where = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)
    level = 20 * np.log10(5000 * 0.5 / (22657 / np.sqrt(2)))  # the echo's level, dBm0
    played: list[np.ndarray] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(150):  # 3 s of the caller's audio, 20 ms a packet
        greeting = sorted((p for p in rtp.packets if p.payload_type == 0), key=lambda p: p.sequence_number)
        played = [ulaw_decode(p.payload).astype(np.float64) for p in greeting]
        k = len(played) - 2  # the echo: what it heard 40 ms ago
        frame = 0.5 * played[k] if k >= 0 else np.zeros(160)
        digit = n // 12 - 5  # from 1.2 s on: a tone of 80 ms every 240 ms
        if 0 <= digit < 3 and n % 12 < 4:
            frame = (
                frame + dtmf_tone("101"[digit], 640, low_dbm0=level, high_dbm0=level)[(n % 12) * 160 :][:160]
            )
        frame = frame + rng.normal(0, 10, 160)
        payload = ulaw_encode(np.clip(np.round(frame), -32768, 32767).astype(np.int16))
        rtp.send(RtpPacket(0, n, n * 160, 0x5EED, payload), where)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
    leg = await anna.next_call()
    await event_of(leg, Confirmed)
    assert bernd.calls.empty()
    from durchwahl.routing.events import DigitPressed

    assert [(f.digit, f.source) for f in facts if isinstance(f, DigitPressed)] == [
        ("1", "inband"),
        ("0", "inband"),
        ("1", "inband"),
    ]
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_no_digits_during_the_greeting_ring_the_default_destination(office: Office) -> None:
    bernd = await office.phone("102")
    call, _, _ = await answered_anchored(office, SHORT)
    leg = await bernd.next_call(timeout=3.0)
    await event_of(leg, Confirmed)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_caller_hanging_up_during_the_greeting_ends_the_call(office: Office) -> None:
    call, rtp, _ = await answered_anchored(office, GREETING)
    await rtp.wait_for(lambda p: p.payload_type == 0)
    call.bye()
    assert (await ended(call)).reason is TerminationReason.LOCAL_BYE
    await office.idle()


# --------------------------------------------------------------------------------------------- flow 4


async def test_in_turn_group_rings_the_next_member_when_the_first_does_not_answer(office: Office) -> None:
    assert office.b2bua.directory.groups[0].strategy is Strategy.IN_TURN
    anna = await office.phone("101", Script("ignore"))
    bernd = await office.phone("102")
    call = office.provider.dial(GROUP, sdp("provider", 42000))
    at_anna = await anna.next_call()
    assert bernd.calls.empty()
    assert await answered(call) == bernd.sdp
    assert (await ended(at_anna)).reason is TerminationReason.CANCELLED
    at_bernd = await bernd.next_call()
    await event_of(at_bernd, Confirmed)
    call.bye()
    assert (await ended(at_bernd)).reason is TerminationReason.REMOTE_BYE
    await office.idle()


async def test_group_nobody_answers_goes_to_the_fallback(office: Office) -> None:
    await office.phone("101", Script("ignore"))
    carla = await office.phone("103")
    call = office.provider.dial(GROUP, sdp("provider", 42000))  # 102 is not registered: skipped
    assert await answered(call, timeout=4.0) == carla.sdp
    leg = await carla.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    await ended(leg)
    await office.idle()


async def test_busy_members_are_skipped(office: Office) -> None:
    anna = await office.phone("101")
    bernd = await office.phone("102")
    first = office.provider.dial(DIRECT, sdp("provider", 42000))
    await answered(first)
    at_anna = await anna.next_call()
    await event_of(at_anna, Confirmed)
    assert office.b2bua.busy == {"101": 1}
    second = office.provider.dial(GROUP, sdp("provider", 42002))
    assert await answered(second) == bernd.sdp
    assert anna.calls.empty()
    for call in (first, second):
        call.bye()
        await ended(call)
    await office.idle()
    assert not office.b2bua.busy


async def test_evenly_group_offers_each_call_first_to_the_next_member(office: Office) -> None:
    directory = office.b2bua.directory
    evenly = attrs.evolve(directory.groups[0], strategy=Strategy.EVENLY)
    office.b2bua.directory = attrs.evolve(directory, groups=(evenly,))
    office.b2bua.resolver = Resolver(office.b2bua.directory)
    anna, bernd = await office.phone("101"), await office.phone("102")
    for phone, port in ((anna, 42000), (bernd, 42002), (anna, 42004)):
        call = office.provider.dial(GROUP, sdp("provider", port))
        assert await answered(call) == phone.sdp
        leg = await phone.next_call()
        await event_of(leg, Confirmed)
        call.bye()
        await ended(leg)
        await office.idle()
    assert anna.calls.empty() and bernd.calls.empty()  # each call rang only the member offered first
    assert office.b2bua.ring_state.to_mapping() == {"200": "101"}


# ------------------------------------------------------------------------------------- pure helpers

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 8 0 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n"
)


def test_plan_answer_prefers_pcmu_keeps_the_offered_event_type_and_the_peer_direction() -> None:
    origin = Origin("durchwahl", "1", 1, "127.0.0.1")
    planned = plan_answer(parse_sdp(OFFER), origin, address="127.0.0.1", port=31000)
    assert planned.media.payload_type == 0 and planned.media.codec == "PCMU"
    assert planned.media.telephone_event_pt == 96 and planned.media.direction == "sendonly"
    assert planned.remote == ("192.0.2.1", 4000)
    answer = parse_sdp(planned.body)
    assert media_address(answer) == ("127.0.0.1", 31000) and answer.media[0].direction() == "recvonly"

    only_alaw = OFFER.replace(" 8 0 96", " 8").replace("a=rtpmap:0 PCMU/8000\r\n", "")
    planned = plan_answer(parse_sdp(only_alaw), origin, address="127.0.0.1", port=31000)
    assert (planned.media.codec, planned.media.telephone_event_pt) == ("PCMA", None)
    with pytest.raises(SdpError):
        plan_answer(
            parse_sdp(OFFER.replace(" 8 0 96", " 9").replace("8000", "16000")), origin, address="x", port=1
        )


def test_ringback_is_425_hz_one_second_on_four_off() -> None:
    tone = ringback()
    assert tone.duration == pytest.approx(5.0)
    on, off = tone.samples[:8000], tone.samples[8000:]
    assert not off.any() and np.abs(on).max() > 1000
    spectrum = np.abs(np.fft.rfft(on.astype(np.float64)))
    assert np.argmax(spectrum) == pytest.approx(425, abs=1)  # 1 Hz bins over one second


async def test_collection_takes_info_digits_until_an_extension_matches() -> None:
    session = RtpSession()  # not bound: INFO digits still go through its merger
    playback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    collection = ExtensionCollection(DigitCollector(["101", "1011", "102"]), session, playback)
    for digit in "101":
        collection.info_digit(digit)
        await asyncio.sleep(0.05)
    assert not collection.result.done()  # "1011" could still follow
    collection.info_digit("#")
    assert await collection.result == ExtensionDialled("101")
    assert session.on_digit is None


async def test_collection_without_digits_ends_with_the_greeting() -> None:
    session = RtpSession()
    playback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    collection = ExtensionCollection(DigitCollector(["101"]), session, playback)
    playback.set_result(None)
    assert await collection.result == NoExtension(NoExtensionReason.NO_DIGITS)
    no_greeting = ExtensionCollection(DigitCollector(["101"]), RtpSession(), None)
    assert no_greeting.result.result() == NoExtension(NoExtensionReason.NO_DIGITS)


async def test_offerless_invite_gets_our_offer_and_the_greeting_after_the_ack(office: Office) -> None:
    bernd = await office.phone("102")
    rtp = await office.sink()
    call = office.provider.dial(SHORT, b"")
    answered_event = await event_of(call, Answered)
    assert isinstance(answered_event, Answered) and answered_event.answer_owed
    offer = parse_sdp(answered_event.response.body)
    assert [m.encoding for m in offer.media[0].rtp_maps()] == ["PCMU", "PCMA", "telephone-event"]
    call.ack(body=sdp("provider", rtp.port))
    await rtp.wait_for(lambda p: p.payload_type == 0)  # the greeting, to where the ACK's answer said
    leg = await bernd.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
