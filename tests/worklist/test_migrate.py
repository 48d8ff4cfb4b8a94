"""Import of worklist files (every file an item, a report of what PS3.4 lacks) and export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import export_items, import_files, read_worklist_file

Item = Callable[..., dict[str, Any]]


def test_round_trip_keeps_every_item_as_it_was(
    store: SqliteWorklistStore, make_item: Item, tmp_path: Path
) -> None:
    items = [
        make_item(name="Müller^Jörg", accession="A1"),
        make_item(name="ИВАНОВ^ДМИТРИЙ", accession="A2"),
        make_item(name="SMITH^JOHN", accession="A1"),  # same accession: not merged
    ]
    ids = store.bulk_load(items)
    files = export_items(store.items(), tmp_path / "BROKER")
    assert (tmp_path / "BROKER" / "lockfile").exists() and len(files) == 3
    assert [read_worklist_file(f) for f in files] == items

    report = import_files(store, [tmp_path / "BROKER"])
    assert report.imported == 3 and not report.incomplete and not report.failed
    assert store.count() == 6
    again = [store.get(f.item_id)["item"] for f in report.files if f.item_id]  # type: ignore[index]
    assert again == items and len(ids) == 3


def test_report_names_missing_values_and_unreadable_files(
    store: SqliteWorklistStore, make_item: Item, tmp_path: Path
) -> None:
    incomplete = make_item(patient_id="", sps_id="")
    export_items([(1, incomplete)], tmp_path / "in")
    (tmp_path / "in" / "broken.wl").write_bytes(b"not dicom at all")
    report = import_files(store, [tmp_path / "in"])
    assert report.imported == 1 and len(report.failed) == 1  # imported anyway, reported
    lines = report.lines()
    assert lines[0] == "1 of 2 files imported"
    assert any("PatientID (0010,0020): Type 1" in line for line in lines)
    assert any("ScheduledProcedureStepID (0040,0009): Type 1" in line for line in lines)
    assert any("broken.wl: not imported" in line for line in lines)
    assert store.count() == 1
