"""broker.dicom.pdu: reading PDUs with a limit, P-DATA-TF framing, abort."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.pdu import P_DATA_TF

from broker.dicom import pdu
from tests.dicom.encoded_pdus import P_DATA_PDV_PAST_END, UNKNOWN_PDU, p_data


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_read_pdu_returns_type_and_body() -> None:
    assert await pdu.read_pdu(_reader(p_data(1, 3, b"ab")), max_pdata=100) == (
        pdu.P_DATA_TF,
        b"\x00\x00\x00\x04\x01\x03ab",
    )


async def test_read_pdu_refuses_unknown_type() -> None:
    with pytest.raises(pdu.PDUError) as err:
        await pdu.read_pdu(_reader(UNKNOWN_PDU), max_pdata=100)
    assert err.value.reason == pdu.REASON_UNRECOGNIZED_PDU


async def test_read_pdu_refuses_oversize_before_reading_body() -> None:
    with pytest.raises(pdu.PDUError, match="above the limit"):
        await pdu.read_pdu(_reader(p_data(1, 3, b"x" * 200)), max_pdata=100)


async def test_read_pdu_zero_limit_is_unlimited() -> None:
    pdu_type, body = await pdu.read_pdu(_reader(p_data(1, 3, b"x" * 200)), max_pdata=0)
    assert (pdu_type, len(body)) == (pdu.P_DATA_TF, 206)


def test_iter_pdvs_rejects_item_past_end() -> None:
    with pytest.raises(pdu.PDUError):
        list(pdu.iter_pdvs(P_DATA_PDV_PAST_END[6:]))


def test_iter_pdvs_rejects_empty_body() -> None:
    with pytest.raises(pdu.PDUError):
        list(pdu.iter_pdvs(b""))


def test_abort_pdu() -> None:
    # type 07, reserved, length 4, reserved, reserved, source 02 (provider), reason 06
    assert pdu.abort_pdu(pdu.SOURCE_PROVIDER, 6) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


def _decode_all(stream: bytes) -> list[tuple[int, int, bytes, int]]:
    """Decode concatenated P-DATA-TFs with pynetdicom: (context, control, fragment, pdu len)."""
    out = []
    while stream:
        length = int.from_bytes(stream[2:6], "big")
        tf = P_DATA_TF()
        tf.decode(stream[: 6 + length])
        for item in tf.presentation_data_value_items:
            value = item.presentation_data_value or b""
            out.append((int(item.context_id or 0), value[0], value[1:], length))
        stream = stream[6 + length :]
    return out


def test_command_and_dataset_share_one_pdu_when_they_fit() -> None:
    pdvs = _decode_all(pdu.encode_p_data(5, b"C" * 10, b"D" * 20, 16384))
    assert [(c, h, f) for c, h, f, _ in pdvs] == [(5, 3, b"C" * 10), (5, 2, b"D" * 20)]
    assert pdvs[0][3] == pdvs[1][3] == 6 + 10 + 6 + 20  # one PDU


@given(
    command=st.binary(min_size=1, max_size=300),
    dataset=st.none() | st.binary(min_size=0, max_size=2000),
    peer_max=st.sampled_from([0, 7, 8, 64, 100, 1000, 16384]),
)
def test_fragments_respect_peer_max_and_reassemble(
    command: bytes, dataset: bytes | None, peer_max: int
) -> None:
    pdvs = _decode_all(pdu.encode_p_data(1, command, dataset, peer_max))
    if peer_max:
        assert all(length <= peer_max for *_, length in pdvs)
    cmd = b"".join(f for _, h, f, _ in pdvs if h & 1)
    data = b"".join(f for _, h, f, _ in pdvs if not h & 1)
    assert cmd == command
    assert [h for _, h, _, _ in pdvs if h & 1][-1] == 3  # last command fragment flagged
    if dataset is None:
        assert all(h & 1 for _, h, _, _ in pdvs)
    else:
        assert data == dataset
        assert [h for _, h, _, _ in pdvs][-1] == 2


@given(
    datasets=st.lists(st.binary(min_size=0, max_size=500), max_size=5),
    peer_max=st.sampled_from([0, 40, 300, 16384]),
)
def test_response_encoder_matches_encode_p_data(datasets: list[bytes], peer_max: int) -> None:
    command, final = b"P" * 20, b"F" * 18
    encoder = pdu.ResponseEncoder(7, command, peer_max)
    expected = b"".join(pdu.encode_p_data(7, command, d, peer_max) for d in datasets)
    assert encoder.join(datasets, final) == expected + pdu.encode_p_data(7, final, None, peer_max)
