"""Reconciliation on the embedded SQLite store: the reconcile appliers
(:mod:`broker.reconcile.apply`) over the journal's connection, the sweep's reads and the
change history.

Both appliers run inside the journal's commit (like ``apply_worklist_upsert``): the items,
the ``reconcile_changes`` row and the outbound entries commit together with the inbound
message, or not at all (a :class:`ConflictError` answers AE and rolls everything back).

``reconcile_changes`` keeps one row per change: kind, the patient (and the surviving or new
one), the order, how many items moved, and a JSON detail with the attributes before and
after and what was queued where. ``broker reconcile history`` reads it.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from broker.effects import DicomJson, Enqueue, OrderChange, PatientChange, PatientRef
from broker.reconcile import apply as reconcile_apply
from broker.reconcile.ops import ItemRow
from broker.reconcile.sweep import OrderItem
from broker.storage.sqlite import Schema, SqliteDatabase
from broker.storage.sqlite_queue import apply_enqueue
from broker.storage.sqlite_worklist import _history, _replace, _Row
from broker.worklist.stored import now_text

RECONCILE_SCHEMA = Schema(
    "reconcile",
    (
        """CREATE TABLE IF NOT EXISTS reconcile_changes (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            journal_id INTEGER,
            kind TEXT NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            issuer TEXT NOT NULL DEFAULT '',
            target_id TEXT NOT NULL DEFAULT '',
            target_issuer TEXT NOT NULL DEFAULT '',
            order_key TEXT NOT NULL DEFAULT '',
            items INTEGER NOT NULL DEFAULT 0,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX IF NOT EXISTS reconcile_patient ON reconcile_changes(patient_id)",
        "CREATE INDEX IF NOT EXISTS reconcile_target ON reconcile_changes(target_id)",
        "CREATE INDEX IF NOT EXISTS reconcile_order ON reconcile_changes(order_key)",
        "CREATE INDEX IF NOT EXISTS reconcile_at ON reconcile_changes(at)",
    ),
)


class SqliteChangeOps:
    """:class:`broker.reconcile.ops.ChangeOps` on the journal's connection (its transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _rows(self, where: str, args: Sequence[Any]) -> list[ItemRow]:
        cur = self.conn.execute(
            "SELECT id, json, status, study_uid, performed_study_uid, accession, patient_key "
            f"FROM worklist_items WHERE {where} ORDER BY id",
            args,
        )
        return [ItemRow(*row) for row in cur]

    def patient_items(self, patient: PatientRef) -> list[ItemRow]:
        if patient.issuer:
            return self._rows("patient_id=? AND issuer IN (?, '')",
                              (patient.patient_id, patient.issuer))  # fmt: skip
        return self._rows("patient_id=?", (patient.patient_id,))

    def patient_known(self, patient: PatientRef) -> bool:
        found = self.conn.execute(
            "SELECT 1 FROM worklist_items WHERE patient_id=? AND issuer=? LIMIT 1",
            (patient.patient_id, patient.issuer),
        ).fetchone()
        return found is not None

    def order_items(self, order_key: str) -> list[ItemRow]:
        return self._rows("order_key=?", (order_key,))

    def replace_item(
        self, item_id: int, item: DicomJson, patient_key: str, now: str, journal_id: int
    ) -> None:
        _replace(self.conn, item_id, _Row(item), patient_key, now, journal_id)

    def history(
        self, item_id: int, old: str, new: str, reason: str, journal_id: int, now: str
    ) -> None:
        _history(self.conn, item_id, old, new, reason, "hl7", journal_id, now)

    def record_change(
        self,
        kind: str,
        journal_id: int | None,
        *,
        patient: PatientRef | None = None,
        target: PatientRef | None = None,
        order_key: str = "",
        items: int = 0,
        detail: dict[str, Any],
    ) -> int:
        cur = self.conn.execute(
            "INSERT INTO reconcile_changes (at, journal_id, kind, patient_id, issuer, "
            "target_id, target_issuer, order_key, items, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                now_text(), journal_id, kind,
                patient.patient_id if patient else "", patient.issuer if patient else "",
                target.patient_id if target else "", target.issuer if target else "",
                order_key, items, json.dumps(detail, ensure_ascii=False),
            ),
        )  # fmt: skip
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_change_detail(self, change_id: int, detail: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE reconcile_changes SET detail=? WHERE id=?",
            (json.dumps(detail, ensure_ascii=False), change_id),
        )

    def enqueue(self, effect: Enqueue, journal_id: int) -> int:
        return int(apply_enqueue(self.conn, effect, journal_id)["outbox_id"])


def apply_patient_change(
    conn: sqlite3.Connection, effect: PatientChange, journal_id: int
) -> dict[str, Any]:
    """:func:`broker.reconcile.apply.apply_patient_change` in the journal's transaction."""
    return reconcile_apply.apply_patient_change(SqliteChangeOps(conn), effect, journal_id)


def apply_order_change(
    conn: sqlite3.Connection, effect: OrderChange, journal_id: int
) -> dict[str, Any]:
    """:func:`broker.reconcile.apply.apply_order_change` in the journal's transaction."""
    return reconcile_apply.apply_order_change(SqliteChangeOps(conn), effect, journal_id)


# -- the sweep and the history (broker reconcile …) --------------------------------------------

_CHUNK = 500  # well under SQLite's limit on bound variables


def sweep_items(
    conn: sqlite3.Connection, accessions: Sequence[str], study_uids: Sequence[str]
) -> list[OrderItem]:
    """Items holding one of the accessions or Study Instance UIDs (scheduled or performed)."""
    seen: dict[int, OrderItem] = {}
    queries = (
        ("accession", accessions),
        ("study_uid", study_uids),
        ("performed_study_uid", study_uids),
    )
    for column, values in queries:
        for i in range(0, len(values), _CHUNK):
            chunk = list(values[i : i + _CHUNK])
            rows = conn.execute(
                "SELECT id, json, study_uid, performed_study_uid FROM worklist_items "
                f"WHERE {column} IN ({','.join('?' * len(chunk))}) ORDER BY id DESC",
                chunk,
            )
            for item_id, text, study, performed in rows:
                if item_id not in seen:
                    uids = tuple(u for u in (study, performed) if u)
                    seen[item_id] = (item_id, json.loads(text), uids)
    return sorted(seen.values(), key=lambda it: -it[0])


def purge_history(db: SqliteDatabase, days: int, *, now: _dt.datetime | None = None) -> int:
    """Delete change records older than ``days``; returns how many went."""
    cutoff = ((now or _dt.datetime.now(_dt.UTC)) - _dt.timedelta(days=days)).isoformat(
        timespec="seconds"
    )
    removed: int = db.write_sync(
        lambda conn: conn.execute("DELETE FROM reconcile_changes WHERE at < ?", (cutoff,)).rowcount
    )
    return removed


def history(
    conn: sqlite3.Connection, *, patient: str = "", order: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    """Recorded changes, newest first; ``patient`` matches the patient or the target."""
    sql = (
        "SELECT id, at, journal_id, kind, patient_id, issuer, target_id, target_issuer, "
        "order_key, items, detail FROM reconcile_changes"
    )
    args: list[Any] = []
    where: list[str] = []
    if patient:
        where.append("(patient_id = ? OR target_id = ?)")
        args += [patient, patient]
    if order:
        where.append("order_key = ?")
        args.append(order)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    keys = ("id", "at", "journal_id", "kind", "patient_id", "issuer", "target_id",
            "target_issuer", "order_key", "items", "detail")  # fmt: skip
    out = []
    for row in conn.execute(sql, args):
        d = dict(zip(keys, row, strict=True))
        d["detail"] = json.loads(d["detail"])
        out.append(d)
    return out


__all__ = [
    "RECONCILE_SCHEMA",
    "SqliteChangeOps",
    "apply_order_change",
    "apply_patient_change",
    "history",
    "purge_history",
    "sweep_items",
]
