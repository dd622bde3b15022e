"""Consecutive-5xx outlier detection, as Envoy's outlier_detection_impl.cc does it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.outlier import (
    EJECT,
    UNEJECT,
    OutlierDetector,
    OutlierEvent,
    ejection_allowed,
    ejection_duration_s,
)
from extproc.core.policy import OutlierDetection
from extproc.testing import BLOG_OUTLIER, FakeClock, outlier

CLUSTER = "outbound|80||mydb.com"
A = "10.0.0.1:443"
B = "10.0.0.2:443"


def _detector(config: OutlierDetection = BLOG_OUTLIER, hosts: int = 2) -> OutlierDetector:
    detector = OutlierDetector(config, CLUSTER, now=0.0)
    detector.set_hosts(f"10.0.0.{i + 1}:443" for i in range(hosts))
    return detector


@pytest.mark.parametrize(
    ("code", "counts"),
    [
        pytest.param(500, True, id="500"),
        pytest.param(502, True, id="502"),
        pytest.param(503, True, id="503-connect-failure"),
        pytest.param(504, True, id="504-timeout"),
        pytest.param(599, True, id="599"),
        pytest.param(200, False, id="200"),
        pytest.param(404, False, id="404"),
        pytest.param(499, False, id="499"),
        pytest.param(600, False, id="600"),
    ],
)
def test_only_5xx_codes_extend_the_consecutive_count(code: int, counts: bool) -> None:
    detector = _detector(outlier(consecutive_5xx_errors=5))
    detector.put_http_response_code(A, 503, 0.0)
    detector.put_http_response_code(A, code, 0.0)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == (2 if counts else 0)


def test_detection_fires_on_exactly_the_nth_consecutive_error() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=3, max_ejection_percent=100))
    assert not detector.put_http_response_code(A, 503, 1.0)
    assert not detector.put_http_response_code(A, 500, 2.0)
    assert detector.put_http_response_code(A, 502, 3.0)
    assert detector.is_ejected(A)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert (monitor.consecutive_5xx, monitor.num_ejections, monitor.last_ejection_time) == (
        0,
        1,
        3.0,
    )


def test_a_success_between_errors_restarts_the_count() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=2, max_ejection_percent=100))
    detector.put_http_response_code(A, 503, 1.0)
    detector.put_http_response_code(A, 200, 2.0)
    assert not detector.put_http_response_code(A, 503, 3.0)
    assert not detector.is_ejected(A)


def test_threshold_zero_never_ejects() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=0, max_ejection_percent=100))
    for t in range(50):
        detector.put_http_response_code(A, 503, float(t))
    assert detector.ejections_active == 0
    assert detector.drain_events() == []


def test_errors_during_ejection_never_extend_it_nor_reset_the_counter() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=2, max_ejection_percent=100))
    detector.put_http_response_code(A, 503, 1.0)
    detector.put_http_response_code(A, 503, 2.0)  # ejected at 2.0
    for t in (3.0, 4.0, 5.0):
        assert not detector.put_http_response_code(A, 503, t)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert (monitor.last_ejection_time, monitor.num_ejections, monitor.ejection_backoff) == (
        2.0,
        1,
        1,
    )
    assert monitor.consecutive_5xx == 3  # past the threshold, waits for the un-ejection reset
    detector.advance(75.0)
    assert not detector.is_ejected(A)
    assert monitor.consecutive_5xx == 0


@pytest.mark.parametrize(
    ("active", "total", "mep", "always", "allowed"),
    [
        pytest.param(0, 2, 10, False, False, id="strict-2-hosts-default-mep"),
        pytest.param(0, 2, 10, True, True, id="always-eject-one-host"),
        pytest.param(1, 2, 10, True, False, id="always-only-the-first"),
        pytest.param(0, 2, 50, False, True, id="mep-50-one-of-two"),
        pytest.param(1, 2, 50, False, False, id="mep-50-not-two-of-two"),
        pytest.param(1, 2, 100, False, True, id="mep-100-all"),
        pytest.param(0, 10, 10, False, True, id="one-of-ten-at-10pct"),
        pytest.param(1, 10, 10, False, False, id="two-of-ten-at-10pct"),
        pytest.param(0, 3, 34, False, True, id="one-of-three-at-34pct"),
        pytest.param(0, 3, 33, False, False, id="one-of-three-at-33pct"),
        pytest.param(2, 2, 250, False, False, id="mep-capped-at-100"),
        pytest.param(0, 1, 0, False, False, id="mep-zero"),
    ],
)
def test_ejection_gate_counts_all_hosts(
    active: int, total: int, mep: int, always: bool, allowed: bool
) -> None:
    assert ejection_allowed(active, total, mep, always) is allowed


def test_refused_ejection_is_an_overflow_event_and_resets_the_counter() -> None:
    detector = _detector(outlier(max_ejection_percent=10, always_eject_one_host=False))
    assert not detector.put_http_response_code(A, 503, 5.0)
    assert not detector.is_ejected(A)
    assert detector.overflow_total == 1
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == 0
    assert monitor.num_ejections == 0
    assert monitor.ejection_backoff == 0
    assert detector.drain_events() == [
        OutlierEvent(EJECT, CLUSTER, A, "CONSECUTIVE_5XX", 0, enforced=False, time_s=5.0)
    ]


def test_max_ejection_percent_stops_the_second_ejection() -> None:
    detector = _detector(outlier(max_ejection_percent=50, always_eject_one_host=False), hosts=2)
    assert detector.put_http_response_code(A, 503, 1.0)
    assert not detector.put_http_response_code(B, 503, 1.0)
    assert detector.ejections_active == 1
    assert detector.overflow_total == 1


@pytest.mark.parametrize(
    ("backoff", "duration"),
    [
        pytest.param(0, 0.0, id="never-ejected"),
        pytest.param(1, 60.0, id="first"),
        pytest.param(5, 300.0, id="fifth-reaches-cap"),
        pytest.param(6, 300.0, id="capped-at-300s"),
    ],
)
def test_ejection_duration_is_base_times_backoff_capped(backoff: int, duration: float) -> None:
    assert ejection_duration_s(BLOG_OUTLIER, backoff) == duration


def test_max_ejection_time_is_never_below_base() -> None:
    assert ejection_duration_s(outlier(base_ejection_time_s=600.0), 1) == 600.0
    assert ejection_duration_s(outlier(base_ejection_time_s=600.0), 2) == 600.0


@pytest.mark.parametrize(
    ("ejected_at", "unejected_at"),
    [
        pytest.param(0.0, 60.0, id="on-a-sweep-boundary"),
        pytest.param(0.5, 75.0, id="just-after-boundary-waits-a-whole-interval"),
        pytest.param(14.9, 75.0, id="late-in-interval"),
        pytest.param(15.0, 75.0, id="on-next-boundary"),
        pytest.param(29.0, 90.0, id="sweeps-anchored-at-creation"),
    ],
)
def test_unejection_happens_at_the_first_sweep_after_the_duration(
    ejected_at: float, unejected_at: float
) -> None:
    detector = _detector()
    detector.advance(ejected_at)
    detector.put_http_response_code(A, 503, ejected_at)
    detector.advance(unejected_at - 0.001)
    assert detector.is_ejected(A)
    assert detector.advance(unejected_at)
    assert not detector.is_ejected(A)
    events = detector.drain_events()
    assert [(e.action, e.time_s) for e in events] == [
        (EJECT, ejected_at),
        (UNEJECT, unejected_at),
    ]
    assert 60.0 <= unejected_at - ejected_at < 75.0


def test_permanently_dead_host_ejection_lengths_grow_to_the_cap() -> None:
    # Reference section 3.7: a request every 2 s, each one to the dead host while it is in.
    detector = _detector()
    clock = FakeClock()
    ejected_at: float | None = None
    lengths: list[float] = []
    while len(lengths) < 7:
        detector.advance(clock.now())
        if not detector.is_ejected(A):
            if ejected_at is not None:
                lengths.append(clock.now() - ejected_at)
            detector.put_http_response_code(A, 503, clock.now())
            ejected_at = clock.now()
        clock.advance(2.0)
    base = [60.0, 120.0, 180.0, 240.0, 300.0, 300.0, 300.0]
    assert all(b <= got < b + 15.0 + 2.0 for b, got in zip(base, lengths, strict=True)), lengths
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.ejection_backoff == 6  # stops one step past the cap
    assert monitor.num_ejections == 8


def test_backoff_decays_one_step_per_sweep_after_recovery() -> None:
    detector = _detector()
    monitor = detector.monitor(A)
    assert monitor is not None
    # Three back-to-back ejections: backoff 3, the last ejection lasts 180 s.
    t = 0.0
    for _ in range(3):
        detector.put_http_response_code(A, 503, t)
        while detector.is_ejected(A):
            t += 15.0
            detector.advance(t)
    assert monitor.ejection_backoff == 3
    unejected_at = t
    detector.put_http_response_code(A, 200, t)
    seen = []
    for k in range(1, 5):
        detector.advance(unejected_at + 15.0 * k)
        seen.append(monitor.ejection_backoff)
    assert seen == [2, 1, 0, 0]


def test_no_decay_at_the_sweep_that_unejects() -> None:
    detector = _detector()
    detector.put_http_response_code(A, 503, 0.0)
    detector.advance(60.0)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert not monitor.ejected
    assert monitor.ejection_backoff == 1
    assert monitor.last_unejection_time == 60.0


def test_reejection_after_partial_decay_uses_the_decayed_backoff() -> None:
    detector = _detector()
    monitor = detector.monitor(A)
    assert monitor is not None
    detector.put_http_response_code(A, 503, 0.0)  # backoff 1, out at 60
    detector.advance(60.0)
    detector.put_http_response_code(A, 503, 60.0)  # backoff 2, 120 s, out at 180
    detector.advance(180.0)
    detector.advance(195.0)  # decay to 1
    assert monitor.ejection_backoff == 1
    detector.put_http_response_code(A, 503, 196.0)  # backoff 2 again: 120 s
    assert monitor.ejection_backoff == 2
    assert detector.ejection_time_left_s(A, 200.0) == pytest.approx(116.0)


def test_removed_ejected_host_frees_its_ejection_slot() -> None:
    detector = _detector(outlier(max_ejection_percent=50, always_eject_one_host=False), hosts=2)
    detector.put_http_response_code(A, 503, 1.0)
    assert detector.set_hosts([B, "10.0.0.3:443"])
    assert detector.ejections_active == 0
    assert detector.put_http_response_code(B, 503, 2.0)


def test_kept_host_keeps_its_state_across_membership_changes() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=3))
    detector.put_http_response_code(A, 503, 1.0)
    detector.put_http_response_code(A, 503, 1.0)
    assert not detector.set_hosts([A, "10.0.0.9:443"])
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == 2
    assert detector.monitor(B) is None


def test_unknown_host_is_ignored() -> None:
    detector = _detector()
    assert not detector.put_http_response_code("192.0.2.1:443", 503, 1.0)
    assert detector.ejection_time_left_s("192.0.2.1:443", 1.0) is None


def test_nonpositive_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="interval"):
        OutlierDetector(outlier(interval_s=0.0), CLUSTER, now=0.0)


def test_long_idle_period_runs_sweeps_in_order() -> None:
    detector = _detector()
    detector.put_http_response_code(A, 503, 0.0)
    assert detector.advance(1_000_000.0)
    assert not detector.is_ejected(A)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.last_unejection_time == 60.0
    assert monitor.ejection_backoff == 0
    assert detector.next_sweep_time == 1_000_005.0


# --- properties -----------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),  # host index
        st.sampled_from([200, 404, 500, 503, 504]),
        st.floats(min_value=0.0, max_value=40.0, allow_nan=False),  # time step
    ),
    max_size=60,
)
_CONFIGS = st.builds(
    outlier,
    consecutive_5xx_errors=st.integers(min_value=0, max_value=3),
    interval_s=st.sampled_from([1.0, 10.0, 15.0]),
    base_ejection_time_s=st.sampled_from([5.0, 30.0, 60.0]),
    max_ejection_percent=st.integers(min_value=0, max_value=100),
    always_eject_one_host=st.booleans(),
)


_State = tuple[tuple[bool, int, int, int], ...]


def _run(
    config: OutlierDetection, ops: list[tuple[int, int, float]], *, naive: bool = False
) -> tuple[list[_State], OutlierDetector]:
    """Replay ops at increasing times.

    With ``naive`` every sweep is run one by one through the detector's single-sweep step,
    bypassing ``advance`` and its skipping, as a reference for the optimised path.
    """
    hosts = [f"10.0.0.{i}:443" for i in range(5)]
    detector = OutlierDetector(config, CLUSTER, now=0.0)
    detector.set_hosts(hosts)
    now = 0.0
    k = 1
    states: list[_State] = []
    for index, code, dt in ops:
        now += dt
        if naive:
            while 0.0 + k * config.interval_s <= now:
                detector._sweep(0.0 + k * config.interval_s)
                k += 1
        else:
            detector.advance(now)
        detector.put_http_response_code(hosts[index], code, now)
        states.append(
            tuple(
                (m.ejected, m.consecutive_5xx, m.ejection_backoff, m.num_ejections)
                for m in (detector.monitor(h) for h in hosts)
                if m is not None
            )
        )
    return states, detector


@settings(deadline=None)
@given(config=_CONFIGS, ops=_OPS)
def test_ejections_never_exceed_what_max_ejection_percent_allows(
    config: OutlierDetection, ops: list[tuple[int, int, float]]
) -> None:
    # 5 hosts, fixed membership: every enforced ejection passed the gate, so at most
    # floor(mep*5/100) hosts are out, or one more when always_eject_one_host allows it.
    allowed = config.max_ejection_percent * 5 // 100
    if config.always_eject_one_host:
        allowed = max(allowed, 1)
    states, _ = _run(config, ops)
    for state in states:
        assert sum(ejected for ejected, *_ in state) <= allowed


@settings(deadline=None)
@given(config=_CONFIGS, ops=_OPS)
def test_jumping_over_sweeps_equals_running_them_one_by_one(
    config: OutlierDetection, ops: list[tuple[int, int, float]]
) -> None:
    jumped, a = _run(config, ops)
    stepped, b = _run(config, ops, naive=True)
    assert jumped == stepped
    assert a.drain_events() == b.drain_events()
