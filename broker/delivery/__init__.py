"""Delivery: destination types (MLLP, HTTP, bus, Orthanc) and the workers that drain the
durable queues."""

from broker.delivery.destinations import (
    SUPPORTED_TYPES,
    Dead,
    Delivered,
    Destination,
    HttpDestination,
    MllpDestination,
    Outcome,
    Retry,
    build_destination,
)
from broker.delivery.worker import (
    Batching,
    DeliveryService,
    DestinationStats,
    DestinationWorker,
    WorkerOptions,
    describe,
    new_owner,
)

__all__ = [
    "SUPPORTED_TYPES",
    "Batching",
    "Dead",
    "Delivered",
    "DeliveryService",
    "Destination",
    "DestinationStats",
    "DestinationWorker",
    "HttpDestination",
    "MllpDestination",
    "Outcome",
    "Retry",
    "WorkerOptions",
    "build_destination",
    "describe",
    "new_owner",
]
