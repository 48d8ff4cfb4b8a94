"""The least a worklist server can do per C-FIND: the measurement's own floor.

A blocking socket, one association at a time (negotiated with the broker's ``negotiate``), and
for each C-FIND-RQ the K fixed answers and the final response joined and sent with one
``sendall``: no store, no matching, no event loop, no identifier parsing. Whatever any server
does, a modality's ``findscu -W --repeat R`` cannot measure it below this process: its own
work, the loopback, and one send per query. ``bench_mwl_scp.py`` runs it next to wlmscpfs and
the broker's SCP to show which of the issue's ratios a server can reach on this machine.

    python bench/null_scp.py PORT K    # prints "ready" once listening
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.dicom import dimse, pdu, status
from broker.dicom.negotiation import Accepted, AccessPolicy, negotiate

CALLED_AE = "BENCHWL"
_HEADER = struct.Struct(">BxL")
MAX_PDU = 1 << 20


def _receive(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, length = _HEADER.unpack(_receive(sock, _HEADER.size))
    return pdu_type, _receive(sock, length)


def serve_one(sock: socket.socket, answers: dict[bool, list[bytes]]) -> None:
    """Serve one association: every C-FIND gets the K answers of its transfer syntax."""
    pdu_type, body = _read_pdu(sock)
    outcome = negotiate(
        _HEADER.pack(pdu_type, len(body)) + body,
        AccessPolicy.build(CALLED_AE),
        peer_host="127.0.0.1",
        max_pdu=MAX_PDU,
    )
    sock.sendall(outcome.response)
    if not isinstance(outcome, Accepted):
        return
    assembler = dimse.MessageAssembler(MAX_PDU)
    while True:
        pdu_type, body = _read_pdu(sock)
        if pdu_type == pdu.A_RELEASE_RQ:
            sock.sendall(pdu.RELEASE_RP)
            return
        if pdu_type != pdu.P_DATA_TF:
            return
        for message in assembler.feed(body):
            context = outcome.contexts[message.context_id]
            uid, mid = context.sop_class_uid, message.command.message_id
            pending = dimse.response_template(dimse.C_FIND_RSP, uid, status.PENDING, True)
            final = dimse.response_template(dimse.C_FIND_RSP, uid, status.SUCCESS, False)
            encoder = pdu.ResponseEncoder(message.context_id, pending.render(mid), MAX_PDU)
            sock.sendall(encoder.join(answers[context.explicit_vr], final.render(mid)))


def main() -> None:
    port, k = int(sys.argv[1]), int(sys.argv[2])
    from bench_mwl_scp import encode, item  # the same items as the other servers answer

    answers = {vr: [encode(item(n), vr) for n in range(k)] for vr in (False, True)}
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    print("ready", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            serve_one(sock, answers)
        except (EOFError, ConnectionError):
            pass
        finally:
            sock.close()


if __name__ == "__main__":
    main()
