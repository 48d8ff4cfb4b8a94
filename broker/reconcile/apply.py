"""Patient and order changes applied to the worklist, recorded for audit, and turned into PACS
updates: the reconcile appliers, on any store (:class:`broker.reconcile.ops.ChangeOps`).

Both run inside the journal's commit (like the worklist upsert): the items, the change record
and the outbound entries commit with the inbound message or not at all (a
:class:`ConflictError` answers AE and undoes everything).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.effects import Enqueue, OrderChange, Outbound, PatientChange
from broker.errors import ConflictError
from broker.reconcile import changes as rc
from broker.reconcile.ops import ChangeOps
from broker.reconcile.sweep import Mismatch, SweepReport
from broker.worklist import item as wi
from broker.worklist import lifecycle
from broker.worklist.stored import now_text

#: Steps past these statuses were performed: the order's study exists (IHE: linked by MPPS).
PERFORMED = frozenset(
    {lifecycle.STARTED, lifecycle.DEPARTED, lifecycle.COMPLETED, lifecycle.DISCONTINUED}
)
_PATIENT_OPS = {"update": "update_patient", "merge": "merge_patient", "rename": "merge_patient"}


def _queue(
    ops: ChangeOps,
    journal_id: int,
    outbound: Iterable[Outbound],
    jobs: Iterable[tuple[str, bytes, str]],
) -> list[dict[str, Any]]:
    """Enqueue the prepared HL7 messages and the REST jobs; what went where."""
    queued: list[dict[str, Any]] = []
    for o in outbound:
        entry = ops.enqueue(Enqueue(o.destination, o.payload, o.ordering_key), journal_id)
        queued.append({"destination": o.destination, "outbox_id": entry})
    for dest, payload, key in jobs:
        job = Enqueue(dest, payload, key, content_type=rc.JOB_CONTENT_TYPE)
        queued.append({"destination": dest, "outbox_id": ops.enqueue(job, journal_id)})
    return queued


def _summary(kind: str, detail: dict[str, Any], **extra: Any) -> dict[str, Any]:
    queued = detail.get("queued") or []
    out: dict[str, Any] = {"reconcile": kind, **extra}
    if queued:
        out["queued_to"] = sorted({q["destination"] for q in queued})
    for key in ("warning", "pacs"):
        if key in detail:
            out[key] = detail[key]
    return out


def apply_patient_change(ops: ChangeOps, effect: PatientChange, journal_id: int) -> dict[str, Any]:
    """Update (A08/A31), merge (A40) or rename (A47) a patient's items; record; queue."""
    now = now_text()
    p, target = effect.patient, effect.target
    rows = ops.patient_items(p)
    detail: dict[str, Any] = {}
    if not rows:
        what = "prior patient identifier (MRG-1)" if target is not None else "patient (PID-3)"
        text = f"unknown {what}: no worklist item holds it"
        if effect.unknown != "warn":
            raise ConflictError(text, hl7_location=effect.hl7_location, hl7_code=204)
        detail["warning"] = text
    if target is not None:
        detail["target_known"] = ops.patient_known(target)
    target_key = f"{target.patient_id}^{target.issuer}" if target is not None else ""
    changed_items: list[dict[str, Any]] = []
    studies: set[str] = set()
    for row in rows:
        active = lifecycle.is_active(row.status)
        if effect.kind == "update" and not active:
            continue  # history keeps the demographics it was performed with
        old = json.loads(row.text)
        demographics = effect.demographics if active else {}
        new = rc.with_patient(old, demographics, target)
        diff = rc.changed(old, new, rc.PATIENT_JSON_KEYS)  # all with_patient can change
        if row.status in PERFORMED or row.performed_study_uid:
            studies.add(row.performed_study_uid or row.study_uid)
        if not diff:
            continue
        ops.replace_item(row.id, new, target_key or row.patient_key, now, journal_id)
        ops.history(row.id, row.status, row.status, f"patient {effect.kind}", journal_id, now)
        changed_items.append(
            {"item": row.id, "before": {k: rc.plain(old.get(rc.key_of(k))) for k in diff},
             "after": diff}
        )  # fmt: skip
    detail["items"] = changed_items
    kind = f"patient.{effect.kind}"
    change_id = ops.record_change(
        kind, journal_id, patient=p, target=target, items=len(changed_items), detail=detail
    )
    op = _PATIENT_OPS[effect.kind]
    set_ = rc.patient_set(effect.demographics)  # identity goes in the job's target
    job_key = effect.ordering_key or p.patient_id
    jobs = [
        (
            dest,
            rc.job(op, f"rc-{change_id}", patient=p, target=target, study_uids=studies, set_=set_),
            job_key,
        )
        for dest in effect.jobs_to
    ]
    detail["queued"] = _queue(ops, journal_id, effect.outbound, jobs)
    ops.set_change_detail(change_id, detail)
    return _summary(kind, detail, change=change_id, items=len(changed_items))


def _identity(item: dict[str, Any]) -> tuple[str, str]:
    keys = wi.index_keys(item)
    return keys.requested_procedure_id, keys.step_id


def apply_order_change(ops: ChangeOps, effect: OrderChange, journal_id: int) -> dict[str, Any]:
    """What an order change (XO/SC) or end (CA/DC/OC) means for the PACS, judged against the
    order as stored, before the message's own worklist effects run."""
    any_for_hl7 = False
    jobs: list[tuple[str, bytes, str]] = []
    records: list[int] = []
    details: list[dict[str, Any]] = []
    for order_key, new_items in effect.orders:
        rows = ops.order_items(order_key)
        detail: dict[str, Any] = {"control": effect.control}
        if not rows:
            text = "unknown order: no worklist item for its placer/filler order number"
            if effect.unknown != "warn":
                raise ConflictError(text, hl7_location="ORC^1^2", hl7_code=204)
            detail["warning"] = text
        linked = any(r.status in PERFORMED or r.performed_study_uid for r in rows)
        detail["study_linked"] = linked
        stored = {}
        for r in rows:
            item = json.loads(r.text)
            stored[_identity(item)] = (item, r.study_uid, r.performed_study_uid, r.accession)
        # per study in the PACS: (accession it knows, study UIDs, changed attributes); the
        # steps of one requested procedure share a study: one correction for it
        studies: dict[tuple[str, str, str], dict[str, str]] = {}
        if not effect.cancel:
            for new in new_items:
                found = stored.get(_identity(new))
                if found is None:
                    continue  # a new procedure of the order: nothing stored to correct
                old, study, performed, accession = found
                diff = rc.order_changes(old, new)
                if diff:
                    studies.setdefault((accession, performed, study), {}).update(diff)
        per_study = [(acc, [performed, study], diff)
                     for (acc, performed, study), diff in studies.items()]  # fmt: skip
        if not effect.cancel:
            detail["changes"] = [{"accession": acc, "after": diff} for acc, _, diff in per_study]
        concerns_pacs = bool(per_study) or effect.cancel
        for_hl7 = (
            concerns_pacs
            and bool(rows or effect.unknown == "warn")
            and (linked or effect.studies == "all")
        )
        any_for_hl7 = any_for_hl7 or for_hl7
        kind = "order.cancel" if effect.cancel else "order.update"
        change_id = ops.record_change(
            kind, journal_id, order_key=order_key, items=len(rows), detail=detail
        )
        records.append(change_id)
        if effect.cancel:
            if effect.jobs_to:
                detail["pacs"] = "an ended order changes nothing on stored images"
        elif not per_study:
            detail["pacs"] = "nothing the PACS keeps changed"
        else:
            # REST PACS: queued even without a linked study: it finds the study by
            # accession, or applies nothing (IHE: "found in the PACS by AccessionNumber").
            for accession, uids, diff in per_study:
                payload = rc.job("update_order", f"rc-{change_id}", accession=accession,
                                 study_uids=uids, set_=rc.study_set(diff))  # fmt: skip
                jobs.extend((d, payload, effect.ordering_key) for d in effect.jobs_to)
            if not for_hl7 and effect.outbound:
                detail["pacs"] = "no study yet (no step performed): HL7 update not sent"
        details.append(detail)
    queued = _queue(ops, journal_id, effect.outbound if any_for_hl7 else (), jobs)
    for change_id, detail in zip(records, details, strict=True):
        detail["queued"] = queued
        ops.set_change_detail(change_id, detail)
    merged: dict[str, Any] = {"queued": queued}
    warnings = [d["warning"] for d in details if "warning" in d]
    if warnings:
        merged["warning"] = "; ".join(warnings)
    pacs = [d["pacs"] for d in details if "pacs" in d]
    if pacs:
        merged["pacs"] = "; ".join(pacs)
    kind = "order.cancel" if effect.cancel else "order.update"
    return _summary(kind, merged, changes=records)


# -- the sweep's corrections (broker reconcile sweep --apply) ----------------------------


#: Sweep fields an Orthanc study modify can correct → the keywords it sets.
_SWEEP_SET = {
    "name": ("PatientName",),
    "birth_date": ("PatientBirthDate",),
    "sex": ("PatientSex",),
    "accession": ("AccessionNumber",),
    "procedure": ("StudyDescription",),
}


def queue_sweep_corrections(
    ops: ChangeOps, report: SweepReport, destination: str, dest_type: str | None
) -> None:
    """Queue one correction job per mismatching study (``orthanc`` destinations) and record
    each as a ``sweep`` change; fills ``report.applied`` / ``report.not_applied``."""
    per_study: dict[str, list[Mismatch]] = {}
    for m in report.mismatches:
        per_study.setdefault(m.study_uid, []).append(m)
    for study_uid, found in per_study.items():
        accession = found[0].accession
        base = {"study_uid": study_uid, "accession": accession}
        if dest_type != "orthanc":
            why = (
                f"destination {destination!r} is not configured"
                if dest_type is None
                else f"destination {destination!r} is of type {dest_type}: an HL7 PACS is "
                "corrected by the order system's messages (ORM XO, ADT A08)"
            )
            report.not_applied.append({**base, "reason": why})
            continue
        identity = [m.field for m in found if m.field in ("patient_id", "issuer")]
        set_: dict[str, str] = {}
        for m in found:
            for keyword in _SWEEP_SET.get(m.field, ()):
                set_[keyword] = m.order
        if identity:
            report.not_applied.append(
                {**base, "reason": "the study is filed under another patient ID: that takes a "
                 "merge (ADT^A40) or an identifier change (A47) from the patient system"}
            )  # fmt: skip
        if not set_:
            continue
        detail: dict[str, Any] = {
            "study_uid": study_uid,
            "fields": sorted(m.field for m in found),
            "set": set_,
        }
        change_id = ops.record_change("sweep", None, order_key=accession, items=1, detail=detail)
        payload = rc.job(
            "update_order",
            f"rc-{change_id}",
            accession=accession,
            study_uids=[study_uid],
            set_=set_,
        )
        outbox_id = ops.enqueue(
            Enqueue(destination, payload, accession, content_type=rc.JOB_CONTENT_TYPE), 0
        )
        detail["queued"] = [{"destination": destination, "outbox_id": outbox_id}]
        ops.set_change_detail(change_id, detail)
        report.applied.append({**base, "change": change_id, "outbox_id": outbox_id,
                               "fields": detail["fields"]})  # fmt: skip
