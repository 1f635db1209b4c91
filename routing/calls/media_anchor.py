"""Anchored media for a B2BUA call: the caller's leg answered on our own RTP port (where a greeting can play),
the callee offered a second port, and both relayed once it answers. Every anchored call uses it.

Pure helpers first (no sockets, no clock): :func:`plan_answer` (the SDP answer to the caller's offer and what
that leg negotiated), :func:`media_address` (where a leg's peer receives RTP), :func:`leg_srtp` (the SRTP
policy a leg gets: only over TLS) and :func:`ringback` (the German ringback tone, 425 Hz, 1 s on, 4 s off,
as pre-encoded frames). Then the thin shell:

* :class:`AnchoredMedia` owns a call's :class:`~media.session.RtpSession` pair (A: the caller, B: the callee,
  whose offer is shared by every device rung) and, once the callee answered, the
  :class:`~media.relay.MediaBridge` between them. :meth:`AnchoredMedia.close` releases everything. A call
  transfer puts another party in a leg's place (:meth:`~AnchoredMedia.replace`: a new session;
  :meth:`~AnchoredMedia.adopt`: a session :meth:`~AnchoredMedia.detach` took out of another call) and
  plays the ringback to the transferee meanwhile (:meth:`~AnchoredMedia.ring_back`).

SRTP (SDES, RFC 4568; ``media.sdes``): each leg has its own policy and its own keys, so the relay bridges an
SRTP leg to a plain RTP leg, or two SRTP legs with separate keys; the greeting, the ringback and the digits
go through the same sessions, protected where the leg is. Our key for a leg is made once
(``secrets.token_bytes``) and kept through renegotiations; a peer's new key in a re-INVITE is taken up. The
callee's offer is one session and one key whatever the devices rung: each gets the offer of its own policy
(``RTP/SAVP`` with the key, ``RTP/AVP`` with it, or without), and the answer says whether SRTP is used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Final

import attrs
import numpy as np

from durchwahl.media.errors import MediaError, SdpError
from durchwahl.media.greeting import Greeting, greeting_from_samples
from durchwahl.media.relay import LegMedia, MediaBridge, Side, leg_media_from_sdp
from durchwahl.media.sdes import (
    KEY_OCTETS,
    OFFERED_SUITE,
    SECURE_PROFILES,
    CryptoAttribute,
    SrtpPolicy,
    acceptable,
    answer_crypto,
    answered_crypto,
    choose_crypto,
    offer_profile,
)
from durchwahl.media.sdp import MediaDescription, Origin, SessionDescription, answer, make_offer, parse_sdp
from durchwahl.media.session import MediaClock, PortAllocator, RtpSession
from durchwahl.media.srtp import SrtpStreams
from durchwahl.sipcore.transport import Flow

__all__ = [
    "AnchoredAnswer",
    "AnchoredMedia",
    "MovedLeg",
    "leg_srtp",
    "media_address",
    "plan_answer",
    "ringback",
]

log = logging.getLogger(__name__)

_SESSION_IDS: Final = itertools.count(1)
_RINGBACK_HZ: Final = 425.0
_RINGBACK_LEVEL: Final = 0.25  # of full scale: about -15 dBm0, a comfortable tone level


@attrs.frozen
class AnchoredAnswer:
    """Our SDP answer to a leg's offer, what the leg negotiated by it (for the relay), and its SRTP keys
    (ours, the peer's; None: plain RTP)."""

    description: SessionDescription
    media: LegMedia
    remote: tuple[str, int] | None
    srtp: tuple[CryptoAttribute, CryptoAttribute] | None = None

    @property
    def body(self) -> bytes:
        return bytes(self.description)


def media_address(description: SessionDescription) -> tuple[str, int] | None:
    """Where the peer of ``description`` receives RTP: the first active audio stream's address and port."""
    for media in description.media:
        if media.media != "audio" or media.port == 0:
            continue
        connection = media.connection or description.connection
        if connection is None:
            return None
        return connection.address.split("/", 1)[0], media.port
    return None


def leg_srtp(policy: SrtpPolicy, flow: Flow) -> SrtpPolicy | None:
    """The SRTP policy a leg signalled over ``flow`` gets: its party's policy over TLS, plain RTP otherwise
    (SDES keys travel in the SDP); None: SRTP is required but the leg is not over TLS."""
    if flow.transport == "TLS":
        return policy
    return None if policy is SrtpPolicy.REQUIRED else SrtpPolicy.OFF


def plan_answer(
    offer: SessionDescription,
    origin: Origin,
    *,
    address: str,
    port: int,
    srtp: SrtpPolicy = SrtpPolicy.OFF,
    key: bytes | None = None,
) -> AnchoredAnswer:
    """Answer ``offer`` on ``address:port`` with PCMU or PCMA and telephone-event when offered; under
    ``srtp`` with our ``key`` where the accepted stream carries a usable ``a=crypto`` (``media.sdes``).

    :raises media.errors.SdpError: the offer has no audio stream with G.711 (answer 488), or none the
        policy accepts (plain RTP offered where SRTP is required, SRTP offered where it is off).
    """
    try:
        ours = answer(offer, origin, address=address, port=port, usable=lambda m: acceptable(m, srtp))
    except SdpError as exc:
        raise SdpError(_why_not(offer, srtp) or str(exc)) from None
    index = next(i for i, m in enumerate(ours.media) if m.port != 0)
    theirs = offer.media[index]
    crypto = answer_crypto(theirs, srtp, key) if key is not None else None
    keys: tuple[CryptoAttribute, CryptoAttribute] | None = None
    if crypto is not None:
        chosen = choose_crypto(theirs)
        assert chosen is not None  # answer_crypto found it
        keys = (crypto, chosen)
        accepted = ours.media[index]
        sections = list(ours.media)
        sections[index] = attrs.evolve(accepted, attributes=(*accepted.attributes, crypto.attribute()))
        ours = attrs.evolve(ours, media=tuple(sections))
    negotiated = leg_media_from_sdp(ours)
    # The relay wants the direction the leg's peer declared (its offer), with the formats we chose.
    negotiated = attrs.evolve(negotiated, direction=theirs.direction(offer.direction()))
    return AnchoredAnswer(ours, negotiated, media_address(offer), keys)


def _why_not(offer: SessionDescription, srtp: SrtpPolicy) -> str | None:
    """Why no audio stream of ``offer`` can be answered under ``srtp``, when SRTP is the reason."""
    streams = [m for m in offer.media if m.media == "audio" and m.port != 0]
    if not streams or any(acceptable(m, srtp) for m in streams):
        return None
    if srtp is SrtpPolicy.REQUIRED:
        return "SRTP is required: the offer has no usable a=crypto key"
    if srtp is SrtpPolicy.OFF and any(m.protocol in SECURE_PROFILES for m in streams):
        return "SRTP is off for this party (or it is not over TLS): RTP/SAVP is not accepted"
    if any(m.protocol in SECURE_PROFILES for m in streams):
        return "the offer's SRTP keys cannot be used (suite, MKI or session parameters)"
    return None


def _first_audio(description: SessionDescription) -> MediaDescription | None:
    return next((m for m in description.media if m.media == "audio" and m.port != 0), None)


_ringback: Greeting | None = None


def ringback() -> Greeting:
    """Five seconds of German ringback (425 Hz for 1 s, then 4 s of silence), to be played in a loop."""
    global _ringback
    if _ringback is None:
        t = np.arange(8000) / 8000.0
        tone = _RINGBACK_LEVEL * 32767 * np.sin(2 * np.pi * _RINGBACK_HZ * t)
        samples = np.concatenate([tone, np.zeros(4 * 8000)]).astype(np.int16)
        _ringback = greeting_from_samples(samples, source="ringback 425 Hz")
    return _ringback


@attrs.frozen
class MovedLeg:
    """A leg's media taken out of one call for another (attended transfer): its session (socket, latched
    peer), what it negotiated, and the last SDP we sent it (a later offer keeps that origin)."""

    session: RtpSession
    media: LegMedia
    sent: SessionDescription | None
    #: Its SRTP policy and our key on it (the session keeps its SRTP state).
    srtp: SrtpPolicy = SrtpPolicy.OFF
    key: bytes | None = None


def _declared(description: SessionDescription | None) -> str:
    """The direction ``description`` declares for its first active audio stream (none: ``sendrecv``)."""
    if description is not None:
        for media in description.media:
            if media.media == "audio" and media.port != 0:
                return media.direction(description.direction())
    return "sendrecv"


def _continue_numbering(session: RtpSession) -> None:
    """Number the session's own packets on from what a relay sent through it, so a playback or a new
    bridge after a relay never goes back in sequence numbers."""
    sender = session.sender
    sender.packets_sent = max(sender.packets_sent, session.stats.sent)


def _origin(address: str) -> Origin:
    return Origin("durchwahl", str(next(_SESSION_IDS)), 1, address, "IP6" if ":" in address else "IP4")


class AnchoredMedia:
    """The RTP sessions of one call whose media the B2BUA anchors (see the module docstring)."""

    def __init__(self, ports: PortAllocator, clock: MediaClock, address: str) -> None:
        self.ports = ports
        self.clock = clock
        self.address = address
        self.a: RtpSession | None = None
        self.a_media: LegMedia | None = None
        self.b: RtpSession | None = None
        self.bridge: MediaBridge | None = None
        self._a_origin = _origin(address)
        self._answers: dict[Side, AnchoredAnswer] = {}
        self._b_offer: SessionDescription | None = None
        #: The last SDP we sent on each leg (offer or answer): a new one keeps its origin, version + 1.
        self._sent: dict[Side, SessionDescription] = {}
        #: The leg hearing the ringback instead of the relay (:meth:`ring_back`).
        self._ringing: Side | None = None
        #: Each leg's SRTP policy, and our key for it (made on first use, kept for the call).
        self._policy = {Side.A: SrtpPolicy.OFF, Side.B: SrtpPolicy.OFF}
        self._keys: dict[Side, bytes] = {}
        #: Our offers by policy, to the callee (one session, one key, one origin: see the module docstring)
        #: and to the caller (an offerless INVITE, a click-to-call's devices).
        self._b_offers: dict[SrtpPolicy, SessionDescription] = {}
        self._a_offers: dict[SrtpPolicy, SessionDescription] = {}

    @property
    def codec(self) -> str:
        return self.a_media.codec if self.a_media is not None else "PCMU"

    def _key(self, side: Side) -> bytes:
        key = self._keys.get(side)
        if key is None:
            key = self._keys[side] = secrets.token_bytes(KEY_OCTETS)
        return key

    def _our_crypto(self, side: Side) -> CryptoAttribute:
        """The ``a=crypto`` of our offers on ``side`` (our key, the suite we offer, tag 1)."""
        return CryptoAttribute(1, OFFERED_SUITE, self._key(side))

    def _offer(
        self, side: Side, origin: Origin, port: int, policy: SrtpPolicy, **options: object
    ) -> SessionDescription:
        crypto = (self._our_crypto(side).attribute(),) if policy is not SrtpPolicy.OFF else ()
        return make_offer(
            origin,
            address=self.address,
            port=port,
            protocol=offer_profile(policy),
            attributes=crypto,
            **options,  # type: ignore[arg-type]
        )

    def _secure(
        self, side: Side, session: RtpSession, keys: tuple[CryptoAttribute, CryptoAttribute] | None
    ) -> None:
        """Put the leg's SRTP keys (ours, the peer's) in force on its session; None: plain RTP from now on."""
        if keys is None:
            session.srtp = None
        elif session.srtp is None:
            session.srtp = SrtpStreams(*keys)
        else:
            session.srtp.rekey(*keys)

    def _answered_keys(
        self, side: Side, description: SessionDescription
    ) -> tuple[CryptoAttribute, CryptoAttribute] | None:
        """The keys of leg ``side`` from the peer's answer to our offer (None: plain RTP).

        :raises media.errors.SdpError: a crypto attribute that answers nothing we offered, or none where the
            leg's policy requires SRTP.
        """
        policy = self._policy[side]
        audio = _first_audio(description)
        if audio is None:
            return None
        offered = self._our_crypto(side) if policy is not SrtpPolicy.OFF else None
        theirs = answered_crypto(offered, audio, policy)
        return None if theirs is None or offered is None else (offered, theirs)

    def secure(self, side: Side) -> bool:
        """Whether leg ``side``'s media is SRTP."""
        session = self.a if side is Side.A else self.b
        return session is not None and session.srtp is not None

    async def answer_caller(self, offer: bytes, srtp: SrtpPolicy = SrtpPolicy.OFF) -> bytes:
        """Open the caller's session and return the SDP answer to its ``offer``, SRTP as ``srtp`` (the
        caller's leg's policy, :func:`leg_srtp`) allows.

        :raises media.errors.SdpError: nothing usable offered; :raises PortsExhausted: no RTP port left.
        """
        description = parse_sdp(offer)
        self._policy[Side.A] = srtp
        key = self._key(Side.A)
        probe = plan_answer(description, self._a_origin, address=self.address, port=9, srtp=srtp, key=key)
        media = probe.media
        self.a = await self.ports.open(
            lambda: RtpSession(payload_type=media.payload_type, telephone_event_pt=media.telephone_event_pt)
        )
        planned = plan_answer(
            description, self._a_origin, address=self.address, port=self.a.local[1], srtp=srtp, key=key
        )
        self.a.remote = planned.remote  # until its first packet shows where it really sends from
        self._secure(Side.A, self.a, planned.srtp)
        self.a_media = planned.media
        self._answers[Side.A] = planned
        self._sent[Side.A] = planned.description
        return planned.body

    async def offer_caller(self, srtp: SrtpPolicy = SrtpPolicy.OFF) -> bytes:
        """Open the caller's session (once) for an offerless INVITE, or for the devices a click-to-call
        rings, and return the offer under ``srtp`` (each policy's offer has the same port, origin and key);
        the answer comes in the ACK, or the device's 2xx (:meth:`caller_answered`).

        :raises PortsExhausted: no RTP port left.
        """
        self._policy[Side.A] = srtp
        if self.a is None:
            self.a = await self.ports.open(lambda: RtpSession())
        offer = self._a_offers.get(srtp)
        if offer is None:
            offer = self._a_offers[srtp] = self._offer(Side.A, self._a_origin, self.a.local[1], srtp)
        self._sent[Side.A] = offer
        return bytes(offer)

    def caller_answered(self, answer_body: bytes, srtp: SrtpPolicy | None = None) -> None:
        """The caller's ACK (a click-to-call: the device's 2xx) brought the answer to :meth:`offer_caller`'s
        offer; ``srtp``: the policy that device was offered under (None: the last one offered).

        :raises media.errors.MediaError: no usable SDP, or plain where SRTP is required (the call flow
            hangs up).
        """
        assert self.a is not None
        if srtp is not None:
            self._policy[Side.A] = srtp
            self._sent[Side.A] = self._a_offers.get(srtp, self._sent[Side.A])
        description = parse_sdp(answer_body)
        media = leg_media_from_sdp(description)
        if media.codec not in ("PCMU", "PCMA"):
            raise MediaError(f"the caller answered {media.codec}, neither PCMU nor PCMA")
        keys = self._answered_keys(Side.A, description)
        self.a.remote = media_address(description)
        self.a.payload_type = self.a.sender.payload_type = media.payload_type
        self.a.telephone_event_pt = media.telephone_event_pt
        self._secure(Side.A, self.a, keys)
        self.a_media = media

    def answer_again(self, side: Side, offer: bytes) -> bytes:
        """The answer to a re-INVITE's offer on leg ``side``: that leg's port, the version counted up, the
        relay told about a changed direction (hold) or formats; SRTP under the leg's policy, with our key
        and the peer's key from this offer.

        :raises media.errors.SdpError: nothing usable offered.
        """
        session = self.a if side is Side.A else self.b
        assert session is not None
        planned = plan_answer(
            parse_sdp(offer),
            self._next_origin(side),
            address=self.address,
            port=session.local[1],
            srtp=self._policy[side],
            key=self._key(side),
        )
        self._secure(side, session, planned.srtp)
        self._answers[side] = planned
        self._sent[side] = planned.description
        if side is Side.A:
            self.a_media = planned.media
        if self.bridge is not None:
            self.bridge.update(side, planned.media)
        return planned.body

    async def offer_callee(self, srtp: SrtpPolicy = SrtpPolicy.OFF) -> bytes:
        """Open the callee's session (once per call) and return the SDP offer a device of policy ``srtp``
        is sent (:func:`leg_srtp`; every offer of the call has the same port, origin and key)."""
        if self.b is None or self._b_offer is None:
            self.b = await self.ports.open(lambda: RtpSession(detect_inband=False))
            self._b_offer = self._offer(Side.B, _origin(self.address), self.b.local[1], srtp)
            self._b_offers = {srtp: self._b_offer}
            self._sent[Side.B] = self._b_offer
        offer = self._b_offers.get(srtp)
        if offer is None:
            offer = self._b_offers[srtp] = self._offer(Side.B, self._b_offer.origin, self.b.local[1], srtp)
        return bytes(offer)

    def _next_origin(self, side: Side) -> Origin:
        """The origin of the next SDP we send on ``side``: the previous one's, version counted up (RFC 3264
        §8)."""
        previous = self._sent.get(side)
        if previous is None:
            return self._a_origin if side is Side.A else _origin(self.address)
        origin = previous.origin
        return attrs.evolve(origin, session_version=origin.session_version + 1)

    def offer_again(self, side: Side, direction: str) -> bytes:
        """A new offer for leg ``side`` (a re-INVITE telling it about hold or resume): the same port, the
        codec and telephone-event type it negotiated, ``direction`` (ours: ``sendonly`` while its peer holds
        … ). The leg's answer goes to :meth:`answered_again`."""
        session = self.a if side is Side.A else self.b
        assert session is not None
        current = self.a_media if side is Side.A else (self.bridge.relay.media(side) if self.bridge else None)
        codecs: tuple[str, ...] = ("PCMU", "PCMA")
        event_pt: int | None = 101
        if current is not None:
            if current.codec in codecs:
                codecs = (current.codec, *(c for c in codecs if c != current.codec))
            event_pt = current.telephone_event_pt
        # Our key again, in the profile the leg negotiated (or required); plain where the leg is plain.
        policy = self._policy[side] if session.srtp is not None else SrtpPolicy.OFF
        offer = self._offer(
            side,
            self._next_origin(side),
            session.local[1],
            policy,
            codecs=codecs,
            telephone_event_payload_type=event_pt,
            direction=direction,
        )
        self._sent[side] = offer
        return bytes(offer)

    def answered_again(self, side: Side, answer_body: bytes) -> None:
        """Leg ``side`` answered :meth:`offer_again`'s offer: the relay learns its direction and formats.

        :raises media.errors.MediaError: no usable SDP (the relay keeps what it had).
        """
        description = parse_sdp(answer_body)
        media = leg_media_from_sdp(description)
        if media.codec not in ("PCMU", "PCMA"):
            raise MediaError(f"the leg answered {media.codec}, neither PCMU nor PCMA")
        session = self.a if side is Side.A else self.b
        if session is not None and session.srtp is not None:
            self._secure(side, session, self._answered_keys(side, description))
        if side is Side.A:
            self.a_media = media
        if self.bridge is not None:
            self.bridge.update(side, media)

    def bridge_callee(self, answer_body: bytes, srtp: SrtpPolicy = SrtpPolicy.OFFERED) -> None:
        """The callee answered with ``answer_body``: relay media between the two sessions. ``srtp`` is the
        policy of the device that answered (the default takes SRTP when the answer carries a key for ours,
        as early media from any device does).

        :raises media.errors.MediaError: the answer is no usable SDP, or plain where SRTP is required (the
            call flow hangs up).
        """
        assert self.a is not None and self.b is not None and self.a_media is not None
        description = parse_sdp(answer_body)
        b_media = leg_media_from_sdp(description)
        remote = media_address(description)
        if remote is None:
            raise MediaError("the callee's answer has no audio address")
        self._policy[Side.B] = srtp
        self._secure(Side.B, self.b, self._answered_keys(Side.B, description))
        sent = self._b_offers.get(srtp)
        if sent is not None:
            self._sent[Side.B] = sent
        self.b.remote = remote
        if self.bridge is not None:
            self.bridge.close()  # early media's bridge, replaced by the answer's
        _continue_numbering(self.a)
        _continue_numbering(self.b)
        self.bridge = MediaBridge(self.a, self.b, self.a_media, b_media, self.clock)

    async def offer_replacement(self) -> tuple[RtpSession, SessionDescription]:
        """A new session and our offer on it, for a party that is to take a leg's place (a transfer target):
        :meth:`replace` puts it in, or the caller closes it. The offer is plain RTP (a transfer target gets
        no SRTP yet).

        :raises PortsExhausted: no RTP port left.
        """
        session = await self.ports.open(lambda: RtpSession(detect_inband=False))
        return session, make_offer(_origin(self.address), address=self.address, port=session.local[1])

    def replace(self, side: Side, session: RtpSession, offer: SessionDescription, answer_body: bytes) -> None:
        """The party offered ``offer`` on ``session`` answered ``answer_body``: it takes leg ``side``'s place,
        relayed to the other leg (whose session and port stay); the old session is closed.

        :raises media.errors.MediaError: no usable answer, or no bridge yet (nothing changed).
        """
        if self.bridge is None or self.a is None or self.b is None:
            raise MediaError("no bridged call to take a leg of")
        description = parse_sdp(answer_body)
        media = leg_media_from_sdp(description)
        if media.codec not in ("PCMU", "PCMA"):
            raise MediaError(f"the new party answered {media.codec}, neither PCMU nor PCMA")
        remote = media_address(description)
        if remote is None:
            raise MediaError("the new party's answer has no audio address")
        session.remote = remote
        session.srtp = None
        self._policy[side] = SrtpPolicy.OFF
        self._keys.pop(side, None)
        self._install(side, session, media)
        if side is Side.B:
            self._b_offer = offer
        self._sent[side] = offer

    def detach(self, side: Side) -> MovedLeg:
        """Take leg ``side`` out of this call, its session still open, for another call to :meth:`adopt`
        (attended transfer); the relay stops, the other leg stays (closed with the call).

        :raises media.errors.MediaError: no bridge (nothing changed).
        """
        session = self.a if side is Side.A else self.b
        if self.bridge is None or session is None:
            raise MediaError("no bridged call to take a leg of")
        moved = MovedLeg(
            session,
            self.bridge.relay.media(side),
            self._sent.pop(side, None),
            self._policy[side],
            self._keys.pop(side, None),
        )
        self.bridge.close()
        self.bridge = None
        self._answers.pop(side, None)
        if side is Side.A:
            self.a, self.a_media = None, None
        else:
            self.b, self._b_offer = None, None
        return moved

    def adopt(self, side: Side, moved: MovedLeg) -> None:
        """A leg :meth:`detach` took out of another call takes leg ``side``'s place, relayed to the other leg
        as it is (no new offer: its peer keeps sending to the same port); the old session is closed.

        :raises media.errors.MediaError: no bridge yet (nothing changed).
        """
        if self.bridge is None or self.a is None or self.b is None:
            raise MediaError("no bridged call to take a leg of")
        self._install(side, moved.session, moved.media)
        self._policy[side] = moved.srtp
        if moved.key is not None:
            self._keys[side] = moved.key
        else:
            self._keys.pop(side, None)
        if moved.sent is not None:
            self._sent[side] = moved.sent
        else:
            self._sent.pop(side, None)

    def _install(self, side: Side, session: RtpSession, media: LegMedia) -> None:
        """Put ``session`` (negotiated ``media``) in leg ``side``'s place and relay it to the other leg."""
        assert self.bridge is not None and self.a is not None and self.b is not None
        other = self.bridge.relay.media(side.other)
        self.bridge.close()
        self._ringing = None  # the new bridge stops the ringback
        old = self.a if side is Side.A else self.b
        if side is Side.A:
            self.a, self.a_media = session, media
        else:
            self.b = session
        self._answers.pop(side, None)
        a_media, b_media = (media, other) if side is Side.A else (other, media)
        _continue_numbering(self.a)
        _continue_numbering(self.b)
        self.bridge = MediaBridge(self.a, self.b, a_media, b_media, self.clock)
        if old is not session:
            old.close()

    def declared(self, side: Side) -> str:
        """The direction the last SDP we sent on leg ``side`` declared (``sendonly`` while we hold it …)."""
        return _declared(self._sent.get(side))

    def ring_back(self, side: Side) -> None:
        """Play the ringback to leg ``side`` instead of what its peer sends (a transfer target rings), until
        :meth:`relay_again` or a new party's :meth:`replace`; the relay's state is kept meanwhile."""
        session = self.a if side is Side.A else self.b
        if self.bridge is None or session is None or self._ringing is not None:
            return
        self.bridge.close()
        self._ringing = side
        _continue_numbering(session)
        session.play(ringback().frames_for(self.bridge.relay.media(side).codec), self.clock, loop=True)

    def relay_again(self) -> None:
        """End :meth:`ring_back`: relay between the two legs again, as negotiated."""
        if self._ringing is None or self.bridge is None or self.a is None or self.b is None:
            return
        self._ringing = None
        relay = self.bridge.relay
        _continue_numbering(self.a)
        _continue_numbering(self.b)
        self.bridge = MediaBridge(self.a, self.b, relay.media(Side.A), relay.media(Side.B), self.clock)

    def play_to_caller(self, greeting: Greeting, *, loop: bool = False) -> asyncio.Future[None]:
        """Play ``greeting`` to the caller in the codec its leg negotiated."""
        assert self.a is not None
        return self.a.play(greeting.frames_for(self.codec), self.clock, loop=loop)

    def stop_playing(self) -> None:
        if self.a is not None:
            self.a.stop()

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        for session in (self.a, self.b):
            if session is not None:
                session.close()
