"""Stop the session's redis-server once the storage tests are done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import stop_shared_redis


@pytest.fixture(scope="package", autouse=True)
def _stop_redis_after_the_package() -> Iterator[None]:
    yield
    stop_shared_redis()
