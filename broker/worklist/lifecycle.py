"""The life of a worklist item: the order of step statuses, which ones a query returns, retention.

Statuses are Scheduled Procedure Step Status (0040,0020) values. PS3.3 C.4.10 defines
SCHEDULED, ARRIVED, READY, STARTED and DEPARTED; the broker adds the final states that IHE
Scheduled Workflow (RAD TF-1 3.3, RAD TF-2 4.6/4.7) gives a step through the order
(CANCELED by ORC-1 CA/OC) or its Performed Procedure Step (COMPLETED, DISCONTINUED).

Which statuses a C-FIND returns (RAD-5): SCHEDULED, ARRIVED, READY and STARTED.
STARTED stays on the worklist on purpose: after MPPS IN PROGRESS the acquisition is not
finished, and IHE SWF expects the modality to find the step again when it restarts, in the
"append" and group cases, or when a second modality of a combined exam shares the step;
a modality that wants only waiting steps filters on SPS Status itself (a matching key,
PS3.4 Table K.6-1). COMPLETED, DISCONTINUED, CANCELED and DEPARTED leave the results and stay
in history until retention purges them. An item with no status (as files served by
wlmscpfs often are) counts as SCHEDULED.
"""

from __future__ import annotations

import datetime as _dt

__all__ = [
    "ACTIVE",
    "FINAL",
    "ORDER",
    "is_active",
    "normalise_status",
    "purge_cutoff",
    "transition",
]

SCHEDULED = "SCHEDULED"
ARRIVED = "ARRIVED"
READY = "READY"
STARTED = "STARTED"
DEPARTED = "DEPARTED"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
CANCELED = "CANCELED"

#: Progress order: a step never moves back (ORDER index), except by re-scheduling an order.
ORDER = (SCHEDULED, ARRIVED, READY, STARTED, DEPARTED, COMPLETED, DISCONTINUED, CANCELED)
#: Statuses returned by worklist queries ('' = no status recorded, served as SCHEDULED).
ACTIVE = frozenset({"", SCHEDULED, ARRIVED, READY, STARTED})
#: Statuses after which the step is done; retention purges these.
FINAL = frozenset({DEPARTED, COMPLETED, DISCONTINUED, CANCELED})

_ALIASES = {"CANCELLED": CANCELED, "IN PROGRESS": STARTED, "INPROGRESS": STARTED}


def normalise_status(status: str) -> str:
    """Upper-case, trimmed, with the common spellings mapped ('CANCELLED' -> 'CANCELED')."""
    value = status.strip().upper()
    return _ALIASES.get(value, value)


def is_active(status: str) -> bool:
    """True when an item with this status is returned by worklist queries."""
    return normalise_status(status) in ACTIVE


def _rank(status: str) -> int:
    try:
        return ORDER.index(status or SCHEDULED)
    except ValueError:
        return 0  # an unknown (local) status counts as scheduled


def transition(current: str, target: str) -> str | None:
    """The status after asking ``current`` to become ``target``, or None when nothing changes.

    Forward moves only: an active step may move to any later or final status; a final step
    stays final (a late MPPS does not resurrect a cancelled order's step). Re-scheduling
    after a cancel is the upsert's business, not a transition.
    """
    current, target = normalise_status(current), normalise_status(target)
    if current == target:
        return None
    if current in FINAL:
        return None
    if target in FINAL:
        return target
    return target if _rank(target) > _rank(current) else None


def purge_cutoff(now: _dt.datetime, retention_days: int) -> str:
    """ISO timestamp before which finished items are purged."""
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    return (now - _dt.timedelta(days=retention_days)).isoformat(timespec="seconds")
