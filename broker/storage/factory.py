"""The store a config names, built in one place: ``store: sqlite:///PATH`` (embedded, the
default) or ``store: redis://HOST:PORT/DB`` (shared by several broker nodes).

:func:`open_stores` returns the journal, the worklist and the delivery queue of one backend
as :class:`Stores`; ``broker serve`` and the commands that read the store use it, so nothing
else chooses a backend.

Both backends hold the same things (journal, dedupe keys, worklist with MPPS, reconcile
changes and their history, events, delivery queues) and apply every effect, and the
reconcile sweep's corrections, with the same logic.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from broker.config import Settings
from broker.effects import OrderChange, PatientChange, WorklistStatusChange, WorklistUpsert
from broker.errors import ConfigError
from broker.net import redact_url
from broker.publishing import apply_publish
from broker.queue import DeliveryQueue
from broker.reconcile.apply import queue_sweep_corrections
from broker.reconcile.sweep import OrderItem, SweepReport
from broker.storage import redis_tx
from broker.storage.redis_journal import RedisJournal
from broker.storage.redis_keys import DEFAULT_PREFIX
from broker.storage.redis_queue import RedisQueue
from broker.storage.redis_tx import replica_wait_of, set_replica_wait
from broker.storage.redis_worklist import RedisWorklistStore
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_journal import JOURNAL_SCHEMA, Applier, SqliteJournal
from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue
from broker.storage.sqlite_reconcile import (
    RECONCILE_SCHEMA,
    SqliteChangeOps,
    apply_order_change,
    apply_patient_change,
    history,
    purge_history,
    sweep_items,
)
from broker.storage.sqlite_worklist import (
    SqliteWorklistStore,
    apply_worklist_status,
    apply_worklist_upsert,
)
from broker.storage.store_url import (
    REDIS_SCHEMES,
    SENTINEL_SCHEME,
    SentinelUrl,
    replica_wait,
)
from broker.worklist.mpps_apply import ProcedurePublishHook
from broker.worklist.status_message import ProcedureEventHook

log = logging.getLogger(__name__)

#: Socket timeouts of the store's Redis client: a Redis that does not answer within this is
#: down (the message gets AE; the sender sends it again).
REDIS_SOCKET_TIMEOUT_S = 5.0
#: Actions whose effects only the embedded store applies.
EMBEDDED_ONLY_ACTIONS = ("reconcile", "publish")


def is_redis(settings: Settings) -> bool:
    return settings.store.startswith(REDIS_SCHEMES)


def open_database(settings: Settings) -> SqliteDatabase:
    """The embedded store with every module's schema registered (not yet opened)."""
    if is_redis(settings):
        raise ConfigError(
            f"store: {redact_url(settings.store)!r} is a Redis store, not an SQLite file"
        )
    return SqliteDatabase(
        settings.sqlite_path, schemas=[JOURNAL_SCHEMA, QUEUE_SCHEMA, RECONCILE_SCHEMA]
    )


def make_journal(settings: Settings, db: SqliteDatabase) -> SqliteJournal:
    """The SQLite journal with the appliers that turn routed effects into store changes."""
    appliers: dict[type, Applier] = {
        WorklistUpsert: apply_worklist_upsert,
        WorklistStatusChange: apply_worklist_status,
        PatientChange: apply_patient_change,
        OrderChange: apply_order_change,
    }
    return SqliteJournal(
        db,
        appliers,
        dedupe_window_s=settings.journal.dedupe_window_hours * 3600,
        publisher=lambda conn, effect, before, done, jid: apply_publish(
            SqliteChangeOps(conn), effect, before, done, jid
        ),
    )


#: What a Redis must be set to for an AA to mean durable (docs/DELIVERY.md, "Durability
#: settings for Redis"): parameter -> (expected value, what goes wrong otherwise).
REDIS_DURABILITY = {
    "appendonly": ("yes", "without the AOF, a Redis restart loses every acknowledged message"),
    "appendfsync": (
        "always",
        "with 'everysec' a crash of the Redis machine can lose the last second of acknowledged "
        "messages; with 'no', more",
    ),
    "maxmemory-policy": (
        "noeviction",
        "any other policy lets Redis evict journal, worklist or queue keys when it is full",
    ),
}


def redis_durability_problems(client: Redis) -> list[str]:
    """How a running Redis falls short of :data:`REDIS_DURABILITY` (empty: it does not); a
    Redis that does not answer, or hides CONFIG (managed services), is reported as such."""
    problems = []
    try:
        for parameter, (expected, risk) in REDIS_DURABILITY.items():
            found: dict[Any, Any] = dict(client.config_get(parameter))
            raw = found.get(parameter, found.get(parameter.encode(), b""))
            value = raw.decode() if isinstance(raw, bytes) else str(raw)
            if value != expected:
                problems.append(f"redis {parameter} is {value!r}, expected {expected!r}: {risk}")
    except RedisError as exc:
        wanted = ", ".join(f"{p} {e}" for p, (e, _) in REDIS_DURABILITY.items())
        problems.append(f"cannot read the Redis configuration ({exc}); check {wanted} by hand")
    wait = replica_wait_of(client)
    if wait is not None:
        try:
            online = sum(
                1
                for key, value in client.info("replication").items()
                if key.startswith("slave") and isinstance(value, dict)
                and value.get("state") == "online"
            )  # fmt: skip
        except RedisError as exc:
            problems.append(f"cannot read the Redis replication state ({exc})")
        else:
            if online < wait.replicas:
                problems.append(
                    f"the store URL asks for wait={wait.replicas} but the primary has {online} "
                    "replica(s) in sync: every message will be answered AE"
                )
    return problems


#: The Sentinel clients behind a store client (close_client closes them with it).
_SENTINELS: weakref.WeakKeyDictionary[Redis, list[Redis]] = weakref.WeakKeyDictionary()


def close_client(client: Redis) -> None:
    """Close a store client and, when it found its primary through Sentinels, their clients."""
    client.close()
    for sentinel in _SENTINELS.pop(client, []):
        sentinel.close()


def redis_client(settings: Settings) -> Redis:
    """The synchronous client of a ``redis://`` store (bytes replies, TCP_NODELAY, short
    retries of a broken connection: every store write is a transaction safe to resend).
    With ``redis+sentinel://`` the client asks the Sentinels for the current primary, and
    again after a connection to it fails (a failover). With ``?wait=N`` every commit waits
    for N replicas before the ACK (:func:`replica_wait`)."""
    store, wait = replica_wait(settings.store)
    client = _connect(store)
    set_replica_wait(client, wait)
    return client


def _connect(store: str) -> Redis:
    if store.startswith(SENTINEL_SCHEME):
        url = SentinelUrl.parse(store)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(url.sentinels), socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        )  # fmt: skip
        client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            url.service, db=url.db, password=url.password, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S, decode_responses=False,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        )  # fmt: skip
        _SENTINELS[client] = list(sentinel.sentinels)  # closed with it (close_client)
        return client
    try:
        return Redis.from_url(
            store,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 2),
            decode_responses=False,
            max_connections=64,
        )
    except ValueError as exc:
        raise ConfigError(
            f"store: {redact_url(store)!r}: {exc}; expected redis://HOST:PORT/DB"
        ) from exc


@dataclass
class Stores:
    """The journal, worklist and delivery queue of one backend; ``async with`` opens them."""

    kind: str  # "sqlite" | "redis"
    journal: Any  # SqliteJournal | RedisJournal
    worklist: Any  # SqliteWorklistStore | RedisWorklistStore
    queue: DeliveryQueue
    db: SqliteDatabase | None = None
    client: Redis | None = None

    async def __aenter__(self) -> Stores:
        if self.db is not None:
            await self.db.__aenter__()
        elif not self.ping():
            # Not fatal: commits answer AE and /health says so until Redis is back.
            log.error("store %s: Redis does not answer; messages get AE until it does", self.kind)
        else:
            assert self.client is not None
            for problem in redis_durability_problems(self.client):
                log.warning("store: %s", problem)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.db is not None:
            await self.db.__aexit__(None, None, None)
            return
        self.journal.close()
        if isinstance(self.queue, RedisQueue):
            await self.queue.aclose()
        if self.client is not None:
            close_client(self.client)

    def open(self) -> None:
        """Open for a command-line tool (no event loop)."""
        if self.db is not None:
            self.db.open()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            return
        self.journal.close()
        if self.client is not None:
            close_client(self.client)

    def ping(self) -> bool:
        """Does the store answer a trivial read?"""
        try:
            if self.db is not None:
                self.db.reader().execute("SELECT 1").fetchone()
                return True
            assert self.client is not None
            return bool(self.client.ping())
        except (RedisError, OSError, Exception):
            return False

    def exists(self) -> bool:
        """Has a broker written this store yet (commands refuse to create an empty one)?"""
        if self.db is not None:
            return self.db.path.exists()
        return True

    def purge_reconcile_history(self, days: int) -> int:
        if self.db is None:
            return int(self.journal.changes.purge(days))
        return purge_history(self.db, days)

    def sweep_items(self, accessions: Sequence[str], study_uids: Sequence[str]) -> list[OrderItem]:
        """Items holding one of the accessions or study UIDs (the sweep's lookup)."""
        if self.db is None:
            found: list[OrderItem] = self.worklist.sweep_items(accessions, study_uids)
            return found
        return sweep_items(self.db.reader(), accessions, study_uids)

    def queue_sweep_corrections(
        self, report: SweepReport, destination: str, dest_type: str | None
    ) -> None:
        """Record and queue the sweep's corrections in one transaction."""
        if self.db is None:
            journal = self.journal
            redis_tx.run(
                journal.client,
                lambda tx: queue_sweep_corrections(
                    journal.change_ops(tx), report, destination, dest_type
                ),
                "queue sweep corrections",
            )
            return
        self.db.write_sync(
            lambda conn: queue_sweep_corrections(
                SqliteChangeOps(conn), report, destination, dest_type
            )
        )

    def reconcile_history(
        self, *, patient: str = "", order: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Recorded reconcile changes, newest first (``broker reconcile history``)."""
        if self.db is None:
            rows: list[dict[str, Any]] = self.journal.changes.history(
                patient=patient, order=order, limit=limit
            )
            return rows
        return history(self.db.reader(), patient=patient, order=order, limit=limit)


@contextlib.contextmanager
def stores_for_command(settings: Settings, *, create: bool = False) -> Iterator[Stores]:
    """The configured store opened for one command (another broker may be serving it);
    without ``create``, a store no broker has written yet is refused (ConfigError)."""
    stores = open_stores(settings)
    if not create and not stores.exists():
        raise ConfigError(f"no store at {redact_url(settings.store)} (has the broker run?)")
    stores.open()
    try:
        yield stores
    finally:
        stores.close()


def redis_queue(settings: Settings) -> RedisQueue:
    """The delivery queues of a Redis store (their own asyncio client)."""
    store, _ = replica_wait(settings.store)
    if not store.startswith(SENTINEL_SCHEME):
        return RedisQueue.from_url(store, prefix=DEFAULT_PREFIX)
    url = SentinelUrl.parse(store)
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels), socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
    )  # fmt: skip
    client = sentinel.master_for(
        url.service, db=url.db, password=url.password, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S, decode_responses=False,
    )  # fmt: skip
    return RedisQueue(
        client, prefix=DEFAULT_PREFIX, owns_client=True, also_close=sentinel.sentinels
    )


def open_stores(
    settings: Settings,
    *,
    on_procedure_event: ProcedureEventHook | None = None,
    on_procedure_publish: ProcedurePublishHook | None = None,
) -> Stores:
    """The configured backend's stores, not yet opened: ``async with`` in the server,
    ``open()``/``close()`` in a command."""
    if not is_redis(settings):
        db = open_database(settings)
        worklist = SqliteWorklistStore(
            db, on_procedure_event=on_procedure_event, on_procedure_publish=on_procedure_publish
        )
        return Stores("sqlite", make_journal(settings, db), worklist, SqliteQueue(db), db=db)
    client = redis_client(settings)
    redis_worklist = RedisWorklistStore(
        client,
        prefix=DEFAULT_PREFIX,
        on_procedure_event=on_procedure_event,
        on_procedure_publish=on_procedure_publish,
    )
    journal = RedisJournal(
        client,
        redis_worklist,
        prefix=DEFAULT_PREFIX,
        dedupe_window_s=settings.journal.dedupe_window_hours * 3600,
    )
    redis_worklist.journal_reader = journal.original
    queue = redis_queue(settings)
    return Stores("redis", journal, redis_worklist, queue, client=client)
