"""Fixtures of the worklist tests: a fresh SQLite store, the item builder, query encoding."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from broker.storage.redis_worklist import RedisWorklistStore
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_worklist import SqliteWorklistStore
from tests.redis_server import shared_redis_url, stop_shared_redis

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


@contextlib.contextmanager
def open_store(backend: str, directory: Path) -> Iterator[Any]:
    """An empty worklist store: 'sqlite' (a fresh file) or 'redis' (the session's
    redis-server, keys under a prefix of their own)."""
    if backend == "sqlite":
        db = SqliteDatabase(directory / "broker.db", synchronous="OFF")
        wl = SqliteWorklistStore(db)
        db.open()
        try:
            yield wl
        finally:
            db.close()
        return
    client = redis.Redis.from_url(shared_redis_url())
    try:
        yield RedisWorklistStore(client, prefix=f"test{uuid.uuid4().hex[:12]}")
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty worklist store of each backend in turn."""
    with open_store(request.param, tmp_path) as wl:
        yield wl


@pytest.fixture(scope="package", autouse=True)
def _stop_redis_after_the_package() -> Iterator[None]:
    yield
    stop_shared_redis()


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
