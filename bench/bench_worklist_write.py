"""Worklist write micro-benchmark: µs per ``apply_worklist_upsert`` and per phase.

Run: ``.venv/bin/python bench/bench_worklist_write.py [--n 5000] [--batch 50] [--json]``.

The item is the one the shipped routes make of samples/orm_o01_v231.hl7 (parse + route, done
once, outside the timing), each order with its own order key, patient ID, accession number
and Study Instance UID. Upserts run as the ingest runs them: each one a unit of
``SqliteDatabase``'s group commit (its own savepoint on the writer's connection, ``--batch``
units queued at a time); only the ``apply_worklist_upsert`` call is timed. Two cases:

- new item: every upsert is a new order;
- update: an existing order sent again (found, re-encoded, replaced).

Then the pure steps of an upsert, each timed alone over distinct items: index keys, the
JSON text, the native character set walk (only for items whose JSON is not ASCII), and the
encoding (both syntaxes in one walk; before that change, one walk per syntax).
Goals: new <= 80 µs, update <= 100 µs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.effects import WorklistUpsert
from broker.hl7.message import Message
from broker.routing import RouteEngine, load_definitions
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_worklist import SqliteWorklistStore, apply_worklist_upsert
from broker.worklist import encode as enc
from broker.worklist import item as wi

try:
    from broker.storage.sqlite_worklist import _JSON
except ImportError:  # before: json.dumps
    _JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

ROOT = Path(__file__).resolve().parent.parent
GOAL_NEW_US = 80.0
GOAL_UPDATE_US = 100.0


def sample_effect() -> WorklistUpsert:
    """The WorklistUpsert the shipped routes make of the sample ORM^O01."""
    text = (ROOT / "samples" / "orm_o01_v231.hl7").read_text().replace("\n", "\r")
    engine = RouteEngine(load_definitions(ROOT / "routes", ROOT / "mappings"), ())
    for effect in engine.route(Message.parse(text)).effects:
        if isinstance(effect, WorklistUpsert):
            return effect
    raise SystemExit("the sample order made no worklist upsert")


def variant(effect: WorklistUpsert, n: int) -> WorklistUpsert:
    """The same order as a new one: own order key, patient, accession and study."""
    items = []
    for item in effect.items:
        copied = copy.deepcopy(item)
        for tag, value in (
            (wi.STUDY_INSTANCE_UID, f"1.2.826.0.1.3680043.2.1125.{n}"),
            (wi.ACCESSION_NUMBER, f"ACC{n:08d}"),
            (wi.PATIENT_ID, f"MR{n * 7919 % 1000003:07d}"),
        ):
            copied[wi.tag_key(tag)]["Value"] = [value]
        items.append(copied)
    return WorklistUpsert(f"{effect.order_key}-{n}", tuple(items), effect.patient_key)


def run_upserts(db: SqliteDatabase, effects: list[WorklistUpsert], batch: int) -> list[float]:
    """µs per apply_worklist_upsert, each a unit of the database's group commit (its own
    savepoint on the writer's connection), ``batch`` units queued at a time."""
    times: list[float] = []
    clock = time.perf_counter

    def unit(effect: WorklistUpsert, journal_id: int) -> Callable[[sqlite3.Connection], None]:
        def write(conn: sqlite3.Connection) -> None:
            t0 = clock()
            apply_worklist_upsert(conn, effect, journal_id)
            times.append((clock() - t0) * 1e6)

        return write

    for start in range(0, len(effects), batch):
        chunk = effects[start : start + batch]
        futures = [db.submit(unit(e, n)) for n, e in enumerate(chunk, start + 1)]
        for future in futures:
            future.result()
    return times


def per_call(fn: Callable[[], Any], seconds: float = 0.5) -> float:
    """Median µs per call of ``fn`` over a few rounds."""
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds) < 5:
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        rounds.append((time.perf_counter() - t0) / 200 * 1e6)
    return statistics.median(rounds)


def phases(effects: list[WorklistUpsert]) -> dict[str, float]:
    """µs per call of each pure step of an upsert, over distinct items (as the writer sees
    them: each item new to the caches)."""
    items = [e.items[0] for e in effects]
    rotation = iter(items * 1000)
    charsets = {id(item): enc.native_charset(item) for item in items}

    def each(fn: Callable[[dict[str, Any]], Any]) -> Callable[[], Any]:
        return lambda: fn(next(rotation))

    out = {
        "index_keys": per_call(each(wi.index_keys)),
        "JSON text": per_call(each(_JSON.encode)),
        "native_charset (walk)": per_call(each(enc.native_charset)),
    }
    both = getattr(enc, "encode_both", None)
    if both is not None:
        out["encode both syntaxes"] = per_call(each(lambda i: both(i, charsets[id(i)])))
    else:  # before: one walk per syntax
        out["encode implicit"] = per_call(
            each(lambda i: enc.encode_item(i, charsets[id(i)], explicit=False))
        )
        out["encode explicit"] = per_call(
            each(lambda i: enc.encode_item(i, charsets[id(i)], explicit=True))
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="upserts per case")
    parser.add_argument("--batch", type=int, default=50, help="units per transaction")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    effect = sample_effect()
    new = [variant(effect, n) for n in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "bench.db", synchronous="OFF")
        SqliteWorklistStore(db)
        db.open()
        try:
            run_upserts(db, [variant(effect, -n - 1) for n in range(200)], args.batch)  # warm
            t_new = run_upserts(db, new, args.batch)
            again = [new[n % 500] for n in range(args.n)]  # existing orders, sent again
            t_upd = run_upserts(db, again, args.batch)
        finally:
            db.close()

    figures: dict[str, Any] = {
        "new_us": statistics.median(t_new),
        "new_mean_us": statistics.fmean(t_new),
        "update_us": statistics.median(t_upd),
        "update_mean_us": statistics.fmean(t_upd),
        "phases_us": phases(new[:1000]),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"upsert, new item     {figures['new_us']:7.1f} µs median "
          f"({figures['new_mean_us']:.1f} mean)   goal <= {GOAL_NEW_US:.0f}")  # fmt: skip
    print(f"upsert, update       {figures['update_us']:7.1f} µs median "
          f"({figures['update_mean_us']:.1f} mean)   goal <= {GOAL_UPDATE_US:.0f}")  # fmt: skip
    print("phases (µs per item, each alone, over distinct items):")
    for name, us in figures["phases_us"].items():
        print(f"  {name:<22} {us:7.1f} µs")


if __name__ == "__main__":
    main()
