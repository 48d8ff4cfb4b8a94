"""Logging set-up: text or JSON lines (structlog's formatter over the standard library).

Modules log through ``logging.getLogger(__name__)`` and never format message content into a
log line; patient data reaches the log only at DEBUG with ``show_phi`` (see
:func:`phi`), so a default log is safe to share with a vendor.
"""

from __future__ import annotations

import logging
import sys

import structlog

_show_phi = False


def configure(level: str = "INFO", fmt: str = "text", show_phi: bool = False) -> None:
    """Install one handler on the root logger with the chosen format."""
    global _show_phi
    _show_phi = show_phi
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs identifiers (PHI) at INFO/DEBUG; keep it quiet unless asked.
    logging.getLogger("pynetdicom").setLevel(
        "DEBUG" if show_phi and level == "DEBUG" else "WARNING"
    )


def phi(value: object) -> str:
    """A patient value for a log line: shown only when debug logging with PHI was asked for."""
    return str(value) if _show_phi else "<redacted>"
