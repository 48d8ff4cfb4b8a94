"""Fixtures of the worklist tests: a fresh SQLite store, the item builder, query encoding."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_worklist import SqliteWorklistStore

ROOT = Path(__file__).resolve().parents[2]


def load_worklist_data() -> ModuleType:
    """bench/worklist_data.py (the item generator), imported by path."""
    name = "worklist_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "worklist_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_item() -> Callable[..., dict[str, Any]]:
    """Builds one worklist item (DICOM JSON) from keyword values."""
    return load_worklist_data().make_item  # type: ignore[no-any-return]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteWorklistStore]:
    """An empty worklist store on a fresh SQLite file."""
    db = SqliteDatabase(tmp_path / "broker.db", synchronous="OFF")
    wl = SqliteWorklistStore(db)
    db.open()
    yield wl
    db.close()


def encode_query(ds: Dataset, *, explicit: bool) -> bytes:
    """A query dataset as C-FIND identifier bytes in the given little-endian syntax."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = not explicit
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.fixture
def encode() -> Callable[..., bytes]:
    """encode(ds, explicit=True) -> identifier bytes."""
    return encode_query
