"""The DICOM SCP: an asyncio server for Modality Worklist C-FIND, MPPS and C-ECHO (RAD-5/6/7).

pynetdicom decides the association (``negotiation.py``); the data transfer after the
A-ASSOCIATE-AC runs on the lean asyncio path of ``association.py``. Settings are constructor
arguments, each with a named, finite default below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Collection, Mapping
from types import TracebackType

from broker.dicom import pdu
from broker.dicom.association import Association, Limits
from broker.dicom.backend import WorklistBackend
from broker.dicom.negotiation import Accepted, AccessPolicy, Service, negotiate
from broker.net import set_tcp_nodelay

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "BROKER"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 11112  # the registered DICOM port (PS3.8 Annex G)
# Maximum Length Received we announce for P-DATA-TF (PS3.8 D.1). DCMTK announces 16384 and
# pynetdicom 16382; requests are small, so a larger value buys nothing but buffered bytes.
DEFAULT_MAX_PDU = 16384
# A DIMSE message (command + dataset) we buffer at most: identifiers and MPPS datasets are
# a few KiB; a 4 MiB message is hostile or broken.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
DEFAULT_ACSE_TIMEOUT = 30.0  # ARTIM: A-ASSOCIATE-RQ after connect (DCMTK -ta, pynetdicom: 30 s)
DEFAULT_DIMSE_TIMEOUT = 30.0  # rest of a message, a write to a slow peer, release (pynetdicom 30 s)
DEFAULT_IDLE_TIMEOUT = 60.0  # an established association silent this long is aborted (pynetdicom)
DEFAULT_MAX_ASSOCIATIONS = 50  # as wlmscpfs --max-associations
DEFAULT_SHUTDOWN_TIMEOUT = 10.0  # running associations get this long to finish on close()
_HEADER = struct.Struct(">BxL")


class DicomSCP:
    """Modality Worklist / MPPS / Verification SCP on asyncio.

    Use as ``async with DicomSCP(backend, port=0) as scp:`` (``scp.port`` is the bound port).

    - ``backend``: the :class:`~broker.dicom.backend.WorklistBackend` answering C-FIND and MPPS.
    - ``ae_title``: our AE title. Like Orthanc (``DicomCheckCalledAet`` false) and pynetdicom
      (``require_called_aet`` false), any Called AE Title is accepted unless
      ``require_called_ae`` is set (wlmscpfs rejects titles without a folder).
    - ``allowed_calling_aes`` / ``allowed_peers``: per :class:`Service`, the calling AE titles
      and peer addresses/networks allowed; a service without an entry is open to all. A peer
      allowed no service is rejected (permanent; calling-AE-not-recognized, or no-reason when
      only its address is refused); contexts of a refused service are rejected (user rejection).
    - ``max_pdu``: the Maximum Length we announce and enforce on incoming P-DATA-TF.
    - ``acse_timeout``, ``dimse_timeout``, ``idle_timeout`` (seconds; 0 disables one),
      ``max_associations`` (more are rejected transient, local-limit-exceeded),
      ``shutdown_timeout``, ``max_message``: see the DEFAULT_* constants.
    """

    def __init__(
        self,
        backend: WorklistBackend,
        *,
        ae_title: str = DEFAULT_AE_TITLE,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_pdu: int = DEFAULT_MAX_PDU,
        require_called_ae: bool = False,
        allowed_calling_aes: Mapping[Service | str, Collection[str]] | None = None,
        allowed_peers: Mapping[Service | str, Collection[str]] | None = None,
        acse_timeout: float = DEFAULT_ACSE_TIMEOUT,
        dimse_timeout: float = DEFAULT_DIMSE_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        if not 1 <= len(ae_title.strip()) <= 16:
            raise ValueError(f"ae_title {ae_title!r}: expected 1 to 16 characters")
        if max_pdu < 0 or max_associations < 1:
            raise ValueError("max_pdu must be >= 0 and max_associations >= 1")
        self.backend = backend
        self.ae_title = ae_title.strip()
        self.host = host
        self._port = port
        self.max_pdu = max_pdu
        self.policy = AccessPolicy.build(
            self.ae_title,
            require_called_ae=require_called_ae,
            allowed_calling_aes=allowed_calling_aes,
            allowed_peers=allowed_peers,
        )
        self.acse_timeout = acse_timeout
        self.limits = Limits(max_pdu, max_message, dimse_timeout, idle_timeout)
        self.max_associations = max_associations
        self.shutdown_timeout = shutdown_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._associations: set[Association] = set()
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting associations."""
        self._server = await asyncio.start_server(self._on_connect, self.host, self._port)
        log.info("DICOM SCP %s listening on %s:%d", self.ae_title, self.host, self.port)

    @property
    def port(self) -> int:
        """The bound TCP port (the one asked for, or the one the OS chose for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        """Whether the server socket accepts associations (for /health)."""
        return self._server is not None and self._server.is_serving() and not self._closing

    @property
    def active_associations(self) -> int:
        """Associations currently established."""
        return len(self._associations)

    async def serve_forever(self) -> None:
        """Start if needed and serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting; give running associations ``shutdown_timeout``; abort the rest."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=self.shutdown_timeout)
            if pending:
                log.warning("aborting %d associations still open at shutdown", len(pending))
                for association in list(self._associations):
                    association.abort()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DicomSCP:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one connection ----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Without TCP_NODELAY each response waits on the peer's delayed ACK: ~40 ms per C-FIND.
        set_tcp_nodelay(writer.get_extra_info("socket"))
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else ""
        peer = f"{host}:{peername[1]}" if peername else "?"
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if not self._closing:
                await self._associate(reader, writer, host, peer)
        except pdu.PDUError as exc:
            log.warning("association request from %s aborted: %s", peer, exc)
            writer.write(pdu.abort_pdu(pdu.SOURCE_PROVIDER, exc.reason))
        except TimeoutError:
            log.info("no A-ASSOCIATE-RQ from %s within %.0f s", peer, self.acse_timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("connection from %s closed before association", peer)
        except Exception:
            # A bug must not take the listener down; the peer gets an A-ABORT.
            log.exception("association with %s failed", peer)
            if not writer.is_closing():
                writer.write(pdu.abort_pdu())
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _associate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, peer: str
    ) -> None:
        async with asyncio.timeout(self.acse_timeout or None):
            pdu_type, body = await pdu.read_pdu(reader, max_pdata=self.max_pdu)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.PDUError(
                f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ", pdu.REASON_UNEXPECTED_PDU
            )
        outcome = negotiate(
            _HEADER.pack(pdu_type, len(body)) + body,
            self.policy,
            peer_host=host,
            max_pdu=self.max_pdu,
            at_capacity=len(self._associations) >= self.max_associations,
        )
        writer.write(outcome.response)
        if not isinstance(outcome, Accepted):
            log.warning(
                "rejected association from %s (%s) to %s: %s",
                outcome.calling_ae,
                peer,
                outcome.called_ae,
                outcome.why,
            )
            async with asyncio.timeout(self.limits.dimse_timeout or None):
                await writer.drain()
            return
        services = sorted({cx.service.value for cx in outcome.contexts.values()})
        log.info(
            "accepted association from %s (%s) to %s: %s",
            outcome.calling_ae,
            peer,
            outcome.called_ae,
            ", ".join(services) or "no contexts",
        )
        association = Association(reader, writer, outcome, self.backend, self.limits, peer)
        self._associations.add(association)
        try:
            await association.serve()
        finally:
            self._associations.discard(association)
