"""What every store backend does with an item before writing it, and how an order's upsert
is decided: pure code shared by the SQLite and Redis worklist stores.

:class:`PreparedItem` computes the index keys at once and the JSON text and both C-FIND
encodings on demand (encoding is most of a write's cost). :func:`plan_upsert` takes what a
store read about an order and returns what to write (DESIGN.md §2.1 upsert semantics), so
the two backends cannot drift apart on them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from broker import events
from broker.effects import WorklistUpsert
from broker.errors import ConflictError
from broker.worklist import item as wi
from broker.worklist import lifecycle
from broker.worklist.encode import Encoded, encode_both, native_charset
from broker.worklist.item import DicomJson

#: ZDS-1 carries the Study Instance UID in IHE RAD-4 (OMI/ORM); the ACK points there.
STUDY_UID_HL7_LOCATION = "ZDS^1^1"

#: Items are trees of dicts and lists (DICOM JSON), never cyclic: the circularity check
#: (a third of json.dumps' time) is left out.
JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def now_text() -> str:
    """The time stores write in their bookkeeping (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def with_status(item: DicomJson, status: str) -> DicomJson:
    """A copy of ``item`` whose step(s) carry ``status`` in (0040,0020)."""
    key = wi.tag_key(wi.SPS_SEQUENCE)
    steps = wi.sequence_items(item, wi.SPS_SEQUENCE)
    if not steps or not status:
        return item
    out = dict(item)
    out[key] = {
        "vr": "SQ",
        "Value": [{**s, wi.tag_key(wi.SPS_STATUS): {"vr": "CS", "Value": [status]}} for s in steps],
    }
    return out


class PreparedItem:
    """An item prepared for storage: keys first (cheap), JSON text and both encodings on demand.

    Encoding happens once, after the final status is known, in one walk for both transfer
    syntaxes.
    """

    __slots__ = ("_charset", "_enc_e", "_enc_i", "_text", "item", "keys")

    def __init__(self, item: DicomJson) -> None:
        self.item = item
        self.keys = wi.index_keys(item)
        self._charset: str | None = None
        self._enc_i: Encoded | None = None
        self._enc_e: Encoded | None = None
        self._text: str | None = None

    @property
    def charset(self) -> str:
        if self._charset is None:
            # all-ASCII JSON text means all-ASCII item text: no need to walk the item
            self._charset = "" if self.text.isascii() else native_charset(self.item)
        return self._charset

    @property
    def enc_i(self) -> Encoded:
        if self._enc_i is None:
            self._enc_i, self._enc_e = encode_both(self.item, self.charset)
        return self._enc_i

    @property
    def enc_e(self) -> Encoded:
        if self._enc_e is None:
            self._enc_i, self._enc_e = encode_both(self.item, self.charset)
        return self._enc_e

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = JSON.encode(self.item)
        return self._text

    @property
    def status(self) -> str:
        return lifecycle.normalise_status(self.keys.status)


@dataclass
class UpsertPlan:
    """What an order's upsert writes: new items, replaced items (id, item, old and new
    status), items the order no longer holds (id, old status) to cancel."""

    created: list[PreparedItem] = field(default_factory=list)
    replaced: list[tuple[int, PreparedItem, str, str]] = field(default_factory=list)
    cancelled: list[tuple[int, str]] = field(default_factory=list)
    updated: int = 0
    #: per item of the effect, what changed (None: created), when the effect asks for it
    changes: list[dict[str, str] | None] = field(default_factory=list)

    def summary(self, report_changes: bool) -> dict[str, object]:
        # keys starting with "_" are for the events of this commit, not kept in the journal
        out: dict[str, object] = {
            "created": len(self.created),
            "updated": self.updated,
            "removed": len(self.cancelled),
        }
        if report_changes:
            out["_changes"] = self.changes
        return out


def plan_upsert(
    effect: WorklistUpsert,
    rows: Sequence[PreparedItem],
    existing: Mapping[tuple[str, str], tuple[int, str]],
    taken_studies: set[str],
    stored_text: Callable[[int], str],
) -> UpsertPlan:
    """Decide an order's upsert (see ``apply_worklist_upsert``).

    ``existing``: the order's stored items by (RequestedProcedureID, SPS ID) -> (id, status),
    in the order cancellations should be written; ``taken_studies``: Study Instance UIDs of
    the effect held by other orders; ``stored_text(id)``: an existing item's JSON text.
    Raises ConflictError (code 205) for a study UID of another order or two items of the
    effect with one identity.
    """
    seen: set[tuple[str, str]] = set()
    for row in rows:
        ident = (row.keys.requested_procedure_id, row.keys.step_id)
        if ident in seen:
            raise ConflictError(
                "two worklist items of the order share RequestedProcedureID and "
                "ScheduledProcedureStepID",
                hl7_location="OBR^1^19",
                hl7_code=205,
            )
        seen.add(ident)
        if row.keys.study_uid in taken_studies:
            raise ConflictError(
                "StudyInstanceUID is already used by another order",
                hl7_location=STUDY_UID_HL7_LOCATION,
                hl7_code=205,
            )
    out = UpsertPlan()
    for row in rows:
        ident = (row.keys.requested_procedure_id, row.keys.step_id)
        asked = lifecycle.normalise_status(row.keys.status)
        found = existing.get(ident)
        if found is None:
            if not asked:
                row = type(row)(with_status(row.item, lifecycle.SCHEDULED))
            out.created.append(row)
            if effect.report_changes:
                out.changes.append(None)
            continue
        item_id, old = found
        before_text = stored_text(item_id)
        if effect.report_changes:  # for the order.updated event (the private "_changes")
            out.changes.append(events.item_changes(json.loads(before_text), row.item))
        if old == lifecycle.CANCELED:
            new = asked or lifecycle.SCHEDULED
        else:
            new = (lifecycle.transition(old, asked) if asked else None) or old
        if new != row.keys.status:
            row = type(row)(with_status(row.item, new))  # same class as given
        out.updated += 1
        if new == old and row.text == before_text:
            continue  # sent again unchanged (RIS resends): nothing to re-encode or rewrite
        out.replaced.append((item_id, row, old, new))
    for ident, (item_id, old) in existing.items():
        if ident in seen or not lifecycle.is_active(old):
            continue
        out.cancelled.append((item_id, old))
    return out
