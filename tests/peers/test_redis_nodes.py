"""Two ``broker serve`` nodes on one real redis-server (``store: redis://…``, issue 5).

An order sent (python-hl7's ``mllp_send``) to one node is on the worklist the other answers
(DCMTK ``findscu``); an MPPS on one node moves the item for both; a resend to the other node
is a duplicate; a node killed with ``kill -9`` mid-delivery leaves its entries to the other.
Redis runs with ``appendfsync always``, as docs/DELIVERY.md recommends.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.delivery.receiver import Answer, Receiver
from tests.peers.conftest import REPO, BrokerProcess, MllpConnection, _child_env, msa
from tests.peers.test_order_to_worklist import RETURN_KEYS, findscu, mllp_send
from tests.redis_server import RedisServer

pytestmark = pytest.mark.peer

ORU = (
    "MSH|^~\\&|REPORTING|HOSP|BROKER|HOSP|20261102101500||ORU^R01|{cid}|P|2.3.1\r"
    "PID|1||MR100234^^^HOSP^MR||DOE^JANE\r"
    "OBR|1|PL1|FL1|70450^CT HEAD^C4\r"
    "OBX|1|TX|REPORT^Report||line {cid}||||||F\r"
)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server.url
    server.stop()


def node(workdir: Path, redis_url: str, **config: Any) -> BrokerProcess:
    broker = BrokerProcess(workdir, dicom=True)
    settings = json.loads(broker.config_path.read_text())
    settings["store"] = redis_url
    settings.update(config)
    broker.config_path.write_text(json.dumps(settings))
    return broker


def mpps(broker: BrokerProcess, uid: str, status: str, *, create: bool) -> int:
    ae = AE(ae_title="CT1_AE")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", broker.dicom_port, ae_title="BROKER")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = status
        if create:
            link = Dataset()
            link.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"
            link.AccessionNumber = "ACC26110001"
            ds.ScheduledStepAttributesSequence = [link]
            result, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        else:
            result, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return int(result.Status)
    finally:
        assoc.release()


def test_two_nodes_serve_one_worklist(redis_url: str, tmp_path: Path) -> None:
    a = node(tmp_path / "a", redis_url)
    b = node(tmp_path / "b", redis_url)
    a.start()
    b.start()
    try:
        assert b.health()[1]["store"] == "ok"
        # the RIS sends the order to node A; the modality asks node B
        assert "MSA|AA|RIS26110200101" in mllp_send(a, "orm_o01_v231.hl7")
        (item,) = findscu(b, tmp_path / "q1", "AccessionNumber=ACC26110001", *RETURN_KEYS)
        assert item.PatientID == "MR100234"
        assert item.ScheduledProcedureStepSequence[0].Modality == "CT"

        # the RIS resends it to node B (its connection moved): answered AA, not applied twice
        assert "MSA|AA|RIS26110200101" in mllp_send(b, "orm_o01_v231.hl7")
        statuses = [row["status"] for row in b.journal_ls()]
        assert sorted(statuses) == ["accepted", "duplicate"]
        listed = a.cli("worklist", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == 1

        # the order changes through node B; node A answers the new time
        mllp_send(b, "orm_o01_v231_xo.hl7")
        (item,) = findscu(a, tmp_path / "q2", "AccessionNumber=ACC26110001", *RETURN_KEYS)
        step = item.ScheduledProcedureStepSequence[0]
        assert step.ScheduledProcedureStepStartTime.startswith("1415")

        # MPPS in progress on node A, completed on node B: the item leaves both worklists
        assert mpps(a, "1.2.3.4.5.6", "IN PROGRESS", create=True) == 0
        (item,) = findscu(b, tmp_path / "q3", "AccessionNumber=ACC26110001", *RETURN_KEYS)
        assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
        assert mpps(b, "1.2.3.4.5.6", "COMPLETED", create=False) == 0
        assert findscu(a, tmp_path / "q4", "AccessionNumber=ACC26110001", *RETURN_KEYS) == []
        # a second N-CREATE of the same instance on the other node is refused (0x0111)
        assert mpps(b, "1.2.3.4.5.6", "IN PROGRESS", create=True) == 0x0111
    finally:
        a.stop()
        b.stop()


async def test_a_node_killed_mid_delivery_leaves_its_entries_to_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    slow = Answer(delay_s=0.3)
    async with Receiver(lambda message, seen: slow) as ehr:
        destinations = {
            "ehr": {"type": "mllp", "host": "127.0.0.1", "port": ehr.port, "ack_timeout_s": 30}
        }
        config = {"destinations": destinations, "delivery": {"lease_s": 2}}
        a = node(tmp_path / "a", redis_url, **config)
        b = node(tmp_path / "b", redis_url, **config)
        a.start()
        try:
            async with await MllpConnection.open(a.mllp_port) as conn:
                for i in range(10):
                    payload = ORU.format(cid=f"R{i:02d}").encode()
                    assert msa(await conn.send(payload))[0] == "AA"
            deadline = time.monotonic() + 10
            while len(ehr.accepted) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            a.kill()  # SIGKILL while it holds the lane's lease
        finally:
            a.stop()
        assert len(ehr.accepted) < 10
        b.start()  # the other node, same Redis: reclaims the lane once the lease lapses
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if {f"R{i:02d}" for i in range(10)} <= set(ehr.control_ids()):
                    break
                await asyncio.sleep(0.1)
            listed = b.cli("queue", "ls")  # the analyst's view, read from Redis
            assert listed.returncode == 0 and "ehr" in listed.stdout, listed.stderr
        finally:
            b.stop()
    ids = ehr.control_ids()
    assert {f"R{i:02d}" for i in range(10)} <= set(ids)
    firsts = list(dict.fromkeys(ids))
    assert firsts == sorted(firsts)  # in order per destination, resends aside


def test_redis_down_means_ae_and_the_node_recovers_when_it_returns(tmp_path: Path) -> None:
    """Nothing is acknowledged while Redis is away; the node needs no restart afterwards."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    a = node(tmp_path / "a", server.url)
    a.start()
    try:
        # acknowledged before Redis dies: on disk (appendfsync always), so it must survive
        assert "MSA|CA|" in mllp_send(a, "orm_o01_v24.hl7")  # enhanced mode: commit ACK
        server.kill()
        answer = mllp_send(a, "orm_o01_v231.hl7")
        assert "MSA|AE|RIS26110200101" in answer
        status, body = a.health()
        assert status == 503 and body["store"] == "unavailable"
        server.start()  # same port and AOF
        deadline = time.monotonic() + 10
        while a.health()[0] != 200:
            assert time.monotonic() < deadline, "health did not come back"
            time.sleep(0.1)
        assert "MSA|AA|RIS26110200101" in mllp_send(a, "orm_o01_v231.hl7")
        (item,) = findscu(a, tmp_path / "q", "AccessionNumber=ACC26110001", *RETURN_KEYS)
        assert item.PatientID == "MR100234"
        before = findscu(a, tmp_path / "q2", "AccessionNumber=ACC2611001?", *RETURN_KEYS)
        assert sorted(i.AccessionNumber for i in before) == ["ACC26110011", "ACC26110012"]
    finally:
        a.stop()
        server.stop()


async def test_mpps_on_one_node_sends_the_order_status_of_an_order_taken_by_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    """The order came in through node A; the modality reports to node B; the RIS gets the
    order-status messages built from A's journal entry (the original order), in order."""
    from tests.peers.test_mpps_to_ris import mpps as mpps_in_progress_then
    from tests.peers.test_mpps_to_ris import parse, until

    async with Receiver() as ris:
        destinations = {"ris": {"type": "mllp", "host": "127.0.0.1", "port": ris.port}}
        a = node(tmp_path / "a", redis_url, destinations=destinations)
        b = node(tmp_path / "b", redis_url, destinations=destinations)
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        try:
            ack = await asyncio.to_thread(mllp_send, a, "orm_o01_v231.hl7")
            assert "MSA|AA|RIS26110200101" in ack
            await asyncio.to_thread(mpps_in_progress_then, b, "COMPLETED")
            await until(lambda: len(ris.accepted) >= 2)
            await asyncio.sleep(0.3)  # nothing more arrives
        finally:
            await asyncio.to_thread(a.stop)
            await asyncio.to_thread(b.stop)
    sent = [parse(m) for m in ris.received]
    assert [str(m.segment("ORC")(5)) for m in sent] == ["IP", "CM"]
    assert all(str(m.segment("ORC")(1)) == "SC" for m in sent)
    assert all(str(m.segment("MSH")(12)) == "2.3.1" for m in sent)  # the order's version


def test_a_node_started_while_redis_is_down_answers_ae_then_recovers(tmp_path: Path) -> None:
    """Redis unreachable at start: the node starts anyway, /health says the store is
    unavailable and every message gets AE (nothing acknowledged); once Redis answers, the
    same node acknowledges and serves the worklist, with no restart."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    a = node(tmp_path / "a", server.url)  # server.url names its port; nothing listens yet
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(a.config_path)],
        cwd=REPO,
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = a.health(timeout=1.0)
                break
            except OSError:
                assert proc.poll() is None, "the broker exited"
                assert time.monotonic() < deadline, "no /health answer"
                time.sleep(0.1)
        assert status == 503 and body["store"] == "unavailable"
        assert "MSA|AE|RIS26110200101" in mllp_send(a, "orm_o01_v231.hl7")
        server.start()
        while a.health(timeout=1.0)[0] != 200:
            assert time.monotonic() < deadline + 10, "the store did not come back"
            time.sleep(0.1)
        assert "MSA|AA|RIS26110200101" in mllp_send(a, "orm_o01_v231.hl7")
        (item,) = findscu(a, tmp_path / "q", "AccessionNumber=ACC26110001", *RETURN_KEYS)
        assert item.PatientID == "MR100234"
    finally:
        proc.terminate()
        proc.wait(30)
        server.stop()
