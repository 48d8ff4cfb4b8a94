"""Events of the shipped routes (DESIGN §6a, issue 11): what each flow publishes to the
`events` destination, queued in the change's own transaction, valid against the shipped JSON
Schema (docs/schemas/event.schema.json), routing key = type, ids unique and stable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from broker.events import EVENT_TYPES, schema
from broker.publishing import ProcedurePublisher
from broker.routing.loader import Definitions, load_definitions
from tests.reconcile.test_store import Rig, rig_with, sample, xo

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "event.schema.json").read_text())


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return load_definitions(ROOT / "routes", ROOT / "mappings")


@pytest.fixture(params=["sqlite", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, defs: Definitions) -> Iterator[Rig]:
    """Each store backend in turn: the same events from the same changes."""
    dests = {"pacs": "mllp", "events": "bus", "ehr": "mllp"}
    for r in rig_with(request.param, tmp_path, defs, **dests):
        r.store.on_procedure_publish = ProcedurePublisher(["events"])
        yield r


def published(rig: Rig) -> list[dict[str, Any]]:
    out = []
    for dest, key, ctype, headers, payload in rig.entries():
        if dest != "events":
            continue
        body = json.loads(payload)
        assert ctype == "application/json"
        assert headers == {"routing_key": body["type"]}
        jsonschema.validate(body, SCHEMA)
        assert key == body["patient_id"] or body["type"] == "patient.merged"
        out.append(body)
    return out


def test_committed_schema_is_current() -> None:
    assert json.loads(json.dumps(schema())) == SCHEMA, (
        "run: python -m broker.events > docs/schemas/event.schema.json"
    )


def test_order_flow_order_mpps_completed(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.start()  # MPPS IN PROGRESS
    rig.ok(xo(ACC26110001="ACC9"))
    ev = published(rig)
    assert [e["type"] for e in ev] == ["order.scheduled", "procedure.in_progress", "order.updated"]
    scheduled, started, updated = ev
    assert scheduled["accession"] == "ACC26110001" and scheduled["patient_id"] == "MR100234"
    assert scheduled["study_instance_uid"] == "1.2.826.0.1.3680043.2.1125.20261102083015.1002341"
    assert scheduled["changes"]["modality"] == "CT"
    assert scheduled["changes"]["scheduled_start_date"] == "20261103"
    assert started["performed_station_ae"] == "CT1_AE" and started["mpps_uid"] == "9.9.1"
    assert updated["changes"] == {
        "accession": "ACC9",
        "scheduled_start_time": "141500",
    }
    assert len({e["id"] for e in ev}) == 3


def test_an_unchanged_resend_publishes_nothing_new(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    again = sample("orm_o01_v231").replace("RIS26110200101", "RIS-AGAIN")
    rig.ok(again)
    assert [e["type"] for e in published(rig)] == ["order.scheduled"]


def test_cancel_publishes_order_cancelled(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(xo(**{"ORC|XO|": "ORC|CA|"}))
    ev = published(rig)
    assert [e["type"] for e in ev] == ["order.scheduled", "order.cancelled"]
    assert ev[1]["order_status"] == "CANCELED" and ev[1]["accession"] == "ACC26110001"


def test_patient_update_and_merge(rig: Rig) -> None:
    rig.ok(sample("orm_o01_v231"))
    rig.ok(sample("adt_a08"))
    rig.ok(sample("adt_a40"))
    _, updated, merged = published(rig)
    assert updated["type"] == "patient.updated" and updated["items"] == 1
    assert updated["changes"]["patient_birth_date"] == "19580321"
    assert merged["type"] == "patient.merged" and merged["merge"] == "merge"
    assert (merged["patient_id"], merged["retired_patient_id"]) == ("MR100199", "MR100234")


def test_result_received_keeps_the_study_link(rig: Rig) -> None:
    rig.ok(sample("oru_r01"))
    (ev,) = published(rig)
    assert ev["type"] == "result.received" and ev["patient_id"] == "MR100234"
    assert ev["accession"] and ev["changes"]["procedure"]


def test_the_source_message_is_included_when_the_route_asks(
    tmp_path: Path,
) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yaml").write_text(
        "routes:\n  - name: r\n    match: {message_type: ORU}\n"
        "    actions: [{publish: {to: events, include_message: true}}]\n"
    )
    r = Rig(tmp_path / "b.db", load_definitions(routes, ROOT / "mappings"), {"events": "bus"})
    try:
        r.ok(sample("oru_r01"))
        (ev,) = published(r)
        assert ev["source_message"].startswith("MSH|^~\\&|")
    finally:
        r.db.close()


def test_without_an_events_destination_nothing_is_published(
    tmp_path: Path, defs: Definitions
) -> None:
    r = Rig(tmp_path / "b.db", defs, {"pacs": "mllp"})
    try:
        result = r.ok(sample("orm_o01_v231"))
        assert r.sql("SELECT COUNT(*) FROM outbox") == [(0,)]
        assert "publish:events" in json.dumps(
            r.sql("SELECT detail FROM journal WHERE id=?", result.journal_id)
        )
    finally:
        r.db.close()


def test_every_type_is_in_the_schema() -> None:
    assert SCHEMA["properties"]["type"]["enum"] == list(EVENT_TYPES)


def test_events_tail_redacts_patient_values_unless_asked() -> None:
    from broker.cli_events import _line

    body = json.dumps({"type": "patient.updated", "patient_id": "MR1", "accession": "A1",
                       "changes": {"patient_name": "DOE^JANE", "modality": "CT"}}).encode()  # fmt: skip
    shown = json.loads(_line(body, show_phi=False))
    assert shown["patient_id"] == "<redacted>" and shown["accession"] == "A1"
    assert shown["changes"] == {"patient_name": "<redacted>", "modality": "CT"}
    assert json.loads(_line(body, show_phi=True))["changes"]["patient_name"] == "DOE^JANE"


def test_two_routes_publishing_make_one_set_of_events(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "r.yaml").write_text(
        "routes:\n"
        "  - name: a\n    match: {message_type: ORU}\n"
        "    actions: [{publish: {to: events}}]\n    continue: true\n"
        "  - name: b\n    match: {message_type: ORU}\n"
        "    actions: [{publish: {to: [events, audit]}}]\n"
    )
    defs = load_definitions(routes, ROOT / "mappings")
    r = Rig(tmp_path / "b.db", defs, {"events": "bus", "audit": "http"})
    try:
        r.ok(sample("oru_r01"))
        assert r.sql("SELECT destination FROM outbox ORDER BY id") == [("events",), ("audit",)]
    finally:
        r.db.close()
