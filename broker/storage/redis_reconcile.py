"""Reconciliation and publishing on Redis: :class:`RedisChangeOps` lets the shared appliers
(:mod:`broker.reconcile.apply`, :mod:`broker.publishing`) run inside the journal's
optimistic transaction, and :class:`RedisChangeLog` keeps the audit trail of changes.

Keys (prefix ``broker``, hash tag ``{s}``)::

    broker:{s}:rc:ids      string  last change id
    broker:{s}:rc          hash    change id -> JSON (at, journal_id, kind, patient_id, issuer,
                                   target_id, target_issuer, order_key, items, detail)
    broker:{s}:rc:at       zset    change ids, score = when (retention, newest first)
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any

from redis import Redis

from broker.effects import DicomJson, Enqueue, PatientRef
from broker.reconcile.ops import ItemRow
from broker.storage.redis_keys import DEFAULT_PREFIX
from broker.storage.redis_queue import RedisOutbox
from broker.storage.redis_tx import IdBlocks, Tx
from broker.storage.redis_worklist import WorklistKeys, Writer, ids_of
from broker.worklist.stored import PreparedItem, now_text


class RedisChangeLog:
    """The reconcile change records (``broker reconcile history``, retention)."""

    def __init__(self, client: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        base = f"{prefix}:{{s}}:rc"
        self.ids = f"{base}:ids"
        self.records = base
        self.index = f"{base}:at"
        self.id_blocks = IdBlocks(client, self.ids)

    def history(
        self, *, patient: str = "", order: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Recorded changes, newest first; ``patient`` matches the patient or the target."""
        out: list[dict[str, Any]] = []
        start, page = 0, 500
        while len(out) < limit:
            ids = ids_of(self.client.zrevrange(self.index, start, start + page - 1))
            if not ids:
                break
            for raw in self.client.hmget(self.records, [str(i) for i in ids]):
                if raw is None:
                    continue
                row = json.loads(raw)
                if patient and patient not in (row["patient_id"], row["target_id"]):
                    continue
                if order and row["order_key"] != order:
                    continue
                out.append(row)
            start += page
        return out[:limit]

    def purge(self, days: int, *, now: _dt.datetime | None = None) -> int:
        """Delete change records older than ``days``; returns how many went."""
        cutoff = ((now or _dt.datetime.now(_dt.UTC)) - _dt.timedelta(days=days)).timestamp()
        removed = 0
        while True:
            ids = ids_of(self.client.zrangebyscore(self.index, "-inf", f"({cutoff!r}", 0, 500))
            if not ids:
                return removed
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.records, *(str(i) for i in ids))
            pipe.zrem(self.index, *(str(i) for i in ids))
            pipe.execute()
            removed += len(ids)


class RedisChangeOps:
    """:class:`broker.reconcile.ops.ChangeOps` in one Redis transaction."""

    def __init__(
        self,
        keys: WorklistKeys,
        client: Redis,
        tx: Tx,
        outbox: RedisOutbox,
        log: RedisChangeLog,
    ) -> None:
        self.keys = keys
        self.client = client
        self.tx = tx
        self.writer = Writer(keys, client, tx)
        self.outbox = outbox
        self.log = log
        self._records: dict[int, dict[str, Any]] = {}

    def _row(self, item_id: int, fields: dict[str, bytes]) -> ItemRow:
        k = json.loads(fields["k"])
        return ItemRow(
            item_id,
            fields["json"].decode(),
            fields.get("status", b"").decode(),
            k["study_uid"],
            fields.get("performed_study_uid", b"").decode(),
            k["accession"],
            fields.get("patient_key", b"").decode(),
        )

    def _patient_fields(self, patient_id: str) -> list[tuple[int, dict[str, bytes]]]:
        ids = sorted(int(i) for i in self.tx.smembers(self.keys.by("patient_id", patient_id)))
        found = [(i, self.writer.stored(i)) for i in ids]
        return [(i, f) for i, f in found if f.get("k")]

    def patient_items(self, patient: PatientRef) -> list[ItemRow]:
        rows = []
        for item_id, fields in self._patient_fields(patient.patient_id):
            issuer = json.loads(fields["k"])["issuer"]
            if not patient.issuer or issuer in (patient.issuer, ""):
                rows.append(self._row(item_id, fields))
        return rows

    def patient_known(self, patient: PatientRef) -> bool:
        return any(
            json.loads(fields["k"])["issuer"] == patient.issuer
            for _, fields in self._patient_fields(patient.patient_id)
        )

    def order_items(self, order_key: str) -> list[ItemRow]:
        return [self._row(i, f) for i, f in self.writer.order_items(order_key) if f.get("k")]

    def replace_item(
        self, item_id: int, item: DicomJson, patient_key: str, now: str, journal_id: int
    ) -> None:
        self.writer.replace(item_id, PreparedItem(item), patient_key, now, journal_id)

    def history(
        self, item_id: int, old: str, new: str, reason: str, journal_id: int, now: str
    ) -> None:
        self.writer.history(item_id, old, new, reason, "hl7", journal_id, now)

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
        change_id = self.log.id_blocks.next()
        record = {
            "id": change_id,
            "at": now_text(),
            "journal_id": journal_id,
            "kind": kind,
            "patient_id": patient.patient_id if patient else "",
            "issuer": patient.issuer if patient else "",
            "target_id": target.patient_id if target else "",
            "target_issuer": target.issuer if target else "",
            "order_key": order_key,
            "items": items,
            "detail": detail,
        }
        self._records[change_id] = record
        self._save(change_id)
        self.tx.op("zadd", self.log.index, {str(change_id): time.time()})
        return change_id

    def _save(self, change_id: int) -> None:
        record = self._records[change_id]
        self.tx.op("hset", self.log.records, str(change_id), json.dumps(record, ensure_ascii=False))

    def set_change_detail(self, change_id: int, detail: dict[str, Any]) -> None:
        self._records[change_id]["detail"] = detail
        self._save(change_id)

    def enqueue(self, effect: Enqueue, journal_id: int) -> int:
        return self.outbox.add(self.tx, effect, journal_id, time.time())
