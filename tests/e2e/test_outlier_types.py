"""Istio's other outlier detectors on a real Envoy, on both data paths.

``consecutiveGatewayErrors`` (502/503/504 only), ``splitExternalLocalOriginErrors`` with
``consecutiveLocalOriginFailures`` (refused connections counted apart from upstream 5xx), and
``outlierDetectionHttpErrorCodes`` (which answers count as errors at all).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from extproc.demo import SERVICE_ENTRY
from extproc.sandbox import Mode
from extproc.sandbox.client import Reply, get
from extproc.server.admin import endpoints_json
from extproc.server.stack import Stack

from .conftest import EAST, WEST, Region, StackFactory

pytestmark = pytest.mark.e2e

# Istio's default retry policy tries a refused request 3 times; on both paths the retries
# move on to the failover host (previous_priorities), so us-east1 sees one attempt each.
REFUSED_ATTEMPTS_PER_REQUEST = 1


def policy(regions: dict[str, Region], outlier_detection: str) -> str:
    """The seed's ServiceEntry with a DestinationRule carrying ``outlier_detection`` lines."""
    fields = "".join(f"      {line}\n" for line in outlier_detection.strip().splitlines())
    return (
        SERVICE_ENTRY.format(east_port=regions["east"].port, west_port=regions["west"].port)
        + "---\n"
        + "apiVersion: networking.istio.io/v1\n"
        + "kind: DestinationRule\n"
        + "metadata:\n  name: mydynamodb\n"
        + "spec:\n  host: mydb.com\n  trafficPolicy:\n    outlierDetection:\n"
        + "      interval: 1s\n      baseEjectionTime: 30s\n"
        + fields
    )


def east_row(stack: Stack, regions: dict[str, Region]) -> dict[str, Any]:
    rows = {r["address"]: r for r in endpoints_json(stack.app.table, stack.app.now())}
    return rows[f"127.0.0.11:{regions['east'].port}"]


async def request(stack: Stack) -> Reply:
    return await get(stack.settings.listen, "mydb.com")


async def after_ejection(stack: Stack, count: int = 3) -> list[str | None]:
    """Who serves ``count`` requests once every Envoy worker has the post-ejection table.

    On the fast path only the worker that reported the failure gets the new table at once;
    the others refresh theirs within one table TTL (100 ms).
    """
    await asyncio.sleep(0.25)
    return [(await request(stack)).served_by for _ in range(count)]


async def test_gateway_errors_eject_on_503_and_never_on_500(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(
        policy(regions, "consecutive5xxErrors: 0\nconsecutiveGatewayErrors: 1")
    )
    east = regions["east"].servers[0]
    east.set_mode(Mode.FAIL_500)

    replies = [await request(stack) for _ in range(6)]

    # A 500 is a 5xx but no gateway error, and the 5xx detector is off: east keeps serving.
    assert [(r.status, r.served_by) for r in replies] == [(500, EAST)] * 6
    assert east_row(stack, regions)["ejected"] is False

    east.set_mode(Mode.FAIL_503)
    first = await request(stack)
    assert (first.status, first.served_by) == (503, EAST)
    assert east_row(stack, regions)["ejected"] is True
    assert await after_ejection(stack) == [WEST] * 3


async def test_split_mode_ejects_on_refused_connections_only_after_the_local_origin_count(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    # consecutive5xxErrors: 1 alone would eject at the first refused attempt (the seed's
    # story); split mode counts refused connections against consecutiveLocalOriginFailures.
    stack = await start_stack(
        policy(
            regions,
            "consecutive5xxErrors: 1\n"
            "splitExternalLocalOriginErrors: true\n"
            "consecutiveLocalOriginFailures: 5",
        )
    )
    regions["east"].servers[0].set_mode(Mode.REFUSE)
    needed = math.ceil(5 / REFUSED_ATTEMPTS_PER_REQUEST)

    for _ in range(needed):
        assert east_row(stack, regions)["ejected"] is False
        await request(stack)

    row = east_row(stack, regions)
    assert row["ejected"] is True
    assert row["num_ejections"] == 1
    assert await after_ejection(stack) == [WEST] * 3


async def test_split_mode_keeps_upstream_5xx_on_the_5xx_detector(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(
        policy(
            regions,
            "consecutive5xxErrors: 1\n"
            "splitExternalLocalOriginErrors: true\n"
            "consecutiveLocalOriginFailures: 5",
        )
    )
    regions["east"].servers[0].set_mode(Mode.FAIL_500)

    first = await request(stack)

    # The first upstream 500 trips consecutive5xxErrors: 1; nothing local-origin needed.
    assert (first.status, first.served_by) == (500, EAST)
    assert east_row(stack, regions)["ejected"] is True
    assert await after_ejection(stack) == [WEST] * 3


async def test_http_error_codes_decide_which_answers_count(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(
        policy(regions, "consecutive5xxErrors: 1\noutlierDetectionHttpErrorCodes: [500]")
    )
    east = regions["east"].servers[0]
    east.set_mode(Mode.FAIL_503)

    replies = [await request(stack) for _ in range(4)]

    # 503 is not listed: Envoy's router reports it to the detector as a success.
    assert [(r.status, r.served_by) for r in replies] == [(503, EAST)] * 4
    assert east_row(stack, regions)["ejected"] is False

    east.set_mode(Mode.FAIL_500)
    assert (await request(stack)).served_by == EAST
    assert east_row(stack, regions)["ejected"] is True
    assert await after_ejection(stack) == [WEST] * 3
