"""Differential tests for a VirtualService route with weights over subsets: Envoy's
``weighted_clusters`` as pilot writes it (``processWeightedDestination``), with failover
inside the subset a request was weighted to.

A weighted pick is an independent draw per request on each proxy (Envoy: uniform over the
total weight, ``pickWeightedCluster``; extproc's lua script draws the same way), so the two
proxies' sequences are not compared request by request. What is compared:

- Each destination sets a response header naming its subset (on its ``ClusterWeight``): every
  request was served (or failed) by an endpoint of the subset Envoy applied.
- The share of each subset is binomial, p = weight / total over n requests: within 4
  standard deviations, ``4 * sqrt(p(1-p)/n)`` (no floor: unlike round robin or locality
  picking the draws are independent; a false alarm is about 1 in 15 000 per check), and the
  two proxies' shares of each endpoint agree (``assert_spread``).
- After v2's us-east1 endpoint fails and is ejected, every v2 request is served by v2's
  us-west endpoint while v1 keeps us-east1, and extproc fails no more requests than the
  reference (one each: the first v2 request, as retries here are not on 5xx).
"""

from __future__ import annotations

import math

import pytest

from extproc.istio import load_policy_text
from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Requests,
    Run,
    Scenario,
    SetMode,
    assert_no_more_failures,
    assert_spread,
    run_scenario,
)
from .test_subsets import SERVICE_AND_SUBSETS, V1_EAST, V1_WEST, V2_EAST, V2_WEST
from .test_virtual_service import virtual_service

pytestmark = pytest.mark.e2e

#: The response header each destination sets to its subset's name.
SUBSET_HEADER = "x-subset"
V1_SHARE = 0.7
N = 200

WEIGHTED = Scenario(
    SERVICE_AND_SUBSETS
    + virtual_service(
        "- name: split\n"
        "  route:\n"
        "  - destination: {host: mydb.com, subset: v1}\n"
        "    weight: 70\n"
        "    headers: {response: {set: {x-subset: v1}}}\n"
        "  - destination: {host: mydb.com, subset: v2}\n"
        "    weight: 30\n"
        "    headers: {response: {set: {x-subset: v2}}}\n"
        "  timeout: 2s\n"
        "  retries: {attempts: 2, perTryTimeout: 1s, retryOn: 'connect-failure,refused-stream'}\n"
    ),
    (V1_EAST, V1_WEST, V2_EAST, V2_WEST),
    (
        Requests("split", N, read_header=SUBSET_HEADER),
        SetMode("v2-east", Mode.FAIL_503),
        Requests("v2 fails over", N, read_header=SUBSET_HEADER),
    ),
)


def _subset(endpoint: str) -> str:
    return endpoint.split("-", 1)[0]


def _assert_each_request_went_to_its_subset(run: Run, label: str) -> None:
    for proxy in (REFERENCE, EXTPROC):
        for record in run.loop(label, proxy):
            # A failure's detail names who answered ("from v2-east").
            endpoint = record.served_by or record.detail.removeprefix("from ")
            assert record.header in ("v1", "v2"), (proxy, record)
            assert _subset(endpoint) == record.header, (proxy, record)


def _assert_binomial_share(run: Run, label: str) -> None:
    for proxy in (REFERENCE, EXTPROC):
        picks = [r.header for r in run.loop(label, proxy)]
        share = picks.count("v1") / len(picks)
        tolerance = 4 * math.sqrt(V1_SHARE * (1 - V1_SHARE) / len(picks))
        assert abs(share - V1_SHARE) <= tolerance, (proxy, share, run.side_by_side(label))


def test_the_weighted_config_reads_without_a_warning() -> None:
    policy = load_policy_text(WEIGHTED.yaml_for(8080), "weighted.yaml", strict=True)
    assert policy.warnings == ()


async def test_weighted_subsets_fail_over_inside_the_subset(data_path: DataPath) -> None:
    run = await run_scenario(WEIGHTED, data_path)
    for label in ("split", "v2 fails over"):
        _assert_each_request_went_to_its_subset(run, label)
        _assert_binomial_share(run, label)
    # Before the failure: each subset's us-east1 endpoint (priority 0 for a us-east1 workload).
    assert run.failures("split", REFERENCE) == run.failures("split", EXTPROC) == 0
    assert_spread(run, "split", {"v1-east": V1_SHARE, "v2-east": 1 - V1_SHARE})
    # v2-east answers 503: the first v2 request fails (retryOn has no 5xx) and ejects it
    # (consecutive5xxErrors: 1) in v2's cluster only; v2 fails over to v2-west, v1 stays.
    _, reference = assert_no_more_failures(run, "v2 fails over")
    assert reference == 1, run.side_by_side("v2 fails over")
    for proxy in (REFERENCE, EXTPROC):
        records = run.loop("v2 fails over", proxy)
        failed = run.failures("v2 fails over", proxy)
        v2 = [r.token for r in records if r.header == "v2"]
        v1 = [r.token for r in records if r.header == "v1"]
        assert v2 == ["<503>"] * failed + ["v2-west"] * (len(v2) - failed), proxy
        assert v1 == ["v1-east"] * len(v1), proxy
    assert_spread(run, "v2 fails over", {"v1-east": V1_SHARE, "v2-west": 1 - V1_SHARE})
