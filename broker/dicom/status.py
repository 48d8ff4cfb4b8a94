"""DIMSE status codes: code → category, text and the PS3.4/PS3.7 annex that defines it.

Laid out as pynetdicom ``status.py`` is: one table per service class, each extended with the
general statuses of PS3.7 Annex C. The SCP only ever answers with codes from these tables, so a
log line or a test can say what a status means with :func:`describe`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Category(StrEnum):
    """Status categories of PS3.7 Annex C."""

    SUCCESS = "Success"
    PENDING = "Pending"
    CANCEL = "Cancel"
    WARNING = "Warning"
    FAILURE = "Failure"
    UNKNOWN = "Unknown"


class StatusInfo(NamedTuple):
    """What a status code means: its category, its text and where the standard defines it."""

    category: Category
    text: str
    annex: str


# Named codes used by the SCP (PS3.7 Annex C, PS3.4 K.4.1.1.4 and F.7.2).
SUCCESS = 0x0000
PENDING = 0xFF00  # PS3.4 K.4.1.1.4: matches are continuing, optional keys supported
PENDING_WARNING = 0xFF01  # ... one or more optional keys were not supported
CANCEL = 0xFE00  # PS3.4 K.4.1.1.4: matching terminated due to Cancel request
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.7; pynetdicom answers it for a failing N-* handler
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.9
UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.5.14
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 K.4.1.1.4
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_PROCESS = 0xC000
# pynetdicom service_class.py answers 0xC311 when a C-FIND handler raises: a code of the
# "Unable to process" range (Cxxx) of PS3.4 K.4.1.1.4; we follow it.
HANDLER_FAILURE = 0xC311

_C = Category

# PS3.7 Annex C: statuses that every service class may use.
GENERAL_STATUS: dict[int, StatusInfo] = {
    0x0000: StatusInfo(_C.SUCCESS, "Success", "PS3.7 C.1.1"),
    0x0105: StatusInfo(_C.FAILURE, "No such attribute", "PS3.7 C.4.1"),
    0x0106: StatusInfo(_C.FAILURE, "Invalid attribute value", "PS3.7 C.4.2"),
    0x0107: StatusInfo(_C.WARNING, "Attribute list error", "PS3.7 C.4.3"),
    0x0110: StatusInfo(_C.FAILURE, "Processing failure", "PS3.7 C.4.7"),
    0x0111: StatusInfo(_C.FAILURE, "Duplicate SOP instance", "PS3.7 C.4.8"),
    0x0112: StatusInfo(_C.FAILURE, "No such SOP instance", "PS3.7 C.4.9"),
    0x0113: StatusInfo(_C.FAILURE, "No such event type", "PS3.7 C.4.10"),
    0x0114: StatusInfo(_C.FAILURE, "No such argument", "PS3.7 C.4.11"),
    0x0115: StatusInfo(_C.FAILURE, "Invalid argument value", "PS3.7 C.4.12"),
    0x0116: StatusInfo(_C.WARNING, "Attribute value out of range", "PS3.7 C.4.13"),
    0x0117: StatusInfo(_C.FAILURE, "Invalid object instance", "PS3.7 C.4.14"),
    0x0118: StatusInfo(_C.FAILURE, "No such SOP class", "PS3.7 C.4.15"),
    0x0119: StatusInfo(_C.FAILURE, "Class-instance conflict", "PS3.7 C.4.16"),
    0x0120: StatusInfo(_C.FAILURE, "Missing attribute", "PS3.7 C.4.17"),
    0x0121: StatusInfo(_C.FAILURE, "Missing attribute value", "PS3.7 C.4.18"),
    0x0122: StatusInfo(_C.FAILURE, "Refused: SOP class not supported", "PS3.7 C.5.9"),
    0x0123: StatusInfo(_C.FAILURE, "No such action", "PS3.7 C.4.19"),
    0x0124: StatusInfo(_C.FAILURE, "Refused: not authorized", "PS3.7 C.5.21"),
    0x0210: StatusInfo(_C.FAILURE, "Duplicate invocation", "PS3.7 C.5.10"),
    0x0211: StatusInfo(_C.FAILURE, "Unrecognized operation", "PS3.7 C.5.14"),
    0x0212: StatusInfo(_C.FAILURE, "Mistyped argument", "PS3.7 C.5.15"),
    0x0213: StatusInfo(_C.FAILURE, "Resource limitation", "PS3.7 C.5.16"),
    0xFE00: StatusInfo(_C.CANCEL, "Cancel", "PS3.7 C.3"),
}

# Verification Service Class, PS3.4 Annex A: only the general statuses.
VERIFICATION_STATUS: dict[int, StatusInfo] = dict(GENERAL_STATUS)

# Basic Worklist Management Service Class, PS3.4 K.4.1.1.4 (C-FIND).
MODALITY_WORKLIST_STATUS: dict[int, StatusInfo] = {
    **GENERAL_STATUS,
    0xA700: StatusInfo(_C.FAILURE, "Refused: out of resources", "PS3.4 K.4.1.1.4"),
    0xA900: StatusInfo(_C.FAILURE, "Identifier does not match SOP class", "PS3.4 K.4.1.1.4"),
    0xFE00: StatusInfo(_C.CANCEL, "Matching terminated due to Cancel request", "PS3.4 K.4.1.1.4"),
    0xFF00: StatusInfo(
        _C.PENDING,
        "Matches are continuing; optional keys were supported as required keys",
        "PS3.4 K.4.1.1.4",
    ),
    0xFF01: StatusInfo(
        _C.PENDING,
        "Matches are continuing; one or more optional keys were not supported",
        "PS3.4 K.4.1.1.4",
    ),
}
# 0xCxxx: "Failed: unable to process" (PS3.4 K.4.1.1.4), a range.
for _code in range(0xC000, 0xD000):
    MODALITY_WORKLIST_STATUS[_code] = StatusInfo(_C.FAILURE, "Unable to process", "PS3.4 K.4.1.1.4")

# Modality Performed Procedure Step SOP Class, PS3.4 F.7.2.1.3 (N-CREATE) and F.7.2.2.3 (N-SET).
MPPS_STATUS: dict[int, StatusInfo] = {
    **GENERAL_STATUS,
    0x0001: StatusInfo(
        _C.WARNING, "Requested optional attributes are not supported", "PS3.4 F.7.2"
    ),
    0x0110: StatusInfo(
        _C.FAILURE,
        "Processing failure (e.g. performed procedure step may no longer be updated)",
        "PS3.4 F.7.2.2.3",
    ),
}


def category(code: int) -> Category:
    """Return the category of ``code`` by the ranges of PS3.7 Annex C (any service class)."""
    if code == 0x0000:
        return Category.SUCCESS
    if code in (0xFF00, 0xFF01):
        return Category.PENDING
    if code == 0xFE00:
        return Category.CANCEL
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return Category.WARNING
    if (
        0xA000 <= code <= 0xAFFF
        or 0xC000 <= code <= 0xCFFF
        or 0x0100 <= code <= 0x01FF
        or 0x0200 <= code <= 0x02FF
    ):
        return Category.FAILURE
    return Category.UNKNOWN


def describe(code: int, table: dict[int, StatusInfo] = GENERAL_STATUS) -> StatusInfo:
    """Return what ``code`` means in ``table``; codes not in it get their PS3.7 category."""
    info = table.get(code)
    if info is not None:
        return info
    return StatusInfo(category(code), f"Status 0x{code:04X}", "PS3.7 Annex C")
