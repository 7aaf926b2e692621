"""The retrieval index: original identity per protected instance, encrypted at rest.

Queries by original values (PatientID, names with wildcards, original UIDs) cannot go to
Orthanc, which holds only pseudonyms. Each row here holds the pseudonymous UIDs in clear
(they are what Orthanc holds) and the original attributes a query can ask for, sealed
with AES-256-GCM under the study's data key (wrapped by a keyring KEK, as in the
envelope). A stolen index file without the keyring reveals no identity.

The index is derived data: ``rebuild`` recreates it from what Orthanc holds, opening
each object's envelope with the keyring.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset

from gateway import envelope
from gateway.keyring import Keyring, KeyringError

# What a C-FIND may ask for, by level; the values kept are the original's.
LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName"),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
               "BodyPartExamined"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
ALL_KEYS = tuple(k for keys in LEVEL_KEYS.values() for k in keys)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_study ON entries(study_uid);
"""


@dataclass(frozen=True)
class Entry:
    """One instance: its pseudonymous UIDs and its original attributes."""

    study_uid: str
    series_uid: str
    sop_uid: str
    original: dict[str, str]


def original_attributes(ds: Dataset) -> dict[str, str]:
    """The queryable attributes of an original object, as DICOM strings."""
    out = {}
    for keyword in ALL_KEYS:
        value = ds.get(keyword)
        if value is not None and value != "":
            out[keyword] = "\\".join(map(str, value)) if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)
    return out


class Index:
    """SQLite file of sealed entries."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, entry: Entry, kek_id: str, wrapped: bytes, data_key: bytes) -> None:
        nonce = os.urandom(12)
        sealed = AESGCM(data_key).encrypt(nonce, json.dumps(entry.original).encode(), _aad(entry.sop_uid))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry.sop_uid, entry.study_uid, entry.series_uid, kek_id, wrapped, nonce, sealed),
            )

    def entries(self, keyring: Keyring) -> Iterator[Entry]:
        """Every entry, opened; entries that do not open (unknown key) are skipped."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM entries ORDER BY study_uid, series_uid").fetchall()
        keys: dict[tuple[str, bytes], bytes] = {}
        for sop, study, series, kek_id, wrapped, nonce, sealed in rows:
            try:
                if (kek_id, wrapped) not in keys:
                    keys[(kek_id, wrapped)] = envelope.unwrap(keyring, kek_id, wrapped)
                plain = AESGCM(keys[(kek_id, wrapped)]).decrypt(nonce, sealed, _aad(sop))
            except (envelope.EnvelopeError, KeyringError, InvalidTag):
                continue
            yield Entry(study, series, sop, json.loads(plain))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def add_protected(self, protected_bytes: bytes, keyring: Keyring) -> None:
        """Index one protected object from its own envelope (used by rebuild)."""
        ds = pydicom.dcmread(io.BytesIO(protected_bytes), stop_before_pixels=True)
        opened = envelope.open_envelope(ds, keyring)
        original = pydicom.dcmread(io.BytesIO(opened.payload.cut.prefix), stop_before_pixels=True, force=True)
        key_id, wrapped = envelope.wrapped_key(ds)
        attributes = original_attributes(original)
        meta = getattr(original, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            attributes["_TransferSyntaxUID"] = str(meta.TransferSyntaxUID)  # to offer it on C-MOVE
        self.add(
            Entry(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), attributes),
            key_id, wrapped, opened.data_key,
        )


def _aad(sop_uid: str) -> bytes:
    return f"PGW-INDEX-1|{sop_uid}".encode()
