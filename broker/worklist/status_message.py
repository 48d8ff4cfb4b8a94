"""Order status back to the RIS: what an MPPS change of a worklist item sends (DESIGN §6a).

MPPS IN PROGRESS / COMPLETED / DISCONTINUED (RAD-6/RAD-7) that moves a linked worklist item
becomes an order-status message for destination ``ris``: ORM^O01 with ORC-1 = SC and ORC-5 =
IP / CM / DC for v2.3.x / v2.4 orders, OMI^O23 for v2.5+ orders. The message is built by an
outbound HL7 mapping (``mappings/order-status-orm.yaml``, ``-omi.yaml``) from the order
message that created the item (kept in the inbound journal), for that item's requested
procedure / step: not a byte copy.

:func:`order_status_message` decides, pure (no clock, no I/O): given the event, the item and
the original message it returns the :class:`~broker.effects.Enqueue` to apply or a
:class:`~broker.effects.Skipped` saying why nothing is sent. The worklist store calls it
inside the MPPS transaction through a hook (:data:`ProcedureEventHook`), so the message is
queued if and only if the MPPS change commits. :class:`OrderStatusNotifier` is that hook:
it supplies what is not pure (the current mappings, a new control ID).
"""

from __future__ import annotations

import datetime as _dt
import logging
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from broker.effects import Enqueue, Skipped
from broker.hl7.charset import decode_frame, encode_text
from broker.hl7.message import Message
from broker.mapping import HL7Mapping, MappingFault
from broker.worklist import item as wi

__all__ = [
    "ACTION",
    "DEFAULT_DESTINATION",
    "DEFAULT_MAPPINGS",
    "ORDER_STATUS",
    "OrderStatusNotifier",
    "OriginalMessage",
    "ProcedureEvent",
    "ProcedureEventHook",
    "check_order_status",
    "hl7_timestamp",
    "new_control_id",
    "order_status_message",
]

log = logging.getLogger(__name__)

#: The destination the shipped default sends order status to (DESIGN §6a).
DEFAULT_DESTINATION = "ris"
#: Order message type (MSH-9.1) → the mapping that builds its status message.
DEFAULT_MAPPINGS: Mapping[str, str] = {"ORM": "order-status-orm", "OMI": "order-status-omi"}
#: How the action is named in Skipped records (like "forward:<destination>" for routes).
ACTION = "order-status"
#: Event kind (broker.worklist.mpps.EVENTS) → ORC-5 order status (HL7 table 0038).
ORDER_STATUS: Mapping[str, str] = {
    "procedure.in_progress": "IP",
    "procedure.completed": "CM",
    "procedure.discontinued": "DC",
}
_PROCEDURE_STATUS = {
    "procedure.in_progress": "IN PROGRESS",
    "procedure.completed": "COMPLETED",
    "procedure.discontinued": "DISCONTINUED",
}


@dataclass(frozen=True, slots=True)
class ProcedureEvent:
    """One recorded procedure event for one worklist item (a ``worklist_events`` row).

    ``old_status`` / ``new_status``: the item's step status before and after; ``new_status``
    is None when the MPPS did not change the item (it was already there, or final).
    """

    event_id: int
    kind: str
    at: str  # ISO 8601, UTC
    mpps_uid: str
    item_id: int
    order_key: str
    accession: str
    rp_id: str
    sps_id: str
    study_uid: str
    calling_ae: str
    old_status: str
    new_status: str | None


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The order message that last wrote the item, as the journal keeps it."""

    journal_id: int
    raw: bytes
    charset: str = ""  # the character set it was decoded with ("" = ASCII)


#: What the worklist store calls inside the MPPS transaction, once per event of an item.
ProcedureEventHook = Callable[
    [ProcedureEvent, wi.DicomJson, OriginalMessage | None], Enqueue | Skipped
]


def hl7_timestamp(iso: str) -> str:
    """An ISO 8601 instant as HL7 TS (``YYYYMMDDHHMMSS+ZZZZ``); '' when unreadable."""
    try:
        when = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.strftime("%Y%m%d%H%M%S%z")


def new_control_id() -> str:
    """A new MSH-10: 20 characters (the ST length of v2.3.1/v2.4), unique in practice."""
    return "BRK" + secrets.token_hex(9)[:17].upper()


def variables_for(event: ProcedureEvent, item: wi.DicomJson, control_id: str) -> dict[str, str]:
    """The ``$variables`` an order-status mapping reads (documented in its mapping file)."""
    keys = wi.index_keys(item)
    return {
        "order_status": ORDER_STATUS.get(event.kind, ""),
        "procedure_status": _PROCEDURE_STATUS.get(event.kind, ""),
        "event": event.kind,
        "control_id": control_id,
        "now": hl7_timestamp(event.at),
        "requested_procedure_id": event.rp_id or keys.requested_procedure_id,
        "scheduled_step_id": event.sps_id or keys.step_id,
        "accession": event.accession or keys.accession,
        "study_uid": event.study_uid or keys.study_uid,
        "patient_id": keys.patient_id,
        "order_key": event.order_key,
        "mpps_uid": event.mpps_uid,
        "performing_ae": event.calling_ae,
    }


def order_status_message(
    event: ProcedureEvent,
    item: wi.DicomJson,
    original: OriginalMessage | None,
    *,
    mappings: Mapping[str, Any],
    destinations: Collection[str],
    control_id: str,
    destination: str = DEFAULT_DESTINATION,
    mapping_for: Mapping[str, str] = DEFAULT_MAPPINGS,
) -> Enqueue | Skipped:
    """The order-status message for ``event`` as an Enqueue, or a Skipped with the reason.

    Nothing is sent when the item did not change, when ``destination`` is not configured
    (DESIGN §6a: recorded as skipped, nothing queued), when the order message is gone from
    the journal, when no mapping is loaded for its type, or when the mapping refuses it.
    The ordering key is the patient (the item's PatientID), else the order key, so the
    status follows other messages about the same patient in order.
    """
    action = f"{ACTION}:{destination}"
    kind = ORDER_STATUS.get(event.kind)
    if kind is None:
        return Skipped(action, f"event {event.kind!r} has no order status")
    if event.new_status is None:
        return Skipped(action, f"worklist item unchanged ({event.old_status or 'no status'})")
    if destination not in destinations:
        return Skipped(action, f"destination {destination!r} is not configured")
    if original is None:
        return Skipped(action, "the order message of the item is no longer in the journal")
    try:
        decoded = decode_frame(original.raw, original.charset or "ASCII")
        message = Message.parse(decoded.text)
    except Exception as exc:  # journaled bytes that no longer parse: say so, do not raise
        return Skipped(action, f"the order message cannot be read ({type(exc).__name__})")
    name = mapping_for.get(message.message_type)
    if name is None:
        return Skipped(action, f"no order-status mapping for {message.message_type} messages")
    mapping = mappings.get(name)
    if not isinstance(mapping, HL7Mapping):
        return Skipped(action, f"mapping {name!r} is not loaded (or not an hl7 mapping)")
    warnings: list[str] = []
    try:
        text = mapping.build(message, variables_for(event, item, control_id), warnings)
    except MappingFault as fault:
        return Skipped(action, f"mapping {name!r} refused: {fault.text} ({fault.location})")
    charset = message.charset or decoded.charset
    try:
        payload = encode_text(text, charset)
    except Exception:
        payload = text.encode("utf-8")
    key = wi.index_keys(item).patient_id or event.order_key
    headers = {"mapping": name, "event": event.kind, "control_id": control_id}
    return Enqueue(destination, payload, key, headers=headers)


class OrderStatusNotifier:
    """The :data:`ProcedureEventHook` the app gives the worklist store.

    ``mappings``: returns the mappings now loaded (the route holder's, swapped on reload);
    ``destinations``: the configured destination names. Runs on the store's writer thread:
    it reads, never writes, shared state.
    """

    def __init__(
        self,
        mappings: Callable[[], Mapping[str, Any]],
        destinations: Collection[str],
        *,
        destination: str = DEFAULT_DESTINATION,
        mapping_for: Mapping[str, str] = DEFAULT_MAPPINGS,
        control_id: Callable[[], str] = new_control_id,
    ) -> None:
        self.mappings = mappings
        self.destinations = frozenset(destinations)
        self.destination = destination
        self.mapping_for = dict(mapping_for)
        self.control_id = control_id

    def __call__(
        self, event: ProcedureEvent, item: wi.DicomJson, original: OriginalMessage | None
    ) -> Enqueue | Skipped:
        result = order_status_message(
            event,
            item,
            original,
            mappings=self.mappings(),
            destinations=self.destinations,
            control_id=self.control_id(),
            destination=self.destination,
            mapping_for=self.mapping_for,
        )
        # configured and something changed, yet nothing sent: worth a warning
        if (
            isinstance(result, Skipped)
            and event.new_status is not None
            and self.destination in self.destinations
        ):
            log.warning(
                "order status for worklist item %d (%s) not sent: %s",
                event.item_id,
                event.kind,
                result.reason,
            )
        return result


def check_order_status(
    destinations: Collection[str],
    mappings: Mapping[str, Any],
    *,
    destination: str = DEFAULT_DESTINATION,
    mapping_for: Mapping[str, str] = DEFAULT_MAPPINGS,
) -> tuple[list[str], list[str]]:
    """``broker check``: (errors, warnings) about the order-status setup, like the routes'.

    A missing destination is a warning (the embedded default runs without one; MPPS changes
    are then recorded as skipped); a named mapping that is absent or not an hl7 mapping, while
    the destination is configured, is an error.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if destination not in destinations:
        warnings.append(
            f"order status: destination {destination!r} is not configured; order-status "
            "messages for MPPS changes will be skipped (DESIGN §6a)"
        )
        return errors, warnings
    for message_type, name in sorted(mapping_for.items()):
        if not isinstance(mappings.get(name), HL7Mapping):
            errors.append(
                f"order status: mapping {name!r} for {message_type} orders: found "
                f"{'none' if name not in mappings else 'a dicom mapping'}, expected an hl7 "
                "mapping in the mappings folder"
            )
    return errors, warnings
