"""Journal retention really frees disk space; reads and dedupe keys."""

from __future__ import annotations

import time
from pathlib import Path

from broker.ingest.decision import RouteDecision
from broker.ingest.journal import InboundRecord
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA, SqliteJournal


def record(cid: str, at: float, size: int = 20_000) -> InboundRecord:
    return InboundRecord(
        at, "ris", "127.0.0.1:1", "RIS|HOSP", cid, "ORM^O01", "2.4", "", b"M" * size
    )


def test_retention_purges_old_entries_and_shrinks_the_file(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "broker.db", schemas=[JOURNAL_SCHEMA])
    db.open()
    try:
        journal = SqliteJournal(db, dedupe_window_s=3600)
        now = time.time()
        old = now - 40 * 86400
        for i in range(600):
            journal.commit_sync(record(f"OLD{i}", old), RouteDecision(route=None))
        for i in range(20):
            journal.commit_sync(record(f"NEW{i}", now), RouteDecision(route=None))
        db.reclaim_space()
        before = db.file_size()
        assert before > 12_000_000

        removed = journal.purge(30 * 86400, now=now)

        assert removed == 600
        assert journal.stats()["entries"] == 20
        assert db.file_size() < before / 5, (before, db.file_size())
        assert {e.control_id for e in journal.recent(100)} == {f"NEW{i}" for i in range(20)}
        # dedupe keys older than the window went too: the old control ID is new again
        result = journal.commit_sync(record("OLD1", now), RouteDecision(route=None))
        assert not result.duplicate
        assert journal.commit_sync(record("NEW1", now), RouteDecision(route=None)).duplicate
    finally:
        db.close()
