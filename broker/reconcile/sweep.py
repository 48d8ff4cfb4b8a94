"""The reconciliation sweep: ask the PACS for its recent studies (DICOM C-FIND, Study Root,
the broker as SCU), compare each with its order (by AccessionNumber, else by the Study
Instance UID the broker linked), and report what differs; optionally queue the corrections.

Three parts with one concern each: :func:`query_studies` (network, blocking: run it in a
thread), :func:`compare` (pure), and the store side in ``broker.storage.sqlite_reconcile``
(looking orders up, queueing corrections).
"""

from __future__ import annotations

import datetime as _dt
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from broker.errors import BrokerError
from broker.reconcile.changes import key_of, plain
from broker.worklist import item as wi

#: What the sweep compares: field name → (DICOM keyword in the study, in the order item).
COMPARED = {
    "patient_id": ("PatientID", "PatientID"),
    "issuer": ("IssuerOfPatientID", "IssuerOfPatientID"),
    "name": ("PatientName", "PatientName"),
    "birth_date": ("PatientBirthDate", "PatientBirthDate"),
    "sex": ("PatientSex", "PatientSex"),
    "accession": ("AccessionNumber", "AccessionNumber"),
    "procedure": ("StudyDescription", "RequestedProcedureDescription"),
}
#: Fields whose values identify or describe the patient (redacted unless asked for).
PHI_FIELDS = frozenset({"patient_id", "issuer", "name", "birth_date", "sex"})
#: The study keys asked of the PACS (return keys of a Study Root C-FIND, PS3.4 C.6.2).
_RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDescription",
)


class SweepError(BrokerError):
    """The sweep could not run (no PACS configured, association refused, bad date)."""


@dataclass(frozen=True, slots=True)
class Study:
    """One study as the PACS answered it (text values, PN as the DICOM string)."""

    study_uid: str
    study_date: str = ""
    accession: str = ""
    patient_id: str = ""
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    procedure: str = ""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One field of one study that differs from its order."""

    study_uid: str
    accession: str
    field: str
    pacs: str
    order: str
    item_id: int | None = None


@dataclass(slots=True)
class SweepReport:
    """What a sweep found (and, with ``--apply``, queued)."""

    studies: int = 0
    matched: int = 0
    without_order: list[Study] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    not_applied: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self, *, show_phi: bool = False) -> dict[str, Any]:
        """JSON-able; patient values are ``<redacted>`` unless ``show_phi``."""

        def mm(m: Mismatch) -> dict[str, Any]:
            d = asdict(m)
            if m.field in PHI_FIELDS and not show_phi:
                d["pacs"] = d["order"] = "<redacted>"
            return d

        return {
            "studies": self.studies,
            "matched": self.matched,
            "without_order": [
                {"study_uid": s.study_uid, "accession": s.accession, "study_date": s.study_date}
                for s in self.without_order
            ],
            "mismatches": [mm(m) for m in self.mismatches],
            "applied": self.applied,
            "not_applied": self.not_applied,
        }


def parse_day(text: str) -> str:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` → DICOM DA; raises SweepError."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return _dt.datetime.strptime(text, fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    raise SweepError(f"date {text!r}: expected YYYY-MM-DD or YYYYMMDD")


def query_studies(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    since: str,
    until: str = "",
    *,
    timeout_s: float = 30.0,
) -> list[Study]:
    """C-FIND at STUDY level, StudyDate ``since``-``until`` (DA); blocking. Raises SweepError
    when the PACS cannot be reached, refuses the association or fails the query."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind as FIND,
    )

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    where = f"PACS {called_ae}@{host}:{port}"
    # A refused connection is found here: pynetdicom would log it as an error and leak its
    # socket (pynetdicom 3.0.4, transport.py).
    try:
        socket.create_connection((host, port), timeout=min(timeout_s, 10.0)).close()
    except OSError as exc:
        raise SweepError(f"{where} could not be reached: {exc.strerror or exc}") from None
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise SweepError(f"{where} {why} (calling AE {calling_ae})")
    try:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is not None:  # DESIGN §8: request/response stalls 40 ms without it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword in _RETURN_KEYS:
            setattr(query, keyword, "")
        query.StudyDate = f"{since}-{until}"
        found: list[Study] = []
        for status, identifier in assoc.send_c_find(query, FIND):
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(_study(identifier))
            elif code == 0x0000:
                break
            else:
                raise SweepError(
                    f"{where}: C-FIND failed with status "
                    f"{'none (connection lost or timed out)' if code < 0 else hex(code)}"
                )
        return found
    finally:
        if assoc.is_established:
            assoc.release()


def _study(ds: Dataset) -> Study:
    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    return Study(
        study_uid=text("StudyInstanceUID"),
        study_date=text("StudyDate"),
        accession=text("AccessionNumber"),
        patient_id=text("PatientID"),
        issuer=text("IssuerOfPatientID"),
        name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        procedure=text("StudyDescription"),
    )


#: An order item as the store returns it for the sweep: (item id, DICOM JSON, study UIDs).
OrderItem = tuple[int, dict[str, Any], tuple[str, ...]]
#: (accessions, study UIDs) → the items holding any of them.
Lookup = Callable[[Sequence[str], Sequence[str]], list[OrderItem]]


def _same(field_name: str, pacs: str, order: str) -> bool:
    if field_name == "name":
        return _name(pacs) == _name(order)
    if field_name == "procedure":
        return pacs.casefold().strip() == order.casefold().strip()
    return pacs == order


def _name(text: str) -> str:
    return "=".join(wi.pn_group_normalise(g) for g in text.split("="))


def compare(studies: Iterable[Study], lookup: Lookup) -> SweepReport:
    """Each study against its order; pure apart from ``lookup`` (the store)."""
    studies = list(studies)
    report = SweepReport(studies=len(studies))
    items = lookup(
        sorted({s.accession for s in studies if s.accession}),
        sorted({s.study_uid for s in studies if s.study_uid}),
    )
    by_accession: dict[str, list[OrderItem]] = {}
    by_uid: dict[str, OrderItem] = {}
    for it in items:
        acc = wi.first_text(it[1], wi.ACCESSION_NUMBER)
        by_accession.setdefault(acc, []).append(it)
        for uid in it[2]:
            by_uid.setdefault(uid, it)
    for study in studies:
        linked = by_uid.get(study.study_uid)
        candidates = by_accession.get(study.accession, []) if study.accession else []
        chosen = (
            linked
            if linked is not None and (linked in candidates or not candidates)
            else (candidates[0] if candidates else None)
        )
        if chosen is None:
            report.without_order.append(study)
            continue
        report.matched += 1
        item_id, item, _ = chosen
        for name, (_, order_kw) in COMPARED.items():
            pacs_value = getattr(study, name)
            order_value = plain(item.get(key_of(order_kw)))
            if name == "issuer" and not (pacs_value and order_value):
                continue  # most PACS and RIS leave it empty: only two values can disagree
            if name == "procedure" and not (pacs_value and order_value):
                continue  # a modality may leave the description empty
            if not _same(name, pacs_value, order_value):
                report.mismatches.append(
                    Mismatch(
                        study.study_uid, study.accession, name, pacs_value, order_value, item_id
                    )
                )
    return report


__all__ = [
    "COMPARED",
    "Mismatch",
    "Study",
    "SweepError",
    "SweepReport",
    "compare",
    "parse_day",
    "query_studies",
]
