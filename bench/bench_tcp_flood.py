"""Idle TCP connections against ``durchwahl serve`` under a descriptor limit: do phones and calls still work?

    flock /tmp/durchwahl-bench.lock .venv/bin/python bench/bench_tcp_flood.py
        [--connections 2000] [--nofile 1024] [--wait-after 12] [--sources 1] [--check-after]
        [--loop asyncio|uvloop] [--config-extra 'tcp_idle_seconds = 60']

The server runs as a subprocess with ``RLIMIT_NOFILE`` = ``--nofile`` (soft and hard, as a service manager
sets it); an attacker on 127.0.0.2 (``--sources N``: 127.0.0.2 to 127.0.0.N+1) opens ``--connections`` TCP
connections and sends nothing. Then two phones register over UDP and one over TCP (digest), one phone calls
the other (media anchored on RTP ports), and the trunk calls the office number (the greeting answers); with
``--check-after`` only after ``--wait-after`` seconds. Printed: how many attacker connections were
established, open 0.5 s later and at the end; each status; the server's log lines, tracebacks and bytes while
the flood was on. Loopback only (tests/routing/flood.py does the work).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "routing"))

from flood import run_flood  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--wait-after", type=float, default=12.0)
    parser.add_argument("--sources", type=int, default=1, help="attacker addresses, 127.0.0.2 on")
    parser.add_argument(
        "--check-after",
        action="store_true",
        help="register and call after --wait-after, not during the flood",
    )
    parser.add_argument("--config-extra", default="", help="lines added to the [server] table")
    parser.add_argument("--loop", default="asyncio", help="durchwahl serve --loop (asyncio or uvloop)")
    args = parser.parse_args()
    extra = f"\n{args.config_extra}" if args.config_extra else ""
    with tempfile.TemporaryDirectory(prefix="durchwahl-flood-") as tmp:
        result = asyncio.run(
            run_flood(
                Path(tmp),
                connections=args.connections,
                nofile=args.nofile,
                wait_after=args.wait_after,
                extra_config=extra,
                sources=args.sources,
                check_after=args.check_after,
                serve_args=("--loop", args.loop),
            )
        )
    print(
        f"descriptor limit {args.nofile}, {args.connections} idle connections asked for from {args.sources} "
        f"address(es) from 127.0.0.2 on{'; phones checked afterwards' if args.check_after else ''}"
    )
    print(
        f"  established: {result.connected}, still open 0.5 s later: {result.open_during}, "
        f"at the end ({args.wait_after:g} s later): {result.open_after}"
    )
    print(f"  REGISTER over UDP: {', '.join(map(str, result.register_udp))}; over TCP: {result.register_tcp}")
    print(f"  phone-to-phone call (anchored): {result.call}; trunk call (greeting): {result.trunk_call}")
    print(
        f"  server log while flooded: {result.log_lines} lines, {result.tracebacks} tracebacks, "
        f"{result.log_bytes} bytes; run took {result.seconds:.1f} s"
    )
    if result.log_tail:
        print("  last log lines:\n    " + result.log_tail.replace("\n", "\n    "))


if __name__ == "__main__":
    main()
