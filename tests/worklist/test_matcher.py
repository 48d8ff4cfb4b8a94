"""PS3.4 C.2.2.2 matching rules, one hand case per rule, the clause cited beside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from broker.worklist import Key, compile_keys
from broker.worklist import item as wi
from broker.worklist.matcher import InvalidKey

Item = Callable[..., dict[str, Any]]


def step(*keys: Key) -> Key:
    return Key(wi.SPS_SEQUENCE, "SQ", None, (tuple(keys),))


def matches(item: dict[str, Any], *keys: Key) -> bool:
    return compile_keys(keys).matches(item)


# -- C.2.2.2.3 Universal Matching -------------------------------------------------------------


def test_universal_empty_value_matches_also_items_lacking_the_attribute(make_item: Item) -> None:
    item = make_item(accession="")
    del item["00080050"]
    assert matches(item, Key(wi.ACCESSION_NUMBER, "SH", ""))


def test_universal_star_is_universal_also_for_absent_attribute(make_item: Item) -> None:
    """C.2.2.2.4: Wild Card Matching on a value of '*' is equivalent to Universal Matching."""
    item = make_item()
    del item["00080050"]
    assert matches(item, Key(wi.ACCESSION_NUMBER, "SH", "*"))
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "*"))


def test_universal_sequence_zero_length_or_empty_item(make_item: Item) -> None:
    """C.2.2.2.6: a sequence key without matching keys in its item matches everything."""
    item = make_item()
    assert matches(item, Key(wi.SPS_SEQUENCE, "SQ", None, ()))
    assert matches(item, step())
    assert matches(item, step(Key(wi.MODALITY, "CS", "")))
    assert compile_keys([step(Key(wi.MODALITY, "CS", ""))]).predicates == ()


# -- C.2.2.2.1 Single Value Matching and Empty Value Matching ------------------------------------


def test_single_value_is_exact(make_item: Item) -> None:
    item = make_item(accession="A100")
    assert matches(item, Key(wi.ACCESSION_NUMBER, "SH", "A100"))
    assert not matches(item, Key(wi.ACCESSION_NUMBER, "SH", "A10"))


def test_single_value_ignores_non_significant_spaces(make_item: Item) -> None:
    """PS3.5 Table 6.2-1: SH/LO/CS/AE leading and trailing spaces are not significant."""
    item = make_item(accession=" A100 ")
    assert matches(item, Key(wi.ACCESSION_NUMBER, "SH", "A100 "))


@pytest.mark.parametrize(
    ("tag", "vr", "stored", "query"),
    [
        (wi.ACCESSION_NUMBER, "SH", "abc1", "ABC1"),
        (wi.PATIENT_ID, "LO", "pid7", "PID7"),
    ],
)
def test_single_value_is_case_sensitive_for_sh_lo(
    make_item: Item, tag: int, vr: str, stored: str, query: str
) -> None:
    """C.2.2.2.1: 'This matching is case-sensitive' for every VR except PN."""
    item = make_item(accession=stored, patient_id=stored)
    assert not matches(item, Key(tag, vr, query))
    assert matches(item, Key(tag, vr, stored))


def test_single_value_is_case_sensitive_for_ae_and_cs(make_item: Item) -> None:
    item = make_item(station="CT_ROOM1", modality="MR")
    assert not matches(item, step(Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "ct_room1")))
    assert not matches(item, step(Key(wi.MODALITY, "CS", "mr")))
    assert matches(item, step(Key(wi.MODALITY, "CS", "MR")))


def test_pn_is_case_insensitive(make_item: Item) -> None:
    """C.2.2.2.1: PN may be matched insensitive to case (our choice; wlmscpfs is sensitive)."""
    item = make_item(name="Müller^Jörg")
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "MÜLLER^JÖRG"))
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "müller^jörg^^"))
    assert not matches(item, Key(wi.PATIENT_NAME, "PN", "MULLER^JORG"))  # accents count


def test_pn_component_groups(make_item: Item) -> None:
    item = make_item(name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "YAMADA^TAROU"))
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "=山田^太郎"))
    assert not matches(item, Key(wi.PATIENT_NAME, "PN", "=山田^花子"))


def test_pn_single_value_is_literal_not_prefix(make_item: Item) -> None:
    assert not matches(make_item(name="SMITH^JOHN"), Key(wi.PATIENT_NAME, "PN", "SMITH"))


def test_empty_value_matching(make_item: Item) -> None:
    """C.2.2.2.1: a value of two QUOTATION MARKs matches absent or empty attributes only."""
    empty = make_item(accession="")
    absent = make_item()
    del absent["00080050"]
    full = make_item(accession="A1")
    key = Key(wi.ACCESSION_NUMBER, "SH", '""')
    assert matches(empty, key) and matches(absent, key) and not matches(full, key)


def test_non_universal_key_does_not_match_absent_attribute(make_item: Item) -> None:
    item = make_item()
    del item["00080050"]
    assert not matches(item, Key(wi.ACCESSION_NUMBER, "SH", "A1"))


def test_multi_valued_stored_attribute_matches_any_value(make_item: Item) -> None:
    item = make_item(station=["AA32", "AA33"])
    assert matches(item, step(Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "AA33")))
    assert not matches(item, step(Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "AA34")))


def test_specific_character_set_is_never_matched(make_item: Item) -> None:
    """C.2.2.2: Specific Character Set may be present in the identifier but is never matched."""
    assert matches(make_item(), Key(wi.SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192"))


# -- C.2.2.2.2 List of UID Matching -----------------------------------------------------------


def test_list_of_uids(make_item: Item) -> None:
    item = make_item(study_uid="1.2.3.4")
    assert matches(item, Key(wi.STUDY_INSTANCE_UID, "UI", "1.2.3.5\\1.2.3.4"))
    assert not matches(item, Key(wi.STUDY_INSTANCE_UID, "UI", "1.2.3.5\\1.2.3.6"))
    assert matches(item, Key(wi.STUDY_INSTANCE_UID, "UI", "1.2.3.4\0"))  # UI padding


# -- C.2.2.2.4 Wild Card Matching -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("A1*", True), ("*00", True), ("A?00", True), ("A??00", False), ("a1*", False),
     ("*", True), ("A*0*0", True), ("B*", False), ("A[0", False)],
)  # fmt: skip
def test_wildcards_on_sh_case_sensitive(make_item: Item, pattern: str, expected: bool) -> None:
    assert matches(make_item(accession="A100"), Key(wi.ACCESSION_NUMBER, "SH", pattern)) is expected


def test_wildcard_pn_case_insensitive(make_item: Item) -> None:
    item = make_item(name="Müller^Jörg")
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "mü*"))
    assert matches(item, Key(wi.PATIENT_NAME, "PN", "M?LLER^*"))
    assert not matches(item, Key(wi.PATIENT_NAME, "PN", "MU*"))


def test_wildcard_on_ae_in_sequence(make_item: Item) -> None:
    item = make_item(station="CT_ROOM1")
    assert matches(item, step(Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "CT_*")))
    assert not matches(item, step(Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "MR_*")))


def test_no_wildcards_on_uid(make_item: Item) -> None:
    """C.2.2.2.4 lists the VRs; UI is not one: '*' in a UID is literal."""
    assert not matches(make_item(study_uid="1.2.3"), Key(wi.STUDY_INSTANCE_UID, "UI", "1.2.*"))


def test_no_wildcards_on_dates(make_item: Item) -> None:
    with pytest.raises(InvalidKey):
        compile_keys([step(Key(wi.SPS_START_DATE, "DA", "2024*"))])


# -- C.2.2.2.5 Range Matching -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [("20240105", True), ("20240104", False), ("20240101-20240110", True),
     ("20240106-20240110", False), ("-20240105", True), ("-20240104", False),
     ("20240105-", True), ("20240106-", False)],
)  # fmt: skip
def test_date_ranges(make_item: Item, query: str, expected: bool) -> None:
    """C.2.2.2.5.1: 'A-B' inclusive, '-B' up to and including, 'A-' from and including."""
    key = step(Key(wi.SPS_START_DATE, "DA", query))
    assert matches(make_item(date="20240105"), key) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [("0930", True), ("093000", True), ("0931", False), ("0900-1000", True),
     ("-0929", False), ("-0930", True), ("0930-", True), ("093001-", False),
     ("09-", True), ("10-", False), ("093000.000000-093000.5", True)],
)  # fmt: skip
def test_time_ranges(make_item: Item, query: str, expected: bool) -> None:
    """C.2.2.2.5.2; a partial time names its whole precision ('0930' is 09:30:00-09:30:59)."""
    key = step(Key(wi.SPS_START_TIME, "TM", query))
    assert matches(make_item(time="093000"), key) is expected


def test_range_does_not_match_absent_value(make_item: Item) -> None:
    item = make_item(date="")
    assert not matches(item, step(Key(wi.SPS_START_DATE, "DA", "-20991231")))


def test_combined_datetime_range(make_item: Item) -> None:
    """C.2.2.2.5.4: date and time ranges together form one datetime range."""
    keys = (
        Key(wi.SPS_START_DATE, "DA", "20240105-20240107"),
        Key(wi.SPS_START_TIME, "TM", "1000-1800"),
    )
    early_first_day = make_item(date="20240105", time="0900")
    late_middle_day = make_item(date="20240106", time="2200")  # independent ranges: no match
    late_last_day = make_item(date="20240107", time="1900")
    assert not matches(early_first_day, step(*keys))
    assert matches(late_middle_day, step(*keys))
    assert not matches(late_last_day, step(*keys))
    assert matches(make_item(date="20240107", time="1800"), step(*keys))


def test_single_date_with_time_range_is_not_combined(make_item: Item) -> None:
    keys = (Key(wi.SPS_START_DATE, "DA", "20240105"), Key(wi.SPS_START_TIME, "TM", "1000-1200"))
    assert matches(make_item(date="20240105", time="1100"), step(*keys))
    assert not matches(make_item(date="20240105", time="1300"), step(*keys))


def test_invalid_range_values_are_refused() -> None:
    for value in ("2024-01", "20240110-20240101", "-", "abc"):
        with pytest.raises(InvalidKey):
            compile_keys([step(Key(wi.SPS_START_DATE, "DA", value))])
    with pytest.raises(InvalidKey):
        compile_keys([step(Key(wi.SPS_START_TIME, "TM", "25x"))])


def test_datetime_vr_range(make_item: Item) -> None:
    item = make_item()
    item["00404005"] = {"vr": "DT", "Value": ["20240105093000"]}
    assert matches(item, Key(0x00404005, "DT", "20240105-20240106"))
    assert matches(item, Key(0x00404005, "DT", "2024010509-"))
    assert not matches(item, Key(0x00404005, "DT", "-20240104"))


# -- C.2.2.2.6 Sequence Matching --------------------------------------------------------------


def test_sequence_keys_must_match_in_the_same_item(make_item: Item) -> None:
    item = make_item(modality="CT", station="CT1")
    mr = make_item(modality="MR", station="MR1")
    both = dict(item)
    both["00400100"] = {"vr": "SQ", "Value": item["00400100"]["Value"] + mr["00400100"]["Value"]}
    assert matches(
        both, step(Key(wi.MODALITY, "CS", "MR"), Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "MR1"))
    )
    assert not matches(
        both, step(Key(wi.MODALITY, "CS", "MR"), Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "CT1"))
    )


def test_sequence_key_does_not_match_item_without_sequence(make_item: Item) -> None:
    item = make_item()
    del item["00400100"]
    assert not matches(item, step(Key(wi.MODALITY, "CS", "CT")))
    assert matches(item, step(Key(wi.MODALITY, "CS", "")))


def test_nested_code_sequence_matching(make_item: Item) -> None:
    item = make_item()
    item["00321064"] = {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["XR123"]}}]}
    code = Key(0x00321064, "SQ", None, ((Key(0x00080100, "SH", "XR123"),),))
    other = Key(0x00321064, "SQ", None, ((Key(0x00080100, "SH", "XR999"),),))
    assert matches(item, code) and not matches(item, other)


def test_failures_name_the_excluding_keys(make_item: Item) -> None:
    m = compile_keys([Key(wi.ACCESSION_NUMBER, "SH", "X"), step(Key(wi.MODALITY, "CS", "MR"))])
    failing = [p.describe() for p in m.failures(make_item(accession="A", modality="CT"))]
    assert failing == [
        "AccessionNumber (single value)",
        "ScheduledProcedureStepSequence.Modality (single value)",
    ]
