"""The inbound journal, dedupe keys and the outbox, on the embedded SQLite database.

All journal SQL lives here. :meth:`SqliteJournal.commit` runs as one unit of the database's
group commit: dedupe check, journal row, every effect (through the appliers the app wires
in), dedupe key; a :class:`ConflictError` from an applier rolls the effects back and the
message is journaled as an error and answered AE.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from broker.effects import Effect, Enqueue, Publish, Skipped
from broker.errors import ConflictError
from broker.hl7.ack import AckCode, AckError
from broker.ingest.decision import RouteDecision
from broker.ingest.journal import CommitResult, InboundRecord, JournalEntry
from broker.storage.sqlite import Schema, SqliteDatabase
from broker.storage.sqlite_queue import QUEUE_SCHEMA, apply_enqueue

#: An applier runs one effect inside the message's transaction and returns a JSON-able summary.
Applier = Callable[[sqlite3.Connection, Any, int], dict[str, Any]]

#: Builds a Publish effect's events from the effects before it and their (full) summaries.
PublishApplier = Callable[
    [sqlite3.Connection, Publish, tuple[Effect, ...], list[dict[str, Any]], int], dict[str, Any]
]

#: Default window within which the same MSH-10 from the same sender is a duplicate.
DEFAULT_DEDUPE_WINDOW_S = 7 * 24 * 3600

JOURNAL_SCHEMA = Schema(
    "journal",
    (
        """CREATE TABLE IF NOT EXISTS journal (
            id INTEGER PRIMARY KEY,
            received_at REAL NOT NULL,
            listener TEXT NOT NULL,
            peer TEXT NOT NULL,
            sender TEXT NOT NULL,
            control_id TEXT NOT NULL,
            message_type TEXT NOT NULL,
            version TEXT NOT NULL,
            charset TEXT NOT NULL,
            status TEXT NOT NULL,
            ack_code TEXT NOT NULL,
            route TEXT,
            detail TEXT NOT NULL DEFAULT '{}',
            raw BLOB NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS journal_received ON journal(received_at)",
        "CREATE INDEX IF NOT EXISTS journal_control ON journal(sender, control_id)",
        """CREATE TABLE IF NOT EXISTS dedupe (
            sender TEXT NOT NULL,
            control_id TEXT NOT NULL,
            journal_id INTEGER NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (sender, control_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS dedupe_received ON dedupe(received_at)",
        # The outbox (the delivery queues) is written in the journal's transaction, so its
        # tables come with the journal's; registering QUEUE_SCHEMA as well is harmless.
        *QUEUE_SCHEMA.statements,
    ),
)

_INSERT_JOURNAL = """INSERT INTO journal (id, received_at, listener, peer, sender, control_id,
    message_type, version, charset, status, ack_code, route, detail, raw)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def _apply_skipped(conn: sqlite3.Connection, effect: Skipped, journal_id: int) -> dict[str, Any]:
    return {"skipped": effect.action, "reason": effect.reason}


class SqliteJournal:
    """:class:`broker.ingest.journal.Journal` on :class:`SqliteDatabase`."""

    def __init__(
        self,
        db: SqliteDatabase,
        appliers: Mapping[type, Applier] | None = None,
        *,
        dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S,
        publisher: PublishApplier | None = None,
    ) -> None:
        """``publisher``: builds and queues the events of a Publish effect from the effects
        applied before it and their summaries (None: Publish effects are refused)."""
        self.db = db
        self.publisher = publisher
        self.appliers: dict[type, Applier] = {Enqueue: apply_enqueue, Skipped: _apply_skipped}
        self.appliers.update(appliers or {})
        self.dedupe_window_s = dedupe_window_s

    async def commit(self, record: InboundRecord, decision: RouteDecision) -> CommitResult:
        """See :meth:`broker.ingest.journal.Journal.commit`."""
        result: CommitResult = await self.db.write(
            lambda conn: self._commit(conn, record, decision)
        )
        return result

    def commit_sync(self, record: InboundRecord, decision: RouteDecision) -> CommitResult:
        """Blocking :meth:`commit` (command line, tests)."""
        return self.db.write_sync(lambda conn: self._commit(conn, record, decision))

    def _commit(
        self, conn: sqlite3.Connection, record: InboundRecord, decision: RouteDecision
    ) -> CommitResult:
        if record.control_id:
            row = conn.execute(
                "SELECT journal_id FROM dedupe WHERE sender = ? AND control_id = ?"
                " AND received_at >= ?",
                (record.sender, record.control_id, record.received_at - self.dedupe_window_s),
            ).fetchone()
            if row is not None:
                journal_id = self._insert(
                    conn, record, "duplicate", "AA", decision.route, {"original": row[0]}
                )
                return CommitResult(journal_id, "AA", duplicate=True)

        detail: dict[str, Any]
        if decision.ack_code != "AA":
            detail = {"errors": [asdict(e) for e in decision.errors], "actions": decision.actions}
            journal_id = self._insert(
                conn, record, "error", decision.ack_code, decision.route, detail
            )
            return CommitResult(journal_id, decision.ack_code, decision.errors)

        detail = {"actions": decision.actions}
        if not decision.effects:
            journal_id = self._insert(conn, record, "accepted", "AA", decision.route, detail)
            self._remember(conn, record, journal_id)
            return CommitResult(journal_id, "AA")
        # The row is written once, after the effects (which name it): its id is taken now.
        # Safe: this runs on the one writer connection inside BEGIN IMMEDIATE.
        journal_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM journal").fetchone()[0]
        conn.execute("SAVEPOINT effects")
        try:
            done: list[dict[str, Any]] = []
            for effect in decision.effects:
                if isinstance(effect, Publish):  # tells what the effects before it did
                    done.append(self._publish(conn, effect, decision.effects, done, journal_id))
                else:
                    done.append(self._apply(conn, effect, journal_id))
            applied = tuple({k: v for k, v in d.items() if not k.startswith("_")} for d in done)
        except ConflictError as exc:
            conn.execute("ROLLBACK TO effects")
            conn.execute("RELEASE effects")
            error = AckError(exc.hl7_code, exc.hl7_location, str(exc))
            detail = {"errors": [asdict(error)], "actions": decision.actions}
            self._insert(conn, record, "error", "AE", decision.route, detail, journal_id)
            return CommitResult(journal_id, "AE", (error,))
        conn.execute("RELEASE effects")
        detail["applied"] = applied
        self._insert(conn, record, "accepted", "AA", decision.route, detail, journal_id)
        self._remember(conn, record, journal_id)
        return CommitResult(journal_id, "AA", applied=applied)

    @staticmethod
    def _remember(conn: sqlite3.Connection, record: InboundRecord, journal_id: int) -> None:
        """Record the dedupe key of an accepted message (a resend is then answered, not applied)."""
        if record.control_id:
            conn.execute(
                "INSERT OR REPLACE INTO dedupe (sender, control_id, journal_id, received_at)"
                " VALUES (?, ?, ?, ?)",
                (record.sender, record.control_id, journal_id, record.received_at),
            )

    def _publish(
        self,
        conn: sqlite3.Connection,
        effect: Publish,
        effects: tuple[Effect, ...],
        done: list[dict[str, Any]],
        journal_id: int,
    ) -> dict[str, Any]:
        if self.publisher is None:
            raise ConflictError("this store cannot publish events", hl7_code=207)
        return self.publisher(conn, effect, effects[: len(done)], done, journal_id)

    def _apply(self, conn: sqlite3.Connection, effect: Effect, journal_id: int) -> dict[str, Any]:
        applier = self.appliers.get(type(effect))
        if applier is None:
            raise ConflictError(
                f"this store cannot apply {type(effect).__name__} effects", hl7_code=207
            )
        return applier(conn, effect, journal_id)

    async def record_rejected(
        self, record: InboundRecord, ack_code: AckCode, errors: tuple[AckError, ...]
    ) -> int:
        """See :meth:`broker.ingest.journal.Journal.record_rejected`."""
        detail = {"errors": [asdict(e) for e in errors]}
        journal_id: int = await self.db.write(
            lambda conn: self._insert(conn, record, "rejected", ack_code, None, detail)
        )
        return journal_id

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        record: InboundRecord,
        status: str,
        ack_code: str,
        route: str | None,
        detail: dict[str, Any],
        journal_id: int | None = None,
    ) -> int:
        """Write the row (``journal_id`` None: SQLite picks the next id)."""
        cur = conn.execute(
            _INSERT_JOURNAL,
            (
                journal_id,
                record.received_at,
                record.listener,
                record.peer,
                record.sender,
                record.control_id,
                record.message_type,
                record.version,
                record.charset,
                status,
                ack_code,
                route,
                json.dumps(detail),
                record.raw,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    # -- reading and maintenance ---------------------------------------------------------

    def recent(self, limit: int = 50, *, status: str | None = None) -> list[JournalEntry]:
        """Newest entries first, optionally only one status."""
        sql = f"SELECT {_COLUMNS} FROM journal"
        args: tuple[Any, ...] = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.db.reader().execute(sql, (*args, limit)).fetchall()
        return [_entry(row) for row in rows]

    def get(self, journal_id: int) -> JournalEntry | None:
        row = (
            self.db.reader()
            .execute(f"SELECT {_COLUMNS} FROM journal WHERE id = ?", (journal_id,))
            .fetchone()
        )
        return _entry(row) if row else None

    def find_control_id(self, control_id: str) -> list[JournalEntry]:
        """Every entry with this MSH-10 (any sender), oldest first."""
        rows = (
            self.db.reader()
            .execute(
                f"SELECT {_COLUMNS} FROM journal WHERE control_id = ? ORDER BY id", (control_id,)
            )
            .fetchall()
        )
        return [_entry(row) for row in rows]

    def stats(self) -> dict[str, int]:
        """Row count and bytes on disk (for /metrics)."""
        (count,) = self.db.reader().execute("SELECT count(*) FROM journal").fetchone()
        return {"entries": int(count), "bytes": self.db.file_size()}

    def purge(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete entries (and dedupe keys) older than the cut-off; give the space back."""
        cutoff = (now if now is not None else time.time()) - older_than_s
        dedupe_cutoff = (now if now is not None else time.time()) - self.dedupe_window_s

        def delete(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM journal WHERE received_at < ?", (cutoff,))
            conn.execute("DELETE FROM dedupe WHERE received_at < ?", (dedupe_cutoff,))
            return cur.rowcount

        removed = self.db.write_sync(delete)
        if removed:
            self.db.reclaim_space()
        return removed


_COLUMNS = (
    "id, received_at, listener, peer, sender, control_id, message_type, version, charset,"
    " status, ack_code, route, detail, raw"
)


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    return JournalEntry(
        id=row[0],
        received_at=row[1],
        listener=row[2],
        peer=row[3],
        sender=row[4],
        control_id=row[5],
        message_type=row[6],
        version=row[7],
        charset=row[8],
        status=row[9],
        ack_code=row[10],
        route=row[11],
        detail=json.loads(row[12]),
        raw=bytes(row[13]),
    )
