"""One accepted association: P-DATA in, DIMSE services out, release, abort and timeouts.

The reader (this task) reads PDUs and reassembles messages; one worker task answers requests in
order, so a C-CANCEL-RQ (PS3.7 9.3.2.3) is seen while a C-FIND is still sending. The states
follow PS3.8 9.2 (Sta6 data transfer, Sta13 awaiting close) without a table: the fast path has
only a handful of transitions.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

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
# operations window is 1, PS3.7 D.3.3.3, so a well-behaved peer queues none).
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


class Association:
    """Serves one association after the A-ASSOCIATE-AC has been sent.

    A request that finds the worker idle is answered by the reader itself (no task switch on
    the hot path); a C-FIND with more than one batch goes on in the worker after its first
    batch, so the reader can take a C-CANCEL-RQ. Timeouts are one watchdog timer, not a
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
        self._queue: asyncio.Queue[_WorkItem] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self._worker_busy = False
        self._finds: set[int] = set()  # message IDs of C-FINDs queued or running
        self._cancels: set[int] = set()  # ... of those a C-CANCEL-RQ asked to stop
        self._last_activity = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False

    # -- reader ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until release, abort, timeout or close; never raises for peer misbehaviour."""
        worker = asyncio.create_task(self._work(), name=f"dimse {self.peer}")
        self._arm_watchdog()
        try:
            await self._read_loop(worker)
        except (pdu.PDUError, dimse.DimseError) as exc:
            log.warning("aborting association from %s (%s): %s", self.calling_ae, self.peer, exc)
            reason = exc.reason if isinstance(exc, pdu.PDUError) else pdu.REASON_INVALID_PARAMETER
            self._abort(reason)
        except TimeoutError:
            log.info("association from %s (%s) stalled: aborted", self.calling_ae, self.peer)
            self._abort(pdu.REASON_NOT_SPECIFIED)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self._timed_out:
                log.info("association from %s (%s) closed by peer", self.calling_ae, self.peer)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if not worker.done():
                worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            self._close()

    async def _read_loop(self, worker: asyncio.Task[None]) -> None:
        max_pdu, reader, loop = self.limits.max_pdu, self.reader, self._loop
        while True:
            pdu_type, body = await pdu.read_pdu(reader, max_pdata=max_pdu)
            self._last_activity = loop.time()
            if pdu_type == pdu.P_DATA_TF:
                for message in self._assembler.feed(body):
                    await self._dispatch(message)
            elif pdu_type == pdu.A_RELEASE_RQ:
                # PS3.8 9.3.6: answer once the outstanding operations are done.
                await self._queue.put(None)
                async with asyncio.timeout(self.limits.dimse_timeout or None):
                    await asyncio.shield(worker)
                self.writer.write(pdu.RELEASE_RP)
                log.info("association from %s (%s) released", self.calling_ae, self.peer)
                await self._drain()
                return
            elif pdu_type == pdu.A_ABORT:
                log.info("association from %s (%s) aborted by peer", self.calling_ae, self.peer)
                return
            else:
                raise pdu.PDUError(
                    f"unexpected PDU type 0x{pdu_type:02X} during data transfer",
                    pdu.REASON_UNEXPECTED_PDU,
                )

    async def _dispatch(self, message: dimse.Message) -> None:
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
        if self._worker_busy or not self._queue.empty():
            await self._queue.put(message)  # answered in order, after the running request
            return
        rest = await self._answer(context, message, inline=True)
        if rest is None:
            self._done(message)
        else:
            self._queue.put_nowait(rest)

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
                        await self._stream(item, inline=False)
                    else:
                        await self._answer(
                            self.accepted.contexts[item.context_id], item, inline=False
                        )
                finally:
                    self._done(message)
                    self._worker_busy = False
                    self._last_activity = self._loop.time()
        except Exception as exc:  # a stalled peer (drain timeout) or a lost connection
            log.info(
                "association from %s (%s) stopped: %s",
                self.calling_ae,
                self.peer,
                type(exc).__name__,
            )
            self.abort()  # the reader then sees the connection closed

    def _done(self, message: dimse.Message) -> None:
        self._finds.discard(message.command.message_id)
        self._cancels.discard(message.command.message_id)

    async def _answer(
        self, context: AcceptedContext, message: dimse.Message, *, inline: bool
    ) -> _FindState | None:
        """Answer ``message``; return the rest of a C-FIND answer when ``inline`` hands it off."""
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
            return await self._find(context, message, inline)
        elif field == dimse.C_ECHO_RQ:
            await self._reply_status(context, message, status.SUCCESS)
        else:
            await self._mpps(context, message)
        return None

    async def _reply_status(
        self,
        context: AcceptedContext,
        message: dimse.Message,
        code: int,
        comment: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        """Send the response of ``message`` with ``code`` and no dataset."""
        command = message.command
        field = command.command_field | dimse.RESPONSE_BIT
        rsp = dimse.response(
            field,
            command.message_id,
            context.sop_class_uid,
            code,
            sop_instance_uid=sop_instance_uid,
            error_comment=comment,
        )
        self.writer.write(
            pdu.encode_p_data(context.context_id, rsp, None, self.accepted.peer_max_pdu)
        )
        await self._drain()

    async def _find(
        self, context: AcceptedContext, message: dimse.Message, inline: bool
    ) -> _FindState | None:
        """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.2; RAD-5): one PDU per response."""
        if message.dataset is None:
            await self._reply_status(
                context, message, status.IDENTIFIER_DOES_NOT_MATCH, "C-FIND-RQ without identifier"
            )
            return None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("C-FIND from %s: identifier %s", self.calling_ae, logs.phi(message.dataset))
        try:
            batches = self.backend.find(
                message.dataset, explicit_vr=context.explicit_vr, calling_ae=self.calling_ae
            )
            batch = await self._next_batch(batches)
        except Exception as exc:
            await self._find_failed(context, message, exc)
            return None
        pending = dimse.response_template(
            dimse.C_FIND_RSP, context.sop_class_uid, status.PENDING, True
        ).render(message.command.message_id)
        encoder = pdu.ResponseEncoder(context.context_id, pending, self.accepted.peer_max_pdu)
        return await self._stream(_FindState(context, message, batches, batch, encoder), inline)

    async def _next_batch(self, batches: Iterator[list[bytes]]) -> list[bytes] | None:
        """The next batch of answers: on the event loop (a local store answers in
        microseconds), or in a worker thread when the backend's store is across the network
        (``find_blocks``), so that a slow or hung store never stalls other associations."""
        if getattr(self.backend, "find_blocks", False):
            return await asyncio.to_thread(next, batches, None)
        return next(batches, None)

    async def _stream(self, state: _FindState, inline: bool) -> _FindState | None:
        """Send batches until the end, a C-CANCEL or a failure; when ``inline``, return the
        state after the first of several batches so that the worker goes on with it."""
        context, message, batches = state.context, state.message, state.batches
        message_id = message.command.message_id
        handed_off = False
        try:
            while state.batch is not None:
                if message_id in self._cancels:
                    log.info(
                        "C-FIND from %s cancelled after %d matches", self.calling_ae, state.sent
                    )
                    await self._reply_status(context, message, status.CANCEL)
                    return None
                if self.writer.is_closing():
                    return None
                # Look ahead one batch, so the last batch and the final response share a write.
                try:
                    following = await self._next_batch(batches)
                except Exception as exc:
                    self.writer.write(state.encoder.join(state.batch))
                    await self._find_failed(context, message, exc)
                    return None
                state.sent += len(state.batch)
                if following is None:
                    self.writer.write(state.encoder.join(state.batch, self._final(state)))
                    await self._drain()
                    return None
                self.writer.write(state.encoder.join(state.batch))
                state.batch = following
                await self._drain()
                if inline:
                    handed_off = True
                    return state
                await asyncio.sleep(0)  # let the reader see a C-CANCEL-RQ between batches
            self.writer.write(state.encoder.join([], self._final(state)))
            await self._drain()
            return None
        finally:
            if not handed_off:
                close = getattr(batches, "close", None)  # a generator: run its cleanup now
                if close is not None:
                    close()

    @staticmethod
    def _final(state: _FindState) -> bytes:
        return dimse.response_template(
            dimse.C_FIND_RSP, state.context.sop_class_uid, status.SUCCESS, False
        ).render(state.message.command.message_id)

    async def _find_failed(
        self, context: AcceptedContext, message: dimse.Message, exc: Exception
    ) -> None:
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
        await self._reply_status(context, message, *failure)

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
        """Send an A-ABORT and close (used by the server's bounded shutdown)."""
        self._abort(pdu.REASON_NOT_SPECIFIED)
        self._close()

    def _close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
