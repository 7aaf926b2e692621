"""The protect path for one series: de-identify, transform, seal, gate.

Input: the original objects' bytes as received. Output: the protected objects' bytes,
ready to forward, or a ``Quarantine`` exception that says why none of them may leave.
Nothing here touches the network or the spool, so the same code serves the listener's
worker and the offline ``gateway protect`` command.
"""

from __future__ import annotations

import gc
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway import envelope, gate
from gateway.deid.deidentify import Deidentifier, DeidResult
from gateway.deid.profile import Profile
from gateway.keyring import Keyring
from gateway.original import cut
from gateway.plugin import Context, PluginError, Transform
from gateway.pseudonym import Pseudonymizer
from gateway.route_spec import RouteSpec
from gateway.stages import build_stages
from gateway.study_keys import DataKeys, series_key

log = logging.getLogger("gateway.protect")
# This gateway's own implementation identity in the file meta of what it writes.
IMPLEMENTATION_CLASS_UID = "2.25.97826132071593946327811049785634521019"
IMPLEMENTATION_VERSION = "PRIVACYGW_01"
# Originals protected together when no stage needs the whole series: the worker's memory is
# bounded by this (times about five, measured: bytes, parsed, de-identified, encoded), not by
# the series.
BATCH_BYTES = 128 * 2**20


class Quarantine(Exception):
    """The series must not be forwarded; the message says why, without PHI."""


@dataclass(frozen=True)
class Protected:
    """One protected instance: its bytes and its new (pseudonymous) UIDs."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str


def protect_series(raws: list[bytes], route: RouteSpec, keyring: Keyring, keys: DataKeys) -> list[Protected]:
    """Protect one series (the originals' file bytes, in the order received)."""
    return [p for batch in protect_batches(raws, route, keyring, keys) for p in batch]


def protect_batches(sources: Sequence[bytes | Path], route: RouteSpec, keyring: Keyring,
                    keys: DataKeys) -> Iterator[list[Protected]]:
    """Protect one series (file bytes or files, in the order received), batch by batch.

    Memory is bounded by a batch (about ``BATCH_BYTES`` of originals), not by the series,
    unless a stage needs the whole series at once. Across batches the identity the PHI
    gate looks for comes from a first pass over every object's header, so every object is
    checked for every identifying value of the series. A Quarantine may come after some
    batches were yielded: the caller forwards nothing of the series until the last one.
    """
    stages = build_stages(route)
    deid = Deidentifier(Profile(route.options), Pseudonymizer(keyring.pseudonym_secret), route.keep_private)
    whole = any(stage.series_level for stage in stages)
    groups = [list(range(len(sources)))] if whole else _by_size(sources)
    survey = _Survey.of([deid.run(_parse(sources[i], i, headers_only=True)) for i in range(len(sources))]) \
        if len(groups) > 1 else None
    ctx: Context | None = None
    for group in groups:
        out, ctx = _protect_group(sources, group, deid, stages, survey, ctx, keyring, keys)
        # pydicom's private blocks and their dataset reference each other: without a
        # collection the batch's datasets (pixel data and all) outlive it.
        gc.collect()
        yield out


def _protect_group(sources: Sequence[bytes | Path], group: list[int], deid: Deidentifier, stages: list[Transform],
                   survey: _Survey | None, ctx: Context | None, keyring: Keyring,
                   keys: DataKeys) -> tuple[list[Protected], Context]:
    """One batch, start to end, in its own frame: nothing of it outlives the return."""
    raws = [_read(sources[i]) for i in group]
    originals = [_parse(raw, i) for raw, i in zip(raws, group, strict=True)]
    results = [deid.run(ds) for ds in originals]
    series = [r.dataset for r in results]
    for ds in series:
        _normalise_transfer_syntax(ds)
    batch_survey = _Survey.of(results)
    seen = survey or batch_survey
    if (batch_survey.study_uid, batch_survey.series_uid) != (seen.study_uid, seen.series_uid):
        raise Quarantine("the objects do not form one series of one study (missing or mixed UIDs)")
    key_id, wrapped, data_key = keys.for_study(seen.study_uid, keyring)
    if ctx is None:  # one context for the series: plugins derive the same keys in every batch
        ctx = Context(series_key=series_key(data_key, seen.series_uid), identity=seen.identity, log=log)
    records = _run_stages(stages, series, ctx)
    sealed = (key_id, wrapped, data_key)
    return [_seal_and_gate(raws[n], originals[n], series[n], records[n], sealed, seen) for n in range(len(group))], ctx


def _seal_and_gate(raw: bytes, original: Dataset, ds: Dataset, records: list[tuple[str, bytes]],
                   sealed: tuple[str, bytes, bytes], seen: _Survey) -> Protected:
    """Seal one object's envelope, encode it, and let it pass only if no identity is left."""
    key_id, wrapped, data_key = sealed
    envelope.seal(ds, envelope.Content(cut=cut(raw, original), records=records), key_id, wrapped, data_key)
    data = _encode(ds)
    hits = gate.scan(ds, data, seen.needles)
    if hits:
        where = "; ".join(sorted({f"{h.where}: {h.kind}" for h in hits}))[:400]
        raise Quarantine(f"PHI gate: identifying values found in {len(hits)} place(s): {where}")
    return Protected(data=data, study_uid=seen.study_uid, series_uid=seen.series_uid, sop_uid=str(ds.SOPInstanceUID))


@dataclass(frozen=True)
class _Survey:
    """What the whole series' de-identification took out, and where the series belongs."""

    needles: gate.Needles
    identity: dict[str, str]
    study_uid: str
    series_uid: str

    @classmethod
    def of(cls, results: list[DeidResult]) -> _Survey:
        study_uids = {str(r.dataset.get("StudyInstanceUID", "")) for r in results}
        series_uids = {str(r.dataset.get("SeriesInstanceUID", "")) for r in results}
        if len(study_uids) != 1 or len(series_uids) != 1 or "" in study_uids | series_uids:
            raise Quarantine("the objects do not form one series of one study (missing or mixed UIDs)")
        identity: dict[str, str] = {}
        for r in results:
            for k, v in r.identity.items():
                identity.setdefault(k, v)
        needles = gate.Needles(
            set().union(*(r.identifiers for r in results)), set().union(*(r.patient_names for r in results)),
            kinds={k: v for r in results for k, v in r.kinds.items()},
            written=set().union(*(r.written for r in results)),
            kept={k: set().union(*(r.kept.get(k, set()) for r in results)) for r in results for k in r.kept},
            charsets={r.charsets for r in results if r.charsets})
        return cls(needles, identity, study_uids.pop(), series_uids.pop())


def _run_stages(stages: list[Transform], series: list[Dataset], ctx: Context) -> list[list[tuple[str, bytes]]]:
    """Each stage's record for each object, in stage order."""
    records: list[list[tuple[str, bytes]]] = [[] for _ in series]
    for stage in stages:
        try:
            stage_records = stage.protect(series, ctx)
        except PluginError as exc:
            raise Quarantine(f"{stage.name} could not protect the series: {exc}") from exc
        if len(stage_records) != len(series):
            raise Quarantine(f"{stage.name} returned {len(stage_records)} records for {len(series)} objects")
        for slot, record in zip(records, stage_records, strict=True):
            slot.append((stage.name, record))
    return records


def _by_size(sources: Sequence[bytes | Path]) -> list[list[int]]:
    """Consecutive objects in groups of about BATCH_BYTES (at least one object each)."""
    groups: list[list[int]] = []
    size = BATCH_BYTES
    for i, src in enumerate(sources):
        n = src.stat().st_size if isinstance(src, Path) else len(src)
        if size + n > BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def _read(source: bytes | Path) -> bytes:
    try:
        return source.read_bytes() if isinstance(source, Path) else source
    except OSError as exc:
        raise Quarantine(f"an object of the series cannot be read from the spool ({exc.strerror})") from None


def _parse(raw: bytes | Path, index: int, headers_only: bool = False) -> Dataset:
    try:
        # force: no preamble or file meta is still DICOM
        ds = pydicom.dcmread(raw if isinstance(raw, Path) else io.BytesIO(raw), force=True,
                             stop_before_pixels=headers_only)
        ds.SOPInstanceUID  # noqa: B018 - must exist
        for _ in ds:  # decode every element now, so bad ones fail here and not half-way
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
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
