"""SRTP (RFC 3711) for one call leg through libsrtp (``pylibsrtp``, installed with aiortc): what we send is
protected with our key, what arrives is authenticated and decrypted with the key the peer's SDP gave
(``media.sdes``). No cryptography of our own. Pure in the sense of this package: no I/O, no clock.

RTCP is not sent by durchwahl, and SRTCP that arrives is dropped unread (as plain RTCP is).
"""

from __future__ import annotations

from typing import Final

import pylibsrtp

from .errors import MediaError
from .sdes import CryptoAttribute

__all__ = ["SrtpError", "SrtpStreams"]

_PROFILES: Final = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


class SrtpError(MediaError):
    """A packet could not be protected (too long, or libsrtp refused it)."""


def _session(crypto: CryptoAttribute, *, outbound: bool) -> pylibsrtp.Session:
    try:
        profile = _PROFILES[crypto.suite]
    except KeyError:
        raise SrtpError(f"crypto suite {crypto.suite} is not supported") from None
    policy = pylibsrtp.Policy(
        key=crypto.key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )
    if outbound:
        # A relay resends nothing, but a late packet keeps its (lower) sequence number: allowed.
        policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


class SrtpStreams:
    """The SRTP of one leg: ``send`` is our key (in our SDP), ``receive`` the peer's (in its SDP)."""

    def __init__(self, send: CryptoAttribute, receive: CryptoAttribute) -> None:
        self.send = send
        self.receive = receive
        self._out = _session(send, outbound=True)
        self._in = _session(receive, outbound=False)
        #: Packets that failed authentication (or replay protection) and were dropped.
        self.rejected = 0

    def rekey(self, send: CryptoAttribute, receive: CryptoAttribute) -> None:
        """New keys from a renegotiation (a re-INVITE): a direction whose key changed starts afresh."""
        if send != self.send:
            self.send, self._out = send, _session(send, outbound=True)
        if receive != self.receive:
            self.receive, self._in = receive, _session(receive, outbound=False)

    def protect(self, packet: bytes) -> bytes:
        """The SRTP packet for an RTP packet we send. Raises :class:`SrtpError`."""
        try:
            return self._out.protect(packet)
        except (pylibsrtp.Error, ValueError) as exc:
            raise SrtpError(f"cannot protect an RTP packet: {exc}") from None

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet in an SRTP packet that arrived; None when it does not authenticate (forged,
        replayed, or not SRTP at all): counted in :attr:`rejected`."""
        try:
            return self._in.unprotect(packet)
        except (pylibsrtp.Error, ValueError):
            self.rejected += 1
            return None
