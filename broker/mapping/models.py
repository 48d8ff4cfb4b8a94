"""The mapping file model (``mappings/*.yaml``), validated with pydantic.

The language is described in docs/ROUTES_AND_MAPPINGS.md.

Field descriptions feed the JSON Schema (docs/schemas/mapping.schema.json) that editors use.
Expressions are checked for syntax here; references (tables, DICOM keywords) when compiled.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from broker.mapping.paths import parse_expression, parse_path
from broker.mapping.template import parse_template

_SEGMENT_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_expr(v: str | None) -> str | None:
    if v is not None:
        parse_expression(v)
    return v


class Predicate(_Model):
    """A test on one HL7 path; exactly one operator. Used by route ``match.fields`` and ``when``."""

    path: str = Field(description="HL7 path, e.g. ORC-1 or PV1-2; a segment name alone for exists")
    equals: str | None = Field(None, description="the value equals this text")
    not_equals: str | None = Field(None, description="the value differs from this text")
    in_: list[str] | None = Field(None, alias="in", description="the value is one of these")
    regex: str | None = Field(None, description="the value matches this regular expression")
    exists: bool | None = Field(None, description="true: the value is present; false: absent")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if _SEGMENT_RE.match(v.strip()):
            return v.strip()
        parse_path(v)
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"found an invalid regular expression ({exc})") from None
        return v

    @model_validator(mode="after")
    def _one_operator(self) -> Predicate:
        ops = [
            n
            for n in ("equals", "not_equals", "in_", "regex", "exists")
            if getattr(self, n) is not None
        ]
        if len(ops) != 1:
            raise ValueError(
                f"found {len(ops)} operators, expected exactly one of equals, not_equals, in, "
                "regex, exists"
            )
        return self


class Lookup(_Model):
    """Look a key up in a table of this mapping."""

    table: str = Field(description="name of a table under `tables:`")
    key: str = Field(description="expression giving the key, e.g. OBR-4.1 | IPC-6.1")
    column: str = Field("value", description="column of the table to return (CSV header name)")

    _k = field_validator("key")(classmethod(lambda cls, v: _check_expr(v)))


class Source(_Model):
    """One alternative of ``first:``: an expression, a lookup, a template or a constant."""

    from_: str | None = Field(None, alias="from", description="expression: PATH | 'const' | $var")
    lookup: Lookup | None = None
    template: str | None = Field(None, description="text with {expression} placeholders")
    value: str | None = Field(None, description="a constant")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"from": data} if isinstance(data, str) else data

    @field_validator("from_")
    @classmethod
    def _expr(cls, v: str | None) -> str | None:
        return _check_expr(v)

    @field_validator("template")
    @classmethod
    def _tpl(cls, v: str | None) -> str | None:
        if v is not None:
            parse_template(v)
        return v

    @model_validator(mode="after")
    def _one(self) -> Source:
        n = sum(x is not None for x in (self.from_, self.lookup, self.template, self.value))
        if n != 1:
            raise ValueError(f"found {n} of from/lookup/template/value, expected exactly one")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        obj = handler(core_schema)
        return {"anyOf": [{"type": "string", "description": "expression shorthand"}, obj]}


Convert = Literal["pn", "xcn", "da", "tm", "dt", "sex", "upper", "none"]


class Attribute(_Model):
    """How one output attribute (DICOM keyword/tag, or HL7 path for outbound) gets its value.

    A plain string is short for ``{from: <string>}``. The first non-empty source wins, in the
    order from → lookup → template → first → value → default.
    """

    from_: str | None = Field(None, alias="from", description="expression: PATH | 'const' | $var")
    value: str | None = Field(None, description="a constant value")
    template: str | None = Field(None, description="text with {expression} placeholders")
    lookup: Lookup | None = None
    first: list[Source] | None = Field(None, description="alternatives; first non-empty wins")
    convert: Convert = Field(
        "none",
        description=(
            "pn: XPN→PN; xcn: XCN→PN; da/tm/dt: TS→DICOM date/time; sex: HL7 0001→PatientSex; upper"
        ),
    )
    components: list[int] | None = Field(
        None,
        description="pn/xcn: HL7 components in DICOM PN order (family, given, middle, "
        "prefix, suffix); default XPN [1,2,3,5,4], XCN [2,3,4,6,5]",
    )
    table: dict[str, str] | None = Field(
        None, description="sex: code table replacing HL7 0001 → DICOM"
    )
    default: str | None = Field(None, description="used when every source is empty")
    required: bool = Field(False, description="refuse the message (AE, 101) when empty")
    generate_uid: bool = Field(
        False,
        description=(
            "UI only: when empty, generate a stable UID from the mapping's uid_key (policy "
            "missing_study_uid: refuse turns this off)"
        ),
    )
    when: Predicate | None = Field(None, description="only set the attribute when this holds")
    vr_policy: Literal["truncate", "reject"] | None = Field(
        None, description="what to do with a value that breaks its VR (default: the mapping's)"
    )
    omit_empty: bool = Field(False, description="leave the attribute out instead of empty")
    raw: bool = Field(False, description="HL7 output: the value is HL7-encoded, do not escape")
    items: dict[str, Attribute] | None = Field(
        None, description="SQ: the attributes of the (single) sequence item"
    )
    description: str | None = Field(None, description="free text for the analyst")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"from": data} if isinstance(data, str) else data

    @field_validator("from_")
    @classmethod
    def _expr(cls, v: str | None) -> str | None:
        return _check_expr(v)

    @field_validator("template")
    @classmethod
    def _tpl(cls, v: str | None) -> str | None:
        if v is not None:
            parse_template(v)
        return v

    @model_validator(mode="after")
    def _sources(self) -> Attribute:
        n = sum(
            x is not None for x in (self.from_, self.value, self.template, self.lookup, self.first)
        )
        if self.items is not None and n:
            raise ValueError("found items together with a value source, expected one or the other")
        if n > 1:
            raise ValueError(
                f"found {n} of from/value/template/lookup/first, expected at most one "
                "(use first: [...] for alternatives)"
            )
        if self.components is not None and self.convert not in ("pn", "xcn"):
            raise ValueError("found components without convert pn/xcn, expected them together")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        obj = handler(core_schema)
        return {"anyOf": [{"type": "string", "description": "expression shorthand"}, obj]}


class TableSpec(_Model):
    """A lookup table: inline rows or a CSV file (relative to the mapping file)."""

    csv: str | None = Field(None, description="CSV file with a header row")
    key: str = Field("code", description="CSV column holding the key")
    inline: dict[str, str | dict[str, str]] | None = Field(
        None, description="key → value, or key → {column: value}"
    )

    @model_validator(mode="after")
    def _one(self) -> TableSpec:
        if (self.csv is None) == (self.inline is None):
            raise ValueError("found both or neither of csv and inline, expected exactly one")
        return self


class Policies(_Model):
    """What the mapping does when a feed leaves something out."""

    missing_start_time: Literal["message_time", "refuse"] = Field(
        "refuse", description="SPS start date/time absent: use MSH-7, or refuse (AE 101)"
    )
    missing_study_uid: Literal["generate", "refuse"] = Field(
        "generate", description="StudyInstanceUID absent: generate a stable one, or refuse"
    )
    vr: Literal["truncate", "reject"] = Field(
        "reject", description="default for values that break their VR: truncate/repair or reject"
    )


class StepSelect(_Model):
    """hl7 mappings with ``each``: which step (segment group) the outbound message is about."""

    key: str = Field(description="template evaluated in each step, e.g. {OBR-19}^{OBR-20}")
    equals: str = Field(
        description=(
            "template the key must equal, usually of variables the caller provides, e.g. "
            "{$requested_procedure_id}^{$scheduled_step_id}"
        )
    )

    @field_validator("key", "equals")
    @classmethod
    def _tpl(cls, v: str) -> str:
        parse_template(v)
        return v


class MappingFile(_Model):
    """One mapping: HL7 → DICOM worklist item(s) (kind dicom) or HL7 → HL7 (kind hl7)."""

    name: str = Field(description="name routes use to refer to this mapping")
    kind: Literal["dicom", "hl7"] = Field("dicom", description="output: DICOM item or HL7 message")
    description: str | None = None
    each: str | None = Field(
        None,
        description=(
            "dicom: one item per segment of this name (OBR, IPC); hl7: the message is built "
            "for one such step (see select) and copies only that step's group segments"
        ),
    )
    split: str | None = Field("ORC", description="segment that starts an order group")
    timezone: str | None = Field(
        None,
        description=(
            "IANA zone of the worklist; TS values with an offset are shifted to it for DA/TM"
        ),
    )
    uid_root: str | None = Field(
        None,
        description=(
            "root for generated UIDs (root.hash); default 2.25.<UUID as integer> (PS3.5 B.2)"
        ),
    )
    order_number: str = Field(
        "ORC-2.1 | OBR-2.1 | ORC-3.1 | OBR-3.1",
        description=(
            "expression: the order number (placer, else filler); required for dicom mappings"
        ),
    )
    order_key: str = Field(
        "{MSH-3.1}^{MSH-4.1}^{$order_number}",
        description="template identifying the order across messages (sender + order number)",
    )
    patient_key: str = Field("{PID-3.1}^{PID-3.4.1}", description="template: patient ID^issuer")
    uid_key: str = Field(
        "{$order_key}^{OBR-19 | IPC-2 | $step_index}",
        description=(
            "template hashed into a generated StudyInstanceUID; stable for the same order and "
            "requested procedure"
        ),
    )
    policies: Policies = Field(default_factory=lambda: Policies.model_validate({}))
    tables: dict[str, TableSpec] = Field(default_factory=dict)
    attributes: dict[str, Attribute] = Field(
        default_factory=dict,
        description=(
            "dicom: keyword or tag → attribute; hl7: output path (e.g. ORC-1) → attribute"
        ),
    )
    copy_segments: list[str] | None = Field(
        None,
        alias="copy",
        description=(
            "hl7: input segments copied to the output in message order (* for all); MSH is "
            "always rebuilt from the input MSH"
        ),
    )

    select: StepSelect | None = Field(
        None,
        description=(
            "hl7 with each: build for the first step whose key equals `equals` (default: the "
            "step numbered $step_index, else the first); no such step refuses (204)"
        ),
    )

    @model_validator(mode="after")
    def _select_needs_each(self) -> MappingFile:
        if self.select is not None and (self.kind != "hl7" or self.each is None):
            raise ValueError("found select without kind hl7 and each, expected them together")
        return self

    @field_validator("each", "split")
    @classmethod
    def _seg(cls, v: str | None) -> str | None:
        if v is not None and not _SEGMENT_RE.match(v):
            raise ValueError(f"found {v!r}, expected a segment name like OBR")
        return v

    @field_validator("order_number")
    @classmethod
    def _num(cls, v: str) -> str:
        parse_expression(v)
        return v

    @field_validator("order_key", "patient_key", "uid_key")
    @classmethod
    def _tpl(cls, v: str) -> str:
        parse_template(v)
        return v

    @field_validator("uid_root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        ok = v is None or (re.fullmatch(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*", v) and len(v) <= 40)
        if not ok:
            raise ValueError(f"found {v!r}, expected a UID root of digits and dots, at most 40")
        return v
