"""The first vertical slice with real peers: python-hl7's mllp_send as the RIS, DCMTK's findscu
as the modality, a pynetdicom SCU for MPPS (IHE RAD-4/RAD-13 → RAD-5 → RAD-6/7)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.peers.conftest import BrokerProcess
from tests.samples_index import SAMPLES_DIR

FINDSCU = "/usr/bin/findscu"  # DCMTK's, not pynetdicom's script of the same name in .venv/bin
MLLP_SEND = Path(shutil.which("mllp_send") or Path(__file__).parents[2] / ".venv/bin/mllp_send")


@pytest.fixture
def wl_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "wl", dicom=True)
    broker.start()
    yield broker
    broker.stop()


def mllp_send(broker: BrokerProcess, sample: str) -> str:
    """Send a sample with python-hl7's mllp_send; return its output (the ACK)."""
    result = subprocess.run(
        [
            str(MLLP_SEND),
            "--loose",
            "-p",
            str(broker.mllp_port),
            "-f",
            str(SAMPLES_DIR / sample),
            "127.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return result.stdout.decode("latin-1")


def findscu(broker: BrokerProcess, out: Path, *keys: str) -> list[Dataset]:
    """Query the broker as a modality does; return the answers findscu wrote (one per item)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [FINDSCU, "-W", "-X", "-od", str(out), "-aec", "BROKER", "-aet", "CT1_AE"]
    # findscu lets a later -k override an earlier one for the same key: matching keys must
    # win over the empty return keys, whatever order the caller gives them in.
    chosen: dict[str, str] = {}
    for key in keys:
        name, _, value = key.partition("=")
        if value or name not in chosen:
            chosen[name] = key
    for key in chosen.values():
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(broker.dicom_port)],
        capture_output=True,
        timeout=30,
        env={"TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr.decode("latin-1")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
)


def test_order_over_mllp_is_on_the_modality_worklist(
    wl_broker: BrokerProcess, tmp_path: Path
) -> None:
    assert "MSA|AA|RIS26110200101" in mllp_send(wl_broker, "orm_o01_v231.hl7")
    (item,) = findscu(wl_broker, tmp_path / "q1", "AccessionNumber=ACC26110001", *RETURN_KEYS)
    assert item.PatientID == "MR100234"
    assert str(item.PatientName).startswith("HARTLEY^MARGRET")
    assert item.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"
    step = item.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepStartTime.startswith("0930")
    # only the requested keys come back (plus Specific Character Set)
    assert "PatientBirthDate" not in item

    # The order changes (XO): the same item, new time, no duplicate (RAD-13).
    mllp_send(wl_broker, "orm_o01_v231_xo.hl7")
    (item,) = findscu(wl_broker, tmp_path / "q2", "AccessionNumber=ACC26110001", *RETURN_KEYS)
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime.startswith("1415")


def test_latin1_order_matches_by_wildcard_and_cancel_removes_it(
    wl_broker: BrokerProcess, tmp_path: Path
) -> None:
    mllp_send(wl_broker, "orm_o01_v24.hl7")
    items = findscu(wl_broker, tmp_path / "q1", "PatientName=M*LLER*", *RETURN_KEYS)
    assert sorted(i.AccessionNumber for i in items) == ["ACC26110011", "ACC26110012"]
    for item in items:
        assert item.SpecificCharacterSet == "ISO_IR 100"
        assert str(item.PatientName).startswith("MÜLLER^JÜRGEN")

    mllp_send(wl_broker, "orm_o01_v24_cancel.hl7")  # ORC-1 CA for the first order
    items = findscu(wl_broker, tmp_path / "q2", "PatientName=M*LLER*", *RETURN_KEYS)
    assert [i.AccessionNumber for i in items] == ["ACC26110012"]


def test_mpps_moves_the_step_and_completed_leaves_the_worklist(
    wl_broker: BrokerProcess, tmp_path: Path
) -> None:
    mllp_send(wl_broker, "orm_o01_v231.hl7")
    (item,) = findscu(wl_broker, tmp_path / "q1", "AccessionNumber=ACC26110001", *RETURN_KEYS)

    ae = AE(ae_title="CT1_AE")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", wl_broker.dicom_port, ae_title="BROKER")
    assert assoc.is_established
    try:
        create = Dataset()
        ref = Dataset()
        ref.StudyInstanceUID = item.StudyInstanceUID
        ref.AccessionNumber = item.AccessionNumber
        create.ScheduledStepAttributesSequence = [ref]
        create.PatientID = item.PatientID
        create.PerformedProcedureStepStatus = "IN PROGRESS"
        create.Modality = "CT"
        create.PerformedStationAETitle = "CT1_AE"
        uid = pydicom.uid.generate_uid()
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        (started,) = findscu(
            wl_broker, tmp_path / "q2", "AccessionNumber=ACC26110001", *RETURN_KEYS
        )
        assert started.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"

        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # A second N-SET after COMPLETED is refused (PS3.4 F.7.2.2: 0xC310), association kept.
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0xC310
    finally:
        assoc.release()
    assert findscu(wl_broker, tmp_path / "q3", "AccessionNumber=ACC26110001", *RETURN_KEYS) == []


def test_a_new_order_reusing_a_study_uid_is_refused_not_overwritten(
    wl_broker: BrokerProcess, tmp_path: Path
) -> None:
    mllp_send(wl_broker, "orm_o01_v231.hl7")
    other = (SAMPLES_DIR / "orm_o01_v231.hl7").read_bytes()
    other = other.replace(b"PL20261102001", b"PL20269999999").replace(
        b"FL20261102001", b"FL20269999999"
    )
    other = other.replace(b"ACC26110001", b"ACC99999999").replace(b"RIS26110200101", b"RIS99")
    path = tmp_path / "reuse.hl7"
    path.write_bytes(other)
    result = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(wl_broker.mllp_port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    ack = result.stdout.decode("latin-1")
    assert "MSA|AE|RIS99" in ack
    assert "ERR|ZDS^1^1" in ack.replace("\r", "\n") or "ZDS" in ack
    # the first order's item is untouched; the second order created nothing
    (item,) = findscu(
        wl_broker,
        tmp_path / "q",
        "StudyInstanceUID=1.2.826.0.1.3680043.2.1125.20261102083015.1002341",
        *RETURN_KEYS,
    )
    assert item.AccessionNumber == "ACC26110001"
    assert findscu(wl_broker, tmp_path / "q2", "AccessionNumber=ACC99999999", *RETURN_KEYS) == []
