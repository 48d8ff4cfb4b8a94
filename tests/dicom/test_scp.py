"""broker.dicom.scp: the SCP driven by real peers (DCMTK, pynetdicom) and scripted raw peers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RJ

from broker.dicom import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MODALITY_WORKLIST_FIND,
    VERIFICATION,
    DicomSCP,
    dimse,
    pdu,
)
from broker.dicom.association import Association
from broker.net import set_tcp_nodelay, tcp_nodelay_is_set
from tests.dicom.encoded_pdus import (
    ABORT_FROM_USER,
    ASSOCIATE_RQ,
    ASSOCIATE_RQ_TRUNCATED,
    C_ECHO_RQ,
    P_DATA_OVERSIZE_HEADER,
    P_DATA_PDV_PAST_END,
    RELEASE_RQ,
    UNKNOWN_PDU,
    VERIFICATION_CONTEXT,
    WORKLIST_CONTEXT,
    p_data,
)
from tests.dicom.fakes import (
    DCMTK_ENV,
    ECHOSCU,
    FINDSCU,
    FakeBackend,
    canonical,
    decode,
    encode,
    worklist_item,
    worklist_query,
)

pytestmark = pytest.mark.peer


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, env=DCMTK_ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


# -- scripted raw peer -------------------------------------------------------------------------


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            return await pdu.read_pdu(self.reader, max_pdata=0)

    async def associate(self) -> None:
        await self.send(ASSOCIATE_RQ)
        assert (await self.read())[0] == pdu.A_ASSOCIATE_AC

    async def expect_abort_and_close(self, timeout: float = 5.0) -> bytes:
        pdu_type, body = await self.read(timeout)
        assert pdu_type == pdu.A_ABORT
        async with asyncio.timeout(timeout):
            assert await self.reader.read() == b""
        return body

    async def request(
        self, context_id: int, command: bytes, dataset: bytes | None = None
    ) -> Dataset:
        """Send one request; return the first response's command set, decoded by pydicom."""
        await self.send(p_data(context_id, 3, command))
        if dataset is not None:
            await self.send(p_data(context_id, 2, dataset))
        pdu_type, body = await self.read()
        assert pdu_type == pdu.P_DATA_TF
        [(cid, control, fragment)] = [
            (c, h, bytes(f)) for c, h, f in pdu.iter_pdvs(body) if h & pdu.MCH_COMMAND
        ]
        assert cid == context_id and control == 3
        return decode(fragment, explicit_vr=False)


@asynccontextmanager
async def raw_peer(port: int) -> AsyncIterator[RawPeer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield RawPeer(reader, writer)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def assert_still_serving(port: int) -> None:
    rc, out = await run(ECHOSCU, "127.0.0.1", str(port))
    assert rc == 0, out


# -- pynetdicom SCU (blocking: run in a thread) -----------------------------------------------


def scu(port: int, contexts: list[str], ae_title: str = "PYSCU") -> Any:
    ae = AE(ae_title)
    for uid in contexts:
        ae.add_requested_context(uid, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    # generous: CI runs this beside other suites on 2 cores; a lost response still fails
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title="BROKER")


def find_statuses(port: int, query: Dataset) -> list[tuple[int, str, Dataset | None]]:
    assoc = scu(port, [MODALITY_WORKLIST_FIND, VERIFICATION])
    assert assoc.is_established
    try:
        out = [
            (int(status.Status), str(status.get("ErrorComment", "")), identifier)
            for status, identifier in assoc.send_c_find(query, MODALITY_WORKLIST_FIND)
        ]
        # The association stays up after a failure: an echo still works on it.
        out.append((int(assoc.send_c_echo().Status), "echo", None))
        return out
    finally:
        assoc.release()


# -- DCMTK peers -------------------------------------------------------------------------------


@pytest.mark.usefixtures("dcmtk")
async def test_echoscu(scp: DicomSCP) -> None:
    await assert_still_serving(scp.port)


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(("options", "explicit"), [([], True), (["-xi"], False)])
async def test_findscu_gets_every_item_in_the_negotiated_syntax(
    scp: DicomSCP,
    backend: FakeBackend,
    items: list[Dataset],
    query_file: Path,
    tmp_path: Path,
    options: list[str],
    explicit: bool,
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out = await run(
        FINDSCU, "-W", *options, "-X", "--output-directory", str(out_dir),
        "127.0.0.1", str(scp.port), str(query_file),
    )  # fmt: skip
    assert rc == 0, out
    answers = [dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]
    assert [canonical(ds) for ds in answers] == [canonical(ds) for ds in items]
    assert all(ds.file_meta.TransferSyntaxUID.is_implicit_VR is not explicit for ds in answers)
    [(query, explicit_vr, calling_ae)] = backend.finds
    assert (explicit_vr, calling_ae) == (explicit, "FINDSCU")
    assert query.PatientName == "" and "ScheduledProcedureStepSequence" in query


@pytest.mark.usefixtures("dcmtk")
async def test_findscu_repeat_over_one_association(scp: DicomSCP, query_file: Path) -> None:
    rc, out = await run(
        FINDSCU, "-W", "-q", "--repeat", "20", "127.0.0.1", str(scp.port), str(query_file)
    )
    assert rc == 0, out
    assert scp.active_associations == 0


class SlowBackend(FakeBackend):
    """One item per batch, 10 ms per batch: a C-CANCEL arrives while the answer runs."""

    closed = False

    def _batches(self, encoded: list[bytes], crash_late: bool) -> Iterator[list[bytes]]:
        try:
            for data in encoded:
                time.sleep(0.01)  # a slow store, deliberately blocking
                self.batches_sent += 1
                yield [data]
        finally:
            self.closed = True


@pytest.mark.usefixtures("dcmtk")
async def test_findscu_cancel(items: list[Dataset], query_file: Path, tmp_path: Path) -> None:
    backend = SlowBackend(items * 10)
    async with DicomSCP(backend, host="127.0.0.1", port=0) as server:
        rc, out = await run(
            FINDSCU, "-W", "-v", "--cancel", "2", "127.0.0.1", str(server.port), str(query_file)
        )
        assert rc == 0, out
        assert "Cancel" in out  # findscu reports the final status: Cancel (0xFE00)
        assert backend.closed and backend.batches_sent < len(items) * 10


class NetworkStoreBackend(FakeBackend):
    """A store across the network (``find_blocks``): records where its batches are read."""

    find_blocks = True

    def __init__(self, items: list[Dataset]) -> None:
        super().__init__(items)
        self.threads: set[str] = set()

    def _batches(self, encoded: list[bytes], crash_late: bool) -> Iterator[list[bytes]]:
        for batch in super()._batches(encoded, crash_late):
            self.threads.add(threading.current_thread().name)
            yield batch


@pytest.mark.usefixtures("dcmtk")
async def test_a_network_store_is_read_off_the_event_loop(
    items: list[Dataset], query_file: Path
) -> None:
    """A store across the network (Redis) is read in worker threads: one that hangs holds up
    its own association, never the event loop every other association shares."""
    backend = NetworkStoreBackend(items)
    async with DicomSCP(backend, host="127.0.0.1", port=0) as server:
        rc, out = await run(FINDSCU, "-W", "-q", "127.0.0.1", str(server.port), str(query_file))
        assert rc == 0, out
    assert backend.batches_sent == 3  # 12 items in batches of 5, all answered
    assert backend.threads and threading.main_thread().name not in backend.threads


# -- pynetdicom SCU ----------------------------------------------------------------------------


async def test_pynetdicom_c_find_with_c_cancel(items: list[Dataset]) -> None:
    backend = SlowBackend(items * 10)

    def find_then_cancel(port: int) -> list[int]:
        assoc = scu(port, [MODALITY_WORKLIST_FIND])
        try:
            context_id = assoc.accepted_contexts[0].context_id
            statuses = []
            for status, _ in assoc.send_c_find(worklist_query(), MODALITY_WORKLIST_FIND, msg_id=7):
                statuses.append(int(status.Status))
                if len(statuses) == 1:
                    assoc.send_c_cancel(7, context_id)
            return statuses
        finally:
            assoc.release()

    async with DicomSCP(backend, host="127.0.0.1", port=0) as server:
        statuses = await asyncio.to_thread(find_then_cancel, server.port)
    assert statuses[0] == 0xFF00 and statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00} and len(statuses) < len(items) * 10
    assert backend.closed


async def test_pynetdicom_c_find_answers_match(scp: DicomSCP, items: list[Dataset]) -> None:
    results = await asyncio.to_thread(find_statuses, scp.port, worklist_query())
    pending = [identifier for code, _, identifier in results if code == 0xFF00]
    assert [canonical(ds) for ds in pending if ds] == [canonical(ds) for ds in items]
    assert [code for code, _, _ in results[len(pending) :]] == [0x0000, 0x0000]


@pytest.mark.parametrize(
    ("patient_id", "expected"),
    [
        ("BAD", [(0xA900, "Identifier does not match: PatientID")]),  # QueryError → its status
        ("CRASH", [(0xC311, "worklist query failed")]),  # handler exception → 0xC311
        ("CRASH-LATE", [(0xFF00, "")] * 5 + [(0xC311, "worklist query failed")]),
    ],
)
async def test_find_failures_answer_a_status_and_keep_the_association(
    scp: DicomSCP, patient_id: str, expected: list[tuple[int, str]]
) -> None:
    results = await asyncio.to_thread(find_statuses, scp.port, worklist_query(PatientID=patient_id))
    assert [(code, comment) for code, comment, _ in results] == [*expected, (0x0000, "echo")]


def mpps_dataset(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedStationAETitle = "CT01"
    return ds


def mpps_session(port: int) -> list[tuple[int, str]]:
    assoc = scu(port, [MODALITY_PERFORMED_PROCEDURE_STEP], ae_title="CT01")
    assert assoc.is_established
    mpps, uid = MODALITY_PERFORMED_PROCEDURE_STEP, "1.2.826.0.1.3680043.8.498.555"
    try:
        calls = [
            assoc.send_n_create(mpps_dataset("IN PROGRESS"), mpps, uid),
            assoc.send_n_create(mpps_dataset("IN PROGRESS"), mpps, uid),  # duplicate
            assoc.send_n_set(mpps_dataset("COMPLETED"), mpps, uid),
            assoc.send_n_set(mpps_dataset("COMPLETED"), mpps, "1.2.3.999"),  # unknown instance
            assoc.send_n_set(mpps_dataset("BOOM"), mpps, uid),  # handler raises
            assoc.send_n_create(mpps_dataset("IN PROGRESS"), mpps, None),  # SCP assigns the UID
        ]
        return [(int(s.Status), str(s.get("ErrorComment", ""))) for s, _ in calls]
    finally:
        assoc.release()


async def test_mpps_n_create_then_n_set(scp: DicomSCP, backend: FakeBackend) -> None:
    statuses = await asyncio.to_thread(mpps_session, scp.port)
    assert statuses == [
        (0x0000, ""),
        (0x0111, "Duplicate SOP instance"),
        (0x0000, ""),
        (0x0112, "No such SOP instance"),
        (0x0110, "procedure step update failed"),
        (0x0000, ""),
    ]
    uid = "1.2.826.0.1.3680043.8.498.555"
    assert backend.mpps[uid].PerformedProcedureStepStatus == "COMPLETED"
    [generated] = set(backend.mpps) - {uid}
    assert generated.startswith("2.25.")  # PS3.4 F.7.2.1: assigned by the SCP
    assert {calling for _, _, calling in backend.mpps_calls} == {"CT01"}


# -- scripted raw peers: bad input -------------------------------------------------------------


async def test_tcp_nodelay_on_the_accepted_socket(
    scp: DicomSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[socket.socket] = []

    def spy(sock: Any) -> None:
        set_tcp_nodelay(sock)
        seen.append(sock)

    monkeypatch.setattr("broker.dicom.scp.set_tcp_nodelay", spy)
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        [sock] = seen
        assert tcp_nodelay_is_set(sock)


async def test_c_echo_and_release(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        rsp = await peer.request(VERIFICATION_CONTEXT, C_ECHO_RQ)
        assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8030, 7, 0)
        await peer.send(RELEASE_RQ)
        assert await peer.read() == (pdu.A_RELEASE_RP, b"\x00\x00\x00\x00")


async def test_wrong_operation_and_sop_class_get_failure_statuses(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        # C-ECHO-RQ on the worklist context: not an operation of that service.
        rsp = await peer.request(WORKLIST_CONTEXT, C_ECHO_RQ)
        assert (rsp.CommandField, rsp.Status) == (0x8030, 0x0211)
        # C-FIND-RQ naming Verification as its SOP class on the worklist context.
        find = dimse.encode_command({
            dimse.AFFECTED_SOP_CLASS_UID: b"1.2.840.10008.1.1\x00",
            dimse.COMMAND_FIELD: b"\x20\x00", dimse.MESSAGE_ID: b"\x09\x00",
            dimse.PRIORITY: b"\x00\x00", dimse.COMMAND_DATA_SET_TYPE: b"\x01\x00",
        })  # fmt: skip
        rsp = await peer.request(WORKLIST_CONTEXT, find, encode(worklist_query(), False))
        assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8020, 9, 0x0122)
        assert "SOP class" in rsp.ErrorComment


@pytest.mark.parametrize(
    ("name", "steps", "reason"),
    [
        ("unknown PDU type before association", [UNKNOWN_PDU], pdu.REASON_UNRECOGNIZED_PDU),
        ("undecodable A-ASSOCIATE-RQ", [ASSOCIATE_RQ_TRUNCATED], pdu.REASON_INVALID_PARAMETER),
        ("P-DATA-TF before association", [p_data(1, 3, C_ECHO_RQ)], pdu.REASON_UNEXPECTED_PDU),
        ("oversize P-DATA-TF", [ASSOCIATE_RQ, P_DATA_OVERSIZE_HEADER], pdu.REASON_INVALID_PARAMETER),
        ("PDV past the PDU end", [ASSOCIATE_RQ, P_DATA_PDV_PAST_END], pdu.REASON_INVALID_PARAMETER),
        ("context not accepted", [ASSOCIATE_RQ, p_data(9, 3, C_ECHO_RQ)], pdu.REASON_INVALID_PARAMETER),
        ("garbage command set", [ASSOCIATE_RQ, p_data(1, 3, b"\x01\x02\x03")], pdu.REASON_INVALID_PARAMETER),
        ("second A-ASSOCIATE-RQ", [ASSOCIATE_RQ, ASSOCIATE_RQ], pdu.REASON_UNEXPECTED_PDU),
        ("unknown PDU type in Sta6", [ASSOCIATE_RQ, UNKNOWN_PDU], pdu.REASON_UNRECOGNIZED_PDU),
    ],
)  # fmt: skip
async def test_malformed_input_is_aborted_and_the_server_goes_on(
    scp: DicomSCP, name: str, steps: list[bytes], reason: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw_peer(scp.port) as peer:
        for n, step in enumerate(steps):
            await peer.send(step)
            if n == 0 and step is ASSOCIATE_RQ:
                assert (await peer.read())[0] == pdu.A_ASSOCIATE_AC
        body = await peer.expect_abort_and_close()
        assert body[2:] == bytes((pdu.SOURCE_PROVIDER, reason)), name
    await assert_still_serving(scp.port)
    assert "RAWPEER" not in caplog.text or "aborting" in caplog.text


async def test_peer_abort_ends_the_association(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        await peer.send(ABORT_FROM_USER)
        async with asyncio.timeout(5):
            assert await peer.reader.read() == b""
    await assert_still_serving(scp.port)


# -- pipelining: requests that arrive together ------------------------------------------------


def _echo_rq(message_id: int) -> bytes:
    return dimse.encode_command({
        dimse.AFFECTED_SOP_CLASS_UID: b"1.2.840.10008.1.1\x00",
        dimse.COMMAND_FIELD: b"\x30\x00", dimse.MESSAGE_ID: message_id.to_bytes(2, "little"),
        dimse.COMMAND_DATA_SET_TYPE: b"\x01\x01",
    })  # fmt: skip


def _find_rq(message_id: int) -> bytes:
    return dimse.encode_command({
        dimse.AFFECTED_SOP_CLASS_UID: MODALITY_WORKLIST_FIND.encode() + b"\x00",
        dimse.COMMAND_FIELD: b"\x20\x00", dimse.MESSAGE_ID: message_id.to_bytes(2, "little"),
        dimse.PRIORITY: b"\x00\x00", dimse.COMMAND_DATA_SET_TYPE: b"\x01\x00",
    })  # fmt: skip


async def _responses(peer: RawPeer, count: int) -> list[tuple[int, int, int]]:
    """(message ID responded to, command field, status) of the next ``count`` final
    responses, pending C-FIND responses counted per request in the status slot's place."""
    out: list[tuple[int, int, int]] = []
    pending = 0
    while len(out) < count:
        pdu_type, body = await peer.read()
        assert pdu_type == pdu.P_DATA_TF
        for _, control, fragment in pdu.iter_pdvs(body):
            if not control & pdu.MCH_COMMAND:
                continue
            rsp = decode(bytes(fragment), explicit_vr=False)
            if rsp.Status == 0xFF00:
                pending += 1
                continue
            out.append((rsp.MessageIDBeingRespondedTo, rsp.CommandField, pending))
            pending = 0
    return out


async def test_requests_behind_the_associate_rq_are_answered(scp: DicomSCP) -> None:
    """Bytes that arrive with the A-ASSOCIATE-RQ (a peer that does not wait for the AC, or
    one TCP segment holding both) are served once the association is up."""
    async with raw_peer(scp.port) as peer:
        await peer.send(ASSOCIATE_RQ + p_data(VERIFICATION_CONTEXT, 3, _echo_rq(5)) + RELEASE_RQ)
        assert (await peer.read())[0] == pdu.A_ASSOCIATE_AC
        assert await _responses(peer, 1) == [(5, 0x8030, 0)]
        assert await peer.read() == (pdu.A_RELEASE_RP, b"\x00\x00\x00\x00")


async def test_pipelined_requests_are_answered_in_order(
    scp: DicomSCP, items: list[Dataset]
) -> None:
    """More requests than the association queues (it stops reading meanwhile), C-FINDs whose
    first batch is answered at once and whose rest the worker sends, and C-ECHOs the worker
    answers, all in one write: every answer, complete and in request order."""
    identifier = encode(worklist_query(), False)
    burst = b"".join(
        p_data(WORKLIST_CONTEXT, 3, _find_rq(n)) + p_data(WORKLIST_CONTEXT, 2, identifier)
        if n % 2
        else p_data(VERIFICATION_CONTEXT, 3, _echo_rq(n))
        for n in range(1, 61)
    )
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        await peer.send(burst)
        got = await _responses(peer, 60)
        assert got == [(n, 0x8020, len(items)) if n % 2 else (n, 0x8030, 0) for n in range(1, 61)]
        # and the association still answers one request at a time afterwards
        assert (await peer.request(VERIFICATION_CONTEXT, _echo_rq(99))).Status == 0
        await peer.send(RELEASE_RQ)
        assert await peer.read() == (pdu.A_RELEASE_RP, b"\x00\x00\x00\x00")


async def test_a_peer_gone_right_after_its_associate_rq_ends_the_association(
    scp: DicomSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's EOF reaches the stream reader before the association takes the connection
    over (held back here so that it always does): the association ends at once, not after
    the idle timeout."""
    serve = Association.serve

    async def late(self: Association) -> None:
        await asyncio.sleep(0.2)
        await serve(self)

    monkeypatch.setattr(Association, "serve", late)
    async with raw_peer(scp.port) as peer:
        await peer.send(ASSOCIATE_RQ)
        peer.writer.write_eof()
        assert (await peer.read())[0] == pdu.A_ASSOCIATE_AC
        async with asyncio.timeout(5):
            assert await peer.reader.read() == b""
    async with asyncio.timeout(5):
        while scp.active_associations:
            await asyncio.sleep(0.01)
    await assert_still_serving(scp.port)


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_a_session_cut_anywhere_gets_the_same_answers(cuts: list[int]) -> None:
    """The association cuts PDUs from whatever the reads bring: a whole session (associate,
    C-FIND, C-ECHO, C-FIND, release) written in pieces cut anywhere, each its own read, gets
    every answer, in order."""
    items = [worklist_item(n) for n in range(7)]
    identifier = encode(worklist_query(), False)
    session = (
        ASSOCIATE_RQ
        + p_data(WORKLIST_CONTEXT, 3, _find_rq(1))
        + p_data(WORKLIST_CONTEXT, 2, identifier)
        + p_data(VERIFICATION_CONTEXT, 3, _echo_rq(2))
        + p_data(WORKLIST_CONTEXT, 3, _find_rq(3))
        + p_data(WORKLIST_CONTEXT, 2, identifier)
        + RELEASE_RQ
    )
    pieces, at = [], 0
    for cut in cuts:
        if at >= len(session):
            break
        pieces.append(session[at : at + cut])
        at += cut
    pieces.append(session[at:])

    async def main() -> None:
        backend = FakeBackend(items, batch_size=3)
        async with (
            DicomSCP(backend, host="127.0.0.1", port=0) as scp,
            raw_peer(scp.port) as peer,
        ):
            set_tcp_nodelay(peer.writer.get_extra_info("socket"))
            for piece in pieces:
                await peer.send(piece)
                await asyncio.sleep(0.0005)  # a read of its own, mostly
            assert (await peer.read())[0] == pdu.A_ASSOCIATE_AC
            got = await _responses(peer, 3)
            assert got == [(1, 0x8020, len(items)), (2, 0x8030, 0), (3, 0x8020, len(items))]
            assert await peer.read() == (pdu.A_RELEASE_RP, b"\x00\x00\x00\x00")

    asyncio.run(main())


# -- limits, timeouts, access, shutdown --------------------------------------------------------


@pytest.mark.parametrize("scp_options", [{"idle_timeout": 0.2}])
async def test_idle_association_is_aborted(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        started = time.monotonic()
        await peer.expect_abort_and_close(timeout=3)
        assert 0.15 < time.monotonic() - started < 2


@pytest.mark.parametrize("scp_options", [{"idle_timeout": 0.3}])
async def test_a_pdu_dripped_byte_by_byte_does_not_keep_the_association(scp: DicomSCP) -> None:
    """Activity is whole PDUs: a peer sending one byte every 50 ms never completes one and
    is aborted after the idle timeout like a silent peer."""
    async with raw_peer(scp.port) as peer:
        await peer.associate()
        started = time.monotonic()

        async def drip() -> None:
            with suppress(ConnectionError):
                for byte in p_data(VERIFICATION_CONTEXT, 3, C_ECHO_RQ):
                    await peer.send(bytes((byte,)))
                    await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        try:
            await peer.expect_abort_and_close(timeout=3)
        finally:
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
        assert 0.25 < time.monotonic() - started < 2


@pytest.mark.parametrize("scp_options", [{"acse_timeout": 0.2}])
async def test_silent_connection_is_closed_after_acse_timeout(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as peer:
        async with asyncio.timeout(3):
            assert await peer.reader.read() == b""


@pytest.mark.parametrize("scp_options", [{"max_associations": 1}])
async def test_max_associations_rejects_transient(scp: DicomSCP) -> None:
    async with raw_peer(scp.port) as first, raw_peer(scp.port) as second:
        await first.associate()
        await second.send(ASSOCIATE_RQ)
        pdu_type, body = await second.read()
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        rj = A_ASSOCIATE_RJ()
        rj.decode(b"\x03\x00" + len(body).to_bytes(4, "big") + body)
        assert (rj.result, rj.source, rj.reason_diagnostic) == (0x02, 0x03, 0x02)


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(
    "scp_options", [{"allowed_calling_aes": {"verification": ["CT01"], "worklist": ["CT01"]}}]
)
async def test_calling_ae_allow_list(scp: DicomSCP, caplog: pytest.LogCaptureFixture) -> None:
    rc, out = await run(ECHOSCU, "-aet", "CT01", "127.0.0.1", str(scp.port))
    assert rc == 0, out
    # MPPS has no allow-list, so INTRUDER may associate, but its Verification context is refused.
    rc, out = await run(ECHOSCU, "-v", "-aet", "INTRUDER", "127.0.0.1", str(scp.port))
    assert rc != 0 and "No Acceptable Presentation Contexts" in out, out


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(
    "scp_options",
    [{"allowed_calling_aes": {s: ["CT01"] for s in ("verification", "worklist", "mpps")}}],
)
async def test_unknown_calling_ae_is_rejected(
    scp: DicomSCP, caplog: pytest.LogCaptureFixture
) -> None:
    rc, out = await run(ECHOSCU, "-v", "-aet", "INTRUDER", "127.0.0.1", str(scp.port))
    assert rc != 0 and "Calling AE Title Not Recognized" in out, out
    assert "calling AE title not allowed" in caplog.text


async def test_shutdown_waits_then_aborts_within_its_bound(backend: FakeBackend) -> None:
    server = DicomSCP(backend, host="127.0.0.1", port=0, shutdown_timeout=0.3)
    await server.start()
    async with raw_peer(server.port) as peer:
        await peer.associate()
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 2
        await peer.expect_abort_and_close(timeout=2)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
