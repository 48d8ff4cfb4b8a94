"""broker.dicom.dimse: command sets from bytes, response templates, message reassembly."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_FIND_RQ, C_FIND_RSP, N_CREATE_RSP
from pynetdicom.dimse_primitives import C_FIND, N_CREATE

from broker.dicom import dimse, pdu
from tests.dicom.encoded_pdus import C_ECHO_RQ, p_data

MWL = "1.2.840.10008.5.1.4.31"


def _command_set(data: bytes) -> Dataset:
    return read_dataset(io.BytesIO(data), True, True)


def _pynetdicom_find_rq(message_id: int) -> bytes:
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = MWL
    primitive.Priority = 2
    primitive.Identifier = io.BytesIO(b"\x10\x00\x20\x00\x00\x00\x00\x00")
    msg = C_FIND_RQ()
    msg.primitive_to_message(primitive)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    from pydicom.filewriter import write_dataset

    write_dataset(fp, msg.command_set)
    return fp.getvalue()


def test_decode_c_echo_rq() -> None:
    command = dimse.decode_command(C_ECHO_RQ)
    assert command == dimse.Command(dimse.C_ECHO_RQ, 7, False, "1.2.840.10008.1.1")
    assert command.name == "C-ECHO-RQ"


def test_decode_what_pynetdicom_encodes() -> None:
    command = dimse.decode_command(_pynetdicom_find_rq(513))
    assert (command.command_field, command.message_id, command.has_dataset) == (0x20, 513, True)
    assert command.sop_class_uid == MWL


@pytest.mark.parametrize(
    "data",
    [
        C_ECHO_RQ[:-3],  # element value runs past the end
        b"\x08\x00\x00\x00\x02\x00\x00\x00\x00\x00",  # group 0008, not a command
        C_ECHO_RQ[:40],  # no CommandField
    ],
)
def test_decode_refuses_malformed(data: bytes) -> None:
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(data)


def test_find_response_template_decodes_like_pynetdicom() -> None:
    raw = dimse.response_template(dimse.C_FIND_RSP, MWL, 0xFF00, True).render(4660)
    cs = _command_set(raw)
    assert cs.CommandGroupLength == len(raw) - 12
    assert (cs.CommandField, cs.MessageIDBeingRespondedTo, cs.Status) == (0x8020, 4660, 0xFF00)
    assert cs.AffectedSOPClassUID == MWL and cs.CommandDataSetType != 0x0101
    msg = C_FIND_RSP()
    msg.command_set = cs
    primitive = msg.message_to_primitive()
    assert getattr(primitive, "Status", None) == 0xFF00
    assert getattr(primitive, "MessageIDBeingRespondedTo", None) == 4660


def test_response_with_comment_and_instance() -> None:
    raw = dimse.response(
        dimse.N_CREATE_RSP,
        9,
        "1.2.840.10008.3.1.2.3.3",
        0x0110,
        sop_instance_uid="1.2.3",
        error_comment="x" * 80,
    )
    cs = _command_set(raw)
    assert cs.AffectedSOPInstanceUID == "1.2.3" and cs.ErrorComment == "x" * 64
    assert cs.CommandDataSetType == 0x0101 and cs.CommandGroupLength == len(raw) - 12
    msg = N_CREATE_RSP()
    msg.command_set = cs
    assert isinstance(msg.message_to_primitive(), N_CREATE)


def _find_message(message_id: int, identifier: bytes) -> list[bytes]:
    """PDV bodies: the command set, then the identifier."""
    command = _pynetdicom_find_rq(message_id)
    return [p_data(3, 3, command)[6:], p_data(3, 2, identifier)[6:]]


def test_assembler_joins_command_and_dataset() -> None:
    assembler = dimse.MessageAssembler(1 << 20)
    first, second = _find_message(1, b"ID")
    assert assembler.feed(first) == [] and assembler.in_progress
    [message] = assembler.feed(second)
    assert (message.context_id, message.command.message_id, message.dataset) == (3, 1, b"ID")
    assert not assembler.in_progress


@given(cut=st.integers(min_value=1, max_value=60), size=st.integers(min_value=0, max_value=300))
def test_assembler_any_fragment_size(cut: int, size: int) -> None:
    command = _pynetdicom_find_rq(2)
    identifier = bytes(range(256)) * 2
    identifier = identifier[:size]
    bodies = []
    for kind, data in ((1, command), (0, identifier)):
        chunks = [data[i : i + cut] for i in range(0, len(data), cut)] or [b""]
        for n, chunk in enumerate(chunks):
            bodies.append(p_data(3, kind | (2 if n == len(chunks) - 1 else 0), chunk)[6:])
    assembler = dimse.MessageAssembler(1 << 20)
    messages = [m for body in bodies for m in assembler.feed(body)]
    assert len(messages) == 1 and messages[0].dataset == identifier


def test_assembler_refuses_dataset_first_and_context_switch_and_size() -> None:
    with pytest.raises(pdu.PDUError):
        dimse.MessageAssembler(1000).feed(p_data(3, 2, b"ID")[6:])
    assembler = dimse.MessageAssembler(1000)
    assembler.feed(p_data(3, 1, b"\x00\x00")[6:])
    with pytest.raises(pdu.PDUError):
        assembler.feed(p_data(5, 3, b"\x00\x00")[6:])
    with pytest.raises(pdu.PDUError, match="above"):
        dimse.MessageAssembler(10).feed(p_data(3, 1, b"x" * 11)[6:])
