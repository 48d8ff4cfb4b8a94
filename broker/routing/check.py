"""``broker check`` and ``broker route``: validate everything, run mapping tests, dry-run.

Mapping tests (``mappings/tests/*.yaml``) hold a list of cases: an input message file
(relative to the test file), optionally one mapping to run (else the whole route set), and
the expected output: DICOM attributes by keyword or tag per item, HL7 fields of the outbound
message, the ACK code, the status change, or the errors.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.effects import (
    Enqueue,
    OrderChange,
    Outbound,
    PatientChange,
    Publish,
    Skipped,
    WorklistStatusChange,
    WorklistUpsert,
)
from broker.hl7.charset import decode_frame
from broker.hl7.message import Message
from broker.ingest.decision import Router
from broker.mapping import DicomMapping, MappingFault, parse_path
from broker.mapping.vr import UnknownKeyword, resolve_attribute
from broker.routing.engine import EVENT_TYPES, HL7_TYPES, JOB_TYPES, RouteEngine
from broker.routing.loader import Definitions, load_all
from broker.routing.yamlsource import line_of, load_model
from broker.worklist.status_message import check_order_status


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ack: str | None = None
    route: str | None = None
    items: list[dict[str, Any]] | None = Field(None, description="expected attributes per item")
    status: str | None = Field(None, description="expected WorklistStatusChange status")
    hl7: dict[str, str] | None = Field(None, description="expected fields of the first outbound")
    errors: list[dict[str, Any]] | None = Field(None, description="[{code, location}]")
    reconcile: list[str] | None = Field(
        None,
        description="expected reconciliation effects: patient.update, patient.merge, "
        "patient.rename, order.update, order.cancel",
    )
    skipped: list[str] | None = Field(None, description="expected Skipped actions")


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    message: str = Field(description="HL7 file, relative to the test file")
    mapping: str | None = Field(None, description="run only this mapping (else the routes)")
    variables: dict[str, str] = Field(default_factory=dict)
    expect: Expect


class TestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tests: list[Case]


@dataclass
class CheckReport:
    """What ``broker check`` prints; ``ok`` is False when there is any error."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tests_run: int = 0
    tests_failed: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


#: Which destination types each action can send to (routing/engine.py's rules).
_ACCEPTS = {
    "forward": HL7_TYPES,
    "reconcile": HL7_TYPES | JOB_TYPES,
    "publish": EVENT_TYPES,
}


def read_message(path: Path) -> Message:
    """Read an HL7 file, decoding it by its MSH-18."""
    return Message.parse(decode_frame(path.read_bytes()).text)


def check(
    routes_dir: Path | str,
    mappings_dir: Path | str,
    destinations: Mapping[str, str] | Collection[str] = (),
) -> CheckReport:
    """Load and cross-check all files, run the mapping tests; never raises for bad files.

    ``destinations``: name → type (or bare names): an action sending to a destination whose
    type cannot take it (a forward to a bus, a publish to an mllp peer) is a warning."""
    report = CheckReport()
    defs, errors = load_all(Path(routes_dir), Path(mappings_dir))
    report.errors.extend(errors)
    if defs is None:
        return report
    dests = set(destinations)
    types: dict[str, str] = dict(destinations) if isinstance(destinations, Mapping) else {}
    for route in defs.routes:
        path = defs.route_files.get(route.name)
        for action in route.actions:
            names = (
                action.forward.to
                if action.forward is not None
                else action.reconcile.to
                if action.reconcile is not None
                else action.publish.to
                if action.publish is not None
                else []
            )
            accepts = _ACCEPTS.get(action.kind, frozenset())
            for d in names:
                where = f"{path}:{defs.route_lines.get(route.name, 1)}: route {route.name!r}"
                if d not in dests:
                    report.warnings.append(
                        f"{where}: destination {d!r} is not configured; the {action.kind} "
                        "action will be skipped (DESIGN §6a)"
                    )
                elif types.get(d, "mllp") not in accepts:
                    report.warnings.append(
                        f"{where}: destination {d!r} is of type {types[d]}, which a "
                        f"{action.kind} action cannot send to (expected a type of "
                        f"{', '.join(sorted(accepts))}); nothing will be sent there"
                    )
                elif (
                    action.reconcile is not None
                    and action.reconcile.mapping is None
                    and types.get(d, "mllp") in HL7_TYPES
                ):
                    # otherwise every message of the route would be answered AE at run time
                    report.errors.append(
                        f"{where}: reconcile.mapping: found nothing, expected an hl7 mapping "
                        f"building the message for destination {d!r} (type {types.get(d, 'mllp')})"
                    )
    # Mapping tests run as the embedded default does (no destinations), so their expected
    # Skipped/Enqueue effects do not depend on the config they are checked against.
    status_errors, status_warnings = check_order_status(dests, defs.mappings)
    report.errors.extend(status_errors)
    report.warnings.extend(status_warnings)
    engine = RouteEngine(defs, ())
    tests_dir = Path(mappings_dir) / "tests"
    if tests_dir.is_dir():
        for tf in sorted(tests_dir.glob("*.y*ml")):
            _run_test_file(tf, defs, engine, report)
    return report


def _run_test_file(path: Path, defs: Definitions, engine: RouteEngine, report: CheckReport) -> None:
    model, tree, errs = load_model(path, TestFile)
    report.errors.extend(errs)
    if model is None:
        return
    for i, case in enumerate(model.tests):
        where = f"{path}:{line_of(tree, ['tests', i])}: test {case.name!r}"
        report.tests_run += 1
        try:
            problems = run_case(path.parent, case, defs, engine)
        except Exception as exc:  # a broken case is a failure, not a crash of check
            problems = [f"raised {type(exc).__name__}: {exc}"]
        if problems:
            report.tests_failed += 1
            report.errors.append(where + " failed:\n" + "\n".join("    " + p for p in problems))


def run_case(base: Path, case: Case, defs: Definitions, engine: RouteEngine) -> list[str]:
    """Run one case; returns readable differences (empty when it passed)."""
    msg = read_message(base / case.message)
    exp = case.expect
    problems: list[str] = []
    items: list[dict[str, Any]] = []
    outbound: list[str] = []
    errors: list[dict[str, Any]] = []
    ack = "AA"
    route: str | None = None
    statuses: list[str] = []
    skipped: list[str] = []
    reconciles: list[str] = []
    if case.mapping is not None:
        m = defs.mappings.get(case.mapping)
        if m is None:
            return [f"mapping {case.mapping!r} does not exist"]
        try:
            if isinstance(m, DicomMapping):
                res = m.map(msg, {"order_status": "SCHEDULED", **case.variables})
                items = res.items
            else:
                outbound.append(m.build(msg, case.variables))
        except MappingFault as f:
            ack, errors = "AE", [{"code": f.code, "location": f.location, "text": f.text}]
    else:
        d = engine.route(msg)
        ack, route = d.ack_code, d.route
        errors = [{"code": e.code, "location": e.location, "text": e.text} for e in d.errors]
        for eff in d.effects:
            if isinstance(eff, WorklistUpsert):
                items.extend(eff.items)
            elif isinstance(eff, WorklistStatusChange):
                statuses.append(eff.status)
            elif isinstance(eff, Enqueue):
                outbound.append(eff.payload.decode("utf-8", "replace"))
            elif isinstance(eff, Skipped):
                skipped.append(eff.action)
            elif isinstance(eff, PatientChange):
                reconciles.append(f"patient.{eff.kind}")
            elif isinstance(eff, OrderChange):
                reconciles.append("order.cancel" if eff.cancel else "order.update")
    if exp.ack is not None and exp.ack != ack:
        problems.append(f"ack: expected {exp.ack}, got {ack} {errors}")
    if exp.route is not None and exp.route != route:
        problems.append(f"route: expected {exp.route!r}, got {route!r}")
    if exp.status is not None and exp.status not in statuses:
        problems.append(f"status: expected {exp.status}, got {statuses or 'no status change'}")
    if exp.skipped is not None and sorted(exp.skipped) != sorted(skipped):
        problems.append(f"skipped: expected {exp.skipped}, got {skipped}")
    if exp.reconcile is not None and sorted(exp.reconcile) != sorted(reconciles):
        problems.append(f"reconcile: expected {exp.reconcile}, got {reconciles}")
    if exp.errors is not None:
        for want in exp.errors:
            if not any(all(str(e.get(k)) == str(v) for k, v in want.items()) for e in errors):
                problems.append(f"errors: expected one with {want}, got {errors}")
    if exp.items is not None:
        if len(exp.items) != len(items):
            problems.append(f"items: expected {len(exp.items)}, got {len(items)}")
        for n, (want, got) in enumerate(zip(exp.items, items, strict=False)):
            problems.extend(compare_attributes(want, got, f"item[{n}]"))
    if exp.hl7 is not None:
        if not outbound:
            problems.append("hl7: expected an outbound message, got none")
        else:
            out = Message.parse(outbound[0])
            for p, want_v in exp.hl7.items():
                got_v = out.get(p)
                if got_v != want_v:
                    problems.append(f"{p}: expected {want_v!r}, got {got_v!r}")
    return problems


def _plain(element: dict[str, Any]) -> Any:
    """DICOM JSON element → comparable plain value (str, list, or list of dicts)."""
    values = element.get("Value")
    if values is None:
        return ""
    if element.get("vr") == "SQ":
        return values
    flat = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in values]
    return flat[0] if len(flat) == 1 else "\\".join(flat)


def compare_attributes(want: dict[str, Any], got: dict[str, Any], where: str) -> list[str]:
    """Differences between expected attributes (keyword or tag → value, nested dicts for
    sequence items) and a DICOM JSON dataset, one readable line each."""
    out: list[str] = []
    for key, exp_v in want.items():
        try:
            tag, keyword, _ = resolve_attribute(str(key))
        except UnknownKeyword:
            out.append(f"{where}.{key}: not a DICOM keyword or tag")
            continue
        element = got.get(tag)
        label = f"{where}.{keyword}"
        if element is None:
            out.append(f"{label}: expected {exp_v!r}, attribute absent")
            continue
        if isinstance(exp_v, dict | list):
            seq = element.get("Value") or []
            wants = exp_v if isinstance(exp_v, list) else [exp_v]
            if len(seq) < len(wants):
                out.append(f"{label}: expected {len(wants)} item(s), got {len(seq)}")
            for i, (w, g) in enumerate(zip(wants, seq, strict=False)):
                out.extend(compare_attributes(w, g, f"{label}[{i}]"))
            continue
        got_v = _plain(element)
        if str(exp_v if exp_v is not None else "") != got_v:
            out.append(f"{label}: expected {exp_v!r}, got {got_v!r}")
    return out


def _reconcile_out(outbound: tuple[Outbound, ...], jobs_to: tuple[str, ...]) -> dict[str, Any]:
    """The PACS side of a reconciliation effect: prepared HL7 messages (queued if the store
    finds the change concerns the PACS) and REST destinations (job built by the store)."""
    return {
        "messages": [
            {
                "destination": o.destination,
                "ordering_key": o.ordering_key,
                "message": o.payload.decode("utf-8", "replace").replace("\r", "\n"),
            }
            for o in outbound
        ],
        "jobs_to": list(jobs_to),
    }


def dry_run(router: Router, message: Message) -> dict[str, Any]:
    """What ``broker route`` prints: JSON-able, changes nothing."""
    d = router.route(message)
    effects: list[dict[str, Any]] = []
    for eff in d.effects:
        if isinstance(eff, WorklistUpsert):
            effects.append(
                {
                    "effect": "worklist_upsert",
                    "order_key": eff.order_key,
                    "patient_key": eff.patient_key,
                    "items": list(eff.items),
                }
            )
        elif isinstance(eff, WorklistStatusChange):
            effects.append(
                {
                    "effect": "worklist_status",
                    "order_key": eff.order_key,
                    "status": eff.status,
                    "reason": eff.reason,
                }
            )
        elif isinstance(eff, Enqueue):
            effects.append(
                {
                    "effect": "enqueue",
                    "destination": eff.destination,
                    "ordering_key": eff.ordering_key,
                    "message": eff.payload.decode("utf-8", "replace").replace("\r", "\n"),
                }
            )
        elif isinstance(eff, PatientChange):
            effects.append(
                {
                    "effect": f"patient_{eff.kind}",
                    "patient": asdict(eff.patient),
                    "target": asdict(eff.target) if eff.target else None,
                    "demographics": eff.demographics,
                    "unknown": eff.unknown,
                    **_reconcile_out(eff.outbound, eff.jobs_to),
                }
            )
        elif isinstance(eff, OrderChange):
            effects.append(
                {
                    "effect": "order_cancel" if eff.cancel else "order_change",
                    "control": eff.control,
                    "orders": [{"order_key": k, "items": list(v)} for k, v in eff.orders],
                    "studies": eff.studies,
                    "unknown": eff.unknown,
                    **_reconcile_out(eff.outbound, eff.jobs_to),
                }
            )
        elif isinstance(eff, Publish):
            effects.append(
                {
                    "effect": "publish",
                    "to": list(eff.to),
                    "result": eff.result,
                    "include_message": eff.source is not None,
                }
            )
        else:
            effects.append({"effect": "skipped", "action": eff.action, "reason": eff.reason})
    out = {
        "message": {
            "type": message.message_type,
            "trigger": message.trigger,
            "version": message.version,
            "control_id": message.control_id,
        },
        "route": d.route,
        "ack": d.ack_code,
        "errors": [
            {"code": e.code, "location": e.location, "text": e.text, "severity": e.severity}
            for e in d.errors
        ],
        "actions": list(d.actions),
        "effects": effects,
    }
    json.dumps(out)  # fail here, not in the CLI, if something is not JSON-able
    return out


__all__ = ["CheckReport", "check", "compare_attributes", "dry_run", "parse_path", "read_message"]
