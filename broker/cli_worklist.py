"""``broker worklist …``: list, show, import, export and explain worklist items."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from broker.config import Settings
from broker.worklist import (
    QueryError,
    WorklistService,
    explain,
    export_items,
    import_files,
)
from broker.worklist.summary import redact, summary_row


@contextmanager
def open_worklist(settings: Settings, *, create: bool = False) -> Iterator[Any]:
    """The store of a config, opened for this command (another broker may be serving it)."""
    from broker.storage.factory import stores_for_command

    with stores_for_command(settings, create=create) as stores:
        yield stores.worklist


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def register(
    main: click.Group, load: Callable[[Path | None], Settings], config_option: Decorator
) -> None:
    """Attach the ``worklist`` group to the main command (``load(config) -> Settings``)."""

    @main.group()
    def worklist() -> None:
        """Inspect and migrate the modality worklist (patient data redacted unless asked)."""

    @worklist.command("ls")
    @config_option
    @click.option("--all", "show_all", is_flag=True, help="Include finished items (history).")
    @click.option("--accession", help="Only this AccessionNumber.")
    @click.option("--status", help="Only this step status (SCHEDULED, STARTED, COMPLETED, ...).")
    @click.option("--limit", default=50, show_default=True)
    @click.option("--show-phi", is_flag=True, help="Show patient IDs.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def ls(
        config: Path | None,
        show_all: bool,
        accession: str | None,
        status: str | None,
        limit: int,
        show_phi: bool,
        as_json: bool,
    ) -> None:
        """Items on the worklist (active ones unless --all), oldest first."""
        with open_worklist(load(config)) as store:
            if accession:
                rows = store.items_by_id(store.find_ids(accession=accession))
            else:
                rows = store.items(active_only=not show_all)
            shown = 0
            for item_id, item in rows:
                row = summary_row(item_id, item, show_phi=show_phi)
                if status and row["status"].upper() != status.upper():
                    continue
                if as_json:
                    click.echo(json.dumps(row, ensure_ascii=False))
                else:
                    click.echo(
                        f"{row['id']:>7} {row['accession']:<16} {row['modality']:<3} "
                        f"{row['station_ae']:<16} {row['start']:<9} {row['status']:<12} "
                        f"{row['patient_id']:<12} {row['procedure']}"
                    )
                shown += 1
                if shown >= limit:
                    break

    @worklist.command("show")
    @config_option
    @click.argument("item_id", type=int)
    @click.option("--show-phi", is_flag=True, help="Show patient attributes.")
    def show(config: Path | None, item_id: int, show_phi: bool) -> None:
        """One item as DICOM JSON with its order, status and history."""
        with open_worklist(load(config)) as store:
            found = store.get(item_id)
            if found is None:
                raise click.ClickException(f"no worklist item {item_id}")
            if not show_phi:
                found["item"] = redact(found["item"])
                found["patient_key"] = "<redacted>"
            click.echo(json.dumps(found, indent=2, ensure_ascii=False))

    @worklist.command("import")
    @config_option
    @click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
    def import_(config: Path | None, paths: tuple[Path, ...]) -> None:
        """Import DICOM worklist files (wlmscpfs or Orthanc folders, files or directories).

        Every file becomes an item; nothing is merged or dropped silently. Items lacking
        values PS3.4 requires are imported and listed so they can be fixed.
        """
        with open_worklist(load(config), create=True) as store:
            report = import_files(store, list(paths))
        for line in report.lines():
            click.echo(line)
        if report.failed:
            raise SystemExit(1)

    @worklist.command("export")
    @config_option
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--all", "show_all", is_flag=True, help="Also finished items.")
    def export(config: Path | None, directory: Path, show_all: bool) -> None:
        """Write items as .wl files (a folder wlmscpfs or Orthanc can serve)."""
        with open_worklist(load(config)) as store:
            written = export_items(store.items(active_only=not show_all), directory)
        click.echo(f"{len(written)} item(s) written to {directory}")

    @worklist.command("explain")
    @config_option
    @click.argument("query", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--limit", default=10, show_default=True, help="Items to explain.")
    @click.option("--calling-ae", default="", help="Calling AE title, as the modality sends it.")
    def explain_(config: Path | None, query: Path, limit: int, calling_ae: str) -> None:
        """For the items closest to matching QUERY.dcm, which key excluded each.

        The analyst's answer to "why is this order not on the modality's worklist?".
        """
        settings = load(config)
        dataset = dcmread(query, force=True)
        buffer = DicomBytesIO()  # the identifier as the SCP receives it: explicit VR LE
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_dataset(buffer, dataset)
        with open_worklist(settings) as store:
            service = WorklistService(
                store, calling_ae_as_station=settings.dicom.calling_ae_as_station
            )
            try:
                parsed, _, _ = service.prepare(
                    buffer.getvalue(), explicit_vr=True, calling_ae=calling_ae
                )
                matcher = parsed.matcher()
            except QueryError as exc:
                raise click.ClickException(
                    f"{query}: the SCP would refuse this query: 0x{exc.status:04X} {exc.comment}"
                ) from None
            verdicts = explain(matcher, store.items(active_only=False), limit=limit)
        if not verdicts:
            click.echo("the worklist is empty")
        for verdict in verdicts:
            click.echo(str(verdict))


__all__ = ["open_worklist", "register"]
