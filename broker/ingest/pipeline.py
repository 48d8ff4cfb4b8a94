"""The inbound path of one message: decode, validate, route, commit, acknowledge.

DESIGN.md §2.1: an AA means durable. The ACK is built only after the journal entry and every
effect of the message committed; every frame gets an answer (AA, AE or AR with ERR), and no
error escapes to the listener.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from broker.admin.metrics import Metrics
from broker.errors import StoreError
from broker.hl7.ack import AckCode, AckError, build_ack, should_send
from broker.hl7.charset import CharsetError, decode_frame, encode_text
from broker.hl7.header import Header, HeaderError, parse_header
from broker.hl7.message import HL7ParseError, Message
from broker.ingest.decision import RouteDecision, Router
from broker.ingest.journal import CommitResult, InboundRecord, Journal

log = logging.getLogger(__name__)

#: HL7 table 0103 processing IDs we accept (Production, Training, Debugging).
PROCESSING_IDS = frozenset({"P", "T", "D", ""})


class IngestPipeline:
    """Implements the listener's :class:`broker.hl7.listener.FrameHandler`."""

    def __init__(
        self,
        journal: Journal,
        router: Callable[[], Router],
        metrics: Metrics,
        *,
        default_charset: str = "ASCII",
        on_applied: Callable[[tuple[dict[str, Any], ...]], None] | None = None,
    ) -> None:
        self.journal = journal
        # Told what a commit applied (e.g. which destinations got entries), so delivery
        # workers wake at once instead of at their next poll.
        self.on_applied = on_applied
        self.current_router = router  # a callable, so a hot reload swaps routes atomically
        self.metrics = metrics
        self.default_charset = default_charset

    async def handle(self, payload: bytes, peer: str, listener: str) -> bytes | None:
        """Process one frame; return the encoded ACK (None when enhanced mode says none)."""
        started = time.perf_counter()
        self.metrics.messages_received.labels(listener).inc()
        header: Header | None = None
        charset = ""
        code: AckCode = "AR"
        errors: tuple[AckError, ...] = ()
        try:
            try:
                decoded = decode_frame(payload, self.default_charset)
            except CharsetError as exc:
                header = _header_best_effort(payload)
                code, errors = "AE", (AckError(102, exc.hl7_location, str(exc)),)
                await self._reject(payload, peer, listener, header, "", code, errors)
                return self._answer(header, code, errors, "", started, listener)
            charset = decoded.charset
            text = decoded.text
            try:
                header = parse_header(text)
            except HeaderError as exc:
                code, errors = "AR", (AckError(exc.code, exc.location, str(exc)),)
                await self._reject(payload, peer, listener, None, charset, code, errors)
                return self._answer(None, code, errors, charset, started, listener)
            problem = _validate_header(header)
            if problem is not None:
                code, errors = "AR", (problem,)
                await self._reject(payload, peer, listener, header, charset, code, errors)
                return self._answer(header, code, errors, charset, started, listener)
            try:
                message = Message.parse(text)
            except HL7ParseError as exc:
                code, errors = "AR", (AckError(100, exc.location, str(exc)),)
                await self._reject(payload, peer, listener, header, charset, code, errors)
                return self._answer(header, code, errors, charset, started, listener)

            decision = self._route(message)
            record = _record(payload, peer, listener, header, charset)
            try:
                result: CommitResult = await self.journal.commit(record, decision)
            except StoreError:
                log.exception(
                    "ingest %s: the store failed; answering AE (message not kept)", listener
                )
                code = "AE"
                errors = (AckError(207, "", "message could not be stored; send it again"),)
                return self._answer(header, code, errors, charset, started, listener)
            if result.duplicate:
                self.metrics.duplicates.labels(listener).inc()
            elif result.applied and self.on_applied is not None:
                self.on_applied(result.applied)
            code, errors = result.ack_code, result.errors
            return self._answer(header, code, errors, charset, started, listener)
        except Exception:
            # A bug must not take the listener down: answer AE and log (no PHI in the trace:
            # our code never formats message values into exceptions).
            log.exception(
                "ingest %s: unexpected failure processing a frame from %s", listener, peer
            )
            code, errors = "AE", (AckError(207, "", "internal error; see the broker log"),)
            return self._answer(header, code, errors, charset, started, listener)

    def _route(self, message: Message) -> RouteDecision:
        try:
            return self.current_router().route(message)
        except Exception:
            log.exception("ingest: routing failed for message type %s", message.message_type)
            return RouteDecision(
                route=None,
                ack_code="AE",
                errors=(AckError(207, "", "routing failed; see the broker log"),),
            )

    async def _reject(
        self,
        payload: bytes,
        peer: str,
        listener: str,
        header: Header | None,
        charset: str,
        code: AckCode,
        errors: tuple[AckError, ...],
    ) -> None:
        """Journal a message refused before routing, so the analyst can see what came."""
        record = _record(payload, peer, listener, header, charset)
        try:
            await self.journal.record_rejected(record, code, errors)
        except StoreError:
            log.exception("ingest %s: could not journal a rejected frame", listener)

    def _answer(
        self,
        header: Header | None,
        code: AckCode,
        errors: tuple[AckError, ...],
        charset: str,
        started: float,
        listener: str,
    ) -> bytes | None:
        self.metrics.acks.labels(listener, code).inc()
        self.metrics.ack_latency.labels(listener).observe(time.perf_counter() - started)
        if not should_send(header, code):
            return None
        text = build_ack(header, code, errors)
        try:
            return encode_text(text, charset or self.default_charset)
        except (CharsetError, UnicodeEncodeError, LookupError):
            return text.encode("ascii", "replace")

    def reject_oversized(self, head: bytes, size: int, peer: str, listener: str) -> bytes | None:
        """AR for a frame over the limit; its MSH is read from the first bytes when present."""
        header = _header_best_effort(head)
        error = AckError(100, "", f"message of {size}+ bytes exceeds the listener's max_frame")
        self.metrics.messages_received.labels(listener).inc()
        self.metrics.acks.labels(listener, "AR").inc()
        return build_ack(header, "AR", (error,)).encode("ascii", "replace")


def _validate_header(header: Header) -> AckError | None:
    """The minimal checks before routing (HL7 v2.5.1 §2.14.9: MSH-9, MSH-10, MSH-12 are R)."""
    if not header.message_type or not header.trigger:
        return AckError(101, "MSH^1^9", "MSH-9 message type and trigger event are required")
    if not header.control_id:
        return AckError(101, "MSH^1^10", "MSH-10 message control ID is required")
    if not header.version:
        return AckError(101, "MSH^1^12", "MSH-12 version ID is required")
    if header.processing_id.upper() not in PROCESSING_IDS:
        return AckError(202, "MSH^1^11", "MSH-11 processing ID must be P, T or D")
    return None


def _header_best_effort(raw: bytes) -> Header | None:
    """Read the MSH of bytes we could not decode, to address the answer (latin-1 never fails)."""
    try:
        text = raw.decode("latin-1")
        start = text.find("MSH")
        return parse_header(text[start:]) if start >= 0 else None
    except HeaderError:
        return None


def _record(
    payload: bytes, peer: str, listener: str, header: Header | None, charset: str
) -> InboundRecord:
    return InboundRecord(
        received_at=time.time(),
        listener=listener,
        peer=peer,
        sender=header.sender if header else "",
        control_id=header.control_id if header else "",
        message_type=f"{header.message_type}^{header.trigger}" if header else "",
        version=header.version if header else "",
        charset=charset,
        raw=payload,
    )
