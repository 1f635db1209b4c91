"""The cost of SIP over TLS per registration: server CPU per authenticated registration over TCP and over TLS.

    .venv/bin/python bench/bench_tls.py [--registrations 3000] [--workers 20] [--key ec|rsa] [--repeat 3]

The server (a ``RegistrarService`` with the in-memory location store on an ``Endpoint`` listening on TCP and
on TLS, certificate from a CA made for the run) runs in its own process; this process is the clients:
``--workers`` asyncio tasks that register users in turn, each registration REGISTER → 401 → REGISTER with
MD5 digest credentials → 200 (SIPp, Debian's, has no TLS). Four modes, run one after another:

* ``tcp-new`` / ``tls-new``: every registration on a new connection (connect, handshake for TLS, the two
  requests, close) — a phone that registers from scratch, or one whose connection was lost;
* ``tcp-kept`` / ``tls-kept``: each worker keeps one connection for all its registrations — a phone
  refreshing its registration over its open connection.

Reported per mode (median of ``--repeat`` runs): registrations per second and the server's CPU time per
registration (utime + stime of the server process, ``/proc/<pid>/stat``). The cost of TLS is the
difference to TCP in the same mode. ``--key`` picks the server key: ECDSA P-256 (``ec``) or RSA 2048.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"bench-secret-0123456789abcdef012"
MODES = ("tcp-new", "tls-new", "tcp-kept", "tls-kept")


def write_directory(folder: Path, users: int) -> Path:
    lines = ["[server]", 'domain = "office.example"', 'listen = ["udp:127.0.0.1:5060"]', 'state_dir = "var"']
    for i in range(users):
        lines += ["[[employee]]", f'extension = "{1000 + i}"', f'name = "User {i}"', f'password = "pw-{i}"']
    path = folder / "office.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_certificate(folder: Path, key_kind: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (``openssl``): (CA file, certificate, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key_args = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if key_kind == "ec"
        else ["-newkey", "rsa:2048"]
    )
    openssl(
        "req",
        "-x509",
        *key_args,
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=bench CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    )
    openssl(
        "req", *key_args, "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


# ----------------------------------------------------------------------------------------- the server


async def serve(directory_path: str, certificate: str, key: str) -> None:
    sys.path.insert(0, str(ROOT))
    from durchwahl.routing.directory_file import load_directory
    from durchwahl.routing.location import InMemoryLocationStore
    from durchwahl.routing.registrar_service import RegistrarService
    from durchwahl.sipcore import Endpoint
    from durchwahl.sipcore.core import CoreConfig
    from durchwahl.sipcore.limits import Limits
    from durchwahl.sipcore.tls import server_context

    service = RegistrarService(
        load_directory(directory_path), InMemoryLocationStore(), secret=SECRET, algorithms=("MD5",)
    )
    limits = Limits(tcp_max_connections=4096, tcp_max_connections_per_source=4096)
    endpoint = Endpoint(
        service.handle, core=CoreConfig(allowed_methods=("REGISTER", "OPTIONS")), limits=limits
    )
    endpoint.tls.configure(server_context(Path(certificate), Path(key)))
    _, tcp = await endpoint.listen("tcp:127.0.0.1:0")
    _, tls = await endpoint.listen("tls:127.0.0.1:0")
    print(f"READY {tcp} {tls}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await endpoint.close()


# ----------------------------------------------------------------------------------------- the clients


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def register_request(
    user: str, transport: str, local: tuple[str, int], call_id: str, cseq: int, auth: str
) -> bytes:
    return (
        "REGISTER sip:office.example SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{call_id}{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@office.example>;tag={call_id}\r\n"
        f"To: <sip:{user}@office.example>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{local[0]}:{local[1]};transport={transport.lower()}>\r\n"
        "Expires: 600\r\n"
        f"{auth}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head  # every answer here has an empty body


async def register(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: str,
    password: str,
    transport: str,
    n: int,
) -> None:
    from durchwahl.sipcore.auth import answer_challenge, choose_challenge
    from durchwahl.sipcore.message import Response, parse_message

    local = writer.get_extra_info("sockname")[:2]
    call_id = f"b{n:x}{os.getpid():x}"
    writer.write(register_request(user, transport, local, call_id, 1, ""))
    challenge = parse_message(await read_response(reader), stream=True)
    assert isinstance(challenge, Response) and challenge.status == 401, challenge
    chosen = choose_challenge(challenge.www_authenticate)
    assert chosen is not None
    creds = answer_challenge(chosen, "REGISTER", "sip:office.example", user, password, cnonce=call_id)
    writer.write(register_request(user, transport, local, call_id, 2, f"Authorization: {creds}\r\n"))
    ok = parse_message(await read_response(reader), stream=True)
    assert isinstance(ok, Response) and ok.status == 200, ok


async def run_mode(mode: str, ports: dict[str, int], ca: Path, total: int, workers: int, users: int) -> float:
    """Run ``total`` registrations in ``mode``; returns the wall-clock seconds they took."""
    transport, _, kind = mode.partition("-")
    context: ssl.SSLContext | None = None
    if transport == "tls":
        context = ssl.create_default_context(cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    port = ports[transport]
    counter = iter(range(total))

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
        )

    async def worker() -> None:
        conn = await connect() if kind == "kept" else None
        for n in counter:
            reader, writer = conn if conn is not None else await connect()
            i = n % users
            await register(reader, writer, str(1000 + i), f"pw-{i}", transport.upper(), n)
            if conn is None:
                writer.close()
                await writer.wait_closed()
        if conn is not None:
            conn[1].close()
            await conn[1].wait_closed()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--registrations", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--key", choices=("ec", "rsa"), default="ec")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
        return 0
    sys.path.insert(0, str(ROOT))
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"nproc={os.cpu_count()}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]}, key {args.key}, "
        f"{args.registrations} registrations x {args.repeat}, {args.workers} clients at once, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        directory = write_directory(folder, args.users)
        ca, certificate, key = make_certificate(folder, args.key)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(directory), str(certificate), str(key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            ready = server.stdout.readline().split()
            assert ready and ready[0] == "READY", ready
            ports = {"tcp": int(ready[1]), "tls": int(ready[2])}
            results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    before = cpu_seconds(server.pid)
                    wall = asyncio.run(
                        run_mode(mode, ports, ca, args.registrations, args.workers, args.users)
                    )
                    cpu = cpu_seconds(server.pid) - before
                    results[mode].append((args.registrations / wall, 1e6 * cpu / args.registrations))
            print("| mode | registrations/s | server CPU µs / registration | runs (µs) |")
            print("|---|---:|---:|---|")
            medians: dict[str, float] = {}
            for mode in MODES:
                rates = [r for r, _ in results[mode]]
                costs = [c for _, c in results[mode]]
                medians[mode] = statistics.median(costs)
                runs = ", ".join(f"{c:,.0f}" for c in costs)
                print(f"| {mode} | {statistics.median(rates):,.0f} | {medians[mode]:,.0f} | {runs} |")
            for kind in ("new", "kept"):
                extra = medians[f"tls-{kind}"] - medians[f"tcp-{kind}"]
                print(f"TLS costs {extra:,.0f} µs of server CPU per registration on a {kind} connection")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
