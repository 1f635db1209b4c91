"""An idle-TCP-connection flood against ``durchwahl serve`` under a small descriptor limit, over loopback.

Used by ``test_tcp_flood.py`` (small, in the suite) and ``bench/bench_tcp_flood.py`` (full size). The server
is a subprocess with ``RLIMIT_NOFILE`` set before it starts (as a service manager would); the attacker opens
``connections`` TCP connections from 127.0.0.2 (and more addresses with ``sources``) and sends nothing; then
phones on 127.0.0.1 register over UDP and TCP, one phone calls another (media anchored: RTP ports), and a
trunk call is answered with the greeting (RTP ports, the greeting file) — while the connections are open, or
(``check_after``) once ``wait_after`` has passed. What the server logged meanwhile is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import attrs

from durchwahl.routing.demo import Phone, Script
from durchwahl.sipcore import Endpoint, Response, SipError
from durchwahl.sipcore.auth import answer_challenge, choose_challenge
from durchwahl.sipcore.ua import CallFailed, UserAgent

ROOT = Path(__file__).resolve().parents[2]
DURCHWAHL = Path(sys.executable).with_name("durchwahl")


@attrs.frozen
class FloodResult:
    """What the flood run saw."""

    #: Connections the attacker got established (the server may close some at once).
    connected: int
    #: Of those, still open half a second after they were opened.
    open_during: int
    #: Still open at the end: ``wait_after`` after the phones' tests (after the flood: ``check_after``).
    open_after: int
    #: Status of the phones' REGISTERs over UDP (two phones) and TCP (one), and of the two calls' INVITEs.
    register_udp: tuple[int, ...]
    register_tcp: int
    call: int
    trunk_call: int
    #: What the server wrote to stderr while the flood was on: lines, and lines starting a traceback.
    log_lines: int
    tracebacks: int
    log_bytes: int
    seconds: float
    log_tail: str


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the server listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def write_office(folder: Path, port: int, extra: str = "") -> Path:
    """The example office on ``port`` (UDP and TCP), its RTP range chosen by the port (never holding it)."""
    shutil.copy(ROOT / "examples" / "greeting.wav", folder / "greeting.wav")
    text = (ROOT / "examples" / "office.toml").read_text(encoding="utf-8")
    text = text.replace(
        'listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]',
        f'listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]',
    )
    first = 30000 + (port % 1000) * 20
    if first <= port < first + 20:
        first += 20  # the range may not hold the SIP port itself
    text = text.replace('rtp_ports = "20000-20999"', f'rtp_ports = "{first}-{first + 19}"' + extra)
    path = folder / "office.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def register_tcp(user: str, password: str, port: int, endpoint: Endpoint | None = None) -> Response:
    """A phone that registers over TCP (digest answered), from 127.0.0.1; its endpoint is closed afterwards
    unless given."""
    own = endpoint is None
    if endpoint is None:
        endpoint = Endpoint(user_agent=f"tcp-phone-{user}")
        await endpoint.listen("tcp:127.0.0.1:0")
    try:
        flow = endpoint.flow_to("127.0.0.1", port, "TCP")
        aor = f"<sip:{user}@office.example>"
        extra: list[tuple[str, str]] = [("Expires", "600")]
        call_id = endpoint.new_call_id()
        response: Response | None = None
        for cseq in (1, 2):
            request = endpoint.make_request(
                "REGISTER",
                "sip:office.example",
                flow,
                from_=aor,
                to=aor,
                call_id=call_id,
                cseq=cseq,
                headers=extra,
            )
            async with asyncio.timeout(5):
                response = await endpoint.request(request, flow)
            if response.status != 401:
                break
            challenge = choose_challenge(response.www_authenticate)
            assert challenge is not None
            creds = answer_challenge(
                challenge, "REGISTER", "sip:office.example", user, password, cnonce="c0ffee"
            )
            extra = [("Expires", "600"), ("Authorization", str(creds))]
        assert response is not None
        return response
    finally:
        if own:
            await endpoint.close()


async def trunk_call(port: int) -> int:
    """The trunk (127.0.0.1 is its inbound_from) calls the office number: the greeting answers."""
    endpoint = Endpoint(user_agent="trunk")
    await endpoint.listen("udp:127.0.0.1:0")
    ua = UserAgent(endpoint, lambda incoming: incoming.respond(486))
    try:
        flow = endpoint.flow_to("127.0.0.1", port)
        call = ua.invite(
            "sip:+49301234567@office.example",
            flow,
            from_="<sip:+4930999@provider.example>",
            to="<sip:+49301234567@office.example>",
            body=Phone("trunk", "-", port).sdp,
        )
        try:
            async with asyncio.timeout(5):
                answer = await call.wait_answered()
        except CallFailed as exc:
            return exc.status
        call.bye()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await call.wait_ended()
        return answer.status
    finally:
        ua.close()
        await endpoint.close()


async def open_idle(port: int, count: int, sources: int = 1, batch: int = 200) -> list[socket.socket]:
    """Open up to ``count`` TCP connections from ``sources`` attacker addresses (127.0.0.2 on), round robin;
    those not established within 2 s are dropped."""
    loop = asyncio.get_running_loop()

    async def one(index: int) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((f"127.0.0.{2 + index % sources}", 0))
            async with asyncio.timeout(2):
                await loop.sock_connect(sock, ("127.0.0.1", port))
        except (OSError, TimeoutError):
            sock.close()
            return None
        return sock

    opened: list[socket.socket] = []
    for start in range(0, count, batch):
        results = await asyncio.gather(*(one(i) for i in range(start, min(count, start + batch))))
        opened.extend(s for s in results if s is not None)
    return opened


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (no EOF or reset readable)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = 0
    for fd, _ in poller.poll(0):
        sock = next(s for s in socks if s.fileno() == fd)
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return len(socks) - closed


async def _status(exchange: Awaitable[Response]) -> int:
    """The final status of a REGISTER exchange; 0 when it timed out or could not be sent."""
    try:
        return (await exchange).status
    except (TimeoutError, SipError):
        return 0


def _limit_descriptors(nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


async def run_flood(
    tmp: Path,
    *,
    connections: int,
    nofile: int,
    wait_after: float,
    extra_config: str = "",
    sources: int = 1,
    check_after: bool = False,
    serve_args: tuple[str, ...] = (),
) -> FloodResult:
    """Start the server under ``nofile`` descriptors, flood it, check phones and calls; stop it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 256 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (connections + 256, hard))  # the attacker's own sockets
    port = free_port()
    config = write_office(tmp, port, extra_config)
    log_path = tmp / "server.log"
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(DURCHWAHL), "serve", "--config", str(config), *serve_args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            preexec_fn=lambda: _limit_descriptors(nofile),
            cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    socks: list[socket.socket] = []
    phones: list[Phone] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        listening = 0
        while listening < 2 and time.monotonic() < deadline:
            line = await asyncio.to_thread(process.stdout.readline)
            if not line:
                raise RuntimeError(f"durchwahl serve exited: {log_path.read_text(errors='replace')[-2000:]}")
            listening += line.startswith(b"durchwahl: listening on")
        log_start = log_path.stat().st_size
        socks = await open_idle(port, connections, sources)
        await asyncio.sleep(0.5)
        open_during = still_open(socks)
        if check_after:
            await asyncio.sleep(wait_after)
        anna = Phone("101", "anna-101-secret", port, script=Script("answer", delay=0.05))
        bernd = Phone("bernd", "bernd-102-secret", port)
        phones = [anna, bernd]
        await anna.endpoint.listen("udp:127.0.0.1:0")
        await bernd.endpoint.listen("udp:127.0.0.1:0")
        register_udp = (await _status(anna.register()), await _status(bernd.register()))
        carla = await _status(register_tcp("103", "carla-103-secret", port))
        call_status = 0
        call = bernd.dial("101")
        try:
            async with asyncio.timeout(5):
                call_status = (await call.wait_answered()).status
        except CallFailed as exc:
            call_status = exc.status
        except TimeoutError:
            pass
        if call_status == 200:
            call.bye()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await call.wait_ended()
        trunk = 0
        with contextlib.suppress(TimeoutError, SipError):
            trunk = await trunk_call(port)
        if not check_after:
            await asyncio.sleep(wait_after)
        open_after = still_open(socks)
        log_text = log_path.read_bytes()[log_start:].decode("utf-8", "replace")
        lines = log_text.splitlines()
        return FloodResult(
            connected=len(socks),
            open_during=open_during,
            open_after=open_after,
            register_udp=register_udp,
            register_tcp=carla,
            call=call_status,
            trunk_call=trunk,
            log_lines=len(lines),
            tracebacks=sum(line.startswith("Traceback") for line in lines),
            log_bytes=len(log_text.encode()),
            seconds=time.monotonic() - started,
            log_tail="\n".join(lines[-15:]),
        )
    finally:
        for phone in phones:
            await phone.close()
        for sock in socks:
            sock.close()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        if process.stdout is not None:
            process.stdout.close()
