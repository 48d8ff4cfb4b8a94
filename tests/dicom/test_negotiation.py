"""broker.dicom.negotiation: the acceptor's decision on an A-ASSOCIATE-RQ (pure, no sockets)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from broker.dicom import pdu
from broker.dicom.negotiation import (
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MODALITY_WORKLIST_FIND,
    VERIFICATION,
    Accepted,
    AccessPolicy,
    Rejected,
    negotiate,
)
from tests.dicom.encoded_pdus import ASSOCIATE_RQ, ASSOCIATE_RQ_TRUNCATED


def request(
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    calling: str = "MODALITY",
    called: str = "BROKER",
    app_context: str = "1.2.840.10008.3.1.1.1",
    max_length: int = 32768,
) -> bytes:
    """An A-ASSOCIATE-RQ encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(app_context)
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cxs = []
    for context_id, abstract, syntaxes in contexts:
        cx = build_context(abstract, list(syntaxes))
        cx.context_id = context_id
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = UID("1.2.3.4")
    primitive.user_information = [length, impl]
    return A_ASSOCIATE_RQ(primitive).encode()


ALL = [
    (1, VERIFICATION, [ImplicitVRLittleEndian]),
    (3, MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    (5, MODALITY_PERFORMED_PROCEDURE_STEP, [ImplicitVRLittleEndian]),
]
OPEN = AccessPolicy.build("BROKER")


def test_named_fixture_is_what_pynetdicom_encodes() -> None:
    assert (
        request(
            [
                (1, VERIFICATION, [ImplicitVRLittleEndian]),
                (3, MODALITY_WORKLIST_FIND, [ImplicitVRLittleEndian]),
            ],
            calling="RAWPEER",
            max_length=16384,
        )
        == ASSOCIATE_RQ
    )


def test_accepts_the_three_services_and_answers_an_ac_pynetdicom_decodes() -> None:
    outcome = negotiate(request(ALL), OPEN, peer_host="10.0.0.5", max_pdu=16384)
    assert isinstance(outcome, Accepted)
    assert (outcome.calling_ae, outcome.called_ae, outcome.peer_max_pdu) == (
        "MODALITY",
        "BROKER",
        32768,
    )
    assert {cid: (cx.service.value, cx.explicit_vr) for cid, cx in outcome.contexts.items()} == {
        1: ("verification", False),
        3: ("worklist", True),
        5: ("mpps", False),
    }
    ac = A_ASSOCIATE_AC()
    ac.decode(outcome.response)
    primitive = ac.to_primitive()
    assert primitive.maximum_length_received == 16384
    assert str(primitive.implementation_class_uid).startswith("2.25.")
    results = {
        cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list
    }
    assert results == {1: 0, 3: 0, 5: 0}


def test_unsupported_transfer_syntax_and_sop_class_rejected_per_context() -> None:
    outcome = negotiate(
        request(
            [
                (1, VERIFICATION, [ImplicitVRLittleEndian]),
                (3, MODALITY_WORKLIST_FIND, [ExplicitVRBigEndian]),
                (5, "1.2.840.10008.5.1.4.1.1.2", [ImplicitVRLittleEndian]),
            ]
        ),  # CT storage
        OPEN,
        peer_host="127.0.0.1",
        max_pdu=16384,
    )
    assert isinstance(outcome, Accepted) and list(outcome.contexts) == [1]
    ac = A_ASSOCIATE_AC()
    ac.decode(outcome.response)
    results = {
        cx.context_id: cx.result
        for cx in ac.to_primitive().presentation_context_definition_results_list
    }
    assert results == {1: 0x00, 3: 0x04, 5: 0x03}  # PS3.8 Table 9-18


def _rj(outcome: Accepted | Rejected) -> tuple[int, int, int]:
    assert isinstance(outcome, Rejected)
    rj = A_ASSOCIATE_RJ()
    rj.decode(outcome.response)
    return int(rj.result or 0), int(rj.source or 0), int(rj.reason_diagnostic or 0)


def test_calling_ae_not_allowed_anywhere_is_rejected_permanently() -> None:
    policy = AccessPolicy.build(
        "BROKER",
        allowed_calling_aes={"worklist": ["CT01"], "mpps": ["CT01"], "verification": ["CT01"]},
    )
    outcome = negotiate(request(ALL, calling="INTRUDER"), policy, peer_host="::1", max_pdu=0)
    assert _rj(outcome) == (0x01, 0x01, 0x03)  # permanent, service user, calling AE


def test_per_service_allow_list_rejects_only_that_context() -> None:
    policy = AccessPolicy.build("BROKER", allowed_calling_aes={"mpps": ["CT01"]})
    outcome = negotiate(request(ALL, calling="US02"), policy, peer_host="10.1.1.1", max_pdu=0)
    assert isinstance(outcome, Accepted) and sorted(outcome.contexts) == [1, 3]
    ac = A_ASSOCIATE_AC()
    ac.decode(outcome.response)
    results = {
        cx.context_id: cx.result
        for cx in ac.to_primitive().presentation_context_definition_results_list
    }
    assert results[5] == 0x01  # user rejection


def test_peer_address_allow_list() -> None:
    policy = AccessPolicy.build(
        "BROKER", allowed_peers={s: ["10.0.0.0/8"] for s in ("worklist", "mpps", "verification")}
    )
    assert isinstance(negotiate(request(ALL), policy, peer_host="10.2.3.4", max_pdu=0), Accepted)
    assert _rj(negotiate(request(ALL), policy, peer_host="192.168.1.1", max_pdu=0)) == (1, 1, 1)


def test_called_ae_checked_only_when_required() -> None:
    rq = request(ALL, called="SOMEONE")
    assert isinstance(negotiate(rq, OPEN, peer_host="h", max_pdu=0), Accepted)
    strict = AccessPolicy.build("BROKER", require_called_ae=True)
    assert _rj(negotiate(rq, strict, peer_host="h", max_pdu=0)) == (0x01, 0x01, 0x07)


def test_application_context_and_capacity() -> None:
    bad = request(ALL, app_context="1.2.3")
    assert _rj(negotiate(bad, OPEN, peer_host="h", max_pdu=0)) == (0x01, 0x01, 0x02)
    busy = negotiate(request(ALL), OPEN, peer_host="h", max_pdu=0, at_capacity=True)
    assert _rj(busy) == (0x02, 0x03, 0x02)  # transient, presentation, local limit exceeded


def test_undecodable_request_raises_pdu_error() -> None:
    with pytest.raises(pdu.PDUError):
        negotiate(ASSOCIATE_RQ_TRUNCATED, OPEN, peer_host="h", max_pdu=0)


def test_policy_refuses_unknown_service_and_bad_network() -> None:
    with pytest.raises(ValueError):
        AccessPolicy.build("BROKER", allowed_calling_aes={"storage": ["X"]})
    with pytest.raises(ValueError):
        AccessPolicy.build("BROKER", allowed_peers={"mpps": ["not-an-address"]})
