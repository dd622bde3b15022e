"""Unit tests may call ``extproc.cli.main``, which points structlog at the captured stderr
of that test; reset it after every test so no later test logs to a closed stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
