"""The read-only status endpoint: ``/status`` (JSON) and ``/metrics`` (Prometheus).

Plain HTTP on loopback by default: it shows queue depths, quarantine and the last errors
by series pseudonym, never identity, and accepts nothing but GET. Anywhere but loopback it
serves HTTPS to clients with a certificate from the site's CA (the config refuses other
addresses without that), or stays on loopback behind the site's reverse proxy.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.config import StatusHttp
from gateway.metrics import Metrics
from gateway.spool import SPOOL_STATES, Spool
from gateway.tls import server_context

log = logging.getLogger("gateway.status")


def status_document(spool: Spool) -> dict[str, Any]:
    """What an admin (or a monitoring probe) needs to see, PHI-free."""
    counts = spool.counts()
    problems = spool.problem_series(limit=20)
    return {
        "objects_by_state": {state: counts.get(state, 0) for state in SPOOL_STATES},
        "forward_backlog": counts.get("protected", 0),
        "quarantined_objects": counts.get("quarantined", 0),
        "last_errors": [
            {"series": token, "state": state, "reason": reason,
             "at": datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")}
            for token, state, reason, when in problems
        ],
    }


class StatusServer:
    """A small threaded HTTP server in the gateway's process."""

    def __init__(self, settings: StatusHttp, spool: Spool, metrics: Metrics) -> None:
        context = server_context(settings.tls) if settings.tls is not None else None
        self._scheme = "https" if context else "http"
        self._server = _Server((settings.host, settings.port), _handler(spool, metrics, context))
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("status endpoint on %s://%s:%d/status and /metrics", self._scheme, *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client without an acceptable certificate, or one that hangs up: one log line,
        not a traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ssl.SSLError included
            log.warning("status endpoint: request from %s dropped (%s: %s)", client_address[0], type(exc).__name__, exc)
        else:
            log.exception("status endpoint: request from %s failed", client_address[0])


def _handler(spool: Spool, metrics: Metrics, context: ssl.SSLContext | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a client that stalls in the handshake or the request holds only its own thread

        def setup(self) -> None:
            if context is not None:  # the handshake runs here, in the request's thread
                self.request.settimeout(self.timeout)
                self.request = context.wrap_socket(self.request, server_side=True)
            super().setup()

        def finish(self) -> None:
            super().finish()
            if context is not None:  # the server closes the plain socket, which the TLS one took over
                self.request.close()

        def do_GET(self) -> None:
            if self.path == "/status":
                self._send(200, "application/json", json.dumps(status_document(spool), indent=2).encode())
            elif self.path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition())
            else:
                self._send(404, "text/plain", b"not found: try /status or /metrics\n")

        def _refuse(self) -> None:
            self._send(405, "text/plain", b"read-only: GET /status or /metrics\n")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
