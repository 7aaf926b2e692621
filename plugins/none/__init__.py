"""The identity transform: header de-identification and the envelope only."""

from __future__ import annotations

from pydicom.dataset import Dataset

from gateway.plugin import Context


class NoneTransform:
    """Leaves the pixels as they are; nothing to record."""

    name = "none"
    series_level = False

    def protect(self, series: list[Dataset], ctx: Context) -> list[bytes]:
        return [b"" for _ in series]

    def restore(self, series: list[Dataset], records: list[bytes], ctx: Context) -> None:
        return None
