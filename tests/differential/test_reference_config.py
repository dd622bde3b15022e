"""The reference proxy's translation: pilot's output for known inputs, and Envoy accepts it.

The differential tests are only as good as the reference, so its translation is pinned here
against what pilot's code derives (istio/istio ``pilot/pkg/networking/core/cluster_builder.go``,
``cluster_traffic_policy.go``, ``loadbalancer/loadbalancer.go``, ``route/route.go`` and
``route/retry/retry.go``), independently of extproc.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from extproc.sandbox import Mode

from . import (
    test_connection_pool,
    test_failover,
    test_new_fields,
    test_other_host,
    test_subsets,
    test_virtual_service,
)
from .reference import Proxy, UnsupportedError, render_reference, validate_reference
from .scenario import Scenario

SCENARIOS: dict[str, Scenario] = {
    name: value
    for module in (
        test_connection_pool,
        test_failover,
        test_new_fields,
        test_other_host,
        test_subsets,
        test_virtual_service,
    )
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
        ("loadBalancer: {zoneAwareLbSetting: {enabled: true}}\n", "zoneAwareLbSetting"),
        ("outlierDetection: {outlierDetectionHttpErrorCodes: [500]}\n", "outlierDetection"),
    ],
    ids=["tls", "zone-aware", "error-codes"],
)
def test_what_the_reference_does_not_translate_is_an_error(policy: str, field: str) -> None:
    with pytest.raises(UnsupportedError, match=field):
        _cluster(test_failover.SEED_SE + test_failover.destination_rule(policy))


def virtual_service(http: str, *, extra: str = "") -> str:
    """A VirtualService for mydb.com with the given ``http`` list (and other spec fields)."""
    return (
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata:\n  name: mydb\n"
        "spec:\n"
        "  hosts: [mydb.com]\n" + extra + "  http:\n" + textwrap.indent(textwrap.dedent(http), "  ")
    )


def _bootstrap(yaml_text: str) -> dict[str, Any]:
    return render_reference(
        yaml_text.replace("{port}", "8080"),
        Proxy("us-east1"),
        listen=("127.0.0.1", 10000),
        dns_resolver=("127.0.0.1", 5353),
    )


def _routes(yaml_text: str) -> list[dict[str, Any]]:
    listener = _bootstrap(yaml_text)["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [virtual_host] = hcm["route_config"]["virtual_hosts"]
    assert virtual_host["domains"] == ["mydb.com", "mydb.com:80"]
    routes: list[dict[str, Any]] = virtual_host["routes"]
    return routes


CLUSTER = "outbound|80||mydb.com"
PREVIOUS_HOSTS = [
    {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
            "PreviousHostsPredicate"
        },
    }
]
#: retry.go DefaultPolicy: what a route gets without ``retries``.
DEFAULT_RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": PREVIOUS_HOSTS,
    "host_selection_retry_max_attempts": 5,
}

TIMEOUT_RETRIES_MATCHES = test_failover.SEED_SE + virtual_service(
    """\
    - name: primary
      match:
      - name: canary
        headers:
          x-canary: {exact: "yes"}
      - name: api
        uri: {prefix: /api}
        port: 80
      timeout: 2s
      retries:
        attempts: 3
        retryOn: 5xx,503
        perTryTimeout: 500ms
        retryRemoteLocalities: true
      route:
      - destination: {host: mydb.com, port: {number: 80}}
    - name: rest
      route:
      - destination: {host: mydb.com}
    - name: unreachable
      route:
      - destination: {host: mydb.com}
    """
)


def test_without_a_virtual_service_the_route_is_istios_default() -> None:
    # BuildDefaultHTTPOutboundRoute: setTimeout(nil) sets timeout and max_grpc_timeout to 0s.
    assert _routes(test_failover.SEED_SE) == [
        {
            "name": "default",
            "match": {"prefix": "/"},
            "route": {
                "cluster": CLUSTER,
                "timeout": "0s",
                "max_grpc_timeout": "0s",
                "retry_policy": DEFAULT_RETRY_POLICY,
            },
        }
    ]


def test_a_virtual_service_replaces_the_default_route_as_pilot_translates_it() -> None:
    # BuildHTTPRoutesForVirtualService: one route per match, the match-less "rest" is the
    # catch-all and nothing after it is built. ConvertPolicy: 503 is a status code
    # (parseRetryOn), so retriable-status-codes joins 5xx; retryRemoteLocalities is Envoy's
    # previous_priorities with update_frequency 2.
    action = {
        "cluster": CLUSTER,
        "timeout": "2s",
        "max_grpc_timeout": "2s",
        "retry_policy": {
            "retry_on": "5xx,retriable-status-codes",
            "num_retries": 3,
            "retry_host_predicate": PREVIOUS_HOSTS,
            "host_selection_retry_max_attempts": 5,
            "retriable_status_codes": [503],
            "per_try_timeout": "0.5s",
            "retry_priority": {
                "name": "envoy.retry_priorities.previous_priorities",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.priority."
                    "previous_priorities.v3.PreviousPrioritiesConfig",
                    "update_frequency": 2,
                },
            },
        },
    }
    assert _routes(TIMEOUT_RETRIES_MATCHES) == [
        {
            "name": "primary.canary",
            "match": {
                "prefix": "/",
                "case_sensitive": True,
                "headers": [{"name": "x-canary", "string_match": {"exact": "yes"}}],
            },
            "route": action,
        },
        {
            "name": "primary.api",
            "match": {"prefix": "/api", "case_sensitive": True},
            "route": action,
        },
        {
            "name": "rest",
            "match": {"prefix": "/"},
            "route": {
                "cluster": CLUSTER,
                "timeout": "0s",
                "max_grpc_timeout": "0s",
                "retry_policy": DEFAULT_RETRY_POLICY,
            },
        },
    ]


def test_a_catch_all_match_ends_the_routes() -> None:
    # IsCatchAllRoute: prefix "/" with no header or query condition stops the build, even
    # inside one http entry's match list.
    routes = _routes(
        test_failover.SEED_SE
        + virtual_service(
            """\
            - match:
              - uri: {exact: /health}
              - uri: {prefix: /}
              - headers: {x-never: {exact: "1"}}
              route:
              - destination: {host: mydb.com}
            - route:
              - destination: {host: mydb.com}
            """
        )
    )
    assert [r["match"] for r in routes] == [
        {"path": "/health", "case_sensitive": True},
        {"prefix": "/", "case_sensitive": True},
    ]
    assert all("name" not in r for r in routes)


def test_match_fields_translate_as_translate_route_match_does() -> None:
    # Headers and withoutHeaders sorted by name, regex "*" is a present match (and then no
    # treat_missing_header_as_empty), :method, :authority and :scheme after them;
    # ignoreUriCase clears case_sensitive.
    [route] = _routes(
        test_failover.SEED_SE
        + virtual_service(
            """\
            - match:
              - uri: {regex: "/v[0-9]+/.*"}
                ignoreUriCase: true
                headers:
                  x-zone: {prefix: us-}
                  x-any: {regex: "*"}
                withoutHeaders:
                  x-debug: {regex: "on|true"}
                  x-block: {}
                method: {exact: GET}
                authority: {prefix: mydb}
                scheme: {exact: http}
                queryParams:
                  version: {exact: "2"}
                  trace: {regex: "*"}
              route:
              - destination: {host: mydb.com}
            """
        )
    )
    assert route["match"] == {
        "safe_regex": {"regex": "/v[0-9]+/.*"},
        "case_sensitive": False,
        "headers": [
            {"name": "x-any", "present_match": True},
            {"name": "x-block", "present_match": True, "invert_match": True},
            {
                "name": "x-debug",
                "string_match": {"safe_regex": {"regex": "on|true"}},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            },
            {"name": "x-zone", "string_match": {"prefix": "us-"}},
            {"name": ":method", "string_match": {"exact": "GET"}},
            {"name": ":authority", "string_match": {"prefix": "mydb"}},
            {"name": ":scheme", "string_match": {"exact": "http"}},
        ],
        "query_parameters": [
            {"name": "trace", "present_match": True},
            {"name": "version", "string_match": {"exact": "2"}},
        ],
    }


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        ("{attempts: 0}", None),
        ("{attempts: 0, perTryTimeout: 1s}", None),
        (
            "{attempts: 1, retryOn: '503'}",
            DEFAULT_RETRY_POLICY
            | {
                "num_retries": 1,
                "retry_on": ",retriable-status-codes",
                "retriable_status_codes": [503],
            },
        ),
        (
            "{attempts: 2, retryOn: 'gateway-error, retriable-status-codes,502,600'}",
            DEFAULT_RETRY_POLICY
            | {
                "retry_on": "gateway-error,retriable-status-codes,600",
                "retriable_status_codes": [502],
            },
        ),
        (
            "{attempts: 4, retryIgnorePreviousHosts: false, backoff: 25ms}",
            {
                "retry_on": DEFAULT_RETRY_POLICY["retry_on"],
                "num_retries": 4,
                "host_selection_retry_max_attempts": 5,
                "retry_back_off": {"base_interval": "0.025s"},
            },
        ),
        ("{attempts: 2, retryIgnorePreviousHosts: true}", DEFAULT_RETRY_POLICY),
    ],
    ids=["attempts-0", "attempts-0-per-try", "codes-only", "mixed", "no-host-predicate", "ignore"],
)
def test_retries_convert_as_convert_policy_does(
    retries: str, expected: dict[str, Any] | None
) -> None:
    # ConvertPolicy: attempts <= 0 is no retry policy at all (Envoy then never retries);
    # parseRetryOn keeps what is not a Go-known status code (600) in retry_on.
    [route] = _routes(
        test_failover.SEED_SE
        + virtual_service(f"- retries: {retries}\n  route:\n  - destination: {{host: mydb.com}}\n")
    )
    assert route["route"].get("retry_policy") == expected


def test_a_match_on_another_port_drops_its_route() -> None:
    # TranslateRoute: match.port 8080 is not the service port 80, so that route is not built;
    # the next match of the same entry is.
    routes = _routes(
        test_failover.SEED_SE
        + virtual_service(
            """\
            - name: r
              match:
              - {name: other-port, port: 8080, uri: {prefix: /a}}
              - {name: this-port, port: 80, uri: {prefix: /b}}
              route:
              - destination: {host: mydb.com}
            """
        )
    )
    assert [r["name"] for r in routes] == ["r.this-port"]


def test_a_virtual_service_with_no_route_on_the_port_leaves_the_default_route() -> None:
    # buildSidecarVirtualHostsForVirtualService: no routes on this port -> no virtual host from
    # the VirtualService, so the service keeps BuildDefaultHTTPOutboundRoute's route.
    only_other_port = virtual_service(
        "- match: [{port: 8080}]\n  route:\n  - destination: {host: mydb.com}\n"
    )
    assert _routes(test_failover.SEED_SE + only_other_port) == _routes(test_failover.SEED_SE)


def test_a_virtual_service_bound_to_gateways_only_does_not_reach_the_sidecar() -> None:
    gateway_only = virtual_service(
        "- timeout: 1s\n  route:\n  - destination: {host: mydb.com}\n",
        extra="  gateways: [istio-system/egress]\n",
    )
    mesh_too = gateway_only.replace("[istio-system/egress]", "[istio-system/egress, mesh]")
    assert _routes(test_failover.SEED_SE + gateway_only) == _routes(test_failover.SEED_SE)
    assert _routes(test_failover.SEED_SE + mesh_too)[0]["route"]["timeout"] == "1s"


_DEST = "  route:\n  - destination: {host: mydb.com}\n"


@pytest.mark.parametrize(
    ("http", "field"),
    [
        ("- mirror: {host: mydb.com}\n" + _DEST, "mirror"),
        ("- corsPolicy: {allowOrigins: [{exact: x}]}\n" + _DEST, "corsPolicy"),
        ("- delegate: {name: other}\n", "delegate"),
        ("- route:\n  - destination: {host: '*.com'}\n", "destination.host"),
        ("- route:\n  - destination: {host: ''}\n", "destination.host"),
        ("- route:\n  - destination: {host: mydb.com, port: {number: 0}}\n", "port.number"),
        ("- route:\n  - destination: {host: mydb.com, port: {name: http}}\n", "port.name"),
        ("- match: [{sourceLabels: {app: a}}]\n" + _DEST, "sourceLabels"),
        ("- match: [{gateways: [mesh]}]\n" + _DEST, "gateways"),
        ("- match: [{headers: {'@request.auth.claims.sub': {exact: a}}}]\n" + _DEST, "JWT"),
        ("- match: [{uri: {exact: /a, prefix: /b}}]\n" + _DEST, "uri"),
        ("- retries: {attempts: 2, retryOn: 5xx, timeout: 1s}\n" + _DEST, "retries.timeout"),
        ("- match: [{port: 8080, sourceLabels: {app: a}}]\n" + _DEST, "sourceLabels"),
        ("- route: [{destination: {host: mydb.com}}]\n- mirror: {}\n" + _DEST, "http.1..mirror"),
        ("- redirect: {uri: /v2, redirectCode: 304}\n", "redirectCode"),
        ("- fault: {abort: {grpcStatus: NOPE}}\n" + _DEST, "grpcStatus"),
        ("- fault: {abort: {httpStatus: 503, grpcStatus: OK}}\n" + _DEST, "only one of"),
        ("- fault: {delay: {fixedDelay: 1s, percentage: {value: 101}}}\n" + _DEST, "0..100"),
        ("- fault: {delay: {percent: -1, fixedDelay: 1s}}\n" + _DEST, "percent"),
        ("- directResponse: {status: 200, body: {bytes: '*'}}\n", "base64"),
        ("- headers: {request: {set: {host: a, ':authority': b}}}\n" + _DEST, "authority"),
        ("- headers: {request: {set: {x-n: 1}}}\n" + _DEST, "x-n"),
        (
            "- redirect: {uri: /a}\n  route:\n  - destination: {host: '*', subset: a}\n",
            "destination.host",
        ),
        (
            "- route:\n  - destination: {host: mydb.com, subset: v1}\n    weight: -1\n",
            "weight -1",
        ),
        (
            "- route:\n  - destination: {host: mydb.com, subset: v1}\n    weight: 0\n"
            "  - destination: {host: mydb.com, subset: v2}\n",
            "total destination weight = 0",
        ),
        ("- route:\n  - destination: {host: mydb.com, subset: v_1}\n", "subset name"),
        ("- route:\n  - destination: {host: mydb.com}\n    weight: 1.5\n", "weight"),
        ("- route: []\n", "at least one destination"),
    ],
    ids=[
        "mirror",
        "cors",
        "delegate",
        "wildcard-host",
        "empty-host",
        "port-zero",
        "port-name",
        "source-labels",
        "match-gateways",
        "jwt-claim",
        "two-match-types",
        "unknown-retry-field",
        "dropped-match",
        "after-catch-all",
        "redirect-code",
        "grpc-status",
        "two-abort-types",
        "percentage-range",
        "negative-percent",
        "body-not-base64",
        "two-authorities",
        "header-not-string",
        "route-beside-redirect",
        "negative-weight",
        "zero-total-weight",
        "subset-name",
        "weight-not-integer",
        "no-destination",
    ],
)
def test_what_the_reference_does_not_translate_in_a_virtual_service_is_an_error(
    http: str, field: str
) -> None:
    # Also in a match pilot drops for its port and in an entry after the catch-all: the
    # reference refuses what it cannot translate wherever it is.
    with pytest.raises(UnsupportedError, match=field):
        _routes(test_failover.SEED_SE + virtual_service(http))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("  tcp: []\n", "tcp"),
        ("  tls: []\n", "tls"),
        ("  exportTo: ['.']\n", "exportTo"),
    ],
    ids=["tcp", "tls", "export-to"],
)
def test_what_the_reference_does_not_translate_beside_http_is_an_error(
    spec: str, field: str
) -> None:
    with pytest.raises(UnsupportedError, match=field):
        _routes(
            test_failover.SEED_SE + virtual_service(_DEST.replace("  route", "- route"), extra=spec)
        )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (virtual_service("- " + _DEST.lstrip()).replace("[mydb.com]", "[other.com]"), "other.com"),
        (virtual_service("- " + _DEST.lstrip()).replace("[mydb.com]", "['*.com']"), r"\*\.com"),
        (
            virtual_service("- " + _DEST.lstrip()) + "\n" + virtual_service("- " + _DEST.lstrip()),
            "two VirtualServices",
        ),
        (
            virtual_service("- " + _DEST.lstrip()).replace(
                "networking.istio.io/v1\n", "networking.istio.io/v2\n"
            ),
            "apiVersion",
        ),
    ],
    ids=["unknown-host", "wildcard-host", "two-for-one-host", "api-version"],
)
def test_a_virtual_service_for_hosts_the_reference_does_not_translate_is_an_error(
    yaml_text: str, message: str
) -> None:
    with pytest.raises(UnsupportedError, match=message):
        _routes(test_failover.SEED_SE + yaml_text)


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_virtual_service_api_version_is_read(version: str) -> None:
    vs = virtual_service("- timeout: 3s\n" + _DEST).replace(
        "networking.istio.io/v1\n", f"networking.istio.io/{version}\n"
    )
    assert _routes(test_failover.SEED_SE + vs)[0]["route"]["timeout"] == "3s"


def test_envoy_accepts_the_translated_virtual_service() -> None:
    # Envoy --mode validate: every field the routes carry exists and takes the value given.
    for yaml_text in (
        TIMEOUT_RETRIES_MATCHES,
        test_failover.SEED_SE
        + virtual_service(
            """\
            - match:
              - uri: {regex: "/v[0-9]+/.*"}
                ignoreUriCase: true
                headers: {x-any: {regex: "*"}}
                withoutHeaders: {x-debug: {exact: "1"}}
                method: {exact: GET}
                queryParams: {trace: {regex: "*"}, v: {prefix: "2"}}
              retries: {attempts: 4, retryIgnorePreviousHosts: false, backoff: 25ms}
              route:
              - destination: {host: mydb.com}
            - retries: {attempts: 0}
              route:
              - destination: {host: mydb.com}
            """
        ),
    ):
        validate_reference(_bootstrap(yaml_text))


def _hcm(yaml_text: str) -> dict[str, Any]:
    listener = _bootstrap(yaml_text)["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _set(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _add(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}


#: The action of a route to mydb.com with no timeout, rewrite or retries.
PLAIN_ACTION = {
    "cluster": CLUSTER,
    "timeout": "0s",
    "max_grpc_timeout": "0s",
    "retry_policy": DEFAULT_RETRY_POLICY,
}

HEADERS = """\
- name: h
  headers:
    request:
      set: {x-b: "2", x-a: "1", ":authority": api.example, ":path": /nope}
      add: {x-z: z, Host: other.example, x-c: c}
      remove: [x-drop, ":path", host]
    response:
      set: {x-r: r, host: h}
      add: {x-s: s}
      remove: [x-server]
  route:
  - destination: {host: mydb.com}
    headers:
      request: {set: {x-dest: d, host: dest.example}}
      response: {remove: [x-dest-resp]}
"""


def test_headers_translate_as_translate_headers_operations_does() -> None:
    # translateAppendHeaders: set is OVERWRITE_IF_EXISTS_OR_ADD, add APPEND_IF_EXISTS_OR_ADD,
    # each map sorted by name, set before add; :-prefixed and host headers are dropped, and
    # the set :authority (it beats add's Host) is the host rewrite. processDestination appends
    # the destination's operations after the route's; its host is no rewrite, as the route
    # already has one.
    assert _routes(test_failover.SEED_SE + virtual_service(HEADERS)) == [
        {
            "name": "h",
            "match": {"prefix": "/"},
            "request_headers_to_add": [
                _set("x-a", "1"),
                _set("x-b", "2"),
                _add("x-c", "c"),
                _add("x-z", "z"),
                _set("x-dest", "d"),
            ],
            "request_headers_to_remove": ["x-drop"],
            "response_headers_to_add": [_set("x-r", "r"), _add("x-s", "s")],
            "response_headers_to_remove": ["x-server", "x-dest-resp"],
            "route": PLAIN_ACTION | {"host_rewrite_literal": "api.example"},
        }
    ]


@pytest.mark.parametrize(
    ("route_headers", "destination_headers", "expected"),
    [
        ("{request: {add: {host: a.example}}}", "{}", "a.example"),
        ("{response: {set: {host: a.example}}}", "{}", None),
        ("{request: {remove: [x-a]}}", "{request: {add: {':authority': d.example}}}", "d.example"),
        ("{request: {set: {host: a.example}}}", "{request: {set: {host: d.example}}}", "a.example"),
    ],
    ids=["add-authority", "response-authority", "destination-only", "route-wins"],
)
def test_the_authority_header_is_a_host_rewrite_as_pilot_picks_it(
    route_headers: str, destination_headers: str, expected: str | None
) -> None:
    [route] = _routes(
        test_failover.SEED_SE
        + virtual_service(
            f"- headers: {route_headers}\n  route:\n"
            f"  - destination: {{host: mydb.com}}\n    headers: {destination_headers}\n"
        )
    )
    assert route["route"].get("host_rewrite_literal") == expected
    assert "request_headers_to_add" not in route


@pytest.mark.parametrize(
    ("rewrite", "expected"),
    [
        ("{uri: /v2}", {"prefix_rewrite": "/v2"}),
        (
            "{uriRegexRewrite: {match: '^/v1/(.*)$', rewrite: '/v2/\\1'}, authority: b.example}",
            {
                "regex_rewrite": {
                    "pattern": {"regex": "^/v1/(.*)$"},
                    "substitution": "/v2/\\1",
                },
                "host_rewrite_literal": "b.example",
            },
        ),
        ("{authority: b.example, uri: ''}", {"host_rewrite_literal": "b.example"}),
    ],
    ids=["uri", "regex-and-authority", "authority"],
)
def test_rewrite_translates_as_apply_http_route_destination_does(
    rewrite: str, expected: dict[str, Any]
) -> None:
    # applyHTTPRouteDestination: uriRegexRewrite is regex_rewrite, uri prefix_rewrite, and
    # rewrite.authority the host rewrite, over an authority the headers set.
    [route] = _routes(
        test_failover.SEED_SE
        + virtual_service(
            f"- rewrite: {rewrite}\n  headers: {{request: {{set: {{host: h.example}}}}}}\n" + _DEST
        )
    )
    assert route == {
        "match": {"prefix": "/"},
        "route": PLAIN_ACTION | {"host_rewrite_literal": "h.example"} | expected,
    }


@pytest.mark.parametrize(
    ("redirect", "expected"),
    [
        (
            "{uri: /v2, authority: new.example, redirectCode: 302}",
            {"host_redirect": "new.example", "path_redirect": "/v2", "response_code": "FOUND"},
        ),
        (
            "{prefixRewrite: /new, uri: /ignored, scheme: https, port: 8443, redirectCode: 308}",
            {
                "prefix_rewrite": "/new",
                "scheme_redirect": "https",
                "port_redirect": 8443,
                "response_code": "PERMANENT_REDIRECT",
            },
        ),
        (
            "{authority: new.example, derivePort: FROM_REQUEST_PORT}",
            {
                "host_redirect": "new.example",
                "path_redirect": "",
                "response_code": "MOVED_PERMANENTLY",
            },
        ),
        (
            "{scheme: https, derivePort: FROM_REQUEST_PORT, redirectCode: 307}",
            {
                "path_redirect": "",
                "scheme_redirect": "https",
                "port_redirect": 80,
                "response_code": "TEMPORARY_REDIRECT",
            },
        ),
        (
            "{scheme: https, port: 443, redirectCode: 303}",
            {"path_redirect": "", "scheme_redirect": "https", "response_code": "SEE_OTHER"},
        ),
        (
            "{uri: /x, derivePort: FROM_PROTOCOL_DEFAULT, redirectCode: 301}",
            {"path_redirect": "/x", "response_code": "MOVED_PERMANENTLY"},
        ),
    ],
    ids=["uri-authority", "prefix-scheme-port", "derive-80", "derive-https", "443", "default"],
)
def test_redirect_translates_as_apply_redirect_does(
    redirect: str, expected: dict[str, Any]
) -> None:
    # ApplyRedirect: prefixRewrite beats uri; FROM_REQUEST_PORT is the service port (80),
    # and a port that is its scheme's default (80 for http, the sidecar's scheme; 443 for
    # https) is dropped. A redirect route has no route action: no timeout, no retries.
    [route] = _routes(
        test_failover.SEED_SE
        + virtual_service(
            f"- redirect: {redirect}\n  timeout: 1s\n  headers: {{response: {{remove: [x-a]}}}}\n"
        )
    )
    assert route == {
        "match": {"prefix": "/"},
        "response_headers_to_remove": ["x-a"],
        "redirect": expected,
    }


@pytest.mark.parametrize(
    ("direct", "expected"),
    [
        ("{status: 503}", {"status": 503}),
        (
            "{status: 200, body: {string: 'down for maintenance'}}",
            {"status": 200, "body": {"inline_string": "down for maintenance"}},
        ),
        (
            "{status: 418, body: {bytes: aGVsbG8}}",
            {"status": 418, "body": {"inline_bytes": "aGVsbG8="}},
        ),
    ],
    ids=["status", "string", "bytes"],
)
def test_direct_response_translates_as_apply_direct_response_does(
    direct: str, expected: dict[str, Any]
) -> None:
    # ApplyDirectResponse: the status, the body inline; the route config allows pilot's
    # DefaultMaxDirectResponseBodySizeBytes (1 MiB) instead of Envoy's 4 KiB.
    yaml_text = test_failover.SEED_SE + virtual_service(f"- directResponse: {direct}\n")
    [route] = _routes(yaml_text)
    assert route == {"match": {"prefix": "/"}, "direct_response": expected}
    assert _hcm(yaml_text)["route_config"]["max_direct_response_body_size_bytes"] == 1048576


FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            "{delay: {fixedDelay: 250ms, percentage: {value: 12.5}}}",
            {
                "delay": {
                    "fixed_delay": "0.25s",
                    "percentage": {"numerator": 125000, "denominator": "MILLION"},
                }
            },
        ),
        (
            "{delay: {fixedDelay: 2s, percent: 30}}",
            {
                "delay": {
                    "fixed_delay": "2s",
                    "percentage": {"numerator": 30, "denominator": "HUNDRED"},
                }
            },
        ),
        (
            "{delay: {fixedDelay: 1s}}",
            {
                "delay": {
                    "fixed_delay": "1s",
                    "percentage": {"numerator": 0, "denominator": "HUNDRED"},
                }
            },
        ),
        (
            "{abort: {httpStatus: 503, percentage: {value: 0.1}}}",
            {
                "abort": {
                    "percentage": {"numerator": 1000, "denominator": "MILLION"},
                    "http_status": 503,
                }
            },
        ),
        ("{abort: {httpStatus: 500}}", {"abort": {"http_status": 500}}),
        (
            "{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}",
            {
                "abort": {
                    "percentage": {"numerator": 1000000, "denominator": "MILLION"},
                    "grpc_status": 14,
                }
            },
        ),
        ("{abort: {http2Error: REFUSED_STREAM, percentage: {value: 50}}}", {}),
        (
            "{delay: {exponentialDelay: 1s, percent: 5}, abort: {httpStatus: 502}}",
            {"abort": {"http_status": 502}},
        ),
    ],
    ids=[
        "delay-percentage",
        "delay-percent",
        "delay-no-percent",
        "abort-http",
        "abort-no-percentage",
        "abort-grpc",
        "http2-error",
        "exponential-delay",
    ],
)
def test_fault_translates_as_translate_fault_does(fault: str, expected: dict[str, Any]) -> None:
    # TranslateFault: percentage is per million (uint32(value * 10000)), the deprecated percent
    # per hundred (0 when unset); an abort without percentage has none (Envoy's 0%). Pilot
    # drops an http2Error abort and an exponential delay; with nothing left, the per-route
    # config is an empty HTTPFault.
    [route] = _routes(test_failover.SEED_SE + virtual_service(f"- fault: {fault}\n" + _DEST))
    assert route == {
        "match": {"prefix": "/"},
        "route": PLAIN_ACTION,
        "typed_per_filter_config": {"envoy.filters.http.fault": {"@type": FAULT_TYPE} | expected},
    }


@pytest.mark.parametrize("with_fault", [False, True], ids=["no-fault", "fault"])
def test_the_fault_filter_sits_before_the_router_with_an_empty_config(with_fault: bool) -> None:
    # buildHTTPConnectionManager appends xdsfilters.Fault (an empty HTTPFault) before the
    # router on every HTTP connection manager, whether or not a route has a fault.
    yaml_text = test_failover.SEED_SE
    if with_fault:
        yaml_text += virtual_service("- fault: {abort: {httpStatus: 503}}\n" + _DEST)
    assert _hcm(yaml_text)["http_filters"] == [
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}},
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]


def test_envoy_accepts_every_translated_route_field() -> None:
    # Envoy --mode validate on headers (route and destination), rewrites, redirects, direct
    # responses and faults together.
    validate_reference(
        _bootstrap(
            test_failover.SEED_SE
            + virtual_service(
                HEADERS.replace("- name: h\n", "- name: h\n  match: [{uri: {prefix: /h}}]\n")
                + """\
                - match: [{uri: {prefix: /rewrite}}]
                  rewrite: {uri: /v2, authority: b.example}
                  fault:
                    delay: {fixedDelay: 250ms, percentage: {value: 12.5}}
                    abort: {httpStatus: 503, percentage: {value: 0.1}}
                  route:
                  - destination: {host: mydb.com}
                - match: [{uri: {prefix: /regex}}]
                  rewrite: {uriRegexRewrite: {match: '^/regex/(.*)$', rewrite: '/\\1'}}
                  fault: {delay: {fixedDelay: 1s, percent: 30}, abort: {grpcStatus: UNAVAILABLE}}
                  route:
                  - destination: {host: mydb.com}
                - match: [{uri: {prefix: /empty-fault}}]
                  fault: {abort: {http2Error: REFUSED_STREAM}}
                  route:
                  - destination: {host: mydb.com}
                - match: [{uri: {prefix: /moved}}]
                  redirect: {prefixRewrite: /new, scheme: https, port: 8443, redirectCode: 308}
                - match: [{uri: {exact: /old}}]
                  redirect: {uri: /v2, authority: new.example, derivePort: FROM_REQUEST_PORT}
                - match: [{uri: {exact: /bytes}}]
                  directResponse: {status: 418, body: {bytes: aGVsbG8}}
                - directResponse: {status: 200, body: {string: down for maintenance}}
                """.replace("                ", "")
            )
        )
    )


# --- subsets and weights ----------------------------------------------------------------------

LABELLED_SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: mydb
spec:
  hosts: [mydb.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}
  resolution: STATIC
  endpoints:
  - {address: 127.0.3.1, locality: us-east1, labels: {version: v1}}
  - {address: 127.0.3.2, locality: us-west, labels: {version: v1}}
  - {address: 127.0.3.3, locality: us-east1, labels: {version: v2, track: canary}}
  - {address: 127.0.3.4, locality: us-west, labels: {version: v2}}
"""


def subsets_rule(traffic_policy: str, subsets: str) -> str:
    """A DestinationRule for mydb.com with a top-level policy and ``subsets``."""
    return (
        test_failover.destination_rule(traffic_policy)
        + "\n  subsets:\n"
        + textwrap.indent(textwrap.dedent(subsets), "  ")
    )


SUBSETS = LABELLED_SE + subsets_rule(
    """\
    outlierDetection: {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s}
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {enabled: true, failover: [{from: us-east1, to: us-west}]}
    connectionPool: {tcp: {connectTimeout: 250ms}}
    """,
    """\
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        loadBalancer: {simple: RANDOM}
        connectionPool: {http: {http1MaxPendingRequests: 5}}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        portLevelSettings:
        - port: {number: 80}
          connectionPool: {tcp: {maxConnections: 3}}
        - port: {number: 81}
          outlierDetection: {consecutive5xxErrors: 7}
    - name: canary
      labels: {version: v2, track: canary}
    - name: east
      labels: {topology.kubernetes.io/region: us-east1}
    - name: none
      labels: {version: v9}
    """,
)

OUTLIER = {
    "enforcing_success_rate": 0,
    "always_eject_one_host": True,
    "consecutive_5xx": 1,
    "enforcing_consecutive_5xx": 100,
    "interval": "0.2s",
    "base_ejection_time": "30s",
}


def _clusters(yaml_text: str) -> dict[str, dict[str, Any]]:
    clusters = _bootstrap(yaml_text)["static_resources"]["clusters"]
    return {c["name"]: c for c in clusters}


def _threshold(**limits: int) -> dict[str, Any]:
    unlimited = 4294967295
    return {
        "thresholds": [
            {
                "max_connections": unlimited,
                "max_pending_requests": unlimited,
                "max_requests": unlimited,
                "max_retries": unlimited,
                "track_remaining": True,
            }
            | limits
        ]
    }


def test_each_subset_is_its_own_cluster_of_the_endpoints_its_labels_select() -> None:
    # buildSubsetCluster: outbound|PORT|SUBSET|HOST after the main cluster, in the DR's order;
    # WithSubset keeps the endpoints whose labels include all the subset's (the topology
    # labels pilot adds count), and a STATIC service (EDS in pilot) keeps a subset that
    # selects none as a cluster without endpoints.
    clusters = _clusters(SUBSETS)
    assert list(clusters) == [
        "outbound|80||mydb.com",
        "outbound|80|v1|mydb.com",
        "outbound|80|v2|mydb.com",
        "outbound|80|canary|mydb.com",
        "outbound|80|east|mydb.com",
        "outbound|80|none|mydb.com",
    ]
    assert {name: _priorities(c) for name, c in clusters.items()} == {
        "outbound|80||mydb.com": {"127.0.3.1": 0, "127.0.3.3": 0, "127.0.3.2": 1, "127.0.3.4": 1},
        "outbound|80|v1|mydb.com": {"127.0.3.1": 0, "127.0.3.2": 1},
        "outbound|80|v2|mydb.com": {"127.0.3.3": 0, "127.0.3.4": 0},
        "outbound|80|canary|mydb.com": {"127.0.3.3": 0},
        "outbound|80|east|mydb.com": {"127.0.3.1": 0, "127.0.3.3": 0},
        "outbound|80|none|mydb.com": {},
    }
    for name, cluster in clusters.items():
        assert cluster["load_assignment"]["cluster_name"] == name


def test_a_subset_policy_merges_over_the_destination_rule_as_pilot_merges_it() -> None:
    # MergeTrafficPolicy: v1's loadBalancer and connectionPool replace the DR's whole blocks
    # (so the DR's failover list and tcp.connectTimeout are gone: the mesh's locality
    # setting and 10 s), its outlierDetection is the DR's. v2's port-level entry for port 80
    # replaces everything, even what it leaves unset: no outlier detection (so no failover),
    # the default LEAST_REQUEST over its own ROUND_ROBIN. canary has no policy: the DR's.
    clusters = _clusters(SUBSETS)
    v1 = clusters["outbound|80|v1|mydb.com"]
    assert v1 == {
        "name": "outbound|80|v1|mydb.com",
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "RANDOM",
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "circuit_breakers": _threshold(max_pending_requests=5),
        "outlier_detection": OUTLIER,
        "load_assignment": {
            "cluster_name": "outbound|80|v1|mydb.com",
            "endpoints": [
                {
                    "locality": {"region": region, "zone": "", "sub_zone": ""},
                    "priority": priority,
                    "load_balancing_weight": 1,
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": address, "port_value": 8080}
                                }
                            },
                            "load_balancing_weight": 1,
                        }
                    ],
                }
                for region, priority, address in (
                    ("us-east1", 0, "127.0.3.1"),
                    ("us-west", 1, "127.0.3.2"),
                )
            ],
        },
    }
    v2 = clusters["outbound|80|v2|mydb.com"]
    assert (v2["lb_policy"], v2["connect_timeout"], v2["common_lb_config"]) == (
        "LEAST_REQUEST",
        "10s",
        {},
    )
    assert "outlier_detection" not in v2
    assert v2["circuit_breakers"] == _threshold(max_connections=3)
    canary, main = clusters["outbound|80|canary|mydb.com"], clusters["outbound|80||mydb.com"]
    assert canary["outlier_detection"] == main["outlier_detection"] == OUTLIER
    for cluster in (canary, main):
        assert (cluster["lb_policy"], cluster["connect_timeout"]) == ("ROUND_ROBIN", "0.25s")
        assert cluster["common_lb_config"] == {
            "healthy_panic_threshold": {"value": 0.0},
            "locality_weighted_lb_config": {},
        }


def test_a_port_level_policy_of_the_destination_rule_is_what_subsets_merge_over() -> None:
    # GetPortLevelTrafficPolicy in applyDestinationRule and MergeSubsetTrafficPolicy: the DR's
    # entry for port 80 replaces its whole top level (outlierDetection gone) for the main
    # cluster and as the base of every subset; an entry for another port changes nothing.
    clusters = _clusters(
        LABELLED_SE
        + subsets_rule(
            """\
            outlierDetection: {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s}
            loadBalancer: {simple: ROUND_ROBIN}
            portLevelSettings:
            - port: {number: 80}
              loadBalancer: {simple: RANDOM}
            - port: {number: 443}
              connectionPool: {tcp: {maxConnections: 1}}
            """,
            """\
            - name: v1
              labels: {version: v1}
            - name: v2
              labels: {version: v2}
              trafficPolicy:
                outlierDetection: {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s}
            """,
        )
    )
    summary = {
        name.split("|")[2]: (c["lb_policy"], "outlier_detection" in c, c["circuit_breakers"])
        for name, c in clusters.items()
    }
    assert summary == {
        "": ("RANDOM", False, _threshold()),
        "v1": ("RANDOM", False, _threshold()),
        "v2": ("RANDOM", True, _threshold()),
    }


def test_a_dns_subset_is_a_strict_dns_cluster_and_one_without_endpoints_is_not_built() -> None:
    # buildSubsetCluster for STRICT_DNS: its own load_assignment of the subset's endpoints;
    # buildCluster builds no STRICT_DNS cluster without endpoints (a route to it is NC).
    yaml_text = test_failover.service_entry(
        (test_failover.EAST_NAME, "us-east1"), (test_failover.WEST_NAME, "us-west")
    ).replace(
        "    locality: us-west\n", "    locality: us-west\n    labels: {version: v1}\n"
    ) + subsets_rule(
        test_failover.outlier(),
        """\
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
        """,
    )
    clusters = _clusters(yaml_text)
    assert list(clusters) == ["outbound|80||mydb.com", "outbound|80|v1|mydb.com"]
    v1 = clusters["outbound|80|v1|mydb.com"]
    assert v1["type"] == "STRICT_DNS"
    assert v1["dns_lookup_family"] == "V4_ONLY"
    assert _priorities(v1) == {test_failover.WEST_NAME: 0}
    assert v1["outlier_detection"]["consecutive_5xx"] == 1


def _route_to(destinations: str, *, extra: str = "") -> dict[str, Any]:
    [route] = _routes(SUBSETS + virtual_service(extra + "  route:\n" + destinations))
    return route


def test_a_route_to_one_subset_names_its_cluster() -> None:
    # GetDestinationCluster: BuildSubsetKey with the subset; a single destination is a plain
    # cluster whatever its weight.
    route = _route_to(
        "  - destination: {host: mydb.com, subset: canary, port: {number: 80}}\n    weight: 30\n",
        extra="- name: canary\n",
    )
    assert route == {
        "name": "canary",
        "match": {"prefix": "/"},
        "route": PLAIN_ACTION | {"cluster": "outbound|80|canary|mydb.com"},
    }


WEIGHTED = """\
  - destination: {host: mydb.com, subset: v1}
    weight: 90
    headers:
      request: {set: {x-subset: v1, host: v1.example}}
      response: {remove: [x-internal]}
  - destination: {host: mydb.com, subset: v2, port: {number: 80}}
    weight: 10
  - destination: {host: mydb.com}
    weight: 0
"""


def test_a_weighted_route_splits_over_subset_clusters_as_pilot_builds_it() -> None:
    # applyHTTPRouteDestination with several destinations: weighted_clusters, the 0-weight
    # one dropped, no total_weight (pilot sets none; Envoy sums). processWeightedDestination
    # puts a destination's headers, and its authority as host_rewrite_literal, on its
    # ClusterWeight, not on the route; the route's own headers and authority stay on it.
    route = _route_to(
        WEIGHTED,
        extra="- name: split\n  headers: {request: {set: {x-route: r, host: route.example}}}\n",
    )
    assert route == {
        "name": "split",
        "match": {"prefix": "/"},
        "request_headers_to_add": [_set("x-route", "r")],
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {
                        "name": "outbound|80|v1|mydb.com",
                        "weight": 90,
                        "request_headers_to_add": [_set("x-subset", "v1")],
                        "response_headers_to_remove": ["x-internal"],
                        "host_rewrite_literal": "v1.example",
                    },
                    {"name": "outbound|80|v2|mydb.com", "weight": 10},
                ]
            },
            "timeout": "0s",
            "max_grpc_timeout": "0s",
            "host_rewrite_literal": "route.example",
            "retry_policy": DEFAULT_RETRY_POLICY,
        },
    }


def test_a_route_to_a_subset_no_destination_rule_defines_names_a_missing_cluster() -> None:
    # GetDestinationCluster checks nothing and pilot's route config has validate_clusters
    # false, so the route names a cluster that does not exist (Envoy's 503 NC).
    yaml_text = SUBSETS + virtual_service(
        "- route:\n  - destination: {host: mydb.com, subset: v3}\n"
    )
    [route] = _routes(yaml_text)
    assert route["route"]["cluster"] == "outbound|80|v3|mydb.com"
    assert "outbound|80|v3|mydb.com" not in _clusters(yaml_text)
    assert _hcm(yaml_text)["route_config"]["validate_clusters"] is False


@pytest.mark.parametrize(
    ("subsets", "message"),
    [
        ("- {name: v1}\n- {name: v1, labels: {a: b}}\n", "duplicate subset names: v1"),
        ("- {name: V_1}\n", "subset name is invalid"),
        ("- {labels: {a: b}}\n", "subset name cannot be empty"),
        ("- {name: v1, labels: {'-a': b}}\n", "invalid tag key"),
        ("- {name: v1, labels: {a: 'b c'}}\n", "invalid tag value"),
        ("- {name: v1, labels: {version: 1}}\n", "is not a string"),
        ("- {name: v1, trafficPolicy: {}}\n", "at least one field"),
        ("- {name: v1, trafficPolicy: {tls: {mode: SIMPLE}}}\n", r"subsets\[0\].trafficPolicy.tls"),
        (
            "- name: v1\n  trafficPolicy:\n    portLevelSettings: [{connectionPool: {}}]\n",
            "must have valid port",
        ),
        (
            "- name: v1\n  trafficPolicy:\n    portLevelSettings: [{port: {number: 80}}]\n",
            "port traffic policy must have at least one field",
        ),
        (
            "- name: v1\n  trafficPolicy:\n    portLevelSettings:\n"
            "    - port: {number: 81}\n"
            "      loadBalancer: {consistentHash: {maglev: {tableSize: 4}}}\n",
            "tableSize must be a prime number",
        ),
        ("- {name: v1, workloadSelector: {}}\n", "workloadSelector"),
    ],
    ids=[
        "duplicate",
        "invalid-name",
        "no-name",
        "label-key",
        "label-value",
        "label-not-string",
        "empty-policy",
        "tls",
        "port-level-no-port",
        "port-level-empty",
        "unused-port-level-checked",
        "unknown-field",
    ],
)
def test_subsets_istio_rejects_or_the_reference_does_not_translate_are_errors(
    subsets: str, message: str
) -> None:
    with pytest.raises(UnsupportedError, match=message):
        _clusters(LABELLED_SE + subsets_rule("loadBalancer: {simple: RANDOM}\n", subsets))


def test_envoy_accepts_subset_clusters_and_weighted_routes() -> None:
    # Envoy --mode validate: the subset clusters (STATIC and STRICT_DNS), a weighted route with
    # a ClusterWeight's headers and host rewrite, a route to one subset and one to a subset
    # no rule defines (a missing cluster, accepted as validate_clusters is false).
    routes = virtual_service(
        "- match: [{headers: {x-canary: {exact: '1'}}}]\n"
        "  route:\n  - destination: {host: mydb.com, subset: canary}\n"
        "- match: [{uri: {prefix: /v3}}]\n"
        "  route:\n  - destination: {host: mydb.com, subset: v3}\n"
        "- headers: {request: {set: {host: route.example}}}\n  route:\n" + WEIGHTED
    )
    validate_reference(_bootstrap(SUBSETS + routes))
    dns = test_failover.SEED_SE + subsets_rule(
        test_failover.outlier(), "- name: all\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
    )
    assert "outbound|80|all|mydb.com" in _clusters(dns)
    validate_reference(
        _bootstrap(
            dns + virtual_service("- route:\n  - destination: {host: mydb.com, subset: all}\n")
        )
    )


# --- consistent hashing and slow start ----------------------------------------------------------

FAILOVER_LB = "localityLbSetting: {enabled: true, failover: [{from: us-east1, to: us-west}]}\n"


def _hash_rule(load_balancer: str) -> str:
    """The seed's ServiceEntry and a DR with outlier detection and this ``loadBalancer``."""
    return (
        test_failover.SEED_SE
        + test_failover.destination_rule(
            test_failover.outlier() + "loadBalancer:\n" + textwrap.indent(load_balancer, "  ")
        )
        + "\n"
    )


RING_HASH_HEADER = _hash_rule(
    "consistentHash:\n  httpHeaderName: x-user\n  ringHash: {minimumRingSize: 2048}\n" + FAILOVER_LB
)
#: ``DefaultConsistentHashPolicy``: the default retry policy without previous_hosts.
HASH_RETRY_POLICY = {k: v for k, v in DEFAULT_RETRY_POLICY.items() if k != "retry_host_predicate"}


def test_a_ring_hash_on_a_header_keeps_locality_failover_and_hashes_the_default_route() -> None:
    # ApplyRingHashLoadBalancer: RING_HASH with the ring size; LocalityLBSettings.ApplyToCluster
    # runs whatever the policy, so the priorities and locality_weighted_lb_config stay.
    # buildSidecarVirtualHostForService: the default route gets the hash policy, and keeps
    # DefaultPolicy's previous_hosts (BuildDefaultHTTPOutboundRoute converts with false).
    cluster = _cluster(RING_HASH_HEADER)
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["ring_hash_lb_config"] == {"minimum_ring_size": 2048}
    assert cluster["common_lb_config"] == {
        "healthy_panic_threshold": {"value": 0.0},
        "locality_weighted_lb_config": {},
    }
    assert _priorities(cluster) == {test_failover.EAST_NAME: 0, test_failover.WEST_NAME: 1}
    assert _routes(RING_HASH_HEADER) == [
        {
            "name": "default",
            "match": {"prefix": "/"},
            "route": {
                "cluster": CLUSTER,
                "timeout": "0s",
                "max_grpc_timeout": "0s",
                "retry_policy": DEFAULT_RETRY_POLICY,
                "hash_policy": [{"header": {"header_name": "x-user"}}],
            },
        }
    ]


@pytest.mark.parametrize(
    ("consistent_hash", "expected"),
    [
        ("{httpHeaderName: X-User}", {"header": {"header_name": "X-User"}}),
        (
            "{httpCookie: {name: session, path: /api, ttl: 1h}}",
            {"cookie": {"name": "session", "ttl": "3600s", "path": "/api"}},
        ),
        ("{httpCookie: {name: session, ttl: 0s}}", {"cookie": {"name": "session", "ttl": "0s"}}),
        ("{httpCookie: {name: session}}", {"cookie": {"name": "session"}}),
        (
            "{httpCookie: {name: s, ttl: 10s, attributes: [{name: SameSite, value: Strict}, "
            "{name: Secure}]}}",
            {
                "cookie": {
                    "name": "s",
                    "ttl": "10s",
                    "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}],
                }
            },
        ),
        ("{useSourceIp: true}", {"connection_properties": {"source_ip": True}}),
        ("{httpQueryParameterName: user}", {"query_parameter": {"name": "user"}}),
        ("{ringHash: {minimumRingSize: 64}}", None),
    ],
    ids=[
        "header",
        "cookie-ttl-path",
        "session-cookie",
        "cookie-no-ttl",
        "cookie-attributes",
        "source-ip",
        "query-parameter",
        "no-hash-key",
    ],
)
def test_each_hash_key_translates_as_consistent_hash_to_hash_policy_does(
    consistent_hash: str, expected: dict[str, Any] | None
) -> None:
    # ConsistentHashToHashPolicy: a ttl whenever set (0s is a session cookie Envoy generates;
    # no ttl, no cookie generated), the path only when not empty. No hash key: no hash
    # policy, though the cluster is RING_HASH.
    [route] = _routes(_hash_rule(f"consistentHash: {consistent_hash}\n"))
    assert route["route"].get("hash_policy") == (None if expected is None else [expected])
    assert _cluster(_hash_rule(f"consistentHash: {consistent_hash}\n"))["lb_policy"] == "RING_HASH"


@pytest.mark.parametrize(
    ("consistent_hash", "expected"),
    [
        (
            "{httpHeaderName: x, ringHash: {minimumRingSize: 4096}}",
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 4096}},
        ),
        ("{httpHeaderName: x, ringHash: {}}", {"lb_policy": "RING_HASH"}),
        (
            "{httpHeaderName: x}",
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 1024}},
        ),
        (
            "{httpHeaderName: x, minimumRingSize: 512}",
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 512}},
        ),
        (
            "{httpHeaderName: x, maglev: {tableSize: 65537}}",
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65537}},
        ),
    ],
    ids=["ring-size", "ring-hash-empty", "default-ring", "deprecated-ring-size", "maglev"],
)
def test_the_hash_algorithm_translates_as_apply_ring_hash_load_balancer_does(
    consistent_hash: str, expected: dict[str, Any]
) -> None:
    # ringHash sets a ring_hash_lb_config only for a non-zero size; with neither ringHash nor
    # maglev pilot always writes one, of the deprecated minimumRingSize or 1024.
    cluster = _cluster(_hash_rule(f"consistentHash: {consistent_hash}\n"))
    assert _lb_fields(cluster) == expected


def _lb_fields(cluster: dict[str, Any]) -> dict[str, Any]:
    """The cluster's ``lb_policy`` and its ``lb_config`` (the oneof), if any."""
    return {
        k: v
        for k, v in cluster.items()
        if k == "lb_policy" or (k.endswith("_lb_config") and k != "common_lb_config")
    }


SLOW_START = {
    "slow_start_window": "120s",
    "aggression": {"default_value": 1.5, "runtime_key": "("},
    "min_weight_percent": {"value": 20.0},
}
WARMUP = "warmup: {duration: 2m, minimumPercent: 20, aggression: 1.5}\n"


@pytest.mark.parametrize(
    ("load_balancer", "expected"),
    [
        (
            "simple: ROUND_ROBIN\nwarmupDurationSecs: 30s\n",
            {
                "lb_policy": "ROUND_ROBIN",
                "round_robin_lb_config": {"slow_start_config": {"slow_start_window": "30s"}},
            },
        ),
        (
            "simple: ROUND_ROBIN\n" + WARMUP,
            {
                "lb_policy": "ROUND_ROBIN",
                "round_robin_lb_config": {"slow_start_config": SLOW_START},
            },
        ),
        (
            "simple: LEAST_REQUEST\n" + WARMUP,
            {
                "lb_policy": "LEAST_REQUEST",
                "least_request_lb_config": {"slow_start_config": SLOW_START},
            },
        ),
        (
            "simple: LEAST_CONN\nwarmup: {duration: 45s}\n",
            {
                "lb_policy": "LEAST_REQUEST",
                "least_request_lb_config": {
                    "slow_start_config": {
                        "slow_start_window": "45s",
                        "aggression": {"default_value": 1.0, "runtime_key": "("},
                        "min_weight_percent": {"value": 10.0},
                    }
                },
            },
        ),
        (
            "warmupDurationSecs: 10s\n",
            {
                "lb_policy": "LEAST_REQUEST",
                "least_request_lb_config": {"slow_start_config": {"slow_start_window": "10s"}},
            },
        ),
        ("simple: RANDOM\n" + WARMUP, {"lb_policy": "RANDOM"}),
        (
            "consistentHash: {httpHeaderName: x, ringHash: {}}\n" + WARMUP,
            {
                "lb_policy": "RING_HASH",
                "least_request_lb_config": {"slow_start_config": SLOW_START},
            },
        ),
        (
            "consistentHash: {httpHeaderName: x, ringHash: {minimumRingSize: 8}}\n" + WARMUP,
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 8}},
        ),
        (
            "consistentHash: {httpHeaderName: x, maglev: {tableSize: 251}}\n" + WARMUP,
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 251}},
        ),
    ],
    ids=[
        "rr-duration-secs",
        "rr-warmup",
        "least-request-warmup",
        "least-conn-warmup-defaults",
        "default-policy-duration-secs",
        "random-drops-warmup",
        "ring-hash-keeps-least-request-slow-start",
        "ring-size-replaces-slow-start",
        "maglev-replaces-slow-start",
    ],
)
def test_warmup_translates_as_apply_load_balancer_does(
    load_balancer: str, expected: dict[str, Any]
) -> None:
    # setWarmup: aggression a RuntimeDouble under pilot's fixed runtime key "(" (1.0 unset),
    # min_weight_percent 10 unset; setSlowStartConfig: the window alone. A consistentHash
    # goes through applySimpleDefaultLoadBalancer first (LEAST_REQUEST with the slow start),
    # and ApplyRingHashLoadBalancer replaces that lb_config only when it writes its own.
    cluster = _cluster(_hash_rule(load_balancer))
    assert _lb_fields(cluster) == expected


HASH_SUBSETS = LABELLED_SE + subsets_rule(
    """\
    outlierDetection: {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s}
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
      localityLbSetting: {enabled: true, failover: [{from: us-east1, to: us-west}]}
    """,
    """\
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        loadBalancer:
          consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer: {simple: RANDOM}
    """,
)
SOURCE_IP = {"connection_properties": {"source_ip": True}}
HEADER_X_USER = {"header": {"header_name": "x-user"}}


def test_a_subset_with_its_own_consistent_hash_is_its_own_hashing_cluster() -> None:
    # MergeTrafficPolicy: v1's loadBalancer replaces the DR's whole block (MAGLEV, and the
    # mesh's locality setting: no failover list, but outlier detection still gives
    # priorities by LbPriority); v2's is RANDOM; the main cluster hashes with the default ring.
    clusters = _clusters(HASH_SUBSETS)
    summary = {
        name: (c["lb_policy"], c.get("maglev_lb_config"), c.get("ring_hash_lb_config"))
        for name, c in clusters.items()
    }
    assert summary == {
        "outbound|80||mydb.com": ("RING_HASH", None, {"minimum_ring_size": 1024}),
        "outbound|80|v1|mydb.com": ("MAGLEV", {"table_size": 251}, None),
        "outbound|80|v2|mydb.com": ("RANDOM", None, None),
    }
    assert _priorities(clusters["outbound|80|v1|mydb.com"]) == {"127.0.3.1": 0, "127.0.3.2": 1}


def test_routes_to_subsets_hash_as_hash_for_http_destination_finds_it() -> None:
    # HashForHTTPDestination: v1 routes with its own consistentHash; v2 sets none (its cluster
    # is RANDOM) and so routes with the DR's header hash. A single hashing destination's
    # retry policy has no previous_hosts (ConvertPolicy with hashPolicy true), even with
    # retries set, unless retryIgnorePreviousHosts asks for it; a weighted route appends each
    # destination's hash policy in order and keeps previous_hosts.
    routes = _routes(
        HASH_SUBSETS
        + virtual_service(
            """\
            - match: [{headers: {x-canary: {exact: "1"}}}]
              retries: {attempts: 3}
              route:
              - destination: {host: mydb.com, subset: v1}
            - match: [{uri: {prefix: /v2}}]
              route:
              - destination: {host: mydb.com, subset: v2}
            - match: [{uri: {prefix: /sticky-retry}}]
              retries: {attempts: 3, retryIgnorePreviousHosts: true}
              route:
              - destination: {host: mydb.com, subset: v1}
            - route:
              - destination: {host: mydb.com, subset: v1}
                weight: 90
              - destination: {host: mydb.com, subset: v2}
                weight: 10
              - destination: {host: mydb.com}
                weight: 0
            """
        )
    )
    actions = [r["route"] for r in routes]
    assert [a.get("hash_policy") for a in actions] == [
        [SOURCE_IP],
        [HEADER_X_USER],
        [SOURCE_IP],
        [SOURCE_IP, HEADER_X_USER],
    ]
    assert [a["retry_policy"] for a in actions] == [
        HASH_RETRY_POLICY | {"num_retries": 3},
        HASH_RETRY_POLICY,
        DEFAULT_RETRY_POLICY | {"num_retries": 3},
        DEFAULT_RETRY_POLICY,
    ]


def test_a_port_level_consistent_hash_reaches_a_route_only_through_a_named_port() -> None:
    # The cluster takes the port-level policy (GetPortLevelTrafficPolicy): RING_HASH. The
    # default route finds the entry by the service port (hashForService), but a VirtualService
    # destination only when it names the port (portLevelSettingsConsistentHash): without
    # one its route does not hash, and its retry policy keeps previous_hosts.
    yaml_text = (
        test_failover.SEED_SE
        + test_failover.destination_rule(
            "portLevelSettings:\n"
            "- port: {number: 80}\n"
            "  loadBalancer: {consistentHash: {httpQueryParameterName: user}}\n"
        )
        + "\n"
    )
    assert _cluster(yaml_text)["lb_policy"] == "RING_HASH"
    query = [{"query_parameter": {"name": "user"}}]
    assert _routes(yaml_text)[0]["route"]["hash_policy"] == query
    routes = _routes(
        yaml_text
        + virtual_service(
            "- match: [{uri: {prefix: /named}}]\n"
            "  route:\n  - destination: {host: mydb.com, port: {number: 80}}\n"
            "- route:\n  - destination: {host: mydb.com}\n"
        )
    )
    assert [r["route"].get("hash_policy") for r in routes] == [query, None]
    assert [r["route"]["retry_policy"] for r in routes] == [HASH_RETRY_POLICY, DEFAULT_RETRY_POLICY]


def test_an_empty_consistent_hash_drops_previous_hosts_without_hashing() -> None:
    # consistentHash: {} is set (RING_HASH, ring 1024) with no hash key: no hash policy, yet
    # LookupHash found one, so the route's retry policy loses previous_hosts.
    [route] = _routes(
        _hash_rule("consistentHash: {}\n")
        + virtual_service("- route:\n  - destination: {host: mydb.com}\n")
    )
    assert "hash_policy" not in route["route"]
    assert route["route"]["retry_policy"] == HASH_RETRY_POLICY


@pytest.mark.parametrize(
    ("load_balancer", "message"),
    [
        ("simple: ROUND_ROBIN\nconsistentHash: {httpHeaderName: x}\n", "only one of simple"),
        ("consistentHash: {httpHeaderName: x, useSourceIp: true}\n", "only one of httpHeader"),
        ("consistentHash: {httpCookie: {ttl: 1s}}\n", "name required for HttpCookie"),
        (
            "consistentHash: {httpCookie: {name: a, attributes: [{name: b}, {name: b}]}}\n",
            "duplicate cookie attribute name: b",
        ),
        (
            "consistentHash: {httpCookie: {name: a, attributes: [{value: b}]}}\n",
            "cookie attribute name cannot be empty",
        ),
        ("consistentHash: {httpHeaderName: ''}\n", "empty name"),
        ("consistentHash: {httpQueryParameterName: ''}\n", "empty name"),
        ("consistentHash: {useSourceIp: 'yes'}\n", "not a boolean"),
        ("consistentHash: {maglev: {}}\n", "tableSize must be set for maglev"),
        ("consistentHash: {maglev: {tableSize: 65536}}\n", "tableSize must be a prime"),
        ("consistentHash: {maglev: {tableSize: 5000011}}\n", "less than 5000011"),
        (
            "consistentHash: {ringHash: {minimumRingSize: 8}, maglev: {tableSize: 7}}\n",
            "only one of ringHash, maglev",
        ),
        (
            "consistentHash: {minimumRingSize: 8, ringHash: {minimumRingSize: 8}}\n",
            "only one of MinimumRingSize or Maglev/Ringhash",
        ),
        ("consistentHash: {ringHash: {minimumRingSize: 8388609}}\n", "ring over 8388608"),
        ("consistentHash: {ringHash: {minimumRingSize: -1}}\n", "negative"),
        ("consistentHash: {httpHeaderName: x, hashFunction: XX}\n", "hashFunction"),
        ("warmup: {minimumPercent: 5}\n", "duration is required"),
        ("warmup: {duration: 1m, minimumPercent: 150}\n", "minimumPercent"),
        ("warmup: {duration: 1m, aggression: 0}\n", "aggression should be greater than 0"),
        ("warmup: {duration: 1m}\nwarmupDurationSecs: 1m\n", "only one of warmupDurationSecs"),
        ("warmupDurationSecs: 500us\n", "greater than 1ms"),
        ("warmup: {duration: 1.5ms}\n", "ms precision"),
    ],
    ids=[
        "simple-and-hash",
        "two-hash-keys",
        "cookie-no-name",
        "cookie-attribute-twice",
        "cookie-attribute-no-name",
        "empty-header",
        "empty-query-parameter",
        "source-ip-not-bool",
        "maglev-no-table",
        "maglev-not-prime",
        "maglev-too-big",
        "ring-and-maglev",
        "deprecated-and-ring-hash",
        "ring-too-big",
        "ring-negative",
        "unknown-field",
        "warmup-no-duration",
        "warmup-percent",
        "warmup-aggression",
        "warmup-twice",
        "warmup-under-1ms",
        "warmup-sub-ms",
    ],
)
def test_load_balancers_istio_rejects_or_envoy_refuses_are_errors(
    load_balancer: str, message: str
) -> None:
    # validateLoadBalancer and the CRD's checks; an empty name or a ring over 8M, which Istio
    # lets through, is a config Envoy refuses.
    with pytest.raises(UnsupportedError, match=message):
        _bootstrap(_hash_rule(load_balancer))


def test_envoy_accepts_every_translated_hash_and_slow_start() -> None:
    # Envoy --mode validate: the hashing subsets and their routes, every hash key on a route,
    # MAGLEV, the deprecated ring size, and a RING_HASH cluster with a least_request slow start.
    validate_reference(
        _bootstrap(
            HASH_SUBSETS
            + virtual_service(
                """\
                - match: [{uri: {prefix: /cookie}}]
                  route:
                  - destination: {host: mydb.com, subset: v1}
                - route:
                  - destination: {host: mydb.com, subset: v1}
                    weight: 90
                  - destination: {host: mydb.com, subset: v2}
                    weight: 10
                """
            )
        )
    )
    for load_balancer in (
        "consistentHash:\n  httpCookie: {name: s, path: /, ttl: 0s, attributes: [{name: Secure}]}\n"
        "  maglev: {tableSize: 65537}\n",
        "consistentHash: {httpQueryParameterName: u, minimumRingSize: 4096}\n",
        "consistentHash: {useSourceIp: true, ringHash: {}}\n" + WARMUP,
        "simple: ROUND_ROBIN\n" + WARMUP,
        "simple: LEAST_REQUEST\nwarmupDurationSecs: 30s\n",
    ):
        validate_reference(_bootstrap(_hash_rule(load_balancer)))
    validate_reference(_bootstrap(RING_HASH_HEADER))


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


# --- destinations on another host or port -------------------------------------------------------

OTHER_HOST = test_other_host.OTHER_HOST.yaml


def _virtual_hosts(yaml_text: str) -> dict[str, list[dict[str, Any]]]:
    virtual_hosts = _hcm(yaml_text)["route_config"]["virtual_hosts"]
    return {v["name"]: v["routes"] for v in virtual_hosts}


def _rule(host: str, traffic_policy: str) -> str:
    return test_failover.destination_rule(traffic_policy).replace("host: mydb.com", f"host: {host}")


def _other_hosts(http: str, *, backup_port: int = 80) -> str:
    """mydb.com and backup.com (on ``backup_port``), and mydb.com's VirtualService."""
    return (
        test_other_host.service_entry("mydb.com", "127.0.6.11", "127.0.6.12")
        + test_other_host.service_entry("backup.com", "127.0.6.13", "127.0.6.14", backup_port)
        + test_other_host.outlier_rule("backup.com")
        + virtual_service(http)
    )


def test_a_route_to_another_host_names_that_hosts_cluster() -> None:
    # GetDestinationCluster builds the name from the destination's host: the route reaches
    # backup.com's own cluster (its priorities, its outlier detector), and backup.com's
    # virtual host keeps its default route.
    virtual_hosts = _virtual_hosts(OTHER_HOST)
    backup, nowhere, db = virtual_hosts["mydb.com:80"]
    assert backup == {
        "name": "backup",
        "match": {
            "prefix": "/",
            "case_sensitive": True,
            "headers": [{"name": "x-target", "string_match": {"exact": "backup"}}],
        },
        "route": PLAIN_ACTION | {"cluster": "outbound|80||backup.com"},
    }
    assert nowhere["route"]["cluster"] == "outbound|80||nowhere.com"
    assert db["route"] == PLAIN_ACTION
    assert [r["route"]["cluster"] for r in virtual_hosts["backup.com:80"]] == [
        "outbound|80||backup.com"
    ]
    clusters = _clusters(OTHER_HOST)
    assert _priorities(clusters["outbound|80||backup.com"]) == {"127.0.6.13": 0, "127.0.6.14": 1}
    assert clusters["outbound|80||backup.com"]["outlier_detection"]["consecutive_5xx"] == 1


def test_a_destination_port_names_the_cluster_of_that_port() -> None:
    # The destination's port wins over the listener's: backup.com's 8080 cluster exists, and
    # mydb.com on a port its ServiceEntry does not declare names a cluster that does not.
    yaml_text = _other_hosts(
        "- match: [{headers: {x-target: {exact: backup}}}]\n"
        "  route:\n  - destination: {host: backup.com, port: {number: 8080}}\n"
        "- route:\n  - destination: {host: mydb.com, port: {number: 81}}\n",
        backup_port=8080,
    )
    routes = _virtual_hosts(yaml_text)["mydb.com:80"]
    assert [r["route"]["cluster"] for r in routes] == [
        "outbound|8080||backup.com",
        "outbound|81||mydb.com",
    ]
    clusters = _clusters(yaml_text)
    assert "outbound|8080||backup.com" in clusters
    assert "outbound|81||mydb.com" not in clusters


def test_without_a_port_a_destination_takes_the_listeners_port_even_on_a_one_port_host() -> None:
    # GetDestinationCluster takes the looked-up service's port when it has exactly one, but
    # a sidecar's routes for port 80 look hosts up in servicesByName (httproute.go), which
    # holds only the services with port 80, each with that port alone. So a portless route
    # to backup.com, whose only port is 8080, names outbound|80||backup.com: a missing
    # cluster (Envoy's 503 NC), not backup.com's 8080 cluster.
    yaml_text = _other_hosts(
        "- match: [{headers: {x-target: {exact: backup}}}]\n"
        "  route:\n  - destination: {host: backup.com}\n"
        "- route:\n  - destination: {host: mydb.com}\n",
        backup_port=8080,
    )
    routes = _virtual_hosts(yaml_text)["mydb.com:80"]
    assert [r["route"]["cluster"] for r in routes] == [
        "outbound|80||backup.com",
        "outbound|80||mydb.com",
    ]
    assert "outbound|80||backup.com" not in _clusters(yaml_text)


def test_a_route_to_a_host_no_service_entry_declares_names_a_missing_cluster() -> None:
    # pilot checks no destination host: the cluster is named from the host as written, on
    # the listener's port (no service found), with its subset; no ServiceEntry builds it and
    # validate_clusters is false, so Envoy accepts the route and answers 503 NC.
    yaml_text = _other_hosts(
        "- match: [{headers: {x-target: {exact: nowhere}}}]\n"
        "  route:\n  - destination: {host: nowhere.com}\n"
        "- route:\n  - destination: {host: nowhere.com, subset: v1}\n"
    )
    routes = _virtual_hosts(yaml_text)["mydb.com:80"]
    assert [r["route"]["cluster"] for r in routes] == [
        "outbound|80||nowhere.com",
        "outbound|80|v1|nowhere.com",
    ]
    assert set(_clusters(yaml_text)) == {"outbound|80||mydb.com", "outbound|80||backup.com"}
    assert _hcm(yaml_text)["route_config"]["validate_clusters"] is False


HASHED_HOSTS = (
    test_other_host.service_entry("mydb.com", "127.0.6.11", "127.0.6.12")
    + test_other_host.service_entry("backup.com", "127.0.6.13", "127.0.6.14")
    + _rule("mydb.com", "loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n")
    + "\n"
    + _rule("backup.com", "loadBalancer: {consistentHash: {useSourceIp: true}}\n")
    + "\n"
    + _rule("nowhere.com", "loadBalancer: {consistentHash: {httpQueryParameterName: u}}\n")
    + "\n"
    + virtual_service(
        """\
        - match: [{headers: {x-target: {exact: backup}}}]
          route:
          - destination: {host: backup.com}
        - match: [{headers: {x-target: {exact: nowhere}}}]
          route:
          - destination: {host: nowhere.com}
        - match: [{headers: {x-target: {exact: both}}}]
          route:
          - destination: {host: mydb.com}
            weight: 50
          - destination: {host: backup.com}
            weight: 50
        - route:
          - destination: {host: mydb.com}
        """
    )
)


def test_a_route_to_another_host_hashes_with_that_hosts_destination_rule() -> None:
    # HashForHTTPDestination looks up the destination host's rule (SidecarScope.DestinationRule),
    # not the VirtualService host's: backup.com's route hashes on the source IP and drops
    # previous_hosts. A host outside the sidecar's scope (no ServiceEntry) has no rule, even
    # with a DestinationRule written for it: no hash, previous_hosts kept. A weighted route
    # appends each destination's hash policy in order.
    actions = [r["route"] for r in _virtual_hosts(HASHED_HOSTS)["mydb.com:80"]]
    assert [a.get("hash_policy") for a in actions] == [
        [SOURCE_IP],
        None,
        [HEADER_X_USER, SOURCE_IP],
        [HEADER_X_USER],
    ]
    assert [a["retry_policy"] for a in actions] == [
        HASH_RETRY_POLICY,
        DEFAULT_RETRY_POLICY,
        DEFAULT_RETRY_POLICY,
        HASH_RETRY_POLICY,
    ]


def test_envoy_accepts_routes_to_other_hosts_and_ports() -> None:
    # Envoy --mode validate: routes to another host's cluster, to a port's cluster, to
    # missing clusters (validate_clusters false), and hash policies from other hosts' rules.
    validate_reference(_bootstrap(OTHER_HOST))
    validate_reference(_bootstrap(HASHED_HOSTS))
    validate_reference(
        _bootstrap(
            _other_hosts(
                "- match: [{headers: {x-target: {exact: backup}}}]\n"
                "  route:\n  - destination: {host: backup.com, port: {number: 8080}}\n"
                "- match: [{headers: {x-target: {exact: default}}}]\n"
                "  route:\n  - destination: {host: backup.com}\n"
                "- route:\n  - destination: {host: mydb.com, port: {number: 81}}\n",
                backup_port=8080,
            )
        )
    )
