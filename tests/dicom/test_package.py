"""broker.dicom's public surface and its status table (broker/dicom/__init__.py, status.py)."""

from __future__ import annotations

from types import ModuleType

import broker.dicom
from broker.dicom import Category, describe
from broker.dicom.status import MODALITY_WORKLIST_STATUS, MPPS_STATUS, category


def test_exported_members() -> None:
    public = {
        name
        for name, value in vars(broker.dicom).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(broker.dicom.__all__)


def test_status_table() -> None:
    assert describe(0xFF00, MODALITY_WORKLIST_STATUS).category is Category.PENDING
    assert describe(0xFE00, MODALITY_WORKLIST_STATUS).annex == "PS3.4 K.4.1.1.4"
    assert describe(0xC311, MODALITY_WORKLIST_STATUS).text == "Unable to process"
    assert describe(0x0110, MPPS_STATUS).category is Category.FAILURE
    assert describe(0xA801).category is Category.FAILURE  # not in the table: by its range
    assert [category(c) for c in (0x0000, 0xFF01, 0xB000, 0x0211, 0x1234)] == [
        Category.SUCCESS, Category.PENDING, Category.WARNING, Category.FAILURE, Category.UNKNOWN,
    ]  # fmt: skip
