"""Locality priorities and weights, as pilot computes them (loadbalancer.go, util.go)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.locality import (
    LABEL_CLUSTER,
    LABEL_NETWORK,
    LABEL_REGION,
    LABEL_SUBZONE,
    LABEL_ZONE,
    SERVICE_ENTRY_CLUSTER_ID,
    endpoint_labels,
    endpoint_priorities,
    failover_priority,
    lb_priority,
    load_assignment,
    locality_match,
    workload_labels,
)
from extproc.core.policy import (
    Distribute,
    Endpoint,
    Failover,
    Locality,
    LocalityLbSetting,
    Service,
    Workload,
)
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
    assert endpoint_priorities(svc, Workload(Locality.parse(workload))) == expected


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
    assert endpoint_priorities(svc, Workload(Locality.parse("region1/zone1"))) == (0, 1, 2, 3)


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
    assert endpoint_priorities(svc, Workload(Locality.parse("us-east1"))) == (0, 0, 0)


def test_service_without_endpoints_has_no_priorities() -> None:
    assert endpoint_priorities(service([], outlier=BLOG_OUTLIER), Workload(Locality())) == ()


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
    priorities = endpoint_priorities(svc, Workload(workload))
    assert len(priorities) == len(localities)
    assert set(priorities) == set(range(max(priorities) + 1))


# --- locality patterns, labels ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("locality", "pattern", "expected"),
    [
        pytest.param("us-east/a/1", "us-east/a/1", True, id="exact"),
        pytest.param("us-east/a/1", "us-east", True, id="empty-zone-is-wildcard"),
        pytest.param("us-east/a/1", "us-east/a", True, id="empty-subzone-is-wildcard"),
        pytest.param("us-east/a/1", "us-east/*", True, id="zone-star"),
        pytest.param("us-east/a/1", "us-east/a/*", True, id="subzone-star"),
        pytest.param("us-east/a/1", "*", True, id="region-star"),
        pytest.param("us-east/a/1", "us-east/b", False, id="other-zone"),
        pytest.param("us-east/a/1", "us-east/a/2", False, id="other-subzone"),
        pytest.param("us-east/a/1", "us-west", False, id="other-region"),
        pytest.param("", "us-east", False, id="no-locality-vs-region"),
        pytest.param("", "*", True, id="no-locality-vs-star"),
    ],
)
def test_locality_match_treats_star_and_missing_parts_as_wildcards(
    locality: str, pattern: str, expected: bool
) -> None:
    assert locality_match(Locality.parse(locality), pattern) is expected


def test_endpoint_labels_gain_istio_topology_labels() -> None:
    ep = Endpoint(
        "10.0.0.1",
        443,
        locality=Locality.parse("us-east/a/1"),
        labels=(("app", "db"), (LABEL_REGION, "stale")),
        network="net-1",
    )
    assert endpoint_labels(ep) == {
        "app": "db",
        LABEL_REGION: "us-east",
        LABEL_ZONE: "a",
        LABEL_SUBZONE: "1",
        LABEL_CLUSTER: SERVICE_ENTRY_CLUSTER_ID,
        LABEL_NETWORK: "net-1",
    }


def test_a_network_label_wins_over_the_endpoint_network() -> None:
    # AugmentLabels sets the network only when the labels do not name one.
    ep = Endpoint("10.0.0.1", 443, labels=((LABEL_NETWORK, "from-label"),), network="net-1")
    assert endpoint_labels(ep)[LABEL_NETWORK] == "from-label"


def test_workload_labels_gain_locality_and_cluster_but_keep_missing_parts_out() -> None:
    workload = Workload(Locality.parse("us-east"), labels=(("app", "client"),))
    assert workload_labels(workload) == {
        "app": "client",
        LABEL_REGION: "us-east",
        LABEL_CLUSTER: "Kubernetes",
    }


# --- failoverPriority -------------------------------------------------------------------------

PROXY = {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize(
    ("priority_labels", "endpoint", "expected"),
    [
        pytest.param(["a", "b", "c"], {"a": "1", "b": "2", "c": "3"}, 0, id="all-match"),
        pytest.param(["a", "b", "c"], {"a": "1", "b": "2", "c": "x"}, 1, id="last-differs"),
        pytest.param(["a", "b", "c"], {"a": "1", "b": "x", "c": "3"}, 2, id="second-differs"),
        pytest.param(["a", "b", "c"], {"a": "x", "b": "2", "c": "3"}, 3, id="first-differs"),
        pytest.param(["a", "b", "c"], {}, 3, id="no-labels"),
        pytest.param(["a", "d"], {"a": "1"}, 0, id="missing-on-both-sides-matches"),
        pytest.param(["a", "d"], {"a": "1", "d": "4"}, 1, id="missing-on-proxy-only"),
        pytest.param(["a=9", "b"], {"a": "9", "b": "2"}, 0, id="override-matches"),
        pytest.param(["a=9", "b"], {"a": "1", "b": "2"}, 2, id="override-beats-proxy-value"),
        pytest.param(["a=9=9", "b"], {"a": "1", "b": "2"}, 0, id="two-equals-keep-key-only"),
    ],
)
def test_failover_priority_is_n_minus_the_first_mismatch(
    priority_labels: list[str], endpoint: dict[str, str], expected: int
) -> None:
    assert failover_priority(priority_labels, PROXY, endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        pytest.param({LABEL_NETWORK: "n1", LABEL_REGION: "r1", LABEL_ZONE: "z1"}, 0, id="same"),
        pytest.param({LABEL_NETWORK: "n1", LABEL_REGION: "r1", LABEL_ZONE: "z2"}, 1, id="zone"),
        pytest.param({LABEL_NETWORK: "n1", LABEL_REGION: "r2", LABEL_ZONE: "z1"}, 2, id="region"),
        pytest.param({LABEL_NETWORK: "n2", LABEL_REGION: "r1", LABEL_ZONE: "z1"}, 3, id="net"),
        pytest.param({LABEL_NETWORK: "n2", LABEL_REGION: "r1", LABEL_ZONE: "z2"}, 4, id="net-z"),
        pytest.param({LABEL_NETWORK: "n2", LABEL_REGION: "r2", LABEL_ZONE: "z1"}, 5, id="net-r"),
    ],
)
def test_network_first_ranks_other_networks_below_and_by_the_other_labels(
    endpoint: dict[str, str], expected: int
) -> None:
    # istio/istio#60829: network first is preferred, not required.
    proxy = {LABEL_NETWORK: "n1", LABEL_REGION: "r1", LABEL_ZONE: "z1"}
    labels = [LABEL_NETWORK, LABEL_REGION, LABEL_ZONE]
    assert failover_priority(labels, proxy, endpoint) == expected


def test_network_elsewhere_in_the_list_is_an_ordinary_label() -> None:
    proxy = {LABEL_REGION: "r1", LABEL_NETWORK: "n1"}
    endpoint = {LABEL_REGION: "r1", LABEL_NETWORK: "n2"}
    assert failover_priority([LABEL_REGION, LABEL_NETWORK], proxy, endpoint) == 1


def _priority_service(
    endpoints: list[Endpoint],
    priority_labels: tuple[str, ...],
    failovers: tuple[Failover, ...] = (),
    outlier_set: bool = True,
) -> Service:
    svc = service(endpoints, outlier=BLOG_OUTLIER if outlier_set else None)
    return replace(
        svc,
        locality_lb=LocalityLbSetting(failover=failovers, failover_priority=priority_labels),
    )


def _ep(address: str, locality: str = "", weight: int = 1, **labels: str) -> Endpoint:
    return Endpoint(
        address,
        443,
        locality=Locality.parse(locality),
        labels=tuple(labels.items()),
        weight=weight,
    )


def test_failover_priority_orders_endpoints_by_labels_and_compacts() -> None:
    svc = _priority_service(
        [_ep("a", tier="gold", rack="1"), _ep("b", tier="gold"), _ep("c", tier="bronze")],
        ("tier", "rack"),
    )
    workload = Workload(labels=(("tier", "gold"), ("rack", "1")))
    assert endpoint_priorities(svc, workload) == (0, 1, 2)


def test_failover_priority_uses_the_topology_labels_of_the_localities() -> None:
    svc = _priority_service(
        [_ep("a", "r1/z1"), _ep("b", "r1/z2"), _ep("c", "r2/z1")],
        (LABEL_REGION, LABEL_ZONE),
    )
    assert endpoint_priorities(svc, Workload(Locality.parse("r1/z1"))) == (0, 1, 2)


def test_failover_priority_is_skipped_for_a_proxy_without_labels() -> None:
    svc = _priority_service([_ep("a"), _ep("b", "r2")], (LABEL_REGION,))
    # No labels at all: applyFailoverPriorities returns at once, one priority.
    assert endpoint_priorities(svc, Workload(cluster_id="")) == (0, 0)
    # A sidecar always has its cluster label, so the regions are compared ("" == "" for a).
    assert endpoint_priorities(svc, Workload()) == (0, 1)
    assert endpoint_priorities(svc, Workload(Locality.parse("r2"))) == (1, 0)


def test_failover_priority_needs_outlier_detection() -> None:
    svc = _priority_service([_ep("a", "r1"), _ep("b", "r2")], (LABEL_REGION,), outlier_set=False)
    assert endpoint_priorities(svc, Workload(Locality.parse("r1"))) == (0, 0)


def test_failover_priority_splits_a_locality_and_resums_its_weight() -> None:
    svc = _priority_service(
        [_ep("a", "r1", weight=3, tier="gold"), _ep("b", "r1", weight=2), _ep("c", "r1")],
        ("tier",),
    )
    groups = load_assignment(svc, Workload(labels=(("tier", "gold"),))).groups
    assert [(g.priority, g.weight, g.endpoints) for g in groups] == [(0, 3, (0,)), (1, 3, (1, 2))]


def test_failover_composes_with_failover_priority_as_priority_times_five_plus_tier() -> None:
    # Labels first (gold before the rest), then region failover inside each label tier.
    svc = _priority_service(
        [
            _ep("a", "us-east1", tier="gold"),
            _ep("b", "us-west", tier="gold"),
            _ep("c", "eu-west", tier="gold"),
            _ep("d", "us-east1"),
            _ep("e", "us-west"),
        ],
        ("tier",),
        failover(("us-east1", "us-west")),
    )
    workload = Workload(Locality.parse("us-east1"), labels=(("tier", "gold"),))
    # raw: gold -> 0*5 + (0, 3, 4); others -> 1*5 + (0, 3) => 0, 3, 4, 5, 8 -> 0..4
    assert endpoint_priorities(svc, workload) == (0, 1, 2, 3, 4)


def test_locality_weighted_config_follows_istio_rules() -> None:
    base = service([EAST, WEST], outlier=BLOG_OUTLIER)
    distribute = (Distribute("*", (("us-east1", 100),)),)

    def weighted(svc: Service) -> bool:
        return load_assignment(svc, Workload(Locality.parse("us-east1"))).locality_weighted

    assert not weighted(base)  # mesh default: failover tiers, no locality weights
    assert weighted(replace(base, locality_lb=LocalityLbSetting(failover=BLOG_FAILOVER)))
    assert weighted(replace(base, locality_lb=LocalityLbSetting(failover_priority=("a",))))
    assert not weighted(
        replace(base, outlier_detection=None, locality_lb=LocalityLbSetting(failover=BLOG_FAILOVER))
    )
    no_outlier = replace(base, outlier_detection=None)
    assert weighted(replace(no_outlier, locality_lb=LocalityLbSetting(distribute=distribute)))
    disabled = LocalityLbSetting(enabled=False, distribute=distribute)
    assert not weighted(replace(base, locality_lb=disabled))


# --- distribute -------------------------------------------------------------------------------


def _distributed(
    endpoints: list[Endpoint], *rules: tuple[str, dict[str, int]], outlier_set: bool = False
) -> Service:
    svc = service(endpoints, outlier=BLOG_OUTLIER if outlier_set else None)
    setting = LocalityLbSetting(
        distribute=tuple(Distribute(src, tuple(to.items())) for src, to in rules)
    )
    return replace(svc, locality_lb=setting)


def _weights(svc: Service, workload: str) -> dict[str, int]:
    groups = load_assignment(svc, Workload(Locality.parse(workload))).groups
    return {str(g.locality): g.weight for g in groups}


def test_distribute_gives_each_target_its_weight_in_one_priority() -> None:
    svc = _distributed(
        [_ep("a", "us-east/a"), _ep("b", "us-west/a")],
        ("us-east/*", {"us-east/a": 80, "us-west/a": 20}),
    )
    assert _weights(svc, "us-east/a") == {"us-east/a": 80, "us-west/a": 20}
    assert endpoint_priorities(svc, Workload(Locality.parse("us-east/a"))) == (0, 0)


def test_distribute_splits_a_wildcard_target_by_original_weight_rounding_up() -> None:
    svc = _distributed(
        [
            _ep("a1", "us-east/a"),
            _ep("a2", "us-east/a"),
            _ep("b", "us-east/b"),
            _ep("w", "us-west"),
        ],
        ("*", {"us-east/*": 80, "us-west": 20}),
    )
    # us-east/a weighs 2, us-east/b 1: ceil(80*2/3) = 54, ceil(80*1/3) = 27.
    assert _weights(svc, "eu") == {"us-east/a": 54, "us-east/b": 27, "us-west": 20}


def test_distribute_drops_localities_no_target_names() -> None:
    svc = _distributed(
        [_ep("a", "us-east/a"), _ep("b", "us-west/a"), _ep("c", "eu/a")],
        ("us-east", {"us-east/a": 50, "us-west/a": 50}),
        outlier_set=True,
    )
    assert endpoint_priorities(svc, Workload(Locality.parse("us-east/a"))) == (0, 0, None)


def test_first_matching_distribute_rule_wins() -> None:
    svc = _distributed(
        [_ep("a", "us-east/a"), _ep("b", "us-west/a")],
        ("us-east/a", {"us-east/a": 90, "us-west/a": 10}),
        ("us-east/*", {"us-east/a": 10, "us-west/a": 90}),
    )
    assert _weights(svc, "us-east/a") == {"us-east/a": 90, "us-west/a": 10}
    assert _weights(svc, "us-east/b") == {"us-east/a": 10, "us-west/a": 90}


def test_no_matching_distribute_rule_keeps_endpoint_weights() -> None:
    svc = _distributed(
        [_ep("a", "us-east/a", weight=3), _ep("b", "us-west/a")],
        ("eu/*", {"us-east/a": 90, "us-west/a": 10}),
    )
    assert _weights(svc, "us-east/a") == {"us-east/a": 3, "us-west/a": 1}
    assert load_assignment(svc, Workload(Locality.parse("us-east/a"))).locality_weighted


def test_a_locality_matching_two_targets_goes_to_the_first() -> None:
    # Validation rejects overlapping targets; the core claims in order, as Istio's loop does.
    svc = _distributed(
        [_ep("a", "us-east/a"), _ep("b", "us-east/b")],
        ("*", {"us-east/a": 60, "us-east/*": 40}),
    )
    assert _weights(svc, "x") == {"us-east/a": 60, "us-east/b": 40}


_REGIONS = st.sampled_from(["r1", "r2", "r3"])
_ZONES = st.sampled_from(["z1", "z2"])


@given(
    endpoints=st.lists(
        st.tuples(_REGIONS, _ZONES, st.integers(min_value=0, max_value=5)), min_size=1
    ),
    split=st.integers(min_value=1, max_value=99),
)
def test_distribute_shares_add_up_to_each_target_weight(
    endpoints: list[tuple[str, str, int]], split: int
) -> None:
    svc = _distributed(
        [_ep(f"10.0.0.{i}", f"{r}/{z}", weight=w) for i, (r, z, w) in enumerate(endpoints)],
        ("*", {"r1/*": split, "r2": 100 - split}),
    )
    groups = load_assignment(svc, Workload(Locality())).groups
    for target, weight in (("r1", split), ("r2", 100 - split)):
        mine = [g.weight for g in groups if g.locality.region == target]
        if mine:
            # ceil per group: the sum reaches the weight, overshooting by less than one each.
            assert weight <= sum(mine) < weight + len(mine)
    assert all(g.locality.region in ("r1", "r2") for g in groups)
    assert {g.priority for g in groups} <= {0}
