"""Envoy's priority load, panic and priority choice (load_balancer_impl.cc)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.priority import (
    HostCounts,
    choose_priority,
    compute_priority_load,
    is_in_panic,
    priority_health,
)


def _counts(*pairs: tuple[int, int]) -> list[HostCounts]:
    return [HostCounts(healthy=h, total=t) for h, t in pairs]


@pytest.mark.parametrize(
    ("p0_healthy_percent", "expected"),
    [
        pytest.param(100, (100, 0), id="100pct"),
        pytest.param(72, (100, 0), id="72pct"),
        pytest.param(71, (99, 1), id="71pct"),
        pytest.param(50, (70, 30), id="50pct"),
        pytest.param(25, (35, 65), id="25pct"),
        pytest.param(0, (0, 100), id="0pct"),
    ],
)
def test_envoy_doc_table_two_priorities(p0_healthy_percent: int, expected: tuple[int, int]) -> None:
    # envoyproxy.io load_balancing/priority: P0 at X % healthy, P1 fully healthy.
    load = compute_priority_load(_counts((p0_healthy_percent, 100), (100, 100)), 0)
    assert load.loads == expected
    assert load.panic == (False, False)
    assert not load.no_healthy_upstream


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        pytest.param([(1, 1), (1, 1)], (100, 0), id="blog-east-healthy"),
        pytest.param([(0, 1), (1, 1)], (0, 100), id="blog-east-ejected"),
        pytest.param([(1, 2), (1, 1)], (70, 30), id="two-ips-one-ejected"),
        pytest.param([(2, 3), (1, 1)], (93, 7), id="three-ips-one-ejected"),
        pytest.param([(0, 0), (1, 1)], (0, 100), id="unresolved-p0-is-empty"),
        pytest.param([(1, 4), (1, 4), (1, 1)], (35, 35, 30), id="three-priorities"),
        pytest.param([(1, 10), (1, 10), (1, 10)], (34, 33, 33), id="rounding-to-first-healthy"),
        pytest.param(
            [(0, 1), (1, 10), (1, 10), (1, 10)],
            (0, 34, 33, 33),
            id="remainder-skips-unhealthy-p0",
        ),
    ],
)
def test_loads_follow_health_with_overprovisioning(
    counts: list[tuple[int, int]], expected: tuple[int, ...]
) -> None:
    assert compute_priority_load(_counts(*counts), 0).loads == expected


@pytest.mark.parametrize(
    ("healthy", "total", "expected"),
    [
        pytest.param(0, 0, 0, id="empty"),
        pytest.param(1, 2, 70, id="half"),
        pytest.param(5, 7, 100, id="capped"),
        pytest.param(1, 141, 0, id="rounds-down"),
    ],
)
def test_priority_health_is_integer_140_percent(healthy: int, total: int, expected: int) -> None:
    assert priority_health(HostCounts(healthy, total)) == expected


def test_all_ejected_without_panic_threshold_is_no_healthy_upstream() -> None:
    load = compute_priority_load(_counts((0, 1), (0, 1)), 0)
    assert load.no_healthy_upstream
    assert load.loads == (100, 0)
    assert load.panic == (False, False)


def test_no_priorities_is_no_healthy_upstream() -> None:
    assert compute_priority_load([], 0).no_healthy_upstream


@pytest.mark.parametrize(
    ("counts", "threshold", "loads", "panic"),
    [
        pytest.param([(1, 3)], 50, (100,), (True,), id="single-priority-below-threshold"),
        pytest.param([(2, 3)], 50, (100,), (False,), id="single-priority-66pct-not-panic"),
        pytest.param([(1, 3), (1, 1)], 50, (46, 54), (False, False), id="n-100-never-panics"),
        pytest.param([(1, 3), (0, 1)], 50, (75, 25), (True, True), id="total-panic-by-host-counts"),
        pytest.param([(0, 2), (0, 1)], 50, (67, 33), (True, True), id="all-ejected-panic"),
        pytest.param([(1, 3), (1, 3)], 40, (50, 50), (True, True), id="both-below-threshold"),
        pytest.param([(1, 10), (1, 2)], 40, (17, 83), (True, False), id="one-priority-panics"),
        pytest.param([(0, 0), (0, 0)], 50, (100, 0), (True, True), id="no-hosts-at-all"),
    ],
)
def test_panic_threshold_uses_all_hosts(
    counts: list[tuple[int, int]],
    threshold: int,
    loads: tuple[int, ...],
    panic: tuple[bool, ...],
) -> None:
    load = compute_priority_load(_counts(*counts), threshold)
    assert load.loads == loads
    assert load.panic == panic


def test_total_panic_without_hosts_is_no_healthy_upstream() -> None:
    assert compute_priority_load(_counts((0, 0)), 50).no_healthy_upstream


@pytest.mark.parametrize(
    ("healthy", "total", "threshold", "expected"),
    [
        pytest.param(1, 2, 50, False, id="exactly-at-threshold"),
        pytest.param(49, 100, 50, True, id="just-below"),
        pytest.param(1, 3, 34, True, id="fraction-below"),
        pytest.param(0, 0, 1, True, id="empty-panics"),
        pytest.param(0, 0, 0, False, id="zero-threshold-never"),
    ],
)
def test_is_in_panic_compares_exact_percentage(
    healthy: int, total: int, threshold: int, expected: bool
) -> None:
    assert is_in_panic(HostCounts(healthy, total), threshold) is expected


@pytest.mark.parametrize(
    ("loads", "draw", "expected"),
    [
        pytest.param((70, 30), 1, 0, id="first-draw"),
        pytest.param((70, 30), 70, 0, id="boundary-inclusive"),
        pytest.param((70, 30), 71, 1, id="past-boundary"),
        pytest.param((0, 100), 1, 1, id="skips-zero-load"),
        pytest.param((100, 0), 100, 0, id="last-draw"),
    ],
)
def test_choose_priority_by_cumulative_load(
    loads: tuple[int, ...], draw: int, expected: int
) -> None:
    assert choose_priority(loads, draw) == expected


_COUNTS = st.lists(
    st.integers(min_value=0, max_value=20).flatmap(
        lambda total: st.builds(HostCounts, st.integers(0, total), st.just(total))
    ),
    min_size=1,
    max_size=6,
)


@given(counts=_COUNTS, threshold=st.integers(min_value=0, max_value=100))
def test_loads_sum_to_100_whenever_some_priority_is_healthy(
    counts: list[HostCounts], threshold: int
) -> None:
    load = compute_priority_load(counts, threshold)
    assert len(load.loads) == len(counts)
    assert all(share >= 0 for share in load.loads)
    if any(c.healthy > 0 for c in counts):
        assert sum(load.loads) == 100
        assert not load.no_healthy_upstream


@given(counts=_COUNTS)
def test_without_panic_only_priorities_with_health_get_load(counts: list[HostCounts]) -> None:
    load = compute_priority_load(counts, 0)
    if load.no_healthy_upstream:
        assert all(priority_health(c) == 0 for c in counts)
    else:
        for share, c in zip(load.loads, counts, strict=True):
            if share > 0:
                assert priority_health(c) > 0
