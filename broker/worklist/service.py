"""The worklist service the DICOM network side calls: MWL C-FIND (RAD-5) and MPPS (RAD-6/7).

The network code (``broker/dicom/``) owns associations and DIMSE; it hands this service the
encoded identifier of a C-FIND request and gets encoded response identifiers back, in the
same transfer syntax, in batches (so it can look for C-CANCEL between batches)::

    service = WorklistService(store, calling_ae_as_station=False, batch_size=50)
    try:
        for batch in service.find(identifier_bytes, explicit_vr=True, calling_ae="CT1"):
            for identifier in batch:
                send_pending(identifier)          # status 0xFF00
            if cancelled():
                break                             # then status 0xFE00
        send_success()
    except QueryError as exc:
        send_failure(exc.status, exc.comment)     # comment carries no PHI

    status = service.mpps_create(sop_instance_uid, dataset, calling_ae)   # N-CREATE
    status = service.mpps_set(sop_instance_uid, dataset, calling_ae)      # N-SET
    # DimseStatus(status, comment): 0x0000 or the failure to answer; durable when returned.

:meth:`WorklistService.find` raises :class:`QueryError` before yielding anything when the
identifier is malformed (0xA900 structure, 0xC000 encoding, 0xC001 a value invalid for its
VR). It runs synchronously on the calling thread (SQLite reads are per thread); at 100,000
items a one-item or one-station-day query costs well under a millisecond here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import pydicom

from broker.errors import BrokerError
from broker.worklist import item as wi
from broker.worklist import mpps as mpps_rules
from broker.worklist.encode import AnswerMemo, AnswerSpec, answer_charset, encode_item
from broker.worklist.matcher import InvalidKey, Matcher
from broker.worklist.query import (
    IndexPlan,
    MalformedIdentifier,
    ParsedQuery,
    parse_identifier,
    plan,
    validate_keys,
)

__all__ = ["DimseStatus", "QueryError", "WorklistService", "WorklistStore"]

log = logging.getLogger(__name__)

#: Responses per batch handed to the network side between C-CANCEL checks.
DEFAULT_BATCH_SIZE = 50
PROCESSING_FAILURE = 0x0110


class DimseStatus(NamedTuple):
    """A DIMSE status to answer (PS3.7 Annex C) and an optional Error Comment (no PHI)."""

    status: int
    comment: str = ""


class QueryError(BrokerError):
    """A C-FIND identifier this service cannot answer; ``status`` is the failure to send.

    0xA900 Identifier does not match SOP Class; 0xC000 unable to process (not a valid
    encoding); 0xC001 unable to process (a value invalid for its VR). ``comment`` names the
    attribute, never its value.
    """

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


class WorklistStore(Protocol):
    """What the service needs of a worklist backend (SQLite now, Redis later)."""

    def candidates(
        self, plan: IndexPlan, *, explicit: bool, with_json: bool
    ) -> Iterator[tuple[Any, ...]]: ...

    def mpps_apply(
        self,
        kind: str,
        sop_instance_uid: str,
        dataset: wi.DicomJson,
        calling_ae: str,
        links: Sequence[tuple[str, str, str, str]] = (),
    ) -> mpps_rules.Decision: ...


#: Distinct query identifiers whose parse and plan are kept.
PLAN_CACHE_SIZE = 256


class _Prepared(NamedTuple):
    query: ParsedQuery
    matcher: Matcher | None
    plan: IndexPlan
    spec: AnswerSpec


class WorklistService:
    """Answers worklist queries and MPPS requests from a store.

    ``calling_ae_as_station``: when a query's Scheduled Station AE Title is absent or empty,
    match the calling AE title instead (for modalities that cannot send it).
    ``batch_size``: responses per yielded batch.
    """

    def __init__(
        self,
        store: WorklistStore,
        *,
        calling_ae_as_station: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.calling_ae_as_station = calling_ae_as_station
        self.batch_size = batch_size
        # Modalities poll with the same identifier again and again (same station, "today"):
        # parsing and planning it (~60 µs) is done once per distinct identifier. Only
        # successfully planned queries are kept; everything cached is immutable.
        self._plans: dict[tuple[bytes, bool, str], _Prepared] = {}
        # ... and they get the same items back: each answer is joined once (content-keyed).
        self._memo = AnswerMemo()

    # -- C-FIND ----------------------------------------------------------------------------

    def prepare(
        self, identifier: bytes, *, explicit_vr: bool, calling_ae: str = ""
    ) -> tuple[ParsedQuery, Matcher | None, IndexPlan]:
        """Parse, validate and plan a request; raises QueryError.

        The matcher is compiled only when the plan's index constraints are not the whole
        match (otherwise None): the common queries never run Python matching per item.
        """
        try:
            query = parse_identifier(identifier, explicit=explicit_vr)
            if self.calling_ae_as_station and calling_ae.strip():
                station = next(
                    (k for k in query.step_keys() if k.tag == wi.SCHEDULED_STATION_AE_TITLE), None
                )
                if station is None or not (station.value or "").strip():
                    query = query.with_key(
                        wi.SCHEDULED_STATION_AE_TITLE, calling_ae.strip(), in_step=True
                    )
            try:
                index_plan = plan(query)
            except InvalidKey as exc:
                raise MalformedIdentifier(0xC001, f"invalid value for {exc}") from exc
            matcher = None if index_plan.exact else validate_keys(query)
            return query, matcher, index_plan
        except MalformedIdentifier as exc:
            log.warning("C-FIND identifier refused (0x%04X): %s", exc.status, exc)
            raise QueryError(exc.status, str(exc)) from exc

    def find(
        self, identifier: bytes, *, explicit_vr: bool, calling_ae: str
    ) -> Iterator[list[bytes]]:
        """Yield batches of encoded response identifiers for one MWL C-FIND request.

        Raises QueryError before yielding when the identifier is malformed.
        """
        key = (identifier, explicit_vr, calling_ae if self.calling_ae_as_station else "")
        prepared = self._plans.get(key)
        if prepared is None:
            query, matcher, index_plan = self.prepare(
                identifier, explicit_vr=explicit_vr, calling_ae=calling_ae
            )
            prepared = _Prepared(
                query, matcher, index_plan, query.answer_spec(explicit=explicit_vr)
            )
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))  # oldest first
            self._plans[key] = prepared
        return self._answers(
            prepared.query, prepared.matcher, prepared.plan, prepared.spec, explicit_vr
        )

    def _answers(
        self,
        query: ParsedQuery,
        matcher: Matcher | None,
        index_plan: IndexPlan,
        spec: AnswerSpec,
        explicit: bool,
    ) -> Iterator[list[bytes]]:
        need_json = not index_plan.exact
        requested = query.charset
        batch: list[bytes] = []
        size = self.batch_size
        memo = self._memo.answer
        rows = self.store.candidates(index_plan, explicit=explicit, with_json=need_json)
        for row in rows:
            item: wi.DicomJson | None = None
            if matcher is not None:
                item = json.loads(row[4])
                if not matcher.matches(item):
                    continue
            native, blob, layout = row[1], row[2], row[3]
            declared, reencode = answer_charset(native, requested)
            if reencode:
                blob, layout, declared = self._reencode(row, item, declared, native, explicit)
            batch.append(memo(spec, blob, layout, declared))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _reencode(
        self,
        row: tuple[Any, ...],
        item: wi.DicomJson | None,
        charset: str,
        native: str,
        explicit: bool,
    ) -> tuple[bytes, bytes, str]:
        """The item in the set the request asked for, or the stored bytes when it won't fit."""
        if item is None:
            item = self._item_json(int(row[0]))
        if item is not None:
            try:
                enc = encode_item(item, charset, explicit=explicit)
                return enc.blob, enc.layout, charset
            except UnicodeEncodeError:
                pass
        return row[2], row[3], native

    def _item_json(self, item_id: int) -> wi.DicomJson | None:
        getter = getattr(self.store, "items_by_id", None)
        if getter is None:
            return None
        found = getter([item_id])
        return found[0][1] if found else None

    # -- MPPS ------------------------------------------------------------------------------

    def mpps_create(
        self, sop_instance_uid: str, dataset: pydicom.Dataset, calling_ae: str
    ) -> DimseStatus:
        """MPPS N-CREATE (RAD-6): see ``broker.worklist.mpps`` for the statuses."""
        return self._mpps("create", sop_instance_uid, dataset, calling_ae)

    def mpps_set(
        self, sop_instance_uid: str, dataset: pydicom.Dataset, calling_ae: str
    ) -> DimseStatus:
        """MPPS N-SET (RAD-7): see ``broker.worklist.mpps`` for the statuses."""
        return self._mpps("set", sop_instance_uid, dataset, calling_ae)

    def _mpps(self, kind: str, uid: str, dataset: pydicom.Dataset, calling_ae: str) -> DimseStatus:
        try:
            data = dataset.to_json_dict()
        except Exception as exc:  # a value pydicom cannot represent: refuse, keep serving
            log.warning("MPPS N-%s dataset not readable: %s", kind.upper(), type(exc).__name__)
            return DimseStatus(PROCESSING_FAILURE, "dataset could not be read")
        links: list[tuple[str, str, str, str]] = []
        if kind == "create":
            for link in wi.sequence_items(data, 0x00400270):
                links.append(
                    (
                        wi.first_text(link, wi.STUDY_INSTANCE_UID),
                        wi.first_text(link, wi.ACCESSION_NUMBER),
                        wi.first_text(link, wi.REQUESTED_PROCEDURE_ID),
                        wi.first_text(link, wi.SPS_ID),
                    )
                )
        try:
            decision = self.store.mpps_apply(kind, uid, data, calling_ae, links)
        except BrokerError as exc:
            log.error("MPPS N-%s not stored: %s", kind.upper(), exc)
            return DimseStatus(PROCESSING_FAILURE, "the worklist store failed")
        return DimseStatus(decision.status, decision.comment)
