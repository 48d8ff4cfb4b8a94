"""What the reconcile and publish appliers need of a store, inside the message's transaction.

The appliers (:mod:`broker.reconcile.apply`, :mod:`broker.publishing`) decide; a store
backend reads and writes through this interface: ``SqliteChangeOps`` on the journal's
connection, ``RedisChangeOps`` in the journal's optimistic transaction. One logic, two
backends, and they cannot drift apart.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from broker.effects import DicomJson, Enqueue, PatientRef


class ItemRow(NamedTuple):
    """A stored worklist item as the appliers read it."""

    id: int
    text: str  # its DICOM JSON
    status: str
    study_uid: str
    performed_study_uid: str
    accession: str
    patient_key: str


class ChangeOps(Protocol):
    def patient_items(self, patient: PatientRef) -> list[ItemRow]:
        """A patient's items, oldest first: an empty issuer matches any issuer; a given one
        matches items of that issuer and items recorded without one."""
        ...

    def patient_known(self, patient: PatientRef) -> bool:
        """Does an item hold exactly this patient ID and issuer?"""
        ...

    def order_items(self, order_key: str) -> list[ItemRow]:
        """An order's items (every status), oldest first."""
        ...

    def replace_item(
        self, item_id: int, item: DicomJson, patient_key: str, now: str, journal_id: int
    ) -> None:
        """Rewrite an item (JSON, encodings, index keys) with its new content."""
        ...

    def history(
        self, item_id: int, old: str, new: str, reason: str, journal_id: int, now: str
    ) -> None:
        """Record a history row of an item (source 'hl7')."""
        ...

    def record_change(
        self,
        kind: str,
        journal_id: int | None,
        *,
        patient: PatientRef | None = None,
        target: PatientRef | None = None,
        order_key: str = "",
        items: int = 0,
        detail: dict[str, Any],
    ) -> int:
        """Record a reconcile change for audit; returns its id."""
        ...

    def set_change_detail(self, change_id: int, detail: dict[str, Any]) -> None: ...

    def enqueue(self, effect: Enqueue, journal_id: int) -> int:
        """Queue an outbound message in this transaction; returns its entry id."""
        ...
