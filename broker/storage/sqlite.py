"""The embedded SQLite database: one file, WAL, one writer thread with group commit.

Every durable change goes through :meth:`SqliteDatabase.write`: the caller hands a function
that receives the writer connection inside an open transaction. The writer thread takes all
requests waiting at that moment, runs each in its own SAVEPOINT (one failing unit does not
undo the others) and commits them with one fsync (``synchronous=FULL``). Under load, messages
arriving together therefore share a commit; alone, a message pays exactly one fsync.

Reads use separate connections (WAL lets them run beside the writer), one per thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from broker.errors import StoreError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Upper bound of units committed together; bounds the latency one commit adds to its members.
DEFAULT_MAX_BATCH = 512
#: Layout version of the tables this code creates (PRAGMA user_version). A file written by
#: another layout is refused with a clear message instead of failing on a missing column.
SCHEMA_VERSION = 1

#: Under sustained load, background work (add_background) still runs this often.
BACKGROUND_EVERY_S = 0.2
#: How long a connection waits on a lock held by another process before failing.
DEFAULT_BUSY_TIMEOUT_S = 10.0

WriteFn = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True, slots=True)
class Schema:
    """DDL that one module needs; applied in order, each statement idempotent."""

    name: str
    statements: Sequence[str]


@dataclass(slots=True)
class _Unit:
    fn: WriteFn
    future: Future[Any] | None = None  # blocking callers (write_sync)
    loop: asyncio.AbstractEventLoop | None = None  # async callers: resolved on their loop
    waiter: asyncio.Future[Any] | None = None
    durable: bool = True  # False: bookkeeping a crash may lose (see SqliteDatabase.write)


_STOP = object()


class SqliteDatabase:
    """One SQLite file shared by the journal, the worklist and the queues."""

    def __init__(
        self,
        path: Path | str,
        *,
        schemas: Sequence[Schema] = (),
        synchronous: str = "FULL",
        max_batch: int = DEFAULT_MAX_BATCH,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self._schemas = list(schemas)
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._busy_timeout_s = busy_timeout_s
        self._requests: queue.SimpleQueue[_Unit | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self.commits = 0
        self.units_committed = 0
        #: the synchronous level the writer connection has now (changed per batch)
        self._level = synchronous
        self._background: list[Callable[[sqlite3.Connection], bool]] = []
        self._background_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def add_schema(self, schema: Schema) -> None:
        """Register DDL to apply at :meth:`open` (call before opening)."""
        if self._writer is not None:
            raise StoreError(f"schema {schema.name!r} added after the database was opened")
        self._schemas.append(schema)

    def open(self) -> None:
        """Create the file and tables if needed and start the writer thread."""
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            # auto_vacuum must be chosen before the first table exists; INCREMENTAL lets
            # retention hand freed pages back to the file system (deleting rows alone
            # never shrinks an SQLite file, a known pain of the incumbents).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            self._check_version(conn)
            for schema in self._schemas:
                for statement in schema.statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.commit()
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot initialise {self.path}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        self._level = self._synchronous  # what _connect set on this connection
        self._writer = threading.Thread(
            target=self._writer_loop, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._writer.start()

    def close(self) -> None:
        """Finish queued writes, stop the writer and close every connection."""
        if self._writer is not None:
            self._requests.put(_STOP)
            self._writer.join()
            self._writer = None
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._readers = threading.local()

    def _check_version(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
        if tables and version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by another broker version (store layout {version}, "
                f"this version uses {SCHEMA_VERSION}); move it aside to start a new store"
            )

    async def __aenter__(self) -> SqliteDatabase:
        await asyncio.to_thread(self.open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    # -- writing -------------------------------------------------------------------------

    def submit(self, fn: WriteFn, *, durable: bool = True) -> Future[Any]:
        """Queue ``fn(conn)`` for the next group commit; the future resolves after COMMIT."""
        if self._writer is None:
            raise StoreError("the database is not open")
        future: Future[Any] = Future()
        self._requests.put(_Unit(fn, future=future, durable=durable))
        return future

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn`` in a transaction and return its result once it is durable.

        Raises whatever ``fn`` raised (its changes rolled back, others' kept), or
        :class:`StoreError` when the commit itself failed. A caller cancelled meanwhile does
        not stop the commit; its outcome is then simply dropped (arq's finish_job habit).

        ``durable=False`` is for bookkeeping whose loss only repeats work (a delivery's ack,
        a lease): a batch made only of such units commits without the fsync (WAL,
        ``synchronous=NORMAL``). It survives a crash of the process (the WAL is written
        before COMMIT returns), not a power cut; the next durable commit makes it durable too,
        as the WAL is synced in order.
        """
        if self._writer is None:
            raise StoreError("the database is not open")
        loop = asyncio.get_running_loop()
        # A plain asyncio future, resolved with every other unit of its batch in one
        # call_soon_threadsafe: one loop wake-up per commit instead of one per message.
        waiter: asyncio.Future[T] = loop.create_future()
        self._requests.put(_Unit(fn, loop=loop, waiter=waiter, durable=durable))
        return await waiter

    def write_sync(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Blocking :meth:`write`, for the command line and tests."""
        result: T = self.submit(fn, durable=durable).result()
        return result

    def add_background(self, fn: Callable[[sqlite3.Connection], bool]) -> None:
        """Work the writer does in its own transaction when no request waits (and at least
        every ``BACKGROUND_EVERY_S`` under load): ``fn(conn)`` returns True while it has more.
        Its commits skip the fsync (like ``durable=False``): background work must be safe to
        lose and redo. Register before :meth:`open`."""
        self._background.append(fn)

    def _run_background(self, conn: sqlite3.Connection) -> bool:
        """One round of background work; True when some may remain."""
        self._background_at = time.monotonic()
        lazy = self._synchronous.upper() in ("FULL", "EXTRA")
        if lazy and self._level != "NORMAL":
            conn.execute("PRAGMA synchronous=NORMAL")
            self._level = "NORMAL"
        more = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn in self._background:
                more = fn(conn) or more
            conn.execute("COMMIT")
        except Exception as exc:  # background work must never stop the writer
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # the type only: an encoding error's text may quote an item's values
            log.error("background work on %s failed (%s); will try again", self.path,
                      type(exc).__name__)  # fmt: skip
            log.debug("background work failure", exc_info=True)
            return False
        return more

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        due = bool(self._background)  # e.g. work left by a process that died
        try:
            while True:
                if due and time.monotonic() - self._background_at > BACKGROUND_EVERY_S:
                    due = self._run_background(conn)  # under load: not starved
                if due:
                    try:
                        first = self._requests.get_nowait()
                    except queue.Empty:
                        due = self._run_background(conn)
                        continue
                else:
                    first = self._requests.get()
                if first is _STOP:
                    return
                batch: list[_Unit] = [first]  # type: ignore[list-item]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._requests.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)  # type: ignore[arg-type]
                self._commit_batch(conn, batch)
                due = bool(self._background)  # the batch may have left work for it
                if stop:
                    return
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Unit]) -> None:
        results: list[tuple[_Unit, bool, Any]] = []
        # One durable unit makes the whole batch durable; otherwise skip the fsync.
        lazy = self._synchronous.upper() in ("FULL", "EXTRA") and not any(u.durable for u in batch)
        level = "NORMAL" if lazy else self._synchronous
        if level != self._level:
            try:
                conn.execute(f"PRAGMA synchronous={level}")
                self._level = level
            except sqlite3.Error as exc:  # then the stricter setting stays: still correct
                log.warning("cannot set synchronous=%s on %s: %s", level, self.path, exc)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = StoreError(f"cannot begin a transaction on {self.path}: {exc}")
            _resolve([(unit, False, error) for unit in batch])
            return
        for unit in batch:
            try:
                conn.execute("SAVEPOINT unit")
                value = unit.fn(conn)
                conn.execute("RELEASE unit")
                results.append((unit, True, value))
            except Exception as exc:  # the unit failed; roll back only its own changes
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                results.append((unit, False, _as_store_error(exc)))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = StoreError(f"commit to {self.path} failed: {exc}")
            _resolve([(unit, False, error) for unit, _, _ in results])
            return
        self.commits += 1
        self.units_committed += len(batch)
        _resolve(results)

    # -- reading -------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (created on first use)."""
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._readers.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a reader connection in a worker thread."""
        return await asyncio.to_thread(lambda: fn(self.reader()))

    # -- maintenance ---------------------------------------------------------------------

    def file_size(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    def reclaim_space(self) -> None:
        """Give freed pages back to the file system (after a purge).

        Runs on a private connection: the pragma must be stepped to its end, which only
        ``executescript`` does from Python (``execute`` frees a single page); the writer's
        group commits wait on the busy timeout meanwhile.
        """
        conn = self._connect()
        try:
            conn.executescript("PRAGMA incremental_vacuum;")
            # A TRUNCATE checkpoint moves the WAL into the file and cuts both down to size.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot reclaim space in {self.path}: {exc}") from exc
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # Every unit runs in a SAVEPOINT, whose statement journal spills to a temporary
            # file past 64 KiB; one worklist upsert touches ~20 pages, so without this every
            # unit wrote a temp file (~45 µs each). Durability is untouched (WAL + fsync).
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return conn


def _resolve(results: list[tuple[_Unit, bool, Any]]) -> None:
    """Hand each unit its outcome: blocking callers directly, async callers in one call per
    event loop (the loop wakes once per batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Unit, bool, Any]]] = {}
    for result in results:
        unit, ok, value = result
        if unit.future is not None:
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)
        elif unit.loop is not None:
            by_loop.setdefault(unit.loop, []).append(result)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[_Unit, bool, Any]]) -> None:
    for unit, ok, value in items:
        waiter = unit.waiter
        if waiter is None or waiter.done():  # cancelled caller: the outcome is dropped
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


def _as_store_error(exc: BaseException) -> BaseException:
    """Translate sqlite3 errors once, here; leave the broker's own errors as they are."""
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"database error: {exc}")
        error.__cause__ = exc
        return error
    return exc


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Log how long a maintenance step took (debug level)."""
    start = time.perf_counter()
    yield
    log.debug("%s took %.1f ms", label, (time.perf_counter() - start) * 1000)
