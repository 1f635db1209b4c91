"""The registrar service on loopback endpoints (UDP, TCP): digest auth, NAT flows, restarts, SIPp."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sipp import free_port, require_sipp, run_sipp

from durchwahl.routing.directory import Directory
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.location import InMemoryLocationStore, LocationStore, SqliteLocationStore
from durchwahl.routing.registrar_service import RegistrarService
from durchwahl.routing.security import Admission, FailureGuard, GuardPolicy
from durchwahl.sipcore import Endpoint, Response
from durchwahl.sipcore.auth import answer_challenge
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.headers import Challenge
from durchwahl.sipcore.registrar import RegistrarConfig
from durchwahl.sipcore.transport import Flow

T0 = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef"
#: Twenty employees, 100–121 without 110 and 112 (emergency numbers in Germany, which no extension may take).
USERS = {f"1{i:02d}": f"secret-{i:02d}" for i in range(22) if i not in (10, 12)}
SCENARIO = Path(__file__).with_name("sipp_register.xml")
CORE = CoreConfig(allowed_methods=("REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL"))


def write_directory(folder: Path) -> Directory:
    lines = [
        "[server]",
        'domain = "office.example"',
        'listen = ["udp:127.0.0.1:5060"]',
        'state_dir = "var"',
    ]
    for user, password in USERS.items():
        lines += [
            "[[employee]]",
            f'extension = "{user}"',
            f'name = "User {user}"',
            f'password = "{password}"',
        ]
    path = folder / "office.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_directory(path)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    service: RegistrarService
    server: Endpoint
    client: Endpoint
    flow: Flow
    clock: Clock


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    transport = getattr(request, "param", "udp")
    clock = Clock()
    service = RegistrarService(
        write_directory(tmp_path), InMemoryLocationStore(), secret=SECRET, clock=clock, nonce_lifetime=60
    )
    async with Endpoint(service.handle, core=CORE) as server, Endpoint() as client:
        _, port = await server.listen(f"{transport}:127.0.0.1:0")
        await client.listen(f"{transport}:127.0.0.1:0")
        yield Rig(service, server, client, client.flow_to("127.0.0.1", port, transport), clock)


async def send_register(
    rig: Rig,
    user: str,
    *,
    to_user: str | None = None,
    cseq: int = 1,
    call_id: str = "reg-call-1",
    headers: tuple[tuple[str, str], ...] = (),
    contact: str | None = None,
    uri: str = "sip:office.example",
) -> Response:
    to = f"<sip:{to_user or user}@office.example>"
    extra = [("Expires", "600"), *headers]
    if contact is not None:
        extra.append(("Contact", contact))
    request = rig.client.make_request(
        "REGISTER",
        uri,
        rig.flow,
        from_=to,
        to=to,
        call_id=call_id,
        cseq=cseq,
        contact=contact is None,
        headers=extra,
    )
    async with asyncio.timeout(5):
        return await rig.client.request(request, rig.flow)


async def register(
    rig: Rig,
    user: str,
    password: str,
    *,
    algorithm: str = "SHA-256",
    to_user: str | None = None,
    contact: str | None = None,
    call_id: str = "reg-call-1",
) -> Response:
    """REGISTER, 401, REGISTER with credentials: returns the final answer to the second."""
    first = await send_register(rig, user, to_user=to_user, contact=contact, call_id=call_id)
    assert first.status == 401, first
    challenge = next(c for c in first.www_authenticate if c.param("algorithm") == algorithm)
    creds = answer_challenge(challenge, "REGISTER", "sip:office.example", user, password, cnonce="c0ffee")
    return await send_register(
        rig,
        user,
        to_user=to_user,
        cseq=2,
        call_id=call_id,
        contact=contact,
        headers=(("Authorization", str(creds)),),
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_register_with_digest_stores_the_binding_and_its_flow(rig: Rig, algorithm: str) -> None:
    response = await register(rig, "101", USERS["101"], algorithm=algorithm)
    assert response.status == 200, response
    (contact,) = response.contact
    assert contact.param("expires") == "600"
    (binding,) = await rig.service.contacts("101")
    assert binding.aor == "sip:101@office.example"
    assert binding.flow is not None and binding.flow.remote == rig.client.local_address("UDP")
    assert binding.registered_at == T0 and binding.expires_at == T0 + 600


async def test_challenge_offers_the_configured_algorithms_in_order(rig: Rig) -> None:
    first = await send_register(rig, "101")
    assert first.status == 401
    assert [c.param("algorithm") for c in first.www_authenticate] == ["SHA-256", "MD5"]
    assert all(
        c.param("qop") == "auth" and c.param("realm") == "office.example" for c in first.www_authenticate
    )


async def test_wrong_password_and_unknown_user_get_the_same_fresh_challenge(rig: Rig) -> None:
    wrong = await register(rig, "101", "not-the-password")
    unknown = await register(rig, "999", "whatever", call_id="reg-call-2")
    for response in (wrong, unknown):
        assert response.status == 401
        assert [c.param("algorithm") for c in response.www_authenticate] == ["SHA-256", "MD5"]
        assert all(c.param("stale") is None for c in response.www_authenticate)
    assert {h.name for h in wrong.headers} == {h.name for h in unknown.headers}
    assert await rig.service.contacts("101") == []


async def test_someone_elses_aor_is_403(rig: Rig) -> None:
    response = await register(rig, "101", USERS["101"], to_user="102")
    assert response.status == 403 and "101 may only register sip:101@office.example" in response.reason
    assert await rig.service.contacts("102") == []


async def test_expired_nonce_gets_stale_true(rig: Rig) -> None:
    first = await send_register(rig, "101")
    challenge = next(c for c in first.www_authenticate if c.param("algorithm") == "SHA-256")
    creds = answer_challenge(challenge, "REGISTER", "sip:office.example", "101", USERS["101"], cnonce="x")
    rig.clock.now += 61
    again = await send_register(rig, "101", cseq=2, headers=(("Authorization", str(creds)),))
    assert again.status == 401 and all(c.param("stale") == "TRUE" for c in again.www_authenticate)


async def test_foreign_domain_is_404_and_other_methods_405(rig: Rig) -> None:
    response = await send_register(rig, "101", uri="sip:elsewhere.example")
    assert response.status == 404
    message = rig.client.make_request(
        "INVITE", "sip:101@office.example", rig.flow, from_="<sip:x@y>", to="<sip:101@office.example>"
    )
    async with asyncio.timeout(5):
        assert (await rig.client.request(message, rig.flow)).status == 405


async def test_server_address_as_domain_is_accepted(rig: Rig) -> None:
    first = await send_register(rig, "101", uri=f"sip:127.0.0.1:{rig.flow.remote[1]}")
    assert first.status == 401


async def test_423_passes_through(rig: Rig, tmp_path: Path) -> None:
    rig.service.config = RegistrarConfig(min_expires=900, default_expires=900)
    response = await register(rig, "101", USERS["101"])
    assert response.status == 423 and response.get("min-expires") == "900"


@pytest.mark.parametrize("rig", ["udp", "tcp"], indirect=True)
async def test_phone_behind_nat_is_reached_through_its_flow(rig: Rig) -> None:
    """The Contact claims a private address; requests still reach the phone via the REGISTER's flow."""
    response = await register(rig, "101", USERS["101"], contact="<sip:101@192.168.1.20:5060>")
    assert response.status == 200, response
    (binding,) = await rig.service.contacts("101")
    assert binding.uri.host == "192.168.1.20"
    flow = rig.service.flow_for(binding)
    assert flow is not None
    if flow.transport == "UDP":
        assert flow.remote == rig.client.local_address("UDP")  # the source address, not the Contact's
    else:
        assert flow.connection_id is not None  # back on the connection the phone opened
        assert flow.remote[0] == "127.0.0.1"
    options = rig.server.make_request(
        "OPTIONS", binding.uri, flow, from_="<sip:registrar@office.example>", to=f"<{binding.uri}>"
    )
    async with asyncio.timeout(5):
        answer = await rig.server.request(options, flow)
    assert answer.status == 200  # the client endpoint (the "phone") answered: it was reached


async def test_ping_marks_dead_phones_and_calls_skip_them(rig: Rig) -> None:
    assert (await register(rig, "101", USERS["101"])).status == 200
    assert await rig.service.ping(rig.server, timeout=2) == 0
    await rig.client.close()  # the phone goes away without unregistering
    assert await rig.service.ping(rig.server, timeout=0.3) == 1
    assert await rig.service.contacts("101") == []
    assert len(await rig.service.contacts("101", include_unreachable=True)) == 1


async def test_concurrent_registers_for_one_aor_are_serialised(rig: Rig) -> None:
    # Several devices of one user register at once; none of the writes may be lost.
    first = await send_register(rig, "101")
    challenge = next(c for c in first.www_authenticate if c.param("algorithm") == "SHA-256")

    async def one(n: int) -> Response:
        creds = answer_challenge(
            challenge, "REGISTER", "sip:office.example", "101", USERS["101"], cnonce=f"c{n}", nc=n + 1
        )
        return await send_register(
            rig,
            "101",
            call_id=f"dev-{n}",
            cseq=2,
            contact=f"<sip:101@10.1.0.{n}>",
            headers=(("Authorization", str(creds)),),
        )

    answers = await asyncio.gather(*(one(n) for n in range(5)))
    assert [a.status for a in answers] == [200] * 5
    assert len(await rig.service.contacts("101")) == 5


async def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    directory = write_directory(tmp_path)
    path = directory.server.state_dir / "location.db"
    clock = Clock()

    async def serve(store: LocationStore) -> tuple[RegistrarService, Endpoint, int]:
        service = RegistrarService(directory, store, secret=SECRET, clock=clock)
        server = Endpoint(service.handle, core=CORE)
        _, port = await server.listen("udp:127.0.0.1:0")
        return service, server, port

    store = SqliteLocationStore(path, clock=clock)
    service, server, port = await serve(store)
    async with Endpoint() as client:
        await client.listen("udp:127.0.0.1:0")
        rig = Rig(service, server, client, client.flow_to("127.0.0.1", port), clock)
        assert (await register(rig, "101", USERS["101"])).status == 200
    await server.close()
    await store.close()

    clock.now += 100
    store = SqliteLocationStore(path, clock=clock)
    service, server, _ = await serve(store)
    try:
        (binding,) = await service.contacts("101")
        assert binding.aor == "sip:101@office.example" and binding.remaining(clock.now) == 500
    finally:
        await server.close()
        await store.close()


# ------------------------------------------------------------------------ enumeration and brute force


def shape(response: Response) -> tuple[object, ...]:
    """Everything a scanner can compare, without the per-request values (nonce, tags, Via, Call-ID)."""
    varying = {"via", "from", "to", "call-id", "cseq"}
    challenges = tuple(
        Challenge(c.scheme, tuple((k, v) for k, v in c.params if k != "nonce"))
        for c in response.www_authenticate
    )
    return (
        response.status,
        response.reason,
        tuple(h.name for h in response.headers if h.key not in varying),
        challenges,
        response.body,
    )


async def attempt(rig: Rig, user: str, password: str, n: int, flow: Flow | None = None) -> Response:
    """One REGISTER → 401 → REGISTER-with-credentials round from ``flow``; returns the second answer."""
    flow = flow or rig.flow
    alt = Rig(rig.service, rig.server, rig.client, flow, rig.clock)
    return await register(alt, user, password, algorithm="MD5", call_id=f"attempt-{n}")


async def test_unknown_user_wrong_password_and_blocked_source_look_identical(rig: Rig) -> None:
    rig.service.guard = FailureGuard(GuardPolicy(throttle_after=3, block_after=3, block_for=600))
    unknown = await attempt(rig, "999", "guess", 1)
    wrong = await attempt(rig, "101", "guess", 2)
    plain = await send_register(rig, "101", call_id="plain")  # no credentials at all
    assert shape(unknown) == shape(wrong) == shape(plain)
    await attempt(rig, "101", "guess", 3)
    await attempt(rig, "101", "guess", 5)  # 101's third failure from here
    assert rig.service.guard.admit("127.0.0.1", rig.clock.now, "101") is Admission.BLOCKED
    blocked = await attempt(rig, "101", USERS["101"], 4)  # even the right password: not checked now
    assert shape(blocked) == shape(wrong)
    assert await rig.service.contacts("101") == []


async def test_403_reads_the_same_whether_the_target_user_exists(rig: Rig) -> None:
    existing = await register(rig, "101", USERS["101"], to_user="102")
    missing = await register(rig, "101", USERS["101"], to_user="998", call_id="reg-call-2")
    assert existing.status == missing.status == 403
    assert shape(existing) == shape(missing)


async def test_brute_force_blocks_the_source_and_others_keep_registering(rig: Rig) -> None:
    rig.service.guard = FailureGuard(GuardPolicy(throttle_after=3, throttle_interval=60, block_after=5))
    statuses = [(await attempt(rig, "101", f"guess-{n}", n)).status for n in range(8)]
    assert statuses == [401] * 8
    # 3 guesses checked, then one per 60 s: the fake clock stands still, so no more were counted.
    assert rig.service.guard.status("127.0.0.1", rig.clock.now).failures == 3
    rig.clock.now += 60
    for n in range(2):
        await attempt(rig, "101", f"late-{n}", 10 + n)
        rig.clock.now += 60
    assert rig.service.guard.admit("127.0.0.1", rig.clock.now, "101") is Admission.BLOCKED
    assert (await attempt(rig, "101", USERS["101"], 20)).status == 401  # blocked: never checked

    async with Endpoint() as other:  # another source on the loopback network
        await other.listen("udp:127.0.0.2:0")
        flow = other.flow_to("127.0.0.1", rig.flow.remote[1])
        second = Rig(rig.service, rig.server, other, flow, rig.clock)
        assert (await register(second, "102", USERS["102"], call_id="other")).status == 200
    assert len(await rig.service.contacts("102")) == 1


async def test_success_resets_the_users_failures(rig: Rig) -> None:
    rig.service.guard = FailureGuard(GuardPolicy(throttle_after=3, block_after=5))
    for n in range(2):
        await attempt(rig, "101", "typo", n)
    assert rig.service.guard.status("127.0.0.1", rig.clock.now).failures == 2
    assert (await attempt(rig, "101", USERS["101"], 9)).status == 200
    assert rig.service.guard.status("127.0.0.1", rig.clock.now).failures == 0


async def test_answer_to_a_nonce_sent_elsewhere_is_rechallenged_and_not_counted(rig: Rig) -> None:
    """A spoofer cannot make failures count against an address it does not receive answers at."""
    first = await send_register(rig, "101")  # the nonce goes to 127.0.0.1
    challenge = next(c for c in first.www_authenticate if c.param("algorithm") == "MD5")
    creds = answer_challenge(challenge, "REGISTER", "sip:office.example", "101", USERS["101"], cnonce="x")
    async with Endpoint() as other:
        await other.listen("udp:127.0.0.2:0")
        flow = other.flow_to("127.0.0.1", rig.flow.remote[1])
        second = Rig(rig.service, rig.server, other, flow, rig.clock)
        moved = await send_register(second, "101", cseq=2, headers=(("Authorization", str(creds)),))
    assert moved.status == 401 and all(c.param("stale") is None for c in moved.www_authenticate)
    assert rig.service.guard.tracked == 0
    # The same answer from the address the nonce was sent to is fine.
    ok = await send_register(rig, "101", cseq=2, headers=(("Authorization", str(creds)),))
    assert ok.status == 200


# ------------------------------------------------------------------------------------------------ SIPp


@pytest.mark.interop
async def test_sipp_authenticated_register(tmp_path: Path) -> None:
    require_sipp()
    directory = write_directory(tmp_path)
    store = InMemoryLocationStore()
    # SIPp 3.6 answers only MD5 and only the first challenge (INTEROP.md): offer MD5 first.
    service = RegistrarService(directory, store, secret=SECRET, algorithms=("MD5", "SHA-256"))
    users = tmp_path / "users.csv"
    users.write_text(
        "SEQUENTIAL\n"
        + "".join(f"{u};[authentication username={u} password={p}]\n" for u, p in USERS.items()),
        encoding="utf-8",
    )
    async with Endpoint(service.handle, core=CORE) as server:
        _, port = await server.listen("udp:127.0.0.1:0")
        result = await run_sipp(
            [
                "-sf",
                str(SCENARIO),
                "-inf",
                str(users),
                f"127.0.0.1:{port}",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-t",
                "u1",
                "-m",
                str(len(USERS)),
                "-r",
                "20",
                "-l",
                "10",
                "-timeout",
                "30s",
                "-timeout_error",
                "-nostdin",
            ],
            tmp_path,
            timeout=45,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.successful == len(USERS) and result.failed == 0, result.stdout[-3000:]
    for user in USERS:
        (binding,) = await service.contacts(user)
        assert binding.uri.host == "192.168.77.10"  # what the Contact claimed …
        assert binding.flow is not None and binding.flow.remote[0] == "127.0.0.1"  # … and how to reach it


async def test_the_registrar_logs_a_phone_that_gave_up(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """101 is challenged and never answers; 102 answers: only 101 is logged, with its source, client and
    the algorithms it was offered."""
    caplog.set_level(logging.INFO, logger="durchwahl.routing.registrar_service")
    first = await send_register(rig, "101")
    assert first.status == 401
    assert (await register(rig, "102", "secret-02")).status == 200
    assert rig.service.report_unanswered(T0 + 5) == []
    (gave_up,) = rig.service.report_unanswered(T0 + 10)
    assert gave_up.user == "101"
    (line,) = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert line.startswith("REGISTER for 101 from UDP 127.0.0.1:"), line
    assert "(durchwahl/0.1): challenged with SHA-256, MD5, no answer within 10 s: the phone gave up" in line
    assert '[server] auth_algorithms = ["MD5"]' in line and "realm office.example" in line
    assert rig.service.report_unanswered(T0 + 20) == []  # once


async def test_a_phone_removing_its_binding_is_not_watched(rig: Rig) -> None:
    """A phone shutting down (Expires: 0) may quit without answering the challenge: nothing to report."""
    response = await send_register(rig, "101", contact="<sip:101@127.0.0.1:5062>;expires=0")
    assert response.status == 401
    assert rig.service.watch.waiting == 0
