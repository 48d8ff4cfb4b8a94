"""Differential conformance through the network: the broker process vs DCMTK wlmscpfs.

DCMTK's example worklist database (examples/wlistdb/OFFIS/*.dump, plain text turned into files
with dump2dcm) is imported with ``broker worklist import`` into the store of a real
``broker serve`` process, and served as it is by ``wlmscpfs``. Every example query
(examples/wlistqry/*.dump) and the service-level test's own queries go to both with DCMTK's
``/usr/bin/findscu -W -X``, once with findscu's default transfer syntax proposal (explicit VR
preferred) and once implicit VR little endian only (``-xi``). The rsp*.dcm files findscu
writes are read with pydicom and compared: the same matched items (by AccessionNumber and
ScheduledProcedureStepID) with the same returned attribute values.

The deliberate differences are those of tests/worklist/test_migrate_wlmscpfs.py (imported, so
both tests apply one table): PN matched case-insensitively (PS3.4 C.2.2.2.1 and C.2.2.2.4),
Wild Card Matching on Scheduled Station AE Title (AE is in the C.2.2.2.4 list) and Scheduled
Station Name as a matching key (PS3.4 Table K.6-1). For those queries the matched items must
differ, and every item both servers return must carry the same values.

Two differences in the returned values are deliberate as well (see ``normalize``):
- A query whose Scheduled Procedure Step Sequence holds one empty item asks for every attribute
  of the sequence (Sequence Matching, PS3.4 C.2.2.2.6). The broker returns the attributes the
  item has; wlmscpfs expands the empty item to every step attribute it supports and returns the
  ones the item lacks zero-length: Scheduled Procedure Step End Date/Time (0040,0004/0005) and
  Status (0040,0020), Type 3 return keys (PS3.4 Table K.6-1) the example items do not carry.
- A requested sequence the item does not carry, Requested Procedure Code Sequence (0032,1064)
  and Scheduled Protocol Code Sequence (0040,0008), return key Type 1C in Table K.6-1: the
  broker returns it with zero items (no value, PS3.5 7.5), wlmscpfs leaves it out. Neither
  carries a value, so a zero-item sequence and an absent one compare equal.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.peers.conftest import BrokerProcess, free_port
from tests.worklist.test_migrate_wlmscpfs import DIFFERENCES, EXTRA

pytestmark = pytest.mark.peer

EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
FINDSCU, WLMSCPFS, DUMP2DCM = "/usr/bin/findscu", "/usr/bin/wlmscpfs", "/usr/bin/dump2dcm"
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK leaves Nagle on otherwise (DESIGN.md §9)
SPS = "(0040,0100)[0]."
#: findscu's transfer syntax proposals: its default (explicit VR LE preferred), implicit only.
SYNTAXES = {"default": [], "implicit": ["-xi"]}
#: Not part of the comparison: the character set each server declares (the example items are
#: ISO_IR 100; an answer may declare it or not when its values are ASCII) and group lengths.
SKIP_TAGS = {0x00080005}
#: What wlmscpfs adds, zero-length, when it expands an empty sequence item (module docstring).
SPS_EXPANSION = {0x00400004, 0x00400005, 0x00400020}
SPS_SEQUENCE = 0x00400100

Canonical = tuple[tuple[Any, ...], ...]


def cases() -> list[tuple[str, str, list[str]]]:
    examples = sorted((EXAMPLES / "wlistqry").glob("wlistqry*.dump"), key=lambda p: len(p.stem))
    return [(p.stem, p.stem, []) for p in examples] + [
        (name, "wlistqry3", keys) for name, keys in EXTRA
    ]


CASES = cases()


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/OFFIS: the example items as .wl files (+ lockfile); <root>/q: the queries."""
    for tool in (FINDSCU, WLMSCPFS, DUMP2DCM):
        assert Path(tool).exists(), f"{tool} missing: apt-get install dcmtk"
    dumps = sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump"))
    assert len(dumps) == 10, f"DCMTK's example worklist database is missing under {EXAMPLES}"
    root = tmp_path_factory.mktemp("wlm")
    (root / "OFFIS").mkdir()
    (root / "q").mkdir()
    (root / "OFFIS" / "lockfile").touch()
    for dump in dumps:
        subprocess.run(
            [DUMP2DCM, "-q", str(dump), str(root / "OFFIS" / f"{dump.stem}.wl")], check=True
        )
    for dump in (EXAMPLES / "wlistqry").glob("*.dump"):
        subprocess.run(
            [DUMP2DCM, "-q", str(dump), str(root / "q" / f"{dump.stem}.dcm")], check=True
        )
    return root


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, "wlmscpfs exited"
            assert time.monotonic() < deadline, "wlmscpfs did not listen"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def wlmscpfs(database: Path) -> Iterator[int]:
    """wlmscpfs serving <root>/OFFIS (called AE title OFFIS) on a loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [WLMSCPFS, "-dfp", str(database), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def broker(database: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A ``broker serve`` process whose store was filled by ``broker worklist import``."""
    process = BrokerProcess(tmp_path_factory.mktemp("broker"), dicom=True)
    done = process.cli("worklist", "import", str(database / "OFFIS"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 of 10 files imported" in done.stdout, done.stdout
    try:
        process.start()
        yield process
    finally:
        process.stop()


# -- findscu and the comparison ----------------------------------------------------------------


def findscu(
    port: int, ae: str, query: Path, keys: list[str], syntax: str, out: Path
) -> list[Dataset]:
    """The responses one server gives (AccessionNumber added as a return key, as the
    service-level test does, so every answer names its item)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = [FINDSCU, "-W", "-aec", ae, "-X", "-od", str(out), *SYNTAXES[syntax]]
    for key in ["0008,0050=", *keys]:
        args += ["-k", key]
    done = subprocess.run(
        [*args, "127.0.0.1", str(port), str(query)], env=ENV, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode("latin-1")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def canonical(ds: Dataset) -> Canonical:
    """Every returned attribute as (tag, VR, value), sequences recursively, values decoded with
    the answer's own Specific Character Set (so the declared set itself may differ)."""
    out: list[tuple[Any, ...]] = []
    for elem in ds:
        if elem.tag in SKIP_TAGS or elem.tag.element == 0:
            continue
        if elem.VR == "SQ":
            value: Any = tuple(canonical(item) for item in elem.value)
        elif elem.VM > 1:
            value = tuple(str(v) for v in elem.value)
        else:
            value = "" if elem.value is None else str(elem.value)
        out.append((int(elem.tag), elem.VR, value))
    return tuple(out)


def identity(ds: Dataset) -> tuple[str, ...]:
    """AccessionNumber and the ScheduledProcedureStepIDs of one answer."""
    steps = ds.get("ScheduledProcedureStepSequence") or []
    step_ids = [str(step.get("ScheduledProcedureStepID", "")) for step in steps]
    return (str(ds.get("AccessionNumber", "")), *step_ids)


def flat(answer: Canonical, path: str = "") -> set[tuple[str, str, Any]]:
    """(path, VR, value) of every element of one answer, sequence items by position."""
    out: set[tuple[str, str, Any]] = set()
    for tag, vr, value in answer:
        where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if vr == "SQ":
            out.add((where, vr, len(value)))
            for n, item in enumerate(value):
                out |= flat(item, f"{where}[{n}].")
        else:
            out.add((where, vr, value))
    return out


def describe(ours: list[Canonical], theirs: list[Canonical]) -> str:
    """What differs between two answers for one item: (path, VR, value) per side."""
    a = set().union(*(flat(x) for x in ours))
    b = set().union(*(flat(x) for x in theirs))
    return f"broker only {sorted(a - b)}, wlmscpfs only {sorted(b - a)}"


def normalize(answer: Canonical, server: str) -> Canonical:
    """The answer without the deliberate differences of the module docstring: zero-item
    sequences (both servers), wlmscpfs's zero-length expansion of an empty step item."""
    out = []
    for tag, vr, value in answer:
        if vr == "SQ":
            if not value:
                continue
            if tag == SPS_SEQUENCE and server == "wlmscpfs":
                value = tuple(
                    tuple(e for e in item if not (e[0] in SPS_EXPANSION and e[2] == ""))
                    for item in value
                )
            value = tuple(normalize(item, server) for item in value)
        out.append((tag, vr, value))
    return tuple(out)


def answers(responses: list[Dataset], server: str) -> dict[tuple[str, ...], list[Canonical]]:
    """Normalized answers by item (AccessionNumber, ScheduledProcedureStepIDs)."""
    out: dict[tuple[str, ...], list[Canonical]] = {}
    for ds in responses:
        out.setdefault(identity(ds), []).append(normalize(canonical(ds), server))
    return {key: sorted(values) for key, values in out.items()}


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize(("name", "query", "keys"), CASES, ids=[c[0] for c in CASES])
def test_same_answers_as_wlmscpfs_over_the_network(
    database: Path,
    wlmscpfs: int,
    broker: BrokerProcess,
    tmp_path: Path,
    name: str,
    query: str,
    keys: list[str],
    syntax: str,
) -> None:
    qfile = database / "q" / f"{query}.dcm"
    theirs = answers(
        findscu(wlmscpfs, "OFFIS", qfile, keys, syntax, tmp_path / "wlmscpfs"), "wlmscpfs"
    )
    ours = answers(
        findscu(broker.dicom_port, "BROKER", qfile, keys, syntax, tmp_path / "broker"), "broker"
    )
    if name in DIFFERENCES:
        assert sorted(ours) != sorted(theirs), f"expected difference: {DIFFERENCES[name]}"
    else:
        assert sorted(ours) == sorted(theirs), "matched items differ"
    differing = [
        f"item {key}: " + describe(ours[key], theirs[key])
        for key in sorted(ours.keys() & theirs.keys())
        if ours[key] != theirs[key]
    ]
    assert not differing, "returned values differ:\n" + "\n".join(differing)
