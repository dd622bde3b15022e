"""ClusterState: the blog's failover story end to end, plus load balancing and DNS membership."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.balancer import Pick, PickReason
from extproc.core.cluster import ClusterState
from extproc.core.outlier import AttemptResult, OutlierAction, OutlierEjectionType
from extproc.core.policy import (
    Distribute,
    Endpoint,
    LbAlgorithm,
    Locality,
    LocalityLbSetting,
    OutlierDetection,
    Resolution,
    Service,
    Workload,
)
from extproc.testing import BLOG_OUTLIER, FakeClock, endpoint, failover, outlier, service

EAST_IP, WEST_IP, EU_IP = "10.0.0.1", "10.0.0.2", "10.0.0.3"
EAST, WEST, EU = f"{EAST_IP}:443", f"{WEST_IP}:443", f"{EU_IP}:443"
BLOG_FAILOVER = failover(("us-east1", "us-west"))
CLUSTER = "outbound|80||mydb.com"
EJECT, UNEJECT = OutlierAction.EJECT, OutlierAction.UNEJECT


def blog_service(
    outlier_detection: OutlierDetection | None = BLOG_OUTLIER,
    lb: LbAlgorithm = LbAlgorithm.ROUND_ROBIN,
) -> Service:
    """The seed: mydb.com with a us-east1 and a us-west endpoint, failover east -> west."""
    return service(
        [(EAST_IP, "us-east1"), (WEST_IP, "us-west")],
        outlier=outlier_detection,
        failover=BLOG_FAILOVER,
        lb=lb,
    )


def overflow_total(state: ClusterState) -> int:
    """Detections refused by ``max_ejection_percent`` (Envoy's ``ejections_overflow``)."""
    detector = state._detector
    return 0 if detector is None else detector.overflow_total


def cluster(
    svc: Service, workload: str = "us-east1", *, seed: int = 7, now: float = 0.0
) -> ClusterState:
    return ClusterState(svc, Workload(Locality.parse(workload)), now=now, rng=random.Random(seed))


def serve(
    state: ClusterState,
    clock: FakeClock,
    count: int,
    *,
    dead: Collection[str] = (),
    every: float = 2.0,
) -> list[Pick]:
    """Send ``count`` requests ``every`` seconds apart; ``dead`` hosts answer 503."""
    picks = []
    for _ in range(count):
        pick = state.pick(clock.now())
        if pick.host is not None:
            state.record(
                pick.host, AttemptResult.answer(503 if pick.host in dead else 200), clock.now()
            )
        picks.append(pick)
        clock.advance(every)
    return picks


def by_address(state: ClusterState, now: float) -> dict[str, tuple[int, bool]]:
    return {v.address: (v.priority, v.ejected) for v in state.hosts(now)}


# --- the seed story ---------------------------------------------------------------------------


def test_seed_east_is_p0_west_is_p1_and_east_takes_all_traffic() -> None:
    state = cluster(blog_service())
    clock = FakeClock()
    assert by_address(state, 0.0) == {EAST: (0, False), WEST: (1, False)}
    picks = serve(state, clock, 20)
    assert {(p.host, p.priority, p.reason) for p in picks} == {(EAST, 0, PickReason.HEALTHY)}


def test_one_503_on_east_ejects_it_and_every_pick_goes_west() -> None:
    state = cluster(blog_service())
    clock = FakeClock(5.0)
    first = state.pick(clock.now())
    assert first.host == EAST
    state.record(EAST, AttemptResult.answer(503), clock.now())
    events = state.drain_events()
    assert [(e.action, e.upstream_url, e.num_ejections, e.enforced) for e in events] == [
        (EJECT, EAST, 1, True)
    ]
    assert events[0].cluster_name == CLUSTER
    assert events[0].type is OutlierEjectionType.CONSECUTIVE_5XX
    assert state.ejections_active == 1
    picks = serve(state, clock, 25)
    assert {(p.host, p.priority) for p in picks} == {(WEST, 1)}


@pytest.mark.parametrize(
    ("ejected_at", "back_at"),
    [
        pytest.param(0.0, 60.0, id="ejected-on-a-sweep"),
        pytest.param(1.0, 75.0, id="ejected-after-a-sweep"),
        pytest.param(14.0, 75.0, id="ejected-just-before-a-sweep"),
        pytest.param(44.0, 105.0, id="later-ejection"),
    ],
)
def test_east_is_unejected_at_the_first_sweep_60_to_75_s_later(
    ejected_at: float, back_at: float
) -> None:
    state = cluster(blog_service())
    state.pick(ejected_at)
    state.record(EAST, AttemptResult.answer(503), ejected_at)
    assert state.pick(back_at - 0.01).host == WEST
    assert state.pick(back_at).host == EAST
    assert 60.0 <= back_at - ejected_at <= 75.0
    assert [(e.action, e.time_s) for e in state.drain_events()] == [
        (EJECT, ejected_at),
        (UNEJECT, back_at),
    ]


def test_permanently_dead_east_ejection_lengths_grow_60_to_300_s() -> None:
    state = cluster(blog_service())
    clock = FakeClock()
    picks = serve(state, clock, 1300 // 2, dead={EAST})
    events = state.drain_events()
    ejects = [e.time_s for e in events if e.action == EJECT]
    unejects = [e.time_s for e in events if e.action == UNEJECT]
    lengths = [out - inn for inn, out in zip(ejects, unejects, strict=False)]
    assert lengths == [60.0, 120.0, 180.0, 240.0, 300.0, 300.0]
    # One failed client request per ejection, everything else served by west.
    failed = [p for p in picks if p.host == EAST]
    assert len(failed) == len(ejects) == 7
    assert [e.num_ejections for e in events if e.action == EJECT] == list(range(1, 8))


def test_backoff_decays_after_east_recovers() -> None:
    state = cluster(blog_service())
    clock = FakeClock()
    serve(state, clock, 180, dead={EAST})  # ejections at 0, 60, 180; back in at 360
    assert clock.now() == 360.0
    (east,) = [v for v in state.hosts(clock.now()) if v.address == EAST]
    assert (east.ejected, east.ejection_backoff, east.num_ejections) == (False, 3, 3)
    # East is healthy again: traffic stays on P0, backoff drops one step per 15 s sweep.
    seen = []
    for _ in range(4):
        picks = serve(state, clock, 15, every=1.0)
        assert {p.host for p in picks} == {EAST}
        seen.append(next(v for v in state.hosts(clock.now()) if v.address == EAST).ejection_backoff)
    assert seen == [2, 1, 0, 0]


def test_ejection_time_left_counts_down_to_the_duration() -> None:
    state = cluster(blog_service())
    state.record(EAST, AttemptResult.answer(503), 10.0)
    views = {v.address: v for v in state.hosts(30.0)}
    assert views[EAST].ejection_time_left_s == pytest.approx(40.0)
    assert views[WEST].ejection_time_left_s is None
    assert views[EAST].endpoint_address == EAST_IP
    assert views[EAST].locality == Locality("us-east1")


# --- gating: no outlier detection, other client localities ------------------------------------


def test_without_outlier_detection_both_are_p0_and_round_robin_alternates() -> None:
    state = cluster(blog_service(outlier_detection=None))
    clock = FakeClock()
    assert by_address(state, 0.0) == {EAST: (0, False), WEST: (0, False)}
    picks = serve(state, clock, 10, dead={EAST})
    hosts = [p.host for p in picks]
    assert Counter(hosts) == {EAST: 5, WEST: 5}
    assert all(a != b for a, b in pairwise(hosts))
    assert state.ejections_active == 0
    assert state.drain_events() == []


@pytest.mark.parametrize(
    "workload",
    [pytest.param("eu-west", id="client-in-eu-west"), pytest.param("", id="client-no-locality")],
)
def test_client_outside_the_failover_regions_sees_both_at_p0(workload: str) -> None:
    state = cluster(blog_service(), workload)
    assert by_address(state, 0.0) == {EAST: (0, False), WEST: (0, False)}
    picks = serve(state, FakeClock(), 10)
    assert Counter(p.host for p in picks) == {EAST: 5, WEST: 5}


def test_client_in_us_west_prefers_west() -> None:
    state = cluster(blog_service(), "us-west")
    assert by_address(state, 0.0) == {EAST: (1, False), WEST: (0, False)}


def test_three_region_failover_list_walks_down_the_priorities() -> None:
    svc = service(
        [(EAST_IP, "us-east1"), (WEST_IP, "us-west"), (EU_IP, "eu-west")],
        outlier=outlier(max_ejection_percent=100),
        failover=failover(("us-east1", "us-west"), ("us-west", "eu-west")),
    )
    state = cluster(svc)
    clock = FakeClock()
    assert by_address(state, 0.0) == {EAST: (0, False), WEST: (1, False), EU: (2, False)}
    served = [p.host for p in serve(state, clock, 10, dead={EAST, WEST})]
    assert served[:2] == [EAST, WEST]
    assert set(served[2:]) == {EU}
    assert [p.priority for p in serve(state, clock, 3, dead={EAST, WEST})] == [2, 2, 2]


# --- priority load shapes ----------------------------------------------------------------------


def test_two_p0_hosts_one_ejected_splits_70_30() -> None:
    svc = service(
        [endpoint("east.example.com", "us-east1"), endpoint("west.example.com", "us-west")],
        outlier=BLOG_OUTLIER,
        failover=BLOG_FAILOVER,
        resolution=Resolution.DNS,
    )
    state = cluster(svc, seed=3)
    state.set_endpoint_addresses(0, ["10.1.0.1", "10.1.0.2"], 0.0)
    state.set_endpoint_addresses(1, ["10.2.0.1"], 0.0)
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)
    assert state.ejections_active == 1
    picks: Counter[str] = Counter()
    for _ in range(20_000):
        pick = state.pick(2.0)
        assert pick.host is not None
        picks[pick.host] += 1
        state.release(pick.host)
    assert "10.1.0.1:443" not in picks
    share_p0 = picks["10.1.0.2:443"] / 20_000
    assert 0.68 < share_p0 < 0.72


def test_strict_max_ejection_percent_never_ejects_two_hosts() -> None:
    state = cluster(blog_service(outlier(max_ejection_percent=10, always_eject_one_host=False)))
    clock = FakeClock()
    picks = serve(state, clock, 10, dead={EAST})
    assert {p.host for p in picks} == {EAST}
    assert state.ejections_active == 0
    # 10 consecutive-5xx detections, plus Envoy's unenforced gateway detector firing on the
    # 5th and 10th 503: the gate refuses all 12 before enforcing is looked at.
    assert overflow_total(state) == 12
    events = state.drain_events()
    assert len(events) == 12
    assert {(e.action, e.enforced, e.num_ejections) for e in events} == {(EJECT, False, 0)}


def test_all_hosts_ejected_is_no_healthy_upstream_until_a_sweep() -> None:
    state = cluster(blog_service(outlier(max_ejection_percent=100)))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    state.record(WEST, AttemptResult.answer(503), 2.0)
    assert state.ejections_active == 2
    assert state.pick(3.0) == Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)
    assert state.pick(60.0).reason is PickReason.NO_HEALTHY_UPSTREAM
    assert state.pick(75.0) == Pick(host=EAST, priority=0, reason=PickReason.HEALTHY)


def test_min_health_percent_panic_uses_ejected_hosts_too() -> None:
    svc = service(
        [endpoint("a.example.com", "us-east1")],
        outlier=outlier(max_ejection_percent=100, min_health_percent=50),
        resolution=Resolution.DNS,
    )
    state = cluster(svc)
    state.set_endpoint_addresses(0, ["10.1.0.1", "10.1.0.2", "10.1.0.3"], 0.0)
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)
    assert state.pick(1.0).reason is PickReason.HEALTHY  # 2/3 healthy >= 50 %
    state.record("10.1.0.2:443", AttemptResult.answer(503), 1.0)
    picks = [state.pick(2.0) for _ in range(30)]
    assert {p.reason for p in picks} == {PickReason.PANIC}
    assert {p.host for p in picks} == {"10.1.0.1:443", "10.1.0.2:443", "10.1.0.3:443"}


# --- DNS membership ----------------------------------------------------------------------------


def _dns_blog() -> ClusterState:
    svc = service(
        [endpoint("east.example.com", "us-east1"), endpoint("west.example.com", "us-west")],
        outlier=BLOG_OUTLIER,
        failover=BLOG_FAILOVER,
        resolution=Resolution.DNS,
    )
    return cluster(svc)


def test_unresolved_dns_endpoints_have_no_hosts() -> None:
    state = _dns_blog()
    assert state.hosts(0.0) == []
    assert state.pick(0.0).reason is PickReason.NO_HEALTHY_UPSTREAM


def test_unresolved_p0_sends_traffic_to_p1_without_ejection() -> None:
    state = _dns_blog()
    state.set_endpoint_addresses(1, ["10.2.0.1"], 0.0)
    assert state.pick(1.0) == Pick(host="10.2.0.1:443", priority=1, reason=PickReason.HEALTHY)
    assert state.ejections_active == 0


def test_reresolution_keeps_state_of_hosts_that_stay_and_drops_the_rest() -> None:
    state = _dns_blog()
    state.set_endpoint_addresses(0, ["10.1.0.1", "10.1.0.2"], 0.0)
    state.set_endpoint_addresses(1, ["10.2.0.1"], 0.0)
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)
    state.set_endpoint_addresses(0, ["10.1.0.1", "10.1.0.3"], 2.0)
    views = {v.address: v for v in state.hosts(2.0)}
    assert set(views) == {"10.1.0.1:443", "10.1.0.3:443", "10.2.0.1:443"}
    assert views["10.1.0.1:443"].ejected
    assert views["10.1.0.1:443"].endpoint_address == "east.example.com"
    state.set_endpoint_addresses(0, ["10.1.0.3"], 3.0)
    assert state.ejections_active == 0
    state.record("10.1.0.1:443", AttemptResult.answer(503), 4.0)  # gone: ignored
    assert [(e.action, e.upstream_url) for e in state.drain_events()] == [(EJECT, "10.1.0.1:443")]


def test_hosts_are_sorted_by_priority_config_order_then_address() -> None:
    state = _dns_blog()
    state.set_endpoint_addresses(1, ["10.2.0.9", "10.2.0.1"], 0.0)
    state.set_endpoint_addresses(0, ["10.1.0.2", "10.1.0.1", "10.1.0.2"], 0.0)
    assert [v.address for v in state.hosts(0.0)] == [
        "10.1.0.1:443",
        "10.1.0.2:443",
        "10.2.0.1:443",
        "10.2.0.9:443",
    ]


def test_address_listed_by_two_endpoints_belongs_to_the_first() -> None:
    state = _dns_blog()
    state.set_endpoint_addresses(1, ["10.9.0.1"], 0.0)
    state.set_endpoint_addresses(0, ["10.9.0.1"], 0.0)
    (view,) = state.hosts(0.0)
    assert (view.priority, view.endpoint_address) == (0, "east.example.com")


def test_ipv6_hosts_use_brackets() -> None:
    state = _dns_blog()
    state.set_endpoint_addresses(0, ["2001:db8::1"], 0.0)
    assert state.pick(0.0).host == "[2001:db8::1]:443"


def test_unknown_endpoint_index_is_an_error() -> None:
    with pytest.raises(IndexError):
        _dns_blog().set_endpoint_addresses(2, ["10.0.0.1"], 0.0)


# --- active requests and load balancers --------------------------------------------------------


def test_pick_counts_active_requests_until_record_or_release() -> None:
    state = cluster(blog_service())
    state.pick(0.0)
    state.pick(0.0)
    assert next(v for v in state.hosts(0.0) if v.address == EAST).active_requests == 2
    state.record(EAST, AttemptResult.answer(200), 0.0)
    state.release(EAST)
    state.release(EAST)  # never below zero
    state.release("192.0.2.1:443")  # unknown: ignored
    assert next(v for v in state.hosts(0.0) if v.address == EAST).active_requests == 0


def test_record_without_outlier_detection_only_tracks_active_requests() -> None:
    state = cluster(blog_service(outlier_detection=None))
    pick = state.pick(0.0)
    assert pick.host is not None
    for _ in range(10):
        state.record(pick.host, AttemptResult.answer(503), 0.0)
    assert state.ejections_active == 0
    assert overflow_total(state) == 0


def _two_p0_hosts(
    lb: LbAlgorithm, weights: tuple[int, int] = (1, 1), seed: int = 7
) -> ClusterState:
    svc = service(
        [
            endpoint(EAST_IP, "us-east1", weight=weights[0]),
            endpoint(WEST_IP, "us-east1", weight=weights[1]),
        ],
        outlier=BLOG_OUTLIER,
        lb=lb,
    )
    return cluster(svc, seed=seed)


def test_least_request_prefers_the_host_with_fewer_active_requests() -> None:
    state = _two_p0_hosts(LbAlgorithm.LEAST_REQUEST)
    while next(v for v in state.hosts(0.0) if v.address == EAST).active_requests < 3:
        pick = state.pick(0.0)
        if pick.host == WEST:
            state.release(WEST)
    counts: Counter[str] = Counter()
    for _ in range(8_000):
        pick = state.pick(0.0)
        assert pick.host is not None
        counts[pick.host] += 1
        state.release(pick.host)
    # Two uniform choices: the busy host wins only when both draws land on it (1/4).
    assert 0.22 < counts[EAST] / 8_000 < 0.28


@pytest.mark.parametrize(
    "lb",
    [
        pytest.param(LbAlgorithm.ROUND_ROBIN, id="round-robin-edf"),
        pytest.param(LbAlgorithm.LEAST_REQUEST, id="least-request-edf"),
    ],
)
def test_unequal_weights_split_traffic_by_weight(lb: LbAlgorithm) -> None:
    state = _two_p0_hosts(lb, weights=(3, 1))
    counts: Counter[str] = Counter()
    for _ in range(4_000):
        pick = state.pick(0.0)
        assert pick.host is not None
        counts[pick.host] += 1
        state.release(pick.host)
    assert counts[EAST] == pytest.approx(3_000, abs=5)


def test_random_is_uniform_over_hosts() -> None:
    state = _two_p0_hosts(LbAlgorithm.RANDOM, weights=(5, 1))
    counts = Counter(state.pick(0.0).host for _ in range(10_000))
    assert 0.47 < counts[EAST] / 10_000 < 0.53


def test_round_robin_starts_at_a_random_offset() -> None:
    firsts = {_two_p0_hosts(LbAlgorithm.ROUND_ROBIN, seed=s).pick(0.0).host for s in range(20)}
    assert firsts == {EAST, WEST}


def test_drain_events_empties_the_queue() -> None:
    state = cluster(blog_service())
    state.record(EAST, AttemptResult.answer(503), 0.0)
    assert len(state.drain_events()) == 1
    assert state.drain_events() == []


# --- properties --------------------------------------------------------------------------------

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.floats(0.0, 20.0, allow_nan=False)),
        st.tuples(st.just("fail"), st.floats(0.0, 20.0, allow_nan=False)),
        st.tuples(st.just("ok"), st.floats(0.0, 20.0, allow_nan=False)),
    ),
    max_size=80,
)


@settings(deadline=None, max_examples=150)
@given(
    ops=_OPS,
    hosts_per_endpoint=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    mep=st.integers(0, 100),
    always=st.booleans(),
    min_health=st.sampled_from([0, 30, 50, 100]),
    lb=st.sampled_from(list(LbAlgorithm)),
    seed=st.integers(0, 2**16),
)
def test_ejected_host_is_never_picked_outside_panic(
    ops: list[tuple[str, float]],
    hosts_per_endpoint: tuple[int, int],
    mep: int,
    always: bool,
    min_health: int,
    lb: LbAlgorithm,
    seed: int,
) -> None:
    svc = service(
        [endpoint("east.example.com", "us-east1"), endpoint("west.example.com", "us-west")],
        outlier=outlier(
            consecutive_5xx_errors=1,
            interval_s=5.0,
            base_ejection_time_s=10.0,
            max_ejection_percent=mep,
            min_health_percent=min_health,
            always_eject_one_host=always,
        ),
        failover=BLOG_FAILOVER,
        lb=lb,
        resolution=Resolution.DNS,
    )
    state = cluster(svc, seed=seed)
    for index, n in enumerate(hosts_per_endpoint):
        state.set_endpoint_addresses(index, [f"10.{index}.0.{i}" for i in range(n)], 0.0)
    total = sum(hosts_per_endpoint)
    allowed = mep * total // 100
    if always:
        allowed = max(allowed, 1)
    now = 0.0
    last: str | None = None
    for op, dt in ops:
        now += dt
        if op == "pick":
            pick = state.pick(now)
            views = {v.address: v for v in state.hosts(now)}
            if pick.reason is PickReason.HEALTHY:
                assert pick.host is not None
                assert not views[pick.host].ejected
                assert views[pick.host].priority == pick.priority
            elif pick.reason is PickReason.NO_HEALTHY_UPSTREAM:
                assert pick.host is None
                assert min_health == 0 or total == 0
                assert all(v.ejected for v in views.values())
            last = pick.host
        elif last is not None:
            state.record(last, AttemptResult.answer(503 if op == "fail" else 200), now)
        assert state.ejections_active <= allowed


# --- locality-weighted picking (Envoy's locality_weighted_lb_config) ----------------------------


def _spread(state: ClusterState, picks: int, now: float = 2.0) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        pick = state.pick(now)
        assert pick.host is not None
        counts[pick.host] += 1
        state.release(pick.host)
    return counts


def _two_localities_in_p0(
    *, lb: LbAlgorithm = LbAlgorithm.ROUND_ROBIN, failover_set: bool = True, min_health: int = 0
) -> ClusterState:
    """us-east1 (two DNS endpoints) and us-west (one) share P0 for a client in eu-west."""
    svc = service(
        [
            endpoint("east-a.example.com", "us-east1"),
            endpoint("east-b.example.com", "us-east1"),
            endpoint("west.example.com", "us-west"),
        ],
        outlier=outlier(max_ejection_percent=100, min_health_percent=min_health),
        failover=BLOG_FAILOVER if failover_set else (),
        lb=lb,
        resolution=Resolution.DNS,
    )
    state = cluster(svc, "eu-west", seed=11)
    state.set_endpoint_addresses(0, ["10.1.0.1"], 0.0)
    state.set_endpoint_addresses(1, ["10.1.0.2"], 0.0)
    state.set_endpoint_addresses(2, ["10.2.0.1"], 0.0)
    return state


def test_locality_weight_is_scaled_by_its_healthy_share() -> None:
    state = _two_localities_in_p0()
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)
    # us-east1: weight 2 * min(1, 1.4 * 1/2) = 1.4; us-west: 1. Not 50/50 over healthy hosts.
    counts = _spread(state, 2_400)
    assert counts == {"10.1.0.2:443": 1_400, "10.2.0.1:443": 1_000}


def test_without_failover_istio_sets_no_locality_weights_and_hosts_share_evenly() -> None:
    state = _two_localities_in_p0(failover_set=False)
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)
    counts = _spread(state, 2_400)
    assert counts == {"10.1.0.2:443": 1_200, "10.2.0.1:443": 1_200}


def test_locality_weight_counts_endpoints_not_resolved_addresses() -> None:
    # STRICT_DNS: one endpoint weighs 1 however many A records it has.
    svc = service(
        [endpoint("east.example.com", "us-east1"), endpoint("west.example.com", "us-west")],
        outlier=BLOG_OUTLIER,
        failover=BLOG_FAILOVER,
        resolution=Resolution.DNS,
    )
    state = cluster(svc, "eu-west")
    state.set_endpoint_addresses(0, ["10.1.0.1", "10.1.0.2", "10.1.0.3"], 0.0)
    state.set_endpoint_addresses(1, ["10.2.0.1"], 0.0)
    counts = _spread(state, 3_000)
    assert counts["10.2.0.1:443"] == 1_500
    assert {counts[f"10.1.0.{i}:443"] for i in (1, 2, 3)} == {500}


def test_a_priority_in_panic_skips_the_locality_pick() -> None:
    state = _two_localities_in_p0(min_health=80)
    state.record("10.1.0.1:443", AttemptResult.answer(503), 1.0)  # 2 of 3 healthy < 80 %
    picks = [state.pick(2.0) for _ in range(300)]
    assert {p.reason for p in picks} == {PickReason.PANIC}
    hosts = Counter(p.host for p in picks)
    assert hosts == {"10.1.0.1:443": 100, "10.1.0.2:443": 100, "10.2.0.1:443": 100}


def _distributed(*to: tuple[str, int], workload: str = "us-east1") -> ClusterState:
    svc = replace(
        service(
            [(EAST_IP, "us-east1"), (WEST_IP, "us-west"), (EU_IP, "eu-west")],
            outlier=outlier(max_ejection_percent=100),
        ),
        locality_lb=LocalityLbSetting(distribute=(Distribute("us-east1", to),)),
    )
    return cluster(svc, workload)


def test_distribute_80_20_splits_picks_80_20() -> None:
    # Istio's locality integration test: "Distribute" 80/20.
    state = _distributed(("us-east1", 80), ("us-west", 20))
    assert _spread(state, 1_000) == {EAST: 800, WEST: 200}
    assert {v.address for v in state.hosts(2.0)} == {EAST, WEST}


def test_distribute_never_fails_over_to_a_locality_it_left_out() -> None:
    state = _distributed(("us-east1", 80), ("us-west", 20))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    state.record(WEST, AttemptResult.answer(503), 1.0)
    assert state.pick(2.0).reason is PickReason.NO_HEALTHY_UPSTREAM


def test_distribute_keeps_one_priority_and_shifts_load_by_locality_health() -> None:
    state = _distributed(("us-east1", 80), ("us-west", 20))
    state.record(EAST, AttemptResult.answer(503), 1.0)
    assert _spread(state, 100) == {WEST: 100}
    assert {v.priority for v in state.hosts(2.0)} == {0}


def test_distribute_from_another_region_does_not_apply() -> None:
    state = _distributed(("us-east1", 80), ("us-west", 20), workload="eu-west")
    # No rule for eu-west: every endpoint stays, with its own weight, in one priority.
    assert _spread(state, 300) == {EAST: 100, WEST: 100, EU: 100}


def test_failover_priority_labels_order_the_endpoints() -> None:
    svc = replace(
        service(
            [
                Endpoint(EAST_IP, 443, labels=(("tier", "gold"),)),
                Endpoint(WEST_IP, 443, labels=(("tier", "silver"),)),
            ],
            outlier=outlier(max_ejection_percent=100),
        ),
        locality_lb=LocalityLbSetting(failover_priority=("tier",)),
    )
    state = ClusterState(svc, Workload(labels=(("tier", "silver"),)), now=0.0, rng=random.Random(1))
    assert by_address(state, 0.0) == {WEST: (0, False), EAST: (1, False)}
    assert state.pick(1.0).host == WEST
    state.record(WEST, AttemptResult.answer(503), 1.0)
    assert state.pick(2.0).host == EAST


_LOCALITY = st.sampled_from(["r1/z1", "r1/z2", "r2/z1"])


@settings(deadline=None, max_examples=30)
@given(
    endpoints=st.lists(
        st.tuples(_LOCALITY, st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=5
    ),
    ejected=st.sets(st.integers(0, 14), max_size=4),
    lb=st.sampled_from([LbAlgorithm.ROUND_ROBIN, LbAlgorithm.RANDOM]),
    seed=st.integers(0, 2**16),
)
def test_locality_weighted_picks_match_route_weights(
    endpoints: list[tuple[str, int, int]],
    ejected: set[int],
    lb: LbAlgorithm,
    seed: int,
) -> None:
    svc = service(
        [endpoint(f"ep{i}.example.com", loc, weight=w) for i, (loc, w, _) in enumerate(endpoints)],
        outlier=outlier(max_ejection_percent=100),
        failover=failover(("r9", "r1")),
        lb=lb,
        resolution=Resolution.DNS,
    )
    state = cluster(svc, "r1/z1", seed=seed)
    addresses = []
    for i, (_, _, ips) in enumerate(endpoints):
        ours = [f"10.{i}.0.{k}" for k in range(ips)]
        state.set_endpoint_addresses(i, ours, 0.0)
        addresses += [f"{ip}:443" for ip in ours]
    for index in sorted(ejected):
        if index < len(addresses):
            state.record(addresses[index], AttemptResult.answer(503), 1.0)
    weights = dict(state.route_weights(2.0))
    total = sum(weights.values())
    picks = 8_000
    counts = Counter(state.pick(2.0).host for _ in range(picks))
    if not weights:
        assert set(counts) == {None}
        return
    assert set(counts) <= set(weights)
    for host, weight in weights.items():
        assert abs(counts[host] / picks - weight / total) < 0.03


def test_per_priority_panic_uses_all_hosts_of_that_priority_only() -> None:
    # healthy_panic_threshold is minHealthPercent, 40: P0 10 % healthy (panics), P1 40 %
    # healthy (does not); N = 14 + 56 = 70 < 100, so panic applies per priority: loads 20/80.
    svc = service(
        [endpoint("east.example.com", "us-east1"), endpoint("west.example.com", "us-west")],
        outlier=outlier(max_ejection_percent=100, min_health_percent=40),
        failover=BLOG_FAILOVER,
        resolution=Resolution.DNS,
    )
    state = cluster(svc)
    east = [f"10.1.0.{i}" for i in range(10)]
    west = [f"10.2.0.{i}" for i in range(5)]
    state.set_endpoint_addresses(0, east, 0.0)
    state.set_endpoint_addresses(1, west, 0.0)
    for ip in east[1:] + west[2:]:
        state.record(f"{ip}:443", AttemptResult.answer(503), 1.0)
    picks = [state.pick(2.0) for _ in range(10_000)]
    p0 = [p for p in picks if p.priority == 0]
    p1 = [p for p in picks if p.priority == 1]
    assert 0.18 < len(p0) / len(picks) < 0.22
    assert {p.reason for p in p0} == {PickReason.PANIC}
    assert {p.host for p in p0} == {f"{ip}:443" for ip in east}
    assert {p.reason for p in p1} == {PickReason.HEALTHY}
    assert {p.host for p in p1} == {f"{ip}:443" for ip in west[:2]}
