"""Events on a real RabbitMQ (issue 11, DESIGN §6a): a `broker serve` process with an `events`
bus destination, python-hl7's mllp_send as the RIS, a pynetdicom SCU as the modality, a kombu
consumer bound to the exchange as the AI orchestrator. Every event of the flow arrives, in
order, with exactly the documented fields (the shipped JSON Schema); RabbitMQ stopped mid-flow
and started again loses and reorders nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kombu as _kombu
import pytest

from tests.peers.conftest import BrokerProcess
from tests.peers.test_mpps_to_ris import mpps
from tests.peers.test_reconcile_to_pacs import accepted, sample, send_text
from tests.rabbitmq_server import RabbitMqServer, shared_rabbitmq, stop_shared_rabbitmq

pytestmark = pytest.mark.peer
kombu: Any = _kombu
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "event.schema.json").read_text())
EXCHANGE = "broker.events"


@pytest.fixture(scope="module", autouse=True)
def _stop_rabbitmq_at_module_end() -> Iterator[None]:
    yield
    stop_shared_rabbitmq()


class Consumer:
    """A durable queue bound to the exchange (``#``), read with kombu."""

    def __init__(self, rabbit: RabbitMqServer, name: str) -> None:
        self.url = rabbit.url()
        self.name = name
        with kombu.Connection(self.url) as conn:
            exchange = kombu.Exchange(EXCHANGE, type="topic", durable=True)
            queue = kombu.Queue(name, exchange, routing_key="#", durable=True)
            queue(conn.channel()).declare()
        self.got: list[tuple[str, dict[str, Any]]] = []

    def drain(self) -> None:
        with kombu.Connection(self.url) as conn:
            queue = kombu.Queue(self.name, durable=True)(conn.channel())
            while (message := queue.get(no_ack=True)) is not None:
                self.got.append((message.delivery_info["routing_key"], json.loads(message.body)))


async def wait_for(consumer: Consumer, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.to_thread(consumer.drain)
        if len(consumer.got) >= count:
            return
        assert time.monotonic() < deadline, f"got {[t for t, _ in consumer.got]}"
        await asyncio.sleep(0.1)


def broker_for(tmp_path: Path, rabbit: RabbitMqServer) -> BrokerProcess:
    return BrokerProcess(
        tmp_path / "b",
        dicom=True,
        destinations={"events": {
            "type": "bus", "url": rabbit.url(), "exchange": EXCHANGE, "exchange_type": "topic",
            "ordering": "patient",
            "retry": {"initial_s": 0.2, "max_interval_s": 0.5, "jitter": 0},
        }},
    )  # fmt: skip


async def test_order_mpps_completed_flow_arrives_in_order_as_documented(tmp_path: Path) -> None:
    rabbit = await asyncio.to_thread(shared_rabbitmq)
    consumer = await asyncio.to_thread(Consumer, rabbit, "orchestrator-1")
    broker = broker_for(tmp_path, rabbit)
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        await asyncio.to_thread(mpps, broker, "COMPLETED")
        assert accepted(await asyncio.to_thread(say, sample("oru_r01"), 2))
        await wait_for(consumer, 4)
        assert [t for t, _ in consumer.got] == [
            "order.scheduled", "procedure.in_progress", "procedure.completed", "result.received",
        ]  # fmt: skip
        for routing_key, body in consumer.got:
            jsonschema.validate(body, SCHEMA)  # exactly the documented fields
            assert body["type"] == routing_key
            assert body["patient_id"] == "MR100234"
        scheduled, started, completed, result = (b for _, b in consumer.got)
        assert scheduled["accession"] == "ACC26110001"
        assert scheduled["changes"]["scheduled_station_ae"]
        assert completed["changes"] == {"step_status": "COMPLETED"}
        assert completed["performed_station_ae"] == "CT1_AE"
        assert started["study_instance_uid"] == scheduled["study_instance_uid"]
        assert result["accession"]
        assert len({b["id"] for _, b in consumer.got}) == 4
    finally:
        broker.stop()


async def test_rabbitmq_stopped_mid_flow_loses_and_reorders_nothing(tmp_path: Path) -> None:
    rabbit = await asyncio.to_thread(shared_rabbitmq)
    consumer = await asyncio.to_thread(Consumer, rabbit, "orchestrator-2")
    broker = broker_for(tmp_path, rabbit)
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        await wait_for(consumer, 1)
        await asyncio.to_thread(rabbit.stop)
        # the flow goes on while the bus is down: every change still acknowledged
        await asyncio.to_thread(mpps, broker, "COMPLETED")
        assert accepted(await asyncio.to_thread(say, sample("adt_a08"), 2))
        assert accepted(await asyncio.to_thread(say, sample("oru_r01"), 3))
        await asyncio.sleep(1.0)
        assert "retrying" in broker.cli("queue", "ls").stdout
        await asyncio.to_thread(rabbit.start)
        await wait_for(consumer, 5, timeout=60)
        types = [t for t, _ in consumer.got]
        assert types == [
            "order.scheduled", "procedure.in_progress", "procedure.completed",
            "patient.updated", "result.received",
        ]  # fmt: skip
        ids = [b["id"] for _, b in consumer.got]
        assert len(set(ids)) == len(ids)  # nothing twice here; consumers dedupe on id anyway
    finally:
        broker.stop()
