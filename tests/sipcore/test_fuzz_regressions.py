"""Inputs that crashed (or fooled) the parser or the framer: found by fuzz/fuzz_parse.py or by reading code.

Contract: ``parse_message`` returns a message or raises ``SipParseError``; typed accessors raise only
``SipParseError``; ``StreamFramer.feed`` returns events or raises ``SipParseError``. A plain ``ValueError`` is
*not* enough: callers catch ``SipParseError`` to answer 400, anything else escapes to the transport.

Each test names the code that was at fault; all were fixed in sipcore and stay here as guards. The last group
are lenient-parsing defects (a wrong answer, no crash).
"""

from __future__ import annotations

import contextlib

import pytest

from durchwahl.sipcore import SipParseError, StreamFramer, parse_message

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Expires: 120\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

SUPERSCRIPT_TWO = (
    "²".encode()
)  # str.isdigit() is True, int() raises ValueError: the root of the crashes below


def _parses_or_raises_sip_parse_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError:
        return
    for name in ("via", "cseq", "max_forwards", "expires", "contact", "content_type"):
        with contextlib.suppress(SipParseError):
            getattr(message, name)


# ---- str.isdigit() accepts non-ASCII digits ('²', '①' …) that int() rejects: ValueError escapes ------------
# sipcore/message.py  _content_length, _parse_response (status code), max_forwards
# sipcore/headers.py  _parse_hostport (Via port), parse_via (rport), parse_cseq, parse_delta_seconds


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Content-Length: 0", b"Content-Length: " + SUPERSCRIPT_TWO),
        (b"CSeq: 1 INVITE", b"CSeq: " + SUPERSCRIPT_TWO + b" INVITE"),
        (b"Max-Forwards: 70", b"Max-Forwards: 70" + SUPERSCRIPT_TWO),
        (b"example.com:5060;", b"example.com:" + SUPERSCRIPT_TWO + b";"),
        (b";rport", b";rport=" + SUPERSCRIPT_TWO),
        (b"Expires: 120", b"Expires: " + SUPERSCRIPT_TWO),
    ],
    ids=["content-length", "cseq", "max-forwards", "via-port", "via-rport", "expires"],
)
def test_non_ascii_digit_in_a_number_is_a_parse_error(old: bytes, new: bytes) -> None:
    data = INVITE.replace(old, new, 1)
    assert data != INVITE
    _parses_or_raises_sip_parse_error(data)


def test_non_ascii_digits_as_status_code() -> None:
    _parses_or_raises_sip_parse_error(
        b"SIP/2.0 " + SUPERSCRIPT_TWO * 3 + b" OK\r\n" + INVITE.split(b"\r\n", 1)[1]
    )


def test_fuzz_crash_1238aa38_max_forwards_with_superscript() -> None:
    """fuzz/crash-1238aa38b64b40bbc5dc294397fd5036de802bd1 (minimised to the header that matters)."""
    data = (
        b"MESSAGE sip:kumiko@example.org SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\r\n"
        b"Max-Forwards: 70\xc2\xb2\r\n"
        b"To: <sip:kumiko@example.org>\r\n"
        b"From: <sip:fluffy@example.com>;tag=2fb0dcc9\r\n"
        b"Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..\r\n"
        b"CSeq: 1 MESSAGE\r\n"
        b"\r\n"
    )
    _parses_or_raises_sip_parse_error(data)


# ---- StreamFramer._next recurses once per stray CR or LF: RecursionError -----------------------------------
# sipcore/framing.py  StreamFramer._next: "del buf[:1]; return None if not buf else self._next()"


@pytest.mark.parametrize("junk", [b"\n", b"\r"], ids=["lf", "cr"])
def test_many_stray_line_ends_between_messages(junk: bytes) -> None:
    framer = StreamFramer()
    try:
        framer.feed(junk * 5000)
    except SipParseError:
        return


# ---- lenient-parsing defects (wrong answers, no crash) -----------------------------------------------------


def test_non_ascii_decimal_status_code_is_rejected() -> None:
    """Arabic-Indic digits pass str.isdigit() and int(): the status was read as 100."""
    data = b"SIP/2.0 \xd9\xa1\xd9\xa0\xd9\xa0 Trying\r\n" + INVITE.split(b"\r\n", 1)[1]
    with pytest.raises(SipParseError):
        parse_message(data)


def test_non_ascii_digits_in_sip_version_are_rejected() -> None:
    """_VERSION_RE used \\d (any Unicode decimal): 'SIP/\u0662.\u0660' was taken for 2.0."""
    data = INVITE.replace(b"SIP/2.0\r\n", "SIP/\u0662.\u0660\r\n".encode(), 1)
    with pytest.raises(SipParseError):
        parse_message(data)


@pytest.mark.parametrize("separator", ["\u00a0", "\u2028", "\x1c", "\x0b"], ids=["nbsp", "ls", "fs", "vt"])
def test_request_line_separators_are_sp_only(separator: str) -> None:
    """The request line was split with str.split(), so any Unicode whitespace separated its parts."""
    data = INVITE.replace(b"INVITE sip:", f"INVITE{separator}sip:".encode(), 1)
    with pytest.raises(SipParseError):
        parse_message(data)


def test_deferred_framing_error_is_the_same_whatever_the_chunking() -> None:
    """Fuzz artifact crash-b42fc45e: a pong, then a message without Content-Length. One chunk used to report
    the pong and no error (the error was deferred to the next feed), a split feed the error."""
    stream = b"\r\no" + b"\r\n\r\n" + b"\r\no"
    outcomes = []
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        events: list[object] = []
        error = None
        for chunk in (stream[:cut], stream[cut:], b""):
            try:
                events += framer.feed(chunk)
            except SipParseError as exc:
                error = str(exc)
                break
        outcomes.append((events, error))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert outcomes[0][1] is not None
