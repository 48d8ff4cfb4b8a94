"""Small synthetic DICOM studies for tests: N series x M tiny images, encoded as Part 10 files.

``build_study(patient_id="P1", accession="ACC1", series=2, instances=3)`` returns the files
as bytes (Secondary Capture, 8x8 MONOCHROME2, Explicit VR Little Endian, valid file meta),
ready to upload to a PACS (``OrthancServer.upload``) or to send with a C-STORE.
UIDs are generated (``pydicom.uid.generate_uid``) unless given; series and instance UIDs are
derived from a random root per study, so two calls never collide.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

#: Side of the square test image in pixels (tiny: the files stay ~1 KB).
IMAGE_SIDE = 8


@dataclass(frozen=True, slots=True)
class StudyFile:
    """One encoded instance and the UIDs it carries."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes


def build_study(
    *,
    patient_id: str = "P1",
    issuer: str | None = None,
    patient_name: str = "DOE^JANE",
    birth_date: str = "19700101",
    sex: str = "F",
    accession: str = "ACC1",
    study_uid: str | None = None,
    study_description: str = "CT HEAD",
    series: int = 1,
    instances: int = 2,
    modality: str = "OT",
) -> list[StudyFile]:
    """Encode ``series`` x ``instances`` files of one study; see the module docstring."""
    study_uid = study_uid or generate_uid()
    files: list[StudyFile] = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances + 1):
            sop_uid = generate_uid()
            ds = _dataset(
                patient_id, issuer, patient_name, birth_date, sex, accession, study_uid,
                study_description, series_uid, sop_uid, s, i, modality,
            )  # fmt: skip
            files.append(StudyFile(study_uid, series_uid, sop_uid, _encode(ds)))
    return files


def _dataset(
    patient_id: str,
    issuer: str | None,
    patient_name: str,
    birth_date: str,
    sex: str,
    accession: str,
    study_uid: str,
    study_description: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int,
    modality: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ConversionType = "WSD"  # Secondary Capture Equipment module (PS3.3 C.8.6.1)
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyDescription = study_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = IMAGE_SIDE
    ds.Columns = IMAGE_SIDE
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(IMAGE_SIDE * IMAGE_SIDE))
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    # enforce_file_format: preamble + "DICM" + group 2 as PS3.10 §7.1 requires.
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


__all__ = ["IMAGE_SIDE", "StudyFile", "build_study"]
