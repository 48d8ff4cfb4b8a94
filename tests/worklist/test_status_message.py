"""Order status back to the RIS (DESIGN §6a): the pure decision, the mapping's step selection,
and the worklist store queueing it in the MPPS transaction (or recording it as skipped).

python-hl7 is the oracle for what the built messages say.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom.dataset import Dataset

from broker.effects import Enqueue, Skipped, WorklistStatusChange, WorklistUpsert
from broker.hl7.charset import decode_frame
from broker.hl7.message import Message
from broker.ingest.journal import InboundRecord
from broker.mapping import MappingFault, MappingFile, compile_mapping
from broker.mapping.mapping import HL7Mapping
from broker.routing.engine import RouteEngine
from broker.routing.loader import Definitions, load_definitions
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA, SqliteJournal
from broker.storage.sqlite_queue import QUEUE_SCHEMA
from broker.storage.sqlite_worklist import (
    SqliteWorklistStore,
    apply_worklist_status,
    apply_worklist_upsert,
)
from broker.worklist import WorklistService
from broker.worklist.status_message import (
    OrderStatusNotifier,
    OriginalMessage,
    ProcedureEvent,
    check_order_status,
    hl7_timestamp,
    new_control_id,
    order_status_message,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return load_definitions(ROOT / "routes", ROOT / "mappings")


def raw(name: str) -> bytes:
    return (SAMPLES / f"{name}.hl7").read_bytes()


def parse(payload: bytes) -> hl7.Message:
    return hl7.parse(decode_frame(payload).text)


def item_of(defs: Definitions, name: str, n: int = 0) -> dict[str, Any]:
    """The n-th worklist item the shipped routes make of a sample."""
    message = Message.parse(decode_frame(raw(name)).text)
    items = [
        i
        for e in RouteEngine(defs).route(message).effects
        if isinstance(e, WorklistUpsert)
        for i in e.items
    ]
    return items[n]


def event(kind: str = "procedure.in_progress", **kw: Any) -> ProcedureEvent:
    base: dict[str, Any] = {
        "event_id": 1,
        "kind": kind,
        "at": "2026-11-03T09:35:12+00:00",
        "mpps_uid": "1.2.3.4",
        "item_id": 7,
        "order_key": "RIS^HOSP^PL20261102001",
        "accession": "ACC26110001",
        "rp_id": "RP26110001",
        "sps_id": "SPS26110001",
        "study_uid": "1.2.826.0.1.3680043.2.1125.20261102083015.1002341",
        "calling_ae": "CT1_AE",
        "old_status": "SCHEDULED",
        "new_status": "STARTED",
    }
    base.update(kw)
    return ProcedureEvent(**base)


def decide(
    defs: Definitions,
    ev: ProcedureEvent,
    item: dict[str, Any],
    original: OriginalMessage | None,
    destinations: tuple[str, ...] = ("ris",),
) -> Enqueue | Skipped:
    return order_status_message(
        ev,
        item,
        original,
        mappings=defs.mappings,
        destinations=destinations,
        control_id="BRK00000000000000001",
    )


# -- the pure decision ------------------------------------------------------------------------


def test_orm_v231_in_progress_becomes_orm_sc_ip(defs: Definitions) -> None:
    item = item_of(defs, "orm_o01_v231")
    out = decide(defs, event(), item, OriginalMessage(1, raw("orm_o01_v231")))
    assert isinstance(out, Enqueue)
    assert out.destination == "ris" and out.ordering_key == "MR100234"
    assert out.headers["mapping"] == "order-status-orm"
    msg, orig = parse(out.payload), parse(raw("orm_o01_v231"))
    assert str(msg.segment("MSH")[9]) == "ORM^O01"
    assert str(msg.segment("MSH")[10]) == "BRK00000000000000001"
    assert str(msg.segment("MSH")[10]) != str(orig.segment("MSH")[10])
    assert str(msg.segment("MSH")[12]) == "2.3.1"
    assert (str(msg.segment("MSH")[3]), str(msg.segment("MSH")[4])) == ("BROKER", "HOSP")
    assert (str(msg.segment("MSH")[5]), str(msg.segment("MSH")[6])) == ("RIS", "HOSP")
    assert str(msg.segment("MSH")[7]) == "20261103093512+0000"
    orc, o_orc = msg.segment("ORC"), orig.segment("ORC")
    assert (str(orc[1]), str(orc[5])) == ("SC", "IP")
    assert (str(orc[2]), str(orc[3])) == (str(o_orc[2]), str(o_orc[3]))
    assert str(msg.segment("PID")) == str(orig.segment("PID"))
    assert str(msg.segment("OBR")[19]) == "RP26110001"
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]


@pytest.mark.parametrize(
    ("kind", "code"), [("procedure.completed", "CM"), ("procedure.discontinued", "DC")]
)
def test_final_states_give_cm_and_dc(defs: Definitions, kind: str, code: str) -> None:
    item = item_of(defs, "orm_o01_v231")
    ev = event(kind, old_status="STARTED", new_status=code)
    out = decide(defs, ev, item, OriginalMessage(1, raw("orm_o01_v231")))
    assert isinstance(out, Enqueue)
    orc = parse(out.payload).segment("ORC")
    assert (str(orc[1]), str(orc[5])) == ("SC", code)


def test_orm_v24_second_order_group_only_and_latin1_kept(defs: Definitions) -> None:
    item = item_of(defs, "orm_o01_v24", 1)
    ev = event(
        order_key="RIS^HOSP^PL20261102012",
        accession="ACC26110012",
        rp_id="RP26110012",
        sps_id="SPS26110012",
    )
    out = decide(defs, ev, item, OriginalMessage(1, raw("orm_o01_v24"), "8859/1"))
    assert isinstance(out, Enqueue)
    assert "MÜLLER".encode("latin-1") in out.payload  # MSH-18 8859/1: encoded as the order
    msg = parse(out.payload)
    assert str(msg.segment("MSH")[12]) == "2.4"
    assert len(msg.segments("ORC")) == 1 and len(msg.segments("OBR")) == 1
    assert str(msg.segment("ORC")[2]) == "PL20261102012^EHR"
    assert str(msg.segment("ORC")[3]) == "FL20261102012^RIS"
    assert str(msg.segment("OBR")[1]) == "1"
    assert str(msg.segment("OBR")[18]) == "ACC26110012"
    # the escapes of the first group's OBR-13 are not there; nothing of it was copied
    assert b"71250" not in out.payload


def test_omi_v251_becomes_omi_with_the_steps_ipc(defs: Definitions) -> None:
    item = item_of(defs, "omi_o23_v251", 1)
    ev = event(
        "procedure.completed",
        order_key="RIS^HOSP^PL20261103021",
        accession="ACC26110021",
        rp_id="RP26110021",
        sps_id="SPS26110021B",
        old_status="STARTED",
        new_status="COMPLETED",
    )
    out = decide(defs, ev, item, OriginalMessage(1, raw("omi_o23_v251"), "UNICODE UTF-8"))
    assert isinstance(out, Enqueue)
    assert out.headers["mapping"] == "order-status-omi"
    msg = parse(out.payload)
    assert str(msg.segment("MSH")[9]) == "OMI^O23^OMI_O23"
    assert str(msg.segment("MSH")[12]) == "2.5.1"
    assert (str(msg.segment("ORC")[1]), str(msg.segment("ORC")[5])) == ("SC", "CM")
    assert str(msg.segment("ORC")[2]) == "PL20261103021^EHR"
    assert [str(s[4]) for s in msg.segments("IPC")] == ["SPS26110021B"]
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "IPC"]


def test_current_patient_id_of_the_item_wins(defs: Definitions) -> None:
    item = item_of(defs, "orm_o01_v231")
    item["00100020"] = {"vr": "LO", "Value": ["MR100199"]}  # after an A40 merge
    out = decide(defs, event(), item, OriginalMessage(1, raw("orm_o01_v231")))
    assert isinstance(out, Enqueue) and out.ordering_key == "MR100199"
    assert str(parse(out.payload).segment("PID")[3][0][0]) == "MR100199"


def test_skipped_when_ris_is_not_configured(defs: Definitions) -> None:
    item = item_of(defs, "orm_o01_v231")
    out = decide(defs, event(), item, OriginalMessage(1, raw("orm_o01_v231")), ())
    assert out == Skipped("order-status:ris", "destination 'ris' is not configured")


@pytest.mark.parametrize(
    ("ev_kw", "original", "mappings", "reason"),
    [
        ({"new_status": None}, True, None, "worklist item unchanged"),
        ({"kind": "procedure.other"}, True, None, "has no order status"),
        ({}, False, None, "no longer in the journal"),
        ({}, True, {}, "is not loaded"),
        ({"rp_id": "RP-NOT-THERE"}, True, None, "refused: no OBR step matches"),
    ],
)
def test_skipped_with_the_reason(
    defs: Definitions,
    ev_kw: dict[str, Any],
    original: bool,
    mappings: dict[str, Any] | None,
    reason: str,
) -> None:
    item = item_of(defs, "orm_o01_v231")
    out = order_status_message(
        event(**ev_kw),
        item,
        OriginalMessage(1, raw("orm_o01_v231")) if original else None,
        mappings=defs.mappings if mappings is None else mappings,
        destinations=("ris",),
        control_id="X",
    )
    assert isinstance(out, Skipped) and reason in out.reason, out


def test_unreadable_or_unmapped_originals_are_skipped(defs: Definitions) -> None:
    item = item_of(defs, "orm_o01_v231")
    garbage = decide(defs, event(), item, OriginalMessage(1, b"not hl7 at all"))
    assert isinstance(garbage, Skipped) and "cannot be read" in garbage.reason
    adt = decide(defs, event(), item, OriginalMessage(1, raw("adt_a08")))
    assert isinstance(adt, Skipped) and "no order-status mapping for ADT" in adt.reason


def test_helpers() -> None:
    assert hl7_timestamp("2026-11-03T09:35:12+00:00") == "20261103093512+0000"
    assert hl7_timestamp("2026-11-03T09:35:12") == "20261103093512+0000"
    assert hl7_timestamp("junk") == ""
    ids = {new_control_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 20 for i in ids)


def test_check_order_status(defs: Definitions) -> None:
    errors, warnings = check_order_status((), defs.mappings)
    assert errors == [] and len(warnings) == 1 and "'ris' is not configured" in warnings[0]
    assert check_order_status(("ris",), defs.mappings) == ([], [])
    errors, _ = check_order_status(("ris",), {"order-status-omi": defs.mappings["ihe-mwl-omi"]})
    assert len(errors) == 2
    assert "'order-status-orm' for ORM orders: found none" in errors[1]
    assert "found a dicom mapping" in errors[0]


# -- the mapping language: hl7 mappings with each/select ---------------------------------------


def test_hl7_mapping_select_is_strict_and_needs_the_segment(defs: Definitions) -> None:
    m = defs.mappings["order-status-orm"]
    assert isinstance(m, HL7Mapping)
    msg = Message.parse(decode_frame(raw("orm_o01_v24")).text)
    # with select, no match refuses (never the first step by default), also for empty keys
    with pytest.raises(MappingFault) as fault:
        m.build(msg, {"requested_procedure_id": "", "scheduled_step_id": ""})
    assert fault.value.code == 204
    adt = Message.parse(decode_frame(raw("adt_a08")).text)
    with pytest.raises(MappingFault) as none:
        m.build(adt, {})
    assert (none.value.code, none.value.location) == (101, "OBR^1")


def test_hl7_mapping_each_without_select_uses_step_index() -> None:
    model = MappingFile.model_validate(
        {"name": "t", "kind": "hl7", "each": "OBR", "copy": ["ORC", "OBR"]}
    )
    m = compile_mapping(model)
    assert isinstance(m, HL7Mapping)
    msg = Message.parse(decode_frame(raw("orm_o01_v24")).text)
    first = Message.parse(m.build(msg))
    second = Message.parse(m.build(msg, {"step_index": "2"}))
    assert first.get("OBR-19") == "RP26110011" and first.get("OBR(2)-19") == ""
    assert second.get("ORC-2.1") == "PL20261102012" and second.get("OBR(2)-19") == ""
    assert Message.parse(m.build(msg, {"step_index": "9"})).get("OBR-19") == "RP26110012"
    with pytest.raises(ValueError, match="select without kind hl7 and each"):
        MappingFile.model_validate(
            {"name": "u", "kind": "hl7", "select": {"key": "a", "equals": "a"}}
        )


# -- in the store: queued in the MPPS transaction ------------------------------------------------


class Rig:
    """A store with journal, queue and worklist on one file; orders go in through the routes."""

    def __init__(self, path: Path, defs: Definitions, destinations: tuple[str, ...]) -> None:
        self.db = SqliteDatabase(path, schemas=[JOURNAL_SCHEMA, QUEUE_SCHEMA], synchronous="OFF")
        self.defs = defs
        self.notifier = OrderStatusNotifier(lambda: defs.mappings, destinations)
        self.store = SqliteWorklistStore(self.db, on_procedure_event=self.notifier)
        self.journal = SqliteJournal(
            self.db,
            {WorklistUpsert: apply_worklist_upsert, WorklistStatusChange: apply_worklist_status},
        )
        self.engine = RouteEngine(defs, destinations)
        self.service = WorklistService(self.store)
        self.db.open()

    def order(self, name: str) -> int:
        payload = raw(name)
        decoded = decode_frame(payload)
        message = Message.parse(decoded.text)
        record = InboundRecord(
            time.time(), "ris", "127.0.0.1", "RIS|HOSP", message.control_id,
            f"{message.message_type}^{message.trigger}", message.version, decoded.charset,
            payload,
        )  # fmt: skip
        result = self.journal.commit_sync(record, self.engine.route(message))
        assert result.ack_code == "AA", result
        return result.journal_id

    def outbox(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db.path)
        try:
            return conn.execute(
                "SELECT destination, ordering_key, payload, journal_id FROM outbox ORDER BY id"
            ).fetchall()
        finally:
            conn.close()


def pps(status: str | None, **link: str) -> Dataset:
    ds = Dataset()
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    if link:
        ref = Dataset()
        for key, value in link.items():
            setattr(ref, key, value)
        ds.ScheduledStepAttributesSequence = [ref]
    return ds


LINK = {"AccessionNumber": "ACC26110001", "ScheduledProcedureStepID": "SPS26110001"}


@pytest.fixture
def rig(tmp_path: Path, defs: Definitions) -> Iterator[Rig]:
    r = Rig(tmp_path / "broker.db", defs, ("ris",))
    yield r
    r.db.close()


def test_mpps_progress_and_completion_are_queued_in_order(rig: Rig) -> None:
    journal_id = rig.order("orm_o01_v231")
    assert rig.service.mpps_create("9.1", pps("IN PROGRESS", **LINK), "CT1_AE").status == 0
    assert rig.service.mpps_set("9.1", pps(None), "CT1_AE").status == 0  # no change: nothing
    assert rig.service.mpps_set("9.1", pps("COMPLETED"), "CT1_AE").status == 0
    out = rig.outbox()
    assert [(d, k, j) for d, k, _, j in out] == [("ris", "MR100234", journal_id)] * 2
    orcs = [parse(p).segment("ORC") for _, _, p, _ in out]
    assert [(str(o[1]), str(o[5]), str(o[2])) for o in orcs] == [
        ("SC", "IP", "PL20261102001^EHR"),
        ("SC", "CM", "PL20261102001^EHR"),
    ]
    ids = [str(parse(p).segment("MSH")[10]) for _, _, p, _ in out]
    assert len(set(ids)) == 2
    events = rig.store.events()
    assert [(e["kind"], e["notified"], e["notified_to"]) for e in events] == [
        ("procedure.in_progress", "queued", "ris"),
        ("procedure.completed", "queued", "ris"),
    ]
    assert [e["notified_detail"] for e in events] == ids


def test_refused_mpps_queues_nothing(rig: Rig) -> None:
    rig.order("orm_o01_v231")
    assert rig.service.mpps_create("9.2", pps("COMPLETED", **LINK), "CT1_AE").status == 0x0106
    assert rig.service.mpps_set("9.404", pps("COMPLETED"), "CT1_AE").status == 0x0112
    assert rig.outbox() == [] and rig.store.events() == []


def test_a_second_mpps_for_a_started_item_sends_nothing_new(rig: Rig) -> None:
    rig.order("orm_o01_v231")
    assert rig.service.mpps_create("9.3", pps("IN PROGRESS", **LINK), "CT1_AE").status == 0
    assert rig.service.mpps_create("9.4", pps("IN PROGRESS", **LINK), "CT1_AE").status == 0
    assert len(rig.outbox()) == 1
    last = rig.store.events()[-1]
    assert last["notified"] == "skipped" and "unchanged" in last["notified_detail"]


def test_unscheduled_mpps_sends_nothing(rig: Rig) -> None:
    assert rig.service.mpps_create("9.5", pps("IN PROGRESS"), "US1").status == 0
    assert rig.outbox() == [] and rig.store.events()[0]["notified"] is None


def test_without_ris_it_is_recorded_as_skipped(tmp_path: Path, defs: Definitions) -> None:
    r = Rig(tmp_path / "broker.db", defs, ())
    try:
        r.order("orm_o01_v231")
        assert r.service.mpps_create("9.6", pps("IN PROGRESS", **LINK), "CT1_AE").status == 0
        assert r.service.mpps_set("9.6", pps("DISCONTINUED"), "CT1_AE").status == 0
        assert r.outbox() == []
        assert [(e["notified"], e["notified_detail"]) for e in r.store.events()] == [
            ("skipped", "destination 'ris' is not configured")
        ] * 2
        (item_id,) = r.store.find_ids(accession="ACC26110001")
        assert r.store.get(item_id)["status"] == "DISCONTINUED"  # type: ignore[index]
    finally:
        r.db.close()


def test_a_failing_hook_does_not_fail_the_mpps(rig: Rig) -> None:
    rig.order("orm_o01_v231")

    def broken(*_: Any) -> Enqueue:
        raise RuntimeError("bug")

    rig.store.on_procedure_event = broken
    assert rig.service.mpps_create("9.7", pps("IN PROGRESS", **LINK), "CT1_AE").status == 0
    assert rig.outbox() == []
    assert rig.store.events()[0]["notified"] == "failed"
    assert rig.store.mpps_state("9.7") == "IN PROGRESS"


def test_an_outbox_failure_rolls_the_mpps_back(rig: Rig) -> None:
    rig.order("orm_o01_v231")
    rig.db.write_sync(lambda c: c.execute("DROP TABLE outbox"))
    status = rig.service.mpps_create("9.8", pps("IN PROGRESS", **LINK), "CT1_AE")
    assert status.status != 0
    assert rig.store.mpps_state("9.8") is None and rig.store.events() == []
    (item_id,) = rig.store.find_ids(accession="ACC26110001")
    assert rig.store.get(item_id)["status"] == "SCHEDULED"  # type: ignore[index]
