"""DICOM TLS (PS3.15 Annex B) for the listener: storage and query/retrieve on one port.

The gateway presents its certificate; with ``require_client_certificate`` a peer must
present one signed by the site's CA, and where a sender or workstation names a
``certificate_subject`` the certificate's common name must match it too, so the AE title,
the address and the certificate are checked together.
"""

from __future__ import annotations

import ssl

from pynetdicom.association import Association

from gateway.config import Tls


def server_context(tls: Tls) -> ssl.SSLContext:
    """TLS 1.2 or newer, Python's default (BCP 195-grade) ciphers."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_certificates))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def peer_common_name(assoc: Association) -> str | None:
    """The common name of the peer's verified certificate; None without TLS or certificate."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
