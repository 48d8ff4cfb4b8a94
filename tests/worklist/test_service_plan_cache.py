"""WorklistService keeps the parse and plan of identifiers it has seen, and the answers it has
joined, by their contents (modalities poll with the same query and get the same items)."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydicom.dataset import Dataset

from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import QueryError, WorklistService
from broker.worklist import encode as encode_module
from broker.worklist.encode import AnswerMemo, AnswerSpec


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


def _names(service: WorklistService, identifier: bytes) -> list[bytes]:
    return [a for batch in service.find(identifier, explicit_vr=True, calling_ae="") for a in batch]


def test_an_answer_is_joined_once_and_again_when_the_item_changes(
    store: SqliteWorklistStore,
    encode: Callable[..., bytes],
    make_item: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.upsert("O1", [make_item(accession="A1", name="DOE^JANE")])
    service = WorklistService(store)
    joined: list[bytes] = []
    original = encode_module.answer

    def counting(*args: Any) -> bytes:
        joined.append(original(*args))
        return joined[-1]

    monkeypatch.setattr(encode_module, "answer", counting)
    query = encode(_query("A1"), explicit=True)
    first = _names(service, query)
    assert _names(service, query) == first
    assert len(joined) == 1 and b"DOE^JANE" in first[0]
    # The order is updated: the stored bytes change, so the remembered answer is not used.
    store.upsert("O1", [make_item(accession="A1", name="DOE^JOHN")])
    second = _names(service, query)
    assert len(joined) == 2
    assert b"DOE^JOHN" in second[0] and b"DOE^JANE" not in second[0]
    # Another request shape over the same item: its own answer.
    other = _query("A1")
    other.PatientID = ""
    third = _names(service, encode(other, explicit=True))
    assert len(joined) == 3 and third != second


def test_the_answer_memo_is_bounded_and_keyed_by_every_input() -> None:
    spec = AnswerSpec.build(((0x00100010, "PN", None),), explicit=True)
    twin = AnswerSpec.build(((0x00100020, "LO", None),), explicit=True)
    assert spec.token != twin.token
    memo = AnswerMemo(capacity=2)
    layout = array("I", [0, 0]).tobytes()  # an item with no elements
    plain = memo.answer(spec, b"", layout, "")
    declared = memo.answer(spec, b"", layout, "ISO_IR 100")
    assert plain != declared and b"ISO_IR 100" in declared
    assert memo.answer(twin, b"", layout, "") != plain  # another spec, another answer
    assert len(memo) == 2
    assert memo.answer(spec, b"", layout, "") == plain


def test_the_answer_memo_takes_concurrent_readers() -> None:
    """A Redis-backed store is read in worker threads: misses and evictions from several
    threads at once neither raise nor let the memo grow past its bound."""
    spec = AnswerSpec.build(((0x00100010, "PN", None),), explicit=True)
    memo = AnswerMemo(capacity=8)
    layout = array("I", [0, 0]).tobytes()
    charsets = [f"SET{n}" for n in range(64)]

    def hammer() -> None:
        for _ in range(200):
            for charset in charsets:
                memo.answer(spec, b"", layout, charset)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that a race shows
    try:
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(hammer) for _ in range(4)]:
                done.result()
    finally:
        sys.setswitchinterval(interval)
    assert len(memo) <= 8
