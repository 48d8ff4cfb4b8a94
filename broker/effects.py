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
class Skipped:
    """An action that was decided not to run (e.g. its destination is not configured)."""

    action: str
    reason: str


Effect = WorklistUpsert | WorklistStatusChange | Enqueue | Skipped
