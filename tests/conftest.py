"""Hypothesis profiles and the fixtures shared by every test package.

``ci`` (the default) keeps the fuzz tests fast enough for every run; ``fuzz`` runs each
fuzz test for at least 10,000 examples (``scripts/fuzz`` selects it through
``HYPOTHESIS_PROFILE``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, settings

from tests.redis_server import RedisServer, redis_server

settings.register_profile("ci", deadline=None)
settings.register_profile(
    "fuzz",
    deadline=None,
    max_examples=10_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    """A throw-away redis-server on loopback (``tests/redis_server.py``), killed at the end;
    a test module may override it (TLS, ACL users)."""
    async for server in redis_server():
        yield server
