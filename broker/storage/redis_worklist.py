"""The worklist on Redis: items, their indexes, the query path and MPPS, shared by every node.

Several ``broker serve`` nodes with ``store: redis://…`` answer the same worklist: an order
committed through one node is in the next C-FIND answered by any other, and an MPPS N-SET
on one moves the item every node serves. Writes are optimistic transactions
(:mod:`broker.storage.redis_tx`): the keys a write reads are WATCHed, its writes sent in one
MULTI/EXEC, and it starts again if another node changed them meanwhile.

Keys (prefix ``broker``, every one under the hash tag ``{s}``)::

    broker:{s}:wl:ids               string  last item id handed out (in blocks per node)
    broker:{s}:wl:item:<id>         hash    json, charset, enc_i/lay_i, enc_e/lay_e (pre-
                                            encoded for both transfer syntaxes), k (index
                                            keys, JSON), order_key, patient_key, status,
                                            active, source, created/updated/finished_at,
                                            performed_study_uid, journal_id
    broker:{s}:wl:hist:<id>         list    status changes (JSON), oldest first
    broker:{s}:wl:all               zset    every item id (score id)
    broker:{s}:wl:active            zset    items C-FIND returns (score id)
    broker:{s}:wl:finished          zset    finished items, score = finished time (retention)
    broker:{s}:wl:order:<key>       set     an order's items (all statuses)
    broker:{s}:wl:by:<field>:<v>    set     every item with study_uid / accession /
                                            patient_id / performed_study_uid v (any status:
                                            MPPS links, merges, the reconcile sweep)
    broker:{s}:wl:ix:<field>:<v>    set     active items: accession, patient_id, study_uid,
                                            rp_id, sps_id
    broker:{s}:wl:ix:<field>:<v>    zset    active steps: station_ae, modality; member
                                            '<id>:<step>', score = the step's date (YYYYMMDD)
    broker:{s}:wl:ix:sps_date       zset    every active step by date (member '<id>:<step>')
    broker:{s}:wl:ix:patient_name   zset    active items, lexicographic: '<name>\\0<id>'
    broker:{s}:wl:mpps:<uid>        hash    an MPPS instance: state, calling_ae, study_uid,
                                            item_ids, json, created_at, updated_at
    broker:{s}:wl:events            hash    procedure event id -> JSON (with its notice)
    broker:{s}:wl:event_ids         string  last event id

The query path (:meth:`RedisWorklistStore.candidates`) takes the plan's driving field to an
index, reads the candidates' keys and encodings in one pipeline, and keeps those meeting
every constraint of the plan, with the same semantics as the SQLite query (eq, in, glob,
range, empty; step constraints within one step).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from redis import Redis

from broker.effects import Enqueue, WorklistStatusChange, WorklistUpsert
from broker.storage import redis_tx
from broker.storage.redis_keys import DEFAULT_PREFIX
from broker.storage.redis_queue import RedisOutbox
from broker.storage.redis_tx import IdBlocks, Tx
from broker.worklist import item as wi
from broker.worklist import lifecycle, mpps
from broker.worklist.item import DicomJson
from broker.worklist.mpps_apply import (
    LinkedItem,
    MppsInstance,
    ProcedurePublishHook,
    apply_mpps,
)
from broker.worklist.query import Constraint, IndexPlan
from broker.worklist.status_message import OriginalMessage, ProcedureEventHook
from broker.worklist.stored import PreparedItem, now_text, plan_upsert, with_status

log = logging.getLogger(__name__)

__all__ = ["RedisWorklistStore", "WorklistKeys"]

#: Reads a journal entry's raw message and charset (the order an order-status answers).
JournalReader = Callable[[Tx, int], OriginalMessage | None]

#: Item fields (constraint names) kept in the ``k`` record and indexed as sets.
ITEM_FIELDS = ("accession", "patient_id", "issuer", "patient_name", "rp_id", "sps_id", "study_uid")
STEP_FIELDS = ("station_ae", "modality", "sps_date", "sps_time", "sps_dt", "sps_id", "sps_status")
_SET_DRIVERS = ("accession", "patient_id", "study_uid", "rp_id")
_STEP_ZSETS = ("station_ae", "modality")
#: Candidates read per pipeline round trip.
FETCH_CHUNK = 256
_HEAD = ("k", "charset", "active")


class WorklistKeys:
    """Every worklist key of one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.base = f"{prefix}:{{s}}:wl"
        self.ids = f"{self.base}:ids"
        self.all = f"{self.base}:all"
        self.active = f"{self.base}:active"
        self.finished = f"{self.base}:finished"
        self.dates = f"{self.base}:ix:sps_date"
        self.names = f"{self.base}:ix:patient_name"
        self.events = f"{self.base}:events"
        self.event_ids = f"{self.base}:event_ids"

    def item(self, item_id: int) -> str:
        return f"{self.base}:item:{item_id}"

    def history(self, item_id: int) -> str:
        return f"{self.base}:hist:{item_id}"

    def order(self, order_key: str) -> str:
        return f"{self.base}:order:{order_key}"

    def by(self, field: str, value: str) -> str:
        return f"{self.base}:by:{field}:{value}"

    def ix(self, field: str, value: str) -> str:
        return f"{self.base}:ix:{field}:{value}"

    def mpps(self, uid: str) -> str:
        return f"{self.base}:mpps:{uid}"


# -- index records ----------------------------------------------------------------------------


def key_record(row: PreparedItem) -> dict[str, Any]:
    """The index values of an item as stored in its ``k`` field (constraint field names)."""
    k = row.keys
    return {
        "accession": k.accession,
        "patient_id": k.patient_id,
        "issuer": k.issuer,
        "patient_name": k.patient_name,
        "rp_id": k.requested_procedure_id,
        "sps_id": k.step_id,
        "study_uid": k.study_uid,
        "steps": [
            [
                s.station_ae,
                s.modality,
                s.start_date,
                s.start_time,
                s.start_datetime,
                s.step_id,
                s.status,
            ]
            for s in k.steps
        ],
    }


def _date_score(date: str) -> int:
    return int(date) if len(date) == 8 and date.isdigit() else -1


Membership = tuple[str, str, str, float]  # (kind: set|zset|lex, key, member, score)


def memberships(
    keys: WorklistKeys, item_id: int, k: dict[str, Any], order_key: str, active: bool
) -> set[Membership]:
    """Every index entry an item holds."""
    sid = str(item_id)
    out: set[Membership] = {
        ("set", keys.order(order_key), sid, 0.0),
        ("zset", keys.all, sid, float(item_id)),
    }
    for field in ("study_uid", "accession", "patient_id"):
        if k[field]:
            out.add(("set", keys.by(field, k[field]), sid, 0.0))
    if not active:
        return out
    out.add(("zset", keys.active, sid, float(item_id)))
    for field in _SET_DRIVERS:
        if k[field]:
            out.add(("set", keys.ix(field, k[field]), sid, 0.0))
    out.add(("lex", keys.names, f"{k['patient_name']}\0{sid}", 0.0))
    for n, step in enumerate(k["steps"]):
        member, score = f"{sid}:{n}", float(_date_score(step[2]))
        out.add(("zset", keys.dates, member, score))
        for field, value in (("station_ae", step[0]), ("modality", step[1])):
            out.add(("zset", keys.ix(field, value), member, score))
        if step[5]:
            out.add(("set", keys.ix("sps_id", step[5]), sid, 0.0))
    return out


def reindex(tx: Tx, old: set[Membership], new: set[Membership]) -> None:
    """Queue the index changes from ``old`` to ``new`` memberships."""
    for kind, key, member, _ in old - new:
        if kind == "set":
            tx.srem(key, member)
        else:
            tx.op("zrem", key, member)
    for kind, key, member, score in new - old:
        if kind == "set":
            tx.sadd(key, member)
        else:
            tx.op("zadd", key, {member: score})


# -- constraint evaluation (the SQL of the SQLite store, in Python) --------------------------


def _glob(pattern: str) -> re.Pattern[str]:
    # SQLite GLOB: case-sensitive '*', '?', '[...]'; the planner escapes '[' as '[[]'
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


class _Check:
    """One constraint compiled to a test on a field value."""

    __slots__ = ("field", "test")

    def __init__(self, con: Constraint) -> None:
        self.field = con.field
        values = con.values
        if con.op == "eq":
            value = values[0]
            self.test: Callable[[str], bool] = lambda v: v == value
        elif con.op == "in":
            options = frozenset(values)
            self.test = lambda v: v in options
        elif con.op == "glob":
            match = _glob(values[0]).match
            self.test = lambda v: match(v) is not None
        elif con.op == "empty":
            self.test = lambda v: v == ""
        else:
            lo, hi = values
            self.test = lambda v: v != "" and (not lo or v >= lo) and (not hi or v <= hi)


_STEP_INDEX = {name: n for n, name in enumerate(STEP_FIELDS)}


class _Filter:
    """A plan's constraints over a stored ``k`` record."""

    def __init__(self, plan: IndexPlan) -> None:
        self.item = [_Check(c) for c in plan.item]
        self.step = [(_STEP_INDEX[c.field], _Check(c)) for c in plan.step]

    def __call__(self, k: dict[str, Any]) -> bool:
        for check in self.item:
            if not check.test(k[check.field]):
                return False
        if not self.step:
            return True
        return any(all(check.test(step[n]) for n, check in self.step) for step in k["steps"])


# -- writing -----------------------------------------------------------------------------------


class Writer:
    """Item writes inside one transaction (shared by the appliers, MPPS and bulk loads)."""

    def __init__(self, keys: WorklistKeys, client: Redis, tx: Tx) -> None:
        self.keys = keys
        self.client = client
        self.tx = tx

    def new_id(self) -> int:
        # outside the transaction (a retried unit leaves a gap): ids only need to be unique
        return item_ids(self.keys, self.client).next()

    def insert(
        self,
        row: PreparedItem,
        order_key: str,
        patient_key: str,
        source: str,
        now: str,
        journal_id: int | None,
    ) -> int:
        item_id = self.new_id()
        status = row.status
        active = lifecycle.is_active(status)
        k = key_record(row)
        self.tx.hset(
            self.keys.item(item_id),
            {
                **self._content(row, k),
                "order_key": order_key,
                "patient_key": patient_key,
                "status": status,
                "active": int(active),
                "source": source,
                "created_at": now,
                "updated_at": now,
                "finished_at": "" if active else now,
                "performed_study_uid": "",
                "journal_id": journal_id or 0,
            },
        )
        reindex(self.tx, set(), memberships(self.keys, item_id, k, order_key, active))
        if not active:
            self.tx.op("zadd", self.keys.finished, {str(item_id): _epoch(now)})
        return item_id

    @staticmethod
    def _content(row: PreparedItem, k: dict[str, Any]) -> dict[str, Any]:
        return {
            "json": row.text,
            "charset": row.charset,
            "k": json.dumps(k),
            "enc_i": row.enc_i.blob,
            "lay_i": row.enc_i.layout,
            "enc_e": row.enc_e.blob,
            "lay_e": row.enc_e.layout,
        }

    def stored(self, item_id: int) -> dict[str, bytes]:
        return self.tx.hgetall(self.keys.item(item_id))

    def replace(
        self,
        item_id: int,
        row: PreparedItem,
        patient_key: str | None,
        now: str,
        journal_id: int | None,
    ) -> None:
        """Rewrite an item (its JSON, encodings, keys, status) and move its index entries."""
        before = self.stored(item_id)
        order_key = _s(before.get("order_key"))
        was_active = _s(before.get("active")) == "1"
        status = row.status
        active = lifecycle.is_active(status)
        k = key_record(row)
        fields: dict[str, Any] = {
            **self._content(row, k),
            "status": status,
            "active": int(active),
            "updated_at": now,
        }
        if patient_key is not None:
            fields["patient_key"] = patient_key
        if journal_id:
            fields["journal_id"] = journal_id
        if active:
            fields["finished_at"] = ""
            self.tx.op("zrem", self.keys.finished, str(item_id))
        elif not _s(before.get("finished_at")):
            fields["finished_at"] = now
            self.tx.op("zadd", self.keys.finished, {str(item_id): _epoch(now)})
        self.tx.hset(self.keys.item(item_id), fields)
        old_k = json.loads(before["k"]) if before.get("k") else None
        old = memberships(self.keys, item_id, old_k, order_key, was_active) if old_k else set()
        reindex(self.tx, old, memberships(self.keys, item_id, k, order_key, active))

    def history(
        self,
        item_id: int,
        old: str,
        new: str,
        reason: str,
        source: str,
        journal_id: int | None,
        now: str,
    ) -> None:
        entry = {
            "at": now,
            "old": old,
            "new": new,
            "reason": reason,
            "source": source,
            "journal_id": journal_id,
        }
        self.tx.op("rpush", self.keys.history(item_id), json.dumps(entry))

    def set_status(
        self,
        item_id: int,
        text: str,
        old: str,
        new: str,
        reason: str,
        source: str,
        journal_id: int | None,
        now: str,
    ) -> None:
        """Move one item to ``new``: the status lives in the encoded SPS too, so re-encode."""
        row = PreparedItem(with_status(json.loads(text), new))
        self.replace(item_id, row, None, now, journal_id)
        self.history(item_id, old, new, reason, source, journal_id, now)

    def order_items(self, order_key: str) -> list[tuple[int, dict[str, bytes]]]:
        ids = sorted(int(i) for i in self.tx.smembers(self.keys.order(order_key)))
        return [(i, self.stored(i)) for i in ids]


_ITEM_IDS: dict[tuple[int, str], IdBlocks] = {}
_ITEM_IDS_LOCK = threading.Lock()


def item_ids(keys: WorklistKeys, client: Redis) -> IdBlocks:
    """The item id blocks of one client and key (one per store in a process)."""
    with _ITEM_IDS_LOCK:
        found = _ITEM_IDS.get((id(client), keys.ids))
        if found is None or found.client is not client:
            found = _ITEM_IDS[(id(client), keys.ids)] = IdBlocks(client, keys.ids)
        return found


def _list(values: Any) -> list[Any]:
    """A reply redis-py types loosely, as the list it is."""
    return list(values)


def ids_of(values: Any) -> list[int]:
    """Ids from a set or sorted set reply."""
    return [int(v) for v in values]


def _step_ids(values: Any) -> set[int]:
    """Item ids from step index members ('<id>:<step>')."""
    return {int(bytes(m).split(b":")[0]) for m in values}


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _epoch(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso).timestamp()


def prefetch(keys: WorklistKeys, effects: Iterable[object]) -> list[tuple[str, str]]:
    """The reads the worklist appliers will start with, for :meth:`Tx.fetch`: each order's
    item set and the holders of each new Study Instance UID."""
    out: list[tuple[str, str]] = []
    for effect in effects:
        if isinstance(effect, WorklistUpsert | WorklistStatusChange):
            out.append(("SMEMBERS", keys.order(effect.order_key)))
        if isinstance(effect, WorklistUpsert):
            for item in effect.items:
                uid = wi.first_text(item, wi.STUDY_INSTANCE_UID)
                if uid:
                    out.append(("SMEMBERS", keys.by("study_uid", uid)))
    return out


def apply_upsert(
    keys: WorklistKeys, client: Redis, tx: Tx, effect: WorklistUpsert, journal_id: int
) -> dict[str, Any]:
    """:func:`broker.storage.sqlite_worklist.apply_worklist_upsert` on Redis (same rules,
    decided by :func:`broker.worklist.stored.plan_upsert`)."""
    w = Writer(keys, client, tx)
    now = now_text()
    rows = [PreparedItem(item) for item in effect.items]
    own = w.order_items(effect.order_key)
    taken: set[str] = set()
    for study in sorted({row.keys.study_uid for row in rows if row.keys.study_uid}):
        for other in tx.smembers(keys.by("study_uid", study)):
            order = _s(tx.hmget(keys.item(int(other)), ["order_key"])[0])
            if order != effect.order_key:
                taken.add(study)
    texts = {item_id: _s(fields.get("json")) for item_id, fields in own}
    listed = []
    for item_id, fields in own:
        k = json.loads(fields["k"])
        listed.append((k["rp_id"], k["sps_id"], item_id, _s(fields.get("status"))))
    listed.sort()
    existing = {(rp, sps): (item_id, status) for rp, sps, item_id, status in listed}
    decided = plan_upsert(effect, rows, existing, taken, texts.__getitem__)
    for row in decided.created:
        item_id = w.insert(row, effect.order_key, effect.patient_key, "hl7", now, journal_id)
        w.history(
            item_id, "", row.keys.status or lifecycle.SCHEDULED, "created", "hl7", journal_id, now
        )
    for item_id, row, old, new in decided.replaced:
        w.replace(item_id, row, effect.patient_key, now, journal_id)
        if new != old:
            w.history(item_id, old, new, "order updated", "hl7", journal_id, now)
    for item_id, old in decided.cancelled:
        w.set_status(
            item_id,
            texts[item_id],
            old,
            lifecycle.CANCELED,
            "removed from order",
            "hl7",
            journal_id,
            now,
        )
    return decided.summary(effect.report_changes)


def apply_status(
    keys: WorklistKeys, client: Redis, tx: Tx, effect: WorklistStatusChange, journal_id: int
) -> dict[str, Any]:
    """:func:`broker.storage.sqlite_worklist.apply_worklist_status` on Redis."""
    w = Writer(keys, client, tx)
    now = now_text()
    target = lifecycle.normalise_status(effect.status)
    changed = unchanged = 0
    for item_id, fields in w.order_items(effect.order_key):
        old = _s(fields.get("status"))
        new = lifecycle.transition(old, target)
        if new is None:
            unchanged += 1
            continue
        w.set_status(
            item_id,
            _s(fields.get("json")),
            old,
            new,
            effect.reason or "order status",
            "hl7",
            journal_id,
            now,
        )
        changed += 1
    return {"changed": changed, "unchanged": unchanged}


# -- the store ---------------------------------------------------------------------------------


class RedisWorklistStore:
    """:class:`broker.worklist.service.WorklistStore` on Redis, plus what the CLI and admin
    API read (the same methods as :class:`SqliteWorklistStore`)."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        on_procedure_event: ProcedureEventHook | None = None,
        on_procedure_publish: ProcedurePublishHook | None = None,
        journal_reader: JournalReader | None = None,
        outbox: RedisOutbox | None = None,
    ) -> None:
        self.client = client
        self.keys = WorklistKeys(prefix)
        self.on_procedure_event = on_procedure_event
        self.on_procedure_publish = on_procedure_publish
        self.journal_reader = journal_reader
        self.outbox = outbox or RedisOutbox(client, prefix=prefix)

    # -- writing ---------------------------------------------------------------------------

    def bulk_load(
        self,
        items: Iterable[DicomJson],
        *,
        order_key: Callable[[DicomJson, int], str] | None = None,
        source: str = "bulk",
        chunk: int = 500,
    ) -> list[int]:
        """Insert items as they are (no merging, status kept), ``chunk`` per transaction."""
        ids: list[int] = []
        batch: list[tuple[PreparedItem, str]] = []

        def flush() -> None:
            now = now_text()

            def unit(tx: Tx) -> list[int]:
                w = Writer(self.keys, self.client, tx)
                return [w.insert(row, key, "", source, now, None) for row, key in batch]

            ids.extend(redis_tx.run(self.client, unit, "worklist bulk load"))
            batch.clear()

        for n, item in enumerate(items):
            batch.append((PreparedItem(item), order_key(item, n) if order_key else f"{source}:{n}"))
            if len(batch) >= chunk:
                flush()
        if batch:
            flush()
        return ids

    def upsert(
        self, order_key: str, items: Sequence[DicomJson], patient_key: str = ""
    ) -> dict[str, Any]:
        """Apply a WorklistUpsert on its own (CLI, tests)."""
        effect = WorklistUpsert(order_key, tuple(items), patient_key)
        result = redis_tx.run(
            self.client,
            lambda tx: apply_upsert(self.keys, self.client, tx, effect, 0),
            "worklist upsert",
        )
        return {k: v for k, v in result.items() if not k.startswith("_")}

    def set_order_status(self, order_key: str, status: str, reason: str = "") -> dict[str, Any]:
        effect = WorklistStatusChange(order_key, status, reason)
        return redis_tx.run(
            self.client,
            lambda tx: apply_status(self.keys, self.client, tx, effect, 0),
            "worklist status",
        )

    def purge(self, retention_days: int, *, now: _dt.datetime | None = None) -> int:
        """Delete finished items (and their history) finished before the retention window."""
        cutoff = lifecycle.purge_cutoff(now or _dt.datetime.now(_dt.UTC), retention_days)
        limit = _dt.datetime.fromisoformat(cutoff).timestamp()
        ids = ids_of(self.client.zrangebyscore(self.keys.finished, "-inf", f"({limit}"))
        removed = 0
        for item_id in ids:

            def unit(tx: Tx, item_id: int = item_id) -> int:
                fields = tx.hgetall(self.keys.item(item_id))
                if not fields or _s(fields.get("active")) == "1":
                    tx.op("zrem", self.keys.finished, str(item_id))
                    return 0
                k = json.loads(fields["k"])
                old = memberships(self.keys, item_id, k, _s(fields.get("order_key")), False)
                reindex(tx, old, set())
                performed = _s(fields.get("performed_study_uid"))
                if performed:  # linked by MPPS, outside the item's own index entries
                    tx.srem(self.keys.by("performed_study_uid", performed), str(item_id))
                tx.delete(self.keys.item(item_id), self.keys.history(item_id))
                tx.op("zrem", self.keys.finished, str(item_id))
                return 1

            removed += redis_tx.run(self.client, unit, "worklist retention")
        return removed

    # -- MPPS ------------------------------------------------------------------------------

    def mpps_apply(
        self,
        kind: str,
        sop_instance_uid: str,
        dataset: DicomJson,
        calling_ae: str,
        links: Sequence[tuple[str, str, str, str]] = (),
    ) -> mpps.Decision:
        """MPPS N-CREATE / N-SET in one transaction
        (:func:`broker.worklist.mpps_apply.apply_mpps`)."""
        return redis_tx.run(
            self.client,
            lambda tx: apply_mpps(
                RedisMppsOps(self, tx), kind, sop_instance_uid, dataset, calling_ae, links,
                on_event=self.on_procedure_event, on_publish=self.on_procedure_publish,
            ),
            f"MPPS N-{kind.upper()}",
        )  # fmt: skip

    def mpps_state(self, sop_instance_uid: str) -> str | None:
        state = redis_tx.read(
            self.client, lambda c: c.hget(self.keys.mpps(sop_instance_uid), "state"), "MPPS read"
        )
        return None if state is None else _s(state)

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Recorded procedure events with id > ``after_id``, oldest first."""
        last = int(self.client.get(self.keys.event_ids) or 0)
        wanted = [str(i) for i in range(after_id + 1, last + 1)]
        out: list[dict[str, Any]] = []
        for start in range(0, len(wanted), 500):
            for raw in self.client.hmget(self.keys.events, wanted[start : start + 500]):
                if raw is not None:
                    out.append(_event_row(json.loads(raw)))
                    if len(out) >= limit:
                        return out
        return out

    # -- reading ---------------------------------------------------------------------------

    def _driver_ids(self, plan: IndexPlan) -> list[int]:
        """Candidate ids from the plan's driving index (a superset of the answer)."""
        cons = {c.field: c for c in (*plan.item, *plan.step)}
        driver = cons.get(plan.driver) if plan.driver else None
        c = self.client
        if driver is not None and driver.op in ("eq", "in"):
            if driver.field in _SET_DRIVERS or driver.field == "sps_id":
                keys = [self.keys.ix(driver.field, v) for v in driver.values]
                return sorted(
                    int(m) for m in (c.sunion(keys) if len(keys) > 1 else c.smembers(keys[0]))
                )
            if driver.field in _STEP_ZSETS:
                lo, hi = _date_bounds(cons.get("sps_date"), cons.get("sps_dt"))
                found: set[int] = set()
                for value in driver.values:
                    found |= _step_ids(c.zrangebyscore(self.keys.ix(driver.field, value), lo, hi))
                return sorted(found)
        if (
            driver is not None
            and driver.field in ("sps_date", "sps_dt")
            and driver.op in ("eq", "range")
        ):
            lo, hi = _date_bounds(cons.get("sps_date"), cons.get("sps_dt"))
            return sorted(_step_ids(c.zrangebyscore(self.keys.dates, lo, hi)))
        if driver is not None and driver.field == "patient_name" and driver.op in ("eq", "glob"):
            prefix = driver.values[0] if driver.op == "eq" else _literal_prefix(driver.values[0])
            if prefix:
                start = prefix.encode() + (b"\0" if driver.op == "eq" else b"")
                stop = prefix.encode() + (b"\x01" if driver.op == "eq" else b"\xff")
                members = c.zrangebylex(self.keys.names, b"[" + start, b"(" + stop)
                return sorted(int(bytes(m).rsplit(b"\0", 1)[1]) for m in _list(members))
        return ids_of(c.zrange(self.keys.active, 0, -1))

    def candidates(
        self, plan: IndexPlan, *, explicit: bool, with_json: bool
    ) -> Iterator[tuple[Any, ...]]:
        """Rows (id, native charset, blob, layout[, json]) of active items meeting ``plan``."""
        ids = redis_tx.read(self.client, lambda _: self._driver_ids(plan), "worklist query")
        keep = _Filter(plan)
        fields = [*_HEAD, "enc_e" if explicit else "enc_i", "lay_e" if explicit else "lay_i"]
        if with_json:
            fields.append("json")
        for start in range(0, len(ids), FETCH_CHUNK):
            part = ids[start : start + FETCH_CHUNK]

            def fetch(c: Redis, part: list[int] = part) -> list[Any]:
                pipe = c.pipeline(transaction=False)
                for item_id in part:
                    pipe.hmget(self.keys.item(item_id), fields)
                return list(pipe.execute())

            for item_id, values in zip(
                part, redis_tx.read(self.client, fetch, "worklist query"), strict=True
            ):
                raw_k, charset, active = values[0], values[1], values[2]
                if raw_k is None or active != b"1" or not keep(json.loads(raw_k)):
                    continue
                row: tuple[Any, ...] = (item_id, _s(charset), values[3], values[4])
                if with_json:
                    row += (_s(values[5]),)
                yield row

    def get(self, item_id: int) -> dict[str, Any] | None:
        """One item with its bookkeeping (status, order, history), None when unknown."""
        fields = {
            _s(k): _s(v)
            for k, v in self.client.hgetall(self.keys.item(item_id)).items()
            if k not in (b"enc_i", b"enc_e", b"lay_i", b"lay_e")
        }
        if not fields:
            return None
        out: dict[str, Any] = {
            "id": item_id,
            "order_key": fields.get("order_key", ""),
            "patient_key": fields.get("patient_key", ""),
            "status": fields.get("status", ""),
            "active": int(fields.get("active") or 0),
            "source": fields.get("source", ""),
            "created_at": fields.get("created_at", ""),
            "updated_at": fields.get("updated_at", ""),
            "finished_at": fields.get("finished_at") or None,
            "performed_study_uid": fields.get("performed_study_uid", ""),
        }
        out["item"] = json.loads(fields["json"])
        out["history"] = [
            {key: h[key] for key in ("at", "old", "new", "reason", "source")}
            for h in (
                json.loads(raw) for raw in self.client.lrange(self.keys.history(item_id), 0, -1)
            )
        ]
        return out

    def items(self, *, active_only: bool = False) -> Iterator[tuple[int, DicomJson]]:
        """Every (id, item) in id order (export, explain, tests)."""
        ids = ids_of(self.client.zrange(self.keys.active if active_only else self.keys.all, 0, -1))
        for start in range(0, len(ids), FETCH_CHUNK):
            yield from self.items_by_id(ids[start : start + FETCH_CHUNK])

    def items_by_id(self, ids: Sequence[int]) -> list[tuple[int, DicomJson]]:
        """The items with these ids (unknown ids skipped)."""
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hget(self.keys.item(item_id), "json")
        return [(i, json.loads(t)) for i, t in zip(ids, pipe.execute(), strict=True) if t]

    def sweep_items(
        self, accessions: Sequence[str], study_uids: Sequence[str]
    ) -> list[tuple[int, DicomJson, tuple[str, ...]]]:
        """Items holding one of the accessions or Study Instance UIDs (scheduled or
        performed), newest first: the reconcile sweep's lookup."""
        pipe = self.client.pipeline(transaction=False)
        for value in accessions:
            pipe.smembers(self.keys.by("accession", value))
        for field in ("study_uid", "performed_study_uid"):
            for value in study_uids:
                pipe.smembers(self.keys.by(field, value))
        ids = sorted({int(m) for members in pipe.execute() for m in members}, reverse=True)
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hmget(self.keys.item(item_id), ["json", "k", "performed_study_uid"])
        out = []
        for item_id, (text, k, performed) in zip(ids, pipe.execute(), strict=True):
            if text is None:
                continue
            uids = (json.loads(k)["study_uid"], _s(performed))
            out.append((item_id, json.loads(text), tuple(u for u in uids if u)))
        return out

    def count(self, *, active_only: bool = False) -> int:
        return int(self.client.zcard(self.keys.active if active_only else self.keys.all))

    def find_ids(self, **keys: str) -> list[int]:
        """Ids of items whose index values equal ``keys`` (accession=, study_uid=, ...)."""
        allowed = {"order_key", "accession", "patient_id", "study_uid", "rp_id", "sps_id", "status"}
        bad = set(keys) - allowed
        if bad:
            raise ValueError(f"unknown item keys {sorted(bad)}; expected some of {sorted(allowed)}")
        if "order_key" in keys:
            ids = {int(i) for i in self.client.smembers(self.keys.order(keys["order_key"]))}
        elif "study_uid" in keys or "accession" in keys:
            field = "study_uid" if "study_uid" in keys else "accession"
            ids = {int(i) for i in self.client.smembers(self.keys.by(field, keys[field]))}
        else:
            ids = set(ids_of(self.client.zrange(self.keys.all, 0, -1)))
        out = []
        for item_id in sorted(ids):
            fields = self.client.hmget(self.keys.item(item_id), ["k", "order_key", "status"])
            if fields[0] is None:
                continue
            k = json.loads(fields[0])
            values = {**k, "order_key": _s(fields[1]), "status": _s(fields[2])}
            if all(values.get(f) == v for f, v in keys.items()):
                out.append(item_id)
        return out


def _date_bounds(date: Constraint | None, dt: Constraint | None) -> tuple[str, str]:
    """ZRANGEBYSCORE bounds on the step date for a date and/or date-time constraint."""
    lo, hi = "-inf", "+inf"
    for con, width in ((date, 8), (dt, 8)):
        if con is None:
            continue
        if con.op == "eq":
            value = con.values[0][:width]
            if value.isdigit():
                return value, value
        elif con.op == "range":
            a, b = con.values
            if a[:width].isdigit():
                lo = a[:width]
            if b[:width].isdigit():
                hi = b[:width]
    return lo, hi


def _literal_prefix(pattern: str) -> str:
    """The text before the first wildcard of a glob pattern."""
    for n, ch in enumerate(pattern):
        if ch in "*?[":
            return pattern[:n]
    return pattern


class RedisMppsOps:
    """:class:`broker.worklist.mpps_apply.MppsOps` in one Redis transaction."""

    def __init__(self, store: RedisWorklistStore, tx: Tx) -> None:
        self.store = store
        self.keys = store.keys
        self.tx = tx
        self.writer = Writer(store.keys, store.client, tx)
        self._events: dict[int, dict[str, Any]] = {}

    def instance(self, uid: str) -> MppsInstance | None:
        stored = self.tx.hgetall(self.keys.mpps(uid))
        if not stored:
            return None
        return MppsInstance(
            _s(stored["state"]),
            json.loads(stored["json"]),
            json.loads(stored["item_ids"]),
            _s(stored.get("study_uid")),
        )

    def create_instance(
        self,
        uid: str,
        state: str,
        calling_ae: str,
        study_uid: str,
        item_ids: list[int],
        dataset: DicomJson,
        now: str,
    ) -> None:
        self.tx.hset(self.keys.mpps(uid), {
            "state": state, "calling_ae": calling_ae, "study_uid": study_uid,
            "item_ids": json.dumps(item_ids), "json": json.dumps(dataset),
            "created_at": now, "updated_at": now,
        })  # fmt: skip

    def update_instance(self, uid: str, state: str, dataset: DicomJson, now: str) -> None:
        fields = {"state": state, "json": json.dumps(dataset), "updated_at": now}
        self.tx.hset(self.keys.mpps(uid), fields)

    def link_candidates(self, study_uid: str, accession: str) -> list[int]:
        field, value = ("study_uid", study_uid) if study_uid else ("accession", accession)
        return sorted(int(m) for m in self.tx.smembers(self.keys.by(field, value)))

    def link_keys(self, item_id: int) -> dict[str, str] | None:
        raw = self.tx.hmget(self.keys.item(item_id), ["k"])[0]
        if raw is None:
            return None
        k = json.loads(raw)
        return {f: k[f] for f in ("study_uid", "accession", "rp_id", "sps_id")}

    def set_performed_study(self, item_ids: Sequence[int], study_uid: str) -> None:
        for item_id in item_ids:
            self.tx.hset(self.keys.item(item_id), {"performed_study_uid": study_uid})
            self.tx.sadd(self.keys.by("performed_study_uid", study_uid), str(item_id))

    def item(self, item_id: int) -> LinkedItem | None:
        fields = self.writer.stored(item_id)
        if not fields.get("k"):
            return None
        k = json.loads(fields["k"])
        return LinkedItem(
            _s(fields.get("status")), _s(fields.get("json")), _s(fields.get("order_key")),
            k["accession"], k["rp_id"], k["sps_id"], k["study_uid"],
            int(_s(fields.get("journal_id")) or 0),
        )  # fmt: skip

    def set_item_status(
        self, item_id: int, text: str, old: str, new: str, reason: str, now: str
    ) -> None:
        self.writer.set_status(item_id, text, old, new, reason, "mpps", None, now)

    def record_event(self, record: dict[str, Any]) -> int:
        # one INCR per event (not id blocks): events are read in id order by "after id"
        event_id = int(self.store.client.incr(self.keys.event_ids))
        self._events[event_id] = {**record, "id": event_id}
        self._save_event(event_id)
        return event_id

    def _save_event(self, event_id: int) -> None:
        record = json.dumps(self._events[event_id])
        self.tx.op("hset", self.keys.events, str(event_id), record)

    def record_notice(
        self,
        event_id: int,
        action: str,
        result: str,
        destination: str,
        outbox_id: int | None,
        detail: str,
    ) -> None:
        self._events[event_id].update(
            notified=result, notified_to=destination, outbox_id=outbox_id, notified_detail=detail
        )
        self._save_event(event_id)

    def enqueue(self, effect: Enqueue, journal_id: int) -> int:
        return self.store.outbox.add(self.tx, effect, journal_id, time.time())

    def original(self, journal_id: int) -> OriginalMessage | None:
        reader = self.store.journal_reader
        return reader(self.tx, journal_id) if reader is not None else None


_EVENT_FIELDS = (
    "id",
    "kind",
    "at",
    "mpps_uid",
    "item_id",
    "order_key",
    "accession",
    "rp_id",
    "sps_id",
    "study_uid",
    "calling_ae",
    "notified",
    "notified_to",
    "outbox_id",
    "notified_detail",
)


def _event_row(record: dict[str, Any]) -> dict[str, Any]:
    """An event as the SQLite store's ``events`` returns it (same keys, absent ones None/'')."""
    out: dict[str, Any] = {}
    for name in _EVENT_FIELDS:
        default: Any = (
            None
            if name in ("item_id", "notified", "notified_to", "outbox_id", "notified_detail")
            else ""
        )
        out[name] = record.get(name, default)
    return out
