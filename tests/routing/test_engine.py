"""The route engine over the shipped routes: samples, lifecycle, bad input, unmatched."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.effects import (
    OrderChange,
    PatientChange,
    Skipped,
    WorklistStatusChange,
    WorklistUpsert,
)
from broker.hl7.message import Message
from broker.routing import RouteEngine, load_definitions, read_message

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> RouteEngine:
    return RouteEngine(load_definitions(ROOT / "routes", ROOT / "mappings"), {"pacs"})


def core(d: object) -> tuple[object, ...]:
    """The effects but for the events' (the shipped routes publish to `events`, which these
    tests do not configure; tests/events covers them)."""
    effects: tuple[object, ...] = d.effects  # type: ignore[attr-defined]
    return tuple(
        e for e in effects if not (isinstance(e, Skipped) and e.action.startswith("publish:"))
    )


def sample(name: str) -> Message:
    return read_message(ROOT / "samples" / name)


def text(name: str) -> str:
    return sample(name).text


def test_new_order(engine: RouteEngine) -> None:
    d = engine.route(sample("orm_o01_v231.hl7"))
    assert d.ack_code == "AA" and d.route == "orm-to-worklist"
    (up,) = core(d)
    assert isinstance(up, WorklistUpsert)
    assert up.order_key == "RIS^HOSP^PL20261102001" and up.patient_key == "MR100234^HOSP"
    assert len(up.items) == 1


def test_two_orders_in_one_message(engine: RouteEngine) -> None:
    d = engine.route(sample("orm_o01_v24.hl7"))
    keys = [e.order_key for e in d.effects if isinstance(e, WorklistUpsert)]
    assert keys == ["RIS^HOSP^PL20261102011", "RIS^HOSP^PL20261102012"]


def test_cancel_prepares_the_pacs_message_and_runs_before_the_status_change(
    engine: RouteEngine,
) -> None:
    d = engine.route(sample("orm_o01_v24_cancel.hl7"))
    kinds = [type(e) for e in core(d)]
    # judged against the order as stored: the reconciliation comes first
    assert kinds == [OrderChange, WorklistStatusChange]
    change = d.effects[0]
    assert isinstance(change, OrderChange) and change.cancel and change.control == "CA"
    assert isinstance(d.effects[1], WorklistStatusChange) and d.effects[1].status == "CANCELED"
    (out,) = change.outbound
    assert out.destination == "pacs"
    # MSH-18 8859/1: the outbound payload is encoded in the message's own character set
    assert "MÜLLER".encode("latin-1") in out.payload


def test_forward_to_a_destination_that_takes_no_hl7_is_skipped() -> None:
    defs = load_definitions(ROOT / "routes", ROOT / "mappings")
    d = RouteEngine(defs, {"ehr": "bus"}).route(sample("oru_r01.hl7"))
    assert core(d) == (
        Skipped("forward:ehr", "destination 'ehr' is of type bus: it takes no HL7 messages"),
    )


def test_adt_merge_names_the_retired_and_surviving_patients(engine: RouteEngine) -> None:
    d = engine.route(sample("adt_a40.hl7"))
    (change,) = core(d)
    assert isinstance(change, PatientChange) and change.kind == "merge"
    assert change.patient.patient_id == "MR100234" and change.target is not None
    assert (change.target.patient_id, change.target.issuer) == ("MR100199", "HOSP")
    assert change.ordering_key == "MR100234"
    assert change.unknown == "warn"  # the shipped policy for ADT


def test_unconfigured_destination_is_skipped(engine: RouteEngine) -> None:
    d = engine.route(sample("oru_r01.hl7"))
    assert d.ack_code == "AA"
    assert core(d) == (Skipped("forward:ehr", "destination 'ehr' is not configured"),)


@pytest.mark.parametrize(("orc", "status"), [
    ("NW|PL1|FL1||SC", WorklistUpsert), ("XO|PL1|FL1||CM", "COMPLETED"),
    ("SC|PL1|FL1||CM", "COMPLETED"), ("CA|PL1|FL1||CA", "CANCELED"),
    ("DC|PL1|FL1||CA", "DISCONTINUED")])
def test_order_control_table(engine: RouteEngine, orc: str, status: object) -> None:
    t = text("orm_o01_v231.hl7")
    start = t.index("\rORC|") + 1
    end = t.index("|", t.index("|", t.index("|", t.index("|", start) + 1) + 1) + 1)
    end = t.index("|", end + 1)  # through ORC-5
    msg = Message.parse(t[:start] + "ORC|" + orc + t[end:])
    d = engine.route(msg)
    assert d.ack_code == "AA", d.errors
    first = next(e for e in d.effects if not isinstance(e, OrderChange))
    if status is WorklistUpsert:
        assert isinstance(first, WorklistUpsert)
    else:
        assert isinstance(first, WorklistStatusChange) and first.status == status


def test_unknown_order_control(engine: RouteEngine) -> None:
    msg = Message.parse(text("orm_o01_v231.hl7").replace("\rORC|NW|", "\rORC|ZZ|"))
    d = engine.route(msg)
    assert d.ack_code == "AE" and d.effects == ()
    assert (d.errors[0].code, d.errors[0].location) == (103, "ORC^1^1")


@pytest.mark.parametrize(("old", "new", "code", "loc"), [
    ("|19580312|", "|19581312|", 102, "PID^1^7"),                  # impossible date
    ("|SPS26110001|", "||", 101, "OBR^1^20"),                      # required field missing
    ("|ACC26110001|", "|ACC26110001ACC26110001|", 102, "OBR^1^18"),  # over-long SH
    ("^20261103093000^", "^20261399093000^", 102, "OBR^1^27^4"),   # impossible start date
])
def test_bad_input(engine: RouteEngine, old: str, new: str, code: int, loc: str) -> None:
    t = text("orm_o01_v231.hl7")
    assert old in t
    d = engine.route(Message.parse(t.replace(old, new)))
    assert d.ack_code == "AE" and d.effects == ()
    err = d.errors[0]
    assert (err.code, err.location) == (code, loc)
    assert "HARTLEY" not in err.text and "MR100234" not in err.text


def test_unmatched(engine: RouteEngine) -> None:
    base = text("orm_o01_v231.hl7")
    d = engine.route(Message.parse(base.replace("ORM^O01", "SIU^S12")))
    assert (d.ack_code, d.route, d.errors[0].code) == ("AR", None, 200)
    assert "no route" in d.errors[0].text
    adt = text("adt_a08.hl7")
    d = engine.route(Message.parse(adt.replace("ADT^A08", "ADT^A99")))
    assert (d.ack_code, d.errors[0].code, d.errors[0].location) == ("AR", 201, "MSH^1^9^2")
    # ORM v2.9: a route (order-changes-to-pacs) takes any version but its ORC-1 test fails
    d = engine.route(Message.parse(base.replace("|2.3.1", "|2.9")))
    assert (d.ack_code, d.errors[0].code, d.errors[0].text) == ("AE", 207, "no route")


def test_xo_continues_to_pacs_route(engine: RouteEngine) -> None:
    d = engine.route(sample("orm_o01_v231_xo.hl7"))
    assert d.route == "orm-to-worklist,orm-changes-to-pacs"
    assert [a["action"] for a in d.actions] == ["worklist", "publish", "reconcile"]
