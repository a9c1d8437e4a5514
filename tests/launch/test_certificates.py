"""The CA verifies the SuperLink's certificate; SuperNode keys are OpenSSH EC P-384."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from src.launch.certificates import make_ca, make_server_cert, write_node_keys, write_tls_files


def _verifier(ca: x509.Certificate, host: str):
    subject: x509.GeneralName
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    return PolicyBuilder().store(Store([ca])).build_server_verifier(subject)


def test_ca_verifies_server_cert_for_loopback(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    for host in ("127.0.0.1", "localhost", "::1"):
        chain = _verifier(ca, host).verify(server, [])
        assert chain[0] == server and chain[-1] == ca
    with pytest.raises(VerificationError):   # not valid for another host
        _verifier(ca, "10.0.0.1").verify(server, [])
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_other_ca_does_not_verify(tmp_path: Path) -> None:
    ca_key, ca = make_ca()
    _, server = make_server_cert(ca_key, ca)
    _, other_ca = make_ca("someone else")
    with pytest.raises(VerificationError):
        _verifier(other_ca, "127.0.0.1").verify(server, [])


def test_supernode_keys_are_openssh_p384(tmp_path: Path) -> None:
    files = write_node_keys(tmp_path, "hospital_1")
    assert files.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert files.public_key.read_bytes().startswith(b"ecdsa-sha2-nistp384 ")
    priv = serialization.load_ssh_private_key(files.private_key.read_bytes(), None)
    pub = serialization.load_ssh_public_key(files.public_key.read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert isinstance(priv.curve, ec.SECP384R1)
    assert priv.public_key() == pub
    assert stat.S_IMODE(files.private_key.stat().st_mode) == 0o600
    assert write_node_keys(tmp_path, "hospital_2").public_key.read_bytes() != \
        files.public_key.read_bytes()
