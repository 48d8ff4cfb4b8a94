"""Bus benchmark (issue 11, delivery): queued events → RabbitMQ through the `bus` destination.

Goal: >= 2,000 events/s per destination through the queue, with publisher confirms, and
>= 0.8x a bare kombu publisher with confirms sending the same events in the same run.

RabbitMQ: a private node (``tests/rabbitmq_server.py``: own node name, data, ports; management
off) or ``$AMQP_URL`` (a scratch vhost: the benchmark declares and deletes queue
``bench.bus.sink``). A durable queue bound with ``#`` to the durable topic exchange
``broker.events`` takes every event, so each persistent message is written to disk before the
broker confirms it (as for a real consumer's queue); nobody consumes during a measurement.

Each sender runs in its own process (this file re-run with ``--child``), in turns, ``--rounds``
times each; medians are reported:

- **broker**: N events (``procedure.completed``, ~440 bytes of JSON, ``id`` = sequence number)
  are enqueued first on a SqliteQueue (temp file, ``synchronous=FULL`` as in production); then
  the real DeliveryService / DestinationWorker / ``type: bus`` destination built from config
  keys (``ordering: destination``, default retry policy), on uvloop like ``broker serve``; timed
  from the service's start until the queue's depth is 0 (every event confirmed and recorded).
  ``--one-at-a-time`` hides the destination's ``deliver_many`` (the worker's batch hook) to
  show what per-entry confirms give.
- **kombu, window N**: a bare kombu Producer on a confirm-mode channel publishes the same
  events in windows of N (the worker's run, ``--run``, default the bus destination's 256)
  and waits for each window's confirms.
- **kombu, confirm_publish**: kombu's documented way, ``transport_options={"confirm_publish":
  True}``: each publish waits for its own confirm.

After each measurement the queue is read back: every event must be there once, in order.

    .venv/bin/python bench/bench_bus.py [--count 10000] [--rounds 3] [--one-at-a-time] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kombu as _kombu

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
if str(REPO) not in sys.path:  # the child imports broker.* and tests.* when run as a script
    sys.path.insert(0, str(REPO))

DESTINATION = "events"
EXCHANGE = "broker.events"
SINK_QUEUE = "bench.bus.sink"
GOAL_RATE = 2000.0  # events/s per destination, with confirms
GOAL_RATIO = 0.8  # broker / bare kombu publisher with confirms
WINDOW = 256  # the bus destination's default run (BusDestination.default_run); --run sets both
#: kombu is not annotated: used through ``Any`` (as broker/delivery/bus.py does).
kombu: Any = _kombu


# -- events -----------------------------------------------------------------------------------


def events(count: int) -> list[bytes]:
    """``count`` procedure.completed events (~440 bytes), ``id`` = ``evt-<8-digit seq>``."""
    out = []
    for seq in range(count):
        event = {
            "type": "procedure.completed",
            "id": f"evt-{seq:08d}",
            "time": "2026-11-24T10:15:00Z",
            "patient": {"id": f"MR{100000 + seq % 5000}", "issuer": "HOSP"},
            "order": {"placer": f"PO{seq:07d}", "filler": f"FO{seq:07d}", "accession": f"ACC{seq:07d}"},
            "procedure": {
                "code": "CT-HEAD", "modality": "CT", "station_ae": "CT01",
                "step_id": f"SPS{seq:07d}", "status": "COMPLETED",
                "study_uid": f"1.2.826.0.1.3680043.8.498.{10**19 + seq}",
                "started": "2026-11-24T10:02:11Z", "ended": "2026-11-24T10:14:58Z",
            },
        }  # fmt: skip
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


def seq_of(body: bytes) -> int:
    return int(json.loads(body)["id"].removeprefix("evt-"))


# -- RabbitMQ ---------------------------------------------------------------------------------


def kombu_connection(url: str, **transport_options: Any) -> Any:
    return kombu.Connection(url, transport_options=transport_options)


def reset_sink(url: str) -> None:
    """(Re)create the durable sink queue, empty, bound to the exchange with ``#``."""
    with kombu_connection(url) as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(EXCHANGE, "topic", durable=True)
        exchange(channel).declare()
        queue = kombu.Queue(SINK_QUEUE, exchange, routing_key="#", durable=True)
        queue(channel).declare()
        queue(channel).purge()


def read_sink(url: str, count: int) -> dict[str, Any]:
    """Read the sink queue empty: how many arrived, how many out of order, duplicates."""
    import amqp

    with kombu_connection(url) as conn:
        channel: amqp.Channel = conn.connection.channel()
        seen: set[int] = set()
        last, bad, dupes, total = -1, 0, 0, 0
        done = False

        def on_message(message: amqp.Message) -> None:
            nonlocal last, bad, dupes, total, done
            seq = seq_of(message.body)
            total += 1
            if seq in seen:
                dupes += 1
            elif seq < last:
                bad += 1
            seen.add(seq)
            last = max(last, seq)

        channel.basic_qos(0, 1000, False)
        channel.basic_consume(SINK_QUEUE, callback=on_message, no_ack=True)
        while len(seen) < count:
            try:
                conn.connection.drain_events(timeout=5)
            except TimeoutError:
                break
        channel.close()
    return {"distinct": len(seen), "messages": total, "out_of_order": bad, "duplicates": dupes}


# -- the senders (child processes) ------------------------------------------------------------


async def broker_side(opts: dict[str, Any]) -> dict[str, Any]:
    """Enqueue N, then deliver them all through the worker; timed from start to depth 0."""
    from broker.delivery import DeliveryService, DestinationWorker, WorkerOptions
    from broker.delivery.destinations import build_destination
    from broker.effects import Enqueue
    from broker.storage.sqlite import SqliteDatabase
    from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue

    count = opts["count"]
    payloads = events(count)
    result: dict[str, Any] = {"count": count, "payload_bytes": len(payloads[count // 2])}
    keys = {
        "url": opts["url"],
        "exchange": EXCHANGE,
        "ordering": "destination",
        "run": opts.get("run", WINDOW),
    }
    async with SqliteDatabase(opts["db"], schemas=[QUEUE_SCHEMA]) as db:
        queue = SqliteQueue(db)
        t = time.perf_counter()
        for first in range(0, count, 500):
            chunk = payloads[first : first + 500]
            await asyncio.gather(
                *(
                    queue.enqueue(Enqueue(DESTINATION, p, content_type="application/json"))
                    for p in chunk
                )
            )
        result["enqueue_s"] = time.perf_counter() - t
        destination: Any = build_destination(DESTINATION, "bus", keys)
        if opts.get("one_at_a_time"):
            destination = OneAtATime(destination)
        options = WorkerOptions.from_mapping(f"destinations.{DESTINATION}", keys)
        worker = DestinationWorker(destination, queue, options)
        service = DeliveryService(queue, [worker])
        start = time.perf_counter()
        async with service:
            while worker.counters.delivered < count:
                await asyncio.sleep(0.01)  # rare polls: the loop shares the GIL with the bus thread
            while (await queue.stats([DESTINATION]))[DESTINATION].depth:
                await asyncio.sleep(0.002)
            seconds = time.perf_counter() - start
        result.update(
            seconds=seconds,
            rate=count / seconds,
            delivered=worker.counters.delivered,
            retried=worker.counters.retried,
            dead=worker.counters.dead,
        )
    return result


class OneAtATime:
    """The bus destination without ``deliver_many``: the worker sends entry by entry."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    async def deliver(self, entry: Any) -> Any:
        return await self.inner.deliver(entry)

    async def probe(self) -> bool:
        return bool(await self.inner.probe())

    async def aclose(self) -> None:
        await self.inner.aclose()


def bare_window(opts: dict[str, Any]) -> dict[str, Any]:
    """A bare kombu Producer, confirm mode, windows of ``WINDOW`` confirmed together."""
    count = opts["count"]
    payloads = events(count)
    with kombu_connection(opts["url"]) as conn:
        conn.ensure_connection(max_retries=0)
        channel = conn.channel()
        channel.confirm_select()
        confirmed = 0

        def on_ack(tag: int, multiple: bool) -> None:
            nonlocal confirmed
            confirmed = max(confirmed, tag)  # RabbitMQ confirms a channel in order

        channel.events["basic_ack"].add(on_ack)
        exchange = kombu.Exchange(EXCHANGE, "topic", durable=True)
        producer = kombu.Producer(channel, exchange=exchange, auto_declare=False)
        start = time.perf_counter()
        window = opts.get("window", WINDOW)
        for first in range(0, count, window):
            for body in payloads[first : first + window]:
                producer.publish(
                    body, routing_key="procedure.completed", content_type="application/json",
                    content_encoding="utf-8", delivery_mode=2, message_id=str(first),
                    type="procedure.completed",
                )  # fmt: skip
            while confirmed < min(count, first + window):
                conn.connection.drain_events(timeout=30)
        seconds = time.perf_counter() - start
    return {"count": count, "seconds": seconds, "rate": count / seconds}


def bare_confirm_publish(opts: dict[str, Any]) -> dict[str, Any]:
    """kombu's own confirm mode: ``confirm_publish=True``, each publish waits for its ack."""
    count = opts["count"]
    payloads = events(count)
    with kombu_connection(opts["url"], confirm_publish=True) as conn:
        producer = kombu.Producer(
            conn.channel(), exchange=kombu.Exchange(EXCHANGE, "topic", durable=True),
            auto_declare=False,
        )  # fmt: skip
        start = time.perf_counter()
        for seq, body in enumerate(payloads):
            producer.publish(
                body, routing_key="procedure.completed", content_type="application/json",
                content_encoding="utf-8", delivery_mode=2, message_id=str(seq),
                type="procedure.completed",
            )  # fmt: skip
        seconds = time.perf_counter() - start
    return {"count": count, "seconds": seconds, "rate": count / seconds}


def run_child(mode: str, options: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    opts = json.loads(options)
    if mode == "broker":
        import uvloop

        result = uvloop.run(broker_side(opts))
    elif mode == "window":
        result = bare_window(opts)
    else:
        result = bare_confirm_publish(opts)
    print(json.dumps(result))
    return 0


def child(mode: str, url: str, **options: Any) -> dict[str, Any]:
    """One sender in its own process, the sink queue emptied before and checked after."""
    reset_sink(url)
    cmd = [PY, __file__, "--child", mode, "--options", json.dumps({"url": url, **options})]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} sender failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["sink"] = read_sink(url, options["count"])
    return result


# -- the orchestrator -------------------------------------------------------------------------


def order_text(sink: dict[str, Any], count: int) -> tuple[bool, str]:
    ok = sink["distinct"] == count and sink["out_of_order"] == 0
    return ok, (
        f"{sink['distinct']:,}/{count:,} arrived, {sink['out_of_order']} out of order, "
        f"{sink['duplicates']} resent"
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: float(r["rate"]))[len(runs) // 2]


def rabbitmq_version(url: str) -> str:
    with kombu_connection(url) as conn:
        conn.ensure_connection(max_retries=0)
        props = conn.connection.server_properties
        return f"{props.get('product', '?')} {props.get('version', '?')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="events per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each sender")
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="also measure the worker without batches"
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument(
        "--run",
        type=int,
        default=WINDOW,
        help="the worker's run and the bare publisher's window (entries confirmed together)",
    )
    parser.add_argument("--child", choices=("broker", "window", "confirm"), help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args.child, args.options)

    n = args.count
    began = time.perf_counter()
    results: dict[str, Any] = {"broker": [], "window": [], "confirm": [], "single": []}
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        workdir = Path(tmp)
        server = None
        url = os.environ.get("AMQP_URL", "")
        if not url:
            from tests.rabbitmq_server import RabbitMqServer

            server = RabbitMqServer(workdir / "rabbitmq").start()
            url = server.url()
        try:
            version = rabbitmq_version(url)
            for i in range(args.rounds):  # in turns, so drift on this VM hits all alike
                db = str(workdir / f"q{i}.db")
                results["broker"].append(child("broker", url, count=n, db=db, run=args.run))
                results["window"].append(child("window", url, count=n, window=args.run))
            results["confirm"].append(child("confirm", url, count=min(n, 5000)))
            if args.one_at_a_time:
                db = str(workdir / "single.db")
                results["single"].append(
                    child("broker", url, count=min(n, 5000), db=db, one_at_a_time=True)
                )
            with kombu_connection(url) as conn:  # leave a scratch vhost as it was
                conn.default_channel.queue_delete(SINK_QUEUE)
        finally:
            if server is not None:
                server.close()
    elapsed = time.perf_counter() - began

    broker, window, confirm = (median_run(results[k]) for k in ("broker", "window", "confirm"))
    print(
        f"bus: {n:,} procedure.completed events ({broker['payload_bytes']} bytes of JSON), "
        f"{version} on loopback ({'$AMQP_URL' if server is None else 'private node'}), durable "
        f"topic exchange {EXCHANGE} -> one durable queue, persistent messages, publisher "
        f"confirms; medians of {args.rounds} runs, each sender in its own process"
    )
    ok_all = True
    rows = [
        ("broker: SqliteQueue FULL -> worker -> bus", broker, results["broker"]),
        (f"bare kombu, confirms per window of {args.run}", window, results["window"]),
        ("bare kombu, confirm_publish=True", confirm, results["confirm"]),
    ]
    if results["single"]:
        rows.append(("broker, one entry at a time", results["single"][0], results["single"]))
    for label, r, runs in rows:
        ok, order = order_text(r["sink"], r["count"])
        ok_all = ok_all and ok
        spread = ", ".join(f"{x['rate']:,.0f}" for x in runs)
        print(
            f"  {label:<44} {r['rate']:>7,.0f} events/s  (runs: {spread}; N = {r['count']:,})   "
            f"order: {'ok' if ok else 'BAD'}: {order}"
        )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"  broker: {broker['rate']:,.0f} events/s, goal >= {GOAL_RATE:,.0f}: "
          f"{verdict(broker['rate'] >= GOAL_RATE)}")  # fmt: skip
    for label, peer in (
        ("kombu confirm_publish=True (each publish confirmed)", confirm),
        (f"bare kombu, confirms per window of {args.run} (stores nothing)", window),
    ):
        ratio = broker["rate"] / peer["rate"]
        print(f"  broker / {label}: {ratio:.2f}x, goal >= {GOAL_RATIO}: "
              f"{verdict(ratio >= GOAL_RATIO)}")  # fmt: skip
    print(
        f"  broker: {broker['retried']} retries, {broker['dead']} dead; enqueue of {n:,} took "
        f"{broker['enqueue_s']:.1f} s (not timed)"
    )
    print(f"whole run: {elapsed:.0f} s")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
