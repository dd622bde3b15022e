"""An upstream that resets after its response started, on Istio's Envoy and on extproc.

us-east1 sends the status line, the headers and half the body of a 200, then RST (the
stand-in's ``Mode.RESET``). The client gets a 200 head and a broken body: a failed request.
Envoy's router counts the head's 200 first (``onUpstreamHeaders``) and then the reset as a
local-origin failure (``onUpstreamReset``: ``LocalOriginConnectFailed``, a 503 outside split
mode), so measured on the reference:

- a threshold of 1 (``consecutive5xxErrors``, ``consecutiveGatewayErrors`` or, in split mode,
  ``consecutiveLocalOriginFailures``) ejects us-east1 on the first reset: one failed request;
- a threshold of 2 never ejects it: each 200 head resets the count before the reset counts.

extproc sees the reset through Envoy's access log (``extproc/server/access_log.py``).
"""

from __future__ import annotations

import pytest

from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Requests,
    Scenario,
    SetMode,
    assert_no_more_failures,
    assert_same_sequence,
    run_scenario,
)
from .test_failover import EAST, SEED_SE, WEST, destination_rule

pytestmark = pytest.mark.e2e

#: A request that got the head and not the whole body (``scenario._get``: status 0).
BROKEN = "<0>"


def _resetting_east(outlier_detection: str) -> Scenario:
    return Scenario(
        SEED_SE + destination_rule(outlier_detection),
        (EAST, WEST),
        (
            Requests("warm", 3, 0.02),
            SetMode("east", Mode.RESET),
            # The stand-in resets 50 ms after the head: 100 ms apart, a request has ended
            # before the next starts.
            Requests("resetting", 10, 0.1),
        ),
        concurrency=2,
    )


_TIMES = "  interval: 0.2s\n  baseEjectionTime: 30s\n"


@pytest.mark.parametrize(
    "outlier_detection",
    [
        "outlierDetection:\n  consecutive5xxErrors: 1\n" + _TIMES,
        "outlierDetection:\n  consecutive5xxErrors: 0\n  consecutiveGatewayErrors: 1\n" + _TIMES,
        "outlierDetection:\n  consecutive5xxErrors: 0\n  splitExternalLocalOriginErrors: true\n"
        "  consecutiveLocalOriginFailures: 1\n" + _TIMES,
    ],
    ids=["5xx", "gateway", "local-origin"],
)
async def test_a_reset_after_the_response_started_ejects_on_the_first_like_istio(
    data_path: DataPath, outlier_detection: str
) -> None:
    run = await run_scenario(_resetting_east(outlier_detection), data_path)
    assert_same_sequence(run, "warm")
    assert run.tokens("resetting", REFERENCE) == [BROKEN] + ["west"] * 9
    assert_no_more_failures(run, "resetting")
    assert run.tokens("resetting", EXTPROC) == [BROKEN] + ["west"] * 9


async def test_a_200_head_resets_the_count_before_its_reset_counts_like_istio(
    data_path: DataPath,
) -> None:
    # consecutive5xxErrors: 2. Per request Envoy counts 200 (the count goes to 0), then the
    # reset (1): never 2, so us-east1 is never ejected and every request fails, on both. On
    # the lua path the head's success reaches the brain batched, after the reset; counting
    # the resets alone would eject at the second.
    run = await run_scenario(
        _resetting_east("outlierDetection:\n  consecutive5xxErrors: 2\n" + _TIMES), data_path
    )
    assert run.tokens("resetting", REFERENCE) == [BROKEN] * 10
    assert_same_sequence(run, "resetting")
