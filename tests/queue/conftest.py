"""The ``queue_backend`` fixture: every contract test runs on each backend in BACKENDS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.queue.backends import BACKENDS, Backend, Clock, open_backend


@pytest.fixture(params=BACKENDS)
async def queue_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(request.param, tmp_path, Clock()) as backend:
        yield backend
