"""Worklist items as analysts see them (``broker worklist ls/show``, the admin API): a row of
the attributes that identify an item, and patient attributes redacted unless asked for."""

from __future__ import annotations

from typing import Any

from broker.worklist.item import DicomJson

#: The columns of a summary row, by DICOM JSON tag: (column, tag, inside the SPS?).
COLUMNS = (
    ("accession", "00080050", False),
    ("patient_id", "00100020", False),
    ("modality", "00080060", True),
    ("station_ae", "00400001", True),
    ("start", "00400002", True),
    ("status", "00400020", True),
    ("procedure", "00321060", False),
)
#: Columns that carry patient data.
PHI_COLUMNS = frozenset({"patient_id"})
REDACTED = "<redacted>"


def value(item: DicomJson, tag: str, in_step: bool) -> str:
    """The first value of ``tag`` (in the first scheduled step when ``in_step``), as text."""
    if in_step:
        steps = (item.get("00400100") or {}).get("Value") or [{}]
        item = steps[0] if isinstance(steps[0], dict) else {}
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))
    return str(first)


def summary_row(item_id: int, item: DicomJson, *, show_phi: bool = False) -> dict[str, Any]:
    """``{"id", "accession", "patient_id", "modality", "station_ae", "start", "status",
    "procedure"}``; the patient ID redacted unless ``show_phi``."""
    row: dict[str, Any] = {"id": item_id}
    for name, tag, in_step in COLUMNS:
        text = value(item, tag, in_step)
        row[name] = REDACTED if name in PHI_COLUMNS and text and not show_phi else text
    return row


def redact(item: Any) -> Any:
    """A copy of DICOM JSON with patient attributes (group 0010) replaced."""
    if isinstance(item, dict):
        out: dict[str, Any] = {}
        for key, element in item.items():
            if isinstance(key, str) and key.startswith("0010") and isinstance(element, dict):
                out[key] = {"vr": element.get("vr"), "Value": [REDACTED]}
            else:
                out[key] = redact(element)
        return out
    if isinstance(item, list):
        return [redact(v) for v in item]
    return item


__all__ = ["COLUMNS", "PHI_COLUMNS", "REDACTED", "redact", "summary_row", "value"]
