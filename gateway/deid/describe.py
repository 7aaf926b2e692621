"""A route's PS3.15 conformance in words: what it does to each attribute and option.

PS3.15 E.1.1 asks a de-identifier to say which profile and options it applies; an
administrator also needs to see, before a study arrives, what a route keeps.
"""

from __future__ import annotations

from collections import defaultdict

from gateway.deid.profile import BASIC_CODE, OPTIONS, SUPPLEMENT, Profile, table_rows

ACTIONS = {
    "X": "removed",
    "Z": "kept empty (or a keyed pseudonym: Patient ID, Patient's Name, Accession Number)",
    "D": "replaced by a dummy value (sequences: items de-identified, their free text replaced)",
    "U": "replaced by a keyed UID (2.25. + HMAC), the same for the same original",
    "U*": "sequence kept, the UIDs inside replaced by keyed UIDs",
    "C": "cleaned: dates shifted per patient, this patient's identity scrubbed out of text (sequences: "
         "items too); binary data (overlay, curve) emptied, as text in a bitmap cannot be read here",
    "K": "kept",
}


def describe(options: frozenset[str], keep_private: tuple[tuple[int, str], ...] = ()) -> str:
    """The text ``gateway describe-profile`` prints for a route with these settings."""
    profile = Profile(options)
    basic = Profile()
    lines = [f"PS3.15 {BASIC_CODE[1]} ({BASIC_CODE[0]}), options:"]
    for name, (_column, code, meaning) in OPTIONS.items():
        lines.append(f"  [{'x' if name in options else ' '}] {name:36} {code} {meaning}")
    by_action: dict[str, list[str]] = defaultdict(list)
    changed: list[str] = []
    for tag, name in table_rows():
        name = " ".join(name.split())
        action, was = profile.action_of_row(tag), basic.action_of_row(tag)
        by_action[action].append(f"{name} {tag}")
        if action != was:
            changed.append(f"  {name} {tag}: {was} -> {action}")
    lines.append(f"Attributes of Table E.1-1 ({sum(map(len, by_action.values()))} rows, "
                 f"{len(SUPPLEMENT)} added: overlay description and label go with Overlay Data):")
    for action, meaning in ACTIONS.items():
        names = sorted(by_action.get(action, []))
        if names:
            lines.append(f"  {action:2} {meaning}: {len(names)}")
            lines += [f"       {n}" for n in names]
    lines.append(f"Changed by the options ({len(changed)}):" if changed else "Changed by the options: none")
    lines += sorted(changed)
    kept = ", ".join(f"({group:04X},{creator!r})" for group, creator in keep_private) or "none"
    lines += [
        "Not in the table:",
        f"  private attributes: removed, except blocks a rule keeps ({kept}); "
        "kept ones are still searched by the PHI gate",
        "  other standard attributes: kept; person names (PN): emptied; tags no dictionary knows: removed",
        "  free text in items of replaced (D) or cleaned (C) sequences: dummy text or scrubbed; codes stay",
        "Marked: Patient Identity Removed YES, De-identification Method (Code Sequence), Longitudinal Temporal "
        "Information Modified",
        "PHI gate: every outgoing object is searched (decoded text in its character set and raw bytes) for every "
        "identifying value removed from its series; a hit quarantines the series.",
    ]
    return "\n".join(lines)
