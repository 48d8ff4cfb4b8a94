"""The admin HTTP listener: ``GET /health`` and ``GET /metrics`` (DESIGN.md §6, contract)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from broker.admin.metrics import Metrics
from broker.net import set_tcp_nodelay

log = logging.getLogger(__name__)

HealthCheck = Callable[[], dict[str, Any]]
#: (method, path, handler): more endpoints, wired by the app (e.g. /reconcile/sweep)
Endpoint = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class AdminServer:
    """Serves health and metrics; an async context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: HealthCheck,
        refresh: Callable[[], None] | None = None,
        endpoints: Sequence[Endpoint] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.refresh = refresh
        self.endpoints = list(endpoints)
        self._runner: web.AppRunner | None = None
        self.bound_port = port

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[_nodelay])
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        for method, path, handler in self.endpoints:
            app.router.add_route(method, path, handler)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        status = self.health()
        code = 200 if status.get("status") == "ok" else 503
        return web.json_response(status, status=code)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            self.refresh()
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound socket
        if server is not None:
            for sock in server.sockets:  # type: ignore[attr-defined]
                self.bound_port = sock.getsockname()[1]
        log.info("admin http: listening on %s:%d", self.host, self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@web.middleware
async def _nodelay(request: web.Request, handler: Any) -> web.StreamResponse:
    # Set on every connection's socket (idempotent): small responses otherwise wait ~40 ms.
    if request.transport is not None:
        set_tcp_nodelay(request.transport.get_extra_info("socket"))
    response: web.StreamResponse = await handler(request)
    return response
