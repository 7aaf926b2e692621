"""Publishing one protected object: exactly one copy in Orthanc per SOP instance, and the
retrieval index following that copy.

A modality's correction re-sends the same SOP instances with changed content (a corrected
name, another patient ID or study). Orthanc keeps the first copy it got (``AlreadyStored``),
and a changed patient ID gives the instance a second Orthanc id under another patient, so
a plain upload would leave C-FIND (the index) and C-MOVE (Orthanc) disagreeing. Here every
copy Orthanc holds of the SOP instance is compared by the original's SHA-256 (from the
envelope, kept sealed in the index): the same original already held once is a no-op;
anything else is deleted, the new copy uploaded with its authenticity tag, Orthanc asked
again that it now holds exactly that one copy, and only then is the index entry replaced.
A crash in between leaves the protected copy in the spool, so the next attempt repeats
the steps; nothing of the old identity stays reachable once it succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway import authenticity
from gateway.forwarder import Forwarder, Unreachable
from gateway.index import Entry, Sealing, entry_of
from gateway.keyring import Keyring


class Outcome(StrEnum):
    STORED = "stored"  # first copy of this SOP instance
    UNCHANGED = "unchanged"  # the same original was held already: nothing done
    SUPERSEDED = "superseded"  # a different original of this SOP instance was replaced


@dataclass(frozen=True)
class Published:
    orthanc_id: str
    outcome: Outcome
    study_uid: str
    replaced: int  # Orthanc copies deleted


@dataclass(frozen=True)
class Opened:
    """A protected object from the spool, its index entry to be, and the entry it replaces;
    ``tag_at``: where its authenticity tag is, when protection tagged it."""

    data: bytes
    entry: Entry
    sealing: Sealing
    previous: Entry | None
    tag_at: int | None = None


def open_for_publishing(data: bytes, keyring: Keyring, previous: Callable[[str], Entry | None]) -> Opened:
    """``data`` opened, with the index entry it would replace (``previous``: by SOP
    Instance UID, e.g. ``Index.get``)."""
    entry, sealing = entry_of(data, "", keyring)
    return Opened(data, entry, sealing, previous(entry.sop_uid))


def upload(opened: Opened, copies: list[str], keyring: Keyring, forwarder: Forwarder) -> Published:
    """Make ``opened`` the one copy Orthanc holds of its SOP instance, ``copies`` being the
    copies it holds now; the caller then checks what Orthanc holds (``confirmed``) unless
    the outcome is UNCHANGED."""
    entry, previous = opened.entry, opened.previous
    if previous is not None and previous.digest == entry.digest and copies == [previous.orthanc_id]:
        return Published(previous.orthanc_id, Outcome.UNCHANGED, entry.study_uid, 0)
    for orthanc_id in copies:
        forwarder.delete(orthanc_id)
    stored = forwarder.send(authenticity.tagged(opened.data, keyring, opened.tag_at))
    changed = previous is not None and previous.digest != entry.digest
    outcome = Outcome.SUPERSEDED if changed or copies else Outcome.STORED
    return Published(stored, outcome, entry.study_uid, len(copies))


def confirmed(opened: Opened, published: Published, held: list[str]) -> tuple[Entry, Sealing]:
    """The index entry for an upload, once Orthanc holds exactly that copy (``held``: its
    copies after the upload); Unreachable (try again later) when it holds another too."""
    if held != [published.orthanc_id]:  # another writer, or a delete Orthanc did not do
        raise Unreachable(f"Orthanc holds {len(held)} copies of the instance after the upload, not one")
    return replace(opened.entry, orthanc_id=published.orthanc_id), opened.sealing
