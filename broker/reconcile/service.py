"""The reconciliation sweep as one call, for ``broker reconcile sweep`` and the admin API:
query the configured PACS, compare with the stored orders, optionally queue corrections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from broker.config import Settings
from broker.reconcile.sweep import (
    OrderItem,
    SweepError,
    SweepReport,
    compare,
    parse_day,
    query_studies,
)


class SweepStore(Protocol):
    """What the sweep needs of a store (``broker.storage.factory.Stores``)."""

    def sweep_items(
        self, accessions: Sequence[str], study_uids: Sequence[str]
    ) -> list[OrderItem]: ...

    def queue_sweep_corrections(
        self, report: SweepReport, destination: str, dest_type: str | None
    ) -> None: ...


def run_sweep(
    settings: Settings, store: SweepStore, since: str, until: str = "", *, apply: bool = False
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
    report = compare(studies, store.sweep_items)
    if apply and report.mismatches:
        dest = settings.reconcile.destination
        store.queue_sweep_corrections(report, dest, settings.destination_types().get(dest))
    return report


__all__ = ["SweepError", "run_sweep"]
