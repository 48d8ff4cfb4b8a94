"""The delivery queues (the outbox) on the embedded SQLite database. All queue SQL lives here.

Ingest writes entries with :func:`apply_enqueue` inside the inbound message's transaction;
:class:`SqliteQueue` implements :class:`broker.queue.DeliveryQueue` for the workers and the
command line. Every state change goes through the database's writer (``BEGIN IMMEDIATE``), so
a claim's read-then-lease is atomic also against another process on the same file: SQLite
lets one writer at a time in, and the second one sees the first one's leases. Which entries a
claim takes is decided by :mod:`broker.queue.ordering`; this module only fetches and writes.

Columns: ``due_at`` is when an entry may next be handed out (ready: 0; retry: not before;
in_flight: the lease expiry), so "claimable" is one comparison whatever the state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from broker.effects import Enqueue
from broker.queue.base import (
    DEFAULT_LEASE_S,
    DEFAULT_RUN,
    PENDING_STATES,
    Entry,
    Ordering,
    QueueStats,
    Selection,
    State,
)
from broker.queue.ordering import Slot, choose_lanes, take_run
from broker.storage.sqlite import Schema, SqliteDatabase

_PENDING = "state IN ('ready', 'in_flight', 'retry')"  # the partial indexes' WHERE, verbatim

QUEUE_SCHEMA = Schema(
    "queue",
    (
        # Written in the same transaction as the inbound journal entry (apply_enqueue).
        """CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY,
            destination TEXT NOT NULL,
            ordering_key TEXT NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL DEFAULT '{}',
            payload BLOB NOT NULL,
            journal_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'ready',
            attempts INTEGER NOT NULL DEFAULT 0,
            due_at REAL NOT NULL DEFAULT 0,
            lease_owner TEXT NOT NULL DEFAULT '',
            last_error TEXT NOT NULL DEFAULT '',
            last_attempt_at REAL NOT NULL DEFAULT 0,
            failed_since REAL NOT NULL DEFAULT 0,
            finished_at REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_dest ON outbox(destination, state, id)",
        # Partial indexes hold only what is still to deliver: a claim's cost follows the
        # queue's depth, not the delivered entries kept for retention.
        f"CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(destination, id) WHERE {_PENDING}",
        "CREATE INDEX IF NOT EXISTS outbox_lanes ON outbox(destination, ordering_key, id)"
        f" WHERE {_PENDING}",
        "CREATE INDEX IF NOT EXISTS outbox_finished ON outbox(state, finished_at)"
        " WHERE state = 'delivered'",
        """CREATE TABLE IF NOT EXISTS queue_control (
            destination TEXT PRIMARY KEY,
            paused INTEGER NOT NULL DEFAULT 0,
            paused_at REAL NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
    ),
)

_COLUMNS = (
    "id, destination, payload, ordering_key, content_type, headers, created_at, state,"
    " attempts, due_at, last_error, last_attempt_at, failed_since, lease_owner, finished_at,"
    " journal_id"
)

_INSERT = (
    "INSERT INTO outbox (destination, ordering_key, content_type, headers, payload,"
    " journal_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def apply_enqueue(conn: sqlite3.Connection, effect: Enqueue, journal_id: int) -> dict[str, Any]:
    """Put an outbound message in the outbox, in the inbound message's transaction."""
    entry_id = _insert(conn, effect, journal_id, time.time())
    return {"queued": effect.destination, "outbox_id": entry_id}


def _insert(conn: sqlite3.Connection, effect: Enqueue, journal_id: int, now: float) -> int:
    cur = conn.execute(
        _INSERT,
        (
            effect.destination,
            effect.ordering_key,
            effect.content_type,
            json.dumps(effect.headers),
            effect.payload,
            journal_id,
            now,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


class SqliteQueue:
    """:class:`broker.queue.DeliveryQueue` on :class:`SqliteDatabase` (the ``outbox`` table)."""

    def __init__(self, db: SqliteDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- writing -------------------------------------------------------------------------

    async def enqueue(self, effect: Enqueue, *, journal_id: int = 0) -> int:
        now = self.clock()
        return await self.db.write(lambda conn: _insert(conn, effect, journal_id, now))

    async def claim(
        self,
        destination: str,
        owner: str,
        *,
        ordering: Ordering = Ordering.DESTINATION,
        lanes: int = 1,
        run: int = DEFAULT_RUN,
        lease_s: float = DEFAULT_LEASE_S,
        exclude_lanes: Sequence[str] = (),
    ) -> list[Entry]:
        now = self.clock()
        # Idle polls stay off the writer (which ingest shares): a read on this thread's
        # connection answers "nothing due" without taking the write lock.
        if not self._anything_due(destination, now):
            return []
        exclude = tuple(exclude_lanes)

        def claim(conn: sqlite3.Connection) -> list[Entry]:
            if _paused(conn, destination):
                return []
            ids = _plan(conn, destination, ordering, now, lanes, run, exclude)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            _take_over(conn, destination, ordering, now, ids)
            conn.execute(
                f"UPDATE outbox SET state = 'in_flight', lease_owner = ?, due_at = ?"
                f" WHERE id IN ({marks})",
                (owner, now + lease_s, *ids),
            )
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY id", ids
            ).fetchall()
            return [_entry(row) for row in rows]

        # Lost in a power cut, a lease only means the entry is claimed (sent) again.
        return await self.db.write(claim, durable=False)

    def _anything_due(self, destination: str, now: float) -> bool:
        conn = self.db.reader()
        if _paused(conn, destination):
            return False
        row = conn.execute(
            f"SELECT 1 FROM outbox WHERE destination = ? AND {_PENDING}"
            " AND (state = 'ready' OR due_at <= ?) LIMIT 1",
            (destination, now),
        ).fetchone()
        return row is not None

    async def renew(self, owner: str, ids: Sequence[int], lease_s: float) -> set[int]:
        if not ids:
            return set()
        until = self.clock() + lease_s
        marks = ",".join("?" * len(ids))
        sql = (
            f"UPDATE outbox SET due_at = ? WHERE id IN ({marks}) AND lease_owner = ?"
            " AND state = 'in_flight' RETURNING id"
        )

        def renew(conn: sqlite3.Connection) -> set[int]:
            return {row[0] for row in conn.execute(sql, (until, *ids, owner)).fetchall()}

        return await self.db.write(renew, durable=False)

    async def ack(self, owner: str, entry_id: int) -> bool:
        now = self.clock()
        # Not fsynced (see SqliteDatabase.write): a lost ack re-sends a delivered message,
        # which at-least-once delivery allows; it never loses one.
        changed = await self._update(
            "UPDATE outbox SET state = 'delivered', finished_at = ?, last_attempt_at = ?,"
            " due_at = 0, lease_owner = '' WHERE id = ? AND lease_owner = ?"
            " AND state = 'in_flight'",
            (now, now, entry_id, owner),
            durable=False,
        )
        return changed == 1

    async def ack_many(self, owner: str, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        now = self.clock()
        marks = ",".join("?" * len(ids))
        sql = (
            "UPDATE outbox SET state = 'delivered', finished_at = ?, last_attempt_at = ?,"
            f" due_at = 0, lease_owner = '' WHERE id IN ({marks}) AND lease_owner = ?"
            " AND state = 'in_flight' RETURNING id"
        )

        def ack(conn: sqlite3.Connection) -> set[int]:
            return {row[0] for row in conn.execute(sql, (now, now, *ids, owner)).fetchall()}

        return await self.db.write(ack, durable=False)  # as ack(): a lost ack re-sends

    async def retry_later(self, owner: str, entry_id: int, error: str, not_before: float) -> bool:
        now = self.clock()
        changed = await self._update(
            "UPDATE outbox SET state = 'retry', attempts = attempts + 1, due_at = ?,"
            " last_error = ?, last_attempt_at = ?, lease_owner = '',"
            " failed_since = CASE WHEN failed_since = 0 THEN ? ELSE failed_since END"
            " WHERE id = ? AND lease_owner = ? AND state = 'in_flight'",
            (not_before, error, now, now, entry_id, owner),
            durable=False,
        )
        return changed == 1

    async def bury(self, owner: str, entry_id: int, error: str) -> bool:
        now = self.clock()
        changed = await self._update(
            "UPDATE outbox SET state = 'dead', attempts = attempts + 1, due_at = 0,"
            " last_error = ?, last_attempt_at = ?, finished_at = ?, lease_owner = '',"
            " failed_since = CASE WHEN failed_since = 0 THEN ? ELSE failed_since END"
            " WHERE id = ? AND lease_owner = ? AND state = 'in_flight'",
            (error, now, now, now, entry_id, owner),
            durable=False,
        )
        return changed == 1

    async def release(self, owner: str, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        # An entry that failed before keeps state 'retry' (its history shows), due at once.
        return await self._update(
            "UPDATE outbox SET state = CASE WHEN attempts > 0 THEN 'retry' ELSE 'ready' END,"
            f" due_at = 0, lease_owner = '' WHERE id IN ({marks}) AND lease_owner = ?"
            " AND state = 'in_flight'",
            (*ids, owner),
            durable=False,
        )

    async def replay(self, destination: str, selection: Selection | None = None) -> list[int]:
        where, args = _selected(destination, selection or Selection())
        now = self.clock()

        def replay(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(f"SELECT id FROM outbox WHERE {where} ORDER BY id", args).fetchall()
            new_ids = []
            for (old_id,) in rows:
                # A new id puts it at the tail: it must not overtake what its lane sent since.
                cur = conn.execute(
                    "INSERT INTO outbox (destination, ordering_key, content_type, headers,"
                    " payload, journal_id, created_at) SELECT destination, ordering_key,"
                    " content_type, headers, payload, journal_id, ? FROM outbox WHERE id = ?",
                    (now, old_id),
                )
                conn.execute("DELETE FROM outbox WHERE id = ?", (old_id,))
                assert cur.lastrowid is not None
                new_ids.append(cur.lastrowid)
            return new_ids

        return await self.db.write(replay)

    async def purge_dead(self, destination: str, selection: Selection | None = None) -> int:
        where, args = _selected(destination, selection or Selection())
        return await self._update(f"DELETE FROM outbox WHERE {where}", args)

    async def purge_delivered(self, older_than_s: float) -> int:
        cutoff = self.clock() - older_than_s
        return await self._update(
            "DELETE FROM outbox WHERE state = 'delivered' AND finished_at < ?", (cutoff,)
        )

    async def pause(self, destination: str) -> None:
        now = self.clock()
        await self._update(
            "INSERT INTO queue_control (destination, paused, paused_at) VALUES (?, 1, ?)"
            " ON CONFLICT(destination) DO UPDATE SET paused = 1, paused_at = excluded.paused_at",
            (destination, now),
        )

    async def resume(self, destination: str) -> None:
        await self._update(
            "UPDATE queue_control SET paused = 0, paused_at = 0 WHERE destination = ?",
            (destination,),
        )

    async def _update(self, sql: str, args: Sequence[Any], *, durable: bool = True) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, tuple(args)).rowcount

        return await self.db.write(run, durable=durable)

    # -- reading -------------------------------------------------------------------------

    async def get(self, entry_id: int) -> Entry | None:
        row = (
            self.db.reader()
            .execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (entry_id,))
            .fetchone()
        )
        return _entry(row) if row else None

    async def entries(
        self,
        destination: str | None = None,
        *,
        states: Sequence[State] = PENDING_STATES,
        limit: int = 100,
    ) -> list[Entry]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE state IN ({marks})"
        args: list[Any] = [str(s) for s in states]
        if destination is not None:
            sql += " AND destination = ?"
            args.append(destination)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        rows = self.db.reader().execute(sql, args).fetchall()
        return [_entry(row) for row in rows]

    async def dead(self, destination: str | None = None, *, limit: int = 100) -> list[Entry]:
        return await self.entries(destination, states=(State.DEAD,), limit=limit)

    async def stats(self, destinations: Sequence[str] = ()) -> dict[str, QueueStats]:
        conn = self.db.reader()
        names = set(destinations)
        names.update(
            r[0] for r in conn.execute(f"SELECT DISTINCT destination FROM outbox WHERE {_PENDING}")
        )
        names.update(
            r[0]
            for r in conn.execute("SELECT DISTINCT destination FROM outbox WHERE state = 'dead'")
        )
        control = {
            r[0]: (bool(r[1]), float(r[2]))
            for r in conn.execute("SELECT destination, paused, paused_at FROM queue_control")
        }
        names.update(control)
        out: dict[str, QueueStats] = {}
        for name in sorted(names):
            counts: dict[str, int] = {}
            for state in (*PENDING_STATES, State.DEAD):
                (count,) = conn.execute(
                    "SELECT count(*) FROM outbox WHERE destination = ? AND state = ?",
                    (name, str(state)),
                ).fetchone()
                counts[state] = int(count)
            oldest, since, attempts = conn.execute(
                "SELECT min(created_at), min(CASE WHEN failed_since > 0 THEN failed_since END),"
                f" max(attempts) FROM outbox WHERE destination = ? AND {_PENDING}",
                (name,),
            ).fetchone()
            paused, paused_at = control.get(name, (False, 0.0))
            out[name] = QueueStats(
                destination=name,
                ready=counts[State.READY],
                in_flight=counts[State.IN_FLIGHT],
                retry=counts[State.RETRY],
                dead=counts[State.DEAD],
                oldest_created_at=float(oldest or 0.0),
                retrying_since=float(since or 0.0),
                max_attempts=int(attempts or 0),
                paused=paused,
                paused_at=paused_at,
            )
        return out


def _paused(conn: sqlite3.Connection, destination: str) -> bool:
    row = conn.execute(
        "SELECT paused FROM queue_control WHERE destination = ?", (destination,)
    ).fetchone()
    return bool(row and row[0])


def _plan(
    conn: sqlite3.Connection,
    destination: str,
    ordering: Ordering,
    now: float,
    lanes: int,
    run: int,
    exclude: tuple[str, ...],
) -> list[int]:
    """The ids a claim takes (see :mod:`broker.queue.ordering`), read inside the write."""
    leased = conn.execute(
        "SELECT id, ordering_key FROM outbox WHERE destination = ? AND state = 'in_flight'"
        " AND due_at > ?",
        (destination, now),
    ).fetchall()
    busy = {ordering.lane(entry_id, key) for entry_id, key in leased}
    if ordering is Ordering.NONE:
        rows = conn.execute(
            f"SELECT id, ordering_key, state, due_at FROM outbox WHERE destination = ?"
            f" AND {_PENDING} AND (state = 'ready' OR due_at <= ?) ORDER BY id LIMIT ?",
            (destination, now, lanes),
        ).fetchall()
        return [row[0] for row in rows]
    if ordering is Ordering.DESTINATION:
        if busy or "" in exclude or lanes < 1:
            return []
        rows = conn.execute(
            f"SELECT id, ordering_key, state, due_at FROM outbox WHERE destination = ?"
            f" AND {_PENDING} ORDER BY id LIMIT ?",
            (destination, run),
        ).fetchall()
        return take_run([_slot(row, "") for row in rows], now, run)
    # Ordering.PATIENT: SQLite takes the bare columns of a min() query from the min row.
    heads = conn.execute(
        f"SELECT min(id), ordering_key, state, due_at FROM outbox WHERE destination = ?"
        f" AND {_PENDING} GROUP BY ordering_key",
        (destination,),
    ).fetchall()
    chosen = choose_lanes((_slot(row, row[1]) for row in heads), busy, now, lanes, exclude)
    ids: list[int] = []
    for key in chosen:
        rows = conn.execute(
            f"SELECT id, ordering_key, state, due_at FROM outbox WHERE destination = ?"
            f" AND ordering_key = ? AND {_PENDING} ORDER BY id LIMIT ?",
            (destination, key, run),
        ).fetchall()
        ids.extend(take_run([_slot(row, key) for row in rows], now, run))
    return sorted(ids)


def _take_over(
    conn: sqlite3.Connection, destination: str, ordering: Ordering, now: float, ids: list[int]
) -> None:
    """Release expired leases left in the lanes being claimed (their owner stalled or died),
    so that owner's late outcomes fail instead of overtaking the new owner."""
    if ordering is Ordering.NONE:
        return
    expired = (
        "UPDATE outbox SET state = CASE WHEN attempts > 0 THEN 'retry' ELSE 'ready' END,"
        " due_at = 0, lease_owner = '' WHERE destination = ? AND state = 'in_flight'"
        " AND due_at <= ?"
    )
    if ordering is Ordering.DESTINATION:
        conn.execute(expired, (destination, now))
        return
    marks = ",".join("?" * len(ids))
    conn.execute(
        f"{expired} AND ordering_key IN (SELECT ordering_key FROM outbox WHERE id IN ({marks}))",
        (destination, now, *ids),
    )


def _slot(row: tuple[Any, ...], lane: str) -> Slot:
    return Slot(id=row[0], lane=lane, state=State(row[2]), due_at=row[3])


def _selected(destination: str, selection: Selection) -> tuple[str, list[Any]]:
    """WHERE clause and arguments for the dead entries a selection names."""
    where = "destination = ? AND state = 'dead'"
    args: list[Any] = [destination]
    if selection.ids is not None:
        if not selection.ids:
            return "0", []
        where += f" AND id IN ({','.join('?' * len(selection.ids))})"
        args.extend(selection.ids)
    if selection.ordering_key is not None:
        where += " AND ordering_key = ?"
        args.append(selection.ordering_key)
    if selection.error_contains is not None:
        where += " AND instr(lower(last_error), lower(?)) > 0"
        args.append(selection.error_contains)
    return where, args


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(
        id=row[0],
        destination=row[1],
        payload=bytes(row[2]),
        ordering_key=row[3],
        content_type=row[4],
        headers=json.loads(row[5]),
        created_at=row[6],
        state=State(row[7]),
        attempts=row[8],
        not_before=row[9],
        last_error=row[10],
        last_attempt_at=row[11],
        failed_since=row[12],
        lease_owner=row[13],
        finished_at=row[14],
        journal_id=row[15],
    )


__all__ = ["QUEUE_SCHEMA", "SqliteQueue", "apply_enqueue"]
