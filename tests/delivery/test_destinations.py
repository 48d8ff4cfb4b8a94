"""Destination types against real peers on loopback: MLLP receiver, aiohttp server."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.delivery import Dead, Delivered, HttpDestination, MllpDestination, Retry
from broker.delivery.destinations import http_options, mllp_options
from broker.errors import ConfigError
from broker.net import tcp_nodelay_is_set
from broker.queue import Entry
from tests.delivery.conftest import hl7
from tests.delivery.receiver import AA, CLOSE, Answer, Receiver


def entry(payload: bytes, **kw: Any) -> Entry:
    return Entry(id=1, destination="pacs", payload=payload, **kw)


def mllp(port: int, **options: Any) -> MllpDestination:
    return MllpDestination("pacs", mllp_options("destinations.pacs", {"port": port, **options}))


# -- MLLP ------------------------------------------------------------------------------------


async def test_mllp_aa_on_one_persistent_connection_with_nodelay() -> None:
    async with Receiver() as rx, mllp(rx.port) as dest:
        for n in range(3):
            assert await dest.deliver(entry(hl7(f"C{n}"))) == Delivered("AA")
        assert rx.control_ids() == ["C0", "C1", "C2"]
        assert rx.connections == 1
        sock = dest._clients[0]._writer.get_extra_info("socket")  # type: ignore[union-attr]
        assert tcp_nodelay_is_set(sock)


@pytest.mark.parametrize(
    ("answer", "on_error", "expected"),
    [
        (Answer("CA"), None, Delivered),
        (Answer("AE", text="unknown order"), None, Retry),
        (Answer("AR", text="bad message"), None, Dead),
        (Answer("AE"), "dead", Dead),
        (Answer("AR"), "retry", Retry),
        (Answer("CE"), {"AE": "dead"}, Dead),
        (Answer("CR"), {"AE": "dead"}, Dead),
        (Answer("XX"), None, Retry),
    ],
)
async def test_mllp_ack_codes_follow_on_error(
    answer: Answer, on_error: object, expected: type
) -> None:
    options = {} if on_error is None else {"on_error": on_error}
    async with Receiver(lambda m, seen: answer) as rx, mllp(rx.port, **options) as dest:
        outcome = await dest.deliver(entry(hl7("C1")))
    assert isinstance(outcome, expected), outcome
    if answer.text:
        assert answer.text in outcome.error  # type: ignore[union-attr]


async def test_mllp_control_id_mismatch_is_retried_on_a_fresh_connection() -> None:
    script: Callable[[bytes, int], Answer] = lambda m, seen: (  # noqa: E731
        Answer(control_id="SOMEONE-ELSE") if seen == 0 else AA
    )
    async with Receiver(script) as rx, mllp(rx.port) as dest:
        outcome = await dest.deliver(entry(hl7("C1")))
        assert isinstance(outcome, Retry)
        assert "MSA-2 is 'SOMEONE-ELSE', expected the sent MSH-10 'C1'" in outcome.error
        assert await dest.deliver(entry(hl7("C1"))) == Delivered("AA")
        assert rx.connections == 2


async def test_mllp_garbage_answer_timeout_close_refused() -> None:
    async with Receiver(lambda m, seen: Answer(garbage=True)) as rx, mllp(rx.port) as dest:
        outcome = await dest.deliver(entry(hl7("C1")))
        assert isinstance(outcome, Retry) and "not an HL7 message" in outcome.error
    async with (
        Receiver(lambda m, seen: Answer(delay_s=0.5)) as rx,
        mllp(rx.port, ack_timeout_s=0.1) as dest,
    ):
        outcome = await dest.deliver(entry(hl7("C1")))
        assert isinstance(outcome, Retry) and "no answer within 0.1 s" in outcome.error
    async with Receiver(lambda m, seen: CLOSE) as rx, mllp(rx.port) as dest:
        outcome = await dest.deliver(entry(hl7("C1")))
        assert isinstance(outcome, Retry) and "closed the connection" in outcome.error
    port = rx.port  # now down
    async with mllp(port, connect_timeout_s=1) as dest:
        outcome = await dest.deliver(entry(hl7("C1")))
        assert isinstance(outcome, Retry) and f"127.0.0.1:{port}" in outcome.error


async def test_mllp_reconnects_after_the_receiver_restarts() -> None:
    rx = Receiver()
    await rx.start()
    async with mllp(rx.port) as dest:
        assert isinstance(await dest.deliver(entry(hl7("C1"))), Delivered)
        await rx.stop()
        assert isinstance(await dest.deliver(entry(hl7("C2"))), Retry)
        await rx.start()
        assert isinstance(await dest.deliver(entry(hl7("C2"))), Delivered)
        await rx.stop()
    assert rx.control_ids() == ["C1", "C2"]


def _make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", key, "-out", cert,
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_mllp_over_tls(tmp_path: Path) -> None:
    key, cert = _make_cert(tmp_path, "pacs")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    async with Receiver(ssl_context=server) as rx:
        options = {"port": rx.port, "tls": {"ca": "pacs.pem"}}
        conf = mllp_options("destinations.pacs", options, lambda p: tmp_path / p)
        async with MllpDestination("pacs", conf) as dest:
            assert await dest.deliver(entry(hl7("T1"))) == Delivered("AA")
        untrusted = mllp_options("d", {"port": rx.port, "tls": True})  # system CAs only
        async with MllpDestination("pacs", untrusted) as dest:
            outcome = await dest.deliver(entry(hl7("T2")))
            assert isinstance(outcome, Retry) and "CERTIFICATE_VERIFY_FAILED" in outcome.error
    assert rx.control_ids() == ["T1"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "destinations.pacs.port: found -1; expected a whole number from 1 to 65535"),
        ({"port": 1, "on_error": "ignore"}, "destinations.pacs.on_error: found 'ignore'"),
        ({"port": 1, "ack_timeout_s": "soon"}, "ack_timeout_s: found 'soon'; expected a number"),
        ({"port": 1, "tls": {"cert": "c.pem"}}, "cert and key go together"),
        ({"port": 1, "tls": {"cafile": "x"}}, "tls: unknown key 'cafile'"),
    ],
)
def test_mllp_option_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        mllp_options("destinations.pacs", options)
    assert message in str(info.value)


# -- HTTP ------------------------------------------------------------------------------------


class Peer:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.delay_s = 0.0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, dict(request.headers), await request.read()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="" if status < 300 else "peer says no")


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, str]]:
    p = Peer()
    app = web.Application()
    app.router.add_route("*", "/studies", p.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield p, f"http://127.0.0.1:{port}/studies"
    await runner.cleanup()


def http(url: str, **options: Any) -> HttpDestination:
    return HttpDestination("ehr", http_options("destinations.ehr", {"url": url, **options}))


async def test_http_post_with_headers(peer: tuple[Peer, str]) -> None:
    p, url = peer
    async with http(url, headers={"Authorization": "Bearer t"}) as dest:
        e = entry(b'{"a": 1}', content_type="application/json", headers={"X-Id": "7"})
        assert await dest.deliver(e) == Delivered("200")
    method, headers, body = p.requests[0]
    assert (method, body) == ("POST", b'{"a": 1}')
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer t" and headers["X-Id"] == "7"


async def test_http_put_and_status_classes(peer: tuple[Peer, str]) -> None:
    p, url = peer
    p.statuses = [201, 503, 429, 408, 400, 404, 302]
    async with http(url, method="put") as dest:
        outcomes = [await dest.deliver(entry(b"x")) for _ in range(7)]
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["Delivered", "Retry", "Retry", "Retry", "Dead", "Dead", "Dead"]
    assert {m for m, _, _ in p.requests} == {"PUT"}
    assert outcomes[4] == Dead(f"PUT {url}: HTTP 400: peer says no (expected 2xx)")


async def test_http_timeout_and_refused(peer: tuple[Peer, str]) -> None:
    p, url = peer
    p.delay_s = 0.5
    async with http(url, timeout_s=0.1) as dest:
        outcome = await dest.deliver(entry(b"x"))
        assert isinstance(outcome, Retry) and "no answer within 0.1 s" in outcome.error
    async with http("http://127.0.0.1:1/x", connect_timeout_s=1) as dest:
        outcome = await dest.deliver(entry(b"x"))
        assert isinstance(outcome, Retry) and "127.0.0.1:1" in outcome.error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "destinations.ehr.url: found None; expected a non-empty string"),
        ({"url": "ftp://x"}, "url: found 'ftp://x'; expected an http:// or https:// URL"),
        ({"url": "http://x", "method": "GET"}, "method: found 'GET'; expected POST or PUT"),
        ({"url": "http://x", "headers": {"A": 1}}, "headers: found {'A': 1}"),
    ],
)
def test_http_option_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        http_options("destinations.ehr", options)
    assert message in str(info.value)
