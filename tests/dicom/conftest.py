"""Fixtures for the DICOM SCP tests: the fake backend and a running SCP on a free port."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from broker.dicom import DicomSCP
from tests.dicom.fakes import DUMP2DCM, ECHOSCU, FINDSCU, FakeBackend, worklist_item, worklist_query


@pytest.fixture
def items() -> list[Dataset]:
    return [worklist_item(n) for n in range(12)]


@pytest.fixture
def backend(items: list[Dataset]) -> FakeBackend:
    return FakeBackend(items)


@pytest.fixture
def scp_options() -> dict[str, Any]:
    """Constructor options of the ``scp`` fixture; override in a test module."""
    return {}


@pytest.fixture
async def scp(backend: FakeBackend, scp_options: dict[str, Any]) -> AsyncIterator[DicomSCP]:
    options = {"ae_title": "BROKER", "host": "127.0.0.1", "port": 0, **scp_options}
    async with DicomSCP(backend, **options) as server:
        yield server


@pytest.fixture(scope="session")
def dcmtk() -> None:
    """DCMTK must be installed: a missing tool is a failure, not a skip (DESIGN §7)."""
    for tool in (FINDSCU, ECHOSCU, DUMP2DCM):
        assert shutil.which(tool), f"{tool} missing: install the Debian package dcmtk"


@pytest.fixture
def query_file(tmp_path: Path) -> Path:
    """A worklist query written as a DICOM file for findscu."""
    path = tmp_path / "query.dcm"
    worklist_query().save_as(path, implicit_vr=False, little_endian=True)
    return path
