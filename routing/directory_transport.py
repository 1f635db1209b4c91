"""The directory file's transport keys: ``[server]``'s TCP caps and timeouts and its TLS certificate, a
trunk's TLS trust, and the SRTP policy of employees and trunks — read and checked for
:mod:`routing.directory_file`, each problem naming its field.

Certificates are checked as the server will use them (``sipcore.tls``: readable, PEM, key matching, not
encrypted) and for their dates: an expired (or not yet valid) certificate is an error, one that expires
within :data:`EXPIRY_WARNING_DAYS` or does not name the SIP domain a warning.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509

from durchwahl.media.sdes import SrtpPolicy
from durchwahl.sipcore.tls import TlsError, client_context, name_matches, server_context

from .config_check import Checker
from .directory import ListenSpec, TlsFiles, TrunkTls

__all__ = [
    "EMPLOYEE_KEYS",
    "EXPIRY_WARNING_DAYS",
    "SERVER_KEYS",
    "TCP_KEYS",
    "TRUNK_KEYS",
    "certificate_dates",
    "read_server_tls",
    "read_srtp",
    "read_tcp_limits",
    "read_trunk_tls",
]

#: The [server] keys that set ``sipcore.limits.Limits`` fields of the same name, with their least value.
TCP_KEYS: Final = (
    ("tcp_max_connections", 1),
    ("tcp_max_connections_per_source", 1),
    ("tcp_message_seconds", 1),
    ("tcp_idle_seconds", 0),
)
SERVER_KEYS: Final = (*(key for key, _ in TCP_KEYS), "tls_certificate", "tls_private_key")
TRUNK_KEYS: Final = ("tls_ca_file", "tls_verify_client", "srtp")
EMPLOYEE_KEYS: Final = ("srtp",)
#: A certificate that ends within this many days is warned about (at start, on reload, by check-config).
EXPIRY_WARNING_DAYS: Final = 14


def read_tcp_limits(c: Checker, data: Mapping[str, Any]) -> dict[str, int] | None:
    """The ``tcp_*`` keys given, by ``Limits`` field; None when one is wrong (reported)."""
    tcp: dict[str, int] = {}
    for key, least in TCP_KEYS:
        value = c.get("server", None, data, key, int) if key in data else None
        if value is not None and value < least:
            c.report("server", None, key, f"must be at least {least}, not {value}")
        elif value is not None:
            tcp[key] = value
    return None if any(key in data and key not in tcp for key, _ in TCP_KEYS) else tcp


def certificate_dates(path: Path) -> tuple[datetime.datetime, datetime.datetime, tuple[str, ...]]:
    """The first certificate of a PEM file: when it becomes valid, when it ends, the names it is for.
    Raises ``ValueError`` when the file holds no PEM certificate."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names: list[str] = []
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*alternatives.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in alternatives.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return cert.not_valid_before_utc, cert.not_valid_after_utc, tuple(names)


def read_server_tls(
    c: Checker,
    data: Mapping[str, Any],
    base: Path,
    listen: Sequence[ListenSpec],
    domain: str | None,
    now: datetime.datetime | None = None,
) -> TlsFiles | Literal[False] | None:
    """``tls_certificate`` and ``tls_private_key``: the files (relative to the TOML file's folder), None
    when not given, False when unusable (reported). A ``tls:`` listen address needs them."""
    certificate = c.get("server", None, data, "tls_certificate", str, None)
    key = c.get("server", None, data, "tls_private_key", str, None)
    wants = [str(spec) for spec in listen if spec.transport == "tls"]
    if certificate is None and key is None:
        if ("tls_certificate" in data) or ("tls_private_key" in data):
            return False
        if wants:
            c.report("server", None, "listen", f"{wants[0]} needs tls_certificate and tls_private_key")
            return False
        return None
    if certificate is None or key is None:
        missing = "tls_private_key" if key is None else "tls_certificate"
        if missing not in data:
            c.report("server", None, missing, "missing: TLS needs a certificate and its private key")
        return False
    files = TlsFiles(base / certificate, base / key)
    try:
        server_context(files.certificate, files.private_key)
    except TlsError as exc:
        c.report("server", None, "tls_private_key" if "key" in str(exc) else "tls_certificate", str(exc))
        return False
    starts, ends, names = certificate_dates(files.certificate)
    now = now or datetime.datetime.now(datetime.UTC)
    if ends <= now:
        c.report("server", None, "tls_certificate", f"the certificate expired on {ends:%Y-%m-%d %H:%M} UTC")
        return False
    if starts > now:
        c.report(
            "server", None, "tls_certificate", f"the certificate is valid only from {starts:%Y-%m-%d} UTC"
        )
        return False
    if ends - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        c.warn("server", None, "tls_certificate", f"the certificate expires on {ends:%Y-%m-%d} UTC: renew it")
    if domain is not None and not any(name_matches(name, domain) for name in names):
        c.warn(
            "server",
            None,
            "tls_certificate",
            f"the certificate is for {', '.join(names) or 'no name'}, not the domain {domain}: phones that "
            "check the server's name will refuse it",
        )
    if not wants:
        c.warn(
            "server", None, "tls_certificate", "no tls: listen address uses it (only trunks that ask see it)"
        )
    return files


def read_trunk_tls(
    c: Checker, i: int, data: Mapping[str, Any], base: Path, transport: str | None, tls_listening: bool
) -> TrunkTls | Literal[False] | None:
    """A trunk's ``tls_ca_file`` and ``tls_verify_client`` (None: not a TLS trunk); False when wrong
    (reported)."""
    t = "trunk"
    ca_text = c.get(t, i, data, "tls_ca_file", str, None)
    verify = c.get(t, i, data, "tls_verify_client", bool, False)
    ok = verify is not None and ("tls_ca_file" not in data or ca_text is not None)
    if transport == "tls" and not tls_listening:
        c.report(
            t,
            i,
            "transport",
            "a trunk over TLS needs a tls: listen address in [server] (its requests come there)",
        )
        ok = False
    tls_keys = [key for key in ("tls_ca_file", "tls_verify_client") if key in data]
    if transport not in ("tls", None) and tls_keys:
        c.report(t, i, tls_keys[0], f'only for a trunk with transport = "tls", not {transport!r}')
        ok = False
    ca_file = base / ca_text if ca_text is not None else None
    if ca_file is not None:
        try:
            client_context(ca_file=ca_file)
        except TlsError as exc:
            c.report(t, i, "tls_ca_file", str(exc))
            ok = False
    if not ok:
        return False
    return TrunkTls(ca_file, bool(verify)) if transport == "tls" else None


def read_srtp(c: Checker, table: str, i: int, data: Mapping[str, Any], *, tls: bool) -> SrtpPolicy | None:
    """An employee's or trunk's ``srtp`` policy (default ``offered``); None when wrong (reported). SRTP
    keys travel in the SDP, so SRTP is only ever used on legs signalled over TLS: ``required`` needs TLS
    (``tls``: the trunk's transport, a ``tls:`` listen address for phones)."""
    text = c.get(table, i, data, "srtp", str, SrtpPolicy.OFFERED.value)
    if text is None:
        return None
    try:
        policy = SrtpPolicy(text.strip())
    except ValueError:
        choices = ", ".join(repr(p.value) for p in SrtpPolicy)
        c.report(table, i, "srtp", f"{text!r} is not one of {choices}")
        return None
    if policy is SrtpPolicy.REQUIRED and not tls:
        where = 'transport = "tls"' if table == "trunk" else "a tls: listen address in [server]"
        c.report(table, i, "srtp", f"SRTP keys travel in the signalling: required SRTP needs {where}")
        return None
    return policy
