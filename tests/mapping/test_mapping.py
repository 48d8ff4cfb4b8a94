"""Compiled mappings: groups, UIDs, policies, lookups, faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.hl7.message import Message
from broker.mapping import CompileError, MappingFault, MappingFile, compile_mapping, stable_uid
from broker.mapping.mapping import DicomMapping, HL7Mapping


def _obr(n: int, code: str, acc: str, rp: str, sps: str, start: str) -> str:
    f = [""] * 28
    f[0], f[1], f[2], f[3], f[4] = "OBR", str(n), "PL1", "FL1", code
    f[18], f[19], f[20], f[24], f[27] = acc, rp, sps, "CT", "^^^" + start
    return "|".join(f) + "\r"


ORM = (
    "MSH|^~\\&|RIS|HOSP|BROKER|HOSP|20260101120000||ORM^O01|C1|P|2.3.1\r"
    "PID|1||P1^^^HOSP||DOE^JOHN^Q^JR^DR||19700101|M\r"
    "ORC|NW|PL1|FL1||SC\r"
    + _obr(1, "CT001^CT HEAD^L", "ACC1", "RP1", "SPS1", "20260102083000")
    + "ZDS|1.2.3^RIS^Application^DICOM\r"
    "ORC|NW|PL1|FL1||SC\r" + _obr(2, "CT002^CT NECK^L", "ACC2", "RP2", "SPS2", "20260102090000")
)


def dicom(attrs: dict[str, Any], **kw: Any) -> DicomMapping:
    m = compile_mapping(
        MappingFile.model_validate({"name": "t", "each": "OBR", "attributes": attrs, **kw})
    )
    assert isinstance(m, DicomMapping)
    return m


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag].get("Value", [""])[0]


def test_groups_and_group_local_segments() -> None:
    m = dicom(
        {"AccessionNumber": "OBR-18", "StudyInstanceUID": {"from": "ZDS-1.1", "generate_uid": True}}
    )
    res = m.map(Message.parse(ORM))
    assert [value(i, "00080050") for i in res.items] == ["ACC1", "ACC2"]
    uid1, uid2 = (value(i, "0020000D") for i in res.items)
    assert uid1 == "1.2.3"
    # the second group has no ZDS: generated, never borrowed from the first group
    assert uid2.startswith("2.25.") and uid2 == value(
        m.map(Message.parse(ORM)).items[1], "0020000D"
    )


def test_stable_uid_with_root() -> None:
    uid = stable_uid("RIS^HOSP^PL1^RP1", "1.2.826.0.1.3680043.10.999")
    assert uid == stable_uid("RIS^HOSP^PL1^RP1", "1.2.826.0.1.3680043.10.999")
    assert len(uid) <= 64 and uid.startswith("1.2.826.0.1.3680043.10.999.")


def test_pn_and_required_fault() -> None:
    m = dicom(
        {
            "PatientName": {"from": "PID-5", "convert": "pn"},
            "PatientID": {"from": "PID-3.1", "required": True},
            "PatientBirthDate": {"from": "PID-7", "convert": "da"},
        }
    )
    item = m.map(Message.parse(ORM)).items[0]
    assert item["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN^Q^DR^JR"}]
    with pytest.raises(MappingFault) as fi:
        m.map(Message.parse(ORM.replace("P1^^^HOSP", "")))
    assert (fi.value.code, fi.value.location) == (101, "PID^1^3^1")
    with pytest.raises(MappingFault) as fd:
        m.map(Message.parse(ORM.replace("19700101", "19701301")))
    assert (fd.value.code, fd.value.location) == (102, "PID^1^7")
    assert "19701301" not in fd.value.text  # no patient values in ERR text


def test_missing_start_time_policies() -> None:
    attrs = {"ScheduledProcedureStepStartDate": {"from": "OBR-27.4", "convert": "da"}}
    msg = Message.parse(ORM.replace("^^^20260102083000", ""))
    with pytest.raises(MappingFault) as f:
        dicom(attrs).map(msg)
    assert f.value.code == 101 and f.value.location == "OBR^1^27^4"
    res = dicom(attrs, policies={"missing_start_time": "message_time"}).map(msg)
    assert value(res.items[0], "00400002") == "20260101"


def test_refuse_missing_uid() -> None:
    m = dicom(
        {"StudyInstanceUID": {"from": "ZDS-1.1", "generate_uid": True}},
        policies={"missing_study_uid": "refuse"},
    )
    with pytest.raises(MappingFault) as f:
        m.map(Message.parse(ORM))
    assert f.value.code == 101 and f.value.location.startswith("ZDS")


def test_lookup_csv_and_station_rules(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("code,modality,station_ae\nCT001,CT,CT_HEAD_AE\n")
    model = MappingFile.model_validate(
        {
            "name": "t",
            "each": "OBR",
            "tables": {"p": {"csv": "p.csv"}, "mod": {"inline": {"CT": "CT_ANY"}}},
            "attributes": {
                "ScheduledStationAETitle": {
                    "first": [
                        "IPC-9",
                        {"lookup": {"table": "p", "key": "OBR-4.1", "column": "station_ae"}},
                        {"lookup": {"table": "mod", "key": "OBR-24"}},
                    ]
                }
            },
        }
    )
    m = compile_mapping(model, tmp_path)
    assert isinstance(m, DicomMapping)
    items = m.map(Message.parse(ORM)).items
    assert [value(i, "00400001") for i in items] == ["CT_HEAD_AE", "CT_ANY"]


def test_vr_truncate_reports() -> None:
    m = dicom({"AccessionNumber": {"from": "OBR-4.2", "vr_policy": "truncate"}})
    res = m.map(Message.parse(ORM.replace("CT HEAD", "CT HEAD WITH A VERY LONG NAME")))
    assert len(value(res.items[0], "00080050")) == 16 and res.warnings


def test_compile_errors_name_references() -> None:
    with pytest.raises(CompileError) as e:
        dicom({"NoSuchKeyword": "PID-3", "PatientID": {"lookup": {"table": "x", "key": "PID-3"}}})
    locs = [loc for loc, _ in e.value.problems]
    assert ("attributes", "NoSuchKeyword") in locs
    assert ("attributes", "PatientID", "lookup", "table") in locs


def test_template_and_when() -> None:
    m = dicom(
        {
            "PatientComments": {
                "template": "{PID-5.1}, {PID-5.2}",
                "when": {"path": "ORC-1", "equals": "NW"},
            },
            "AdmissionID": {"template": "{PV1-19}/{PV1-20}"},
        }
    )
    item = m.map(Message.parse(ORM)).items[0]
    assert value(item, "00104000") == "DOE, JOHN"
    assert "Value" not in item["00380010"]  # every placeholder empty -> empty, not "/"


def test_hl7_outbound() -> None:
    m = compile_mapping(
        MappingFile.model_validate(
            {
                "name": "o",
                "kind": "hl7",
                "copy": ["PID", "ORC"],
                "attributes": {
                    "MSH-3": {"value": "BROKER"},
                    "ORC-1": {"value": "SC"},
                    "ORC-5": {"value": "IP"},
                    "ZZZ-2.3": {"value": "a|b"},
                },
            }
        )
    )
    assert isinstance(m, HL7Mapping)
    text = m.build(Message.parse(ORM))
    out = Message.parse(text)
    assert out.get("MSH-3") == "BROKER" and out.get("ORC-5") == "IP"
    assert out.get("ORC(2)-1") == "NW" and out.segment("OBR") is None
    assert out.get("ZZZ-2.3") == "a|b"  # escaped on output, decoded on read
