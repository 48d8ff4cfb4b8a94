"""The ``bus`` destination (broker/delivery/bus.py) against a real RabbitMQ and a real Redis.

RabbitMQ: the session's private node (``tests/rabbitmq_server.py``), or ``$AMQP_URL`` for the
tests that need nothing but a broker; the tests that stop the node, use its users
(``noconfig``, ``nowrite``), its TLS listener or ``rabbitmqctl`` always use the private node.
Redis: the suite's redis-server (``tests/redis_server.py``) or ``$REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import kombu as _kombu
import pytest
from amqp import exceptions as amqp_errors
from kombu.exceptions import OperationalError as KombuOperationalError

from broker.config import Settings
from broker.delivery import DeliveryService
from broker.delivery.bus import BusDestination, build_bus, bus_options, classify, redact_url
from broker.delivery.destinations import Dead, Delivered, Outcome, Retry, build_destination
from broker.effects import Enqueue
from broker.errors import ConfigError
from broker.queue import State
from broker.queue.base import Entry
from broker.storage.sqlite import SqliteDatabase
from broker.storage.sqlite_queue import QUEUE_SCHEMA, SqliteQueue
from tests.delivery.conftest import MakeWorker, until
from tests.rabbitmq_server import (
    USERS,
    RabbitMqServer,
    shared_amqp_url,
    shared_rabbitmq,
    stop_shared_rabbitmq,
)
from tests.redis_server import free_port, shared_redis_url, stop_shared_redis

pytestmark = pytest.mark.peer
#: kombu is not annotated: used through ``Any`` (as broker/delivery/bus.py does).
kombu: Any = _kombu


@pytest.fixture(scope="module", autouse=True)
def _stop_peers_at_module_end() -> Iterator[None]:
    yield
    stop_shared_rabbitmq()
    stop_shared_redis()  # started again on demand by later modules


@pytest.fixture
def amqp_url() -> str:
    return shared_amqp_url()


@pytest.fixture
def rabbit() -> RabbitMqServer:
    return shared_rabbitmq()


def event(seq: int, kind: str = "procedure.completed", **extra: Any) -> bytes:
    return json.dumps({"type": kind, "id": f"evt-{seq}", "seq": seq, **extra}).encode()


def entry(payload: bytes, entry_id: int = 1, **headers: str) -> Entry:
    return Entry(entry_id, "events", payload, content_type="application/json", headers=headers)


def exchange_name() -> str:
    """A fresh exchange per test: tests do not see each other's events or declarations."""
    return f"test.events.{secrets.token_hex(4)}"


class Sink:
    """A consumer's queue bound to the exchange (kombu, any transport); collects messages."""

    def __init__(
        self,
        url: str,
        exchange: str,
        keys: Sequence[str] = ("#",),
        *,
        name: str = "",
        durable: bool = False,
        exchange_type: str = "topic",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.connection = kombu.Connection(url)
        self.exchange = kombu.Exchange(exchange, exchange_type, durable=True)
        self.queue = kombu.Queue(
            name or f"test.sink.{secrets.token_hex(4)}",
            bindings=[kombu.binding(self.exchange, routing_key=k) for k in keys],
            durable=durable,
            auto_delete=not durable,
            queue_arguments=arguments,
        )
        self.received: list[Any] = []
        channel = self.connection.channel()
        self.exchange(channel).declare()
        self.queue(channel).declare()
        self.consumer = kombu.Consumer(
            channel, queues=[self.queue], on_message=self.received.append, no_ack=True
        )

    def take(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Wait until ``count`` messages arrived (fails on timeout); returns them all."""
        deadline = time.monotonic() + timeout
        with self.consumer:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} messages arrived")
                try:
                    self.connection.drain_events(timeout=min(left, 0.5))
                except TimeoutError:
                    continue
        return self.received

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.received]

    def close(self, delete: bool = False) -> None:
        if delete:
            self.queue(self.connection.channel()).delete()
        self.connection.release()


@pytest.fixture
async def bus_of() -> AsyncIterator[Any]:
    """Build bus destinations (closed at the end)."""
    made: list[BusDestination] = []

    def factory(url: str, **keys: Any) -> BusDestination:
        destination = build_bus("events", {"url": url, **keys})
        made.append(destination)
        return destination

    yield factory
    for destination in made:
        await destination.aclose()


# -- configuration (no network) -----------------------------------------------------------


def test_options_from_url_and_keys() -> None:
    o = bus_options("d", {"url": "amqp://u:p%40ss@mq.example:5673/v%2Fh", "exchange": "x"})
    assert (o.host, o.port, o.username, o.password, o.vhost) == (
        "mq.example",
        5673,
        "u",
        "p@ss",
        "v/h",
    )
    assert (o.exchange, o.exchange_type, o.transport, o.confirms) == ("x", "topic", "pyamqp", True)
    assert o.peer == "amqp://u:***@mq.example:5673/v%2Fh" and "p@ss" not in repr(o)
    assert bus_options("d", {"url": "amqp://h//"}).vhost == "/"
    assert bus_options("d", {"url": "amqp://h"}).port == 5672
    assert bus_options("d", {"url": "amqps://h"}).port == 5671
    redis = bus_options("d", {"url": "redis://:pw@h:6380/3"})
    assert (redis.transport, redis.vhost, redis.password, redis.confirms) == (
        "redis",
        "3",
        "pw",
        False,
    )
    assert redis.peer == "redis://:***@h:6380/3"
    # the keys win over the URL (BROKER__DESTINATIONS__EVENTS__PASSWORD sets the key)
    o = bus_options("d", {"url": "amqp://u:old@h//", "username": "v", "password": "new"})
    assert (o.username, o.password) == ("v", "new")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"url": "amqp://u:s3cret@h:notaport//"},
            "destinations.events.url: found 'amqp://u:***@h:notaport//'",
        ),
        ({"url": "ftp://u:s3cret@h"}, "unknown scheme 'ftp'"),
        ({"url": "amqp://u:s3cret@:5672//"}, "no host"),
        ({"url": "redis://:s3cret@h/zero"}, "Redis database 'zero' is not a number"),
        ({"url": "amqp://u:s3cret@h//?heartbeat=10"}, "query and fragment are not supported"),
        ({}, "destinations.events.url: found None"),
        ({"url": "amqp://h//", "exchange_type": "fan"}, "exchange_type: found 'fan'"),
        ({"url": "amqp://h//", "tls": True}, "tls is set but url is amqp://"),
        ({"url": "amqps://h//", "tls": {"ca": "/nonexistent.pem"}}, "tls: cannot load"),
        ({"url": "amqp://h//", "password": 12345}, "password: expected a string (value not shown)"),
    ],
)
def test_bad_config_is_refused_when_built(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_destination("events", "bus", keys)
    assert message in str(info.value)
    assert "s3cret" not in str(info.value) and "12345" not in str(info.value)


def test_serve_refuses_a_bad_url(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"destinations": {"events": {"type": "bus", "url": "amqp://u:s3cret@h:99999//"}}}
    )
    with pytest.raises(ConfigError) as info:
        DeliveryService.from_settings(settings, SqliteQueue(SqliteDatabase(tmp_path / "b.db")))
    assert "destinations.events.url" in str(info.value) and "s3cret" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("amqp://u:p@h//") == "amqp://u:***@h//"
    assert redact_url("redis://:p@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("amqp://u@h//") == "amqp://u@h//"
    assert redact_url("u:p@h") == "***"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "the payload is not JSON"),
        (b"\xff\xfe", "the payload is not UTF-8"),
        (b"[1, 2]", "the payload is a JSON list, not an object"),
        (b'{"id": "e1"}', 'the event has no "type"'),
        (b'{"type": "", "id": "e1"}', 'the event has no "type"'),
        (b'{"type": "order.scheduled"}', 'the event has no "id"'),
        (b'{"type": "order.scheduled", "id": true}', 'the event has no "id"'),
    ],
)
async def test_a_payload_that_is_not_an_event_is_dead(
    payload: bytes, why: str, bus_of: Any
) -> None:
    # no broker on this port: a dead entry is judged before any connection is tried
    destination = bus_of("amqp://u:p@127.0.0.1:1//")
    outcome = await destination.deliver(entry(payload, 7))
    assert isinstance(outcome, Dead) and why in outcome.error and "entry 7" in outcome.error


def _raised(exc: BaseException, cause: BaseException) -> BaseException:
    """``exc`` as raised ``from cause`` (kombu wraps connection errors so)."""
    try:
        raise exc from cause
    except Exception as caught:  # only to give it its cause
        return caught


@pytest.mark.parametrize(
    ("exc", "connecting", "network", "text"),
    [
        (
            amqp_errors.ConnectionForced("CONNECTION_FORCED - broker shutdown", reply_code=320),
            False,
            "lost",
            "broker shutdown",
        ),
        (
            amqp_errors.AccessRefused("ACCESS_REFUSED - no", reply_code=403),
            False,
            "",
            "ACCESS_REFUSED - no (403)",
        ),
        (
            amqp_errors.PreconditionFailed("PRECONDITION_FAILED - x", reply_code=406),
            True,
            "",
            "(406)",
        ),
        (ConnectionResetError(104, "Connection reset by peer"), False, "lost", "reset by peer"),
        (ConnectionRefusedError(111, "Connection refused"), True, "connect", "refused"),
        (
            _raised(KombuOperationalError("refused"), ConnectionRefusedError(111, "refused")),
            True,
            "connect",
            "refused",
        ),
        (TimeoutError("timed out"), True, "connect", "timed out"),
        (ssl.SSLCertVerificationError("CERTIFICATE_VERIFY_FAILED"), True, "lost", "CERTIFICATE"),
        (OSError("Server unexpectedly closed connection"), False, "lost", "closed"),
        (
            amqp_errors.RecoverableConnectionError("Connection already closed"),
            False,
            "lost",
            "closed",
        ),
    ],
)
def test_classify(exc: BaseException, connecting: bool, network: str, text: str) -> None:
    found, cause = classify(exc, connecting)
    assert found == network and text in cause


# -- RabbitMQ ---------------------------------------------------------------------------------


async def test_consumer_gets_the_events_in_order_with_key_and_properties(
    amqp_url: str, bus_of: Any, make_worker: MakeWorker, store: SqliteQueue
) -> None:
    exchange = exchange_name()
    sink = Sink(amqp_url, exchange, ["order.*", "procedure.#", "custom.key"])
    try:
        destination = bus_of(amqp_url, exchange=exchange)
        kinds = ["order.scheduled", "procedure.completed", "patient.updated", "order.cancelled"]
        for seq in range(40):
            kind = kinds[seq % 4]
            headers = {"routing_key": "custom.key"} if seq == 39 else {"source": "test"}
            await store.enqueue(
                Enqueue(
                    "events", event(seq, kind), content_type="application/json", headers=headers
                )
            )
        worker = make_worker(destination)
        await until(lambda: worker.counters.delivered == 40)
        # patient.updated matches no binding: published (and confirmed), routed nowhere
        expected = [s for s in range(40) if s % 4 != 2 or s == 39]
        received = await asyncio.to_thread(sink.take, len(expected))
        assert [b["seq"] for b in sink.bodies()] == expected
        first = received[0]
        assert first.delivery_info["routing_key"] == "order.scheduled"
        assert first.content_type == "application/json"
        assert first.properties["delivery_mode"] == 2
        assert first.properties["message_id"] == "evt-0"
        assert first.properties["type"] == "order.scheduled"
        assert first.headers == {"source": "test"}
        last = received[-1]
        assert last.delivery_info["routing_key"] == "custom.key"  # the entry's header wins
        assert last.properties["type"] == "order.cancelled" and last.headers == {}
        assert (await store.stats(["events"]))["events"].depth == 0
    finally:
        sink.close()


async def test_the_connection_sets_tcp_nodelay(amqp_url: str, bus_of: Any) -> None:
    destination = bus_of(amqp_url, exchange=exchange_name())
    assert await destination.deliver(entry(event(1))) == Delivered("confirmed")
    sock = destination._link.amqp.sock  # set by py-amqp (DEFAULT_SOCKET_SETTINGS)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_an_entry_is_delivered_only_when_the_broker_confirmed_it(
    amqp_url: str, bus_of: Any
) -> None:
    # A queue that holds one message and refuses more: RabbitMQ nacks the publishes it drops.
    exchange = exchange_name()
    arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
    sink = Sink(amqp_url, exchange, arguments=arguments)
    try:
        destination = bus_of(amqp_url, exchange=exchange)
        run = [entry(event(n), n) for n in (1, 2, 3)]
        outcomes = await destination.deliver_many(run)
        assert outcomes[0] == Delivered("confirmed")
        assert len(outcomes) == 2  # 3 may be published too: not settled, sent again after 2
        assert isinstance(outcomes[1], Retry) and "basic.nack" in outcomes[1].error
        assert outcomes[1].network == ""  # the broker answered: the policy's pause
        await asyncio.to_thread(sink.take, 1)  # the consumer makes room
        assert [b["seq"] for b in sink.bodies()] == [1]
        assert await destination.deliver_many(run[1:2]) == [Delivered("confirmed")]
    finally:
        sink.close()


async def test_no_confirm_in_time_is_retried_with_the_reason(
    rabbit: RabbitMqServer, bus_of: Any
) -> None:
    # A memory alarm: RabbitMQ blocks publishing connections (connection.blocked) and
    # confirms nothing until it clears.
    destination = bus_of(rabbit.url(), exchange=exchange_name(), confirm_timeout_s=1)
    assert await destination.deliver(entry(event(1), 1)) == Delivered("confirmed")
    await asyncio.to_thread(rabbit.ctl, "set_vm_memory_high_watermark", "0.000001")
    try:
        outcome = await destination.deliver(entry(event(2), 2))
        assert isinstance(outcome, Retry)
        assert "no publisher confirm within 1 s" in outcome.error
        assert "blocked by the broker" in outcome.error
    finally:
        await asyncio.to_thread(rabbit.ctl, "set_vm_memory_high_watermark", "0.4")
    deadline = time.monotonic() + 20
    while not isinstance(outcome, Delivered):
        assert time.monotonic() < deadline, outcome
        outcome = await destination.deliver(entry(event(2), 2))


async def test_an_exchange_of_another_type_is_a_clear_retry(amqp_url: str, bus_of: Any) -> None:
    exchange = exchange_name()
    sink = Sink(amqp_url, exchange, exchange_type="fanout")  # declares it as fanout
    try:
        destination = bus_of(amqp_url, exchange=exchange)  # wants topic
        outcome = await destination.deliver(entry(event(1)))
        assert isinstance(outcome, Retry) and outcome.network == ""
        assert "PRECONDITION_FAILED" in outcome.error and "inequivalent arg 'type'" in outcome.error
        assert (
            f"exchange {exchange!r}" in outcome.error and "bus events at amqp://" in outcome.error
        )
        # the analyst fixes it: the next attempt opens a fresh connection and channel
        sink.exchange(sink.connection.channel()).delete()
        assert await destination.deliver(entry(event(1))) == Delivered("confirmed")
    finally:
        sink.close()


async def test_missing_permissions_and_a_bad_login_are_clear_retries(
    rabbit: RabbitMqServer, bus_of: Any
) -> None:
    exchange = exchange_name()
    noconfig = bus_of(rabbit.url("noconfig"), exchange=exchange)
    outcome = await noconfig.deliver(entry(event(1)))
    assert isinstance(outcome, Retry) and outcome.network == ""
    assert "ACCESS_REFUSED" in outcome.error and "(403)" in outcome.error
    assert "refused for user 'noconfig'" in outcome.error

    # may declare, may not publish: the refusal comes back while confirms are awaited
    nowrite = bus_of(rabbit.url("nowrite"), exchange=exchange)
    outcomes = await nowrite.deliver_many([entry(event(n), n) for n in (1, 2)])
    assert len(outcomes) == 1 and isinstance(outcomes[0], Retry)
    assert "ACCESS_REFUSED" in outcomes[0].error and "'nowrite'" in outcomes[0].error

    wrong = bus_of(rabbit.url("broker").replace(USERS["broker"][0], "not-the-password"))
    outcome = await wrong.deliver(entry(event(1)))
    assert isinstance(outcome, Retry) and "ACCESS_REFUSED - Login was refused" in outcome.error
    for text in (outcome.error, *(o.error for o in outcomes)):
        assert "not-the-password" not in text and "secret" not in text
    assert "amqp://broker:***@127.0.0.1" in outcome.error


async def test_connection_refused_is_a_connect_retry(bus_of: Any) -> None:
    port = free_port()
    destination = bus_of(f"amqp://u:s3cret@127.0.0.1:{port}//", connect_timeout_s=1)
    outcome = await destination.deliver(entry(event(1)))
    assert isinstance(outcome, Retry) and outcome.network == "connect"
    assert f"bus events at amqp://u:***@127.0.0.1:{port}//" in outcome.error
    assert "cannot connect" in outcome.error and "s3cret" not in outcome.error
    assert await destination.probe() is False


async def test_a_connection_closed_while_idle_is_replaced_without_a_failed_attempt(
    rabbit: RabbitMqServer, bus_of: Any
) -> None:
    destination = bus_of(rabbit.url(), exchange=exchange_name())
    assert await destination.deliver(entry(event(1))) == Delivered("confirmed")
    assert await destination.probe() is True
    await asyncio.to_thread(rabbit.ctl, "close_all_connections", "test: idle connection closed")
    await asyncio.sleep(0.2)  # the close reaches our socket
    assert await destination.deliver(entry(event(2))) == Delivered("confirmed")
    await destination.aclose()  # closed, and usable again (a new thread and connection)
    assert await destination.deliver(entry(event(3))) == Delivered("confirmed")


async def test_amqps_with_the_tls_key(rabbit: RabbitMqServer, bus_of: Any) -> None:
    assert rabbit.tls is not None
    cert = rabbit.tls[0]
    trusted = bus_of(rabbit.tls_url, exchange=exchange_name(), tls={"ca": str(cert)})
    assert await trusted.deliver(entry(event(1))) == Delivered("confirmed")
    untrusted = bus_of(rabbit.tls_url, exchange=exchange_name())  # system CAs only
    outcome = await untrusted.deliver(entry(event(1)))
    assert isinstance(outcome, Retry) and "CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert outcome.network == "lost"  # a TLS failure reaches a peer that is up


async def test_rabbitmq_stopped_mid_flow_loses_and_reorders_nothing(
    rabbit: RabbitMqServer, tmp_path: Path
) -> None:
    exchange = exchange_name()
    sink = Sink(rabbit.url(), exchange, name=f"test.outage.{secrets.token_hex(3)}", durable=True)
    sink.close()  # the durable queue keeps collecting across the restart
    settings = Settings.model_validate(
        {
            "destinations": {
                "events": {
                    "type": "bus",
                    "url": rabbit.url(),
                    "exchange": exchange,
                    "connect_timeout_s": 1,
                    "confirm_timeout_s": 5,
                    "probe_interval_s": 0.1,
                    "retry": {"initial_s": 0.05, "max_interval_s": 0.5, "jitter": 0},
                }
            }
        }
    )
    first, during = 3000, 200
    async with SqliteDatabase(tmp_path / "b.db", schemas=[QUEUE_SCHEMA]) as db:
        queue = SqliteQueue(db)
        for seq in range(first):
            await queue.enqueue(Enqueue("events", event(seq), content_type="application/json"))
        async with DeliveryService.from_settings(settings, queue, poll_s=0.02) as service:
            worker = service.workers["events"]
            await until(lambda: worker.counters.delivered >= 300)
            await asyncio.to_thread(rabbit.stop)  # graceful: connection.close 320, then gone
            for seq in range(first, first + during):  # queued while the bus is down
                await queue.enqueue(Enqueue("events", event(seq), content_type="application/json"))
                service.notify("events")
            await until(lambda: worker.counters.retried >= 2)
            stats = (await service.stats())["events"]
            assert stats.state == "retrying" and stats.depth > during
            left = await queue.entries("events", states=[State.RETRY], limit=1)
            assert "bus events at amqp://broker:***@" in left[0].last_error
            await asyncio.to_thread(rabbit.start)
            deadline = time.monotonic() + 30
            while (await queue.stats(["events"]))["events"].depth:
                assert time.monotonic() < deadline, "the queue did not drain"
                await asyncio.sleep(0.05)
            assert worker.counters.delivered >= first + during
    sink = Sink(rabbit.url(), exchange, name=sink.queue.name, durable=True)
    try:
        received = await asyncio.to_thread(sink.take, first + during, 20)
        seqs = [json.loads(m.body)["seq"] for m in received]
        # at least once: a run published but not confirmed when the broker went is sent
        # again; every event is there, and in order of first arrival
        distinct = list(dict.fromkeys(seqs))
        assert distinct == list(range(first + during))
    finally:
        sink.close(delete=True)


# -- Redis transport --------------------------------------------------------------------------


async def test_redis_transport(bus_of: Any) -> None:
    url = shared_redis_url()
    exchange = exchange_name()
    sink = Sink(url, exchange, ["order.*"])
    try:
        destination = bus_of(url, exchange=exchange)
        outcomes = await destination.deliver_many(
            [entry(event(n, "order.scheduled"), n) for n in range(5)]
            + [entry(event(5, "procedure.completed"), 5), entry(b"{}", 6)]
        )
        assert outcomes[:6] == [Delivered("sent")] * 6 and isinstance(outcomes[6], Dead)
        received = await asyncio.to_thread(sink.take, 5)
        assert [b["seq"] for b in sink.bodies()] == [0, 1, 2, 3, 4]
        assert received[0].content_type == "application/json"
        assert received[0].properties["message_id"] == "evt-0"
        assert received[0].delivery_info["routing_key"] == "order.scheduled"
    finally:
        sink.close()
    down = bus_of(f"redis://:s3cret@127.0.0.1:{free_port()}/0", connect_timeout_s=1)
    outcome = await down.deliver(entry(event(1)))
    assert isinstance(outcome, Retry) and outcome.network == "connect"
    assert "s3cret" not in outcome.error and "redis://:***@127.0.0.1" in outcome.error


# -- broker events tail -----------------------------------------------------------------------


async def test_events_tail_prints_matching_events(
    amqp_url: str, bus_of: Any, tmp_path: Path
) -> None:
    exchange = exchange_name()
    config = tmp_path / "broker.yaml"
    config.write_text(
        json.dumps(
            {"destinations": {"events": {"type": "bus", "url": amqp_url, "exchange": exchange}}}
        )
    )
    broker = Path(sys.executable).with_name("broker")
    tail = subprocess.Popen(
        [str(broker), "events", "tail", "--config", str(config), "--type", "order.*",
         "--type", "procedure.completed", "--count", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tail.stderr is not None
        hello = await asyncio.to_thread(tail.stderr.readline)  # bound: events may come now
        assert "listening on amqp://" in hello and "order.*, procedure.completed" in hello
        destination = bus_of(amqp_url, exchange=exchange)
        for seq, kind in enumerate(["patient.updated", "order.scheduled", "procedure.completed"]):
            outcome = await destination.deliver(entry(event(seq, kind, name="Zoë")))
            assert outcome == Delivered("confirmed")
        out, err = await asyncio.to_thread(tail.communicate, timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "order.scheduled",
        "procedure.completed",
    ]
    assert lines[0] == '{"type":"order.scheduled","id":"evt-1","seq":1,"name":"Zoë"}'


# -- the worker's batch hook (broker/delivery/worker.py Batching) ------------------------------


class ScriptedBatches:
    """A Batching destination answering each run from a script; records the runs."""

    name = "events"

    def __init__(self, *answers: Sequence[Outcome]) -> None:
        self.answers = list(answers)
        self.runs: list[list[int]] = []

    async def deliver(self, entry: Entry) -> Outcome:
        raise AssertionError("a Batching destination gets whole runs")

    async def deliver_many(self, entries: Sequence[Entry]) -> Sequence[Outcome]:
        self.runs.append([e.id for e in entries])
        return self.answers.pop(0)

    async def aclose(self) -> None:
        pass


async def test_worker_hands_a_batching_destination_whole_runs(
    make_worker: MakeWorker, store: SqliteQueue
) -> None:
    ids = [await store.enqueue(Enqueue("events", event(n))) for n in range(5)]
    destination = ScriptedBatches(
        # 1 delivered, 2 dead (the lane goes on), 3 delivered, 4 retried: 5 not settled
        [Delivered(), Dead("not an event"), Delivered(), Retry("nack"), Delivered()],
        [Delivered(), Delivered()],
    )
    worker = make_worker(destination)
    await until(lambda: worker.counters.delivered == 4)
    assert destination.runs == [ids, ids[3:]]  # 5 came again after 4, in order
    entries = [await store.get(i) for i in ids]
    states = [e.state if e is not None else None for e in entries]
    assert states == [
        State.DELIVERED,
        State.DEAD,
        State.DELIVERED,
        State.DELIVERED,
        State.DELIVERED,
    ]
    assert worker.counters.dead == 1 and worker.counters.retried == 1
    retried = await store.get(ids[3])
    assert retried is not None and retried.attempts == 1 and retried.last_error == "nack"
