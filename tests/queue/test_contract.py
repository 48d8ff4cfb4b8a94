"""The delivery queue contract (broker/queue/base.py), run against every backend."""

from __future__ import annotations

import asyncio

import pytest

from broker.effects import Enqueue
from broker.queue import DeliveryQueue, Ordering, Selection, State
from tests.queue.backends import Backend

A, B = "owner-a", "owner-b"


async def put(q: DeliveryQueue, *keys: str, dest: str = "pacs") -> list[int]:
    ids = []
    for n, key in enumerate(keys):
        ids.append(await q.enqueue(Enqueue(dest, f"MSG {key} {n}".encode(), key)))
    return ids


def ids(entries: list) -> list[int]:  # type: ignore[type-arg]
    return [e.id for e in entries]


async def test_enqueue_claim_ack(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    eid = await q.enqueue(
        Enqueue("pacs", b"MSH|x", "P1", "application/json", {"X-Trace": "1"}), journal_id=7
    )
    entry = await q.get(eid)
    assert entry is not None and entry.state is State.READY and entry.attempts == 0
    assert entry.headers == {"X-Trace": "1"} and entry.content_type == "application/json"
    assert entry.journal_id == 7 and entry.created_at == queue_backend.clock.now
    (claimed,) = await q.claim("pacs", A, lease_s=30)
    assert claimed.id == eid and claimed.payload == b"MSH|x" and claimed.state is State.IN_FLIGHT
    assert claimed.lease_owner == A and claimed.not_before == queue_backend.clock.now + 30
    assert await q.claim("pacs", A) == []  # the only lane is busy
    assert await q.ack(A, eid)
    done = await q.get(eid)
    assert done is not None and done.state is State.DELIVERED and done.lease_owner == ""
    assert await q.claim("pacs", A) == []
    assert await q.claim("other", A) == []


async def test_destination_ordering_is_one_fifo_lane(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    e = await put(q, "p1", "p2", "p1", "p3")
    first = await q.claim("pacs", A, ordering=Ordering.DESTINATION, lanes=4, run=2)
    assert ids(first) == e[:2]  # one lane, a run of two from its head
    assert await q.claim("pacs", B, ordering=Ordering.DESTINATION) == []
    for eid in e[:2]:
        assert await q.ack(A, eid)
    assert ids(await q.claim("pacs", A, run=10)) == e[2:]


async def test_patient_ordering_fifo_per_key(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    a1, b1, a2, b2, c1 = await put(q, "A", "B", "A", "B", "C")
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=2, run=1)
    assert ids(got) == [a1, b1]  # oldest heads first
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5, run=1)
    assert ids(got) == [c1]  # A and B each have one in flight
    assert await q.ack(A, a1)
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5, run=5)
    assert ids(got) == [a2]
    assert await q.ack(A, b1)
    assert ids(await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=5)) == [b2]


async def test_exclude_lanes(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    _a1, b1 = await put(q, "A", "B")
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5, exclude_lanes=["A"])
    assert ids(got) == [b1]


async def test_no_ordering_hands_out_everything(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    e = await put(q, "A", "A", "A", "B")
    got = await q.claim("pacs", A, ordering=Ordering.NONE, lanes=3)
    assert ids(got) == e[:3]
    assert ids(await q.claim("pacs", A, ordering=Ordering.NONE, lanes=3)) == e[3:]


async def test_failing_key_blocks_only_its_successors(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    a1, b1, a2, b2 = await put(q, "A", "B", "A", "B")
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=2)
    assert ids(got) == [a1, b1, a2, b2]  # both lanes' runs, in id order
    assert await q.retry_later(A, a1, "refused", clock.now + 10)
    assert await q.release(A, [a2]) == 1  # the rest of A's run goes back
    for eid in (b1, b2):
        assert await q.ack(A, eid)
    retry = await q.get(a1)
    assert retry is not None and retry.state is State.RETRY and retry.attempts == 1
    assert retry.last_error == "refused" and retry.not_before == clock.now + 10
    assert retry.failed_since == clock.now
    (b3,) = await put(q, "B")
    # A's head waits for its retry: A2 must not overtake it; B goes on.
    assert ids(await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5)) == [b3]
    clock.advance(9.9)
    assert await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5) == []
    clock.advance(0.1)
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=5, run=5)
    assert ids(got) == [a1, a2]
    assert got[0].attempts == 1


async def test_failing_head_blocks_a_destination_lane(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    e1, e2 = await put(q, "A", "B")
    (head,) = await q.claim("pacs", A, run=1)
    assert await q.retry_later(A, head.id, "down", clock.now + 5)
    assert await q.claim("pacs", A, run=5) == []  # e2 waits behind e1
    clock.advance(5)
    assert ids(await q.claim("pacs", A, run=5)) == [e1, e2]


async def test_bury_records_last_error_and_unblocks_the_lane(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    e1, e2 = await put(q, "A", "A")
    await q.claim("pacs", A, run=1)
    assert await q.retry_later(A, e1, "first", clock.now + 1)
    clock.advance(1)
    await q.claim("pacs", A, run=1)
    assert await q.bury(A, e1, "AR: unknown patient")
    (dead,) = await q.dead("pacs")
    assert dead.id == e1 and dead.state is State.DEAD and dead.attempts == 2
    assert dead.last_error == "AR: unknown patient" and dead.finished_at == clock.now
    assert ids(await q.claim("pacs", A)) == [e2]


async def test_release_gives_back_without_an_attempt(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    (e1,) = await put(q, "A")
    await q.claim("pacs", A)
    assert await q.release(B, [e1]) == 0  # not B's to release
    assert await q.release(A, [e1]) == 1
    entry = await q.get(e1)
    assert entry is not None and entry.state is State.READY and entry.attempts == 0
    assert ids(await q.claim("pacs", B)) == [e1]


async def test_outcomes_need_the_lease(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    (e1,) = await put(q, "A")
    assert not await q.ack(A, e1)  # never claimed
    await q.claim("pacs", A)
    assert not await q.ack(B, e1)
    assert not await q.retry_later(B, e1, "x", clock.now)
    assert not await q.bury(B, e1, "x")
    assert await q.ack(A, e1)
    assert not await q.ack(A, e1)  # already delivered


async def test_replay_one_filter_all(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    e = await put(q, "A", "B", "A", "C", dest="ris")
    errors = {e[0]: "AR bad order", e[1]: "timeout", e[2]: "AR bad patient", e[3]: "timeout"}
    for _ in e:
        (entry,) = await q.claim("ris", A, ordering=Ordering.NONE)
        assert await q.bury(A, entry.id, errors[entry.id])
    clock.advance(60)
    assert ids(await q.dead("ris")) == e[:4]
    # one
    (new1,) = await q.replay("ris", Selection(ids=(e[1],)))
    assert new1 > max(e)
    replayed = await q.get(new1)
    assert replayed is not None and replayed.state is State.READY and replayed.attempts == 0
    assert replayed.payload == b"MSG B 1" and replayed.ordering_key == "B"
    assert replayed.created_at == clock.now and replayed.last_error == ""
    assert await q.get(e[1]) is None
    # a filter: by error text (case-insensitive), then by key
    assert len(await q.replay("ris", Selection(error_contains="ar bad"))) == 2
    assert await q.replay("ris", Selection(ordering_key="A")) == []
    # all
    assert len(await q.replay("ris")) == 1
    assert await q.dead("ris") == []
    pending = await q.entries("ris")
    assert [p.ordering_key for p in pending] == ["B", "A", "A", "C"]  # old order kept
    assert await q.replay("ris", Selection(ids=())) == []


async def test_purge_dead_and_delivered(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    e = await put(q, "A", "B", "C", "D")
    for eid in e[:3]:
        await q.claim("pacs", A, ordering=Ordering.NONE)
        assert await q.bury(A, eid, "AR")
    await q.claim("pacs", A, ordering=Ordering.NONE)
    assert await q.ack(A, e[3])
    assert await q.purge_dead("pacs", Selection(ordering_key="B")) == 1
    assert await q.purge_dead("other") == 0
    assert ids(await q.dead("pacs")) == [e[0], e[2]]
    assert await q.purge_dead("pacs") == 2
    assert await q.purge_delivered(3600) == 0  # too recent
    clock.advance(3601)
    assert await q.purge_delivered(3600) == 1
    assert await q.get(e[3]) is None


async def test_pause_and_resume_persist_across_instances(queue_backend: Backend) -> None:
    q1 = await queue_backend.open()
    q2 = await queue_backend.open()
    (e1,) = await put(q1, "A")
    await q1.pause("pacs")
    assert await q2.claim("pacs", B) == []
    stats = (await q2.stats())["pacs"]
    assert stats.paused and stats.paused_at == queue_backend.clock.now and stats.depth == 1
    await put(q1, "Z", dest="ris")
    assert len(await q2.claim("ris", B)) == 1  # only pacs is paused
    await q2.resume("pacs")
    assert ids(await q1.claim("pacs", A)) == [e1]
    assert not (await q1.stats())["pacs"].paused


async def test_stats(queue_backend: Backend) -> None:
    q, clock = await queue_backend.open(), queue_backend.clock
    start = clock.now
    e = await put(q, "A", "B", "C", "D")
    clock.advance(5)
    await q.claim("pacs", A, ordering=Ordering.NONE, lanes=3)
    assert await q.retry_later(A, e[0], "down", clock.now + 60)
    assert await q.bury(A, e[1], "AR")
    stats = await q.stats(["pacs", "ehr"])
    assert set(stats) == {"pacs", "ehr"}
    pacs = stats["pacs"]
    assert (pacs.ready, pacs.in_flight, pacs.retry, pacs.dead) == (1, 1, 1, 1)
    assert pacs.depth == 3 and pacs.oldest_created_at == start
    assert pacs.oldest_age(clock.now) == 5
    assert pacs.retrying_since == clock.now and pacs.max_attempts == 1
    assert stats["ehr"].depth == 0 and stats["ehr"].oldest_age(clock.now) == 0


async def test_expired_lease_is_reclaimed_by_another_instance(queue_backend: Backend) -> None:
    q1 = await queue_backend.open()
    q2 = await queue_backend.open()
    clock = queue_backend.clock
    e1, _e2 = await put(q1, "A", "A")
    assert ids(await q1.claim("pacs", A, lease_s=30, run=1)) == [e1]
    assert await q2.claim("pacs", B, lease_s=30) == []
    clock.advance(29)
    assert await q1.renew(A, [e1], 30) == {e1}  # still alive: now until +59
    clock.advance(29)
    assert await q2.claim("pacs", B, lease_s=30) == []
    clock.advance(31)  # A died without renewing
    got = await q2.claim("pacs", B, lease_s=30, run=1)
    assert ids(got) == [e1] and got[0].lease_owner == B
    assert not await q1.ack(A, e1)  # A lost the lease: B's outcome counts
    assert await q1.renew(A, [e1], 30) == set()
    assert await q2.ack(B, e1)


async def test_claiming_a_lane_takes_it_over_whole(queue_backend: Backend) -> None:
    """A stalled owner's late outcome for the rest of its run must not overtake the lane's
    new owner (B sends e1 again; A must not then record e2 as delivered before it)."""
    q = await queue_backend.open()
    e1, e2, e3 = await put(q, "A", "A", "B")
    assert len(await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=2, run=2)) == 3
    queue_backend.clock.advance(31)  # A stalled past its lease
    assert ids(await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=1, run=1)) == [e1]
    assert not await q.ack(A, e2)
    assert await q.ack(A, e3)  # lane B was not taken over: A's lease there still counts
    assert ids(await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=2)) == []
    assert await q.ack(B, e1)
    assert ids(await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=2)) == [e2]


async def test_concurrent_claims_never_overlap(queue_backend: Backend) -> None:
    q1 = await queue_backend.open()
    q2 = await queue_backend.open()
    await put(q1, *[f"K{n % 7}" for n in range(60)])
    seen: dict[int, str] = {}

    async def drain(q: DeliveryQueue, owner: str) -> None:
        for _ in range(200):
            got = await q.claim("pacs", owner, ordering=Ordering.PATIENT, lanes=3, run=2)
            for entry in got:
                assert entry.id not in seen, "handed out twice"
                seen[entry.id] = owner
                assert await q.ack(owner, entry.id)
            if len(seen) == 60:
                return
            await asyncio.sleep(0)

    await asyncio.gather(drain(q1, A), drain(q2, B))
    assert len(seen) == 60


async def test_nothing_lost_across_a_crash(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    e1, e2 = await put(q, "A", "B")
    got = await q.claim("pacs", A, ordering=Ordering.PATIENT, lanes=2, lease_s=30)
    assert ids(got) == [e1, e2]
    assert await q.ack(A, e2)
    await queue_backend.crash(q)  # e1 was being sent when the process died
    q = await queue_backend.open()
    assert await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=2) == []  # lease runs
    queue_backend.clock.advance(30)
    (again,) = await q.claim("pacs", B, ordering=Ordering.PATIENT, lanes=2)
    assert again.id == e1 and again.payload == b"MSG A 0" and again.attempts == 0
    delivered = await q.get(e2)
    assert delivered is not None and delivered.state is State.DELIVERED


@pytest.mark.parametrize("ordering", list(Ordering))
async def test_entries_lists_states_oldest_first(
    queue_backend: Backend, ordering: Ordering
) -> None:
    q = await queue_backend.open()
    e = await put(q, "A", "B")
    await q.claim("pacs", A, ordering=ordering, lanes=1, run=1)
    assert ids(await q.entries("pacs")) == e
    assert ids(await q.entries("pacs", states=[State.IN_FLIGHT])) == e[:1]
    assert ids(await q.entries(None, states=[State.READY])) == e[1:]
    assert await q.entries("pacs", states=[State.DELIVERED]) == []


async def test_ack_many_acks_what_the_owner_still_holds(queue_backend: Backend) -> None:
    q = await queue_backend.open()
    ids = [await q.enqueue(Enqueue("pacs", f"M{n}".encode(), "P1")) for n in range(4)]
    run = await q.claim("pacs", A, run=4, lease_s=30)
    assert [e.id for e in run] == ids
    assert await q.ack_many(A, []) == set()
    assert await q.ack_many(B, ids[:2]) == set()  # not B's leases
    assert await q.ack_many(A, ids[:3]) == set(ids[:3])
    assert await q.ack_many(A, ids[:3]) == set()  # already delivered
    states = [(await q.get(i)).state for i in ids]  # type: ignore[union-attr]
    assert states == [State.DELIVERED] * 3 + [State.IN_FLIGHT]
