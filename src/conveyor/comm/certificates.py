"""Throwaway TLS credentials for one cluster: a CA and one certificate it signed.

Used by :meth:`conveyor.comm.security.Security.temporary`; made with ``cryptography``
(EC P-256 keys, SHA-256 signatures), valid for one day, returned as PEM text and never
written anywhere.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TemporaryCredentials", "make_temporary_credentials"]

#: how long the certificates are valid
VALIDITY = datetime.timedelta(days=1)
#: how far back their validity starts, for clocks slightly behind this one
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True, repr=False)
class TemporaryCredentials:
    """PEM text of a CA certificate, and of a certificate and key the CA signed."""

    ca_cert: str
    cert: str
    key: str

    def __repr__(self) -> str:  # never show key material
        return "<TemporaryCredentials (in memory)>"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "conveyor"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_temporary_credentials() -> TemporaryCredentials:
    """Create a fresh CA and one certificate it signed, usable both as a TLS server and
    a TLS client certificate (the same one serves every role of a cluster).

    The CA's private key is dropped on return: no further certificate can be signed.
    """
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - _CLOCK_SKEW, now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("conveyor temporary CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("conveyor cluster member"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TemporaryCredentials(
        ca_cert=ca_cert.public_bytes(pem).decode(),
        cert=cert.public_bytes(pem).decode(),
        key=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )
