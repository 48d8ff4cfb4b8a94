"""YAML with line numbers into pydantic models; errors as ``file:line: field: found X, expected Y``.

ruamel.yaml's round-trip loader keeps each mapping key's and sequence item's line (``.lc``);
a pydantic error location (``routes, 0, actions, 1, forward, to``) is walked through the
loaded tree to the deepest node that has a line. Raw pydantic messages never reach the analyst.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

M = TypeVar("M", bound=BaseModel)

_ALIASES = {"from_": "from", "in_": "in", "continue_": "continue", "copy_segments": "copy"}


def load_yaml(path: Path) -> tuple[Any, list[str]]:
    """Parse one file; returns (tree, errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}:1: (file): found an unreadable file ({exc}), expected UTF-8 YAML"]
    try:
        return YAML(typ="rt").load(text), []
    except MarkedYAMLError as exc:
        line = (exc.problem_mark.line + 1) if exc.problem_mark else 1
        return None, [f"{path}:{line}: (yaml): found {exc.problem}, expected valid YAML"]


def line_of(tree: Any, loc: Sequence[str | int]) -> int:
    """1-based line of the deepest node of ``loc`` in ``tree`` (1 when unknown)."""
    line = 1
    node = tree
    for key in loc:
        key = _ALIASES.get(str(key), key) if isinstance(key, str) else key
        if isinstance(node, CommentedMap) and key in node:
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def field_name(loc: Sequence[str | int]) -> str:
    out = ""
    for key in loc:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            k = _ALIASES.get(key, key)
            out += ("." if out else "") + k
    return out or "(file)"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping with keys " + ", ".join(map(str, list(value)[:6]))
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(err: Any) -> str:
    t = err["type"]
    found = _short(err.get("input"))
    ctx = err.get("ctx") or {}
    if t == "missing":
        return "found nothing, expected this required field"
    if t == "extra_forbidden":
        return f"found an unknown field ({found}), expected only the documented fields"
    if t == "literal_error":
        return f"found {found}, expected one of {ctx.get('expected', '')}"
    if t == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg if msg.startswith("found") else f"found {found}, expected {msg}"
    if t.endswith("_type") or t.endswith("_parsing"):
        want = t.split("_")[0].replace("dict", "mapping").replace("model", "mapping")
        if t == "model_type":
            want = "a mapping"
        return f"found {found}, expected {want}"
    return f"found {found}, expected {err['msg'][0].lower()}{err['msg'][1:]}"


def format_validation(path: Path, tree: Any, exc: ValidationError) -> list[str]:
    """One ``file:line: field: found X, expected Y`` line per pydantic error."""
    out = []
    for err in exc.errors():
        loc = [
            k
            for k in err["loc"]
            if not (isinstance(k, str) and k[:1].isupper() and k in ("Attribute", "Source"))
        ]
        out.append(f"{path}:{line_of(tree, loc)}: {field_name(loc)}: {_explain(err)}")
    return out


def load_model(path: Path, model: type[M]) -> tuple[M | None, Any, list[str]]:
    """Load ``path`` into ``model``; returns (model or None, yaml tree, errors)."""
    tree, errors = load_yaml(path)
    if errors:
        return None, None, errors
    if tree is None:
        tree = CommentedMap()
    try:
        return model.model_validate(tree), tree, []
    except ValidationError as exc:
        return None, tree, format_validation(path, tree, exc)
