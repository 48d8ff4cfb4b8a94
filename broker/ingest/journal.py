"""The inbound journal contract: every received message, what was decided, what was answered.

Backends (``broker.storage``) implement :class:`Journal`. ``commit`` is the heart of the
broker's promise: the journal entry, the dedupe key and every effect of the message are made
durable in one atomic step, and only then may the caller send AA.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.hl7.ack import AckCode, AckError
from broker.ingest.decision import RouteDecision


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One received message with what the MSH says about it."""

    received_at: float
    listener: str
    peer: str
    sender: str  # MSH-3|MSH-4, raw: the dedupe scope
    control_id: str  # MSH-10
    message_type: str  # MSH-9.1^MSH-9.2
    version: str  # MSH-12
    charset: str  # MSH-18 as used for decoding
    raw: bytes  # the frame payload exactly as received


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What the store did with a message; the ACK is built from it."""

    journal_id: int
    ack_code: AckCode
    errors: tuple[AckError, ...] = ()
    duplicate: bool = False
    applied: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A journal row as the CLI and admin API show it."""

    id: int
    received_at: float
    listener: str
    peer: str
    sender: str
    control_id: str
    message_type: str
    version: str
    charset: str
    status: str  # accepted | error | rejected | duplicate
    ack_code: str
    route: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""

    def summary(self) -> dict[str, Any]:
        """The row ``journal ls`` and ``GET /messages`` show (no patient data)."""
        return {
            "id": self.id,
            "received": utc_text(self.received_at),
            "listener": self.listener,
            "sender": self.sender,
            "control_id": self.control_id,
            "type": self.message_type,
            "version": self.version,
            "status": self.status,
            "ack": self.ack_code,
            "route": self.route,
        }

    def details(self, *, show_phi: bool) -> dict[str, Any]:
        """What ``journal show`` and ``GET /messages/{id}`` show; the HL7 text (patient
        data) only with ``show_phi``."""
        out = self.summary()
        out.update(peer=self.peer, charset=self.charset, detail=self.detail)
        if show_phi:
            out["message"] = self.raw.decode("latin-1").replace("\r", "\n")
        return out


def utc_text(ts: float) -> str:
    """A time.time() value as ``YYYY-MM-DDTHH:MM:SSZ`` ('' for 0)."""
    if not ts:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journal(Protocol):
    """What the ingest pipeline needs from a store."""

    async def commit(self, record: InboundRecord, decision: RouteDecision) -> CommitResult:
        """Journal the message and apply its effects atomically (dedupe by sender + MSH-10)."""
        ...

    async def record_rejected(
        self, record: InboundRecord, ack_code: AckCode, errors: tuple[AckError, ...]
    ) -> int:
        """Journal a message that failed validation before routing; returns its journal id."""
        ...

    def recent(self, limit: int = 50, *, status: str | None = None) -> list[JournalEntry]:
        """Newest entries first."""
        ...

    def get(self, journal_id: int) -> JournalEntry | None: ...

    def purge(self, older_than_s: float) -> int:
        """Remove entries older than the cut-off and give the space back; returns the count."""
        ...
