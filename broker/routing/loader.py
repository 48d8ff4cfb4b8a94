"""Load every route and mapping file, compile the mappings, cross-check references.

All errors of all files are collected (``file:line: field: found X, expected Y``); nothing is
half-loaded: :func:`load_definitions` either returns a complete :class:`Definitions` or raises
:class:`~broker.errors.DefinitionError` whose ``errors`` lists every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import DefinitionError
from broker.mapping import CompileError, Mapping, MappingFile, compile_mapping
from broker.routing.models import DEFAULT_ORDER_CONTROL, Route, RouteFile, Unmatched
from broker.routing.yamlsource import field_name, line_of, load_model


class DefinitionsError(DefinitionError):
    """Route/mapping files are invalid; ``errors`` holds one analyst-readable line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s) in routes/mappings:\n" + "\n".join(errors))
        self.errors = errors


@dataclass
class Definitions:
    """A validated, compiled set: what an engine runs."""

    routes: list[Route]
    mappings: dict[str, Mapping]
    order_control: dict[str, dict[str, str]]
    unmatched: Unmatched
    route_files: dict[str, Path] = field(default_factory=dict)  # route name -> file
    route_lines: dict[str, int] = field(default_factory=dict)


def _yaml_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_all(routes_dir: Path, mappings_dir: Path) -> tuple[Definitions | None, list[str]]:
    """Load and cross-check everything; returns (definitions or None, errors)."""
    errors: list[str] = []
    # A folder that is not there is a configuration mistake (a typo, a missing volume), not
    # an empty set: every message would be answered "no route".
    for label, directory in (("routes", routes_dir), ("mappings", mappings_dir)):
        if not Path(directory).is_dir():
            errors.append(
                f"{directory}: {label}: found no such folder, expected a folder of "
                f"YAML files (config key {label!r}, relative to the config file)"
            )
    if errors:
        return None, errors
    mappings: dict[str, Mapping] = {}
    mapping_files: dict[str, Path] = {}
    for path in _yaml_files(Path(mappings_dir)):
        model, tree, errs = load_model(path, MappingFile)
        errors.extend(errs)
        if model is None:
            continue
        if model.name in mappings:
            errors.append(
                f"{path}:{line_of(tree, ['name'])}: name: found {model.name!r} again "
                f"(also in {mapping_files[model.name]}), expected unique mapping names"
            )
            continue
        try:
            mappings[model.name] = compile_mapping(model, path.parent)
            mapping_files[model.name] = path
        except CompileError as exc:
            errors.extend(
                f"{path}:{line_of(tree, loc)}: {field_name(loc)}: {msg}"
                for loc, msg in exc.problems
            )

    routes: list[Route] = []
    tables: dict[str, dict[str, str]] = {"default": dict(DEFAULT_ORDER_CONTROL)}
    unmatched: Unmatched | None = None
    route_files: dict[str, Path] = {}
    route_lines: dict[str, int] = {}
    checks: list[tuple[Path, object, RouteFile]] = []
    for path in _yaml_files(Path(routes_dir)):
        rf, tree, errs = load_model(path, RouteFile)
        errors.extend(errs)
        if rf is None:
            continue
        checks.append((path, tree, rf))
        for name, table in rf.order_control.items():
            tables.setdefault(name, {}).update(table)
        if rf.unmatched is not None:
            if unmatched is not None:
                errors.append(
                    f"{path}:{line_of(tree, ['unmatched'])}: unmatched: found a second "
                    "unmatched answer, expected it in one route file only"
                )
            unmatched = rf.unmatched
        for i, route in enumerate(rf.routes):
            if route.name in route_files:
                errors.append(
                    f"{path}:{line_of(tree, ['routes', i, 'name'])}: routes[{i}].name: "
                    f"found {route.name!r} again, expected unique route names"
                )
            route_files[route.name] = path
            route_lines[route.name] = line_of(tree, ["routes", i])
            routes.append(route)

    for path, tree, rf in checks:
        for i, route in enumerate(rf.routes):
            for j, action in enumerate(route.actions):
                base: list[str | int] = ["routes", i, "actions", j]
                wl, fw = action.worklist, action.forward
                if wl is not None:
                    if wl.order_control not in tables:
                        loc = [*base, "worklist", "order_control"]
                        errors.append(
                            f"{path}:{line_of(tree, loc)}: {field_name(loc)}: found "
                            f"{wl.order_control!r}, expected one of {sorted(tables)}"
                        )
                    if wl.op in ("auto", "upsert") and wl.mapping is None:
                        loc = [*base, "worklist"]
                        errors.append(
                            f"{path}:{line_of(tree, loc)}: {field_name(loc)}.mapping: "
                            f"found nothing, expected a dicom mapping for op {wl.op}"
                        )
                    _check_mapping(
                        path,
                        tree,
                        [*base, "worklist", "mapping"],
                        wl.mapping,
                        "dicom",
                        mappings,
                        errors,
                    )
                rc = action.reconcile
                if rc is not None:
                    for key, kind in (("mapping", "hl7"), ("demographics", "dicom"),
                                      ("items", "dicom")):  # fmt: skip
                        _check_mapping(
                            path,
                            tree,
                            [*base, "reconcile", key],
                            getattr(rc, key),
                            kind,
                            mappings,
                            errors,
                        )
                if fw is not None:
                    _check_mapping(
                        path,
                        tree,
                        [*base, "forward", "mapping"],
                        fw.mapping,
                        "hl7",
                        mappings,
                        errors,
                    )
    if errors:
        return None, errors
    return Definitions(
        routes, mappings, tables, unmatched or Unmatched(), route_files, route_lines
    ), []


def _check_mapping(
    path: Path,
    tree: object,
    loc: list[str | int],
    name: str | None,
    kind: str,
    mappings: dict[str, Mapping],
    errors: list[str],
) -> None:
    if name is None:
        return
    m = mappings.get(name)
    where = f"{path}:{line_of(tree, loc)}: {field_name(loc)}"
    if m is None:
        errors.append(f"{where}: found {name!r}, expected one of the mappings {sorted(mappings)}")
    elif m.kind != kind:
        errors.append(f"{where}: found {name!r} of kind {m.kind}, expected a {kind} mapping")


def load_definitions(routes_dir: Path | str, mappings_dir: Path | str) -> Definitions:
    """Load everything or raise :class:`DefinitionsError` listing every error."""
    defs, errors = load_all(Path(routes_dir), Path(mappings_dir))
    if defs is None:
        raise DefinitionsError(errors)
    return defs
