"""Reconciliation into a real Orthanc (DESIGN §2.4, §7): a `broker serve` process with an
`orthanc` destination, python-hl7's mllp_send as the RIS and EHR, a pydicom-made study stored
in Orthanc under the old demographics. After A08, XO and A40 the instances Orthanc stores
carry the corrected attributes, with their UIDs kept; a PACS outage only delays the update."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from tests.dicom_study import build_study
from tests.orthanc_server import (  # noqa: F401
    OrthancError,
    OrthancServer,
    orthanc_fixture,
    orthanc_server_fixture,
)
from tests.peers.conftest import BrokerProcess
from tests.peers.test_reconcile_to_pacs import accepted, sample, send_text

pytestmark = pytest.mark.peer

STUDY_UID = "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"  # ZDS-1 of the sample order


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def tags(pacs: OrthancServer) -> list[dict[str, object]]:
    return pacs.all_instance_tags()


def all_have(pacs: OrthancServer, **want: str) -> bool:
    try:
        found = tags(pacs)
    except OrthancError:  # an instance went away between listing and reading (mid-merge)
        return False
    return bool(found) and all(all(t.get(k) == v for k, v in want.items()) for t in found)


def broker_for(tmp_path: Path, pacs: OrthancServer) -> BrokerProcess:
    return BrokerProcess(
        tmp_path / "b",
        destinations={"pacs": {
            "type": "orthanc", "url": pacs.url, "username": pacs.username,
            "password": pacs.password,
            "retry": {"initial_s": 0.2, "max_interval_s": 0.5, "jitter": 0},
        }},
    )  # fmt: skip


async def test_a08_xo_and_a40_correct_the_stored_study(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    files = build_study(
        patient_id="MR100234", issuer="HOSP", patient_name="HARTLEY^MARGRET^ANN^MRS",
        birth_date="19580312", sex="F", accession="ACC26110001", study_uid=STUDY_UID,
        study_description="CT HEAD W/O CONTRAST", series=2, instances=2,
    )  # fmt: skip
    orthanc.upload(*(f.data for f in files))
    sops = {f.sop_uid for f in files}
    broker = broker_for(tmp_path, orthanc)
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        # A08: name and birth date corrected on every stored instance
        assert accepted(await asyncio.to_thread(say, sample("adt_a08"), 2))
        await until(lambda: all_have(orthanc, PatientName="HARTLEY^MARGARET^ANN^MRS",
                                     PatientBirthDate="19580321"))  # fmt: skip
        # XO: the order's accession changed; Orthanc finds the study by the old one
        xo = sample("orm_o01_v231_xo").replace("ACC26110001", "ACC26110001B")
        assert accepted(await asyncio.to_thread(say, xo, 3))
        await until(lambda: all_have(orthanc, AccessionNumber="ACC26110001B"))
        # A40: MR100234 is merged into MR100199: the study moves under the survivor
        assert accepted(await asyncio.to_thread(say, sample("adt_a40"), 4))
        await until(lambda: all_have(orthanc, PatientID="MR100199"))
        found = tags(orthanc)
        assert {t["SOPInstanceUID"] for t in found} == sops  # UIDs kept, nothing lost
        assert {t["StudyInstanceUID"] for t in found} == {STUDY_UID}
        assert {t["AccessionNumber"] for t in found} == {"ACC26110001B"}
        patients = [orthanc.get(f"/patients/{p}")["MainDicomTags"]["PatientID"]
                    for p in orthanc.get("/patients")]  # fmt: skip
        assert patients == ["MR100199"]
        # every change recorded, and the queue is empty
        history = [json.loads(x) for x in broker.cli("reconcile", "history").stdout.splitlines()]
        assert [h["kind"] for h in history] == ["patient.merge", "order.update", "patient.update"]
        assert " 0 " in broker.cli("queue", "ls").stdout
    finally:
        broker.stop()


async def test_a_pacs_outage_only_delays_the_update(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    orthanc.upload(*(f.data for f in build_study(
        patient_id="MR100234", issuer="HOSP", patient_name="HARTLEY^MARGRET^ANN^MRS",
        birth_date="19580312", accession="ACC26110001", study_uid=STUDY_UID)))  # fmt: skip
    broker = broker_for(tmp_path, orthanc)
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        orthanc.stop()
        assert accepted(await asyncio.to_thread(say, sample("adt_a08"), 2))  # AA: durable
        await asyncio.sleep(1.0)
        status = broker.cli("queue", "ls").stdout
        assert "retrying" in status
        orthanc.start()
        await until(lambda: all_have(orthanc, PatientName="HARTLEY^MARGARET^ANN^MRS"))
    finally:
        broker.stop()


async def test_sweep_from_the_admin_api(tmp_path: Path, orthanc: OrthancServer) -> None:
    orthanc.upload(*(f.data for f in build_study(
        patient_id="MR100234", patient_name="HARTLEY^MARGRET^ANN^MRS", birth_date="19580312",
        sex="M", accession="ACC26110001", study_uid=STUDY_UID,
        study_description="CT HEAD W/O CONTRAST")))  # fmt: skip
    broker = broker_for(tmp_path, orthanc)
    config = json.loads(broker.config_path.read_text())
    config["reconcile"] = {"pacs": {"port": orthanc.dicom_port, "ae_title": orthanc.aet}}
    broker.config_path.write_text(json.dumps(config))
    broker.start()
    try:
        say = lambda text, n: send_text(broker, text, tmp_path / f"m{n}.hl7")  # noqa: E731
        assert accepted(await asyncio.to_thread(say, sample("orm_o01_v231"), 1))
        url = f"http://127.0.0.1:{broker.http_port}/reconcile/sweep?since=2026-01-01"
        with urlopen(url, timeout=30) as answer:
            report = json.load(answer)
        assert [(m["field"], m["pacs"]) for m in report["mismatches"]] == [("sex", "<redacted>")]
        with urlopen(Request(url, method="POST"), timeout=30) as answer:
            applied = json.load(answer)["applied"]
        assert len(applied) == 1
        await until(lambda: all_have(orthanc, PatientSex="F"))
    finally:
        broker.stop()
