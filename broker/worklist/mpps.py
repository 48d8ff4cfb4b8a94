"""The Modality Performed Procedure Step state machine (PS3.4 F.7, IHE RAD-6/RAD-7).

Pure decisions, no I/O: :func:`on_create` and :func:`on_set` take the stored state of the
SOP instance (None when unknown) and the Performed Procedure Step Status (0040,0252) the
request carries (None when absent) and return a :class:`Decision`: the DIMSE status to
answer, the state to store, the event to record and the status the linked worklist items
move to. The store applies a decision inside one transaction.

    N-CREATE ──▶ IN PROGRESS ──N-SET──▶ COMPLETED      (final)
                     │  ▲ N-SET (attributes)
                     │  └─┘
                     └──────N-SET──▶ DISCONTINUED   (final)

Statuses (PS3.4 F.7.2.1.2, F.7.2.2.2; codes from PS3.7 Annex C):
0x0000 success; 0x0106 invalid attribute value (status other than IN PROGRESS at N-CREATE,
an unknown status at N-SET); 0x0111 duplicate SOP instance; 0x0112 no such SOP instance;
0x0120 missing attribute (no Performed Procedure Step Status at N-CREATE);
0xC310 'Performed Procedure Step Object may no longer be updated' (N-SET after a final
state, F.7.2.2.2).

Worklist item statuses chosen (PS3.3 C.4.10 defined terms plus IHE SWF final states):
IN PROGRESS -> STARTED, COMPLETED -> COMPLETED, DISCONTINUED -> DISCONTINUED.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "COMPLETED",
    "DISCONTINUED",
    "FINAL_STATES",
    "IN_PROGRESS",
    "Decision",
    "on_create",
    "on_set",
]

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
FINAL_STATES = frozenset({COMPLETED, DISCONTINUED})
STATES = (IN_PROGRESS, COMPLETED, DISCONTINUED)

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MAY_NO_LONGER_BE_UPDATED = 0xC310

#: Event kinds recorded for the delivery side (order-status messages to the RIS, RAD-3/RAD-4).
EVENTS = {
    IN_PROGRESS: "procedure.in_progress",
    COMPLETED: "procedure.completed",
    DISCONTINUED: "procedure.discontinued",
}
#: The Scheduled Procedure Step Status linked worklist items move to.
ITEM_STATUS = {IN_PROGRESS: "STARTED", COMPLETED: "COMPLETED", DISCONTINUED: "DISCONTINUED"}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer and do. ``state`` is the state to store (None: store nothing);
    ``event`` and ``item_status`` are None when the linked items do not change."""

    status: int
    comment: str = ""
    state: str | None = None
    event: str | None = None
    item_status: str | None = None

    @property
    def ok(self) -> bool:
        """True for a success status."""
        return self.status == SUCCESS


def _clean(status: str | None) -> str | None:
    if status is None:
        return None
    return status.strip().upper() or None


def on_create(stored: str | None, requested: str | None) -> Decision:
    """N-CREATE of an MPPS instance whose stored state is ``stored`` (None: new)."""
    if stored is not None:
        return Decision(DUPLICATE_SOP_INSTANCE, "Performed Procedure Step already exists")
    status = _clean(requested)
    if status is None:
        return Decision(MISSING_ATTRIBUTE, "Performed Procedure Step Status (0040,0252) missing")
    if status != IN_PROGRESS:
        return Decision(
            INVALID_ATTRIBUTE_VALUE,
            "Performed Procedure Step Status (0040,0252) must be IN PROGRESS at N-CREATE",
        )
    return Decision(SUCCESS, "", IN_PROGRESS, EVENTS[IN_PROGRESS], ITEM_STATUS[IN_PROGRESS])


def on_set(stored: str | None, requested: str | None) -> Decision:
    """N-SET of an MPPS instance whose stored state is ``stored`` (None: unknown)."""
    if stored is None:
        return Decision(NO_SUCH_SOP_INSTANCE, "no such Performed Procedure Step")
    if stored in FINAL_STATES:
        return Decision(
            MAY_NO_LONGER_BE_UPDATED,
            f"Performed Procedure Step Object may no longer be updated: it is {stored}",
        )
    status = _clean(requested)
    if status is None or status == IN_PROGRESS:
        return Decision(SUCCESS, "", IN_PROGRESS)  # attribute update, still in progress
    if status in FINAL_STATES:
        return Decision(SUCCESS, "", status, EVENTS[status], ITEM_STATUS[status])
    return Decision(
        INVALID_ATTRIBUTE_VALUE,
        "Performed Procedure Step Status (0040,0252) must be IN PROGRESS, COMPLETED or "
        "DISCONTINUED",
    )
