"""The retrieval index: one row per protected instance that Orthanc holds.

Queries by original values (PatientID, names with wildcards, original UIDs) cannot go to
Orthanc, which holds only pseudonyms. Each row keeps in clear what Orthanc holds anyway
(the pseudonymous patient ID and UIDs, Orthanc's instance id) and what retrieval planning
needs without downloading anything (SOP class, the original's transfer syntax, the stages
that protected it). The original attributes a query can ask for, and the SHA-256 of the
original, are sealed with AES-256-GCM under the study's data key (wrapped by a keyring
KEK, as in the envelope): a stolen index (a database dump) without the keyring reveals no
identity. It lives in the state database (``gateway.state``), so on a cluster every node
answers C-FIND and C-MOVE for studies any node forwarded.

The forwarder writes a row only after Orthanc confirmed the copy, and replaces it when a
correction supersedes that copy, so the index follows what Orthanc holds. It is derived
data: ``gateway reindex`` recreates it from Orthanc, opening each envelope.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset
from sqlalchemy import bindparam, func, select

from gateway import envelope
from gateway.keyring import Keyring, KeyringError
from gateway.retrieval.vocabulary import QUERY_KEYS
from gateway.state.engine import State, sqlite_state
from gateway.state.schema import retrieval_index


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


@dataclass(frozen=True)
class Original:
    """What an index entry keeps of the original object: its queryable attributes, SOP
    class and transfer syntax."""

    attributes: dict[str, str]
    sop_class: str
    transfer_syntax: str

    @classmethod
    def of(cls, ds: Dataset) -> Original:
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
        return cls(original_attributes(ds), str(ds.get("SOPClassUID", "")), syntax)


def entry_for(protected: Dataset, original: Original, stages: Sequence[str], digest: bytes,
              orthanc_id: str = "") -> Entry:
    """The index entry of a protected object (its header), made from ``original``."""
    return Entry(
        study_uid=str(protected.StudyInstanceUID), series_uid=str(protected.SeriesInstanceUID),
        sop_uid=str(protected.SOPInstanceUID), patient_id=str(protected.get("PatientID", "")),
        orthanc_id=orthanc_id, sop_class=original.sop_class, transfer_syntax=original.transfer_syntax,
        stages=tuple(stages), original=original.attributes, digest=digest.hex(),
    )


def entry_of(protected_bytes: bytes, orthanc_id: str, keyring: Keyring) -> tuple[Entry, Sealing]:
    """The index entry of one protected object, from its own envelope (protection hands
    the same entry on where it can: ``Protected.entry``)."""
    ds = pydicom.dcmread(io.BytesIO(protected_bytes), stop_before_pixels=True)
    opened = envelope.open_envelope(ds, keyring)
    original = pydicom.dcmread(io.BytesIO(opened.payload.cut.prefix), stop_before_pixels=True, force=True)
    key_id, wrapped = envelope.wrapped_key(ds)
    entry = entry_for(ds, Original.of(original), [name for name, _ in opened.payload.records],
                      opened.payload.cut.digest, orthanc_id)
    return entry, Sealing(key_id, wrapped, opened.data_key)


def _row(entry: Entry, sealing: Sealing) -> dict[str, Any]:
    """The table row of one entry, the original's attributes and digest sealed."""
    nonce = os.urandom(12)
    plain = json.dumps({"original": entry.original, "digest": entry.digest}).encode()
    sealed = AESGCM(sealing.data_key).encrypt(nonce, plain, _aad(entry.sop_uid))
    return {"sop_uid": entry.sop_uid, "study_uid": entry.study_uid, "series_uid": entry.series_uid,
            "patient_id": entry.patient_id, "orthanc_id": entry.orthanc_id, "sop_class": entry.sop_class,
            "transfer_syntax": entry.transfer_syntax, "stages": "\\".join(entry.stages), "kek_id": sealing.kek_id,
            "wrapped": sealing.wrapped, "nonce": nonce, "sealed": sealed}


class Index:
    """The entries in the state database's ``retrieval_index`` table, the originals sealed."""

    def __init__(self, target: State | Path) -> None:
        """``target``: the state database, or a SQLite file of its own (tests, tools)."""
        self._owns_state = isinstance(target, Path)
        self.state = sqlite_state(target) if isinstance(target, Path) else target

    def close(self) -> None:
        if self._owns_state:
            self.state.close()

    def put(self, entry: Entry, sealing: Sealing) -> None:
        """Add or replace the entry of one SOP instance (a correction replaces it)."""
        self.put_many([(entry, sealing)])

    def put_many(self, entries: list[tuple[Entry, Sealing]]) -> None:
        """Add or replace several entries, in order, in one transaction (one commit); of
        several entries of one SOP instance the last wins."""
        rows = {row["sop_uid"]: row for row in (_row(entry, sealing) for entry, sealing in entries)}
        if not rows:
            return
        upsert = self.state.insert(retrieval_index)
        replace = {c.name: upsert.excluded[c.name] for c in retrieval_index.c if c.name != "sop_uid"}
        with self.state.write() as conn:
            conn.execute(upsert.on_conflict_do_update(index_elements=[retrieval_index.c.sop_uid], set_=replace),
                         list(rows.values()))

    def get(self, sop_uid: str, keyring: Keyring) -> Entry | None:
        """The entry of one (pseudonymous) SOP Instance UID, or None."""
        return self.get_many([sop_uid], keyring).get(sop_uid)

    def get_many(self, sop_uids: list[str], keyring: Keyring) -> dict[str, Entry]:
        """The entries of several SOP Instance UIDs in one read (a forward batch's); UIDs
        without one are absent."""
        found: dict[str, Entry] = {}
        for start in range(0, len(sop_uids), 500):
            with self.state.read() as conn:
                rows = conn.execute(_BY_SOPS, {"sop_uids": sop_uids[start:start + 500]}).all()
            found.update((entry.sop_uid, entry) for entry in self._open(rows, keyring))
        return found

    def entries(self, keyring: Keyring) -> Iterator[Entry]:
        """Every entry, opened; entries that do not open (unknown key) are skipped."""
        with self.state.read() as conn:
            rows = conn.execute(select(*_COLUMNS).order_by(retrieval_index.c.study_uid,
                                                           retrieval_index.c.series_uid)).all()
        yield from self._open(rows, keyring)

    def count(self) -> int:
        with self.state.read() as conn:
            return int(conn.execute(select(func.count()).select_from(retrieval_index)).scalar_one())

    @staticmethod
    def _open(rows: Sequence[Any], keyring: Keyring) -> Iterator[Entry]:
        keys: dict[tuple[str, bytes], bytes] = {}
        for row in rows:
            sop, study, series, patient, orthanc_id, sop_class, syntax, stages, kek_id, wrapped, nonce, sealed = row
            wrapped = bytes(wrapped)
            try:
                if (kek_id, wrapped) not in keys:
                    keys[(kek_id, wrapped)] = envelope.unwrap(keyring, kek_id, wrapped)
                plain = json.loads(AESGCM(keys[(kek_id, wrapped)]).decrypt(bytes(nonce), bytes(sealed), _aad(sop)))
            except (envelope.EnvelopeError, KeyringError, InvalidTag):
                continue
            yield Entry(study, series, sop, patient, orthanc_id, sop_class, syntax,
                        tuple(s for s in stages.split("\\") if s), plain["original"], plain["digest"])


_COLUMNS = [retrieval_index.c[name] for name in (
    "sop_uid", "study_uid", "series_uid", "patient_id", "orthanc_id", "sop_class", "transfer_syntax", "stages",
    "kek_id", "wrapped", "nonce", "sealed")]


# ``get_many``, before uploads (``publish``): built once.
_BY_SOPS = select(*_COLUMNS).where(retrieval_index.c.sop_uid.in_(bindparam("sop_uids", expanding=True)))


def _aad(sop_uid: str) -> bytes:
    return f"PGW-INDEX-2|{sop_uid}".encode()
