"""Certificates and keys for a loopback Flower federation, made with `cryptography`.

- A throw-away certificate authority (EC P-256, valid for a few days).
- A SuperLink server certificate signed by it, for ``localhost``, ``127.0.0.1`` and
  ``::1`` (TLS for the Fleet, Control and Runtime APIs).
- One key pair per SuperNode for SuperNode authentication: EC P-384 in OpenSSH form,
  the public half registered with the SuperLink (``flwr supernode register``'s request),
  the private half given to ``flower-supernode --auth-supernode-private-key``.

Private keys are written unencrypted with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the SuperLink (server side) and its clients (CA)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyFiles:
    """A SuperNode's authentication key pair, OpenSSH form."""

    private_key: Path
    public_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private_key(key: ec.EllipticCurvePrivateKey, path: Path,
                       fmt: serialization.PrivateFormat) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # created with mode 0600: the key is never readable by others, not even briefly
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             days: int) -> x509.CertificateBuilder:
    """The fields every certificate here shares: names, key, serial, validity (5 min back-dated)."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def make_ca(common_name: str = "fedcxr local CA", days: int = 7
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     hosts: tuple[str, ...] = LOOPBACK_HOSTS, days: int = 7
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """TLS server certificate for ``hosts`` (DNS names or IP addresses), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        _builder(subject, ca_cert.subject, key, days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=True, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_tls_files(directory: Path, hosts: tuple[str, ...] = LOOPBACK_HOSTS) -> TlsFiles:
    """Make a CA and a server certificate for ``hosts``; write them as PEM under ``directory``.

    The CA's private key is not written: nothing else will ever be signed by it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca()
    srv_key, srv_cert = make_server_cert(ca_key, ca_cert, hosts)
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(srv_key, files.server_key, serialization.PrivateFormat.PKCS8)
    return files


def write_node_keys(directory: Path, name: str) -> NodeKeyFiles:
    """SuperNode authentication key pair (EC P-384), both halves in OpenSSH form."""
    key = ec.generate_private_key(ec.SECP384R1())
    files = NodeKeyFiles(Path(directory) / f"{name}.key", Path(directory) / f"{name}.pub")
    _write_private_key(key, files.private_key, serialization.PrivateFormat.OpenSSH)
    files.public_key.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                      serialization.PublicFormat.OpenSSH) + b"\n")
    return files
