"""The metrics endpoint on loopback: after a scripted call the scrape shows it counted, its set-up delay
observed, the registrations and the RTP of its legs; a failed call counts as such; a bad address stops
the start with a clear error; the endpoint answers nothing but ``GET /metrics``."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from phones import Phone, Script, sdp
from prometheus_client.parser import text_string_to_metric_families
from test_server import copy_office

from durchwahl.media.rtp import RtpPacket
from durchwahl.media.sdp import parse_sdp
from durchwahl.routing.demo import RtpSocket
from durchwahl.routing.loadmeter import LoopLag
from durchwahl.routing.metrics import MetricsListenError
from durchwahl.routing.server import Server
from durchwahl.sipcore.session import Confirmed
from durchwahl.sipcore.ua import Call

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def office_with_metrics(tmp_path: Path, address: str = "127.0.0.1:0") -> Path:
    config = copy_office(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('state_dir = "var"', f'state_dir = "var"\nmetrics_listen = "{address}"', 1),
        encoding="utf-8",
    )
    return config


async def http(server: Server, request: bytes) -> tuple[str, bytes]:
    endpoint = server.monitor.endpoint
    assert endpoint is not None
    reader, writer = await asyncio.open_connection(endpoint.address.host, endpoint.address.port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n")[0], body


async def scrape(server: Server) -> Samples:
    status, body = await http(server, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == "HTTP/1.1 200 OK", status
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def media_address(body: bytes) -> tuple[str, int]:
    description = parse_sdp(body)
    audio = description.media[0]
    host = audio.connection or description.connection
    assert host is not None
    return host.address, audio.port


async def until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def confirmed(call: Call) -> None:
    async with asyncio.timeout(3):
        while True:
            _, event = await call.events.get()
            if isinstance(event, Confirmed):
                return


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with Server(office_with_metrics(tmp_path), listen=("udp:127.0.0.1:0",), control=False) as server:
        yield server


async def send_rtp(sock: RtpSocket, to: tuple[str, int], sequences: list[int], ssrc: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, sequence in enumerate(sequences):
        await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
        sock.send(RtpPacket(0, sequence, sequence * 160, ssrc, b"\xff" * 160), to)


async def test_a_scripted_call_is_counted_with_its_setup_delay_registrations_and_rtp(server: Server) -> None:
    port = server.addresses[0][2]
    anna_rtp, bernd_rtp = await RtpSocket.open(), await RtpSocket.open()
    anna = Phone("101", "anna-101-secret", port, script=Script("answer", delay=0.05))
    bernd = Phone("bernd", "bernd-102-secret", port)
    anna.sdp, bernd.sdp = sdp("anna", anna_rtp.port), sdp("bernd", bernd_rtp.port)
    await anna.start()
    await bernd.start()
    try:
        before = await scrape(server)
        assert value(before, "durchwahl_registered_contacts") == 2
        assert value(before, "durchwahl_registered_employees") == 2
        assert value(before, "durchwahl_registrations_total", event="registered") == 2
        assert value(before, "durchwahl_calls_started_total", origin="employee") == 0

        call = bernd.dial("101")
        async with asyncio.timeout(5):
            ok = await call.wait_answered()
        at_anna = await anna.next_call()
        await confirmed(at_anna)
        office_a, office_b = media_address(ok.body), media_address(at_anna.request.body)
        # 50 packets each way; bernd's numbering skips five (lost on the way), anna's none.
        skipped = [n for n in range(1, 56) if n not in (5, 15, 25, 35, 45)]
        await asyncio.gather(
            send_rtp(bernd_rtp, office_a, skipped, 0x1111),
            send_rtp(anna_rtp, office_b, list(range(1000, 1050)), 0x2222),
        )
        await until(lambda: len(anna_rtp.packets) >= 50 and len(bernd_rtp.packets) >= 50)

        during = await scrape(server)
        assert value(during, "durchwahl_active_calls", kind="internal", phase="connected") == 1
        assert value(during, "durchwahl_rtp_legs", leg="phone") == 2
        assert value(during, "durchwahl_rtp_packets_received_total", leg="phone") == 100
        assert value(during, "durchwahl_rtp_packets_lost_total", leg="phone") == 5
        assert value(during, "durchwahl_rtp_packets_sent_total", leg="phone") >= 100
        assert 0 <= value(during, "durchwahl_rtp_jitter_seconds", leg="phone") < 0.02

        call.bye()
        await until(lambda: not server.b2bua.active)
        failed = bernd.dial("999")  # no such extension: 404
        async with asyncio.timeout(5):
            with pytest.raises(Exception):  # noqa: B017 - the call fails, as it should
                await failed.wait_answered()
        await until(lambda: not server.b2bua.active)
        after = await scrape(server)
    finally:
        await anna.close()
        await bernd.close()
        anna_rtp.close()
        bernd_rtp.close()

    assert value(after, "durchwahl_calls_started_total", origin="employee") == 1
    assert value(after, "durchwahl_calls_answered_total", origin="employee") == 1
    assert value(after, "durchwahl_calls_ended_total", kind="internal", disposition="answered") == 1
    assert value(after, "durchwahl_calls_ended_total", kind="internal", disposition="failed") == 1
    assert value(after, "durchwahl_active_calls", kind="internal", phase="connected") == 0
    # RFC 6076 SRD: one success (the 180 of the answered call), one failure (the 404).
    assert value(after, "durchwahl_session_request_delay_seconds_count", outcome="success") == 1
    assert value(after, "durchwahl_session_request_delay_seconds_count", outcome="failure") == 1
    assert 0 < value(after, "durchwahl_session_request_delay_seconds_sum", outcome="success") < 2
    assert value(after, "durchwahl_session_attempts_total", status="200") == 1
    assert value(after, "durchwahl_session_attempts_total", status="404") == 1
    assert value(after, "durchwahl_session_attempts_total", status="401") == 0  # challenges are no attempts
    # The ended call's RTP stays counted.
    assert value(after, "durchwahl_rtp_packets_received_total", leg="phone") == 100
    assert value(after, "durchwahl_rtp_packets_lost_total", leg="phone") == 5
    assert value(after, "durchwahl_rtp_legs", leg="phone") == 0
    assert value(after, "durchwahl_registered_contacts") == 2
    assert value(after, "durchwahl_event_loop_lag_seconds_count") > 0
    assert value(after, "durchwahl_security_events_total", event="auth-failed") == 0
    assert value(after, "process_open_fds") > 0


async def test_only_get_metrics_is_answered(server: Server) -> None:
    assert (await http(server, b"GET / HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
    assert (await http(server, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 405 Method Not Allowed"
    status, body = await http(server, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == b""


def _bound_port() -> socket.socket:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


async def test_a_metrics_address_that_cannot_be_bound_stops_the_start(tmp_path: Path) -> None:
    with _bound_port() as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = Server(office_with_metrics(tmp_path, address), listen=("udp:127.0.0.1:0",), control=False)
        with pytest.raises(MetricsListenError) as caught:
            await server.start()
    assert str(caught.value) == (
        f"cannot serve metrics on {address}: Address already in use "
        "(another program listens there; choose another port in [server] metrics_listen)"
    )
    assert server.addresses == []  # no SIP port was opened either
    server = Server(
        office_with_metrics(tmp_path, "192.0.2.1:9464"), listen=("udp:127.0.0.1:0",), control=False
    )
    with pytest.raises(MetricsListenError, match="not an address of this host; change"):
        await server.start()


def test_durchwahl_serve_exits_with_the_reason(tmp_path: Path) -> None:
    config = office_with_metrics(tmp_path, "192.0.2.1:9464")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "durchwahl.routing.cli",
            "serve",
            "--config",
            str(config),
            "--listen",
            "udp:127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done
    assert done.stderr.strip().endswith(
        "durchwahl: cannot serve metrics on 192.0.2.1:9464: Cannot assign requested address "
        "(not an address of this host; change [server] metrics_listen)"
    ), done.stderr


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("localhost:9464", "'localhost:9464': 'localhost' is not an IP address"),
        ("127.0.0.1", "'127.0.0.1' is not 'IP:PORT'"),
        ("127.0.0.1:70000", "'127.0.0.1:70000': 70000 is not a port number"),
    ],
)
def test_check_config_names_a_bad_metrics_address(tmp_path: Path, given: str, problem: str) -> None:
    from durchwahl.routing.cli import check_config

    lines: list[str] = []
    assert check_config(str(office_with_metrics(tmp_path, given)), out=lines.append) == 1
    assert any(f"server.metrics_listen: {problem}" in line for line in lines), lines


def test_check_config_warns_about_metrics_open_to_the_network(tmp_path: Path) -> None:
    from durchwahl.routing.cli import check_config

    lines: list[str] = []
    assert check_config(str(office_with_metrics(tmp_path, "0.0.0.0:9464")), out=lines.append) == 0
    assert any(
        "metrics_listen: warning: 0.0.0.0:9464 is reachable from other hosts" in line for line in lines
    )


def test_loop_lag_figures() -> None:
    lag = LoopLag(weight=0.5)
    seen: list[float] = []
    lag.listeners.append(seen.append)
    assert lag.sample(10.0, 10.004) == pytest.approx(0.004)
    assert lag.sample(10.25, 10.2) == 0.0  # early is no lag
    lag.sample(10.5, 10.6)
    assert seen == pytest.approx([0.004, 0.0, 0.1])
    assert lag.average == pytest.approx(((0.004 / 2) + 0.1) / 2)
    assert lag.take_peak() == pytest.approx(0.1) and lag.take_peak() == 0.0


ROOT = Path(__file__).resolve().parents[2]


async def test_the_dashboard_and_the_docs_name_what_the_endpoint_exports(server: Server) -> None:
    _, body = await http(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    families = [f for f in text_string_to_metric_families(body.decode()) if f.name.startswith("durchwahl_")]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {family.name + suffix for family in families for suffix in suffixes[family.type]}
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"durchwahl_[a-z0-9_]+", target["expr"])
    }
    assert queried and queried <= exported, sorted(queried - exported)
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    named = [f for f in families if not f.name.endswith("_created")]
    documented = {f.name + ("_total" if f.type == "counter" else "") for f in named}
    assert {name for name in documented if f"`{name}`" not in operations} == set()
