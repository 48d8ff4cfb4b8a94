"""``broker queue …``: queue depth and state per destination, dead letters, replay, pause.

These commands work on the store while a broker serves it: a pause, a replay or a purge is
written to the store, and the running workers honour it at their next look (well under a
second).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from broker.config import Settings
from broker.delivery.worker import describe, entry_label
from broker.ingest.journal import utc_text
from broker.queue import DeliveryQueue, Selection

T = TypeVar("T")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@contextmanager
def open_queue(settings: Settings, *, create: bool = False) -> Iterator[DeliveryQueue]:
    """The delivery queue of a config's store, opened for this command."""
    from broker.storage.factory import stores_for_command

    with stores_for_command(settings, create=create) as stores:
        yield stores.queue


def _run(queue: DeliveryQueue, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one queue call; a queue with connections of its own (Redis) closes them in the
    same event loop, before it ends."""

    async def call() -> T:
        try:
            return await make()
        finally:
            aclose = getattr(queue, "aclose", None)
            if aclose is not None:
                await aclose()

    return asyncio.run(call())


def _age(seconds: float) -> str:
    """12s, 5m03s, 3h04m, 2d03h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02}m"
    return f"{s // 86400}d{s % 86400 // 3600:02}h"


def _known(settings: Settings, queue: DeliveryQueue, destination: str) -> None:
    """Refuse a destination that is neither configured nor in the store (a typo)."""
    if destination in settings.destinations:
        return
    stats = _run(queue, lambda: queue.stats())
    if destination not in stats:
        known = ", ".join(sorted({*settings.destinations, *stats})) or "none"
        raise click.ClickException(
            f"no destination {destination!r} in the config or the store (known: {known})"
        )


def register(
    main: click.Group, load: Callable[[Path | None], Settings], config_option: Decorator
) -> None:
    """Attach the ``queue`` group to the main command (``load(config) -> Settings``)."""

    @main.group()
    def queue() -> None:
        """Delivery queues: depth and state, dead letters, replay, pause (DESIGN.md §2.6)."""

    @queue.command("ls")
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def ls(config: Path | None, as_json: bool) -> None:
        """Depth, oldest age and state of every destination's queue."""
        settings = load(config)
        with open_queue(settings) as q:
            stats = _run(q, lambda: q.stats(sorted(settings.destinations)))
        now = dt.datetime.now(dt.UTC).timestamp()
        if not as_json:
            click.echo(
                f"{'destination':<16} {'type':<8} {'state':<10} {'depth':>7} {'flight':>6} "
                f"{'retry':>6} {'dead':>6} {'oldest':>8}  detail"
            )
        for name, s in stats.items():
            state, since, attempts = describe(s, None, now)
            conf = settings.destinations.get(name)
            kind = conf.type if conf is not None else "(gone)"
            detail = ""
            if state == "retrying":
                detail = f"since {utc_text(since)}, {attempts} attempts"
            elif state == "paused":
                detail = f"since {utc_text(since)}"
            if as_json:
                row = {
                    "destination": name,
                    "type": kind,
                    "state": state,
                    "since": utc_text(since),
                    "attempts": attempts,
                    "depth": s.depth,
                    "ready": s.ready,
                    "in_flight": s.in_flight,
                    "retry": s.retry,
                    "dead": s.dead,
                    "oldest_age_s": round(s.oldest_age(now), 1),
                }
                click.echo(json.dumps(row))
            else:
                click.echo(
                    f"{name:<16} {kind:<8} {state:<10} {s.depth:>7} {s.in_flight:>6} "
                    f"{s.retry:>6} {s.dead:>6} {_age(s.oldest_age(now)):>8}  {detail}"
                )

    @queue.command("dead")
    @config_option
    @click.argument("destination", required=False)
    @click.option("--limit", default=100, show_default=True)
    @click.option("--show-phi", is_flag=True, help="Show ordering keys (patient IDs) and payloads.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def dead(
        config: Path | None, destination: str | None, limit: int, show_phi: bool, as_json: bool
    ) -> None:
        """Dead letters (of one destination, or all), oldest first, with their last error."""
        settings = load(config)
        with open_queue(settings) as q:
            entries = _run(q, lambda: q.dead(destination, limit=limit))
        for e in entries:
            key = e.ordering_key if show_phi else ("<redacted>" if e.ordering_key else "")
            if as_json:
                row: dict[str, Any] = {
                    "id": e.id,
                    "destination": e.destination,
                    "message": entry_label(e),
                    "ordering_key": key,
                    "attempts": e.attempts,
                    "queued_at": utc_text(e.created_at),
                    "dead_at": utc_text(e.finished_at),
                    "last_error": e.last_error,
                    "journal_id": e.journal_id,
                }
                if show_phi:
                    row["payload"] = e.payload.decode("latin-1")
                click.echo(json.dumps(row, ensure_ascii=False))
            else:
                click.echo(
                    f"{e.id:>8} {e.destination:<12} {utc_text(e.finished_at)} {e.attempts:>3}x "
                    f"{entry_label(e):<24} {key:<12} {e.last_error}"
                )
                if show_phi:
                    click.echo("    " + e.payload.decode("latin-1").replace("\r", "\n    "))
        if not entries and not as_json:
            click.echo("no dead letters")

    def selection(
        ids: tuple[int, ...], key: str | None, error: str | None, every: bool
    ) -> Selection:
        if not (ids or key or error or every):
            raise click.UsageError(
                "say which dead letters: --id N (repeatable), --key, --error or --all"
            )
        if every and (ids or key or error):
            raise click.UsageError(
                "--all selects every dead letter; do not combine it with --id, --key or --error"
            )
        return Selection(ids=ids or None, ordering_key=key, error_contains=error)

    filters = [
        click.option("--id", "ids", type=int, multiple=True, help="A dead letter id (repeatable)."),
        click.option("--key", help="Only this ordering key (e.g. a patient ID)."),
        click.option("--error", help="Only dead letters whose last error contains this text."),
        click.option("--all", "every", is_flag=True, help="Every dead letter of DESTINATION."),
    ]  # fmt: skip

    def with_filters(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(filters):
            fn = option(fn)
        return fn

    @queue.command("retry")
    @config_option
    @click.argument("destination")
    @with_filters
    def retry(
        config: Path | None,
        destination: str,
        ids: tuple[int, ...],
        key: str | None,
        error: str | None,
        every: bool,
    ) -> None:
        """Replay dead letters: back at the end of DESTINATION's queue, attempts reset."""
        settings = load(config)
        chosen = selection(ids, key, error, every)
        with open_queue(settings) as q:
            _known(settings, q, destination)
            new_ids = _run(q, lambda: q.replay(destination, chosen))
        click.echo(f"{len(new_ids)} dead letter(s) of {destination} queued again")
        if new_ids:
            click.echo("new ids: " + " ".join(str(i) for i in new_ids))

    @queue.command("purge")
    @config_option
    @click.argument("destination")
    @click.option("--dead", "dead_only", is_flag=True, required=True, help="Purge dead letters.")
    @with_filters
    def purge(
        config: Path | None,
        destination: str,
        dead_only: bool,
        ids: tuple[int, ...],
        key: str | None,
        error: str | None,
        every: bool,
    ) -> None:
        """Delete dead letters of DESTINATION (all of them unless --id/--key/--error)."""
        settings = load(config)
        chosen = Selection() if not (ids or key or error) else selection(ids, key, error, every)
        with open_queue(settings) as q:
            _known(settings, q, destination)
            removed = _run(q, lambda: q.purge_dead(destination, chosen))
        click.echo(f"{removed} dead letter(s) of {destination} deleted")

    def pause_command(name: str, act: Callable[[DeliveryQueue, str], Awaitable[None]]) -> None:
        verb = "paused" if name == "pause" else "resumed"

        @queue.command(name)
        @config_option
        @click.argument("destination")
        def command(config: Path | None, destination: str) -> None:
            settings = load(config)
            with open_queue(settings, create=destination in settings.destinations) as q:
                _known(settings, q, destination)
                _run(q, lambda: _awaited(act(q, destination)))
            click.echo(f"{destination} {verb}")

        command.help = (
            "Stop delivering to DESTINATION (kept across restarts; messages keep queueing)."
            if name == "pause"
            else "Deliver to DESTINATION again after a pause."
        )

    pause_command("pause", lambda q, d: q.pause(d))
    pause_command("resume", lambda q, d: q.resume(d))


async def _awaited(value: Awaitable[T]) -> T:
    return await value


__all__ = ["open_queue", "register"]
