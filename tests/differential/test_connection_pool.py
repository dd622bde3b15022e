"""Differential tests for ``connectionPool``: Envoy's circuit breakers, as Istio sets them.

A request over a limit is answered 503 by Envoy itself (response flag UO) and, in Envoy, is
not an endpoint's failure: the router skips outlier detection for an overflow reset
(``router.cc`` ``onUpstreamReset``: "Ignore upstream reset caused by a resource overflow",
envoyproxy/envoy#25487), and the retry policy never retries one. The brain must not count
it either, or a burst would eject a healthy endpoint and fail the workload over.
"""

from __future__ import annotations

from collections import Counter

import pytest

from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Burst,
    Requests,
    Scenario,
    SetMode,
    assert_same_sequence,
    run_scenario,
)
from .test_failover import EAST, SEED_SE, WEST, destination_rule

pytestmark = pytest.mark.e2e

BURST = 6

#: One connection and one waiting request for the whole cluster; the endpoint holds every
#: request it gets, so the burst's other requests overflow. Between two 503 answers of
#: us-east1, an overflow neither counts as a failure (no ejection on the burst) nor as a
#: success (the second 503 is the second consecutive one, and ejects).
OVERFLOW = Scenario(
    SEED_SE
    + destination_rule(
        "outlierDetection: {consecutive5xxErrors: 2, interval: 0.2s, baseEjectionTime: 30s}\n"
        "connectionPool:\n"
        "  tcp: {maxConnections: 1}\n"
        "  http: {http1MaxPendingRequests: 1}\n"
    ),
    (EAST, WEST),
    (
        Requests("before", 3, 0.05),
        SetMode("east", Mode.FAIL_503),
        Requests("first 503", 1),
        SetMode("east", Mode.HANG),
        Burst("burst", BURST, timeout_s=1.0),
        SetMode("east", Mode.FAIL_503),
        Requests("second 503", 1),
        SetMode("east", Mode.HEALTHY),
        Requests("after", 4, 0.3),
    ),
)


async def test_an_overflow_answers_503_and_counts_for_no_endpoint_like_istio(
    data_path: DataPath,
) -> None:
    run = await run_scenario(OVERFLOW, data_path)
    for label in ("before", "first 503", "second 503"):
        assert_same_sequence(run, label)
    ours, ref = (Counter(run.tokens("burst", side)) for side in (EXTPROC, REFERENCE))
    # One request holds the connection, one waits for it: both time out at the client (0).
    # The rest overflow the pending queue: Envoy's own 503, at once.
    assert ref == {"<0>": 2, "<503>": BURST - 2}, run.side_by_side("burst")
    assert ours == ref, run.side_by_side("burst")
    overflowed = [r for r in run.loop("burst", EXTPROC) if r.status == 503]
    assert all("overflow" in r.detail for r in overflowed), run.side_by_side("burst")
    # The two 503s were consecutive for the detector: us-east1 is ejected on both.
    assert_same_sequence(run, "after")
    assert run.tokens("after", EXTPROC) == ["west"] * 4
