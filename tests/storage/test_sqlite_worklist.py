"""The SQLite worklist store: upsert semantics, status changes, retention, bulk load."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.effects import WorklistStatusChange, WorklistUpsert
from broker.errors import ConflictError
from broker.storage.sqlite_worklist import (
    SqliteWorklistStore,
    apply_worklist_status,
    apply_worklist_upsert,
)
from tests.worklist.conftest import open_store


def _data() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "worklist_data.py"
    if "worklist_data" not in sys.modules:
        spec = importlib.util.spec_from_file_location("worklist_data", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["worklist_data"] = module
        spec.loader.exec_module(module)
    return sys.modules["worklist_data"]


def item(**kw: Any) -> dict[str, Any]:
    return _data().make_item(**kw)  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each backend in turn: the upsert rules are the same on both."""
    with open_store(request.param, tmp_path) as wl:
        yield wl


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteWorklistStore]:
    with open_store("sqlite", tmp_path) as wl:
        yield wl


def statuses(store: Any, order: str) -> dict[str, str]:
    out = {}
    for item_id in store.find_ids(order_key=order):
        got = store.get(item_id)
        assert got is not None
        out[got["item"]["00400100"]["Value"][0]["00400009"]["Value"][0]] = got["status"]
    return out


def test_repeated_nw_is_an_update_and_missing_items_leave(store: Any) -> None:
    two = [item(sps_id="S1", study_uid="1.1"), item(sps_id="S2", study_uid="1.1")]
    assert store.upsert("O1", two) == {"created": 2, "updated": 0, "removed": 0}
    assert store.upsert("O1", two) == {"created": 0, "updated": 2, "removed": 0}
    assert store.count() == 2
    changed = [item(sps_id="S1", study_uid="1.1", modality="MR")]
    assert store.upsert("O1", changed) == {"created": 0, "updated": 1, "removed": 1}
    assert statuses(store, "O1") == {"S1": "SCHEDULED", "S2": "CANCELED"}
    assert store.count(active_only=True) == 1
    (s2,) = [i for i in store.find_ids(order_key="O1") if store.get(i)["status"] == "CANCELED"]  # type: ignore[index]
    assert [h["new"] for h in store.get(s2)["history"]] == ["SCHEDULED", "CANCELED"]  # type: ignore[index]


def test_study_uid_of_another_order_is_a_conflict(store: Any) -> None:
    store.upsert("O1", [item(study_uid="1.2.3")])
    with pytest.raises(ConflictError) as info:
        store.upsert("O2", [item(study_uid="1.2.3")])
    assert info.value.hl7_location == "ZDS^1^1" and info.value.hl7_code == 205
    assert store.count() == 1  # the failing unit was rolled back


def test_progress_survives_an_order_update(store: Any) -> None:
    store.upsert("O1", [item(sps_id="S1")])
    store.set_order_status("O1", "STARTED")
    store.upsert("O1", [item(sps_id="S1", description="NEW TEXT")])
    assert statuses(store, "O1") == {"S1": "STARTED"}


def test_cancel_then_resend_schedules_again(store: Any) -> None:
    store.upsert("O1", [item(sps_id="S1")])
    assert store.set_order_status("O1", "CANCELLED", "CA") == {"changed": 1, "unchanged": 0}
    assert store.count(active_only=True) == 0
    assert store.set_order_status("O1", "SCHEDULED") == {"changed": 0, "unchanged": 1}
    store.upsert("O1", [item(sps_id="S1")])
    assert statuses(store, "O1") == {"S1": "SCHEDULED"}


def test_appliers_run_inside_the_callers_transaction(sqlite_store: Any) -> None:
    store = sqlite_store

    def unit(conn: sqlite3.Connection) -> dict[str, Any]:
        result = apply_worklist_upsert(conn, WorklistUpsert("O9", (item(sps_id="S9"),)), 7)
        result.update(apply_worklist_status(conn, WorklistStatusChange("O9", "DISCONTINUED"), 7))
        raise RuntimeError("journal failed after the effects")

    with pytest.raises(RuntimeError):
        store.db.write_sync(unit)
    assert store.count() == 0


def test_retention_purges_only_old_finished_items(store: Any) -> None:
    store.upsert("O1", [item(sps_id="S1", study_uid="1.1")])
    store.upsert("O2", [item(sps_id="S2", study_uid="1.2")])
    store.set_order_status("O1", "COMPLETED")
    now = _dt.datetime.now(_dt.UTC)
    assert store.purge(30, now=now) == 0
    assert store.purge(30, now=now + _dt.timedelta(days=31)) == 1
    assert store.count() == 1 and store.find_ids(order_key="O1") == []


def test_bulk_load_keeps_items_as_they_are(store: Any) -> None:
    items = list(_data().generate(500))
    ids = store.bulk_load(items, chunk=128)
    assert len(ids) == 500 and store.count() == 500
    got = store.get(ids[3])
    assert got is not None and got["item"] == items[3]


@pytest.mark.parametrize(
    ("name", "charset"),
    [("DOE^JANE", ""), ("MÜLLER^JÖRG", "ISO_IR 100"), ("ИВАНОВ^ДМИТРИЙ", "ISO_IR 192")],
)
def test_stored_charset_is_the_items_native_set(
    sqlite_store: Any, name: str, charset: str
) -> None:
    store = sqlite_store
    store.upsert("O1", [item(name=name)])
    (item_id,) = store.find_ids(order_key="O1")
    row = (
        store.db.reader()
        .execute("SELECT charset FROM worklist_items WHERE id=?", (item_id,))
        .fetchone()
    )
    assert row[0] == charset
