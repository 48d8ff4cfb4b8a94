"""Pre-encoded answers decode with pydicom to the item's values, in both syntaxes and sets."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import WorklistService
from broker.worklist.encode import answer_charset, encode_dataset, native_charset

from .conftest import encode_query

Item = Callable[..., dict[str, Any]]


def decode(raw: bytes, explicit: bool) -> Dataset:
    ds = read_dataset(BytesIO(raw), is_implicit_VR=not explicit, is_little_endian=True)
    ds.decode()
    return ds


def full_query(charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.ReferringPhysicianName = ""
    ds.AdmissionID = ""  # Type 2 key the item lacks: comes back empty
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_native_charset() -> None:
    def named(n: str) -> dict[str, Any]:
        return {"00100010": {"vr": "PN", "Value": [{"Alphabetic": n}]}}

    assert native_charset(named("SMITH")) == ""
    assert native_charset(named("MÜLLER")) == "ISO_IR 100"
    assert native_charset(named("ИВАНОВ")) == "ISO_IR 192"


def test_answer_charset_rules() -> None:
    assert answer_charset("", "ISO_IR 100") == ("ISO_IR 100", False)  # ASCII fits any set
    assert answer_charset("ISO_IR 100", "") == ("ISO_IR 100", False)
    assert answer_charset("ISO_IR 100", "ISO_IR 192") == ("ISO_IR 192", True)
    assert answer_charset("ISO_IR 192", "ISO_IR 100") == ("ISO_IR 192", False)  # cannot fit
    assert answer_charset("ISO_IR 192", "ISO_IR 144") == ("ISO_IR 144", True)  # tried
    assert answer_charset("ISO_IR 192", "ISO 2022 IR 87") == ("ISO_IR 192", False)


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize(
    ("name", "requested", "declared"),
    [
        ("SMITH^JOHN", "ISO_IR 100", "ISO_IR 100"),
        ("SMITH^JOHN", None, None),
        ("MÜLLER^JÖRG", None, "ISO_IR 100"),
        ("MÜLLER^JÖRG", "ISO_IR 100", "ISO_IR 100"),
        ("MÜLLER^JÖRG", "ISO_IR 192", "ISO_IR 192"),
        ("ИВАНОВ^ДМИТРИЙ", "ISO_IR 100", "ISO_IR 192"),  # Latin-1 cannot: UTF-8 declared
        ("ИВАНОВ^ДМИТРИЙ", "ISO_IR 144", "ISO_IR 144"),  # Cyrillic set asked and fits
        ("山田^太郎", "ISO_IR 144", "ISO_IR 192"),
    ],
)
def test_answers_decode_to_the_item(
    store: SqliteWorklistStore,
    make_item: Item,
    explicit: bool,
    name: str,
    requested: str | None,
    declared: str | None,
) -> None:
    latin1 = (
        not name.isascii() and native_charset({"x": {"vr": "PN", "Value": [name]}}) != "ISO_IR 192"
    )
    item = make_item(
        name=name, station=["AA32", "AA33"], physician="Ñandú^José" if latin1 else "HOUSE"
    )
    store.bulk_load([item])
    ident = encode_query(full_query(requested), explicit=explicit)
    answers = [
        a
        for b in WorklistService(store).find(ident, explicit_vr=explicit, calling_ae="X")
        for a in b
    ]
    assert len(answers) == 1
    ds = decode(answers[0], explicit)
    assert ds.get("SpecificCharacterSet") == declared
    assert str(ds.PatientName) == name
    assert ds.AccessionNumber == "A0001"
    assert ds.PatientBirthDate == "19700101"
    assert ds.ReferringPhysicianName == ""  # Type 2, empty in the item
    assert "AdmissionID" in ds and ds.AdmissionID == ""  # requested, unknown: present, empty
    assert "StudyInstanceUID" not in ds  # not requested: not returned
    step = ds.ScheduledProcedureStepSequence[0]
    assert list(step.ScheduledStationAETitle) == ["AA32", "AA33"]
    assert step.Modality == "CT" and step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert "ScheduledProcedureStepID" not in step  # only the requested sub-keys
    assert "ScheduledProcedureStepDescription" not in step


@pytest.mark.parametrize("explicit", [False, True])
def test_empty_sequence_item_returns_the_whole_step(
    store: SqliteWorklistStore, make_item: Item, explicit: bool
) -> None:
    store.bulk_load([make_item()])
    ds = Dataset()
    ds.PatientName = ""
    ds.ScheduledProcedureStepSequence = [Dataset()]
    ident = encode_query(ds, explicit=explicit)
    (answer,) = [
        a
        for b in WorklistService(store).find(ident, explicit_vr=explicit, calling_ae="X")
        for a in b
    ]
    step = decode(answer, explicit).ScheduledProcedureStepSequence[0]
    assert (
        step.ScheduledProcedureStepID == "SPS1"
        and step.ScheduledProcedureStepDescription == "CT HEAD"
    )


@pytest.mark.parametrize("explicit", [False, True])
def test_whole_item_round_trip(make_item: Item, explicit: bool) -> None:
    item = make_item(name="Lefèvre^Zoë")
    item["00101030"] = {"vr": "DS", "Value": [70.5]}
    item["00280010"] = {"vr": "US", "Value": [512]}
    raw = encode_dataset(item, "ISO_IR 100", explicit=explicit)
    ds = read_dataset(BytesIO(raw), is_implicit_VR=not explicit, is_little_endian=True)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.decode()
    back = ds.to_json_dict()
    assert back["00100010"] == item["00100010"]
    assert back["00280010"]["Value"] == [512]
    assert float(ds.PatientWeight) == 70.5
    assert back["00400100"]["Value"][0]["00400002"] == item["00400100"]["Value"][0]["00400002"]


@pytest.mark.parametrize("explicit", [False, True])
def test_one_walk_encodes_both_syntaxes(make_item: Item, explicit: bool) -> None:
    import struct

    from broker.worklist.encode import encode_both, encode_item

    item = make_item(name="Lefèvre^Zoë", station=["AA32", "AA33"])
    item["00100000"] = {"vr": "UL", "Value": [4]}  # group length: not sent
    both = encode_both(item, "ISO_IR 100")
    one = encode_item(item, "ISO_IR 100", explicit=explicit)
    assert both[explicit] == one
    ds = decode(one.blob, explicit)
    assert 0x00100000 not in ds
    assert str(ds.PatientName) == "Lefèvre^Zoë"
    step = ds.ScheduledProcedureStepSequence[0]
    assert list(step.ScheduledStationAETitle) == ["AA32", "AA33"]
    # too long for a short VR: explicit VR sends it as UN with a 4-byte length
    item["00081030"] = {"vr": "LO", "Value": ["X" * 70000]}
    blob = encode_both(item, "ISO_IR 100")[explicit].blob
    header = struct.pack("<HH", 0x0008, 0x1030) + (b"UN\0\0" if explicit else b"")
    assert header + struct.pack("<I", 70000) + b"X" * 70000 in blob
