"""DICOM network side: Modality Worklist C-FIND, MPPS N-CREATE/N-SET and C-ECHO SCP.

Other packages import from here only. ``app.py`` binds :class:`DicomSCP` to the worklist service,
which satisfies :class:`WorklistBackend`.
"""

from broker.dicom.backend import StatusLike, WorklistBackend
from broker.dicom.negotiation import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MODALITY_WORKLIST_FIND,
    VERIFICATION,
    Service,
)
from broker.dicom.scp import DicomSCP
from broker.dicom.status import Category, StatusInfo, describe

__all__ = [
    "MODALITY_PERFORMED_PROCEDURE_STEP",
    "MODALITY_WORKLIST_FIND",
    "VERIFICATION",
    "Category",
    "DicomSCP",
    "Service",
    "StatusInfo",
    "StatusLike",
    "WorklistBackend",
    "describe",
]
