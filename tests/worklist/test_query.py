"""Identifier parsing from bytes, the planner, and planner+SQL against a slow oracle."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from broker.storage.sqlite_worklist import SqliteWorklistStore, build_sql
from broker.worklist import QueryError, WorklistService, parse_identifier, plan
from broker.worklist import item as wi
from broker.worklist.query import MalformedIdentifier

from .conftest import encode_query, load_worklist_data, open_store


def mwl_query(**step_keys: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.PatientID = ""
    sps = Dataset()
    for name, value in step_keys.items():
        setattr(sps, name, value)
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [False, True])
def test_parse_reads_keys_and_sequence_in_both_syntaxes(explicit: bool) -> None:
    ds = mwl_query(
        Modality="MR", ScheduledStationAETitle="AE1", ScheduledProcedureStepStartDate="20240101-"
    )
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "MÜLLER*"
    q = parse_identifier(encode_query(ds, explicit=explicit), explicit=explicit)
    assert q.charset == "ISO_IR 100"
    by_tag = {k.tag: k for k in q.keys}
    assert (by_tag[wi.PATIENT_NAME].value or "").rstrip() == "MÜLLER*"
    assert by_tag[wi.PATIENT_NAME].vr == "PN"
    step = {k.tag: (k.value or "").rstrip() for k in q.step_keys()}
    assert step == {
        wi.MODALITY: "MR",
        wi.SCHEDULED_STATION_AE_TITLE: "AE1",
        wi.SPS_START_DATE: "20240101-",
    }


def test_parse_undefined_length_sequence_and_items() -> None:
    # (0040,0100) SQ undefined length, one undefined-length item holding (0008,0060) CS "CT"
    elem = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
    data = (
        struct.pack("<HH2sHI", 0x0040, 0x0100, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + elem
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    q = parse_identifier(data, explicit=True)
    assert [(k.tag, k.value) for k in q.step_keys()] == [(wi.MODALITY, "CT")]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x10\x00\x10\x00PN\x10\x00AB", 0xC000),  # value overruns the data
        (b"\x10\x00\x10", 0xC000),  # truncated header
        (struct.pack("<HH2sHI", 0x40, 0x100, b"SQ", 0, 0xFFFFFFFF), 0xC000),  # no delimiter
        (struct.pack("<HH2sH", 0x40, 0x100, b"SH", 2) + b"AB", 0xA900),  # SPS not a sequence
        (b"\x10\x00\x10\x00\x01\x02\x00\x00", 0xC000),  # VR not letters
    ],
)
def test_malformed_identifiers_get_a_status(data: bytes, status: int) -> None:
    with pytest.raises(MalformedIdentifier) as info:
        parse_identifier(data, explicit=True)
    assert info.value.status == status


def test_two_items_in_a_sequence_key_are_refused() -> None:
    ds = mwl_query(Modality="CT")
    ds.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(MalformedIdentifier) as info:
        parse_identifier(encode_query(ds, explicit=True), explicit=True)
    assert info.value.status == 0xA900


# -- planning -------------------------------------------------------------------------------


def test_plan_picks_the_most_selective_index() -> None:
    ds = mwl_query(
        Modality="CT", ScheduledStationAETitle="STN01", ScheduledProcedureStepStartDate="20240101"
    )
    ds.AccessionNumber = "ACC1"
    p = plan(parse_identifier(encode_query(ds, explicit=True), explicit=True))
    assert p.driver == "accession" and p.exact
    ds.AccessionNumber = ""
    p = plan(parse_identifier(encode_query(ds, explicit=True), explicit=True))
    assert p.driver == "station_ae" and p.exact
    sql, _ = build_sql(p, explicit=True, with_json=False)
    assert "+s.modality" in sql and "s.station_ae = ?" in sql


def test_plan_is_inexact_for_keys_without_index() -> None:
    ds = mwl_query(Modality="CT")
    ds.PatientSex = "F"
    p = plan(parse_identifier(encode_query(ds, explicit=True), explicit=True))
    assert not p.exact
    assert [c.field for c in p.step] == ["modality"]


def test_sqlite_uses_the_indexes(store: SqliteWorklistStore) -> None:
    ds = mwl_query(ScheduledStationAETitle="STN01", ScheduledProcedureStepStartDate="20240101")
    p = plan(parse_identifier(encode_query(ds, explicit=True), explicit=True))
    sql, args = build_sql(p, explicit=True, with_json=False)
    detail = " ".join(r[-1] for r in store.db.reader().execute("EXPLAIN QUERY PLAN " + sql, args))
    assert "wl_steps_station" in detail and "SCAN" not in detail.replace("SCAN CONSTANT", "")


# -- planner + SQL against a slow oracle ----------------------------------------------------

STATIONS = ["STN01", "STN02", "stn01", "CT_A"]
MODALITIES = ["CT", "MR", "US"]
DATES = ["20240101", "20240102", "20240103", ""]
TIMES = ["0800", "120000", "173000.5", ""]
NAMES = ["MÜLLER^JÖRG", "müller^anna", "SMITH^JOHN", "ΠΑΠΑΣ^ΕΛΕΝΗ", "SMITHSON", ""]
ACCESSIONS = ["A1", "A2", "a1", "B10", ""]
STATUSES = ["SCHEDULED", "STARTED", "COMPLETED", ""]


def _oracle_items() -> list[dict[str, Any]]:
    make = load_worklist_data().make_item
    items = []
    n = 0
    for station in STATIONS:
        for modality in MODALITIES:
            for date in DATES:
                for i, time in enumerate(TIMES):
                    n += 1
                    items.append(
                        make(
                            accession=ACCESSIONS[(n + i) % len(ACCESSIONS)],
                            name=NAMES[n % len(NAMES)],
                            patient_id=f"P{n % 7}",
                            station=station if n % 11 else [station, "EXTRA"],
                            modality=modality,
                            date=date,
                            time=time,
                            sps_id=f"S{n}",
                            rp_id=f"R{n}",
                            study_uid=f"1.2.3.{n}",
                            status=STATUSES[n % len(STATUSES)],
                        )
                    )
    return items


def _oracle_text(stored: str, query: str, *, fold: bool = False) -> bool:
    """Slow, independent re-statement of C.2.2.2.1/C.2.2.2.4 for SH/AE/CS/PN."""
    if query in ("", "*"):
        return True
    if query == '""':
        return stored == ""
    if fold:
        stored, query = stored.upper(), query.upper()
        stored, query = stored.rstrip("^ "), query.rstrip("^ ")
    if "*" in query or "?" in query:
        return fnmatch.fnmatchcase(stored, query.replace("[", "[[]"))
    return stored == query


def _oracle_range(stored: str, query: str, width: int) -> bool:
    if query == "":
        return True
    if not stored:
        return False
    lo, _, hi = query.partition("-") if "-" in query else (query, "", query)
    value = stored.split(".")[0].ljust(width, "0")
    return (not lo or value >= lo.ljust(width, "0")) and (not hi or value <= hi.ljust(width, "9"))


def _oracle(item: dict[str, Any], q: dict[str, str]) -> bool:
    status = wi.item_status(item)
    if status not in ("", "SCHEDULED", "ARRIVED", "READY", "STARTED"):
        return False
    name = (wi.text_values(wi.element(item, wi.PATIENT_NAME)) or [""])[0]
    if not _oracle_text(wi.first_text(item, wi.ACCESSION_NUMBER), q["accession"]):
        return False
    if not _oracle_text(name, q["name"], fold=True):
        return False
    sps = wi.sequence_items(item, wi.SPS_SEQUENCE)[0]
    stations = wi.text_values(wi.element(sps, wi.SCHEDULED_STATION_AE_TITLE)) or [""]
    if not any(_oracle_text(s, q["station"]) for s in stations):
        return False
    if not _oracle_text(wi.first_text(sps, wi.MODALITY), q["modality"]):
        return False
    date, time = wi.first_text(sps, wi.SPS_START_DATE), wi.first_text(sps, wi.SPS_START_TIME)
    if "-" in q["date"] and "-" in q["time"]:  # combined datetime (C.2.2.2.5.4)
        if not date:
            return False
        lo_d, _, hi_d = q["date"].partition("-")
        lo_t, _, hi_t = q["time"].partition("-")
        moment = date + (time.split(".")[0].ljust(6, "0") if time else "000000")
        lo = lo_d + lo_t.ljust(6, "0") if lo_d else ""
        hi = hi_d + (hi_t or "235959").ljust(6, "9") if hi_d else ""
        return (not lo or moment >= lo) and (not hi or moment <= hi)
    return _oracle_range(date, q["date"], 8) and _oracle_range(time, q["time"], 6)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def oracle_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorklistService, list[dict[str, Any]]]]:
    """Each store backend with the oracle's items: both must answer as the oracle does."""
    with open_store(request.param, Path(tmp_path_factory.mktemp("oracle"))) as store:
        items = _oracle_items()
        store.bulk_load(items)
        yield WorklistService(store, batch_size=7), items


def text_key(values: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "*", '""']),
        st.sampled_from(values),
        st.sampled_from(values).map(lambda v: v[:2] + "*" if v else "*"),
        st.sampled_from(values).map(lambda v: "?" + v[1:] if v else "?"),
    )


queries = st.fixed_dictionaries(
    {
        "accession": text_key(ACCESSIONS),
        "name": text_key(NAMES),
        "station": text_key(STATIONS),
        "modality": st.one_of(st.just(""), st.sampled_from(MODALITIES)),
        "date": st.one_of(
            st.just(""),
            st.sampled_from(DATES[:3]),
            st.tuples(st.sampled_from(["", *DATES[:3]]), st.sampled_from(["", *DATES[:3]]))
            .filter(lambda t: any(t) and (not all(t) or t[0] <= t[1]))
            .map(lambda t: f"{t[0]}-{t[1]}"),
        ),
        "time": st.one_of(
            st.just(""),
            st.tuples(
                st.sampled_from(["", "08", "0800", "1200", "173000"]),
                st.sampled_from(["", "0800", "12", "1730", "235959"]),
            )
            .filter(lambda t: any(t) and (not all(t) or t[0].ljust(6, "0") <= t[1].ljust(6, "9")))
            .map(lambda t: f"{t[0]}-{t[1]}"),
        ),
    }
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=queries, explicit=st.booleans())
def test_planner_and_sql_agree_with_the_oracle(
    oracle_env: tuple[WorklistService, list[dict[str, Any]]], q: dict[str, str], explicit: bool
) -> None:
    service, items = oracle_env
    ds = mwl_query(
        ScheduledStationAETitle=q["station"],
        Modality=q["modality"],
        ScheduledProcedureStepStartDate=q["date"],
        ScheduledProcedureStepStartTime=q["time"],
        ScheduledProcedureStepID="",
    )
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = q["accession"]
    ds.PatientName = q["name"]
    got = []
    for batch in service.find(
        encode_query(ds, explicit=explicit), explicit_vr=explicit, calling_ae="X"
    ):
        assert len(batch) <= 7
        got.extend(batch)
    expected = sorted(
        wi.first_text(wi.sequence_items(i, wi.SPS_SEQUENCE)[0], wi.SPS_ID)
        for i in items
        if _oracle(i, q)
    )
    from io import BytesIO

    from pydicom.filereader import read_dataset

    found = sorted(
        read_dataset(BytesIO(a), not explicit, True)
        .ScheduledProcedureStepSequence[0]
        .ScheduledProcedureStepID
        for a in got
    )
    assert found == expected


# -- service behaviour ----------------------------------------------------------------------


def test_calling_ae_as_station(
    store: SqliteWorklistStore, make_item: Callable[..., dict[str, Any]]
) -> None:
    store.bulk_load(
        [make_item(station="CT1", accession="A"), make_item(station="MR1", accession="B")]
    )
    ds = mwl_query(ScheduledStationAETitle="")
    ident = encode_query(ds, explicit=True)
    plain = WorklistService(store)
    assert sum(len(b) for b in plain.find(ident, explicit_vr=True, calling_ae="MR1")) == 2
    as_station = WorklistService(store, calling_ae_as_station=True)
    assert sum(len(b) for b in as_station.find(ident, explicit_vr=True, calling_ae="MR1")) == 1
    ds.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "CT1"
    ident = encode_query(ds, explicit=True)
    assert sum(len(b) for b in as_station.find(ident, explicit_vr=True, calling_ae="MR1")) == 1


def test_query_error_before_any_answer(store: SqliteWorklistStore) -> None:
    ds = mwl_query(ScheduledProcedureStepStartDate="20240110-20240101")
    with pytest.raises(QueryError) as info:
        WorklistService(store).find(
            encode_query(ds, explicit=True), explicit_vr=True, calling_ae="X"
        )
    assert info.value.status == 0xC001
    assert "2024" not in info.value.comment  # names the tag, not the value


def test_finished_items_leave_the_results(
    store: SqliteWorklistStore, make_item: Callable[..., dict[str, Any]]
) -> None:
    today = _dt.date.today().strftime("%Y%m%d")
    store.bulk_load(
        [
            make_item(status=s, sps_id=s, date=today)
            for s in (
                "SCHEDULED",
                "ARRIVED",
                "READY",
                "STARTED",
                "COMPLETED",
                "DISCONTINUED",
                "CANCELED",
                "",
            )
        ]
    )
    ident = encode_query(mwl_query(ScheduledProcedureStepID=""), explicit=False)
    from io import BytesIO

    from pydicom.filereader import read_dataset

    got = sorted(
        read_dataset(BytesIO(a), True, True)
        .ScheduledProcedureStepSequence[0]
        .ScheduledProcedureStepID
        for b in WorklistService(store).find(ident, explicit_vr=False, calling_ae="X")
        for a in b
    )
    assert got == sorted(["SCHEDULED", "ARRIVED", "READY", "STARTED", ""])
