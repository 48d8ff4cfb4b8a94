"""The embedded database: group commit, per-unit rollback, space given back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from broker.errors import StoreError
from broker.storage.sqlite import Schema, SqliteDatabase

SCHEMA = Schema("t", ("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)",))


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    async with SqliteDatabase(tmp_path / "db.sqlite", schemas=[SCHEMA]) as db:

        def insert(conn: sqlite3.Connection) -> int:
            return int(conn.execute("INSERT INTO t (v) VALUES (x'00')").lastrowid or 0)

        ids = await asyncio.gather(*(db.write(insert) for _ in range(400)))
        assert sorted(ids) == list(range(1, 401))
        assert db.units_committed == 400
        # 400 units arriving together must not cost 400 fsyncs.
        assert db.commits < 200
        assert db.reader().execute("SELECT count(*) FROM t").fetchone() == (400,)


async def test_a_failing_unit_rolls_back_only_itself(tmp_path: Path) -> None:
    async with SqliteDatabase(tmp_path / "db.sqlite", schemas=[SCHEMA]) as db:

        def good(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (v) VALUES ('good')")

        def bad(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (v) VALUES ('bad')")
            raise ValueError("boom")

        def broken_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO missing_table VALUES (1)")

        results = await asyncio.gather(
            db.write(good),
            db.write(bad),
            db.write(broken_sql),
            db.write(good),
            return_exceptions=True,
        )
        assert results[0] is None and results[3] is None
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], StoreError)  # sqlite3 errors are translated once
        rows = db.reader().execute("SELECT v FROM t ORDER BY id").fetchall()
        assert rows == [("good",), ("good",)]


def test_writes_survive_reopen(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite", schemas=[SCHEMA])
    db.open()
    db.write_sync(lambda c: c.execute("INSERT INTO t (v) VALUES ('kept')"))
    db.close()
    again = SqliteDatabase(tmp_path / "db.sqlite", schemas=[SCHEMA])
    again.open()
    try:
        assert again.reader().execute("SELECT v FROM t").fetchall() == [("kept",)]
        assert again.reader().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        again.close()


def test_write_before_open_is_refused(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite")
    with pytest.raises(StoreError, match="not open"):
        db.submit(lambda c: None)


def test_deleting_and_reclaiming_shrinks_the_file(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite", schemas=[SCHEMA])
    db.open()
    try:
        blob = b"x" * 4000
        for _ in range(20):
            db.write_sync(lambda c: c.executemany("INSERT INTO t (v) VALUES (?)", [(blob,)] * 100))
        db.reclaim_space()
        full = db.file_size()
        assert full > 8_000_000
        db.write_sync(lambda c: c.execute("DELETE FROM t"))
        db.reclaim_space()
        assert db.file_size() < full / 10
    finally:
        db.close()


def test_a_store_of_another_layout_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY)")  # an older layout, version 0
    conn.commit()
    conn.close()
    db = SqliteDatabase(path, schemas=[SCHEMA])
    with pytest.raises(StoreError, match="written by another broker version"):
        db.open()


def test_bookkeeping_batches_skip_the_fsync_and_durable_ones_keep_it(tmp_path: Path) -> None:
    level = "PRAGMA synchronous"  # 0 OFF, 1 NORMAL, 2 FULL

    def read(c: sqlite3.Connection) -> int:
        return int(c.execute(level).fetchone()[0])

    db = SqliteDatabase(tmp_path / "s.db")
    db.open()
    try:
        assert db.write_sync(read) == 2
        assert db.write_sync(read, durable=False) == 1
        assert db.write_sync(read) == 2  # a durable unit after a lazy one is fsynced again
    finally:
        db.close()
    # a store opened without fsync (tests) is never made stricter by bookkeeping
    off = SqliteDatabase(tmp_path / "o.db", synchronous="OFF")
    off.open()
    try:
        assert off.write_sync(read, durable=False) == 0
    finally:
        off.close()
