"""Regions to blank by device: the rule sets sites keep for their scanners.

In the spirit of CTP's DicomPixelAnonymizer.script: a rule names a device (Manufacturer
and model as case-insensitive substrings, modality, image size) and the regions its
overlays use. Shipped defaults live in gateway/data/redaction-rules.json; a route adds
its site rules under ``redaction: {rules: [...]}`` in the same shape. Regions are
``[x, y, width, height]`` in pixels; a negative x or y counts from the right or bottom
edge, and a width or height of 0 runs to the edge, so one rule fits several sizes.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset

from gateway.redaction.boxes import Box, clip


class Rule(BaseModel):
    """A device signature (all given fields must match) and its regions."""

    model_config = ConfigDict(extra="forbid")

    name: str
    manufacturer: str | None = None
    model: str | None = None
    modality: list[str] | None = None
    rows: int | None = None
    columns: int | None = None
    regions: list[tuple[int, int, int, int]] = Field(min_length=1)

    def matches(self, ds: Dataset) -> bool:
        def has(text: str | None, keyword: str) -> bool:
            return text is None or text.lower() in str(ds.get(keyword, "") or "").lower()

        return (
            has(self.manufacturer, "Manufacturer")
            and has(self.model, "ManufacturerModelName")
            and (self.modality is None or str(ds.get("Modality", "")) in self.modality)
            and self.rows in (None, int(ds.get("Rows", 0)))
            and self.columns in (None, int(ds.get("Columns", 0)))
        )

    def boxes(self, rows: int, cols: int) -> list[Box]:
        out = []
        for x, y, w, h in self.regions:
            left, top = (x if x >= 0 else cols + x), (y if y >= 0 else rows + y)
            right, bottom = (left + w if w else cols), (top + h if h else rows)
            box = clip((top, left, bottom, right), rows, cols)
            if box:
                out.append(box)
        return out


def shipped() -> list[Rule]:
    text = resources.files("gateway").joinpath("data/redaction-rules.json").read_text()
    return [Rule.model_validate(r) for r in json.loads(text)["rules"]]


def load(site: list[dict[str, Any]] | None, defaults: bool = True) -> list[Rule]:
    """The shipped rules (unless turned off) followed by a route's site rules."""
    return (shipped() if defaults else []) + [Rule.model_validate(r) for r in site or []]


def detect(ds: Dataset, rules: list[Rule]) -> list[Box]:
    rows, cols = int(ds.Rows), int(ds.Columns)
    return [box for rule in rules if rule.matches(ds) for box in rule.boxes(rows, cols)]
