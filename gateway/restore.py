"""The restore path for one series: open envelopes, undo transforms, rebuild, verify.

Every instance comes back as the original's exact bytes or as a failure with a reason;
the SHA-256 of the original, kept in the envelope, is the only judge. A wrong identity
can therefore never be returned: it would not hash to the original.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from gateway import envelope
from gateway.envelope import EnvelopeError, Opened
from gateway.keyring import Keyring, KeyringError
from gateway.plugin import Context, PluginError
from gateway.stages import stage_by_name
from gateway.study_keys import series_key

log = logging.getLogger("gateway.restore")


@dataclass
class Restored:
    """The original bytes of one instance, or why they could not be had."""

    sop_uid: str
    data: bytes | None = None
    error: str | None = None


def restore_series(protected: list[bytes | Dataset], keyring: Keyring) -> list[Restored]:
    """Restore every instance of one series; failures are per instance."""
    series = [p if isinstance(p, Dataset) else pydicom.dcmread(io.BytesIO(p)) for p in protected]
    outcomes = [Restored(sop_uid=str(ds.get("SOPInstanceUID", ""))) for ds in series]
    opened: list[Opened | None] = []
    for ds, outcome in zip(series, outcomes, strict=True):
        try:
            opened.append(envelope.open_envelope(ds, keyring))
        except (EnvelopeError, KeyringError) as exc:
            outcome.error = str(exc)
            opened.append(None)

    live = [i for i, o in enumerate(opened) if o is not None]
    carried: list[tuple[list[int], dict[str, str]]] = []
    for stage_names, members in _groups(opened, live).items():
        members_opened = [o for o in (opened[i] for i in members) if o is not None]  # live: all opened
        identity = _undo_stages(stage_names, [series[i] for i in members], members_opened,
                                [outcomes[i] for i in members])
        if identity:
            carried.append((members, identity))

    for ds, op, outcome in zip(series, opened, outcomes, strict=True):
        if op is None or outcome.error:
            continue
        cut = op.payload.cut
        pixels = None if cut.pixel_tag is None else _pixel_bytes(ds, cut.pixel_tag)
        data = cut.join(pixels) if cut.pixel_tag is None or pixels is not None else None
        if data is None or not cut.verify(data):
            outcome.error = "restored object does not match the original's digest"
            log.error("restore of %s failed: digest mismatch", outcome.sop_uid)
            continue
        outcome.data = data
    for members, identity in carried:
        _check_carried_identity(identity, [outcomes[i] for i in members])
    return outcomes


def _groups(opened: list[Opened | None], live: list[int]) -> dict[tuple[str, ...], list[int]]:
    """Instances grouped by the chain of stages that protected them."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in live:
        op = opened[i]
        assert op is not None
        groups.setdefault(tuple(name for name, _ in op.payload.records), []).append(i)
    return groups


def _undo_stages(names: tuple[str, ...], series: list[Dataset], opened: list[Opened], outcomes: list[Restored]
                 ) -> dict[str, str]:
    """Run the stages' restores, last first; returns the identity a stage carried itself (coverless)."""
    if all(op.payload.cut.pixel_tag is None for op in opened):
        return {}  # the whole original is in the envelope; the pixels are not needed
    first = opened[0]
    ctx = Context(series_key=series_key(first.data_key, str(series[0].SeriesInstanceUID)), log=log)
    for position in reversed(range(len(names))):
        name = names[position]
        try:
            stage_by_name(name).restore(series, [op.payload.records[position][1] for op in opened], ctx)
        except PluginError as exc:
            for outcome in outcomes:
                outcome.error = f"{name} could not restore: {exc}"
            log.error("restore of a series of %d failed in %s: %s", len(series), name, exc)
            return {}
    return ctx.identity


def _check_carried_identity(identity: dict[str, str], outcomes: list[Restored]) -> None:
    """Identity a transform carried itself must be what the restored headers say: every
    value it demapped is that attribute's value in the series, or nothing is returned."""
    done = [o for o in outcomes if o.data is not None]
    headers = [pydicom.dcmread(io.BytesIO(o.data), stop_before_pixels=True) for o in done]  # type: ignore[arg-type]  # every o.data is bytes here: ``done`` holds the restored ones only
    for keyword, value in identity.items():
        if value not in {str(h.get(keyword, "") or "") for h in headers}:
            for outcome in done:
                outcome.data = None
                outcome.error = "identity carried by the transform does not match the restored header"
            log.error("restore of a series of %d failed: %s carried by the transform differs from the restored header",
                      len(outcomes), keyword)
            return


def _pixel_bytes(ds: Dataset, tag: int) -> bytes | None:
    elem = ds.get(tag)
    return None if elem is None else bytes(elem.value)
