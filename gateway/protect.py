"""The protect path for one series: de-identify, transform, seal, gate.

Input: the original objects' bytes as received. Output: the protected objects' bytes,
ready to forward, or a ``Quarantine`` exception that says why none of them may leave.
Nothing here touches the network or the spool, so the same code serves the listener's
worker and the offline ``gateway protect`` command.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway import envelope, gate
from gateway.deid.deidentify import Deidentifier
from gateway.deid.profile import Profile
from gateway.keyring import Keyring
from gateway.original import cut
from gateway.plugin import Context, PluginError
from gateway.pseudonym import Pseudonymizer
from gateway.stages import build_stages

log = logging.getLogger("gateway.protect")
# This gateway's own implementation identity in the file meta of what it writes.
IMPLEMENTATION_CLASS_UID = "2.25.97826132071593946327811049785634521019"
IMPLEMENTATION_VERSION = "PRIVACYGW_01"


class Quarantine(Exception):
    """The series must not be forwarded; the message says why, without PHI."""


class DataKeys(Protocol):
    """Where a study's data key lives between its series."""

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        """(KEK id, wrapped data key, data key) for the (pseudonymous) study UID."""
        ...


class MemoryDataKeys:
    """Data keys for one run of the offline command."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, bytes, bytes]] = {}

    def for_study(self, study_uid: str, keyring: Keyring) -> tuple[str, bytes, bytes]:
        if study_uid not in self._keys:
            key = envelope.new_data_key()
            key_id, wrapped = envelope.wrap(keyring, key)
            self._keys[study_uid] = (key_id, wrapped, key)
        return self._keys[study_uid]


@dataclass(frozen=True)
class RouteSpec:
    """What a route asks for, decoupled from the config file's shape."""

    options: frozenset[str] = frozenset()
    keep_private: tuple[tuple[int, str], ...] = ()
    plugin: str = "none"
    plugin_settings: dict[str, Any] = field(default_factory=dict)
    redaction: dict[str, Any] | None = None


@dataclass(frozen=True)
class Protected:
    """One protected instance: its bytes and its new (pseudonymous) UIDs."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str


def series_key(data_key: bytes, series_uid: str) -> bytes:
    """The secret a plugin derives its keys from: one per series, from the study's data key."""
    return hmac.new(data_key, f"series\x00{series_uid}".encode(), hashlib.sha256).digest()


def protect_series(raws: list[bytes], route: RouteSpec, keyring: Keyring, keys: DataKeys) -> list[Protected]:
    """Protect one series (the originals' file bytes, in the order received)."""
    originals = [_parse(raw, i) for i, raw in enumerate(raws)]
    deid = Deidentifier(Profile(route.options), Pseudonymizer(keyring.pseudonym_secret), route.keep_private)
    results = [deid.run(ds) for ds in originals]
    series = [r.dataset for r in results]
    for ds in series:
        _normalise_transfer_syntax(ds)
    study_uids = {str(ds.get("StudyInstanceUID", "")) for ds in series}
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in series}
    if len(study_uids) != 1 or len(series_uids) != 1 or "" in study_uids | series_uids:
        raise Quarantine("the objects do not form one series of one study (missing or mixed UIDs)")
    study_uid, series_uid = study_uids.pop(), series_uids.pop()
    key_id, wrapped, data_key = keys.for_study(study_uid, keyring)

    identity: dict[str, str] = {}
    for r in results:
        for k, v in r.identity.items():
            identity.setdefault(k, v)
    ctx = Context(series_key=series_key(data_key, series_uid), identity=identity, log=log)
    records: list[list[tuple[str, bytes]]] = [[] for _ in series]
    for stage in build_stages(route):
        try:
            stage_records = stage.protect(series, ctx)
        except PluginError as exc:
            raise Quarantine(f"{stage.name} could not protect the series: {exc}") from exc
        if len(stage_records) != len(series):
            raise Quarantine(f"{stage.name} returned {len(stage_records)} records for {len(series)} objects")
        for slot, record in zip(records, stage_records, strict=True):
            slot.append((stage.name, record))

    needles = gate.Needles(
        set().union(*(r.identifiers for r in results)),
        set().union(*(r.patient_names for r in results)),
    )
    out = []
    for raw, original, ds, recs in zip(raws, originals, series, records, strict=True):
        envelope.seal(ds, envelope.Payload(cut=cut(raw, original), records=recs), key_id, wrapped, data_key)
        data = _encode(ds)
        hits = gate.scan(ds, data, needles)
        if hits:
            where = ", ".join(sorted({h.where for h in hits}))[:300]
            raise Quarantine(f"PHI gate: identifying values found in {len(hits)} place(s): {where}")
        out.append(Protected(data=data, study_uid=study_uid, series_uid=series_uid, sop_uid=str(ds.SOPInstanceUID)))
    return out


def _parse(raw: bytes, index: int) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)  # no preamble or file meta: still DICOM
        ds.SOPInstanceUID  # noqa: B018 - must exist
        for elem in ds:  # decode every element now, so bad ones fail here and not half-way
            pass
    except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, OSError) as exc:
        raise Quarantine(f"object {index} of the series cannot be parsed: {type(exc).__name__}") from None
    return ds


def _normalise_transfer_syntax(ds: Dataset) -> None:
    """Implicit VR loses the VR of our private envelope; deflate gains nothing here. A file
    without file meta gets the transfer syntax it was read in."""
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRBigEndian if little is False else ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    if ds.file_meta.TransferSyntaxUID in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _encode(ds: Dataset) -> bytes:
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
