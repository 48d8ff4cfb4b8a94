"""What a routed message changes: plain data handed from routing to the store.

Routing decides (pure code, no I/O) and returns a list of effects; the store applies the
journal entry and all effects of one message in one atomic step (DESIGN.md §2.1: an AA means
durable). A store raises :class:`broker.errors.ConflictError` when an effect contradicts what
is stored; then nothing of that message is applied and the sender gets AE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: DICOM JSON model (PS3.18 F.2): {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "..."}]}}
DicomJson = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorklistUpsert:
    """Create or replace the worklist items of one order (ORC-1 NW, XO, SC; a repeated NW).

    ``order_key`` identifies the order across messages (sender + placer/filler order number);
    ``items`` holds one DICOM JSON dataset per scheduled procedure step. Items of the order
    not in ``items`` any more leave the worklist (kept in history).
    """

    order_key: str
    items: tuple[DicomJson, ...]
    patient_key: str = ""
    #: report what changed per item (for events; costs a read and a diff per updated item)
    report_changes: bool = False


@dataclass(frozen=True, slots=True)
class WorklistStatusChange:
    """Move every item of an order to a step status (CANCELED, DISCONTINUED, COMPLETED, ...).

    Items whose status is not SCHEDULED/ARRIVED/READY leave worklist query results; the
    history stays.
    """

    order_key: str
    status: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Put an outbound message on a destination's durable queue."""

    destination: str
    payload: bytes
    ordering_key: str = ""
    content_type: str = "application/hl7-v2"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PatientRef:
    """A patient as HL7 names it: PID-3.1 / MRG-1.1 and the assigning authority (.4.1)."""

    patient_id: str
    issuer: str = ""


@dataclass(frozen=True, slots=True)
class Outbound:
    """A reconciliation message prepared by routing; the store queues it only when the
    change turns out to concern the destination (e.g. the order's study exists)."""

    destination: str
    payload: bytes
    ordering_key: str = ""


@dataclass(frozen=True, slots=True)
class PatientChange:
    """A patient update (ADT^A08/A31), merge (A40) or identifier change (A47).

    ``kind``: ``update`` sets ``demographics`` on the patient's active items; ``merge`` and
    ``rename`` move every item (and its history) of ``patient`` to ``target`` and set the
    demographics on the active ones. ``outbound``: HL7 messages for HL7 destinations;
    ``jobs_to``: REST destinations (Orthanc) whose job the store builds, as only it knows the
    linked studies. ``unknown``: what a patient without any worklist item means: ``AE``
    (ConflictError) or ``warn`` (recorded, the PACS still updated).
    """

    kind: str
    patient: PatientRef
    demographics: DicomJson
    target: PatientRef | None = None
    outbound: tuple[Outbound, ...] = ()
    jobs_to: tuple[str, ...] = ()
    unknown: str = "AE"
    hl7_location: str = "PID^1^3"
    ordering_key: str = ""


@dataclass(frozen=True, slots=True)
class OrderChange:
    """An order changed (ORC-1 XO, SC) or ended (CA, DC, OC) — the PACS side of it.

    Applied *before* the message's own worklist effects, so the store compares ``items`` (the
    order as the message now describes it) with the order as stored. The PACS hears of it
    only when something it keeps changed, and (``studies: linked``) only when the order's study
    exists (a step was performed).
    """

    control: str
    #: (order_key, the order's items as the message now describes them), per order
    orders: tuple[tuple[str, tuple[DicomJson, ...]], ...]
    outbound: tuple[Outbound, ...] = ()
    jobs_to: tuple[str, ...] = ()
    unknown: str = "AE"
    studies: str = "linked"
    cancel: bool = False
    ordering_key: str = ""


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish JSON events about what this message changed (docs/EVENTS.md).

    Applied after the message's other effects, from what they applied (an order scheduled
    or updated, cancelled, a patient updated or merged); ``result`` carries a
    ``result.received`` event's fields when the message is a result. ``source``: the inbound
    message, included in each event when the route asks for it.
    """

    to: tuple[str, ...]
    result: dict[str, str] | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """An action that was decided not to run (e.g. its destination is not configured)."""

    action: str
    reason: str


Effect = (
    WorklistUpsert
    | WorklistStatusChange
    | Enqueue
    | Skipped
    | PatientChange
    | OrderChange
    | Publish
)
