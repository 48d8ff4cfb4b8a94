"""Store-only worklist micro-benchmark: µs per query at 1k / 10k / 100k items, and RSS.

Run: ``.venv/bin/python bench/bench_worklist_store.py [--sizes 1000,10000,100000] [--redis]``.
``--redis`` also loads the same items into a private redis-server (``store: redis://``, no
persistence) and runs the same queries against the Redis worklist store, in the same run.
Each size is loaded once (cached as $TMPDIR/broker-bench/worklist-<n>-<date>.db), then three queries run
through WorklistService.find exactly as the network side calls it (explicit VR LE bytes in,
encoded answers out, no network): accession (1 match), station + today, and a patient name
wildcard. Prints the median µs per query, per returned item, and the growth 1k -> largest.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from worklist_data import generate

from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_worklist import SqliteWorklistStore
from broker.worklist import WorklistService

CACHE = Path(tempfile.gettempdir()) / "broker-bench"


def encode(ds: Dataset, explicit: bool = True) -> bytes:
    """A query dataset as C-FIND identifier bytes (little endian)."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = not explicit
    write_dataset(buf, ds)
    return buf.getvalue()


def typical_query(**keys: str) -> Dataset:
    """A modality's usual MWL query: ~25 return keys, the given matching keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = keys.get("accession", "")
    ds.ReferringPhysicianName = ""
    ds.PatientName = keys.get("name", "")
    ds.PatientID = ""
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = ""
    ds.RequestingPhysician = ""
    ds.RequestedProcedureDescription = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedurePriority = ""
    step = Dataset()
    step.Modality = keys.get("modality", "")
    step.ScheduledStationAETitle = keys.get("station", "")
    step.ScheduledProcedureStepStartDate = keys.get("date", "")
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProcedureStepID = ""
    step.ScheduledStationName = ""
    step.ScheduledProcedureStepLocation = ""
    step.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def open_store(n: int) -> tuple[SqliteDatabase, SqliteWorklistStore, float]:
    """A store with ``n`` generated items (built once, then reused from the cache)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"worklist-{n}-{_dt.date.today():%Y%m%d}.db"
    fresh = not path.exists()
    db = SqliteDatabase(path, synchronous="OFF" if fresh else "FULL")
    store = SqliteWorklistStore(db)
    db.open()
    load_s = 0.0
    if fresh:
        start = time.perf_counter()
        store.bulk_load(generate(n), chunk=5000)
        load_s = time.perf_counter() - start
    return db, store, load_s


class RedisStore:
    """A private redis-server and a Redis worklist store with ``n`` generated items."""

    def __init__(self, n: int) -> None:
        import redis

        from broker.storage.redis_worklist import RedisWorklistStore

        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.store = RedisWorklistStore(self.client)
        start = time.perf_counter()
        self.store.bulk_load(generate(n), chunk=2000)
        self.load_s = time.perf_counter() - start
        memory = self.client.info("memory")["used_memory"]
        self.bytes_per_item = memory / n

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(service: WorklistService, identifier: bytes, repeat: int) -> tuple[float, int]:
    """Median µs per query and the number of answers."""
    times = []
    count = 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = sum(len(b) for b in service.find(identifier, explicit_vr=True, calling_ae="X"))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--redis", action="store_true", help="also measure the Redis store")
    args = parser.parse_args()
    today = _dt.date.today().strftime("%Y%m%d")
    queries: dict[str, Callable[[int], Dataset]] = {
        "accession (1 match)": lambda n: typical_query(accession=f"ACC{n // 2:08d}"),
        "station + today": lambda n: typical_query(station="STN07", date=today),
        "name wildcard": lambda n: typical_query(name="ROSSI^EV*"),
    }
    results: dict[str, dict[int, tuple[float, int]]] = {q: {} for q in queries}
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        db, store, load_s = open_store(n)
        service = WorklistService(store)
        note = f" (loaded in {load_s:.1f} s)" if load_s else ""
        print(f"{n:>7} items{note}")
        for label, make in queries.items():
            identifier = encode(make(n))
            run(service, identifier, 5)  # warm the page cache
            us, count = run(service, identifier, args.repeat)
            results[label][n] = (us, count)
            per_item = f", {us / count:6.1f} µs/item" if count else ""
            print(f"  {label:<22} {us:9.1f} µs/query, {count:5d} answers{per_item}")
        db.close()
        if args.redis:
            on_redis = RedisStore(n)
            service = WorklistService(on_redis.store)
            print(f"{n:>7} items on Redis (loaded in {on_redis.load_s:.1f} s, "
                  f"{on_redis.bytes_per_item:,.0f} bytes of Redis memory per item)")  # fmt: skip
            for label, make in queries.items():
                identifier = encode(make(n))
                run(service, identifier, 5)
                us, count = run(service, identifier, args.repeat)
                sqlite_us = results[label][n][0]
                print(f"  {label:<22} {us:9.1f} µs/query, {count:5d} answers "
                      f"({us / sqlite_us:.1f}x the SQLite store)")  # fmt: skip
            on_redis.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS {rss_mb:.0f} MB")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for label, by_n in results.items():
            ratio = by_n[hi][0] / by_n[lo][0]
            print(f"growth {lo} -> {hi}: {label:<22} x{ratio:.2f}")


if __name__ == "__main__":
    main()
