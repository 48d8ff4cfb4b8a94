"""The ``broker`` command line (DESIGN.md §6, contract): serve, check, route, send, journal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from broker import logs
from broker.config import Settings, load_settings
from broker.errors import BrokerError, ConfigError
from broker.net import redact_url

CONFIG_ENV = "BROKER_CONFIG"


def _load(config: Path | None) -> Settings:
    if config is None and os.environ.get(CONFIG_ENV):
        config = Path(os.environ[CONFIG_ENV])
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config",
    "-c",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file (YAML). Default: ${CONFIG_ENV}, else built-in defaults.",
)


class _BrokerGroup(click.Group):
    """Turns the broker's own errors into one-line messages (exit 1), never tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_BrokerGroup)
@click.version_option(package_name="broker")
def main() -> None:
    """RIS-PACS-EHR interface broker: HL7 v2 over MLLP in, DICOM worklist out."""


@main.command()
@config_option
def serve(config: Path | None) -> None:
    """Run the MLLP listeners, the DICOM SCP and the admin HTTP listener."""
    settings = _load(config)
    logs.configure(settings.logging.level, settings.logging.format, settings.logging.show_phi)
    from broker.app import serve as run

    try:
        _run(run(settings))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


@main.command()
@config_option
def check(config: Path | None) -> None:
    """Validate config, routes and mappings, run the mapping tests; exit 1 on any error."""
    settings = _load(config)
    from broker.delivery.worker import DeliveryService

    bad = DeliveryService.check_settings(settings)
    for problem in bad:
        click.echo(f"error: {problem}")
    if bad:
        sys.exit(1)
    click.echo(
        f"config: ok (store {redact_url(settings.store)}, {len(settings.mllp)} MLLP listener(s), "
        f"{len(settings.destinations)} destination(s))"
    )
    from broker.storage.factory import (
        close_client,
        is_redis,
        redis_client,
        redis_durability_problems,
    )

    if is_redis(settings):
        # warnings, not errors: a test Redis may run without persistence on purpose
        client = redis_client(settings)
        try:
            for problem in redis_durability_problems(client):
                click.echo(f"warning: store: {problem}")
        finally:
            close_client(client)
    from broker.routing import check as run_check

    report = run_check(settings.routes_dir, settings.mappings_dir, settings.destination_types())
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    for error in report.errors:
        click.echo(f"error: {error}")
    click.echo(
        f"routes and mappings: {len(report.errors)} error(s), {len(report.warnings)} warning(s); "
        f"mapping tests: {report.tests_run - report.tests_failed}/{report.tests_run} passed"
    )
    if not report.ok:
        sys.exit(1)


@main.command()
@config_option
@click.argument("message", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def route(config: Path | None, message: Path) -> None:
    """Dry run: print as JSON what MESSAGE would do (route, actions, items), changing nothing."""
    settings = _load(config)
    from broker.hl7.charset import CharsetError
    from broker.hl7.message import HL7ParseError
    from broker.routing import (
        DefinitionsError,
        RouteEngine,
        dry_run,
        load_definitions,
        read_message,
    )

    try:
        definitions = load_definitions(settings.routes_dir, settings.mappings_dir)
    except DefinitionsError as exc:
        raise click.ClickException("\n".join(exc.errors)) from None
    try:
        parsed = read_message(message)
    except (CharsetError, HL7ParseError) as exc:
        raise click.ClickException(f"{message}: {exc}") from None
    engine = RouteEngine(definitions, settings.destination_types())
    result = dry_run(engine, parsed)
    from broker.hl7.structure import check_structure

    structure = check_structure(parsed.text)
    result["structure"] = {
        "checked": structure.checked,
        "problems": structure.problems,
        **({"note": structure.note} if structure.note else {}),
    }
    click.echo(json.dumps(result, indent=2, ensure_ascii=False))


@main.command()
@click.argument("address")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for each ACK.")
@click.option(
    "--raw", is_flag=True, help="Send the bytes as they are (default: segments end in CR)."
)
def send(address: str, files: tuple[Path, ...], timeout: float, raw: bool) -> None:
    """Send HL7 files over MLLP to HOST:PORT and print each ACK's MSA segment."""
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise click.BadParameter(f"found {address!r}; expected HOST:PORT", param_hint="ADDRESS")
    failures = _run(_send_all(host, int(port_text), files, timeout, raw))
    if failures:
        sys.exit(1)


async def _send_all(
    host: str, port: int, files: tuple[Path, ...], timeout: float, raw: bool
) -> int:
    from broker.hl7.client import MllpClient

    failures = 0
    async with MllpClient(host, port, ack_timeout_s=timeout) as client:
        for path in files:
            payload = path.read_bytes()
            if not raw:
                payload = (
                    b"\r".join(
                        line
                        for line in payload.replace(b"\r\n", b"\n")
                        .replace(b"\r", b"\n")
                        .split(b"\n")
                        if line
                    )
                    + b"\r"
                )
            try:
                answer = await client.send(payload)
            except (TimeoutError, BrokerError) as exc:
                click.echo(f"{path}: no ACK: {exc}")
                failures += 1
                continue
            msa = _segment(answer, b"MSA")
            click.echo(f"{path}: {msa.decode('latin-1') if msa else '(no MSA segment)'}")
            code = msa.split(msa[3:4])[1] if msa and len(msa) > 4 else b""
            if code not in (b"AA", b"CA"):
                failures += 1
                err = _segment(answer, b"ERR")
                if err:
                    click.echo(f"  {err.decode('latin-1')}")
    return failures


def _segment(message: bytes, name: bytes) -> bytes:
    for seg in message.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(name):
            return seg
    return b""


# -- journal ------------------------------------------------------------------------------


@main.group()
def journal() -> None:
    """Inspect the inbound journal (patient data redacted unless --show-phi)."""


@contextmanager
def _open_journal(config: Path | None) -> Iterator[Any]:
    from broker.storage.factory import stores_for_command

    with stores_for_command(_load(config)) as stores:
        yield stores.journal


@journal.command("ls")
@config_option
@click.option("--limit", default=20, show_default=True)
@click.option("--status", type=click.Choice(["accepted", "error", "rejected", "duplicate"]))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def journal_ls(config: Path | None, limit: int, status: str | None, as_json: bool) -> None:
    """Recent messages, newest first."""
    with _open_journal(config) as store:
        entries = store.recent(limit, status=status)
    for entry in entries:
        row = entry.summary()
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(
                f"{row['id']:>7} {row['received']} {row['type']:<9} {row['control_id']:<20} "
                f"{row['ack']} {row['status']:<9} {row['route'] or '-'}"
            )


@journal.command("show")
@config_option
@click.argument("journal_id", type=int)
@click.option("--show-phi", is_flag=True, help="Print the message itself (patient data).")
def journal_show(config: Path | None, journal_id: int, show_phi: bool) -> None:
    """One message: metadata, decision and (with --show-phi) its text."""
    with _open_journal(config) as store:
        entry = store.get(journal_id)
    if entry is None:
        raise click.ClickException(f"no journal entry {journal_id}")
    info = entry.details(show_phi=show_phi)
    if not show_phi:
        info["message"] = f"<{len(entry.raw)} bytes redacted; use --show-phi>"
    click.echo(json.dumps(info, indent=2, ensure_ascii=False))


def _register_groups() -> None:
    from broker import cli_events, cli_queue, cli_reconcile, cli_worklist

    cli_worklist.register(main, _load, config_option)
    cli_queue.register(main, _load, config_option)
    cli_events.register(main, _load, config_option)
    cli_reconcile.register(main, _load, config_option)


_register_groups()


if __name__ == "__main__":  # pragma: no cover
    main()
