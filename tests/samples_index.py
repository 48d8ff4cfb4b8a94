"""Index of the HL7 v2 sample messages in ``samples/`` so tests can refer to them by name.

Importable helper only (no tests here). Every value below is asserted against the files by the
samples' own check, and ``samples/README.md`` describes the scenario and quirks of each file.

Usage::

    from tests.samples_index import SAMPLES, read_sample

    sample = SAMPLES["orm_o01_v24"]
    text = read_sample("orm_o01_v24")  # decoded with the sample's charset
    assert sample.accessions == ("ACC26110011", "ACC26110012")
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

SAMPLES_DIR: Path = Path(__file__).resolve().parent.parent / "samples"

# MSH-18 value (or "ASCII" when MSH-18 is empty) -> Python codec used to decode the file.
CHARSET_CODECS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso-8859-1",
    "UNICODE UTF-8": "utf-8",
}


class Sample(NamedTuple):
    """One sample message file and the identifiers a test can assert against."""

    path: Path
    description: str
    message_type: str  # MSH-9.1
    trigger: str  # MSH-9.2
    version: str  # MSH-12
    charset: str  # MSH-18, "ASCII" when absent
    control_id: str  # MSH-10
    patient_id: str  # PID-3 first repetition, component 1
    accessions: tuple[str, ...] = ()  # OBR-18 of each OBR, in order
    placer_order_numbers: tuple[str, ...] = ()  # ORC-2/OBR-2 component 1, per order
    filler_order_numbers: tuple[str, ...] = ()  # ORC-3/OBR-3 component 1, per order
    study_uids: tuple[str, ...] = ()  # ZDS-1.1 or IPC-3
    order_control: str = ""  # ORC-1 (same for every ORC in the message)
    line_ending: str = "\r"  # segment separator used in the file

    @property
    def codec(self) -> str:
        """Python codec that decodes the file's bytes."""
        return CHARSET_CODECS[self.charset]


# Patient identifiers shared across files (PID-3.1, assigning authority HOSP).
HARTLEY_MRN = "MR100234"  # ORM v2.3.1 / XO / LF / A08 / ORU; retired by the A40 merge
HARTLEY_SURVIVING_MRN = "MR100199"  # survivor of the A40 merge
MUELLER_MRN = "MR200587"  # ORM v2.4 (8859/1) and its cancel
ASTROM_MRN = "MR300912"  # OMI v2.5.1 (UTF-8); old identifier in the A47
ASTROM_NEW_MRN = "MR300951"  # new identifier after the A47
OKAFOR_MRN = "MR400123"  # A01, A31
NAKAMURA_MRN = "MR500456"  # A04

HARTLEY_STUDY_UID = "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"
ASTROM_STUDY_UID = "1.2.826.0.1.3680043.2.1125.20261103091522.3009121"


def _p(name: str) -> Path:
    return SAMPLES_DIR / f"{name}.hl7"


SAMPLES: dict[str, Sample] = {
    "orm_o01_v231": Sample(
        path=_p("orm_o01_v231"),
        description="New CT head order (ORC-1 NW) from the RIS with ZDS StudyInstanceUID",
        message_type="ORM",
        trigger="O01",
        version="2.3.1",
        charset="ASCII",
        control_id="RIS26110200101",
        patient_id=HARTLEY_MRN,
        accessions=("ACC26110001",),
        placer_order_numbers=("PL20261102001",),
        filler_order_numbers=("FL20261102001",),
        study_uids=(HARTLEY_STUDY_UID,),
        order_control="NW",
    ),
    "orm_o01_lf": Sample(
        path=_p("orm_o01_lf"),
        description="orm_o01_v231 resent with LF segment separators and a new MSH-10",
        message_type="ORM",
        trigger="O01",
        version="2.3.1",
        charset="ASCII",
        control_id="RIS26110200102",
        patient_id=HARTLEY_MRN,
        accessions=("ACC26110001",),
        placer_order_numbers=("PL20261102001",),
        filler_order_numbers=("FL20261102001",),
        study_uids=(HARTLEY_STUDY_UID,),
        order_control="NW",
        line_ending="\n",
    ),
    "orm_o01_v231_xo": Sample(
        path=_p("orm_o01_v231_xo"),
        description="Order changed (ORC-1 XO): CT head rescheduled to 2026-11-03 14:15",
        message_type="ORM",
        trigger="O01",
        version="2.3.1",
        charset="ASCII",
        control_id="RIS26110200157",
        patient_id=HARTLEY_MRN,
        accessions=("ACC26110001",),
        placer_order_numbers=("PL20261102001",),
        filler_order_numbers=("FL20261102001",),
        study_uids=(HARTLEY_STUDY_UID,),
        order_control="XO",
    ),
    "orm_o01_v24": Sample(
        path=_p("orm_o01_v24"),
        description="Two ORC/OBR pairs (CT chest + CT abdomen), ISO-8859-1, escapes in OBR-13",
        message_type="ORM",
        trigger="O01",
        version="2.4",
        charset="8859/1",
        control_id="RIS26110200211",
        patient_id=MUELLER_MRN,
        accessions=("ACC26110011", "ACC26110012"),
        placer_order_numbers=("PL20261102011", "PL20261102012"),
        filler_order_numbers=("FL20261102011", "FL20261102012"),
        order_control="NW",
    ),
    "orm_o01_v24_cancel": Sample(
        path=_p("orm_o01_v24_cancel"),
        description="Cancel (ORC-1 CA) of the first order (CT chest) of orm_o01_v24",
        message_type="ORM",
        trigger="O01",
        version="2.4",
        charset="8859/1",
        control_id="RIS26110200234",
        patient_id=MUELLER_MRN,
        accessions=("ACC26110011",),
        placer_order_numbers=("PL20261102011",),
        filler_order_numbers=("FL20261102011",),
        order_control="CA",
    ),
    "omi_o23_v251": Sample(
        path=_p("omi_o23_v251"),
        description="OMI^O23 MR knee order with TQ1 and two IPC (two scheduled steps), UTF-8",
        message_type="OMI",
        trigger="O23",
        version="2.5.1",
        charset="UNICODE UTF-8",
        control_id="RIS26110300301",
        patient_id=ASTROM_MRN,
        accessions=("ACC26110021",),
        placer_order_numbers=("PL20261103021",),
        filler_order_numbers=("FL20261103021",),
        study_uids=(ASTROM_STUDY_UID,),
        order_control="NW",
    ),
    "adt_a01": Sample(
        path=_p("adt_a01"),
        description="Inpatient admission with NK1, AL1 (contrast allergy) and DG1",
        message_type="ADT",
        trigger="A01",
        version="2.5.1",
        charset="ASCII",
        control_id="EHR26110100011",
        patient_id=OKAFOR_MRN,
    ),
    "adt_a04": Sample(
        path=_p("adt_a04"),
        description="Outpatient registration for radiology with IN1",
        message_type="ADT",
        trigger="A04",
        version="2.3.1",
        charset="ASCII",
        control_id="EHR26110100024",
        patient_id=NAKAMURA_MRN,
    ),
    "adt_a08": Sample(
        path=_p("adt_a08"),
        description="Demographics update of orm_o01_v231's patient: name and birth date corrected",
        message_type="ADT",
        trigger="A08",
        version="2.3.1",
        charset="ASCII",
        control_id="EHR26110200087",
        patient_id=HARTLEY_MRN,
    ),
    "adt_a31": Sample(
        path=_p("adt_a31"),
        description="Person information update (new address, second phone) of adt_a01's patient",
        message_type="ADT",
        trigger="A31",
        version="2.4",
        charset="ASCII",
        control_id="EHR26110400031",
        patient_id=OKAFOR_MRN,
    ),
    "adt_a40": Sample(
        path=_p("adt_a40"),
        description="Merge: MR100234 (MRG-1, retired) into MR100199 (PID-3, surviving)",
        message_type="ADT",
        trigger="A40",
        version="2.5",
        charset="ASCII",
        control_id="EHR26110500040",
        patient_id=HARTLEY_SURVIVING_MRN,
    ),
    "adt_a47": Sample(
        path=_p("adt_a47"),
        description="Identifier change of omi_o23_v251's patient: MR300912 (MRG-1) -> MR300951",
        message_type="ADT",
        trigger="A47",
        version="2.5.1",
        charset="UNICODE UTF-8",
        control_id="EHR26110500047",
        patient_id=ASTROM_NEW_MRN,
    ),
    "oru_r01": Sample(
        path=_p("oru_r01"),
        description="Final CT head report for ACC26110001, OBX TX lines with escape sequences",
        message_type="ORU",
        trigger="R01",
        version="2.3.1",
        charset="ASCII",
        control_id="RPT26110300501",
        patient_id=HARTLEY_MRN,
        accessions=("ACC26110001",),
        placer_order_numbers=("PL20261102001",),
        filler_order_numbers=("FL20261102001",),
        order_control="RE",
    ),
}


def read_sample(name: str) -> str:
    """Return the sample's text decoded with its charset, line endings untouched."""
    sample = SAMPLES[name]
    return sample.path.read_bytes().decode(sample.codec)


def read_sample_cr(name: str) -> str:
    """Return the sample's text with every segment separator normalised to CR."""
    return read_sample(name).replace("\r\n", "\r").replace("\n", "\r")
