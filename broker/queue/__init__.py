"""Durable delivery queues: the contract every store backend implements, retry policy, ordering."""

from broker.queue.base import (
    DEFAULT_KEEP_DELIVERED_S,
    DEFAULT_LEASE_S,
    DEFAULT_RUN,
    PENDING_STATES,
    DeliveryQueue,
    Entry,
    Ordering,
    QueueStats,
    Selection,
    State,
)
from broker.queue.policy import Decision, GiveUp, RetryAt, RetryPolicy

__all__ = [
    "DEFAULT_KEEP_DELIVERED_S",
    "DEFAULT_LEASE_S",
    "DEFAULT_RUN",
    "PENDING_STATES",
    "Decision",
    "DeliveryQueue",
    "Entry",
    "GiveUp",
    "Ordering",
    "QueueStats",
    "RetryAt",
    "RetryPolicy",
    "Selection",
    "State",
]
