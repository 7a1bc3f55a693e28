"""A private CA for the mesh and a certificate per node, derived from random seeds.

pgBackRest's TLS server (backups from a standby, components/backup.py) authenticates both ends
with certificates. They are Ed25519 and derived, like the SSH host keys (hostkeys.py), from 32
random bytes each (pulumi_random.RandomBytes, secret in the stack's state): Ed25519 signatures
are deterministic and every other field here is fixed, so each `pulumi up` renders the same
bytes and nothing re-runs. They do not expire (RFC 5280's 99991231235959Z): the CA is trusted
only by the cluster's own nodes, on the mesh; a new CA or node key is `pulumi up --replace` of
its RandomBytes (docs/operations.md, section 11).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def _key(seed_base64: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_base64, validate=True))


def _serial(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"".join(parts)).digest()[:16], "big") >> 1


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a node signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def private_key_pem(seed_base64: str) -> str:
    return _key(seed_base64).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


def ca_certificate(ca_seed: str, name: str) -> str:
    """The self-signed CA certificate (PEM) of `ca_seed`, named `name`."""
    key = _key(ca_seed)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(_serial(_public(key), name.encode()))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def node_certificate(ca_seed: str, ca_name: str, seed: str, address: str) -> str:
    """The certificate (PEM) of the node at the mesh address `address`, signed by the CA:
    both a server's (the address as subject alternative name: pgBackRest connects by it) and
    a client's (the address as CN: unique in the cluster, and short, as a CN must be)."""
    ca_key = _key(ca_seed)
    key = _key(seed)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)]))
        .public_key(public)
        .serial_number(_serial(_public(key), address.encode()))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
