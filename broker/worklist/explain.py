"""Why is this order not on the modality's worklist? Which key excluded each near item.

Pure functions over items: the analyst's query (or the modality's, from a capture) is
compiled with the same matcher the C-FIND path uses, every item is tested key by key, and
the items that fail the fewest keys come first, each with the keys that excluded it, or the
status that keeps it off the worklist (``broker.worklist.lifecycle``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.worklist import lifecycle
from broker.worklist.item import DicomJson, item_status
from broker.worklist.matcher import Matcher

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """One item's verdict: ``matched`` when a query returns it; otherwise the keys that
    excluded it (``excluded_by``, described without values) and/or the ``status`` that
    takes it off the worklist."""

    item_id: int
    matched: bool
    excluded_by: tuple[str, ...]
    status: str = ""

    def __str__(self) -> str:
        if self.matched:
            return f"item {self.item_id}: matches"
        reasons = list(self.excluded_by)
        if self.status:
            reasons.append(f"status {self.status} is not on the worklist")
        return f"item {self.item_id}: excluded by " + "; ".join(reasons)


def explain(
    matcher: Matcher, items: Iterable[tuple[int, DicomJson]], *, limit: int = 10
) -> list[Explanation]:
    """The ``limit`` items closest to matching (fewest failing keys first, then id)."""
    verdicts: list[tuple[int, int, Explanation]] = []
    for item_id, item in items:
        failures = tuple(p.describe() for p in matcher.failures(item))
        status = lifecycle.normalise_status(item_status(item))
        inactive = "" if lifecycle.is_active(status) else status
        matched = not failures and not inactive
        distance = len(failures) + (1 if inactive else 0)
        verdicts.append((distance, item_id, Explanation(item_id, matched, failures, inactive)))
    verdicts.sort(key=lambda v: (v[0], v[1]))
    return [v[2] for v in verdicts[:limit]]
