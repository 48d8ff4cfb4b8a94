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


class Association:
    """Serves one association after the A-ASSOCIATE-AC has been sent."""

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
        self._assembler = dimse.MessageAssembler(limits.max_message)
        self._queue: asyncio.Queue[dimse.Message | None] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self._finds: set[int] = set()  # message IDs of C-FINDs queued or running
        self._cancels: set[int] = set()  # ... of those a C-CANCEL-RQ asked to stop
        self._closing = False

    # -- reader ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until release, abort, timeout or close; never raises for peer misbehaviour."""
        worker = asyncio.create_task(self._work(), name=f"dimse {self.peer}")
        try:
            await self._read_loop(worker)
        except pdu.PDUError as exc:
            log.warning("aborting association from %s (%s): %s", self.calling_ae, self.peer, exc)
            self._abort(exc.reason)
        except dimse.DimseError as exc:
            log.warning("aborting association from %s (%s): %s", self.calling_ae, self.peer, exc)
            self._abort(pdu.REASON_INVALID_PARAMETER)
        except TimeoutError:
            log.info(
                "association from %s (%s) idle or stalled: aborted", self.calling_ae, self.peer
            )
            self._abort(pdu.REASON_NOT_SPECIFIED)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info(
                "association from %s (%s): connection closed by peer", self.calling_ae, self.peer
            )
        finally:
            if not worker.done():
                worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            self._close()

    async def _read_loop(self, worker: asyncio.Task[None]) -> None:
        limits = self.limits
        while True:
            timeout = limits.dimse_timeout if self._assembler.in_progress else limits.idle_timeout
            async with asyncio.timeout(timeout or None):
                pdu_type, body = await pdu.read_pdu(self.reader, max_pdata=limits.max_pdu)
            if pdu_type == pdu.P_DATA_TF:
                for message in self._assembler.feed(body):
                    await self._dispatch(message)
            elif pdu_type == pdu.A_RELEASE_RQ:
                # PS3.8 9.3.6: answer once the outstanding operations are done.
                await self._queue.put(None)
                async with asyncio.timeout(limits.dimse_timeout or None):
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
        if message.context_id not in self.accepted.contexts:
            raise pdu.PDUError(f"presentation context {message.context_id} was not accepted")
        command = message.command
        if command.command_field == dimse.C_CANCEL_RQ:
            if command.message_id in self._finds:
                self._cancels.add(command.message_id)
            return
        if command.command_field == dimse.C_FIND_RQ:
            self._finds.add(command.message_id)
        await self._queue.put(message)

    # -- worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while (message := await self._queue.get()) is not None:
                context = self.accepted.contexts[message.context_id]
                try:
                    await self._answer(context, message)
                finally:
                    self._finds.discard(message.command.message_id)
                    self._cancels.discard(message.command.message_id)
        except Exception as exc:  # a stalled peer (drain timeout) or a lost connection
            log.info(
                "association from %s (%s) stopped: %s",
                self.calling_ae,
                self.peer,
                type(exc).__name__,
            )
            self.abort()  # the reader then sees the connection closed

    async def _answer(self, context: AcceptedContext, message: dimse.Message) -> None:
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

    async def _find(self, context: AcceptedContext, message: dimse.Message) -> None:
        """Answer a Modality Worklist C-FIND (PS3.4 K.4.1.2; RAD-5): one PDU per response."""
        message_id = message.command.message_id
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
            batch = next(batches, None)
        except Exception as exc:
            await self._find_failed(context, message, exc)
            return
        pending = dimse.response_template(
            dimse.C_FIND_RSP, context.sop_class_uid, status.PENDING, True
        ).render(message_id)
        encode = pdu.ResponseEncoder(context.context_id, pending, self.accepted.peer_max_pdu)
        sent = 0
        try:
            while batch is not None:
                if message_id in self._cancels:
                    log.info("C-FIND from %s cancelled after %d matches", self.calling_ae, sent)
                    await self._reply_status(context, message, status.CANCEL)
                    return
                # Look ahead one batch, so the last batch and the final response share a write.
                try:
                    following = next(batches, None)
                except Exception as exc:
                    self.writer.write(encode.join(batch))
                    await self._find_failed(context, message, exc)
                    return
                sent += len(batch)
                if following is None:
                    final = dimse.response_template(
                        dimse.C_FIND_RSP, context.sop_class_uid, status.SUCCESS, False
                    ).render(message_id)
                    self.writer.write(encode.join(batch, final))
                    await self._drain()
                    return
                self.writer.write(encode.join(batch))
                await self._drain()
                await asyncio.sleep(0)  # let the reader see a C-CANCEL-RQ between batches
                batch = following
        finally:
            close = getattr(batches, "close", None)  # a generator: run its cleanup now
            if close is not None:
                close()
        final = dimse.response_template(
            dimse.C_FIND_RSP, context.sop_class_uid, status.SUCCESS, False
        ).render(message_id)
        self.writer.write(
            pdu.encode_p_data(context.context_id, final, None, self.accepted.peer_max_pdu)
        )
        await self._drain()

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
            result = handler(uid, dataset, self.calling_ae)
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
        # A peer that stops reading must not hold the worker forever.
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
