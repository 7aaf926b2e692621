"""A test PKI: a CA and certificates it signs, PEM files written with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(folder: Path, name: str, issuer: Issuer | None, ca: bool = False) -> Issuer:
    """``name``.key and ``name``.crt (common name ``name``, for 127.0.0.1), and ``name``.pem
    with both (what Orthanc's ``SslCertificate`` takes); self-signed where ``issuer`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (folder / f"{name}.crt").write_bytes(cert_pem)
    (folder / f"{name}.key").write_bytes(key_pem)
    (folder / f"{name}.pem").write_bytes(key_pem + cert_pem)
    return cert, key


def site_pki(folder: Path, *signed: str, strangers: tuple[str, ...] = ()) -> Path:
    """``folder`` with a ``site-ca``, certificates it signs for ``signed``, and self-signed
    ones for ``strangers`` (no CA the site trusts)."""
    folder.mkdir(parents=True, exist_ok=True)
    site_ca = issue(folder, "site-ca", None, ca=True)
    for name in signed:
        issue(folder, name, site_ca)
    for name in strangers:
        issue(folder, name, None)
    return folder
