"""Fetch, restore (or egress-check) and hand over the objects of a retrieval plan.

``restore``: each series' protected objects are restored together and each checked
against its original's SHA-256 (``gateway/restore.py``); what does not restore exactly
is never sent. ``pseudonymized``: each object Orthanc returns must open its envelope with
the keyring (so the gateway made it), be the instance the index planned, and pass the
egress gate: the patient's identity of the original (names, IDs, accession number,
address, phone) must not show anywhere in it, the same scan as before forwarding.
Each object then travels in a transfer syntax the receiver accepted: its own where it
was accepted, else decoded to explicit or implicit VR little endian (``gateway/transcode.py``,
after the restore was verified), else it is not sent and the reason says which syntax it
needed.

``prepare`` does that for one batch of about ``BATCH`` objects and returns the verified
bytes; it runs in the worker processes of ``gateway/retrieval/workers.py``, which fetch
from Orthanc themselves. ``Prepared`` keeps batches in preparation from the moment the
request is planned, and hands the objects over in plan order, each sent as the bytes that
were verified (``gateway/retrieval/encoded.py``): memory stays bounded by ``AHEAD_BYTES``
(and ``AHEAD`` batches) besides the batch being sent.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import NamedTuple, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from gateway import envelope, gate
from gateway.deid.deidentify import kept_descriptors
from gateway.envelope import EnvelopeError
from gateway.keyring import Keyring, KeyringError
from gateway.restore import restore_series
from gateway.retrieval.encoded import Layout, Verbatim, split
from gateway.retrieval.planner import Planned
from gateway.retrieval.vocabulary import Policy
from gateway.transcode import TranscodeError, choose, transcode

log = logging.getLogger("gateway.qr")

BATCH = 8
# Batches prepared ahead of sending: at most AHEAD, and no new one once those prepared and
# not yet sent hold AHEAD_BYTES. A receiver takes a while to accept the association (dcmtk's
# movescu looks for it once a second); what the workers prepare meanwhile is sent at once.
AHEAD = 40
AHEAD_BYTES = 96 * 2**20
RUNNING = 4  # batches given to the workers at a time (two each): their results count towards AHEAD_BYTES
# The patient's identity: never kept by any profile option, so never in a protected copy.
_PATIENT_IDENTITY = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "AccessionNumber",
                     "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "MedicalRecordLocator")


class Refused(str):
    """Why one object of the plan is not sent (never its content)."""


class Ready(NamedTuple):
    """A verified object: the complete DICOM file, its transfer syntax and SOP class, and
    where its data set starts (None: it is sent parsed)."""

    data: bytes
    syntax: str
    sop_class: str
    layout: Layout | None


Fetch = Callable[[str], bytes]
# The transfer syntaxes the receiver accepted, by SOP class.
Accepted = dict[str, frozenset[str]]


class Preparer(Protocol):
    """Runs ``prepare`` for one batch somewhere (``gateway/retrieval/workers.py``)."""

    def submit(self, batch: list[Planned], policy: Policy, keyring: Keyring) -> Future[list[Ready | Refused]]: ...


class Prepared:
    """The plan's objects, prepared ahead of sending (at most ``AHEAD`` batches, and while
    those not yet sent hold less than ``AHEAD_BYTES``). Made as soon as the request is planned,
    so that fetching and restoring overlap the association with the receiver; ``datasets``
    then hands them over in plan order."""

    def __init__(self, plan: list[Planned], policy: Policy, preparer: Preparer, keyring: Keyring) -> None:
        self._batches = _batches(plan)
        self._submit = lambda batch: preparer.submit(batch, policy, keyring)
        self._lock = threading.RLock()  # a done callback may run at once, in the submitting thread
        self._futures: dict[int, Future[list[Ready | Refused]]] = {}
        self._sizes: dict[int, int] = {}
        self._next = self._handed = self._held = self._running = 0
        self._cancelled = False
        self._fill()

    def datasets(self, accepted: Accepted) -> Iterator[Dataset | Refused]:
        """Each object as the dataset to send in a syntax the receiver accepted, or a Refused."""
        for number, batch in enumerate(self._batches):
            with self._lock:
                if self._cancelled:
                    return
                if number == self._next:  # held back while a finished batch's callback had not run yet
                    self._start_next()
                future = self._futures.pop(number)
            ready = _outcome(future, batch)
            with self._lock:
                self._handed += 1
                self._held -= self._sizes.pop(number, 0)
            self._fill()
            for item in ready:
                yield item if isinstance(item, Refused) else fitted(item, accepted)
            del ready

    def cancel(self) -> None:
        """Nothing more is prepared for this request (cancelled, or the receiver is gone)."""
        with self._lock:
            self._cancelled = True
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            future.cancel()

    def _fill(self) -> None:
        """Submit the next batches the bounds allow."""
        with self._lock:
            while (not self._cancelled and self._next < len(self._batches) and self._running < RUNNING
                   and self._next - self._handed < AHEAD and self._held < AHEAD_BYTES):
                self._start_next()

    def _start_next(self) -> None:
        number, self._next = self._next, self._next + 1
        self._running += 1
        future = self._futures[number] = self._submit(self._batches[number])
        future.add_done_callback(self._when_prepared(number))

    def _when_prepared(self, number: int) -> Callable[[Future[list[Ready | Refused]]], None]:
        def prepared(done: Future[list[Ready | Refused]]) -> None:
            size = 0 if done.cancelled() or done.exception() is not None else \
                sum(len(r.data) for r in done.result() if isinstance(r, Ready))
            with self._lock:
                self._running -= 1
                if number >= self._handed:  # not handed over yet: it counts until it is
                    self._sizes[number] = size
                    self._held += size
            self._fill()

        return prepared


def fitted(ready: Ready, accepted: Accepted) -> Dataset | Refused:
    """``ready`` as the dataset to send in a transfer syntax the receiver accepted: its own,
    sent as the verified bytes, else decoded to uncompressed (``gateway/transcode.py``)."""
    target = choose(ready.syntax, accepted.get(ready.sop_class, frozenset()))
    if target is None:
        return Refused(f"the receiver accepts neither {UID(ready.syntax).name} nor uncompressed data "
                       "for this SOP class")
    if target == ready.syntax:
        return _dataset(ready.data, ready.layout)
    try:
        decoded = transcode(ready.data, target)
    except TranscodeError as exc:
        return Refused(f"cannot be decoded for a receiver that takes only uncompressed data: {exc}")
    return _dataset(decoded, split(decoded))


def _dataset(data: bytes, layout: Layout | None) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data)) if layout is None else Verbatim(data, layout)


def _outcome(future: Future[list[Ready | Refused]], batch: list[Planned]) -> list[Ready | Refused]:
    try:
        return future.result()
    except (Exception, CancelledError) as exc:  # noqa: BLE001 - a worker died, or the gateway stops: these objects fail, loudly
        log.error("preparing %d object(s) for sending failed: %s", len(batch), type(exc).__name__)
        return [Refused(f"the restore worker failed ({type(exc).__name__})")] * len(batch)


def _batches(plan: list[Planned]) -> list[list[Planned]]:
    """About ``BATCH`` objects each; a series that restores only whole stays in one batch
    (the plan lists a series' objects together)."""
    batches: list[list[Planned]] = []
    for item in plan:
        last = batches[-1][-1] if batches else None
        same_series = last is not None and last.entry.series_uid == item.entry.series_uid
        if last is not None and ((same_series and item.whole_series)
                                 or (len(batches[-1]) < BATCH and not last.whole_series)):
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def prepare(batch: list[Planned], policy: Policy, fetch: Fetch, keyring: Keyring) -> list[Ready | Refused]:
    """One batch fetched, then restored and verified (or egress-checked)."""
    raws: list[bytes | Refused] = []
    for item in batch:
        try:
            raws.append(fetch(item.orthanc_id))
        except Exception as exc:  # noqa: BLE001 - Orthanc lost it or is down: this object fails
            raws.append(Refused(f"not available from Orthanc ({type(exc).__name__})"))
    if policy is Policy.PSEUDONYMIZED:
        out: list[Ready | Refused] = []
        for raw, item in zip(raws, batch, strict=True):
            checked = raw if isinstance(raw, Refused) else egress_checked(raw, item.entry.sop_uid, keyring)
            out.append(checked if isinstance(checked, Refused) else Ready(
                raw, str(checked.file_meta.TransferSyntaxUID), str(checked.SOPClassUID), split(raw)))  # type: ignore[arg-type]  # raw is bytes here
        return out
    return [r if isinstance(r, Refused) else Ready(r, item.entry.transfer_syntax, item.entry.sop_class, split(r))
            for r, item in zip(_restored(batch, raws, keyring), batch, strict=True)]


def _restored(batch: list[Planned], raws: list[bytes | Refused], keyring: Keyring) -> list[bytes | Refused]:
    out: list[bytes | Refused] = list(raws)
    by_series: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(batch):
        if not isinstance(raws[i], Refused):
            by_series[item.entry.series_uid].append(i)
    for members in by_series.values():
        outcomes = restore_series([raws[i] for i in members], keyring)  # type: ignore[misc]  # no Refused here
        for i, outcome in zip(members, outcomes, strict=True):
            if outcome.data is None:
                log.error("restore of %s refused for sending: %s", outcome.sop_uid, outcome.error)
                out[i] = Refused(f"restore failed: {outcome.error}")
            elif outcome.sop_uid != batch[i].entry.sop_uid:
                out[i] = Refused("Orthanc returned another instance than the index planned")
            else:
                out[i] = outcome.data
    return out


def egress_checked(raw: bytes, sop_uid: str, keyring: Keyring) -> Dataset | Refused:
    """A protected object fit for a ``pseudonymized`` workstation, or why it is not."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
        opened = envelope.open_envelope(ds, keyring)
        original = pydicom.dcmread(io.BytesIO(opened.payload.cut.prefix), stop_before_pixels=True, force=True)
    except (EnvelopeError, KeyringError) as exc:
        log.error("object %s refused for sending: %s", sop_uid, exc)
        return Refused(f"no valid envelope: {exc}")
    except Exception as exc:  # noqa: BLE001 - unreadable: never sent
        return Refused(f"unreadable ({type(exc).__name__})")
    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        return Refused("Orthanc returned another instance than the index planned")
    names = {str(v) for v in _values(original, ("PatientName", "OtherPatientNames", "PatientMotherBirthName"))}
    charsets = {c for c in map(gate.declared_charset, (original, ds)) if c}
    needles = gate.Needles({str(v) for v in _values(original, _PATIENT_IDENTITY)}, names,
                           kept=kept_descriptors(original, ds), charsets=charsets)
    hits = gate.scan(ds, raw, needles)
    if hits:
        log.error("object %s refused for sending: the egress gate found identity in %s", sop_uid,
                  ", ".join(sorted({h.where for h in hits}))[:200])
        return Refused("the egress gate found identifying values")
    return ds


def _values(ds: Dataset, keywords: tuple[str, ...]) -> list[object]:
    out: list[object] = []
    for keyword in keywords:
        value = ds.get(keyword)
        if value not in (None, ""):
            out += list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    return [v for v in out if str(v).strip()]
