"""Association negotiation as acceptor: a pure decision made with pynetdicom's PDU classes.

pynetdicom decodes the A-ASSOCIATE-RQ (``pdu.A_ASSOCIATE_RQ``), negotiates the presentation
contexts (``presentation.negotiate_as_acceptor``) and encodes the A-ASSOCIATE-AC/RJ, as its own
acceptor does in ``acse.py`` ``_negotiate_as_acceptor``; here we only add the broker's access
rules (PS3.8 7.1.1 and 9.3.4) and keep the outcome small for the fast path.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu import A_ASSOCIATE_RQ as _RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from broker.dicom import pdu

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"  # DICOM Application Context, PS3.7 A.2.1
VERIFICATION = "1.2.840.10008.1.1"  # PS3.4 Annex A
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"  # PS3.4 K.6.1.2.2
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"  # PS3.4 F.7.3
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # acceptor's preference
# PS3.5 B.2: a UUID-derived UID, fixed for this implementation.
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'broker.dicom').int}"
IMPLEMENTATION_VERSION_NAME = "BROKER_01"

# A-ASSOCIATE-RJ fields, PS3.8 Table 9-21.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_USER = 0x01
SOURCE_ACSE = 0x02
SOURCE_PRESENTATION = 0x03
DIAG_NO_REASON = 0x01
DIAG_APPLICATION_CONTEXT = 0x02
DIAG_CALLING_AE = 0x03
DIAG_CALLED_AE = 0x07
DIAG_PROTOCOL_VERSION = 0x02  # with SOURCE_ACSE
DIAG_LOCAL_LIMIT = 0x02  # with SOURCE_PRESENTATION


class Service(StrEnum):
    """The services the SCP offers; keys of the per-service access rules."""

    WORKLIST = "worklist"
    MPPS = "mpps"
    VERIFICATION = "verification"


SERVICE_SOP_CLASS: dict[Service, str] = {
    Service.WORKLIST: MODALITY_WORKLIST_FIND,
    Service.MPPS: MODALITY_PERFORMED_PROCEDURE_STEP,
    Service.VERIFICATION: VERIFICATION,
}
SOP_CLASS_SERVICE = {uid: service for service, uid in SERVICE_SOP_CLASS.items()}


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may associate: called AE check and per-service allow-lists (empty = anyone)."""

    ae_title: str
    require_called_ae: bool = False
    calling_aes: Mapping[Service, frozenset[str]] = field(default_factory=dict)
    peers: Mapping[Service, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = field(
        default_factory=dict
    )

    @classmethod
    def build(
        cls,
        ae_title: str,
        *,
        require_called_ae: bool = False,
        allowed_calling_aes: Mapping[Service | str, Collection[str]] | None = None,
        allowed_peers: Mapping[Service | str, Collection[str]] | None = None,
    ) -> AccessPolicy:
        """Return a policy; peers are IP addresses or networks (``10.0.0.0/8``).

        Raises ValueError naming the service or address that is not valid.
        """
        calling = {
            Service(name): frozenset(ae.strip() for ae in aes)
            for name, aes in (allowed_calling_aes or {}).items()
        }
        peers = {
            Service(name): tuple(ipaddress.ip_network(p, strict=False) for p in nets)
            for name, nets in (allowed_peers or {}).items()
        }
        return cls(ae_title.strip(), require_called_ae, calling, peers)

    def permits(self, service: Service, calling_ae: str, host: str) -> tuple[bool, bool]:
        """Return ``(calling AE allowed, peer address allowed)`` for ``service``."""
        aes = self.calling_aes.get(service)
        ae_ok = not aes or calling_ae in aes
        nets = self.peers.get(service)
        if not nets:
            return ae_ok, True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return ae_ok, False
        return ae_ok, any(address in net for net in nets)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context accepted on an association."""

    context_id: int
    sop_class_uid: str
    service: Service
    explicit_vr: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """The association is accepted: send ``response`` (the A-ASSOCIATE-AC PDU)."""

    calling_ae: str
    called_ae: str
    peer_max_pdu: int  # the peer's Maximum Length Received; 0 = unlimited
    contexts: dict[int, AcceptedContext]
    response: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """The association is rejected: send ``response`` (the A-ASSOCIATE-RJ PDU)."""

    calling_ae: str
    called_ae: str
    result: int
    source: int
    diagnostic: int
    why: str
    response: bytes


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    """Return an encoded A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    return A_ASSOCIATE_RJ(primitive).encode()


def _rejected(rq: A_ASSOCIATE, code: tuple[int, int, int], why: str) -> Rejected:
    return Rejected(rq.calling_ae_title, rq.called_ae_title, *code, why, reject_pdu(*code))


def negotiate(
    raw: bytes,
    policy: AccessPolicy,
    *,
    peer_host: str,
    max_pdu: int,
    at_capacity: bool = False,
) -> Accepted | Rejected:
    """Decide on the A-ASSOCIATE-RQ ``raw`` (the whole PDU) and return the answer to send.

    Raises :class:`~broker.dicom.pdu.PDUError` when pynetdicom cannot decode the PDU.
    """
    rq_pdu = _RQ()
    try:
        rq_pdu.decode(raw)
        rq = rq_pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors on bad items
        raise pdu.PDUError("A-ASSOCIATE-RQ could not be decoded") from exc
    calling = rq.calling_ae_title.strip()
    called = rq.called_ae_title.strip()

    # PS3.8 9.3.2: protocol version bit 0 must be set.
    if not rq_pdu.protocol_version & 0x0001:
        return _rejected(
            rq,
            (REJECTED_PERMANENT, SOURCE_ACSE, DIAG_PROTOCOL_VERSION),
            "protocol version not supported",
        )
    if rq.application_context_name != APPLICATION_CONTEXT_NAME:
        return _rejected(
            rq,
            (REJECTED_PERMANENT, SOURCE_USER, DIAG_APPLICATION_CONTEXT),
            "application context name not supported",
        )
    if policy.require_called_ae and called != policy.ae_title:
        return _rejected(
            rq, (REJECTED_PERMANENT, SOURCE_USER, DIAG_CALLED_AE), "called AE title not ours"
        )

    permitted: set[Service] = set()
    ae_refused = False
    for service in Service:
        ae_ok, peer_ok = policy.permits(service, calling, peer_host)
        if ae_ok and peer_ok:
            permitted.add(service)
        ae_refused = ae_refused or not ae_ok
    if not permitted:
        if ae_refused:
            return _rejected(
                rq,
                (REJECTED_PERMANENT, SOURCE_USER, DIAG_CALLING_AE),
                "calling AE title not allowed",
            )
        return _rejected(
            rq, (REJECTED_PERMANENT, SOURCE_USER, DIAG_NO_REASON), "peer address not allowed"
        )
    if at_capacity:
        return _rejected(
            rq,
            (REJECTED_TRANSIENT, SOURCE_PRESENTATION, DIAG_LOCAL_LIMIT),
            "maximum number of associations reached",
        )

    supported = []
    for service in permitted:
        cx = PresentationContext()
        cx.abstract_syntax = UID(SERVICE_SOP_CLASS[service])
        cx.transfer_syntax = list(TRANSFER_SYNTAXES)
        supported.append(cx)
    rq_roles = {}
    for item in rq.user_information:
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
            rq_roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
    results, roles = negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported, rq_roles
    )
    contexts: dict[int, AcceptedContext] = {}
    for cx in results:
        sop_class = str(cx.abstract_syntax)
        if cx.result == 0x00 and cx.context_id is not None:
            contexts[cx.context_id] = AcceptedContext(
                cx.context_id,
                sop_class,
                SOP_CLASS_SERVICE[sop_class],
                cx.transfer_syntax[0] == ExplicitVRLittleEndian,
            )
        elif sop_class in SOP_CLASS_SERVICE and cx.result == 0x03:
            cx.result = 0x01  # known service refused by the access rules: user rejection

    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ac.user_information = [max_length, impl_uid, impl_name, *roles]
    return Accepted(
        calling,
        called,
        rq.maximum_length_received or 0,
        contexts,
        A_ASSOCIATE_AC(ac).encode(),
    )
