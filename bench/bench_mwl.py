"""Benchmark: the worklist issue's whole Speed table in one run, as a modality measures it.

Every server runs in its own process, all at once, and is timed interleaved with the others:

(a) the broker: the real ``broker serve`` process (SQLite store, planner, matcher, pre-encoded
    answers, asyncio DICOM SCP) over stores of 1k / 10k / 100k generated items
    (bench/worklist_data.py: 50 stations, 30 days, 5 modalities), for three queries: accession
    (1 match), station + today, patient-name wildcard;
(b) DCMTK wlmscpfs serving the same 10,000 items (exported with ``export_items``);
(c) Orthanc's ModalityWorklists plugin serving the same 10,000 files;
(d) wlmscpfs's K-item floor (a folder holding only the K items the query matches) for
    K = 0, 1, 10, 50, 270, against the broker answering the same query (hence the same K items)
    from its largest store; the K queries (modality + today + a time range of K/10 slots) also
    run at every store size that holds K matches, for the growth ratio at equal K.

Method (worklist issue, Speed): DCMTK ``/usr/bin/findscu -W -q --repeat R`` over one
association, TCP_NODELAY=1 in the environment of findscu, wlmscpfs and Orthanc; per query =
(T(R) - T(1)) / (R - 1), which cancels process start and association set-up; R is picked per
cell so that T(R) is about 0.4 s; every cell once per round, rounds repeated, median.
Before timing, every cell's answer is fetched once with ``findscu -X`` and its accession numbers
compared with the broker's (a comparison of servers answering differently would mean nothing).

    .venv/bin/python bench/bench_mwl.py [--quick] [--reps 5] [--sizes 1000,10000,100000]

Generated stores are cached as $TMPDIR/broker-bench/mwl-<N>-<date>-<generator hash>.db (the
100k store takes ~40 s to load) with their wlmscpfs export next to them; each run serves a copy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import pydicom  # noqa: E402
from bench_worklist_store import typical_query  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from worklist_data import generate  # noqa: E402

from broker.storage.sqlite import SqliteDatabase  # noqa: E402
from broker.storage.sqlite_worklist import SqliteWorklistStore  # noqa: E402
from broker.worklist import export_items  # noqa: E402

FINDSCU = "/usr/bin/findscu"  # pynetdicom's findscu shadows DCMTK's on the venv PATH
WLMSCPFS = "/usr/bin/wlmscpfs"
ORTHANC = "Orthanc"
ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK leaves Nagle on otherwise: ~45 ms per query
CACHE = Path(tempfile.gettempdir()) / "broker-bench"
GENERATOR = hashlib.sha256((BENCH / "worklist_data.py").read_bytes()).hexdigest()[:10]
CALLING_AE = "FINDSCU"
PEER_N = 10_000  # the store size wlmscpfs and Orthanc serve
FLOOR_KS = (0, 1, 10, 50, 270)
SLOT_ITEMS = 1500  # generate(): one item per (station, day) per slot of 1500 items
SLOT_MINUTES = 7  # ... scheduled within [07:00 + 7*slot, +7 min)
MODALITY_STATIONS = 10  # 50 stations, 5 modalities: 10 CT stations
TARGET_S = 0.4  # T(R) per measurement


# -- data --------------------------------------------------------------------------------------


def cached_store(n: int, today: _dt.date) -> Path:
    """The SQLite file holding generate(n) for ``today`` (built once, then reused)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"mwl-{n}-{today:%Y%m%d}-{GENERATOR}.db"
    if path.exists():
        return path
    print(f"building the {n}-item store (cached as {path})", flush=True)
    start = time.perf_counter()
    partial = path.with_suffix(".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    db = SqliteDatabase(partial, synchronous="OFF")
    store = SqliteWorklistStore(db)
    db.open()
    store.bulk_load(generate(n, today=today), chunk=5000)
    db.close()  # checkpoints the WAL into the file
    partial.rename(path)
    print(f"  loaded in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def cached_export(db_path: Path) -> Path:
    """The store's items as .wl files (wlmscpfs and Orthanc serve the same files)."""
    folder = db_path.with_suffix(".wl")
    if (folder / "complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    with open_store(db_path) as store:
        export_items(store.items(), folder)
    (folder / "complete").touch()
    return folder


@contextlib.contextmanager
def open_store(path: Path) -> Iterator[SqliteWorklistStore]:
    db = SqliteDatabase(path)
    store = SqliteWorklistStore(db)
    db.open()
    try:
        yield store
    finally:
        db.close()


# -- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    dataset: Dataset
    k_at: Callable[[int], int | None]  # answers expected at store size n (None: not fixed)


def slot_range(slots: int) -> str:
    """A time range covering the first ``slots`` slots of generate()'s day (07:00 onwards)."""
    end = 7 * 60 + slots * SLOT_MINUTES - 1
    return f"070000-{end // 60:02d}{end % 60:02d}59"


def queries(today: _dt.date, largest: int) -> tuple[list[Query], dict[int, Query]]:
    """The issue's three queries, and a query returning exactly K items per floor K."""
    day = f"{today:%Y%m%d}"
    accession = f"ACC{500:08d}"  # present in every store of more than 500 items
    three = [
        Query("accession", typical_query(accession=accession), lambda n: 1),
        Query("station + today", typical_query(station="STN07", date=day), lambda n: None),
        Query("name wildcard", typical_query(name="ROSSI^EV*"), lambda n: None),
    ]
    floors: dict[int, Query] = {
        0: Query("K=0", typical_query(accession="NOSUCHACC"), lambda n: 0),
        1: Query("K=1", typical_query(accession=accession), lambda n: 1),
    }
    for k in FLOOR_KS:
        if k < 10:
            continue
        slots = k // MODALITY_STATIONS
        ds = typical_query(modality="CT", date=day)
        ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime = slot_range(slots)
        need = slots * SLOT_ITEMS  # every slot below ``slots`` is complete from here on
        floors[k] = Query(f"K={k}", ds, functools.partial(_k_from, k, need))
    floors = {k: q for k, q in floors.items() if q.k_at(largest) == k}
    return three, floors


def _k_from(k: int, need: int, n: int) -> int | None:
    """K once the store holds ``need`` items (every slot the query covers is complete)."""
    return k if n >= need else None


def write_query(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: nothing listens on port {port} after {timeout:.0f} s")


@dataclass
class Server:
    label: str
    port: int
    ae: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the process, MB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]


def start_broker(n: int, db: Path, run_dir: Path) -> Server:
    """A real ``broker serve`` process over a copy of the n-item store."""
    work = run_dir / f"broker{n}"
    work.mkdir()
    store = work / "broker.db"
    shutil.copyfile(db, store)
    port = free_port()
    config = {
        "store": f"sqlite:///{store}",
        "routes": str(REPO / "routes"),
        "mappings": str(REPO / "mappings"),
        "mllp": [],
        "dicom": {"ae_title": "BROKER", "host": "127.0.0.1", "port": port},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    (work / "broker.yaml").write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER")}
    log = work / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--config", str(work / "broker.yaml")],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"broker {n // 1000}k", port, "BROKER", proc, log)
    try:
        wait_port(port, proc, server.label)
    except BaseException:
        server.stop()
        raise
    return server


def start_wlmscpfs(root: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    """wlmscpfs serving every folder under ``root`` (called AE title = folder name)."""
    port = free_port()
    log = run_dir / "wlmscpfs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [WLMSCPFS, "-dfp", str(root), str(port)], env=ENV, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_port(port, proc, "wlmscpfs")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.port = port  # type: ignore[attr-defined]
    return proc


def orthanc_plugin() -> Path:
    for folder in ORTHANC_PLUGIN_DIRS:
        for candidate in sorted(Path(folder).glob("libModalityWorklists.so*")):
            return candidate
    raise RuntimeError("libModalityWorklists.so not found (dpkg -L orthanc)")


NULL_LABEL = "null responder"


def start_null(run_dir: Path) -> Server:
    """bench/null_scp.py answering nothing (K=0): findscu's own cost plus one send."""
    port = free_port()
    log = run_dir / "null.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "null_scp.py"), str(port), "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(NULL_LABEL, port, "BENCHWL", proc, log)
    try:
        wait_port(port, proc, server.label)
    except BaseException:
        server.stop()
        raise
    return server


def start_orthanc(worklists: Path, run_dir: Path) -> Server:
    """Orthanc with its ModalityWorklists plugin on ``worklists``; loopback-only HTTP with
    authentication, C-FIND worklist allowed to the registered findscu only (DESIGN.md §9)."""
    work = run_dir / "orthanc"
    (work / "db").mkdir(parents=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "HttpPort": http_port,
        "DicomPort": port,
        "DicomAet": "ORTHANC",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"bench": os.urandom(12).hex()},
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomModalities": {"findscu": {"AET": CALLING_AE, "Host": "127.0.0.1", "Port": 104}},
        "Plugins": [str(orthanc_plugin())],
        "Worklists": {"Enable": True, "Database": str(worklists)},
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = work / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [ORTHANC, str(work / "orthanc.json")],
            env=ENV,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server("Orthanc 10k", port, "ORTHANC", proc, log)
    try:
        wait_port(port, proc, "Orthanc")
    except BaseException:
        server.stop()
        raise
    return server


# -- measuring ---------------------------------------------------------------------------------


def findscu_seconds(port: int, ae: str, query: Path, repeat: int) -> float:
    args = [FINDSCU, "-W", "-q", "--repeat", str(repeat), "-aet", CALLING_AE, "-aec", ae]
    start = time.perf_counter()
    subprocess.run([*args, "127.0.0.1", str(port), str(query)], env=ENV, check=True)
    return time.perf_counter() - start


def accessions(port: int, ae: str, query: Path, out: Path) -> list[str]:
    """The accession numbers of one answer (findscu -X), sorted."""
    out.mkdir(parents=True)
    args = [FINDSCU, "-W", "-q", "-X", "-od", str(out), "-aet", CALLING_AE, "-aec", ae]
    subprocess.run([*args, "127.0.0.1", str(port), str(query)], env=ENV, check=True)
    return sorted(str(pydicom.dcmread(p).get("AccessionNumber", "")) for p in out.glob("rsp*.dcm"))


@dataclass
class Cell:
    server: str
    query: str
    port: int
    ae: str
    file: Path
    answers: list[str] = field(default_factory=list)
    repeat: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.answers)

    @property
    def ms(self) -> float:
        return statistics.median(self.times)

    def calibrate(self) -> None:
        once = findscu_seconds(self.port, self.ae, self.file, 1)
        five = findscu_seconds(self.port, self.ae, self.file, 5)
        estimate = max((five - once) / 4, 1e-4)
        self.repeat = max(5, min(400, int(TARGET_S / estimate)))

    def measure(self) -> None:
        once = findscu_seconds(self.port, self.ae, self.file, 1)
        many = findscu_seconds(self.port, self.ae, self.file, self.repeat)
        self.times.append((many - once) / (self.repeat - 1) * 1000)


# -- the run -----------------------------------------------------------------------------------


def run(sizes: list[int], reps: int) -> None:
    today = _dt.date.today()
    largest = max(sizes)
    three, floors = queries(today, largest)
    stores = {n: cached_store(n, today) for n in sorted(set(sizes) | {PEER_N})}
    peer_files = cached_export(stores[PEER_N])
    started = time.perf_counter()
    servers: list[Server] = []
    wlm: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-mwl-") as tmp:
        run_dir = Path(tmp)
        qdir = run_dir / "q"
        qdir.mkdir()
        qfiles = {q.name: write_query(q.dataset, qdir / f"q{i}.dcm") for i, q in enumerate(three)}
        for k, q in floors.items():
            qfiles[q.name] = write_query(q.dataset, qdir / f"k{k}.dcm")
        try:
            brokers = {}
            for n in sizes:
                brokers[n] = start_broker(n, stores[n], run_dir)
                servers.append(brokers[n])
            big = brokers[largest]
            # wlmscpfs: WL10K = the 10k items; FLOOR<K> = only the K items the broker answers.
            root = run_dir / "wlm"
            root.mkdir()
            (root / "WL10K").symlink_to(peer_files, target_is_directory=True)
            probe = run_dir / "probe"
            with open_store(stores[largest]) as store:
                for k, q in floors.items():
                    got = accessions(big.port, big.ae, qfiles[q.name], probe / f"floor{k}")
                    if len(got) != k:
                        raise RuntimeError(f"{q.name}: the broker answered {len(got)} items")
                    ids = [i for acc in got for i in store.find_ids(accession=acc)]
                    export_items(store.items_by_id(ids), root / f"FLOOR{k}")
            wlm = start_wlmscpfs(root, run_dir)
            orthanc = start_orthanc(peer_files, run_dir)
            servers.append(orthanc)
            null = start_null(run_dir)  # the least any server can do (K=0 only)
            servers.append(null)
            wport = wlm.port  # type: ignore[attr-defined]

            cells: list[Cell] = []
            for server in brokers.values():
                for q in three:
                    cells.append(Cell(server.label, q.name, server.port, "BROKER", qfiles[q.name]))
                for q in floors.values():  # kept below where they return K items
                    cells.append(Cell(server.label, q.name, server.port, "BROKER", qfiles[q.name]))
            for q in three:
                cells.append(Cell("wlmscpfs 10k", q.name, wport, "WL10K", qfiles[q.name]))
                cells.append(Cell(orthanc.label, q.name, orthanc.port, "ORTHANC", qfiles[q.name]))
            for k, q in floors.items():
                cells.append(Cell("wlmscpfs floor", q.name, wport, f"FLOOR{k}", qfiles[q.name]))
            if 0 in floors:
                cells.append(Cell(null.label, "K=0", null.port, "BENCHWL", qfiles["K=0"]))

            for i, cell in enumerate(cells):
                cell.answers = accessions(cell.port, cell.ae, cell.file, probe / f"c{i}")
            check_answers(cells, brokers, three, floors)
            # A K query on a smaller store returns fewer items: not an equal-K cell, not timed.
            k_of = {q.name: k for k, q in floors.items()}
            cells = [
                c
                for c in cells
                if not (c.server.startswith("broker") and c.query in k_of and c.k != k_of[c.query])
            ]
            for cell in cells:
                cell.calibrate()
            print(
                f"servers up and answers checked; timing {len(cells)} cells x {reps} rounds",
                flush=True,
            )
            for r in range(reps):
                for cell in cells:
                    cell.measure()
                print(f"  round {r + 1}/{reps} done ({time.perf_counter() - started:.0f} s)",
                      flush=True)  # fmt: skip
            rss = big.rss_mb()
            report(cells, sizes, three, floors, rss, reps)
        finally:
            for server in servers:
                server.stop()
            if wlm is not None:
                wlm.terminate()
                wlm.wait(10)
    print(f"total {time.perf_counter() - started:.0f} s (after the cache)")


def check_answers(
    cells: list[Cell], brokers: dict[int, Server], three: list[Query], floors: dict[int, Query]
) -> None:
    """Every server answers the same items for the same query on the same data."""
    by = {(c.server, c.query): c for c in cells}
    problems = []
    for n, server in brokers.items():
        for q in [*three, *floors.values()]:
            cell = by.get((server.label, q.name))
            expected = q.k_at(n) if n == max(brokers) or q in three else None
            if cell is not None and expected is not None and cell.k != expected:
                problems.append(f"{cell.server} {q.name}: {cell.k} answers, expected {expected}")
    if PEER_N in brokers:
        ref = brokers[PEER_N].label
        for q in three:
            for peer in ("wlmscpfs 10k", "Orthanc 10k"):
                if by[(peer, q.name)].answers != by[(ref, q.name)].answers:
                    problems.append(
                        f"{peer} {q.name}: {by[(peer, q.name)].k} answers, "
                        f"{ref} {by[(ref, q.name)].k} (different items)"
                    )
    null = by.get((NULL_LABEL, "K=0"))
    if null is not None and null.k:
        problems.append(f"{NULL_LABEL}: {null.k} answers to K=0")
    big = brokers[max(brokers)].label
    for q in floors.values():
        if by[("wlmscpfs floor", q.name)].answers != by[(big, q.name)].answers:
            problems.append(f"wlmscpfs floor {q.name}: different items from {big}")
    if problems:
        raise RuntimeError("servers answer differently:\n  " + "\n  ".join(problems))


def report(
    cells: list[Cell],
    sizes: list[int],
    three: list[Query],
    floors: dict[int, Query],
    rss: tuple[float, float],
    reps: int,
) -> None:
    by = {(c.server, c.query): c for c in cells}
    labels = [f"broker {n // 1000}k" for n in sizes]
    big = labels[-1]
    print()
    print(f"findscu -W -q --repeat R over one association, TCP_NODELAY=1; median of {reps} rounds")
    print("ms per query (answers in brackets)")
    columns = [*labels, "wlmscpfs 10k", "Orthanc 10k"]
    print(f"| query | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")

    def show(cell: Cell | None) -> str:
        return f"{cell.ms:.2f} ({cell.k})" if cell else "-"

    for q in [*three, *floors.values()]:
        row = [show(by.get((server, q.name))) for server in columns]
        print(f"| {q.name} | {' | '.join(row)} |")

    print()
    print(f"K-item floor: {big} vs wlmscpfs with only the K items on disk (goal <= 0.6)")
    print("| K | wlmscpfs floor ms | broker ms | broker/wlmscpfs |")
    print("|---|---|---|---|")
    for k, q in floors.items():
        w, b = by[("wlmscpfs floor", q.name)], by[(big, q.name)]
        mark = "" if b.ms <= 0.6 * w.ms else "  **missed**"
        print(f"| {k} | {w.ms:.3f} | {b.ms:.3f} | {b.ms / w.ms:.2f}{mark} |")
    null = by.get((NULL_LABEL, "K=0"))
    if null is not None and 0 in floors:
        w = by[("wlmscpfs floor", floors[0].name)]
        print(
            f"K=0 null responder (bench/null_scp.py: one send per query, nothing else): "
            f"{null.ms:.3f} ms = {null.ms / w.ms:.2f}x the wlmscpfs floor, the least any server "
            f"measures here"
        )

    if len(labels) > 1:
        print()
        print(f"Broker growth {labels[0]} -> {big} at equal K (goal <= 1.5x)")
        for q in [*three, *floors.values()]:
            lo = next((by[(s, q.name)] for s in labels if (s, q.name) in by), None)
            hi = by.get((big, q.name))
            if lo is None or hi is None or lo is hi:
                continue
            same_k = lo.k == hi.k
            note = "" if same_k else "  (K differs: not a goal cell)"
            mark = "  **missed**" if same_k and hi.ms > 1.5 * lo.ms else ""
            print(
                f"  {q.name:<16} {lo.server} {lo.ms:.2f} ms ({lo.k}) -> {hi.ms:.2f} ms ({hi.k}): "
                f"x{hi.ms / lo.ms:.2f}{mark}{note}"
            )

    ref = f"broker {PEER_N // 1000}k"
    if ref in labels:
        print()
        print("At 10,000 items: broker vs wlmscpfs and Orthanc (same files)")
        for q in three:
            b = by[(ref, q.name)]
            w, o = by[("wlmscpfs 10k", q.name)], by[("Orthanc 10k", q.name)]
            print(
                f"  {q.name:<16} broker/wlmscpfs {b.ms / w.ms:.4f} (wlmscpfs {w.ms / b.ms:.0f}x "
                f"slower), broker/Orthanc {b.ms / o.ms:.4f} (Orthanc {o.ms / b.ms:.0f}x slower)"
            )
    mark = "" if rss[0] <= 200 else "  **missed**"
    print()
    print(f"{big} process RSS after the queries: {rss[0]:.0f} MB (peak {rss[1]:.0f} MB; "
          f"goal <= 200 MB){mark}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="broker store sizes")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="1k and 10k stores, 3 rounds")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    reps = args.reps
    if args.quick:
        sizes, reps = [1000, PEER_N], min(reps, 3)
    run(sizes, reps)


if __name__ == "__main__":
    main()
