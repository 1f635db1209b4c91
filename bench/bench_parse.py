"""SIP message parse and parse+serialise throughput: durchwahl against the Sippy B2BUA's parser, same run.

    .venv/bin/python bench/bench_parse.py [--repeat 7] [--min-time 0.2] [--profile]

(``make bench`` installs the ``bench`` extra, which brings ``sippy``, and runs this.)

Three realistic messages: an INVITE with SDP (13 headers), the 200 OK to it (12), and a REGISTER with a
Digest Authorization header (12). For each, messages per second are the loop count over the median of
``--repeat`` ``timeit`` repeats. What is measured, kept to the same depth on both sides:

Each repeat times durchwahl and then Sippy, so both see the same background load (the machine is shared).

* **parse (full)** — bytes in, every header parsed into its typed value.
  durchwahl: ``parse_message(data)`` (validates Via, From, To, Call-ID, CSeq, Max-Forwards at parse time),
  then every other typed accessor the message has a header for (Contact, Route, Record-Route,
  Content-Type, Expires, Supported, Allow, Authorization …); unknown headers stay raw strings.
  Sippy: ``data.decode()`` (as its transaction manager does), ``SipRequest(buf)``/``SipResponse(buf)``
  (start line incl. Request-URI, header split, Content-Length framing), then ``getBody()`` on every header,
  which runs each known header class's ``parse()``; unknown headers stay raw strings.
  Neither side parses the SDP body.
* **parse (lazy)** — only what each parser does on its own: durchwahl ``parse_message`` (the core headers
  above, typed), Sippy the constructor (no header parsed beyond the split; its headers parse on demand).
  Not the same depth, shown for reference only: durchwahl does more work here.
* **parse+serialise** — parse (full) and then back to bytes: durchwahl ``bytes(msg)`` (raw header values
  kept, Content-Length regenerated), Sippy ``str(msg).encode()`` (each parsed header re-printed).
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from durchwahl import sipcore
from durchwahl.sipcore import Request, Response, parse_message

try:
    from sippy.SipRequest import SipRequest
    from sippy.SipResponse import SipResponse
except ImportError:  # pragma: no cover - the bench extra is not installed
    SipRequest = SipResponse = None

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 198.51.100.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 198.51.100.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

SDP_ANSWER = SDP.replace(b"alice", b"bob").replace(b"198.51.100.10", b"203.0.113.20")

INVITE = (
    b"INVITE sip:+4930123456@pbx.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice Example" <sip:alice@trunk.example.net>;tag=1928301774\r\n'
    b"To: <sip:+4930123456@pbx.example.com;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.trunk.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@198.51.100.10:5060;transport=udp>\r\n"
    b"Record-Route: <sip:edge.trunk.example.net;lr>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: ExampleTrunk/4.2\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=198.51.100.10\r\n"
    b"Record-Route: <sip:edge.trunk.example.net;lr>\r\n"
    b'From: "Alice Example" <sip:alice@trunk.example.net>;tag=1928301774\r\n'
    b"To: <sip:+4930123456@pbx.example.com;user=phone>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33.trunk.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:pbx@203.0.113.20:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"Server: durchwahl/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP_ANSWER)).encode() + b"\r\n"
    b"\r\n" + SDP_ANSWER
)

REGISTER = (
    b"REGISTER sip:pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.44:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:201@pbx.example.com>;tag=a73kszlfl\r\n"
    b"To: <sip:201@pbx.example.com>\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.44\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:201@192.0.2.44:5060;transport=udp>;expires=3600\r\n"
    b'Authorization: Digest username="201", realm="pbx.example.com", '
    b'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", uri="sip:pbx.example.com", '
    b'response="dfe56131d1958046689d83306477ecc5", algorithm=MD5, cnonce="0a4f113b", qop=auth, '
    b"nc=00000001\r\n"
    b"Expires: 3600\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n"
    b"User-Agent: Yealink SIP-T46U 108.86.0.45\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

MESSAGES = {"INVITE + SDP": INVITE, "200 OK + SDP": OK_200, "REGISTER + Digest": REGISTER}

# Typed accessors beyond the core headers parse_message already typed (absent header -> None or ()).
_TYPED = (
    "contact",
    "route",
    "record_route",
    "content_type",
    "expires",
    "supported",
    "allow",
    "require",
    "authorization",
    "www_authenticate",
    "proxy_authorization",
    "proxy_authenticate",
)


def durchwahl_parse_lazy(data: bytes) -> Request | Response:
    return parse_message(data)


def durchwahl_parse_full(data: bytes) -> Request | Response:
    msg = parse_message(data)
    # via, from_, to, call_id, cseq, max_forwards were parsed by parse_message; the rest on demand.
    for attr in _TYPED:
        getattr(msg, attr)
    return msg


def durchwahl_round_trip(data: bytes) -> bytes:
    return bytes(durchwahl_parse_full(data))


def _sippy_construct(data: bytes) -> Any:
    text = data.decode()
    return SipResponse(text) if text.startswith("SIP/") else SipRequest(text)


def sippy_parse_lazy(data: bytes) -> Any:
    return _sippy_construct(data)


def sippy_parse_full(data: bytes) -> Any:
    msg = _sippy_construct(data)
    for header in msg.headers:
        header.getBody()
    return msg


def sippy_round_trip(data: bytes) -> bytes:
    return str(sippy_parse_full(data)).encode()


def call_mix(calls: int, seed: int = 1) -> list[bytes]:
    """The messages of ``calls`` distinct calls, in wire order: INVITE, 100, 180, 200, ACK, BYE, 200.

    Every call has its own Call-ID, tags and branches; callers come from a pool of 500 numbers and the
    dialled number is the company's. What repeats is what repeats on a real trunk — so caches of parsed
    values help exactly as much as they would in service, unlike a benchmark that parses one message again
    and again.
    """
    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(calls):
        caller = f"+4989{rng.randrange(500):07d}"
        call_id = f"{rng.getrandbits(64):016x}@trunk.example.net"
        ftag, ttag = f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32):08x}"
        branch, bye_branch = f"z9hG4bK{rng.getrandbits(48):012x}", f"z9hG4bK{rng.getrandbits(48):012x}"
        seq = rng.randrange(1, 100000)
        invite = (
            INVITE.replace(b"z9hG4bK776asdhds", branch.encode())
            .replace(b"1928301774", ftag.encode())
            .replace(b"a84b4c76e66710@pc33.trunk.example.net", call_id.encode())
            .replace(b"314159", str(seq).encode())
            .replace(b"sip:alice@", f"sip:{caller}@".encode())
        )
        ok = (
            OK_200.replace(b"z9hG4bK776asdhds", branch.encode())
            .replace(b"1928301774", ftag.encode())
            .replace(b"a6c85cf", ttag.encode())
            .replace(b"a84b4c76e66710@pc33.trunk.example.net", call_id.encode())
            .replace(b"314159", str(seq).encode())
            .replace(b"sip:alice@", f"sip:{caller}@".encode())
        )
        head = ok.split(b"\r\n\r\n", 1)[0]
        lines = [line for line in head.split(b"\r\n")[1:] if not line.startswith((b"Content-", b"Allow"))]

        def response(status: bytes, keep: list[bytes]) -> bytes:
            return b"SIP/2.0 " + status + b"\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"

        no_to_tag = [
            line.replace(b";tag=" + ttag.encode(), b"") if line.startswith(b"To:") else line
            for line in lines
            if not line.startswith((b"Contact", b"Record-Route", b"Supported", b"Server"))
        ]
        dialog = (
            f'Max-Forwards: 70\r\nFrom: "Alice Example" <sip:{caller}@trunk.example.net>;tag={ftag}\r\n'
            f"To: <sip:+4930123456@pbx.example.com;user=phone>;tag={ttag}\r\nCall-ID: {call_id}\r\n"
        )
        ack = (
            f"ACK sip:pbx@203.0.113.20:5060;transport=udp SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 198.51.100.10:5060;branch={branch}x;rport\r\n"
            "Route: <sip:edge.trunk.example.net;lr>\r\n"
            + dialog
            + f"CSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        bye = (
            f"BYE sip:pbx@203.0.113.20:5060;transport=udp SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 198.51.100.10:5060;branch={bye_branch};rport\r\n"
            "Route: <sip:edge.trunk.example.net;lr>\r\n"
            + dialog
            + f"CSeq: {seq + 1} BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        bye_head = [
            line
            for line in bye.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
            if not line.startswith((b"Route", b"Max-Forwards", b"Content-Length"))
        ]
        out += [
            invite,
            response(b"100 Trying", no_to_tag),
            response(b"180 Ringing", [line for line in lines if not line.startswith(b"Contact")]),
            ok,
            ack,
            bye,
            b"SIP/2.0 200 OK\r\n" + b"\r\n".join(bye_head) + b"\r\nContent-Length: 0\r\n\r\n",
        ]
    return out


def _corpus_rates(funcs: list[Callable[[bytes], object]], corpus: list[bytes], repeat: int) -> list[float]:
    """Messages/s of each function over the whole corpus in order: median of ``repeat`` interleaved rounds."""
    times: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeat):
        for func, samples in zip(funcs, times, strict=True):
            start = time.perf_counter()
            for data in corpus:
                func(data)
            samples.append(time.perf_counter() - start)
    return [len(corpus) / statistics.median(samples) for samples in times]


def _check() -> None:
    """Both parsers accept every message and see the same headers (fail loudly rather than time errors)."""
    for name, data in MESSAGES.items():
        msg = durchwahl_parse_full(data)
        assert parse_message(durchwahl_round_trip(data)) == msg, name
        if SipRequest is None:
            continue
        smsg = sippy_parse_full(data)
        assert len(smsg.headers) >= len(msg.headers) - 1, (name, len(smsg.headers), len(msg.headers))
        assert sippy_round_trip(data), name


def _rates(funcs: list[Callable[[bytes], object]], data: bytes, repeat: int, min_time: float) -> list[float]:
    """Messages/s of each function: median over ``repeat`` rounds, the functions interleaved in each round
    so that load from other tenants of a shared machine hits both sides alike."""
    timers = []
    for func in funcs:
        timer = timeit.Timer(lambda func=func: func(data))
        number, elapsed = timer.autorange()  # at least 0.2 s
        timers.append((timer, max(1, round(number * min_time / max(elapsed, 1e-9)))))
    times: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeat):
        for (timer, number), samples in zip(timers, times, strict=True):
            samples.append(timer.timeit(number) / number)
    return [1.0 / statistics.median(samples) for samples in times]


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return (
        f"{model}, {os.cpu_count()} CPUs; {platform.python_implementation()} {platform.python_version()}; "
        f"{platform.system()} {platform.release()}"
    )


def _profile(seconds: float) -> None:
    """cProfile durchwahl's parse+serialise over the three messages; print the top functions."""
    profiler = cProfile.Profile()
    loops = max(1, int(seconds * 3000))
    profiler.enable()
    for _ in range(loops):
        for data in MESSAGES.values():
            durchwahl_round_trip(data)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats; the median is reported")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat, roughly")
    parser.add_argument("--profile", action="store_true", help="also cProfile durchwahl's parse+serialise")
    parser.add_argument("--calls", type=int, default=1000, help="distinct calls in the call-mix corpus")
    args = parser.parse_args()

    _check()
    cases: list[tuple[str, Callable[[bytes], object], Callable[[bytes], object] | None]] = [
        ("parse (full)", durchwahl_parse_full, sippy_parse_full if SipRequest else None),
        ("parse+serialise", durchwahl_round_trip, sippy_round_trip if SipRequest else None),
        ("parse (lazy)*", durchwahl_parse_lazy, sippy_parse_lazy if SipRequest else None),
    ]
    print(f"machine: {_machine()}")
    print(f"sipcore from {sipcore.__file__}; median of {args.repeat} repeats, msgs/s")
    if SipRequest is None:
        print("sippy is not installed (pip install -e '.[bench]'): durchwahl only")
    header = f"| {'message':<18} | {'operation':<16} | {'durchwahl':>10} | {'sippy':>10} | {'ratio':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, data in MESSAGES.items():
        for operation, ours, theirs in cases:
            if theirs is None:
                (rate,) = _rates([ours], data, args.repeat, args.min_time)
                print(f"| {name:<18} | {operation:<16} | {rate:>10,.0f} | {'-':>10} | {'-':>6} |")
                continue
            rate, peer = _rates([ours, theirs], data, args.repeat, args.min_time)
            print(
                f"| {name:<18} | {operation:<16} | {rate:>10,.0f} | {peer:>10,.0f} | {rate / peer:>5.2f}× |"
            )
    print("* lazy: not the same depth (durchwahl already types the core headers, sippy none); for reference.")
    print(
        "The rows above parse one message again and again: parsed-value caches always hit (an upper bound)."
    )
    corpus = call_mix(args.calls)
    for data in corpus:  # both parsers must take every message of the mix
        durchwahl_parse_full(data)
        if SipRequest is not None:
            sippy_parse_full(data)
    print(
        f"\ncall mix: {args.calls} distinct calls x 7 messages (INVITE, 100, 180, 200, ACK, BYE, 200), msgs/s"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for operation, ours, theirs in cases[:2]:
        funcs = [ours] if theirs is None else [ours, theirs]
        rates = _corpus_rates(funcs, corpus, args.repeat)
        peer = f"{rates[1]:>10,.0f}" if len(rates) > 1 else f"{'-':>10}"
        ratio = f"{rates[0] / rates[1]:>5.2f}×" if len(rates) > 1 else f"{'-':>6}"
        print(f"| {'call mix':<18} | {operation:<16} | {rates[0]:>10,.0f} | {peer} | {ratio} |")
    if args.profile:
        _profile(2.0)


if __name__ == "__main__":
    main()
