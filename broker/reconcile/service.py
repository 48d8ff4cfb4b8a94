"""The reconciliation sweep as one call, for ``broker reconcile sweep`` and the admin API:
query the configured PACS, compare with the stored orders, optionally queue corrections."""

from __future__ import annotations

from broker.config import Settings
from broker.reconcile.sweep import SweepError, SweepReport, compare, parse_day, query_studies
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_reconcile import queue_sweep_corrections, sweep_items


def run_sweep(
    settings: Settings, db: SqliteDatabase, since: str, until: str = "", *, apply: bool = False
) -> SweepReport:
    """Blocking (a DICOM association and store reads): call it from a thread in async code.
    ``since``/``until``: YYYY-MM-DD or YYYYMMDD. Raises SweepError."""
    pacs = settings.reconcile.pacs
    if pacs is None:
        raise SweepError(
            "reconcile.pacs is not configured: the sweep needs the PACS's DICOM query "
            "service (reconcile: {pacs: {host: …, port: …, ae_title: …}})"
        )
    first = parse_day(since)
    last = parse_day(until) if until else ""
    if last and last < first:
        raise SweepError(f"--until {until} is before --since {since}")
    studies = query_studies(
        pacs.host,
        pacs.port,
        pacs.ae_title,
        pacs.calling_ae_title or settings.dicom.ae_title,
        first,
        last,
        timeout_s=pacs.timeout_s,
    )
    report = compare(studies, lambda acc, uids: sweep_items(db.reader(), acc, uids))
    if apply and report.mismatches:
        dest = settings.reconcile.destination
        dest_type = settings.destination_types().get(dest)
        db.write_sync(lambda conn: queue_sweep_corrections(conn, report, dest, dest_type))
    return report


__all__ = ["SweepError", "run_sweep"]
