"""Whole-process behaviour: graceful SIGTERM, SIGHUP reload, no patient data in the log."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.peers.conftest import REPO, BrokerProcess, MllpConnection, msa, orm, sample_bytes
from tests.samples_index import SAMPLES

pytestmark = pytest.mark.peer

# Patient values the samples carry; none may reach a default (INFO) log.
PHI = ("HARTLEY", "MARGRET", "MÜLLER", "MR100234", "MR200587", "19580312", "ÅSTRÖM", "MR300912")


async def test_sigterm_finishes_in_flight_work_and_exits_0(broker: BrokerProcess) -> None:
    async with await MllpConnection.open(broker.mllp_port) as conn:
        for i in range(20):
            assert msa(await conn.send(orm(f"TERM{i}")))[0] == "AA"
    assert broker.stop() == 0
    assert "broker stopped" in broker.log_text()
    # Every acknowledged message is there after the restart.
    broker.start()
    ids = {row[1] for row in broker.journal_rows()}
    assert {f"TERM{i}" for i in range(20)} <= ids


async def test_no_patient_data_in_the_default_log(broker: BrokerProcess) -> None:
    async with await MllpConnection.open(broker.mllp_port) as conn:
        for name in SAMPLES:
            await conn.send(sample_bytes(name))
        # a broken message too: errors are logged by location, not by value
        await conn.send(sample_bytes("orm_o01_v231").replace(b"|2.3.1", b"|9.9"))
    broker.stop()
    log = broker.log_text()
    leaked = [value for value in PHI if value in log]
    assert not leaked, f"patient data in the log: {leaked}"


def test_sighup_reloads_routes_and_refuses_an_invalid_set(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    shutil.copytree(REPO / "routes", routes)
    broker = BrokerProcess(tmp_path / "b")
    text = broker.config_path.read_text().replace(str(REPO / "routes"), str(routes))
    broker.config_path.write_text(text)
    broker.start()
    try:
        # drop everything ORM: a valid new set, taken on SIGHUP
        route_file = next(routes.glob("*.yaml"))
        original = route_file.read_text()
        route_file.write_text(original.replace("message_type: ORM\n", "message_type: ORX\n", 1))
        broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        code = "AA"
        while time.monotonic() < deadline:
            code = msa(asyncio.run(_send_one(broker, orm(f"HUP{time.monotonic_ns()}"))))[0]
            if code != "AA":
                break
            time.sleep(0.2)
        assert code in {"AE", "AR"}, "the reloaded routes no longer take ORM^O01"

        # an invalid set is refused: the running set stays
        route_file.write_text("routes: [{name: broken, match: {message_type: 12}}]\n")
        broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        time.sleep(1.0)
        assert msa(asyncio.run(_send_one(broker, orm("HUP-AFTER"))))[0] == code
        assert broker.alive
        assert str(route_file) in broker.log_text()
    finally:
        broker.stop()


async def _send_one(broker: BrokerProcess, payload: bytes) -> bytes:
    async with await MllpConnection.open(broker.mllp_port) as conn:
        return await conn.send(payload)
