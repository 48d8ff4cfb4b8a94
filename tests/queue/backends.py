"""Queue backends for the contract suite: each test runs once per backend (STYLE.md).

A backend opens queue instances on one shared store (``open()`` twice gives two "processes"
on the same store), closes them, and simulates a crash (``crash(q)``: drop the instance
without settling anything). Adding Redis means adding a class here and its name to BACKENDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from broker.queue import DeliveryQueue
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue

BACKENDS = ["sqlite"]


class Clock:
    """A settable clock shared by every instance of a test (seconds since the epoch)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SqliteBackend:
    """Instances are separate SqliteDatabase objects (own writer, own connections) on one
    file, as two broker processes would be."""

    name = "sqlite"

    def __init__(self, path: Path, clock: Clock, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.clock = clock
        self.synchronous = synchronous
        self._open: dict[int, SqliteDatabase] = {}

    async def open(self) -> DeliveryQueue:
        db = SqliteDatabase(self.path, schemas=[QUEUE_SCHEMA], synchronous=self.synchronous)
        db.open()
        queue = SqliteQueue(db, clock=self.clock)
        self._open[id(queue)] = db
        return queue

    async def crash(self, queue: DeliveryQueue) -> None:
        """The process dies: its writes so far are committed, nothing else happens."""
        await self.close(queue)

    async def close(self, queue: DeliveryQueue) -> None:
        db = self._open.pop(id(queue), None)
        if db is not None:
            db.close()

    async def aclose(self) -> None:
        for db in self._open.values():
            db.close()
        self._open.clear()


Backend = SqliteBackend


@asynccontextmanager
async def open_backend(name: str, tmp: Path, clock: Clock) -> AsyncIterator[Backend]:
    """A fresh, empty store of the named backend; everything it opened is closed after."""
    if name != "sqlite":
        raise ValueError(f"unknown queue backend {name!r}")
    backend = SqliteBackend(tmp / "queue.db", clock)
    try:
        yield backend
    finally:
        await backend.aclose()
