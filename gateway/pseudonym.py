"""Keyed, deterministic replacements: UIDs, patient IDs, accession numbers, date shifts.

Each is an HMAC-SHA256 of the original under the keyring's pseudonym secret, with a
label per kind, so the same original always gets the same replacement (a study stays a
study across series and days) and nobody without the secret can link back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

# A shift of up to ten years back keeps intervals and weekdays' spread, never a future date.
MAX_SHIFT_DAYS = 3650


class Pseudonymizer:
    """Replacement values keyed by one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _digest(self, label: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{label}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A ``2.25.`` UID (at most 44 characters) derived from ``original``."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original.strip("\0 "))[:16], "big"))

    def patient_id(self, original: str) -> str:
        return "P" + self._code("patient_id", original, 15)

    def accession(self, original: str) -> str:
        return "A" + self._code("accession", original, 15)

    def token(self, label: str, original: str, length: int = 16) -> str:
        """A short keyed code, for naming objects in logs and status without PHI."""
        return self._code(label, original, length)

    def _code(self, label: str, original: str, length: int) -> str:
        raw = base64.b32encode(self._digest(label, original.strip())).decode()
        return raw[:length]

    def date_shift_days(self, patient_id: str) -> int:
        """Days to move this patient's dates back (1..MAX_SHIFT_DAYS), the same every time."""
        return 1 + int.from_bytes(self._digest("date_shift", patient_id.strip())[:4], "big") % MAX_SHIFT_DAYS


def shift_da(value: str, days: int) -> str:
    """Move a DA value (YYYYMMDD) back; a value that is not a full date becomes empty."""
    try:
        parsed = datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return ""
    return (parsed - timedelta(days=days)).strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """Move the date part of a DT value back, keeping time and offset as they were."""
    text = value.strip()
    if len(text) < 8:
        return ""
    shifted = shift_da(text[:8], days)
    return shifted + text[8:] if shifted else ""
