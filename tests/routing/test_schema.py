"""The committed JSON Schemas equal the ones generated from the models."""

from __future__ import annotations

from pathlib import Path

from broker.routing.schema import render, schemas

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_current() -> None:
    for name, schema in schemas().items():
        committed = (ROOT / "docs" / "schemas" / name).read_text(encoding="utf-8")
        assert committed == render(schema), (
            f"docs/schemas/{name} is stale: run python -m broker.routing.schema")
