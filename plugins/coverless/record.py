"""What the coverless transform seals in the envelope: row numbers and digests.

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

VERSION = 1


@dataclass(frozen=True)
class Record:
    method: dict[str, Any]
    ordering: str
    count: int  # instances in the series
    table_digest: str
    identity_digest: str
    rows: dict[str, list[int]] = field(default_factory=dict)  # keyword -> row numbers
    sealed: dict[str, str] = field(default_factory=dict)  # keyword -> value (the fallback)

    def to_bytes(self) -> bytes:
        return json.dumps({"v": VERSION, **self.__dict__}, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        try:
            raw = json.loads(data.decode())
            if raw.pop("v") != VERSION:
                raise ValueError("unknown coverless record version")
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"unreadable coverless record ({type(exc).__name__})") from None


def identity_digest(ctx: Context, identity: dict[str, str]) -> str:
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hmac.new(ctx.key("coverless/identity"), text, hashlib.sha256).hexdigest()


def table_digest(ctx: Context, table_bytes: bytes) -> str:
    return hmac.new(ctx.key("coverless/table"), table_bytes, hashlib.sha256).hexdigest()
