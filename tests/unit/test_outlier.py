"""Consecutive-error outlier detection, as Envoy's outlier_detection_impl.cc does it."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.cluster import ClusterState
from extproc.core.outlier import (
    AttemptResult,
    OutlierAction,
    OutlierEjectionType,
    OutlierEvent,
    http_response_code,
)
from extproc.core.outlier_detector import OutlierDetector, ejection_allowed, ejection_duration_s
from extproc.core.policy import Locality, OutlierDetection, Workload
from extproc.testing import BLOG_OUTLIER, FakeClock, failover, outlier, service

CLUSTER = "outbound|80||mydb.com"
A = "10.0.0.1:443"
B = "10.0.0.2:443"
EJECT, UNEJECT = OutlierAction.EJECT, OutlierAction.UNEJECT
CONSECUTIVE_5XX = OutlierEjectionType.CONSECUTIVE_5XX
CONSECUTIVE_GATEWAY_FAILURE = OutlierEjectionType.CONSECUTIVE_GATEWAY_FAILURE
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = OutlierEjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE


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
    detector.put_result(A, AttemptResult.answer(503), 0.0)
    detector.put_result(A, AttemptResult.answer(code), 0.0)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == (2 if counts else 0)


def test_detection_fires_on_exactly_the_nth_consecutive_error() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=3, max_ejection_percent=100))
    assert not detector.put_result(A, AttemptResult.answer(503), 1.0)
    assert not detector.put_result(A, AttemptResult.answer(500), 2.0)
    assert detector.put_result(A, AttemptResult.answer(502), 3.0)
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
    detector.put_result(A, AttemptResult.answer(503), 1.0)
    detector.put_result(A, AttemptResult.answer(200), 2.0)
    assert not detector.put_result(A, AttemptResult.answer(503), 3.0)
    assert not detector.is_ejected(A)


def test_threshold_zero_never_ejects() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=0, max_ejection_percent=100))
    for t in range(50):
        detector.put_result(A, AttemptResult.answer(503), float(t))
    assert detector.ejections_active == 0
    # Only the gateway detector Istio leaves unenforced speaks up, and it never ejects.
    assert {(e.type, e.enforced) for e in detector.drain_events()} == {
        (CONSECUTIVE_GATEWAY_FAILURE, False)
    }


def test_errors_during_ejection_never_extend_it_nor_reset_the_counter() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=2, max_ejection_percent=100))
    detector.put_result(A, AttemptResult.answer(503), 1.0)
    detector.put_result(A, AttemptResult.answer(503), 2.0)  # ejected at 2.0
    for t in (3.0, 4.0, 5.0):
        assert not detector.put_result(A, AttemptResult.answer(503), t)
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
    assert not detector.put_result(A, AttemptResult.answer(503), 5.0)
    assert not detector.is_ejected(A)
    assert detector.overflow_total == 1
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == 0
    assert monitor.num_ejections == 0
    assert monitor.ejection_backoff == 0
    assert detector.drain_events() == [
        OutlierEvent(
            EJECT, CLUSTER, A, CONSECUTIVE_5XX, 0, enforced=False, time_s=5.0, overflow=True
        )
    ]


def test_max_ejection_percent_stops_the_second_ejection() -> None:
    detector = _detector(outlier(max_ejection_percent=50, always_eject_one_host=False), hosts=2)
    assert detector.put_result(A, AttemptResult.answer(503), 1.0)
    assert not detector.put_result(B, AttemptResult.answer(503), 1.0)
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
    detector.put_result(A, AttemptResult.answer(503), ejected_at)
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
    # The blog's DR (base 1m, interval 15s; Envoy's max_ejection_time defaults to 300 s) and
    # a request every 2 s, each one to the dead host while it is in.
    detector = _detector()
    clock = FakeClock()
    ejected_at: float | None = None
    lengths: list[float] = []
    while len(lengths) < 7:
        detector.advance(clock.now())
        if not detector.is_ejected(A):
            if ejected_at is not None:
                lengths.append(clock.now() - ejected_at)
            detector.put_result(A, AttemptResult.answer(503), clock.now())
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
        detector.put_result(A, AttemptResult.answer(503), t)
        while detector.is_ejected(A):
            t += 15.0
            detector.advance(t)
    assert monitor.ejection_backoff == 3
    unejected_at = t
    detector.put_result(A, AttemptResult.answer(200), t)
    seen = []
    for k in range(1, 5):
        detector.advance(unejected_at + 15.0 * k)
        seen.append(monitor.ejection_backoff)
    assert seen == [2, 1, 0, 0]


def test_no_decay_at_the_sweep_that_unejects() -> None:
    detector = _detector()
    detector.put_result(A, AttemptResult.answer(503), 0.0)
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
    detector.put_result(A, AttemptResult.answer(503), 0.0)  # backoff 1, out at 60
    detector.advance(60.0)
    detector.put_result(A, AttemptResult.answer(503), 60.0)  # backoff 2, 120 s, out at 180
    detector.advance(180.0)
    detector.advance(195.0)  # decay to 1
    assert monitor.ejection_backoff == 1
    detector.put_result(A, AttemptResult.answer(503), 196.0)  # backoff 2 again: 120 s
    assert monitor.ejection_backoff == 2
    assert detector.ejection_time_left_s(A, 200.0) == pytest.approx(116.0)


def test_removed_ejected_host_frees_its_ejection_slot() -> None:
    detector = _detector(outlier(max_ejection_percent=50, always_eject_one_host=False), hosts=2)
    detector.put_result(A, AttemptResult.answer(503), 1.0)
    assert detector.set_hosts([B, "10.0.0.3:443"])
    assert detector.ejections_active == 0
    assert detector.put_result(B, AttemptResult.answer(503), 2.0)


def test_kept_host_keeps_its_state_across_membership_changes() -> None:
    detector = _detector(outlier(consecutive_5xx_errors=3))
    detector.put_result(A, AttemptResult.answer(503), 1.0)
    detector.put_result(A, AttemptResult.answer(503), 1.0)
    assert not detector.set_hosts([A, "10.0.0.9:443"])
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.consecutive_5xx == 2
    assert detector.monitor(B) is None


def test_unknown_host_is_ignored() -> None:
    detector = _detector()
    assert not detector.put_result("192.0.2.1:443", AttemptResult.answer(503), 1.0)
    assert detector.ejection_time_left_s("192.0.2.1:443", 1.0) is None


def test_nonpositive_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="interval"):
        OutlierDetector(outlier(interval_s=0.0), CLUSTER, now=0.0)


def test_long_idle_period_runs_sweeps_in_order() -> None:
    detector = _detector()
    detector.put_result(A, AttemptResult.answer(503), 0.0)
    assert detector.advance(1_000_000.0)
    assert not detector.is_ejected(A)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.last_unejection_time == 60.0
    assert monitor.ejection_backoff == 0
    assert detector.next_sweep_time == 1_000_005.0


# --- gateway errors -------------------------------------------------------------------------

UF = AttemptResult.connect_failure()
UC = AttemptResult.reset()
UT = AttemptResult.timeout()
OK = AttemptResult.success()
ANSWER = AttemptResult.answer


def gateway(threshold: int, **changes: object) -> OutlierDetection:
    """``consecutiveGatewayErrors: threshold`` as pilot emits it (enforcing 100 if > 0)."""
    return replace(
        outlier(consecutive_5xx_errors=0, max_ejection_percent=100),
        consecutive_gateway_errors=threshold,
        enforcing_consecutive_gateway_failure=100 if threshold > 0 else 0,
        **changes,
    )


def split(local_origin: int = 5, **changes: object) -> OutlierDetection:
    """``splitExternalLocalOriginErrors: true`` with ``consecutiveLocalOriginFailures``."""
    return replace(
        outlier(consecutive_5xx_errors=0, max_ejection_percent=100),
        split_external_local_origin_errors=True,
        consecutive_local_origin_failures=local_origin,
        **changes,
    )


def _counters(detector: OutlierDetector, address: str = A) -> tuple[int, int, int]:
    monitor = detector.monitor(address)
    assert monitor is not None
    return (
        monitor.consecutive_5xx,
        monitor.consecutive_gateway_failure,
        monitor.consecutive_local_origin_failure,
    )


@pytest.mark.parametrize(
    ("code", "gateway_count"),
    [
        pytest.param(502, 2, id="502"),
        pytest.param(503, 2, id="503"),
        pytest.param(504, 2, id="504"),
        pytest.param(500, 0, id="500-resets"),
        pytest.param(501, 0, id="501-resets"),
        pytest.param(599, 0, id="599-resets"),
        pytest.param(200, 0, id="200-resets"),
        pytest.param(404, 0, id="404-resets"),
    ],
)
def test_only_502_503_504_extend_the_gateway_count(code: int, gateway_count: int) -> None:
    detector = _detector(gateway(5))
    detector.put_result(A, AttemptResult.answer(503), 0.0)
    detector.put_result(A, AttemptResult.answer(code), 0.0)
    assert _counters(detector)[1] == gateway_count


def test_gateway_errors_eject_on_503_and_not_on_500() -> None:
    # consecutiveGatewayErrors: 1, consecutive5xxErrors: 0 (Envoy 1.40 checked: B, B2).
    detector = _detector(gateway(1))
    for t in range(5):
        assert not detector.put_result(A, ANSWER(500), float(t))
    assert detector.put_result(A, ANSWER(503), 5.0)
    events = detector.drain_events()
    assert [(e.action, e.type, e.enforced) for e in events] == [
        (EJECT, CONSECUTIVE_GATEWAY_FAILURE, True)
    ]


def test_both_detectors_firing_on_one_answer_eject_once_as_a_gateway_failure() -> None:
    # The gateway detection is handled first; the 5xx one finds the host ejected, so it is
    # ignored and its counter is left at the threshold (Envoy 1.40 checked: case O).
    detector = _detector(gateway(2, consecutive_5xx_errors=2))
    detector.put_result(A, ANSWER(502), 1.0)
    assert detector.put_result(A, ANSWER(502), 2.0)
    assert [(e.action, e.type) for e in detector.drain_events()] == [
        (EJECT, CONSECUTIVE_GATEWAY_FAILURE)
    ]
    assert _counters(detector) == (2, 0, 0)


def test_a_non_gateway_5xx_lets_the_5xx_detector_fire_first() -> None:
    detector = _detector(gateway(2, consecutive_5xx_errors=2))
    detector.put_result(A, ANSWER(502), 1.0)  # gateway 1, 5xx 1
    assert detector.put_result(A, ANSWER(500), 2.0)  # gateway reset, 5xx 2: ejects
    assert [e.type for e in detector.drain_events()] == [CONSECUTIVE_5XX]


def test_unset_gateway_errors_detect_five_but_never_eject() -> None:
    # Pilot leaves consecutive_gateway_failure at Envoy's 5 with enforcing 0.
    config = outlier(consecutive_5xx_errors=0, max_ejection_percent=100)
    assert (config.consecutive_gateway_errors, config.enforcing_consecutive_gateway_failure) == (
        5,
        0,
    )
    detector = _detector(config)
    for t in range(10):
        assert not detector.put_result(A, ANSWER(503), float(t))
    assert detector.ejections_active == 0
    assert detector.overflow_total == 0
    events = detector.drain_events()
    assert [(e.type, e.enforced, e.overflow, e.time_s) for e in events] == [
        (CONSECUTIVE_GATEWAY_FAILURE, False, False, 4.0),
        (CONSECUTIVE_GATEWAY_FAILURE, False, False, 9.0),
    ]
    assert _counters(detector)[1] == 0  # the firing counter resets all the same


def test_gateway_threshold_zero_never_fires() -> None:
    detector = _detector(gateway(0))
    for t in range(20):
        detector.put_result(A, ANSWER(503), float(t))
    assert detector.drain_events() == []


def test_only_0_and_100_percent_enforcing_is_supported() -> None:
    with pytest.raises(ValueError, match="enforcing_consecutive_gateway_failure"):
        OutlierDetector(
            replace(gateway(1), enforcing_consecutive_gateway_failure=50), CLUSTER, now=0
        )


# --- local-origin failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "code"),
    [
        pytest.param(UF, 503, id="connect-failure-503"),
        pytest.param(UC, 503, id="reset-503"),
        pytest.param(UT, 504, id="timeout-504"),
    ],
)
def test_without_split_local_origin_failures_are_gateway_5xx_codes(
    result: AttemptResult, code: int
) -> None:
    assert result.code() == code
    detector = _detector(gateway(2, consecutive_5xx_errors=3))
    detector.put_result(A, result, 1.0)
    assert _counters(detector) == (1, 1, 0)
    assert detector.put_result(A, result, 2.0)
    assert [e.type for e in detector.drain_events()] == [CONSECUTIVE_GATEWAY_FAILURE]


def test_split_connect_failures_eject_after_consecutive_local_origin_failures() -> None:
    detector = _detector(split(3, consecutive_5xx_errors=1, consecutive_gateway_errors=1))
    assert not detector.put_result(A, UF, 1.0)
    assert not detector.put_result(A, UF, 2.0)
    assert _counters(detector) == (0, 0, 2)  # nothing reaches the 5xx and gateway counters
    assert detector.put_result(A, UF, 3.0)
    events = detector.drain_events()
    assert [(e.action, e.type, e.enforced) for e in events] == [
        (EJECT, CONSECUTIVE_LOCAL_ORIGIN_FAILURE, True)
    ]
    assert _counters(detector) == (0, 0, 0)


@pytest.mark.parametrize(
    ("between", "after"),
    [
        pytest.param(OK, 0, id="answer-resets"),
        pytest.param(ANSWER(503), 0, id="a-5xx-answer-also-resets"),
        pytest.param(UC, 1, id="reset-after-connecting-restarts-at-1"),
        pytest.param(UT, 1, id="timeout-after-connecting-restarts-at-1"),
        pytest.param(UF, 3, id="connect-failure-extends"),
    ],
)
def test_split_every_connected_attempt_resets_the_local_origin_count(
    between: AttemptResult, after: int
) -> None:
    # The router reports LocalOriginConnectSuccess once the pool hands over a connection.
    detector = _detector(split(10))
    detector.put_result(A, UF, 1.0)
    detector.put_result(A, UF, 2.0)
    detector.put_result(A, between, 3.0)
    assert _counters(detector)[2] == after


@pytest.mark.parametrize(
    ("threshold", "ejects"),
    [pytest.param(1, True, id="threshold-1-ejects"), pytest.param(2, False, id="threshold-2")],
)
def test_split_timeouts_after_connecting_never_count_past_one(threshold: int, ejects: bool) -> None:
    # Each timeout follows its own connect success (Envoy 1.40 checked: cases D and E).
    detector = _detector(split(threshold, consecutive_gateway_errors=1))
    for t in range(5):
        detector.put_result(A, UT, float(t))
    assert detector.is_ejected(A) is ejects
    assert {e.type for e in detector.drain_events()} <= {CONSECUTIVE_LOCAL_ORIGIN_FAILURE}


def test_split_upstream_5xx_feed_only_the_5xx_and_gateway_counters() -> None:
    detector = _detector(split(2, consecutive_gateway_errors=2, consecutive_5xx_errors=5))
    detector.put_result(A, UF, 1.0)
    detector.put_result(A, ANSWER(503), 2.0)
    assert _counters(detector) == (1, 1, 0)
    assert not detector.put_result(A, ANSWER(500), 3.0)  # 500: 5xx 2, gateway reset
    assert _counters(detector) == (2, 0, 0)


def test_unejection_resets_all_three_counters_and_names_the_ejection_type() -> None:
    detector = _detector(split(2, consecutive_5xx_errors=9, consecutive_gateway_errors=9))
    detector.put_result(A, ANSWER(503), 1.0)
    detector.put_result(A, UF, 2.0)
    detector.put_result(A, UF, 3.0)  # ejected as a local-origin failure
    detector.put_result(A, ANSWER(503), 4.0)
    detector.put_result(A, UF, 5.0)
    assert _counters(detector) == (2, 2, 1)
    detector.advance(75.0)
    assert _counters(detector) == (0, 0, 0)
    events = detector.drain_events()
    assert [(e.action, e.type) for e in events] == [
        (EJECT, CONSECUTIVE_LOCAL_ORIGIN_FAILURE),
        (UNEJECT, CONSECUTIVE_LOCAL_ORIGIN_FAILURE),
    ]


def test_one_gate_for_all_detectors() -> None:
    # Two of four hosts may be out (50 %): one per detector type, and the third is refused.
    config = split(
        1, consecutive_5xx_errors=1, consecutive_gateway_errors=1, max_ejection_percent=50
    )
    config = replace(config, enforcing_consecutive_gateway_failure=100, always_eject_one_host=False)
    detector = _detector(config, hosts=4)
    c = "10.0.0.3:443"
    assert detector.put_result(A, ANSWER(503), 1.0)  # gateway
    assert detector.put_result(B, UF, 1.0)  # local origin
    assert not detector.put_result(c, ANSWER(500), 1.0)  # 5xx: refused, 3 of 4 > 50 %
    assert detector.ejections_active == 2
    assert detector.overflow_total == 1
    assert [(e.type, e.enforced, e.overflow) for e in detector.drain_events()] == [
        (CONSECUTIVE_GATEWAY_FAILURE, True, False),
        (CONSECUTIVE_LOCAL_ORIGIN_FAILURE, True, False),
        (CONSECUTIVE_5XX, False, True),
    ]


# --- outlierDetectionHttpErrorCodes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "codes", "reported"),
    [
        pytest.param(503, (), 503, id="no-codes-status-as-is"),
        pytest.param(404, (), 404, id="no-codes-404-is-a-success"),
        pytest.param(404, (404, 503), 500, id="listed-non-5xx-counts-as-500"),
        pytest.param(200, (200,), 500, id="even-200-when-listed"),
        pytest.param(503, (404, 503), 503, id="listed-5xx-keeps-its-code"),
        pytest.param(503, (404,), 200, id="unlisted-5xx-is-a-success"),
        pytest.param(None, (404,), 200, id="known-success"),
    ],
)
def test_error_codes_decide_what_an_answer_reports(
    status: int | None, codes: tuple[int, ...], reported: int
) -> None:
    # Router + HttpProtocolOptions.outlier_detection.error_matcher (envoyproxy/envoy#39947).
    assert http_response_code(status, frozenset(codes)) == reported


def test_error_codes_make_a_listed_404_eject_through_the_5xx_detector() -> None:
    config = replace(
        outlier(consecutive_5xx_errors=2, max_ejection_percent=100),
        http_error_codes=frozenset({404}),
    )
    detector = _detector(config)
    detector.put_result(A, ANSWER(404), 1.0)
    detector.put_result(A, ANSWER(503), 2.0)  # not listed: a success, the count restarts
    detector.put_result(A, ANSWER(404), 3.0)
    assert detector.put_result(A, ANSWER(404), 4.0)
    assert [e.type for e in detector.drain_events()] == [CONSECUTIVE_5XX]


def test_a_listed_non_5xx_is_no_gateway_error() -> None:
    # Envoy 1.40 checked (case H): a matched 404 is reported as 500.
    detector = _detector(gateway(1, http_error_codes=frozenset({404, 503})))
    assert not detector.put_result(A, ANSWER(404), 1.0)
    assert detector.put_result(A, ANSWER(503), 2.0)


def test_error_codes_do_not_apply_to_local_origin_failures() -> None:
    detector = _detector(gateway(1, http_error_codes=frozenset({404})))
    assert detector.put_result(A, UF, 1.0)  # still a 503 to the detector


# --- properties -----------------------------------------------------------------------------

_RESULTS = st.sampled_from(
    [OK, ANSWER(200), ANSWER(404), ANSWER(500), ANSWER(502), ANSWER(503), ANSWER(504), UF, UC, UT]
)
_OPS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),  # host index
        _RESULTS,
        st.floats(min_value=0.0, max_value=40.0, allow_nan=False),  # time step
    ),
    max_size=60,
)


@st.composite
def _configs(draw: st.DrawFn) -> OutlierDetection:
    gateway_errors = draw(st.integers(min_value=0, max_value=3))
    return replace(
        outlier(
            consecutive_5xx_errors=draw(st.integers(min_value=0, max_value=3)),
            interval_s=draw(st.sampled_from([1.0, 10.0, 15.0])),
            base_ejection_time_s=draw(st.sampled_from([5.0, 30.0, 60.0])),
            max_ejection_percent=draw(st.integers(min_value=0, max_value=100)),
            always_eject_one_host=draw(st.booleans()),
        ),
        consecutive_gateway_errors=gateway_errors,
        enforcing_consecutive_gateway_failure=draw(st.sampled_from([0, 100])),
        split_external_local_origin_errors=draw(st.booleans()),
        consecutive_local_origin_failures=draw(st.integers(min_value=1, max_value=3)),
        http_error_codes=draw(st.sampled_from([frozenset(), frozenset({404, 503})])),
    )


_CONFIGS = _configs()

_State = tuple[tuple[bool, int, int, int, int, int], ...]


def _run(
    config: OutlierDetection, ops: list[tuple[int, AttemptResult, float]], *, naive: bool = False
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
    for index, result, dt in ops:
        now += dt
        if naive:
            while 0.0 + k * config.interval_s <= now:
                detector._sweep(0.0 + k * config.interval_s)
                k += 1
        else:
            detector.advance(now)
        detector.put_result(hosts[index], result, now)
        states.append(
            tuple(
                (
                    m.ejected,
                    m.consecutive_5xx,
                    m.consecutive_gateway_failure,
                    m.consecutive_local_origin_failure,
                    m.ejection_backoff,
                    m.num_ejections,
                )
                for m in (detector.monitor(h) for h in hosts)
                if m is not None
            )
        )
    return states, detector


@settings(deadline=None)
@given(config=_CONFIGS, ops=_OPS)
def test_ejections_never_exceed_what_max_ejection_percent_allows(
    config: OutlierDetection, ops: list[tuple[int, AttemptResult, float]]
) -> None:
    # 5 hosts, fixed membership: every enforced ejection, whatever detected it, passed the
    # one gate, so at most floor(mep*5/100) hosts are out, or one when always_eject_one_host.
    allowed = config.max_ejection_percent * 5 // 100
    if config.always_eject_one_host:
        allowed = max(allowed, 1)
    states, detector = _run(config, ops)
    for state in states:
        assert sum(ejected for ejected, *_ in state) <= allowed
    final = states[-1] if states else ()
    assert detector.ejections_active == sum(ejected for ejected, *_ in final)


@settings(deadline=None)
@given(config=_CONFIGS, ops=_OPS)
def test_jumping_over_sweeps_equals_running_them_one_by_one(
    config: OutlierDetection, ops: list[tuple[int, AttemptResult, float]]
) -> None:
    jumped, a = _run(config, ops)
    stepped, b = _run(config, ops, naive=True)
    assert jumped == stepped
    assert a.drain_events() == b.drain_events()


@settings(deadline=None)
@given(
    interval_s=st.sampled_from([1.0, 10.0, 15.0, 45.0]),
    base_s=st.sampled_from([5.0, 30.0, 60.0, 400.0]),
    ejections=st.integers(min_value=1, max_value=9),
)
def test_backoff_decays_one_step_per_sweep_once_unejected_a_full_interval(
    interval_s: float, base_s: float, ejections: int
) -> None:
    config = outlier(interval_s=interval_s, base_ejection_time_s=base_s, max_ejection_percent=100)
    detector = _detector(config)
    monitor = detector.monitor(A)
    assert monitor is not None
    # Re-eject at the very sweep that lets the host back in, ``ejections`` times.
    now = 0.0
    for _ in range(ejections):
        assert detector.put_result(A, ANSWER(503), now)
        while detector.is_ejected(A):
            now = detector.next_sweep_time
            detector.advance(now)
    unejected_at = now
    backoff = monitor.ejection_backoff
    assert backoff == min(ejections, int(config.max_ejection_time_s // base_s) + 1)
    # The sweep that un-ejects does not decay; each later one takes one step, down to 0.
    for sweeps in range(backoff + 3):
        assert monitor.ejection_backoff == max(0, backoff - sweeps)
        detector.advance(detector.next_sweep_time)
        assert detector.next_sweep_time - unejected_at > sweeps * interval_s


@settings(deadline=None)
@given(config=_CONFIGS, ops=_OPS)
def test_no_ejection_lasts_longer_than_the_cap_plus_one_sweep(
    config: OutlierDetection, ops: list[tuple[int, AttemptResult, float]]
) -> None:
    cap = max(300.0, config.base_ejection_time_s)
    assert config.max_ejection_time_s == cap
    _, detector = _run(config, ops)
    detector.advance(1e7)
    ejected_at: dict[str, float] = {}
    for event in detector.drain_events():
        if event.action == EJECT and event.enforced:
            ejected_at[event.upstream_url] = event.time_s
        elif event.action == UNEJECT:
            lasted = event.time_s - ejected_at.pop(event.upstream_url)
            assert lasted <= cap + config.interval_s
    assert not ejected_at  # everything came back
    for backoff in range(0, 40):
        assert ejection_duration_s(config, backoff) <= cap


# Five hosts over three priorities for a us-east1 client: P0 east (1), P1 west (2), P2 eu (2).
_SPREAD = service(
    [
        ("10.0.0.1", "us-east1"),
        ("10.0.0.2", "us-west"),
        ("10.0.0.3", "us-west"),
        ("10.0.0.4", "eu-west"),
        ("10.0.0.5", "eu-west"),
    ],
    outlier=BLOG_OUTLIER,
    failover=failover(("us-east1", "us-west")),
)


@settings(deadline=None)
@given(
    config=_CONFIGS,
    ops=_OPS,
    always=st.booleans(),
)
def test_the_gate_counts_hosts_of_every_priority(
    config: OutlierDetection, ops: list[tuple[int, AttemptResult, float]], always: bool
) -> None:
    config = replace(config, always_eject_one_host=always)
    state = ClusterState(
        replace(_SPREAD, outlier_detection=config),
        Workload(Locality.parse("us-east1")),
        now=0.0,
        rng=random.Random(0),
    )
    assert sorted({v.priority for v in state.hosts(0.0)}) == [0, 1, 2]
    allowed = config.max_ejection_percent * 5 // 100
    if always:
        allowed = max(allowed, 1)
    hosts = [f"10.0.0.{i + 1}:443" for i in range(5)]
    now = 0.0
    for index, result, dt in ops:
        now += dt
        state.record(hosts[index], result, now)
        assert state.ejections_active <= allowed


@pytest.mark.parametrize(
    "always", [pytest.param(True, id="default"), pytest.param(False, id="strict")]
)
def test_the_only_host_of_p0_can_be_ejected_at_20_percent_of_five(always: bool) -> None:
    # Per priority P0 would be 100 % ejected; Envoy's gate looks at all 5 hosts: 1/5 = 20 %.
    config = replace(outlier(max_ejection_percent=20), always_eject_one_host=always)
    state = ClusterState(
        replace(_SPREAD, outlier_detection=config),
        Workload(Locality.parse("us-east1")),
        now=0.0,
        rng=random.Random(0),
    )
    state.record("10.0.0.1:443", AttemptResult.answer(503), 1.0)
    assert state.ejections_active == 1
    state.record("10.0.0.2:443", AttemptResult.answer(503), 1.0)  # 2/5 = 40 % > 20 %
    assert state.ejections_active == 1
