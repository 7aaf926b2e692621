"""What the coverless transform seals in the envelope: row numbers and digests.

Version 1 (method 1, the paper's index table): ``rows`` are row numbers, one per character.
Version 2 (method 2): ``rows`` are cell numbers, ``votes`` per bit of the value's UTF-8,
and ``window`` is the window of the differences. Both versions restore.

One record per series (in the envelope of the first instance in table order; the other
instances get an empty record). The gateway encrypts and authenticates it. Besides the
row numbers it keeps two keyed digests (HMAC-SHA256 with keys from ``ctx.key``):

- of the identity itself, so a receiver whose rebuilt table differs reports a failure and
  never a wrong name;
- of the table's usable rows, so the failure can say whether the table differed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from gateway.plugin import Context

VERSION = 2
VERSIONS = (1, 2)


@dataclass(frozen=True)
class Record:
    method: dict[str, Any]
    ordering: str
    count: int  # instances in the series
    table_digest: str
    identity_digest: str
    rows: dict[str, list[int]] = field(default_factory=dict)  # keyword -> row (v1) or cell (v2) numbers
    sealed: dict[str, str] = field(default_factory=dict)  # keyword -> value (the fallback)
    window: int = 0  # version 2: images per side of a window difference
    version: int = VERSION

    def to_bytes(self) -> bytes:
        fields = {k: v for k, v in self.__dict__.items() if k != "version" and (k != "window" or self.version > 1)}
        return json.dumps({"v": self.version, **fields}, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        try:
            raw = json.loads(data.decode())
            version = raw.pop("v")
            if version not in VERSIONS or (version == 1 and "window" in raw):
                raise ValueError("unknown coverless record version")
            return cls(**raw, version=version)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"unreadable coverless record ({type(exc).__name__})") from None


def identity_digest(ctx: Context, identity: dict[str, str]) -> str:
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hmac.new(ctx.key("coverless/identity"), text, hashlib.sha256).hexdigest()


def table_digest(ctx: Context, table_bytes: bytes) -> str:
    return hmac.new(ctx.key("coverless/table"), table_bytes, hashlib.sha256).hexdigest()
