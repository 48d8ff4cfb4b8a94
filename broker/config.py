"""Broker settings: one YAML file (DESIGN.md §6), pydantic models, environment overrides.

Every key has a working default, so ``broker serve`` with no file runs the embedded store with
the repository's routes and mappings. Relative paths are relative to the config file (or to
the working directory when there is none). Environment variables override the file:
``BROKER__HTTP__PORT=9090`` sets ``http.port``; values are read as YAML scalars.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from broker.errors import ConfigError
from broker.net import redact_url

ENV_PREFIX = "BROKER__"

#: Keys whose values an error message never repeats (they reach consoles and CI logs).
_SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "key_password", "api_key"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Model):
    """TLS for an MLLP listener."""

    cert: Path = Field(description="Server certificate chain (PEM).")
    key: Path = Field(description="Private key of the certificate (PEM).")
    ca: Path | None = Field(None, description="CA bundle to verify client certificates with.")
    verify_client: bool = Field(False, description="Require a client certificate signed by `ca`.")

    @model_validator(mode="after")
    def _ca_needed(self) -> TlsSettings:
        if self.verify_client and self.ca is None:
            raise ValueError("verify_client: true needs ca: (the CA bundle to verify clients)")
        return self


class MllpListenerSettings(_Model):
    """One MLLP listener (DESIGN.md §6 `mllp:` list)."""

    name: str = Field("ris", description="Name shown in logs, metrics and the journal.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(2575, ge=0, le=65535, description="TCP port (2575 is HL7's registered port).")
    max_frame: int = Field(
        1024 * 1024, ge=1024, description="Largest message in bytes; larger ones get AR and close."
    )
    max_connections: int = Field(1000, ge=1, description="Open connections accepted at once.")
    idle_timeout_s: float = Field(
        300.0, ge=0, description="Close a connection silent this long (0: never)."
    )
    allowed_peers: list[str] = Field(
        default_factory=list, description="Addresses or CIDR networks allowed (empty: any)."
    )
    tls: TlsSettings | None = Field(None, description="Serve MLLP over TLS.")


class DicomSettings(_Model):
    """The DICOM SCP (worklist C-FIND, MPPS, C-ECHO)."""

    ae_title: str = Field("BROKER", min_length=1, max_length=16, description="Our AE title.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port.")
    enabled: bool = Field(True, description="Run the DICOM SCP.")
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Calling AE titles allowed (empty: any)."
    )
    allowed_peers: list[str] = Field(
        default_factory=list, description="Peer addresses or CIDR networks allowed (empty: any)."
    )
    calling_ae_as_station: bool = Field(
        False,
        description="When a query has no Scheduled Station AE Title, use the calling AE title.",
    )
    max_associations: int = Field(50, ge=1, description="Associations served at once.")
    max_pdu: int = Field(65536, ge=4096, description="Largest PDU we accept (bytes).")

    @field_validator("ae_title")
    @classmethod
    def _ae_chars(cls, value: str) -> str:
        if "\\" in value or not value.strip() or not value.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return value


class PacsQuerySettings(_Model):
    """The PACS's DICOM query service (C-FIND, Study Root), for the reconciliation sweep."""

    host: str = Field("127.0.0.1", description="PACS address.")
    port: int = Field(4242, ge=1, le=65535, description="PACS DICOM port.")
    ae_title: str = Field("ORTHANC", min_length=1, max_length=16, description="PACS AE title.")
    calling_ae_title: str | None = Field(
        None, max_length=16, description="Our AE title towards the PACS (default dicom.ae_title)."
    )
    timeout_s: float = Field(30, gt=0, description="Give up on an unanswering PACS after this.")


class ReconcileSettings(_Model):
    """Reconciliation sweep: compare the PACS's recent studies with their orders."""

    pacs: PacsQuerySettings | None = Field(
        None, description="Where to query studies (none: the sweep is not available)."
    )
    destination: str = Field(
        "pacs", description="Destination the sweep's --apply corrections are queued for."
    )
    history_days: int = Field(
        365, ge=1, description="Keep the record of each patient/order change this long (audit)."
    )


class HttpSettings(_Model):
    """The admin HTTP listener (/health, /metrics, the admin API: broker/admin/api.py)."""

    host: str = Field("127.0.0.1", description="Address to bind (keep it internal).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port.")
    enabled: bool = Field(True, description="Run the admin HTTP listener.")
    show_phi: bool = Field(
        False,
        description="Let admin API callers ask for patient data (show_phi=1); it has no "
        "authentication of its own.",
    )


class JournalSettings(_Model):
    """Inbound journal retention and duplicate detection."""

    retention_days: float = Field(30, gt=0, description="Keep journal entries this long.")
    dedupe_window_hours: float = Field(
        168,
        gt=0,
        description="A resent MSH-10 from the same sender within this window is a duplicate.",
    )
    purge_interval_s: float = Field(3600, gt=0, description="How often retention runs.")


class WorklistSettings(_Model):
    """Worklist lifecycle."""

    retention_days: int = Field(
        90,
        ge=1,
        description="Finished items (completed, discontinued, cancelled) are purged after this.",
    )


class LoggingSettings(_Model):
    """Logging; patient data is redacted unless `show_phi` is true."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="text lines or JSON lines.")
    show_phi: bool = Field(False, description="Let patient data into logs (debugging only).")


class RetrySettings(_Model):
    """When a delivery fails: exponential backoff with jitter, then the dead-letter list."""

    initial_s: float = Field(1.0, ge=0, description="Wait before the first retry.")
    factor: float = Field(2.0, ge=1, description="Each wait is the previous one times this.")
    max_interval_s: float = Field(300.0, gt=0, description="Longest wait between attempts.")
    max_attempts: int = Field(0, ge=0, description="Attempts before dead-lettering (0: no limit).")
    max_age_s: float = Field(
        86400.0, ge=0, description="Dead-letter an entry older than this (0: no limit)."
    )
    jitter: float = Field(0.2, ge=0, le=1, description="Random spread of each wait (fraction).")


class Destination(_Model):
    """An outbound destination: its type's own keys (host/port, url, ...) plus these.

    See docs/DELIVERY.md for every type's keys.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["mllp", "http", "orthanc", "bus"] = Field(
        description="mllp (host, port), http (url), orthanc (url, username, password), bus (url)."
    )
    ordering: Literal["destination", "patient", "none"] = Field(
        "destination",
        description="FIFO scope: the whole destination, each patient, or no order.",
    )
    concurrency: int = Field(8, ge=1, description="Ordering keys delivered at once.")
    retry: RetrySettings = Field(default_factory=RetrySettings)  # type: ignore[arg-type]


class DeliverySettings(_Model):
    """Delivery workers."""

    keep_delivered_hours: float = Field(
        24, ge=0, description="Delivered entries stay visible this long."
    )
    shutdown_s: float = Field(
        5, ge=0, description="On shutdown, wait this long for in-flight deliveries."
    )
    lease_s: float = Field(
        30,
        ge=1,
        description="A claimed entry's lease; a process that dies holding it frees it after this.",
    )


class Settings(_Model):
    """The whole configuration (DESIGN.md §6)."""

    store: str = Field(
        "sqlite:///var/broker.db",
        description=(
            "sqlite:///PATH (embedded default), redis://HOST:PORT/DB (several broker nodes "
            "share one Redis: journal, dedupe keys, worklist, queues) or "
            "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE/DB (the same, the primary found "
            "through Redis Sentinel). On Redis, ?wait=N: each commit waits for N replicas "
            "before the ACK (wait_timeout_ms=M, default 1000)."
        ),
    )
    routes: Path = Field(Path("routes"), description="Folder of route files.")
    mappings: Path = Field(Path("mappings"), description="Folder of mapping files.")
    mllp: list[MllpListenerSettings] = Field(
        default_factory=lambda: [MllpListenerSettings.model_validate({})],
        description="MLLP listeners.",
    )
    dicom: DicomSettings = Field(default_factory=DicomSettings)  # type: ignore[arg-type]
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    journal: JournalSettings = Field(default_factory=JournalSettings)  # type: ignore[arg-type]
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)  # type: ignore[arg-type]
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)  # type: ignore[arg-type]
    reconcile: ReconcileSettings = Field(
        default_factory=ReconcileSettings  # type: ignore[arg-type]
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings)  # type: ignore[arg-type]
    destinations: dict[str, Destination] = Field(
        default_factory=dict,
        description="Named outbound destinations the routes use (none by default).",
    )
    default_charset: str = Field("ASCII", description="Character set when MSH-18 is empty.")
    #: Where the file was read from (relative paths resolve against its folder).
    base_dir: Path = Field(Path("."), exclude=True)

    def destination_types(self) -> dict[str, str]:
        """Destination name → type, as routing needs it."""
        return {name: d.type for name, d in self.destinations.items()}

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        from broker.storage.store_url import StoreUrlError, check

        try:
            check(value)
        except StoreUrlError as exc:  # the key and the (redacted) URL are added by the loader
            raise ValueError(exc.problem) from None
        return value

    @model_validator(mode="after")
    def _unique_listeners(self) -> Settings:
        names = [m.name for m in self.mllp]
        if len(names) != len(set(names)):
            raise ValueError("mllp listener names must be unique")
        return self

    def resolve(self, path: Path) -> Path:
        """A configured path made absolute against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file of an embedded store."""
        if not self.store.startswith("sqlite:///"):
            raise ConfigError(f"store: {self.store!r} is not an sqlite:/// URL")
        return self.resolve(Path(self.store.removeprefix("sqlite:///")))

    @property
    def routes_dir(self) -> Path:
        return self.resolve(self.routes)

    @property
    def mappings_dir(self) -> Path:
        return self.resolve(self.mappings)


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (or defaults) and apply environment overrides.

    Raises :class:`ConfigError` naming file, line, key, value and the expected form.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
        try:
            loaded = YAML(typ="rt").load(text)
        except YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        _collect_lines(loaded, (), lines)
        data = _plain(loaded)
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            _apply_override(data, key, value)
    data["base_dir"] = Path(path).resolve().parent if path is not None else Path.cwd()
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, lines)) from None


def _apply_override(data: dict[str, Any], key: str, value: str) -> None:
    parts = [p.lower() for p in key.removeprefix(ENV_PREFIX).split("__") if p]
    if not parts:
        return
    target = data
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    parsed = YAML(typ="safe").load(value) if value else ""
    target[parts[-1]] = parsed


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _collect_lines(
    node: Any, where: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]
) -> None:
    if isinstance(node, CommentedMap):
        for key in node:
            try:
                line = node.lc.key(key)[0] + 1
            except (KeyError, TypeError):
                continue
            out[(*where, str(key))] = line
            _collect_lines(node[key], (*where, str(key)), out)
    elif isinstance(node, CommentedSeq):
        for index, item in enumerate(node):
            with contextlib.suppress(KeyError, TypeError):
                out[(*where, index)] = node.lc.item(index)[0] + 1
            _collect_lines(item, (*where, index), out)


def _format_errors(
    exc: ValidationError, source: str, lines: dict[tuple[str | int, ...], int]
) -> str:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        line = 0
        probe = loc
        while probe and not line:
            line = lines.get(probe, 0)
            probe = probe[:-1]
        where = f"{source}:{line}" if line else source
        key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
        found = error.get("input")
        found_text = "nothing" if error["type"] == "missing" else repr(found)
        if isinstance(found, str) and "://" in found:  # a URL: never its password
            found_text = repr(redact_url(found))
        if any(str(p).lower() in _SECRET_KEYS for p in loc):
            found_text = "a value (not shown: it is a secret)"
        if isinstance(found, (dict, list)):
            found_text = type(found).__name__
        expected = error["msg"].removeprefix("Value error, ")
        messages.append(f"{where}: {key or '(top)'}: found {found_text}; {expected}")
    return "\n".join(messages)


def settings_reference() -> str:
    """Markdown reference of every key, its default and description (docs/CONFIGURATION.md)."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `broker/config.py` (`python -m broker.config > docs/CONFIGURATION.md`);",
        "a test keeps it in step with the code. Every key is optional. Environment variables",
        "override the file: `BROKER__HTTP__PORT=9090` sets `http.port`.",
        "",
        "| key | default | description |",
        "|---|---|---|",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            if info.exclude:
                continue
            key = f"{prefix}{name}"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{key}.")
                continue
            if info.default_factory is not None:
                default: Any = info.default_factory()  # type: ignore[call-arg]
                if isinstance(default, list) and default and isinstance(default[0], BaseModel):
                    default = [d.model_dump(exclude_none=True) for d in default]
            else:
                default = info.default
            if isinstance(default, Path):
                default = str(default)
            if info.is_required():
                default = "(required)"
            if isinstance(default, list) and len(str(default)) > 60:
                default = "one listener with the defaults below"
            text = (info.description or "").replace("|", "\\|")
            shown = "" if default is None else f"`{default}`"
            out.append(f"| `{key}` | {shown} | {text} |")
            args = getattr(annotation, "__args__", ())
            for arg in args:
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not Settings:
                    walk(arg, f"{key}[].")

    walk(Settings, "")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(settings_reference(), end="")
