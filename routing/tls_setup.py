"""The directory's TLS settings put in force on an endpoint (at start and on every reload): the server's
certificate for its ``tls:`` listeners, and per trunk over TLS the CA its provider's certificate must chain
to, with our certificate to show when the provider asks for one. Trunks with ``tls_verify_client`` make the
listeners ask every client for a certificate (phones send none; one that does must send a valid one)."""

from __future__ import annotations

import ssl

from durchwahl.sipcore.tls import TlsContexts, client_context, server_context

from .directory import Directory

__all__ = ["configure_tls"]


def configure_tls(contexts: TlsContexts, directory: Directory) -> None:
    """Build the contexts ``directory`` describes and put them in force (raises ``sipcore.tls.TlsError``
    when a file has become unusable since the directory was read; nothing changes then)."""
    files = directory.server.tls
    trunks = [t for t in directory.trunks if t.tls is not None]
    verifying = [t.tls for t in trunks if t.tls is not None and t.tls.verify_client]
    server: ssl.SSLContext | None = None
    if files is not None:
        server = server_context(
            files.certificate,
            files.private_key,
            verify_clients=bool(verifying),
            client_cas=[tls.ca_file for tls in verifying if tls.ca_file is not None],
            system_cas=any(tls.ca_file is None for tls in verifying),
        )
    clients: dict[str, ssl.SSLContext] = {}
    for trunk in trunks:
        assert trunk.tls is not None
        clients[trunk.host.strip("[]")] = client_context(
            ca_file=trunk.tls.ca_file,
            certificate=files.certificate if files is not None else None,
            key=files.private_key if files is not None else None,
        )
    contexts.configure(server, clients)
