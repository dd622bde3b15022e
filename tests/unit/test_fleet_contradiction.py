"""When this proxy's own evidence contradicts the fleet's news (``core.fleet`` rule 4), and
when the news says the host was ejected."""

from __future__ import annotations

import random

import pytest

from extproc import testing
from extproc.core.cluster import ClusterState
from extproc.core.fleet import CONTRADICTION_MARGIN_S, FleetEjection
from extproc.core.outlier import AttemptResult, OutlierEjectionType
from extproc.core.outlier_detector import FleetVerdict
from extproc.core.policy import Locality, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.server.fleet_link import FleetLink
from extproc.testing import FakeClock, outlier

EAST = "10.0.0.1:443"
SERVICE = testing.service(
    [("10.0.0.1", "us-east1"), ("10.0.0.2", "us-west1")],
    outlier=outlier(max_ejection_percent=100),
    failover=testing.failover(("us-east1", "us-west1")),
)


def _news(ejected_at: float) -> FleetEjection:
    return FleetEjection(
        fleet="f",
        proxy="pod-a",
        cluster=SERVICE.cluster_name,
        host=EAST,
        kind=OutlierEjectionType.CONSECUTIVE_5XX,
        num_ejections=1,
        ejected_at=ejected_at,
        until=ejected_at + 60.0,
    )


@pytest.mark.parametrize(
    ("answer_after_s", "verdict"),
    [
        (-0.05, FleetVerdict.EJECTED),  # before the other brain's ejection
        (0.1, FleetVerdict.EJECTED),  # one success batch later: no evidence
        (CONTRADICTION_MARGIN_S - 0.01, FleetVerdict.EJECTED),
        (CONTRADICTION_MARGIN_S + 0.01, FleetVerdict.CONTRADICTED),
        (30.0, FleetVerdict.CONTRADICTED),  # news caught up late: this proxy knows better
    ],
    ids=["before", "one-batch-late", "inside-margin", "past-margin", "long-after"],
)
def test_only_an_answer_well_after_the_senders_ejection_contradicts_it(
    answer_after_s: float, verdict: FleetVerdict
) -> None:
    cluster = ClusterState(
        SERVICE, Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    # Monotonic 100.0 is wall 1_100.0 here; the other brain ejected at wall 1_100.0.
    answered = 100.0 + answer_after_s
    cluster.record(EAST, AttemptResult.answer(200), answered, finished=False)
    heard = max(answered, 100.0) + 0.01
    assert cluster.apply_fleet_ejection(_news(1_100.0), heard, heard + 1_000.0) is verdict


def test_the_news_says_when_the_ejection_happened_not_when_it_was_drained() -> None:
    clock = FakeClock(10.0, wall_start=5_000.0)
    table = ServiceTable(
        Policy((SERVICE,)),
        Workload(Locality.parse("us-east1")),
        now=clock.now(),
        rng=random.Random(1),
    )
    link = FleetLink(
        "redis://127.0.0.1:1/0", "f", "me", lambda: table, clock, on_change=lambda: None
    )
    cluster = table.clusters[SERVICE.cluster_name]
    cluster.record(EAST, AttemptResult.answer(503), clock.now(), finished=False)
    clock.advance(0.08)  # the service's sweep drains the events up to 0.1 s later
    [event] = cluster.drain_events()
    link.announce(event)
    [news] = link._outbox
    assert news.ejected_at == pytest.approx(5_000.0)
    assert SERVICE.outlier_detection is not None
    base_s = SERVICE.outlier_detection.base_ejection_time_s
    assert news.until == pytest.approx(5_000.0 + base_s)
