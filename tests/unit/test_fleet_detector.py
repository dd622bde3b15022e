"""A fleet ejection in the outlier detector: applied under this brain's own rules, lasting
until the sender's end, contradicted by this proxy's newer evidence."""

from __future__ import annotations

import dataclasses
import random

from extproc import testing
from extproc.core.cluster import ClusterState
from extproc.core.fleet import FleetEjection
from extproc.core.outlier import AttemptResult, OutlierEjectionType
from extproc.core.outlier_detector import FleetVerdict, OutlierDetector
from extproc.core.policy import Locality, Workload
from extproc.testing import outlier

A, B, C = "10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"  # testing.endpoint: port 443
FLEET = OutlierEjectionType.FLEET


def _detector(max_ejection_percent: int = 100) -> OutlierDetector:
    # Sweeps every 15 s from t=0; a local ejection lasts 60 s.
    config = outlier(max_ejection_percent=max_ejection_percent, always_eject_one_host=False)
    detector = OutlierDetector(config, "outbound|80||mydb.com", now=0.0)
    detector.set_hosts([A, B, C])
    return detector


def test_a_fleet_ejection_lasts_until_the_first_sweep_at_or_after_its_end() -> None:
    detector = _detector()
    assert detector.eject_for_fleet(A, since=9.0, duration_s=20.0, now=10.0) is FleetVerdict.EJECTED
    assert detector.is_ejected(A)
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.ejection_type is FLEET
    assert monitor.ejection_backoff == 0  # the sender's backoff set its length
    assert detector.ejection_time_left_s(A, now=20.0) == 10.0
    assert not detector.advance(15.0)  # t=15: still before the end (30)
    assert detector.is_ejected(A)
    assert detector.advance(30.0)  # the sweep at 30 is at its end
    assert not detector.is_ejected(A)


def test_a_fleet_ejection_obeys_the_ejection_gate() -> None:
    detector = _detector(max_ejection_percent=34)  # one of three hosts at most
    assert detector.eject_for_fleet(A, since=0.0, duration_s=20.0, now=1.0) is FleetVerdict.EJECTED
    assert detector.eject_for_fleet(B, since=0.0, duration_s=20.0, now=1.0) is FleetVerdict.REFUSED
    assert not detector.is_ejected(B)
    assert detector.overflow_total == 1


def test_a_host_not_ours_or_already_ejected_is_left_alone() -> None:
    detector = _detector()
    assert detector.eject_for_fleet("10.9.9.9:443", since=0.0, duration_s=5.0, now=1.0) is (
        FleetVerdict.NOT_OURS
    )
    assert detector.put_result(A, AttemptResult.answer(503), now=1.0)  # our own ejection
    verdict = detector.eject_for_fleet(A, since=0.0, duration_s=500.0, now=2.0)
    assert verdict is FleetVerdict.ALREADY_EJECTED
    monitor = detector.monitor(A)
    assert monitor is not None
    assert monitor.ejection_type is OutlierEjectionType.CONSECUTIVE_5XX


def test_our_own_clean_answer_after_the_senders_ejection_wins() -> None:
    # One proxy may reach an endpoint another cannot: what this proxy saw itself, after the
    # other brain ejected the host, is the better evidence for this proxy.
    detector = _detector()
    detector.put_result(A, AttemptResult.answer(200), now=5.0)
    assert detector.eject_for_fleet(A, since=4.0, duration_s=20.0, now=6.0) is (
        FleetVerdict.CONTRADICTED
    )
    assert not detector.is_ejected(A)
    # An answer older than the other brain's ejection does not contradict it.
    assert detector.eject_for_fleet(A, since=5.5, duration_s=20.0, now=6.0) is (
        FleetVerdict.EJECTED
    )


def test_another_brains_ejection_fails_this_cluster_over_until_its_end() -> None:
    service = testing.service(
        [("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west1")],
        outlier=outlier(max_ejection_percent=100),
        failover=testing.failover(("us-east1", "us-west1")),
    )
    workload = Workload(Locality.parse("us-east1"))
    cluster = ClusterState(service, workload, now=0.0, rng=random.Random(1))
    assert cluster.pick(1.0).host == A
    cluster.release(A)
    news = FleetEjection(
        fleet="f",
        proxy="pod-a",
        cluster=service.cluster_name,
        host=A,
        kind=OutlierEjectionType.CONSECUTIVE_5XX,
        num_ejections=1,
        ejected_at=1_000.0,
        until=1_060.0,
    )
    # This machine's wall clock reads 1_001 at monotonic 2.0: the ejection ends at 61.
    assert cluster.apply_fleet_ejection(news, now=2.0, now_wall=1_001.0) is FleetVerdict.EJECTED
    assert cluster.pick(3.0).host == B
    cluster.release(B)
    [event] = cluster.drain_events()
    assert (event.type, event.upstream_url) == (FLEET, A)
    assert cluster.pick(75.0).host == A  # the sweep at 75 is the first at or after 61
    # Another cluster's news, or news already over here, changes nothing.
    other = dataclasses.replace(news, cluster="outbound|80||other.com")
    assert cluster.apply_fleet_ejection(other, now=80.0, now_wall=1_079.0) is FleetVerdict.NOT_OURS
    assert cluster.apply_fleet_ejection(news, now=80.0, now_wall=1_079.0) is FleetVerdict.OVER
