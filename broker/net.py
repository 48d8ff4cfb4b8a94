"""Socket options every connection of the broker gets, and how a URL is shown, in one place."""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def set_tcp_nodelay(sock: Any) -> None:
    """Turn Nagle off: request/response protocols (MLLP ACKs, DIMSE responses) otherwise
    stall ~40 ms on delayed ACKs. Silently skips non-TCP sockets (Unix sockets in tests)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tcp_nodelay_is_set(sock: Any) -> bool:
    """Whether TCP_NODELAY is on (tests check every listener with it)."""
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


#: What a password is replaced with wherever a URL is shown (logs, errors, CLI).
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also for URLs that do not parse)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else REDACTED
    auth, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user = auth.split(":", 1)[0]
    return f"{scheme}://{user}:{REDACTED}@{hostpart}" if ":" in auth else url
