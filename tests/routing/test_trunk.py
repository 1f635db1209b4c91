"""The trunk UAC side: answering 401/407 (pure), the registration schedule (fake clock), a fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from durchwahl.routing.directory import Trunk
from durchwahl.routing.trunk import (
    RegistrationSchedule,
    RegistrationState,
    TrunkRegistration,
    retry_with_credentials,
)
from durchwahl.sipcore import Endpoint, IncomingRequest
from durchwahl.sipcore.auth import Authenticated, DigestError, DigestSecret, DigestServer
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.errors import SipError
from durchwahl.sipcore.message import Request, make_response, parse_message

SECRET = b"fedcba9876543210fedcba9876543210"
NOW = 1_700_000_000.0

INVITE = parse_message(
    b"INVITE sip:+49891234567@provider.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKfirst;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:trunkuser@provider.example>;tag=abc\r\n"
    b"To: <sip:+49891234567@provider.example>\r\n"
    b"Call-ID: call-1@192.0.2.10\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:trunkuser@192.0.2.10:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"\r\n"
    b"v=0\r\n"
)
assert isinstance(INVITE, Request)


def lookup(user: str) -> DigestSecret | None:
    return DigestSecret(password="pw") if user == "trunkuser" else None


# ----------------------------------------------------------------------------------------- 401 / 407


@pytest.mark.parametrize("proxy", [False, True])
def test_retry_answers_the_challenge_in_a_new_transaction(proxy: bool) -> None:
    server = DigestServer("provider.example", secret=SECRET)
    challenge = server.challenge_response(INVITE, NOW, proxy=proxy, to_tag="srv")
    retried = retry_with_credentials(
        INVITE, challenge, "trunkuser", "pw", branch="z9hG4bKsecond", cnonce="cn"
    )
    assert retried.cseq.seq == 8 and retried.cseq.method == "INVITE"
    assert retried.branch == "z9hG4bKsecond" and retried.via[0].rport_requested
    assert (retried.call_id, retried.from_.tag, retried.to.tag) == ("call-1@192.0.2.10", "abc", None)
    assert retried.body == INVITE.body and retried.uri == INVITE.uri
    creds = retried.proxy_authorization if proxy else retried.authorization
    assert len(creds) == 1 and creds[0].param("algorithm") == "SHA-256"  # the strongest offered
    assert not (retried.authorization if proxy else retried.proxy_authorization)
    assert server.verify(retried, lookup, NOW, proxy=proxy) == Authenticated("trunkuser", "SHA-256")
    # Everything else unchanged, in order.
    kept = [h.name for h in retried.headers if h.key not in ("authorization", "proxy-authorization")]
    assert kept == [h.name for h in INVITE.headers]


def test_retry_replaces_refused_credentials_and_keeps_other_realms() -> None:
    outer = DigestServer("outer.example", secret=SECRET)
    inner = DigestServer("provider.example", secret=SECRET, algorithms=("MD5",))
    first = retry_with_credentials(
        INVITE,
        outer.challenge_response(INVITE, NOW, proxy=True),
        "trunkuser",
        "pw",
        branch="z9hG4bK1",
        cnonce="a",
    )
    second = retry_with_credentials(
        first,
        inner.challenge_response(first, NOW, proxy=True),
        "trunkuser",
        "pw",
        branch="z9hG4bK2",
        cnonce="b",
    )
    assert [c.param("realm") for c in second.proxy_authorization] == ["outer.example", "provider.example"]
    third = retry_with_credentials(
        second,
        inner.challenge_response(second, NOW, proxy=True),
        "trunkuser",
        "pw",
        branch="z9hG4bK3",
        cnonce="c",
    )
    assert [c.param("realm") for c in third.proxy_authorization] == ["outer.example", "provider.example"]
    assert third.cseq.seq == 10
    assert inner.verify(third, lookup, NOW, proxy=True) == Authenticated("trunkuser", "MD5")


def test_retry_refuses_what_it_cannot_answer() -> None:
    with pytest.raises(DigestError):
        retry_with_credentials(INVITE, make_response(INVITE, 403), "u", "p", branch="z9hG4bKx", cnonce="c")
    basic = make_response(INVITE, 401, headers=[("WWW-Authenticate", 'Basic realm="x"')])
    with pytest.raises(DigestError):
        retry_with_credentials(INVITE, basic, "u", "p", branch="z9hG4bKx", cnonce="c")


# --------------------------------------------------------------------------------------------- schedule


def test_first_attempt_is_due_at_once_and_refresh_comes_before_expiry() -> None:
    s = RegistrationSchedule("provider", NOW, expires=3600)
    assert s.due(NOW) and s.status.state is RegistrationState.UNREGISTERED
    s.attempt_started(NOW)
    assert not s.due(NOW + 1000) and s.status.in_flight
    with pytest.raises(SipError):
        s.attempt_started(NOW)
    s.succeeded(NOW + 1, 3600)
    status = s.status
    assert status.state is RegistrationState.REGISTERED and status.expires_at == NOW + 3601
    assert status.next_attempt_at == NOW + 1 + 2880  # 80 %
    assert s.refresh_delay(60) == 30  # expires − 30 s beats 80 %
    assert s.refresh_delay(10) == 5  # never sooner than half way


def test_failures_back_off_exponentially_and_success_resets() -> None:
    s = RegistrationSchedule("provider", NOW, retry_base=2, retry_max=60)
    at = NOW
    delays = []
    for _ in range(7):
        s.attempt_started(at)
        s.failed(at, "408 Request Timeout")
        assert s.next_attempt_at is not None
        delays.append(s.next_attempt_at - at)
        at = s.next_attempt_at
    assert delays == [2, 4, 8, 16, 32, 60, 60]
    status = s.status
    assert status.state is RegistrationState.FAILING and status.failures == 7
    assert status.last_error == "408 Request Timeout"
    s.attempt_started(at)
    s.failed(at, "503 Service Unavailable", retry_after=600)
    assert s.next_attempt_at == at + 600
    s.attempt_started(at + 600)
    s.succeeded(at + 600, 120)
    assert s.status.failures == 0 and s.status.state is RegistrationState.REGISTERED


def test_failing_keeps_the_old_expiry_while_it_lasts() -> None:
    s = RegistrationSchedule("provider", NOW)
    s.attempt_started(NOW)
    s.succeeded(NOW, 100)
    s.attempt_started(NOW + 70)
    s.failed(NOW + 70, "timeout")
    assert s.status.state is RegistrationState.FAILING and s.status.expires_at == NOW + 100
    s.attempt_started(NOW + 200)
    s.failed(NOW + 200, "timeout")
    assert s.status.expires_at is None


def test_423_asks_again_for_min_expires_and_stop_ends_it() -> None:
    s = RegistrationSchedule("provider", NOW, expires=60)
    s.attempt_started(NOW)
    s.interval_too_brief(NOW, 300)
    assert s.expires == 300 and s.due(NOW) and s.status.failures == 0
    s.attempt_started(NOW)
    s.interval_too_brief(NOW, 300)  # a second 423 for what we asked: a failure, not a loop
    assert s.status.failures == 1
    s.stopped(NOW)
    assert s.status.state is RegistrationState.UNREGISTERED and s.next_attempt_at is None
    with pytest.raises(SipError):
        s.attempt_started(NOW)


# ------------------------------------------------------------------------------ against a fake provider


@dataclass
class Provider:
    """An Endpoint with a DigestServer answering REGISTER: 401, then 200 granting ``grant`` seconds."""

    digest: DigestServer
    grant: int = 2
    reject_with: int | None = None
    registers: list[Request] = field(default_factory=list)
    accepted: list[Request] = field(default_factory=list)

    def handle(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        self.registers.append(request)
        if self.reject_with is not None:
            incoming.respond(self.reject_with)
            return
        loop_now = 1_700_000_000.0
        result = self.digest.verify(request, lookup, loop_now)
        if not isinstance(result, Authenticated):
            incoming.send(self.digest.challenge_response(request, loop_now, to_tag=incoming.to_tag))
            return
        self.accepted.append(request)
        (contact,) = request.contact
        expires = request.expires or 0
        incoming.respond(200, headers=[("Contact", f"{contact};expires={min(expires, self.grant)}")])


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, int]]:
    fake = Provider(DigestServer("provider.example", secret=SECRET))
    core = CoreConfig(allowed_methods=("REGISTER", "OPTIONS"))
    async with Endpoint(fake.handle, core=core) as endpoint:
        _, port = await endpoint.listen("udp:127.0.0.1:0")
        yield fake, port


def trunk(port: int, password: str = "pw") -> Trunk:
    return Trunk("provider", "127.0.0.1", port, "udp", "trunkuser", password, True, ())


async def test_registers_and_refreshes_before_a_short_expiry(provider: tuple[Provider, int]) -> None:
    fake, port = provider
    async with Endpoint() as pbx:
        await pbx.listen("udp:127.0.0.1:0")
        registration = TrunkRegistration(pbx, trunk(port), expires=60, refresh_margin=30)
        task = asyncio.ensure_future(registration.run())
        try:
            async with asyncio.timeout(6):
                while len(fake.accepted) < 2:  # granted 2 s: the refresh comes 1 s after
                    await asyncio.sleep(0.05)
            status = registration.status
            assert status.state is RegistrationState.REGISTERED and status.last_error is None
            assert status.expires_at is not None and status.failures == 0
        finally:
            await registration.stop(unregister=True)
            task.cancel()
    first, second = fake.accepted[:2]
    assert first.call_id == second.call_id  # one registration, refreshed (RFC 3261 §10.2.4)
    assert first.cseq.seq < second.cseq.seq
    assert first.get("expires") == "60"
    assert str(first.to.uri) == "sip:trunkuser@127.0.0.1"
    assert fake.accepted[-1].get("expires") == "0"  # stop() removed the binding


async def test_rejection_is_visible_and_retried_with_back_off(provider: tuple[Provider, int]) -> None:
    fake, port = provider
    fake.reject_with = 403
    async with Endpoint() as pbx:
        await pbx.listen("udp:127.0.0.1:0")
        registration = TrunkRegistration(pbx, trunk(port), retry_base=0.2, retry_max=0.4)
        task = asyncio.ensure_future(registration.run())
        try:
            async with asyncio.timeout(5):
                while len(fake.registers) < 3:
                    await asyncio.sleep(0.02)
            status = registration.status
            assert status.state is RegistrationState.FAILING
            assert status.last_error == "403 Forbidden" and status.failures >= 2
            fake.reject_with = None  # the provider recovers
            async with asyncio.timeout(5):
                while registration.status.state is not RegistrationState.REGISTERED:
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await registration.stop(unregister=False)


async def test_wrong_password_fails_after_one_challenge(provider: tuple[Provider, int]) -> None:
    fake, port = provider
    async with Endpoint() as pbx:
        await pbx.listen("udp:127.0.0.1:0")
        registration = TrunkRegistration(pbx, trunk(port, password="wrong"))
        status = await registration.register_once()
    assert status.state is RegistrationState.FAILING and status.last_error == "401 Unauthorized"
    assert len(fake.registers) == 2 and not fake.accepted


async def test_no_answer_is_a_failure(provider: tuple[Provider, int]) -> None:
    _, port = provider
    async with Endpoint() as pbx:
        await pbx.listen("udp:127.0.0.1:0")
        registration = TrunkRegistration(pbx, trunk(port + 1 if port < 65535 else port - 1), timeout=0.3)
        status = await registration.register_once()
    assert status.state is RegistrationState.FAILING
    assert status.last_error is not None and status.last_error.startswith("no answer from")
