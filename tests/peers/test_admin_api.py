"""The admin API of a running `broker serve` (broker/admin/api.py): queues, dead letters and
their replay, pause/resume, inbound messages, worklist items — patient data redacted, and
show_phi refused unless the config allows it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest

from tests.delivery.receiver import Receiver
from tests.peers.conftest import BrokerProcess
from tests.peers.test_reconcile_to_pacs import accepted, sample, send_text

pytestmark = pytest.mark.peer


def call(broker: BrokerProcess, path: str, method: str = "GET") -> tuple[int, Any]:
    url = f"http://127.0.0.1:{broker.http_port}{path}"
    try:
        with urlopen(Request(url, method=method), timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


async def test_queues_dead_letters_retry_pause_messages_and_worklist(tmp_path: Path) -> None:
    async with Receiver() as ehr:
        await ehr.stop()  # the EHR is down: with one attempt allowed, the result is dead
        broker = BrokerProcess(
            tmp_path / "b",
            destinations={"ehr": {
                "type": "mllp", "host": "127.0.0.1", "port": ehr.port, "probe_interval_s": 0,
                "retry": {"max_attempts": 1, "initial_s": 0.05, "jitter": 0},
            }},
        )  # fmt: skip
        broker.start()
        try:
            say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
            assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
            assert accepted(await asyncio.to_thread(say, sample("oru_r01"), 2))

            deadline = time.monotonic() + 15
            while True:
                status, queues = await asyncio.to_thread(call, broker, "/queues")
                assert status == 200
                (ehr_row,) = [q for q in queues if q["destination"] == "ehr"]
                if ehr_row["dead"] == 1:
                    break
                assert time.monotonic() < deadline, queues
                await asyncio.sleep(0.1)
            assert ehr_row["type"] == "mllp" and ehr_row["depth"] == 0

            status, dead = await asyncio.to_thread(call, broker, "/queues/ehr/dead")
            assert status == 200
            (letter,) = dead
            assert letter["message"] == "ORU^R01 RPT26110300501"
            assert letter["ordering_key"] == "<redacted>" and "payload" not in letter
            assert letter["last_error"]
            code, _ = await asyncio.to_thread(call, broker, "/queues/ehr/dead?show_phi=1")
            assert code == 403  # not allowed by this config
            code, body = await asyncio.to_thread(call, broker, "/queues/nope/dead")
            assert code == 404 and "nope" in body["error"]

            # pause, bring the EHR back, replay: nothing goes out until resumed
            assert (await asyncio.to_thread(call, broker, "/queues/ehr/pause", "POST"))[0] == 200
            await ehr.start()
            code, body = await asyncio.to_thread(call, broker, "/queues/ehr/retry", "POST")
            assert code == 400  # say which
            code, body = await asyncio.to_thread(call, broker, "/queues/ehr/retry?all=1", "POST")
            assert code == 200 and len(body["requeued"]) == 1
            await asyncio.sleep(0.5)
            assert ehr.accepted == []
            _, queues = await asyncio.to_thread(call, broker, "/queues")
            assert [q["state"] for q in queues if q["destination"] == "ehr"] == ["paused"]
            assert (await asyncio.to_thread(call, broker, "/queues/ehr/resume", "POST"))[0] == 200
            deadline = time.monotonic() + 15
            while not ehr.accepted:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

            status, messages = await asyncio.to_thread(call, broker, "/messages?limit=10")
            assert status == 200
            assert [m["type"] for m in messages] == ["ORU^R01", "ORM^O01"]  # newest first
            status, one = await asyncio.to_thread(call, broker, f"/messages/{messages[1]['id']}")
            assert status == 200 and one["route"].startswith("orm-to-worklist")
            assert "message" not in one  # the HL7 text is patient data
            assert (await asyncio.to_thread(call, broker, "/messages/99999"))[0] == 404

            status, items = await asyncio.to_thread(call, broker, "/worklist")
            (item,) = items
            assert item["accession"] == "ACC26110001" and item["patient_id"] == "<redacted>"
            status, full = await asyncio.to_thread(call, broker, f"/worklist/{item['id']}")
            assert status == 200 and full["status"] == "SCHEDULED"
            assert full["item"]["00100010"]["Value"] == ["<redacted>"]
            assert (await asyncio.to_thread(call, broker, "/worklist?limit=0"))[0] == 400
        finally:
            broker.stop()


async def test_show_phi_when_the_config_allows_it(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "b")
    config = json.loads(broker.config_path.read_text())
    config["http"]["show_phi"] = True
    broker.config_path.write_text(json.dumps(config))
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        _, items = await asyncio.to_thread(call, broker, "/worklist?show_phi=1")
        assert items[0]["patient_id"] == "MR100234"
        _, messages = await asyncio.to_thread(call, broker, "/messages")
        _, one = await asyncio.to_thread(call, broker, f"/messages/{messages[0]['id']}?show_phi=1")
        assert one["message"].startswith("MSH|^~\\&|RIS|")
    finally:
        broker.stop()
