"""Fixtures for delivery tests: a real store (SQLite file), helpers to build workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from broker.delivery import Destination, DestinationWorker, WorkerOptions
from broker.queue import Ordering, RetryPolicy
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA
from broker.storage.sqlite_queue import SqliteQueue

#: Retries fast enough for tests: 20 ms doubling to 100 ms, no jitter.
FAST = RetryPolicy(initial_s=0.02, factor=2, max_interval_s=0.1, jitter=0)


def hl7(cid: str, key: str = "P1") -> bytes:
    return (
        f"MSH|^~\\&|BROKER|RAD|PACS|RAD|20260101120000||ORM^O01|{cid}|P|2.3.1\r"
        f"PID|1||{key}^^^HOSP^MR||DOE^JANE\rORC|XO|{cid}\r"
    ).encode()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteQueue]:
    db = SqliteDatabase(tmp_path / "broker.db", schemas=[JOURNAL_SCHEMA], synchronous="NORMAL")
    async with db:
        yield SqliteQueue(db)


MakeWorker = Callable[..., DestinationWorker]


@pytest.fixture
async def make_worker(store: SqliteQueue) -> AsyncIterator[MakeWorker]:
    made: list[DestinationWorker] = []

    def factory(
        destination: Destination,
        *,
        ordering: Ordering = Ordering.DESTINATION,
        retry: RetryPolicy = FAST,
        start: bool = True,
        **options: object,
    ) -> DestinationWorker:
        settings: dict[str, object] = {"poll_s": 0.02, **options}
        opts = WorkerOptions(ordering=ordering, retry=retry, **settings)  # type: ignore[arg-type]
        worker = DestinationWorker(destination, store, opts)
        if start:
            worker.start()
        made.append(worker)
        return worker

    yield factory
    for worker in made:
        await worker.stop(1.0)
        await worker.destination.aclose()
