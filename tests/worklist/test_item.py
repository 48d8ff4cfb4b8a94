"""The item model: index keys and PS3.4 Table K.6-1 validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.worklist import index_keys, validate
from broker.worklist.item import tm_bounds

Item = Callable[..., dict[str, Any]]


def test_index_keys_normalise_as_the_matcher_does(make_item: Item) -> None:
    keys = index_keys(
        make_item(accession=" A1 ", name="Müller^Jörg^^", station=["AE1", "AE2"], time="0930")
    )
    assert keys.accession == "A1"
    assert keys.patient_name == "MÜLLER^JÖRG"
    assert [s.station_ae for s in keys.steps] == ["AE1", "AE2"]
    assert keys.steps[0].start_time == "093000.000000"
    assert keys.steps[0].start_datetime == "20240105093000.000000"


def test_complete_item_has_no_problems(make_item: Item) -> None:
    assert validate(make_item()) == []


def test_missing_type_1_values_are_named_without_values(make_item: Item) -> None:
    item = make_item(patient_id="", station="", sps_id="")
    del item["0020000D"]
    problems = [str(p) for p in validate(item)]
    assert problems == [
        "PatientID (0010,0020): Type 1",
        "StudyInstanceUID (0020,000D): Type 1",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle (0040,0001): Type 1",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID (0040,0009): Type 1",
    ]


def test_type_1c_and_step_count(make_item: Item) -> None:
    item = make_item(description="")
    del item["00400100"]
    problems = [p.path for p in validate(item)]
    assert "RequestedProcedureDescription (0032,1060)" in problems
    assert "ScheduledProcedureStepSequence (0040,0100)" in problems


def test_time_bounds() -> None:
    assert tm_bounds("09") == ("090000.000000", "095959.999999")
    assert tm_bounds("10:30") == ("103000.000000", "103059.999999")
    assert tm_bounds("103000.5") == ("103000.500000", "103000.599999")
    assert tm_bounds("1x") is None
