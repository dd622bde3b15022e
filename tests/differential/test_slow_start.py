"""Differential tests for slow start (``warmup``, ``warmupDurationSecs``): Envoy ramps a host
by the time it created it, a new IP from DNS here, and not after an ejection ends.
"""

from __future__ import annotations

import pytest

from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Record,
    Requests,
    Scenario,
    SetDns,
    SetMode,
    Sleep,
    Upstream,
    run_scenario,
)
from .test_failover import destination_rule, service_entry

pytestmark = pytest.mark.e2e

NAME = "dynamodb.us-east-1.amazonaws.com"
OLD, NEW = Upstream("old", "127.0.5.1", (NAME,)), Upstream("new", "127.0.5.2")
WINDOW_S = 3.0


def _after_first(records: list[Record], name: str, n: int) -> list[Record]:
    """The ``n`` answers from the first one ``name`` served on."""
    for i, record in enumerate(records):
        if record.served_by == name:
            return records[i : i + n]
    return []


def _share(records: list[Record], name: str) -> float:
    return sum(r.served_by == name for r in records) / max(1, len(records))


WARMUP = Scenario(
    service_entry((NAME, "us-east1"))
    + destination_rule(
        "loadBalancer:\n"
        "  simple: ROUND_ROBIN\n"
        f"  warmup: {{duration: {WINDOW_S:g}s, minimumPercent: 10, aggression: 1}}\n"
        "outlierDetection:\n"
        "  {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 1s,\n"
        "   maxEjectionPercent: 50}\n"
    ),
    (OLD, NEW),
    (
        # Past the window of the hosts Envoy created at its start.
        Sleep(WINDOW_S + 0.5),
        SetDns(NAME, ("127.0.5.1", "127.0.5.2")),
        # Each side's resolver finds the new IP within the record's 1 s TTL.
        Requests("ramp", 100, 0.03),
        Sleep(WINDOW_S),
        Requests("warm", 40, 0.02),
        SetMode("new", Mode.FAIL_503),
        Requests("eject", 4, 0.02),
        SetMode("new", Mode.HEALTHY),
        # The 1 s ejection ends at the next 0.2 s detector interval after it; Istio's Envoy
        # then applies it through its 1 s update_merge_window (the README's differences),
        # so the loop waits for that too.
        Sleep(2.6),
        Requests("returned", 40, 0.02),
    ),
)


async def test_a_new_endpoint_ramps_up_and_one_back_from_ejection_does_not(
    data_path: DataPath,
) -> None:
    run = await run_scenario(WARMUP, data_path)
    # The first half second after a side first sends to the new IP: its weight is at most
    # 10 % + 0.5 s / 3 s of the old one's, so it takes well under a third (round robin alone
    # would give it half); on both sides alike.
    shares = {}
    for proxy in (REFERENCE, EXTPROC):
        first = _after_first(run.loop("ramp", proxy), "new", 16)
        assert len(first) == 16, run.side_by_side("ramp")
        shares[proxy] = _share(first, "new")
        assert shares[proxy] <= 0.3, run.side_by_side("ramp")
    assert abs(shares[REFERENCE] - shares[EXTPROC]) <= 0.2, shares
    # After the window, round robin alternates; an endpoint back from an ejection is not new
    # to Envoy (the same host, its creation time unchanged), so it is not ramped again.
    for label in ("warm", "returned"):
        for proxy in (REFERENCE, EXTPROC):
            share = _share(run.loop(label, proxy), "new")
            assert 0.4 <= share <= 0.6, (label, proxy, run.side_by_side(label))
