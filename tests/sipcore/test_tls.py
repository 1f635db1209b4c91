"""SIP over TLS on loopback, as a peer sees it: requests answered over a TLS listener, requests sent to a TLS
peer whose certificate is checked (name, CA, expiry), client certificates, handshake failures logged with
the peer's address (never a traceback), and TLS connections under the same caps and deadlines as TCP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from certs import Authority, authority

from durchwahl.sipcore import Endpoint, IncomingRequest, Limits, Request, Response, SipUri, parse_message
from durchwahl.sipcore.core import CoreConfig
from durchwahl.sipcore.endpoint import RequestTimeout
from durchwahl.sipcore.tls import TlsError, client_context, server_context
from durchwahl.sipcore.transport import TransportError

FAST = Limits(tcp_message_seconds=0.4, tcp_idle_seconds=2.0)


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return authority(tmp_path / "ca")


def options(*, uri: str = "sip:101@127.0.0.1", transport: str = "TLS", cseq: int = 1) -> bytes:
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.99:5061;branch=z9hG4bKtls{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:caller@example.com>;tag=from1\r\n"
        "To: <sip:101@127.0.0.1>\r\n"
        "Call-ID: tls@example.com\r\n"
        f"CSeq: {cseq} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def tls_server(
    ca: Authority,
    tmp_path: Path,
    *,
    limits: Limits = FAST,
    handler: Callable[[IncomingRequest], None] | None = None,
    verify_clients: bool = False,
    name: str = "127.0.0.1",
) -> AsyncIterator[tuple[Endpoint, int]]:
    """An endpoint with a TLS listener whose certificate (``name``) ``ca`` signed."""
    issued = ca.issue(tmp_path / "server", name)
    endpoint = Endpoint(handler, limits=limits, core=CoreConfig(allowed_methods=("OPTIONS", "REGISTER")))
    endpoint.tls.configure(
        server_context(
            issued.certificate, issued.key, client_cas=(ca.certificate,), verify_clients=verify_clients
        )
    )
    _, port = await endpoint.listen("tls:127.0.0.1:0")
    try:
        yield endpoint, port
    finally:
        await endpoint.close()


async def tls_connect(
    port: int, ca: Authority | None, *, certificate: tuple[Path, Path] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=ca.certificate if ca is not None else None)
    if ca is None:
        context.check_hostname = False
    if certificate is not None:
        context.load_cert_chain(*certificate)
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
    response = parse_message(head, stream=True)
    assert isinstance(response, Response)
    return response


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ------------------------------------------------------------------------------------------ answered


async def test_a_request_over_tls_is_answered_on_the_same_connection(ca: Authority, tmp_path: Path) -> None:
    async with tls_server(ca, tmp_path) as (_, port):
        reader, writer = await tls_connect(port, ca)
        writer.write(options())
        response = await read_response(reader)
        assert response.status == 200
        assert response.via[0].transport == "TLS"
        assert response.via[0].param("received") == "127.0.0.1"
        writer.close()


async def test_a_sips_request_uri_is_answered_over_tls_and_refused_416_over_udp(
    ca: Authority, tmp_path: Path
) -> None:
    async with tls_server(ca, tmp_path) as (endpoint, port):
        reader, writer = await tls_connect(port, ca)
        writer.write(options(uri="sips:101@127.0.0.1"))
        assert (await read_response(reader)).status == 200
        writer.close()
        _, udp_port = await endpoint.listen("udp:127.0.0.1:0")
        loop = asyncio.get_running_loop()
        received: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if not received.done():
                    received.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", udp_port))
        transport.sendto(options(uri="sips:101@127.0.0.1", transport="UDP"))
        response = parse_message(await asyncio.wait_for(received, 3.0))
        transport.close()
        assert isinstance(response, Response)
        assert response.status == 416
        assert "TLS" in response.reason


async def test_requests_to_a_tls_peer_go_over_tls_with_a_contact_that_says_tls(
    ca: Authority, tmp_path: Path
) -> None:
    seen: list[tuple[Request, str]] = []

    def handler(incoming: IncomingRequest) -> None:
        seen.append((incoming.request, incoming.flow.transport))
        incoming.respond(200)

    async with tls_server(ca, tmp_path, handler=handler) as (_, port):
        client = Endpoint(core=CoreConfig(allowed_methods=("OPTIONS",)))
        issued = ca.issue(tmp_path / "client", "127.0.0.1")
        client.tls.configure(
            server_context(issued.certificate, issued.key),
            default_client=client_context(ca_file=ca.certificate),
        )
        await client.listen("tls:127.0.0.1:0")
        try:
            flow = client.flow_to("127.0.0.1", port, "tls")
            request = client.make_request(
                "OPTIONS", "sip:101@127.0.0.1", flow, from_="<sip:a@x>", to="<sip:101@x>"
            )
            response = await client.request(request, flow)
        finally:
            await client.close()
    assert response.status == 200
    request, transport = seen[0]
    assert transport == "TLS"
    assert request.via[0].transport == "TLS"
    contact = request.contact[0].uri
    assert isinstance(contact, SipUri)
    assert (contact.scheme, contact.param("transport")) == ("sip", "tls")


# ------------------------------------------------------------------------------- peers' certificates


async def _send_to(
    port: int, tmp_path: Path, context: ssl.SSLContext, *, server_name: str | None = None
) -> Response:
    client = Endpoint(core=CoreConfig(allowed_methods=("OPTIONS",)))
    ca = authority(tmp_path / "client-ca", "client CA")
    issued = ca.issue(tmp_path / "client", "127.0.0.1")
    client.tls.configure(server_context(issued.certificate, issued.key), default_client=context)
    await client.listen("tls:127.0.0.1:0")
    try:
        flow = client.flow_to("127.0.0.1", port, "tls", server_name=server_name)
        request = client.make_request(
            "OPTIONS", "sip:101@127.0.0.1", flow, from_="<sip:a@x>", to="<sip:101@x>"
        )
        return await asyncio.wait_for(client.request(request, flow), 5.0)
    finally:
        await client.close()


async def test_a_peer_whose_certificate_names_another_host_is_refused_with_a_clear_log_line(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durchwahl.sipcore.transport")
    async with tls_server(ca, tmp_path, name="sip.provider.example") as (_, port):
        with pytest.raises(RequestTimeout):
            await _send_to(port, tmp_path, client_context(ca_file=ca.certificate))
        found = lines(caplog, "TLS connection to 127.0.0.1:")
        assert found, caplog.text
        assert "(127.0.0.1) failed: its certificate is not accepted" in found[0]
        assert "mismatch" in found[0].lower()
        # The name the certificate carries is what a trunk's host names: accepted.
        response = await _send_to(
            port, tmp_path, client_context(ca_file=ca.certificate), server_name="sip.provider.example"
        )
        assert response.status == 200
    assert "Traceback" not in caplog.text


async def test_a_pinned_ca_refuses_a_certificate_another_ca_signed(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durchwahl.sipcore.transport")
    other = authority(tmp_path / "other", "another CA")
    async with tls_server(ca, tmp_path) as (_, port):
        with pytest.raises(RequestTimeout):
            await _send_to(port, tmp_path, client_context(ca_file=other.certificate))
    assert any(
        "unable to get local issuer certificate" in line for line in lines(caplog, "TLS connection to")
    )


async def test_an_expired_certificate_is_refused(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durchwahl.sipcore.transport")
    issued = ca.issue(tmp_path / "expired", "127.0.0.1", expired=True)
    endpoint = Endpoint(core=CoreConfig(allowed_methods=("OPTIONS",)))
    endpoint.tls.configure(server_context(issued.certificate, issued.key))
    _, port = await endpoint.listen("tls:127.0.0.1:0")
    try:
        with pytest.raises(RequestTimeout):
            await _send_to(port, tmp_path, client_context(ca_file=ca.certificate))
    finally:
        await endpoint.close()
    assert any("certificate has expired" in line for line in lines(caplog, "TLS connection to"))


async def test_a_client_certificate_is_verified_and_its_names_known(ca: Authority, tmp_path: Path) -> None:
    names: list[tuple[str, ...] | None] = []
    holder: list[Endpoint] = []

    def handler(incoming: IncomingRequest) -> None:
        names.append(holder[0].peer_names(incoming.flow))
        incoming.respond(200)

    async with tls_server(ca, tmp_path, handler=handler, verify_clients=True) as (endpoint, port):
        holder.append(endpoint)
        client_cert = ca.issue(tmp_path / "trunk", "sbc.provider.example", client=True)
        reader, writer = await tls_connect(port, ca, certificate=(client_cert.certificate, client_cert.key))
        writer.write(options())
        assert (await read_response(reader)).status == 200
        writer.close()
        reader, writer = await tls_connect(port, ca)  # a phone: no certificate
        writer.write(options(cseq=2))
        assert (await read_response(reader)).status == 200
        writer.close()
    assert names == [("sbc.provider.example",), ()]


# ----------------------------------------------------------------------------------- failed handshakes


async def test_plain_sip_on_a_tls_port_is_closed_and_logged_with_the_peer_address(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    async with tls_server(ca, tmp_path) as (endpoint, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(options(transport="TCP"))
        assert await closed_within(reader, 3.0)
        writer.close()
        await asyncio.sleep(0.05)
        assert len(endpoint._transports.guard.table) == 0  # the failed connection is forgotten
    found = lines(caplog, "TLS handshake with")
    assert found == [f"TLS handshake with 127.0.0.1:{local_port} failed: " + found[0].split("failed: ", 1)[1]]
    assert "does not speak TLS" in found[0]
    assert "Traceback" not in caplog.text


async def test_a_client_that_does_not_trust_our_certificate_is_logged(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    other = authority(tmp_path / "other", "another CA")

    def phone(port: int) -> None:
        """A client like a softphone's (OpenSSL, blocking): it says why it gives up (an alert)."""
        context = ssl.create_default_context(cafile=other.certificate)
        with (
            socket.create_connection(("127.0.0.1", port), 3.0) as sock,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(sock, server_hostname="127.0.0.1")

    async with tls_server(ca, tmp_path) as (_, port):
        await asyncio.to_thread(phone, port)
        for _ in range(40):
            if lines(caplog, "TLS handshake with"):
                break
            await asyncio.sleep(0.05)
    found = lines(caplog, "TLS handshake with")
    assert found and "the peer does not trust our certificate" in found[0], caplog.text


async def test_a_tls_connection_without_a_handshake_is_closed_by_the_message_deadline(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handshake counts as "no complete message yet": a peer that connects and says nothing is closed
    after tcp_message_seconds, like a TCP one, and only that is logged."""
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    async with tls_server(ca, tmp_path) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert not await closed_within(reader, 0.2)
        assert await closed_within(reader, 2.0)
        writer.close()
    assert lines(caplog, "closing TLS connection from 127.0.0.1")
    assert not lines(caplog, "TLS handshake with")


async def test_tls_connections_count_against_the_per_source_cap(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    limits = Limits(tcp_max_connections=8, tcp_max_connections_per_source=2, tcp_message_seconds=5.0)
    async with tls_server(ca, tmp_path, limits=limits) as (_, port):
        held = [await tls_connect(port, ca) for _ in range(2)]
        for _, writer in held:
            writer.write(options())
        third_reader, third_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(third_reader, 2.0)
        third_writer.close()
        reader, _ = held[0]
        assert (await read_response(reader)).status == 200
        for _, writer in held:
            writer.close()
    assert lines(caplog, "refusing TLS connection from 127.0.0.1")


# --------------------------------------------------------------------------------- unusable files


def test_unusable_certificates_and_keys_are_named_with_the_reason(ca: Authority, tmp_path: Path) -> None:
    from certs import encrypted_key

    issued = ca.issue(tmp_path / "s", "127.0.0.1")
    other = ca.issue(tmp_path / "o", "other.example")
    missing = tmp_path / "missing.key"
    with pytest.raises(TlsError, match=r"cannot read the private key .*missing\.key"):
        server_context(issued.certificate, missing)
    with pytest.raises(TlsError, match="does not belong to the certificate"):
        server_context(issued.certificate, other.key)
    with pytest.raises(TlsError, match="encrypted"):
        server_context(issued.certificate, encrypted_key(tmp_path / "locked.key"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        server_context(garbage, issued.key)
    with pytest.raises(TlsError, match=r"CA file .* does not exist"):
        client_context(ca_file=tmp_path / "nope.pem")


async def test_a_tls_listener_without_a_certificate_is_refused() -> None:
    endpoint = Endpoint()
    try:
        with pytest.raises(TransportError, match="certificate"):
            await endpoint.listen("tls:127.0.0.1:0")
    finally:
        await endpoint.close()


# ------------------------------------------------------------------------------------------ SIPS dialogs


@pytest.mark.parametrize("scheme", ["sip", "sips"])
async def test_a_sips_call_has_sips_contacts_and_a_sip_call_over_tls_says_transport_tls(
    ca: Authority, tmp_path: Path, scheme: str
) -> None:
    """RFC 3261 §12.1.1: a dialog set up by a SIPS Request-URI has SIPS Contacts on both sides."""
    from durchwahl.sipcore.session import Answered
    from durchwahl.sipcore.ua import IncomingCall, UserAgent

    answered: list[IncomingCall] = []
    issued = ca.issue(tmp_path / "both", "127.0.0.1")
    endpoints = [Endpoint(), Endpoint()]
    for endpoint in endpoints:
        endpoint.tls.configure(
            server_context(issued.certificate, issued.key),
            default_client=client_context(ca_file=ca.certificate),
        )

    def handler(incoming: IncomingRequest) -> None:
        call = bob.accept(incoming)
        answered.append(call)
        call.answer(body=b"v=0\r\n", content_type="application/sdp")

    alice, bob = UserAgent(endpoints[0]), UserAgent(endpoints[1], handler)
    await endpoints[0].listen("tls:127.0.0.1:0")
    _, port = await endpoints[1].listen("tls:127.0.0.1:0")
    try:
        flow = endpoints[0].flow_to("127.0.0.1", port, "tls")
        call = alice.invite(
            f"{scheme}:bob@127.0.0.1:{port}", flow, from_="<sip:alice@a.example>", to="<sip:bob@b>"
        )
        async with asyncio.timeout(5):
            while True:
                _, event = await call.events.get()
                if isinstance(event, Answered):
                    break
        invite = answered[0].request
        contacts = (invite.contact[0].uri, event.response.contact[0].uri)
        call.bye()
    finally:
        alice.close()
        bob.close()
        for endpoint in endpoints:
            await endpoint.close()
    for contact in contacts:
        assert isinstance(contact, SipUri)
        if scheme == "sips":
            assert contact.scheme == "sips" and contact.param("transport") is None
        else:
            assert contact.scheme == "sip" and contact.param("transport") == "tls"


async def test_closing_the_endpoint_during_a_handshake_logs_no_failure(
    ca: Authority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durchwahl.sipcore")
    async with tls_server(ca, tmp_path, limits=Limits(tcp_message_seconds=30.0)) as (endpoint, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)  # accepted, admitted, waiting for a ClientHello
        assert len(endpoint._transports.guard.table) == 1
    assert await closed_within(reader, 2.0)
    writer.close()
    assert not lines(caplog, "TLS handshake with"), caplog.text
