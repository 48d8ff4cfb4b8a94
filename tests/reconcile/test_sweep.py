"""The reconciliation sweep: a real Orthanc answers the broker's C-FIND (Study Root, STUDY
level); each study is compared with its order; ``--apply`` queues a correction job; the
admin API answers the same report. The comparison itself is tested pure, too."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from broker.cli import main
from broker.config import Settings, load_settings
from broker.hl7.charset import decode_frame
from broker.hl7.message import Message
from broker.ingest.journal import InboundRecord
from broker.reconcile.sweep import Study, SweepError, compare, parse_day
from broker.routing.engine import RouteEngine
from broker.routing.loader import load_definitions
from broker.storage.factory import open_stores
from tests.dicom_study import build_study
from tests.orthanc_server import OrthancServer, orthanc_fixture, orthanc_server_fixture  # noqa: F401
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
UID1 = "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"  # ZDS-1 of orm_o01_v231


# -- pure --------------------------------------------------------------------------------------


def item(**values: str) -> dict[str, Any]:
    tags = {
        "PatientID": ("00100020", "LO"), "PatientName": ("00100010", "PN"),
        "PatientBirthDate": ("00100030", "DA"), "PatientSex": ("00100040", "CS"),
        "AccessionNumber": ("00080050", "SH"), "IssuerOfPatientID": ("00100021", "LO"),
        "RequestedProcedureDescription": ("00321060", "LO"),
    }  # fmt: skip
    out: dict[str, Any] = {}
    for k, v in values.items():
        tag, vr = tags[k]
        out[tag] = {"vr": vr, "Value": [{"Alphabetic": v} if vr == "PN" else v]}
    return out


ORDER = item(PatientID="P1", PatientName="DOE^JANE", PatientBirthDate="19700101",
             PatientSex="F", AccessionNumber="A1",
             RequestedProcedureDescription="CT HEAD")  # fmt: skip


def lookup_of(*items: tuple[int, dict[str, Any], tuple[str, ...]]) -> Any:
    return lambda accessions, uids: [
        i for i in items
        if i[1]["00080050"]["Value"][0] in accessions or set(i[2]) & set(uids)
    ]  # fmt: skip


def test_a_matching_study_has_no_mismatch_and_names_compare_by_pn_rules() -> None:
    study = Study("1.2", "20260101", "A1", "P1", "", "doe^jane^^^", "19700101", "F", "ct head")
    report = compare([study], lookup_of((1, ORDER, ())))
    assert (report.studies, report.matched, report.mismatches) == (1, 1, [])


def test_every_compared_field_is_reported() -> None:
    study = Study("1.2", "20260101", "A1", "P9", "", "DOE^JOAN", "19700102", "M", "MR KNEE")
    report = compare([study], lookup_of((7, ORDER, ())))
    got = {(m.field, m.pacs, m.order, m.item_id) for m in report.mismatches}
    assert got == {
        ("patient_id", "P9", "P1", 7), ("name", "DOE^JOAN", "DOE^JANE", 7),
        ("birth_date", "19700102", "19700101", 7), ("sex", "M", "F", 7),
        ("procedure", "MR KNEE", "CT HEAD", 7),
    }  # fmt: skip


def test_a_study_found_by_its_linked_uid_reports_a_wrong_accession() -> None:
    study = Study("1.2.3", "20260101", "WRONG", "P1", "", "DOE^JANE", "19700101", "F", "")
    report = compare([study], lookup_of((1, ORDER, ("1.2.3",))))
    assert [(m.field, m.pacs, m.order) for m in report.mismatches] == [("accession", "WRONG", "A1")]


def test_a_study_without_order_is_listed_and_phi_is_redacted_by_default() -> None:
    report = compare([Study("9.9", "20260101", "NOPE", "P1")], lookup_of((1, ORDER, ())))
    assert [s.study_uid for s in report.without_order] == ["9.9"]
    mm = compare([Study("1.2", "", "A1", "P2")], lookup_of((1, ORDER, ())))
    out = mm.as_json()
    assert {"field": "patient_id", "pacs": "<redacted>", "order": "<redacted>"}.items() <= (
        out["mismatches"][0].items()
    )
    assert mm.as_json(show_phi=True)["mismatches"][0]["pacs"] == "P2"


def test_dates_are_checked() -> None:
    assert parse_day("2026-11-03") == parse_day("20261103") == "20261103"
    with pytest.raises(SweepError, match="expected YYYY-MM-DD"):
        parse_day("03/11/2026")


# -- against Orthanc ---------------------------------------------------------------------------


def write_config(tmp_path: Path, pacs: OrthancServer, **extra: Any) -> Path:
    config = {
        "store": f"sqlite:///{tmp_path / 'broker.db'}",
        "routes": str(ROOT / "routes"),
        "mappings": str(ROOT / "mappings"),
        "destinations": {
            "pacs": {
                "type": "orthanc",
                "url": pacs.url,
                "username": pacs.username,
                "password": pacs.password,
            },
        },
        "reconcile": {"pacs": {"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.aet}},
        **extra,
    }
    path = tmp_path / "broker.yaml"
    path.write_text(json.dumps(config))  # YAML 1.2 reads JSON
    return path


def schedule(settings: Settings, *names: str) -> None:
    """Orders into the store (either backend) the way ingest commits them."""
    stores = open_stores(settings)
    journal = stores.journal
    engine = RouteEngine(load_definitions(settings.routes_dir, settings.mappings_dir),
                         settings.destination_types())  # fmt: skip
    stores.open()
    try:
        for n, name in enumerate(names):
            payload = (ROOT / "samples" / f"{name}.hl7").read_bytes()
            decoded = decode_frame(payload)
            message = Message.parse(decoded.text)
            record = InboundRecord(time.time(), "ris", "127.0.0.1", f"RIS|{n}",
                                   message.control_id, "ORM^O01", message.version,
                                   decoded.charset, payload)  # fmt: skip
            assert journal.commit_sync(record, engine.route(message)).ack_code == "AA"
    finally:
        stores.close()


@pytest.fixture
def pacs_with_studies(orthanc: OrthancServer) -> Iterator[OrthancServer]:
    # matches its order (orm_o01_v231) but for the name (MARGARET vs MARGRET) and birth date
    orthanc.upload(*(f.data for f in build_study(
        patient_id="MR100234", issuer="HOSP", patient_name="HARTLEY^MARGARET^ANN^MRS",
        birth_date="19580321", sex="F", accession="ACC26110001", study_uid=UID1,
        study_description="CT HEAD W/O CONTRAST")))  # fmt: skip
    # no order in the broker
    orthanc.upload(*(f.data for f in build_study(patient_id="X1", accession="NOORDER")))
    yield orthanc


def outbox(db_path: Path) -> list[tuple[str, str, bytes]]:
    conn = sqlite3.connect(db_path)
    try:
        return [(d, c, bytes(p)) for d, c, p in conn.execute(
            "SELECT destination, content_type, payload FROM outbox ORDER BY id")]  # fmt: skip
    finally:
        conn.close()


def test_sweep_reports_mismatches_and_studies_without_order(
    tmp_path: Path, pacs_with_studies: OrthancServer
) -> None:
    config = write_config(tmp_path, pacs_with_studies)
    schedule(load_settings(config), "orm_o01_v231")
    result = CliRunner().invoke(
        main, ["reconcile", "sweep", "--config", str(config), "--since", "2026-01-01", "--json",
               "--show-phi"])  # fmt: skip
    assert result.exit_code == 1, result.output  # mismatches found
    report = json.loads(result.output)
    assert (report["studies"], report["matched"]) == (2, 1)
    assert [s["accession"] for s in report["without_order"]] == ["NOORDER"]
    fields = {m["field"]: (m["pacs"], m["order"]) for m in report["mismatches"]}
    assert fields == {
        "name": ("HARTLEY^MARGARET^ANN^MRS", "HARTLEY^MARGRET^ANN^MRS"),
        "birth_date": ("19580321", "19580312"),
    }
    assert outbox(tmp_path / "broker.db") == []  # no --apply: nothing queued
    # the text form names the fields and keeps the values out by default
    text = CliRunner().invoke(
        main, ["reconcile", "sweep", "--config", str(config), "--since", "20260101"]
    )
    assert "2 studies in the PACS, 1 with an order, 1 without, 2 mismatches" in text.output
    assert "MARGARET" not in text.output and "<redacted>" in text.output


def queued(settings: Settings) -> list[tuple[str, str, bytes]]:
    """(destination, content type, payload) of every pending entry, on either backend."""
    stores = open_stores(settings)
    stores.open()

    async def read() -> list[Any]:
        try:
            return await stores.queue.entries(None, limit=1000)
        finally:
            if stores.kind == "redis":
                await stores.queue.aclose()  # in the loop its connections belong to

    try:
        entries = asyncio.run(read())
    finally:
        stores.close()
    return [(e.destination, e.content_type, e.payload) for e in entries]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_sweep_apply_queues_a_correction_job_for_the_study(
    tmp_path: Path, pacs_with_studies: OrthancServer, backend: str
) -> None:
    extra: dict[str, Any] = {}
    if backend == "redis":
        server = RedisServer(tmp_path / "redis").start()
        extra["store"] = server.url
    config = write_config(tmp_path, pacs_with_studies, **extra)
    settings = load_settings(config)
    schedule(settings, "orm_o01_v231")
    result = CliRunner().invoke(
        main, ["reconcile", "sweep", "--config", str(config), "--since", "2026-01-01",
               "--apply"])  # fmt: skip
    assert result.exit_code == 1
    assert "queued: study" in result.output
    ((dest, ctype, payload),) = queued(settings)
    assert (dest, ctype) == ("pacs", "application/vnd.broker.reconcile+json")
    job = json.loads(payload)
    assert job["op"] == "update_order" and job["study_uids"] == [UID1]
    assert job["set"] == {"PatientName": "HARTLEY^MARGRET^ANN^MRS",
                          "PatientBirthDate": "19580312"}  # fmt: skip
    history = CliRunner().invoke(main, ["reconcile", "history", "--config", str(config)])
    (line,) = history.output.splitlines()
    assert json.loads(line)["kind"] == "sweep" and "MARGRET" not in line
    if backend == "redis":
        server.stop()


def test_sweep_with_an_unreachable_pacs_is_a_clear_error(
    tmp_path: Path,
    orthanc_server: OrthancServer,
) -> None:
    config = write_config(tmp_path, orthanc_server)
    schedule(load_settings(config), "orm_o01_v231")
    data = json.loads(config.read_text())
    data["reconcile"]["pacs"]["port"] = 9  # discard: nothing listens
    config.write_text(json.dumps(data))
    result = CliRunner().invoke(
        main, ["reconcile", "sweep", "--config", str(config), "--since", "2026-01-01"]
    )
    assert result.exit_code == 1
    assert "could not be reached" in result.output and "127.0.0.1:9" in result.output


def test_sweep_needs_the_pacs_configured(tmp_path: Path) -> None:
    config = tmp_path / "b.yaml"
    config.write_text(
        f"store: sqlite:///{tmp_path / 'b.db'}\nroutes: {ROOT / 'routes'}\n"
        f"mappings: {ROOT / 'mappings'}\n"
    )
    schedule(load_settings(config))
    result = CliRunner().invoke(
        main, ["reconcile", "sweep", "--config", str(config), "--since", "2026-01-01"]
    )
    assert result.exit_code == 1 and "reconcile.pacs is not configured" in result.output
