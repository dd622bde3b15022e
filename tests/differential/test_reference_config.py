"""The reference proxy's translation: pilot's output for known inputs, and Envoy accepts it.

The differential tests are only as good as the reference, so its translation is pinned here
against what pilot's code derives (istio/istio ``pilot/pkg/networking/core/cluster_builder.go``,
``cluster_traffic_policy.go`` and ``loadbalancer/loadbalancer.go``), independently of extproc.
"""

from __future__ import annotations

from typing import Any

import pytest

from extproc.sandbox import Mode

from . import test_connection_pool, test_failover, test_new_fields
from .reference import Proxy, UnsupportedError, render_reference, validate_reference
from .scenario import Scenario

SCENARIOS: dict[str, Scenario] = {
    name: value
    for module in (test_connection_pool, test_failover, test_new_fields)
    for name, value in vars(module).items()
    if isinstance(value, Scenario)
} | {
    "ALL_FAILING": test_failover._all_failing(""),
    "ALL_FAILING_MIN_HEALTH": test_failover._all_failing("  minHealthPercent: 50\n"),
    "LEAST_REQUEST": test_failover._three_hosts("LEAST_REQUEST"),
    "RANDOM": test_failover._three_hosts("RANDOM"),
    "SPLIT_REFUSE": test_new_fields._split(Mode.REFUSE),
}

BLOG = (
    test_failover.SEED_SE
    + test_failover.destination_rule(
        "loadBalancer:\n  simple: ROUND_ROBIN\n  localityLbSetting:\n    enabled: true\n"
        "    failover:\n    - {from: us-east1, to: us-west}\n"
        "outlierDetection: {consecutive5xxErrors: 1, interval: 15s, baseEjectionTime: 1m}\n"
    )
).replace("{port}", "443")


def _cluster(yaml_text: str, locality: str = "us-east1", **labels: str) -> dict[str, Any]:
    bootstrap = render_reference(
        yaml_text.replace("{port}", "8080"),
        Proxy(locality, labels),
        listen=("127.0.0.1", 10000),
        dns_resolver=("127.0.0.1", 5353),
    )
    cluster: dict[str, Any] = bootstrap["static_resources"]["clusters"][0]
    return cluster


def _priorities(cluster: dict[str, Any]) -> dict[str, int]:
    return {
        ep["endpoint"]["address"]["socket_address"]["address"]: group["priority"]
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    }


def test_blog_fixture_renders_what_pilot_emits() -> None:
    # The blog's fixture (istio.io blog/2021/external-locality-failover): ROUND_ROBIN, 10 s
    # connect timeout (mesh ConnectTimeout), the DR's outlier fields, panic threshold 0,
    # locality-weighted LB (failover is set), us-east1 P0 and us-west P1 on port 443.
    cluster = _cluster(BLOG)
    assert cluster["name"] == "outbound|80||mydb.com"
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    assert cluster["connect_timeout"] == "10s"
    assert cluster["outlier_detection"] == {
        "enforcing_success_rate": 0,
        "always_eject_one_host": True,
        "consecutive_5xx": 1,
        "enforcing_consecutive_5xx": 100,
        "interval": "15s",
        "base_ejection_time": "60s",
    }
    assert cluster["common_lb_config"] == {
        "healthy_panic_threshold": {"value": 0.0},
        "locality_weighted_lb_config": {},
    }
    assert _priorities(cluster) == {
        "dynamodb.us-east-1.amazonaws.com": 0,
        "dynamodb.us-west-1.amazonaws.com": 1,
    }
    ports = {
        ep["endpoint"]["address"]["socket_address"]["port_value"]
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    }
    assert ports == {443}


@pytest.mark.parametrize(
    ("locality", "expected"),
    [
        ("us-east1", {"east": 0, "west": 1}),
        ("us-east1/us-east1-b", {"east": 0, "west": 1}),
        ("us-west", {"east": 1, "west": 0}),
        ("eu-west", {"east": 0, "west": 0}),
        ("", {"east": 0, "west": 0}),
    ],
    ids=["us-east1", "us-east1-zone", "us-west", "eu-west", "no-locality"],
)
def test_priorities_are_relative_to_the_workload(locality: str, expected: dict[str, int]) -> None:
    # Priorities are relative to the workload's locality (pilot's ``LbPriority``, util.go).
    names = {"dynamodb.us-east-1.amazonaws.com": "east", "dynamodb.us-west-1.amazonaws.com": "west"}
    priorities = _priorities(_cluster(BLOG, locality))
    assert {names[a]: p for a, p in priorities.items()} == expected


def test_a_region_outside_the_failover_target_sits_below_it() -> None:
    # applyLocalityFailover (loadbalancer.go): for a us-east1 workload with failover
    # us-east1 -> eu-west, us-west is tier 4.
    priorities = _priorities(_cluster(test_failover.THREE_REGIONS.yaml))
    assert priorities == {
        "dynamodb.us-east-1.amazonaws.com": 0,
        "dynamodb.eu-west-1.amazonaws.com": 1,
        "dynamodb.us-west-1.amazonaws.com": 2,
    }


def test_without_outlier_detection_every_endpoint_is_priority_0() -> None:
    # Failover needs outlierDetection (loadbalancer.go ``ApplyToCluster``); Envoy's default
    # panic threshold stays.
    cluster = _cluster(test_failover.SEED_SE)
    assert set(_priorities(cluster).values()) == {0}
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert "outlier_detection" not in cluster
    assert cluster["common_lb_config"] == {}


def test_locality_lb_disabled_is_one_priority() -> None:
    cluster = _cluster(test_failover.LOCALITY_DISABLED.yaml)
    assert set(_priorities(cluster).values()) == {0}
    assert "locality_weighted_lb_config" not in cluster["common_lb_config"]


def test_distribute_sets_locality_weights_in_one_priority() -> None:
    cluster = _cluster(test_new_fields.DISTRIBUTE.yaml)
    weights = {
        g["locality"]["region"]: (g["priority"], g["load_balancing_weight"])
        for g in cluster["load_assignment"]["endpoints"]
    }
    assert weights == {"us-east1": (0, 80), "us-west": (0, 20)}
    assert cluster["common_lb_config"] == {"locality_weighted_lb_config": {}}


def test_failover_priority_ranks_by_label_before_locality() -> None:
    cluster = _cluster(test_new_fields.FAILOVER_PRIORITY.yaml, track="prod")
    assert cluster["type"] == "STATIC"
    assert _priorities(cluster) == {"127.0.3.2": 0, "127.0.3.1": 1}


def test_connect_timeout_and_outlier_fields_pass_through() -> None:
    cluster = _cluster(test_failover.CONNECT_TIMEOUT.yaml)
    assert cluster["connect_timeout"] == "0.25s"
    split = _cluster(test_new_fields._split(Mode.REFUSE).yaml)["outlier_detection"]
    assert split == {
        "enforcing_success_rate": 0,
        "always_eject_one_host": True,
        "consecutive_5xx": 0,
        "enforcing_consecutive_5xx": 0,
        "interval": "0.2s",
        "base_ejection_time": "30s",
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_local_origin_success_rate": 0,
    }


def test_the_reference_translates_every_connection_pool_field() -> None:
    pool = (
        "connectionPool:\n"
        "  tcp:\n"
        "    maxConnections: 10\n"
        "    connectTimeout: 250ms\n"
        "    tcpKeepalive: {probes: 3, time: 60s, interval: 10s}\n"
        "    maxConnectionDuration: 1h\n"
        "    idleTimeout: 5m\n"
        "  http:\n"
        "    http1MaxPendingRequests: 5\n"
        "    http2MaxRequests: 100\n"
        "    maxRequestsPerConnection: 10\n"
        "    maxRetries: 3\n"
        "    h2UpgradePolicy: UPGRADE\n"
        "    maxConcurrentStreams: 50\n"
        "    http2KeepAlive: {interval: 10s, timeout: 3s}\n"
    )
    cluster = _cluster(test_failover.SEED_SE + test_failover.destination_rule(pool))
    assert cluster["connect_timeout"] == "0.25s"
    assert cluster["circuit_breakers"] == {
        "thresholds": [
            {
                "max_connections": 10,
                "max_pending_requests": 5,
                "max_requests": 100,
                "max_retries": 3,
                "track_remaining": True,
            }
        ]
    }
    assert cluster["upstream_connection_options"] == {
        "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 60, "keepalive_interval": 10}
    }
    [options] = cluster["typed_extension_protocol_options"].values()
    assert options["common_http_protocol_options"] == {
        "idle_timeout": "300s",  # tcp.idleTimeout, as http sets none
        "max_requests_per_connection": 10,
        "max_connection_duration": "3600s",
    }
    assert options["explicit_http_config"] == {
        "http2_protocol_options": {
            "max_concurrent_streams": 50,
            "connection_keepalive": {"interval": "10s", "timeout": "3s"},
        }
    }
    bootstrap = render_reference(
        (test_failover.SEED_SE + test_failover.destination_rule(pool)).replace("{port}", "80"),
        Proxy("us-east1"),
        listen=("127.0.0.1", 10000),
        dns_resolver=("127.0.0.1", 5353),
    )
    validate_reference(bootstrap)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("tls: {mode: SIMPLE}\n", "tls"),
        ("loadBalancer: {consistentHash: {httpHeaderName: x}}\n", "consistentHash"),
        ("outlierDetection: {outlierDetectionHttpErrorCodes: [500]}\n", "outlierDetection"),
    ],
    ids=["tls", "consistent-hash", "error-codes"],
)
def test_what_the_reference_does_not_translate_is_an_error(policy: str, field: str) -> None:
    with pytest.raises(UnsupportedError, match=field):
        _cluster(test_failover.SEED_SE + test_failover.destination_rule(policy))


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_envoy_accepts_every_reference_config(name: str) -> None:
    scenario = SCENARIOS[name]
    bootstrap = render_reference(
        scenario.yaml_for(8080),
        scenario.proxy,
        listen=("127.0.0.1", 10000),
        dns_resolver=("127.0.0.1", 5353),
    )
    validate_reference(bootstrap)
