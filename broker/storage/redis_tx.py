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
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import RedisError, WatchError

from broker.errors import StoreError

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
        self._ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._watched: set[str] = set()
        # overlay of pending writes: hash key -> {field: value | _MISSING}, set key -> (add, rem)
        self._hashes: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._sets: dict[str, tuple[set[str], set[str]]] = {}
        self._strings: dict[str, Any] = {}

    # -- reads (WATCH first) ---------------------------------------------------------------

    def watch(self, *keys: str) -> None:
        new = [k for k in keys if k not in self._watched]
        if new:
            self.pipe.watch(*new)  # type: ignore[no-untyped-call]
            self._watched.update(new)

    def get(self, key: str) -> bytes | None:
        if key in self._strings:
            return bytes(self._strings[key])
        self.watch(key)
        if key in self._deleted:
            return None
        got = self.pipe.get(key)
        return None if got is None else _bytes(got)

    def hgetall(self, key: str) -> dict[str, bytes]:
        self.watch(key)
        stored: dict[str, bytes] = {}
        if key not in self._deleted:
            stored = {_text(k): _bytes(v) for k, v in self.pipe.hgetall(key).items()}
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
        self.watch(key)
        members = set() if key in self._deleted else {_text(m) for m in self.pipe.smembers(key)}
        added, removed = self._sets.get(key, (set(), set()))
        return (members | added) - removed

    # -- writes (queued) -------------------------------------------------------------------

    def op(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Queue any command for EXEC (no overlay: not read back by this unit)."""
        self._ops.append((name, args, kwargs))

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue a Lua script (loaded before MULTI by redis-py's pipeline)."""
        self._ops.append(("__script__", (script, list(keys), list(args)), {}))

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        self._strings[key] = _bytes(value)
        self._ops.append(("set", (key, value), kwargs))

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        self._hashes.setdefault(key, {}).update({f: _bytes(v) for f, v in mapping.items()})
        self._ops.append(("hset", (key,), {"mapping": mapping}))

    def delete(self, *keys: str) -> None:
        for key in keys:
            self._deleted.add(key)
            self._hashes.pop(key, None)
            self._sets.pop(key, None)
            self._strings.pop(key, None)
        self._ops.append(("delete", keys, {}))

    def sadd(self, key: str, *members: str) -> None:
        added, removed = self._sets.setdefault(key, (set(), set()))
        added.update(members)
        removed.difference_update(members)
        self._ops.append(("sadd", (key, *members), {}))

    def srem(self, key: str, *members: str) -> None:
        added, removed = self._sets.setdefault(key, (set(), set()))
        removed.update(members)
        added.difference_update(members)
        self._ops.append(("srem", (key, *members), {}))

    def discard_writes(self) -> None:
        """Forget every queued write (an applier refused: nothing of its work is kept)."""
        self._ops.clear()
        self._hashes.clear()
        self._deleted.clear()
        self._sets.clear()
        self._strings.clear()

    def execute(self) -> list[Any]:
        """MULTI, every queued write, EXEC; raises WatchError when a watched key changed."""
        pipe = self.pipe
        pipe.multi()
        for name, args, kwargs in self._ops:
            if name == "__script__":
                script, keys, argv = args
                script(keys=keys, args=argv, client=pipe)
            else:
                getattr(pipe, name)(*args, **kwargs)
        result: list[Any] = pipe.execute()
        return result


def run(client: Redis, unit: Callable[[Tx], T], what: str) -> T:
    """Run ``unit`` in a transaction until it commits (another node's write to a key it read
    makes it start again); Redis errors become :class:`StoreError` naming ``what``."""
    for _ in range(MAX_ATTEMPTS):
        try:
            with client.pipeline(transaction=True) as pipe:
                tx = Tx(pipe)
                result = unit(tx)
                tx.execute()
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
