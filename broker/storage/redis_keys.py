"""Every Redis key the broker uses, built here so the hash tags are decided once.

Redis Cluster puts a key in the slot of its hash tag (the text between the first ``{`` and
the next ``}``), and a Lua script or MULTI/EXEC may only touch keys of one slot. So:

* each destination's queue keys share the tag ``{q:<destination>}``: every change to one
  destination's queue is one script on one slot;
* the few keys shared by every destination (the entry id counter, the set of known
  destinations) share the tag ``{q}``.

Keys, with the default prefix ``broker`` and destination ``pacs``::

    broker:{q}:ids            string   last entry id handed out (INCR)
    broker:{q}:dests          set      destinations that ever had entries or a pause record
    broker:{q:pacs}:stream    stream   pending and delivered entries (body), stream id
                                       <entry id>-0; consumer group DELIVERY_GROUP: its
                                       pending list names each lease owner
    broker:{q:pacs}:dead      stream   dead letters: body plus the last error
    broker:{q:pacs}:meta      hash     entry id -> JSON of the mutable state (state, attempts,
                                       lease owner and expiry, last error, stream entry id),
                                       from the first claim on (none: ready, never claimed)
    broker:{q:pacs}:pending   zset     pending ids (ready, retry, in_flight), score = id
    broker:{q:pacs}:leases    zset     in_flight ids, score = lease expiry
    broker:{q:pacs}:delayed   zset     retry ids, score = not_before (the delayed retries)
    broker:{q:pacs}:lanes     zset     pending ids grouped by ordering key (all scores 0,
                                       member = lane_member(key, id), read with ZRANGEBYLEX)
    broker:{q:pacs}:heads     zset     ordering key -> its oldest pending id
    broker:{q:pacs}:failing   zset     pending ids that failed before, score = failed_since
    broker:{q:pacs}:attempts  zset     the same ids, score = failed attempts
    broker:{q:pacs}:deadidx   zset     dead ids, score = id (dead letters oldest first)
    broker:{q:pacs}:done      zset     delivered ids, score = finished_at (retention purge)
    broker:{q:pacs}:control   hash     paused (0/1), paused_at
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

#: Prefix of every key; two brokers sharing a Redis database keep apart with their own.
DEFAULT_PREFIX = "broker"
#: The consumer group on each destination stream (not a key: a name inside the stream).
DELIVERY_GROUP = "delivery"

# Characters that would end or open a hash tag inside the destination's tag, or confuse the
# escaping itself; destination names come from the config and may hold any text.
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def _tag(destination: str) -> str:
    return "{q:" + destination.translate(_ESCAPES) + "}"


def entry_ids(prefix: str = DEFAULT_PREFIX) -> str:
    """The counter handing out entry ids (increasing in enqueue order, never reused)."""
    return f"{prefix}:{{q}}:ids"


def destinations(prefix: str = DEFAULT_PREFIX) -> str:
    """Set of destinations that ever had entries or a pause record."""
    return f"{prefix}:{{q}}:dests"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """One destination's keys, in the order every queue script receives them as KEYS."""

    stream: str
    dead: str
    meta: str
    pending: str
    leases: str
    delayed: str
    lanes: str
    heads: str
    failing: str
    attempts: str
    dead_index: str
    done: str
    control: str

    def all(self) -> tuple[str, ...]:
        """KEYS[1..13] of the queue scripts (see ``redis_queue.py``)."""
        return astuple(self)


def queue_keys(destination: str, prefix: str = DEFAULT_PREFIX) -> QueueKeys:
    """Every key of one destination's queue, all in the slot of its hash tag."""
    base = f"{prefix}:{_tag(destination)}"
    return QueueKeys(
        stream=f"{base}:stream",
        dead=f"{base}:dead",
        meta=f"{base}:meta",
        pending=f"{base}:pending",
        leases=f"{base}:leases",
        delayed=f"{base}:delayed",
        lanes=f"{base}:lanes",
        heads=f"{base}:heads",
        failing=f"{base}:failing",
        attempts=f"{base}:attempts",
        dead_index=f"{base}:deadidx",
        done=f"{base}:done",
        control=f"{base}:control",
    )


__all__ = [
    "DEFAULT_PREFIX",
    "DELIVERY_GROUP",
    "QueueKeys",
    "destinations",
    "entry_ids",
    "queue_keys",
]
