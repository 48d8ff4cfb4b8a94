"""Generate one Python function per DICOM mapping: the item builder without per-attribute calls.

The closure compiler (:mod:`broker.mapping.compiler`) stays the reference: this module emits the
source of ``build(scope, warnings) -> item`` that gives exactly what ``DicomMapping`` built from
closures gives (items, warnings, faults), which ``tests/mapping/test_codegen.py`` checks on
fuzzed messages. The generated function

- loads each segment it reads once (``Scope.plain``) and, when any of them is not plain
  (escapes, subcomponents, HL7 nulls), hands the whole item to the reference builder;
- reads every field it needs once into a local, then each value expression once (fallbacks,
  lookups, templates, names as ``a or b`` on locals);
- checks the usual value with the VR rule's quick test inline and builds the element dicts as
  literals; anything else (conversion faults, defaults, generated UIDs, required values, values
  the quick test does not accept) goes through the reference rule for that attribute.

Safety: no text from a mapping file is ever pasted into the source. Strings (segment names,
tags, VRs, constants, table names and columns, template literals), tables and closures are
passed in through the function's globals under names generated here (``K3``, ``T0``, ``G2``);
the only other things in the source are identifiers generated here, a few fixed literals
("vr", "Value", "Alphabetic", "SQ", "^") and integers checked to be ``int`` (field and
component numbers, VR length limits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.mapping import convert as cv
from broker.mapping.compiler import (
    _NO_ROW,
    _QUICK_CS,
    _QUICK_PN,
    _QUICK_TEXT,
    Op,
    _compile_value,
    _Ctx,
    _fixed_constant,
    _quick_kind,
    _term_fn,
    _Value,
    compile_dicom_attr,
    path_getter,
)
from broker.mapping.models import Attribute, Lookup, MappingFile, Source
from broker.mapping.paths import Constant, HL7Path, Term, Variable, parse_expression, parse_path
from broker.mapping.scope import SLOW, Scope
from broker.mapping.template import parse_template
from broker.mapping.vr import (
    _DA_OK,
    _DT_OK,
    _TM_OK,
    _UI_OK,
    MAX_LENGTH,
    resolve_attribute,
    to_json_value,
)

Build = Callable[[Scope, list[str]], dict[str, Any]]
#: tail(scope, value, warnings) -> element or None (omitted): the reference rule of one attribute
Tail = Callable[[Scope, str, list[str]], "dict[str, Any] | None"]

_DATE_PATTERNS = {"DA": _DA_OK, "TM": _TM_OK, "DT": _DT_OK, "UI": _UI_OK}


def _int(n: object) -> str:
    """An integer for the source text; anything else is refused (see the module docstring)."""
    if type(n) is not int:
        raise TypeError(f"found {type(n).__name__}, expected int in generated source")
    return str(n)


def _tail(val: _Value, tag: str, omit: bool) -> Tail:
    """``attr_op`` of the reference compiler from its value on: the slow half of an attribute."""
    vr = val.vr
    simple = vr not in ("PN", "IS", "DS")
    has_default = val.default is not None
    plain_empty = not has_default and not val.gen_uid and not val.required
    empty, finish = val.empty, val.finish

    def tail(scope: Scope, v: str, warnings: list[str]) -> dict[str, Any] | None:
        if not v:
            if plain_empty:
                return None if omit else {"vr": vr}
            v = empty(scope)
            if not v:
                if has_default:  # a default, even "", still meets the VR rule
                    v = finish(scope, v, warnings)
                if not v:
                    return None if omit else {"vr": vr}
        # (the reference's quick checks accept only values finish() keeps unchanged)
        v = finish(scope, v, warnings)
        if v:
            if simple and "\\" not in v:
                return {"vr": vr, "Value": [v]}
            return {"vr": vr, "Value": to_json_value(vr, v)}
        return None if omit else {"vr": vr}

    return tail


@dataclass
class _Level:
    """One dict being built (the item, or a sequence item): (tag name, element local, may be
    None) or a reference op name, in attribute order."""

    parts: list[tuple[str, str, bool] | str] = field(default_factory=list)


class _Gen:
    def __init__(self, model: MappingFile, ctx: _Ctx) -> None:
        self.model = model
        self.ctx = ctx
        self.env: dict[str, Any] = {
            "__builtins__": {"len": len},
            "SLOWF": SLOW[0],
            "NO_ROW": _NO_ROW,
            "VALID": cv._valid_digits,
        }
        self.consts: dict[tuple[type, object], str] = {}  # interned constants by value
        self.n = 0
        self.seg_lines: list[str] = []
        self.segs: dict[str, str] = {}  # segment name -> suffix of its f/r/c locals
        self.read_lines: list[str] = []
        self.fields: dict[tuple[str, int], str] = {}
        self.splits: dict[tuple[str, int], str] = {}
        self.comps: dict[tuple[str, int, int], str] = {}
        self.exprs: dict[str, str] = {}  # hoisted value expressions, by their source text
        self.valid: dict[str, str] = {}  # VALID(expr local), by expr local
        self.body: list[str] = []

    # -- names ---------------------------------------------------------------------------------

    def new(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: object) -> str:
        """A global name holding ``value`` (a mapping string, table or closure)."""
        key = (type(value), value if isinstance(value, str) else id(value))
        name = self.consts.get(key)
        if name is None:
            name = self.consts[key] = self.new("K")
            self.env[name] = value
        return name

    def hoist(self, expr: str, prefix: str = "v") -> str:
        """A local computed once, before the attributes (reads and lookups are pure)."""
        name = self.exprs.get(expr)
        if name is None:
            name = self.exprs[expr] = self.new(prefix)
            self.read_lines.append(f"{name} = {expr}")
        return name

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def inlinable(p: HL7Path) -> bool:
        """Paths the generated code reads itself (the shapes of compiler._fast_getter)."""
        return (
            p.occurrence is None
            and p.field > 0
            and p.repetition == 1
            and (p.subcomponent is None or p.subcomponent <= 1)
            and not (p.segment == "MSH" and p.field <= 2)
        )

    def seg(self, name: str) -> str:
        s = self.segs.get(name)
        if s is None:
            s = self.segs[name] = str(len(self.segs))
            self.seg_lines.append(
                f"f{s}, r{s}, c{s} = sf.get({self.const(name)}) or plain({self.const(name)})"
            )
        return s

    def field_local(self, name: str, f: int) -> str:
        key = (name, f)
        x = self.fields.get(key)
        if x is None:
            s = self.seg(name)
            x = self.fields[key] = self.new("x")
            fi = _int(f)
            self.read_lines.append(f'{x} = f{s}[{fi}] if len(f{s}) > {fi} else ""')
            self.read_lines.append(f"if r{s} in {x}: {x} = {x}[:{x}.find(r{s})]")
        return x

    def comp_local(self, name: str, f: int, c: int) -> str:
        key = (name, f, c)
        z = self.comps.get(key)
        if z is None:
            x = self.field_local(name, f)
            y = self.splits.get((name, f))
            if y is None:
                y = self.splits[(name, f)] = self.new("y")
                self.read_lines.append(f"{y} = {x}.split(c{self.seg(name)})")
            z = self.comps[key] = self.new("z")
            ci = _int(c - 1)
            if c == 1:
                self.read_lines.append(f"{z} = {y}[0]")
            else:
                self.read_lines.append(f'{z} = {y}[{ci}] if len({y}) > {ci} else ""')
        return z

    def read(self, p: HL7Path) -> str:
        if p.component is None:
            return self.field_local(p.segment, p.field)
        return self.comp_local(p.segment, p.field, p.component)

    def call(self, getter: Callable[[Scope], str]) -> str:
        return f"{self.const(getter)}(scope)"

    def term(self, t: Term, convert: str, spec: Attribute | None) -> str:
        """An expression for one term, read as compiler._term_fn(spec) reads it."""
        if isinstance(t, Constant):
            return self.const(t.value)
        if isinstance(t, Variable):
            return f'vs.get({self.const(t.name)}, "")'
        if convert in ("pn", "xcn") and spec is not None:
            return self.name_term(t, spec)
        if convert in ("da", "tm", "dt") and t.component is None and t.field:
            t = HL7Path(t.segment, t.occurrence, t.field, t.repetition, 1, None)
        if self.inlinable(t):
            return self.read(t)
        return self.call(path_getter(t))

    def name_term(self, t: HL7Path, spec: Attribute) -> str:
        if t.component is not None:
            return self.term(t, "none", None)
        whole = HL7Path(t.segment, t.occurrence, t.field, t.repetition or 1)
        if not self.inlinable(whole):
            return self.call(_term_fn(spec)(t))
        comps = tuple(spec.components or (cv.XPN_TO_PN if spec.convert == "pn" else cv.XCN_TO_PN))
        x = self.field_local(t.segment, t.field)
        parts = ' + "^" + '.join(self.comp_local(t.segment, t.field, c) for c in comps)
        return self.hoist(f'({parts}).rstrip("^") if {x} else ""', "n")

    def first_of(self, exprs: list[str]) -> str:
        if not exprs:
            return '""'
        if len(exprs) == 1:
            e = exprs[0]
            return e if e.isidentifier() or e == '""' else self.hoist(e)
        return self.hoist(" or ".join(exprs))

    def expr(self, text: str, convert: str = "none", spec: Attribute | None = None) -> str:
        return self.first_of([self.term(t, convert, spec) for t in parse_expression(text)])

    def lookup(self, lk: Lookup) -> str:
        table = self.ctx.tables.get(lk.table)
        if table is None:
            return '""'
        key = self.expr(lk.key)
        row = self.hoist(f"{self.const(table)}.get({key}) or NO_ROW", "row")
        return self.hoist(f'{row}.get({self.const(lk.column)}, "")')

    def template(self, text: str) -> str:
        head = ""
        pairs: list[tuple[str, str]] = []
        for part in parse_template(text):
            if isinstance(part, str):
                if pairs:
                    pairs[-1] = (pairs[-1][0], pairs[-1][1] + part)
                else:
                    head += part
            else:
                pairs.append((self.first_of([self.term(t, "none", None) for t in part]), ""))
        if not pairs:
            return '""'
        pieces = [self.const(head)] if head else []
        for v, lit in pairs:
            pieces.append(v)
            if lit:
                pieces.append(self.const(lit))
        filled = " or ".join(v for v, _ in pairs)
        return self.hoist(f'{" + ".join(pieces)} if ({filled}) else ""', "t")

    def sources(self, spec: Attribute | Source, attr: Attribute) -> list[str]:
        """compiler._source_getters, as expressions."""
        out: list[str] = []
        if spec.from_ is not None:
            out += [self.term(t, attr.convert, attr) for t in parse_expression(spec.from_)]
        if spec.lookup is not None:
            out.append(self.lookup(spec.lookup))
        if spec.template is not None:
            out.append(self.template(spec.template))
        if spec.value is not None:
            out.append(self.const(spec.value))
        if isinstance(spec, Attribute) and spec.first is not None:
            for src in spec.first:
                out += self.sources(src, attr)
        return out

    # -- attributes ----------------------------------------------------------------------------

    def level(self, attrs: dict[str, Attribute], loc: tuple[str | int, ...], ind: str) -> str:
        """Emit the code of one dict of attributes; returns the local holding the dict."""
        lv = _Level()
        for k, spec in attrs.items():
            self.attribute(k, spec, (*loc, k), lv, ind)
        d = self.new("d")
        if all(isinstance(p, tuple) and not p[2] for p in lv.parts):
            items = ", ".join(f"{p[0]}: {p[1]}" for p in lv.parts if isinstance(p, tuple))
            self.body.append(f"{ind}{d} = {{{items}}}")
            return d
        self.body.append(f"{ind}{d} = {{}}")
        for p in lv.parts:
            if isinstance(p, str):
                self.body.append(f"{ind}{p}(scope, {d}, warnings)")
            elif p[2]:
                self.body.append(f"{ind}if {p[1]} is not None: {d}[{p[0]}] = {p[1]}")
            else:
                self.body.append(f"{ind}{d}[{p[0]}] = {p[1]}")
        return d

    def attribute(
        self, name: str, spec: Attribute, loc: tuple[str | int, ...], lv: _Level, ind: str
    ) -> None:
        b = self.body
        if spec.when is not None:  # conditions: the reference op, called in place
            op: Op | None = compile_dicom_attr(name, spec, self.ctx, loc)
            if op is not None:
                lv.parts.append(self.const(op))
            return
        if spec.items is not None:
            tag = resolve_attribute(name)[0]
            sub = self.level(spec.items, (*loc, "items"), ind)
            e = self.new("e")
            b.append(f"{ind}for w in {sub}.values():")
            b.append(f'{ind}    if "Value" in w:')
            b.append(f'{ind}        {e} = {{"vr": "SQ", "Value": [{sub}]}}')
            b.append(f"{ind}        break")
            b.append(f"{ind}else:")
            b.append(f"{ind}    {e} = " + ("None" if spec.omit_empty else '{"vr": "SQ"}'))
            lv.parts.append((self.const(tag), e, spec.omit_empty))
            return
        val = _compile_value(name, spec, self.ctx, loc)
        if val is None:
            return
        tag = resolve_attribute(name)[0]
        K, VR = self.const(tag), self.const(val.vr)
        e = self.new("e")
        omit = spec.omit_empty
        vr = val.vr
        if val.const and vr not in ("PN", "IS", "DS"):
            fixed = _fixed_constant(val)
            if fixed:
                b.append(f'{ind}{e} = {{"vr": {VR}, "Value": [{self.const(fixed)}]}}')
                lv.parts.append((K, e, False))
                return
        v = self.first_of(self.sources(spec, spec) + self.policy_sources(spec, val))
        tail = self.const(_tail(val, tag, omit))
        empty_el = "None" if omit else f'{{"vr": {VR}}}'
        plain_empty = val.default is None and not val.gen_uid and not val.required
        if v == '""':  # no source at all: always the empty value
            b.append(f"{ind}{e} = {empty_el if plain_empty else f'{tail}(scope, {v}, warnings)'}")
            lv.parts.append((K, e, omit))
            return
        b.append(f"{ind}if {v}:")
        ok = self.quick(v, spec, val, ind + "    ", e, VR, empty_el)
        if ok:
            b.append(f"{ind}    else:")
            b.append(f"{ind}        {e} = {tail}(scope, {v}, warnings)")
        else:
            b.append(f"{ind}    {e} = {tail}(scope, {v}, warnings)")
        b.append(f"{ind}else:")
        b.append(f"{ind}    {e} = {empty_el if plain_empty else f'{tail}(scope, {v}, warnings)'}")
        lv.parts.append((K, e, omit))  # None only when omitted: the tail returns None only then

    def policy_sources(self, spec: Attribute, val: _Value) -> list[str]:
        """The MSH-7 fallback compiler._compile_value adds for the start date/time policy."""
        keyword = val.label
        start = keyword in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime")
        if start and self.model.policies.missing_start_time == "message_time":
            return [self.term(parse_path("MSH-7"), spec.convert, spec)]
        return []

    def quick(
        self, v: str, spec: Attribute, val: _Value, ind: str, e: str, VR: str, empty_el: str
    ) -> bool:
        """Emit ``if <quick test>: e = <element>``; False when there is no quick test."""
        b = self.body
        vr = val.vr
        limit = _int(MAX_LENGTH.get(vr, 2**31))
        conv = spec.convert if val.conv is not None else "none"
        kind = _quick_kind(vr)
        src = v
        if conv == "da":
            if vr != "DA":
                return False
            b.append(f"{ind}if len({v}) >= 8 and {self.valid_of(v)}:")
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [{v}[:8]]}}')
            return True
        if conv == "tm":
            if vr != "TM":
                return False
            b.append(f"{ind}if len({v}) > 8 and {self.valid_of(v)}:")
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [{v}[8:]]}}')
            return True
        if conv == "sex":
            if vr != "CS":
                return False
            table = self.const(spec.table if spec.table is not None else cv.SEX_CODES)
            b.append(f"{ind}w = {table}.get({v}.strip().upper())")
            b.append(f'{ind}if w == "":')
            b.append(f"{ind}    {e} = {empty_el}")
            b.append(
                f"{ind}elif w is not None and len(u := w.upper()) <= {limit} "
                "and u.isascii() and u.isalnum():"
            )
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [u]}}')
            return True
        if conv == "upper":
            if kind not in (_QUICK_TEXT, _QUICK_CS):
                return False
            b.append(f"{ind}w = {v}.upper()")
            src = "w"
        elif conv != "none":
            return False
        if kind == _QUICK_TEXT:
            b.append(
                f'{ind}if len({src}) <= {limit} and "\\\\" not in {src} and {src}.isprintable():'
            )
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [{src}]}}')
            return True
        if kind == _QUICK_CS:
            b.append(f"{ind}u = {src}.upper()")
            b.append(f"{ind}if len(u) <= {limit} and u.isascii() and u.isalnum():")
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [u]}}')
            return True
        if kind == _QUICK_PN:
            b.append(
                f'{ind}if len({src}) <= {limit} and "=" not in {src} and "\\\\" not in {src} '
                f"and {src}.isprintable():"
            )
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [{{"Alphabetic": {src}}}]}}')
            return True
        pattern = _DATE_PATTERNS.get(vr)
        if pattern is not None and conv == "none":
            # the rule's own regex (UI also its length): the same verdict, inline
            test = f"{self.const(pattern.match)}({v})"
            if vr == "UI":
                test = f"len({v}) <= 64 and {test}"
            b.append(f"{ind}if {test}:")
            b.append(f'{ind}    {e} = {{"vr": {VR}, "Value": [{v}]}}')
            return True
        return False

    def valid_of(self, v: str) -> str:
        """VALID(v) once per value: DA and TM of one timestamp share it."""
        name = self.valid.get(v)
        if name is None:
            name = self.valid[v] = self.new("ok")
            self.read_lines.append(f"{name} = VALID({v})")
        return name


@dataclass
class Generated:
    """The generated builder and its source (for ``generated_source``)."""

    build: Build
    source: str
    env: dict[str, Any]


def generate_build(model: MappingFile, ctx: _Ctx, reference: Build) -> Generated:
    """Generate, compile and return the item builder of a (problem-free) DICOM mapping."""
    g = _Gen(model, ctx)
    g.env["REF"] = reference
    top = g.level(model.attributes, ("attributes",), "    ")
    slow = " or ".join(f"f{s} is SLOWF" for s in g.segs.values()) or "False"
    lines = [
        "# generated by broker.mapping.codegen (names only: every value is in the globals)",
        "def build(scope, warnings):",
        "    sf = scope.segfields",
        "    plain = scope.plain",
        "    vs = scope.vars",
        *("    " + line for line in g.seg_lines),
        f"    if {slow}:",
        "        return REF(scope, warnings)",
        *("    " + line for line in g.read_lines),
        *g.body,
        f"    return {top}",
    ]
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<mapping {id(model):x}>", "exec")
    env = g.env
    exec(code, env)  # our own source text: see the module docstring
    fn: Build = env["build"]
    return Generated(fn, source, env)


__all__ = ["Build", "Generated", "generate_build"]
