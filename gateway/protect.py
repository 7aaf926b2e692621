"""The protect path for one series: de-identify, transform, seal, gate.

Input: the original objects' bytes as received. Output: the protected objects' bytes,
ready to forward, or a ``Quarantine`` exception that says why none of them may leave.
Nothing here touches the network or the spool, so the same code serves the listener's
worker and the offline ``gateway protect`` command.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

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

from gateway import authenticity, envelope, gate, logsafe
from gateway.child_process import exit_with_parent
from gateway.deid.deidentify import Deidentifier, DeidResult
from gateway.deid.profile import Profile
from gateway.index import Entry, Original, Sealing, entry_for
from gateway.keyring import Keyring
from gateway.original import Cut, cut, value_offset
from gateway.plugin import Context, PluginError, Transform
from gateway.pseudonym import Pseudonymizer
from gateway.route_spec import RouteSpec
from gateway.spool import FileIdentity, write_durably
from gateway.stages import build_stages
from gateway.study_keys import DataKeys, series_key

if TYPE_CHECKING:
    from gateway.protect_pool import ProtectPool

log = logging.getLogger("gateway.protect")
# This gateway's own implementation identity in the file meta of what it writes.
IMPLEMENTATION_CLASS_UID = "2.25.97826132071593946327811049785634521019"
IMPLEMENTATION_VERSION = "PRIVACYGW_01"
# Originals protected together when no stage needs the whole series: the worker's memory is
# bounded by this (times about five, measured: bytes, parsed, de-identified, encoded), not by
# the series.
BATCH_BYTES = 128 * 2**20
# Objects a worker process takes at a time (see protect_pool): a few chunks per process
# even out a slow process, and a batch's results come back in order chunk by chunk.
CHUNK_OBJECTS = 16
# Protect processes yield the cores to intake (a modality waits for each answer) and to
# uploads; they take what is left, which is most of it between studies.
NICENESS = 10
_T = TypeVar("_T")


class Quarantine(Exception):
    """The series must not be forwarded; the message says why, without PHI."""


@dataclass(frozen=True)
class Protected:
    """One protected instance: its bytes (or the file they were written to), its new
    (pseudonymous) UIDs, and its retrieval index entry (made here from what is at hand,
    so forwarding need not parse the object and open its envelope again)."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    entry: Entry
    sealing: Sealing
    path: Path | None = None  # written there (fsynced, its folder not): ``data`` is then empty
    tag_at: int | None = None  # where its authenticity tag is, once tagged (``authenticity.tagged``)
    written: FileIdentity | None = None  # the file at ``path`` as written: inode, mtime (ns), size


def protect_series(raws: list[bytes], route: RouteSpec, keyring: Keyring, keys: DataKeys) -> list[Protected]:
    """Protect one series (the originals' file bytes, in the order received)."""
    return [p for batch in protect_batches(raws, route, keyring, keys) for p in batch]


def protect_batches(sources: Sequence[bytes | Path], route: RouteSpec, keyring: Keyring, keys: DataKeys,
                    pool: ProtectPool | None = None,
                    outputs: Sequence[Path] | None = None) -> Iterator[list[Protected]]:
    """Protect one series (file bytes or files, in the order received), batch by batch.

    Memory is bounded by a batch (about ``BATCH_BYTES`` of originals), not by the series,
    unless a stage needs the whole series at once. Across batches the identity the PHI
    gate looks for comes from a first pass over every object's header, so every object is
    checked for every identifying value of the series. A Quarantine may come after some
    batches were yielded: the caller forwards nothing of the series until the last one.
    With ``pool`` (files only, no series-level stage) each batch is protected in chunks by
    its worker processes, in the same order, under the same survey and keys. With
    ``outputs`` (one path per source: copies for Orthanc) each protected object is tagged
    for Orthanc (where the keyring has an authenticity key) and written there (fsynced; the
    caller fsyncs the folder) by whoever protected it, and comes back without its bytes.
    """
    stages = build_stages(route)
    whole = any(stage.series_level for stage in stages)
    paths = [s for s in sources if isinstance(s, Path)]
    if pool is not None and not whole and len(paths) == len(sources):
        yield from _pooled_batches(paths, route, keyring, keys, pool, outputs)
        return
    deid = _deidentifier(route, keyring)
    groups = [list(range(len(sources)))] if whole else by_size(sources)
    survey = _Survey.of(_survey_chunk(deid, [(i, sources[i]) for i in range(len(sources))])) \
        if len(groups) > 1 else None
    ctx: Context | None = None
    for group in groups:
        out, ctx = _protect_group(sources, group, deid, stages, survey, ctx, keyring, keys)
        if outputs is not None:
            out = [_written(p, outputs[i], keyring) for p, i in zip(out, group, strict=True)]
        # pydicom's private blocks and their dataset reference each other: without a
        # collection the batch's datasets (pixel data and all) outlive it.
        gc.collect()
        yield out


def _pooled_batches(paths: list[Path], route: RouteSpec, keyring: Keyring, keys: DataKeys, pool: ProtectPool,
                    outputs: Sequence[Path] | None) -> Iterator[list[Protected]]:
    """Each batch in chunks over the pool's processes, in two rounds: parse, cut and
    de-identify (each process keeps its chunks), then, with the survey of the whole batch
    (of every header first, when the series takes several batches) and the study's key from
    ``keys`` (the spool's database is this process's), stages, seal, encode and gate by the
    same processes. A batch's objects are parsed once."""
    groups = by_size(paths)
    survey = None
    if len(groups) > 1:
        numbered = list(enumerate(paths))
        survey = _Survey.of([f for part in pool.run(survey_task, [(route, c) for c in _chunks(numbered, pool)])
                             for f in part])
    job: _Job | None = None
    for group in groups:
        out, job = _pooled_group([(i, paths[i]) for i in group], route, keyring, keys, pool,
                                 [outputs[i] for i in group] if outputs is not None else None,
                                 lambda founds: survey.checked(founds) if survey is not None else _Survey.of(founds),
                                 job, "settled")
        yield out


def _pooled_group(items: list[tuple[int, Path]], route: RouteSpec, keyring: Keyring, keys: DataKeys,
                  pool: ProtectPool, outputs: list[Path] | None, survey_of: Callable[[list[_Found]], _Survey],
                  job: _Job | None, owner: str) -> tuple[list[Protected], _Job]:
    """One batch of a series (``items``: its numbered files) over the pool's processes:
    prepared, surveyed (``survey_of`` the batch's findings), finished. ``job`` carries the
    series' study key and context from its first batch; ``owner`` names the caller, one
    series at a time each (what its processes still hold of another series is stale)."""
    chunks = _chunks(items, pool)
    group = f"{owner}:{uuid.uuid4().hex}"
    held = [f"{group}/{c}" for c in range(len(chunks))]
    place = [c % pool.processes for c in range(len(chunks))]
    try:
        prepared = pool.run(prepare_task, [(route, key, chunk) for key, chunk in zip(held, chunks, strict=True)],
                            place)
        founds = [f for part in prepared for f in part]
        seen = survey_of(founds)
        if job is None:  # one study key and context for the series, as in one process
            sealed = keys.for_study(seen.study_uid, keyring)
            job = _Job(route, seen, sealed, series_key(sealed[2], seen.series_uid), seen.identity)
        job = replace(job, survey=seen)
        out_at = dict(zip([i for i, _ in items], outputs, strict=True)) if outputs is not None else {}
        targets = [[out_at[i] for i, _ in chunk] if outputs is not None else None for chunk in chunks]
        out = [p for part in pool.run(finish_task, [(job, key, to) for key, to in zip(held, targets, strict=True)],
                                      place) for p in part]
        return out, job
    except BaseException:
        with contextlib.suppress(Exception):  # what the processes still hold of the batch
            pool.run(drop_task, [(key,) for key in held], place)
        raise


@dataclass(frozen=True)
class Arrived:
    """Objects of a series protected while the series still arrives, and the survey their
    gate ran under: theirs and that of every object of the series protected before them."""

    protected: list[Protected]
    job: _Job  # its survey: what their gate ran under

    @property
    def survey(self) -> _Survey:
        return self.job.survey


def protect_arriving(items: list[tuple[int, Path]], route: RouteSpec, keyring: Keyring, keys: DataKeys,
                     pool: ProtectPool, outputs: list[Path], before: Arrived | None) -> Arrived:
    """Protect objects of a series that is still arriving (``items``: numbered files), each
    written to its ``outputs`` path, gated under the survey of these and of those protected
    ``before``. Whether they may leave is decided once the series is complete: ``regate``
    looks in them for the values of the series their gate did not know yet."""
    def survey_of(founds: list[_Found]) -> _Survey:
        return _Survey.of([before.survey.found, *founds] if before is not None else founds)

    out, job = _pooled_group(items, route, keyring, keys, pool, outputs, survey_of,
                             before.job if before is not None else None, "arriving")
    return Arrived(out, job)


def regate(arrived: list[Arrived], pool: ProtectPool) -> bool:
    """Gate objects protected while their series arrived (in order, the last one's survey that
    of the whole series) for the values found in objects protected after them: each object
    then has passed the gate under every identifying value of the series, as if the series
    had been protected at once. False where that cannot be so (the character sets or the
    identity given to the route's stages changed on the way): protect the series again.
    Raises Quarantine as the gate does."""
    final = arrived[-1].survey
    tasks: list[tuple[_Delta, list[Path]]] = []
    for part in arrived:
        known = part.survey.found
        if known.charsets != final.found.charsets or part.job.identity != final.identity:
            return False
        delta = _Delta.of(final.found, known)
        if delta is not None:  # one task a process: each builds the delta's needles once
            paths = [p.path for p in part.protected if p.path is not None]
            tasks += [(delta, paths[n::pool.processes]) for n in range(min(pool.processes, len(paths)))]
    hits = [h for part in pool.run(regate_task, tasks) for h in part]
    if hits:
        raise Quarantine(_gate_message(hits))
    return True


@dataclass(frozen=True)
class _Delta:
    """The identifying values of a series that an earlier gate did not look for, with what
    the gate needs besides (the profile's own values, kept descriptors, character sets)."""

    identifiers: frozenset[str]
    patient_names: frozenset[str]
    found: _Found

    @classmethod
    def of(cls, final: _Found, known: _Found) -> _Delta | None:
        identifiers = final.identifiers - known.identifiers
        names = final.patient_names - known.patient_names
        return cls(identifiers, names, final) if identifiers or names else None

    def needles(self) -> gate.Needles:
        f = self.found
        return gate.Needles(self.identifiers, self.patient_names, kinds=f.kinds, written=f.written,
                            kept={k: set(v) for k, v in f.kept.items()}, charsets=f.charsets)


def regate_task(delta: _Delta, paths: list[Path]) -> list[gate.Hit]:
    """In a worker process: the gate, for ``delta``'s values, over protected copies as written."""
    needles = delta.needles()
    hits: list[gate.Hit] = []
    for n, path in enumerate(paths):
        data = _read(path)
        ds, _ = _parse(data, n)
        hits += gate.scan(ds, data, needles)
    return hits


@dataclass(frozen=True)
class _Job:
    """What a worker process needs besides its chunk: the same for every chunk of a batch."""

    route: RouteSpec
    survey: _Survey
    sealed: tuple[str, bytes, bytes]
    series_key: bytes
    identity: dict[str, str]


def survey_task(route: RouteSpec, chunk: list[tuple[int, Path]]) -> list[_Found]:
    """In a worker process: what de-identification takes out of each header of ``chunk``."""
    deid, _ = _process_tools(route)
    return _survey_chunk(deid, chunk)


def prepare_task(route: RouteSpec, key: str, chunk: list[tuple[int, Path]]) -> list[_Found]:
    """In a worker process: ``chunk`` read, parsed, cut and de-identified, kept under ``key``
    for ``finish_task``; what de-identification took out of each object."""
    group = key.partition("/")[0]
    owner = group.partition(":")[0]
    for stale in [k for k in _process_held if k.startswith(owner + ":") and not k.startswith(group + "/")]:
        del _process_held[stale]  # a batch of this caller's that ended early
    deid, _ = _process_tools(route)
    cuts, datasets, founds, originals = _deidentify(deid, [_read(path) for _, path in chunk], [i for i, _ in chunk])
    _process_held[key] = (cuts, datasets, originals)
    return founds


def finish_task(job: _Job, key: str, targets: list[Path] | None) -> list[Protected]:
    """In a worker process: the chunk kept under ``key``, through the route's stages,
    sealed, encoded and gated under the survey of its batch; written to ``targets`` when
    given (the bytes then do not travel back through the pool's pipe)."""
    _, stages = _process_tools(job.route)
    cuts, series, originals = _process_held.pop(key)
    try:
        ctx = Context(series_key=job.series_key, identity=job.identity, log=log)
        records = _run_stages(stages, series, ctx)
        out = [_seal_and_gate(cuts[n], series[n], originals[n], records[n], job.sealed, job.survey)
               for n in range(len(series))]
        if targets is None:
            return out
        assert _process_keyring is not None, "init_process runs first"
        return [_written(p, to, _process_keyring) for p, to in zip(out, targets, strict=True)]
    finally:
        del cuts, series
        gc.collect()


def drop_task(key: str) -> None:
    """In a worker process: forget a chunk whose batch failed elsewhere."""
    _process_held.pop(key, None)
    gc.collect()


# A worker process's keyring (set once by the pool's initializer), each route's tools, and
# the chunks it has prepared and not yet finished.
_process_keyring: Keyring | None = None
_process_routes: dict[str, tuple[Deidentifier, list[Transform]]] = {}
_process_held: dict[str, tuple[list[Cut], list[Dataset], list[Original]]] = {}


def init_process(keyring: Keyring, log_level: int) -> None:
    """The pool's initializer: the keyring, once per worker process, and the service's
    logging (its format, level and the filter that withholds values). What is loaded by now
    (modules, tables) is frozen out of the collector's view: the collection after each chunk
    then walks the chunk's objects only (83 ms a collection otherwise, measured)."""
    global _process_keyring
    _process_keyring = keyring
    exit_with_parent()
    os.nice(NICENESS)
    # A service stop signals the whole process group (systemd, a terminal): the service
    # ends these processes itself (ProtectPool.close) once its current step is done.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logsafe.configure()
    logging.getLogger().setLevel(log_level)
    gc.freeze()


def _process_tools(route: RouteSpec) -> tuple[Deidentifier, list[Transform]]:
    """The route's de-identifier and stages in this worker process, loaded once (a plugin
    may load a model)."""
    assert _process_keyring is not None, "init_process runs first"
    key = repr(route)
    if key not in _process_routes:
        _process_routes[key] = (_deidentifier(route, _process_keyring), build_stages(route))
        gc.freeze()  # the stages' models and tables, as above
    return _process_routes[key]


def _deidentifier(route: RouteSpec, keyring: Keyring) -> Deidentifier:
    return Deidentifier(Profile(route.options), Pseudonymizer(keyring.pseudonym_secret), route.keep_private)


def _chunks(items: list[_T], pool: ProtectPool) -> list[list[_T]]:
    """Consecutive chunks, a few per process, so a slow one does not hold up the batch."""
    size = max(1, min(CHUNK_OBJECTS, -(-len(items) // pool.processes)))
    return [items[start:start + size] for start in range(0, len(items), size)]


def _survey_chunk(deid: Deidentifier, chunk: Sequence[tuple[int, bytes | Path]]) -> list[_Found]:
    return [_Found.of(deid.run(_parse(source, i, headers_only=True)[0], in_place=True)) for i, source in chunk]


def _deidentify(deid: Deidentifier, raws: list[bytes],
                indices: list[int]) -> tuple[list[Cut], list[Dataset], list[_Found], list[Original]]:
    """Each original cut around its pixel value (from its bytes as read), what its index
    entry keeps of it taken, then de-identified in place: the parsed original is not needed
    again, so it is not copied."""
    cuts: list[Cut] = []
    series: list[Dataset] = []
    founds: list[_Found] = []
    originals: list[Original] = []
    for raw, i in zip(raws, indices, strict=True):
        ds, value_at = _parse(raw, i)
        cuts.append(cut(raw, ds, value_at))
        originals.append(Original.of(ds))
        result = deid.run(ds, in_place=True)
        _normalise_transfer_syntax(result.dataset)
        series.append(result.dataset)
        founds.append(_Found.of(result))
    return cuts, series, founds, originals


def _protect_group(sources: Sequence[bytes | Path], group: list[int], deid: Deidentifier, stages: list[Transform],
                   survey: _Survey | None, ctx: Context | None, keyring: Keyring,
                   keys: DataKeys) -> tuple[list[Protected], Context]:
    """One batch, start to end, in its own frame: nothing of it outlives the return."""
    cuts, series, founds, originals = _deidentify(deid, [_read(sources[i]) for i in group], group)
    seen = survey.checked(founds) if survey is not None else _Survey.of(founds)
    key_id, wrapped, data_key = keys.for_study(seen.study_uid, keyring)
    if ctx is None:  # one context for the series: plugins derive the same keys in every batch
        ctx = Context(series_key=series_key(data_key, seen.series_uid), identity=seen.identity, log=log)
    records = _run_stages(stages, series, ctx)
    sealed = (key_id, wrapped, data_key)
    return [_seal_and_gate(cuts[n], series[n], originals[n], records[n], sealed, seen)
            for n in range(len(group))], ctx


def _seal_and_gate(original: Cut, ds: Dataset, kept: Original, records: list[tuple[str, bytes]],
                   sealed: tuple[str, bytes, bytes], seen: _Survey) -> Protected:
    """Seal one object's envelope, encode it, and let it pass only if no identity is left."""
    key_id, wrapped, data_key = sealed
    envelope.seal(ds, envelope.Content(cut=original, records=records), key_id, wrapped, data_key)
    data = _encode(ds)
    hits = gate.scan(ds, data, seen.needles)
    if hits:
        raise Quarantine(_gate_message(hits))
    entry = entry_for(ds, kept, [name for name, _ in records], original.digest)
    return Protected(data=data, study_uid=seen.study_uid, series_uid=seen.series_uid, sop_uid=entry.sop_uid,
                     entry=entry, sealing=Sealing(key_id, wrapped, data_key))


def _gate_message(hits: list[gate.Hit]) -> str:
    where = "; ".join(sorted({f"{h.where}: {h.kind}" for h in hits}))[:400]
    return f"PHI gate: identifying values found in {len(hits)} place(s): {where}"


def _written(protected: Protected, path: Path, keyring: Keyring) -> Protected:
    """``protected`` tagged for Orthanc (where the keyring has an authenticity key) and
    written durably to ``path`` (but for its folder's fsync), without its bytes."""
    data, tag_at = protected.data, None
    if keyring.authenticity:  # the gate has passed it: the tag is an HMAC, not identity
        tag_at = data.find(authenticity.PLACEHOLDER.encode())
        data = authenticity.sign(data, keyring)
    write_durably(path, data, sync_folder=False)
    return replace(protected, data=b"", path=path, tag_at=tag_at, written=FileIdentity.of(path))


@dataclass(frozen=True)
class _Found:
    """What de-identification took out of one object, without the dataset (it travels
    between processes)."""

    identifiers: frozenset[str]
    patient_names: frozenset[str]
    kinds: dict[str, str]
    written: frozenset[str]
    kept: dict[str, frozenset[str]]
    charsets: frozenset[tuple[str, ...]]  # the Specific Character Sets declared
    identity: dict[str, str]
    study_uid: str
    series_uid: str

    @classmethod
    def of(cls, r: DeidResult) -> _Found:
        return cls(frozenset(r.identifiers), frozenset(r.patient_names), dict(r.kinds), frozenset(r.written),
                   {k: frozenset(v) for k, v in r.kept.items()}, frozenset({r.charsets} if r.charsets else ()),
                   dict(r.identity),
                   str(r.dataset.get("StudyInstanceUID", "")), str(r.dataset.get("SeriesInstanceUID", "")))


@dataclass(frozen=True)
class _Survey:
    """What the whole series' de-identification took out, and where the series belongs."""

    needles: gate.Needles
    identity: dict[str, str]
    study_uid: str
    series_uid: str
    found: _Found  # all of it as one

    @classmethod
    def of(cls, founds: list[_Found]) -> _Survey:
        study_uids = {f.study_uid for f in founds}
        series_uids = {f.series_uid for f in founds}
        if len(study_uids) != 1 or len(series_uids) != 1 or "" in study_uids | series_uids:
            raise Quarantine("the objects do not form one series of one study (missing or mixed UIDs)")
        identity: dict[str, str] = {}
        kept: dict[str, set[str]] = {}
        for f in founds:
            for k, v in f.identity.items():
                identity.setdefault(k, v)
            for k, values in f.kept.items():
                kept.setdefault(k, set()).update(values)
        found = _Found(
            frozenset().union(*(f.identifiers for f in founds)), frozenset().union(*(f.patient_names for f in founds)),
            {k: v for f in founds for k, v in f.kinds.items()}, frozenset().union(*(f.written for f in founds)),
            {k: frozenset(v) for k, v in kept.items()}, frozenset().union(*(f.charsets for f in founds)), identity,
            study_uids.pop(), series_uids.pop())
        needles = gate.Needles(found.identifiers, found.patient_names, kinds=found.kinds, written=found.written,
                               kept=kept, charsets=found.charsets)
        return cls(needles, identity, found.study_uid, found.series_uid, found)

    def checked(self, founds: list[_Found]) -> _Survey:
        """The survey for gating a batch of the series whose full de-identification gave
        ``founds``: the batch must be of this series; a value the headers did not show (an
        element after the pixel data) joins the needles."""
        batch = _Survey.of(founds)
        if (batch.study_uid, batch.series_uid) != (self.study_uid, self.series_uid):
            raise Quarantine("the objects do not form one series of one study (missing or mixed UIDs)")
        if batch.found.identifiers <= self.found.identifiers and batch.found.patient_names <= self.found.patient_names:
            return self
        return _Survey.of([self.found, *founds])


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


def by_size(sources: Sequence[bytes | Path]) -> list[list[int]]:
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


def _parse(raw: bytes | Path, index: int, headers_only: bool = False) -> tuple[Dataset, int | None]:
    """The dataset, and where its pixel value starts in ``raw`` (for the cut)."""
    try:
        # force: no preamble or file meta is still DICOM
        ds = pydicom.dcmread(raw if isinstance(raw, Path) else io.BytesIO(raw), force=True,
                             stop_before_pixels=headers_only)
        value_at = value_offset(ds)
        ds.SOPInstanceUID  # noqa: B018 - must exist
        for _ in ds:  # decode every element now, so bad ones fail here and not half-way
            pass
    except OSError as exc:
        if isinstance(raw, Path) and exc.strerror:  # the file, not its content (as ``_read`` says)
            raise Quarantine(f"an object of the series cannot be read from the spool ({exc.strerror})") from None
        raise Quarantine(f"object {index} of the series cannot be parsed: {type(exc).__name__}") from None
    except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError) as exc:
        raise Quarantine(f"object {index} of the series cannot be parsed: {type(exc).__name__}") from None
    return ds, value_at


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
