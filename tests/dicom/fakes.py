"""Test doubles for the DICOM SCP: a fake worklist backend, MWL items and queries, codecs."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

FINDSCU = "/usr/bin/findscu"
ECHOSCU = "/usr/bin/echoscu"
DUMP2DCM = "/usr/bin/dump2dcm"
# DCMTK leaves Nagle on unless told; with it each query stalls ~40 ms on delayed ACKs.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def encode(dataset: Dataset, explicit_vr: bool) -> bytes:
    """Encode ``dataset`` little endian in implicit or explicit VR (no preamble, no meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = not explicit_vr
    write_dataset(fp, dataset)
    return fp.getvalue()


def decode(data: bytes, explicit_vr: bool) -> Dataset:
    """Decode little-endian dataset bytes."""
    return read_dataset(io.BytesIO(data), not explicit_vr, True)


def worklist_item(n: int) -> Dataset:
    """A worklist item carrying exactly the return keys of ``worklist_query``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = f"ACC{n:05d}"
    ds.PatientName = f"DOE^JANE{n}"
    ds.PatientID = f"PID{n:05d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{n + 1}"
    ds.RequestedProcedureID = f"RP{n}"
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT01"
    sps.ScheduledProcedureStepStartDate = "20240102"
    sps.ScheduledProcedureStepStartTime = "101500"
    sps.ScheduledProcedureStepID = f"SPS{n}"
    sps.ScheduledProcedureStepDescription = "CT HEAD"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def worklist_query(**keys: Any) -> Dataset:
    """A modality's MWL query: the keys of ``worklist_item`` empty, overridden by ``keys``."""
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


class FakeQueryError(Exception):
    """Stands in for the worklist's QueryError: a status-bearing failure."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


class Status(NamedTuple):
    status: int
    comment: str = ""


@dataclass
class FakeBackend:
    """Answers every query with ``items`` in batches; PatientID steers failures.

    PatientID ``BAD`` → FakeQueryError(0xA900); ``CRASH`` → RuntimeError before any answer;
    ``CRASH-LATE`` → RuntimeError after the first batch.
    """

    items: list[Dataset]
    batch_size: int = 5
    finds: list[tuple[Dataset, bool, str]] = field(default_factory=list)
    mpps: dict[str, Dataset] = field(default_factory=dict)
    mpps_calls: list[tuple[str, str, str]] = field(default_factory=list)
    batches_sent: int = 0

    def __post_init__(self) -> None:
        self._encoded = {vr: [encode(ds, vr) for ds in self.items] for vr in (False, True)}

    def find(
        self, identifier: bytes, *, explicit_vr: bool, calling_ae: str
    ) -> Iterator[list[bytes]]:
        query = decode(identifier, explicit_vr)
        self.finds.append((query, explicit_vr, calling_ae))
        patient_id = str(query.get("PatientID", ""))
        if patient_id == "BAD":
            raise FakeQueryError(0xA900, "Identifier does not match: PatientID")
        if patient_id == "CRASH":
            raise RuntimeError("backend bug")
        return self._batches(self._encoded[explicit_vr], patient_id == "CRASH-LATE")

    def _batches(self, encoded: list[bytes], crash_late: bool) -> Iterator[list[bytes]]:
        for start in range(0, len(encoded), self.batch_size):
            if crash_late and start:
                raise RuntimeError("backend bug mid-answer")
            self.batches_sent += 1
            yield encoded[start : start + self.batch_size]

    def mpps_create(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> Status:
        self.mpps_calls.append(("create", sop_instance_uid, calling_ae))
        if sop_instance_uid in self.mpps:
            return Status(0x0111, "Duplicate SOP instance")
        if dataset.get("PerformedProcedureStepStatus") != "IN PROGRESS":
            return Status(0x0106, "PerformedProcedureStepStatus must be IN PROGRESS")
        self.mpps[sop_instance_uid] = dataset
        return Status(0x0000)

    def mpps_set(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> Status:
        self.mpps_calls.append(("set", sop_instance_uid, calling_ae))
        if sop_instance_uid not in self.mpps:
            return Status(0x0112, "No such SOP instance")
        if dataset.get("PerformedProcedureStepStatus") == "BOOM":
            raise RuntimeError("backend bug")
        self.mpps[sop_instance_uid].update(dataset)
        return Status(0x0000)


def canonical(dataset: Dataset) -> dict[str, Any]:
    """DICOM JSON of a dataset, so fresh and received datasets compare by value (pydicom keeps
    the defined/undefined sequence length a dataset was read with)."""
    return dataset.to_json_dict()
