"""Message structure validation with hl7apy, off the hot path (``broker route``).

hl7apy knows every HL7 v2 message structure but parses at ~170 msg/s here, so it never runs
on ingest; the dry run uses it to tell the analyst where a message departs from the standard.
Its findings are warnings: real feeds deviate and the broker routes them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

#: hl7apy models the ORM^O01 order-detail choice (OBR | RQD | RQ1 | RXO | ODS | ODT, HL7 v2.3.1
#: §4.4.1) as a group whose every member is required, so every radiology ORM "lacks" RQD.
_KNOWN_FALSE_POSITIVES = ("ORM_O01_CHOICE",)


@dataclass(frozen=True, slots=True)
class StructureReport:
    """``checked`` False when hl7apy could not take the message at all (``note`` says why)."""

    checked: bool
    problems: list[str] = field(default_factory=list)
    note: str = ""


def check_structure(text: str) -> StructureReport:
    """Validate segment order, groups and cardinality against the standard structure."""
    normalised = text.replace("\r\n", "\r").replace("\n", "\r")
    try:
        message = parse_message(
            normalised, find_groups=True, validation_level=VALIDATION_LEVEL.TOLERANT
        )
    except HL7apyException as exc:
        return StructureReport(False, note=f"hl7apy could not parse the message: {exc}")
    except (AttributeError, KeyError, ValueError) as exc:
        # hl7apy needs MSH-9.3 (the structure) for some events of v2.3.1 and earlier.
        return StructureReport(
            False,
            note="hl7apy could not determine the message structure (is MSH-9.3 empty?): "
            f"{type(exc).__name__}",
        )
    try:
        message.validate()
    except (AttributeError, KeyError) as exc:
        return StructureReport(
            False,
            note="hl7apy could not determine the message structure (is MSH-9.3 empty?): "
            f"{type(exc).__name__}",
        )
    except HL7apyException as exc:
        problems = [
            line.strip()
            for line in str(exc).splitlines()
            if line.strip() and not any(fp in line for fp in _KNOWN_FALSE_POSITIVES)
        ]
        return StructureReport(True, problems)
    return StructureReport(True)
