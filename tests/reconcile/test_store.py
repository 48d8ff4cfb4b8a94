"""Patient and order changes applied to the embedded store through the shipped routes: the
worklist items follow, every change is recorded, and the PACS updates are queued in the same
transaction (IHE PIR, RAD-12/13; DESIGN §2.4). python-hl7 reads what was queued."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from broker.app import make_journal
from broker.config import Settings
from broker.hl7.charset import decode_frame
from broker.hl7.message import Message
from broker.ingest.journal import CommitResult, InboundRecord
from broker.routing.engine import RouteEngine
from broker.routing.loader import Definitions, load_definitions
from broker.storage.redis_journal import RedisJournal
from broker.storage.redis_queue import RedisQueue
from broker.storage.redis_worklist import RedisWorklistStore
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA
from broker.storage.sqlite_queue import QUEUE_SCHEMA
from broker.storage.sqlite_reconcile import RECONCILE_SCHEMA
from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import WorklistService
from tests.redis_server import shared_redis_url

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return load_definitions(ROOT / "routes", ROOT / "mappings")


def sample(name: str) -> str:
    return decode_frame((SAMPLES / f"{name}.hl7").read_bytes()).text


class Rig:
    """Journal, worklist, reconciliation and queue on one file; messages go in via routes."""

    def __init__(self, path: Path, defs: Definitions, destinations: dict[str, str]) -> None:
        self.db = SqliteDatabase(
            path, schemas=[JOURNAL_SCHEMA, QUEUE_SCHEMA, RECONCILE_SCHEMA], synchronous="OFF"
        )
        self.store: Any = SqliteWorklistStore(self.db)
        self.journal: Any = make_journal(Settings(), self.db)
        self.engine = RouteEngine(defs, destinations)
        self.service = WorklistService(self.store)
        self.db.open()
        self.n = 0

    def close(self) -> None:
        self.db.close()

    def send(self, text: str) -> CommitResult:
        self.n += 1
        text = text.replace("\n", "\r")
        message = Message.parse(text)
        record = InboundRecord(
            time.time(), "ris", "127.0.0.1", f"{message.sending_app}|{self.n}",
            message.control_id, f"{message.message_type}^{message.trigger}", message.version,
            "UNICODE UTF-8", text.encode(),
        )  # fmt: skip
        return self.journal.commit_sync(record, self.engine.route(message))

    def ok(self, text: str) -> CommitResult:
        result = self.send(text)
        assert result.ack_code == "AA", result
        return result

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db.path)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def items(self) -> list[dict[str, Any]]:
        rows = self.sql("SELECT patient_id, issuer, patient_key, status, json FROM worklist_items")
        return [
            {"patient_id": p, "issuer": i, "patient_key": k, "status": s, "item": json.loads(j)}
            for p, i, k, s, j in rows
        ]

    def history(self) -> list[tuple[str, str, str]]:
        """(old, new, reason) of every item's history, item by item."""
        return [
            (h["old"], h["new"], h["reason"])
            for item_id in self.store.find_ids()
            for h in self.store.get(item_id)["history"]
        ]

    def entries(self) -> list[tuple[str, str, str, dict[str, str], bytes]]:
        """(destination, ordering key, content type, headers, payload) of every queued entry."""
        return [
            (d, k, c, json.loads(h), bytes(p))
            for d, k, c, h, p in self.sql(
                "SELECT destination, ordering_key, content_type, headers, payload FROM outbox "
                "ORDER BY id"
            )
        ]

    def outbox(self) -> list[tuple[str, str, str, bytes]]:
        return [(d, k, c, p) for d, k, c, _, p in self.entries()]

    def changes(self) -> list[dict[str, Any]]:
        rows = self.sql(
            "SELECT kind, patient_id, target_id, order_key, items, detail "
            "FROM reconcile_changes ORDER BY id"
        )
        return [
            {"kind": k, "patient": p, "target": t, "order": o, "items": n, "detail": json.loads(d)}
            for k, p, t, o, n, d in rows
        ]

    def find(self, **keys: str) -> list[Dataset]:
        """A C-FIND the way the SCP runs it (implicit VR identifier in, encoded items out)."""
        q = Dataset()
        for k, v in keys.items():
            setattr(q, k, v)
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, q)
        return [
            read_dataset(DicomBytesIO(a), is_implicit_VR=True, is_little_endian=True)
            for batch in self.service.find(fp.getvalue(), explicit_vr=False, calling_ae="X")
            for a in batch
        ]

    def start(self, accession: str = "ACC26110001", sps: str = "SPS26110001") -> None:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = "IN PROGRESS"
        ref = Dataset()
        ref.AccessionNumber = accession
        ref.ScheduledProcedureStepID = sps
        ds.ScheduledStepAttributesSequence = [ref]
        assert self.service.mpps_create("9.9.1", ds, "CT1_AE").status == 0


class RedisRig(Rig):
    """The same on the Redis store (the session's redis-server, keys of its own prefix)."""

    def __init__(self, defs: Definitions, destinations: dict[str, str]) -> None:
        self.prefix = f"rc{uuid.uuid4().hex[:10]}"
        self.client = redis.Redis.from_url(shared_redis_url())
        self.store = RedisWorklistStore(self.client, prefix=self.prefix)
        self.journal = RedisJournal(self.client, self.store, prefix=self.prefix)
        self.store.journal_reader = self.journal.original
        self.engine = RouteEngine(defs, destinations)
        self.service = WorklistService(self.store)
        self.n = 0

    def close(self) -> None:
        self.journal.close()
        self.client.close()

    def items(self) -> list[dict[str, Any]]:
        out = []
        for item_id in self.store.find_ids():
            k, key, status, text = self.client.hmget(
                self.store.keys.item(item_id), ["k", "patient_key", "status", "json"]
            )
            keys = json.loads(k)
            out.append({"patient_id": keys["patient_id"], "issuer": keys["issuer"],
                        "patient_key": key.decode(), "status": status.decode(),
                        "item": json.loads(text)})  # fmt: skip
        return out

    def entries(self) -> list[tuple[str, str, str, dict[str, str], bytes]]:
        async def read() -> list[Any]:
            async with RedisQueue.from_url(shared_redis_url(), prefix=self.prefix) as queue:
                return await queue.entries(None, limit=100_000)

        return [
            (e.destination, e.ordering_key, e.content_type, dict(e.headers), e.payload)
            for e in asyncio.run(read())
        ]

    def changes(self) -> list[dict[str, Any]]:
        rows = reversed(self.journal.changes.history(limit=100_000))
        return [
            {"kind": r["kind"], "patient": r["patient_id"], "target": r["target_id"],
             "order": r["order_key"], "items": r["items"], "detail": r["detail"]}
            for r in rows
        ]  # fmt: skip


def value(item: dict[str, Any], tag: str) -> Any:
    v = (item.get(tag) or {}).get("Value") or [""]
    return v[0].get("Alphabetic") if isinstance(v[0], dict) else v[0]


def rig_with(backend: str, tmp_path: Path, defs: Definitions, **dests: str) -> Iterator[Rig]:
    r = (
        Rig(tmp_path / "broker.db", defs, dict(dests))
        if backend == "sqlite"
        else RedisRig(defs, dict(dests))
    )
    yield r
    r.close()


@pytest.fixture(params=["sqlite", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, defs: Definitions) -> Iterator[Rig]:
    """Each store backend in turn: reconciliation behaves the same on both."""
    yield from rig_with(request.param, tmp_path, defs, pacs="mllp")


@pytest.fixture
def sqlite_rig(tmp_path: Path, defs: Definitions) -> Iterator[Rig]:
    yield from rig_with("sqlite", tmp_path, defs, pacs="mllp")


@pytest.fixture(params=["sqlite", "redis"])
def orthanc_rig(request: pytest.FixtureRequest, tmp_path: Path, defs: Definitions) -> Iterator[Rig]:
    yield from rig_with(request.param, tmp_path, defs, pacs="orthanc")


def job(payload: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(payload)
    return out


# -- patient update (A08 / A31) ---------------------------------------------------------------


def test_a08_updates_the_active_items_records_the_change_and_queues_the_adt(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("adt_a08"))
    (only,) = rig.items()
    assert value(only["item"], "00100010") == "HARTLEY^MARGARET^ANN^MRS"  # was MARGRET
    assert value(only["item"], "00100030") == "19580321"  # was 19580312
    (change,) = rig.changes()
    assert change["kind"] == "patient.update" and change["patient"] == "MR100234"
    (moved,) = change["detail"]["items"]
    assert moved["before"] == {
        "PatientName": "HARTLEY^MARGRET^ANN^MRS",
        "PatientBirthDate": "19580312",
    }
    assert moved["after"]["PatientBirthDate"] == "19580321"
    ((dest, key, ctype, payload),) = rig.outbox()
    assert (dest, key, ctype) == ("pacs", "MR100234", "application/hl7-v2")
    adt = hl7.parse(payload.decode())
    assert str(adt.segment("MSH")[3]) == "BROKER" and str(adt.segment("MSH")[5]) == "PACS"
    assert str(adt.segment("MSH")[9]) == "ADT^A08"
    assert str(adt.segment("PID")[5]) == "HARTLEY^MARGARET^ANN^^MRS"
    # the item history says why the item changed (status unchanged)
    hist = rig.history()
    assert hist[-1] == ("SCHEDULED", "SCHEDULED", "patient update")


def test_a08_reencodes_the_item_so_a_cfind_answers_the_new_name(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("adt_a08"))
    answers = rig.find(PatientName="HARTLEY^MARGARET*", PatientBirthDate="")
    assert len(answers) == 1
    assert answers[0].PatientBirthDate == "19580321"


def test_a08_for_the_orthanc_pacs_queues_a_job_with_the_new_demographics(
    orthanc_rig: Rig,
) -> None:
    orthanc_rig.ok(sample("orm_o01_v231"))
    orthanc_rig.ok(sample("adt_a08"))
    ((dest, _key, ctype, payload),) = orthanc_rig.outbox()
    assert (dest, ctype) == ("pacs", "application/vnd.broker.reconcile+json")
    body = job(payload)
    assert body["op"] == "update_patient"
    assert body["patient"] == {"PatientID": "MR100234", "IssuerOfPatientID": "HOSP"}
    assert body["set"]["PatientName"] == "HARTLEY^MARGARET^ANN^MRS"
    assert body["set"]["PatientBirthDate"] == "19580321"
    assert body["set"]["PatientSex"] == "F"
    assert "PatientID" not in body["set"]  # an update never changes the identity
    assert body["id"].startswith("rc-")
    assert body["study_uids"] == []  # nothing performed yet


def test_a08_leaves_finished_items_as_they_were_performed(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("orm_o01_v231").replace("ORC|NW|", "ORC|CA|").replace("RIS26110200101", "X2"))
    rig.ok(sample("adt_a08"))
    (only,) = rig.items()
    assert only["status"] == "CANCELED"
    assert value(only["item"], "00100010") == "HARTLEY^MARGRET^ANN^MRS"


def test_update_for_an_unknown_patient_warns_by_the_shipped_policy(rig: Rig) -> None:
    result = rig.ok(sample("adt_a08"))
    (change,) = rig.changes()
    assert "unknown patient" in change["detail"]["warning"]
    assert any("unknown patient" in str(a.get("warning", "")) for a in result.applied)
    assert [d for d, *_ in rig.outbox()] == ["pacs"]  # the PACS may hold older studies


def test_update_for_an_unknown_patient_is_AE_when_the_route_says_so(
    tmp_path: Path, defs: Definitions
) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yaml").write_text(
        "routes:\n"
        "  - name: strict\n"
        "    match: {message_type: ADT}\n"
        "    actions:\n"
        "      - reconcile: {to: pacs, demographics: patient-demographics, mapping: pacs-adt}\n"
    )
    strict = load_definitions(routes, ROOT / "mappings")
    r = Rig(tmp_path / "b.db", strict, {"pacs": "mllp"})
    try:
        result = r.send(sample("adt_a08"))
        assert result.ack_code == "AE"
        (err,) = result.errors
        assert (err.code, err.location) == (204, "PID^1^3")
        assert "unknown patient" in err.text
        assert r.outbox() == [] and r.changes() == []
    finally:
        r.db.close()


# -- merge (A40) and identifier change (A47) ---------------------------------------------------


def a40(retired: str = "MR100234", surviving: str = "MR100199") -> str:
    return (
        sample("adt_a40")
        .replace("PID|1||MR100199^", f"PID|1||{surviving}^")
        .replace("MRG|MR100234^", f"MRG|{retired}^")
    )


def test_a40_moves_every_item_and_its_history_to_the_surviving_patient(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("orm_o01_v231").replace("PL20261102001", "PL2").replace("ACC26110001", "ACC2")
           .replace("RP26110001", "RP2").replace("SPS26110001", "SPS2")
           .replace("1002341^RIS", "1002342^RIS").replace("RIS26110200101", "R2"))  # fmt: skip
    third = (sample("orm_o01_v231").replace("PL20261102001", "PL3")
             .replace("1002341^RIS", "1002343^RIS"))  # fmt: skip
    rig.ok(third.replace("RIS26110200101", "R3"))
    rig.ok(third.replace("RIS26110200101", "R4").replace("ORC|NW", "ORC|CA"))
    rig.ok(a40())
    items = rig.items()
    assert len(items) == 3
    assert {i["patient_id"] for i in items} == {"MR100199"}
    assert {i["patient_key"] for i in items} == {"MR100199^HOSP"}
    assert {value(i["item"], "00100020") for i in items} == {"MR100199"}
    active = [i for i in items if i["status"] == "SCHEDULED"]
    assert {value(i["item"], "00100030") for i in active} == {"19580321"}
    cancelled = [i for i in items if i["status"] == "CANCELED"]
    assert {value(i["item"], "00100030") for i in cancelled} == {"19580312"}
    change = rig.changes()[-1]
    assert (change["kind"], change["patient"], change["target"]) == (
        "patient.merge", "MR100234", "MR100199",
    )  # fmt: skip
    assert change["items"] == 3
    # history of the moved items stays with them
    for item_id in rig.store.find_ids():
        reasons = [h["reason"] for h in rig.store.get(item_id)["history"]]
        assert reasons[0] == "created" and reasons[-1] == "patient merge"
    ((_, key, _, payload),) = rig.outbox()
    msg = hl7.parse(payload.decode())
    assert str(msg.segment("MRG")[1]).startswith("MR100234")
    assert key == "MR100234"  # the retired patient's queue order: its updates come first
    assert len(rig.find(PatientID="MR100199")) == 2
    assert rig.find(PatientID="MR100234") == []


def test_a40_moves_finished_items_too_but_keeps_their_performed_demographics(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("orm_o01_v231").replace("ORC|NW|", "ORC|CA|").replace("RIS26110200101", "X2"))
    rig.ok(a40())
    (only,) = rig.items()
    assert only["patient_id"] == "MR100199" and only["status"] == "CANCELED"
    assert value(only["item"], "00100010") == "HARTLEY^MARGRET^ANN^MRS"


def test_a40_for_orthanc_carries_retired_target_and_linked_studies(orthanc_rig: Rig) -> None:
    orthanc_rig.ok(sample("orm_o01_v231"))
    orthanc_rig.start()
    orthanc_rig.ok(a40())
    ((_, _, _, payload),) = orthanc_rig.outbox()
    body = job(payload)
    assert body["op"] == "merge_patient"
    assert body["patient"]["PatientID"] == "MR100234"
    assert body["target"] == {"PatientID": "MR100199", "IssuerOfPatientID": "HOSP"}
    assert "PatientID" not in body["set"]  # the identity is the target
    assert body["study_uids"] == ["1.2.826.0.1.3680043.2.1125.20261102083015.1002341"]


def test_a40_without_mrg_is_AE_naming_the_segment(rig: Rig) -> None:
    text = "\r".join(s for s in a40().split("\r") if not s.startswith("MRG"))
    result = rig.send(text)
    assert result.ack_code == "AE"
    (err,) = result.errors
    assert (err.code, err.location) == (100, "MRG")
    assert "without an MRG segment" in err.text


def test_a40_with_empty_mrg1_is_AE_101(rig: Rig) -> None:
    result = rig.send(a40().replace("MRG|MR100234^^^HOSP^MR|", "MRG||"))
    assert result.ack_code == "AE"
    assert (result.errors[0].code, result.errors[0].location) == (101, "MRG^1^1")


def test_a40_naming_the_same_patient_twice_is_AE(rig: Rig) -> None:
    result = rig.send(a40(retired="MR100199"))
    assert result.ack_code == "AE" and result.errors[0].location == "MRG^1^1"


def test_a47_renames_the_patient_identifier(rig: Rig) -> None:
    order = sample("omi_o23_v251")
    rig.ok(order)
    before = {i["patient_id"] for i in rig.items()}
    assert before == {"MR300912"}
    rig.ok(sample("adt_a47"))
    assert {i["patient_id"] for i in rig.items()} == {"MR300951"}
    (change,) = rig.changes()
    assert (change["kind"], change["patient"], change["target"]) == (
        "patient.rename", "MR300912", "MR300951",
    )  # fmt: skip


# -- order changes (XO / CA) -------------------------------------------------------------------


def xo(**changes: str) -> str:
    text = sample("orm_o01_v231_xo")
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


def test_xo_before_the_study_exists_updates_the_item_and_not_the_hl7_pacs(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    result = rig.ok(xo(ACC26110001="ACC9"))
    (only,) = rig.items()
    assert value(only["item"], "00080050") == "ACC9"
    assert rig.outbox() == []
    (change,) = rig.changes()
    assert change["kind"] == "order.update"
    assert change["detail"]["changes"] == [{"accession": "ACC26110001",
                                            "after": {"AccessionNumber": "ACC9"}}]  # fmt: skip
    assert "no study yet" in change["detail"]["pacs"]
    assert any("no study yet" in str(a.get("pacs", "")) for a in result.applied)


def test_xo_after_the_study_exists_goes_to_the_hl7_pacs(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.start()
    rig.ok(xo(ACC26110001="ACC9"))
    ((dest, key, _, payload),) = rig.outbox()
    msg = hl7.parse(payload.decode())
    assert (dest, key) == ("pacs", "MR100234")
    assert str(msg.segment("ORC")[1]) == "XO" and str(msg.segment("OBR")[18]) == "ACC9"
    (only,) = rig.items()
    assert only["status"] == "STARTED"  # the update did not undo the MPPS progress


def test_xo_for_orthanc_is_queued_without_a_link_and_names_the_old_accession(
    orthanc_rig: Rig,
) -> None:
    orthanc_rig.ok(sample("orm_o01_v231"))
    orthanc_rig.ok(xo(ACC26110001="ACC9", **{"CT HEAD W/O CONTRAST": "CT HEAD WITH CONTRAST"}))
    ((_, _, _, payload),) = orthanc_rig.outbox()
    body = job(payload)
    assert body["op"] == "update_order" and body["accession"] == "ACC26110001"
    assert body["set"]["AccessionNumber"] == "ACC9"
    assert body["set"]["StudyDescription"] == "CT HEAD WITH CONTRAST"
    assert body["set"]["RequestedProcedureDescription"] == "CT HEAD WITH CONTRAST"
    assert body["study_uids"] == ["1.2.826.0.1.3680043.2.1125.20261102083015.1002341"]


def test_xo_that_changes_nothing_the_pacs_keeps_sends_nothing(orthanc_rig: Rig) -> None:
    orthanc_rig.ok(sample("orm_o01_v231"))
    orthanc_rig.start()
    orthanc_rig.ok(xo())  # only the scheduled time moved
    assert orthanc_rig.outbox() == []
    assert orthanc_rig.changes()[0]["detail"]["pacs"] == "nothing the PACS keeps changed"


def test_xo_for_an_unknown_order_is_AE_and_creates_nothing(rig: Rig) -> None:
    result = rig.send(xo())
    assert result.ack_code == "AE"
    (err,) = result.errors
    assert (err.code, err.location) == (204, "ORC^1^2")
    assert rig.items() == [] and rig.outbox() == [] and rig.changes() == []


def test_cancel_of_a_performed_order_goes_to_the_hl7_pacs(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.start()
    rig.ok(xo(**{"ORC|XO|": "ORC|DC|"}))
    ((_, _, _, payload),) = rig.outbox()
    assert str(hl7.parse(payload.decode()).segment("ORC")[1]) == "DC"
    assert rig.changes()[0]["kind"] == "order.cancel"


def test_cancel_before_anything_was_performed_stays_off_the_pacs(orthanc_rig: Rig) -> None:
    orthanc_rig.ok(sample("orm_o01_v231"))
    orthanc_rig.ok(xo(**{"ORC|XO|": "ORC|CA|"}))
    assert orthanc_rig.outbox() == []
    assert orthanc_rig.items()[0]["status"] == "CANCELED"


def test_change_history_is_kept_for_its_retention_only(sqlite_rig: Rig) -> None:
    rig = sqlite_rig
    import datetime as dt

    from broker.storage.sqlite_reconcile import purge_history

    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("adt_a08"))
    assert purge_history(rig.db, 365) == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert purge_history(rig.db, 365, now=later) == 1
    assert rig.changes() == []


def test_new_items_are_encoded_after_their_commit_and_answer_before_that(
    sqlite_rig: Rig,
) -> None:
    rig = sqlite_rig
    # The upsert leaves the C-FIND encodings to background work (off the ACK path); a query
    # in between encodes the item on the fly, with the same answer.
    from broker.storage.sqlite_worklist import encode_pending

    rig.ok(sample("orm_o01_v231"))
    deadline = time.monotonic() + 5
    while rig.sql("SELECT COUNT(*) FROM worklist_pending_encode") != [(0,)]:
        assert time.monotonic() < deadline, "background encoding did not run"
        time.sleep(0.01)
    encoded = rig.find(AccessionNumber="ACC26110001", PatientName="")
    rig.db.write_sync(
        lambda c: c.execute("UPDATE worklist_items SET enc_i=x'', lay_i=x'', enc_e=x'', lay_e=x''")
    )
    on_the_fly = rig.find(AccessionNumber="ACC26110001", PatientName="")
    assert [str(d.PatientName) for d in on_the_fly] == [str(d.PatientName) for d in encoded]
    assert on_the_fly == encoded
    # a pending row left by a process that died is encoded by the next round
    rig.db.write_sync(lambda c: c.execute("INSERT INTO worklist_pending_encode VALUES (1)"))
    assert rig.db.write_sync(encode_pending) is False
    (size,) = rig.sql("SELECT length(enc_i) FROM worklist_items")[0]
    assert size > 0


def test_omi_xo_with_two_steps_names_the_one_study_once_per_step(orthanc_rig: Rig) -> None:
    # OMI^O23 (v2.5.1, IHE RAD-4/13 with IPC): two scheduled steps of one requested procedure
    order = sample("omi_o23_v251")
    orthanc_rig.ok(order)
    xo = (
        order.replace("ORC|NW|", "ORC|XO|")
        .replace("RIS26110300301", "RIS26110300302")
        .replace("MRI KNEE JOINT W/O CONTRAST", "MRI KNEE JOINT WITH CONTRAST")
    )
    orthanc_rig.ok(xo)
    ((_, _, _, payload),) = orthanc_rig.outbox()  # one study: one job, not one per step
    body = job(payload)
    assert (body["op"], body["accession"]) == ("update_order", "ACC26110021")
    assert body["study_uids"] == ["1.2.826.0.1.3680043.2.1125.20261103091522.3009121"]
    assert body["set"]["StudyDescription"] == "MRI KNEE JOINT WITH CONTRAST"
    (change,) = [c for c in orthanc_rig.changes() if c["kind"] == "order.update"]
    assert change["order"].endswith("PL20261103021")


def test_an_issuer_in_the_adt_matches_items_recorded_without_one(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231").replace("MR100234^^^HOSP^MR", "MR100234"))
    rig.ok(sample("adt_a08"))  # PID-3 MR100234^^^HOSP
    (only,) = rig.items()
    assert value(only["item"], "00100030") == "19580321"
    # an item recorded with an issuer does not match another issuer's patient of that ID
    rig.ok(sample("orm_o01_v231").replace("MR100234^^^HOSP^MR", "MR7^^^HOSP")
           .replace("RIS26110200101", "R7").replace("PL20261102001", "PL7")
           .replace("1002341^RIS", "1002347^RIS"))  # fmt: skip
    other = sample("adt_a08").replace("MR100234^^^HOSP^MR", "MR7^^^OTHER^MR")
    rig.ok(other.replace("EHR26110200087", "EHR-OTHER"))
    assert "unknown patient" in rig.changes()[-1]["detail"]["warning"]
