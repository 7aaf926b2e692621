"""The PHI gate: the last look at an outgoing object before it may leave.

It searches every string element (sequences, private blocks and file meta included) and
the raw encoded bytes for each identifying value the de-identification took out of the
original. Any hit stops the whole series. The gate is deliberately independent of the
profile code it checks: a bug there, or identity typed into an unexpected attribute, is
caught here.

Matching works on text, not on ASCII: pydicom decodes each value with the Specific
Character Set in force (code extensions included), and both sides are normalised (NFKC,
case folded, combining marks dropped) and cut into words. Scripts written without spaces
(CJK, kana, Hangul, Thai, ...) count each character as a word, so a name in them hits as
a run of characters anywhere in a text. A value hits where its words appear in a row;
each part of a patient's name hits on its own in free text, not in coded values or UIDs.
Coded (CS) values hit only when the whole value is an identity that cannot be a defined
term (a patient called Knee must not stop every knee scan), UIDs only when equal.

Not searched: the gateway's own envelope block and values the profile itself wrote (dummy
values, ``REMOVED``, pseudonyms). Excused: in a device, anatomy or code attribute the profile
kept as the original held it, a one-word name or a name that is itself such a value
(Manufacturer ``UIH`` for an institution called UIH). Raw bytes (pixel data, binary private
values) are searched for values of 6 character widths or more (a CJK character counts 2) in every encoding the series
declares, where a chance match in random data is about one in 2^48 per position.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import ahocorasick_rs
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.envelope import CREATOR as ENVELOPE_CREATOR
from gateway.envelope import GROUP as ENVELOPE_GROUP

_STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT"}
# Where a single part of a name is looked for: free text, not coded values (CS) or UIDs.
_FREE_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
# Scripts written without spaces between words: each character is a word of its own.
_UNSPACED = ("\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u2e80-\u9fff\ua960-\ua97f"
             "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff")
_TOKEN = re.compile(f"[{_UNSPACED}]|[^\\W{_UNSPACED}]+")
# Non-spacing marks (accents left after NFKC, Hebrew points, Arabic vowels, variation
# selectors): the planes that have them, not all 1.1 million code points (0.6 s at import).
_MARKS = {c: None for c in (*range(0x20000), *range(0xE0100, 0xE01F0)) if unicodedata.category(chr(c)) == "Mn"}
_ESCAPE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")  # ISO 2022 escape sequences
# What could be a defined term of a coded (CS) attribute: one upper-case word.
_DEFINED_TERM = re.compile(r"[A-Z_][A-Z0-9_]{0,15}")
# Name parts too common to mean identity on their own.
_COMMON = {"the", "and", "for", "mrs", "phd"}
_RAW_MIN_WIDTH = 6
_PART_MIN_WIDTH = 3


@dataclass(frozen=True)
class Hit:
    """Where an identifying value was found and what kind of value it was (never the value)."""

    where: str
    kind: str


def normalise(text: str) -> str:
    """``text`` as Unicode compares it: NFKC, case folded, combining marks dropped."""
    return unicodedata.normalize("NFKC", str(text)).casefold().translate(_MARKS)


def words(text: str) -> str:
    """``text`` as normalised words separated by single spaces, padded with spaces."""
    return " " + " ".join(_TOKEN.findall(normalise(text))) + " "


def width(text: str) -> int:
    """Length in character widths: a wide (CJK) character counts 2, as it does on screen."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@dataclass
class Needles:
    """The identifying values of one series, prepared for matching.

    ``kinds`` names the attribute each value came from (what a quarantine reports);
    ``written`` are values the profile itself wrote; ``kept`` maps a device, anatomy or
    code attribute the profile kept to the values the originals held in it; ``charsets``
    are the Specific Character Sets the series declares.
    """

    identifiers: Iterable[str]
    patient_names: Iterable[str]
    kinds: dict[str, str] = field(default_factory=dict)
    written: Iterable[str] = ()
    kept: dict[str, set[str]] = field(default_factory=dict)
    charsets: Iterable[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.identifiers, self.patient_names = set(self.identifiers), set(self.patient_names)
        self.phrases: dict[str, str] = {}  # padded words -> kind
        self.exact: dict[str, str] = {}  # for UIs and coded values: the stripped value -> kind
        self.parts: dict[str, str] = {}
        for value in sorted(self.identifiers | self.patient_names):
            kind = self.kinds.get(value, "identifier")
            phrase = words(value)
            if width(phrase.strip()) >= _PART_MIN_WIDTH:
                self.phrases.setdefault(phrase, kind)
            if not _DEFINED_TERM.fullmatch(value.strip().upper()):
                self.exact.setdefault(normalise(value.strip()), kind)
        for name in sorted(self.patient_names):
            kind = self.kinds.get(name, "patient name")
            for part in re.split(r"[\^=]", name):
                phrase = words(part)
                if width(phrase.strip()) >= _PART_MIN_WIDTH and phrase.strip() not in _COMMON:
                    self.parts.setdefault(phrase, f"{kind} part")
                for word in phrase.split():  # "Mary Ann" in a given-name component
                    if width(word) >= _PART_MIN_WIDTH and word not in _COMMON:
                        self.parts.setdefault(f" {word} ", f"{kind} part")
        self.written_texts = {words(v) for v in self.written}
        self.kept_texts = {k: {words(v) for v in vs} for k, vs in self.kept.items()}
        self.kept_all = set().union(*self.kept_texts.values())
        self.codecs = _codecs(self.charsets)
        self._raw_cache: dict[frozenset[str], RawSearch] = {}

    def raw_search(self, own: set[str]) -> RawSearch:
        """Each whole value long enough for the raw search, in every declared encoding.
        Not those that the gateway's own texts (``own``, as words) or a kept device, anatomy
        or code value contain: the raw search cannot tell which element it is in. Name parts
        are searched in decoded text only (``PERFUSION`` is a patient's name part and an
        Image Type value)."""
        key = frozenset(own)
        if key not in self._raw_cache:  # the same for every object of a series, as a rule
            self._raw_cache[key] = RawSearch(self._raw_needles(own))
        return self._raw_cache[key]

    def _raw_needles(self, own: set[str]) -> list[tuple[bytes, str]]:
        needles: dict[bytes, str] = {}
        for value in sorted(set(self.identifiers) | set(self.patient_names)):
            value = value.strip()
            if width(value) < _RAW_MIN_WIDTH:
                continue
            phrase = words(value)
            if any(phrase in text for text in own) or any(self.excusable(value, text) for text in self.kept_all):
                continue
            for variant in {value, value.upper()}:
                for codec in self.codecs:
                    try:
                        encoded = _ESCAPE.sub(b"", variant.encode(codec))
                    except UnicodeError:
                        continue
                    needles.setdefault(encoded, self.kinds.get(value, "identifier"))
        return sorted(needles.items())

    def excusable(self, value: str, kept: str) -> bool:
        """Whether identity ``value`` inside a kept descriptor's text (``kept``, as words) is
        no identity there: a name without digits that is one word or is itself a whole
        device, anatomy or code value of the series."""
        phrase = words(value)
        return (phrase in kept and not any(c.isdigit() for c in phrase)
                and (len(phrase.split()) == 1 or phrase in self.kept_all))

    def match(self, text: str, vr: str, keyword: str = "") -> str | None:
        """The kind of identity ``text`` (a value of VR ``vr`` in ``keyword``) holds, if any.

        In a value the original also held in this kept device, anatomy or code attribute, a
        name of one word (``KNEE`` in ``SENSE-Knee-8``) or one that is itself such a value (an
        institution called like the Manufacturer, in Detector Description too) is excused; a
        longer name (``Doe Peter`` in a station name) or a value with digits is not."""
        padded = words(text)
        if padded in self.written_texts:
            return None
        excused = padded in self.kept_texts.get(keyword, ())
        if vr in ("CS", "UI"):
            found = [(text.strip(), self.exact[key])] if (key := normalise(text.strip())) in self.exact else []
        else:
            found = [(p, k) for p, k in self.phrases.items() if p in padded]
            if not found and vr in _FREE_TEXT_VRS:
                found = [(p, k) for p, k in self.parts.items() if p in padded]
        for value, kind in found:
            if not (excused and self.excusable(value, padded)):
                return kind
        return None


def scan(ds: Dataset, encoded: bytes, needles: Needles) -> list[Hit]:
    """All places in ``ds`` / ``encoded`` where an identifying value shows."""
    hits: list[Hit] = []
    own: set[str] = set(needles.written_texts)
    if getattr(ds, "file_meta", None) is not None:
        _scan_dataset(ds.file_meta, needles, hits, own, "meta.", ())
    _scan_dataset(ds, needles, hits, own, "", _encodings(ds, ()))
    hits += [Hit(where="encoded bytes", kind=f"raw {kind}") for kind in needles.raw_search(own).kinds_in(encoded)]
    return hits


def _scan_dataset(ds: Dataset, needles: Needles, hits: list[Hit], own: set[str], path: str,
                  encodings: tuple[str, ...]) -> None:
    encodings = _encodings(ds, encodings)
    for elem in ds:
        where = f"{path}{elem.tag}"
        if elem.tag.is_private and _in_envelope(ds, elem.tag):
            own.update(words(t) for t in _texts(elem.value, elem.VR, (), private=False))
            continue  # the gateway's own block: ciphertext and its labels
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                _scan_dataset(item, needles, hits, own, f"{where}[{i}].", encodings)
            continue
        vr = "LT" if elem.tag.is_private and elem.VR != "UI" else elem.VR
        keyword = "" if elem.tag.is_private else elem.keyword
        texts = _texts(elem.value, elem.VR, tuple(dict.fromkeys(encodings + needles.codecs)), elem.tag.is_private)
        kinds = {kind for text in texts if (kind := needles.match(text, vr, keyword))}
        for kind in sorted(kinds):
            hits.append(Hit(where=f"{where} {keyword}".rstrip(), kind=kind))


def _in_envelope(ds: Dataset, tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    if group != ENVELOPE_GROUP:
        return False
    creator = ds.get((group << 16) | (element >> 8 if element >= 0x1000 else element))
    return creator is not None and str(creator.value).strip() == ENVELOPE_CREATOR


class RawSearch:
    """Every raw needle looked for in one pass over the bytes (an Aho-Corasick automaton:
    one scan per object, not one per needle and encoding), each occurrence a whole word.
    Only an ASCII letter or digit at an end of a needle asks for a boundary there.
    ``ahocorasick_rs`` scans the bytes as they are (no copy as text), every occurrence,
    overlapping ones included: 1.5-2.4 ms for a protected 526 KB CT object and the 218 values
    of a 200-object series, where pyahocorasick over a latin-1 copy took 2.1-4.4 ms."""

    def __init__(self, needles: list[tuple[bytes, str]]) -> None:
        self.needles = needles
        self._automaton = ahocorasick_rs.BytesAhoCorasick([n for n, _ in needles]) if needles else None

    def kinds_in(self, data: bytes) -> list[str]:
        """The kind of each needle found in ``data``, in needle order."""
        if self._automaton is None:
            return []
        found: set[int] = set()
        for n, start, _ in self._automaton.find_matches_as_indexes(data, overlapping=True):
            if n not in found and _whole_word(data, self.needles[n][0], start):
                found.add(n)
        return [self.needles[n][1] for n in sorted(found)]


def _whole_word(data: bytes, needle: bytes, start: int) -> bool:
    end = start + len(needle)
    return not (_word_byte(needle, 0) and _word_byte(data, start - 1)) \
        and not (_word_byte(needle, len(needle) - 1) and _word_byte(data, end))


def _word_byte(data: bytes, index: int) -> bool:
    return 0 <= index < len(data) and ((chr(data[index]).isalnum() and data[index] < 128) or data[index] == 0x5F)


def declared_charset(ds: Dataset) -> tuple[str, ...]:
    """The terms of the Specific Character Set ``ds`` declares, as ``Needles`` takes them;
    empty where it declares none."""
    declared = ds.get("SpecificCharacterSet")
    if not declared:
        return ()
    return tuple(declared) if isinstance(declared, MultiValue) else (str(declared),)


def _encodings(ds: Dataset, inherited: tuple[str, ...]) -> tuple[str, ...]:
    """The Python codecs of the Specific Character Set in force in ``ds``."""
    declared = declared_charset(ds)
    return _codecs([declared]) if declared else inherited


def _codecs(charsets: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """Distinct Python codecs of the declared character sets, plus UTF-8 and Latin-1 (what
    an object that declares nothing, or the wrong thing, most often holds)."""
    found: list[str] = []
    for terms in charsets:
        try:
            found += convert_encodings(list(terms))
        except (LookupError, ValueError):
            continue
    names: dict[str, str] = {}
    for name in [*found, "utf-8", "latin-1"]:
        try:
            names.setdefault(codecs.lookup(name).name, name)
        except LookupError:
            continue
    return tuple(names.values())


def _texts(value: object, vr: str, encodings: tuple[str, ...], private: bool) -> list[str]:
    """The text of a value as pydicom decoded it, and as each other encoding of the series
    would read the same bytes (an object that declares the wrong character set)."""
    if vr in _STRING_VRS:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        texts = [str(v) for v in values if v not in (None, "")]
        return texts + [alt for text in texts if not text.isascii() for alt in _readings(text, encodings)]
    if private and isinstance(value, bytes) and value:  # UN private data may well be text
        return list(dict.fromkeys(value.decode(codec, "replace") for codec in encodings or ("latin-1",)))
    return []


def _readings(text: str, encodings: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for codec in encodings:
        try:
            raw = text.encode(codec)
        except UnicodeError:
            continue
        out += [raw.decode(other, "replace") for other in encodings if other != codec]
    return list(dict.fromkeys(t for t in out if t != text))
