"""JSON events about the imaging workflow, for consumers on a message bus (docs/EVENTS.md).

Pure: what an event says, built from worklist items (DICOM JSON) and change records. The
store decides which events a committed change makes (``broker/publishing.py``) and queues
them in the change's own transaction; the ``bus`` destination publishes them with the event
type as routing key. The JSON Schema is ``docs/schemas/event.schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from broker.reconcile import changes as rc
from broker.worklist import item as wi

#: Every event type, in workflow order (the routing key of each event is its type).
EVENT_TYPES = (
    "order.scheduled",
    "order.updated",
    "order.cancelled",
    "procedure.in_progress",
    "procedure.completed",
    "procedure.discontinued",
    "patient.updated",
    "patient.merged",
    "result.received",
)
CONTENT_TYPE = "application/json"
#: Schema version of the event body (bumped on an incompatible change).
VERSION = 1

#: What an order event tells of each item besides the common keys (top level of the item).
_ITEM_KEYS = {
    "requested_procedure_id": "RequestedProcedureID",
    "procedure": "RequestedProcedureDescription",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "referring_physician": "ReferringPhysicianName",
}
#: ... and of its (first) scheduled procedure step.
_STEP_KEYS = {
    "modality": "Modality",
    "scheduled_station_ae": "ScheduledStationAETitle",
    "scheduled_start_date": "ScheduledProcedureStepStartDate",
    "scheduled_start_time": "ScheduledProcedureStepStartTime",
    "scheduled_step_id": "ScheduledProcedureStepID",
    "step_status": "ScheduledProcedureStepStatus",
}


def _text(item: Mapping[str, Any], keyword: str) -> str:
    return rc.plain(item.get(rc.key_of(keyword)))


def describe_item(item: Mapping[str, Any]) -> dict[str, str]:
    """An item's attributes as an event states them (plain text, snake_case keys)."""
    out = {name: _text(item, kw) for name, kw in _ITEM_KEYS.items()}
    steps = wi.sequence_items(dict(item), wi.SPS_SEQUENCE)
    step = steps[0] if steps else {}
    out.update({name: _text(step, kw) for name, kw in _STEP_KEYS.items()})
    return out


def item_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, str]:
    """What differs between two versions of an item: name → new text (describe_item's
    names, plus ``accession``, ``patient_id`` and ``study_instance_uid``)."""
    before, after = describe_item(old), describe_item(new)
    out = {k: v for k, v in after.items() if before.get(k) != v and k != "step_status"}
    for name, tag in (
        ("accession", wi.ACCESSION_NUMBER),
        ("patient_id", wi.PATIENT_ID),
        ("study_instance_uid", wi.STUDY_INSTANCE_UID),
    ):
        if wi.first_text(dict(old), tag) != wi.first_text(dict(new), tag):
            out[name] = wi.first_text(dict(new), tag)
    return out


def build(
    type_: str,
    event_id: str,
    time: str,
    *,
    accession: str = "",
    patient_id: str = "",
    issuer: str = "",
    study_instance_uid: str = "",
    changes: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> bytes:
    """One event as UTF-8 JSON. ``changes``: the changed attributes (for a new order or a
    result: its attributes); ``extra``: type-specific keys; ``source``: the HL7 message."""
    assert type_ in EVENT_TYPES, type_
    body: dict[str, Any] = {
        "type": type_,
        "id": event_id,
        "time": time,
        "version": VERSION,
        "accession": accession,
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "study_instance_uid": study_instance_uid,
        "changes": dict(changes or {}),
    }
    body.update(extra or {})
    if source is not None:
        body["source_message"] = source.replace("\r", "\n")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def for_item(
    type_: str,
    event_id: str,
    time: str,
    item: Mapping[str, Any],
    *,
    changes: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    source: str | None = None,
    study_instance_uid: str = "",
) -> bytes:
    """An order or procedure event about one worklist item (``study_instance_uid``: the
    study to name instead of the item's, e.g. the one an MPPS performed)."""
    d = dict(item)
    return build(
        type_,
        event_id,
        time,
        accession=wi.first_text(d, wi.ACCESSION_NUMBER),
        patient_id=wi.first_text(d, wi.PATIENT_ID),
        issuer=wi.first_text(d, wi.ISSUER_OF_PATIENT_ID),
        study_instance_uid=study_instance_uid or wi.first_text(d, wi.STUDY_INSTANCE_UID),
        changes=changes,
        extra=extra,
        source=source,
    )


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every event (docs/schemas/event.schema.json)."""
    text = {"type": "string"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://broker.example/schemas/event.schema.json",
        "title": "Broker workflow event",
        "description": "One event published to a bus destination; the routing key is `type`.",
        "type": "object",
        "required": [
            "type",
            "id",
            "time",
            "version",
            "accession",
            "patient_id",
            "issuer_of_patient_id",
            "study_instance_uid",
            "changes",
        ],
        "properties": {
            "type": {"enum": list(EVENT_TYPES)},
            "id": {**text, "description": "unique, stable across redeliveries: deduplicate on it"},
            "time": {**text, "format": "date-time", "description": "when the change committed"},
            "version": {"const": VERSION},
            "accession": text,
            "patient_id": text,
            "issuer_of_patient_id": text,
            "study_instance_uid": text,
            "changes": {
                "type": "object",
                "description": "changed attributes (new values); for order.scheduled and "
                "result.received, the attributes",
                "additionalProperties": {"type": ["string", "object"]},
            },
            "order_status": {**text, "description": "order.cancelled: CANCELED or DISCONTINUED"},
            "performed_station_ae": {**text, "description": "procedure.*: the modality"},
            "mpps_uid": {**text, "description": "procedure.*: the MPPS SOP Instance UID"},
            "retired_patient_id": {**text, "description": "patient.merged: MRG-1"},
            "retired_issuer_of_patient_id": text,
            "merge": {"enum": ["merge", "identifier_change"]},
            "items": {"type": "integer", "description": "patient.*: worklist items changed"},
            "source_message": {**text, "description": "the HL7 message (if the route asks)"},
        },
        "additionalProperties": False,
    }


__all__ = [
    "CONTENT_TYPE",
    "EVENT_TYPES",
    "VERSION",
    "build",
    "describe_item",
    "for_item",
    "item_changes",
    "schema",
]


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(schema(), indent=2))
