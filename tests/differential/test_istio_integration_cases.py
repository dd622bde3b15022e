"""Istio's own locality integration test cases, replayed on the reference and on extproc.

istio/istio ``tests/integration/pilot/locality_test.go`` checks locality load balancing with
four cases (Prioritized, Failover, Distribute, FailoverPriority) and one DestinationRule
shape: ``maxEjectionPercent: 100``, ``interval: 1s``, ``baseEjectionTime: 10m`` and a
``connectTimeout`` of 250ms. The client sits in ``region1/zone1/subzone1``. Its failing
endpoint is a name that resolves to nothing (``fake-should-fail.example.com``), so its
priority is empty from the start and traffic moves on without any ejection. The
same cases run here, on both proxies, with the same parameters.
"""

from __future__ import annotations

import pytest

from extproc.wire import DataPath

from .scenario import (
    REFERENCE,
    Requests,
    Scenario,
    Upstream,
    assert_same_sequence,
    assert_spread,
    run_scenario,
)
from .test_failover import destination_rule

pytestmark = pytest.mark.e2e

CLIENT = "region1/zone1/subzone1"
# Names as locality_test.go gives its endpoints; the unresolvable one is its own.
CLOSE = Upstream("close", "127.0.3.1", ("close.example.com",))
NEAR = Upstream("near", "127.0.3.2", ("near.example.com",))
FAR = Upstream("far", "127.0.3.3", ("far.example.com",))
UNRESOLVABLE = "fake-should-fail.example.com"

# locality_test.go's DestinationRule shape, with its settings that matter here.
ITEST_OUTLIER = (
    "connectionPool:\n  tcp:\n    connectTimeout: 250ms\n"
    "outlierDetection:\n"
    "  consecutive5xxErrors: 1\n  interval: 1s\n  baseEjectionTime: 10m\n"
    "  maxEjectionPercent: 100\n"
)


def service_entry(*endpoints: tuple[str, str, str], resolution: str = "DNS") -> str:
    """A ServiceEntry with (address, locality, labels) endpoints."""
    lines = "".join(
        f"  - address: {address}\n    locality: {locality}\n"
        + (f"    labels: {{{labels}}}\n" if labels else "")
        for address, locality, labels in endpoints
    )
    return (
        "apiVersion: networking.istio.io/v1beta1\n"
        "kind: ServiceEntry\n"
        "metadata:\n  name: locality\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  location: MESH_EXTERNAL\n"
        "  ports:\n"
        "  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}\n"
        f"  resolution: {resolution}\n"
        "  endpoints:\n" + lines
    )


PRIORITIZED = Scenario(
    service_entry(
        ("close.example.com", "region1/zone1/subzone1", ""),
        ("near.example.com", "region1/zone1/subzone2", ""),
        ("far.example.com", "region2/zone1/subzone1", ""),
    )
    + destination_rule(ITEST_OUTLIER),
    (CLOSE, NEAR, FAR),
    (Requests("prioritized", 10, 0.02),),
    locality=CLIENT,
)


async def test_prioritized_the_closest_locality_takes_everything(data_path: DataPath) -> None:
    # "Prioritized": same subzone (P0) beats same zone (P1) and another region (P2).
    run = await run_scenario(PRIORITIZED, data_path)
    assert_same_sequence(run, "prioritized")
    assert run.tokens("prioritized", REFERENCE) == ["close"] * 10


FAILOVER = Scenario(
    service_entry(
        (UNRESOLVABLE, "region1/zone1/subzone1", ""),
        ("near.example.com", "region2/zone2/subzone2", ""),
        ("far.example.com", "region3/zone3/subzone3", ""),
    )
    + destination_rule(
        ITEST_OUTLIER + "loadBalancer:\n  localityLbSetting:\n    failover:\n"
        "    - {from: region1, to: region3}\n"
    ),
    (NEAR, FAR),
    (Requests("failover", 10, 0.02),),
    locality=CLIENT,
)


async def test_failover_an_empty_closest_locality_moves_traffic_to_the_failover_region(
    data_path: DataPath,
) -> None:
    # "Failover": the closest endpoint never resolves; region3 is the failover target of
    # region1, so it comes before region2 (which drops to the last tier).
    run = await run_scenario(FAILOVER, data_path)
    assert_same_sequence(run, "failover")
    assert run.tokens("failover", REFERENCE) == ["far"] * 10


DISTRIBUTE = Scenario(
    service_entry(
        ("close.example.com", "region1/zone1/subzone1", ""),
        ("near.example.com", "region1/zone2/subzone1", ""),
        ("far.example.com", "region3/zone3/subzone3", ""),
    )
    + destination_rule(
        ITEST_OUTLIER + "loadBalancer:\n  localityLbSetting:\n    distribute:\n"
        "    - from: region1/zone1/subzone1\n"
        '      to: {"region1/zone1/*": 80, "region1/zone2/*": 20}\n'
    ),
    (CLOSE, NEAR, FAR),
    (Requests("distribute", 200),),
    locality=CLIENT,
    concurrency=2,
)


async def test_distribute_sends_80_and_20_percent_and_nothing_elsewhere(
    data_path: DataPath,
) -> None:
    # "Distribute": 80/20 (locality_test.go allows ±3 of 50 requests; the binomial bound of
    # assert_spread over 200 requests is the stricter one here). region3 is named by no
    # ``to`` key, so it gets nothing at all.
    run = await run_scenario(DISTRIBUTE, data_path)
    assert_spread(run, "distribute", {"close": 0.8, "near": 0.2})


FAILOVER_PRIORITY = Scenario(
    service_entry(
        (CLOSE.ip, "region2/zone2/subzone2", "app: other"),
        (NEAR.ip, "region3/zone3/subzone3", "app: mine"),
        (FAR.ip, "region1/zone1/subzone1", "app: other"),
        # The reference translates failoverPriority for STATIC endpoints only: pilot's handling
        # of it for DNS ServiceEntries changed in 2026 (reference.py).
        resolution="STATIC",
    )
    + destination_rule(
        ITEST_OUTLIER + "loadBalancer:\n  localityLbSetting:\n    failoverPriority:\n"
        "    - app\n    - topology.kubernetes.io/region\n"
    ),
    (CLOSE, NEAR, FAR),
    (Requests("labels", 10, 0.02),),
    locality=CLIENT,
    labels=(("app", "mine"),),
)


async def test_failover_priority_matching_labels_win_over_the_closer_region(
    data_path: DataPath,
) -> None:
    # "FailoverPriority": the endpoint sharing the client's ``app`` label is P0 although it is
    # in another region; the same-region endpoint with another label is only P1.
    run = await run_scenario(FAILOVER_PRIORITY, data_path)
    assert_same_sequence(run, "labels")
    assert run.tokens("labels", REFERENCE) == ["near"] * 10
