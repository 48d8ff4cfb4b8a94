"""DICOM value representation rules applied to mapped values (PS3.5 §6.2, Table 6.2-1).

Each rule is compiled once per attribute into a small closure ``fix(value) -> value`` that
returns the value unchanged on the fast path and otherwise truncates/repairs it (policy
``truncate``) or raises :class:`VRFault` (policy ``reject``). Dates, times and UIDs are never
truncated: a cut UID or date is a different, wrong value (PS3.5 §9.1 for UIDs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

VRPolicy = Literal["truncate", "reject"]

#: Maximum length in characters per VR (PS3.5 Table 6.2-1); PN: per component group.
MAX_LENGTH: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
    "UC": 2**31,
    "UT": 2**31,
    "UR": 2**31,
}

# Default character repertoire: no control characters except ESC (ISO 2022 escapes); no
# backslash in multi-valued VRs, where it separates values (PS3.5 §6.1.3, §6.2).
_BAD_SHORT = re.compile(r"[\x00-\x1a\x1c-\x1f\\]")
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # LT/ST/UT allow TAB LF FF CR
_CS_OK = re.compile(r"^[A-Z0-9 _]*$")
_UI_OK = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DA_OK = re.compile(r"^[0-9]{8}$")
_TM_OK = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_DT_OK = re.compile(
    r"^[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?"
    r"([+-][0-9]{4})?$"
)


class VRFault(ValueError):
    """A value breaks its VR's rules and the policy is ``reject`` (or it cannot be repaired)."""


class UnknownKeyword(KeyError):
    """Neither a DICOM keyword nor a ``GGGGEEEE`` tag."""


def resolve_attribute(name: str) -> tuple[str, str, str]:
    """``PatientName`` or ``00100010`` → (tag ``00100010``, keyword, VR); raises UnknownKeyword."""
    tag: int | None
    tag = int(name, 16) if re.fullmatch(r"[0-9A-Fa-f]{8}", name) else tag_for_keyword(name)
    if tag is None:
        raise UnknownKeyword(name)
    try:
        vr = dictionary_VR(tag)
    except KeyError as exc:
        raise UnknownKeyword(name) from exc
    vr = vr.split(" or ")[0]
    return f"{tag:08X}", keyword_for_tag(tag) or name, vr


def make_fixer(vr: str, policy: VRPolicy, label: str) -> Callable[[str], tuple[str, str]]:
    """Return ``fix(value) -> (value, warning)``; ``warning`` is "" when nothing was changed.

    ``label`` (the attribute keyword) goes into warnings and faults; values never do (PHI).
    """
    limit = MAX_LENGTH.get(vr, 2**31)
    truncate = policy == "truncate"

    if vr == "UI":

        def fix_ui(v: str) -> tuple[str, str]:
            if len(v) > 64 or not _UI_OK.match(v):
                raise VRFault(
                    f"{label}: found a value that is not a UID, expected digits and "
                    "dots, at most 64 characters (PS3.5 §9.1)"
                )
            return v, ""

        return fix_ui

    if vr in ("DA", "TM", "DT"):
        pattern = {"DA": _DA_OK, "TM": _TM_OK, "DT": _DT_OK}[vr]

        def fix_dt(v: str) -> tuple[str, str]:
            if not pattern.match(v):
                raise VRFault(f"{label}: found a value not in {vr} format (PS3.5 Table 6.2-1)")
            return v, ""

        return fix_dt

    if vr == "PN":

        def fix_pn(v: str) -> tuple[str, str]:
            groups = v.split("=")
            if len(groups) <= 3 and all(len(g) <= 64 for g in groups) and not _BAD_SHORT.search(v):
                return v, ""
            if not truncate:
                raise VRFault(
                    f"{label}: found a person name over 64 characters per component "
                    "group or with control characters, expected PN (PS3.5 §6.2.1)"
                )
            fixed = "=".join(_BAD_SHORT.sub(" ", g)[:64] for g in groups[:3])
            return fixed, f"{label}: person name truncated to 64 characters per group (PN)"

        return fix_pn

    bad = _BAD_TEXT if vr in ("LT", "ST", "UT") else _BAD_SHORT

    def fix(v: str) -> tuple[str, str]:
        if vr == "CS":
            v = v.upper()
            if len(v) <= limit and _CS_OK.match(v):
                return v, ""
        elif len(v) <= limit and not bad.search(v):
            return v, ""
        if not truncate:
            raise VRFault(
                f"{label}: found {len(v)} characters or characters not allowed, "
                f"expected {vr} of at most {limit} (PS3.5 Table 6.2-1)"
            )
        v = re.sub(r"[^A-Z0-9 _]", "_", v) if vr == "CS" else bad.sub(" ", v)
        return v[:limit], f"{label}: value truncated or repaired to fit {vr} (max {limit})"

    return fix


def to_json_value(vr: str, value: str) -> list[object]:
    """DICOM JSON ``Value`` for a (possibly backslash multi-valued) string (PS3.18 F.2.3)."""
    parts = value.split("\\") if vr not in ("LT", "ST", "UT") else [value]
    if vr == "PN":
        return [{"Alphabetic": p} if "=" not in p else _pn_groups(p) for p in parts]
    if vr == "IS":
        return [int(p) for p in parts]
    if vr == "DS":
        return [float(p) for p in parts]
    return list(parts)


def _pn_groups(value: str) -> dict[str, str]:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    return {k: g for k, g in zip(keys, value.split("="), strict=False) if g}
