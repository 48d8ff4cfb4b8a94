"""Destination types: send one queued entry and say what happened (delivered, retry, dead).

A destination never raises for a failed delivery: every failure becomes an :data:`Outcome`
whose text tells the analyst what was found and what was expected (it is kept as the entry's
last error). Whether a ``Retry`` is retried or buried is the retry policy's call, not ours.

- ``mllp``: HL7 v2 over MLLP (HL7 v2.5.1 Appendix C) on persistent connections. The answer
  must be an ACK whose MSA-2 echoes the sent MSH-10 (HL7 v2.5.1 §2.9.2, original mode);
  AA/CA delivered, AE/CE and AR/CR as ``on_error`` says.
- ``http``: POST or PUT to a REST peer; 2xx delivered, 408/429/5xx and network errors retried,
  any other status dead (the peer will refuse it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import aiohttp
import yarl

from broker.errors import ConfigError, ProtocolError
from broker.hl7.client import DEFAULT_ACK_TIMEOUT_S, DEFAULT_CONNECT_TIMEOUT_S, MllpClient
from broker.hl7.header import HeaderError, parse_header
from broker.hl7.mllp import DEFAULT_MAX_FRAME, frame
from broker.queue.base import Entry

#: How much of a peer's error text is kept in the entry's last error.
MAX_ERROR_TEXT = 300
#: HTTP statuses worth retrying besides 5xx: Request Timeout, Too Many Requests (RFC 9110/6585).
RETRYABLE_HTTP = frozenset({408, 429})
#: The start of an MSH segment with the usual field separator and encoding characters.
PLAIN_MSH = "MSH|^~\\&|"
_PLAIN_MSH_BYTES = PLAIN_MSH.encode()
#: MSH-10s remembered per MLLP destination for entries not yet delivered (then forgotten).
MAX_REMEMBERED_IDS = 1024

ErrorAction = Literal["retry", "dead"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """The peer took the message."""

    detail: str = ""


#: Why a ``Retry`` failed on the connection itself rather than on an answer.
Network = Literal["", "connect", "lost"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Not delivered; worth trying again later.

    ``network`` tells the worker the failure was the connection, not the peer's answer:
    ``"connect"`` (refused, connect timeout, unreachable: the peer is down) or ``"lost"``
    (reset or closed mid-exchange). While such a failure waits for its retry, the worker
    probes the peer (:meth:`Probing.probe`) and retries at once when it is back. Answers (AE,
    ACK timeouts, garbage) have ``""`` and wait for the retry policy's backoff.
    """

    error: str
    network: Network = ""


@dataclass(frozen=True, slots=True)
class Dead:
    """Not delivered, and trying again will not help (the peer refused the message)."""

    error: str


Outcome = Delivered | Retry | Dead


class Destination(Protocol):
    """What delivery workers drive; an async context manager holding its connections."""

    name: str

    async def deliver(self, entry: Entry) -> Outcome:
        """Send one entry; never raises for a failed delivery (returns Retry or Dead)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


@runtime_checkable
class Probing(Protocol):
    """A destination that can tell cheaply whether its peer is reachable (not an attempt)."""

    async def probe(self) -> bool:
        """True when a connection to the peer can be opened now (TCP connect); never raises."""
        ...


class Closing:
    """``async with`` for destinations: nothing to open up front, :meth:`aclose` at the end."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Client TLS (``tls: {ca, cert, key, check_hostname}``); paths already resolved."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True

    def context(self, where: str) -> ssl.SSLContext:
        """An SSL context verifying the peer against ``ca`` (system CAs when unset)."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
            if self.cert is not None:
                context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.tls: cannot load certificate/key: {exc}") from exc
        context.check_hostname = self.check_hostname
        return context


@dataclass(frozen=True, slots=True)
class MllpOptions:
    """``type: mllp`` keys."""

    host: str
    port: int
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    #: What an AE (application error) and an AR (application reject) answer lead to.
    on_error: Mapping[str, ErrorAction] = field(
        default_factory=lambda: {"AE": "retry", "AR": "dead"}
    )
    connections: int = 1
    max_frame: int = DEFAULT_MAX_FRAME
    tls: TlsOptions | None = None


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """``type: http`` keys."""

    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    connections: int = 4
    tls: TlsOptions | None = None


class OptionReader:
    """Typed reads of a destination's config mapping, errors naming the key."""

    def __init__(self, where: str, data: Mapping[str, Any]) -> None:
        self.where = where
        self.data = data

    def _fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: found {value!r}; expected {expected}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            raise self._fail(key, value, "a non-empty string")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self._fail(key, value, f"a number >= {minimum:g}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self._fail(key, value, f"a whole number from {minimum} to {maximum}")
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping):
            raise self._fail(key, value, "a mapping")
        return value


def tls_options(reader: OptionReader, resolve: Callable[[Path], Path]) -> TlsOptions | None:
    data = reader.data.get("tls")
    if data is None or data is False:
        return None
    if data is True:
        return TlsOptions()
    if not isinstance(data, Mapping):
        raise reader._fail("tls", data, "a mapping with ca, cert, key, check_hostname")
    unknown = set(data) - {"ca", "cert", "key", "check_hostname"}
    if unknown:
        raise ConfigError(
            f"{reader.where}.tls: unknown key {sorted(unknown)[0]!r}; "
            "expected ca, cert, key, check_hostname"
        )

    def path(key: str) -> Path | None:
        value = data.get(key)
        return resolve(Path(value)) if value else None

    if bool(data.get("cert")) != bool(data.get("key")):
        raise ConfigError(f"{reader.where}.tls: cert and key go together (a client certificate)")
    return TlsOptions(path("ca"), path("cert"), path("key"), bool(data.get("check_hostname", True)))


def mllp_options(
    where: str, data: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> MllpOptions:
    """Read ``type: mllp`` keys; raises :class:`ConfigError` naming the bad key."""
    r = OptionReader(where, data)
    on_error: dict[str, ErrorAction] = {"AE": "retry", "AR": "dead"}
    raw = data.get("on_error")
    if raw is not None:
        choices = {"AE": raw, "AR": raw} if isinstance(raw, str) else raw
        if not isinstance(choices, Mapping):
            raise r._fail("on_error", raw, "retry, dead, or {AE: retry|dead, AR: retry|dead}")
        for code, action in choices.items():
            if code not in ("AE", "AR") or action not in ("retry", "dead"):
                raise r._fail("on_error", raw, "retry, dead, or {AE: retry|dead, AR: retry|dead}")
            on_error[code] = "retry" if action == "retry" else "dead"
    return MllpOptions(
        host=r.text("host", "127.0.0.1"),
        port=r.integer("port", -1, 1, 65535),
        ack_timeout_s=r.number("ack_timeout_s", DEFAULT_ACK_TIMEOUT_S, 0.001),
        connect_timeout_s=r.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, 0.001),
        on_error=on_error,
        connections=r.integer("connections", 1, 1, 64),
        max_frame=r.integer("max_frame", DEFAULT_MAX_FRAME, 1024),
        tls=tls_options(r, resolve),
    )


def http_options(
    where: str, data: Mapping[str, Any], resolve: Callable[[Path], Path] = Path.resolve
) -> HttpOptions:
    """Read ``type: http`` keys; raises :class:`ConfigError` naming the bad key."""
    r = OptionReader(where, data)
    url = r.text("url")
    if not url.startswith(("http://", "https://")):
        raise r._fail("url", url, "an http:// or https:// URL")
    method = str(data.get("method", "POST")).upper()
    if method not in ("POST", "PUT"):
        raise r._fail("method", data.get("method"), "POST or PUT")
    headers = r.mapping("headers")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise r._fail("headers", headers, "a mapping of header names to strings")
    return HttpOptions(
        url=url,
        method="PUT" if method == "PUT" else "POST",
        headers=dict(headers),
        timeout_s=r.number("timeout_s", r.number("ack_timeout_s", DEFAULT_ACK_TIMEOUT_S), 0.001),
        connect_timeout_s=r.number("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, 0.001),
        connections=r.integer("connections", 4, 1, 256),
        tls=tls_options(r, resolve),
    )


# -- mllp ----------------------------------------------------------------------------------


class _Client(MllpClient):
    """:class:`MllpClient` as delivery drives it: connecting is a step of its own (a refused
    connect says the peer is down, unlike a connection lost mid-exchange), and the ACK wait
    is one ``asyncio.timeout`` (``wait_for`` costs a task per message on Python 3.11)."""

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def send(self, payload: bytes) -> bytes:
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        try:
            self._writer.write(frame(payload))
            await self._writer.drain()
            async with asyncio.timeout(self.ack_timeout_s):
                return await self._read_frame()
        except ConnectionError as exc:
            await self.close()
            raise ProtocolError(f"{self.host}:{self.port}: connection lost: {exc}") from exc


class MllpDestination(Closing):
    """HL7 v2 over MLLP; ``connections`` persistent connections, each reconnected on demand."""

    def __init__(self, name: str, options: MllpOptions) -> None:
        self.name = name
        self.options = options
        context = options.tls.context(f"destinations.{name}") if options.tls else None
        self._idle: asyncio.Queue[_Client] = asyncio.Queue()
        self._clients = [
            _Client(
                options.host,
                options.port,
                connect_timeout_s=options.connect_timeout_s,
                ack_timeout_s=options.ack_timeout_s,
                max_frame=options.max_frame,
                ssl_context=context,
            )
            for _ in range(options.connections)
        ]
        for client in self._clients:
            self._idle.put_nowait(client)
        # MSH-10 of the entries being sent (one per connection): parsed once per entry,
        # not again on each retry.
        self._sent_ids: dict[int, str | None] = {}

    @property
    def peer(self) -> str:
        return f"{self.options.host}:{self.options.port}"

    async def deliver(self, entry: Entry) -> Outcome:
        """Send the entry and judge the ACK (see the module docstring)."""
        client = await self._idle.get()
        try:
            if not client.connected:
                try:
                    await client.connect()
                except (OSError, TimeoutError) as exc:
                    await client.close()
                    return self._not_connected(exc)
            try:
                answer = await client.send(entry.payload)
            except TimeoutError:
                # A late ACK would be read as the next message's answer: start afresh.
                await client.close()
                return Retry(f"{self.peer}: no answer within {self.options.ack_timeout_s:g} s")
            except (OSError, ProtocolError) as exc:  # reset, closed, TLS failure
                await client.close()
                return Retry(f"{self.peer}: {exc or type(exc).__name__}", network="lost")
            outcome = self._judge(self._sent_id(entry), answer)
            if isinstance(outcome, Retry):
                await client.close()  # the stream may be out of step (foreign ACK, garbage)
            else:  # delivered or dead: not sent again by us
                self._sent_ids.pop(entry.id, None)
            return outcome
        except asyncio.CancelledError:
            # Cancelled mid-send: the connection's state is unknown; never reuse it.
            with contextlib.suppress(Exception):
                await asyncio.shield(client.close())
            raise
        finally:
            self._idle.put_nowait(client)

    def _not_connected(self, exc: BaseException) -> Retry:
        """A failed connect. Only a plain TCP failure (refused, unreachable, timed out
        without TLS) says the peer is down; a TLS failure reaches a peer that is up."""
        if isinstance(exc, TimeoutError):
            error = f"{self.peer}: cannot connect within {self.options.connect_timeout_s:g} s"
        else:
            error = f"{self.peer}: {exc or type(exc).__name__}"
        tls = isinstance(exc, ssl.SSLError) or (
            isinstance(exc, TimeoutError) and self.options.tls is not None
        )
        return Retry(error, network="lost" if tls else "connect")

    def _sent_id(self, entry: Entry) -> str | None:
        if entry.id not in self._sent_ids:
            if len(self._sent_ids) >= MAX_REMEMBERED_IDS:
                self._sent_ids.clear()  # entries that died or went to another owner
            self._sent_ids[entry.id] = _control_id(entry.payload)
        return self._sent_ids[entry.id]

    async def probe(self) -> bool:
        """Open a connection to the peer (kept for the next delivery); True when it works.
        Uses an idle connection, else a throwaway one (every connection is sending)."""
        try:
            client = self._idle.get_nowait()
        except asyncio.QueueEmpty:
            return await tcp_reachable(
                self.options.host, self.options.port, self.options.connect_timeout_s
            )
        try:
            if not client.connected:
                await client.connect()
            return True
        except (OSError, TimeoutError):
            await client.close()
            return False
        finally:
            self._idle.put_nowait(client)

    def _judge(self, expected_id: str | None, answer: bytes) -> Outcome:
        text = answer.decode("latin-1")
        if text.startswith(PLAIN_MSH):  # the usual delimiters: a valid header, sep "|"
            sep = "|"
        else:
            try:
                sep = parse_header(text).field_separator
            except HeaderError:
                return Retry(f"{self.peer}: answered something that is not an HL7 message")
        msa = _segment(text, "MSA", sep)
        if msa is None:
            kind = parse_header(text).message_type or "?"
            return Retry(f"{self.peer}: answered {kind} without MSA segment")
        code = _at(msa, 1).upper()
        acked_id = _at(msa, 2)
        if expected_id is not None and acked_id != expected_id:
            return Retry(
                f"{self.peer}: ACK MSA-2 is {acked_id!r}, expected the sent MSH-10 {expected_id!r}"
            )
        if code in ("AA", "CA"):
            return Delivered(code)
        detail = _error_text(text, msa, sep)
        if code in ("AE", "CE", "AR", "CR"):
            action = self.options.on_error["AE" if code in ("AE", "CE") else "AR"]
            error = f"{self.peer}: answered {code}{': ' + detail if detail else ''}"
            return Retry(error) if action == "retry" else Dead(error)
        return Retry(f"{self.peer}: MSA-1 is {code!r}, expected AA, AE or AR")

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


async def tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout_s`` (closed at once)."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _segment(text: str, name: str, sep: str) -> list[str] | None:
    for line in text.replace("\n", "\r").split("\r"):
        if line.startswith(name + sep):
            return line.split(sep)
    return None


def _at(fields: list[str], n: int) -> str:
    return fields[n] if n < len(fields) else ""


def _control_id(sent: bytes) -> str | None:
    """MSH-10 of what we sent; None when it is not an HL7 message (nothing to check).
    Only the MSH segment (up to 4 KiB) is read; with the usual delimiters it is split
    directly (such a header is valid: :func:`parse_header` would find the same field)."""
    end = min(len(sent), 4096)
    for terminator in (b"\r", b"\n"):
        pos = sent.find(terminator, 0, end)
        if pos >= 0:
            end = pos
    if sent.startswith(_PLAIN_MSH_BYTES):
        fields = sent[:end].split(b"|", 10)  # fields[n] is MSH-(n+1)
        return fields[9].decode("latin-1") if len(fields) > 9 else ""
    try:
        return parse_header(sent[:end].decode("latin-1")).control_id
    except HeaderError:
        return None


def _error_text(text: str, msa: list[str], sep: str) -> str:
    """MSA-3 text, else ERR-8 (user message) or ERR-3 (error code), trimmed."""
    detail = _at(msa, 3)
    if not detail:
        err = _segment(text, "ERR", sep)
        if err is not None:
            detail = _at(err, 8) or _at(err, 3)
    return detail[:MAX_ERROR_TEXT]


# -- http ----------------------------------------------------------------------------------


class HttpDestination(Closing):
    """POST or PUT each entry to a URL (aiohttp; sets TCP_NODELAY on its sockets itself)."""

    def __init__(self, name: str, options: HttpOptions) -> None:
        self.name = name
        self.options = options
        self._ssl: ssl.SSLContext | None = (
            options.tls.context(f"destinations.{name}") if options.tls else None
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.options.connections,
                    ssl=self._ssl if self._ssl is not None else True,  # True: default checks
                ),
                timeout=aiohttp.ClientTimeout(
                    total=self.options.timeout_s, connect=self.options.connect_timeout_s
                ),
                raise_for_status=False,
            )
        return self._session

    async def deliver(self, entry: Entry) -> Outcome:
        """Send the payload; judge the status (see the module docstring)."""
        opts = self.options
        headers = {"Content-Type": entry.content_type, **opts.headers, **entry.headers}
        where = f"{opts.method} {opts.url}"
        try:
            async with self._client().request(
                opts.method, opts.url, data=entry.payload, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                body = await response.content.read(MAX_ERROR_TEXT) if status >= 300 else b""
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS
            tls = isinstance(exc, aiohttp.ClientSSLError)
            return Retry(f"{where}: {exc or type(exc).__name__}", "lost" if tls else "connect")
        except aiohttp.ConnectionTimeoutError:  # connecting took too long (no answer yet)
            return Retry(f"{where}: cannot connect within {opts.connect_timeout_s:g} s", "connect")
        except TimeoutError:
            return Retry(f"{where}: no answer within {opts.timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:  # reset, closed mid-request
            return Retry(f"{where}: {exc or type(exc).__name__}", "lost")
        if 200 <= status < 300:
            return Delivered(str(status))
        text = body.decode("utf-8", "replace").strip()
        error = f"{where}: HTTP {status}{': ' + text if text else ''}"
        if status >= 500 or status in RETRYABLE_HTTP:
            return Retry(error)
        return Dead(f"{error} (expected 2xx)")

    async def probe(self) -> bool:
        """Whether a TCP connection to the URL's host and port opens (closed at once)."""
        url = yarl.URL(self.options.url)
        host, port = url.host, url.port
        if host is None or port is None:
            return False
        return await tcp_reachable(host, port, self.options.connect_timeout_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- building ------------------------------------------------------------------------------

#: Destination types delivered to (bus and orthanc: their own modules in broker/delivery/).
SUPPORTED_TYPES = ("mllp", "http", "bus", "orthanc")


def build_destination(
    name: str,
    type_: str,
    options: Mapping[str, Any],
    resolve: Callable[[Path], Path] = Path.resolve,
) -> Destination:
    """A destination from its config (``type`` and the other keys); ``resolve`` makes TLS
    paths absolute (the config file's folder). Raises :class:`ConfigError`."""
    where = f"destinations.{name}"
    if type_ == "mllp":
        return MllpDestination(name, mllp_options(where, options, resolve))
    if type_ == "http":
        return HttpDestination(name, http_options(where, options, resolve))
    if type_ == "bus":
        from broker.delivery.bus import build_bus  # here: bus.py imports this module

        return build_bus(name, options, resolve)
    if type_ == "orthanc":
        from broker.delivery.orthanc import build_orthanc  # here: orthanc.py imports this module

        return build_orthanc(name, options, resolve)
    raise ConfigError(
        f"{where}.type: {type_!r} cannot be delivered to yet; expected one of "
        f"{', '.join(SUPPORTED_TYPES)}"
    )


__all__ = [
    "SUPPORTED_TYPES",
    "Closing",
    "Dead",
    "Delivered",
    "Destination",
    "HttpDestination",
    "HttpOptions",
    "MllpDestination",
    "MllpOptions",
    "Network",
    "OptionReader",
    "Outcome",
    "Probing",
    "Retry",
    "TlsOptions",
    "build_destination",
    "http_options",
    "mllp_options",
    "tcp_reachable",
    "tls_options",
]
