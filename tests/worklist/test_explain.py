"""explain: for items close to matching, which key excluded each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.worklist import Key, compile_keys, explain
from broker.worklist import item as wi

Item = Callable[..., dict[str, Any]]


def test_nearest_items_first_with_their_excluding_keys(make_item: Item) -> None:
    items = [
        (1, make_item(station="CT1", modality="CT", date="20240105")),
        (2, make_item(station="CT2", modality="CT", date="20240105")),
        (3, make_item(station="MR1", modality="MR", date="20240101")),
        (4, make_item(station="CT1", modality="CT", date="20240105", status="COMPLETED")),
    ]
    query = compile_keys([Key(wi.SPS_SEQUENCE, "SQ", None, ((
        Key(wi.SCHEDULED_STATION_AE_TITLE, "AE", "CT1"),
        Key(wi.SPS_START_DATE, "DA", "20240105"),
    ),))])  # fmt: skip
    out = explain(query, items, limit=3)
    assert [e.item_id for e in out] == [1, 2, 4]
    assert out[0].matched and str(out[0]) == "item 1: matches"
    assert out[1].excluded_by == (
        "ScheduledProcedureStepSequence.ScheduledStationAETitle (single value)",
    )
    assert not out[2].matched and out[2].status == "COMPLETED"
    assert "status COMPLETED is not on the worklist" in str(out[2])
