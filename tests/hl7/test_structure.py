"""Structure validation with hl7apy (used by ``broker route``; never on the ingest path)."""

from __future__ import annotations

from broker.hl7.charset import decode_frame
from broker.hl7.structure import check_structure
from tests.samples_index import SAMPLES_DIR


def sample(name: str) -> str:
    return decode_frame((SAMPLES_DIR / name).read_bytes()).text


def test_standard_messages_pass() -> None:
    assert check_structure(sample("omi_o23_v251.hl7")).problems == []
    assert check_structure(sample("oru_r01.hl7")).checked


def test_hl7apy_orm_choice_false_positive_is_filtered() -> None:
    report = check_structure(sample("orm_o01_v231.hl7"))
    assert report.checked and report.problems == []


def test_missing_required_field_is_reported() -> None:
    text = "MSH|^~\\&|RIS|HOSP|B|R|2026||ADT^A08^ADT_A01|X1|P|2.5.1\rEVN|A08\rPID|1||123\r"
    report = check_structure(text)
    assert report.checked
    assert any("EVN_2" in p for p in report.problems)


def test_unknown_structure_is_said_not_raised() -> None:
    report = check_structure(sample("adt_a04.hl7"))  # v2.3.1 without MSH-9.3
    assert not report.checked and "MSH-9.3" in report.note
