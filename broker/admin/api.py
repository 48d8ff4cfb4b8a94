"""The admin HTTP API beyond /health and /metrics (DESIGN §3 ``admin/``): queues, dead
letters, inbound messages, the worklist and the reconciliation sweep, as JSON.

What the command line shows, for dashboards and scripts on the broker's host. Patient data
never leaves by default; ``show_phi=1`` is honoured only when the config allows it
(``http.show_phi``), since the listener has no authentication of its own (keep it internal).

| method | path | |
|---|---|---|
| GET | /queues | every destination: state, depth, in flight, retry, dead, oldest age |
| GET | /queues/{destination}/dead | dead letters with their last error (``limit``) |
| POST | /queues/{destination}/retry | replay dead letters: ``id`` (repeatable) or ``all=1`` |
| POST | /queues/{destination}/pause, /resume | stop and restart a destination's delivery |
| GET | /messages | recent inbound messages (``limit``, ``status``) |
| GET | /messages/{id} | one message: metadata, route, actions, errors |
| GET | /worklist | worklist items (``limit``, ``all=1`` with history, ``accession``) |
| GET | /worklist/{id} | one item as DICOM JSON with its order, status and history |
| GET, POST | /reconcile/sweep | the sweep (``since``, ``until``); POST also queues corrections |
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from broker.delivery.worker import entry_label
from broker.ingest.journal import utc_text
from broker.queue import Selection
from broker.reconcile.service import SweepError, run_sweep
from broker.worklist.summary import redact, summary_row

if TYPE_CHECKING:
    from broker.admin.http import Endpoint
    from broker.config import Settings
    from broker.delivery.worker import DeliveryService
    from broker.ingest.journal import Journal
    from broker.queue import DeliveryQueue, Entry
    from broker.reconcile.service import SweepStore

#: Largest ``limit`` a list endpoint takes.
MAX_LIMIT = 1000


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class _BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(_error(400, f"limit: found {raw!r}, expected a number")) from None
    if not 1 <= value <= MAX_LIMIT:
        raise _BadRequest(_error(400, f"limit: found {value}, expected 1 to {MAX_LIMIT}"))
    return value


class AdminApi:
    """The endpoints of the table above, over the running broker's parts."""

    def __init__(
        self,
        settings: Settings,
        stores: SweepStore,
        journal: Journal,
        queue: DeliveryQueue,
        worklist: Any,  # SqliteWorklistStore | RedisWorklistStore (the same reads)
        delivery: DeliveryService | None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.journal = journal
        self.queue = queue
        self.worklist = worklist
        self.delivery = delivery

    def endpoints(self) -> list[Endpoint]:
        handlers = [
            ("GET", "/queues", self.queues),
            ("GET", "/queues/{destination}/dead", self.dead),
            ("POST", "/queues/{destination}/retry", self.retry),
            ("POST", "/queues/{destination}/pause", self.pause),
            ("POST", "/queues/{destination}/resume", self.resume),
            ("GET", "/messages", self.messages),
            ("GET", "/messages/{id}", self.message),
            ("GET", "/worklist", self.items),
            ("GET", "/worklist/{id}", self.item),
            ("GET", "/reconcile/sweep", self.sweep),
            ("POST", "/reconcile/sweep", self.sweep),
        ]
        return [(method, path, self._guarded(fn)) for method, path, fn in handlers]

    def _guarded(self, fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                response: web.StreamResponse = await fn(request)
                return response
            except _BadRequest as bad:
                return bad.response

        return handler

    def _show_phi(self, request: web.Request) -> bool:
        """Whether patient data may be shown: asked (``show_phi=1``) and allowed by config."""
        if request.query.get("show_phi") != "1":
            return False
        if not self.settings.http.show_phi:
            raise _BadRequest(
                _error(403, "show_phi is off for the admin API (config: http.show_phi)")
            )
        return True

    def _known(self, destination: str) -> None:
        if destination not in self.settings.destinations:
            raise _BadRequest(_error(404, f"destination {destination!r} is not configured"))

    # -- queues ------------------------------------------------------------------------------

    async def queues(self, request: web.Request) -> web.Response:
        if self.delivery is None:
            return _error(503, "delivery is not running")
        now = self.delivery.clock()
        rows = []
        for name, s in (await self.delivery.stats()).items():
            rows.append(
                {
                    "destination": name,
                    "type": s.type,
                    "state": s.state,
                    "since": utc_text(s.since),
                    "attempts": s.attempts,
                    "depth": s.depth,
                    "in_flight": s.in_flight,
                    "dead": s.dead,
                    "oldest_age_s": round(s.oldest_age_s, 1) if s.depth else 0.0,
                    "delivered": s.delivered,
                    "retried": s.retried,
                    "as_of": utc_text(now),
                }
            )
        return web.json_response(rows)

    async def dead(self, request: web.Request) -> web.Response:
        destination = request.match_info["destination"]
        self._known(destination)
        show_phi = self._show_phi(request)
        entries = await self.queue.dead(destination, limit=_limit(request, 100))
        return web.json_response([self._dead_row(e, show_phi) for e in entries])

    @staticmethod
    def _dead_row(e: Entry, show_phi: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": e.id,
            "message": entry_label(e),
            "ordering_key": e.ordering_key
            if show_phi
            else ("<redacted>" if e.ordering_key else ""),
            "attempts": e.attempts,
            "queued_at": utc_text(e.created_at),
            "dead_at": utc_text(e.finished_at),
            "last_error": e.last_error,  # as `broker queue dead` shows it
            "journal_id": e.journal_id,
        }
        if show_phi:
            row["payload"] = e.payload.decode("latin-1")
        return row

    async def retry(self, request: web.Request) -> web.Response:
        destination = request.match_info["destination"]
        self._known(destination)
        ids = request.query.getall("id", [])
        every = request.query.get("all") == "1"
        if bool(ids) == every:
            return _error(400, "say which dead letters: id=N (repeatable) or all=1, not both")
        try:
            selection = Selection(ids=tuple(int(i) for i in ids)) if ids else Selection()
        except ValueError:
            return _error(400, f"id: found {ids}, expected numbers")
        requeued = await self.queue.replay(destination, selection)
        if self.delivery is not None:
            self.delivery.notify(destination)
        return web.json_response({"destination": destination, "requeued": requeued})

    async def pause(self, request: web.Request) -> web.Response:
        destination = request.match_info["destination"]
        self._known(destination)
        await self.queue.pause(destination)
        return web.json_response({"destination": destination, "paused": True})

    async def resume(self, request: web.Request) -> web.Response:
        destination = request.match_info["destination"]
        self._known(destination)
        await self.queue.resume(destination)
        if self.delivery is not None:
            self.delivery.notify(destination)
        return web.json_response({"destination": destination, "paused": False})

    # -- messages and worklist ---------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.Response:
        limit = _limit(request, 50)
        status = request.query.get("status") or None
        entries = await asyncio.to_thread(self.journal.recent, limit, status=status)
        return web.json_response([e.summary() for e in entries])

    async def message(self, request: web.Request) -> web.Response:
        try:
            journal_id = int(request.match_info["id"])
        except ValueError:
            return _error(400, "id: expected a number")
        show_phi = self._show_phi(request)
        entry = await asyncio.to_thread(self.journal.get, journal_id)
        if entry is None:
            return _error(404, f"no journal entry {journal_id}")
        body = entry.details(show_phi=show_phi)
        return web.json_response(body)

    async def items(self, request: web.Request) -> web.Response:
        limit = _limit(request, 50)
        show_phi = self._show_phi(request)
        accession = request.query.get("accession")
        every = request.query.get("all") == "1"

        def read() -> list[dict[str, Any]]:
            store = self.worklist
            rows = (
                store.items_by_id(store.find_ids(accession=accession))
                if accession
                else store.items(active_only=not every)
            )
            out = []
            for item_id, item in rows:
                out.append(summary_row(item_id, item, show_phi=show_phi))
                if len(out) >= limit:
                    break
            return out

        return web.json_response(await asyncio.to_thread(read))

    async def item(self, request: web.Request) -> web.Response:
        try:
            item_id = int(request.match_info["id"])
        except ValueError:
            return _error(400, "id: expected a number")
        show_phi = self._show_phi(request)
        found = await asyncio.to_thread(self.worklist.get, item_id)
        if found is None:
            return _error(404, f"no worklist item {item_id}")
        if not show_phi:
            found["item"] = redact(found["item"])
            found["patient_key"] = "<redacted>"
        return web.json_response(found)

    # -- reconciliation ----------------------------------------------------------------------

    async def sweep(self, request: web.Request) -> web.Response:
        """GET: the mismatches between the PACS's studies and their orders; POST: also queue
        the corrections (``broker reconcile sweep --apply``)."""
        since = request.query.get("since", "")
        if not since:
            return _error(400, "since=YYYY-MM-DD is required")
        show_phi = self._show_phi(request)
        apply = request.method == "POST"
        try:
            report = await asyncio.to_thread(
                run_sweep, self.settings, self.stores, since, request.query.get("until", ""),
                apply=apply,
            )  # fmt: skip
        except SweepError as exc:
            return _error(502 if "PACS" in str(exc) else 400, str(exc))
        if apply and report.applied and self.delivery is not None:
            self.delivery.notify(self.settings.reconcile.destination)
        return web.json_response(report.as_json(show_phi=show_phi))


__all__ = ["MAX_LIMIT", "AdminApi"]
