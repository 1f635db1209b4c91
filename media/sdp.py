"""SDP (RFC 8866, formerly RFC 4566) as frozen values, and offer/answer for audio calls (RFC 3264).

Parsing is lenient: CRLF or LF line ends, static payload types without ``a=rtpmap``, ``a=fmtp`` without
``a=rtpmap``, ``c=`` at session or media level, IPv4 and IPv6, and unknown lines and attributes kept in
order. Serialisation is strict: the RFC 8866 §5 line order, CRLF line ends.

:func:`answer` answers an audio offer with one of the offered G.711 codecs (PCMU or PCMA, in our order of
preference) plus telephone-event at the same clock rate when offered, rejects every other stream with port 0
(RFC 3264 §6), and mirrors the direction (sendonly ↔ recvonly, inactive stays inactive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

import attrs

from .errors import SdpError

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "Attribute",
    "Connection",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "answer",
    "make_offer",
    "parse_sdp",
]

#: Static audio payload types (RFC 3551 §6) that may appear without ``a=rtpmap``.
STATIC_PAYLOAD_TYPES: Final = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
    18: ("G729", 8000, 1),
}
_DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION: Final = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_SESSION_ORDER: Final = "vosiuepcbtrzkam"


@attrs.frozen
class Attribute:
    """``a=name`` (a property, ``value`` is ``None``) or ``a=name:value``."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@attrs.frozen
class Connection:
    """``c=IN IP4 address`` (``address`` may carry a multicast ``/ttl`` suffix, kept as given)."""

    address: str
    address_type: str = "IP4"
    network_type: str = "IN"

    def __str__(self) -> str:
        return f"{self.network_type} {self.address_type} {self.address}"


@attrs.frozen
class Origin:
    username: str
    session_id: str
    session_version: int
    address: str
    address_type: str = "IP4"
    network_type: str = "IN"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.network_type} {self.address_type} {self.address}"
        )


@attrs.frozen
class RtpMap:
    """One RTP payload format: ``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]``."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    def __str__(self) -> str:
        channels = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{channels}"


@attrs.frozen
class MediaDescription:
    """One ``m=`` section and the lines below it, in order."""

    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    port_count: int | None = None
    connection: Connection | None = None
    lines: tuple[tuple[str, str], ...] = ()  # i=, b=, k= lines, as (type, value)
    attributes: tuple[Attribute, ...] = ()

    def attribute_values(self, name: str) -> tuple[str, ...]:
        return tuple(a.value or "" for a in self.attributes if a.name == name)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The payload format of ``payload_type``: its ``a=rtpmap``, or the static assignment."""
        for value in self.attribute_values("rtpmap"):
            number, _, description = value.partition(" ")
            if number.strip() == str(payload_type):
                return _parse_rtpmap(payload_type, description)
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        return RtpMap(payload_type, *static) if static else None

    def fmtp(self, payload_type: int) -> str | None:
        for value in self.attribute_values("fmtp"):
            number, _, parameters = value.partition(" ")
            if number == str(payload_type):
                return parameters.strip()
        return None

    def rtp_maps(self) -> tuple[RtpMap, ...]:
        """The payload formats of the ``m=`` line that are known, in the offered order."""
        maps = []
        for fmt in self.formats:
            if fmt.isdigit() and (found := self.rtpmap(int(fmt))) is not None:
                maps.append(found)
        return tuple(maps)

    def direction(self, default: str = "sendrecv") -> str:
        for attribute in self.attributes:
            if attribute.value is None and attribute.name in _DIRECTIONS:
                return attribute.name
        return default


@attrs.frozen
class SessionDescription:
    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    times: tuple[tuple[str, str], ...] = (("t", "0 0"),)  # t= and r= lines, as (type, value)
    lines: tuple[tuple[str, str], ...] = ()  # i=, u=, e=, p=, b=, z=, k= lines, as (type, value)
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()
    version: int = 0

    def direction(self) -> str:
        for attribute in self.attributes:
            if attribute.value is None and attribute.name in _DIRECTIONS:
                return attribute.name
        return "sendrecv"

    def __str__(self) -> str:
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name or '-'}"]
        ordered = sorted(self.lines, key=lambda line: _SESSION_ORDER.index(line[0]))
        out += [f"{kind}={value}" for kind, value in ordered if kind in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{kind}={value}" for kind, value in ordered if kind == "b"]
        out += [f"{kind}={value}" for kind, value in self.times]
        out += [f"{kind}={value}" for kind, value in ordered if kind in "zk"]
        out += [f"a={attribute}" for attribute in self.attributes]
        for media in self.media:
            ports = str(media.port) if media.port_count is None else f"{media.port}/{media.port_count}"
            out.append(f"m={media.media} {ports} {' '.join((media.protocol, *media.formats))}")
            out += [f"i={value}" for kind, value in media.lines if kind == "i"]
            if media.connection is not None:
                out.append(f"c={media.connection}")
            out += [f"{kind}={value}" for kind, value in media.lines if kind in "bk"]
            out += [f"a={attribute}" for attribute in media.attributes]
        return "\r\n".join(out) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")


def _parse_rtpmap(payload_type: int, description: str) -> RtpMap:
    parts = description.strip().split("/")
    try:
        clock_rate = int(parts[1])
        channels = int(parts[2]) if len(parts) > 2 and parts[2] else 1
    except (IndexError, ValueError):
        raise SdpError(f"malformed rtpmap for payload type {payload_type}: {description!r}") from None
    return RtpMap(payload_type, parts[0], clock_rate, channels)


def _parse_connection(value: str, line_number: int) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise SdpError(f"line {line_number}: c= needs three fields, got {value!r}")
    return Connection(fields[2], fields[1], fields[0])


@attrs.define
class _MediaBuilder:
    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    port_count: int | None
    connection: Connection | None = None
    lines: list[tuple[str, str]] = attrs.Factory(list)
    attributes: list[Attribute] = attrs.Factory(list)

    def build(self) -> MediaDescription:
        return MediaDescription(
            self.media,
            self.port,
            self.protocol,
            self.formats,
            self.port_count,
            self.connection,
            tuple(self.lines),
            tuple(self.attributes),
        )


def parse_sdp(data: str | bytes) -> SessionDescription:
    """Parse a session description.

    :raises SdpError: with the line number, for a missing or malformed v=, o= or m= line, a malformed c=
        line, or a line that is not ``<letter>=<value>``.
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    origin: Origin | None = None
    version: int | None = None
    session_name = "-"
    connection: Connection | None = None
    times: list[tuple[str, str]] = []
    lines: list[tuple[str, str]] = []
    attributes: list[Attribute] = []
    media: list[MediaDescription] = []
    current: _MediaBuilder | None = None

    def close_media() -> None:
        if current is not None:
            media.append(current.build())

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {number}: expected <type>=<value>, got {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            close_media()
            fields = value.split()
            if len(fields) < 3:
                raise SdpError(f"line {number}: m= needs media, port and protocol, got {value!r}")
            port_text, _, count_text = fields[1].partition("/")
            try:
                port = int(port_text)
                port_count = int(count_text) if count_text else None
            except ValueError:
                raise SdpError(f"line {number}: bad port {fields[1]!r}") from None
            if not 0 <= port <= 65535:
                raise SdpError(f"line {number}: port {port} is outside 0…65535")
            current = _MediaBuilder(fields[0], port, fields[2], tuple(fields[3:]), port_count)
            continue
        if kind == "a":
            name, colon, attribute_value = value.partition(":")
            attribute = Attribute(name, attribute_value if colon else None)
            if current is not None:
                current.attributes.append(attribute)
            else:
                attributes.append(attribute)
        elif kind == "c":
            parsed = _parse_connection(value, number)
            if current is not None:
                current.connection = parsed
            else:
                connection = parsed
        elif current is not None:
            current.lines.append((kind, value))
        elif kind == "v":
            try:
                version = int(value)
            except ValueError:
                raise SdpError(f"line {number}: bad version {value!r}") from None
        elif kind == "o":
            fields = value.split()
            if len(fields) != 6 or not fields[2].isdigit():
                raise SdpError(f"line {number}: o= needs six fields and a numeric version, got {value!r}")
            origin = Origin(fields[0], fields[1], int(fields[2]), fields[5], fields[4], fields[3])
        elif kind == "s":
            session_name = value
        elif kind in "tr":
            times.append((kind, value))
        else:
            lines.append((kind, value))
    close_media()
    if version is None:
        raise SdpError("no v= line")
    if origin is None:
        raise SdpError("no o= line")
    return SessionDescription(
        origin,
        session_name,
        connection,
        tuple(times) or (("t", "0 0"),),
        tuple(lines),
        tuple(attributes),
        tuple(media),
        version,
    )


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _audio_section(
    port: int,
    maps: Sequence[RtpMap],
    fmtps: Iterable[tuple[int, str]],
    direction: str,
    ptime: int | None,
    protocol: str = "RTP/AVP",
    extra: Sequence[Attribute] = (),
) -> MediaDescription:
    attributes = [Attribute("rtpmap", str(m)) for m in maps]
    attributes += [Attribute("fmtp", f"{pt} {parameters}") for pt, parameters in fmtps]
    if ptime is not None:
        attributes.append(Attribute("ptime", str(ptime)))
    attributes.append(Attribute(direction))
    attributes += extra
    return MediaDescription(
        "audio", port, protocol, tuple(str(m.payload_type) for m in maps), attributes=tuple(attributes)
    )


def make_offer(
    origin: Origin,
    *,
    address: str,
    port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    telephone_event_payload_type: int | None = 101,
    direction: str = "sendrecv",
    ptime: int | None = 20,
    protocol: str = "RTP/AVP",
    attributes: Sequence[Attribute] = (),
) -> SessionDescription:
    """An offer with one audio stream: the given G.711 codecs and telephone-event 0-15 at 8 kHz, on
    ``protocol`` (``RTP/SAVP`` for SRTP), with ``attributes`` added to it (``a=crypto``)."""
    if direction not in _DIRECTIONS:
        raise SdpError(f"unknown direction {direction!r}")
    static = {name: pt for pt, (name, _, _) in STATIC_PAYLOAD_TYPES.items()}
    try:
        maps = [RtpMap(static[name], name, 8000) for name in codecs]
    except KeyError as exc:
        raise SdpError(f"no static payload type for codec {exc.args[0]!r}") from None
    fmtps: list[tuple[int, str]] = []
    if telephone_event_payload_type is not None:
        maps.append(RtpMap(telephone_event_payload_type, "telephone-event", 8000))
        fmtps.append((telephone_event_payload_type, "0-15"))
    return SessionDescription(
        origin,
        connection=Connection(address, _address_type(address)),
        media=(_audio_section(port, maps, fmtps, direction, ptime, protocol, attributes),),
    )


def answer(
    offer: SessionDescription,
    origin: Origin,
    *,
    address: str,
    port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    usable: Callable[[MediaDescription], bool] | None = None,
) -> SessionDescription:
    """Answer ``offer`` (RFC 3264 §6): the first audio stream with a usable codec is accepted on ``port``,
    every other stream is rejected with port 0 and keeps its formats. ``usable`` says which streams may be
    accepted at all (default: ``RTP/AVP`` and ``RTP/AVPF``; SRTP answerers pass ``media.sdes.acceptable``);
    an accepted stream keeps its protocol.

    :raises SdpError: no audio stream offers PCMU or PCMA (the caller answers 488 Not Acceptable Here).
    """
    accepted = False
    sections = []
    for media in offer.media:
        fits = usable(media) if usable is not None else media.protocol in ("RTP/AVP", "RTP/AVPF")
        section = None if accepted or not fits else _answer_audio(media, offer, port, codecs)
        if section is None:
            sections.append(
                MediaDescription(media.media, 0, media.protocol, media.formats or ("0",), port_count=None)
            )
        else:
            sections.append(section)
            accepted = True
    if not accepted:
        raise SdpError(f"no audio stream in the offer has one of {', '.join(codecs)}")
    return SessionDescription(
        origin,
        connection=Connection(address, _address_type(address)),
        times=offer.times,
        media=tuple(sections),
    )


def _answer_audio(
    media: MediaDescription, offer: SessionDescription, port: int, codecs: Sequence[str]
) -> MediaDescription | None:
    if media.media != "audio" or media.port == 0:
        return None
    offered = media.rtp_maps()
    chosen = next(
        (
            m
            for name in codecs
            for m in offered
            if m.encoding.upper() == name.upper() and m.clock_rate == 8000
        ),
        None,
    )
    if chosen is None:
        return None
    chosen = attrs.evolve(chosen, encoding=chosen.encoding.upper())
    maps = [chosen]
    fmtps = []
    event = next(
        (m for m in offered if m.encoding.lower() == "telephone-event" and m.clock_rate == chosen.clock_rate),
        None,
    )
    if event is not None:
        maps.append(attrs.evolve(event, encoding="telephone-event"))
        fmtps.append((event.payload_type, media.fmtp(event.payload_type) or "0-15"))
    ptime_values = media.attribute_values("ptime")
    ptime = int(ptime_values[0]) if ptime_values and ptime_values[0].isdigit() else None
    direction = _ANSWER_DIRECTION[media.direction(offer.direction())]
    return attrs.evolve(_audio_section(port, maps, fmtps, direction, ptime), protocol=media.protocol)
