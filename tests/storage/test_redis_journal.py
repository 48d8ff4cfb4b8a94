"""The journal on Redis: one atomic commit per message across nodes (real redis-server).

Two RedisJournal instances on one Redis stand for two broker nodes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.effects import Enqueue, PatientChange, PatientRef, WorklistStatusChange, WorklistUpsert
from broker.errors import StoreError
from broker.ingest.decision import RouteDecision
from broker.ingest.journal import InboundRecord
from broker.storage.redis_journal import RedisJournal
from broker.storage.redis_queue import RedisQueue
from broker.storage.redis_worklist import RedisWorklistStore
from tests.redis_server import shared_redis_url
from tests.worklist.conftest import load_worklist_data


class Node:
    """One broker node's store objects on the shared Redis."""

    def __init__(self, prefix: str) -> None:
        self.client = redis.Redis.from_url(shared_redis_url())
        self.worklist = RedisWorklistStore(self.client, prefix=prefix)
        self.journal = RedisJournal(self.client, self.worklist, prefix=prefix, dedupe_window_s=60)
        self.prefix = prefix

    def close(self) -> None:
        self.journal.close()
        self.client.close()


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    prefix = f"j{uuid.uuid4().hex[:10]}"
    a, b = Node(prefix), Node(prefix)
    yield a, b
    a.close()
    b.close()


def record(cid: str, at: float | None = None, sender: str = "RIS|HOSP") -> InboundRecord:
    return InboundRecord(
        at or time.time(), "ris", "127.0.0.1:1", sender, cid, "ORM^O01", "2.4", "", b"MSH|x"
    )


def item(**kw: Any) -> dict[str, Any]:
    return load_worklist_data().make_item(**kw)  # type: ignore[no-any-return]


def order(key: str, *sps: str, with_hl7: bool = True) -> RouteDecision:
    effects: list[Any] = [
        WorklistUpsert(key, tuple(item(sps_id=s, study_uid=f"1.2.{key}.{s}") for s in sps))
    ]
    if with_hl7:
        effects.append(Enqueue("pacs", f"MSH|{key}".encode(), ordering_key=key))
    return RouteDecision(route="orders", effects=tuple(effects))


async def queued(node: Node, destination: str) -> list[bytes]:
    async with RedisQueue.from_url(shared_redis_url(), prefix=node.prefix) as queue:
        return [e.payload for e in await queue.entries(destination)]


async def test_commit_applies_the_worklist_and_queues_in_one_step(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    result = a.journal.commit_sync(record("C1"), order("O1", "S1", "S2"))
    assert result.ack_code == "AA" and not result.duplicate
    assert result.applied[0] == {"created": 2, "updated": 0, "removed": 0}
    assert result.applied[1]["queued"] == "pacs"
    # the other node sees all of it: items, the queued message, the journal entry
    assert b.worklist.count(active_only=True) == 2
    assert await queued(b, "pacs") == [b"MSH|O1"]
    (entry,) = b.journal.recent(10)
    assert entry.status == "accepted" and entry.control_id == "C1"
    assert entry.detail["applied"][0]["created"] == 2


async def test_a_resend_on_another_node_is_a_duplicate(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    first = a.journal.commit_sync(record("C1"), order("O1", "S1"))
    again = b.journal.commit_sync(record("C1"), order("O1", "S1", "S2"))
    assert again.duplicate and again.ack_code == "AA"
    assert b.worklist.count() == 1  # not applied twice
    assert await queued(a, "pacs") == [b"MSH|O1"]
    assert b.journal.get(again.journal_id).detail == {"original": first.journal_id}  # type: ignore[union-attr]
    # another sender with the same MSH-10 is another message
    other = b.journal.commit_sync(record("C1", sender="EHR|X"), order("O2", "S1"))
    assert not other.duplicate


async def test_a_conflict_applies_nothing_and_answers_ae(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    a.journal.commit_sync(record("C1"), order("O1", "S1"))
    clash = RouteDecision(
        route="orders",
        effects=(
            Enqueue("pacs", b"MSH|second"),
            WorklistUpsert("O2", (item(sps_id="S9", study_uid="1.2.O1.S1"),)),
        ),
    )
    result = a.journal.commit_sync(record("C2"), clash)
    assert result.ack_code == "AE" and result.errors[0].code == 205
    assert await queued(a, "pacs") == [b"MSH|O1"]  # the Enqueue before the conflict went too
    assert a.worklist.find_ids(order_key="O2") == []
    assert a.journal.get(result.journal_id).status == "error"  # type: ignore[union-attr]
    # not remembered as accepted: fixed and sent again, it is applied
    fixed = a.journal.commit_sync(record("C2"), order("O2", "S9"))
    assert fixed.ack_code == "AA" and not fixed.duplicate


def test_a_patient_change_for_an_unknown_patient_is_ae_and_applies_nothing(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    change = PatientChange("update", PatientRef("P404"), {}, outbound=())
    result = a.journal.commit_sync(record("C1"), RouteDecision("adt", effects=(change,)))
    assert result.ack_code == "AE" and result.errors[0].code == 204
    assert a.journal.changes.history() == []


def test_concurrent_commits_on_one_order_from_two_nodes_stay_consistent(
    nodes: tuple[Node, Node],
) -> None:
    """Both nodes rewrite one order at once: every commit lands whole (WATCH retries), and
    the indexes end up describing exactly the stored items."""
    a, b = nodes
    errors: list[BaseException] = []

    def send(node: Node, tag: str) -> None:
        try:
            for n in range(15):
                steps = [f"S{n % 3}", f"{tag}{n}"]
                node.journal.commit_sync(record(f"{tag}-{n}"), order("O1", *steps, with_hl7=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(a, "A")),
        threading.Thread(target=send, args=(b, "B")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = a.worklist.find_ids(order_key="O1")
    active = [i for i in ids if a.worklist.get(i)["active"]]  # type: ignore[index]
    assert len(active) == 2  # the last commit's two steps; everything else cancelled
    assert a.worklist.count(active_only=True) == 2
    from broker.worklist import WorklistService

    from .test_sqlite_worklist import statuses

    assert sorted(v for v in statuses(a.worklist, "O1").values()).count("SCHEDULED") == 2
    # a query answers exactly the active items
    service = WorklistService(a.worklist)
    assert sum(1 for _ in a.worklist.candidates(service.prepare(_everything(), explicit_vr=True)[2],
                                                 explicit=True, with_json=False)) == 2  # fmt: skip


def _everything() -> bytes:
    from pydicom.dataset import Dataset

    from tests.worklist.conftest import encode_query

    ds = Dataset()
    ds.PatientName = ""
    step = Dataset()
    step.ScheduledStationAETitle = ""
    ds.ScheduledProcedureStepSequence = [step]
    return encode_query(ds, explicit=True)


def test_status_change_and_retention(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.journal.commit_sync(record("C1"), order("O1", "S1", with_hl7=False))
    done = RouteDecision("status", effects=(WorklistStatusChange("O1", "COMPLETED"),))
    assert b.journal.commit_sync(record("C2"), done).applied == ({"changed": 1, "unchanged": 0},)
    assert a.worklist.count(active_only=True) == 0
    now = time.time()
    old = now - 40 * 86400
    for n in range(30):
        a.journal.commit_sync(record(f"OLD{n}", old), RouteDecision(route=None))
    assert a.journal.purge(30 * 86400, now=now) == 30
    assert {e.control_id for e in a.journal.recent(100)} == {"C1", "C2"}


async def test_stores_open_while_redis_is_unreachable_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from broker.config import Settings
    from broker.storage.factory import open_stores
    from tests.redis_server import free_port

    settings = Settings.model_validate({"store": f"redis://127.0.0.1:{free_port()}/0"})
    async with open_stores(settings) as stores:
        assert not stores.ping()
        assert "Redis does not answer" in caplog.text
        with pytest.raises(StoreError):
            await stores.journal.commit(record("C1"), order("O1", "S1"))


def test_a_redis_out_of_memory_refuses_the_whole_commit_then_recovers(tmp_path: Any) -> None:
    """maxmemory with noeviction: the commit fails whole (StoreError: the sender gets AE),
    nothing of it is kept, and once memory is freed the same message commits."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", "--maxmemory", "4mb", "--maxmemory-policy",
                         "noeviction").start()  # fmt: skip
    try:
        client = redis.Redis.from_url(server.url)
        worklist = RedisWorklistStore(client)
        journal = RedisJournal(client, worklist)
        filler = 0
        while True:  # fill Redis up to its limit
            try:
                client.set(f"filler:{filler}", b"x" * 65536)
                filler += 1
            except redis.exceptions.OutOfMemoryError:
                break
        keys_before = set(client.keys())
        with pytest.raises(StoreError):
            journal.commit_sync(record("C1"), order("O1", "S1"))
        # nothing of the unit was applied (an id counter may have moved: ids may have gaps)
        assert {k for k in set(client.keys()) - keys_before if not k.endswith(b":ids")} == set()
        client.delete(*(f"filler:{n}" for n in range(filler)))
        result = journal.commit_sync(record("C1"), order("O1", "S1"))
        assert result.ack_code == "AA" and worklist.count() == 1
        journal.close()
        client.close()
    finally:
        server.stop()


def test_id_blocks_never_hand_out_an_id_twice_when_the_counter_goes_back() -> None:
    from broker.storage.redis_tx import IdBlocks

    client = redis.Redis.from_url(shared_redis_url())
    key = f"ids{uuid.uuid4().hex[:8]}"
    try:
        blocks = IdBlocks(client, key, size=4)
        first = [blocks.next() for _ in range(5)]  # two blocks: 1..4, 5..8
        client.delete(key)  # Redis lost its data
        later = [blocks.next() for _ in range(8)]
        assert first == [1, 2, 3, 4, 5] and len(set(first + later)) == 13
        assert min(later[3:]) > max(first)
    finally:
        client.delete(key)
        client.close()


def test_broker_check_warns_about_a_redis_that_would_lose_acknowledged_messages(
    tmp_path: Any,
) -> None:
    from click.testing import CliRunner

    from broker.cli import main
    from tests.redis_server import RedisServer

    root = Path(__file__).resolve().parents[2]
    for extra, expected in (
        ((), ["appendonly is 'no'", "appendfsync is 'everysec'"]),
        (("--appendonly", "yes", "--appendfsync", "everysec"), ["appendfsync is 'everysec'"]),
        (("--appendonly", "yes", "--appendfsync", "always"), []),
    ):
        server = RedisServer(tmp_path / f"redis{len(extra)}", *extra).start()
        try:
            config = tmp_path / "broker.yaml"
            config.write_text(
                f"store: {server.url}\nroutes: {root / 'routes'}\nmappings: {root / 'mappings'}\n"
            )
            out = CliRunner().invoke(main, ["check", "--config", str(config)]).output
            found = [line for line in out.splitlines() if line.startswith("warning: store:")]
            assert len(found) == len(expected), out
            for line, text in zip(found, expected, strict=True):
                assert text in line
        finally:
            server.stop()


def test_retention_leaves_no_index_entry_of_a_purged_item(nodes: tuple[Node, Node]) -> None:
    """An item performed (MPPS links its study), completed, then purged: no set or sorted set
    of the worklist still names it."""
    import datetime as dt

    from pydicom.dataset import Dataset

    from broker.worklist import WorklistService

    a, _ = nodes
    a.worklist.upsert("O9", [item(sps_id="S1", study_uid="1.2.3.9")])
    mpps = Dataset()
    mpps.PerformedProcedureStepStatus = "IN PROGRESS"
    link = Dataset()
    link.StudyInstanceUID = "1.2.3.9"
    mpps.ScheduledStepAttributesSequence = [link]
    service = WorklistService(a.worklist)
    assert service.mpps_create("9.1", mpps, "CT1").status == 0
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    assert service.mpps_set("9.1", done, "CT1").status == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    (item_id,) = a.worklist.find_ids(order_key="O9")
    assert a.worklist.get(item_id)["performed_study_uid"] == "1.2.3.9"  # type: ignore[index]
    assert a.worklist.purge(30, now=later) == 1
    left = [k.decode() for k in a.client.scan_iter(match=f"{a.prefix}:{{s}}:wl:*")]
    # what stays: id counters, the MPPS instance, the procedure events (their own retention)
    assert sorted(k.split(":wl:")[1].split(":")[0] for k in left) == sorted(
        ["ids", "event_ids", "events", "mpps"]
    ), left
