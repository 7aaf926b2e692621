"""The retrieval index: one row per protected instance that Orthanc holds.

Queries by original values (PatientID, names with wildcards, original UIDs) cannot go to
Orthanc, which holds only pseudonyms. Each row keeps in clear what Orthanc holds anyway
(the pseudonymous patient ID and UIDs, Orthanc's instance id) and what retrieval planning
needs without downloading anything (SOP class, the original's transfer syntax, the stages
that protected it). The original attributes a query can ask for, and the SHA-256 of the
original, are sealed with AES-256-GCM under the study's data key (wrapped by a keyring
KEK, as in the envelope): a stolen index file without the keyring reveals no identity.

The forwarder writes a row only after Orthanc confirmed the copy, and replaces it when a
correction supersedes that copy, so the index follows what Orthanc holds. It is derived
data: ``gateway reindex`` recreates it from Orthanc, opening each envelope.
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
from typing import Any

import pydicom
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset

from gateway import envelope
from gateway.keyring import Keyring, KeyringError
from gateway.retrieval.vocabulary import QUERY_KEYS

FORMAT = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    orthanc_id TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    stages TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


class IndexFormatError(Exception):
    """The index file was written by an older gateway: rebuild it."""


@dataclass(frozen=True)
class Entry:
    """One protected instance: what Orthanc holds (pseudonymous, in clear) and the original's
    queryable attributes and digest (sealed at rest)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    orthanc_id: str
    sop_class: str
    transfer_syntax: str
    stages: tuple[str, ...]
    original: dict[str, str]
    digest: str


@dataclass(frozen=True)
class Sealing:
    """The study's data key and how the keyring wraps it."""

    kek_id: str
    wrapped: bytes
    data_key: bytes


def original_attributes(ds: Dataset) -> dict[str, str]:
    """The queryable attributes of an original object, as DICOM strings."""
    out = {}
    for keyword in QUERY_KEYS:
        value = ds.get(keyword)
        if value is not None and value != "":
            many = isinstance(value, (list, pydicom.multival.MultiValue))
            out[keyword] = "\\".join(map(str, value)) if many else str(value)
    return out


def entry_of(protected_bytes: bytes, orthanc_id: str, keyring: Keyring) -> tuple[Entry, Sealing]:
    """The index entry of one protected object, from its own envelope."""
    ds = pydicom.dcmread(io.BytesIO(protected_bytes), stop_before_pixels=True)
    opened = envelope.open_envelope(ds, keyring)
    original = pydicom.dcmread(io.BytesIO(opened.payload.cut.prefix), stop_before_pixels=True, force=True)
    meta = getattr(original, "file_meta", None)
    key_id, wrapped = envelope.wrapped_key(ds)
    entry = Entry(
        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.SOPInstanceUID),
        patient_id=str(ds.get("PatientID", "")), orthanc_id=orthanc_id,
        sop_class=str(original.get("SOPClassUID", "")),
        transfer_syntax=str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else "",
        stages=tuple(name for name, _ in opened.payload.records),
        original=original_attributes(original), digest=opened.payload.cut.digest.hex(),
    )
    return entry, Sealing(key_id, wrapped, opened.data_key)


def _row(entry: Entry, sealing: Sealing) -> tuple[Any, ...]:
    """The table row of one entry, the original's attributes and digest sealed."""
    nonce = os.urandom(12)
    plain = json.dumps({"original": entry.original, "digest": entry.digest}).encode()
    sealed = AESGCM(sealing.data_key).encrypt(nonce, plain, _aad(entry.sop_uid))
    return (entry.sop_uid, entry.study_uid, entry.series_uid, entry.patient_id, entry.orthanc_id, entry.sop_class,
            entry.transfer_syntax, "\\".join(entry.stages), sealing.kek_id, sealing.wrapped, nonce, sealed)


class Index:
    """SQLite file of entries, the originals sealed."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if tables and version != FORMAT:
            self._db.close()
            raise IndexFormatError(f"the retrieval index {path} is format {version}, this gateway reads {FORMAT}: "
                                   f"move it aside and run 'gateway reindex --config ...' to rebuild it from Orthanc")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {FORMAT}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, entry: Entry, sealing: Sealing) -> None:
        """Add or replace the entry of one SOP instance (a correction replaces it)."""
        self.put_many([(entry, sealing)])

    def put_many(self, entries: list[tuple[Entry, Sealing]]) -> None:
        """Add or replace several entries, in order, in one transaction (one commit)."""
        rows = [_row(entry, sealing) for entry, sealing in entries]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, sop_uid: str, keyring: Keyring) -> Entry | None:
        """The entry of one (pseudonymous) SOP Instance UID, or None."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchall()
        return next(self._open(rows, keyring), None)

    def entries(self, keyring: Keyring) -> Iterator[Entry]:
        """Every entry, opened; entries that do not open (unknown key) are skipped."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM instances ORDER BY study_uid, series_uid").fetchall()
        yield from self._open(rows, keyring)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    @staticmethod
    def _open(rows: list[tuple[Any, ...]], keyring: Keyring) -> Iterator[Entry]:
        keys: dict[tuple[str, bytes], bytes] = {}
        for sop, study, series, patient, orthanc_id, sop_class, syntax, stages, kek_id, wrapped, nonce, sealed in rows:
            try:
                if (kek_id, wrapped) not in keys:
                    keys[(kek_id, wrapped)] = envelope.unwrap(keyring, kek_id, wrapped)
                plain = json.loads(AESGCM(keys[(kek_id, wrapped)]).decrypt(nonce, sealed, _aad(sop)))
            except (envelope.EnvelopeError, KeyringError, InvalidTag):
                continue
            yield Entry(study, series, sop, patient, orthanc_id, sop_class, syntax,
                        tuple(s for s in stages.split("\\") if s), plain["original"], plain["digest"])


def _aad(sop_uid: str) -> bytes:
    return f"PGW-INDEX-2|{sop_uid}".encode()
