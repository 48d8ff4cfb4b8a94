"""The durable delivery queue contract: one interface, implemented by every store backend.

One queue per destination holds outbound messages (entries). An entry is in one state::

    ready ──claim──▶ in_flight ──ack──────────▶ delivered   (kept, then purged)
      ▲                 │ ├──retry_later──▶ retry ──(due)──▶ claimable again
      │                 │ └──bury─────────▶ dead            (kept until replayed or purged)
      │                 └──release / lease expired──▶ claimable again
      └──────────────────────────replay (dead → ready, at the tail)──────┘

Entries are ordered by ``id`` (increasing in enqueue order). Ordering (:class:`Ordering`)
groups a destination's pending entries into *lanes*: one lane per destination, one per
ordering key (the patient), or one per entry. Only the oldest pending entry of a lane (its
head) can be claimed, and never while another entry of that lane is leased: so a lane has at
most one message in flight, in FIFO order, and a failing head blocks only its own lane. A
dead entry no longer blocks its lane.

A claim is a lease (owner, expiry) written atomically by the store: two processes never hold
the same entry at once, and an expired lease (the process died) makes the entry claimable
again, so delivery is at least once. The retry decision (when, or whether to give up) is the
caller's (:mod:`broker.queue.policy`); a backend only records it.

Backends: :class:`broker.storage.sqlite_queue.SqliteQueue` (embedded); Redis to come. Both
pass ``tests/queue/test_contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from broker.effects import Enqueue

#: How long a claim stays valid unless renewed; an owner that dies loses its entries after it.
DEFAULT_LEASE_S = 30.0
#: How many consecutive entries of one lane a claim may hand out at once (delivered in order).
DEFAULT_RUN = 32
#: How long delivered entries are kept (for "where is my message?") before purging.
DEFAULT_KEEP_DELIVERED_S = 24 * 3600.0


class State(StrEnum):
    """Where an entry is in its life (see the module docstring)."""

    READY = "ready"
    IN_FLIGHT = "in_flight"
    RETRY = "retry"  # waiting for ``not_before`` after a failed attempt
    DEAD = "dead"
    DELIVERED = "delivered"


#: States whose entries still have to be delivered (they count in a queue's depth).
PENDING_STATES = (State.READY, State.IN_FLIGHT, State.RETRY)


class Ordering(StrEnum):
    """How a destination's entries are kept in order (config ``ordering:``)."""

    DESTINATION = "destination"  # one lane: strict FIFO for the whole destination (default)
    PATIENT = "patient"  # one lane per ordering key (the route's ordering_key, e.g. PID-3.1)
    NONE = "none"  # no order: every entry is its own lane

    def lane(self, entry_id: int, ordering_key: str) -> str:
        """The lane an entry belongs to under this ordering."""
        if self is Ordering.DESTINATION:
            return ""
        if self is Ordering.PATIENT:
            return ordering_key
        return f"#{entry_id}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One outbound message and its delivery bookkeeping."""

    id: int
    destination: str
    payload: bytes
    ordering_key: str = ""
    content_type: str = "application/hl7-v2"
    headers: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    state: State = State.READY
    attempts: int = 0  # failed attempts so far
    not_before: float = 0.0  # retry: earliest next attempt; in_flight: lease expiry
    last_error: str = ""
    last_attempt_at: float = 0.0
    failed_since: float = 0.0  # first failed attempt of the current streak (0: none)
    lease_owner: str = ""
    finished_at: float = 0.0  # delivered or dead at
    journal_id: int = 0  # the inbound message that queued it (0: none)

    def age(self, now: float) -> float:
        """Seconds since it was queued."""
        return max(0.0, now - self.created_at)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead entries a replay or purge touches: every entry matching all given fields.

    ``Selection()`` selects every dead entry of the destination.
    """

    ids: tuple[int, ...] | None = None
    ordering_key: str | None = None
    error_contains: str | None = None  # case-insensitive substring of the last error

    def matches(self, entry: Entry) -> bool:
        """Whether a (dead) entry is selected; backends may filter natively instead."""
        if self.ids is not None and entry.id not in self.ids:
            return False
        if self.ordering_key is not None and entry.ordering_key != self.ordering_key:
            return False
        return not (
            self.error_contains is not None
            and self.error_contains.lower() not in entry.last_error.lower()
        )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the store knows about one destination's queue (``queue ls``, metrics)."""

    destination: str
    ready: int = 0
    in_flight: int = 0
    retry: int = 0
    dead: int = 0
    delivered: int = 0  # kept delivered entries (not a lifetime counter)
    oldest_created_at: float = 0.0  # oldest pending entry (0: queue empty)
    retrying_since: float = 0.0  # earliest failed_since among pending entries (0: none failing)
    max_attempts: int = 0  # most failed attempts of a pending entry
    paused: bool = False
    paused_at: float = 0.0

    @property
    def depth(self) -> int:
        """Entries still to deliver."""
        return self.ready + self.in_flight + self.retry

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest pending entry has waited (0 when empty)."""
        return max(0.0, now - self.oldest_created_at) if self.oldest_created_at else 0.0


@runtime_checkable
class DeliveryQueue(Protocol):
    """The queue operations delivery workers, the CLI and the admin API use.

    Times are seconds since the epoch from the backend's clock (injectable for tests).
    Every method raises :class:`broker.errors.StoreError` when the store fails.
    """

    async def enqueue(self, effect: Enqueue, *, journal_id: int = 0) -> int:
        """Queue one message on its own (ingest queues inside the journal's transaction
        instead); returns the new entry's id."""
        ...

    async def claim(
        self,
        destination: str,
        owner: str,
        *,
        ordering: Ordering = Ordering.DESTINATION,
        lanes: int = 1,
        run: int = DEFAULT_RUN,
        lease_s: float = DEFAULT_LEASE_S,
        exclude_lanes: Sequence[str] = (),
    ) -> list[Entry]:
        """Lease up to ``lanes`` claimable lanes, each with up to ``run`` consecutive entries
        from its head, to ``owner`` until now + ``lease_s``. Returns them oldest first
        (deliver each lane's entries in that order). Nothing when the destination is paused.

        Claiming a lane takes it over whole: expired leases on its other entries are
        released, so their late owner's outcomes no longer count."""
        ...

    async def renew(self, owner: str, ids: Sequence[int], lease_s: float) -> set[int]:
        """Extend the owner's leases on these entries; returns the ids it still held (the
        others were taken over after their lease expired: do not send them)."""
        ...

    async def ack(self, owner: str, entry_id: int) -> bool:
        """Mark a leased entry delivered. False when the owner had lost the lease (another
        owner has it now; its outcome wins)."""
        ...

    async def ack_many(self, owner: str, ids: Sequence[int]) -> set[int]:
        """:meth:`ack` for several entries in one step (a run's deliveries); returns the ids
        acknowledged (those whose lease the owner still held)."""
        ...

    async def retry_later(self, owner: str, entry_id: int, error: str, not_before: float) -> bool:
        """Record a failed attempt; the entry (and its lane) waits until ``not_before``."""
        ...

    async def bury(self, owner: str, entry_id: int, error: str) -> bool:
        """Record a failed attempt and move the entry to the dead letters."""
        ...

    async def release(self, owner: str, ids: Sequence[int]) -> int:
        """Give leased entries back unattempted (shutdown, or the rest of a run whose lane
        stopped); returns how many were released."""
        ...

    async def get(self, entry_id: int) -> Entry | None:
        """One entry in whatever state, or None."""
        ...

    async def entries(
        self,
        destination: str | None = None,
        *,
        states: Sequence[State] = PENDING_STATES,
        limit: int = 100,
    ) -> list[Entry]:
        """Entries in these states, oldest first (all destinations when None)."""
        ...

    async def dead(self, destination: str | None = None, *, limit: int = 100) -> list[Entry]:
        """Dead letters, oldest first."""
        ...

    async def replay(self, destination: str, selection: Selection | None = None) -> list[int]:
        """Put the selected dead entries (every one when None) back at the tail of their
        queue, attempts reset; returns their new ids, in their old order."""
        ...

    async def purge_dead(self, destination: str, selection: Selection | None = None) -> int:
        """Delete selected dead entries; returns how many."""
        ...

    async def purge_delivered(self, older_than_s: float) -> int:
        """Delete delivered entries finished more than ``older_than_s`` ago."""
        ...

    async def pause(self, destination: str) -> None:
        """Stop handing out the destination's entries (persisted: every process honours it;
        entries already leased finish)."""
        ...

    async def resume(self, destination: str) -> None:
        """Undo :meth:`pause`."""
        ...

    async def stats(self, destinations: Sequence[str] = ()) -> dict[str, QueueStats]:
        """Per-destination counts: every destination with entries or a pause record, plus
        the ones named."""
        ...


__all__ = [
    "DEFAULT_KEEP_DELIVERED_S",
    "DEFAULT_LEASE_S",
    "DEFAULT_RUN",
    "PENDING_STATES",
    "DeliveryQueue",
    "Entry",
    "Ordering",
    "QueueStats",
    "Selection",
    "State",
]
