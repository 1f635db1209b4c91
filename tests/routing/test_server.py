"""The assembled server as an admin and an embedding developer see it: start, register, restart, reload."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint, Response
from durchwahl.sipcore.auth import answer_challenge

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def copy_office(tmp_path: Path, auth_algorithms: tuple[str, ...] | None = None) -> Path:
    """The example office in a temporary folder (its state_dir "var" lands there too), unchanged unless
    ``auth_algorithms`` replaces the digest algorithms it offers."""
    shutil.copy(EXAMPLES / "greeting.wav", tmp_path / "greeting.wav")
    text = (EXAMPLES / "office.toml").read_text(encoding="utf-8")
    if auth_algorithms is not None:
        line = f"auth_algorithms = {json.dumps(list(auth_algorithms))}"
        text, count = re.subn(r"(?m)^auth_algorithms\s*=.*$", line, text)
        assert count == 1, "examples/office.toml has no auth_algorithms line to replace"
    path = tmp_path / "office.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def register(client: Endpoint, port: int, user: str, password: str) -> Response:
    flow = client.flow_to("127.0.0.1", port)
    aor = f"sip:{user}@office.example"
    request = client.make_request("REGISTER", "sip:office.example", flow, from_=f"<{aor}>", to=f"<{aor}>")
    first = await client.request(request, flow)
    assert first.status == 401
    challenge = next(c for c in first.www_authenticate if c.param("algorithm") in (None, "MD5", "SHA-256"))
    creds = answer_challenge(challenge, "REGISTER", "sip:office.example", user, password, cnonce="0a4f113b")
    retry = client.make_request(
        "REGISTER",
        "sip:office.example",
        flow,
        from_=f"<{aor}>",
        to=f"<{aor}>",
        call_id=request.call_id,
        cseq=2,
        headers=[("Authorization", str(creds)), ("Expires", "600")],
    )
    return await client.request(retry, flow)


async def test_phone_registers_and_the_binding_survives_a_restart(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    started: list[object] = []
    server = Server(config, listen=("udp:127.0.0.1:0",))
    server.events.on("started", started.append)
    async with server, Endpoint() as phone:
        await phone.listen("udp:127.0.0.1:0")
        port = server.addresses[0][2]
        ok = await register(phone, port, "101", "anna-101-secret")
        assert ok.status == 200 and len(ok.contact) == 1
        assert [b.contact for b in await server.registrar.contacts("101")]
    assert started and (tmp_path / "var" / "location.sqlite3").exists()
    async with Server(config, listen=("udp:127.0.0.1:0",)) as again:
        bindings = await again.registrar.contacts("101")
        assert len(bindings) == 1
        assert bindings[0].flow is not None and bindings[0].flow.remote[0] == "127.0.0.1"


async def test_wrong_password_is_refused_and_an_unauthenticated_invite_is_challenged(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server, Endpoint() as phone:
        await phone.listen("udp:127.0.0.1:0")
        port = server.addresses[0][2]
        refused = await register(phone, port, "101", "wrong")
        assert refused.status in (401, 403)
        flow = phone.flow_to("127.0.0.1", port)
        invite = phone.make_request(
            "INVITE",
            "sip:102@office.example",
            flow,
            from_="<sip:101@office.example>",
            to="<sip:102@office.example>",
        )
        answer = await phone.request(invite, flow)
        assert answer.status in (401, 407)  # never a free call: the caller must authenticate


async def test_reload_keeps_the_old_directory_when_the_new_one_is_bad(tmp_path: Path) -> None:
    config = copy_office(tmp_path)
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        failures: list[object] = []
        server.events.on("reload_failed", failures.append)
        good = config.read_text(encoding="utf-8")
        config.write_text(good.replace('extension = "101"', 'extension = "12345"'), encoding="utf-8")
        assert server.reload() is False
        assert failures and server.directory.employee("101") is not None
        config.write_text(
            good.replace('name = "Anna Schmidt"', 'name = "Anna Schmidt-Berg"'), encoding="utf-8"
        )
        assert server.reload() is True
        employee = server.directory.employee("101")
        assert employee is not None and employee.name == "Anna Schmidt-Berg"


async def test_an_employee_calls_another_through_the_server(tmp_path: Path) -> None:
    import asyncio

    from phones import Phone, Script

    from durchwahl.sipcore.session import Confirmed

    config = copy_office(tmp_path)
    ended: list[object] = []
    seen: list[str] = []
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        server.events.on("call_ended", ended.append)
        for name in ("call_started", "ringing", "answered", "call_ended"):
            server.events.on(name, lambda _, name=name: seen.append(name))
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port, script=Script("answer", delay=0.1)).start()
        bernd = await Phone("bernd", "bernd-102-secret", port).start()
        try:
            call = bernd.dial("101")
            async with asyncio.timeout(5):
                ok = await call.wait_answered()
            assert ok.status == 200
            ringing = await anna.next_call()
            assert ringing.request.from_.uri.user == "bernd"  # type: ignore[union-attr]
            async with asyncio.timeout(3):
                while not any(isinstance(event, Confirmed) for _, event in _drain(ringing)):
                    await asyncio.sleep(0.02)
            call.bye()
            async with asyncio.timeout(3):
                await ringing.wait_ended()
                while not ended:
                    await asyncio.sleep(0.02)
        finally:
            await anna.close()
            await bernd.close()
    from durchwahl.routing.cdr import Disposition

    (record,) = ended
    assert seen == ["call_started", "ringing", "answered", "call_ended"]
    assert record.disposition is Disposition.ANSWERED  # type: ignore[attr-defined]
    assert record.caller == "102" and record.destination_id == "101"  # type: ignore[attr-defined]


def _drain(call: object) -> list[tuple[object, object]]:
    events = []
    queue = call.events  # type: ignore[attr-defined]
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


async def test_a_call_from_the_trunk_to_its_number_is_the_trunks_not_challenged(tmp_path: Path) -> None:
    config = copy_office(tmp_path)  # the example trunk delivers from 127.0.0.1/32
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server, Endpoint() as provider:
        await provider.listen("udp:127.0.0.1:0")
        flow = provider.flow_to("127.0.0.1", server.addresses[0][2])
        invite = provider.make_request(
            "INVITE",
            "sip:+49301234567@office.example",
            flow,
            from_="<sip:+4989555123@provider.example>",
            to="<sip:+49301234567@office.example>",
        )
        answer = await provider.request(invite, flow)
        assert answer.status not in (401, 403, 407), answer  # taken as the trunk's call, not challenged


async def test_a_trunk_with_register_true_is_registered_at_start_and_unregistered_at_stop(
    tmp_path: Path,
) -> None:
    import asyncio

    from durchwahl.routing.trunk import RegistrationState
    from durchwahl.sipcore import IncomingRequest

    seen: list[str | None] = []

    def provider_answers(incoming: IncomingRequest) -> None:
        request = incoming.request
        seen.append(request.get("expires"))
        contact = request.get("contact") or "*"
        incoming.respond(200, headers=[("Contact", f"{contact};expires={request.get('expires') or 3600}")])

    from durchwahl.sipcore.core import CoreConfig

    async with Endpoint(
        provider_answers, core=CoreConfig(allowed_methods=("REGISTER", "OPTIONS"))
    ) as provider:
        _, provider_port = await provider.listen("udp:127.0.0.1:0")
        config = copy_office(tmp_path)
        text = config.read_text(encoding="utf-8")
        text = text.replace("port = 5070", f"port = {provider_port}").replace(
            "register = false", "register = true"
        )
        config.write_text(text, encoding="utf-8")
        async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
            registration = server.trunks["provider"]
            async with asyncio.timeout(5):
                while registration.status.state is not RegistrationState.REGISTERED:
                    await asyncio.sleep(0.02)
        assert seen[0] != "0" and seen[-1] == "0"  # registered, then removed on the way out


async def test_status_and_originate_over_the_control_socket(tmp_path: Path, capsys: object) -> None:
    import asyncio
    import os
    import tempfile

    from phones import Phone

    from durchwahl.routing.control import request

    # Unix socket paths are short (~107 bytes): keep this state directory near the root of /tmp.
    with tempfile.TemporaryDirectory(prefix="dw-") as short:
        folder = Path(short)
        config = copy_office(folder)
        async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
            assert server.control is not None
            assert os.stat(server.control.path).st_mode & 0o777 == 0o600
            anna = await Phone("101", "anna-101-secret", server.addresses[0][2]).start()
            try:
                status = await request(server.control.path, {"cmd": "status"})
                assert status["ok"] and status["active_calls"] == 0
                assert [r["aor"] for r in status["registrations"]] == ["sip:101@office.example"]
                refused = await request(server.control.path, {"cmd": "originate", "extension": "999"})
                assert not refused["ok"] and "number" in refused["error"]
                unknown = await request(server.control.path, {"cmd": "reboot"})
                assert not unknown["ok"] and "unknown command" in unknown["error"]
                # The CLI runs its own event loop: drive it in a thread against this running server.
                from durchwahl.routing.cli import main

                code = await asyncio.to_thread(main, ["status", "--config", str(config)])
                assert code == 0
            finally:
                await anna.close()
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        assert "registrations: 1" in out and "sip:101@office.example" in out


async def test_old_call_records_are_pruned_at_start(tmp_path: Path) -> None:
    import asyncio
    import time

    from durchwahl.routing.cdr import CallRecord, Disposition, SqliteCdrStore

    config = copy_office(tmp_path)
    text = config.read_text(encoding="utf-8").replace("[server]\n", "[server]\ncdr_retention_days = 30\n", 1)
    config.write_text(text, encoding="utf-8")
    store = SqliteCdrStore(tmp_path / "var" / "cdr.sqlite3")
    now = time.time()
    for name, age_days in (("old", 45), ("recent", 2)):
        at = now - age_days * 86400
        store.write(CallRecord(name, "101", "102", at, at + 60, Disposition.ANSWERED))
    await store.records()
    await store.close()
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        assert server.directory.server.cdr_retention_days == 30
        async with asyncio.timeout(3):
            while [r.call_id for r in await server.cdr.records()] != ["recent"]:
                await asyncio.sleep(0.02)


async def test_the_state_directory_is_the_server_users_alone(tmp_path: Path) -> None:
    """A state_dir the server creates is 0700 and every file in it is owner-only (registrations, call
    records, the nonce key), with the usual umask of 022."""
    import asyncio
    import os
    import stat

    from durchwahl.routing.cdr import CallRecord, Disposition

    config = copy_office(tmp_path)
    old = os.umask(0o022)
    try:
        async with Server(config, listen=("udp:127.0.0.1:0",)) as server, Endpoint() as phone:
            await phone.listen("udp:127.0.0.1:0")
            assert (await register(phone, server.addresses[0][2], "101", "anna-101-secret")).status == 200
            server.cdr.write(CallRecord("c", "101", "102", 1.0, 2.0, Disposition.ANSWERED))
            async with asyncio.timeout(3):
                while not await server.cdr.records():
                    await asyncio.sleep(0.02)
    finally:
        os.umask(old)
    state = tmp_path / "var"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir() if p.is_file()}
    assert {"secret", "location.sqlite3", "cdr.sqlite3"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


async def test_the_server_logs_what_check_config_warns_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = copy_office(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('["127.0.0.1/32"]', '["0.0.0.0/0"]'), encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="durchwahl.routing.server")
    server = Server(config, listen=("udp:127.0.0.1:0",), control=False)
    assert "trunk[1].inbound_from: 0.0.0.0/0 is every address: ANYONE" in caplog.text
    caplog.clear()
    config.write_text(text.replace('["127.0.0.1/32"]', '["::/0"]'), encoding="utf-8")
    assert server.reload()
    assert "trunk[1].inbound_from: ::/0 is every address" in caplog.text
    await server.stop()
