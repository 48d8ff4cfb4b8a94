"""``broker events tail``: watch the events a ``bus`` destination publishes, as JSON lines.

It connects like the destination does (same URL, credentials, TLS), declares the exchange
(durable, the configured type: the same declaration the destination makes) and an exclusive,
auto-deleted queue of its own bound to it, one binding per ``--type`` (routing keys; AMQP topic
patterns such as ``order.*`` work on a topic exchange; default ``#``, everything). The queue
disappears when the command ends, so watching never holds back or steals the consumers'
messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import kombu

from broker.config import Settings
from broker.delivery.bus import BusOptions, bus_options, classify, open_connection
from broker.errors import ConfigError

#: kombu is not annotated (mypy --strict refuses calls into it): used through ``Any``.
_kombu: Any = kombu

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: How long one wait for a message lasts before checking again (Ctrl-C is seen at once).
POLL_S = 1.0


def _options(settings: Settings, destination: str) -> BusOptions:
    conf = settings.destinations.get(destination)
    if conf is None:
        buses = [n for n, d in settings.destinations.items() if d.type == "bus"]
        hint = f"bus destinations: {', '.join(buses)}" if buses else "no bus destination"
        raise click.ClickException(f"destination {destination!r} is not configured ({hint})")
    if conf.type != "bus":
        raise click.ClickException(
            f"destination {destination!r} is of type {conf.type}; expected a bus destination"
        )
    keys: dict[str, Any] = conf.model_dump(exclude={"type"}, exclude_none=True)
    try:
        return bus_options(f"destinations.{destination}", keys, settings.resolve)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


#: Event keys (and keys of its ``changes``) that carry patient data (docs/EVENTS.md).
PHI_KEYS = frozenset(
    {
        "patient_id",
        "issuer_of_patient_id",
        "retired_patient_id",
        "retired_issuer_of_patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "other_patient_ids",
        "source_message",
    }
)
_REDACTED = "<redacted>"


def redact(event: Any) -> Any:
    """The event with patient values replaced (the command's default, like ``journal``)."""
    if not isinstance(event, dict):
        return _REDACTED
    out: dict[str, Any] = {k: (_REDACTED if k in PHI_KEYS and v else v) for k, v in event.items()}
    changes = out.get("changes")
    if isinstance(changes, dict):
        out["changes"] = {k: (_REDACTED if k in PHI_KEYS and v else v) for k, v in changes.items()}
    return out


def _line(body: Any, show_phi: bool = True) -> str:
    """The event as one compact JSON line (a body that is not JSON: as a JSON string)."""
    raw = body if isinstance(body, bytes) else str(body).encode()
    try:
        event = json.loads(raw)
    except ValueError:
        text: Any = raw.decode("utf-8", "replace")
        return json.dumps(text if show_phi else _REDACTED, ensure_ascii=False)
    return json.dumps(event if show_phi else redact(event), ensure_ascii=False,
                      separators=(",", ":"))  # fmt: skip


def tail(
    options: BusOptions, types: tuple[str, ...], count: int = 0, *, show_phi: bool = True
) -> int:
    """Print events until Ctrl-C (or ``count`` of them); returns how many were printed.
    Raises :class:`click.ClickException` when the bus cannot be reached."""
    keys = types or ("#",)
    exchange = _kombu.Exchange(options.exchange, type=options.exchange_type, durable=True)
    name = f"broker.events.tail.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
    queue = _kombu.Queue(
        name,
        bindings=[_kombu.binding(exchange, routing_key=key) for key in keys],
        exclusive=True,
        auto_delete=True,
        durable=False,
    )
    printed = 0

    def on_message(message: Any) -> None:
        nonlocal printed
        click.echo(_line(message.body, show_phi))
        sys.stdout.flush()
        printed += 1

    connection = open_connection(options)
    try:
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        exchange(channel).declare()
        with _kombu.Consumer(channel, queues=[queue], on_message=on_message, no_ack=True):
            click.echo(
                f"listening on {options.peer}, exchange {options.exchange!r}, "
                f"routing keys {', '.join(keys)} (Ctrl-C to stop)",
                err=True,
            )
            while not count or printed < count:
                try:
                    connection.drain_events(timeout=POLL_S)
                except TimeoutError:
                    continue
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        _, cause = classify(exc, connecting=False)
        raise click.ClickException(
            options.scrub(f"bus at {options.peer}, exchange {options.exchange!r}: {cause}")
        ) from None
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone already
            connection.release()
    return printed


def register(
    main: click.Group, load: Callable[[Path | None], Settings], config_option: Decorator
) -> None:
    """Attach the ``events`` group to the main command (``load(config) -> Settings``)."""

    @main.group()
    def events() -> None:
        """Events published to the message bus (`type: bus` destinations)."""

    @events.command("tail")
    @config_option
    @click.option(
        "--destination",
        "-d",
        default="events",
        show_default=True,
        help="The bus destination to watch.",
    )
    @click.option(
        "--type",
        "-t",
        "types",
        multiple=True,
        help="Event type (routing key) to show; repeatable; topic patterns such as "
        "'order.*' work. Default: every event ('#').",
    )
    @click.option(
        "--count", "-n", default=0, show_default=True, help="Stop after this many (0: never)."
    )
    @click.option("--show-phi", is_flag=True, help="Print patient values (redacted otherwise).")
    def tail_command(
        config: Path | None, destination: str, types: tuple[str, ...], count: int, show_phi: bool
    ) -> None:
        """Print each event as one JSON line as it arrives, until Ctrl-C; patient values are
        redacted unless --show-phi."""
        settings = load(config)
        tail(_options(settings, destination), types, count, show_phi=show_phi)


__all__ = ["register", "tail"]
