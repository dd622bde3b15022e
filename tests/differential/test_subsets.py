"""Differential tests for DestinationRule ``subsets`` routed by a VirtualService: each subset
is its own cluster, with its own outlier state and its own locality failover.
"""

from __future__ import annotations

import pytest

from extproc.istio import load_policy_text
from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Requests,
    Scenario,
    SetMode,
    Upstream,
    assert_same_sequence,
    run_scenario,
)
from .test_virtual_service import virtual_service

pytestmark = pytest.mark.e2e

V1_EAST, V1_WEST = Upstream("v1-east", "127.0.3.1"), Upstream("v1-west", "127.0.3.2")
V2_EAST, V2_WEST = Upstream("v2-east", "127.0.3.3"), Upstream("v2-west", "127.0.3.4")

#: A ServiceEntry with v1 and v2 endpoints in us-east1 and us-west, and a DestinationRule
#: with connectionPool, outlierDetection and subsets v1 and v2.
SERVICE_AND_SUBSETS = (
    "apiVersion: networking.istio.io/v1\n"
    "kind: ServiceEntry\n"
    "metadata:\n  name: db\n"
    "spec:\n"
    "  hosts: [mydb.com]\n"
    "  location: MESH_EXTERNAL\n"
    "  ports:\n"
    "  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}\n"
    "  resolution: STATIC\n"
    "  endpoints:\n"
    "  - {address: 127.0.3.1, locality: us-east1, labels: {version: v1}}\n"
    "  - {address: 127.0.3.2, locality: us-west, labels: {version: v1}}\n"
    "  - {address: 127.0.3.3, locality: us-east1, labels: {version: v2}}\n"
    "  - {address: 127.0.3.4, locality: us-west, labels: {version: v2}}\n"
    "---\n"
    "apiVersion: networking.istio.io/v1\n"
    "kind: DestinationRule\n"
    "metadata:\n  name: db\n"
    "spec:\n"
    "  host: mydb.com\n"
    "  trafficPolicy:\n"
    "    connectionPool:\n"
    "      tcp: {maxConnections: 100, connectTimeout: 1s}\n"
    "      http: {http1MaxPendingRequests: 100, maxRetries: 10}\n"
    "    outlierDetection:\n"
    "      {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s,\n"
    "       maxEjectionPercent: 100}\n"
    "  subsets:\n"
    "  - {name: v1, labels: {version: v1}}\n"
    "  - name: v2\n"
    "    labels: {version: v2}\n"
    "    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"
)

SUBSETS = Scenario(
    SERVICE_AND_SUBSETS
    + virtual_service(
        "- name: canary\n"
        "  match:\n  - headers: {x-version: {exact: v2}}\n"
        "  route:\n  - destination: {host: mydb.com, subset: v2}\n"
        "  timeout: 2s\n"
        "  retries: {attempts: 2, perTryTimeout: 1s, retryOn: 'connect-failure,refused-stream'}\n"
        "- name: stable\n"
        "  route:\n  - destination: {host: mydb.com, subset: v1}\n"
        "  timeout: 2s\n"
    ),
    (V1_EAST, V1_WEST, V2_EAST, V2_WEST),
    (
        Requests("v1", 3, 0.05),
        Requests("v2", 3, 0.05, headers=(("x-version", "v2"),)),
        SetMode("v2-east", Mode.FAIL_503),
        Requests("v2 fails over", 5, 0.05, headers=(("x-version", "v2"),)),
        Requests("v1 unaffected", 3, 0.05),
    ),
)


def test_the_issues_whole_config_reads_without_a_warning() -> None:
    # A ServiceEntry; a DestinationRule with subsets, connectionPool and outlierDetection; a
    # VirtualService with a timeout, retries and a header match.
    policy = load_policy_text(SUBSETS.yaml_for(8080), "subsets.yaml", strict=True)
    assert policy.warnings == ()
    assert {s.cluster_name for s in policy.services} == {
        "outbound|80||mydb.com",
        "outbound|80|v1|mydb.com",
        "outbound|80|v2|mydb.com",
    }


async def test_header_routed_subsets_fail_over_inside_the_subset(data_path: DataPath) -> None:
    # Each subset cluster has its own priorities (us-east1 first for a us-east1 workload)
    # and its own outlier detector: v2's us-east1 endpoint is ejected and v2 fails over to
    # v2's us-west endpoint, while v1 keeps its us-east1 endpoint.
    run = await run_scenario(SUBSETS, data_path)
    for label in ("v1", "v2", "v2 fails over", "v1 unaffected"):
        assert_same_sequence(run, label)
    assert run.tokens("v1", REFERENCE) == ["v1-east"] * 3
    assert run.tokens("v2", REFERENCE) == ["v2-east"] * 3
    assert run.tokens("v2 fails over", EXTPROC) == ["<503>"] + ["v2-west"] * 4
    assert run.tokens("v1 unaffected", EXTPROC) == ["v1-east"] * 3
