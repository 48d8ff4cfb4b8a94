"""The delivery service on the whole embedded path: MLLP in → journal + outbox in one commit
→ workers → MLLP receiver, across a broker restart while the receiver is down.

broker.app.Broker wires the same parts; this test builds them by hand.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import hl7 as pyhl7
import pytest

from broker.admin.metrics import Metrics
from broker.config import Settings, load_settings
from broker.delivery import DeliveryService
from broker.effects import Enqueue
from broker.errors import ConfigError
from broker.hl7.message import Message
from broker.ingest.decision import RouteDecision
from broker.ingest.pipeline import IngestPipeline
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA, SqliteJournal
from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue
from tests.delivery.conftest import until
from tests.delivery.receiver import Receiver, control_id

ORM = (
    "MSH|^~\\&|RIS|HOSP|BROKER|RAD|20261101120000||ORM^O01|{cid}|P|2.3.1\r"
    "PID|1||{pid}^^^HOSP^MR||DOE^JANE\rORC|NW|{cid}\rOBR|1|{cid}||CT^CT HEAD\r"
)


class ForwardToPacs:
    """Every message goes to ``pacs`` as is, ordered by patient (PID-3.1)."""

    def route(self, message: Message) -> RouteDecision:
        pid = message.text.split("PID|1||", 1)[1].split("^", 1)[0]
        return RouteDecision("fwd", effects=(Enqueue("pacs", message.text.encode(), pid),))


def settings(port: int, /, **extra: Any) -> Settings:
    pacs = {
        "type": "mllp",
        "host": "127.0.0.1",
        "port": port,
        "ordering": "patient",
        "ack_timeout_s": 1,
        "connect_timeout_s": 0.5,
        "retry": {"initial_s": 0.02, "max_interval_s": 0.1, "jitter": 0},
        **extra,
    }
    return Settings.model_validate(
        {"destinations": {"pacs": pacs, "pacs2": {"type": "orthanc", "url": "http://x"}}}
    )


async def send(pipeline: IngestPipeline, cid: str, pid: str) -> None:
    raw = await pipeline.handle(ORM.format(cid=cid, pid=pid).encode(), "127.0.0.1:1", "ris")
    assert raw is not None
    assert str(pyhl7.parse(raw.decode()).segment("MSA")[1]) == "AA"


async def test_accepted_messages_are_delivered_across_a_restart(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    await rx.stop()  # the PACS is down when the orders come in
    conf = settings(rx.port)
    cids = [(f"O{n}", f"PAT{n % 3}") for n in range(12)]

    async with SqliteDatabase(tmp_path / "b.db", schemas=[JOURNAL_SCHEMA, QUEUE_SCHEMA]) as db:
        queue = SqliteQueue(db)
        journal = SqliteJournal(db)
        router = ForwardToPacs()
        pipeline = IngestPipeline(journal, lambda: router, Metrics())
        async with DeliveryService.from_settings(conf, queue) as service:
            assert set(service.workers) == {"pacs", "pacs2"}  # pacs2: orthanc, nothing queued
            for cid, pid in cids[:6]:
                await send(pipeline, cid, pid)
                service.notify("pacs")
            await until(lambda: service.workers["pacs"].counters.retried >= 3)
            stats = await service.stats()
            assert stats["pacs"].state == "retrying" and stats["pacs"].depth == 6
            assert stats["pacs"].since > 0 and stats["pacs"].attempts >= 3
            assert stats["pacs2"].state == "up" and stats["pacs2"].type == "orthanc"
        # the broker stopped: everything still queued, nothing in flight
        left = await queue.entries("pacs")
        assert len(left) == 6 and all(e.lease_owner == "" for e in left)

    await rx.start()
    try:
        async with SqliteDatabase(tmp_path / "b.db", schemas=[JOURNAL_SCHEMA]) as db:
            queue = SqliteQueue(db)
            pipeline = IngestPipeline(SqliteJournal(db), lambda: router, Metrics())
            async with DeliveryService.from_settings(conf, queue) as service:
                for cid, pid in cids[6:]:
                    await send(pipeline, cid, pid)
                    service.notify_applied([{"queued": "pacs", "outbox_id": 0}])
                await until(lambda: len(rx.accepted) == 12)
                await until(lambda: service.workers["pacs"].counters.delivered == 12)
                # a run's deliveries are recorded together when the run ends: wait for it
                for _ in range(200):
                    stats = await service.stats()
                    if stats["pacs"].depth == 0:
                        break
                    await asyncio.sleep(0.01)
                assert stats["pacs"].state == "up" and stats["pacs"].depth == 0
                assert stats["pacs"].delivered == 12 and stats["pacs"].oldest_age_s == 0
    finally:
        await rx.stop()
    for pid in ("PAT0", "PAT1", "PAT2"):
        mine = [c for c, p in cids if p == pid]
        arrived = [cid for cid in rx.control_ids() if cid in mine]
        assert arrived == mine


async def test_paused_destination_shows_paused(tmp_path: Path) -> None:
    async with (
        SqliteDatabase(tmp_path / "b.db", schemas=[QUEUE_SCHEMA]) as db,
        Receiver() as rx,
    ):
        queue = SqliteQueue(db)
        await queue.pause("pacs")
        async with DeliveryService.from_settings(settings(rx.port), queue) as service:
            await queue.enqueue(Enqueue("pacs", ORM.format(cid="X1", pid="P").encode()))
            service.notify()
            stats = await service.stats()
            assert stats["pacs"].state == "paused" and stats["pacs"].depth == 1
            await queue.resume("pacs")
            service.notify()
            await until(lambda: [control_id(m) for m in rx.accepted] == ["X1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # declared in broker/config.py: refused when the config file is read
        ({"ordering": "fifo"}, "destinations.pacs.ordering: found 'fifo'"),
        ({"retry": {"factor": 0}}, "destinations.pacs.retry.factor: found 0"),
        ({"concurrency": 0}, "destinations.pacs.concurrency: found 0"),
        # a type's own keys: refused when the destination is built
        ({"port": "x"}, "destinations.pacs.port: found 'x'"),
    ],
)
async def test_config_errors_name_the_destination_key(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    config = tmp_path / "broker.yaml"
    pacs = {"type": "mllp", "host": "127.0.0.1", "port": 1, **extra}
    config.write_text(json.dumps({"destinations": {"pacs": pacs}}))
    async with SqliteDatabase(tmp_path / "b.db", schemas=[QUEUE_SCHEMA]) as db:
        with pytest.raises(ConfigError) as info:
            DeliveryService.from_settings(load_settings(config, environ={}), SqliteQueue(db))
    assert message in str(info.value)
