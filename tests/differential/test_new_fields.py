"""Differential tests for DestinationRule fields extproc is gaining: ``distribute``,
``failoverPriority``, ``consecutiveGatewayErrors`` and the local-origin split.

Same method as ``test_failover.py``: the same YAML and faults on Istio's sidecar Envoy (the
reference) and on extproc, compared request by request.
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
    Upstream,
    assert_no_more_failures,
    assert_same_sequence,
    assert_spread,
    run_scenario,
)
from .test_failover import EAST, SEED_SE, WEST, destination_rule

pytestmark = pytest.mark.e2e

DISTRIBUTE = Scenario(
    SEED_SE
    + destination_rule(
        "loadBalancer:\n  localityLbSetting:\n    distribute:\n"
        "    - from: us-east1/*\n"
        '      to: {"us-east1/*": 80, "us-west/*": 20}\n'
    ),
    (EAST, WEST),
    (Requests("spread", 200),),
    concurrency=2,
)


async def test_distribute_splits_80_20_between_regions(data_path: DataPath) -> None:
    # distribute sets locality weights 80 and 20 in one priority (applyLocalityWeights);
    # Envoy's locality-weighted pick then sends 80 % to us-east1.
    run = await run_scenario(DISTRIBUTE, data_path)
    assert run.failures("spread", EXTPROC) == 0
    assert_spread(run, "spread", {"east": 0.8, "west": 0.2})


CANARY = Upstream("canary", "127.0.3.1")
PROD = Upstream("prod", "127.0.3.2")

FAILOVER_PRIORITY = Scenario(
    "apiVersion: networking.istio.io/v1beta1\n"
    "kind: ServiceEntry\n"
    "metadata:\n  name: external-svc-static\n"
    "spec:\n"
    "  hosts: [mydb.com]\n"
    "  location: MESH_EXTERNAL\n"
    "  ports:\n"
    "  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}\n"
    "  resolution: STATIC\n"
    "  endpoints:\n"
    "  - {address: 127.0.3.1, locality: us-east1, labels: {track: canary}}\n"
    "  - {address: 127.0.3.2, locality: us-west, labels: {track: prod}}\n"
    + destination_rule(
        "outlierDetection: {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s}\n"
        "loadBalancer:\n  localityLbSetting:\n    failoverPriority: [track]\n"
    ),
    (CANARY, PROD),
    (
        Requests("labels first", 5, 0.05),
        SetMode("prod", Mode.FAIL_503),
        Requests("next tier", 6, 0.05),
    ),
    labels=(("track", "prod"),),
)


async def test_failover_priority_prefers_matching_labels_over_locality(
    data_path: DataPath,
) -> None:
    # The workload (us-east1, track=prod): the prod endpoint in us-west is P0 because its
    # label matches, the canary in the workload's own region P1 (applyFailoverPriorities;
    # locality failover is not applied when failoverPriority is set without failover).
    run = await run_scenario(FAILOVER_PRIORITY, data_path)
    assert_same_sequence(run, "labels first")
    assert_same_sequence(run, "next tier")
    assert run.tokens("labels first", REFERENCE) == ["prod"] * 5
    assert run.tokens("next tier", REFERENCE) == ["<503>"] + ["canary"] * 5


GATEWAY_ERRORS = Scenario(
    SEED_SE
    + destination_rule(
        "outlierDetection:\n"
        "  consecutive5xxErrors: 0\n  consecutiveGatewayErrors: 1\n"
        "  interval: 0.2s\n  baseEjectionTime: 30s\n"
    ),
    (EAST, WEST),
    (Requests("warm", 3, 0.05), SetMode("east", Mode.FAIL_503), Requests("after", 6, 0.05)),
)


async def test_gateway_errors_alone_eject_on_503(data_path: DataPath) -> None:
    # consecutive5xxErrors 0 turns the 5xx detector off; consecutiveGatewayErrors 1 ejects on
    # the first 502/503/504.
    run = await run_scenario(GATEWAY_ERRORS, data_path)
    assert_same_sequence(run, "after")
    assert run.tokens("after", REFERENCE) == ["<503>"] + ["west"] * 5


def _split(fault: Mode) -> Scenario:
    return Scenario(
        SEED_SE
        + destination_rule(
            "outlierDetection:\n"
            "  consecutive5xxErrors: 0\n"
            "  splitExternalLocalOriginErrors: true\n  consecutiveLocalOriginFailures: 1\n"
            "  interval: 0.2s\n  baseEjectionTime: 30s\n"
        ),
        (EAST, WEST),
        (
            Requests("warm", 3, 0.05),
            SetMode("east", fault),
            Requests("trip", 1),
            Requests("after", 6, 0.05),
        ),
    )


async def test_split_local_origin_ejects_on_a_refused_connect(data_path: DataPath) -> None:
    # With the split, a refused connect is a local-origin failure: one is enough here.
    run = await run_scenario(_split(Mode.REFUSE), data_path)
    assert_no_more_failures(run, "trip")
    assert_same_sequence(run, "after")
    assert run.tokens("after", REFERENCE) == ["west"] * 6


async def test_split_local_origin_ignores_503_answers(data_path: DataPath) -> None:
    # ... and a 503 answer is an upstream error, which only the (disabled) 5xx detector sees.
    run = await run_scenario(_split(Mode.FAIL_503), data_path)
    assert_same_sequence(run, "trip")
    assert_same_sequence(run, "after")
    assert run.tokens("after", REFERENCE) == ["<503>"] * 6
