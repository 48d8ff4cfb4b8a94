"""The admin HTTP listener of a running broker: /health, /metrics (DESIGN.md §6, contract), and
TCP_NODELAY on every accepted MLLP and HTTP socket (DESIGN.md §8).

/health and /metrics are read from a ``broker serve`` process. TCP_NODELAY is a property of the
server's accepted sockets, which a test cannot see inside another process, so that check runs an
in-process :class:`broker.app.Broker` on the same config and looks at its connections' sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.app import Broker
from broker.config import load_settings
from broker.net import tcp_nodelay_is_set
from tests.peers.conftest import REPO, BrokerProcess, MllpConnection, msa, orm

pytestmark = pytest.mark.peer


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} parsed with prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def test_health_answers_200_json_while_up(broker: BrokerProcess) -> None:
    status, body, content_type = broker.http_get("/health")
    assert status == 200
    assert content_type.startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["listeners"] == {"ris": "listening"}


async def test_metrics_count_messages_and_acks(broker: BrokerProcess) -> None:
    async with await MllpConnection.open(broker.mllp_port) as conn:
        for n in range(3):
            assert msa(await conn.send(orm(f"MET{n}"))) == ("AA", f"MET{n}")
        assert msa(await conn.send(orm("MET0")))[0] == "AA"  # a duplicate is still AA
        no_control_id = orm("X").replace(b"|X|P|", b"||P|", 1)
        assert msa(await conn.send(no_control_id)) == ("AR", "")
        bad_bytes = orm("MET9").replace(b"|2.3.1", b"|2.3.1||||||UNICODE UTF-8", 1) + b"\xff\r"
        assert msa(await conn.send(bad_bytes)) == ("AE", "MET9")

    status, body, content_type = broker.http_get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    samples = metric_samples(body.decode("utf-8"))
    ris = labels(listener="ris")
    assert samples[("broker_messages_received_total", ris)] == 6
    assert samples[("broker_acks_total", labels(listener="ris", code="AA"))] == 4
    assert samples[("broker_acks_total", labels(listener="ris", code="AR"))] == 1
    assert samples[("broker_acks_total", labels(listener="ris", code="AE"))] == 1
    assert samples[("broker_duplicates_total", ris)] == 1
    assert samples[("broker_ack_latency_seconds_count", ris)] == 6
    assert samples[("broker_ack_latency_seconds_bucket", labels(listener="ris", le="+Inf"))] == 6
    assert samples[("broker_journal_entries", frozenset())] == 6
    assert samples[("broker_store_bytes", frozenset())] > 0


async def _http_get_keepalive(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """GET over a raw HTTP/1.1 connection that stays open (so the server keeps its socket)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return reader, writer, head


async def test_tcp_nodelay_on_accepted_mllp_and_http_sockets(tmp_path: Path) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(
        json.dumps(
            {
                "store": f"sqlite:///{tmp_path / 'broker.db'}",
                "routes": str(REPO / "routes"),
                "mappings": str(REPO / "mappings"),
                "mllp": [{"name": "ris", "host": "127.0.0.1", "port": 0}],
                "dicom": {"enabled": False},
                "http": {"host": "127.0.0.1", "port": 0},
            }
        )
    )
    settings = load_settings(config, environ={})
    async with Broker(settings) as broker:
        listener = broker.listeners[0]
        conns = [await MllpConnection.open(listener.port) for _ in range(3)]
        assert broker.admin is not None
        _, http_writer, head = await _http_get_keepalive(broker.admin.bound_port, "/health")
        try:
            for n, conn in enumerate(conns):
                assert msa(await conn.send(orm(f"NODELAY{n}")))[0] == "AA"
            assert head.startswith(b"HTTP/1.1 200")

            accepted = [c.transport.get_extra_info("socket") for c in listener.connections]
            assert len(accepted) == 3
            assert all(tcp_nodelay_is_set(sock) for sock in accepted)

            # aiohttp has no public accessor for its open connections.
            runner = broker.admin._runner
            assert runner is not None and runner.server is not None
            http_socks = [
                h.transport.get_extra_info("socket")
                for h in runner.server.connections
                if h.transport is not None
            ]
            assert len(http_socks) == 1
            assert tcp_nodelay_is_set(http_socks[0])
        finally:
            for conn in conns:
                await conn.close()
            http_writer.close()
            with contextlib.suppress(OSError):
                await http_writer.wait_closed()
