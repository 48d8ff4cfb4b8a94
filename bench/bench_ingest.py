"""Ingest benchmark (issue 8, "Speed"): the broker against a bare server and python-hl7, same run.

One load generator (``bench/loadgen.py``, its own process: 8 connections, each sending ORM^O01
with a unique MSH-10 and awaiting every ACK) measures three servers, each in its own process:

- the broker: ``broker serve`` on a fresh SQLite store, the whole durable path (decode, validate,
  parse, route, journal, group commit with fsync, ACK);
- ``bench/bare_server.py``: answers a fixed ACK, persists nothing (the ceiling);
- ``bench/bare_server.py --durable``: the same ACK after an fsynced SQLite INSERT of the frame
  through the broker's group commit (the durable floor the issue mentions, ~2,000 msg/s there);
- ``bench/hl7_server.py``: python-hl7's own asyncio MLLP server answering ``create_ack()``.

Then the broker's ACK latency at a steady, paced 1,000 msg/s. Goals: broker >= 0.5x bare,
>= 5x python-hl7, p99 < 10 ms at 1,000 msg/s. Prints the figures and the ratios::

    .venv/bin/python bench/bench_ingest.py [--seconds 5] [--json] [--profile DIR] [--redis]

``--redis`` also measures the broker on a Redis store (``store: redis://``, a private
redis-server with ``appendfsync always``), the configuration several nodes share.

``--profile DIR`` also runs the broker's closed-loop measurement under cProfile (main thread,
i.e. the event loop) and prints its top functions; the figures of that run are not reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PY = sys.executable

GOAL_BARE = 0.5
GOAL_HL7 = 5.0
GOAL_P99_MS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def wait_for_health(http_port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{http_port}/health"
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError("the broker did not answer /health")


@contextlib.contextmanager
def server(
    kind: str, workdir: Path, profile_to: Path | None = None, store: str = ""
) -> Iterator[int]:
    """Start one server process; yield its MLLP port; SIGTERM it afterwards. ``store``: the
    broker's store URL (default: a fresh SQLite file)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER")}
    log = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115 - closed in finally
    http_port = 0
    if kind == "broker":
        http_port = free_port()
        db_file = workdir / f"broker-{port}.db"
        config = workdir / f"broker-{port}.yaml"
        config.write_text(
            json.dumps(
                {
                    "store": store or f"sqlite:///{db_file}",
                    "routes": str(REPO / "routes"),
                    "mappings": str(REPO / "mappings"),
                    "mllp": [{"name": "ris", "host": "127.0.0.1", "port": port}],
                    "dicom": {"enabled": False},
                    "http": {"host": "127.0.0.1", "port": http_port},
                }
            )
        )
        prof = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        cmd = [PY, *prof, "-m", "broker.cli", "serve", "--config", str(config)]
    elif kind == "floor":
        cmd = [PY, str(BENCH / "bare_server.py"), "--port", str(port),
               "--durable", str(workdir / f"floor-{port}.db")]  # fmt: skip
    else:
        cmd = [PY, str(BENCH / f"{kind}_server.py"), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if kind == "broker":
            wait_for_health(http_port, proc)
        else:
            wait_for_port(port, proc)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


class RedisProcess:
    """A private redis-server on a free loopback port, AOF with appendfsync always (the
    durability docs/DELIVERY.md asks of a production Redis)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


#: Set by --same-order: every message is the sample order sent again (default: new orders).
SAME_ORDER: list[str] = []


def loadgen(
    port: int, seconds: float, warmup: float, rate: float = 0.0, *, check_id: bool = True
) -> dict[str, Any]:
    cmd = [
        PY,
        str(BENCH / "loadgen.py"),
        "--port",
        str(port),
        "--connections",
        "8",
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--rate",
        str(rate),
        *([] if check_id else ["--no-check-id"]),
        *SAME_ORDER,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 120)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["not_aa"] or result["wrong_id"]:
        raise RuntimeError(f"answers not AA or for another MSH-10: {result}\n{done.stderr}")
    return result


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--paced-rate", type=float, default=1000.0)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--profile", type=Path, help="profile the broker; write stats here")
    parser.add_argument(
        "--same-order",
        action="store_true",
        help="send one order again and again (resends) instead of a new order each time",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also measure the broker on a Redis store (a private redis-server, "
        "appendonly yes, appendfsync always)",
    )
    args = parser.parse_args()
    if args.same_order:
        SAME_ORDER.append("--same-order")

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        for kind in ("broker", "bare", "floor", "hl7"):
            with server(kind, workdir) as port:
                results[kind] = loadgen(
                    port, args.seconds, args.warmup, check_id=kind not in ("bare", "floor")
                )
        with server("broker", workdir) as port:
            results["broker_paced"] = loadgen(port, args.seconds, args.warmup, args.paced_rate)
        if args.redis:
            redis = RedisProcess(workdir / "redis")
            try:
                with server("broker", workdir, store=redis.url) as port:
                    results["broker_redis"] = loadgen(port, args.seconds, args.warmup)
            finally:
                redis.stop()
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            stats_file = args.profile / "broker.pstats"
            with server("broker", workdir, profile_to=stats_file) as port:
                profiled = loadgen(port, args.seconds, args.warmup)
            results["broker_profiled"] = profiled

    broker, bare, peer = results["broker"], results["bare"], results["hl7"]
    paced = results["broker_paced"]
    vs_bare = broker["rate"] / bare["rate"]
    vs_hl7 = broker["rate"] / peer["rate"]
    print(
        f"ingest: ORM^O01 v2.3.1 ({broker['message_bytes']} bytes), "
        f"{'the same order sent again' if args.same_order else 'a new order each'}, "
        f"8 connections, each awaiting every ACK; {args.seconds:g} s measured after "
        f"{args.warmup:g} s warm-up"
    )
    print(f"  broker (durable, SQLite FULL)  {broker['rate']:>9,.0f} msg/s")
    print(f"  bare asyncio, fixed ACK        {bare['rate']:>9,.0f} msg/s   (ceiling)")
    floor = results["floor"]
    print(
        f"  bare + SQLite group commit     {floor['rate']:>9,.0f} msg/s   "
        "(durable floor: fixed ACK after an fsynced INSERT, no parsing)"
    )
    print(f"  python-hl7 server, create_ack  {peer['rate']:>9,.0f} msg/s   (peer)")
    print(
        f"  broker / bare         {vs_bare:6.2f}x   goal >= {GOAL_BARE}x   "
        f"{verdict(vs_bare >= GOAL_BARE)}"
    )
    print(
        f"  broker / python-hl7   {vs_hl7:6.2f}x   goal >= {GOAL_HL7:g}x     "
        f"{verdict(vs_hl7 >= GOAL_HL7)}"
    )
    print(
        f"  broker / durable floor {broker['rate'] / floor['rate']:5.2f}x   "
        "(what parsing, routing, mapping and the worklist cost over the fsync-bound floor)"
    )
    print(
        f"  broker closed-loop latency: p50 {broker['p50_ms']:.2f} ms, "
        f"p99 {broker['p99_ms']:.2f} ms"
    )
    print(
        f"broker ACK latency at a paced {args.paced_rate:,.0f} msg/s "
        f"(achieved {paced['rate']:,.0f}): p50 {paced['p50_ms']:.2f} ms, "
        f"p90 {paced['p90_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms, "
        f"max {paced['max_ms']:.1f} ms   goal p99 < {GOAL_P99_MS:g} ms   "
        f"{verdict(paced['p99_ms'] < GOAL_P99_MS)}"
    )
    if args.redis:
        on_redis = results["broker_redis"]
        print(
            f"  broker on Redis (appendfsync always) {on_redis['rate']:>9,.0f} msg/s   "
            f"{on_redis['rate'] / broker['rate']:.2f}x the SQLite store, "
            f"{on_redis['rate'] / peer['rate']:.2f}x python-hl7; "
            f"p50 {on_redis['p50_ms']:.2f} ms, p99 {on_redis['p99_ms']:.2f} ms"
        )
    if args.profile:
        print(
            f"\nprofiled broker run: {results['broker_profiled']['rate']:,.0f} msg/s "
            f"(cProfile overhead); top functions by own time, event-loop thread:"
        )
        stats = pstats.Stats(str(args.profile / "broker.pstats"))
        stats.sort_stats("tottime").print_stats(25)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
