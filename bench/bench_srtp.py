"""The cost of SRTP per relayed packet: CPU per packet through an anchored call's relay, plain and with SRTP.

    .venv/bin/python bench/bench_srtp.py [--packets 60000] [--repeat 5]

Two ``media.session.RtpSession`` legs bridged by a ``media.relay.MediaBridge`` (PCMU and telephone-event
both ways, as ``AnchoredMedia`` sets them up), each on a transport that only counts what is sent (no
socket: the kernel's share is the same with and without SRTP, and ``bench_media.py --mode relay`` measures
it). 20 ms PCMU packets of one stream go in at leg A (``datagram_received``, the path every received packet
takes) and out at leg B. Four cases: plain → plain, SRTP → plain (leg A SRTP: each packet authenticated and
decrypted), plain → SRTP (leg B SRTP: each packet encrypted and tagged), SRTP → SRTP (both, separate keys);
AES_CM_128_HMAC_SHA1_80 through libsrtp (pylibsrtp). Reported: CPU microseconds per relayed packet
(``time.process_time``, median of ``--repeat`` runs), and the bare ``protect`` / ``unprotect`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durchwahl.media.relay import LegMedia, MediaBridge  # noqa: E402
from durchwahl.media.rtp import RtpPacket  # noqa: E402
from durchwahl.media.sdes import KEY_OCTETS, CryptoAttribute  # noqa: E402
from durchwahl.media.session import MediaClock, RtpSession  # noqa: E402
from durchwahl.media.srtp import SrtpStreams  # noqa: E402

SUITE = "AES_CM_128_HMAC_SHA1_80"
PEER_A = ("127.0.0.1", 40000)
PEER_B = ("127.0.0.1", 40002)


class CountingTransport:
    """Stands in for a leg's UDP socket: counts the datagrams sent."""

    def __init__(self, port: int) -> None:
        self.sent = 0
        self.port = port

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", self.port) if name == "sockname" else default

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1

    def close(self) -> None:
        pass


def crypto() -> CryptoAttribute:
    return CryptoAttribute(1, SUITE, secrets.token_bytes(KEY_OCTETS))


async def relay_case(srtp_a: bool, srtp_b: bool, packets: int) -> float:
    """CPU µs per packet relayed from leg A to leg B."""
    a, b = RtpSession(detect_inband=False), RtpSession(detect_inband=False)
    out_a, out_b = CountingTransport(30000), CountingTransport(30002)
    a.connection_made(out_a)  # type: ignore[arg-type]
    b.connection_made(out_b)  # type: ignore[arg-type]
    a.remote, b.remote = PEER_A, PEER_B
    phone = None
    if srtp_a:
        ours, theirs = crypto(), crypto()
        a.srtp = SrtpStreams(send=ours, receive=theirs)
        phone = SrtpStreams(send=theirs, receive=ours)  # the phone on leg A
    if srtp_b:
        b.srtp = SrtpStreams(send=crypto(), receive=crypto())
    media = LegMedia(0, "PCMU", 101)
    clock = MediaClock()
    bridge = MediaBridge(a, b, media, media, clock)
    payload = bytes(range(160))
    data = [bytes(RtpPacket(0, n & 0xFFFF, 160 * n, 0x1234, payload, n == 0)) for n in range(packets)]
    if phone is not None:
        data = [phone.protect(d) for d in data]
    a.datagram_received(data[0], PEER_A)  # latch
    started = time.process_time()
    for datagram in data[1:]:
        a.datagram_received(datagram, PEER_A)
    spent = time.process_time() - started
    assert out_b.sent == packets, (out_b.sent, packets, a.stats.dropped_srtp)
    bridge.close()
    await clock.close()
    return 1e6 * spent / (packets - 1)


def bare_calls(packets: int) -> tuple[float, float]:
    """µs per bare protect and per bare unprotect of a 172-octet RTP packet."""
    ours, theirs = crypto(), crypto()
    sender, receiver = SrtpStreams(send=ours, receive=theirs), SrtpStreams(send=theirs, receive=ours)
    plain = [bytes(RtpPacket(0, n & 0xFFFF, 160 * n, 0x99, bytes(160), False)) for n in range(packets)]
    started = time.process_time()
    protected = [sender.protect(p) for p in plain]
    protect = time.process_time() - started
    started = time.process_time()
    for p in protected:
        receiver.unprotect(p)
    unprotect = time.process_time() - started
    return 1e6 * protect / packets, 1e6 * unprotect / packets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=60_000, help="per run (at most 60,000: one stream)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    packets = min(args.packets, 60_000)  # one stream: sequence numbers must not wrap into libsrtp's window
    import ssl

    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"nproc={os.cpu_count()}, {ssl.OPENSSL_VERSION}, {packets} packets x {args.repeat}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    cases = {
        "plain -> plain": (False, False),
        "SRTP -> plain": (True, False),
        "plain -> SRTP": (False, True),
        "SRTP -> SRTP": (True, True),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    bare: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        for name, (srtp_a, srtp_b) in cases.items():
            results[name].append(asyncio.run(relay_case(srtp_a, srtp_b, packets)))
        bare.append(bare_calls(packets))
    print("| relayed A → B | µs CPU per packet | runs |")
    print("|---|---:|---|")
    base = statistics.median(results["plain -> plain"])
    for name, runs in results.items():
        median = statistics.median(runs)
        extra = "" if name == "plain -> plain" else f" (+{median - base:.2f})"
        print(f"| {name} | {median:.2f}{extra} | {', '.join(f'{r:.2f}' for r in runs)} |")
    print(
        f"bare libsrtp calls: protect {statistics.median(b[0] for b in bare):.2f} µs, "
        f"unprotect {statistics.median(b[1] for b in bare):.2f} µs per packet"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
