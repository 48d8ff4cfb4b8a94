"""Benchmark: broker MWL SCP vs DCMTK wlmscpfs, ms per C-FIND query as a modality sees it.

Method (worklist issue, Speed): DCMTK ``findscu -W -q --repeat R`` over one association,
TCP_NODELAY=1 in the environment of findscu and wlmscpfs; per query =
(T(repeat R) - T(repeat 1)) / (R - 1), which cancels process start and association set-up;
servers interleaved, several repetitions, median. Each server answers the same K items:
wlmscpfs with exactly K files on disk, all matching (its floor); the broker with the backend
built by ``--backend`` (default: K pre-encoded items, no store, no matching = the network floor);
and ``null_scp.py``, the least any server can do per query (a blocking socket, the K answers
joined and sent with one ``sendall``): what findscu itself, the loopback and one send cost, a
floor no server can go under in this measurement.

    .venv/bin/python bench/bench_mwl_scp.py [--reps 5] [--k 0,1,10,50,270]
        [--backend module:function]   # function(items: list[Dataset]) -> WorklistBackend

The broker runs in its own process (uvloop when installed), as wlmscpfs does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

FINDSCU = "/usr/bin/findscu"  # pynetdicom's findscu shadows DCMTK's on the venv PATH
WLMSCPFS = "/usr/bin/wlmscpfs"
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK leaves Nagle on otherwise: ~45 ms per query
CALLED_AE = "BENCHWL"  # wlmscpfs serves the folder named after the called AE title
REPEATS = {0: 400, 1: 400, 10: 200, 50: 80, 270: 25}  # R per K: ~0.3-1 s per run


def item(n: int) -> Dataset:
    """Worklist item n, carrying exactly the query's return keys (so both answers match)."""
    ds = Dataset()
    ds.AccessionNumber = f"A{n:07d}"
    ds.ReferringPhysicianName = "WHO^REFERS"
    ds.PatientName = f"DOE^JANE^{n}"
    ds.PatientID = f"P{n:07d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{n + 1}"
    ds.RequestedProcedureDescription = "CT HEAD WITHOUT CONTRAST"
    ds.RequestedProcedureID = f"RP{n}"
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT01"
    sps.ScheduledProcedureStepStartDate = "20240102"
    sps.ScheduledProcedureStepStartTime = "101500"
    sps.ScheduledPerformingPhysicianName = "TECH^ONE"
    sps.ScheduledProcedureStepDescription = "CT HEAD"
    sps.ScheduledProcedureStepID = f"SPS{n}"
    sps.ScheduledStationName = "CTROOM1"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def query() -> Dataset:
    """The modality's query: every key of :func:`item`, empty (universal match)."""
    ds = item(0)
    for element in ds:
        if element.VR != "SQ":
            element.value = ""
    for element in ds.ScheduledProcedureStepSequence[0]:
        element.value = ""
    return ds


def encode(dataset: Dataset, explicit_vr: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = not explicit_vr
    write_dataset(fp, dataset)
    return fp.getvalue()


class FixedAnswers:
    """The network floor: every query answers the same pre-encoded items, in batches."""

    def __init__(self, items: list[Dataset], batch_size: int = 50) -> None:
        self.encoded = {vr: [encode(ds, vr) for ds in items] for vr in (False, True)}
        self.batch_size = batch_size

    def find(
        self, identifier: bytes, *, explicit_vr: bool, calling_ae: str
    ) -> Iterator[list[bytes]]:
        answers = self.encoded[explicit_vr]
        for start in range(0, len(answers), self.batch_size):
            yield answers[start : start + self.batch_size]

    def mpps_create(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> object:
        raise NotImplementedError

    def mpps_set(self, sop_instance_uid: str, dataset: Dataset, calling_ae: str) -> object:
        raise NotImplementedError


def fixed_answers(items: list[Dataset]) -> FixedAnswers:
    """The default ``--backend``: the network floor."""
    return FixedAnswers(items)


def _load(spec: str) -> object:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# -- the broker server process ---------------------------------------------------------------


def serve(k: int, port: int, backend_spec: str) -> None:
    """Run the broker SCP on ``port`` answering K items until killed."""
    from broker.dicom import DicomSCP

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    backend = _load(backend_spec)([item(n) for n in range(k)])  # type: ignore[operator]

    async def main() -> None:
        async with DicomSCP(backend, ae_title=CALLED_AE, host="127.0.0.1", port=port) as scp:
            print("ready", flush=True)
            await scp.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# -- the driver ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no server on port {port}")


def findscu_seconds(port: int, query_file: Path, repeat: int) -> float:
    args = [FINDSCU, "-W", "-q", "--repeat", str(repeat), "-aec", CALLED_AE]
    start = time.perf_counter()
    subprocess.run([*args, "127.0.0.1", str(port), str(query_file)], env=ENV, check=True)
    return time.perf_counter() - start


def per_query_ms(port: int, query_file: Path, repeat: int) -> float:
    once = findscu_seconds(port, query_file, 1)
    many = findscu_seconds(port, query_file, repeat)
    return (many - once) / (repeat - 1) * 1000


def answers(port: int, query_file: Path, out: Path) -> list[bytes]:
    """Run one query with ``findscu -X`` and return the response files' bytes (a sanity check:
    both servers must answer the same K items, or the comparison means nothing)."""
    out.mkdir()
    subprocess.run(
        [
            FINDSCU,
            "-W",
            "-q",
            "-X",
            "--output-directory",
            str(out),
            "-aec",
            CALLED_AE,
            "127.0.0.1",
            str(port),
            str(query_file),
        ],
        env=ENV,
        check=True,
    )
    return sorted(encode(dcmread(p), True) for p in out.glob("rsp*.dcm"))


def start_wlmscpfs(root: Path, k: int) -> tuple[subprocess.Popen[bytes], int]:
    folder = root / CALLED_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    for n in range(k):
        ds = item(n)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.save_as(folder / f"item{n:04d}.wl", implicit_vr=False, little_endian=True)
    port = free_port()
    proc = subprocess.Popen(
        [WLMSCPFS, "-q", "-dfp", str(root), str(port)], env=ENV, stdout=subprocess.DEVNULL
    )
    wait_port(port)
    return proc, port


def start_broker(k: int, backend_spec: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(k),
            "--port",
            str(port),
            "--backend",
            backend_spec,
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("broker SCP did not start")
    return proc, port


def start_null(k: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("null_scp.py")), str(port), str(k)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("null SCP did not start")
    return proc, port


def run(ks: list[int], reps: int, backend_spec: str) -> None:
    print(f"findscu -W -q --repeat R, one association; median of {reps}; backend {backend_spec}")
    print(
        f"{'K':>5} {'R':>5} {'wlmscpfs ms':>12} {'broker ms':>10} {'broker/wlmscpfs':>16}"
        f" {'null ms':>8} {'null/wlmscpfs':>14}"
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        query_file = Path(tmp) / "query.dcm"
        ds = query()
        ds.save_as(query_file, implicit_vr=False, little_endian=True)
        for k in ks:
            repeat = REPEATS.get(k, 50)
            wl, wl_port = start_wlmscpfs(Path(tmp) / f"k{k}", k)
            br, br_port = start_broker(k, backend_spec)
            nl, nl_port = start_null(k)
            ports = {"wlmscpfs": wl_port, "broker": br_port, "null": nl_port}
            try:
                got = {
                    name: answers(port, query_file, Path(tmp) / f"{name}{k}")
                    for name, port in ports.items()
                }
                counts = {name: len(files) for name, files in got.items()}
                if (
                    set(counts.values()) != {k}
                    or not got["wlmscpfs"] == got["broker"] == got["null"]
                ):
                    raise RuntimeError(f"K={k}: servers answered differently ({counts} items)")
                times: dict[str, list[float]] = {name: [] for name in ports}
                for _ in range(reps):  # interleaved
                    for name, port in ports.items():
                        times[name].append(per_query_ms(port, query_file, repeat))
            finally:
                for proc in (wl, br, nl):
                    proc.terminate()
                    proc.wait()
            w, b, n = (statistics.median(times[name]) for name in ports)
            rows[k] = (w, b)
            print(
                f"{k:>5} {repeat:>5} {w:>12.3f} {b:>10.3f} {b / w:>16.2f} {n:>8.3f} {n / w:>14.2f}",
                flush=True,
            )
    if 1 in rows and 270 in rows:
        per_item = {
            name: (rows[270][i] - rows[1][i]) / 269 * 1000
            for i, name in enumerate(("wlmscpfs", "broker"))
        }
        print("per item (K=1..270): " + ", ".join(f"{n} {v:.0f} µs" for n, v in per_item.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="0,1,10,50,270", help="result sizes, comma separated")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument(
        "--backend",
        default="bench.bench_mwl_scp:fixed_answers",
        help="module:function(items) -> WorklistBackend",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port, args.backend)
        return
    run([int(k) for k in args.k.split(",")], args.reps, args.backend)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
