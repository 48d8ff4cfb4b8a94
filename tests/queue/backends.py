"""Queue backends for the contract suite: each test runs once per backend (STYLE.md).

A backend opens queue instances on one shared store (``open()`` twice gives two "processes"
on the same store), closes them, and simulates a crash (``crash(q)``: drop the instance
without settling anything). Each backend is a class here with its name in BACKENDS.

Redis: the session's own redis-server (or $REDIS_URL), see ``tests/redis_server.py``;
``open_backend`` flushes its database, so every test starts from an empty store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis

from broker.queue import DeliveryQueue
from broker.storage.redis_queue import RedisQueue
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue
from tests.redis_server import shared_redis_url

BACKENDS = ["sqlite", "redis"]


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


class RedisBackend:
    """Instances are separate RedisQueue objects, each with its own client and connection
    pool, on one Redis database, as two broker nodes would be."""

    name = "redis"

    def __init__(self, url: str, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self._open: dict[int, RedisQueue] = {}

    async def open(self) -> DeliveryQueue:
        queue = RedisQueue.from_url(self.url, clock=self.clock)
        self._open[id(queue)] = queue
        return queue

    async def crash(self, queue: DeliveryQueue) -> None:
        """The node dies: its connections drop; its leases stay in Redis until they expire."""
        await self.close(queue)

    async def close(self, queue: DeliveryQueue) -> None:
        redis_queue = self._open.pop(id(queue), None)
        if redis_queue is not None:
            await redis_queue.aclose()

    async def aclose(self) -> None:
        for queue in self._open.values():
            await queue.aclose()
        self._open.clear()


Backend = SqliteBackend | RedisBackend


async def flush_redis(url: str) -> None:
    """Empty the test database (every test starts from nothing)."""
    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@asynccontextmanager
async def open_backend(name: str, tmp: Path, clock: Clock) -> AsyncIterator[Backend]:
    """A fresh, empty store of the named backend; everything it opened is closed after."""
    backend: Backend
    if name == "sqlite":
        backend = SqliteBackend(tmp / "queue.db", clock)
    elif name == "redis":
        url = shared_redis_url()
        await flush_redis(url)
        backend = RedisBackend(url, clock)
    else:
        raise ValueError(f"unknown queue backend {name!r}")
    try:
        yield backend
    finally:
        await backend.aclose()
