"""Reading from Orthanc for the restore path: find, list and download protected objects,
from any server of an Orthanc cluster that answers (``gateway/orthanc_cluster.py``)."""

from __future__ import annotations

from typing import Any

from gateway.config import Orthanc
from gateway.orthanc_cluster import OrthancCluster
from gateway.tls import orthanc_request_options

_LEVELS = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "IMAGE": "Instance"}


class PacsReader:
    """Orthanc's REST API, read side."""

    def __init__(self, settings: Orthanc) -> None:
        self._orthanc = OrthancCluster(settings)
        self._options = {"timeout": settings.timeout_seconds, **orthanc_request_options(settings)}

    def _get(self, path: str) -> Any:
        return self._orthanc.request("get", path, **self._options)

    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """Orthanc's own C-FIND-like matching on what it holds (pseudonymous values)."""
        body = {"Level": _LEVELS[level], "Query": query, "Expand": True}
        return list(self._orthanc.request("post", "tools/find", json=body, **self._options).json())

    def study_instances(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> Orthanc instance id, for one (pseudonymous) study."""
        found = self.find("STUDY", {"StudyInstanceUID": study_uid})
        out: dict[str, str] = {}
        for study in found:
            for inst in self._get(f"studies/{study['ID']}/instances").json():
                out[inst["MainDicomTags"]["SOPInstanceUID"]] = inst["ID"]
        return out

    def instances(self, level: str, query: dict[str, str]) -> list[str]:
        """Orthanc ids of the instances under everything that matches ``query`` at ``level``."""
        ids = []
        for item in self.find(level, query):
            if level == "IMAGE":
                ids.append(item["ID"])
            else:
                kind = {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series"}[level]
                ids += [i["ID"] for i in self._get(f"{kind}/{item['ID']}/instances").json()]
        return ids

    def all_instances(self) -> list[str]:
        return list(self._get("instances").json())

    def file(self, instance_id: str) -> bytes:
        return bytes(self._get(f"instances/{instance_id}/file").content)
