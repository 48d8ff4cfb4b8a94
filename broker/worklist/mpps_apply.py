"""An MPPS N-CREATE or N-SET applied to a store, in one transaction: the store-independent
part of the worklist stores' ``mpps_apply``.

It reads the stored instance, decides (:mod:`broker.worklist.mpps`), stores the instance,
links it to the scheduled items, moves them, records the procedure events and runs the
hooks that queue what the events cause (the RIS's order-status message, bus events), all
through :class:`MppsOps`, which each store implements over its own transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from broker.effects import DicomJson, Enqueue, Skipped
from broker.worklist import lifecycle, mpps
from broker.worklist.status_message import OriginalMessage, ProcedureEvent, ProcedureEventHook
from broker.worklist.stored import now_text

log = logging.getLogger(__name__)

#: MPPS procedure event + the item -> the event entries to queue (bus destinations).
ProcedurePublishHook = Callable[[ProcedureEvent, DicomJson], Sequence[Enqueue]]
#: (StudyInstanceUID, AccessionNumber, RequestedProcedureID, ScheduledProcedureStepID)
Link = tuple[str, str, str, str]


class MppsInstance(NamedTuple):
    state: str
    dataset: DicomJson
    item_ids: list[int]
    study_uid: str


class LinkedItem(NamedTuple):
    """What an event needs of a scheduled item."""

    status: str
    text: str  # its DICOM JSON
    order_key: str
    accession: str
    rp_id: str
    sps_id: str
    study_uid: str
    journal_id: int  # the order message it came from (0: none)


class MppsOps(Protocol):
    def instance(self, uid: str) -> MppsInstance | None: ...

    def create_instance(
        self,
        uid: str,
        state: str,
        calling_ae: str,
        study_uid: str,
        item_ids: list[int],
        dataset: DicomJson,
        now: str,
    ) -> None: ...

    def update_instance(self, uid: str, state: str, dataset: DicomJson, now: str) -> None: ...

    def link_candidates(self, study_uid: str, accession: str) -> list[int]:
        """Ids of items holding the study UID (or, without one, the accession), ascending."""
        ...

    def link_keys(self, item_id: int) -> dict[str, str] | None:
        """An item's study_uid, accession, rp_id and sps_id (None: no such item)."""
        ...

    def set_performed_study(self, item_ids: Sequence[int], study_uid: str) -> None: ...

    def item(self, item_id: int) -> LinkedItem | None: ...

    def set_item_status(
        self, item_id: int, text: str, old: str, new: str, reason: str, now: str
    ) -> None:
        """Move an item to ``new`` (re-encoded, a history row with source 'mpps')."""
        ...

    def record_event(self, record: dict[str, Any]) -> int:
        """Store a procedure event; returns its id."""
        ...

    def record_notice(
        self,
        event_id: int,
        action: str,
        result: str,
        destination: str,
        outbox_id: int | None,
        detail: str,
    ) -> None:
        """What became of the event's order-status message."""
        ...

    def enqueue(self, effect: Enqueue, journal_id: int) -> int: ...

    def original(self, journal_id: int) -> OriginalMessage | None:
        """The order message an item came from (the order-status message answers it)."""
        ...


def pps_status(dataset: DicomJson) -> str | None:
    """(0040,0252) Performed Procedure Step Status: None absent, '' empty."""
    elem = dataset.get("00400252")
    if not isinstance(elem, dict):
        return None
    values = elem.get("Value") or []
    return str(values[0]) if values else ""


def apply_mpps(
    ops: MppsOps,
    kind: str,
    uid: str,
    dataset: DicomJson,
    calling_ae: str,
    links: Sequence[Link] = (),
    *,
    on_event: ProcedureEventHook | None = None,
    on_publish: ProcedurePublishHook | None = None,
) -> mpps.Decision:
    """Run an N-CREATE (``kind`` 'create') or N-SET ('set') inside the caller's transaction."""
    now = now_text()
    stored = ops.instance(uid)
    on = mpps.on_create if kind == "create" else mpps.on_set
    decision = on(stored.state if stored else None, pps_status(dataset))
    if not decision.ok or decision.state is None:
        return decision
    if kind == "create":
        item_ids = linked_items(ops, links)
        study_uid = next((s for s, _, _, _ in links if s), "")
        ops.create_instance(uid, decision.state, calling_ae, study_uid, item_ids, dataset, now)
        if study_uid and item_ids:
            ops.set_performed_study(item_ids, study_uid)
    else:
        assert stored is not None  # on_set refuses an unknown instance
        item_ids, study_uid = stored.item_ids, stored.study_uid
        ops.update_instance(uid, decision.state, {**stored.dataset, **dataset}, now)
    if decision.event is not None:
        _events(ops, decision, uid, item_ids, study_uid, calling_ae, now, on_event, on_publish)
    return decision


def linked_items(ops: MppsOps, links: Sequence[Link]) -> list[int]:
    """Items named by the Scheduled Step Attributes Sequence: each link's non-empty keys
    (StudyInstanceUID, AccessionNumber, RequestedProcedureID, SPS ID) must all be equal; a link
    needs the study UID or the accession number (an SPS ID alone is not unique)."""
    ids: list[int] = []
    for study_uid, accession, rp_id, sps_id in links:
        if not study_uid and not accession:
            continue
        wanted = {"study_uid": study_uid, "accession": accession, "rp_id": rp_id,
                  "sps_id": sps_id}  # fmt: skip
        for item_id in ops.link_candidates(study_uid, accession):
            keys = ops.link_keys(item_id)
            if keys is None or item_id in ids:
                continue
            if all(not v or keys[f] == v for f, v in wanted.items()):
                ids.append(item_id)
    return ids


def _events(
    ops: MppsOps,
    decision: mpps.Decision,
    uid: str,
    item_ids: Sequence[int],
    study_uid: str,
    calling_ae: str,
    now: str,
    on_event: ProcedureEventHook | None,
    on_publish: ProcedurePublishHook | None,
) -> None:
    assert decision.event is not None
    base = {"kind": decision.event, "at": now, "mpps_uid": uid, "calling_ae": calling_ae}
    if not item_ids:  # unscheduled: recorded without an item
        ops.record_event({**base, "item_id": None, "study_uid": study_uid})
        return
    for item_id in item_ids:
        item = ops.item(item_id)
        if item is None:
            continue  # purged meanwhile
        new: str | None = None
        if decision.item_status is not None:
            new = lifecycle.transition(item.status, decision.item_status)
            if new is not None:
                ops.set_item_status(
                    item_id, item.text, item.status, new, f"MPPS {decision.state}", now
                )
        event_study = study_uid or item.study_uid
        record: dict[str, Any] = {
            **base, "item_id": item_id, "order_key": item.order_key,
            "accession": item.accession, "rp_id": item.rp_id, "sps_id": item.sps_id,
            "study_uid": event_study,
        }  # fmt: skip
        event_id = ops.record_event(record)
        if on_event is None and on_publish is None:
            continue
        event = ProcedureEvent(
            event_id, decision.event, now, uid, item_id, item.order_key, item.accession,
            item.rp_id, item.sps_id, event_study, calling_ae, item.status, new,
        )  # fmt: skip
        dataset = json.loads(item.text)
        if on_event is not None:
            _notify(ops, on_event, event, dataset, item.journal_id)
        if on_publish is not None:
            for enqueue in on_publish(event, dataset):
                ops.enqueue(enqueue, item.journal_id)


def _notify(
    ops: MppsOps,
    hook: ProcedureEventHook,
    event: ProcedureEvent,
    item: DicomJson,
    journal_id: int,
) -> None:
    """Run the hook for one event and apply its answer in the MPPS transaction: queue the
    Enqueue (the outbox entry points at the order message it was built from) or record the
    Skipped. A hook that raises is recorded as failed: the MPPS change still commits."""
    original = ops.original(journal_id) if journal_id else None
    try:
        result = hook(event, item, original)
    except Exception as exc:
        log.exception("order status for worklist item %d failed", event.item_id)
        ops.record_notice(event.event_id, "order-status", "failed", "", None,
                          type(exc).__name__)  # fmt: skip
        return
    if isinstance(result, Enqueue):
        outbox_id = ops.enqueue(result, journal_id)
        detail = result.headers.get("control_id", "")
        ops.record_notice(event.event_id, "order-status", "queued", result.destination,
                          outbox_id, detail)  # fmt: skip
    elif isinstance(result, Skipped):
        ops.record_notice(event.event_id, result.action, "skipped", "", None, result.reason)
