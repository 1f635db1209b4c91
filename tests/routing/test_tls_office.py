"""An office on SIP over TLS, end to end on loopback with certificates made by the test: phones register and
call each other by extension over TLS (reached back over the connection their REGISTER used), a call out
leaves over TLS to a provider whose certificate is checked, a provider with the wrong certificate is refused
with a clear log line, a trunk that must show a client certificate is recognised only with one, and the
directory file's TLS keys are checked (a missing, unreadable, mismatched or expired certificate)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from certs import Authority, Issued, authority
from phones import Phone, Script, sdp

from durchwahl.routing.demo import Provider
from durchwahl.routing.directory_file import load_directory, read_directory
from durchwahl.routing.errors import ConfigError
from durchwahl.routing.server import Server
from durchwahl.sipcore.session import Answered, SessionEvent, Terminated
from durchwahl.sipcore.tls import client_context, server_context
from durchwahl.sipcore.ua import Call, CallFailed
from durchwahl.sipcore.uri import SipUri

PASSWORDS = {"101": "anna-secret", "102": "bernd-secret"}
NUMBER_OUT = "+4989123456"


def office_toml(
    issued: Issued | None,
    *,
    trunk: str = "",
    listen: str = '"tls:127.0.0.1:0"',
) -> str:
    tls = (
        f'tls_certificate = "{issued.certificate}"\ntls_private_key = "{issued.key}"\n'
        if issued is not None
        else ""
    )
    return (
        "[server]\n"
        'domain = "office.example"\n'
        f"listen = [{listen}]\n"
        'state_dir = "var"\n'
        'rtp_ports = "32000-32999"\n'
        'auth_algorithms = ["MD5"]\n'
        f"{tls}"
        "\n[[employee]]\n"
        'extension = "101"\nname = "Anna"\npassword = "anna-secret"\n'
        "\n[[employee]]\n"
        'extension = "102"\nname = "Bernd"\npassword = "bernd-secret"\n'
        f"{trunk}"
    )


def provider_trunk(port: int, *, extra: str = "") -> str:
    return (
        "\n[[trunk]]\n"
        'name = "provider"\n'
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        'transport = "tls"\n'
        'inbound_from = ["127.0.0.1/32"]\n'
        f"{extra}"
        "\n[[number]]\n"
        'number = "+49301234567"\n'
        'trunk = "provider"\n'
        'default = "101"\n'
    )


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return authority(tmp_path / "ca")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "office.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def tls_phone(
    user: str, port: int, ca: Authority, tmp_path: Path, script: Script | None = None
) -> Phone:
    phone = Phone(user, PASSWORDS[user], port, script=script or Script(), transport="tls")
    issued = ca.issue(tmp_path / f"phone-{user}", "127.0.0.1")
    phone.endpoint.tls.configure(
        server_context(issued.certificate, issued.key), default_client=client_context(ca_file=ca.certificate)
    )
    return await phone.start()


async def event(call: Call, kind: type[SessionEvent], seconds: float = 5.0) -> SessionEvent:
    async with asyncio.timeout(seconds):
        while True:
            _, found = await call.events.get()
            if isinstance(found, kind):
                return found


def tls_port(server: Server) -> int:
    return next(port for transport, _, port in server.addresses if transport == "TLS")


# ------------------------------------------------------------------------------------------ phones


async def test_phones_register_and_call_by_extension_over_tls(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    async with Server(write(tmp_path, office_toml(issued)), control=False) as server:
        port = tls_port(server)
        anna = await tls_phone("101", port, ca, tmp_path, Script("answer"))
        bernd = await tls_phone("102", port, ca, tmp_path)
        try:
            (binding,) = await server.registrar.contacts("101")
            assert binding.flow is not None and binding.flow.transport == "TLS"
            call = bernd.dial("101")
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            incoming = anna.invites[0]
            # Reached back over the connection its REGISTER opened: anna's endpoint made one TLS
            # connection (to the server) and accepted none.
            (listener,) = anna.endpoint._transports.tls
            (connection,) = listener._by_id.values()
            assert not connection.inbound and incoming.flow.connection_id == connection.id
            assert incoming.flow.transport == "TLS"
            contact = incoming.request.contact[0].uri
            assert isinstance(contact, SipUri) and contact.param("transport") == "tls"
            assert incoming.request.via[0].transport == "TLS"
            call.bye()
            await event(call, Terminated)
        finally:
            await anna.close()
            await bernd.close()


async def test_a_sips_call_from_a_phone_over_tls(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    async with Server(write(tmp_path, office_toml(issued)), control=False) as server:
        port = tls_port(server)
        anna = await tls_phone("101", port, ca, tmp_path, Script("answer"))
        bernd = await tls_phone("102", port, ca, tmp_path)
        try:
            call = bernd.ua.invite(
                "sips:101@office.example",
                bernd.endpoint.flow_to("127.0.0.1", port, "tls"),
                from_="<sips:102@office.example>",
                to="<sips:101@office.example>",
                body=bernd.sdp,
                credentials=("102", PASSWORDS["102"]),
            )
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            contact = answered.response.contact[0].uri
            assert isinstance(contact, SipUri) and contact.scheme == "sips"  # RFC 3261 §12.1.1
            call.bye()
            await event(call, Terminated)
        finally:
            await anna.close()
            await bernd.close()


# ------------------------------------------------------------------------------------------ trunks


async def _provider(ca: Authority, tmp_path: Path, *names: str, client_cert: bool = False) -> Provider:
    provider = Provider(transport="tls")
    issued = ca.issue(tmp_path / "provider", *(names or ("127.0.0.1",)))
    client = ca.issue(tmp_path / "provider-client", "127.0.0.1", client=True) if client_cert else None
    provider.endpoint.tls.configure(
        server_context(issued.certificate, issued.key),
        default_client=client_context(
            ca_file=ca.certificate,
            certificate=client.certificate if client else None,
            key=client.key if client else None,
        ),
    )
    return await provider.start()


async def test_a_call_out_leaves_over_tls_to_the_provider(ca: Authority, tmp_path: Path) -> None:
    provider = await _provider(ca, tmp_path)
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    trunk = provider_trunk(provider.port, extra=f'tls_ca_file = "{ca.certificate}"\n')
    text = office_toml(issued, trunk=trunk, listen='"udp:127.0.0.1:0", "tls:127.0.0.1:0"')
    async with Server(write(tmp_path, text), control=False) as server:
        udp = next(port for transport, _, port in server.addresses if transport == "UDP")
        anna = await Phone("101", PASSWORDS["101"], udp).start()
        try:
            call = anna.dial(NUMBER_OUT)
            answered = await event(call, Answered)
            assert isinstance(answered, Answered)
            (leg,) = [provider_call async for provider_call in _calls(provider)]
            assert leg.request.via[0].transport == "TLS"
            assert leg.flow.transport == "TLS"
            call.bye()
            await event(call, Terminated)
        finally:
            await anna.close()
            await provider.close()


async def _calls(provider: Provider) -> AsyncIterator[Call]:
    async with asyncio.timeout(2):
        yield await provider.calls.get()


async def test_a_provider_with_the_wrong_certificate_is_refused_at_once_with_a_clear_log_line(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    provider = await _provider(ca, tmp_path, "sip.other-provider.example")
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    trunk = provider_trunk(provider.port, extra=f'tls_ca_file = "{ca.certificate}"\n')
    text = office_toml(issued, trunk=trunk, listen='"udp:127.0.0.1:0", "tls:127.0.0.1:0"')
    async with Server(write(tmp_path, text), control=False) as server:
        udp = next(port for transport, _, port in server.addresses if transport == "UDP")
        anna = await Phone("101", PASSWORDS["101"], udp).start()
        try:
            call = anna.dial(NUMBER_OUT)
            with pytest.raises(CallFailed) as failed:
                async with asyncio.timeout(5):  # not the transaction's 32 s
                    await call.answered
            assert failed.value.status == 503
        finally:
            await anna.close()
            await provider.close()
    assert provider.calls.empty()
    lines = [r.getMessage() for r in caplog.records if "TLS connection to" in r.getMessage()]
    assert lines, caplog.text
    assert lines[0].startswith(f"TLS connection to 127.0.0.1:{provider.port} (127.0.0.1) failed: ")
    assert "its certificate is not accepted" in lines[0] and "mismatch" in lines[0]


@pytest.mark.parametrize("shows_certificate", [True, False])
async def test_a_trunk_that_must_show_a_client_certificate_is_recognised_only_with_one(
    ca: Authority, tmp_path: Path, shows_certificate: bool
) -> None:
    provider = await _provider(ca, tmp_path, client_cert=shows_certificate)
    issued = ca.issue(tmp_path / "office", "office.example", "127.0.0.1")
    extra = f'tls_ca_file = "{ca.certificate}"\ntls_verify_client = true\n'
    text = office_toml(issued, trunk=provider_trunk(provider.port, extra=extra))
    async with Server(write(tmp_path, text), control=False) as server:
        provider.server_port = tls_port(server)
        anna = await tls_phone("101", provider.server_port, ca, tmp_path, Script("answer"))
        try:
            call = provider.dial("+49301234567", sdp("provider", provider.rtp.port))
            if shows_certificate:
                answered = await event(call, Answered)
                assert isinstance(answered, Answered)
                call.bye()
                await event(call, Terminated)
            else:
                # Not the trunk, then: an unknown caller, who must authenticate.
                with pytest.raises(CallFailed) as failed:
                    async with asyncio.timeout(5):
                        await call.answered
                assert failed.value.status in (401, 407)
        finally:
            await anna.close()
            await provider.close()


# ------------------------------------------------------------------------------- the directory file


def _problems(tmp_path: Path, text: str) -> list[str]:
    _, problems, _ = read_directory(write(tmp_path, text))
    return [f"{p.field}: {p.message}" for p in problems]


def test_a_tls_listen_address_needs_a_certificate(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, office_toml(None))
    assert problem == "server.listen: tls:127.0.0.1:0 needs tls_certificate and tls_private_key"


def test_an_expired_certificate_is_an_error_naming_the_date(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "office", "office.example", expired=True)
    (problem,) = _problems(tmp_path, office_toml(issued))
    assert problem.startswith("server.tls_certificate: the certificate expired on ")
    with pytest.raises(ConfigError, match="expired on"):
        load_directory(tmp_path / "office.toml")


def test_unreadable_and_mismatched_keys_are_errors(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "office", "office.example")
    other = ca.issue(tmp_path / "other", "other.example")
    missing = Issued(issued.certificate, tmp_path / "nowhere.key")
    (problem,) = _problems(tmp_path, office_toml(missing))
    assert problem.startswith("server.tls_private_key: cannot read the private key")
    (problem,) = _problems(tmp_path, office_toml(Issued(issued.certificate, other.key)))
    assert "does not belong to the certificate" in problem


def test_a_certificate_for_another_name_or_about_to_expire_is_warned_about(
    ca: Authority, tmp_path: Path
) -> None:
    issued = ca.issue(tmp_path / "office", "pbx.elsewhere.example", days=3)
    directory, problems, warnings = read_directory(write(tmp_path, office_toml(issued)))
    assert directory is not None and not problems
    messages = [w.message for w in warnings]
    assert any("renew it" in m for m in messages), messages
    assert any("not the domain office.example" in m for m in messages), messages


def test_trunk_tls_keys_are_checked(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue(tmp_path / "office", "office.example")
    missing_ca = provider_trunk(5061, extra='tls_ca_file = "no-such-ca.pem"\n')
    (problem,) = _problems(tmp_path, office_toml(issued, trunk=missing_ca))
    assert problem.startswith("trunk[1].tls_ca_file: the CA file") and "does not exist" in problem
    udp_trunk = provider_trunk(5060, extra="tls_verify_client = true\n").replace('"tls"', '"udp"', 1)
    (problem,) = _problems(tmp_path, office_toml(issued, trunk=udp_trunk))
    assert problem == "trunk[1].tls_verify_client: only for a trunk with transport = \"tls\", not 'udp'"
    directory = load_directory(write(tmp_path, office_toml(issued, trunk=provider_trunk(5061))))
    (trunk,) = directory.trunks
    assert trunk.tls is not None and trunk.tls.ca_file is None and not trunk.tls.verify_client
    no_port = provider_trunk(5061).replace("port = 5061\n", "")
    (trunk,) = load_directory(write(tmp_path, office_toml(issued, trunk=no_port))).trunks
    assert trunk.port == 5061  # the SIP over TLS port (RFC 3261 §26.2)


async def test_a_trunk_registration_refused_by_certificate_says_why_at_once(
    ca: Authority, tmp_path: Path
) -> None:
    from durchwahl.routing.directory import Trunk, TrunkTls
    from durchwahl.routing.trunk import RegistrationState, TrunkRegistration
    from durchwahl.sipcore import Endpoint

    provider = await _provider(ca, tmp_path, "sip.other-provider.example")
    office = Endpoint()
    issued = ca.issue(tmp_path / "office", "office.example")
    office.tls.configure(
        server_context(issued.certificate, issued.key),
        {"127.0.0.1": client_context(ca_file=ca.certificate)},
    )
    await office.listen("tls:127.0.0.1:0")
    trunk = Trunk(
        "provider",
        "127.0.0.1",
        provider.port,
        "tls",
        "user",
        "pw",
        register=True,
        tls=TrunkTls(ca.certificate),
    )
    registration = TrunkRegistration(office, trunk)
    try:
        async with asyncio.timeout(5):  # not Timer F's 32 s
            status = await registration.register_once()
    finally:
        await office.close()
        await provider.close()
    assert status.state is RegistrationState.FAILING, status
    assert status.last_error is not None and "its certificate is not accepted" in status.last_error
    assert "sip.other-provider.example" not in status.last_error  # it names what we expected, not theirs
    assert "127.0.0.1" in status.last_error


async def test_a_renewed_certificate_is_used_after_a_reload(ca: Authority, tmp_path: Path) -> None:
    """SIGHUP after renewing: new connections get the new certificate, and a reload with a broken key is
    rejected (the old certificate stays in force)."""
    import shutil
    import ssl

    first = ca.issue(tmp_path / "first", "office.example", "127.0.0.1")
    live = Issued(tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(first.certificate, live.certificate)
    shutil.copy(first.key, live.key)

    async def served_certificate(port: int) -> bytes:
        context = ssl.create_default_context(cafile=str(ca.certificate))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    def der(path: Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(path.read_text())

    async with Server(write(tmp_path, office_toml(live)), control=False) as server:
        port = tls_port(server)
        assert await served_certificate(port) == der(first.certificate)
        renewed = ca.issue(tmp_path / "renewed", "office.example", "127.0.0.1")
        shutil.copy(renewed.certificate, live.certificate)
        shutil.copy(renewed.key, live.key)
        assert server.reload()
        assert await served_certificate(port) == der(renewed.certificate)
        live.key.write_text("not a key\n")
        assert not server.reload()
        assert await served_certificate(port) == der(renewed.certificate)
