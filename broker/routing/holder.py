"""Hot reload: hold the running engine, validate a new set of files, swap it in atomically.

Readers call :meth:`RouterHolder.route`; the engine reference is swapped with one attribute
assignment (atomic under the GIL), so a message is routed wholly by the old or the new set.
An invalid set is refused, its errors logged, and the old set keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from broker.ingest.decision import RouteDecision
from broker.routing.engine import RouteEngine
from broker.routing.loader import load_all, load_definitions

if TYPE_CHECKING:
    from broker.hl7.message import Message

log = logging.getLogger(__name__)

#: How often :meth:`RouterHolder.watch` polls file mtimes (seconds).
DEFAULT_POLL_INTERVAL = 2.0


class RouterHolder:
    """A :class:`~broker.ingest.decision.Router` whose rules can be reloaded while running.

    The constructor loads the set and raises DefinitionsError when it is invalid (a broker
    must not start on broken routes).
    """

    def __init__(
        self,
        routes_dir: Path | str,
        mappings_dir: Path | str,
        destinations: Mapping[str, str] | Collection[str] = (),
    ) -> None:
        """``destinations``: name → type (see :class:`RouteEngine`)."""
        self.routes_dir = Path(routes_dir)
        self.mappings_dir = Path(mappings_dir)
        self.destinations: Mapping[str, str] | Collection[str] = (
            dict(destinations) if isinstance(destinations, Mapping) else frozenset(destinations)
        )
        self.engine = RouteEngine(
            load_definitions(self.routes_dir, self.mappings_dir), self.destinations
        )
        self.last_errors: list[str] = []
        self._signature = self._scan()

    def route(self, message: Message) -> RouteDecision:
        return self.engine.route(message)

    def reload(self) -> bool:
        """Validate the files now on disk and swap them in; False (old set kept) when invalid."""
        self._signature = self._scan()
        defs, errors = load_all(self.routes_dir, self.mappings_dir)
        if defs is None:
            self.last_errors = errors
            log.error(
                "routes/mappings reload refused, %d error(s); the previous set keeps running:\n%s",
                len(errors),
                "\n".join(errors),
            )
            return False
        self.engine = RouteEngine(defs, self.destinations)
        self.last_errors = []
        log.info(
            "routes/mappings reloaded: %d routes, %d mappings", len(defs.routes), len(defs.mappings)
        )
        return True

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        out: list[tuple[str, int, int]] = []
        for d in (self.routes_dir, self.mappings_dir):
            if not d.is_dir():
                continue
            for p in sorted(d.rglob("*")):
                if p.suffix in (".yaml", ".yml", ".csv") and p.is_file():
                    st = p.stat()
                    out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def check_for_changes(self) -> bool | None:
        """Reload if any file changed since the last load; None when nothing changed."""
        sig = self._scan()
        if sig == self._signature:
            return None
        return self.reload()

    async def watch(self, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Poll the directories until cancelled (run as a task by the app)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check_for_changes)
            except Exception:
                log.exception("route watcher failed; will retry")
