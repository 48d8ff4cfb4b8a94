"""Reconciliation on the embedded SQLite store: patient and order changes applied to the
worklist items, recorded for audit, and turned into PACS updates in the same transaction.

Both appliers run inside the journal's commit (like ``apply_worklist_upsert``): the items,
the ``reconcile_changes`` row and the outbound entries commit together with the inbound
message, or not at all (a :class:`ConflictError` answers AE and rolls everything back).

``reconcile_changes`` keeps one row per change: kind, the patient (and the surviving or new
one), the order, how many items moved, and a JSON detail with the attributes before and
after and what was queued where. ``broker reconcile history`` reads it.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from broker.effects import Enqueue, OrderChange, Outbound, PatientChange, PatientRef
from broker.errors import ConflictError
from broker.reconcile import changes as rc
from broker.reconcile.sweep import Mismatch, OrderItem, SweepReport
from broker.storage.sqlite import Schema, SqliteDatabase
from broker.storage.sqlite_queue import apply_enqueue
from broker.storage.sqlite_worklist import _history, _now, _replace, _Row
from broker.worklist import item as wi
from broker.worklist import lifecycle

RECONCILE_SCHEMA = Schema(
    "reconcile",
    (
        """CREATE TABLE IF NOT EXISTS reconcile_changes (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            journal_id INTEGER,
            kind TEXT NOT NULL,
            patient_id TEXT NOT NULL DEFAULT '',
            issuer TEXT NOT NULL DEFAULT '',
            target_id TEXT NOT NULL DEFAULT '',
            target_issuer TEXT NOT NULL DEFAULT '',
            order_key TEXT NOT NULL DEFAULT '',
            items INTEGER NOT NULL DEFAULT 0,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX IF NOT EXISTS reconcile_patient ON reconcile_changes(patient_id)",
        "CREATE INDEX IF NOT EXISTS reconcile_target ON reconcile_changes(target_id)",
        "CREATE INDEX IF NOT EXISTS reconcile_order ON reconcile_changes(order_key)",
        "CREATE INDEX IF NOT EXISTS reconcile_at ON reconcile_changes(at)",
    ),
)

#: Steps past these statuses were performed: the order's study exists (IHE: linked by MPPS).
_PERFORMED = frozenset(
    {lifecycle.STARTED, lifecycle.DEPARTED, lifecycle.COMPLETED, lifecycle.DISCONTINUED}
)
_PATIENT_OPS = {"update": "update_patient", "merge": "merge_patient", "rename": "merge_patient"}


def _record(
    conn: sqlite3.Connection,
    kind: str,
    journal_id: int | None,
    *,
    patient: PatientRef | None = None,
    target: PatientRef | None = None,
    order_key: str = "",
    items: int = 0,
    detail: dict[str, Any],
) -> int:
    cur = conn.execute(
        "INSERT INTO reconcile_changes (at, journal_id, kind, patient_id, issuer, target_id, "
        "target_issuer, order_key, items, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            _now(), journal_id, kind,
            patient.patient_id if patient else "", patient.issuer if patient else "",
            target.patient_id if target else "", target.issuer if target else "",
            order_key, items, json.dumps(detail, ensure_ascii=False),
        ),
    )  # fmt: skip
    assert cur.lastrowid is not None
    return cur.lastrowid


def _set_detail(conn: sqlite3.Connection, change_id: int, detail: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE reconcile_changes SET detail=? WHERE id=?",
        (json.dumps(detail, ensure_ascii=False), change_id),
    )


def _queue(
    conn: sqlite3.Connection,
    journal_id: int,
    outbound: Iterable[Outbound],
    jobs: Iterable[tuple[str, bytes, str]],
) -> list[dict[str, Any]]:
    """Enqueue the prepared HL7 messages and the REST jobs; what went where."""
    queued: list[dict[str, Any]] = []
    for o in outbound:
        r = apply_enqueue(conn, Enqueue(o.destination, o.payload, o.ordering_key), journal_id)
        queued.append({"destination": o.destination, "outbox_id": r["outbox_id"]})
    for dest, payload, key in jobs:
        r = apply_enqueue(
            conn,
            Enqueue(dest, payload, key, content_type=rc.JOB_CONTENT_TYPE),
            journal_id,
        )
        queued.append({"destination": dest, "outbox_id": r["outbox_id"]})
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


def _patient_rows(conn: sqlite3.Connection, p: PatientRef) -> list[tuple[Any, ...]]:
    """The items of a patient: an empty issuer in the message matches any issuer (most RIS
    send none); a given one matches items of that issuer and items recorded without one."""
    sql = (
        "SELECT id, json, status, study_uid, performed_study_uid, patient_key "
        "FROM worklist_items WHERE patient_id=?"
    )
    args: list[Any] = [p.patient_id]
    if p.issuer:
        sql += " AND issuer IN (?, '')"
        args.append(p.issuer)
    return conn.execute(sql + " ORDER BY id", args).fetchall()


def apply_patient_change(
    conn: sqlite3.Connection, effect: PatientChange, journal_id: int
) -> dict[str, Any]:
    """Update (A08/A31), merge (A40) or rename (A47) a patient's items; record; queue."""
    now = _now()
    p, target = effect.patient, effect.target
    rows = _patient_rows(conn, p)
    detail: dict[str, Any] = {}
    if not rows:
        what = "prior patient identifier (MRG-1)" if target is not None else "patient (PID-3)"
        text = f"unknown {what}: no worklist item holds it"
        if effect.unknown != "warn":
            raise ConflictError(text, hl7_location=effect.hl7_location, hl7_code=204)
        detail["warning"] = text
    if target is not None:
        clash = conn.execute(
            "SELECT 1 FROM worklist_items WHERE patient_id=? AND issuer=? LIMIT 1",
            (target.patient_id, target.issuer),
        ).fetchone()
        detail["target_known"] = clash is not None
    target_key = f"{target.patient_id}^{target.issuer}" if target is not None else ""
    changed_items: list[dict[str, Any]] = []
    studies: set[str] = set()
    for item_id, text, status, study_uid, performed, patient_key in rows:
        active = lifecycle.is_active(status)
        if effect.kind == "update" and not active:
            continue  # history keeps the demographics it was performed with
        old = json.loads(text)
        demographics = effect.demographics if active else {}
        new = rc.with_patient(old, demographics, target)
        diff = rc.changed(old, new, rc.PATIENT_JSON_KEYS)  # all with_patient can change
        if status in _PERFORMED or performed:
            studies.add(performed or study_uid)
        if not diff:
            continue
        _replace(conn, item_id, _Row(new), target_key or patient_key, now, journal_id)
        _history(conn, item_id, status, status, f"patient {effect.kind}", "hl7", journal_id, now)
        changed_items.append(
            {"item": item_id, "before": {k: rc.plain(old.get(rc.key_of(k))) for k in diff},
             "after": diff}
        )  # fmt: skip
    detail["items"] = changed_items
    kind = f"patient.{effect.kind}"
    change_id = _record(
        conn, kind, journal_id, patient=p, target=target, items=len(changed_items), detail=detail
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
    detail["queued"] = _queue(conn, journal_id, effect.outbound, jobs)
    _set_detail(conn, change_id, detail)
    return _summary(kind, detail, change=change_id, items=len(changed_items))


def _identity(item: dict[str, Any]) -> tuple[str, str]:
    keys = wi.index_keys(item)
    return keys.requested_procedure_id, keys.step_id


def apply_order_change(
    conn: sqlite3.Connection, effect: OrderChange, journal_id: int
) -> dict[str, Any]:
    """What an order change (XO/SC) or end (CA/DC/OC) means for the PACS, judged against the
    order as stored, before the message's own worklist effects run."""
    any_for_hl7 = False
    jobs: list[tuple[str, bytes, str]] = []
    records: list[int] = []
    details: list[dict[str, Any]] = []
    for order_key, new_items in effect.orders:
        rows = conn.execute(
            "SELECT id, json, status, study_uid, performed_study_uid, accession "
            "FROM worklist_items WHERE order_key=? ORDER BY id",
            (order_key,),
        ).fetchall()
        detail: dict[str, Any] = {"control": effect.control}
        if not rows:
            text = "unknown order: no worklist item for its placer/filler order number"
            if effect.unknown != "warn":
                raise ConflictError(text, hl7_location="ORC^1^2", hl7_code=204)
            detail["warning"] = text
        linked = any(status in _PERFORMED or performed for _, _, status, _, performed, _ in rows)
        detail["study_linked"] = linked
        stored = {_identity(json.loads(text)): (item_id, json.loads(text), study, performed, acc)
                  for item_id, text, _, study, performed, acc in rows}  # fmt: skip
        # per study in the PACS: (accession it knows, study UIDs, changed attributes); the
        # steps of one requested procedure share a study: one correction for it
        studies: dict[tuple[str, str, str], dict[str, str]] = {}
        if not effect.cancel:
            for new in new_items:
                found = stored.get(_identity(new))
                if found is None:
                    continue  # a new procedure of the order: nothing stored to correct
                _, old, study, performed, accession = found
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
        change_id = _record(conn, kind, journal_id, order_key=order_key, items=len(rows),
                            detail=detail)  # fmt: skip
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
    queued = _queue(conn, journal_id, effect.outbound if any_for_hl7 else (), jobs)
    for change_id, detail in zip(records, details, strict=True):
        detail["queued"] = queued
        _set_detail(conn, change_id, detail)
    merged: dict[str, Any] = {"queued": queued}
    warnings = [d["warning"] for d in details if "warning" in d]
    if warnings:
        merged["warning"] = "; ".join(warnings)
    pacs = [d["pacs"] for d in details if "pacs" in d]
    if pacs:
        merged["pacs"] = "; ".join(pacs)
    kind = "order.cancel" if effect.cancel else "order.update"
    return _summary(kind, merged, changes=records)


# -- the sweep and the history (broker reconcile …) --------------------------------------------

_CHUNK = 500  # well under SQLite's limit on bound variables


def sweep_items(
    conn: sqlite3.Connection, accessions: Sequence[str], study_uids: Sequence[str]
) -> list[OrderItem]:
    """Items holding one of the accessions or Study Instance UIDs (scheduled or performed)."""
    seen: dict[int, OrderItem] = {}
    queries = (
        ("accession", accessions),
        ("study_uid", study_uids),
        ("performed_study_uid", study_uids),
    )
    for column, values in queries:
        for i in range(0, len(values), _CHUNK):
            chunk = list(values[i : i + _CHUNK])
            rows = conn.execute(
                "SELECT id, json, study_uid, performed_study_uid FROM worklist_items "
                f"WHERE {column} IN ({','.join('?' * len(chunk))}) ORDER BY id DESC",
                chunk,
            )
            for item_id, text, study, performed in rows:
                if item_id not in seen:
                    uids = tuple(u for u in (study, performed) if u)
                    seen[item_id] = (item_id, json.loads(text), uids)
    return sorted(seen.values(), key=lambda it: -it[0])


#: Sweep fields an Orthanc study modify can correct → the keywords it sets.
_SWEEP_SET = {
    "name": ("PatientName",),
    "birth_date": ("PatientBirthDate",),
    "sex": ("PatientSex",),
    "accession": ("AccessionNumber",),
    "procedure": ("StudyDescription",),
}


def queue_sweep_corrections(
    conn: sqlite3.Connection, report: SweepReport, destination: str, dest_type: str | None
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
        change_id = _record(conn, "sweep", None, order_key=accession, items=1, detail=detail)
        payload = rc.job(
            "update_order",
            f"rc-{change_id}",
            accession=accession,
            study_uids=[study_uid],
            set_=set_,
        )
        r = apply_enqueue(
            conn,
            Enqueue(destination, payload, accession, content_type=rc.JOB_CONTENT_TYPE),
            0,
        )
        detail["queued"] = [{"destination": destination, "outbox_id": r["outbox_id"]}]
        _set_detail(conn, change_id, detail)
        report.applied.append({**base, "change": change_id, "outbox_id": r["outbox_id"],
                               "fields": detail["fields"]})  # fmt: skip


def purge_history(db: SqliteDatabase, days: int, *, now: _dt.datetime | None = None) -> int:
    """Delete change records older than ``days``; returns how many went."""
    cutoff = ((now or _dt.datetime.now(_dt.UTC)) - _dt.timedelta(days=days)).isoformat(
        timespec="seconds"
    )
    removed: int = db.write_sync(
        lambda conn: conn.execute("DELETE FROM reconcile_changes WHERE at < ?", (cutoff,)).rowcount
    )
    return removed


def history(
    conn: sqlite3.Connection, *, patient: str = "", order: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    """Recorded changes, newest first; ``patient`` matches the patient or the target."""
    sql = (
        "SELECT id, at, journal_id, kind, patient_id, issuer, target_id, target_issuer, "
        "order_key, items, detail FROM reconcile_changes"
    )
    args: list[Any] = []
    where: list[str] = []
    if patient:
        where.append("(patient_id = ? OR target_id = ?)")
        args += [patient, patient]
    if order:
        where.append("order_key = ?")
        args.append(order)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    keys = ("id", "at", "journal_id", "kind", "patient_id", "issuer", "target_id",
            "target_issuer", "order_key", "items", "detail")  # fmt: skip
    out = []
    for row in conn.execute(sql, args):
        d = dict(zip(keys, row, strict=True))
        d["detail"] = json.loads(d["detail"])
        out.append(d)
    return out


__all__ = [
    "RECONCILE_SCHEMA",
    "apply_order_change",
    "apply_patient_change",
    "history",
    "purge_history",
    "queue_sweep_corrections",
    "sweep_items",
]
