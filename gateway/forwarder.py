"""Forwarding protected objects to Orthanc over its REST API.

Uses the Orthanc team's client (``orthanc-api-client``). An object counts as forwarded
only when Orthanc answers that it stored it (``Success``) or already holds it
(``AlreadyStored``). Connection problems, an https Orthanc whose certificate does not chain
to the configured CA included, are retried with exponential backoff; a refusal (Orthanc's
filter plugin, a bad file) is permanent and shown in status. Where ``orthanc.failover``
lists further servers of an Orthanc cluster, a server that is down is skipped
(``gateway/orthanc_cluster.py``) before the backoff begins. ``copies`` and ``delete`` let
``gateway/publish.py`` keep one copy per SOP instance when a correction supersedes an object.
"""

from __future__ import annotations

import logging
from typing import Any

from orthanc_api_client.exceptions import ConnectionError as OrthancConnectionError
from orthanc_api_client.exceptions import HttpError
from orthanc_api_client.exceptions import TimeoutError as OrthancTimeout

from gateway.config import Orthanc
from gateway.orthanc_cluster import OrthancCluster
from gateway.tls import describe_tls_failure, orthanc_request_options

log = logging.getLogger("gateway.forward")


class Unreachable(Exception):
    """Orthanc could not be reached or answered with a server error: try again later."""


class Refused(Exception):
    """Orthanc refused the object: retrying will not help."""


class Forwarder:
    """Uploads protected objects to Orthanc (any server of its cluster that answers)."""

    def __init__(self, settings: Orthanc) -> None:
        self._orthanc = OrthancCluster(settings)
        self._options = {"timeout": settings.timeout_seconds, **orthanc_request_options(settings)}

    def copies_of(self, sop_uids: list[str]) -> dict[str, list[str]]:
        """Orthanc's ids of every instance holding each of these (pseudonymous) SOP Instance
        UIDs, one request per hundred: Orthanc matches a list of UIDs (``a\\b``) anywhere it
        holds them. UIDs held nowhere are absent."""
        held: dict[str, list[str]] = {}
        for start in range(0, len(sop_uids), 100):
            body = {"Level": "Instance", "Query": {"SOPInstanceUID": "\\".join(sop_uids[start:start + 100])},
                    "Expand": True}
            for instance in self._call("post", "tools/find", json=body).json():
                uid = str(instance["MainDicomTags"].get("SOPInstanceUID", ""))
                held.setdefault(uid, []).append(str(instance["ID"]))
        return {uid: sorted(ids) for uid, ids in held.items()}

    def delete(self, orthanc_id: str) -> None:
        """Remove one instance (Orthanc removes its series, study and patient once empty)."""
        self._call("delete", f"instances/{orthanc_id}")

    def _call(self, method: str, path: str, **kwargs: object) -> Any:
        try:
            response = self._orthanc.request(method, path, **self._options, **kwargs)
        except HttpError as exc:
            raise Unreachable(f"Orthanc answered HTTP {exc.http_status_code or 0} to {method.upper()} "
                              f"{path.split('/')[0]}") from None
        except (OrthancConnectionError, OrthancTimeout) as exc:
            raise Unreachable(describe_tls_failure(exc) or f"Orthanc is not reachable ({type(exc).__name__})") from None
        if response is None:  # the client returns None for a cut-off answer (ChunkedEncodingError, ...)
            raise Unreachable("Orthanc's answer was cut off")
        return response

    def send(self, data: bytes) -> str:
        """Upload one object; return Orthanc's instance id once it is stored."""
        try:
            response = self._orthanc.request("post", "instances", data=data, **self._options)
        except HttpError as exc:
            status = exc.http_status_code or 0
            if status >= 500 or status in (401, 403, 408, 429):
                raise Unreachable(f"Orthanc answered HTTP {status}") from None
            raise Refused(f"Orthanc refused the object (HTTP {status})") from None
        except (OrthancConnectionError, OrthancTimeout) as exc:
            raise Unreachable(describe_tls_failure(exc) or f"Orthanc is not reachable ({type(exc).__name__})") from None
        except OSError as exc:  # requests could not read the CA bundle or client certificate
            raise Unreachable(f"TLS files for Orthanc not usable: {exc}") from None
        if response is None:  # the client returns None for a cut-off answer (ChunkedEncodingError, ...)
            raise Unreachable("Orthanc's answer was cut off")
        body = response.json()
        if isinstance(body, list):  # one object sent, one answer expected
            body = body[0] if body else {}
        if body.get("Status") not in ("Success", "AlreadyStored"):
            raise Refused(f"Orthanc did not store the object (status {body.get('Status')!r})")
        return str(body["ID"])
