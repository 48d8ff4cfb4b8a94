"""Compiled mappings: :class:`DicomMapping` (HL7 order → MWL items) and :class:`HL7Mapping`.

``compile_mapping(model, base_dir)`` is called once per load; the objects it returns hold only
closures and are safe to share between threads (they keep no per-message state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from broker.mapping.codegen import Build, Generated, generate_build
from broker.mapping.compiler import (
    CompileError,
    Getter,
    MappingFault,
    Op,
    _Ctx,
    _value_op,
    compile_dicom_attr,
    expr_getter,
    make_ctx,
    template_getter,
)
from broker.mapping.hl7out import OutMessage
from broker.mapping.models import MappingFile
from broker.mapping.paths import ExpressionError, parse_expression, parse_path
from broker.mapping.scope import Scope, step_scopes

if TYPE_CHECKING:
    from broker.hl7.message import Message


@dataclass
class MappedItems:
    """What a DICOM mapping made of one message: per step its scope, keys and item."""

    scopes: list[Scope]
    items: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class DicomMapping:
    """HL7 → DICOM JSON worklist items; one item per ``each`` segment (or one per message)."""

    kind = "dicom"

    def __init__(self, model: MappingFile, ctx: _Ctx) -> None:
        self.name = model.name
        self.model = model
        self.each = model.each
        self.split = model.split
        self._number = expr_getter(model.order_number)
        self._number_loc = _first_location(model.order_number)
        self._order_key = template_getter(model.order_key)
        self._patient_key = template_getter(model.patient_key)
        self._ops: list[Op] = [
            op
            for k, spec in model.attributes.items()
            if (op := compile_dicom_attr(k, spec, ctx, ("attributes", k))) is not None
        ]
        #: the generated builder (broker/mapping/codegen.py); the closures stay the reference
        self._generated: Generated | None = None
        if not ctx.problems:  # with problems compile_mapping raises: nothing to generate
            self._generated = generate_build(model, ctx, self.build_reference)
        self._build: Build = (
            self._generated.build if self._generated is not None else self.build_reference
        )

    def scopes(
        self,
        message: Message,
        variables: dict[str, str] | None = None,
        shared: Scope | None = None,
    ) -> list[Scope]:
        """One scope per step with ``$order_number``, ``$order_key``, ``$patient_key``,
        ``$step_index`` set. Raises MappingFault (101) when there is no step or no order number.

        ``shared``: a scope of the same message without overrides (the route's): a step that
        overrides no segment reads the same segments, so it shares the fields already split."""
        base = dict(variables or {})
        if self.each is None:
            overrides: list[dict[str, Any]] = [{}]
        else:
            overrides = step_scopes(message, self.each, self.split)
            if not overrides:
                raise MappingFault(
                    101, f"{self.each}^1", f"no {self.each} segment: nothing to schedule"
                )
        out: list[Scope] = []
        for i, segs in enumerate(overrides, 1):
            scope = Scope(message, segs, dict(base))
            if not segs and shared is not None and not shared.segs and shared.message is message:
                scope.segfields = shared.segfields  # the same segments: Scope.plain is pure
            number = self._number(scope)
            if not number:
                raise MappingFault(
                    101, self._number_loc, f"order number missing ({self.model.order_number})"
                )
            v = scope.vars
            v["order_number"] = number
            v["step_index"] = str(i)
            v["order_key"] = self._order_key(scope)
            v["patient_key"] = self._patient_key(scope)
            out.append(scope)
        return out

    def build(self, scope: Scope, warnings: list[str]) -> dict[str, Any]:
        """The DICOM JSON item of one step; raises MappingFault."""
        return self._build(scope, warnings)

    def build_reference(self, scope: Scope, warnings: list[str]) -> dict[str, Any]:
        """:meth:`build` with the closures (the reference the generated builder is held to)."""
        item: dict[str, Any] = {}
        for op in self._ops:
            op(scope, item, warnings)
        return item

    def map(self, message: Message, variables: dict[str, str] | None = None) -> MappedItems:
        """All steps of ``message`` mapped (used by tests and dry runs)."""
        scopes = self.scopes(message, variables)
        res = MappedItems(scopes)
        for s in scopes:
            res.items.append(self.build(s, res.warnings))
        return res


class HL7Mapping:
    """HL7 → HL7: copy segments of the input, then set output paths."""

    kind = "hl7"

    def __init__(self, model: MappingFile, ctx: _Ctx) -> None:
        self.name = model.name
        self.model = model
        copy = model.copy_segments or []
        self._copy_all = "*" in copy
        self._copy = frozenset(copy)
        self._sets: list[tuple[Any, Any, bool]] = []
        for k, spec in model.attributes.items():
            loc = ("attributes", k)
            try:
                out_path = parse_path(k)
            except ExpressionError as exc:
                ctx.problems.append((loc, str(exc)))
                continue
            if not out_path.field:
                ctx.problems.append((loc, f"found {k!r}, expected an output path like ORC-1"))
                continue
            compiled = _value_op(k, spec, ctx, loc)
            if compiled is not None:
                self._sets.append((out_path, compiled[0], spec.raw))
        self.each = model.each
        self.split = model.split
        sel = model.select
        self._select: tuple[Getter, Getter] | None = (
            None if sel is None else (template_getter(sel.key), template_getter(sel.equals))
        )

    def build(
        self,
        message: Message,
        variables: dict[str, str] | None = None,
        warnings: list[str] | None = None,
    ) -> str:
        """The outbound message text (CR-separated); raises MappingFault.

        With ``each``, the message is about one step (``select``, else ``$step_index``, else
        the first): paths read that step's segments and ``copy`` takes, for every segment
        name, only the occurrence the step's scope resolves to."""
        out = OutMessage(message.separators)
        if self.each is None:
            scope = Scope(message, {}, dict(variables or {}))
            wanted: dict[str, int | None] | None = None
        else:
            scope = self._step(message, dict(variables or {}))
            wanted = {}
        counts: dict[str, int] = {}
        for seg_text in message.text.split("\r"):
            if not seg_text or seg_text.isspace():
                continue
            name = seg_text[:3]
            if name != "MSH" and not (self._copy_all or name in self._copy):
                continue
            if wanted is not None and name != "MSH":
                n = counts[name] = counts.get(name, 0) + 1
                if name not in wanted:
                    wanted[name] = _occurrence(message, scope, name)
                if wanted[name] != n:
                    continue
            out.add_raw(seg_text)
        w = warnings if warnings is not None else []
        for path, value, raw in self._sets:
            out.set(path, value(scope, w), raw)
        return out.text()

    def _step(self, message: Message, variables: dict[str, str]) -> Scope:
        assert self.each is not None
        overrides = step_scopes(message, self.each, self.split)
        if not overrides:
            raise MappingFault(101, f"{self.each}^1", f"no {self.each} segment")
        scopes = []
        for i, segs in enumerate(overrides, 1):
            scope = Scope(message, segs, dict(variables))
            scope.vars["step_index"] = str(i)
            scopes.append(scope)
        if self._select is None:
            try:
                index = int(variables.get("step_index") or 1)
            except ValueError:
                index = 1
            return scopes[min(max(index, 1), len(scopes)) - 1]
        key, equals = self._select
        for scope in scopes:
            found = key(scope)
            if found and found == equals(scope):
                return scope
        raise MappingFault(
            204, f"{self.each}^1", f"no {self.each} step matches the mapping's select"
        )


def _occurrence(message: Message, scope: Scope, name: str) -> int | None:
    """Which occurrence of ``name`` the step ``scope`` resolves to (None: absent there)."""
    if name not in scope.segs:
        return 1
    seg = scope.segs[name]
    if seg is None:
        return None
    for n, other in enumerate(message.segments(name), 1):
        if other.text == seg.text:
            return n
    return None


Mapping = DicomMapping | HL7Mapping


def _first_location(expr: str) -> str:
    for t in parse_expression(expr):
        if hasattr(t, "location"):
            return str(t.location())
    return ""


def generated_source(mapping: Mapping) -> str:
    """The source of a DICOM mapping's generated builder ("" for HL7 mappings), for debugging."""
    if isinstance(mapping, DicomMapping) and mapping._generated is not None:
        return mapping._generated.source
    return ""


def compile_mapping(model: MappingFile, base_dir: FsPath | None = None) -> Mapping:
    """Compile a validated model; raises CompileError listing every wrong reference."""
    ctx = make_ctx(model, base_dir)
    mapping: Mapping = DicomMapping(model, ctx) if model.kind == "dicom" else HL7Mapping(model, ctx)
    if ctx.problems:
        raise CompileError(ctx.problems)
    return mapping


__all__ = [
    "CompileError",
    "DicomMapping",
    "Getter",
    "HL7Mapping",
    "MappedItems",
    "Mapping",
    "MappingFault",
    "compile_mapping",
    "generated_source",
]
