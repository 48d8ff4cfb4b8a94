"""Socket options every connection of the broker gets, in one place."""

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
