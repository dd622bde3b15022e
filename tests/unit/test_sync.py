"""The fast path's sync endpoint: reports in, the routing table out."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from extproc.clock import Clock, MonotonicClock
from extproc.core.policy import LbAlgorithm, Locality, OutlierDetection, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.server.sync import SyncEndpoint, SyncServer
from extproc.testing import FakeClock, endpoint, outlier, service
from extproc.wire import SERVICE_HEADER, SYNC_PATH

CLUSTER = "outbound|80||mydb.com"
EAST = "10.0.0.1:443"
WEST = "10.0.0.2:443"


def _endpoint(
    version_base: int | None = 1_000_000, clock: Clock | None = None
) -> tuple[SyncEndpoint, Clock]:
    clock = clock or FakeClock()
    svc = service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
        outlier=outlier(consecutive_5xx_errors=2),
    )
    table = ServiceTable(
        Policy((svc,)), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    return SyncEndpoint(lambda: table, clock, ttl_ms=100, version_base=version_base), clock


def _rows(answer: str | None) -> list[str]:
    """The table's host lines (``<ip:port> <weight>``), without the header and settings."""
    assert answer is not None
    return [row for row in answer.splitlines()[1:] if " " in row]


def test_a_sync_answers_the_table_with_version_and_ttl() -> None:
    sync_endpoint, _ = _endpoint()
    answer = sync_endpoint.sync(CLUSTER, "")
    assert answer is not None
    header, *rows = answer.splitlines()
    version, ttl = header.split()
    assert int(version) >= 1_000_000
    assert ttl == "100"
    assert rows == ["lb=ROUND_ROBIN", f"{EAST} 100000"]


@pytest.mark.parametrize("lb", list(LbAlgorithm), ids=[lb.value for lb in LbAlgorithm])
def test_the_table_names_the_services_load_balancer(lb: LbAlgorithm) -> None:
    svc = service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.3", "us-east1")], lb=lb
    )
    table = ServiceTable(
        Policy((svc,)), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    answer = SyncEndpoint(lambda: table, FakeClock(), version_base=1).sync(CLUSTER, "")
    assert answer is not None
    # Right after the header, with no space: a script that does not know it skips it.
    assert answer.splitlines()[1] == f"lb={lb.value}"
    assert _rows(answer) == ["10.0.0.1:443 50000", "10.0.0.3:443 50000"]


def test_an_unknown_service_gets_no_table() -> None:
    sync_endpoint, _ = _endpoint()
    assert sync_endpoint.sync("outbound|80||other.com", "") is None


def test_successes_reported_before_a_failure_reset_the_consecutive_count() -> None:
    sync_endpoint, _ = _endpoint()
    sync_endpoint.sync(CLUSTER, f"e {EAST} 503\n")
    # One error, then a success, then an error: never two in a row, no ejection.
    answer = sync_endpoint.sync(CLUSTER, f"s {EAST} 4\ne {EAST} 503\n")
    assert answer is not None
    assert _rows(answer) == [f"{EAST} 100000"]


def test_the_consecutive_threshold_ejects_and_the_version_goes_up() -> None:
    sync_endpoint, _ = _endpoint()
    first = sync_endpoint.sync(CLUSTER, "")
    assert first is not None
    answer = sync_endpoint.sync(CLUSTER, f"e {EAST} 503\ne {EAST} 503\n")
    assert answer is not None
    assert _rows(answer) == [f"{WEST} 100000"]
    assert int(answer.split()[0]) > int(first.split()[0])


def test_a_restarted_service_publishes_higher_versions() -> None:
    old, _ = _endpoint(version_base=1_000_000)
    for _ in range(50):
        old.sync(CLUSTER, f"e {EAST} 503\ne {EAST} 503\n")
    old_version = int((old.sync(CLUSTER, "") or "0").split()[0])
    # The real base: wall-clock ms x 1000.
    new, _ = _endpoint(version_base=None, clock=MonotonicClock())
    assert int((new.sync(CLUSTER, "") or "0").split()[0]) > old_version


class _Held:
    """A switch for the sync endpoint's ``withheld``: the service's DNS has (not) answered yet."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, _cluster: object) -> bool:
        return self.on


def _held_endpoint() -> tuple[SyncEndpoint, _Held]:
    held = _Held()
    svc = service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
        outlier=outlier(consecutive_5xx_errors=2),
    )
    table = ServiceTable(
        Policy((svc,)), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    sync_endpoint = SyncEndpoint(lambda: table, FakeClock(), version_base=1_000_000, withheld=held)
    return sync_endpoint, held


def test_a_withheld_service_gets_no_table_and_its_reports_still_count() -> None:
    sync_endpoint, held = _held_endpoint()

    assert sync_endpoint.sync(CLUSTER, f"e {EAST} 503\ne {EAST} 503\n") is None
    assert sync_endpoint.withheld(CLUSTER)
    held.on = False
    answer = sync_endpoint.sync(CLUSTER, "")

    assert answer is not None
    assert _rows(answer) == [f"{WEST} 100000"]  # east was ejected meanwhile


def test_the_sync_endpoint_answers_503_while_withheld_404_for_an_unknown_service() -> None:
    sync_endpoint, held = _held_endpoint()
    server = SyncServer(sync_endpoint)

    def status(service_name: str) -> int:
        return server.respond("POST", SYNC_PATH, {SERVICE_HEADER: service_name}, b"")[0]

    # bridge.lua keeps the table it routes on for anything but 200 (fail-static).
    assert status(CLUSTER) == 503
    assert status("outbound|80||other.com") == 404
    held.on = False
    assert status(CLUSTER) == 200


# --- outlier detection types over the sync protocol ----------------------------------------------


def _endpoint_with(config: OutlierDetection) -> SyncEndpoint:
    clock = FakeClock()
    svc = service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
        outlier=config,
    )
    table = ServiceTable(
        Policy((svc,)), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    return SyncEndpoint(lambda: table, clock, ttl_ms=100, version_base=1_000_000)


def test_split_mode_ejects_on_refused_connections_only_after_the_threshold() -> None:
    sync_endpoint = _endpoint_with(
        replace(
            outlier(consecutive_5xx_errors=1, max_ejection_percent=100),
            split_external_local_origin_errors=True,
            consecutive_local_origin_failures=3,
        )
    )
    assert _rows(sync_endpoint.sync(CLUSTER, f"e {EAST} 503 c\ne {EAST} 503 c\n")) == [
        f"{EAST} 100000"
    ]
    assert _rows(sync_endpoint.sync(CLUSTER, f"e {EAST} 503 c\n")) == [f"{WEST} 100000"]


def test_split_mode_counts_an_upstream_503_as_an_answer_not_a_local_failure() -> None:
    sync_endpoint = _endpoint_with(
        replace(
            outlier(consecutive_5xx_errors=0, max_ejection_percent=100),
            split_external_local_origin_errors=True,
            consecutive_local_origin_failures=2,
        )
    )
    # Upstream 503s reset the local-origin count: the connection was made each time.
    body = f"e {EAST} 503 c\ne {EAST} 503\ne {EAST} 503 c\ne {EAST} 503\n"
    assert _rows(sync_endpoint.sync(CLUSTER, body)) == [f"{EAST} 100000"]


def test_gateway_errors_eject_on_503_but_not_on_500() -> None:
    sync_endpoint = _endpoint_with(
        replace(
            outlier(consecutive_5xx_errors=0, max_ejection_percent=100),
            consecutive_gateway_errors=1,
            enforcing_consecutive_gateway_failure=100,
        )
    )
    assert _rows(sync_endpoint.sync(CLUSTER, f"e {EAST} 500\ne {EAST} 500\n")) == [f"{EAST} 100000"]
    assert _rows(sync_endpoint.sync(CLUSTER, f"e {EAST} 503\n")) == [f"{WEST} 100000"]


def test_the_table_lists_the_error_codes_the_script_must_report() -> None:
    config = replace(outlier(consecutive_5xx_errors=1), http_error_codes=frozenset({503, 404}))
    answer = _endpoint_with(config).sync(CLUSTER, "")
    assert answer is not None
    assert answer.splitlines()[2] == "codes=404,503"
    plain = _endpoint_with(outlier(consecutive_5xx_errors=1)).sync(CLUSTER, "")
    assert plain is not None
    assert not any(row.startswith("codes=") for row in plain.splitlines())


def test_a_listed_404_ejects_and_counted_successes_never_do() -> None:
    config = replace(
        outlier(consecutive_5xx_errors=1, max_ejection_percent=100),
        http_error_codes=frozenset({404}),
    )
    sync_endpoint = _endpoint_with(config)
    # "s" lines are answers the script found unlisted, whatever their status.
    assert _rows(sync_endpoint.sync(CLUSTER, f"s {EAST} 5\n")) == [f"{EAST} 100000"]
    assert _rows(sync_endpoint.sync(CLUSTER, f"e {EAST} 404\n")) == [f"{WEST} 100000"]


def test_an_overflow_line_is_counted_for_the_cluster_and_never_recorded_for_a_host() -> None:
    from extproc.server.metrics import Metrics

    svc = service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
        outlier=outlier(consecutive_5xx_errors=2),
    )
    table = ServiceTable(
        Policy((svc,)), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    clock = FakeClock()
    metrics = Metrics(lambda: table, clock)
    sync_endpoint = SyncEndpoint(lambda: table, clock, version_base=1, metrics=metrics)
    # 503, overflows, 503: the two errors are consecutive (the overflows are no success).
    sync_endpoint.sync(CLUSTER, f"e {EAST} 503\no - 3\n")
    answer = sync_endpoint.sync(CLUSTER, f"e {EAST} 503\n")
    assert _rows(answer) == [f"{WEST} 100000"]
    assert metrics.overflows(CLUSTER) == 3
    assert metrics.host_stats(CLUSTER, EAST)["success"] == 0
