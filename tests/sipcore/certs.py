"""Certificates for TLS tests, made at test time in the test's temporary folder (no private key is ever
committed): a CA, and certificates it signs for host names and IP addresses, valid or expired."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_NOW = datetime.datetime.now(datetime.UTC)


@attrs.frozen
class Issued:
    """A certificate and its key, as PEM files."""

    certificate: Path
    key: Path


@attrs.frozen
class Authority:
    """A test CA: its certificate file (what a peer pins) and the key it signs with."""

    certificate: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        folder: Path,
        name: str,
        *names: str,
        days: int = 30,
        expired: bool = False,
        client: bool = False,
    ) -> Issued:
        """A certificate for ``name`` (and ``names``: host names or IP addresses) signed by this CA, in
        ``folder`` as ``<name>.pem`` and ``<name>.key``; ``expired``: it ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for each in (name, *names):
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(each)))
            except ValueError:
                alternatives.append(x509.DNSName(each))
        start, end = (
            (_NOW - datetime.timedelta(days=10), _NOW - datetime.timedelta(days=1))
            if expired
            else (_NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=days))
        )
        usage = (
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        stem = name.replace(":", "_")
        return Issued(_write_cert(folder / f"{stem}.pem", cert), _write_key(folder / f"{stem}.key", key))


def authority(folder: Path, name: str = "durchwahl test CA") -> Authority:
    """A new CA whose certificate is ``folder/<name>.ca.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    return Authority(_write_cert(folder / f"{name.replace(' ', '-')}.ca.pem", cert), cert, key)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)
    return path


def encrypted_key(path: Path, password: bytes = b"secret") -> Path:
    """A private key protected by ``password`` (what an operator may have by mistake)."""
    return _write_key(path, ec.generate_private_key(ec.SECP256R1()), password)
