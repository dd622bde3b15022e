"""Locality priorities, as Istio's LbPriority and applyLocalityFailover compute them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.locality import endpoint_priorities, lb_priority
from extproc.core.policy import Endpoint, Failover, Locality
from extproc.testing import BLOG_OUTLIER, endpoint, failover, service

EAST = ("dynamodb.us-east-1.amazonaws.com", "us-east1")
WEST = ("dynamodb.us-west-1.amazonaws.com", "us-west")
EU = ("dynamodb.eu-west-1.amazonaws.com", "eu-west")
BLOG_FAILOVER = failover(("us-east1", "us-west"))


@pytest.mark.parametrize(
    ("workload", "endpoint_locality", "expected"),
    [
        pytest.param("r1/z1/s1", "r1/z1/s1", 0, id="all-equal"),
        pytest.param("r1/z1/s1", "r1/z1/s2", 1, id="region-zone-equal"),
        pytest.param("r1/z1/s1", "r1/z2/s1", 2, id="region-equal"),
        pytest.param("r1/z1/s1", "r2/z1/s1", 3, id="region-differs"),
        pytest.param("", "", 0, id="both-empty-compare-equal"),
        pytest.param("us-east1", "us-east1", 0, id="region-only-both"),
        pytest.param("us-east1/us-east1-b", "us-east1", 2, id="client-zone-vs-empty-zone"),
        pytest.param("", "us-east1", 3, id="client-without-locality"),
        pytest.param("r1/z1/s1/extra", "r1/z1/s1", 0, id="fourth-segment-ignored"),
    ],
)
def test_lb_priority_tiers_by_shared_locality_prefix(
    workload: str, endpoint_locality: str, expected: int
) -> None:
    assert lb_priority(Locality.parse(workload), Locality.parse(endpoint_locality)) == expected


@pytest.mark.parametrize(
    ("workload", "endpoints", "failovers", "expected"),
    [
        pytest.param("us-east1", [EAST, WEST], BLOG_FAILOVER, (0, 1), id="blog-east-client"),
        pytest.param(
            "us-east1/us-east1-b", [EAST, WEST], BLOG_FAILOVER, (0, 1), id="blog-east-client-zoned"
        ),
        pytest.param("us-west", [EAST, WEST], BLOG_FAILOVER, (1, 0), id="blog-west-client"),
        pytest.param("eu-west", [EAST, WEST], BLOG_FAILOVER, (0, 0), id="client-in-third-region"),
        pytest.param("", [EAST, WEST], BLOG_FAILOVER, (0, 0), id="client-without-locality"),
        pytest.param("us-east1", [EAST, WEST], (), (0, 1), id="no-failover-list-region-tiers"),
        pytest.param(
            "us-east1", [EAST, WEST, EU], BLOG_FAILOVER, (0, 1, 2), id="third-region-below-target"
        ),
        pytest.param(
            "us-west",
            [EAST, WEST, EU],
            failover(("us-east1", "us-west"), ("us-west", "eu-west")),
            (2, 0, 1),
            id="three-region-list-west-client",
        ),
        pytest.param(
            "eu-west",
            [EAST, WEST, EU],
            failover(("us-east1", "us-west"), ("us-west", "eu-west"), ("eu-west", "us-east1")),
            (1, 2, 0),
            id="three-region-list-eu-client",
        ),
        pytest.param(
            "us-east1",
            [EAST, WEST, EU],
            failover(("us-east1", "eu-west"), ("us-east1", "us-west")),
            (0, 2, 1),
            id="first-matching-entry-wins",
        ),
        pytest.param(
            "us-east1",
            [EAST, WEST, EU],
            failover(("eu-west", "us-west")),
            (0, 1, 1),
            id="entries-for-other-regions-ignored",
        ),
    ],
)
def test_endpoint_priorities_follow_apply_locality_failover(
    workload: str,
    endpoints: list[tuple[str, str]],
    failovers: tuple[Failover, ...],
    expected: tuple[int, ...],
) -> None:
    svc = service(endpoints, outlier=BLOG_OUTLIER, failover=failovers)
    assert endpoint_priorities(svc, Locality.parse(workload)) == expected


def test_istio_task_table_compacts_tiers_without_gaps() -> None:
    # istio.io failover task: client region1/zone1; tiers 0,2,3,4 become 0,1,2,3.
    svc = service(
        [
            endpoint("a", "region1/zone1"),
            endpoint("b", "region1/zone2"),
            endpoint("c", "region2/zone3"),
            endpoint("d", "region3/zone4"),
        ],
        outlier=BLOG_OUTLIER,
        failover=failover(("region1", "region2")),
    )
    assert endpoint_priorities(svc, Locality.parse("region1/zone1")) == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("outlier_set", "enabled"),
    [
        pytest.param(False, True, id="no-outlier-detection"),
        pytest.param(True, False, id="locality-lb-disabled"),
        pytest.param(False, False, id="neither"),
    ],
)
def test_without_failover_gate_every_endpoint_is_priority_zero(
    outlier_set: bool, enabled: bool
) -> None:
    svc = service(
        [EAST, WEST, EU],
        outlier=BLOG_OUTLIER if outlier_set else None,
        failover=BLOG_FAILOVER,
        locality_lb_enabled=enabled,
    )
    assert endpoint_priorities(svc, Locality.parse("us-east1")) == (0, 0, 0)


def test_service_without_endpoints_has_no_priorities() -> None:
    assert endpoint_priorities(service([], outlier=BLOG_OUTLIER), Locality()) == ()


_PARTS = st.sampled_from(["", "a", "b"])
_LOCALITIES = st.builds(Locality, _PARTS, _PARTS, _PARTS)


@given(
    workload=_LOCALITIES,
    localities=st.lists(_LOCALITIES, min_size=1, max_size=8),
    pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["a", "b"]))),
)
def test_priorities_run_from_zero_without_gaps(
    workload: Locality, localities: list[Locality], pairs: list[tuple[str, str]]
) -> None:
    svc = service(
        [Endpoint(f"10.0.0.{i}", 443, locality=loc) for i, loc in enumerate(localities)],
        outlier=BLOG_OUTLIER,
        failover=failover(*pairs),
    )
    priorities = endpoint_priorities(svc, workload)
    assert len(priorities) == len(localities)
    assert set(priorities) == set(range(max(priorities) + 1))
