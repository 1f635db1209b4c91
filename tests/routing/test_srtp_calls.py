"""SRTP (SDES, RFC 4568) end to end on loopback: simulated phones on TLS whose RTP sockets protect and open
packets with libsrtp, a plain-RTP provider, the B2BUA's anchored relay between them. The media is checked
decrypted on both sides: what one side sends arrives, payload for payload, at the other, and nothing on an
SRTP leg crosses the wire in clear."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path

import pytest
from certs import Authority, authority
from phones import Phone, Script, sdp
from test_tls_office import NUMBER_OUT, PASSWORDS, event, office_toml, provider_trunk, tls_phone, write

from durchwahl.media.dtmf_rfc4733 import TelephoneEventSender
from durchwahl.media.errors import SdpError
from durchwahl.media.relay import Side
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.sdes import KEY_OCTETS, CryptoAttribute, choose_crypto
from durchwahl.media.sdp import parse_sdp
from durchwahl.media.srtp import SrtpStreams
from durchwahl.routing.calls.media_anchor import media_address
from durchwahl.routing.demo import Provider, RtpSocket
from durchwahl.routing.server import Server
from durchwahl.sipcore.session import Answered, Terminated
from durchwahl.sipcore.tls import client_context, server_context
from durchwahl.sipcore.ua import CallFailed, IncomingCall

SUITE = "AES_CM_128_HMAC_SHA1_80"
GREETING_NUMBER = "+49302222222"


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return authority(tmp_path / "ca")


class SrtpSocket(RtpSocket):
    """A phone's RTP socket with SRTP: it sends with its own key and opens what arrives with the key the
    B2BUA's SDP gave it (:meth:`keyed`). ``raw`` keeps every datagram as it crossed the wire."""

    def __init__(self) -> None:
        super().__init__()
        self.key = secrets.token_bytes(KEY_OCTETS)
        self.streams: SrtpStreams | None = None
        self.raw: list[bytes] = []

    def offer(self, name: str, profile: str = "RTP/SAVP") -> bytes:
        body = sdp(name, self.port).decode().replace("RTP/AVP", profile)
        return (body + f"a=crypto:1 {SUITE} inline:{_b64(self.key)}\r\n").encode()

    def keyed(self, their_sdp: bytes) -> CryptoAttribute:
        """Take the B2BUA's key from its SDP; returns it."""
        audio = parse_sdp(their_sdp).media[0]
        theirs = choose_crypto(audio)
        assert theirs is not None, their_sdp
        self.streams = SrtpStreams(send=CryptoAttribute(theirs.tag, theirs.suite, self.key), receive=theirs)
        return theirs

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.raw.append(data)
        if self.streams is not None and (plain := self.streams.unprotect(data)) is not None:
            self.packets.append(parse(plain))

    def send(self, packet: RtpPacket, to: tuple[str, int]) -> None:
        assert self.transport is not None and self.streams is not None
        self.transport.sendto(self.streams.protect(bytes(packet)), to)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def audio(sequence: int, fill: int, ssrc: int) -> RtpPacket:
    return RtpPacket(0, sequence, 160 * sequence, ssrc, bytes([fill]) * 160, sequence == 1)


async def until(predicate: object, seconds: float = 3.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


def udp_trunk(port: int) -> str:
    return provider_trunk(port).replace('transport = "tls"\n', "")


def srtp_office(
    tmp_path: Path, ca: Authority, *, trunk: str, anna: str = "required", bernd: str = "offered"
) -> Path:
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    text = office_toml(issued, trunk=trunk, listen='"udp:127.0.0.1:0", "tls:127.0.0.1:0"')
    text = text.replace('password = "anna-secret"\n', f'password = "anna-secret"\nsrtp = "{anna}"\n')
    text = text.replace('password = "bernd-secret"\n', f'password = "bernd-secret"\nsrtp = "{bernd}"\n')
    return write(tmp_path, text)


def ports(server: Server) -> dict[str, int]:
    return {transport: port for transport, _, port in server.addresses}


async def test_an_srtp_phone_talks_with_a_plain_rtp_provider(ca: Authority, tmp_path: Path) -> None:
    provider = await Provider().start()
    async with Server(srtp_office(tmp_path, ca, trunk=udp_trunk(provider.port)), control=False) as server:
        anna = await tls_phone("101", ports(server)["TLS"], ca, tmp_path)
        sock = await SrtpSocket.open()
        anna.sdp = sock.offer("anna")
        try:
            call = anna.dial(NUMBER_OUT)
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            body = answered.response.body
            assert b"m=audio" in body and b"RTP/SAVP" in body
            ours = sock.keyed(body)
            assert ours.key != sock.key and ours.tag == 1 and ours.suite == SUITE
            leg = await asyncio.wait_for(provider.calls.get(), 2.0)
            assert isinstance(leg, IncomingCall)
            offer = leg.request.body
            assert b"RTP/AVP" in offer and b"a=crypto" not in offer  # the provider's leg is plain RTP
            a_side = media_address(parse_sdp(body))
            b_side = media_address(parse_sdp(offer))
            assert a_side is not None and b_side is not None
            for n in range(1, 6):
                sock.send(audio(n, 0x10 + n, 0xA11A), a_side)
                provider.rtp.send(audio(n, 0x50 + n, 0xB0B), b_side)
                await asyncio.sleep(0.02)
            assert await until(lambda: len(provider.rtp.packets) >= 5 and len(sock.packets) >= 5)
            # Decrypted on both sides: each side gets the other's payloads, in order.
            assert [p.payload[0] for p in provider.rtp.packets[:5]] == [0x11, 0x12, 0x13, 0x14, 0x15]
            assert [p.payload[0] for p in sock.packets[:5]] == [0x51, 0x52, 0x53, 0x54, 0x55]
            # ... and nothing on anna's leg crossed the wire in clear.
            assert all(bytes([0x51]) * 160 not in raw for raw in sock.raw)
            (bridged,) = server.b2bua.active.values()
            assert (
                bridged.media is not None
                and bridged.media.secure(Side.A)
                and not bridged.media.secure(Side.B)
            )
            call.bye()
            await event(call, Terminated)
        finally:
            sock.close()
            await anna.close()
            await provider.close()


async def test_two_srtp_phones_get_separate_keys(ca: Authority, tmp_path: Path) -> None:
    async with Server(srtp_office(tmp_path, ca, trunk="", bernd="required"), control=False) as server:
        port = ports(server)["TLS"]
        anna = await tls_phone("101", port, ca, tmp_path)
        bernd = await tls_phone("102", port, ca, tmp_path, Script("ignore"))
        anna_rtp, bernd_rtp = await SrtpSocket.open(), await SrtpSocket.open()
        anna.sdp = anna_rtp.offer("anna")
        try:
            call = anna.dial("102")
            incoming = await bernd.next_call()
            offer = incoming.request.body
            assert b"RTP/SAVP" in offer  # bernd requires SRTP: our offer to him says so
            to_bernd = bernd_rtp.keyed(offer)
            incoming.answer(body=bernd_rtp.offer("bernd"))
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            to_anna = anna_rtp.keyed(answered.response.body)
            assert len({to_anna.key, to_bernd.key, anna_rtp.key, bernd_rtp.key}) == 4
            a_side = media_address(parse_sdp(answered.response.body))
            b_side = media_address(parse_sdp(offer))
            assert a_side is not None and b_side is not None
            for n in range(1, 4):
                anna_rtp.send(audio(n, 0x20 + n, 0xA), a_side)
                bernd_rtp.send(audio(n, 0x60 + n, 0xB), b_side)
                await asyncio.sleep(0.02)
            assert await until(lambda: len(anna_rtp.packets) >= 3 and len(bernd_rtp.packets) >= 3)
            assert [p.payload[0] for p in bernd_rtp.packets[:3]] == [0x21, 0x22, 0x23]
            assert [p.payload[0] for p in anna_rtp.packets[:3]] == [0x61, 0x62, 0x63]
            call.bye()
            await event(call, Terminated)
        finally:
            anna_rtp.close()
            bernd_rtp.close()
            await anna.close()
            await bernd.close()


async def test_extension_dialling_over_srtp_during_the_greeting(ca: Authority, tmp_path: Path) -> None:
    """The provider, over TLS with SRTP, calls a number with extension processing: it hears the greeting
    (decrypted with our key) and keys 102 as RFC 4733 events inside SRTP; 102 (plain RTP, UDP) rings."""
    provider = Provider(transport="tls")
    provider_cert = ca.issue(tmp_path / "provider", "127.0.0.1")
    provider.endpoint.tls.configure(
        server_context(provider_cert.certificate, provider_cert.key),
        default_client=client_context(ca_file=ca.certificate),
    )
    await provider.start()
    greeting = tmp_path / "greeting.wav"
    _write_greeting(greeting)
    trunk = provider_trunk(provider.port) + (
        f'\n[[number]]\nnumber = "{GREETING_NUMBER}"\ntrunk = "provider"\nextension_processing = true\n'
        'greeting = "greeting.wav"\ndefault = "101"\n'
    )
    async with Server(srtp_office(tmp_path, ca, trunk=trunk, anna="offered"), control=False) as server:
        provider.server_port = ports(server)["TLS"]
        bernd = await Phone("102", PASSWORDS["102"], ports(server)["UDP"], script=Script("answer")).start()
        sock = await SrtpSocket.open()
        try:
            call = provider.dial(GREETING_NUMBER, sock.offer("provider"))
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            sock.keyed(answered.response.body)
            ours = media_address(parse_sdp(answered.response.body))
            assert ours is not None
            assert await until(lambda: len(sock.packets) >= 10), "no greeting (or not decryptable)"
            assert len(sock.raw) >= len(sock.packets)
            for number, planned in enumerate(TelephoneEventSender().packets("102")):
                await asyncio.sleep(0.02)
                sock.send(RtpPacket(101, 500 + number, 9000 + planned.timestamp, 0x77, planned.payload), ours)
            leg = await bernd.next_call(5.0)
            assert leg.request.body and b"a=crypto" not in leg.request.body  # bernd's leg: plain RTP
            call.bye()
            await event(call, Terminated)
        finally:
            sock.close()
            await bernd.close()
            await provider.close()


def _write_greeting(path: Path) -> None:
    import wave

    import numpy as np

    samples = (3000 * np.sin(2 * np.pi * 440 * np.arange(8000 * 3) / 8000)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.tobytes())


async def test_hold_and_a_new_key_in_a_reinvite_on_an_srtp_leg(ca: Authority, tmp_path: Path) -> None:
    """anna (SRTP) holds and resumes with re-INVITEs, the resume bringing a new key: our answers keep our
    key (same tag and suite), and after the resume anna's packets under her new key are relayed while those
    under the old one are dropped."""
    from durchwahl.sipcore.session import ReinviteAnswered

    provider = await Provider().start()
    async with Server(srtp_office(tmp_path, ca, trunk=udp_trunk(provider.port)), control=False) as server:
        anna = await tls_phone("101", ports(server)["TLS"], ca, tmp_path)
        sock = await SrtpSocket.open()
        anna.sdp = sock.offer("anna")
        try:
            call = anna.dial(NUMBER_OUT)
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            ours = sock.keyed(answered.response.body)
            await asyncio.wait_for(provider.calls.get(), 2.0)
            a_side = media_address(parse_sdp(answered.response.body))
            assert a_side is not None
            call.reinvite(body=sock.offer("anna").replace(b"a=crypto", b"a=sendonly\r\na=crypto"))
            held = await event(call, ReinviteAnswered)
            assert isinstance(held, ReinviteAnswered)
            assert b"a=recvonly" in held.response.body and sock.keyed(held.response.body) == ours
            old_streams = sock.streams
            sock.key = secrets.token_bytes(KEY_OCTETS)  # a new key of anna's
            call.reinvite(body=sock.offer("anna"))
            resumed = await event(call, ReinviteAnswered)
            assert isinstance(resumed, ReinviteAnswered) and sock.keyed(resumed.response.body) == ours
            await asyncio.sleep(0.2)  # the provider's leg: re-INVITEs for the hold and the resume
            provider.rtp.packets.clear()
            assert old_streams is not None
            for n in range(1, 4):
                sock.transport.sendto(old_streams.protect(bytes(audio(n, 0x30, 0xC))), a_side)  # type: ignore[union-attr]
            for n in range(4, 7):
                sock.send(audio(n, 0x40 + n, 0xC), a_side)
                await asyncio.sleep(0.02)
            assert await until(lambda: len(provider.rtp.packets) >= 3)
            await asyncio.sleep(0.1)
            assert [p.payload[0] for p in provider.rtp.packets] == [0x44, 0x45, 0x46]
            call.bye()
            await event(call, Terminated)
        finally:
            sock.close()
            await anna.close()
            await provider.close()


async def test_our_hold_reinvite_to_an_srtp_leg_keeps_its_srtp(ca: Authority, tmp_path: Path) -> None:
    """The provider (plain RTP) holds: anna's SRTP leg gets our re-INVITE with a=sendonly in RTP/SAVP with
    our same key, her answer keeps the leg on SRTP, and the relay goes on protected after the resume."""
    from durchwahl.sipcore.session import ReinviteAnswered, ReinviteReceived

    provider = await Provider().start()
    async with Server(srtp_office(tmp_path, ca, trunk=udp_trunk(provider.port)), control=False) as server:
        anna = await tls_phone("101", ports(server)["TLS"], ca, tmp_path)
        sock = await SrtpSocket.open()
        anna.sdp = sock.offer("anna")
        try:
            call = anna.dial(NUMBER_OUT)
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            ours = sock.keyed(answered.response.body)
            leg = await asyncio.wait_for(provider.calls.get(), 2.0)
            b_side = media_address(parse_sdp(leg.request.body))
            assert b_side is not None
            for direction in ("sendonly", "sendrecv"):
                leg.reinvite(body=sdp("provider", provider.rtp.port) + f"a={direction}\r\n".encode())
                told = await event(call, ReinviteReceived)
                assert isinstance(told, ReinviteReceived)
                offer = told.request.body
                expected = b"a=sendonly" if direction == "sendonly" else b"a=sendrecv"
                assert b"RTP/SAVP" in offer and expected in offer, offer
                assert choose_crypto(parse_sdp(offer).media[0]) == ours  # the same key, tag and suite
                call.answer_reinvite(body=sock.offer("anna"), content_type="application/sdp")
                assert isinstance(await event(leg, ReinviteAnswered), ReinviteAnswered)
            await asyncio.sleep(0.1)
            for n in range(1, 4):
                provider.rtp.send(audio(n, 0x70 + n, 0xD), b_side)
                await asyncio.sleep(0.02)
            assert await until(lambda: len(sock.packets) >= 3)
            assert [p.payload[0] for p in sock.packets[-3:]] == [0x71, 0x72, 0x73]
            call.bye()
            await event(call, Terminated)
        finally:
            sock.close()
            await anna.close()
            await provider.close()


# --------------------------------------------------------------------------------------------- policies


async def test_required_srtp_needs_tls_and_a_key(ca: Authority, tmp_path: Path) -> None:
    """srtp = "required": no registration or call over UDP (403), no call without a key (488)."""
    async with Server(srtp_office(tmp_path, ca, trunk=""), control=False) as server:
        udp = Phone("101", PASSWORDS["101"], ports(server)["UDP"])
        await udp.endpoint.listen("udp:127.0.0.1:0")
        try:
            response = await udp.register()
            assert response.status == 403 and "TLS" in response.reason
            with pytest.raises(CallFailed) as refused:
                await asyncio.wait_for(udp.dial("102").answered, 3.0)
            assert refused.value.status == 403
        finally:
            await udp.close()
        anna = await tls_phone("101", ports(server)["TLS"], ca, tmp_path)
        try:
            with pytest.raises(CallFailed) as plain:
                await asyncio.wait_for(anna.dial("102").answered, 3.0)  # a plain RTP offer
            assert plain.value.status == 488
            assert "SRTP is required" in str(plain.value), plain.value
        finally:
            await anna.close()


def test_the_policy_keys_are_checked(ca: Authority, tmp_path: Path) -> None:
    from durchwahl.routing.directory_file import read_directory

    path = srtp_office(tmp_path, ca, trunk=udp_trunk(5070), anna="always")
    _, problems, _ = read_directory(path)
    assert [f"{p.field}: {p.message}" for p in problems] == [
        "employee[1].srtp: 'always' is not one of 'off', 'offered', 'required'"
    ]
    path.write_text(
        path.read_text()
        .replace('"always"', '"off"')
        .replace('name = "provider"\n', 'name = "provider"\nsrtp = "required"\n')
    )
    _, problems, _ = read_directory(path)
    assert [f"{p.field}: {p.message}" for p in problems] == [
        'trunk[1].srtp: SRTP keys travel in the signalling: required SRTP needs transport = "tls"'
    ]


def test_plan_answer_under_each_policy() -> None:
    """The answer to one offer under each policy: its key answered with ours, or plain, or refused saying
    why; and SRTP only where the leg is over TLS."""
    from durchwahl.media.sdes import SrtpPolicy
    from durchwahl.media.sdp import Origin
    from durchwahl.routing.calls.media_anchor import leg_srtp, plan_answer
    from durchwahl.sipcore.transport import Flow

    key, ours = secrets.token_bytes(KEY_OCTETS), secrets.token_bytes(KEY_OCTETS)
    offered = f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{_b64(key)}\r\n".encode()
    plain = sdp("phone", 4000)
    savp = plain.replace(b"RTP/AVP", b"RTP/SAVP") + offered
    avp_with_key = plain + offered
    origin = Origin("durchwahl", "1", 1, "127.0.0.1")

    def plan(body: bytes, policy: SrtpPolicy) -> tuple[CryptoAttribute, CryptoAttribute] | None:
        answer = plan_answer(parse_sdp(body), origin, address="127.0.0.1", port=5000, srtp=policy, key=ours)
        if answer.srtp is not None:
            assert f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{_b64(ours)}".encode() in answer.body
        return answer.srtp

    mine = CryptoAttribute(3, "AES_CM_128_HMAC_SHA1_32", ours)
    theirs = CryptoAttribute(3, "AES_CM_128_HMAC_SHA1_32", key)
    assert plan(savp, SrtpPolicy.REQUIRED) == plan(avp_with_key, SrtpPolicy.OFFERED) == (mine, theirs)
    assert plan(savp, SrtpPolicy.OFFERED) == (mine, theirs)
    assert plan(avp_with_key, SrtpPolicy.OFF) is None and plan(plain, SrtpPolicy.OFFERED) is None
    with pytest.raises(SdpError, match="SRTP is required"):
        plan(plain, SrtpPolicy.REQUIRED)
    with pytest.raises(SdpError, match="RTP/SAVP is not accepted"):
        plan(savp, SrtpPolicy.OFF)
    tls = Flow("TLS", ("127.0.0.1", 5061), ("127.0.0.1", 4000), 1)
    udp = Flow("UDP", ("127.0.0.1", 5060), ("127.0.0.1", 4000))
    assert leg_srtp(SrtpPolicy.REQUIRED, tls) is SrtpPolicy.REQUIRED
    assert leg_srtp(SrtpPolicy.OFFERED, udp) is SrtpPolicy.OFF and leg_srtp(SrtpPolicy.REQUIRED, udp) is None
