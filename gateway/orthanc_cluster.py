"""Several Orthanc servers on one PostgreSQL index and one storage area, used as one.

Any of them answers any request the same way (the index is shared), so the gateway keeps
using the one that answered last and moves to the next in ``orthanc.url`` +
``orthanc.failover`` order when it is down: connection refused or reset (a TLS failure
included), a timeout, an HTTP 5xx, 408 or 429, or an answer cut off. A refusal (any other
4xx: the filter plugin rejecting an object, an instance that is not there, wrong
credentials) is the cluster's answer, not one server's trouble: it goes back to the caller
at once and is not asked again elsewhere. When every server is down, the last one's failure
goes to the caller, whose own backoff takes over. The log names the server skipped and the
one taken (URLs only, never a request's content).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from orthanc_api_client import OrthancApiClient
from orthanc_api_client.exceptions import ConnectionError as OrthancConnectionError
from orthanc_api_client.exceptions import HttpError
from orthanc_api_client.exceptions import TimeoutError as OrthancTimeout

from gateway.config import Orthanc
from gateway.tls import describe_tls_failure, orthanc_client

log = logging.getLogger("gateway.orthanc")

_BUSY = (408, 429)  # the server is overloaded or gave up: another one may serve


def failover_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means this one server is down (a short text for the log), or None when
    it is the cluster's answer (a refusal) or a local problem that another server would
    not change."""
    if isinstance(exc, HttpError):
        status = exc.http_status_code or 0
        return f"HTTP {status}" if status >= 500 or status in _BUSY else None
    if isinstance(exc, OrthancTimeout):
        return "no answer in time"
    if isinstance(exc, OrthancConnectionError):
        return describe_tls_failure(exc) or "not reachable"
    return None


class OrthancCluster:
    """One client per Orthanc server; ``request`` goes to the server in use and fails over."""

    def __init__(self, settings: Orthanc,
                 client_for: Callable[[Orthanc], OrthancApiClient] = orthanc_client) -> None:
        self._servers = [(url, client_for(settings.model_copy(update={"url": url, "failover": []})))
                         for url in settings.urls]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server in use: the last one that answered."""
        return self._servers[self._current][0]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``client.<method>(path, **kwargs)`` on the server in use, then on the next ones
        while a server is down. Returns the client's answer (None for one cut off on every
        server); raises a refusal at once, and the last server's failure when all are down."""
        count = len(self._servers)
        order = [(self._current + step) % count for step in range(count)]
        for index in order[:-1]:
            url, client = self._servers[index]
            try:
                response = getattr(client, method)(path, **kwargs)
            except Exception as exc:
                reason = failover_reason(exc)
                if reason is None:
                    raise
                self._skip(url, reason, index)
                continue
            if response is None:
                self._skip(url, "answer cut off", index)
                continue
            self._use(index)
            return response
        # The last one's failure is the caller's.
        response = getattr(self._servers[order[-1]][1], method)(path, **kwargs)
        if response is not None:
            self._use(order[-1])
        return response

    def _skip(self, url: str, reason: str, index: int) -> None:
        following = self._servers[(index + 1) % len(self._servers)][0]
        log.warning("Orthanc %s skipped (%s); trying %s", url, reason, following)

    def _use(self, index: int) -> None:
        with self._lock:
            if index == self._current:
                return
            self._current = index
        log.info("Orthanc %s in use (of %d in the cluster)", self._servers[index][0], len(self._servers))
