"""Differential test against DCMTK wlmscpfs (a real peer) at the service level.

DCMTK's example worklist database (examples/wlistdb/OFFIS/*.dump, turned into files with
dump2dcm) is imported into the broker and served by wlmscpfs; every example query
(examples/wlistqry/*.dump) and some of ours go to both: the broker through
WorklistService.find, wlmscpfs through /usr/bin/findscu. Both must match the same items,
except where we follow PS3.4 deliberately and wlmscpfs does not (DIFFERENCES below).
The broker's export of the same items is served by wlmscpfs as well, with the same answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset

from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import WorklistService, export_items, import_files

from .conftest import encode_query

pytestmark = pytest.mark.peer

EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
FINDSCU, WLMSCPFS, DUMP2DCM = "/usr/bin/findscu", "/usr/bin/wlmscpfs", "/usr/bin/dump2dcm"
SPS = "(0040,0100)[0]."

#: Our own queries: (name, findscu -k keys). Values name the example database's items.
EXTRA = [
    ("station_second_value", [SPS + "0040,0001=AA33"]),
    ("station", [SPS + "0040,0001=AA32"]),
    ("name_wildcard", ["0010,0010=VIVALDI*"]),
    ("name_wildcard_lower", ["0010,0010=vivaldi*"]),
    ("combined_datetime", [SPS + "0040,0002=19960101-19960430", SPS + "0040,0003=120000-170000"]),
    ("date_range_open", [SPS + "0040,0002=19960401-"]),
    ("date_single_time_range", [SPS + "0040,0002=19960406", SPS + "0040,0003=1600-1700"]),
    ("modality", [SPS + "0008,0060=CT"]),
    ("modality_lower", [SPS + "0008,0060=ct"]),
    ("accession_wildcard", ["0008,0050=0000?"]),
    ("station_wildcard", [SPS + "0040,0001=A*"]),
    ("station_name", [SPS + "0040,0010=STN456"]),
    ("patient_id", ["0010,0020=AV35674"]),
]
#: Deliberate differences: query -> (why, the PS3.4 clause).
DIFFERENCES = {
    "name_wildcard_lower": "PN matched case-insensitively, allowed for PN only (PS3.4 C.2.2.2.1, "
    "C.2.2.2.4); wlmscpfs matches PN case-sensitively",
    "station_wildcard": "Wild Card Matching applies to AE (PS3.4 C.2.2.2.4 lists AE); wlmscpfs "
    "does single value matching only on Scheduled Station AE Title",
    "station_name": "Scheduled Station Name is an optional matching key of the MWL model "
    "(PS3.4 Table K.6-1) that we support; wlmscpfs ignores it (not in its supported keys)",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example database as .wl files under <root>/OFFIS, and queries under <root>/q."""
    for tool in (FINDSCU, WLMSCPFS, DUMP2DCM):
        assert Path(tool).exists(), f"{tool} missing: apt-get install dcmtk"
    root = tmp_path_factory.mktemp("wlm")
    (root / "OFFIS").mkdir()
    (root / "q").mkdir()
    (root / "OFFIS" / "lockfile").touch()
    for dump in sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump")):
        subprocess.run(
            [DUMP2DCM, "-q", str(dump), str(root / "OFFIS" / f"{dump.stem}.wl")], check=True
        )
    for dump in sorted((EXAMPLES / "wlistqry").glob("*.dump")):
        subprocess.run(
            [DUMP2DCM, "-q", str(dump), str(root / "q" / f"{dump.stem}.dcm")], check=True
        )
    return root


@pytest.fixture(scope="module")
def wlmscpfs(database: Path) -> Iterator[int]:
    """wlmscpfs serving <root>/<AE> on a free port (TCP_NODELAY=1, DESIGN.md §9)."""
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        [WLMSCPFS, "-dfp", str(database), str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, "wlmscpfs exited"
                assert time.monotonic() < deadline, "wlmscpfs did not listen"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def findscu(port: int, ae: str, query: Path, keys: list[str], out: Path) -> list[str]:
    """Accession numbers wlmscpfs answers (AccessionNumber added as a return key)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = [FINDSCU, "-W", "-aec", ae, "-X", "-od", str(out), "-k", "0008,0050="]
    for key in keys:
        args += ["-k", key]
    subprocess.run([*args, "127.0.0.1", str(port), str(query)], check=True,
                   env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, timeout=30)  # fmt: skip
    return sorted(pydicom.dcmread(p).get("AccessionNumber", "") for p in out.glob("rsp*.dcm"))


def broker_find(
    service: WorklistService, query: Path, keys: list[str], explicit: bool
) -> list[str]:
    ds = pydicom.dcmread(query)
    ds.AccessionNumber = ""
    for key in keys:
        path, _, value = key.partition("=")
        target = ds.ScheduledProcedureStepSequence[0] if path.startswith(SPS) else ds
        tag = int(path.removeprefix(SPS).replace(",", ""), 16)
        with warnings.catch_warnings():  # 'ct' is not a valid CS: we send it on purpose
            warnings.simplefilter("ignore", UserWarning)
            target[tag] = pydicom.DataElement(tag, pydicom.datadict.dictionary_VR(tag), value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        identifier = encode_query(ds, explicit=explicit)
    got = []
    for batch in service.find(identifier, explicit_vr=explicit, calling_ae="FINDSCU"):
        for raw in batch:
            got.append(read_dataset(BytesIO(raw), not explicit, True).get("AccessionNumber", ""))
    return sorted(got)


@pytest.fixture(scope="module")
def service(database: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorklistService]:
    from broker.storage.sqlite import SqliteDatabase

    db = SqliteDatabase(tmp_path_factory.mktemp("db") / "b.db", synchronous="OFF")
    store = SqliteWorklistStore(db)
    db.open()
    report = import_files(store, [database / "OFFIS"])
    assert report.imported == 10 and not report.failed
    # the broker's export of the imported items, served by the same wlmscpfs as AE BROKER
    export_items(store.items(), database / "BROKER")
    yield WorklistService(store)
    db.close()


def cases() -> list[tuple[str, str, list[str]]]:
    examples: list[tuple[str, str, list[str]]] = [
        (f"wlistqry{n}", f"wlistqry{n}", []) for n in range(13)
    ]
    return examples + [(name, "wlistqry3", keys) for name, keys in EXTRA]


@pytest.mark.parametrize(("name", "query", "keys"), cases(), ids=[c[0] for c in cases()])
def test_same_items_as_wlmscpfs(
    database: Path,
    wlmscpfs: int,
    service: WorklistService,
    tmp_path: Path,
    name: str,
    query: str,
    keys: list[str],
) -> None:
    qfile = database / "q" / f"{query}.dcm"
    theirs = findscu(wlmscpfs, "OFFIS", qfile, keys, tmp_path / "a")
    exported = findscu(wlmscpfs, "BROKER", qfile, keys, tmp_path / "b")
    ours = broker_find(service, qfile, keys, explicit=True)
    assert broker_find(service, qfile, keys, explicit=False) == ours
    assert exported == theirs, "wlmscpfs serves the broker's export like the original files"
    if name in DIFFERENCES:
        assert ours != theirs, f"expected difference: {DIFFERENCES[name]}"
    else:
        assert ours == theirs
