"""SDES key exchange for SRTP (RFC 4568): the ``a=crypto`` attribute, and what a leg's SRTP policy makes of
an offer or an answer. Pure: keys come from the caller (``secrets.token_bytes(KEY_OCTETS)``).

A policy (:class:`SrtpPolicy`) says what one leg gets:

* ``off`` — plain RTP only. We offer ``RTP/AVP`` without ``a=crypto``; an ``RTP/SAVP`` stream offered to
  us is refused, an ``RTP/AVP`` one with ``a=crypto`` is answered without (plain RTP, RFC 4568 §7.1.2).
* ``offered`` — SRTP where the peer takes it: our offers are ``RTP/AVP`` with ``a=crypto`` (a peer without
  SRTP ignores the attribute and answers plain RTP; SRTP only when its answer carries a key, as Asterisk's
  and FreeSWITCH's optional SRTP do); offers are answered with SRTP when they carry a usable key
  (``RTP/SAVP``, or ``RTP/AVP`` with ``a=crypto``), else with plain RTP.
* ``required`` — SRTP or no media: our offers are ``RTP/SAVP`` with ``a=crypto``, and a stream without a
  usable key is refused (the call gets 488).

Supported crypto suites: ``AES_CM_128_HMAC_SHA1_80`` (what we offer) and ``AES_CM_128_HMAC_SHA1_32``. Key
parameters with an MKI, and session parameters (``UNENCRYPTED_SRTP``, ``KDR=`` …), make a crypto line
unusable: another line of the offer may still be chosen.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from typing import Final

import attrs

from .errors import SdpError
from .sdp import Attribute, MediaDescription

__all__ = [
    "KEY_OCTETS",
    "OFFERED_SUITE",
    "PLAIN_PROFILES",
    "SECURE_PROFILES",
    "SUITES",
    "CryptoAttribute",
    "SrtpPolicy",
    "acceptable",
    "answer_crypto",
    "answered_crypto",
    "choose_crypto",
    "offer_profile",
    "parse_crypto",
]


class SrtpPolicy(enum.Enum):
    """What one leg gets (see the module docstring)."""

    OFF = "off"
    OFFERED = "offered"
    REQUIRED = "required"


#: The crypto suites we speak, with the length of their authentication tag in octets.
SUITES: Final = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4}
#: The suite our offers carry.
OFFERED_SUITE: Final = "AES_CM_128_HMAC_SHA1_80"
#: The master key and salt of those suites: 16 + 14 octets.
KEY_OCTETS: Final = 30
PLAIN_PROFILES: Final = ("RTP/AVP", "RTP/AVPF")
SECURE_PROFILES: Final = ("RTP/SAVP", "RTP/SAVPF")

_CRYPTO_RE: Final = re.compile(r"([0-9]{1,9})[ \t]+([A-Za-z0-9_]+)[ \t]+(\S+)((?:[ \t]+\S+)*)[ \t]*")
_LIFETIME_RE: Final = re.compile(r"(?:2\^)?[0-9]{1,20}")


@attrs.frozen
class CryptoAttribute:
    """``a=crypto:<tag> <suite> inline:<key||salt>`` (RFC 4568 §4, one inline key, no MKI)."""

    tag: int
    suite: str
    key: bytes = attrs.field(repr=False)

    def __str__(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode('ascii')}"

    def attribute(self) -> Attribute:
        return Attribute("crypto", str(self))


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse the value of an ``a=crypto`` attribute of a suite we speak.

    :raises SdpError: malformed, an unknown suite, a key of the wrong length, several keys, an MKI or
        session parameters (all of which we cannot honour).
    """
    match = _CRYPTO_RE.fullmatch(value.strip())
    if match is None:
        raise SdpError(f"malformed crypto attribute {value[:60]!r}")
    tag_text, suite, key_params, session = match.groups()
    if suite not in SUITES:
        raise SdpError(f"crypto suite {suite} is not supported (only {', '.join(SUITES)})")
    if session.strip():
        raise SdpError(f"crypto session parameters are not supported: {session.strip()[:60]}")
    if ";" in key_params:
        raise SdpError("several keys in one crypto attribute are not supported")
    method, colon, info = key_params.partition(":")
    if method.lower() != "inline" or not colon:
        raise SdpError(f"crypto key method {method!r} is not 'inline'")
    key_text, *extras = info.split("|")
    if len(extras) > 2 or any(":" in extra for extra in extras):
        raise SdpError("crypto keys with an MKI are not supported")
    if extras and _LIFETIME_RE.fullmatch(extras[0]) is None:
        raise SdpError(f"malformed crypto key lifetime {extras[0]!r}")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise SdpError("the crypto key is not base64") from None
    if len(key) != KEY_OCTETS:
        raise SdpError(f"the crypto key has {len(key)} octets; {suite} needs {KEY_OCTETS}")
    return CryptoAttribute(int(tag_text), suite, key)


def choose_crypto(media: MediaDescription) -> CryptoAttribute | None:
    """The first usable ``a=crypto`` of an offered stream (RFC 4568 §7.1.1: in the offerer's order of
    preference), None when none is."""
    for value in media.attribute_values("crypto"):
        try:
            return parse_crypto(value)
        except SdpError:
            continue
    return None


def acceptable(media: MediaDescription, policy: SrtpPolicy) -> bool:
    """Whether an offered stream's transport can be answered under ``policy`` (codecs aside)."""
    if media.protocol in PLAIN_PROFILES:
        return policy is not SrtpPolicy.REQUIRED or choose_crypto(media) is not None
    if media.protocol in SECURE_PROFILES:
        return policy is not SrtpPolicy.OFF and choose_crypto(media) is not None
    return False


def answer_crypto(offered: MediaDescription, policy: SrtpPolicy, key: bytes) -> CryptoAttribute | None:
    """The ``a=crypto`` our answer to the accepted stream ``offered`` carries, with our ``key``: the tag and
    suite of the line chosen from the offer; None: the answer is plain RTP."""
    if policy is SrtpPolicy.OFF:
        return None
    chosen = choose_crypto(offered)
    return None if chosen is None else CryptoAttribute(chosen.tag, chosen.suite, key)


def offer_profile(policy: SrtpPolicy) -> str:
    """The transport of the audio stream we offer under ``policy``."""
    return "RTP/SAVP" if policy is SrtpPolicy.REQUIRED else "RTP/AVP"


def answered_crypto(
    offered: CryptoAttribute | None, answer: MediaDescription, policy: SrtpPolicy
) -> CryptoAttribute | None:
    """The peer's key from its answer to our offer (which carried ``offered``); None: plain RTP.

    :raises SdpError: a key that answers nothing we offered, or none where ``policy`` requires one.
    """
    values = answer.attribute_values("crypto")
    if offered is None or not values:
        if policy is SrtpPolicy.REQUIRED:
            raise SdpError("the answer carries no SRTP key, and SRTP is required")
        return None
    for value in values:
        chosen = parse_crypto(value)
        if chosen.tag == offered.tag and chosen.suite == offered.suite:
            return chosen
    raise SdpError(f"the answer's crypto attribute does not answer ours (tag {offered.tag}, {offered.suite})")
