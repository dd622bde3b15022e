"""``/metrics`` on a running service, fed through both data paths' real entry points.

A real ``ServiceApp`` (gRPC, admin and sync servers on ephemeral loopback ports) with a
fake clock: ext_proc streams over gRPC, fast-path syncs over HTTP, then a scrape parsed
with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

import extproc
from extproc.core.policy import Locality, Policy, Workload
from extproc.server.app import ServiceApp
from extproc.server.metrics import Metrics
from extproc.settings import HostPort, Settings
from extproc.testing import (
    FakeClock,
    endpoint,
    outlier,
    request_headers,
    response_headers,
    routed_host,
    service,
)
from extproc.wire import SERVICE_HEADER, SYNC_PATH

CLUSTER = "outbound|80||mydb.com"
EAST = "127.0.0.11:80"
WEST = "127.0.0.12:80"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _policy(**outlier_args: Any) -> Policy:
    return Policy(
        (
            service(
                endpoints=[
                    endpoint("127.0.0.11", "us-east1", port=80),
                    endpoint("127.0.0.12", "us-west", port=80),
                ],
                outlier=outlier(consecutive_5xx_errors=1, **outlier_args),
            ),
        )
    )


StartApp = Callable[[Policy], Awaitable[ServiceApp]]


@pytest.fixture
async def start_app() -> AsyncIterator[StartApp]:
    apps: list[ServiceApp] = []

    async def start(policy: Policy) -> ServiceApp:
        app = ServiceApp(
            policy,
            Settings(
                grpc=HostPort("127.0.0.1", 0),
                admin=HostPort("127.0.0.1", 0),
                sync_port=0,
                shutdown_grace_s=0,
                workload=Workload(Locality.parse("us-east1")),
            ),
            clock=FakeClock(100.0),
            rng=random.Random(3),
        )
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


async def _exchange(
    app: ServiceApp, *messages: pb.ProcessingRequest
) -> list[pb.ProcessingResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        answers = []
        for message in messages:
            await call.write(message)
            answers.append(await call.read())
        await call.done_writing()
        return answers


def _http(address: tuple[str, int], path: str, body: bytes | None = None) -> tuple[str, str]:
    request = urllib.request.Request(
        f"http://{address[0]}:{address[1]}{path}",
        data=body,
        headers={SERVICE_HEADER: CLUSTER} if body is not None else {},
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.headers["content-type"], reply.read().decode()


async def _scrape(app: ServiceApp) -> Samples:
    _, text = await asyncio.to_thread(_http, app.admin_address, "/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _until(app: ServiceApp, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds: the sweep loop counts events within 0.1 s."""
    for _ in range(50):
        samples = await _scrape(app)
        if check(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"metrics never matched: {samples}")


def _enforced(samples: Samples) -> float:
    return _value(
        samples,
        "extproc_outlier_detection_ejections_enforced_total",
        cluster_name=CLUSTER,
        type="consecutive_5xx",
    )


async def test_an_ext_proc_ejection_shows_in_the_outlier_endpoint_and_request_metrics(
    start_app: StartApp,
) -> None:
    app = await start_app(_policy())
    first = await _exchange(app, request_headers("mydb.com"), response_headers(503))
    assert routed_host(first[0]) == EAST
    second = await _exchange(app, request_headers("mydb.com"), response_headers(200))
    assert routed_host(second[0]) == WEST

    samples = await _until(app, lambda s: _enforced(s) == 1)
    assert _value(samples, "extproc_outlier_detection_ejections_active", cluster_name=CLUSTER) == 1
    assert (
        _value(
            samples,
            "extproc_outlier_detection_ejections_detected_total",
            cluster_name=CLUSTER,
            type="consecutive_5xx",
        )
        == 1
    )
    assert (
        _value(samples, "extproc_outlier_detection_ejections_overflow_total", cluster_name=CLUSTER)
        == 0
    )
    for other in ("consecutive_gateway_failure", "consecutive_local_origin_failure"):
        assert (
            _value(
                samples,
                "extproc_outlier_detection_ejections_enforced_total",
                cluster_name=CLUSTER,
                type=other,
            )
            == 0
        )
    healthy = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "extproc_endpoint_healthy"
    }
    assert healthy == {
        frozenset(
            {
                ("cluster_name", CLUSTER),
                ("upstream_url", EAST),
                ("locality", "us-east1"),
                ("priority", "0"),
            }
        ): 0.0,
        frozenset(
            {
                ("cluster_name", CLUSTER),
                ("upstream_url", WEST),
                ("locality", "us-west"),
                ("priority", "1"),
            }
        ): 1.0,
    }
    requests = {
        (dict(labels)["upstream_url"], dict(labels)["priority"], dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name == "extproc_upstream_rq_total"
    }
    assert requests == {(EAST, "0", "5xx"): 1.0, (WEST, "1", "success"): 1.0}
    assert _value(samples, "extproc_decision_duration_seconds_count", data_path="ext_proc") == 2
    assert _value(samples, "extproc_decision_duration_seconds_count", data_path="lua") == 0
    assert _value(samples, "extproc_build_info", version=extproc.__version__) == 1


async def test_a_retried_connect_failure_counts_each_attempt_by_outcome(
    start_app: StartApp,
) -> None:
    app = await start_app(_policy(max_ejection_percent=100))
    await _exchange(
        app,
        request_headers("mydb.com"),
        # Two refused connections, then an upstream timeout, on the pinned host.
        response_headers(504, code_details="upstream_response_timeout", flags=0x4, attempts=3),
    )
    samples = await _scrape(app)
    outcomes = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "extproc_upstream_rq_total" and dict(labels)["upstream_url"] == EAST
    }
    assert outcomes == {"connect_failure": 2.0, "timeout": 1.0}


async def test_fast_path_syncs_count_batched_successes_and_failures_by_outcome(
    start_app: StartApp,
) -> None:
    app = await start_app(_policy())
    brain = ("127.0.0.1", app.sync_port)
    body = f"s {WEST} 7\ne {EAST} 503 c\ne {WEST} 504 t\ns {EAST} 2\ne {WEST} 502\n".encode()
    content_type, table = await asyncio.to_thread(_http, brain, SYNC_PATH, body)
    assert content_type == "text/plain"
    # EAST ejected by its failure; the host lines are the ones with a space.
    assert [row for row in table.splitlines()[1:] if " " in row] == [f"{WEST} 100000"]

    samples = await _until(app, lambda s: _enforced(s) == 1)
    requests = {
        (dict(labels)["upstream_url"], dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name == "extproc_upstream_rq_total"
    }
    assert requests == {
        (WEST, "success"): 7.0,
        (EAST, "connect_failure"): 1.0,
        (WEST, "timeout"): 1.0,
        (EAST, "success"): 2.0,
        (WEST, "5xx"): 1.0,
    }
    assert _value(samples, "extproc_decision_duration_seconds_count", data_path="lua") == 1


async def test_a_refused_ejection_counts_as_detected_and_overflow_not_enforced(
    start_app: StartApp,
) -> None:
    policy = _policy(max_ejection_percent=0, always_eject_one_host=False)
    app = await start_app(policy)
    await _exchange(app, request_headers("mydb.com"), response_headers(503))

    def overflowed(samples: Samples) -> bool:
        return (
            _value(
                samples,
                "extproc_outlier_detection_ejections_overflow_total",
                cluster_name=CLUSTER,
            )
            == 1
        )

    samples = await _until(app, overflowed)
    assert _enforced(samples) == 0
    assert (
        _value(
            samples,
            "extproc_outlier_detection_ejections_detected_total",
            cluster_name=CLUSTER,
            type="consecutive_5xx",
        )
        == 1
    )
    assert _value(samples, "extproc_outlier_detection_ejections_active", cluster_name=CLUSTER) == 0


async def test_config_reloads_are_counted_by_result_and_start_at_zero(
    start_app: StartApp,
) -> None:
    app = await start_app(_policy())
    samples = await _scrape(app)
    assert _value(samples, "extproc_config_reloads_total", result="ok") == 0
    assert _value(samples, "extproc_config_reloads_total", result="rejected") == 0
    app.metrics.count_config_reload(ok=True)
    app.metrics.count_config_reload(ok=False)
    app.metrics.count_config_reload(ok=False)
    samples = await _scrape(app)
    assert _value(samples, "extproc_config_reloads_total", result="ok") == 1
    assert _value(samples, "extproc_config_reloads_total", result="rejected") == 2


async def test_metrics_is_prometheus_text_format(start_app: StartApp) -> None:
    app = await start_app(_policy())
    content_type, text = await asyncio.to_thread(_http, app.admin_address, "/metrics")
    assert content_type.startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "extproc_outlier_detection_ejections_active",
        "extproc_outlier_detection_ejections_enforced",
        "extproc_outlier_detection_ejections_detected",
        "extproc_outlier_detection_ejections_overflow",
        "extproc_endpoint_healthy",
        "extproc_upstream_rq",
        "extproc_decision_duration_seconds",
        "extproc_config_reloads",
        "extproc_build_info",
    } <= names
    assert all(name.startswith("extproc_") for name in names)


def test_series_of_hosts_that_left_the_cluster_are_dropped_at_the_next_scrape() -> None:
    from extproc.core.table import ServiceTable

    table = ServiceTable(
        _policy(), Workload(Locality.parse("us-east1")), now=0.0, rng=random.Random(1)
    )
    metrics = Metrics(lambda: table, lambda: 0.0)
    metrics.count_attempt(CLUSTER, EAST, "success", 3)
    metrics.count_attempt(CLUSTER, "127.0.0.99:80", "success", 5)  # not a host (any more)
    text = metrics.exposition().decode()
    assert f'upstream_url="{EAST}"' in text
    assert "127.0.0.99" not in text
    assert metrics.host_stats(CLUSTER, "127.0.0.99:80")["success"] == 0
    assert metrics.host_stats(CLUSTER, EAST)["success"] == 3
