"""What a patient or order change means for stored worklist items and for PACS studies.

Pure functions over DICOM JSON (PS3.18 F.2): which attributes a change carries, how an item
looks after it, what differs between an order as stored and as a message now describes it,
and the reconciliation job an ``orthanc`` destination applies (docs/DELIVERY.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from broker.effects import DicomJson, PatientRef
from broker.worklist import item as wi

#: Patient-level attributes an ADT update carries (IHE PIR, RAD TF-2 §4.12 Table 4.12-x):
#: what the PACS must correct on stored images of the patient.
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "EthnicGroup",
    "PatientComments",
)
#: Identity keywords: a patient update never changes them (a merge or A47 does).
IDENTITY_KEYWORDS = frozenset({"PatientID", "IssuerOfPatientID"})
#: Order/study-level attributes a changed order can correct on its study in the PACS.
ORDER_KEYWORDS = (
    "AccessionNumber",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "ReferringPhysicianName",
    "RequestedProcedureCodeSequence",
)
#: A changed RequestedProcedureDescription is also the study's description in a PACS.
STUDY_ALIASES = {"RequestedProcedureDescription": "StudyDescription"}

#: Content type of a reconciliation job for REST destinations (docs/DELIVERY.md, orthanc).
JOB_CONTENT_TYPE = "application/vnd.broker.reconcile+json"


def key_of(keyword: str) -> str:
    """A keyword's DICOM JSON key (``PatientName`` → ``"00100010"``); unknown: itself."""
    tag = tag_for_keyword(keyword)
    return wi.tag_key(tag) if tag is not None else keyword


_key = key_of


_PATIENT_KEYS = {_key(k): k for k in PATIENT_KEYWORDS}
#: The DICOM JSON keys of PATIENT_KEYWORDS: all that with_patient can change.
PATIENT_JSON_KEYS = tuple(_PATIENT_KEYS)
_ORDER_KEYS = {_key(k): k for k in ORDER_KEYWORDS}


def keyword_of(key: str) -> str:
    """DICOM JSON key (``"00100010"``) → keyword (``PatientName``), or the key itself."""
    try:
        return keyword_for_tag(int(key, 16)) or key
    except ValueError:
        return key


def plain(element: DicomJson | None) -> str:
    """One DICOM JSON element as the text a REST PACS takes: PN alphabetic, values joined
    with a backslash (PS3.5 6.4); sequences as their JSON (compared, not sent as text)."""
    if not element:
        return ""
    values = element.get("Value")
    if not values:
        return ""
    if element.get("vr") == "SQ":
        return json.dumps(values, sort_keys=True)
    return "\\".join(wi.pn_to_text(v) if isinstance(v, dict) else str(v) for v in values)


def patient_attributes(dataset: DicomJson) -> DicomJson:
    """The patient-level elements of ``dataset`` (a demographics mapping's output)."""
    return {k: v for k, v in dataset.items() if k in _PATIENT_KEYS}


def patient_of(dataset: DicomJson) -> PatientRef:
    """The identity in a demographics dataset (PatientID, IssuerOfPatientID)."""
    return PatientRef(
        wi.first_text(dataset, wi.PATIENT_ID), wi.first_text(dataset, wi.ISSUER_OF_PATIENT_ID)
    )


def with_patient(
    item: DicomJson, demographics: DicomJson, target: PatientRef | None = None
) -> DicomJson:
    """``item`` with the demographics' patient attributes (identity only from ``target``).

    An attribute the update sends empty is cleared (HL7 ``""`` means delete); one it does
    not send at all is kept: ADT updates carry the whole PID, but a mapping may omit some.
    """
    out = dict(item)
    for key, element in demographics.items():
        kw = _PATIENT_KEYS.get(key)
        if kw is None or kw in IDENTITY_KEYWORDS:
            continue
        out[key] = element
    if target is not None:
        out[_key("PatientID")] = {"vr": "LO", "Value": [target.patient_id]}
        if target.issuer:
            out[_key("IssuerOfPatientID")] = {"vr": "LO", "Value": [target.issuer]}
        else:
            out.pop(_key("IssuerOfPatientID"), None)
    return out


def changed(old: DicomJson, new: DicomJson, keys: Iterable[str]) -> dict[str, str]:
    """Keyword → new text of each of ``keys`` (DICOM JSON keys) whose value differs."""
    out: dict[str, str] = {}
    for key in keys:
        before, after = plain(old.get(key)), plain(new.get(key))
        if before != after:
            out[keyword_of(key)] = after
    return out


def order_changes(old: DicomJson, new: DicomJson) -> dict[str, str]:
    """What a PACS keeps of an order that differs between the stored item and the new one:
    order attributes and the patient's demographics (not the identity: that is a merge)."""
    keys = [*_ORDER_KEYS, *(k for k, kw in _PATIENT_KEYS.items() if kw not in IDENTITY_KEYWORDS)]
    return changed(old, new, keys)


def patient_set(demographics: DicomJson, target: PatientRef | None = None) -> dict[str, str]:
    """The ``set`` of a patient job: every patient attribute the update carries, as text."""
    out = {
        kw: plain(element)
        for key, element in demographics.items()
        if (kw := _PATIENT_KEYS.get(key)) is not None
        and kw not in IDENTITY_KEYWORDS
        and element.get("vr") != "SQ"
    }
    if target is not None:
        out["PatientID"] = target.patient_id
        if target.issuer:
            out["IssuerOfPatientID"] = target.issuer
    return out


def study_set(changes: Mapping[str, str]) -> dict[str, str]:
    """An order's changed attributes as a PACS study takes them (sequences left out: a
    study's code sequences are the modality's business once images exist)."""
    out: dict[str, str] = {}
    for kw, value in changes.items():
        if kw.endswith("Sequence"):
            continue
        out[kw] = value
        alias = STUDY_ALIASES.get(kw)
        if alias:
            out[alias] = value
    return out


def job(
    op: str,
    change_id: str,
    *,
    patient: PatientRef | None = None,
    target: PatientRef | None = None,
    accession: str = "",
    study_uids: Iterable[str] = (),
    set_: Mapping[str, str] | None = None,
) -> bytes:
    """One reconciliation job (docs/DELIVERY.md ``type: orthanc``) as UTF-8 JSON."""
    body: dict[str, Any] = {"op": op, "id": change_id}
    if patient is not None:
        body["patient"] = {"PatientID": patient.patient_id, "IssuerOfPatientID": patient.issuer}
    if target is not None:
        body["target"] = {"PatientID": target.patient_id, "IssuerOfPatientID": target.issuer}
    if accession:
        body["accession"] = accession
    body["study_uids"] = sorted({u for u in study_uids if u})
    body["set"] = dict(set_ or {})
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = [
    "IDENTITY_KEYWORDS",
    "JOB_CONTENT_TYPE",
    "ORDER_KEYWORDS",
    "PATIENT_JSON_KEYS",
    "PATIENT_KEYWORDS",
    "changed",
    "job",
    "key_of",
    "keyword_of",
    "order_changes",
    "patient_attributes",
    "patient_of",
    "patient_set",
    "plain",
    "study_set",
    "with_patient",
]
