"""PS3.4 C.2.2.2 attribute matching of a query identifier against worklist items.

Pure code over DICOM JSON items: :func:`compile_keys` turns the request's keys once into a
list of predicates, and :meth:`Matcher.matches` tests an item. The same predicates tell
``explain`` which key excluded an item, and serve as the slow oracle of the SQL planner.

Rules implemented (PS3.4 C.2.2.2, 2024 edition):

- Universal Matching (C.2.2.2.3): an empty key, a key of only ``*`` (C.2.2.2.4), a zero-length
  sequence or a sequence whose item holds no matching key matches every item, also items that
  lack the attribute.
- Empty Value Matching (C.2.2.2.1): a key of two QUOTATION MARKs (``""``) matches items whose
  attribute is absent or empty.
- Single Value Matching (C.2.2.2.1): exact and case-sensitive, after dropping the spaces
  PS3.5 Table 6.2-1 calls not significant; PN is matched case-insensitively (allowed for PN
  only), component group by component group. DA/TM/DT single values match the whole
  precision they name ('0930' is every moment of 09:30).
- List of UID Matching (C.2.2.2.2): a UI key with backslashes matches any listed UID.
- Wild Card Matching (C.2.2.2.4): ``*`` and ``?`` on AE, CS, LO, LT, PN, SH, ST, UC, UR, UT
  only (never DA/TM/DT/UI); case-sensitive except PN.
- Range Matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` on DA, TM, DT, inclusive. When both the
  Scheduled Procedure Step Start Date and Time are ranges they are matched as one datetime
  range (C.2.2.2.5.4: '20240705-20240707' with '1000-1800' runs from 10:00 on the 5th to 18:00
  on the 7th). DCMTK wlmscpfs does the same for this pair.
- Sequence Matching (C.2.2.2.6): the keys of the request's (single) item must all match within
  one item of the stored sequence.
- A stored attribute with several values (e.g. Scheduled Station AE Title ``AA32\\AA33``)
  matches when any one value matches (the entity "has" each value).

Differences from DCMTK wlmscpfs 3.6.7 (checked in tests/worklist/test_migrate_wlmscpfs.py):
wlmscpfs matches PN case-sensitively, matches only its fixed list of supported keys (others
are ignored), and skips files lacking Type 1 values; see that test for the details.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from broker.worklist import item as wi
from broker.worklist.item import DicomJson

__all__ = ["InvalidKey", "Key", "Matcher", "Predicate", "compile_keys"]


class InvalidKey(ValueError):
    """A key's value is not valid for its VR (e.g. a date range '2024-01'); names the tag."""

    def __init__(self, tag: int, reason: str) -> None:
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {reason}")
        self.tag = tag
        self.reason = reason


class Key(NamedTuple):
    """One key of a request identifier.

    ``value`` is the decoded text (backslash-separated when multi-valued; None for SQ);
    ``items`` holds the sub-keys of each item of a sequence key.
    """

    tag: int
    vr: str
    value: str | None = None
    items: tuple[tuple[Key, ...], ...] = ()


# -- predicates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Predicate:
    """One matching key compiled: ``test(dataset)`` is True when the dataset matches it.

    ``kind`` names the PS3.4 matching type; ``path`` the tag path for messages.
    """

    tag: int
    kind: str
    test: Callable[[DicomJson], bool]
    where: tuple[int, ...]  # enclosing sequence tags, outermost first
    sub: tuple[Predicate, ...] = field(default_factory=tuple)
    paired: int = 0  # the time tag matched together with this date tag

    @property
    def path(self) -> str:
        """The key's attribute path, e.g. 'ScheduledProcedureStepSequence.Modality'."""
        name = _tag_name(self.tag) + (f"+{_tag_name(self.paired)}" if self.paired else "")
        return ".".join([*(_tag_name(t) for t in self.where), name])

    def describe(self) -> str:
        """The key as an analyst reads it, without values (which may be PHI)."""
        return f"{self.path} ({self.kind})"


def _tag_name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _stored(dataset: DicomJson, tag: int, vr: str) -> list[str]:
    elem = wi.element(dataset, tag)
    return [wi.normalise(vr, v) for v in wi.text_values(elem)]


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _pn_groups(text: str) -> list[str]:
    return [wi.pn_group_normalise(g) for g in text.split("=")]


def _pn_test(tag: int, query: str) -> tuple[str, Callable[[DicomJson], bool]]:
    """PN: per component group, case-insensitive, literal or wild card (C.2.2.2.1/C.2.2.2.4)."""
    groups = _pn_groups(query)
    checks: list[tuple[int, Callable[[str], bool]]] = []
    wildcard = False
    for index, group in enumerate(groups):
        if group == "" or set(group) == {"*"}:
            continue
        if "*" in group or "?" in group:
            wildcard = True
            checks.append((index, _wildcard_regex(group).fullmatch))  # type: ignore[arg-type]
        else:
            checks.append((index, group.__eq__))

    def test(ds: DicomJson) -> bool:
        for value in _stored(ds, tag, "PN"):
            stored = _pn_groups(value)
            if all(check(stored[index] if index < len(stored) else "") for index, check in checks):
                return True
        return False

    return ("wildcard" if wildcard else "single value"), test


def _range_bounds(tag: int, vr: str, text: str) -> tuple[str | None, str | None]:
    """The inclusive canonical bounds of a DA/TM/DT single value or range."""
    if ("-" in text and vr != "DT") or (vr == "DT" and _dt_is_range(text)):
        lo_text, _, hi_text = text.partition("-")
        lo_text, hi_text = lo_text.strip(), hi_text.strip()
        if not lo_text and not hi_text:
            raise InvalidKey(tag, "a range needs at least one bound")
        lo = _bound(tag, vr, lo_text, upper=False) if lo_text else None
        hi = _bound(tag, vr, hi_text, upper=True) if hi_text else None
        if lo is not None and hi is not None and lo > hi:
            raise InvalidKey(tag, "range start is after its end")
        return lo, hi
    return _bound(tag, vr, text.strip(), upper=False), _bound(tag, vr, text.strip(), upper=True)


def _dt_is_range(text: str) -> bool:
    # A DT may carry a UTC offset '-0500'; a range dash follows 4+ digits or starts the text.
    return text.startswith("-") or bool(re.search(r"^\d{4,}[.\d]*(?:[+-]\d{4})?-", text))


def _bound(tag: int, vr: str, text: str, *, upper: bool) -> str:
    if vr == "DA":
        value = wi.da_canonical(text)
        if not wi.is_date(value):
            raise InvalidKey(tag, "expected a date YYYYMMDD")
        return value
    if vr == "TM":
        bounds = wi.tm_bounds(text)
        if bounds is None:
            raise InvalidKey(tag, "expected a time HHMMSS.FFFFFF")
        return bounds[1] if upper else bounds[0]
    # DT: YYYY[MM[DD[HH[MM[SS[.F]]]]]], an offset is ignored (not supported for matching)
    match = re.match(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?", text)
    if match is None:
        raise InvalidKey(tag, "expected a datetime YYYYMMDDHHMMSS.FFFFFF")
    year, month, day, time = match.groups()
    if upper:
        date = f"{year}{month or '12'}{day or '31'}"
        tm = wi.tm_bounds(time)[1] if time else "235959.999999"  # type: ignore[index]
    else:
        date = f"{year}{month or '01'}{day or '01'}"
        tm = wi.tm_bounds(time)[0] if time else "000000.000000"  # type: ignore[index]
    return date + tm


def _stored_canonical(vr: str, value: str) -> str:
    if vr == "DA":
        return wi.da_canonical(value)
    if vr == "TM":
        return wi.tm_canonical(value)
    try:
        return _bound(0, "DT", value, upper=False)
    except InvalidKey:
        return value


def _in_range(value: str, lo: str | None, hi: str | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _compile_key(key: Key, where: tuple[int, ...]) -> Predicate | None:
    """One key as a predicate, or None for Universal Matching."""
    tag, vr = key.tag, key.vr
    path = where
    if vr == "SQ":
        if not key.items:
            return None
        sub = _compile_level(key.items[0], (*where, tag))
        if not sub:
            return None

        def test_seq(ds: DicomJson) -> bool:
            return any(all(p.test(it) for p in sub) for it in wi.sequence_items(ds, tag))

        return Predicate(tag, "sequence", test_seq, path, tuple(sub))
    raw = key.value or ""
    text = wi.normalise(vr, raw) if vr != "PN" else raw.rstrip(" ")
    if text == "":
        return None
    if text == '""':

        def test_empty(ds: DicomJson) -> bool:
            return not any(_stored(ds, tag, vr))

        return Predicate(tag, "empty value", test_empty, path)
    if vr == "PN":
        if set(text) == {"*"}:
            return None
        kind, test_pn = _pn_test(tag, text)
        return Predicate(tag, kind, test_pn, path)
    if vr in ("DA", "TM", "DT"):
        lo, hi = _range_bounds(tag, vr, text)

        def test_range(ds: DicomJson) -> bool:
            return any(
                _in_range(_stored_canonical(vr, v), lo, hi) for v in _stored(ds, tag, vr) if v
            )

        kind = "range" if "-" in text else "single value"
        return Predicate(tag, kind, test_range, path)
    if vr == "UI":
        uids = frozenset(wi.normalise("UI", u) for u in text.split("\\"))

        def test_uid(ds: DicomJson) -> bool:
            return any(v in uids for v in _stored(ds, tag, vr))

        return Predicate(tag, "list of UID" if len(uids) > 1 else "single value", test_uid, path)
    if vr in wi.WILDCARD_VRS and ("*" in text or "?" in text):
        if set(text) == {"*"}:
            return None
        regex = _wildcard_regex(text)

        def test_wild(ds: DicomJson) -> bool:
            return any(regex.fullmatch(v) for v in _stored(ds, tag, vr))

        return Predicate(tag, "wildcard", test_wild, path)

    def test_single(ds: DicomJson) -> bool:
        return any(v == text for v in _stored(ds, tag, vr))

    return Predicate(tag, "single value", test_single, path)


#: Date/time pairs matched as one datetime when both are ranges (C.2.2.2.5.4).
DATETIME_PAIRS = {wi.SPS_START_DATE: wi.SPS_START_TIME}


def combined_bounds(date_text: str, time_text: str) -> tuple[str | None, str | None] | None:
    """Bounds of a combined date+time range on 'YYYYMMDDHHMMSS.ffffff', or None when the
    pair is not matched combined (it is when both values are ranges)."""
    if "-" not in date_text or "-" not in time_text:
        return None
    d_lo, d_hi = _range_bounds(wi.SPS_START_DATE, "DA", date_text)
    t_lo, t_hi = _range_bounds(wi.SPS_START_TIME, "TM", time_text)
    lo = d_lo + (t_lo or "000000.000000") if d_lo else None
    hi = d_hi + (t_hi or "235959.999999") if d_hi else None
    return lo, hi


def _compile_level(keys: Sequence[Key], where: tuple[int, ...]) -> list[Predicate]:
    by_tag = {k.tag: k for k in keys}
    skip: set[int] = set()
    out: list[Predicate] = []
    for date_tag, time_tag in DATETIME_PAIRS.items():
        date_key, time_key = by_tag.get(date_tag), by_tag.get(time_tag)
        if date_key is None or time_key is None:
            continue
        bounds = combined_bounds((date_key.value or "").strip(), (time_key.value or "").strip())
        if bounds is None:
            continue
        lo, hi = bounds
        skip.update((date_tag, time_tag))

        def test_dt(
            ds: DicomJson,
            dt: int = date_tag,
            tt: int = time_tag,
            lo: str | None = lo,
            hi: str | None = hi,
        ) -> bool:
            date = wi.da_canonical(wi.first_text(ds, dt))
            if not date:
                return False
            time = wi.first_text(ds, tt)
            return _in_range(date + (wi.tm_canonical(time) if time else "000000.000000"), lo, hi)

        out.append(Predicate(date_tag, "combined datetime range", test_dt, where, (), time_tag))
    for key in keys:
        if key.tag in skip or key.tag == wi.SPECIFIC_CHARACTER_SET:
            continue  # Specific Character Set is never matched (C.2.2.2)
        pred = _compile_key(key, where)
        if pred is not None:
            out.append(pred)
    return out


@dataclass(frozen=True, slots=True)
class Matcher:
    """The compiled matching keys of one request; empty when every key is universal."""

    predicates: tuple[Predicate, ...]

    def matches(self, item: DicomJson) -> bool:
        """True when ``item`` matches every key."""
        return all(p.test(item) for p in self.predicates)

    def failures(self, item: DicomJson) -> list[Predicate]:
        """The keys ``item`` does not match (sequence keys name their failing sub-keys)."""
        out: list[Predicate] = []
        for pred in self.predicates:
            if pred.test(item):
                continue
            if pred.sub:
                steps = wi.sequence_items(item, pred.tag) or [{}]
                # report the sub-keys failing in the step that fails fewest
                best = min(([p for p in pred.sub if not p.test(step)] for step in steps), key=len)
                out.extend(best or [pred])
            else:
                out.append(pred)
        return out


def compile_keys(keys: Sequence[Key]) -> Matcher:
    """Compile a request's keys; raises :class:`InvalidKey` for a value invalid for its VR."""
    return Matcher(tuple(_compile_level(keys, ())))
