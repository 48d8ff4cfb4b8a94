"""The generated item builder (broker/mapping/codegen.py) gives exactly what the closures give.

Differential: the shipped mappings and a mapping using every feature, on the samples and on
fuzzed variants of them (escapes, ``&``/``~``/``^``, HL7 nulls, missing, duplicated and extra
segments, other delimiters, impossible dates, over-long values), by hand and by hypothesis.
Compared: the items, the warnings and the faults with their code, location and text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.hl7.message import Message
from broker.mapping import (
    DicomMapping,
    MappingFault,
    MappingFile,
    compile_mapping,
    generated_source,
)
from broker.routing import load_definitions

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples").glob("*.hl7"))
TEXTS = [
    p.read_bytes().decode("latin-1").replace("\r\n", "\r").replace("\n", "\r") for p in SAMPLES
]

EVERYTHING: dict[str, Any] = {
    "name": "everything",
    "each": "OBR",
    "split": "ORC",
    "uid_root": "1.2.826.0.1.3680043.10.999",
    "policies": {"missing_start_time": "message_time", "vr": "reject"},
    "tables": {
        "proc": {"inline": {"CT001": {"value": "CT", "ae": "CT_AE_1"}, "70450": "MR"}},
        "by_var": {"inline": {"1": "FIRST", "2": "SECOND"}},
    },
    "attributes": {
        "SpecificCharacterSet": {"value": "ISO_IR 192"},
        "PatientName": {"from": "PID-5", "convert": "pn", "vr_policy": "truncate"},
        "00100010": {"from": "PID-5", "convert": "pn", "components": [2, 1]},  # same tag
        "PatientID": {"from": "PID-3.1", "required": True},
        "OtherPatientIDs": "PID-3(*).1",
        "IssuerOfPatientID": "PID-3(2).4.1",
        "PatientBirthDate": {"from": "PID-7", "convert": "da"},
        "PatientBirthTime": {"from": "PID-7", "convert": "tm", "omit_empty": True},
        "PatientSex": {"from": "PID-8", "convert": "sex"},
        "EthnicGroup": {"from": "PID-8", "convert": "sex", "table": {"F": "W", "M": ""}},
        "PatientComments": {"from": "PID-5 | PID-6", "convert": "upper"},
        "PatientWeight": {"from": "PID-9", "omit_empty": True},
        "PatientAge": {"from": "PID-10.2", "vr_policy": "truncate"},
        "ReferringPhysicianName": {"from": "PV1-8", "convert": "xcn", "vr_policy": "truncate"},
        "AdmissionID": {"from": "PV1-19.1", "default": "NONE"},
        "CurrentPatientLocation": {"template": "{PV1-3.1}/{PV1-3.2} {$step_index}"},
        "AccessionNumber": {"from": "OBR-18 | OBR(2)-18 | 'NOACC'"},
        "PlacerOrderNumberImagingServiceRequest": "ORC-2.1 | OBR-2.1",
        "RequestingPhysician": {"from": "ORC-12 | OBR-16", "convert": "xcn"},
        "RequestedProcedureID": {"from": "OBR-19", "required": True},
        "StudyInstanceUID": {"from": "ZDS-1.1", "generate_uid": True},
        "RequestedProcedureDescription": {"from": "OBR-44.2 | OBR-4.2", "vr_policy": "truncate"},
        "RequestedProcedureComments": {"from": "MSH-2", "when": {"path": "ORC-1", "equals": "NW"}},
        "ReasonForTheRequestedProcedure": {"from": "MSH-1 | OBR-31"},
        "RequestedProcedureLocation": {"lookup": {"table": "by_var", "key": "$step_index"}},
        "NumberOfStudyRelatedInstances": {"from": "OBR-12", "omit_empty": True},
        "PatientSize": {"from": "OBR-13"},
        "InstitutionName": {"from": "PID", "omit_empty": True},
        "InstitutionAddress": {"from": "ZDS-1.2.2 | ZDS-1.3.1"},
        "StudyDate": {"from": "OBR-7", "convert": "dt"},
        "IssueDateOfImagingServiceRequest": {"from": "MSH-7", "convert": "da"},
        "IssueTimeOfImagingServiceRequest": {"from": "MSH-7.1", "convert": "tm"},
        "StudyID": {"from": "OBR-20.1.1", "vr_policy": "truncate"},
        "ImagingServiceRequestComments": {"from": "NTE-3", "omit_empty": True},
        "RequestedProcedurePriority": {"value": "lower", "convert": "upper"},
        "InstanceCreationDate": {"value": "20261301", "convert": "da"},
        "OrderCallbackPhoneNumber": {"default": ""},
        "RequestedProcedureCodeSequence": {
            "omit_empty": True,
            "items": {
                "CodeValue": "OBR-44.1 | OBR-4.1",
                "CodingSchemeDesignator": {"from": "OBR-4.3", "omit_empty": True},
                "CodeMeaning": {"from": "OBR-4.2", "vr_policy": "truncate"},
            },
        },
        "ReferencedStudySequence": {
            "when": {"path": "ZDS-1", "exists": True},
            "items": {"ReferencedSOPInstanceUID": "ZDS-1.1"},
        },
        "ScheduledProcedureStepSequence": {
            "items": {
                "ScheduledStationAETitle": {
                    "first": [
                        {"lookup": {"table": "proc", "key": "OBR-4.1", "column": "ae"}},
                        {"template": "{OBR-24}_AE"},
                        {"value": "DEFAULT_AE"},
                    ]
                },
                "ScheduledProcedureStepStartDate": {"from": "OBR-27.4 | ORC-7.4", "convert": "da"},
                "ScheduledProcedureStepStartTime": {"from": "OBR-27.4 | ORC-7.4", "convert": "tm"},
                "Modality": {"first": ["OBR-24", {"lookup": {"table": "proc", "key": "OBR-4.1"}}]},
                "ScheduledPerformingPhysicianName": {"from": "OBR-34.1.2", "omit_empty": False},
                "ScheduledProcedureStepID": {"from": "OBR-20", "required": True},
                "ScheduledProcedureStepLocation": {"from": "IPC-8", "omit_empty": True},
                "ScheduledProcedureStepStatus": "$order_status",
            }
        },
    },
}


def _mappings() -> list[DicomMapping]:
    defs = load_definitions(ROOT / "routes", ROOT / "mappings")
    out = [m for m in defs.mappings.values() if isinstance(m, DicomMapping)]
    for extra in ({}, {"timezone": "Europe/Paris"}, {"each": None, "split": None}):
        m = compile_mapping(MappingFile.model_validate({**EVERYTHING, **extra}))
        assert isinstance(m, DicomMapping)
        out.append(m)
    return out


MAPPINGS = _mappings()


def _run(mapping: DicomMapping, message: Message, generated: bool) -> Any:
    """(items, warnings) or the fault (code, location, text), per step."""
    try:
        scopes = mapping.scopes(message)
    except MappingFault as f:
        return ("scopes", f.code, f.location, f.text)
    out: list[Any] = []
    warnings: list[str] = []
    build = mapping.build if generated else mapping.build_reference
    for s in scopes:
        s.vars["order_status"] = "SCHEDULED"
        try:
            out.append(build(s, warnings))
        except MappingFault as f:
            out.append(("fault", f.code, f.location, f.text))
    return out, warnings


def assert_same(text: str, mappings: list[DicomMapping] = MAPPINGS) -> None:
    try:
        message = Message.parse(text)
    except Exception:
        return  # not a message: nothing reaches a mapping
    for m in mappings:
        want = _run(m, message, generated=False)
        got = _run(m, Message.parse(text), generated=True)
        assert got == want, (m.name, text)
        # and with the scope's caches filled by the other builder first
        assert _run(m, message, generated=True) == want


VALUES = [
    "",
    '""',
    "A",
    "a b",
    "A^B^C",
    "A~B^C~D",
    "A&B^C&D",
    "A\\T\\B",
    "A\\X41\\B^C",
    "^^X",
    "~X",
    "X~",
    "A^B&C&D~E",
    "20260230",
    "20261301083000",
    "2026110308",
    "202611030830",
    "20261103083000.1234+0100",
    "20261103083000-0500",
    "19580312",
    "2026",
    "1.2.3",
    "1.02.3",
    "X" * 70,
    "ÄÖÜ straße",
    "CT\x01HEAD",
    "tab\there",
    "12",
    "x=y=z=w",
    "^^^20261103093000^^S",
    "^^^2026^^R",
    "F",
    "m",
    "Q",
    "É",
    "ct",
    "CT-1",
    "AB CD",
    "1." + "2." * 40 + "3",
]
#: fields the mappings read: most edits land on one of them
READ = {
    "MSH": (7, 9),
    "PID": (3, 5, 6, 7, 8, 9, 10),
    "PV1": (3, 8, 19),
    "ORC": (1, 2, 3, 5, 7, 12),
    "OBR": (2, 4, 7, 12, 13, 16, 18, 19, 20, 24, 27, 31, 34, 44),
    "ZDS": (1,),
    "IPC": (1, 2, 3, 4, 5, 6, 7, 8, 9),
}


def _variants(text: str, seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    segs = [s for s in text.split("\r") if s]
    out = [
        text,
        "\r".join(segs[:-1]),  # last segment missing
        "\r".join(segs + segs[2:]),  # groups duplicated
        "\r".join([segs[0], "NTE|1||note", *segs[1:], "ZZZ|1|2"]),  # extra segments
        "\r".join(s for s in segs if not s.startswith(("ZDS", "PV1"))),
        text.replace("|", "#")
        .replace("^", "$")
        .replace("~", "*")
        .replace("\\&", "/%")
        .replace("&", "%"),
    ]
    for _ in range(n):
        s = list(segs)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(s))
            fields = s[i].split("|")
            read = READ.get(fields[0][:3])
            if read and rnd.random() < 0.8:
                f = rnd.choice(read)
            else:
                f = rnd.randrange(2 if i == 0 else 1, len(fields) + 3)
            fields += [""] * (f + 1 - len(fields))
            fields[f] = rnd.choice(VALUES)
            s[i] = "|".join(fields)
        if rnd.random() < 0.1:
            del s[rnd.randrange(1, len(s))]
        if rnd.random() < 0.1:
            j = rnd.randrange(1, len(s))
            s.insert(j, s[j])
        out.append("\r".join(s))
    return out


@pytest.mark.parametrize("sample", range(len(TEXTS)), ids=[p.stem for p in SAMPLES])
def test_generated_equals_closures_on_fuzzed_samples(sample: int) -> None:
    for text in _variants(TEXTS[sample], sample, 400):
        assert_same(text)


ORM = next(t for p, t in zip(SAMPLES, TEXTS, strict=True) if p.stem == "orm_o01_v231")
_ALPHABET = st.sampled_from([*'AZaz09 .^~&\\"|+-', "20261103", "0830", "\x07", "é"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 9),
            st.integers(1, 45),
            st.one_of(st.sampled_from(VALUES), st.lists(_ALPHABET, max_size=8).map("".join)),
        ),
        max_size=6,
    )
)
def test_generated_equals_closures_hypothesis(edits: list[tuple[int, int, str]]) -> None:
    segs = ORM.split("\r")
    for i, f, v in edits:
        i %= len(segs)
        fields = segs[i].split("|")
        if i == 0 and f < 2:
            continue
        fields += [""] * (f + 1 - len(fields))
        fields[f] = v.replace("\r", "")
        segs[i] = "|".join(fields)
    assert_same("\r".join(segs))


NASTY = "q'\"\"\"x\\\n}{ ' + __import__('os') + '"


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def test_mapping_strings_never_reach_the_source() -> None:
    """Quotes, backslashes and newlines in every kind of mapping string: same output, and none
    of it in the generated source (it is passed in through the function's globals)."""
    model = MappingFile.model_validate(
        {
            "name": NASTY,
            "each": "OBR",
            "tables": {"t": {"inline": {"70450": {"value": NASTY, NASTY: "col"}}}},
            "attributes": {
                "RequestedProcedureComments": {"value": NASTY},
                "PatientComments": {"template": "{PID-5.1}" + _braces(NASTY) + "{PID-5.2}"},
                "ImagingServiceRequestComments": {"from": "NTE-3", "default": NASTY},
                "ReasonForTheRequestedProcedure": {
                    "lookup": {"table": "t", "key": "OBR-4.1", "column": NASTY}
                },
                "StudyComments": {"lookup": {"table": "t", "key": "OBR-4.1"}},
                "PatientSex": {"from": "PID-8", "convert": "sex", "table": {"F": NASTY[:1]}},
                "AdmissionID": {"from": f"PV1-19 | '{NASTY.replace(chr(39), '')}'"},
            },
        }
    )
    m = compile_mapping(model)
    assert isinstance(m, DicomMapping)
    src = generated_source(m)
    assert src.startswith("# generated by broker.mapping.codegen")
    for piece in ("q'", "__import__", "\\\n", '"""'):
        assert piece not in src
    for text in _variants(ORM, 7, 50):
        assert_same(text, [m])
    items = m.map(Message.parse(ORM)).items
    assert items[0]["00401400"]["Value"] == [NASTY]  # RequestedProcedureComments (LT)
    assert items[0]["00401002"]["Value"] == ["col"]  # ReasonForTheRequestedProcedure


def test_generated_source_of_an_hl7_mapping_is_empty() -> None:
    defs = load_definitions(ROOT / "routes", ROOT / "mappings")
    hl7 = [m for m in defs.mappings.values() if not isinstance(m, DicomMapping)]
    assert hl7 and generated_source(hl7[0]) == ""
