"""The ``queue_backend`` fixture: every contract test runs on each backend in BACKENDS.

The Redis backend uses the session's own redis-server (``tests/redis_server.py``), started on
first use and stopped here when the session ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.queue.backends import BACKENDS, Backend, Clock, open_backend
from tests.redis_server import stop_shared_redis


@pytest.fixture(scope="session", autouse=True)
def _stop_redis_at_session_end() -> Iterator[None]:
    yield
    stop_shared_redis()


@pytest.fixture(params=BACKENDS)
async def queue_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(request.param, tmp_path, Clock()) as backend:
        yield backend
