"""The inbound journal and dedupe keys on Redis, shared by every broker node.

:meth:`RedisJournal.commit` is one optimistic transaction (:mod:`broker.storage.redis_tx`):
the dedupe key is read under WATCH, every effect is applied (worklist changes through
:mod:`broker.storage.redis_worklist`, outbound messages through the queues' own ENQUEUE
script), then the journal entry and the dedupe key are written, all in one MULTI/EXEC. Two
nodes receiving the same MSH-10 at once: one commits, the other's EXEC fails on the watched
dedupe key, it runs again and finds the message a duplicate. With ``appendfsync always``
Redis has the whole unit on disk before EXEC answers, and only then does the ACK leave.

Keys (prefix ``broker``, hash tag ``{s}``)::

    broker:{s}:journal:ids            string  last journal id handed out (in blocks per node)
    broker:{s}:journal                zset    entry ids, score = received_at
    broker:{s}:journal:<id>           hash    the entry (received_at, listener, peer, sender,
                                              control_id, message_type, version, charset,
                                              status, ack_code, route, detail, raw)
    broker:{s}:dedupe:<sender>|<msh10>  string  journal id of the accepted message; expires
                                              after the dedupe window

Every effect the SQLite journal applies is applied here too, by the same logic: worklist
upserts and status changes (:mod:`broker.storage.redis_worklist`), reconcile's patient and
order changes (:mod:`broker.reconcile.apply`) and publish (:mod:`broker.publishing`) through
:class:`broker.storage.redis_reconcile.RedisChangeOps`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from redis import Redis

from broker.effects import (
    Effect,
    Enqueue,
    OrderChange,
    PatientChange,
    Publish,
    Skipped,
    WorklistStatusChange,
    WorklistUpsert,
)
from broker.errors import ConflictError
from broker.hl7.ack import AckCode, AckError
from broker.ingest.decision import RouteDecision
from broker.ingest.journal import CommitResult, InboundRecord, JournalEntry
from broker.publishing import apply_publish
from broker.reconcile.apply import apply_order_change, apply_patient_change
from broker.storage import redis_tx
from broker.storage.redis_keys import DEFAULT_PREFIX
from broker.storage.redis_queue import RedisOutbox
from broker.storage.redis_reconcile import RedisChangeLog, RedisChangeOps
from broker.storage.redis_tx import IdBlocks, Tx
from broker.storage.redis_worklist import (
    RedisWorklistStore,
    apply_status,
    apply_upsert,
    ids_of,
    prefetch,
)
from broker.worklist.status_message import OriginalMessage

#: Default window within which the same MSH-10 from the same sender is a duplicate.
DEFAULT_DEDUPE_WINDOW_S = 7 * 24 * 3600
#: Threads running commits (each one Redis connection; the event loop never blocks on Redis).
COMMIT_THREADS = 16

Applier = Callable[[Tx, Any, int], dict[str, Any]]


class JournalKeys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        base = f"{prefix}:{{s}}"
        self.ids = f"{base}:journal:ids"
        self.index = f"{base}:journal"
        self._entry = f"{base}:journal:"
        self._dedupe = f"{base}:dedupe:"

    def entry(self, journal_id: int) -> str:
        return f"{self._entry}{journal_id}"

    def dedupe(self, sender: str, control_id: str) -> str:
        return f"{self._dedupe}{sender}|{control_id}"


class RedisJournal:
    """:class:`broker.ingest.journal.Journal` on Redis."""

    def __init__(
        self,
        client: Redis,
        worklist: RedisWorklistStore,
        *,
        prefix: str = DEFAULT_PREFIX,
        dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S,
    ) -> None:
        self.client = client
        self.keys = JournalKeys(prefix)
        self.worklist = worklist
        self.outbox = RedisOutbox(client, prefix=prefix)
        self.dedupe_window_s = dedupe_window_s
        self._ids = IdBlocks(client, self.keys.ids)
        wl = worklist.keys
        self.changes = RedisChangeLog(client, prefix)
        self.appliers: dict[type, Applier] = {
            Enqueue: self._enqueue,
            Skipped: lambda tx, e, j: {"skipped": e.action, "reason": e.reason},
            WorklistUpsert: lambda tx, e, j: apply_upsert(wl, client, tx, e, j),
            WorklistStatusChange: lambda tx, e, j: apply_status(wl, client, tx, e, j),
            PatientChange: lambda tx, e, j: apply_patient_change(self.change_ops(tx), e, j),
            OrderChange: lambda tx, e, j: apply_order_change(self.change_ops(tx), e, j),
        }
        self._pool = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="redis-journal")

    def change_ops(self, tx: Tx) -> RedisChangeOps:
        """The reconcile/publish appliers' view of the store inside ``tx``."""
        return RedisChangeOps(self.worklist.keys, self.client, tx, self.outbox, self.changes)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- writing ---------------------------------------------------------------------------

    async def commit(self, record: InboundRecord, decision: RouteDecision) -> CommitResult:
        """See :meth:`broker.ingest.journal.Journal.commit`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.commit_sync, record, decision)

    def commit_sync(self, record: InboundRecord, decision: RouteDecision) -> CommitResult:
        journal_id = self._ids.next()
        return redis_tx.run(
            self.client, lambda tx: self._commit(tx, record, decision, journal_id), "commit"
        )

    def _commit(
        self, tx: Tx, record: InboundRecord, decision: RouteDecision, journal_id: int
    ) -> CommitResult:
        dedupe = self.keys.dedupe(record.sender, record.control_id)
        # everything this commit will read first, in one round trip with its WATCH
        ahead = prefetch(self.worklist.keys, decision.effects) if decision.ack_code == "AA" else []
        tx.fetch([("GET", dedupe), *ahead] if record.control_id else ahead)
        if record.control_id:
            original = tx.get(dedupe)
            if original is not None:
                self._write(
                    tx,
                    journal_id,
                    record,
                    "duplicate",
                    "AA",
                    decision.route,
                    {"original": int(original)},
                )
                return CommitResult(journal_id, "AA", duplicate=True)
        if decision.ack_code != "AA":
            detail = {"errors": [asdict(e) for e in decision.errors], "actions": decision.actions}
            self._write(tx, journal_id, record, "error", decision.ack_code, decision.route, detail)
            return CommitResult(journal_id, decision.ack_code, decision.errors)
        done: list[dict[str, Any]] = []
        try:
            for effect in decision.effects:
                if isinstance(effect, Publish):  # tells what the effects before it did
                    before = decision.effects[: len(done)]
                    done.append(
                        apply_publish(self.change_ops(tx), effect, before, done, journal_id)
                    )
                else:
                    done.append(self._apply(tx, effect, journal_id))
        except ConflictError as exc:
            tx.discard_writes()
            error = AckError(exc.hl7_code, exc.hl7_location, str(exc))
            detail = {"errors": [asdict(error)], "actions": decision.actions}
            self._write(tx, journal_id, record, "error", "AE", decision.route, detail)
            return CommitResult(journal_id, "AE", (error,))
        applied = tuple({k: v for k, v in d.items() if not k.startswith("_")} for d in done)
        detail = {"actions": decision.actions}
        if decision.effects:
            detail["applied"] = applied
        self._write(tx, journal_id, record, "accepted", "AA", decision.route, detail)
        if record.control_id:
            tx.set(dedupe, journal_id, ex=max(1, int(self.dedupe_window_s)))
        return CommitResult(journal_id, "AA", applied=applied)

    def _apply(self, tx: Tx, effect: Effect, journal_id: int) -> dict[str, Any]:
        applier = self.appliers.get(type(effect))
        if applier is None:
            raise ConflictError(
                f"this store cannot apply {type(effect).__name__} effects", hl7_code=207
            )
        return applier(tx, effect, journal_id)

    def _enqueue(self, tx: Tx, effect: Enqueue, journal_id: int) -> dict[str, Any]:
        entry_id = self.outbox.add(tx, effect, journal_id, time.time())
        return {"queued": effect.destination, "outbox_id": entry_id}

    def _write(
        self,
        tx: Tx,
        journal_id: int,
        record: InboundRecord,
        status: str,
        ack_code: str,
        route: str | None,
        detail: dict[str, Any],
    ) -> None:
        tx.hset(
            self.keys.entry(journal_id),
            {
                "received_at": repr(record.received_at),
                "listener": record.listener,
                "peer": record.peer,
                "sender": record.sender,
                "control_id": record.control_id,
                "message_type": record.message_type,
                "version": record.version,
                "charset": record.charset,
                "status": status,
                "ack_code": ack_code,
                "route": route if route is not None else "\0",
                "detail": json.dumps(detail),
                "raw": record.raw,
            },
        )
        tx.op("zadd", self.keys.index, {str(journal_id): record.received_at})

    async def record_rejected(
        self, record: InboundRecord, ack_code: AckCode, errors: tuple[AckError, ...]
    ) -> int:
        """See :meth:`broker.ingest.journal.Journal.record_rejected`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._rejected, record, ack_code, errors)

    def _rejected(
        self, record: InboundRecord, ack_code: AckCode, errors: tuple[AckError, ...]
    ) -> int:
        journal_id = self._ids.next()
        detail = {"errors": [asdict(e) for e in errors]}
        redis_tx.run(
            self.client,
            lambda tx: self._write(tx, journal_id, record, "rejected", ack_code, None, detail),
            "journal a rejected message",
        )
        return journal_id

    def original(self, tx: Tx, journal_id: int) -> OriginalMessage | None:
        """The raw message and charset of an entry (read in an MPPS transaction)."""
        raw, charset = tx.hmget(self.keys.entry(journal_id), ["raw", "charset"])
        if raw is None:
            return None
        return OriginalMessage(journal_id, bytes(raw), (charset or b"").decode())

    # -- reading and maintenance -----------------------------------------------------------

    def _entries(self, ids: list[int]) -> list[JournalEntry]:
        def fetch(c: Redis) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for journal_id in ids:
                pipe.hgetall(self.keys.entry(journal_id))
            return list(pipe.execute())

        rows = redis_tx.read(self.client, fetch, "journal read")
        return [_entry(i, row) for i, row in zip(ids, rows, strict=True) if row]

    def recent(self, limit: int = 50, *, status: str | None = None) -> list[JournalEntry]:
        """Newest entries first, optionally only one status."""
        out: list[JournalEntry] = []
        start, page = 0, max(limit, 100)
        while len(out) < limit:
            ids = ids_of(self.client.zrevrange(self.keys.index, start, start + page - 1))
            if not ids:
                break
            out.extend(e for e in self._entries(ids) if status is None or e.status == status)
            start += page
        return out[:limit]

    def get(self, journal_id: int) -> JournalEntry | None:
        found = self._entries([journal_id])
        return found[0] if found else None

    def find_control_id(self, control_id: str) -> list[JournalEntry]:
        """Every entry with this MSH-10 (any sender), oldest first (a scan: tools only)."""
        ids = ids_of(self.client.zrange(self.keys.index, 0, -1))
        out: list[JournalEntry] = []
        for start in range(0, len(ids), 500):
            out.extend(
                e for e in self._entries(ids[start : start + 500]) if e.control_id == control_id
            )
        return out

    def stats(self) -> dict[str, int]:
        """Entry count and the Redis server's memory (for /metrics)."""
        memory = self.client.info("memory").get("used_memory", 0)
        return {"entries": int(self.client.zcard(self.keys.index)), "bytes": int(memory)}

    def purge(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete entries received before the cut-off; Redis frees their memory at once
        (dedupe keys expire by themselves)."""
        cutoff = (now if now is not None else time.time()) - older_than_s
        removed = 0
        while True:
            ids = ids_of(self.client.zrangebyscore(self.keys.index, "-inf", f"({cutoff!r}", 0, 500))
            if not ids:
                return removed
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(*(self.keys.entry(i) for i in ids))
            pipe.zrem(self.keys.index, *(str(i) for i in ids))
            pipe.execute()
            removed += len(ids)


def _entry(journal_id: int, row: dict[bytes, bytes]) -> JournalEntry:
    f = {k.decode(): v for k, v in row.items()}
    route = f["route"].decode()
    return JournalEntry(
        id=journal_id,
        received_at=float(f["received_at"]),
        listener=f["listener"].decode(),
        peer=f["peer"].decode(),
        sender=f["sender"].decode(),
        control_id=f["control_id"].decode(),
        message_type=f["message_type"].decode(),
        version=f["version"].decode(),
        charset=f["charset"].decode(),
        status=f["status"].decode(),
        ack_code=f["ack_code"].decode(),
        route=None if route == "\0" else route,
        detail=json.loads(f["detail"]),
        raw=bytes(f["raw"]),
    )
