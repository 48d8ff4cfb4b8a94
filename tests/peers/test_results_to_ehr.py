"""Results and order changes leave through the durable queue (DESIGN §2.5, §2.6, §6a):
a real `broker serve` process, python-hl7's mllp_send as the reporting system, an MLLP
receiver as the EHR/PACS that goes down and comes back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import hl7
import pytest

from tests.delivery.receiver import Receiver
from tests.peers.conftest import BrokerProcess
from tests.peers.test_order_to_worklist import mllp_send as _send

pytestmark = pytest.mark.peer


def _broker_with(tmp_path: Path, destinations: dict[str, dict[str, object]]) -> BrokerProcess:
    broker = BrokerProcess(tmp_path / "b")
    config = json.loads(broker.config_path.read_text())
    config["destinations"] = destinations
    broker.config_path.write_text(json.dumps(config))
    return broker


async def _until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_oru_reaches_the_ehr_even_across_an_outage(tmp_path: Path) -> None:
    async with Receiver() as ehr:
        broker = _broker_with(
            tmp_path,
            {"ehr": {"type": "mllp", "host": "127.0.0.1", "port": ehr.port,
                     "retry": {"initial_s": 0.1, "max_interval_s": 0.2, "jitter": 0}}},
        )  # fmt: skip
        await ehr.stop()  # the EHR is down when the result arrives
        broker.start()
        try:
            ack = await asyncio.to_thread(_send, broker, "oru_r01.hl7")
            assert "MSA|AA|RPT26110300501" in ack  # accepted: durable in the queue
            await asyncio.sleep(0.5)
            assert ehr.received == []
            await ehr.start()  # back up: the queued result goes out
            await _until(lambda: len(ehr.accepted) == 1)
            sent = hl7.parse(ehr.accepted[0].decode("latin-1").replace("\n", "\r"))
            assert str(sent.segment("MSH")[9]).startswith("ORU^R01")
            assert str(sent.segment("OBR")[3]).startswith("FL20261102001")
            status = broker.cli("queue", "ls")
            assert "ehr" in status.stdout
        finally:
            broker.stop()


async def test_unconfigured_destination_is_skipped_not_queued(tmp_path: Path) -> None:
    broker = _broker_with(tmp_path, {})
    broker.start()
    try:
        assert "MSA|AA|" in await asyncio.to_thread(_send, broker, "oru_r01.hl7")
        shown = broker.cli("journal", "ls", "--json")
        (entry,) = [json.loads(line) for line in shown.stdout.splitlines()]
        detail = broker.cli("journal", "show", str(entry["id"]))
        assert "skipped" in detail.stdout and "ehr" in detail.stdout
        queued = broker.cli("queue", "ls")
        assert "ehr" not in queued.stdout or " 0 " in queued.stdout
    finally:
        broker.stop()
