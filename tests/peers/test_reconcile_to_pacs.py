"""Patient and order updates reach an HL7 PACS (IHE PIR / RAD-12, RAD-13; DESIGN §2.4): a real
`broker serve`, python-hl7's mllp_send as the RIS and EHR, a pynetdicom SCU as the modality,
an MLLP receiver in the test as the PACS's HL7 port (down for a while, then back). The PACS
must get exactly the updates, in order: an A08 after the A01 it corrects, never before."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import hl7
import pytest

from tests.delivery.receiver import Receiver
from tests.peers.conftest import BrokerProcess
from tests.peers.test_mpps_to_ris import MLLP_SEND, mpps, rows, until
from tests.samples_index import SAMPLES_DIR

pytestmark = pytest.mark.peer


def send_text(broker: BrokerProcess, text: str, where: Path) -> str:
    """Send a message as the RIS/EHR does (python-hl7's mllp_send); return the ACK."""
    where.write_bytes(text.encode("utf-8"))
    result = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(broker.mllp_port), "-f", str(where), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode("latin-1")


def accepted(ack: str) -> bool:
    """AA, or CA for senders asking for enhanced acknowledgment (MSH-15 AL)."""
    return "MSA|AA|" in ack or "MSA|CA|" in ack


def sample(name: str) -> str:
    return (SAMPLES_DIR / f"{name}.hl7").read_bytes().decode("latin-1")


def kinds(pacs: Receiver) -> list[str]:
    out = []
    for payload in pacs.accepted:
        msg = hl7.parse(payload.decode("latin-1"))
        out.append(f"{msg.segment('MSH')[9][0][0]}^{msg.segment('MSH')[9][0][1]}")
    return out


async def test_the_pacs_hears_registration_update_order_change_and_merge_in_order(
    tmp_path: Path,
) -> None:
    async with Receiver() as pacs:
        broker = BrokerProcess(
            tmp_path / "b",
            dicom=True,
            destinations={"pacs": {
                "type": "mllp", "host": "127.0.0.1", "port": pacs.port,
                "retry": {"initial_s": 0.1, "max_interval_s": 0.2, "jitter": 0},
            }},
        )  # fmt: skip
        await pacs.stop()  # the PACS is down while the patient is registered and corrected
        broker.start()
        try:
            say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
            assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
            assert accepted(await asyncio.to_thread(say, sample("adt_a01"), 2))
            assert accepted(await asyncio.to_thread(say, sample("adt_a08"), 3))
            await asyncio.sleep(0.3)
            assert pacs.received == []
            await pacs.start()
            await until(lambda: len(pacs.accepted) == 2)
            assert kinds(pacs) == ["ADT^A01", "ADT^A08"]
            a08 = hl7.parse(pacs.accepted[1].decode("latin-1"))
            assert str(a08.segment("MSH")[3]) == "BROKER" and str(a08.segment("MSH")[5]) == "PACS"
            # the worklist item follows the A08
            (name,) = rows(broker, "SELECT patient_name FROM worklist_items")
            assert "MARGARET" in str(name[0]).upper()

            # before the study exists, an order change is the worklist's business only
            xo = sample("orm_o01_v231_xo").replace("ACC26110001", "ACC26110001B")
            assert accepted(await asyncio.to_thread(say, xo, 4))
            await asyncio.sleep(0.3)
            assert len(pacs.accepted) == 2
            # the modality performs the step: now the study exists, and a change reaches it
            await asyncio.to_thread(mpps, broker, "COMPLETED", "ACC26110001B")
            xo2 = xo.replace("RIS26110200157", "RIS26110200158").replace(
                "CT HEAD W/O CONTRAST", "CT HEAD WITH CONTRAST"
            )
            assert accepted(await asyncio.to_thread(say, xo2, 5))
            await until(lambda: len(pacs.accepted) == 3)
            orm = hl7.parse(pacs.accepted[2].decode("latin-1"))
            assert kinds(pacs)[2] == "ORM^O01" and str(orm.segment("ORC")[1]) == "XO"
            assert str(orm.segment("OBR")[4]).split("^")[1] == "CT HEAD WITH CONTRAST"

            # the patient is merged into another: the PACS gets the A40, the items move
            a40 = sample("adt_a40")
            assert accepted(await asyncio.to_thread(say, a40, 6))
            await until(lambda: len(pacs.accepted) == 4)
            assert kinds(pacs)[3] == "ADT^A40"
            assert rows(broker, "SELECT DISTINCT patient_id FROM worklist_items") == [("MR100199",)]
            history = broker.cli("reconcile", "history")
            recorded = [line for line in history.stdout.splitlines() if line]
            assert len(recorded) == 4  # A08, XO (no study yet), XO, A40
            assert "MARGARET" not in history.stdout  # redacted without --show-phi
        finally:
            broker.stop()


async def test_bad_updates_get_a_precise_error_and_change_nothing(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "b")
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        no_mrg = "\r".join(s for s in sample("adt_a40").split("\r") if not s.startswith("MRG"))
        ack = await asyncio.to_thread(say, no_mrg, 1)
        assert (
            "MSA|CE|EHR26110500040" in ack and "ERR||MRG|100^" in ack
        )  # enhanced mode (MSH-15 AL)
        unknown_order = await asyncio.to_thread(say, sample("orm_o01_v231_xo"), 2)
        assert "MSA|AE|RIS26110200157" in unknown_order and "ORC^1^2" in unknown_order
        assert rows(broker, "SELECT COUNT(*) FROM worklist_items") == [(0,)]
        # the shipped routes accept an update for a patient they hold no order of, and say so
        assert accepted(await asyncio.to_thread(say, sample("adt_a08"), 3))
        shown = broker.cli("reconcile", "history")
        assert "unknown patient" in shown.stdout
    finally:
        broker.stop()
