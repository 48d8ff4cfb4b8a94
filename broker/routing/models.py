"""The route file model (``routes/*.yaml``), validated with pydantic.

The language is described in docs/ROUTES_AND_MAPPINGS.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.mapping.models import Predicate

StepStatus = Literal[
    "SCHEDULED",
    "ARRIVED",
    "READY",
    "STARTED",
    "IN PROGRESS",
    "COMPLETED",
    "DISCONTINUED",
    "CANCELED",
]

#: ORC-1 [_ORC-5] → step status, after dcm4chee-arc's default (hl7OrderControlStatus):
#: a key ``NW_SC`` matches ORC-1 NW with ORC-5 SC; a key ``NW`` matches NW with any ORC-5.
DEFAULT_ORDER_CONTROL: dict[str, str] = {
    "NW_SC": "SCHEDULED",
    "NW_IP": "SCHEDULED",
    "XO_SC": "SCHEDULED",
    "XO_CM": "COMPLETED",
    "SC_CM": "COMPLETED",
    "CA_CA": "CANCELED",
    "DC_CA": "DISCONTINUED",
    "NW": "SCHEDULED",
    "XO": "SCHEDULED",
    "CA": "CANCELED",
    "OC": "CANCELED",
    "DC": "DISCONTINUED",
    "SC_SC": "SCHEDULED",
    "SC_IP": "IN PROGRESS",
    "SC_DC": "DISCONTINUED",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class Match(_Model):
    """What a message must look like for the route to apply; every given test must hold."""

    message_type: list[str] | None = Field(None, description="MSH-9.1, e.g. ORM or [ORM, OMI]")
    trigger: list[str] | None = Field(None, description="MSH-9.2, e.g. O01")
    version: list[str] | None = Field(None, description="MSH-12.1, e.g. [2.3.1, 2.4]")
    sending_application: list[str] | None = Field(None, description="MSH-3.1")
    sending_facility: list[str] | None = Field(None, description="MSH-4.1")
    fields: list[Predicate] = Field(default_factory=list, description="tests on any HL7 path")

    _l = field_validator(
        "message_type",
        "trigger",
        "version",
        "sending_application",
        "sending_facility",
        mode="before",
    )(classmethod(lambda cls, v: _listify(v)))


class WorklistAction(_Model):
    """Create/replace (upsert) or change the status of the order's worklist items."""

    mapping: str | None = Field(None, description="a dicom mapping (needed for upsert/auto)")
    op: Literal["auto", "upsert", "cancel", "discontinue", "complete"] = Field(
        "auto", description="auto: from ORC-1/ORC-5 through the order-control table"
    )
    order_control: str = Field("default", description="name of the order-control table")


class ForwardAction(_Model):
    """Queue an outbound message (built by an hl7 mapping) for each destination."""

    to: list[str] = Field(description="destination names from the config's destinations:")
    mapping: str = Field(description="an hl7 mapping building the outbound message")
    ordering_key: str = Field(
        "{PID-3.1}", description="template: messages with the same key are delivered in order"
    )

    _l = field_validator("to", mode="before")(classmethod(lambda cls, v: _listify(v)))


class ReconcileAction(_Model):
    """Patient/order change reconciliation (IHE PIR, RAD-12/13): update the worklist items
    the change concerns and tell the PACS destinations, each in its own way.

    ADT^A08/A31 update the patient, A40 merges MRG-1 into PID-3, A47 renames MRG-1 to PID-3;
    ORM/OMI with ORC-1 XO/SC (changed order) or CA/DC/OC (ended order). HL7 destinations get
    the message ``mapping`` builds; ``orthanc`` destinations a job applied over REST.
    """

    to: list[str] = Field(default_factory=lambda: ["pacs"], description="destinations to update")
    mapping: str | None = Field(
        None, description="an hl7 mapping building the message for HL7 (mllp/http) destinations"
    )
    demographics: str | None = Field(
        None, description="a dicom mapping giving the patient's attributes (ADT messages)"
    )
    items: str | None = Field(
        None, description="a dicom mapping giving the order's items (ORM/OMI messages)"
    )
    unknown: Literal["AE", "warn"] = Field(
        "AE",
        description="a patient or order the broker holds no item of: AE, or warn (record it, "
        "update the PACS all the same)",
    )
    studies: Literal["linked", "all"] = Field(
        "linked",
        description="order changes reach the PACS only when the order's study exists "
        "(linked: a step was performed) or always (all)",
    )
    ordering_key: str = Field(
        "{PID-3.1}", description="template: updates with the same key are delivered in order"
    )

    _l = field_validator("to", mode="before")(classmethod(lambda cls, v: _listify(v)))


class PublishAction(_Model):
    """Publish JSON events about what the message changed to bus (or http) destinations."""

    to: list[str] = Field(
        default_factory=lambda: ["events"], description="destinations (type bus or http)"
    )
    include_message: bool = Field(False, description="add the source HL7 message to events")

    _l = field_validator("to", mode="before")(classmethod(lambda cls, v: _listify(v)))


class DropAction(_Model):
    """Accept the message and do nothing with it, recording why."""

    reason: str = Field(description="recorded in the journal and shown by broker route")


class Action(_Model):
    """One action: exactly one of worklist, forward, reconcile, publish, drop."""

    worklist: WorklistAction | None = None
    forward: ForwardAction | None = None
    reconcile: ReconcileAction | None = None
    publish: PublishAction | None = None
    drop: DropAction | None = None

    @model_validator(mode="after")
    def _one(self) -> Action:
        kinds = (self.worklist, self.forward, self.reconcile, self.publish, self.drop)
        n = sum(x is not None for x in kinds)
        if n != 1:
            raise ValueError(
                f"found {n} action kinds, expected exactly one of worklist, forward, "
                "reconcile, publish, drop"
            )
        return self

    @property
    def kind(self) -> str:
        for k in ("worklist", "forward", "reconcile", "publish", "drop"):
            if getattr(self, k) is not None:
                return k
        return ""


class Route(_Model):
    """Match + ordered actions. First match wins unless ``continue`` is true."""

    name: str = Field(description="shown in the journal and by broker route")
    match: Match = Field(default_factory=lambda: Match.model_validate({}))
    actions: list[Action] = Field(description="run in order")
    continue_: bool = Field(False, alias="continue", description="keep matching later routes")


class Unmatched(_Model):
    """The answer to a message no route matches (it is still kept in the journal)."""

    ack: Literal["AA", "AE", "AR"] = "AE"
    text: str = "no route"


class RouteFile(_Model):
    """One route file; files are read in name order and their routes concatenated."""

    routes: list[Route] = Field(default_factory=list)
    order_control: dict[str, dict[str, StepStatus]] = Field(
        default_factory=dict,
        description="named ORC-1[_ORC-5] → status tables; `default` "
        "extends the built-in dcm4chee-arc-like table",
    )
    unmatched: Unmatched | None = Field(None, description="at most one file sets this")
