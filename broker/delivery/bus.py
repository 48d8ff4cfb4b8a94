"""The ``bus`` destination: publish queued JSON events to a message bus through kombu.

Events (order, procedure, patient and result changes, DESIGN.md §6a) go to an exchange that
consumers (AI orchestrators, dashboards) bind their queues to. Transports: AMQP 0-9-1 to
RabbitMQ (``amqp://``, ``amqps://``; kombu's py-amqp transport) and kombu's Redis transport
(``redis://``, ``rediss://``).

Each queued entry is one event, a UTF-8 JSON object with at least ``type`` and ``id``. It is
published as is (content type ``application/json``, persistent, message id = the event's
``id``, AMQP ``type`` = the event's ``type``) with the routing key ``headers["routing_key"]``
or else the event's ``type``. On AMQP an entry counts as delivered only when the broker
confirmed it (publisher confirms, a RabbitMQ extension of AMQP 0-9-1: ``confirm.select``,
then ``basic.ack``/``basic.nack`` per delivery tag). On Redis it is delivered when the LPUSH
to every bound queue returned (as durable as the Redis server's persistence makes it).

kombu is blocking: every destination owns one thread (a single-thread executor) that holds
its connection, channel and producer; the event loop only hands it batches. A run of entries
(:meth:`BusDestination.deliver_many`) is published back to back and its confirms awaited
together, so a run costs about one round trip instead of one per event.

Outcomes: a payload that is not such a JSON object is ``Dead`` (sending it again will not
help); everything else is ``Retry`` with the cause: connection refused (``network="connect"``),
connection lost (``"lost"``), exchange of another type (406), missing permission (403), nack,
no confirm in time. After any failure the connection is dropped and the next attempt opens a
fresh one (a closed channel cannot be reused). Passwords never appear in an error or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import select
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import kombu

from broker.delivery.destinations import (
    MAX_ERROR_TEXT,
    Closing,
    Dead,
    Delivered,
    Network,
    OptionReader,
    Outcome,
    Retry,
    TlsOptions,
    tcp_reachable,
    tls_options,
)
from broker.errors import ConfigError
from broker.hl7.client import DEFAULT_CONNECT_TIMEOUT_S
from broker.net import REDACTED, redact_url
from broker.queue.base import Entry

#: kombu is not annotated (mypy --strict refuses calls into it): used through ``Any``.
_kombu: Any = kombu

#: How long the broker may take to confirm a published run before it is retried.
DEFAULT_CONFIRM_TIMEOUT_S = 30.0
#: The exchange events go to unless the config names another.
DEFAULT_EXCHANGE = "broker.events"
#: The exchange types of AMQP 0-9-1, which kombu's Redis transport emulates too.
EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")
#: URL scheme → (kombu transport, default port, TLS).
SCHEMES: Mapping[str, tuple[str, int, bool]] = {
    "amqp": ("pyamqp", 5672, False),
    "amqps": ("pyamqp", 5671, True),
    "redis": ("redis", 6379, False),
    "rediss": ("redis", 6379, True),
}
#: How long :meth:`BusDestination.aclose` waits for the thread to close the connection.
CLOSE_TIMEOUT_S = 5.0
#: AMQP reply code 320 CONNECTION_FORCED: the broker is shutting down (a lost connection).
CONNECTION_FORCED = 320


@dataclass(frozen=True, slots=True)
class BusOptions:
    """``type: bus`` keys, the URL already taken apart (credentials from ``url`` or the
    ``username``/``password`` keys, e.g. ``BROKER__DESTINATIONS__EVENTS__PASSWORD``)."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    #: AMQP virtual host, or the Redis database number.
    vhost: str = "/"
    exchange: str = DEFAULT_EXCHANGE
    exchange_type: str = "topic"
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S
    tls: TlsOptions | None = None

    @property
    def transport(self) -> str:
        return SCHEMES[self.scheme][0]

    @property
    def confirms(self) -> bool:
        """Whether the transport has publisher confirms (AMQP; not kombu's Redis)."""
        return self.transport == "pyamqp"

    @property
    def peer(self) -> str:
        """The URL with the password redacted (for errors and logs)."""
        user = quote(self.username, safe="")
        auth = f"{user}:{REDACTED}@" if self.password else (f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.confirms:
            path = f"/{self.vhost}"  # the Redis database
        else:  # kombu's spelling: "//" is vhost "/"
            path = "//" if self.vhost == "/" else "/" + quote(self.vhost, safe="")
        return f"{self.scheme}://{auth}{host}:{self.port}{path}"

    def scrub(self, text: str) -> str:
        """``text`` without the password (a library may quote a URL or a login)."""
        for secret in {self.password, quote(self.password, safe="")}:
            if len(secret) >= 3:  # shorter: replacing it would garble every word, reveal nothing
                text = text.replace(secret, REDACTED)
        return text


def bus_options(
    where: str, data: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> BusOptions:
    """Read ``type: bus`` keys; raises :class:`ConfigError` naming the bad key (a URL is
    shown with its password redacted)."""
    r = OptionReader(where, data)
    raw = data.get("url")
    expected = "amqp://USER:PASSWORD@HOST:5672/VHOST, amqps://… or redis://[:PASSWORD@]HOST:6379/DB"
    if not isinstance(raw, str) or not raw:
        shown = repr(redact_url(raw)) if isinstance(raw, str) else repr(raw)
        raise ConfigError(f"{where}.url: found {shown}; expected {expected}")

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{where}.url: found {redact_url(raw)!r}: {reason}; expected {expected}")

    try:
        parts = urlsplit(raw)
        port_value = parts.port
    except ValueError as exc:  # a port that is not a number, a broken IPv6 address
        raise bad(str(exc)) from None
    if parts.scheme not in SCHEMES:
        raise bad(f"unknown scheme {parts.scheme!r}")
    if not parts.hostname:
        raise bad("no host")
    if parts.query or parts.fragment:
        raise bad("query and fragment are not supported (use the destination's keys)")
    transport, default_port, tls_on = SCHEMES[parts.scheme]
    path = parts.path
    if transport == "pyamqp":
        # kombu's reading: "amqp://h//" and "amqp://h" are vhost "/", "amqp://h/x" is "x".
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
    else:
        vhost = path.strip("/") or "0"
        if not vhost.isdigit():
            raise bad(f"Redis database {vhost!r} is not a number")
    username = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if "username" in data:
        username = r.text("username") if data.get("username") else ""
    if "password" in data:
        secret = data.get("password")
        if secret is not None and not isinstance(secret, str):
            # never repeat the value: it is a secret
            raise ConfigError(f"{where}.password: expected a string (value not shown)")
        password = secret or ""
    exchange = r.text("exchange", DEFAULT_EXCHANGE)
    exchange_type = data.get("exchange_type", "topic")
    if exchange_type not in EXCHANGE_TYPES:
        raise r._fail("exchange_type", exchange_type, " or ".join(EXCHANGE_TYPES))
    tls = tls_options(r, resolve)
    if tls is not None and not tls_on:
        raise ConfigError(
            f"{where}.tls is set but url is {parts.scheme}://, which does not use TLS; "
            f"use {parts.scheme}s:// or remove tls"
        )
    if tls_on and tls is None:
        tls = TlsOptions()  # the system's CAs, host name checked
    if tls is not None:
        tls.context(where)  # a missing or broken certificate file: refused now, not at send
    return BusOptions(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port_value or default_port,
        username=username,
        password=password,
        vhost=vhost,
        exchange=exchange,
        exchange_type=str(exchange_type),
        connect_timeout_s=r.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, 0.001),
        confirm_timeout_s=r.number("confirm_timeout_s", DEFAULT_CONFIRM_TIMEOUT_S, 0.001),
        tls=tls,
    )


def open_connection(options: BusOptions, **transport_options: Any) -> Any:
    """A kombu :class:`Connection` for the options (not connected yet). The URL is taken
    apart here so that the ``username``/``password`` keys win over the URL's. py-amqp and
    redis-py set TCP_NODELAY on their sockets themselves (without it a confirm waits for a
    delayed ACK, ~40 ms)."""
    transport_options.setdefault("confirm_publish", False)  # confirms are ours (batched)
    if options.transport == "redis":
        transport_options.pop("confirm_publish")
        transport_options.setdefault("socket_connect_timeout", options.connect_timeout_s)
        transport_options.setdefault("socket_timeout", options.confirm_timeout_s)
    else:
        # a write to a broker that stopped reading (resource alarm) fails instead of hanging
        transport_options.setdefault("write_timeout", options.confirm_timeout_s)
    return _kombu.Connection(
        hostname=options.host,
        port=options.port,
        userid=options.username or None,
        password=options.password or None,
        virtual_host=options.vhost,
        transport=options.transport,
        ssl=_ssl_options(options) or False,
        connect_timeout=options.connect_timeout_s,
        transport_options=transport_options,
    )


def _ssl_options(options: BusOptions) -> dict[str, Any] | None:
    tls = options.tls
    if tls is None:
        return None
    files: dict[str, Any] = {
        "ca_certs": str(tls.ca) if tls.ca else None,
        "certfile": str(tls.cert) if tls.cert else None,
        "keyfile": str(tls.key) if tls.key else None,
        "cert_reqs": ssl.CERT_REQUIRED,
    }
    if options.transport == "redis":
        out = {f"ssl_{key}": value for key, value in files.items()}
        out["ssl_check_hostname"] = tls.check_hostname
        return out
    if tls.check_hostname:
        # py-amqp checks the name only when server_hostname is given (and then sends SNI)
        files["server_hostname"] = options.host
    return files


def event_header(payload: bytes) -> tuple[str, str]:
    """(type, id) of an event; raises ValueError saying what is wrong (never its content)."""
    try:
        # decoded here: json.loads(bytes) would also take UTF-16 and UTF-32 (RFC 8259 §8.1)
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"the payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the payload is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the payload is a JSON {type(data).__name__}, not an object")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError('the event has no "type" (a non-empty string)')
    ident = data.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise ValueError('the event has no "id" (a string or a number)')
    return kind, str(ident)


@dataclass(frozen=True, slots=True)
class _Event:
    """One event ready to publish."""

    body: bytes
    routing_key: str
    message_id: str
    kind: str
    headers: Mapping[str, str]


@dataclass(slots=True)
class _Failure:
    """Why a publish failed, for a ``Retry``."""

    error: str
    network: Network = ""


class _Link:
    """The blocking side: one kombu connection, channel and producer. Used only from the
    destination's own thread (kombu objects are not thread-safe)."""

    def __init__(self, name: str, options: BusOptions) -> None:
        self.name = name
        self.options = options
        self.connection: Any = None  # kombu.Connection
        self.amqp: Any = None  # the py-amqp connection under kombu's (AMQP only)
        self.channel: Any = None
        self.producer: Any = None  # kombu.Producer
        self.exchange = _kombu.Exchange(
            options.exchange, type=options.exchange_type, durable=True, delivery_mode=2
        )
        # Publisher confirms of the run being published: delivery tag → True (ack),
        # False (nack), None (not yet). Tags count publishes on the channel from 1 (AMQP
        # 0-9-1 confirms, RabbitMQ extension).
        self._next_tag = 1
        self._tags: dict[int, bool | None] = {}
        self._waiting = 0
        self._blocked = ""  # connection.blocked reason (resource alarm), "" when not

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, open a channel (confirm mode on AMQP) and declare the exchange."""
        options = self.options
        extra: dict[str, Any] = {}
        if options.confirms:
            extra = {"on_blocked": self._on_blocked, "on_unblocked": self._on_unblocked}
        connection = open_connection(options, **extra)
        self.connection = connection
        # ensure_connection(max_retries=0): one attempt (connect() would retry after 2 s)
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        self.channel = channel
        if options.confirms:
            self.amqp = connection.connection
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            self._next_tag = 1
        self.exchange(channel).declare()
        self.producer = _kombu.Producer(channel, exchange=self.exchange, auto_declare=False)

    def close(self, graceful: bool = False) -> None:
        """Drop the connection (the next publish opens a fresh one): after a failure at once
        (the peer may be gone); ``graceful``: with AMQP's close handshake, within
        ``CLOSE_TIMEOUT_S`` (else RabbitMQ logs each client's shutdown as a lost connection)."""
        connection, sock = self.connection, self._socket()
        self.connection = self.amqp = self.channel = self.producer = None
        self._tags.clear()
        self._waiting = 0
        self._blocked = ""
        if connection is None:
            return
        with contextlib.suppress(Exception):
            if graceful:
                if sock is not None:
                    sock.settimeout(CLOSE_TIMEOUT_S / 2)  # bounds the wait for close-ok
                connection.release()
                return
        with contextlib.suppress(Exception):
            connection.collect()

    def _socket(self) -> Any:
        """The AMQP connection's socket, None when it is closed. (``amqp.sock`` of a closed
        connection would reconnect it, with a deprecation warning.)"""
        if self.amqp is None or not self.amqp.connected:
            return None
        return self.amqp.sock

    def _alive(self) -> bool:
        """False when the broker closed an idle connection meanwhile (a restart sends
        connection.close, a crash an EOF): cheaper than a failed attempt. AMQP only."""
        sock = self._socket()
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                self.amqp.drain_events(timeout=0.05)  # a close, a blocked notice, EOF
        except TimeoutError:
            return True  # part of a frame: the rest follows with the next read
        except Exception:
            return False
        return True

    # -- publishing ----------------------------------------------------------------------

    def publish(self, events: Sequence[_Event]) -> tuple[int, _Failure | None]:
        """Publish ``events`` in order; returns how many, from the first, the broker took
        (confirmed on AMQP), and why the next one failed (None when all were taken).
        Never raises; after a failure the connection is closed."""
        fresh = False
        if self.connection is not None and self.options.confirms and not self._alive():
            self.close()
        if self.connection is None:
            try:
                self.connect()
            except Exception as exc:
                self.close()
                return 0, self._failure(exc, connecting=True)
            fresh = True
        done, failure = self._publish_run(events)
        if failure is not None and failure.network == "lost" and done == 0 and not fresh:
            # A connection that went stale while idle (and was not seen closed): one more
            # try on a fresh one before the policy's pause. At least once allows a resend.
            return self.publish(events)
        return done, failure

    def _publish_run(self, events: Sequence[_Event]) -> tuple[int, _Failure | None]:
        try:
            if self.options.confirms:
                done, failure = self._publish_confirmed(events)
            else:
                done, failure = self._publish_plain(events)
        except Exception as exc:  # pragma: no cover - both catch what the client raises
            done, failure = 0, self._failure(exc, connecting=False)
        if failure is not None:
            self.close()  # a closed channel, unknown confirms: start afresh next time
        return done, failure

    def _send(self, event: _Event) -> None:
        self.producer.publish(
            event.body,
            routing_key=event.routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,  # persistent: written to disk by durable queues
            message_id=event.message_id,
            type=event.kind,
            headers=dict(event.headers),
        )

    def _publish_plain(self, events: Sequence[_Event]) -> tuple[int, _Failure | None]:
        done = 0
        for event in events:
            try:
                self._send(event)
            except Exception as exc:
                return done, self._failure(exc, connecting=False)
            done += 1
        return done, None

    def _publish_confirmed(self, events: Sequence[_Event]) -> tuple[int, _Failure | None]:
        first = self._next_tag
        self._tags = {}
        self._waiting = 0
        failure: _Failure | None = None
        sent = 0
        for event in events:
            tag = self._next_tag
            self._tags[tag] = None
            self._waiting += 1
            try:
                self._send(event)
            except Exception as exc:
                failure = self._failure(exc, connecting=False)
                break
            self._next_tag += 1
            sent += 1
        if failure is None:
            failure = self._await_confirms()
        # the confirmed prefix; what follows it is retried (in order, after it)
        done = 0
        while done < sent and self._tags.get(first + done) is True:
            done += 1
        if done < len(events):
            if self._tags.get(first + done) is False:
                failure = _Failure(self._where("the broker refused the message (basic.nack)"))
            elif failure is None:  # pragma: no cover - every tag is acked or nacked
                failure = _Failure(self._where("no confirm for the message"))
        return done, failure

    def _await_confirms(self) -> _Failure | None:
        deadline = time.monotonic() + self.options.confirm_timeout_s
        while self._waiting > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                cause = f"no publisher confirm within {self.options.confirm_timeout_s:g} s"
                if self._blocked:  # a resource alarm (memory, disk) holds publishers back
                    cause += f" (publishing blocked by the broker: {self._blocked})"
                return _Failure(self._where(cause))
            try:
                self.amqp.drain_events(timeout=left)
            except TimeoutError:
                continue  # the deadline check above ends it
            except Exception as exc:
                return self._failure(exc, connecting=False)
        return None

    def _settle(self, delivery_tag: int, multiple: bool, ok: bool) -> None:
        tags = self._tags
        if multiple:
            for tag, state in tags.items():
                if tag <= delivery_tag and state is None:
                    tags[tag] = ok
                    self._waiting -= 1
        elif tags.get(delivery_tag, False) is None:
            tags[delivery_tag] = ok
            self._waiting -= 1

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _on_blocked(self, reason: str) -> None:
        self._blocked = reason or "resource alarm"

    def _on_unblocked(self) -> None:
        self._blocked = ""

    # -- errors --------------------------------------------------------------------------

    def _where(self, cause: str) -> str:
        o = self.options
        return o.scrub(f"bus {self.name} at {o.peer}, exchange {o.exchange!r}: {cause}")

    def _failure(self, exc: BaseException, *, connecting: bool) -> _Failure:
        """The analyst's text and the kind of failure (see :func:`classify`)."""
        network, cause = classify(exc, connecting)
        cause = cause[:MAX_ERROR_TEXT]
        if connecting and (isinstance(exc, TimeoutError) or cause == "timed out"):
            cause = f"cannot connect within {self.options.connect_timeout_s:g} s"
        elif connecting and network == "connect":
            cause = f"cannot connect: {cause}"
        return _Failure(self._where(cause), network)


def classify(exc: BaseException, connecting: bool) -> tuple[Network, str]:
    """(network, cause) of a kombu, py-amqp or redis-py error.

    - The broker answered (an AMQP reply code such as 403 ACCESS_REFUSED or 406
      PRECONDITION_FAILED; a Redis error reply or refused login): ``""``, the policy's pause.
    - 320 CONNECTION_FORCED (broker shutting down), a reset or closed connection mid-run,
      a TLS failure (the peer is up): ``"lost"``.
    - Refused, unreachable, timed out, while connecting: ``"connect"`` (the peer is down).
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    cause = " ".join(str(exc).split()) or type(exc).__name__
    # py-amqp errors carry the broker's reply code (0: raised locally, no reply)
    reply = next((e for e in chain if getattr(e, "reply_code", 0)), None)
    if reply is not None:
        code = getattr(reply, "reply_code", 0)
        text = getattr(reply, "reply_text", "") or cause
        cause = text if str(code) in text else f"{text} ({code})"
        return ("lost" if code == CONNECTION_FORCED else ""), cause
    names = {type(e).__name__ for e in chain}
    if names & {"AuthenticationError", "AuthenticationWrongNumberOfArgsError", "ResponseError"}:
        return "", cause  # Redis answered: a refused login, an error reply
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "lost", cause
    if any(isinstance(e, (ConnectionRefusedError, socket.gaierror)) for e in chain):
        return "connect", cause
    # redis-py's ConnectionError and TimeoutError are not OSErrors: count them as such
    socket_like = any(isinstance(e, OSError) for e in chain) or bool(
        names & {"ConnectionError", "TimeoutError"}
    )
    return ("connect" if connecting and socket_like else "lost"), cause


class BusDestination(Closing):
    """Publish each entry (one JSON event) to the exchange; see the module docstring."""

    #: Entries per run when the config says no ``run``: RabbitMQ confirms a persistent
    #: message after its fsync, so longer runs share it (docs/PERFORMANCE.md: runs of 256
    #: measured 6,400 events/s against 3,900-4,900 with 32).
    default_run = 256

    def __init__(self, name: str, options: BusOptions) -> None:
        self.name = name
        self.options = options
        self._link = _Link(name, options)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def peer(self) -> str:
        return self.options.peer

    def _executor(self) -> ThreadPoolExecutor:
        # one thread owns the kombu objects; created on demand (again after aclose)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"bus-{self.name}")
        return self._pool

    async def deliver(self, entry: Entry) -> Outcome:
        """Publish one event (see the module docstring); never raises."""
        return (await self.deliver_many([entry]))[0]

    async def deliver_many(self, entries: Sequence[Entry]) -> list[Outcome]:
        """Publish a lane's run in order and wait for the broker's confirms together.

        Returns one outcome per entry for a prefix of ``entries``: ``Delivered`` (confirmed),
        ``Dead`` (not an event: skipped, the lane goes on), and at most one ``Retry``, last;
        the entries after it were not settled (maybe published, not confirmed) and must be
        sent again after it, so their order is kept. Never raises."""
        outcomes: list[Outcome | None] = []
        events: list[_Event] = []
        slots: list[int] = []  # index in outcomes of each event
        for entry in entries:
            try:
                kind, ident = event_header(entry.payload)
            except ValueError as exc:
                outcomes.append(Dead(f"bus {self.name}: entry {entry.id}: {exc}"))
                continue
            headers = {k: v for k, v in entry.headers.items() if k != "routing_key"}
            routing_key = entry.headers.get("routing_key") or kind
            events.append(_Event(entry.payload, routing_key, ident, kind, headers))
            slots.append(len(outcomes))
            outcomes.append(None)
        if events:
            loop = asyncio.get_running_loop()
            try:
                done, failure = await loop.run_in_executor(
                    self._executor(), self._link.publish, events
                )
            except Exception as exc:  # a bug here must not stop the lane's bookkeeping
                done, failure = 0, _Failure(self._link._where(f"internal error: {exc!r}"))
            for slot in slots[:done]:
                outcomes[slot] = Delivered("confirmed" if self.options.confirms else "sent")
            if failure is not None or done < len(events):
                cut = slots[done]
                error = failure.error if failure else self._link._where("not sent")
                outcomes[cut] = Retry(error, failure.network if failure else "")
                del outcomes[cut + 1 :]
        return [o for o in outcomes if o is not None]

    async def probe(self) -> bool:
        """Whether a TCP connection to the bus host and port opens (closed at once)."""
        return await tcp_reachable(
            self.options.host, self.options.port, self.options.connect_timeout_s
        )

    async def aclose(self) -> None:
        """Close the connection in its thread (bounded wait), then end the thread. A later
        delivery starts a new thread with a new link: the old thread may still be finishing
        a publish (up to its timeouts) and keeps the old one to itself."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        link, self._link = self._link, _Link(self.name, self.options)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await loop.run_in_executor(pool, functools.partial(link.close, graceful=True))
        pool.shutdown(wait=False)


def build_bus(
    name: str, options: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> BusDestination:
    """A ``type: bus`` destination from its config keys; raises :class:`ConfigError`."""
    return BusDestination(name, bus_options(f"destinations.{name}", options, resolve))


__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT_S",
    "DEFAULT_EXCHANGE",
    "EXCHANGE_TYPES",
    "SCHEMES",
    "BusDestination",
    "BusOptions",
    "build_bus",
    "bus_options",
    "classify",
    "event_header",
    "open_connection",
    "redact_url",
]
