"""Patient merge benchmark (issue: reconciliation): ADT^A40 for a patient with 1,000 worklist
items, 50 of them performed (their studies exist), to an HL7 PACS and an Orthanc PACS.

Run: ``.venv/bin/python bench/bench_merge.py [--items 1000] [--studies 50] [--repeat 5]``.

Set-up (not timed): 1,000 orders of one patient go in through the shipped routes and the
journal (samples/orm_o01_v231.hl7 with distinct order numbers, accessions and Study Instance
UIDs); 50 of them are marked performed (COMPLETED, performed study UID) as MPPS leaves them.
Timed: routing the A40 and committing it durably (synchronous=FULL): every item moved to the
surviving patient, re-encoded for C-FIND, its history row, the change recorded, the PACS's
ADT and the Orthanc job (with the 50 linked studies) queued: what happens between the A40's
arrival and its AA. Goal: < 1 s.

Peer, same run, same data: the floor of the same move done as bare SQL — one UPDATE of the
1,000 rows' patient columns in one transaction, nothing re-encoded, nothing recorded, nothing
queued. The ratio says what the real work costs over that floor.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.app import make_journal, open_database
from broker.config import Settings
from broker.hl7.charset import decode_frame
from broker.hl7.message import Message
from broker.ingest.journal import InboundRecord
from broker.routing import RouteEngine, load_definitions
from broker.storage.sqlite_worklist import SqliteWorklistStore

ROOT = Path(__file__).resolve().parent.parent
ORDER = decode_frame((ROOT / "samples" / "orm_o01_v231.hl7").read_bytes()).text
A40 = decode_frame((ROOT / "samples" / "adt_a40.hl7").read_bytes()).text


def order(n: int) -> str:
    return (
        ORDER.replace("RIS26110200101", f"RIS{n:08}")
        .replace("PL20261102001", f"PL{n:08}")
        .replace("FL20261102001", f"FL{n:08}")
        .replace("ACC26110001", f"ACC{n:08}")
        .replace("RP26110001", f"RP{n:08}")
        .replace("SPS26110001", f"SPS{n:08}")
        .replace("20261102083015.1002341", f"20261102083015.{n}")
    )


def record(message: Message, text: str, n: int) -> InboundRecord:
    return InboundRecord(
        time.time(), "ris", "127.0.0.1", f"RIS|{n}", message.control_id,
        f"{message.message_type}^{message.trigger}", message.version, "ASCII", text.encode(),
    )  # fmt: skip


def one_run(
    items: int, studies: int, directory: Path, pacs: dict[str, object]
) -> tuple[float, float]:
    """(seconds for the A40, seconds for the bare-SQL floor) on a fresh store."""
    settings = Settings.model_validate(
        {
            "store": f"sqlite:///{directory / 'broker.db'}",
            "destinations": {"pacs": pacs},
        }
    )
    db = open_database(settings)
    SqliteWorklistStore(db)
    journal = make_journal(settings, db)
    defs = load_definitions(ROOT / "routes", ROOT / "mappings")
    engine = RouteEngine(defs, settings.destination_types())
    db.open()
    try:
        for n in range(items):
            text = order(n)
            message = Message.parse(text)
            result = journal.commit_sync(record(message, text, n), engine.route(message))
            assert result.ack_code == "AA", result
        db.write_sync(
            lambda conn: conn.execute(
                "UPDATE worklist_items SET status='COMPLETED', active=0, "
                "performed_study_uid=study_uid WHERE id <= ?",
                (studies,),
            )
        )
        text = A40
        message = Message.parse(text)
        started = time.perf_counter()
        decision = engine.route(message)
        result = journal.commit_sync(record(message, text, items + 1), decision)
        merge_s = time.perf_counter() - started
        assert result.ack_code == "AA", result
        (applied,) = [a for a in result.applied if a.get("reconcile") == "patient.merge"]
        assert applied["items"] == items, applied
        moved = (
            db.reader()
            .execute("SELECT COUNT(*) FROM worklist_items WHERE patient_id='MR100199'")
            .fetchone()[0]
        )
        assert moved == items, moved
        # the floor: the same rows moved back by one bare UPDATE
        started = time.perf_counter()
        db.write_sync(
            lambda conn: conn.execute(
                "UPDATE worklist_items SET patient_id='MR100234', patient_key='MR100234^HOSP' "
                "WHERE patient_id='MR100199'"
            )
        )
        floor_s = time.perf_counter() - started
        return merge_s, floor_s
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--pacs",
        choices=("orthanc", "mllp"),
        default="orthanc",
        help="the PACS destination's type (job with the studies, or the ADT)",
    )
    args = parser.parse_args()
    pacs: dict[str, object] = (
        {"type": "orthanc", "url": "http://127.0.0.1:9"}
        if args.pacs == "orthanc"
        else {"type": "mllp", "port": 9}
    )
    merges: list[float] = []
    floors: list[float] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
            m, f = one_run(args.items, args.studies, Path(tmp), pacs)
        merges.append(m)
        floors.append(f)
    merge, floor = statistics.median(merges), statistics.median(floors)
    print(
        f"A40 merge of {args.items} items / {args.studies} studies to an {args.pacs} PACS, "
        "routed + committed "
        f"(synchronous=FULL), median of {args.repeat}: {merge * 1000:.0f} ms "
        f"(goal < 1000 ms; min {min(merges) * 1000:.0f}, max {max(merges) * 1000:.0f})"
    )
    print(f"bare SQL UPDATE of the same rows (floor): {floor * 1000:.1f} ms")
    print(f"ratio merge / floor: {merge / floor:.1f}x")
    print(f"per item: {merge / args.items * 1e6:.0f} µs")
    sqlite3.connect(":memory:").close()


if __name__ == "__main__":
    main()
