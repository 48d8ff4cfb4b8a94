"""Ordering: the pure lane rules, and random interleavings of outcomes on every backend.

The property: whatever the outcomes (delivered, retried, buried, released, owner crashed)
and however they interleave across lanes and owners, a lane never has two entries in flight,
a claim always starts at the lane's oldest pending entry, and each ordering key's deliveries
happen in enqueue order.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.effects import Enqueue
from broker.queue import DeliveryQueue, Entry, Ordering, State
from broker.queue.ordering import Slot, choose_lanes, plan_claim, take_run
from tests.queue.backends import BACKENDS, Clock, open_backend

R, F, D = State.READY, State.IN_FLIGHT, State.RETRY


def test_take_run_stops_at_the_first_entry_not_due() -> None:
    slots = [Slot(1, "a", R, 0), Slot(2, "a", D, 5), Slot(3, "a", R, 0)]
    assert take_run(slots, now=4, run=10) == [1]
    assert take_run(slots, now=5, run=10) == [1, 2, 3]
    assert take_run(slots, now=5, run=2) == [1, 2]


def test_a_live_lease_anywhere_blocks_the_lane() -> None:
    slots = [Slot(1, "a", R, 0), Slot(2, "a", F, 50)]  # e.g. 1 was replayed behind 2
    assert take_run(slots, now=10, run=10) == []
    assert take_run(slots, now=50, run=10) == [1, 2]  # the lease expired


def test_choose_lanes_oldest_head_first() -> None:
    heads = [Slot(5, "b", R, 0), Slot(2, "a", D, 99), Slot(7, "c", R, 0), Slot(3, "d", R, 0)]
    assert choose_lanes(heads, busy=["d"], now=10, lanes=5) == ["b", "c"]
    assert choose_lanes(heads, busy=[], now=10, lanes=1, exclude=["d"]) == ["b"]
    assert choose_lanes(heads, busy=[], now=100, lanes=2) == ["a", "d"]


def test_plan_claim_matches_the_parts() -> None:
    slots = [
        Slot(1, "a", D, 20),
        Slot(2, "b", R, 0),
        Slot(3, "a", R, 0),
        Slot(4, "b", R, 0),
        Slot(5, "c", F, 30),
        Slot(6, "c", R, 0),
    ]
    assert plan_claim(slots, 10, lanes=5, run=5) == [2, 4]
    assert plan_claim(slots, 25, lanes=5, run=1) == [1, 2]
    assert plan_claim(slots, 30, lanes=5, run=5) == [1, 2, 3, 4, 5, 6]


# -- random interleavings against a real backend --------------------------------------------

KEYS = ["P1", "P2", "P3"]
OWNERS = ["a", "b"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.sampled_from(KEYS)),
        st.tuples(st.just("claim"), st.sampled_from(OWNERS), st.integers(1, 3), st.integers(1, 3)),
        st.tuples(
            st.just("outcome"),
            st.integers(0, 5),
            st.sampled_from(["ack", "ack", "ack", "retry", "bury", "release"]),
        ),
        st.tuples(st.just("advance"), st.sampled_from([1.0, 5.0, 31.0])),
        st.tuples(st.just("crash"), st.sampled_from(OWNERS)),
    ),
    min_size=5,
    max_size=60,
)


class Model:
    """A well-behaved worker per owner: each lane's run settled head first, in order."""

    def __init__(self, q: DeliveryQueue, clock: Clock, ordering: Ordering) -> None:
        self.q, self.clock, self.ordering = q, clock, ordering
        self.runs: list[tuple[str, deque[Entry]]] = []  # (owner, run)
        self.enqueued: dict[str, list[int]] = {k: [] for k in KEYS}
        self.delivered: dict[str, list[int]] = {k: [] for k in KEYS}
        self.buried: set[int] = set()

    def lane(self, entry: Entry) -> str:
        return self.ordering.lane(entry.id, entry.ordering_key)

    async def step(self, op: tuple) -> None:  # type: ignore[type-arg]
        q, now = self.q, self.clock.now
        if op[0] == "enqueue":
            eid = await q.enqueue(Enqueue("d", b"x", op[1]))
            self.enqueued[op[1]].append(eid)
        elif op[0] == "claim":
            _, owner, lanes, run = op
            got = await q.claim("d", owner, ordering=self.ordering, lanes=lanes, run=run)
            await self.check_claim(got)
            by_lane: dict[str, deque[Entry]] = {}
            for entry in got:
                by_lane.setdefault(self.lane(entry), deque()).append(entry)
            self.runs.extend((owner, run_) for run_ in by_lane.values())
        elif op[0] == "outcome" and self.runs:
            owner, run = self.runs[op[1] % len(self.runs)]
            entry = run.popleft()
            kind = op[2]
            if kind == "ack":
                if await q.ack(owner, entry.id):
                    self.delivered[entry.ordering_key].append(entry.id)
            elif kind == "bury":
                if await q.bury(owner, entry.id, "no"):
                    self.buried.add(entry.id)
            elif kind == "retry":
                await q.retry_later(owner, entry.id, "later", now + 3)
                await q.release(owner, [e.id for e in run])
                run.clear()
            else:
                await q.release(owner, [entry.id, *(e.id for e in run)])
                run.clear()
            self.runs = [(o, r) for o, r in self.runs if r]
        elif op[0] == "advance":
            self.clock.advance(op[1])
        elif op[0] == "crash":
            self.runs = [(o, r) for o, r in self.runs if o != op[1]]

    async def check_claim(self, got: list[Entry]) -> None:
        now = self.clock.now
        assert [e.id for e in got] == sorted(e.id for e in got)
        pending = await self.q.entries("d", limit=10_000)
        live = [e for e in pending if e.state is State.IN_FLIGHT and e.not_before > now]
        lanes = [self.lane(e) for e in live]
        # a lane never has two entries in flight (runs count as one: they go out in order)
        claimed_ids = {e.id for e in got}
        for lane in set(lanes):
            holders = {e.lease_owner for e in live if self.lane(e) == lane}
            assert len(holders) == 1, f"lane {lane} leased to {holders}"
        # a claim starts at the lane's oldest pending entry, and takes a contiguous run
        for lane in {self.lane(e) for e in got}:
            in_lane = [e.id for e in pending if self.lane(e) == lane]
            taken = [e.id for e in got if self.lane(e) == lane]
            assert in_lane[: len(taken)] == taken
            assert all(i in claimed_ids for i in taken)

    def check_order(self) -> None:
        for key in KEYS:
            done = self.delivered[key]
            assert done == sorted(done), f"{key} delivered out of order: {done}"
            if self.ordering is not Ordering.NONE:
                # nothing was delivered while an older entry of its key was still pending
                expected = [i for i in self.enqueued[key] if i not in self.buried]
                assert done == expected[: len(done)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ordering", [Ordering.PATIENT, Ordering.DESTINATION])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
def test_random_interleavings_keep_per_key_order(
    backend: str,
    ordering: Ordering,
    steps: list[tuple],  # type: ignore[type-arg]
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            clock = Clock()
            async with open_backend(backend, Path(tmp), clock) as store:
                model = Model(await store.open(), clock, ordering)
                for op in steps:
                    await model.step(op)
                    model.check_order()
                # drain: everything still pending is eventually delivered, in order
                model.runs.clear()
                clock.advance(1000)
                for _ in range(200):
                    got = await model.q.claim("d", "z", ordering=ordering, lanes=9, run=9)
                    if not got:
                        break
                    await model.check_claim(got)
                    for entry in got:
                        assert await model.q.ack("z", entry.id)
                        model.delivered[entry.ordering_key].append(entry.id)
                model.check_order()
                total = sum(len(v) for v in model.enqueued.values())
                done = sum(len(v) for v in model.delivered.values())
                assert done + len(model.buried) == total

    asyncio.run(scenario())
