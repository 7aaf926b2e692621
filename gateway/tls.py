"""TLS on every leg that carries identity or the gateway's credentials.

- The listener (PS3.15 Annex B DICOM TLS, storage and query/retrieve on one port): the
  gateway presents its certificate; with ``require_client_certificate`` a peer must present
  one signed by the site's CA, and where a sender or workstation names a
  ``certificate_subject`` the certificate's common name must match it too, so the AE title,
  the address and the certificate are checked together.
- C-MOVE destinations (restored originals): the destination's certificate must chain to
  the destination's CA and carry its ``certificate_subject``, checked right after the
  handshake and before anything is sent.
- Orthanc's REST API over https: its certificate must chain to ``orthanc.ca_certificates``.
- The status endpoint over https with client certificates.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from orthanc_api_client import OrthancApiClient
from pynetdicom.association import Association

from gateway.config import ConfigError, Destination, Orthanc, Tls


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
    return _common_name(sock.getpeercert())


def _common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


# -- C-MOVE destinations ------------------------------------------------------------------


class _SubjectCheckedSocket(ssl.SSLSocket):
    """A client socket that fails its handshake unless the peer's common name is the
    context's ``expected_subject``: a certificate the site CA issued to another device
    (a modality, another workstation) must not receive originals."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        expected = getattr(self.context, "expected_subject", None)
        got = _common_name(self.getpeercert())
        if got != expected:
            raise ssl.SSLCertVerificationError(
                ssl.SSL_ERROR_SSL,
                f"the destination's certificate names {got!r}, not the configured certificate_subject {expected!r}")


class _DestinationContext(ssl.SSLContext):
    expected_subject: str
    sslsocket_class = _SubjectCheckedSocket


def destination_tls_args(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for the association to a C-MOVE destination; None where the
    destination has no TLS. Raises OSError or ssl.SSLError when a file cannot be used."""
    if not destination.tls:
        return None
    assert destination.ca_certificates is not None and destination.certificate_subject
    ctx = _DestinationContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # workstations are known by certificate subject, not DNS name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(destination.ca_certificates))
    if destination.client_certificate is not None:
        ctx.load_cert_chain(destination.client_certificate, destination.client_private_key)
    ctx.expected_subject = destination.certificate_subject
    return ctx, destination.host


# -- Orthanc ------------------------------------------------------------------------------


def orthanc_client(settings: Orthanc) -> OrthancApiClient:
    """The Orthanc team's client, except that a TLS failure is not retried inside one
    request: the client's urllib3 retries count it as an "other" error and try it ten
    times with backoff (minutes in one call) though a certificate that fails verification
    fails the same way each time. The forwarder's own backoff, which records why, takes
    over. (The client keeps its session private; its adapter's retry policy is the hook.)"""
    client = OrthancApiClient(settings.url, user=settings.username, pwd=settings.secret())
    adapter = client._http_session.get_adapter(settings.url)
    adapter.max_retries = adapter.max_retries.new(other=0)
    return client


def orthanc_request_options(settings: Orthanc) -> dict[str, Any]:
    """``verify`` and ``cert`` for each request to Orthanc. Given per request, not on the
    session, so that REQUESTS_CA_BUNDLE in the environment cannot replace the configured CA."""
    options: dict[str, Any] = {"verify": str(settings.ca_certificates) if settings.ca_certificates else True}
    if settings.client_certificate is not None:
        options["cert"] = (str(settings.client_certificate), str(settings.client_private_key))
    return options


def orthanc_context(settings: Orthanc) -> ssl.SSLContext | None:
    """What the forwarder trusts and presents, for an https Orthanc (None for http);
    ConfigError where the CA bundle or the client certificate cannot be used."""
    if urlsplit(settings.url).scheme != "https":
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(settings.ca_certificates) if settings.ca_certificates else None)
        if settings.client_certificate is not None:
            ctx.load_cert_chain(settings.client_certificate, settings.client_private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"orthanc: cannot use the CA bundle or client certificate: {exc}") from None
    return ctx


def check_orthanc_certificate(settings: Orthanc, context: ssl.SSLContext) -> None:
    """Handshake with an https Orthanc as the forwarder would (chain and host name);
    ConfigError saying what is wrong."""
    url = urlsplit(settings.url)
    host, port = url.hostname or "", url.port or 443
    try:
        # At most 10 s: a serving gateway waits for this before it takes objects.
        with socket.create_connection((host, port), timeout=min(settings.timeout_seconds, 10)) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                pass
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(f"orthanc.url: Orthanc's certificate is not trusted ({exc.verify_message}); it must chain to "
                          "orthanc.ca_certificates and name the URL's host") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"orthanc.url: no TLS connection to {host}:{port} ({exc})") from None


def describe_tls_failure(exc: BaseException) -> str | None:
    """Why a request to Orthanc failed, where the cause was TLS (the chain, the host name,
    a refused client certificate); None for other causes. requests and urllib3 wrap the
    ssl error a few levels deep, in causes, contexts, arguments or ``reason``."""
    todo: list[Any] = [exc]
    seen: set[int] = set()
    while todo:
        cause = todo.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"Orthanc's certificate is not trusted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS with Orthanc failed ({cause.reason or cause})"
        todo += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return None
