"""Atheris harness for the SIP message parser and the stream framer.

Run (``make fuzz`` does the first)::

    .venv/bin/python fuzz/fuzz_parse.py -max_total_time=600 fuzz/corpus      # both targets
    FUZZ_TARGET=parse .venv/bin/python fuzz/fuzz_parse.py fuzz/corpus         # parse_message only
    FUZZ_TARGET=frame .venv/bin/python fuzz/fuzz_parse.py fuzz/corpus         # StreamFramer only
    .venv/bin/python fuzz/fuzz_parse.py fuzz/crash-<sha>                       # replay one input

The seed corpus (``fuzz/corpus/``, gitignored) is built on first use, or by hand with ``.venv/bin/python
fuzz/seed.py``: the RFC 4475/5118 torture messages plus a few everyday messages.

Targets
-------
``parse``: any bytes → ``parse_message`` returns a message or raises ``SipParseError``, nothing else. On
success every typed accessor is touched (each may raise only ``SipParseError``), what the accessors return can
be printed and the printed form parsed again, and ``parse_message(bytes(msg))`` must give an equal message.
The same bytes taken as too large (``salvage_request_headers``) give no headers or the five a 513 copies, and
that 513 frames as one stream message.

``frame``: the input, twice and with a keep-alive between, is fed to a ``StreamFramer`` in one chunk and again
cut at fuzzer-chosen points; both must yield the same events and fail (or not) alike (when framing fails, a
byte-by-byte feed is the reference, as ``feed`` drops what it completed in the call that raised). The cut
points come from the input's last bytes (last byte = number of cuts, the bytes before it = 16-bit offsets), so
the same corpus serves both targets. Every framed message must parse (or fail) like a datagram with
``stream=True``, and parser and framer must agree on where its body ends.

Crashes are written to ``fuzz/crash-*`` (gitignored) unless ``-artifact_prefix`` is given.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["durchwahl.sipcore"]):
    from durchwahl.sipcore import (
        FramedMessage,
        NameAddr,
        Request,
        Response,
        SipParseError,
        SipUri,
        StreamFramer,
        Via,
        parse_message,
        parse_name_addr,
        parse_uri,
    )
    from durchwahl.sipcore.headers import parse_via
    from durchwahl.sipcore.limits import Limits
    from durchwahl.sipcore.message import TYPED_ACCESSORS as ACCESSORS
    from durchwahl.sipcore.message import error_response, salvage_request_headers

HERE = Path(__file__).resolve().parent


class Mismatch(AssertionError):
    """A property of the parser did not hold (not a crash of the parser itself, a wrong answer)."""


def _check_error(exc: SipParseError) -> None:
    str(exc)
    if not isinstance(exc.status, int) or not 400 <= exc.status <= 699:
        raise Mismatch(f"SipParseError with status {exc.status!r}")


def _access(msg: Request | Response, name: str) -> object:
    try:
        return getattr(msg, name)
    except SipParseError as exc:
        _check_error(exc)
        return None


def _check_uri(uri: object) -> None:
    text = str(uri)
    if isinstance(uri, SipUri):
        again = parse_uri(text)
        if again != uri:
            raise Mismatch(f"SipUri does not survive str/parse: {uri!r} -> {text!r} -> {again!r}")


def _check_name_addr(value: NameAddr) -> None:
    _check_uri(value.uri)
    text = str(value)
    again = parse_name_addr(text)  # what we print we must read back
    # CR and LF in a display name are printed as spaces on purpose (no header injection).
    name = None if value.display_name is None else value.display_name.replace("\r", " ").replace("\n", " ")
    if (again.display_name, again.uri, again.params) != (name, value.uri, value.params):
        raise Mismatch(f"NameAddr does not survive str/parse: {value!r} -> {text!r} -> {again!r}")


def _check_via(value: Via) -> None:
    value.branch, value.received, value.rport, value.rport_requested, value.sent_by  # noqa: B018
    text = str(value)
    again = parse_via(text)
    if again != value:
        raise Mismatch(f"Via does not survive str/parse: {value!r} -> {text!r} -> {again!r}")


def check_accessors(msg: Request | Response) -> None:
    for name in ACCESSORS:
        value = _access(msg, name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, NameAddr):
                _check_name_addr(item)
            elif isinstance(item, Via):
                _check_via(item)
            elif item is not None:
                str(item)
    msg.get("call-id"), msg.get_all("via"), msg.has("x")
    for name in ("via", "contact", "route", "allow", "x-unknown"):
        try:
            msg.values(name)
        except SipParseError as exc:
            _check_error(exc)
    if isinstance(msg, Request):
        _check_uri(msg.uri)


def check_round_trip(msg: Request | Response) -> None:
    wire = bytes(msg)
    try:
        again = parse_message(wire)
    except SipParseError as exc:
        raise Mismatch(f"serialised message does not parse: {exc}\n{wire!r}") from exc
    if type(again) is not type(msg):
        raise Mismatch(f"round trip changed the kind of message: {msg!r} -> {again!r}")
    if isinstance(msg, Request):
        assert isinstance(again, Request)
        start, start2 = (msg.method, msg.uri, msg.version), (again.method, again.uri, again.version)
    else:
        assert isinstance(again, Response)
        start, start2 = (msg.status, msg.reason, msg.version), (again.status, again.reason, again.version)
    if start != start2:
        raise Mismatch(f"start line changed: {start!r} -> {start2!r}")
    if msg.headers != again.headers:
        raise Mismatch(f"headers changed:\n{msg.headers!r}\n{again.headers!r}")
    if msg.body != again.body:
        raise Mismatch(f"body changed: {msg.body!r} -> {again.body!r}")
    if bytes(again) != wire:
        raise Mismatch("serialising is not idempotent")


_ANSWER_HEADERS = {"Via", "From", "To", "Call-ID", "CSeq"}


def check_salvage(data: bytes) -> None:
    """What a 513 is built from when the input is taken as too large (a header limit of half its length):
    None or exactly the five headers an answer copies, and the 513 made of them is one framed message."""
    headers = salvage_request_headers(data, Limits(max_header_bytes=max(1, len(data) // 2)))
    if headers is None:
        return
    if {h.name for h in headers} != _ANSWER_HEADERS:
        raise Mismatch(f"salvaged headers {headers!r}")
    response = error_response(SipParseError("too large", status=513, request_headers=headers))
    if response is None:
        raise Mismatch("salvaged headers give no 513")
    wire = bytes(response)
    if StreamFramer().feed(wire) != [FramedMessage(wire)]:
        raise Mismatch(f"a 513 is not one stream message: {wire!r}")


def target_parse(data: bytes) -> None:
    check_salvage(data)
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        _check_error(exc)
        return
    check_accessors(msg)
    check_round_trip(msg)


def _cuts(data: bytes, length: int) -> list[int]:
    """Fuzzer-chosen cut offsets, read from the input's tail: last byte = count (0-15), then 2 bytes each."""
    if not data:
        return []
    count = data[-1] % 16
    raw = data[-1 - 2 * count : -1] if count else b""
    points = {int.from_bytes(raw[i : i + 2], "big") % (length + 1) for i in range(0, len(raw) - 1, 2)}
    return sorted(points)


def _frame(chunks: list[bytes]) -> tuple[list[object], str | None]:
    framer = StreamFramer()
    events: list[object] = []
    for chunk in [*chunks, b""]:  # the final empty feed raises an error deferred by the last call
        try:
            events.extend(framer.feed(chunk))
        except SipParseError as exc:
            _check_error(exc)
            return events, str(exc)
    return events, None


def _agrees(events: list[object], error: str | None, ref: list[object], ref_error: str | None) -> bool:
    """Same events and same outcome: ``feed`` hands out what it completed before a framing error and raises
    on the next call, so every chunking delivers the same messages (tests/sipcore/test_framing.py)."""
    return (error is None) == (ref_error is None) and events == ref


_BYTEWISE_MAX = 2048


def target_frame(data: bytes) -> None:
    stream = data + b"\r\n\r\n" + data
    whole, whole_error = _frame([stream])
    if whole_error is None or len(stream) > _BYTEWISE_MAX:
        ref, ref_error = whole, whole_error
    else:
        # Byte by byte is the reference: no feed call can complete a message and fail on the next one.
        ref, ref_error = _frame([stream[i : i + 1] for i in range(len(stream))])
    cuts = [0, *_cuts(data, len(stream)), len(stream)]
    split, split_error = _frame([stream[a:b] for a, b in itertools.pairwise(cuts)])
    if not _agrees(whole, whole_error, ref, ref_error) or not _agrees(split, split_error, ref, ref_error):
        raise Mismatch(
            f"framing depends on chunking (cuts {cuts}):\n"
            f"byte by byte: {ref!r} error={ref_error!r}\n"
            f"one chunk:    {whole!r} error={whole_error!r}\nsplit:        {split!r} error={split_error!r}"
        )
    for event in ref:
        if not isinstance(event, FramedMessage):
            continue
        try:
            msg = parse_message(event.data, stream=True)
        except SipParseError as exc:
            _check_error(exc)
            continue
        head_end = event.data.find(b"\r\n\r\n")
        if len(msg.body) != len(event.data) - head_end - 4:
            raise Mismatch(f"framer and parser disagree on the body of {event.data!r}")


def _is_known(exc: BaseException) -> bool:
    """Bugs already reported and pinned in tests/sipcore/test_fuzz_regressions.py but not yet fixed.

    Empty now. (During the first runs: ``ValueError: invalid literal for int()`` from ``str.isdigit()``
    accepting '²', and ``RecursionError`` from the framer skipping stray CR/LF recursively.)
    """
    del exc
    return False


def _tolerating_known(target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """With FUZZ_IGNORE_KNOWN=1 a long run goes on past the known bugs to find new ones."""

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:
            if not _is_known(exc):
                raise

    return run


TARGETS = {"parse": (target_parse,), "frame": (target_frame,), "both": (target_parse, target_frame)}


def main() -> None:
    targets = TARGETS[os.environ.get("FUZZ_TARGET", "both")]

    def test_one_input(data: bytes) -> None:
        for target in targets:
            target(data)

    argv = list(sys.argv)
    corpus = HERE / "corpus"
    if any(Path(arg).resolve() == corpus for arg in argv[1:]) and not any(corpus.glob("*")):
        sys.path.insert(0, str(HERE))
        import seed  # the corpus is gitignored: build it on first use

        print(f"INFO: seeded {seed.build(corpus)} files into {corpus}", file=sys.stderr)
    if not any(arg.startswith("-artifact_prefix=") for arg in argv):
        argv.insert(1, f"-artifact_prefix={HERE}/")
    if not any(arg.startswith("-dict=") for arg in argv):
        argv.insert(1, f"-dict={HERE / 'sip.dict'}")
    if os.environ.get("FUZZ_IGNORE_KNOWN"):
        targets = tuple(_tolerating_known(t) for t in targets)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
