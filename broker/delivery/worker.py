"""Delivery workers: drain each destination's queue inside ``broker serve`` (asyncio).

Per destination, one :class:`DestinationWorker` claims lanes from the queue (a lease, so
another broker process on the same store never sends the same entry at once) and runs one task
per lane: the lane's entries go out one at a time, in order (a :class:`Batching` destination
gets the lane's whole run at once and answers for each entry). Several lanes run concurrently
(``concurrency``), so a patient whose message keeps failing holds up only that patient. A
failed attempt asks the retry policy (pure) when to try again or whether to give up; the
lane then stops until the retry is due and the rest of its run is given back.

Acknowledgements of a run are written together, when the run ends or before a failure is
recorded (one group commit; the delivered entries stay leased meanwhile, so nothing else of
the lane is claimed; a crash before the commit only means a resend, which at-least-once
allows), and every lane waits for its writes before it ends.

Reconnect probe: when an attempt fails on the connection (``Retry.network``), the lane is held
back in the worker (a gate) instead of in the store, whose retry time is set at most
``probe_interval_s`` ahead; the gate opens at the policy's time, or as soon as a probe (a TCP
connect, not an attempt) finds the peer reachable after it was seen down.

Shutdown: stop claiming, let in-flight deliveries finish within ``shutdown_s``, then cancel
them; the entries not settled are released (or their lease simply expires), so they are sent
again later. Nothing is half-done: an entry is delivered-and-acked, or it will be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from broker.config import Settings
from broker.delivery.destinations import (
    Dead,
    Delivered,
    Destination,
    Outcome,
    Probing,
    Retry,
    build_destination,
)
from broker.errors import ConfigError
from broker.hl7.header import HeaderError, parse_header
from broker.logs import phi
from broker.queue.base import (
    DEFAULT_KEEP_DELIVERED_S,
    DEFAULT_LEASE_S,
    DEFAULT_RUN,
    DeliveryQueue,
    Entry,
    Ordering,
    QueueStats,
)
from broker.queue.policy import RetryAt, RetryPolicy

log = logging.getLogger(__name__)

#: Lanes one destination delivers concurrently (ordering patient or none).
DEFAULT_CONCURRENCY = 8
#: Longest wait before looking for new or due entries when nobody signalled any.
DEFAULT_POLL_S = 0.25
#: Upper bound of one delivery attempt, beyond the destination's own timeouts (a safety net).
DEFAULT_ATTEMPT_TIMEOUT_S = 120.0
#: How long a stopping worker lets in-flight deliveries finish before cancelling them.
DEFAULT_SHUTDOWN_S = 5.0
#: How often delivered entries older than the retention are purged.
DEFAULT_PURGE_INTERVAL_S = 3600.0
#: How often an unreachable destination is probed (TCP connect) while its retry waits.
DEFAULT_PROBE_INTERVAL_S = 1.0


@runtime_checkable
class Batching(Protocol):
    """A destination that sends a lane's whole run at once (the bus publishes it and awaits
    the broker's confirms together: one round trip per run instead of one per entry)."""

    async def deliver_many(self, entries: Sequence[Entry]) -> Sequence[Outcome]:
        """Outcomes, in order, for a prefix of ``entries`` (the lane's run): at most one
        ``Retry``, and then last; the entries after the prefix are not settled (they are
        released and sent again after it). Never raises for a failed delivery."""
        ...


def new_owner() -> str:
    """A lease owner name unique to this process (host, pid, random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: Largest run a claim may take (entries of one lane handed out and acknowledged together).
MAX_RUN = 1000


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one destination's queue is drained (config keys of the destination)."""

    ordering: Ordering = Ordering.DESTINATION
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = DEFAULT_CONCURRENCY
    run: int = DEFAULT_RUN
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = DEFAULT_POLL_S
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S
    #: While a lane waits after a connection failure, probe the peer this often and retry
    #: as soon as it is back (0: only the retry policy's backoff).
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S

    @property
    def lanes(self) -> int:
        """Lanes at once: one when the whole destination is one lane."""
        return 1 if self.ordering is Ordering.DESTINATION else self.concurrency

    @classmethod
    def from_mapping(cls, where: str, data: Mapping[str, Any]) -> WorkerOptions:
        """Read ``ordering``, ``retry``, ``concurrency``, ``run``, ``attempt_timeout_s`` and
        ``probe_interval_s``; other keys belong to the type."""
        raw = data.get("ordering", Ordering.DESTINATION.value)
        try:
            ordering = Ordering(raw)
        except ValueError:
            raise ConfigError(
                f"{where}.ordering: found {raw!r}; expected destination, patient or none"
            ) from None
        concurrency = data.get("concurrency", DEFAULT_CONCURRENCY)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"{where}.concurrency: found {concurrency!r}; expected 1 or more")
        retry = RetryPolicy.from_mapping(data.get("retry"), f"{where}.retry")
        probe = data.get("probe_interval_s", DEFAULT_PROBE_INTERVAL_S)
        if isinstance(probe, bool) or not isinstance(probe, (int, float)) or not probe >= 0:
            raise ConfigError(
                f"{where}.probe_interval_s: found {probe!r}; expected a number >= 0 (0: off)"
            )
        run = data.get("run", DEFAULT_RUN)
        if isinstance(run, bool) or not isinstance(run, int) or not 1 <= run <= MAX_RUN:
            raise ConfigError(f"{where}.run: found {run!r}; expected 1 to {MAX_RUN}")
        timeout = data.get("attempt_timeout_s", DEFAULT_ATTEMPT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(
                f"{where}.attempt_timeout_s: found {timeout!r}; expected a number of seconds > 0"
            )
        return cls(
            ordering=ordering,
            retry=retry,
            concurrency=concurrency,
            run=run,
            attempt_timeout_s=float(timeout),
            probe_interval_s=float(probe),
        )


@dataclass(slots=True)
class Counters:
    """What a worker did since it started (the lead maps these to Prometheus counters)."""

    delivered: int = 0
    retried: int = 0  # failed attempts that will be tried again
    dead: int = 0
    failing_since: float = 0.0  # first failure of the current streak (0: up)
    failures: int = 0  # failed attempts in the current streak


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """One destination as ``queue ls``, /metrics and /health show it."""

    name: str
    type: str
    state: str  # up | retrying | paused | no worker
    since: float = 0.0  # retrying: first failure; paused: when
    attempts: int = 0  # retrying: failed attempts in a row
    delivered: int = 0
    retried: int = 0
    dead_total: int = 0  # entries this process buried
    depth: int = 0
    in_flight: int = 0
    dead: int = 0  # dead letters waiting in the store
    oldest_age_s: float = 0.0


@dataclass(slots=True)
class _Gate:
    """A lane held back after its head failed on the connection: until the retry policy's
    time (``until``), or until a probe finds the peer reachable after it was seen down."""

    until: float
    down: bool  # a connect failed (the attempt's or a probe's) since the failure


def describe(queue: QueueStats, counters: Counters | None, now: float) -> tuple[str, float, int]:
    """(state, since, attempts) of a destination from the store and, if running, its worker."""
    if queue.paused:
        return "paused", queue.paused_at, 0
    if counters is not None and counters.failures:
        return "retrying", counters.failing_since, counters.failures
    if queue.retry:
        return "retrying", queue.retrying_since, queue.max_attempts
    return "up", 0.0, 0


class DestinationWorker:
    """Drains one destination's queue (see the module docstring)."""

    def __init__(
        self,
        destination: Destination,
        queue: DeliveryQueue,
        options: WorkerOptions | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self.queue = queue
        self.options = options or WorkerOptions()
        self.owner = owner or new_owner()
        self.clock = clock
        self.rand = rand
        self.counters = Counters()
        self._wake = asyncio.Event()
        self._stopping = False
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._held: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._gates: dict[str, _Gate] = {}
        self._prober: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start draining in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"deliver-{self.name}")
            self._heartbeat = asyncio.create_task(self._renew(), name=f"lease-{self.name}")

    def wake(self) -> None:
        """Look for claimable entries now (new entries were committed, a pause was lifted)."""
        self._wake.set()

    async def stop(self, shutdown_s: float = DEFAULT_SHUTDOWN_S) -> None:
        """Stop claiming; give in-flight deliveries ``shutdown_s`` to finish, cancel the
        rest (their entries are released for a later attempt)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await _cancel(self._task)
        lanes = list(self._lanes.values())
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=shutdown_s)
            for task in late:
                await _cancel(task)
        if self._heartbeat is not None:
            await _cancel(self._heartbeat)
        if self._prober is not None:
            await _cancel(self._prober)
        self._task = self._heartbeat = self._prober = None

    @property
    def busy_lanes(self) -> int:
        return len(self._lanes)

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        opts = self.options
        while not self._stopping:
            self._wake.clear()
            free = opts.lanes - len(self._lanes)
            gated = self._gated(self.clock())
            if opts.ordering is Ordering.DESTINATION and gated:
                free = 0  # the one lane waits for its retry or a successful probe
            if free > 0:
                try:
                    entries = await self.queue.claim(
                        self.name,
                        self.owner,
                        ordering=opts.ordering,
                        lanes=free,
                        run=opts.run,
                        lease_s=opts.lease_s,
                        exclude_lanes=[*self._lanes, *gated],
                    )
                except Exception:
                    log.exception("destination %s: cannot claim entries; will try again", self.name)
                    entries = []
                for lane, run in _by_lane(entries, opts.ordering).items():
                    self._held.update(e.id for e in run)
                    task = asyncio.create_task(self._drain(run), name=f"lane-{self.name}")
                    self._lanes[lane] = task
                    task.add_done_callback(functools.partial(self._lane_done, lane))
                if entries and len(self._lanes) < opts.lanes:
                    continue  # there may be more claimable lanes right now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(opts.poll_s):
                    await self._wake.wait()

    def _lane_done(self, lane: str, _task: asyncio.Task[None]) -> None:
        self._lanes.pop(lane, None)
        self._wake.set()  # a lane is free, and its successors may be claimable

    async def _renew(self) -> None:
        """Keep this worker's leases alive while it holds them (a third of the lease)."""
        interval = self.options.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            if self._held:
                asked = set(self._held)
                try:
                    kept = await self.queue.renew(self.owner, sorted(asked), self.options.lease_s)
                except Exception:
                    log.exception("destination %s: cannot renew leases", self.name)
                    continue
                lost = asked - kept
                if lost:  # taken over after our lease expired: the new owner sends them
                    log.warning(
                        "destination %s: lost the lease on %d entries", self.name, len(lost)
                    )
                    self._held.difference_update(lost)

    async def _drain(self, run: Sequence[Entry]) -> None:
        """Deliver one lane's run in order; stop the lane at the first retry.

        The run's acknowledgements are written together, when the run ends or before a
        failure is recorded (one group commit instead of one per message). Until then the
        delivered entries stay leased to us, so nothing else of the lane is claimed; a
        crash before the commit means they are sent again (at least once)."""
        delivered: list[int] = []
        left = [e.id for e in run]
        try:
            batch = await self._attempt_run(run)  # None: the destination sends one at a time
            for index, entry in enumerate(run):
                if batch is not None:
                    if index >= len(batch):
                        break  # not settled by the destination: released, sent again later
                    outcome = batch[index]
                elif self._stopping or entry.id not in self._held:
                    break  # stopping, or the lease was lost (the lane has a new owner)
                else:
                    outcome = await self._attempt(entry)
                left.remove(entry.id)
                if isinstance(outcome, Delivered):
                    self._delivered()
                    delivered.append(entry.id)
                    continue
                # A failure is recorded after the acks before it, before anything after it.
                await self._ack(delivered)
                delivered.clear()
                if not await self._failed(entry, outcome):
                    break
        finally:
            # Bookkeeping runs to its end even when the lane is cancelled (arq's finish_job).
            await asyncio.shield(self._settle(delivered, left, [e.id for e in run]))

    async def _attempt_run(self, run: Sequence[Entry]) -> list[Outcome] | None:
        """The run's outcomes from a :class:`Batching` destination, cut after the first
        retry (None: not a batching destination, deliver one entry at a time)."""
        if not isinstance(self.destination, Batching):
            return None
        if self._stopping:
            return []
        try:
            async with asyncio.timeout(self.options.attempt_timeout_s):
                outcomes = list(await self.destination.deliver_many(run))
        except TimeoutError:
            return [Retry(f"delivery took longer than {self.options.attempt_timeout_s:g} s")]
        except Exception as exc:  # a bug in a destination must not stop the worker
            log.exception("destination %s: delivery of a run failed", self.name)
            return [Retry(f"internal error: {type(exc).__name__}: {exc}")]
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Retry):
                return outcomes[: index + 1]
        return outcomes[: len(run)]

    async def _attempt(self, entry: Entry) -> Outcome:
        try:
            async with asyncio.timeout(self.options.attempt_timeout_s):
                return await self.destination.deliver(entry)
        except TimeoutError:
            return Retry(f"delivery took longer than {self.options.attempt_timeout_s:g} s")
        except Exception as exc:  # a bug in a destination must not stop the worker
            log.exception("destination %s: delivery of entry %d failed", self.name, entry.id)
            return Retry(f"internal error: {type(exc).__name__}: {exc}")

    async def _failed(self, entry: Entry, outcome: Retry | Dead) -> bool:
        """Record a failed attempt; True when the lane may go on (the entry is dead)."""
        now = self.clock()
        if isinstance(outcome, Dead):
            self.counters.dead += 1
            await self._record(self.queue.bury(self.owner, entry.id, outcome.error))
            log.warning(
                # the peer's own error text may quote patient data: shown by
                # `broker queue dead`, in the log only with show_phi
                "destination %s: entry %d is dead (see `broker queue dead`): %s",
                self.name,
                entry.id,
                phi(outcome.error),
            )
            return True
        counters = self.counters
        counters.failures += 1
        counters.failing_since = counters.failing_since or now
        attempts = entry.attempts + 1
        decision = self.options.retry.decide(attempts, entry.created_at, now, self.rand())
        if isinstance(decision, RetryAt):
            counters.retried += 1
            not_before = decision.at
            if outcome.network and self._probes():
                # Held back here instead of in the store, so that a probe can end the wait:
                # the store's retry time is only the earliest the lane may be claimed.
                lane = self.options.ordering.lane(entry.id, entry.ordering_key)
                self._gates[lane] = _Gate(until=decision.at, down=outcome.network == "connect")
                not_before = min(decision.at, now + self.options.probe_interval_s)
                self._start_prober()
            await self._record(
                self.queue.retry_later(self.owner, entry.id, outcome.error, not_before)
            )
            log.info(
                "destination %s: entry %d attempt %d failed (%s); next in %.1f s",
                self.name,
                entry.id,
                attempts,
                outcome.error,
                decision.at - now,
            )
            return False
        counters.dead += 1
        error = f"{outcome.error} ({decision.reason})"
        await self._record(self.queue.bury(self.owner, entry.id, error))
        log.warning(
            "destination %s: entry %d is dead (see `broker queue dead`): %s",
            self.name,
            entry.id,
            phi(error),
        )
        return True

    # -- probing an unreachable destination ---------------------------------------------

    def _probes(self) -> bool:
        """Whether connection failures wait in a gate that probes may open. Not with
        ordering ``none``: a claim there takes any due entry, so it cannot hold one back."""
        return (
            self.options.probe_interval_s > 0
            and self.options.ordering is not Ordering.NONE
            and isinstance(self.destination, Probing)
        )

    def _gated(self, now: float) -> list[str]:
        """Lanes held back now (gates whose retry time has come are dropped)."""
        for lane in [lane for lane, gate in self._gates.items() if gate.until <= now]:
            del self._gates[lane]
        return list(self._gates)

    def _start_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe(), name=f"probe-{self.name}")

    async def _probe(self) -> None:
        """While lanes wait after connection failures: probe the peer every interval; when
        it answers after having been seen down, open those lanes' gates (retry now). A probe
        is not an attempt: nothing is sent and nothing is recorded."""
        assert isinstance(self.destination, Probing)
        while not self._stopping:
            await asyncio.sleep(self.options.probe_interval_s)
            if not self._gated(self.clock()):
                return
            try:
                reachable = await self.destination.probe()
            except Exception:
                log.exception("destination %s: probe failed", self.name)
                continue
            if not reachable:
                for gate in self._gates.values():
                    gate.down = True
                continue
            opened = [lane for lane, gate in self._gates.items() if gate.down]
            for lane in opened:
                del self._gates[lane]
            if opened:
                log.info("destination %s: reachable again; retrying now", self.name)
                self._wake.set()

    def _delivered(self) -> None:
        self.counters.delivered += 1
        self.counters.failures = 0
        self.counters.failing_since = 0.0

    async def _ack(self, ids: Sequence[int]) -> None:
        """Record a run's deliveries in one step."""
        if not ids:
            return
        try:
            await self.queue.ack_many(self.owner, ids)
        except Exception as exc:
            # The leases then expire and the entries are sent again: at least once.
            log.error("destination %s: cannot record %d deliveries: %s", self.name, len(ids), exc)

    async def _record(self, write: Awaitable[Any]) -> None:
        try:
            await write
        except Exception:
            # The lease then expires and the entry is tried again: at least once.
            log.exception("destination %s: cannot record a delivery outcome", self.name)

    async def _settle(self, delivered: list[int], left: list[int], run: list[int]) -> None:
        await self._ack(delivered)
        if left:
            await self._record(self.queue.release(self.owner, left))
        self._held.difference_update(run)


def entry_label(entry: Entry) -> str:
    """What the analyst searches for: the message type and MSH-10; for JSON (events,
    reconciliation jobs) the type or op and the id. Never patient data."""
    if entry.content_type.endswith("json"):
        try:
            body = json.loads(entry.payload)
        except ValueError:
            body = None
        if isinstance(body, dict):
            kind = body.get("type") or body.get("op") or "?"
            return f"{kind} {body.get('id', '')}".strip()
        return f"<{len(entry.payload)} bytes {entry.content_type}>"
    try:
        header = parse_header(entry.payload[:4096].decode("latin-1"))
    except HeaderError:
        return f"<{len(entry.payload)} bytes {entry.content_type}>"
    kind = "^".join(p for p in (header.message_type, header.trigger) if p)
    return f"{kind} {header.control_id}".strip()


def _configured(settings: Settings, name: str) -> tuple[Destination, WorkerOptions]:
    """A configured destination and its worker options (building opens no connection).
    Raises :class:`ConfigError` naming the bad key."""
    conf = settings.destinations[name]
    # Declared fields and extra keys alike (config.py may declare more of them).
    keys: dict[str, Any] = conf.model_dump(exclude={"type"}, exclude_none=True)
    options = WorkerOptions.from_mapping(f"destinations.{name}", keys)
    destination = build_destination(name, conf.type, keys, _resolver(settings))
    if "run" not in keys:  # a batching destination may want longer runs (the bus)
        options = replace(options, run=getattr(destination, "default_run", options.run))
    return destination, options


def _by_lane(entries: Sequence[Entry], ordering: Ordering) -> dict[str, list[Entry]]:
    lanes: dict[str, list[Entry]] = {}
    for entry in entries:
        lanes.setdefault(ordering.lane(entry.id, entry.ordering_key), []).append(entry)
    return lanes


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class DeliveryService:
    """Every destination's worker, the destinations' connections and retention of delivered
    entries; ``async with DeliveryService(...)`` inside ``broker serve``."""

    def __init__(
        self,
        queue: DeliveryQueue,
        workers: Sequence[DestinationWorker],
        *,
        types: Mapping[str, str] | None = None,
        keep_delivered_s: float = DEFAULT_KEEP_DELIVERED_S,
        purge_interval_s: float = DEFAULT_PURGE_INTERVAL_S,
        shutdown_s: float = DEFAULT_SHUTDOWN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.workers = {w.name: w for w in workers}
        self.types = dict(types or {})
        self.keep_delivered_s = keep_delivered_s
        self.purge_interval_s = purge_interval_s
        self.shutdown_s = shutdown_s
        self.clock = clock
        self._purge: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        queue: DeliveryQueue,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = DEFAULT_POLL_S,
        **kwargs: Any,
    ) -> DeliveryService:
        """Workers for every configured destination; ``kwargs`` go to the constructor.
        Raises :class:`ConfigError` naming the destination's bad key."""
        owner = owner or new_owner()
        workers = []
        for name in settings.destinations:
            destination, options = _configured(settings, name)
            options = replace(options, lease_s=lease_s, poll_s=poll_s)
            workers.append(DestinationWorker(destination, queue, options, owner=owner))
        types = {name: conf.type for name, conf in settings.destinations.items()}
        return cls(queue, workers, types=types, **kwargs)

    @staticmethod
    def check_settings(settings: Settings) -> list[str]:
        """What :meth:`from_settings` would refuse, per destination, without connecting
        (``broker check``): one line per bad destination."""
        problems = []
        for name in settings.destinations:
            try:
                _configured(settings, name)
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    async def __aenter__(self) -> DeliveryService:
        for worker in self.workers.values():
            worker.start()
        self._purge = asyncio.create_task(self._retention(), name="delivery-retention")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every worker (in parallel, each within ``shutdown_s``), close connections."""
        if self._purge is not None:
            await _cancel(self._purge)
            self._purge = None
        await asyncio.gather(*(w.stop(self.shutdown_s) for w in self.workers.values()))
        for worker in self.workers.values():
            try:
                await worker.destination.aclose()
            except Exception:
                log.exception("destination %s: error while closing", worker.name)

    def notify(self, destination: str | None = None) -> None:
        """Entries were committed for ``destination`` (every one when None): look now."""
        if destination is None:
            for worker in self.workers.values():
                worker.wake()
        elif destination in self.workers:
            self.workers[destination].wake()

    def notify_applied(self, applied: Sequence[Mapping[str, Any]]) -> None:
        """Wake the workers of the destinations named in a journal commit's ``applied``
        summaries (``{"queued": name, ...}`` or ``{"queued_to": [names], ...}``)."""
        for summary in applied:
            name = summary.get("queued")
            if isinstance(name, str):
                self.notify(name)
            for name in summary.get("queued_to") or ():
                self.notify(name)

    async def stats(self) -> dict[str, DestinationStats]:
        """Every known destination: configured, with a worker, or with entries in store."""
        now = self.clock()
        queues = await self.queue.stats(sorted({*self.types, *self.workers}))
        out: dict[str, DestinationStats] = {}
        for name, q in queues.items():
            worker = self.workers.get(name)
            counters = worker.counters if worker is not None else None
            state, since, attempts = describe(q, counters, now)
            if worker is None and not q.paused:
                state = "no worker"
            stats = DestinationStats(
                name=name,
                type=self.types.get(name, "?"),
                state=state,
                since=since,
                attempts=attempts,
                depth=q.depth,
                in_flight=q.in_flight,
                dead=q.dead,
                oldest_age_s=q.oldest_age(now),
            )
            if counters is not None:
                stats = replace(
                    stats,
                    delivered=counters.delivered,
                    retried=counters.retried,
                    dead_total=counters.dead,
                )
            out[name] = stats
        return out

    async def _retention(self) -> None:
        while True:
            try:
                removed = await self.queue.purge_delivered(self.keep_delivered_s)
                if removed:
                    log.info("delivery retention: removed %d delivered entries", removed)
            except Exception:
                log.exception("delivery retention failed; will try again")
            await asyncio.sleep(self.purge_interval_s)


def _resolver(settings: Settings) -> Callable[[Path], Path]:
    return settings.resolve


__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_POLL_S",
    "DEFAULT_PROBE_INTERVAL_S",
    "DEFAULT_SHUTDOWN_S",
    "Batching",
    "Counters",
    "DeliveryService",
    "DestinationStats",
    "DestinationWorker",
    "WorkerOptions",
    "describe",
    "new_owner",
]
