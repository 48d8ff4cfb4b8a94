"""python-hl7's ``mllp_send`` as the RIS against a ``broker serve`` process (issue 8, real peers).

Every sample is sent as a RIS would send it; the ACK is read back with python-hl7 (the oracle)
and checked against the original acknowledgment rules (HL7 v2.5.1 §2.9): MSA-1 AA (CA in
enhanced mode, MSH-15/16 valued), MSA-2 = MSH-10, sender and receiver swapped, inbound version,
encoding characters and MSH-18 kept. The journal must hold each message; a resend is a
duplicate (answered again, not applied twice).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hl7
import pytest

from tests.peers.conftest import BrokerProcess, parse_ack, split_frames
from tests.samples_index import SAMPLES, read_sample_cr

pytestmark = pytest.mark.peer

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def mllp_send(broker: BrokerProcess, path: Path) -> list[bytes]:
    """Run ``mllp_send --loose -f PATH`` against the broker; the answer frames it printed."""
    assert MLLP_SEND.exists(), f"python-hl7's mllp_send is missing: {MLLP_SEND}"
    done = subprocess.run(
        [str(MLLP_SEND), "--loose", "-p", str(broker.mllp_port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return split_frames(done.stdout)


def original(name: str) -> hl7.Message:
    return hl7.parse(read_sample_cr(name))


def field(message: hl7.Message, n: int) -> str:
    return str(message.segment("MSH")(n)) if n < len(message.segment("MSH")) else ""


def expected_code(message: hl7.Message) -> str:
    """Enhanced mode (MSH-15 or MSH-16 valued) answers with an accept ACK (CA)."""
    return "CA" if field(message, 15) or field(message, 16) else "AA"


def check_ack(name: str, answer: bytes) -> None:
    sent = original(name)
    ack = parse_ack(answer)
    assert field(ack, 1) == field(sent, 1)
    assert field(ack, 2) == field(sent, 2), "encoding characters kept"
    # Sender and receiver swapped.
    assert (field(ack, 3), field(ack, 4)) == (field(sent, 5), field(sent, 6))
    assert (field(ack, 5), field(ack, 6)) == (field(sent, 3), field(sent, 4))
    assert ack.extract_field("MSH", 1, 9, 1, 1) == "ACK"
    assert ack.extract_field("MSH", 1, 9, 1, 2) == sent.extract_field("MSH", 1, 9, 1, 2)
    assert field(ack, 10), "the ACK has its own control ID"
    assert field(ack, 10) != field(sent, 10)
    assert field(ack, 12) == field(sent, 12), "inbound version kept"
    assert field(ack, 18) == field(sent, 18), "MSH-18 kept"
    msa = ack.segment("MSA")
    assert str(msa(1)) == expected_code(sent)
    assert str(msa(2)) == SAMPLES[name].control_id == field(sent, 10)
    assert not [s for s in ack if str(s[0]) == "ERR"], "no ERR on success"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_is_acknowledged_and_journaled(
    shared_broker: BrokerProcess, name: str
) -> None:
    answers = mllp_send(shared_broker, SAMPLES[name].path)

    assert len(answers) == 1
    check_ack(name, answers[0])
    entries = [
        e
        for e in shared_broker.journal_ls(limit=1000)
        if e["control_id"] == SAMPLES[name].control_id
    ]
    assert [e["status"] for e in entries] == ["accepted"]
    entry = entries[0]
    sample = SAMPLES[name]
    assert entry["type"] == f"{sample.message_type}^{sample.trigger}"
    assert entry["version"] == sample.version
    assert entry["ack"] == "AA"


def test_resend_is_a_duplicate_not_applied_twice(broker: BrokerProcess) -> None:
    path = SAMPLES["orm_o01_v24"].path  # Latin-1, enhanced mode, two orders

    first = mllp_send(broker, path)
    again = mllp_send(broker, path)

    check_ack("orm_o01_v24", first[0])
    check_ack("orm_o01_v24", again[0])
    rows = [r for r in broker.journal_rows() if r[1] == SAMPLES["orm_o01_v24"].control_id]
    assert [(status, ack) for _, _, status, ack in rows] == [
        ("accepted", "AA"),
        ("duplicate", "AA"),
    ]
    duplicate_id = broker.journal_ls(limit=10)[0]["id"]
    shown = broker.cli("journal", "show", str(duplicate_id))
    assert shown.returncode == 0, shown.stderr
    assert '"status": "duplicate"' in shown.stdout
    assert "MÜLLER" not in shown.stdout, "patient data redacted by default"


def test_one_connection_carries_every_sample(broker: BrokerProcess, tmp_path: Path) -> None:
    # One file holding all samples: mllp_send --loose splits it at each MSH and sends them,
    # one after another, on a single connection (LF endings normalised by mllp_send).
    names = sorted(SAMPLES)
    batch = tmp_path / "all.hl7"
    batch.write_bytes(b"\n".join(SAMPLES[n].path.read_bytes() for n in names))

    answers = mllp_send(broker, batch)

    assert len(answers) == len(names)
    for name, answer in zip(names, answers, strict=True):
        check_ack(name, answer)
    statuses = {(r[1], r[2]) for r in broker.journal_rows()}
    assert statuses == {(SAMPLES[n].control_id, "accepted") for n in names}
