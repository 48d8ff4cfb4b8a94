"""Fixtures for routing tests: the shipped routes/mappings and copies to edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of routes/ and mappings/ (and samples/, which the tests reference)."""
    for d in ("routes", "mappings", "samples"):
        shutil.copytree(ROOT / d, tmp_path / d)
    return tmp_path
