"""Named wire fixtures for scripted peers, each decoded in the comment above it.

As pynetdicom ``tests/encoded_pdu_items.py``: every byte string says what it is field by field.
"""

from __future__ import annotations

# A-ASSOCIATE-RQ (PS3.8 9.3.2), 227 bytes:
#   type 01, reserved, length 0x000000dd (221), protocol version 0001, reserved 0000
#   called AE "BROKER" and calling AE "RAWPEER" (16 bytes each, space padded), 32 reserved
#   application context item 10: 1.2.840.10008.3.1.1.1
#   presentation context item 20, ID 1: abstract syntax Verification 1.2.840.10008.1.1,
#       transfer syntax Implicit VR LE 1.2.840.10008.1.2
#   presentation context item 20, ID 3: abstract syntax MWL FIND 1.2.840.10008.5.1.4.31,
#       transfer syntax Implicit VR LE
#   user information item 50: max length (51) 16384, implementation class UID (52) 1.2.3.4
ASSOCIATE_RQ = (
    b"\x01\x00\x00\x00\x00\xdd\x00\x01\x00\x00"
    b"BROKER          "
    b"RAWPEER         " + b"\x00" * 32 + b"\x10\x00\x00\x15"
    b"1.2.840.10008.3.1.1.1"
    b"\x20\x00\x00\x2e\x01\x00\x00\x00"
    b"\x30\x00\x00\x11"
    b"1.2.840.10008.1.1"
    b"\x40\x00\x00\x11"
    b"1.2.840.10008.1.2"
    b"\x20\x00\x00\x33\x03\x00\x00\x00"
    b"\x30\x00\x00\x16"
    b"1.2.840.10008.5.1.4.31"
    b"\x40\x00\x00\x11"
    b"1.2.840.10008.1.2"
    b"\x50\x00\x00\x13"
    b"\x51\x00\x00\x04\x00\x00\x40\x00"
    b"\x52\x00\x00\x07"
    b"1.2.3.4"
)
VERIFICATION_CONTEXT = 1
WORKLIST_CONTEXT = 3

# The same A-ASSOCIATE-RQ cut after 100 bytes but claiming 221: the presentation context
# item's length runs past the end of the PDU (pynetdicom cannot decode it).
ASSOCIATE_RQ_TRUNCATED = ASSOCIATE_RQ[:6] + ASSOCIATE_RQ[6:100].ljust(221, b"\x20")

# A PDU of unknown type 09, length 4, four zero bytes (PS3.8 9.3.1: unrecognized PDU).
UNKNOWN_PDU = b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# A-RELEASE-RQ (PS3.8 9.3.6): type 05, reserved, length 4, four reserved bytes.
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# A-ABORT (PS3.8 9.3.8) from the service user: type 07, length 4, reserved, reserved,
# source 00 (service user), reason 00.
ABORT_FROM_USER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# P-DATA-TF header (type 04, reserved) claiming 1 MiB: above the 16384 the SCP announced.
P_DATA_OVERSIZE_HEADER = b"\x04\x00\x00\x10\x00\x00"

# P-DATA-TF, length 10, one PDV item claiming length 0x20 (32) but carrying 6 bytes.
P_DATA_PDV_PAST_END = b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x20\x01\x03\x00\x00\x00\x00"

# C-ECHO-RQ command set (Implicit VR LE, PS3.7 9.3.5), 68 bytes:
#   (0000,0000) UL 56 group length
#   (0000,0002) UI 1.2.840.10008.1.1 + NUL pad (18 bytes) affected SOP class
#   (0000,0100) US 0x0030 C-ECHO-RQ, (0000,0110) US 7 message ID,
#   (0000,0800) US 0x0101 no data set
C_ECHO_RQ = (
    b"\x00\x00\x00\x00\x04\x00\x00\x00\x38\x00\x00\x00"
    b"\x00\x00\x02\x00\x12\x00\x00\x00"
    b"1.2.840.10008.1.1\x00"
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00"
    b"\x00\x00\x10\x01\x02\x00\x00\x00\x07\x00"
    b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"
)


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    """A P-DATA-TF with one PDV: control 03 = last command fragment, 02 = last dataset."""
    item = (len(fragment) + 2).to_bytes(4, "big") + bytes((context_id, control)) + fragment
    return b"\x04\x00" + len(item).to_bytes(4, "big") + item
