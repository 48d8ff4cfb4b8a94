"""Prometheus metrics of one broker instance (a registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: ACK latency buckets: the goal is p99 < 10 ms, so resolve well below and around it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The counters, gauges and histograms the broker keeps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages_received = Counter(
            "broker_messages_received",
            "HL7 messages received over MLLP",
            ["listener"],
            registry=self.registry,
        )
        self.acks = Counter(
            "broker_acks",
            "Acknowledgments sent, by MSA-1 code",
            ["listener", "code"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "broker_duplicates",
            "Messages recognised as resent (same sender and MSH-10) and not applied again",
            ["listener"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "broker_ack_latency_seconds",
            "Time from a complete frame to its ACK being ready (includes the durable commit)",
            ["listener"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.journal_entries = Gauge(
            "broker_journal_entries", "Entries in the inbound journal", registry=self.registry
        )
        self.store_bytes = Gauge(
            "broker_store_bytes", "Bytes on disk of the embedded store", registry=self.registry
        )
        self.mllp_connections = Gauge(
            "broker_mllp_connections", "Open MLLP connections", ["listener"], registry=self.registry
        )

        by_destination = ["destination"]
        self.delivery_depth = Gauge(
            "broker_delivery_depth",
            "Entries waiting per destination",
            by_destination,
            registry=self.registry,
        )
        self.delivery_oldest_age = Gauge(
            "broker_delivery_oldest_age_seconds",
            "Age of the oldest waiting entry",
            by_destination,
            registry=self.registry,
        )
        self.delivery_in_flight = Gauge(
            "broker_delivery_in_flight",
            "Entries being delivered",
            by_destination,
            registry=self.registry,
        )
        self.delivery_dead_letters = Gauge(
            "broker_delivery_dead_letters",
            "Dead letters waiting for an analyst",
            by_destination,
            registry=self.registry,
        )
        self.delivery_state = Gauge(
            "broker_delivery_state",
            "1 for the destination's current state",
            ["destination", "state"],
            registry=self.registry,
        )
        self.delivery_delivered = Counter(
            "broker_delivery_delivered",
            "Entries delivered",
            by_destination,
            registry=self.registry,
        )
        self.delivery_retried = Counter(
            "broker_delivery_retried",
            "Failed attempts scheduled for retry",
            by_destination,
            registry=self.registry,
        )
        self.delivery_dead = Counter(
            "broker_delivery_dead",
            "Entries moved to the dead-letter list",
            by_destination,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
