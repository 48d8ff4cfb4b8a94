"""Order status back to the RIS with real peers (DESIGN §2.3, §6a): python-hl7's mllp_send as
the RIS sending the order, a pynetdicom SCU as the modality sending MPPS, an MLLP receiver in
the test as the RIS's order-status port; python-hl7 parses what arrives (the oracle)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import hl7
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.delivery.receiver import Receiver
from tests.peers.conftest import BrokerProcess
from tests.samples_index import SAMPLES_DIR

MLLP_SEND = Path(shutil.which("mllp_send") or Path(__file__).parents[2] / ".venv/bin/mllp_send")


def mllp_send(broker: BrokerProcess, sample: str) -> str:
    """Send a sample as the RIS does, with python-hl7's mllp_send; return the ACK."""
    result = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(broker.mllp_port), "-f",
         str(SAMPLES_DIR / sample), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=True,
    )  # fmt: skip
    return result.stdout.decode("latin-1")


def mpps(broker: BrokerProcess, final: str, accession: str = "ACC26110001") -> None:
    """MPPS N-CREATE (IN PROGRESS) then N-SET ``final`` for the v2.3.1 sample's procedure."""
    ae = AE(ae_title="CT1_AE")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", broker.dicom_port, ae_title="BROKER")
    assert assoc.is_established
    try:
        create = Dataset()
        ref = Dataset()
        ref.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"
        ref.AccessionNumber = accession
        ref.ScheduledProcedureStepID = "SPS26110001"
        create.ScheduledStepAttributesSequence = [ref]
        create.PatientID = "MR100234"
        create.PerformedProcedureStepStatus = "IN PROGRESS"
        create.Modality = "CT"
        uid = pydicom.uid.generate_uid()
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        done = Dataset()
        done.PerformedProcedureStepStatus = final
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def rows(broker: BrokerProcess, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{broker.store}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def parse(payload: bytes) -> hl7.Message:
    return hl7.parse(payload.decode("ascii"))


async def test_mpps_in_progress_and_completed_reach_the_ris_in_order(tmp_path: Path) -> None:
    async with Receiver() as ris:
        broker = BrokerProcess(
            tmp_path / "b",
            dicom=True,
            destinations={"ris": {"type": "mllp", "host": "127.0.0.1", "port": ris.port}},
        )
        await asyncio.to_thread(broker.start)
        try:
            ack = await asyncio.to_thread(mllp_send, broker, "orm_o01_v231.hl7")
            assert "MSA|AA|RIS26110200101" in ack
            await asyncio.to_thread(mpps, broker, "COMPLETED")
            await until(lambda: len(ris.accepted) >= 2)
            await asyncio.sleep(0.3)  # nothing more arrives
        finally:
            await asyncio.to_thread(broker.stop)
    assert len(ris.received) == 2
    text = (SAMPLES_DIR / "orm_o01_v231.hl7").read_text("ascii")
    order = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))  # python-hl7: CR only
    sent = [parse(m) for m in ris.received]
    for msg in sent:
        assert str(msg.segment("MSH")(9)) == "ORM^O01"
        assert str(msg.segment("MSH")(12)) == "2.3.1"  # the version of the order
        assert str(msg.segment("MSH")(3)) == "BROKER"
        assert (str(msg.segment("MSH")(5)), str(msg.segment("MSH")(6))) == ("RIS", "HOSP")
        assert str(msg.segment("ORC")(1)) == "SC"
        assert str(msg.segment("ORC")(2)) == str(order.segment("ORC")(2))  # placer
        assert str(msg.segment("ORC")(3)) == str(order.segment("ORC")(3))  # filler
        assert str(msg.segment("PID")(3)) == str(order.segment("PID")(3))
        assert str(msg.segment("OBR")(19)) == "RP26110001"
    assert [str(m.segment("ORC")(5)) for m in sent] == ["IP", "CM"]  # in order
    ids = [str(m.segment("MSH")(10)) for m in sent]
    assert len(set(ids)) == 2 and "RIS26110200101" not in ids  # a new MSH-10 per message
    assert rows(broker, "SELECT destination, state FROM outbox ORDER BY id") == [
        ("ris", "delivered"),
        ("ris", "delivered"),
    ]


async def test_without_ris_nothing_is_queued_and_it_is_recorded_as_skipped(
    tmp_path: Path,
) -> None:
    broker = BrokerProcess(tmp_path / "b", dicom=True)
    await asyncio.to_thread(broker.start)
    try:
        assert "MSA|AA|" in await asyncio.to_thread(mllp_send, broker, "orm_o01_v231.hl7")
        await asyncio.to_thread(mpps, broker, "DISCONTINUED")
    finally:
        await asyncio.to_thread(broker.stop)
    assert rows(broker, "SELECT count(*) FROM outbox") == [(0,)]
    assert rows(
        broker,
        "SELECT e.kind, n.action, n.result, n.detail FROM worklist_events e "
        "JOIN worklist_notices n ON n.event_id = e.id ORDER BY e.id",
    ) == [
        (kind, "order-status:ris", "skipped", "destination 'ris' is not configured")
        for kind in ("procedure.in_progress", "procedure.discontinued")
    ]
