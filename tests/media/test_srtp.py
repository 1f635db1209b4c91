"""SRTP (RFC 3711) through libsrtp: packets protected with one key open with it and only with it, a forged or
replayed packet is dropped, and an RTP session with SRTP latches only onto authenticated packets, plays its
greeting protected and hands the relay plain RTP."""

from __future__ import annotations

import asyncio
import random
import socket

import numpy as np
import pytest

from durchwahl.media.greeting import greeting_from_samples
from durchwahl.media.rtp import RtpPacket, parse
from durchwahl.media.sdes import KEY_OCTETS, CryptoAttribute
from durchwahl.media.session import MediaClock, PortAllocator, RtpSession
from durchwahl.media.srtp import SrtpError, SrtpStreams

KEY_A = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", bytes(range(KEY_OCTETS)))
KEY_B = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", bytes(range(50, 50 + KEY_OCTETS)))


def packet(sequence: int, payload: bytes = b"\xff" * 160, ssrc: int = 0x1234) -> bytes:
    return bytes(RtpPacket(0, sequence, 160 * sequence, ssrc, payload, False))


def test_a_packet_opens_with_its_key_only_and_once() -> None:
    alice, bob = SrtpStreams(send=KEY_A, receive=KEY_B), SrtpStreams(send=KEY_B, receive=KEY_A)
    plain = packet(1, b"hello" * 32)
    protected = alice.protect(plain)
    assert len(protected) == len(plain) + 10  # the 80-bit authentication tag
    assert protected[:12] == plain[:12] and protected[12:-10] != plain[12:]  # header clear, payload not
    assert bob.unprotect(protected) == plain
    assert bob.unprotect(protected) is None  # a replay
    tampered = bytearray(alice.protect(packet(2)))
    tampered[20] ^= 1
    assert bob.unprotect(bytes(tampered)) is None
    assert alice.unprotect(alice.protect(packet(3))) is None  # our own key does not open what we send
    assert bob.unprotect(packet(4)) is None  # plain RTP on an SRTP leg
    assert (bob.rejected, alice.rejected) == (3, 1)


def test_the_32_bit_tag_suite_and_rekeying() -> None:
    short_a = CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_32", KEY_A.key)
    alice, bob = SrtpStreams(send=short_a, receive=KEY_B), SrtpStreams(send=KEY_B, receive=short_a)
    assert len(alice.protect(packet(1))) == len(packet(1)) + 4
    new_a = CryptoAttribute(2, "AES_CM_128_HMAC_SHA1_32", KEY_B.key)
    alice.rekey(send=new_a, receive=KEY_B)
    bob.rekey(send=KEY_B, receive=new_a)
    assert bob.unprotect(alice.protect(packet(2))) == packet(2)
    with pytest.raises(SrtpError):
        alice.protect(packet(3, b"\x00" * 1600))  # beyond libsrtp's buffer


async def test_an_srtp_session_latches_on_authenticated_packets_only_and_plays_protected() -> None:
    loop = asyncio.get_running_loop()
    session = await PortAllocator(33000, 33999).open(lambda: RtpSession(rng=random.Random(3)))
    session.srtp = SrtpStreams(send=KEY_A, receive=KEY_B)
    phone = SrtpStreams(send=KEY_B, receive=KEY_A)
    received: list[RtpPacket] = []
    session.on_packet = lambda p, now: received.append(p)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind(("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    clock = MediaClock()
    try:
        forger.sendto(packet(1), session.local)  # plain RTP: refused, no latch
        forger.sendto(SrtpStreams(send=KEY_A, receive=KEY_B).protect(packet(2)), session.local)  # wrong key
        await asyncio.sleep(0.1)
        assert not session.latched and session.stats.dropped_srtp == 2
        peer.sendto(phone.protect(packet(3)), session.local)
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.01)
        assert session.latched and session.remote == peer.getsockname()
        assert [p.sequence_number for p in received] == [3]  # handed on decrypted
        greeting = greeting_from_samples((np.sin(np.arange(800) / 5) * 6000).astype(np.int16))
        done = session.play(greeting.pcmu, clock)
        heard = []
        for _ in range(greeting.frames):
            data = await asyncio.wait_for(loop.sock_recv(peer, 2048), 2.0)
            plain = phone.unprotect(data)
            assert plain is not None, "the greeting is not protected with our key"
            heard.append(parse(plain).payload)
        await asyncio.wait_for(done, 1.0)
        assert heard == list(greeting.pcmu)
    finally:
        session.close()
        await clock.close()
        forger.close()
        peer.close()
