"""Which pending entries a claim may take, decided in pure code (backends fetch, this picks).

A destination's pending entries fall into lanes (:meth:`broker.queue.base.Ordering.lane`).
A lane may be claimed when no entry of it is leased (a live lease: one message in flight per
lane) and its head, the lowest id, is due. A claim then takes a *run*: the head and the
consecutive entries after it that are due too, so one lease write covers several messages that
the worker still sends one at a time. A lane whose head waits for a retry is skipped while the
other lanes proceed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broker.queue.base import State


@dataclass(frozen=True, slots=True)
class Slot:
    """What ordering needs to know of one pending entry."""

    id: int
    lane: str
    state: State
    due_at: float  # ready: 0; retry: not_before; in_flight: lease expiry


def is_due(slot: Slot, now: float) -> bool:
    """Whether the entry may be handed out now (ready, retry time reached, or lease expired)."""
    return slot.state is State.READY or slot.due_at <= now


def is_leased(slot: Slot, now: float) -> bool:
    """Whether someone holds a live lease on the entry."""
    return slot.state is State.IN_FLIGHT and slot.due_at > now


def choose_lanes(
    heads: Iterable[Slot],
    busy: Iterable[str],
    now: float,
    lanes: int,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Up to ``lanes`` claimable lanes, oldest head first. ``heads`` holds each lane's lowest
    pending entry; ``busy`` the lanes with a live lease somewhere."""
    blocked = set(busy) | set(exclude)
    ready = sorted((h for h in heads if h.lane not in blocked and is_due(h, now)), key=_id)
    return [h.lane for h in ready[: max(0, lanes)]]


def take_run(lane_slots: Sequence[Slot], now: float, run: int) -> list[int]:
    """The head and the due entries right after it (``lane_slots`` in id order), at most
    ``run``; empty when the head is not due or some entry of the lane is leased."""
    if any(is_leased(s, now) for s in lane_slots):
        return []
    taken: list[int] = []
    for slot in lane_slots:
        if len(taken) >= run or not is_due(slot, now):
            break
        taken.append(slot.id)
    return taken


def plan_claim(
    slots: Iterable[Slot],
    now: float,
    *,
    lanes: int,
    run: int,
    exclude: Iterable[str] = (),
) -> list[int]:
    """Every id a claim takes from these pending slots, in id order (the reference a backend
    that cannot call :func:`choose_lanes`/:func:`take_run` directly must agree with)."""
    by_lane: dict[str, list[Slot]] = {}
    for slot in sorted(slots, key=_id):
        by_lane.setdefault(slot.lane, []).append(slot)
    busy = [lane for lane, group in by_lane.items() if any(is_leased(s, now) for s in group)]
    chosen = choose_lanes((group[0] for group in by_lane.values()), busy, now, lanes, exclude)
    ids: list[int] = []
    for lane in chosen:
        ids.extend(take_run(by_lane[lane], now, run))
    return sorted(ids)


def _id(slot: Slot) -> int:
    return slot.id


__all__ = ["Slot", "choose_lanes", "is_due", "is_leased", "plan_claim", "take_run"]
