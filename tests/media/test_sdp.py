"""SDP parsing (lenient), serialisation (strict) and RFC 3264 offer/answer for audio."""

from __future__ import annotations

import pytest

from durchwahl.media.errors import SdpError
from durchwahl.media.sdp import (
    Attribute,
    Connection,
    Origin,
    RtpMap,
    answer,
    make_offer,
    parse_sdp,
)

ORIGIN = Origin("durchwahl", "42", 1, "192.0.2.10")

# A typical phone offer: c= at session level, PCMA and PCMU without rtpmap, telephone-event with fmtp,
# an unknown attribute, LF line ends, and a video stream we do not take.
PHONE_OFFER = """v=0
o=alice 2890844526 2890844526 IN IP4 198.51.100.7
s=call
c=IN IP4 198.51.100.7
t=0 0
a=tool:phone 1.0
m=audio 49170 RTP/AVP 8 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=x-unknown:keep me
a=ptime:20
a=sendrecv
m=video 51372 RTP/AVP 31
a=rtpmap:31 H261/90000
"""


def test_parse_a_phone_offer() -> None:
    sdp = parse_sdp(PHONE_OFFER)
    assert sdp.origin == Origin("alice", "2890844526", 2890844526, "198.51.100.7")
    assert sdp.connection == Connection("198.51.100.7")
    assert sdp.attributes == (Attribute("tool", "phone 1.0"),)
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.protocol, audio.formats) == (
        "audio",
        49170,
        "RTP/AVP",
        ("8", "0", "101"),
    )
    assert audio.connection is None
    assert audio.rtp_maps() == (
        RtpMap(8, "PCMA", 8000),
        RtpMap(0, "PCMU", 8000),
        RtpMap(101, "telephone-event", 8000),
    )
    assert audio.fmtp(101) == "0-16"
    assert audio.attributes[2] == Attribute("x-unknown", "keep me")
    assert audio.direction() == "sendrecv"
    assert video.rtpmap(31) == RtpMap(31, "H261", 90000)


def test_serialisation_is_canonical_and_round_trips() -> None:
    sdp = parse_sdp(PHONE_OFFER)
    text = str(sdp)
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    assert text.splitlines()[:5] == [
        "v=0",
        "o=alice 2890844526 2890844526 IN IP4 198.51.100.7",
        "s=call",
        "c=IN IP4 198.51.100.7",
        "t=0 0",
    ]
    assert parse_sdp(text) == sdp
    assert parse_sdp(bytes(sdp)) == sdp
    assert "a=x-unknown:keep me\r\na=ptime:20\r\na=sendrecv\r\n" in text


def test_lenient_lines_ipv6_media_level_connection_and_extra_lines() -> None:
    text = (
        "v=0\r\no=- 1 2 IN IP6 2001:db8::1\r\ns=\r\ni=info\r\nb=AS:64\r\nt=0 0\r\n"
        "m=audio 5004/2 RTP/AVP 0 96\r\nc=IN IP6 2001:db8::2\r\nb=TIAS:64000\r\na=fmtp:96 mode=30\r\n"
    )
    sdp = parse_sdp(text)
    assert sdp.origin.address_type == "IP6"
    assert sdp.connection is None
    (audio,) = sdp.media
    assert audio.connection == Connection("2001:db8::2", "IP6")
    assert (audio.port, audio.port_count) == (5004, 2)
    assert audio.lines == (("b", "TIAS:64000"),)
    assert audio.rtp_maps() == (RtpMap(0, "PCMU", 8000),)  # 96 has an fmtp but no rtpmap
    assert audio.fmtp(96) == "mode=30"
    assert sdp.lines == (("i", "info"), ("b", "AS:64"))
    again = str(sdp)
    assert "s=-\r\ni=info\r\nb=AS:64\r\nt=0 0\r\n" in again
    assert "m=audio 5004/2 RTP/AVP 0 96\r\nc=IN IP6 2001:db8::2\r\nb=TIAS:64000\r\n" in again


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("o=- 1 1 IN IP4 1.2.3.4\ns=-\n", "no v= line"),
        ("v=0\ns=-\n", "no o= line"),
        ("v=0\no=- 1 x IN IP4 1.2.3.4\n", "line 2: o="),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4\n", "line 3: c="),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio\n", "line 3: m="),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio x RTP/AVP 0\n", "bad port"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 70000 RTP/AVP 0\n", "outside"),
        ("v=0\nhello\n", "line 2: expected"),
        ("v=zero\n", "bad version"),
    ],
)
def test_malformed_sdp_raises(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_sdp(text)


def test_malformed_rtpmap_raises_when_used() -> None:
    sdp = parse_sdp("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 1 RTP/AVP 96\na=rtpmap:96 opus\n")
    with pytest.raises(SdpError, match="rtpmap"):
        sdp.media[0].rtp_maps()


def test_answer_picks_our_preferred_codec_and_rejects_video() -> None:
    result = answer(parse_sdp(PHONE_OFFER), ORIGIN, address="192.0.2.10", port=20000)
    audio, video = result.media
    assert audio.port == 20000
    assert audio.formats == ("0", "101")
    assert audio.rtp_maps() == (RtpMap(0, "PCMU", 8000), RtpMap(101, "telephone-event", 8000))
    assert audio.fmtp(101) == "0-16"
    assert audio.attribute_values("ptime") == ("20",)
    assert audio.direction() == "sendrecv"
    assert (video.media, video.port, video.formats) == ("video", 0, ("31",))
    assert result.connection == Connection("192.0.2.10")
    assert str(result).startswith(
        "v=0\r\no=durchwahl 42 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    )


def test_answer_honours_codec_preference_and_ipv6() -> None:
    result = answer(parse_sdp(PHONE_OFFER), ORIGIN, address="2001:db8::5", port=20000, codecs=("PCMA",))
    assert result.media[0].formats == ("8", "101")
    assert result.connection == Connection("2001:db8::5", "IP6")


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"), ("sendrecv", "sendrecv")],
)
def test_answer_mirrors_direction(offered: str, answered: str) -> None:
    text = PHONE_OFFER.replace("a=sendrecv", f"a={offered}")
    assert answer(parse_sdp(text), ORIGIN, address="192.0.2.10", port=1).media[0].direction() == answered


def test_answer_uses_session_level_direction() -> None:
    text = PHONE_OFFER.replace("a=sendrecv\n", "").replace("a=tool:phone 1.0", "a=sendonly")
    assert answer(parse_sdp(text), ORIGIN, address="192.0.2.10", port=1).media[0].direction() == "recvonly"


def test_answer_without_telephone_event_or_at_another_rate() -> None:
    text = PHONE_OFFER.replace("telephone-event/8000", "telephone-event/48000")
    audio = answer(parse_sdp(text), ORIGIN, address="192.0.2.10", port=1).media[0]
    assert audio.formats == ("0",)
    assert audio.fmtp(101) is None


def test_answer_rejects_an_offer_without_g711() -> None:
    text = "v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4\nt=0 0\nm=audio 4000 RTP/AVP 18\n"
    with pytest.raises(SdpError, match="PCMU, PCMA"):
        answer(parse_sdp(text), ORIGIN, address="192.0.2.10", port=1)


def test_answer_accepts_only_the_first_usable_audio_stream() -> None:
    text = PHONE_OFFER + "m=audio 6000 RTP/AVP 0\n"
    result = answer(parse_sdp(text), ORIGIN, address="192.0.2.10", port=7)
    assert [m.port for m in result.media] == [7, 0, 0]


def test_make_offer_and_answer_it() -> None:
    offer = make_offer(ORIGIN, address="192.0.2.10", port=30000)
    text = str(offer)
    assert "m=audio 30000 RTP/AVP 0 8 101\r\n" in text
    assert "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n" in text
    assert "a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n" in text
    assert parse_sdp(text) == offer
    reply = answer(offer, Origin("bob", "7", 1, "192.0.2.20"), address="192.0.2.20", port=40000)
    assert reply.media[0].formats == ("0", "101")


def test_make_offer_rejects_unknown_codecs_and_directions() -> None:
    with pytest.raises(SdpError, match="opus"):
        make_offer(ORIGIN, address="192.0.2.10", port=1, codecs=("opus",))
    with pytest.raises(SdpError, match="direction"):
        make_offer(ORIGIN, address="192.0.2.10", port=1, direction="both")
