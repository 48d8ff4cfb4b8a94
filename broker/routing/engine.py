"""The route engine: match a message, run its route's actions, return a RouteDecision.

Pure (DESIGN §3, STYLE "decide in pure code"): no I/O, no clock; the same call serves
``broker serve`` and ``broker route``. A fault anywhere in a message's actions answers AE with
an ERR naming the HL7 location, and no effect at all is returned (never a half-written item).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from broker.effects import (
    Effect,
    Enqueue,
    OrderChange,
    Outbound,
    PatientChange,
    PatientRef,
    Publish,
    Skipped,
    WorklistStatusChange,
    WorklistUpsert,
)
from broker.hl7.charset import encode_text
from broker.ingest.decision import HL7Error, RouteDecision
from broker.mapping import DicomMapping, HL7Mapping, MappingFault, Scope, predicate
from broker.mapping.compiler import expr_getter, template_getter
from broker.reconcile import changes as rc
from broker.routing.loader import Definitions
from broker.routing.models import Action, PublishAction, ReconcileAction, Route

if TYPE_CHECKING:
    from broker.hl7.message import Message

log = logging.getLogger(__name__)

_ORC_1 = expr_getter("ORC-1")
_ORC_5 = expr_getter("ORC-5")
_MRG_1 = expr_getter("MRG-1.1")
_MRG_1_ISSUER = expr_getter("MRG-1.4.1")
#: Destination types that take HL7 v2 messages; ``orthanc`` takes reconciliation jobs,
#: ``bus`` takes events.
HL7_TYPES = frozenset({"mllp", "http"})
JOB_TYPES = frozenset({"orthanc"})
#: Destination types that take JSON events.
EVENT_TYPES = frozenset({"bus", "http"})
#: A result's fields for its result.received event (IHE RAD: OBR-18 accession, ZDS-1 study).
_RESULT_FIELDS = {
    "accession": expr_getter("OBR-18 | OBR-3.1"),
    "patient_id": expr_getter("PID-3.1"),
    "study_instance_uid": expr_getter("ZDS-1.1"),
    "procedure": expr_getter("OBR-4.2 | OBR-4.1"),
    "result_status": expr_getter("OBR-25"),
    "observation_time": expr_getter("OBR-7"),
}
#: ADT triggers a reconcile action understands (IHE PIR): update, merge, identifier change.
_PATIENT_KINDS = {"A08": "update", "A31": "update", "A40": "merge", "A47": "rename"}
#: ORC-1 order controls (HL7 table 0119) that change or end an order already scheduled.
_ORDER_CHANGE = frozenset({"XO", "SC"})
_ORDER_END = frozenset({"CA", "DC", "OC", "OD", "CR"})
_ACTIVE = frozenset({"SCHEDULED", "ARRIVED", "READY"})
_OP_STATUS = {
    "upsert": "SCHEDULED",
    "cancel": "CANCELED",
    "discontinue": "DISCONTINUED",
    "complete": "COMPLETED",
}

ActionResult = tuple[list[Effect], dict[str, Any]]
#: run(message, route scope) -> effects and description; the route scope (no overrides) lends
#: its already split segments to the mapping's step scopes
ActionFn = Callable[["Message", Scope], ActionResult]


#: the MSH values routes match on, as Message properties, read once per message
_HEADER_ATTRS = ("message_type", "trigger", "version", "sending_app", "sending_facility")


def _encoded(text: str, message: Message) -> bytes:
    """An outbound message in the inbound one's character set (MSH-18); UTF-8 when a
    mapped value cannot be written in it."""
    try:
        return encode_text(text, message.charset)
    except Exception:
        return text.encode("utf-8")


class _CompiledRoute:
    __slots__ = ("actions", "cont", "name", "sets", "tests")

    def __init__(self, route: Route, engine: RouteEngine) -> None:
        m = route.match
        self.name = route.name
        self.cont = route.continue_
        #: (index into the header values of _HEADER_ATTRS, allowed values)
        self.sets: list[tuple[int, frozenset[str]]] = []
        for i, values in enumerate(
            (m.message_type, m.trigger, m.version, m.sending_application, m.sending_facility)
        ):
            if values is not None:
                self.sets.append((i, frozenset(values)))
        self.tests = [predicate(p) for p in m.fields]
        self.actions = [engine._compile_action(a) for a in route.actions]

    def matches(self, header: list[str], scope: Scope) -> bool:
        """``header``: the message's values of _HEADER_ATTRS (see RouteEngine._header)."""
        for i, allowed in self.sets:
            if header[i] not in allowed:
                return False
        for test in self.tests:  # noqa: SIM110 - a loop, not all(<genexpr>): no generator
            if not test(scope):
                return False
        return True


class RouteEngine:
    """Implements :class:`broker.ingest.decision.Router` over a loaded :class:`Definitions`.

    ``destinations``: the destinations the config defines, name → type (a bare collection
    of names means HL7 destinations); a forward to any other name is recorded as Skipped
    (DESIGN §6a).
    """

    def __init__(
        self,
        definitions: Definitions,
        destinations: Mapping[str, str] | Collection[str] = (),
    ) -> None:
        self.definitions = definitions
        self.types: dict[str, str] = (
            dict(destinations)
            if isinstance(destinations, Mapping)
            else dict.fromkeys(destinations, "mllp")
        )
        self.destinations = frozenset(self.types)
        self._routes = [_CompiledRoute(r, self) for r in definitions.routes]
        #: which header values any route matches on (the others are never read)
        self._header_used = [
            any(i == j for r in self._routes for j, _ in r.sets) for i in range(len(_HEADER_ATTRS))
        ]

    def _header(self, message: Message) -> list[str]:
        return [
            str(getattr(message, a)) if used else ""
            for a, used in zip(_HEADER_ATTRS, self._header_used, strict=True)
        ]

    # -- the Router protocol ---------------------------------------------------------------

    def route(self, message: Message) -> RouteDecision:
        """Decide what ``message`` does; never raises for a bad message (answers AE/AR)."""
        matched: list[str] = []
        effects: list[Effect] = []
        actions: list[dict[str, Any]] = []
        scope = Scope(message)
        current = None
        try:
            header = self._header(message)
            for r in self._routes:
                current = r.name
                if not r.matches(header, scope):
                    continue
                matched.append(r.name)
                for run in r.actions:
                    eff, desc = run(message, scope)
                    desc["route"] = r.name
                    effects.extend(eff)
                    actions.append(desc)
                if not r.cont:
                    break
        except MappingFault as fault:
            actions.append(
                {
                    "route": current,
                    "action": "error",
                    "code": fault.code,
                    "location": fault.location,
                    "text": fault.text,
                }
            )
            return RouteDecision(
                route=current,
                ack_code="AE",
                errors=(HL7Error(fault.code, fault.location, fault.text),),
                actions=tuple(actions),
            )
        except Exception:  # a bug in a mapping must answer AE, not kill the listener
            log.exception("route %s failed on message type %s", current, message.message_type)
            text = f"internal error in route {current}"
            return RouteDecision(
                route=current,
                ack_code="AE",
                errors=(HL7Error(207, "", text),),
                actions=({"route": current, "action": "error", "code": 207, "text": text},),
            )
        if not matched:
            return self._unmatched(message)
        # An order change is judged against the order as stored: before this message's own
        # worklist effects replace it (the store applies effects in order, in one transaction).
        publishes = [e for e in effects if isinstance(e, Publish)]
        if publishes:  # the events need the diffs
            effects = [
                replace(e, report_changes=True) if isinstance(e, WorklistUpsert) else e
                for e in effects
                if not isinstance(e, Publish)
            ]
            # several matched routes may publish: one Publish, or each event would go twice
            effects.append(
                Publish(
                    tuple(dict.fromkeys(d for p in publishes for d in p.to)),
                    next((p.result for p in publishes if p.result is not None), None),
                    next((p.source for p in publishes if p.source is not None), None),
                )
            )
        # Events tell what the other effects did: they come last.
        effects.sort(key=lambda e: 0 if isinstance(e, OrderChange) else 2 if isinstance(
            e, Publish) else 1)  # fmt: skip
        return RouteDecision(
            route=",".join(matched), ack_code="AA", effects=tuple(effects), actions=tuple(actions)
        )

    def _unmatched(self, message: Message) -> RouteDecision:
        um = self.definitions.unmatched
        ack = um.ack
        code, loc = self._why_unmatched(message)
        if code != 207 and ack == "AE":
            ack = "AR"  # HL7 v2.5.1 §2.9.2: unsupported type/event/version is a reject
        errors = () if ack == "AA" else (HL7Error(code, loc, um.text),)
        return RouteDecision(
            route=None,
            ack_code=ack,
            errors=errors,
            actions=({"action": "unmatched", "ack": ack, "text": um.text},),
        )

    def _why_unmatched(self, message: Message) -> tuple[int, str]:
        """HL7 table 0357: 200 no route for the type, 201 for the event, 203 for the version."""
        routes = [r.match for r in self.definitions.routes]
        mt, tr, ver = message.message_type, message.trigger, message.version
        routes = [m for m in routes if m.message_type is None or mt in m.message_type]
        if not routes:
            return 200, "MSH^1^9^1"
        routes = [m for m in routes if m.trigger is None or tr in m.trigger]
        if not routes:
            return 201, "MSH^1^9^2"
        if not [m for m in routes if m.version is None or ver in m.version]:
            return 203, "MSH^1^12"
        return 207, ""

    # -- actions ---------------------------------------------------------------------------

    def _compile_action(self, action: Action) -> ActionFn:
        if action.worklist is not None:
            wl = action.worklist
            table = self.definitions.order_control[wl.order_control]
            mapping = self.definitions.mappings.get(wl.mapping or "")
            return self._worklist(
                wl.op,
                wl.order_control,
                table,
                mapping if isinstance(mapping, DicomMapping) else None,
            )
        if action.forward is not None:
            fw = action.forward
            hm = self.definitions.mappings[fw.mapping]
            assert isinstance(hm, HL7Mapping)
            return self._forward(fw.to, hm, template_getter(fw.ordering_key))
        if action.reconcile is not None:
            return self._reconcile(action.reconcile)
        if action.publish is not None:
            return self._publish(action.publish)
        assert action.drop is not None
        reason = action.drop.reason

        def drop(message: Message, scope: Scope) -> ActionResult:
            return ([Skipped("drop", reason)], {"action": "drop", "reason": reason})

        return drop

    def _worklist(
        self, op: str, table_name: str, table: dict[str, str], mapping: DicomMapping | None
    ) -> ActionFn:
        def status_of(scope: Scope) -> tuple[str, str]:
            if op != "auto":
                return _OP_STATUS[op], op
            orc1, orc5 = _ORC_1(scope), _ORC_5(scope)
            if not orc1:
                raise MappingFault(101, "ORC^1^1", "ORC-1 order control missing")
            status = table.get(f"{orc1}_{orc5}") or table.get(orc1)
            if status is None:
                raise MappingFault(
                    103,
                    "ORC^1^1",
                    f"order control {orc1}"
                    f"{'/' + orc5 if orc5 else ''} not in order-control table "
                    f"{table_name!r}",
                )
            return status, orc1 + (f"_{orc5}" if orc5 else "")

        def run(message: Message, route_scope: Scope) -> ActionResult:
            if mapping is None:
                raise MappingFault(207, "", "worklist action without a dicom mapping")
            scopes = mapping.scopes(message, None, route_scope)
            orders: dict[str, list[Scope]] = {}
            for s in scopes:
                orders.setdefault(s.vars["order_key"], []).append(s)
            effects: list[Effect] = []
            desc_orders: list[dict[str, Any]] = []
            warnings: list[str] = []
            for key, group in orders.items():
                status, control = status_of(group[0])
                if status in _ACTIVE:
                    items = []
                    for s in group:
                        s.vars["order_status"] = status
                        items.append(mapping.build(s, warnings))
                    effects.append(WorklistUpsert(key, tuple(items), group[0].vars["patient_key"]))
                    desc_orders.append(
                        {
                            "order_key": key,
                            "control": control,
                            "status": status,
                            "effect": "upsert",
                            "items": len(items),
                        }
                    )
                else:
                    effects.append(WorklistStatusChange(key, status, f"ORC-1 {control}"))
                    desc_orders.append(
                        {"order_key": key, "control": control, "status": status, "effect": "status"}
                    )
            desc: dict[str, Any] = {
                "action": "worklist",
                "mapping": mapping.name,
                "orders": desc_orders,
            }
            if warnings:
                desc["warnings"] = warnings
            return effects, desc

        return run

    def _forward(
        self, to: list[str], mapping: HL7Mapping, ordering: Callable[[Scope], str]
    ) -> ActionFn:
        def run(message: Message, route_scope: Scope) -> ActionResult:
            warnings: list[str] = []
            text = mapping.build(message, None, warnings)
            payload = _encoded(text, message)
            key = ordering(route_scope)
            effects: list[Effect] = []
            results: list[dict[str, Any]] = []
            for dest in to:
                reason = self._not_hl7(dest)
                if reason is None:
                    effects.append(Enqueue(dest, payload, key))
                    results.append({"destination": dest, "result": "queued"})
                else:
                    effects.append(Skipped(f"forward:{dest}", reason))
                    results.append({"destination": dest, "result": "skipped", "reason": reason})
            desc: dict[str, Any] = {
                "action": "forward",
                "mapping": mapping.name,
                "destinations": results,
            }
            if warnings:
                desc["warnings"] = warnings
            return effects, desc

        return run

    def _not_hl7(self, dest: str) -> str | None:
        """Why ``dest`` cannot take an HL7 message, or None when it can."""
        type_ = self.types.get(dest)
        if type_ is None:
            return f"destination {dest!r} is not configured"
        if type_ not in HL7_TYPES:
            return f"destination {dest!r} is of type {type_}: it takes no HL7 messages"
        return None

    def _reconcile(self, action: ReconcileAction) -> ActionFn:
        """Patient (ADT) and order (ORM/OMI) changes → PatientChange / OrderChange effects;
        what they do to stored items and which PACS updates follow is the store's call."""
        mappings = self.definitions.mappings
        hl7_map = mappings.get(action.mapping or "")
        demo_map = mappings.get(action.demographics or "")
        items_map = mappings.get(action.items or "")
        ordering = template_getter(action.ordering_key)

        def targets(
            results: list[dict[str, Any]], effects: list[Effect]
        ) -> tuple[list[str], list[str]]:
            hl7: list[str] = []
            jobs: list[str] = []
            for dest in action.to:
                type_ = self.types.get(dest)
                if type_ in HL7_TYPES:
                    hl7.append(dest)
                elif type_ in JOB_TYPES:
                    jobs.append(dest)
                else:
                    reason = (
                        f"destination {dest!r} is not configured"
                        if type_ is None
                        else f"destination {dest!r} is of type {type_}: it takes no "
                        "reconciliation updates"
                    )
                    effects.append(Skipped(f"reconcile:{dest}", reason))
                    results.append({"destination": dest, "result": "skipped", "reason": reason})
            return hl7, jobs

        def outbound(
            message: Message, hl7: list[str], key: str, warnings: list[str]
        ) -> tuple[Outbound, ...]:
            if not hl7:
                return ()
            if not isinstance(hl7_map, HL7Mapping):
                raise MappingFault(
                    207,
                    "",
                    f"reconcile action sends to {', '.join(hl7)} (HL7) but names no hl7 "
                    "mapping (key mapping:); broker check reports it",
                )
            payload = _encoded(hl7_map.build(message, None, warnings), message)
            return tuple(Outbound(d, payload, key) for d in hl7)

        def run(message: Message, route_scope: Scope) -> ActionResult:
            effects: list[Effect] = []
            results: list[dict[str, Any]] = []
            warnings: list[str] = []
            desc: dict[str, Any] = {"action": "reconcile", "to": results}
            mt, trigger = message.message_type, message.trigger
            if mt == "ADT" and trigger in _PATIENT_KINDS:
                kind = _PATIENT_KINDS[trigger]
                change = self._patient_change(message, route_scope, kind, demo_map, warnings)
                hl7, jobs = targets(results, effects)
                key = ordering(route_scope)
                effects.insert(
                    0,
                    replace(
                        change,
                        outbound=outbound(message, hl7, key, warnings),
                        jobs_to=tuple(jobs),
                        unknown=action.unknown,
                        ordering_key=key,
                    ),
                )
                desc["patient"] = kind
            elif mt in ("ORM", "OMI") and _ORC_1(route_scope) in (_ORDER_CHANGE | _ORDER_END):
                control = _ORC_1(route_scope)
                if not isinstance(items_map, DicomMapping):
                    raise MappingFault(
                        207,
                        "",
                        "reconcile action of an order message needs items: (a dicom mapping)",
                    )
                orders: dict[str, list[dict[str, Any]]] = {}
                for s in items_map.scopes(message, None, route_scope):
                    s.vars["order_status"] = "SCHEDULED"
                    orders.setdefault(s.vars["order_key"], []).append(items_map.build(s, warnings))
                hl7, jobs = targets(results, effects)
                key = ordering(route_scope)
                effects.insert(
                    0,
                    OrderChange(
                        control,
                        tuple((k, tuple(v)) for k, v in orders.items()),
                        outbound(message, hl7, key, warnings),
                        tuple(jobs),
                        action.unknown,
                        action.studies,
                        control in _ORDER_END,
                        key,
                    ),
                )
                desc["order"] = control
                desc["orders"] = list(orders)
            else:
                reason = f"{mt}^{trigger} changes no patient and no scheduled order"
                if mt in ("ORM", "OMI"):
                    reason = f"ORC-1 {_ORC_1(route_scope) or '(empty)'} changes no scheduled order"
                effects.append(Skipped("reconcile", reason))
                desc["result"] = "skipped"
                desc["reason"] = reason
                return effects, desc
            for dest in action.to:
                if all(r["destination"] != dest for r in results):
                    results.append({"destination": dest, "result": "prepared"})
            if warnings:
                desc["warnings"] = warnings
            return effects, desc

        return run

    def _patient_change(
        self, message: Message, scope: Scope, kind: str, mapping: object, warnings: list[str]
    ) -> PatientChange:
        """The patient, the target (merge/rename) and the demographics of an ADT message."""
        if not isinstance(mapping, DicomMapping):
            raise MappingFault(
                207, "", "reconcile action of an ADT message needs demographics: (a dicom mapping)"
            )
        dataset = rc.patient_attributes(mapping.build(scope, warnings))
        pid = rc.patient_of(dataset)
        if not pid.patient_id:
            raise MappingFault(101, "PID^1^3", "PID-3 patient identifier missing")
        if kind == "update":
            return PatientChange(kind, pid, dataset)
        if not message.segments("MRG"):
            raise MappingFault(
                100,
                "MRG",
                f"ADT^{message.trigger} without an MRG segment: no prior patient to "
                f"{'merge' if kind == 'merge' else 'rename'}",
            )
        prior = PatientRef(_MRG_1(scope), _MRG_1_ISSUER(scope))
        if not prior.patient_id:
            raise MappingFault(101, "MRG^1^1", "MRG-1 prior patient identifier missing")
        if prior.patient_id == pid.patient_id and (
            prior.issuer == pid.issuer or not prior.issuer or not pid.issuer
        ):
            raise MappingFault(
                207, "MRG^1^1", "MRG-1 names the patient of PID-3: nothing to merge or rename"
            )
        return PatientChange(kind, prior, dataset, pid, hl7_location="MRG^1^1")

    def _publish(self, action: PublishAction) -> ActionFn:
        """A Publish effect for the event destinations; what events it makes depends on what
        the message's other effects apply, so the store builds them."""

        def run(message: Message, route_scope: Scope) -> ActionResult:
            effects: list[Effect] = []
            results: list[dict[str, Any]] = []
            to: list[str] = []
            for dest in action.to:
                type_ = self.types.get(dest)
                if type_ in EVENT_TYPES:
                    to.append(dest)
                    results.append({"destination": dest, "result": "prepared"})
                    continue
                reason = (
                    f"destination {dest!r} is not configured"
                    if type_ is None
                    else f"destination {dest!r} is of type {type_}: it takes no events"
                )
                effects.append(Skipped(f"publish:{dest}", reason))
                results.append({"destination": dest, "result": "skipped", "reason": reason})
            if to:
                result = None
                if message.message_type == "ORU":
                    result = {k: get(route_scope) for k, get in _RESULT_FIELDS.items()}
                source = message.text if action.include_message else None
                effects.append(Publish(tuple(to), result, source))
            return effects, {"action": "publish", "to": results}

        return run
