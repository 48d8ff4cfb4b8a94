"""Optimistic transactions on Redis: read under WATCH, compute in Python, write in MULTI/EXEC.

The journal, the worklist and their appliers run the same logic as on SQLite: read what is
stored, decide, write. On Redis each read WATCHes its key, writes are held back and sent in
one MULTI/EXEC, and when another node changed a watched key in between, EXEC fails and the
whole unit runs again from its first read (:func:`run`). So a unit is atomic (every write or
none) and isolated (it never commits on top of a state it did not see), like a SQLite
transaction, across any number of broker nodes.

Reads of a key the unit already wrote see the pending writes (the overlay below): an applier
that creates an order's items and then a second one that reads that order agree, as they
would inside one SQLite transaction.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError, WatchError

from broker.errors import StoreError
from broker.storage.store_url import ReplicaWait

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many times a unit runs again after another node changed what it read.
MAX_ATTEMPTS = 50

_MISSING = object()


class Tx:
    """One unit of work: ``get``/``hgetall``/``smembers``… watch and read (seeing this
    unit's own pending writes); ``set``/``hset``/``sadd``… are queued for EXEC."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        # (COMMAND, key, arguments); COMMAND '' is a script: arguments (script, keys, argv)
        self._ops: list[tuple[str, str, list[Any]]] = []
        self._watched: set[str] = set()
        # overlay of pending writes: hash key -> {field: value | _MISSING}, set key -> (add, rem)
        self._hashes: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._sets: dict[str, tuple[set[str], set[str]]] = {}
        self._strings: dict[str, Any] = {}
        # replies read ahead by fetch(): (COMMAND, key) -> reply
        self._fetched: dict[tuple[str, str], Any] = {}

    # -- reads (WATCH first) ---------------------------------------------------------------

    def watch(self, *keys: str) -> None:
        new = [k for k in keys if k not in self._watched]
        if new:
            self.pipe.watch(*new)  # type: ignore[no-untyped-call]
            self._watched.update(new)

    def fetch(self, commands: Sequence[tuple[str, str]]) -> None:
        """WATCH the keys of ``commands`` (GET, SMEMBERS or HGETALL, one key each) and read
        them, all in one round trip; later reads of those keys use these replies.

        redis-py sends WATCH and each read as a round trip of its own; a commit that knows
        what it will read (the dedupe key, the order's item set) asks for it at once.
        """
        todo = [(c, k) for c, k in commands if (c, k) not in self._fetched]
        if not todo:
            return
        pipe = self.pipe
        conn = pipe.connection
        if conn is None:
            conn = pipe.connection = pipe.connection_pool.get_connection()
        keys = list(dict.fromkeys(k for _, k in todo))
        packed = conn.pack_commands([("WATCH", *keys), *todo])  # type: ignore[no-untyped-call]
        conn.send_packed_command(packed)  # type: ignore[no-untyped-call]
        # parsed by the pipeline, so that redis-py knows the connection is watching
        pipe.parse_response(conn, "WATCH")  # type: ignore[no-untyped-call]
        self._watched.update(keys)
        for command, key in todo:
            reply = pipe.parse_response(conn, command)  # type: ignore[no-untyped-call]
            self._fetched[(command, key)] = reply

    def get(self, key: str) -> bytes | None:
        if key in self._strings:
            return bytes(self._strings[key])
        if key in self._deleted:
            return None
        if ("GET", key) in self._fetched:
            got = self._fetched["GET", key]
        else:
            self.watch(key)
            got = self.pipe.get(key)
        return None if got is None else _bytes(got)

    def hgetall(self, key: str) -> dict[str, bytes]:
        stored: dict[str, bytes] = {}
        if key not in self._deleted:
            if ("HGETALL", key) in self._fetched:
                reply = self._fetched["HGETALL", key]
            else:
                self.watch(key)
                reply = self.pipe.hgetall(key)
            stored = {_text(k): _bytes(v) for k, v in reply.items()}
        for field, value in self._hashes.get(key, {}).items():
            if value is _MISSING:
                stored.pop(field, None)
            else:
                stored[field] = value
        return stored

    def hmget(self, key: str, fields: Sequence[str]) -> list[Any]:
        self.watch(key)
        pending = self._hashes.get(key, {})
        if key in self._deleted:
            stored: list[Any] = [None] * len(fields)
        else:
            stored = list(self.pipe.hmget(key, list(fields)))
        out = []
        for field, value in zip(fields, stored, strict=True):
            if field in pending:
                value = None if pending[field] is _MISSING else pending[field]
            out.append(value)
        return out

    def smembers(self, key: str) -> set[str]:
        if key in self._deleted:
            members: set[str] = set()
        elif ("SMEMBERS", key) in self._fetched:
            members = {_text(m) for m in self._fetched["SMEMBERS", key]}
        else:
            self.watch(key)
            members = {_text(m) for m in self.pipe.smembers(key)}
        added, removed = self._sets.get(key, (set(), set()))
        return (members | added) - removed

    # -- writes (queued) -------------------------------------------------------------------

    def op(self, name: str, key: str, *args: Any, **kwargs: Any) -> None:
        """Queue a write on one key for EXEC (no overlay: not read back by this unit):
        ``zadd`` (key, {member: score}), ``zrem``/``rpush`` (key, values…), ``hset`` (key,
        field, value), ``set`` (key, value, ex=seconds)."""
        if name == "zadd":
            (mapping,) = args
            flat: list[Any] = []
            for member, score in mapping.items():
                flat += [repr(float(score)), member]
            self._ops.append(("ZADD", key, flat))
        elif name == "set":
            extra = ["EX", int(kwargs["ex"])] if "ex" in kwargs else []
            self._ops.append(("SET", key, [*args, *extra]))
        else:
            self._ops.append((name.upper(), key, list(args)))

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a Lua script (loaded before MULTI by redis-py's pipeline)."""
        self._ops.append(("", "", [script, list(keys), list(args)]))

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        self._strings[key] = _bytes(value)
        self.op("set", key, value, **kwargs)

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        self._hashes.setdefault(key, {}).update({f: _bytes(v) for f, v in mapping.items()})
        flat: list[Any] = []
        for field, value in mapping.items():
            flat += [field, value]
        self._ops.append(("HSET", key, flat))

    def delete(self, *keys: str) -> None:
        for key in keys:
            self._deleted.add(key)
            self._hashes.pop(key, None)
            self._sets.pop(key, None)
            self._strings.pop(key, None)
            self._ops.append(("DEL", key, []))

    def sadd(self, key: str, *members: str) -> None:
        added, removed = self._sets.setdefault(key, (set(), set()))
        added.update(members)
        removed.difference_update(members)
        self._ops.append(("SADD", key, list(members)))

    def srem(self, key: str, *members: str) -> None:
        added, removed = self._sets.setdefault(key, (set(), set()))
        removed.update(members)
        added.difference_update(members)
        self._ops.append(("SREM", key, list(members)))

    def discard_writes(self) -> None:
        """Forget every queued write (an applier refused: nothing of its work is kept)."""
        self._ops.clear()
        self._hashes.clear()
        self._deleted.clear()
        self._sets.clear()
        self._strings.clear()

    def _commands(self) -> list[tuple[Any, ...]]:
        """The queued writes as commands: runs of plain writes as one EVAL of :data:`BATCH`
        (a new order writes some twenty keys: one command instead of twenty saves most of
        the client's work), scripts as EVAL of their body (never EVALSHA: inside MULTI a
        script Redis no longer has would fail alone while the rest of the unit applied)."""
        out: list[tuple[Any, ...]] = []
        keys: list[str] = []
        argv: list[Any] = []

        def flush() -> None:
            if keys:
                out.append(("EVAL", BATCH, len(keys), *keys, *argv))
                keys.clear()
                argv.clear()

        for command, key, args in self._ops:
            if not command:
                flush()
                script, script_keys, script_args = args
                out.append(("EVAL", script.script, len(script_keys), *script_keys, *script_args))
                continue
            keys.append(key)
            argv.extend((command, len(args), *args))
        flush()
        return out

    def execute(self, wait: ReplicaWait | None = None) -> None:
        """MULTI, every queued write, EXEC (and, with ``wait``, WAIT for replicas), sent in
        one go on the connection that holds the WATCHes. Raises WatchError when a watched key
        changed (nothing was applied), a RedisError when Redis refused the unit, and
        :class:`ReplicasBehind` when it applied but too few replicas confirmed it in time."""
        pipe = self.pipe
        conn = pipe.connection
        if conn is None:
            conn = pipe.connection = pipe.connection_pool.get_connection()
        writes = self._commands()
        commands: list[tuple[Any, ...]] = [("MULTI",), *writes, ("EXEC",)]
        if wait is not None:
            commands.append(("WAIT", wait.replicas, wait.timeout_ms))
        try:
            conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
            # Every reply is read, errors or not, so that the connection stays in step.
            queued: list[ResponseError] = []
            for _ in range(1 + len(writes)):  # MULTI's OK and one QUEUED per write
                try:
                    pipe.parse_response(conn, "_")  # type: ignore[no-untyped-call]
                except ResponseError as exc:
                    queued.append(exc)
            aborted: ResponseError | None = None
            try:
                applied = pipe.parse_response(conn, "_")  # type: ignore[no-untyped-call]
            except ResponseError as exc:  # EXECABORT: a write was refused (e.g. OOM)
                aborted, applied = exc, []
            confirmed = 0
            if wait is not None:
                confirmed = int(pipe.parse_response(conn, "_"))  # type: ignore[no-untyped-call]
        except (ConnectionError, TimeoutError):
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        pipe.watching = False  # EXEC ends every WATCH of the connection
        if aborted is not None:
            raise queued[0] if queued else aborted
        if applied is None:
            raise WatchError("a watched key changed")
        failed = [r for r in applied if isinstance(r, Exception)]
        if failed:  # applied in part: Redis does not roll back a failing command in EXEC
            log.error("redis: a write of a committed unit failed: %s", failed[0])
            raise failed[0]
        if wait is not None and confirmed < wait.replicas:
            raise ReplicasBehind(
                f"redis: committed on the primary, but {confirmed} of {wait.replicas} "
                f"replica(s) confirmed it within {wait.timeout_ms} ms; not acknowledged (check the "
                "replicas' link to the primary, or the wait= option of store:)"
            )


class ReplicasBehind(StoreError):
    """A unit committed on the primary that not enough replicas confirmed: the sender is
    answered AE, and its resend is found a duplicate of what did commit."""


#: The replica wait of a store client (set by the store factory from the store URL).
_WAITS: weakref.WeakKeyDictionary[Redis, ReplicaWait] = weakref.WeakKeyDictionary()


def replica_wait_of(client: Redis) -> ReplicaWait | None:
    """The replica wait set on ``client`` (None: commits do not wait)."""
    return _WAITS.get(client)


def set_replica_wait(client: Redis, wait: ReplicaWait | None) -> None:
    """Make every unit run on ``client`` wait for replicas (None: do not wait)."""
    if wait is None:
        _WAITS.pop(client, None)
    else:
        _WAITS[client] = wait


#: Runs a list of writes, one key each: KEYS[i] is the i-th write's key; ARGV holds, per
#: write, its command, how many arguments follow, and those arguments.
BATCH = """
local a = 1
for i = 1, #KEYS do
  local command, n = ARGV[a], tonumber(ARGV[a + 1])
  redis.call(command, KEYS[i], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
return #KEYS
"""


class IdBlocks:
    """Unique ids from a Redis counter, taken ``size`` at a time (one INCRBY per block).

    With ``appendfsync always`` every write waits for an fsync, so one INCR per journal entry
    or item would cost a synced round trip each. Ids from blocks are unique across nodes and
    grow within a node, not across nodes: use them where only uniqueness matters (journal
    entries, items, change records), never for the delivery queues' ids, whose order is the
    FIFO order. A process that stops leaves the rest of its block unused (gaps are harmless).
    """

    def __init__(self, client: Redis, key: str, size: int = 64) -> None:
        self.client = client
        self.key = key
        self.size = size
        self._lock = threading.Lock()
        self._next = 0
        self._last = -1

    def next(self) -> int:
        with self._lock:
            if self._next > self._last:
                try:
                    last = int(self.client.incrby(self.key, self.size))
                    if last <= self._last:
                        # The counter went back: Redis lost its data (run it with AOF). Jump
                        # past every id this process handed out, so none is handed out twice.
                        log.error("redis: id counter %s went back (%d after %d); Redis lost "
                                  "data?", self.key, last, self._last)  # fmt: skip
                        last = int(self.client.incrby(self.key, self._last - last + self.size))
                except RedisError as exc:
                    raise StoreError(f"redis: allocate ids ({self.key}): {exc}") from exc
                self._next, self._last = last - self.size + 1, last
            value = self._next
            self._next += 1
            return value


def run(client: Redis, unit: Callable[[Tx], T], what: str) -> T:
    """Run ``unit`` in a transaction until it commits (another node's write to a key it read
    makes it start again); Redis errors become :class:`StoreError` naming ``what``."""
    for _ in range(MAX_ATTEMPTS):
        try:
            with client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe)
                result = unit(tx)
                tx.execute(_WAITS.get(client))
                return result
        except WatchError:
            continue
        except RedisError as exc:
            raise StoreError(f"redis: {what}: {exc}") from exc
    raise StoreError(f"redis: {what}: gave up after {MAX_ATTEMPTS} conflicting attempts")


def read(client: Redis, fn: Callable[[Redis], T], what: str) -> T:
    """A read outside any transaction, Redis errors as :class:`StoreError`."""
    try:
        return fn(client)
    except RedisError as exc:
        raise StoreError(f"redis: {what}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: Any) -> bytes:
    """A value as Redis gives it back (redis-py sends str as UTF-8, numbers as their repr)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def texts(values: Iterable[bytes | str]) -> list[str]:
    return [_text(v) for v in values]
