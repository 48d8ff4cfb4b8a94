"""WorklistService keeps the parse and plan of identifiers it has seen (modalities poll)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydicom.dataset import Dataset

from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import QueryError, WorklistService


def _query(accession: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = accession
    ds.PatientName = ""
    return ds


def test_the_same_identifier_is_planned_once(
    store: SqliteWorklistStore,
    encode: Callable[..., bytes],
    make_item: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.bulk_load([make_item()])
    service = WorklistService(store)
    calls: list[bytes] = []
    original = service.prepare

    def counting(identifier: bytes, **kwargs: Any) -> Any:
        calls.append(identifier)
        return original(identifier, **kwargs)

    monkeypatch.setattr(service, "prepare", counting)
    first = encode(_query("A1"), explicit=True)
    for _ in range(3):
        list(service.find(first, explicit_vr=True, calling_ae="CT1"))
    assert len(calls) == 1
    list(service.find(encode(_query("A2"), explicit=True), explicit_vr=True, calling_ae="CT1"))
    implicit = encode(_query("A1"), explicit=False)
    list(service.find(implicit, explicit_vr=False, calling_ae="CT1"))
    assert len(calls) == 3


def test_refused_identifiers_are_not_kept(store: SqliteWorklistStore) -> None:
    service = WorklistService(store)
    bad = b"\x08\x00\x50\x00\xff\xff\xff\x7f"  # AccessionNumber with an impossible length
    for _ in range(2):
        with pytest.raises(QueryError):
            service.find(bad, explicit_vr=False, calling_ae="CT1")
    assert not service._plans
