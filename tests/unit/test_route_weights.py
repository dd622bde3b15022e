"""The routing table the fast path publishes reproduces the picks' spread."""

from __future__ import annotations

import random

from extproc.core.cluster import ClusterState
from extproc.core.outlier import AttemptResult
from extproc.core.policy import LbAlgorithm, Locality, Workload
from extproc.testing import endpoint, failover, outlier, service

EAST = "10.0.0.1:443"
EAST_B = "10.0.0.3:443"
WEST = "10.0.0.2:443"


def _state(
    *endpoints: tuple[str, str], max_ejection_percent: int = 100, min_health: int = 0
) -> ClusterState:
    svc = service(
        endpoints=[endpoint(a, loc) for a, loc in endpoints],
        outlier=outlier(max_ejection_percent=max_ejection_percent, min_health_percent=min_health),
    )
    return ClusterState(svc, Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(3))


def test_the_workload_region_takes_everything_while_healthy() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west"))
    assert state.route_weights(0.0) == ((EAST, 100_000),)


def test_an_ejected_host_leaves_the_table_and_the_failover_region_takes_over() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west"))
    before = state.generation
    state.record(EAST, AttemptResult.answer(503), 1.0)
    assert state.route_weights(1.0) == ((WEST, 100_000),)
    assert state.generation > before


def test_one_of_two_local_hosts_ejected_spills_30_percent_over() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.3", "us-east1"), ("10.0.0.2", "us-west"))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    assert dict(state.route_weights(1.0)) == {EAST_B: 70_000, WEST: 30_000}


def test_nothing_can_serve_gives_an_empty_table() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west"))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    state.record(WEST, AttemptResult.answer(503), 1.0)
    assert state.route_weights(1.0) == ()


def test_panic_lists_every_host_of_the_priority() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west"), min_health=50)
    state.record(EAST, AttemptResult.answer(503), 1.0)
    state.record(WEST, AttemptResult.answer(503), 1.0)
    # Both priorities below 50 % healthy: total panic, load by host counts (50/50).
    assert dict(state.route_weights(1.0)) == {EAST: 50_000, WEST: 50_000}


def test_the_table_matches_the_picks_statistically() -> None:
    state = _state(("10.0.0.1", "us-east1"), ("10.0.0.3", "us-east1"), ("10.0.0.2", "us-west"))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    weights = dict(state.route_weights(1.0))
    picks = [state.pick(1.0).host for _ in range(20_000)]
    for host, weight in weights.items():
        assert abs(picks.count(host) / len(picks) - weight / 100_000) < 0.02


def _locality_weighted(lb: LbAlgorithm = LbAlgorithm.ROUND_ROBIN) -> ClusterState:
    """us-east1 (two endpoints, weights 3 and 1) and us-west (one) share P0 for eu-west."""
    svc = service(
        endpoints=[
            endpoint("10.0.0.1", "us-east1", weight=3),
            endpoint("10.0.0.3", "us-east1", weight=1),
            endpoint("10.0.0.2", "us-west", weight=4),
        ],
        outlier=outlier(max_ejection_percent=100),
        failover=failover(("us-east1", "us-west")),
        lb=lb,
    )
    return ClusterState(svc, Workload(Locality.parse("eu-west")), now=0.0, rng=random.Random(3))


def test_each_host_gets_locality_share_times_host_share() -> None:
    state = _locality_weighted()
    # Localities weigh 4 and 4; inside us-east1 the hosts split 3:1.
    assert dict(state.route_weights(0.0)) == {EAST: 37_500, EAST_B: 12_500, WEST: 50_000}


def test_an_ejection_lowers_its_locality_weight_by_availability() -> None:
    state = _locality_weighted()
    state.record(EAST, AttemptResult.answer(503), 1.0)
    # P0, the only priority, keeps 100 %. us-east1: 4 * min(1, 1.4 * 1/2) = 2.8; us-west: 4.
    weights = dict(state.route_weights(1.0))
    assert weights == {EAST_B: int(100_000 * 2.8 / 6.8), WEST: int(100_000 * 4 / 6.8)}


def test_random_ignores_host_weights_but_not_locality_weights() -> None:
    state = _locality_weighted(LbAlgorithm.RANDOM)
    assert dict(state.route_weights(0.0)) == {EAST: 25_000, EAST_B: 25_000, WEST: 50_000}


def test_the_locality_weighted_table_matches_the_picks_statistically() -> None:
    state = _locality_weighted()
    state.record(EAST, AttemptResult.answer(503), 1.0)
    weights = dict(state.route_weights(1.0))
    picks = [state.pick(1.0).host for _ in range(20_000)]
    for host, weight in weights.items():
        assert abs(picks.count(host) / len(picks) - weight / 100_000) < 0.02
