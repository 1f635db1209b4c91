"""The security log: the exact line of each event, values a client chose that cannot forge a field or a line,
and the events the assembled server writes on loopback (unknown trunk source, refused by policy, a source
over its challenge rate, the log file and its permissions)."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from test_auth_guard import (
    COLLEAGUE,
    EXAMPLES,
    OFFICE,
    PHONE,
    Listener,
    invite,
    invite_with,
    port_of,
    raw_socket,
    send,
)

from durchwahl.routing.monitoring import SecurityLogError, open_security_log
from durchwahl.routing.monitoring_config import SecurityLogTarget
from durchwahl.routing.resolver import ResolverConfig
from durchwahl.routing.security import FailureGuard, GuardPolicy
from durchwahl.routing.security_log import SecurityEvent, SecurityLog
from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint, Response
from durchwahl.sipcore.auth import answer_challenge
from durchwahl.sipcore.transport import Flow


@attrs.frozen
class FakeFlow:
    transport: str = "UDP"
    remote: tuple[str, int] = ("192.0.2.7", 5062)


@pytest.fixture
def lines() -> tuple[SecurityLog, list[str]]:
    logger = logging.getLogger("test.security_log")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger.handlers[:] = [Keep()]
    return SecurityLog(logger), seen


def test_every_event_has_its_line(lines: tuple[SecurityLog, list[str]]) -> None:
    security, seen = lines
    flow = FakeFlow()
    security.auth_failed(flow, "INVITE", "101", "wrong password")
    security.auth_unchecked(flow, "REGISTER", "101", "throttled")
    security.throttled("192.0.2.7", "101", 5, 5.0)
    security.blocked("192.0.2.7", "101", 900.0, "10 failures")
    security.blocked("2001:db8:1:2::/64", None, 899.6, "failures for 5 or more users")
    security.rate_limited(flow, "REGISTER", 1000.0, 20.0)
    security.unknown_trunk_source(FakeFlow(remote=("203.0.113.5", 5060)), "INVITE", "+4930123456", "provider")
    security.policy_refused(flow, "INVITE", "102", "sip:+4990012345@office.example", 403, "Forbidden: no")
    assert seen == [
        'auth-failed source=192.0.2.7 port=5062 transport=UDP method=INVITE user=101 reason="wrong password"',
        "auth-unchecked source=192.0.2.7 port=5062 transport=UDP method=REGISTER user=101 state=throttled",
        "throttled source=192.0.2.7 user=101 failures=5 check_every=5",
        'blocked source=192.0.2.7 user=101 seconds=900 reason="10 failures"',
        'blocked source=2001:db8:1:2::/64 user=* seconds=900 reason="failures for 5 or more users"',
        "rate-limited source=192.0.2.7 port=5062 transport=UDP method=REGISTER dropped=1 rate=20",
        "unknown-trunk-source source=203.0.113.5 port=5060 transport=UDP method=INVITE number=+4930123456 "
        "trunk=provider",
        "policy-refused source=192.0.2.7 port=5062 transport=UDP method=INVITE caller=102 "
        'target=sip:+4990012345@office.example status=403 reason="Forbidden: no"',
    ]
    assert security.counts[(SecurityEvent.AUTH_FAILED, "INVITE")] == 1
    assert security.counts[(SecurityEvent.BLOCKED, "")] == 2


def test_what_a_client_chose_cannot_forge_a_field_or_a_line(lines: tuple[SecurityLog, list[str]]) -> None:
    security, seen = lines
    forged = "x source=6.6.6.6 port=1\nauth-failed source=6.6.6.6 port=1"
    security.auth_failed(FakeFlow(), "REGISTER", forged, forged)
    [line] = seen
    assert "\n" not in line and line.startswith("auth-failed source=192.0.2.7 port=5062 ")
    assert line.count(" source=") == 1 + 4  # the real one, then only inside the two JSON-quoted values
    assert 'user="x source=6.6.6.6 port=1\\nauth-failed source=6.6.6.6 port=1"' in line


def test_addresses_are_written_as_a_ban_rule_needs_them(lines: tuple[SecurityLog, list[str]]) -> None:
    security, seen = lines
    security.auth_failed(FakeFlow(remote=("::ffff:198.51.100.9", 5060)), "REGISTER", "101", "x")
    security.auth_failed(FakeFlow(remote=("2001:db8::7", 5060), transport="TCP"), "REGISTER", "101", "x")
    assert seen[0].startswith("auth-failed source=198.51.100.9 port=5060 ")
    assert seen[1].startswith("auth-failed source=2001:db8::7 port=5060 transport=TCP ")


def test_a_source_over_its_challenge_rate_is_reported_once_a_minute(
    lines: tuple[SecurityLog, list[str]],
) -> None:
    security, seen = lines
    flow = FakeFlow()
    for i in range(500):  # 500 drops in 100 s: a line at 0 s, then one at 60 s with the count since
        security.rate_limited(flow, "REGISTER", 1000.0 + i * 0.2, 20.0)
    security.rate_limited(FakeFlow(remote=("192.0.2.8", 5060)), "INVITE", 1001.0, 20.0)
    assert [line.split(" dropped=")[1] for line in seen] == ["1 rate=20", "300 rate=20", "1 rate=20"]
    assert seen[2].startswith("rate-limited source=192.0.2.8 ")


# -------------------------------------------------------------------------------- the assembled server


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    path = tmp_path / "office.toml"
    extra = getattr(request, "param", "")
    path.write_text(OFFICE.replace('state_dir = "var"\n', f'state_dir = "var"\n{extra}'), encoding="utf-8")
    shutil.copy(EXAMPLES / "greeting.wav", tmp_path / "greeting.wav")
    config = ResolverConfig(default_scope="none")  # employees may call no external number
    async with Server(path, control=False, resolver_config=config) as server:
        yield server


async def test_unknown_trunk_source_and_refused_by_policy(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.routing.security")
    async with Endpoint() as phone:
        await phone.listen(f"udp:{PHONE}:0")
        flow = phone.flow_to("127.0.0.1", port_of(server))
        # As if it were the provider: the office's number, From the caller's number at the provider's domain.
        for caller in ("<sip:+4989555123@provider.example>", "<sip:101@office.example>"):
            request = phone.make_request(
                "INVITE",
                "sip:004930999000@office.example",
                flow,
                from_=caller,
                to="<sip:004930999000@office.example>",
            )
            assert (await send(phone, request, flow)).status == 401
        # Employee 101 may call no external number: refused by policy.
        answer = await _invite_as(phone, flow, "101", "anna-secret", "+49891234567")
        assert answer.status == 403
    security = [r.getMessage() for r in caplog.records if r.name == "durchwahl.routing.security"]
    assert security[0].startswith(
        f"unknown-trunk-source source={PHONE} port={flow.local[1]} transport=UDP method=INVITE "
        "number=+4930999000 trunk=provider"
    )
    # A phone of the office calling the number is no trunk's call: challenged, nothing logged.
    assert len([line for line in security if line.startswith("unknown-trunk-source")]) == 1
    [refused] = [line for line in security if line.startswith("policy-refused")]
    assert refused.startswith(f"policy-refused source={PHONE} port={flow.local[1]} transport=UDP ")
    assert "caller=101 target=sip:+49891234567@office.example status=403 " in refused


async def test_a_source_dropped_for_its_challenge_rate_is_in_the_log(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.routing.security")
    server.registrar.guard = FailureGuard(GuardPolicy(challenge_rate=5, challenge_burst=20))
    transport, listener = await raw_socket(COLLEAGUE)
    try:
        local = transport.get_extra_info("sockname")
        for i in range(60):
            transport.sendto(_register(local, i), ("127.0.0.1", port_of(server)))
        await _quiet(listener)
    finally:
        transport.close()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rate-limited")]
    assert line.startswith(f"rate-limited source={COLLEAGUE} port={local[1]} transport=UDP method=REGISTER ")
    assert line.endswith(" dropped=1 rate=5")


async def _invite_as(client: Endpoint, flow: Flow, user: str, password: str, target: str) -> Response:
    """INVITE ``target`` → 401 → INVITE with ``user``'s credentials; the answer to the second."""
    uri = f"sip:{target}@office.example"
    first = await send(client, invite(client, flow, user, target, call_id=f"to-{target}"), flow)
    assert first.status == 401, first
    creds = answer_challenge(first.www_authenticate[0], "INVITE", uri, user, password, cnonce="c")
    again = invite(
        client, flow, user, target, cseq=2, call_id=f"to-{target}", headers=[("Authorization", str(creds))]
    )
    return await send(client, again, flow)


def _register(local: tuple[str, int], i: int) -> bytes:
    return (
        "REGISTER sip:office.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-rate-{i}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:101@office.example>;tag=r\r\nTo: <sip:101@office.example>\r\n"
        f"Call-ID: rate-{i}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def _quiet(listener: Listener, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                await listener.received.get()


@pytest.mark.parametrize("server", ['security_log = "var/security.log"\n'], indirect=True)
async def test_the_log_file_gets_every_event_and_only_its_owner_may_read_it(
    server: Server, tmp_path: Path
) -> None:
    async with Endpoint() as phone:
        await phone.listen(f"udp:{PHONE}:0")
        flow = phone.flow_to("127.0.0.1", port_of(server))
        assert (await invite_with(phone, flow, "101", "wrong", 1)).status == 401
    path = tmp_path / "var" / "security.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [line] = path.read_text(encoding="utf-8").splitlines()
    # 2026-01-05T10:00:00+0100 durchwahl[1234]: auth-failed source=127.0.0.2 port=… method=INVITE user=101 …
    stamp, _, rest = line.partition(" ")
    assert len(stamp) == len("2026-01-05T10:00:00+0100") and stamp[10] == "T"
    assert rest.startswith("durchwahl[") and f"]: auth-failed source={PHONE} port=" in rest


def test_a_log_target_that_cannot_be_opened_says_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    target = SecurityLogTarget(path=tmp_path / "a-file" / "security.log")
    with pytest.raises(SecurityLogError) as caught:
        open_security_log(target)
    assert str(caught.value).startswith(f"cannot write the security log to {target.path}: ")
    assert str(caught.value).endswith("(see [server] security_log)")
    with pytest.raises(SecurityLogError, match=r"syslog \(/nonexistent/log\)"):
        open_security_log(SecurityLogTarget(facility="auth"), syslog_socket="/nonexistent/log")


def test_syslog_gets_the_line_with_its_tag_and_facility(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(2.0)
        handler = open_security_log(SecurityLogTarget(facility="authpriv"), syslog_socket=path)
        logger = logging.getLogger("test.security_log.syslog")
        logger.propagate = False
        logger.handlers[:] = [handler]
        try:
            SecurityLog(logger).auth_failed(FakeFlow(), "REGISTER", "101", "wrong password")
            datagram = syslog.recv(4096).decode()
        finally:
            handler.close()
    # <84>: facility authpriv (10) * 8 + warning (4); journald and rsyslog take "durchwahl" as the tag.
    assert re.fullmatch(
        r"<84>durchwahl\[\d+\]: auth-failed source=192\.0\.2\.7 port=5062 transport=UDP method=REGISTER "
        r'user=101 reason="wrong password"\x00?',
        datagram,
    ), datagram


async def test_a_source_blocked_for_its_unchecked_attempts_is_in_the_log(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond ``source_attempts`` credentialed attempts refused unchecked, the whole source is blocked."""
    caplog.set_level(logging.INFO, logger="durchwahl.routing.security")
    policy = GuardPolicy(throttle_after=1, throttle_interval=600, block_after=50, source_attempts=3)
    server.registrar.guard = FailureGuard(policy)
    async with Endpoint() as phone:
        await phone.listen(f"udp:{PHONE}:0")
        flow = phone.flow_to("127.0.0.1", port_of(server))
        for n in range(6):
            assert (await invite_with(phone, flow, "101", f"guess-{n}", n)).status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "durchwahl.routing.security"]
    events = [line.split(" ", 1)[0] for line in lines]
    assert events == ["auth-failed", "throttled", *["auth-unchecked"] * 4, "blocked", "auth-unchecked"], lines
    assert lines[6] == (
        f'blocked source={PHONE} user=* seconds=900 reason="too many attempts refused unchecked"'
    )
