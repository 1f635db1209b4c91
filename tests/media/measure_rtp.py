"""Measure RTP parse and serialise speed of media.rtp against aiortc.rtp in the same process.

Not collected by pytest (the name does not start with ``test_``). Run from the repository root::

    .venv/bin/python tests/media/measure_rtp.py [--runs 7] [--number 200000]

It prints, in nanoseconds per operation, the median over ``--runs`` (ours and aiortc's timed in
alternation, so that load on the machine hits both alike) for a 172-octet G.711 packet (12-octet header,
160 octets of payload) and for a packet with two CSRCs, a header extension and padding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiortc.rtp import RtpPacket as AiortcPacket

from durchwahl.media import rtp

PLAIN = bytes(rtp.RtpPacket(0, 4242, 123456, 0xDEADBEEF, bytes(range(160)), True))
FULL = bytes(
    rtp.RtpPacket(
        0,
        4242,
        123456,
        0xDEADBEEF,
        bytes(range(160)),
        True,
        (1, 2),
        rtp.RtpHeaderExtension(0xBEDE, b"\x10\xaa\x00\x00"),
        4,
    )
)


def _medians_ns(
    first: Callable[[], object], second: Callable[[], object], runs: int, number: int
) -> tuple[float, float]:
    """Time the two functions in alternation (so that load on the machine hits both alike)."""
    a, b = [], []
    for _ in range(runs):
        a.append(timeit.timeit(first, number=number))
        b.append(timeit.timeit(second, number=number))
    return statistics.median(a) / number * 1e9, statistics.median(b) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, median of {args.runs} runs × {args.number} operations, ns/op")
    for name, data in (("plain 172 B", PLAIN), ("csrc+ext+pad", FULL)):
        ours = rtp.parse(data)
        theirs = AiortcPacket.parse(data)
        assert bytes(ours) == data
        assert theirs.payload == ours.payload
        rows = (
            ("parse", lambda d=data: rtp.parse(d), lambda d=data: AiortcPacket.parse(d)),
            ("build", lambda p=ours: bytes(p), lambda p=theirs: p.serialize()),
            (
                "parse+build",
                lambda d=data: bytes(rtp.parse(d)),
                lambda d=data: AiortcPacket.parse(d).serialize(),
            ),
        )
        for label, mine, aiortc in rows:
            a, b = _medians_ns(mine, aiortc, args.runs, args.number)
            print(f"{name:13} {label:12} media.rtp {a:8.0f}   aiortc {b:8.0f}   ratio {b / a:5.2f}x")


if __name__ == "__main__":
    main()
