"""JSON Schemas of route and mapping files, generated from the pydantic models (for editors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from broker.mapping.models import MappingFile
from broker.routing.models import RouteFile

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "route.schema.json": RouteFile,
    "mapping.schema.json": MappingFile,
}


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (draft 2020-12, pydantic's output, alias names)."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in SCHEMA_FILES.items():
        s = model.model_json_schema(by_alias=True)
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = s
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path | str = "docs/schemas") -> list[Path]:
    """Write both schemas into ``directory``; returns the paths written."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, s in schemas().items():
        p = d / name
        p.write_text(render(s), encoding="utf-8")
        written.append(p)
    return written


if __name__ == "__main__":  # python -m broker.routing.schema [DIR]
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
