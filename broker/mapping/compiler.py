"""Compile a validated mapping model once into plain closures over precompiled paths.

Nothing here walks the YAML model per message: every attribute becomes one closure that reads
its paths with ``Message.get`` (precompiled :class:`broker.hl7.message.Path`), converts, checks
its VR and writes one DICOM JSON element. Faults carry an HL7 table 0357 code and an ERR
location (``OBR^1^27^4``) and never a patient value.
"""

from __future__ import annotations

import csv
import hashlib
import operator
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from broker.hl7.message import compile_path
from broker.mapping import convert as cv
from broker.mapping.models import Attribute, Lookup, MappingFile, Predicate, Source
from broker.mapping.paths import (
    Constant,
    HL7Path,
    Term,
    Variable,
    format_expression,
    parse_expression,
    parse_path,
)
from broker.mapping.scope import SLOW, Scope
from broker.mapping.template import parse_template
from broker.mapping.vr import (
    MAX_LENGTH,
    UnknownKeyword,
    VRFault,
    make_fixer,
    resolve_attribute,
    to_json_value,
)

Getter = Callable[[Scope], str]
Loc = tuple[str | int, ...]
#: op(scope, out, warnings): sets one output element in ``out``
Op = Callable[[Scope, dict[str, Any], list[str]], None]


class MappingFault(Exception):
    """A message cannot be mapped: ``code`` (HL7 table 0357), ``location`` (ERL), ``text``."""

    def __init__(self, code: int, location: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.location = location
        self.text = text


class CompileError(Exception):
    """References in a mapping are wrong; ``problems`` lists (model location, message)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(m for _, m in problems))
        self.problems = problems


_NAMESPACE = uuid.UUID("6f1c0b8e-3d5e-5a8c-9b0a-2f7d1e4c9a10")


def stable_uid(key: str, root: str | None = None) -> str:
    """A UID that depends only on ``key``: ``2.25.<uuid5 as integer>`` (PS3.5 B.2) or
    ``root.<decimal of a SHA-256 prefix>`` fitting in 64 characters (PS3.5 §9.1)."""
    if root is None:
        return "2.25." + str(uuid.uuid5(_NAMESPACE, key).int)
    digits = 64 - len(root) - 1
    n = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big") % (10 ** min(digits, 38))
    return f"{root}.{n or 1}"


# ----------------------------------------------------------------------------------------------
# Getters: one closure per term


def path_getter(p: HL7Path) -> Getter:
    """Read ``p`` in a scope; the HL7 null ``""`` reads as empty."""
    name, f, r = p.segment, p.field, p.repetition
    c, s = p.component, p.subcomponent
    if f == 0:

        def seg_exists(scope: Scope) -> str:
            return name if scope.has_segment(name) else ""

        return seg_exists
    mp = compile_path(str(p))
    if p.occurrence is not None:

        def explicit(scope: Scope) -> str:
            v = scope.message.get(mp)
            return "" if v == '""' else v

        return explicit
    if r == 0:

        def every(scope: Scope) -> str:
            segs = scope.segs
            if name in segs:
                seg = segs[name]
                if seg is None:
                    return ""
                raw = seg.raw_field(f)
                n = raw.count(scope.message.separators.repetition) + 1 if raw else 0
                vals = [seg.get(f, i, c, s) for i in range(1, n + 1)]
            else:
                vals = scope.message.get_all(mp)
            return "\\".join(v for v in vals if v and v != '""')

        return every

    def slow(scope: Scope) -> str:
        # escapes, HL7 nulls, MSH: the accessor's own reading
        segs = scope.segs
        if segs and name in segs:
            seg = segs[name]
            v = "" if seg is None else seg.get(f, r, c, s)
        else:
            v = scope.message.get(mp)
        return "" if v == '""' else v

    if name == "MSH" and f <= 2:
        return slow  # the delimiters themselves, returned as written
    return _fast_getter(name, f, r, c, s, slow)


def _fast_getter(name: str, f: int, r: int, c: int | None, s: int | None, slow: Getter) -> Getter:
    """A getter specialised by path shape that reads a plain segment (``Scope.plain``) by
    index, with the result ``Message.get`` gives there; ``slow`` reads any other segment."""
    if r != 1 or (s is not None and s > 1):
        return _general_getter(name, f, r, c, s, slow)
    if c is None:

        def field(scope: Scope) -> str:
            fl, rs, _cs = scope.segfields.get(name) or scope.plain(name)
            if fl is SLOW[0]:
                return slow(scope)
            if f >= len(fl):
                return ""
            v = fl[f]
            i = v.find(rs)
            return v if i < 0 else v[:i]

        return field
    if c == 1:

        def first_component(scope: Scope) -> str:
            fl, rs, cs = scope.segfields.get(name) or scope.plain(name)
            if fl is SLOW[0]:
                return slow(scope)
            if f >= len(fl):
                return ""
            v = fl[f]
            i = v.find(rs)
            if i >= 0:
                v = v[:i]
            i = v.find(cs)
            return v if i < 0 else v[:i]

        return first_component
    ci = c - 1

    def component(scope: Scope) -> str:
        fl, rs, cs = scope.segfields.get(name) or scope.plain(name)
        if fl is SLOW[0]:
            return slow(scope)
        if f >= len(fl):
            return ""
        v = fl[f]
        i = v.find(rs)
        if i >= 0:
            v = v[:i]
        parts = v.split(cs, ci + 1)
        return parts[ci] if ci < len(parts) else ""

    return component


def _general_getter(
    name: str, f: int, r: int, c: int | None, s: int | None, slow: Getter
) -> Getter:
    """Any repetition, any subcomponent: a plain segment holds no subcomponent separator, so a
    subcomponent above 1 is empty there (as ``Message.get`` finds it)."""

    def general(scope: Scope) -> str:
        fl, rs, cs = scope.segfields.get(name) or scope.plain(name)
        if fl is SLOW[0]:
            return slow(scope)
        if f >= len(fl):
            return ""
        reps = fl[f].split(rs)
        if r > len(reps):
            return ""
        v = reps[r - 1]
        if c is not None:
            comps = v.split(cs)
            if c > len(comps):
                return ""
            v = comps[c - 1]
            if s is not None and s > 1:
                return ""
        return v

    return general


def _const(value: str) -> Getter:
    def const(scope: Scope) -> str:
        return value

    return const


def _var(name: str) -> Getter:
    def var(scope: Scope) -> str:
        return scope.vars.get(name, "")

    return var


def term_getter(t: Term) -> Getter:
    if isinstance(t, Constant):
        return _const(t.value)
    if isinstance(t, Variable):
        return _var(t.name)
    return path_getter(t)


def first_of(getters: list[Getter]) -> Getter:
    """The first non-empty value of ``getters`` (specialised for one and two)."""
    if len(getters) == 1:
        return getters[0]
    if len(getters) == 2:
        a, b = getters

        def either(scope: Scope) -> str:
            return a(scope) or b(scope)

        return either

    def first(scope: Scope) -> str:
        for g in getters:
            v = g(scope)
            if v:
                return v
        return ""

    return first


def expr_getter(text: str) -> Getter:
    return first_of([term_getter(t) for t in parse_expression(text)])


def template_getter(text: str) -> Getter:
    head = ""
    pairs: list[tuple[Getter, str]] = []  # (placeholder, literal after it)
    for part in parse_template(text):
        if isinstance(part, str):
            if pairs:
                pairs[-1] = (pairs[-1][0], pairs[-1][1] + part)
            else:
                head += part
        else:
            pairs.append((first_of([term_getter(t) for t in part]), ""))
    if not pairs:
        return _const("")  # no placeholder: never filled

    def render(scope: Scope) -> str:
        out = head
        filled = False
        for g, lit in pairs:
            v = g(scope)
            if v:
                filled = True
                out += v
            out += lit
        return out if filled else ""

    return render


def predicate(pred: Predicate) -> Callable[[Scope], bool]:
    """Compile a predicate to ``test(scope) -> bool``."""
    p = pred.path.strip()
    g = path_getter(HL7Path(p) if len(p) == 3 else parse_path(p))
    if pred.exists is not None:
        want = pred.exists
        return lambda scope: bool(g(scope)) is want
    if pred.equals is not None:
        eq = pred.equals
        return lambda scope: g(scope) == eq
    if pred.not_equals is not None:
        ne = pred.not_equals
        return lambda scope: g(scope) != ne
    if pred.in_ is not None:
        allowed = frozenset(pred.in_)
        return lambda scope: g(scope) in allowed
    assert pred.regex is not None
    rx = re.compile(pred.regex)
    return lambda scope: rx.search(g(scope)) is not None


# ----------------------------------------------------------------------------------------------
# Compilation context


@dataclass
class _Ctx:
    model: MappingFile
    tables: dict[str, dict[str, dict[str, str]]]
    problems: list[tuple[Loc, str]]
    uid_key: Getter
    kind: str


def load_tables(
    model: MappingFile, base: FsPath | None, problems: list[tuple[Loc, str]]
) -> dict[str, dict[str, dict[str, str]]]:
    """Read inline and CSV tables into ``{key: {column: value}}``."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for name, spec in model.tables.items():
        rows: dict[str, dict[str, str]] = {}
        if spec.inline is not None:
            for k, v in spec.inline.items():
                rows[str(k)] = {"value": v} if isinstance(v, str) else {**v}
        else:
            assert spec.csv is not None
            path = (base / spec.csv) if base is not None else FsPath(spec.csv)
            try:
                with path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    if reader.fieldnames is None or spec.key not in reader.fieldnames:
                        problems.append(
                            (
                                ("tables", name, "key"),
                                f"found columns {reader.fieldnames}, expected a "
                                f"column {spec.key!r} in {spec.csv}",
                            )
                        )
                        continue
                    for row in reader:
                        key = (row.get(spec.key) or "").strip()
                        rows[key] = {c: (v or "").strip() for c, v in row.items() if c}
                        rows[key].setdefault(
                            "value", next((v for c, v in rows[key].items() if c != spec.key), "")
                        )
            except OSError as exc:
                problems.append(
                    (
                        ("tables", name, "csv"),
                        f"found no readable file {spec.csv!r} ({exc.strerror}), "
                        "expected a CSV file relative to the mapping",
                    )
                )
                continue
        out[name] = rows
    return out


_NO_ROW: dict[str, str] = {}


def _lookup_getter(lk: Lookup, ctx: _Ctx, loc: Loc) -> Getter:
    table = ctx.tables.get(lk.table)
    if table is None:
        if lk.table not in ctx.model.tables:
            ctx.problems.append(
                (
                    (*loc, "table"),
                    f"found {lk.table!r}, expected one of the tables {sorted(ctx.model.tables)}",
                )
            )
        return _const("")
    key = expr_getter(lk.key)
    col = lk.column
    if any(isinstance(t, Variable) for t in parse_expression(lk.key)):

        def lookup(scope: Scope) -> str:
            row = table.get(key(scope))
            return "" if row is None else row.get(col, "")

        return lookup
    # The row is read once per scope and kept: a mapping takes several columns of one row.
    row_key = f"{lk.table}\0{format_expression(parse_expression(lk.key))}"

    def lookup_row(scope: Scope) -> str:
        rows = scope.rows
        row = rows.get(row_key)
        if row is None:
            row = rows[row_key] = table.get(key(scope)) or _NO_ROW
        return row.get(col, "")

    return lookup_row


def _source_getters(
    spec: Attribute | Source, ctx: _Ctx, loc: Loc, term_fn: Callable[[Term], Getter]
) -> list[tuple[Getter, str]]:
    """(getter, HL7 path text for fault locations) for each alternative of an attribute."""
    out: list[tuple[Getter, str]] = []
    if spec.from_ is not None:
        for t in parse_expression(spec.from_):
            out.append((term_fn(t), str(t) if isinstance(t, HL7Path) else ""))
    if spec.lookup is not None:
        out.append((_lookup_getter(spec.lookup, ctx, (*loc, "lookup")), ""))
    if spec.template is not None:
        out.append((template_getter(spec.template), ""))
    if spec.value is not None:
        out.append((_const(spec.value), ""))
    if isinstance(spec, Attribute) and spec.first is not None:
        for i, src in enumerate(spec.first):
            out.extend(_source_getters(src, ctx, (*loc, "first", i), term_fn))
    return out


def _erl(path_text: str) -> str:
    if not path_text:
        return ""
    try:
        return parse_path(path_text).location()
    except ValueError:
        return ""


def _name_getter(t: Term, comps: tuple[int, ...]) -> Getter:
    """XPN/XCN → PN: read each component of the field (subcomponent 1) in PN order."""
    if not isinstance(t, HL7Path) or t.component is not None:
        return term_getter(t)
    getters = [
        path_getter(HL7Path(t.segment, t.occurrence, t.field, t.repetition or 1, c, 1))
        for c in comps
    ]
    whole = path_getter(HL7Path(t.segment, t.occurrence, t.field, t.repetition or 1))
    idx = [c - 1 for c in comps]
    top = max(idx) + 1
    pick = operator.itemgetter(*idx)
    one = len(idx) == 1

    def pn(scope: Scope) -> str:
        # One read of the field, split here; per-component reads only when escapes need
        # resolving (Message.get returns a field holding separators raw, escapes unresolved).
        raw = whole(scope)
        if not raw:
            return ""
        _fs, cs, _rs, esc, ss = scope.message.separators
        if esc in raw:
            return cv.components_to_pn([g(scope) for g in getters])
        parts = raw.split(cs)
        if len(parts) < top:
            parts += [""] * (top - len(parts))
        if ss in raw:
            parts = [p.split(ss, 1)[0] for p in parts]
        if one:
            return str(pick(parts)).rstrip("^")
        return "^".join(pick(parts)).rstrip("^")

    return pn


def _value_converter(spec: Attribute, ctx: _Ctx) -> Callable[[str], str] | None:
    tz = ctx.model.timezone
    if spec.convert in ("da", "tm", "dt"):
        to = {"da": cv.to_da, "tm": cv.to_tm, "dt": cv.to_dt}[spec.convert]
        return to if tz is None else (lambda v: to(v, tz))
    if spec.convert == "sex":
        table = spec.table
        return lambda v: cv.to_sex(v, table)
    if spec.convert == "upper":
        return str.upper
    return None


def _term_fn(spec: Attribute) -> Callable[[Term], Getter]:
    if spec.convert in ("pn", "xcn"):
        comps = tuple(spec.components or (cv.XPN_TO_PN if spec.convert == "pn" else cv.XCN_TO_PN))
        return lambda t: _name_getter(t, comps)
    if spec.convert in ("da", "tm", "dt"):

        def ts_term(t: Term) -> Getter:
            if isinstance(t, HL7Path) and t.component is None and t.field:
                t = HL7Path(t.segment, t.occurrence, t.field, t.repetition, 1, None)
            return term_getter(t)

        return ts_term
    return term_getter


# ----------------------------------------------------------------------------------------------
# Attribute ops


@dataclass
class _Value:
    """The value side of one attribute, compiled: sources, fallbacks, conversion, VR rule."""

    label: str  # the keyword (or output path): faults and warnings name it, never a value
    vr: str
    getters: list[Getter]
    where: list[str]  # per getter, the HL7 path text it reads ("" for constants, lookups)
    conv: Callable[[str], str] | None
    default: str | None
    required: bool
    gen_uid: bool
    uid_key: Getter
    uid_root: str | None
    fixer: Callable[[str], tuple[str, str]] | None
    const: str | None  # the value when the only source is a constant

    def get(self) -> Getter:
        """The first non-empty source value."""
        return first_of(self.getters) if self.getters else _const("")

    def missing(self) -> MappingFault:
        where = " | ".join(w for w in self.where if w) or "no source"
        return MappingFault(
            101, self.first_loc(), f"{self.label}: required value missing ({where})"
        )

    def first_loc(self) -> str:
        return _erl(next((w for w in self.where if w), ""))

    def empty(self, scope: Scope) -> str:
        """The value when every source is empty: default, generated UID, "" or a fault."""
        if self.default is not None:
            return self.default
        if self.gen_uid:
            return stable_uid(self.uid_key(scope), self.uid_root)
        if self.required:
            raise self.missing()
        return ""

    def finish(self, scope: Scope, v: str, warnings: list[str]) -> str:
        """Convert and apply the VR rule to a non-empty value; faults name the source used."""
        try:
            if self.conv is not None:
                v = self.conv(v)
            if self.fixer is not None:
                v, w = self.fixer(v)
                if w:
                    warnings.append(w)
        except (cv.ConvertFault, VRFault) as exc:
            raise self._fault(scope, exc) from None
        return v

    def _fault(self, scope: Scope, exc: Exception) -> MappingFault:
        getters = self.getters
        i = 0
        if len(getters) != 1:  # which alternative gave the value (re-read: off the hot path)
            i = next((k for k, g in enumerate(getters) if g(scope)), len(getters))
        src = self.where[i] if i < len(self.where) else ""
        text = str(exc)
        if not text.startswith(self.label):
            text = f"{self.label}: {text}"
        return MappingFault(102, _erl(src) or self.first_loc(), text + (f" ({src})" if src else ""))


def _compile_value(name: str, spec: Attribute, ctx: _Ctx, loc: Loc) -> _Value | None:
    if ctx.kind == "dicom":
        try:
            _tag, keyword, vr = resolve_attribute(name)
        except UnknownKeyword:
            ctx.problems.append(
                (loc, f"found {name!r}, expected a DICOM keyword (PS3.6) or an 8-digit tag")
            )
            return None
    else:
        keyword, vr = name, ""
    sources = _source_getters(spec, ctx, loc, _term_fn(spec))
    start_field = keyword in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime")
    if start_field and ctx.model.policies.missing_start_time == "message_time":
        sources.append((_term_fn(spec)(parse_path("MSH-7")), "MSH-7"))
    required = spec.required or (start_field and ctx.model.policies.missing_start_time == "refuse")
    gen_uid = spec.generate_uid and ctx.model.policies.missing_study_uid == "generate"
    if spec.generate_uid and not gen_uid:
        required = True
    if gen_uid and vr != "UI":
        ctx.problems.append(
            (
                (*loc, "generate_uid"),
                f"found generate_uid on {keyword} ({vr}), expected it only on UI attributes",
            )
        )
    fixer = make_fixer(vr, spec.vr_policy or ctx.model.policies.vr, keyword) if vr else None
    const = None
    if len(sources) == 1 and spec.lookup is None and spec.template is None and not spec.first:
        if spec.from_ is None:
            const = spec.value
        elif spec.value is None:
            (term,) = parse_expression(spec.from_)
            const = term.value if isinstance(term, Constant) else None
    return _Value(
        keyword,
        vr,
        [g for g, _ in sources],
        [w for _, w in sources],
        _value_converter(spec, ctx),
        spec.default,
        required,
        gen_uid,
        ctx.uid_key,
        ctx.model.uid_root,
        fixer,
        const,
    )


def _value_op(
    name: str, spec: Attribute, ctx: _Ctx, loc: Loc
) -> tuple[Callable[[Scope, list[str]], str], str] | None:
    """Compile the value side of an attribute: ``value(scope, warnings) -> str`` and its VR."""
    val = _compile_value(name, spec, ctx, loc)
    if val is None:
        return None
    get, empty, finish = val.get(), val.empty, val.finish
    has_default = val.default is not None

    def value(scope: Scope, warnings: list[str]) -> str:
        v = get(scope)
        if not v:
            v = empty(scope)
            if not v and not has_default:  # a default, even "", still meets the VR rule
                return ""
        return finish(scope, v, warnings)

    return value, val.vr


# Fast VR checks in the DICOM op; each accepts only values the VR rule (vr.make_fixer) keeps
# unchanged with no warning, anything else goes through the rule itself.
_QUICK_NONE, _QUICK_TEXT, _QUICK_CS, _QUICK_PN = 0, 1, 2, 3


def _quick_kind(vr: str) -> int:
    if vr == "CS":
        return _QUICK_CS  # upper-cased ASCII letters and digits
    if vr == "PN":
        return _QUICK_PN  # one component group, printable, at most 64
    if vr in ("UI", "DA", "TM", "DT", "IS", "DS"):
        return _QUICK_NONE  # a format to check (or a number to convert in the JSON)
    # printable and no backslash: no match for either control-character class of vr.py
    return _QUICK_TEXT


def compile_dicom_attr(name: str, spec: Attribute, ctx: _Ctx, loc: Loc) -> Op | None:
    if spec.items is not None:
        try:
            tag, keyword, vr = resolve_attribute(name)
        except UnknownKeyword:
            ctx.problems.append((loc, f"found {name!r}, expected a DICOM keyword (PS3.6)"))
            return None
        if vr != "SQ":
            ctx.problems.append(
                (
                    (*loc, "items"),
                    f"found items on {keyword} ({vr}), expected them only on SQ attributes",
                )
            )
            return None
        sub = [
            op
            for k, s in spec.items.items()
            if (op := compile_dicom_attr(k, s, ctx, (*loc, "items", k))) is not None
        ]
        omit = spec.omit_empty
        when = predicate(spec.when) if spec.when is not None else None

        def seq_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
            if when is not None and not when(scope):
                return
            item: dict[str, Any] = {}
            for op in sub:
                op(scope, item, warnings)
            for e in item.values():
                if "Value" in e:
                    out[tag] = {"vr": "SQ", "Value": [item]}
                    return
            if not omit:
                out[tag] = {"vr": "SQ"}

        return seq_op
    val = _compile_value(name, spec, ctx, loc)
    if val is None:
        return None
    vr = val.vr
    tag = resolve_attribute(name)[0]
    omit = spec.omit_empty
    when = predicate(spec.when) if spec.when is not None else None
    simple = vr not in ("PN", "IS", "DS")
    get, empty, finish = val.get(), val.empty, val.finish
    # no default, UID or required check: an empty value is just written empty (or omitted)
    has_default = val.default is not None
    plain_empty = not has_default and not val.gen_uid and not val.required
    quick = _quick_kind(vr) if val.conv is None else _QUICK_NONE
    limit = MAX_LENGTH.get(vr, 2**31)

    if when is None and val.const and vr not in ("PN", "IS", "DS"):
        fixed = _fixed_constant(val)
        if fixed:

            def const_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
                out[tag] = {"vr": vr, "Value": [fixed]}

            return const_op
    if when is None and plain_empty and quick != _QUICK_NONE:
        return _common_op(tag, vr, quick, limit, omit, get, finish)

    # One closure per attribute, the fast checks inlined: this runs ~30 times per item.
    def attr_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
        if when is not None and not when(scope):
            return
        v = get(scope)
        if not v:
            if plain_empty:
                if not omit:
                    out[tag] = {"vr": vr}
                return
            v = empty(scope)
            if not v:
                if has_default:  # a default, even "", still meets the VR rule
                    v = finish(scope, v, warnings)
                if not v:
                    if not omit:
                        out[tag] = {"vr": vr}
                    return
        if quick == _QUICK_TEXT:
            if len(v) <= limit and "\\" not in v and v.isprintable():
                out[tag] = {"vr": vr, "Value": [v]}
                return
        elif quick == _QUICK_CS:
            u = v.upper()
            if len(u) <= limit and u.isascii() and u.isalnum():
                out[tag] = {"vr": vr, "Value": [u]}
                return
        elif (
            quick == _QUICK_PN
            and len(v) <= limit
            and "=" not in v
            and "\\" not in v
            and v.isprintable()
        ):
            out[tag] = {"vr": vr, "Value": [{"Alphabetic": v}]}
            return
        v = finish(scope, v, warnings)
        if v:
            if simple and "\\" not in v:
                out[tag] = {"vr": vr, "Value": [v]}
            else:
                out[tag] = {"vr": vr, "Value": to_json_value(vr, v)}
        elif not omit:
            out[tag] = {"vr": vr}

    return attr_op


def _fixed_constant(val: _Value) -> str:
    """A constant value converted and checked once, at compile time; "" when that gives no
    value, a warning or a fault (those must be reported per message, so are left to the op)."""
    assert val.const is not None
    warnings: list[str] = []
    try:
        v = val.const
        if val.conv is not None:
            v = val.conv(v)
        if val.fixer is not None:
            v, w = val.fixer(v)
            if w:
                warnings.append(w)
    except (cv.ConvertFault, VRFault):
        return ""
    return "" if warnings or "\\" in v else v


def _common_op(
    tag: str,
    vr: str,
    quick: int,
    limit: int,
    omit: bool,
    get: Getter,
    finish: Callable[[Scope, str, list[str]], str],
) -> Op:
    """The usual attribute (no condition, default, UID, requirement or conversion), one
    closure per VR class; a value the quick check does not accept goes through the VR rule."""

    def rule(scope: Scope, v: str, out: dict[str, Any], warnings: list[str]) -> None:
        v = finish(scope, v, warnings)
        if v:
            out[tag] = {"vr": vr, "Value": to_json_value(vr, v)}
        elif not omit:
            out[tag] = {"vr": vr}

    if quick == _QUICK_CS:

        def cs_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
            v = get(scope)
            if v:
                u = v.upper()
                if len(u) <= limit and u.isascii() and u.isalnum():
                    out[tag] = {"vr": vr, "Value": [u]}
                else:
                    rule(scope, v, out, warnings)
            elif not omit:
                out[tag] = {"vr": vr}

        return cs_op
    if quick == _QUICK_PN:

        def pn_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
            v = get(scope)
            if v:
                if len(v) <= limit and "=" not in v and "\\" not in v and v.isprintable():
                    out[tag] = {"vr": vr, "Value": [{"Alphabetic": v}]}
                else:
                    rule(scope, v, out, warnings)
            elif not omit:
                out[tag] = {"vr": vr}

        return pn_op

    def text_op(scope: Scope, out: dict[str, Any], warnings: list[str]) -> None:
        v = get(scope)
        if v:
            if len(v) <= limit and "\\" not in v and v.isprintable():
                out[tag] = {"vr": vr, "Value": [v]}
            else:
                rule(scope, v, out, warnings)
        elif not omit:
            out[tag] = {"vr": vr}

    return text_op


def make_ctx(model: MappingFile, base: FsPath | None) -> _Ctx:
    problems: list[tuple[Loc, str]] = []
    tables = load_tables(model, base, problems)
    return _Ctx(model, tables, problems, template_getter(model.uid_key), model.kind)
