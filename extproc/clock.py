"""The clock seam: the only module that reads time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on a monotonic scale; the core never reads time itself."""

    def now(self) -> float: ...

    def wall(self) -> float:
        """Seconds since the epoch: only for what must keep rising across restarts."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic()``, and ``time.time()`` as its wall clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
