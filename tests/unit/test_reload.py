"""Live reload, pure parts: what a new ClusterState takes over from the one it replaces,
how two policies differ, a rejected config leaving the served table untouched, and what a
reload logs (a warning when it removes most services; a config's warnings once)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from extproc.core.change import PolicyChange, policy_change
from extproc.core.cluster import ClusterState
from extproc.core.outlier import AttemptResult
from extproc.core.policy import (
    LbAlgorithm,
    Locality,
    OutlierDetection,
    Policy,
    Resolution,
    Service,
    Workload,
)
from extproc.errors import Problem
from extproc.istio import load_policy
from extproc.server import reload as reload_module
from extproc.server.app import ServiceApp
from extproc.server.reload import ConfigReloader
from extproc.settings import Settings
from extproc.testing import FakeClock, endpoint, failover, outlier, service

EAST_IP, WEST_IP, EU_IP = "10.0.0.1", "10.0.0.2", "10.0.0.3"
EAST, WEST, EU = f"{EAST_IP}:80", f"{WEST_IP}:80", f"{EU_IP}:80"
WORKLOAD = Workload(Locality.parse("us-east1"))


def seed_service(
    detection: OutlierDetection | None = None,
    *,
    extra: tuple[str, str] | None = None,
    lb: LbAlgorithm = LbAlgorithm.ROUND_ROBIN,
) -> Service:
    """The seed's mydb.com (east preferred, west on failover), static IPs on port 80."""
    endpoints = [endpoint(EAST_IP, "us-east1", port=80), endpoint(WEST_IP, "us-west", port=80)]
    if extra is not None:
        endpoints.append(endpoint(extra[0], extra[1], port=80))
    return service(
        endpoints,
        outlier=outlier(consecutive_5xx_errors=2, interval_s=1.0, base_ejection_time_s=10.0)
        if detection is None
        else detection,
        failover=failover(("us-east1", "us-west")),
        lb=lb,
    )


def state(svc: Service, now: float) -> ClusterState:
    return ClusterState(svc, WORKLOAD, now=now, rng=random.Random(1))


def row(cluster: ClusterState, address: str, now: float) -> dict[str, object]:
    view = next(v for v in cluster.hosts(now) if v.address == address)
    return {
        "ejected": view.ejected,
        "consecutive_5xx": view.consecutive_5xx,
        "num_ejections": view.num_ejections,
        "ejection_backoff": view.ejection_backoff,
        "ejection_time_left_s": view.ejection_time_left_s,
        "active_requests": view.active_requests,
    }


def eject(cluster: ClusterState, address: str, clock: FakeClock) -> None:
    cluster.record(address, AttemptResult.answer(503), clock.now())
    cluster.record(address, AttemptResult.answer(503), clock.now())
    assert row(cluster, address, clock.now())["ejected"] is True


def test_an_ejected_host_stays_ejected_with_its_time_left_across_a_reload() -> None:
    clock = FakeClock(100.0)
    old = state(seed_service(), clock.now())
    eject(old, EAST, clock)
    clock.advance(4.0)
    before = row(old, EAST, clock.now())

    new = state(seed_service(extra=(EU_IP, "eu-west")), clock.now())
    new.carry_over(old, clock.now())

    assert row(new, EAST, clock.now()) == before
    assert new.ejections_active == 1
    assert {new.pick(clock.now()).host for _ in range(10)} == {WEST}


def test_the_ejection_ends_at_the_sweep_it_would_have_ended_at_without_the_reload() -> None:
    clock = FakeClock(100.0)
    kept = state(seed_service(), clock.now())
    reloaded = state(seed_service(), clock.now())
    eject(kept, EAST, clock)
    eject(reloaded, EAST, clock)
    clock.advance(3.5)
    new = state(seed_service(extra=(EU_IP, "eu-west")), clock.now())
    new.carry_over(reloaded, clock.now())

    ends = []
    for cluster in (kept, new):
        probe = FakeClock(clock.now())
        while row(cluster, EAST, probe.now())["ejected"]:
            probe.advance(0.25)
        ends.append(probe.now())

    assert ends[0] == ends[1] == 110.0  # ejected at 100 for 10 s; sweeps every 1 s from 100


def test_consecutive_errors_and_backoff_carry_over_so_the_next_error_counts_on() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(), clock.now())
    eject(old, EAST, clock)
    clock.advance(11.0)  # un-ejected at the sweep at 10 s; backoff 1 decays later
    old.record(EAST, AttemptResult.answer(503), clock.now())  # one of two
    assert row(old, EAST, clock.now())["consecutive_5xx"] == 1

    new = state(seed_service(), clock.now())
    new.carry_over(old, clock.now())
    new.record(EAST, AttemptResult.answer(503), clock.now())

    after = row(new, EAST, clock.now())
    assert after["ejected"] is True
    assert after["num_ejections"] == 2


def test_a_lowered_threshold_ejects_on_the_next_error_not_at_the_reload() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(), clock.now())
    old.record(EAST, AttemptResult.answer(503), clock.now())  # 1 of 2: not ejected

    new = state(
        seed_service(outlier(consecutive_5xx_errors=1, interval_s=1.0, base_ejection_time_s=10.0)),
        clock.now(),
    )
    new.carry_over(old, clock.now())
    assert row(new, EAST, clock.now())["ejected"] is False  # no error event at the reload
    new.record(EAST, AttemptResult.answer(503), clock.now())

    assert row(new, EAST, clock.now())["ejected"] is True


def test_a_reload_that_drops_outlier_detection_puts_ejected_hosts_back() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(), clock.now())
    eject(old, EAST, clock)

    new = state(replace(seed_service(), outlier_detection=None), clock.now())
    new.carry_over(old, clock.now())

    assert row(new, EAST, clock.now())["ejected"] is False
    assert new.ejections_active == 0


def test_hosts_that_leave_lose_their_state_and_new_hosts_start_fresh() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(extra=(EU_IP, "eu-west")), clock.now())
    eject(old, EU, clock)
    old.record(WEST, AttemptResult.answer(503), clock.now())

    new = state(seed_service(), clock.now())
    new.carry_over(old, clock.now())
    assert EU not in {v.address for v in new.hosts(clock.now())}
    assert new.ejections_active == 0
    assert row(new, WEST, clock.now())["consecutive_5xx"] == 1

    again = state(seed_service(extra=(EU_IP, "eu-west")), clock.now())
    again.carry_over(new, clock.now())
    assert row(again, EU, clock.now())["ejected"] is False
    assert row(again, EU, clock.now())["num_ejections"] == 0


def test_requests_picked_before_the_reload_report_to_the_new_state() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(lb=LbAlgorithm.LEAST_REQUEST), clock.now())
    picks = [old.pick(clock.now()).host for _ in range(3)]
    assert picks == [EAST] * 3
    assert row(old, EAST, clock.now())["active_requests"] == 3

    new = state(seed_service(lb=LbAlgorithm.LEAST_REQUEST), clock.now())
    new.carry_over(old, clock.now())
    assert row(new, EAST, clock.now())["active_requests"] == 3
    old.record(EAST, AttemptResult.answer(503), clock.now())
    old.record(EAST, AttemptResult.answer(503), clock.now())
    old.release(EAST)

    after = row(new, EAST, clock.now())
    assert after["active_requests"] == 0
    assert after["ejected"] is True


def test_dns_endpoints_start_with_the_addresses_their_name_had() -> None:
    clock = FakeClock(0.0)
    dns = replace(
        seed_service(),
        resolution=Resolution.DNS,
        endpoints=(
            endpoint("east.example", "us-east1", port=80),
            endpoint("west.example", "us-west", port=80),
        ),
    )
    old = state(dns, clock.now())
    old.set_endpoint_addresses(0, [EAST_IP, EU_IP], clock.now())
    old.set_endpoint_addresses(1, [WEST_IP], clock.now())
    eject(old, EU, clock)

    renamed = replace(
        dns,
        endpoints=(
            endpoint("east.example", "us-east1", port=80),
            endpoint("west2.example", "us-west", port=80),
        ),
    )
    new = state(renamed, clock.now())
    new.carry_over(old, clock.now())

    assert [v.address for v in new.hosts(clock.now())] == [EAST, EU]
    assert row(new, EU, clock.now())["ejected"] is True
    logical = state(replace(dns, resolution=Resolution.DNS_ROUND_ROBIN), clock.now())
    logical.carry_over(old, clock.now())
    assert [v.address for v in logical.hosts(clock.now())] == [EAST, WEST]


def test_the_generation_keeps_going_up_across_reloads_and_re_added_clusters() -> None:
    clock = FakeClock(0.0)
    old = state(seed_service(), clock.now())
    generations = [old.generation]
    for _ in range(3):
        eject(old, EAST, clock)
        generations.append(old.generation)
        clock.advance(20.0)
        old.advance(clock.now())
        generations.append(old.generation)
    assert generations == sorted(set(generations))

    new = state(seed_service(), clock.now())
    new.carry_over(old, clock.now())
    readded = state(seed_service(), clock.now())
    readded.carry_over(None, clock.now(), after_generation=new.generation)

    assert old.generation < new.generation < readded.generation


@pytest.mark.parametrize(
    ("new_services", "expected"),
    [
        pytest.param(
            lambda s: (s,),
            PolicyChange(unchanged=True),
            id="same",
        ),
        pytest.param(
            lambda s: (s, replace(s, host="other.com")),
            PolicyChange(added=("outbound|80||other.com",)),
            id="added",
        ),
        pytest.param(lambda s: (), PolicyChange(removed=("outbound|80||mydb.com",)), id="removed"),
        pytest.param(
            lambda s: (replace(s, pool=replace(s.pool, connect_timeout_s=1.0)),),
            PolicyChange(changed=("outbound|80||mydb.com",)),
            id="changed",
        ),
    ],
)
def test_policy_change_names_the_services_added_removed_and_changed(
    new_services: object, expected: PolicyChange
) -> None:
    svc = seed_service()
    assert callable(new_services)
    assert policy_change(Policy((svc,)), Policy(new_services(svc))) == expected


SEED = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: mydb}
spec:
  hosts: [mydb.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east1}
  - {address: 10.0.0.2, locality: us-west}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: mydb}
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}
"""


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(SEED.replace("hosts: [mydb.com]", "hosts: [mydb.com"), id="yaml-syntax"),
        pytest.param(SEED.replace("interval: 1s", "interval: 1x"), id="bad-duration"),
        pytest.param(SEED.replace("number: 80", "number: 0"), id="bad-port"),
    ],
)
async def test_a_rejected_config_leaves_the_served_table_object_untouched(
    tmp_path: Path, bad: str
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(SEED)
    clock = FakeClock(0.0)
    app = ServiceApp(
        load_policy(config), Settings(workload=WORKLOAD), clock=clock, rng=random.Random(1)
    )
    table = app.table
    for cluster in table:
        for index, address in enumerate((EAST_IP, WEST_IP)):
            cluster.set_endpoint_addresses(index, [address], clock.now())
    cluster = table.clusters["outbound|80||mydb.com"]
    cluster.record(EAST, AttemptResult.answer(503), clock.now())
    before = cluster.hosts(clock.now())
    reloader = ConfigReloader(
        config, load_policy, app.apply_policy, metrics=app.metrics, settle_s=0
    )

    config.write_text(bad)
    accepted = await reloader.reload()

    assert accepted is False
    assert app.table is table
    assert table.clusters["outbound|80||mydb.com"] is cluster
    assert cluster.hosts(clock.now()) == before
    assert app.metrics.exposition().count(b'extproc_config_reloads_total{result="rejected"} 1.0')


async def test_a_good_reload_swaps_the_table_and_keeps_the_ejection(tmp_path: Path) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(SEED)
    clock = FakeClock(0.0)
    app = ServiceApp(
        load_policy(config), Settings(workload=WORKLOAD), clock=clock, rng=random.Random(1)
    )
    old = app.table
    old.clusters["outbound|80||mydb.com"].record(EAST, AttemptResult.answer(503), clock.now())
    reloader = ConfigReloader(
        config, load_policy, app.apply_policy, metrics=app.metrics, settle_s=0
    )

    config.write_text(SEED.replace("baseEjectionTime: 30s", "baseEjectionTime: 60s"))
    accepted = await reloader.reload()

    assert accepted is True
    assert app.table is not old
    east = next(
        v for v in app.table.clusters["outbound|80||mydb.com"].hosts(0.0) if v.address == EAST
    )
    assert east.ejected is True
    assert east.ejection_time_left_s == 60.0  # the new baseEjectionTime, same ejection
    assert app.metrics.exposition().count(b'extproc_config_reloads_total{result="ok"} 1.0')


# --- what a reload logs ---------------------------------------------------------------------


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The reloader's log lines (a fresh logger: one cached earlier would not be captured)."""
    with capture_logs() as captured:
        monkeypatch.setattr(reload_module, "log", structlog.get_logger(reload_module.__name__))
        yield captured


def hosts(*names: str, warnings: tuple[str, ...] = ()) -> Policy:
    """A policy of the seed service under ``names``, with warnings that name no place."""
    problems = tuple(Problem("", "", "", text) for text in warnings)
    return Policy(tuple(replace(seed_service(), host=name) for name in names), problems)


async def reload_to(tmp_path: Path, old: Policy, new: Policy) -> bool:
    """Reload from ``old`` (being served) to ``new``, as the reloader sees it."""
    served = [old]

    async def apply(policy: Policy) -> PolicyChange:
        change = policy_change(served[-1], policy)
        served.append(policy)
        return change

    (tmp_path / "mesh.yaml").write_text("")
    reloader = ConfigReloader(tmp_path / "mesh.yaml", lambda _: new, apply, policy=old, settle_s=0)
    return await reloader.reload()


def cluster(name: str) -> str:
    return f"outbound|80||{name}"


@pytest.mark.parametrize(
    ("after", "removed"),
    [
        pytest.param(("a.com",), [cluster("b.com"), cluster("c.com")], id="two-of-three"),
        pytest.param((), [cluster(n) for n in ("a.com", "b.com", "c.com")], id="all"),
        pytest.param(("d.com",), [cluster(n) for n in ("a.com", "b.com", "c.com")], id="renamed"),
    ],
)
async def test_a_reload_that_removes_most_services_is_applied_with_a_warning_naming_them(
    tmp_path: Path, logs: list[dict[str, Any]], after: tuple[str, ...], removed: list[str]
) -> None:
    accepted = await reload_to(tmp_path, hosts("a.com", "b.com", "c.com"), hosts(*after))

    assert accepted is True
    (warning,) = [line for line in logs if line["event"] == "config.reload_removes"]
    assert warning["log_level"] == "warning"
    assert warning["services_removed"] == removed
    assert warning["services_before"] == 3
    assert [line["event"] for line in logs][-1] == "config.reload"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(("a.com", "b.com"), ("a.com",), id="half"),
        pytest.param(("a.com", "b.com", "c.com"), ("a.com", "c.com"), id="one-of-three"),
        pytest.param(("a.com",), ("a.com", "b.com"), id="added"),
    ],
)
async def test_a_reload_that_keeps_half_the_services_or_more_does_not_warn(
    tmp_path: Path, logs: list[dict[str, Any]], before: tuple[str, ...], after: tuple[str, ...]
) -> None:
    assert await reload_to(tmp_path, hosts(*before), hosts(*after)) is True
    assert [line["event"] for line in logs] == ["config.reload"]


async def test_a_reload_logs_only_the_warnings_the_previous_config_did_not_have(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    old = hosts("a.com", warnings=("maxEjectionPercent ...", "tls ..."))
    new = hosts("a.com", "b.com", warnings=("maxEjectionPercent ...", "new one"))

    assert await reload_to(tmp_path, old, new) is True

    shown = [line["warning"] for line in logs if line["event"] == "config.warning"]
    assert shown == ["new one"]
    assert logs[-1]["warnings"] == 2  # config.reload still says how many apply


async def test_a_config_warning_is_logged_with_its_file_document_and_field_path(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    problem = Problem(
        "mesh/dr.yaml", 'DestinationRule "db" (document 2)', "spec.trafficPolicy.tls", "no sni"
    )
    new = replace(hosts("a.com"), warnings=(problem,))

    assert await reload_to(tmp_path, hosts("a.com"), new) is True

    (line,) = [line for line in logs if line["event"] == "config.warning"]
    assert (line["file"], line["document"], line["field"]) == (
        "mesh/dr.yaml",
        'DestinationRule "db" (document 2)',
        "spec.trafficPolicy.tls",
    )
    assert line["warning"] == str(problem)  # the line extproc check prints


async def test_the_same_warnings_at_every_reload_are_logged_once(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("")
    policy = hosts("a.com", warnings=("maxEjectionPercent ...",))

    async def apply(new: Policy) -> PolicyChange:
        return PolicyChange(unchanged=True)

    reloader = ConfigReloader(config, lambda _: policy, apply, settle_s=0)
    for _ in range(3):
        assert await reloader.reload() is True

    assert [line["warning"] for line in logs if line["event"] == "config.warning"] == [
        "maxEjectionPercent ..."
    ]
