"""Which events a committed change makes, queued in the change's own transaction (any
store: the store's :class:`broker.reconcile.ops.ChangeOps` reads and queues).

Two sources: the effects of an inbound message (a route's ``publish`` action, applied after
the message's other effects from what they did: :func:`apply_publish`), and MPPS procedure
events (:class:`ProcedurePublisher`, a hook of the worklist store's MPPS transaction). Either
way an event is an outbox entry of each event destination: no committed change without its
events, no event of a change that rolled back. The event's id is derived from the journal
entry (or the procedure event) it comes from: stable across redeliveries.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Collection, Sequence
from typing import Any

from broker import events
from broker.effects import (
    DicomJson,
    Effect,
    Enqueue,
    PatientChange,
    Publish,
    WorklistStatusChange,
    WorklistUpsert,
)
from broker.reconcile import changes as rc
from broker.reconcile.ops import ChangeOps
from broker.worklist import item as wi
from broker.worklist.status_message import ProcedureEvent

#: Patient keywords → the event's names for them.
_PATIENT_NAMES = {
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "OtherPatientIDs": "other_patient_ids",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
}
#: Order statuses an order.cancelled event reports.
_ENDED = frozenset({"CANCELED", "DISCONTINUED"})


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _enqueue(
    ops: ChangeOps, to: Sequence[str], type_: str, payload: bytes, key: str, jid: int
) -> None:
    for dest in to:
        ops.enqueue(Enqueue(dest, payload, key, events.CONTENT_TYPE, {"routing_key": type_}), jid)


def apply_publish(
    ops: ChangeOps,
    effect: Publish,
    before: tuple[Effect, ...],
    summaries: list[dict[str, Any]],
    journal_id: int,
) -> dict[str, Any]:
    """The events of the effects ``before`` this Publish (with their applied summaries)."""
    now = _now()
    made: list[tuple[str, bytes, str]] = []  # (type, payload, ordering key)
    src = effect.source

    def next_id() -> str:
        return f"evt-{journal_id}-{len(made) + 1}"

    for eff, summary in zip(before, summaries, strict=True):
        if isinstance(eff, WorklistUpsert):
            changes = summary.get("_changes") or [None] * len(eff.items)
            for item, changed in zip(eff.items, changes, strict=False):
                if changed is None:
                    type_, body = "order.scheduled", events.describe_item(item)
                elif changed:
                    type_, body = "order.updated", changed
                else:
                    continue  # sent again unchanged
                payload = events.for_item(type_, next_id(), now, item, changes=body, source=src)
                made.append((type_, payload, _patient(item)))
        elif isinstance(eff, WorklistStatusChange):
            if summary.get("changed") and eff.status in _ENDED:
                for row in ops.order_items(eff.order_key):
                    item = json.loads(row.text)
                    payload = events.for_item(
                        "order.cancelled", next_id(), now, item,
                        extra={"order_status": eff.status}, source=src,
                    )  # fmt: skip
                    made.append(("order.cancelled", payload, _patient(item)))
        elif isinstance(eff, PatientChange):
            made.append(_patient_event(eff, summary, next_id(), now, src))
    if effect.result is not None:
        r = dict(effect.result)
        patient = r.pop("patient_id", "")
        payload = events.build(
            "result.received",
            next_id(),
            now,
            accession=r.pop("accession", ""),
            patient_id=patient,
            study_instance_uid=r.pop("study_instance_uid", ""),
            changes=r,
            source=src,
        )
        made.append(("result.received", payload, patient))
    for type_, payload, key in made:
        _enqueue(ops, effect.to, type_, payload, key, journal_id)
    return {
        "published": [t for t, _, _ in made],
        **({"queued_to": list(effect.to)} if made else {}),
    }


def _patient(item: DicomJson) -> str:
    return wi.first_text(item, wi.PATIENT_ID)


def _patient_event(
    eff: PatientChange, summary: dict[str, Any], event_id: str, now: str, src: str | None
) -> tuple[str, bytes, str]:
    changes = {
        _PATIENT_NAMES.get(kw, kw): value
        for kw, value in rc.patient_set(eff.demographics, eff.target).items()
    }
    items = int(summary.get("items") or 0)
    if eff.target is None:
        payload = events.build(
            "patient.updated", event_id, now, patient_id=eff.patient.patient_id,
            issuer=eff.patient.issuer, changes=changes, extra={"items": items}, source=src,
        )  # fmt: skip
        return "patient.updated", payload, eff.patient.patient_id
    payload = events.build(
        "patient.merged", event_id, now, patient_id=eff.target.patient_id,
        issuer=eff.target.issuer, changes=changes,
        extra={
            "retired_patient_id": eff.patient.patient_id,
            "retired_issuer_of_patient_id": eff.patient.issuer,
            "merge": "merge" if eff.kind == "merge" else "identifier_change",
            "items": items,
        },
        source=src,
    )  # fmt: skip
    # the retired patient's queue order: its earlier events go first
    return "patient.merged", payload, eff.patient.patient_id


#: Destination the shipped default publishes to (DESIGN §6a).
DEFAULT_EVENTS_DESTINATION = "events"


class ProcedurePublisher:
    """MPPS procedure events (``procedure.in_progress`` / ``completed`` / ``discontinued``)
    as bus events, for the worklist store's MPPS transaction. ``destinations``: the event
    destinations configured (empty: nothing is published)."""

    def __init__(self, destinations: Collection[str]) -> None:
        self.destinations = tuple(destinations)

    def __call__(self, event: ProcedureEvent, item: DicomJson) -> list[Enqueue]:
        if not self.destinations or event.kind not in events.EVENT_TYPES:
            return []
        payload = events.for_item(
            event.kind,
            f"evt-mpps-{event.event_id}",
            event.at,
            item,
            changes={"step_status": event.new_status or event.old_status},
            extra={"performed_station_ae": event.calling_ae, "mpps_uid": event.mpps_uid},
            study_instance_uid=event.study_uid,  # the performed study, when one was named
        )
        key = _patient(item)
        return [
            Enqueue(d, payload, key, events.CONTENT_TYPE, {"routing_key": event.kind})
            for d in self.destinations
        ]


__all__ = ["DEFAULT_EVENTS_DESTINATION", "ProcedurePublisher", "apply_publish"]
