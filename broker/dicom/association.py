"""One accepted association: P-DATA in, DIMSE services out, release, abort and timeouts.

Once the A-ASSOCIATE-AC is sent, the connection's bytes reach the association as they arrive
(``_Feed``, an asyncio protocol put in place of the streams' one): PDUs are cut and messages
reassembled in the transport's callback, and a C-FIND the worklist can answer at once is
answered there, with no task to wake per PDU. Everything else (MPPS, C-ECHO, the rest of a
C-FIND of several batches, a store across the network) goes to one worker task that answers
requests in order, so a C-CANCEL-RQ (PS3.7 9.3.2.3) is seen while a C-FIND is still sending.
The states follow PS3.8 9.2 (Sta6 data transfer, Sta13 awaiting close) without a table: the
fast path has only a handful of transitions.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid

from broker import logs
from broker.dicom import dimse, pdu, status
from broker.dicom.backend import WorklistBackend, failure_of
from broker.dicom.negotiation import Accepted, AcceptedContext, Service

log = logging.getLogger(__name__)

# Requests each service answers (PS3.4 A, K and F); anything else is 0x0211.
SERVICE_COMMANDS = {
    Service.VERIFICATION: frozenset({dimse.C_ECHO_RQ}),
    Service.WORKLIST: frozenset({dimse.C_FIND_RQ}),
    Service.MPPS: frozenset({dimse.N_CREATE_RQ, dimse.N_SET_RQ}),
}
# Requests the peer may have queued while one is answered (the default asynchronous
# operations window is 1, PS3.7 D.3.3.3, so a well-behaved peer queues none); past this many
# the association stops reading until the worker catches up.
MAX_QUEUED_REQUESTS = 16


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-association limits and timeouts (seconds), from the SCP's constructor."""

    max_pdu: int
    max_message: int
    dimse_timeout: float
    idle_timeout: float


@dataclass(slots=True)
class _FindState:
    """A C-FIND answer in progress, handed from the reader to the worker after one batch."""

    context: AcceptedContext
    message: dimse.Message
    batches: Iterator[list[bytes]]
    batch: list[bytes] | None
    encoder: pdu.ResponseEncoder
    sent: int = 0


_WorkItem = dimse.Message | _FindState | None


class _Feed(asyncio.Protocol):
    """The connection's protocol once the association is up: bytes go straight to the
    association; flow control and the connection's loss also reach the streams' protocol it
    replaces, so the writer's ``drain()`` and ``wait_closed()`` keep working."""

    def __init__(self, association: Association, streams: asyncio.BaseProtocol) -> None:
        self._association = association
        self._streams = streams

    def data_received(self, data: bytes) -> None:
        self._association.data_received(data)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def pause_writing(self) -> None:
        self._streams.pause_writing()

    def resume_writing(self) -> None:
        self._streams.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._association.connection_lost()
        self._streams.connection_lost(exc)


class Association:
    """Serves one association after the A-ASSOCIATE-AC has been sent.

    A C-FIND that finds the worker idle is answered in the transport's callback (no task
    switch on the hot path); when its answer has more than one batch, the worker sends the
    rest, so the next C-CANCEL-RQ is read meanwhile. Timeouts are one watchdog timer, not a
    timeout context per read (three of those cost ~15 % of a small query here).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: Accepted,
        backend: WorklistBackend,
        limits: Limits,
        peer: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.accepted = accepted
        self.backend = backend
        self.limits = limits
        self.peer = peer
        self.calling_ae = accepted.calling_ae
        self._loop = asyncio.get_running_loop()
        self._assembler = dimse.MessageAssembler(limits.max_message)
        self._queue: asyncio.Queue[_WorkItem] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._worker_busy = False
        self._finds: set[int] = set()  # message IDs of C-FINDs queued or running
        self._cancels: set[int] = set()  # ... of those a C-CANCEL-RQ asked to stop
        self._last_activity = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._buffer = bytearray()  # received bytes not yet a whole PDU
        self._reading = True  # False once released, aborted or lost: bytes are ignored
        self._paused = False  # reading paused: MAX_QUEUED_REQUESTS wait for the worker
        self._releasing: asyncio.Task[None] | None = None
        self._finished: asyncio.Future[None] = self._loop.create_future()
        # A socket transport reads too (typeshed types a StreamWriter's as write-only).
        self._transport = cast(asyncio.Transport, writer.transport)
        # A store across the network is read in a worker thread (see _next_batch).
        self._find_blocks = bool(getattr(backend, "find_blocks", False))

    # -- receiving ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until release, abort, timeout or close; never raises for peer misbehaviour."""
        self._worker = asyncio.create_task(self._work(), name=f"dimse {self.peer}")
        self._arm_watchdog()
        transport = self._transport
        # Bytes the peer sent right behind its A-ASSOCIATE-RQ are still in the stream reader.
        early = getattr(self.reader, "_buffer", None)
        leftover = bytes(early) if early else b""
        if early:
            early.clear()
        ended = bool(getattr(self.reader, "_eof", False))
        transport.set_protocol(_Feed(self, transport.get_protocol()))
        try:
            if leftover:
                self.data_received(leftover)
            if ended or transport.is_closing():
                self.connection_lost()
            await self._finished
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            tasks = [t for t in (self._worker, self._releasing) if t is not None]
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close()

    def data_received(self, data: bytes) -> None:
        """Cut PDUs from the received bytes and act on each; never raises (a protocol error
        aborts the association, a bug is logged and aborts it too)."""
        if not self._reading:
            return
        buffer = self._buffer
        buffer += data
        try:
            while self._reading and len(buffer) >= pdu.HEADER_LEN:
                pdu_type, length = pdu.read_header(buffer, max_pdata=self.limits.max_pdu)
                end = pdu.HEADER_LEN + length
                if len(buffer) < end:
                    break
                body = bytes(buffer[pdu.HEADER_LEN : end])
                del buffer[:end]
                # Whole PDUs count as activity, not bytes: a peer dripping a PDU byte by
                # byte is still aborted by the watchdog.
                self._last_activity = self._loop.time()
                self._on_pdu(pdu_type, body)
        except (pdu.PDUError, dimse.DimseError) as exc:
            log.warning("aborting association from %s (%s): %s", self.calling_ae, self.peer, exc)
            reason = exc.reason if isinstance(exc, pdu.PDUError) else pdu.REASON_INVALID_PARAMETER
            self._end(reason)
        except Exception:
            # A bug must not take the server down; the peer gets an A-ABORT.
            log.exception("association from %s (%s) failed", self.calling_ae, self.peer)
            self._end(pdu.REASON_NOT_SPECIFIED)

    def connection_lost(self) -> None:
        if self._reading and not self._timed_out:
            log.info("association from %s (%s) closed by peer", self.calling_ae, self.peer)
        self._reading = False
        self._finish()

    def _on_pdu(self, pdu_type: int, body: bytes) -> None:
        if pdu_type == pdu.P_DATA_TF:
            for message in self._assembler.feed(body):
                self._dispatch(message)
        elif pdu_type == pdu.A_RELEASE_RQ:
            # PS3.8 9.3.6: answer once the outstanding operations are done.
            self._reading = False
            self._queue.put_nowait(None)
            self._releasing = asyncio.create_task(self._release(), name=f"release {self.peer}")
        elif pdu_type == pdu.A_ABORT:
            log.info("association from %s (%s) aborted by peer", self.calling_ae, self.peer)
            self._reading = False
            self._finish()
        else:
            raise pdu.PDUError(
                f"unexpected PDU type 0x{pdu_type:02X} during data transfer",
                pdu.REASON_UNEXPECTED_PDU,
            )

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(self.limits.dimse_timeout or None):
                if self._worker is not None:
                    await asyncio.shield(self._worker)
            self.writer.write(pdu.RELEASE_RP)
            log.info("association from %s (%s) released", self.calling_ae, self.peer)
            await self._drain()
        except TimeoutError:
            log.info("association from %s (%s) stalled: aborted", self.calling_ae, self.peer)
            self._abort(pdu.REASON_NOT_SPECIFIED)
        except ConnectionError:
            pass
        finally:
            self._finish()

    def _dispatch(self, message: dimse.Message) -> None:
        context = self.accepted.contexts.get(message.context_id)
        if context is None:
            raise pdu.PDUError(f"presentation context {message.context_id} was not accepted")
        command = message.command
        if command.command_field == dimse.C_CANCEL_RQ:
            if command.message_id in self._finds:
                self._cancels.add(command.message_id)
            return
        if command.command_field == dimse.C_FIND_RQ:
            self._finds.add(command.message_id)
        if self._worker_busy or not self._queue.empty() or not self._find_now(context, message):
            self._queue.put_nowait(message)  # answered in order, after the running request
            if self._queue.qsize() >= MAX_QUEUED_REQUESTS and not self._paused:
                self._paused = True
                self._transport.pause_reading()

    def _end(self, reason: int) -> None:
        """Abort after a protocol error: A-ABORT, stop reading, finish."""
        self._reading = False
        self._abort(reason)
        self._finish()

    def _finish(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    # -- idle and stall watchdog -----------------------------------------------------------

    def _arm_watchdog(self) -> None:
        periods = [t for t in (self.limits.idle_timeout, self.limits.dimse_timeout) if t]
        if periods:
            self._watchdog = self._loop.call_later(min(periods), self._check_idle)

    def _check_idle(self) -> None:
        limits = self.limits
        timeout = limits.dimse_timeout if self._assembler.in_progress else limits.idle_timeout
        busy = self._worker_busy or not self._queue.empty()
        if timeout and not busy and self._loop.time() - self._last_activity >= timeout:
            # ARTIM-like expiry in Sta6 (PS3.8 9.1.5): A-ABORT, then close.
            log.info(
                "association from %s (%s) idle for %.0f s: aborted",
                self.calling_ae,
                self.peer,
                timeout,
            )
            self._timed_out = True
            self.abort()
            return
        self._arm_watchdog()

    # -- worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while (item := await self._queue.get()) is not None:
                self._worker_busy = True
                message = item.message if isinstance(item, _FindState) else item
                try:
                    if isinstance(item, _FindState):
                        await self._stream(item)
                    else:
                        await self._answer(self.accepted.contexts[item.context_id], item)
                finally:
                    self._done(message)
                    self._worker_busy = False
                    self._last_activity = self._loop.time()
                    if self._paused and self._queue.qsize() < MAX_QUEUED_REQUESTS:
                        self._paused = False
                        self._transport.resume_reading()
        except Exception as exc:  # a stalled peer (drain timeout) or a lost connection
            log.info(
                "association from %s (%s) stopped: %s",
                self.calling_ae,
                self.peer,
                type(exc).__name__,
            )
            self.abort()

    def _done(self, message: dimse.Message) -> None:
        self._finds.discard(message.command.message_id)
        self._cancels.discard(message.command.message_id)

    async def _answer(self, context: AcceptedContext, message: dimse.Message) -> None:
        """Answer ``message`` (in the worker)."""
        command = message.command
        field = command.command_field
        if field not in SERVICE_COMMANDS[context.service]:
            log.info(
                "%s on %s context from %s: unrecognized operation",
                command.name,
                context.service,
                self.calling_ae,
            )
            await self._reply_status(
                context,
                message,
                status.UNRECOGNIZED_OPERATION,
                f"{command.name} is not offered on this context",
            )
        elif command.sop_class_uid and command.sop_class_uid != context.sop_class_uid:
            await self._reply_status(
                context,
                message,
                status.SOP_CLASS_NOT_SUPPORTED,
                "SOP class differs from the presentation context",
            )
        elif field == dimse.C_FIND_RQ:
            await self._find(context, message)
        elif field == dimse.C_ECHO_RQ:
            await self._reply_status(context, message, status.SUCCESS)
        else:
            await self._mpps(context, message)

    def _status_pdu(
        self,
        context: AcceptedContext,
        message: dimse.Message,
        code: int,
        comment: str = "",
        sop_instance_uid: str = "",
    ) -> bytes:
        """The response of ``message`` with ``code`` and no dataset, as a P-DATA-TF."""
        command = message.command
        rsp = dimse.response(
            command.command_field | dimse.RESPONSE_BIT,
            command.message_id,
            context.sop_class_uid,
            code,
            sop_instance_uid=sop_instance_uid,
            error_comment=comment,
        )
        return pdu.encode_p_data(context.context_id, rsp, None, self.accepted.peer_max_pdu)

    async def _reply_status(
        self,
        context: AcceptedContext,
        message: dimse.Message,
        code: int,
        comment: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        """Send the response of ``message`` with ``code`` and no dataset."""
        self.writer.write(self._status_pdu(context, message, code, comment, sop_instance_uid))
        await self._drain()

    # -- C-FIND ------------------------------------------------------------------------------

    def _find_now(self, context: AcceptedContext, message: dimse.Message) -> bool:
        """Answer a Modality Worklist C-FIND here, in the transport's callback, when nothing
        is waiting to be sent and the store is local; False (nothing done) otherwise. A
        second batch and the rest go to the worker, so a C-CANCEL-RQ is read meanwhile."""
        command = message.command
        if (
            command.command_field != dimse.C_FIND_RQ
            or context.service is not Service.WORKLIST
            or (command.sop_class_uid and command.sop_class_uid != context.sop_class_uid)
            or message.dataset is None
            or self._find_blocks
            or self._transport.get_write_buffer_size()
        ):
            return False
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-FIND from %s: identifier %s", self.calling_ae, logs.phi(message.dataset))
        write = self.writer.write
        try:
            batches = self.backend.find(
                message.dataset, explicit_vr=context.explicit_vr, calling_ae=self.calling_ae
            )
            batch = next(batches, None)
        except Exception as exc:
            write(self._failure_pdu(context, message, exc))
            self._done(message)
            return True
        state = _FindState(context, message, batches, batch, self._encoder(context, message))
        handed_off = False
        try:
            if batch is None:
                write(state.encoder.join([], self._final(state)))
            else:
                try:
                    following = next(batches, None)  # the last batch shares the final's write
                except Exception as exc:
                    write(state.encoder.join(batch) + self._failure_pdu(context, message, exc))
                    return True
                state.sent = len(batch)
                if following is None:
                    write(state.encoder.join(batch, self._final(state)))
                else:
                    write(state.encoder.join(batch))
                    state.batch = following
                    self._queue.put_nowait(state)
                    handed_off = True
            return True
        finally:
            if not handed_off:
                self._done(message)
                close = getattr(batches, "close", None)  # a generator: run its cleanup now
                if close is not None:
                    close()

    def _encoder(self, context: AcceptedContext, message: dimse.Message) -> pdu.ResponseEncoder:
        pending = dimse.response_template(
            dimse.C_FIND_RSP, context.sop_class_uid, status.PENDING, True
        ).render(message.command.message_id)
        return pdu.ResponseEncoder(context.context_id, pending, self.accepted.peer_max_pdu)

    async def _find(self, context: AcceptedContext, message: dimse.Message) -> None:
        """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.2; RAD-5) in the worker: one PDU
        per response, batches streamed so that a C-CANCEL-RQ stops them."""
        if message.dataset is None:
            await self._reply_status(
                context, message, status.IDENTIFIER_DOES_NOT_MATCH, "C-FIND-RQ without identifier"
            )
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-FIND from %s: identifier %s", self.calling_ae, logs.phi(message.dataset))
        try:
            batches = self.backend.find(
                message.dataset, explicit_vr=context.explicit_vr, calling_ae=self.calling_ae
            )
            batch = await self._next_batch(batches)
        except Exception as exc:
            await self._find_failed(context, message, exc)
            return
        encoder = self._encoder(context, message)
        await self._stream(_FindState(context, message, batches, batch, encoder))

    async def _next_batch(self, batches: Iterator[list[bytes]]) -> list[bytes] | None:
        """The next batch of answers: on the event loop (a local store answers in
        microseconds), or in a worker thread when the backend's store is across the network
        (``find_blocks``), so that a slow or hung store never stalls other associations."""
        if self._find_blocks:
            return await asyncio.to_thread(next, batches, None)
        return next(batches, None)

    async def _stream(self, state: _FindState) -> None:
        """Send batches until the end, a C-CANCEL or a failure."""
        context, message, batches = state.context, state.message, state.batches
        message_id = message.command.message_id
        try:
            while state.batch is not None:
                if message_id in self._cancels:
                    log.info(
                        "C-FIND from %s cancelled after %d matches", self.calling_ae, state.sent
                    )
                    await self._reply_status(context, message, status.CANCEL)
                    return
                if self.writer.is_closing():
                    return
                # Look ahead one batch, so the last batch and the final response share a write.
                try:
                    following = await self._next_batch(batches)
                except Exception as exc:
                    self.writer.write(state.encoder.join(state.batch))
                    await self._find_failed(context, message, exc)
                    return
                state.sent += len(state.batch)
                if following is None:
                    self.writer.write(state.encoder.join(state.batch, self._final(state)))
                    await self._drain()
                    return
                self.writer.write(state.encoder.join(state.batch))
                state.batch = following
                await self._drain()
                await asyncio.sleep(0)  # let the reader see a C-CANCEL-RQ between batches
            self.writer.write(state.encoder.join([], self._final(state)))
            await self._drain()
        finally:
            close = getattr(batches, "close", None)  # a generator: run its cleanup now
            if close is not None:
                close()

    @staticmethod
    def _final(state: _FindState) -> bytes:
        return dimse.response_template(
            dimse.C_FIND_RSP, state.context.sop_class_uid, status.SUCCESS, False
        ).render(state.message.command.message_id)

    def _failure_pdu(
        self, context: AcceptedContext, message: dimse.Message, exc: Exception
    ) -> bytes:
        failure = failure_of(exc)
        if failure is None:
            # As pynetdicom service_class.py: a raising handler answers 0xC311, association up.
            log.error(
                "C-FIND handler failed for %s: %s",
                self.calling_ae,
                type(exc).__name__,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            failure = (status.HANDLER_FAILURE, "worklist query failed")
        else:
            log.info("C-FIND from %s refused with 0x%04X", self.calling_ae, failure[0])
        return self._status_pdu(context, message, *failure)

    async def _find_failed(
        self, context: AcceptedContext, message: dimse.Message, exc: Exception
    ) -> None:
        self.writer.write(self._failure_pdu(context, message, exc))
        await self._drain()

    async def _mpps(self, context: AcceptedContext, message: dimse.Message) -> None:
        """Answer MPPS N-CREATE (PS3.4 F.7.2.1) or N-SET (F.7.2.2), decoded with pydicom."""
        command = message.command
        creating = command.command_field == dimse.N_CREATE_RQ
        uid = command.sop_instance_uid
        if creating and not uid:
            uid = generate_uid(prefix=None)  # F.7.2.1: the SCP may assign the instance UID
        if not uid:
            await self._reply_status(context, message, 0x0121, "Requested SOP Instance UID missing")
            return
        try:
            dataset = self._decode(message.dataset or b"", context.explicit_vr)
        except Exception:
            log.info("%s from %s: dataset could not be decoded", command.name, self.calling_ae)
            await self._reply_status(
                context, message, status.PROCESSING_FAILURE, "dataset could not be decoded", uid
            )
            return
        handler = self.backend.mpps_create if creating else self.backend.mpps_set
        try:
            # Off the event loop: an MPPS update commits durably (an fsync), and other
            # associations and MLLP connections must not wait on it. MPPS is rare, so the
            # thread hop (~70 µs) costs nothing that matters, unlike on the C-FIND path.
            result = await asyncio.to_thread(handler, uid, dataset, self.calling_ae)
            code, comment = result.status, result.comment
        except Exception as exc:
            failure = failure_of(exc)
            if failure is None:
                log.error(
                    "%s handler failed for %s: %s",
                    command.name,
                    self.calling_ae,
                    type(exc).__name__,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                failure = (status.PROCESSING_FAILURE, "procedure step update failed")
            code, comment = failure
        log.info("%s from %s answered 0x%04X", command.name, self.calling_ae, code)
        await self._reply_status(context, message, code, comment if code else "", uid)

    @staticmethod
    def _decode(data: bytes, explicit_vr: bool) -> Dataset:
        """Decode a dataset fully (pydicom converts values lazily; errors surface here)."""
        dataset = read_dataset(io.BytesIO(data), not explicit_vr, True)
        for _ in dataset.iterall():
            pass
        return dataset

    # -- transport -------------------------------------------------------------------------

    async def _drain(self) -> None:
        # Only when bytes are queued (the peer reads slower than we write); a peer that stops
        # reading must not hold the worker forever.
        if self.writer.transport.get_write_buffer_size():
            async with asyncio.timeout(self.limits.dimse_timeout or None):
                await self.writer.drain()

    def _abort(self, reason: int) -> None:
        if not self.writer.is_closing():
            self.writer.write(pdu.abort_pdu(pdu.SOURCE_PROVIDER, reason))

    def abort(self) -> None:
        """Send an A-ABORT and close (the watchdog, a stalled worker, the server's bounded
        shutdown); :meth:`serve` then returns."""
        self._reading = False
        self._abort(pdu.REASON_NOT_SPECIFIED)
        self._close()
        self._finish()

    def _close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
