#!/usr/bin/env python3
"""Writes the certificates of the TLS tests with the `cryptography` package: a test CA, server
certificates for 127.0.0.1 and localhost it signs (two, for rotation), a client certificate it
signs, one signed by another CA, and an expired one. ECDSA P-256 keys in PKCS#8 PEM.

    python tests/clients/make_certs.py DIR

Prints one JSON line: each certificate's serial number (hex), as `openssl x509 -serial` shows it.
"""
import datetime
import ipaddress
import json
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def name(common_name, organization="edgeinfer-tests"):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def write(directory, stem, certificate, key):
    (directory / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def authority(common_name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def leaf(ca, common_name, usage, not_after=None, not_before=None):
    ca_certificate, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name)).issuer_name(ca_certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        ]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def main():
    directory = pathlib.Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    ca, other_ca = authority("edgeinfer test CA"), authority("another CA")
    write(directory, "ca", *ca)
    write(directory, "other-ca", *other_ca)
    made = {
        "server": leaf(ca, "edgeinfer server", ExtendedKeyUsageOID.SERVER_AUTH),
        "server-rotated": leaf(ca, "edgeinfer server, rotated", ExtendedKeyUsageOID.SERVER_AUTH),
        "client": leaf(ca, "deployer", ExtendedKeyUsageOID.CLIENT_AUTH),
        "other-client": leaf(other_ca, "deployer", ExtendedKeyUsageOID.CLIENT_AUTH),
        "expired-client": leaf(ca, "deployer", ExtendedKeyUsageOID.CLIENT_AUTH,
                               not_before=NOW - datetime.timedelta(days=3),
                               not_after=NOW - datetime.timedelta(days=1)),
    }
    for stem, (certificate, key) in made.items():
        write(directory, stem, certificate, key)
    print(json.dumps({stem: format(c.serial_number, "X") for stem, (c, _) in made.items()}))


if __name__ == "__main__":
    main()
