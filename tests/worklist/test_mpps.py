"""MPPS: every (state, input) pair gives a valid state or the proper status (h2 style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from broker.worklist import WorklistService
from broker.worklist import mpps as m


@pytest.fixture
def store(any_store: Any) -> Any:
    """MPPS runs the same on every store backend."""
    return any_store


STATES = [None, m.IN_PROGRESS, m.COMPLETED, m.DISCONTINUED]
INPUTS = [None, "", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "SCHEDULED", "in progress", "junk"]


@settings(max_examples=200)
@given(stored=st.sampled_from(STATES), kind=st.sampled_from(["create", "set"]),
       requested=st.sampled_from(INPUTS))  # fmt: skip
def test_every_state_and_input_gives_a_state_or_a_status(
    stored: str | None, kind: str, requested: str | None
) -> None:
    decision = (m.on_create if kind == "create" else m.on_set)(stored, requested)
    if decision.ok:
        assert decision.state in m.STATES
        if kind == "create":
            assert stored is None and decision.state == m.IN_PROGRESS
        else:
            assert stored == m.IN_PROGRESS  # only an in-progress step may change
        if decision.state != stored:
            assert decision.event == m.EVENTS[decision.state]
            assert decision.item_status == m.ITEM_STATUS[decision.state]
        else:
            assert decision.event is None
    else:
        assert decision.state is None and decision.comment
        expected = {
            ("create", True): m.DUPLICATE_SOP_INSTANCE,
            ("set", False): m.NO_SUCH_SOP_INSTANCE,
        }.get((kind, stored is not None))
        if expected is not None:
            assert decision.status == expected
        elif kind == "set" and stored in m.FINAL_STATES:
            assert decision.status == m.MAY_NO_LONGER_BE_UPDATED
            assert "may no longer be updated" in decision.comment
        elif kind == "create" and not (requested or "").strip():
            assert decision.status == m.MISSING_ATTRIBUTE
        else:
            assert decision.status == m.INVALID_ATTRIBUTE_VALUE


def pps(status: str | None, **link: str) -> Dataset:
    ds = Dataset()
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    if link:
        ref = Dataset()
        for key, value in link.items():
            setattr(ref, key, value)
        ds.ScheduledStepAttributesSequence = [ref]
    return ds


def test_mpps_moves_linked_items_and_records_events(
    store: Any, make_item: Callable[..., dict[str, Any]]
) -> None:
    store.upsert("ORD1", [make_item(study_uid="1.2.3", accession="ACC1", sps_id="S1")])
    other = store.upsert("ORD2", [make_item(study_uid="1.2.4", accession="ACC2", sps_id="S2")])
    assert other["created"] == 1
    service = WorklistService(store)
    link = {
        "StudyInstanceUID": "1.2.3",
        "AccessionNumber": "ACC1",
        "ScheduledProcedureStepID": "S1",
    }
    assert service.mpps_create("9.9.1", pps("IN PROGRESS", **link), "CT1") == (0, "")
    (item_id,) = store.find_ids(order_key="ORD1")
    assert store.get(item_id)["status"] == "STARTED"  # type: ignore[index]
    assert store.get(item_id)["performed_study_uid"] == "1.2.3"  # type: ignore[index]
    assert service.mpps_create("9.9.1", pps("IN PROGRESS", **link), "CT1").status == 0x0111
    assert service.mpps_set("9.9.1", pps(None), "CT1").status == 0  # attribute update
    assert service.mpps_set("9.9.1", pps("COMPLETED"), "CT1").status == 0
    got = store.get(item_id)
    assert got is not None and got["status"] == "COMPLETED" and got["active"] == 0
    assert [h["new"] for h in got["history"]] == ["SCHEDULED", "STARTED", "COMPLETED"]
    late = service.mpps_set("9.9.1", pps("DISCONTINUED"), "CT1")
    assert late.status == 0xC310 and "may no longer be updated" in late.comment
    assert service.mpps_set("9.9.404", pps("COMPLETED"), "CT1").status == 0x0112
    events = store.events()
    assert [(e["kind"], e["accession"], e["item_id"]) for e in events] == [
        ("procedure.in_progress", "ACC1", item_id),
        ("procedure.completed", "ACC1", item_id),
    ]
    (second,) = store.find_ids(order_key="ORD2")
    assert store.get(second)["status"] == "SCHEDULED"  # type: ignore[index]


def test_unscheduled_mpps_is_accepted_and_recorded(store: Any) -> None:
    service = WorklistService(store)
    assert service.mpps_create("9.9.2", pps("IN PROGRESS"), "US1").status == 0
    assert service.mpps_set("9.9.2", pps("DISCONTINUED"), "US1").status == 0
    assert [e["kind"] for e in store.events()] == [
        "procedure.in_progress",
        "procedure.discontinued",
    ]
    assert all(e["item_id"] is None for e in store.events())
    assert store.mpps_state("9.9.2") == "DISCONTINUED"


def test_create_with_wrong_status(store: Any) -> None:
    service = WorklistService(store)
    assert service.mpps_create("9.9.3", pps("COMPLETED"), "X").status == 0x0106
    assert service.mpps_create("9.9.3", pps(None), "X").status == 0x0120
    assert store.mpps_state("9.9.3") is None
