"""``broker reconcile …``: the sweep (PACS studies against their orders) and the history of
patient and order changes. Patient values stay redacted unless ``--show-phi``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from broker.config import Settings
from broker.storage.factory import Stores

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

_REDACTED = "<redacted>"


@contextmanager
def _open_store(settings: Settings) -> Iterator[Stores]:
    """The configured store (either backend), opened for this command."""
    from broker.storage.factory import stores_for_command

    with stores_for_command(settings) as stores:
        yield stores


def _redact(change: dict[str, Any]) -> dict[str, Any]:
    out = dict(change)
    for key in ("patient_id", "issuer", "target_id", "target_issuer"):
        if out.get(key):
            out[key] = _REDACTED
    detail = dict(out.get("detail") or {})
    for key in ("items", "changes", "set"):
        if key in detail:
            detail[key] = f"{_REDACTED} ({len(detail[key])}); use --show-phi"
    out["detail"] = detail
    return out


def register(
    main: click.Group, load: Callable[[Path | None], Settings], config_option: Decorator
) -> None:
    """Attach the ``reconcile`` group to the main command (``load(config) -> Settings``)."""

    @main.group()
    def reconcile() -> None:
        """Patient/order reconciliation with the PACS (IHE PIR; DESIGN.md §2.4)."""

    @reconcile.command("sweep")
    @config_option
    @click.option("--since", required=True, help="First study date (YYYY-MM-DD).")
    @click.option("--until", default="", help="Last study date (YYYY-MM-DD; default: open).")
    @click.option("--apply", "apply_", is_flag=True, help="Queue the corrections for the PACS.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option("--show-phi", is_flag=True, help="Print patient values (redacted otherwise).")
    def sweep(
        config: Path | None, since: str, until: str, apply_: bool, as_json: bool, show_phi: bool
    ) -> None:
        """Query the PACS (C-FIND, STUDY level) for studies since DATE and print each
        mismatch with its order: patient ID, name, birth date, sex, accession, procedure.
        Exit status 1 when there are mismatches or studies without an order."""
        from broker.reconcile.service import SweepError, run_sweep

        settings = load(config)
        with _open_store(settings) as stores:
            try:
                report = run_sweep(settings, stores, since, until, apply=apply_)
            except SweepError as exc:
                raise click.ClickException(str(exc)) from None
        out = report.as_json(show_phi=show_phi)
        if as_json:
            click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        else:
            click.echo(
                f"{report.studies} studies in the PACS, {report.matched} with an order, "
                f"{len(report.without_order)} without, {len(report.mismatches)} mismatches"
            )
            if out["mismatches"]:
                click.echo(f"{'study':<28} {'accession':<16} {'field':<11} {'pacs':<24} order")
            for m in out["mismatches"]:
                click.echo(
                    f"{_tail(m['study_uid'], 28):<28} {m['accession']:<16} {m['field']:<11} "
                    f"{m['pacs']:<24} {m['order']}"
                )
            for s in out["without_order"]:
                click.echo(f"no order: study {s['study_uid']} accession {s['accession'] or '-'}")
            for a in out["applied"]:
                click.echo(
                    f"queued: study {a['study_uid']} ({', '.join(a['fields'])}) as outbox "
                    f"entry {a['outbox_id']}"
                )
            for n in out["not_applied"]:
                click.echo(f"not applied: study {n['study_uid']}: {n['reason']}")
        if report.mismatches or report.without_order:
            raise SystemExit(1)

    @reconcile.command("history")
    @config_option
    @click.option("--patient", default="", help="Only changes of this patient ID (either side).")
    @click.option("--order", default="", help="Only changes of this order key.")
    @click.option("--limit", default=100, show_default=True, help="Newest N changes.")
    @click.option("--show-phi", is_flag=True, help="Print patient values (redacted otherwise).")
    def history_cmd(
        config: Path | None, patient: str, order: str, limit: int, show_phi: bool
    ) -> None:
        """Every recorded patient update, merge, identifier change, order change and sweep
        correction, newest first, one JSON object per line (for audit)."""

        with _open_store(load(config)) as stores:
            rows = stores.reconcile_history(patient=patient, order=order, limit=limit)
        for row in rows:
            click.echo(json.dumps(row if show_phi else _redact(row), ensure_ascii=False))


def _tail(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


__all__ = ["register"]
