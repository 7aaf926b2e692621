"""DICOM C-FIND attribute matching (PS3.4 C.2.2.2) on plain values.

Supports what workstations send: universal (empty) matching, single value, wildcards
(``*`` and ``?``, case-insensitive for person names), lists of UIDs (backslash), and
date/time ranges (``A-B``, ``A-``, ``-B``). Sequence matching is not supported: such a key
is returned but does not restrict the match.
"""

from __future__ import annotations

import re

_RANGE_VRS = {"DA", "TM", "DT"}


def matches(query: str, value: str, vr: str) -> bool:
    """Whether ``value`` (one attribute of a candidate) satisfies ``query``."""
    query = query.strip()
    if query in ("", "*"):
        return True
    if vr == "UI":
        return value.strip() in {q.strip() for q in query.split("\\")}
    if vr in _RANGE_VRS and "-" in query:
        low, _, high = query.partition("-")
        v = value.strip()
        if not v:
            return False
        return (not low or v >= low.strip()) and (not high or v[: len(high.strip())] <= high.strip())
    if "\\" in query and vr not in ("LT", "ST", "UT"):
        return any(matches(q, value, vr) for q in query.split("\\"))
    if "*" in query or "?" in query:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
        flags = re.IGNORECASE if vr == "PN" else 0
        return re.fullmatch(pattern, value.strip(), flags) is not None
    if vr == "PN":
        return query.upper() == value.strip().upper()
    return query == value.strip()
