"""DICOM Upper Layer PDUs on the fast path: PDU headers, P-DATA-TF, release, abort.

Only what the SCP needs once an association is up (PS3.8 Section 9.3). Association negotiation
(A-ASSOCIATE-RQ/AC/RJ) is decoded and encoded by pynetdicom's ``pdu`` module in ``scp.py``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

from broker.errors import ProtocolError

# PDU types, PS3.8 Table 9-1 ... 9.3.
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT source (PS3.8 Table 9-26).
SOURCE_USER = 0x00
SOURCE_PROVIDER = 0x02
# A-ABORT provider reasons (PS3.8 Table 9-26).
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_UNEXPECTED_PARAMETER = 0x05
REASON_INVALID_PARAMETER = 0x06

# PDU header: type (1), reserved (1), length (4, big endian). PS3.8 9.3.1.
_HEADER = struct.Struct(">BxL")
HEADER_LEN = _HEADER.size
# PDV item header: length (4), presentation context ID (1), message control header (1).
_PDV = struct.Struct(">LBB")
PDV_HEADER_LEN = _PDV.size

# Message control header bits, PS3.8 E.2: bit 0 = command (1) / dataset (0), bit 1 = last.
MCH_COMMAND = 0x01
MCH_LAST = 0x02

# The A-RELEASE-RP PDU (PS3.8 9.3.7): type 06, reserved, length 4, four reserved bytes.
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# An A-ASSOCIATE-RQ is decoded by pynetdicom; this bounds the bytes we buffer for it
# (128 presentation contexts with a few transfer syntaxes each fit in ~40 KiB).
DEFAULT_MAX_ASSOCIATE_PDU = 256 * 1024


class PDUError(ProtocolError):
    """The peer sent a PDU we cannot accept; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


def abort_pdu(source: int = SOURCE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """Return an A-ABORT PDU (PS3.8 9.3.8) with ``source`` and provider ``reason``."""
    return bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason))


async def read_pdu(
    reader: asyncio.StreamReader, *, max_pdata: int, max_other: int = DEFAULT_MAX_ASSOCIATE_PDU
) -> tuple[int, bytes]:
    """Read one PDU and return ``(pdu_type, variable_field)``.

    ``max_pdata`` is the Maximum Length we announced (PS3.8 D.1: the P-DATA-TF variable field);
    0 means unlimited. Raises :class:`PDUError` for an unknown type or an oversize PDU (nothing of
    its body is read), and ``asyncio.IncompleteReadError`` when the peer closes mid-PDU.
    """
    header = await reader.readexactly(HEADER_LEN)
    pdu_type, length = read_header(header, max_pdata=max_pdata, max_other=max_other)
    return pdu_type, await reader.readexactly(length)


def read_header(
    data: bytes | bytearray, *, max_pdata: int, max_other: int = DEFAULT_MAX_ASSOCIATE_PDU
) -> tuple[int, int]:
    """``(pdu_type, length)`` of the PDU header at the start of ``data`` (at least
    :data:`HEADER_LEN` bytes), checked as :func:`read_pdu` describes; raises :class:`PDUError`."""
    pdu_type, length = _HEADER.unpack_from(data)
    if pdu_type not in KNOWN_PDU_TYPES:
        raise PDUError(f"unknown PDU type 0x{pdu_type:02X}", REASON_UNRECOGNIZED_PDU)
    limit = max_pdata if pdu_type == P_DATA_TF else max_other
    if limit and length > limit:
        raise PDUError(f"PDU type 0x{pdu_type:02X} of {length} bytes is above the limit of {limit}")
    return pdu_type, length


def iter_pdvs(body: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """Yield ``(context_id, control_header, fragment)`` for each PDV item of a P-DATA-TF body.

    Raises :class:`PDUError` when an item's length runs past the PDU or is below 2 (PS3.8 9.3.5.1).
    """
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < PDV_HEADER_LEN:
            raise PDUError("truncated PDV item header")
        item_len, context_id, control = _PDV.unpack_from(body, offset)
        if item_len < 2 or offset + 4 + item_len > end:
            raise PDUError(f"PDV item length {item_len} does not fit the P-DATA-TF")
        start = offset + PDV_HEADER_LEN
        offset += 4 + item_len
        yield context_id, control, view[start:offset]
    if end == 0:
        raise PDUError("P-DATA-TF without PDV items")


def _pdv(context_id: int, control: int, fragment: bytes | memoryview) -> bytes:
    return _PDV.pack(len(fragment) + 2, context_id, control) + fragment


def encode_p_data(context_id: int, command: bytes, dataset: bytes | None, peer_max: int) -> bytes:
    """Return the P-DATA-TF PDU(s) carrying one DIMSE message, concatenated.

    Command and dataset go in one PDU when they fit ``peer_max`` (the peer's Maximum Length
    Received: the P-DATA-TF variable field, PS3.8 D.1; 0 = unlimited), else each is cut into
    fragments of at most ``peer_max - 6`` bytes, one PDV per PDU.
    """
    size = PDV_HEADER_LEN + len(command)
    if dataset is not None:
        size += PDV_HEADER_LEN + len(dataset)
    if not peer_max or size <= peer_max:
        parts = [_HEADER.pack(P_DATA_TF, size), _pdv(context_id, MCH_COMMAND | MCH_LAST, command)]
        if dataset is not None:
            parts.append(_pdv(context_id, MCH_LAST, dataset))
        return b"".join(parts)
    if peer_max <= PDV_HEADER_LEN:
        raise ValueError(f"peer maximum PDU length {peer_max} leaves no room for a fragment")
    out: list[bytes] = []
    _fragment(out, context_id, MCH_COMMAND, command, peer_max - PDV_HEADER_LEN)
    if dataset is not None:
        _fragment(out, context_id, 0, dataset, peer_max - PDV_HEADER_LEN)
    return b"".join(out)


def _fragment(out: list[bytes], context_id: int, kind: int, data: bytes, chunk: int) -> None:
    view = memoryview(data)
    total = len(data)
    offset = 0
    while True:
        piece = view[offset : offset + chunk]
        offset += len(piece)
        control = kind | (MCH_LAST if offset >= total else 0)
        out.append(_HEADER.pack(P_DATA_TF, len(piece) + PDV_HEADER_LEN))
        out.append(_pdv(context_id, control, piece))
        if offset >= total:
            return


class ResponseEncoder:
    """Frames the responses of one request: the same command set before each dataset.

    The command PDV is encoded once; each response is one P-DATA-TF when it fits the peer's
    maximum (the usual case), else it falls back to :func:`encode_p_data`'s fragments.
    """

    __slots__ = ("_command", "_command_pdv", "_context_id", "_limit", "_peer_max")

    def __init__(self, context_id: int, command: bytes, peer_max: int) -> None:
        self._context_id = context_id
        self._command = command
        self._command_pdv = _pdv(context_id, MCH_COMMAND | MCH_LAST, command)
        self._peer_max = peer_max
        # Largest dataset that still fits one PDU with the command.
        self._limit = peer_max - len(self._command_pdv) - PDV_HEADER_LEN if peer_max else -1

    def join(self, datasets: list[bytes], final: bytes | None = None) -> bytes:
        """Return the PDUs for ``datasets`` (one response each), then ``final`` (no dataset)."""
        header, pdv, cmd = _HEADER.pack, _PDV.pack, self._command_pdv
        cid, limit, base = self._context_id, self._limit, len(self._command_pdv) + PDV_HEADER_LEN
        out: list[bytes] = []
        for data in datasets:
            if limit < 0 or len(data) <= limit:
                out += (
                    header(P_DATA_TF, base + len(data)),
                    cmd,
                    pdv(len(data) + 2, cid, MCH_LAST),
                    data,
                )
            else:
                out.append(encode_p_data(cid, self._command, data, self._peer_max))
        if final is not None:
            out.append(encode_p_data(cid, final, None, self._peer_max))
        return b"".join(out)
