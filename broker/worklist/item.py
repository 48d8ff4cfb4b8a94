"""The worklist item model: DICOM JSON in, index keys and PS3.4 validation out.

An item is one Modality Worklist entity (PS3.4 K.6.1): the patient, visit, imaging service
request and requested procedure attributes at top level, and one Scheduled Procedure Step in
the Scheduled Procedure Step Sequence (0040,0100). Items are kept as DICOM JSON
(PS3.18 F.2) with Unicode text; everything here is a pure function of that dict.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR

DicomJson = dict[str, Any]

# -- tags used by the worklist (PS3.4 Table K.6-1) -----------------------------------------
SPECIFIC_CHARACTER_SET = 0x00080005
ACCESSION_NUMBER = 0x00080050
MODALITY = 0x00080060
REFERRING_PHYSICIAN = 0x00080090
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
STUDY_INSTANCE_UID = 0x0020000D
REQUESTING_PHYSICIAN = 0x00321032
REQUESTED_PROCEDURE_DESCRIPTION = 0x00321060
REQUESTED_PROCEDURE_CODE_SEQUENCE = 0x00321064
SCHEDULED_STATION_AE_TITLE = 0x00400001
SPS_START_DATE = 0x00400002
SPS_START_TIME = 0x00400003
SCHEDULED_PERFORMING_PHYSICIAN = 0x00400006
SPS_DESCRIPTION = 0x00400007
SCHEDULED_PROTOCOL_CODE_SEQUENCE = 0x00400008
SPS_ID = 0x00400009
SCHEDULED_STATION_NAME = 0x00400010
SPS_LOCATION = 0x00400011
SPS_STATUS = 0x00400020
SPS_SEQUENCE = 0x00400100
REQUESTED_PROCEDURE_ID = 0x00401001

#: Value Representations whose text is affected by Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: VRs on which Wild Card Matching applies (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: Leading and trailing spaces are not significant (PS3.5 Table 6.2-1).
_STRIP_BOTH = frozenset({"AE", "CS", "DS", "IS", "LO", "SH", "AS"})


_TAG_KEYS: dict[int, str] = {}


def tag_key(tag: int) -> str:
    """The DICOM JSON key of a tag: eight upper-case hex digits."""
    key = _TAG_KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_TAG_KEYS) < 4096:
            _TAG_KEYS[tag] = key
    return key


def vr_of(tag: int, elem: DicomJson | None = None) -> str:
    """The element's VR: from the JSON element when given, else the data dictionary."""
    if elem is not None and "vr" in elem:
        return str(elem["vr"])
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def normalise(vr: str, text: str) -> str:
    """Drop the padding and spaces PS3.5 Table 6.2-1 calls not significant for ``vr``."""
    if vr in _STRIP_BOTH:
        return text.strip(" ")
    if vr == "UI":
        return text.rstrip("\0 ")
    return text.rstrip(" ")


def fold(text: str) -> str:
    """Upper-case without changing the length (so '?' still means one character)."""
    upper = text.upper()
    if len(upper) == len(text):
        return upper
    return "".join(c if len(c.upper()) != 1 else c.upper() for c in text)


_PN_TRAIL = re.compile(r"[\^ ]+$")


def pn_group_normalise(group: str) -> str:
    """One PN component group for matching: trailing '^' and spaces dropped, case folded."""
    return fold(_PN_TRAIL.sub("", group))


def pn_to_text(value: Any) -> str:
    """A DICOM JSON PN value ({"Alphabetic": ..}) as the DICOM string 'A=I=P'."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return ""
    groups = [
        str(value.get("Alphabetic", "")),
        str(value.get("Ideographic", "")),
        str(value.get("Phonetic", "")),
    ]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def pn_from_text(text: str) -> dict[str, str]:
    """The DICOM string 'A=I=P' as a DICOM JSON PN value."""
    parts = text.split("=")
    out: dict[str, str] = {}
    for name, part in zip(("Alphabetic", "Ideographic", "Phonetic"), parts, strict=False):
        if part:
            out[name] = part
    return out


def element(item: DicomJson, tag: int) -> DicomJson | None:
    """The JSON element of ``tag`` in ``item``, or None."""
    elem = item.get(tag_key(tag))
    return elem if isinstance(elem, dict) else None


def text_values(elem: DicomJson | None) -> list[str]:
    """The element's values as DICOM strings (PN as 'A=I=P'); [] when absent or empty."""
    if elem is None:
        return []
    values = elem.get("Value")
    if not values:
        return []
    if elem.get("vr") == "PN":
        return [pn_to_text(v) for v in values]
    return ["" if v is None else str(v) for v in values]


def first_text(item: DicomJson, tag: int) -> str:
    """The first value of ``tag`` normalised for its VR, or '' when absent or empty."""
    elem = item.get(tag_key(tag))
    if not isinstance(elem, dict):
        return ""
    values = elem.get("Value")
    if not values:
        return ""
    if type(values) is list:  # the first of text_values(elem) without building the list
        first = values[0]
        text = pn_to_text(first) if elem.get("vr") == "PN" else "" if first is None else str(first)
    else:
        text = text_values(elem)[0]
    return normalise(vr_of(tag, elem), text)


def sequence_items(item: DicomJson, tag: int) -> list[DicomJson]:
    """The items of a sequence element ([] when absent or empty)."""
    elem = element(item, tag)
    if elem is None:
        return []
    values = elem.get("Value") or []
    return [v for v in values if isinstance(v, dict)]


_NOT_TEXT = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"}
)


def iter_text(item: DicomJson) -> Iterator[tuple[str, str]]:
    """Every (VR, text) of the item's string elements, sequences included."""
    for elem in item.values():
        if not isinstance(elem, dict):
            continue
        vr = elem.get("vr")
        if vr == "SQ":
            for sub in elem.get("Value") or []:
                if isinstance(sub, dict):
                    yield from iter_text(sub)
        elif vr not in _NOT_TEXT:
            for text in text_values(elem):
                yield str(vr), text


# -- time values in a sortable form ----------------------------------------------------------

_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def tm_bounds(text: str) -> tuple[str, str] | None:
    """A TM value as the (earliest, latest) canonical 'HHMMSS.ffffff' it denotes.

    '0930' denotes 09:30:00.000000 to 09:30:59.999999 (a partial time covers its whole
    precision); None when the text is not a TM value (PS3.5 Table 6.2-1, colons tolerated).
    """
    match = _TM_RE.match(text.strip().replace(":", ""))
    if match is None:
        return None
    hh, mm, ss, frac = match.groups()
    lo = f"{hh}{mm or '00'}{ss or '00'}.{(frac or '').ljust(6, '0')}"
    if frac is not None:
        hi = f"{hh}{mm}{ss}.{frac.ljust(6, '9')}"
    else:
        hi = f"{hh}{mm or '59'}{ss or '59'}.999999"
    return lo, hi


def tm_canonical(text: str) -> str:
    """A stored TM value as canonical 'HHMMSS.ffffff' (its earliest moment); raw when invalid."""
    bounds = tm_bounds(text)
    return bounds[0] if bounds else text.strip()


_DA_RE = re.compile(r"^\d{8}$")


def da_canonical(text: str) -> str:
    """A DA value as 'YYYYMMDD' (ACR-NEMA 'YYYY.MM.DD' tolerated); raw when invalid."""
    text = text.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    return text


def is_date(text: str) -> bool:
    """True when ``text`` is a DA value 'YYYYMMDD'."""
    return bool(_DA_RE.match(text))


# -- index keys ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepKeys:
    """Index keys of one Scheduled Procedure Step and one of its station AE titles."""

    station_ae: str
    modality: str
    start_date: str
    start_time: str  # canonical HHMMSS.ffffff, '' when absent
    step_id: str
    status: str

    @property
    def start_datetime(self) -> str:
        """Date and time concatenated, for combined datetime matching (PS3.4 C.2.2.2.5)."""
        if not self.start_date:
            return ""
        return self.start_date + (self.start_time or "000000.000000")


@dataclass(frozen=True, slots=True)
class ItemKeys:
    """The columns a store indexes for one item (values normalised as the matcher sees them)."""

    accession: str
    patient_id: str
    issuer: str
    patient_name: str  # Alphabetic group, folded (PN matching is case-insensitive here)
    requested_procedure_id: str
    study_uid: str
    status: str
    steps: tuple[StepKeys, ...] = field(default_factory=tuple)

    @property
    def step_id(self) -> str:
        """ScheduledProcedureStepID of the first step ('' when none)."""
        return self.steps[0].step_id if self.steps else ""


def item_status(item: DicomJson) -> str:
    """The item's Scheduled Procedure Step Status (first step), '' when absent."""
    steps = sequence_items(item, SPS_SEQUENCE)
    return first_text(steps[0], SPS_STATUS) if steps else ""


def index_keys(item: DicomJson) -> ItemKeys:
    """The index keys of ``item``; one StepKeys per (step, station AE title value)."""
    steps: list[StepKeys] = []
    for sps in sequence_items(item, SPS_SEQUENCE):
        aes = [normalise("AE", v) for v in text_values(element(sps, SCHEDULED_STATION_AE_TITLE))]
        time = first_text(sps, SPS_START_TIME)
        # the step's keys once, then one StepKeys per station AE title
        modality = first_text(sps, MODALITY)
        start_date = da_canonical(first_text(sps, SPS_START_DATE))
        start_time = tm_canonical(time) if time else ""
        step_id = first_text(sps, SPS_ID)
        status = first_text(sps, SPS_STATUS)
        for ae in aes or [""]:
            steps.append(StepKeys(ae, modality, start_date, start_time, step_id, status))
    names = text_values(element(item, PATIENT_NAME))
    return ItemKeys(
        accession=first_text(item, ACCESSION_NUMBER),
        patient_id=first_text(item, PATIENT_ID),
        issuer=first_text(item, ISSUER_OF_PATIENT_ID),
        patient_name=pn_group_normalise(names[0].split("=")[0]) if names else "",
        requested_procedure_id=first_text(item, REQUESTED_PROCEDURE_ID),
        study_uid=first_text(item, STUDY_INSTANCE_UID),
        status=steps[0].status if steps else "",
        steps=tuple(steps),
    )


# -- validation against PS3.4 Table K.6-1 ----------------------------------------------------

#: Return Key Type 1 attributes at top level: a value is required (PS3.4 Table K.6-1).
REQUIRED_TOP: tuple[tuple[int, str], ...] = (
    (PATIENT_NAME, "PatientName"),
    (PATIENT_ID, "PatientID"),
    (STUDY_INSTANCE_UID, "StudyInstanceUID"),
    (REQUESTED_PROCEDURE_ID, "RequestedProcedureID"),
)
#: Return Key Type 1 attributes of the Scheduled Procedure Step item.
REQUIRED_STEP: tuple[tuple[int, str], ...] = (
    (SCHEDULED_STATION_AE_TITLE, "ScheduledStationAETitle"),
    (SPS_START_DATE, "ScheduledProcedureStepStartDate"),
    (SPS_START_TIME, "ScheduledProcedureStepStartTime"),
    (MODALITY, "Modality"),
    (SPS_ID, "ScheduledProcedureStepID"),
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One PS3.4 requirement an item does not meet; ``path`` names the attribute, no value."""

    path: str
    requirement: str

    def __str__(self) -> str:
        return f"{self.path}: {self.requirement}"


def validate(item: DicomJson) -> list[Problem]:
    """What PS3.4 Table K.6-1 requires of a worklist item and ``item`` lacks.

    Reports missing Type 1 values, unmet Type 1C conditions and a Scheduled Procedure Step
    Sequence that does not hold exactly one item (K.6.1.2.2). Type 2 attributes are not
    reported: an answer always carries them, empty when unknown. Returns [] for a good item.
    """
    problems: list[Problem] = []
    for tag, name in REQUIRED_TOP:
        if not first_text(item, tag):
            problems.append(Problem(f"{name} ({tag >> 16:04X},{tag & 0xFFFF:04X})", "Type 1"))
    if not first_text(item, REQUESTED_PROCEDURE_DESCRIPTION) and not sequence_items(
        item, REQUESTED_PROCEDURE_CODE_SEQUENCE
    ):
        problems.append(
            Problem(
                "RequestedProcedureDescription (0032,1060)",
                "Type 1C: required when Requested Procedure Code Sequence is absent",
            )
        )
    steps = sequence_items(item, SPS_SEQUENCE)
    if len(steps) != 1:
        problems.append(
            Problem(
                "ScheduledProcedureStepSequence (0040,0100)",
                f"Type 1 with exactly one item (K.6.1.2.2); found {len(steps)}",
            )
        )
    for index, sps in enumerate(steps):
        prefix = f"ScheduledProcedureStepSequence[{index}]."
        for tag, name in REQUIRED_STEP:
            if not first_text(sps, tag):
                problems.append(
                    Problem(f"{prefix}{name} ({tag >> 16:04X},{tag & 0xFFFF:04X})", "Type 1")
                )
        if not first_text(sps, SPS_DESCRIPTION) and not sequence_items(
            sps, SCHEDULED_PROTOCOL_CODE_SEQUENCE
        ):
            problems.append(
                Problem(
                    f"{prefix}ScheduledProcedureStepDescription (0040,0007)",
                    "Type 1C: required when Scheduled Protocol Code Sequence is absent",
                )
            )
    return problems
