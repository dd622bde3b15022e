"""A VirtualService's HTTP routes: compiled as pilot's ``route.go`` and rendered as its routes.

Expected values follow pilot (``BuildHTTPRoutesForVirtualService``, ``TranslateRoute``,
``TranslateRouteMatch``, ``setTimeout``; ``retry/retry.go`` ``ConvertPolicy``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from google.protobuf import json_format

from extproc.core.policy import Policy, Service
from extproc.core.routes import (
    ClusterWeight,
    HeaderMatch,
    HeaderOperations,
    HeaderValue,
    HttpRoute,
    MatchKind,
    RetryPolicy,
    RouteMatch,
    StringMatch,
)
from extproc.errors import ConfigError
from extproc.istio import load_policy, load_policy_text
from extproc.render.routes import route_config
from extproc.settings import Settings
from extproc.testing import find_service
from extproc.wire import CLUSTER_HEADER, DataPath

FIXTURE: Final = Path(__file__).parent.parent / "fixtures" / "traffic" / "virtual-service.yaml"
VS_AT: Final = 'cfg.yaml: VirtualService "mydb" (document 3): '


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(FIXTURE.read_text()) if d]


def _load(vs_spec: dict[str, Any] | None = None, *, strict: bool = False) -> Policy:
    docs = _docs()
    if vs_spec is not None:
        docs[2]["spec"] = vs_spec
    text = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    return load_policy_text(text, "cfg.yaml", strict=strict)


def _errors(vs_spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(vs_spec)
    return [str(p) for p in caught.value.problems]


def _service(policy: Policy, port: int) -> Service:
    service = find_service(policy, "mydb.com", port)
    assert service is not None
    return service


def _rendered(policy: Policy, port: int) -> list[dict[str, Any]]:
    config = json_format.MessageToDict(route_config(policy, Settings()))
    [host] = [h for h in config["virtualHosts"] if h["name"] == f"outbound|{port}||mydb.com"]
    routes: list[dict[str, Any]] = host["routes"]
    return routes


WRITES_RETRIES: Final = RetryPolicy(
    num_retries=3,
    retry_on="5xx,retriable-status-codes",
    retriable_status_codes=(503,),
    per_try_timeout_s=0.5,
    remote_localities=True,
)


def test_each_match_is_a_route_in_order_and_a_catch_all_ends_them() -> None:
    routes = _service(load_policy(FIXTURE), 80).routes
    assert [r.name for r in routes] == ["writes.put", "reads", "default"]
    assert routes[0] == HttpRoute(
        name="writes.put",
        match=RouteMatch(
            headers=(
                HeaderMatch("x-tenant", StringMatch(MatchKind.PREFIX, "acme")),
                HeaderMatch(":method", StringMatch(MatchKind.EXACT, "PUT")),
            )
        ),
        timeout_s=2.0,
        retries=WRITES_RETRIES,
    )
    assert routes[1] == HttpRoute(
        name="reads",
        match=RouteMatch(
            path=StringMatch(MatchKind.REGEX, "/tables/[a-z]+"),
            case_sensitive=False,
            headers=(HeaderMatch("x-debug", StringMatch(MatchKind.PRESENT), invert=True),),
            query_params=(("consistent", StringMatch(MatchKind.EXACT, "true")),),
        ),
        retries=None,  # attempts: 0 is no retry policy at all
    )
    # No match: everything under "/", Istio's default retries, its own timeout.
    assert routes[2] == HttpRoute(
        name="default", match=RouteMatch(explicit_case=False), timeout_s=5.0
    )


def test_a_match_on_another_port_is_left_out() -> None:
    routes = _service(load_policy(FIXTURE), 8080).routes
    assert [r.name for r in routes] == ["writes.put", "writes.alt", "reads", "default"]
    assert routes[1].match.path == StringMatch(MatchKind.PREFIX, "/admin")


def test_a_virtual_service_with_no_route_for_a_port_leaves_istios_default_route() -> None:
    spec = copy.deepcopy(_docs()[2]["spec"])
    spec["http"] = [spec["http"][0] | {"match": [{"port": 8080, "uri": {"prefix": "/a"}}]}]
    policy = _load(spec)
    assert _service(policy, 80).routes == ()
    assert len(_service(policy, 8080).routes) == 1
    [default] = _rendered(policy, 80)
    assert default["match"] == {"prefix": "/"}
    assert default["route"]["retryPolicy"]["numRetries"] == 2


def test_the_routes_render_as_pilots() -> None:
    put, reads, default = _rendered(load_policy(FIXTURE), 80)
    assert put["name"] == "writes.put"
    assert put["match"] == {
        "prefix": "/",
        "caseSensitive": True,
        "headers": [
            {"name": "x-tenant", "stringMatch": {"prefix": "acme"}},
            {"name": ":method", "stringMatch": {"exact": "PUT"}},
        ],
    }
    action = put["route"]
    assert action["cluster"] == "outbound|80||mydb.com"
    assert (action["timeout"], action["maxGrpcTimeout"]) == ("2s", "2s")
    retry = action["retryPolicy"]
    assert retry["retryOn"] == "5xx,retriable-status-codes"
    assert retry["retriableStatusCodes"] == [503]
    assert retry["numRetries"] == 3
    assert retry["perTryTimeout"] == "0.500s"
    assert retry["hostSelectionRetryMaxAttempts"] == "5"
    assert [p["name"] for p in retry["retryHostPredicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]
    # retryRemoteLocalities: Istio's previous_priorities, update frequency 2.
    assert retry["retryPriority"]["typedConfig"]["updateFrequency"] == 2
    assert reads["match"] == {
        "safeRegex": {"regex": "/tables/[a-z]+"},
        "caseSensitive": False,
        "headers": [{"name": "x-debug", "presentMatch": True, "invertMatch": True}],
        "queryParameters": [{"name": "consistent", "stringMatch": {"exact": "true"}}],
    }
    assert "retryPolicy" not in reads["route"]
    assert default["match"] == {"prefix": "/"}
    assert default["route"]["timeout"] == "5s"
    # No retries given: Istio's default policy, with the previous priorities extproc adds.
    assert default["route"]["retryPolicy"]["retryPriority"]["typedConfig"] == {
        "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
        "PreviousPrioritiesConfig",
        "updateFrequency": 1,
    }


def test_without_headers_with_a_value_treats_a_missing_header_as_empty() -> None:
    spec = copy.deepcopy(_docs()[2]["spec"])
    spec["http"][1]["match"][0]["withoutHeaders"] = {"x-debug": {"exact": "1"}}
    _, reads, _ = _rendered(_load(spec), 80)
    assert reads["match"]["headers"] == [
        {
            "name": "x-debug",
            "stringMatch": {"exact": "1"},
            "invertMatch": True,
            "treatMissingHeaderAsEmpty": True,
        }
    ]


def test_retry_remote_localities_false_gets_no_previous_priorities() -> None:
    spec = copy.deepcopy(_docs()[2]["spec"])
    spec["http"][0]["retries"]["retryRemoteLocalities"] = False
    put, _, _ = _rendered(_load(spec), 80)
    assert "retryPriority" not in put["route"]["retryPolicy"]


def test_a_virtual_service_is_read_without_warnings() -> None:
    assert load_policy(FIXTURE).warnings == ()
    _load(strict=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            {"http": [{"route": [{"destination": {"host": "mydb.com"}}], "fault": {}}]},
            "spec.http[0].fault: HTTP fault injection must have an abort and/or a delay",
            id="empty-fault",
        ),
        pytest.param(
            {
                "http": [
                    {"redirect": {"uri": "/x"}, "route": [{"destination": {"host": "mydb.com"}}]}
                ]
            },
            "spec.http[0]: HTTP route cannot contain both route and redirect",
            id="redirect-and-route",
        ),
        pytest.param(
            {"http": [{"redirect": {"redirectCode": 200}}]},
            "spec.http[0].redirect.redirectCode: 200 is not a valid redirect code, must be 3xx",
            id="redirect-code",
        ),
        pytest.param(
            {"http": [{"directResponse": {"status": 99}}]},
            "spec.http[0].directResponse.status: HTTP status 99 is not in range 200-599",
            id="direct-status",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "fault": {"abort": {"grpcStatus": "NOPE"}},
                    }
                ]
            },
            'spec.http[0].fault.abort.grpcStatus: gRPC status "NOPE" is not supported.',
            id="grpc-status",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 120}}},
                    }
                ]
            },
            "spec.http[0].fault.delay.percentage: percentage 120 is not in range 0..100",
            id="percentage",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "headers": {"request": {"set": {":path": "/x"}}},
                    }
                ]
            },
            'spec.http[0].headers.request.set.:path: invalid header ":path": header cannot '
            'have ":" prefix',
            id="internal-header",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "headers": {"request": {"set": {"x-a": "50%"}}},
                    }
                ]
            },
            "spec.http[0].headers.request.set.x-a: header value configuration 50% is invalid",
            id="header-value",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "rewrite": {"authority": "a.com"},
                        "headers": {"request": {"set": {"host": "b.com"}}},
                    }
                ]
            },
            'spec.http[0].headers: authority header cannot be set multiple times: have "a.com", '
            'attempting to set "b.com"',
            id="authority-twice",
        ),
        pytest.param(
            {"http": [{"match": [{"uri": {"prefix": "/"}}]}]},
            "spec.http[0]: HTTP route, redirect or direct_response is required",
            id="no-route",
        ),
        pytest.param(
            {"http": [{"route": [{"destination": {"host": "mydb.com"}}], "timeout": "0s"}]},
            'spec.http[0].timeout: "0s" is too short: duration must be at least 1ms',
            id="timeout-zero",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "retries": {"attempts": 2, "retryOn": "5xx,sometimes"},
                    }
                ]
            },
            'spec.http[0].retries.retryOn: "sometimes" is not a valid retryOn policy',
            id="retry-on-unknown",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}}],
                        "retries": {"attempts": 0, "perTryTimeout": "1s"},
                    }
                ]
            },
            "spec.http[0].retries: http retry policy configured when attempts are set to 0 "
            "(disabled)",
            id="retries-disabled-but-configured",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "match": [{"headers": {"x": {"prefix": ""}}}],
                        "route": [{"destination": {"host": "mydb.com"}}],
                    }
                ]
            },
            'spec.http[0].match[0].headers.x: "headers": prefix string match should not be empty',
            id="empty-prefix",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "match": [{"sourceLabels": {"app": "-a"}}],
                        "route": [{"destination": {"host": "mydb.com"}}],
                    }
                ]
            },
            'spec.http[0].match[0].sourceLabels: invalid tag value: "-a"',
            id="source-labels-invalid",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "match": [{"gateways": ["istio-system/Egress"]}],
                        "route": [{"destination": {"host": "mydb.com"}}],
                    }
                ]
            },
            "spec.http[0].match[0].gateways: invalid value for gateway name: 'Egress'",
            id="gateway-name-invalid",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "mydb.com"}},
                            {"destination": {"host": "mydb.com"}, "weight": 0},
                        ]
                    }
                ]
            },
            "spec.http[0].route: total destination weight = 0",
            id="weights-all-zero",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "mydb.com"}, "weight": 150},
                            {"destination": {"host": "mydb.com"}, "weight": -50},
                        ]
                    }
                ]
            },
            "spec.http[0].route[1].weight: weight -50 < 0",
            id="weight-negative",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "mydb.com"}, "weight": 2**31},
                            {"destination": {"host": "mydb.com"}, "weight": 1},
                        ]
                    }
                ]
            },
            "spec.http[0].route[0].weight: weight 2147483648 is over int32",
            id="weight-over-int32",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [{"destination": {"host": "mydb.com"}, "weight": 2**31 - 1}] * 3,
                    }
                ]
            },
            "spec.http[0].route: the sum of the weights exceeds 4294967295: Envoy refuses the "
            "route",
            id="weights-over-uint32",
        ),
        pytest.param(
            {"hosts": ["*"], "http": [{"route": [{"destination": {"host": "mydb.com"}}]}]},
            "spec.hosts[0]: wildcard host * is not allowed for virtual services bound to the "
            "mesh gateway",
            id="star-host",
        ),
    ],
)
def test_a_virtual_service_is_validated_like_istio(change: dict[str, Any], expected: str) -> None:
    spec = {"hosts": ["mydb.com"]} | change
    errors = _errors(spec)
    assert any(e.startswith(VS_AT + expected) for e in errors), errors


ROUTE_TO_DB: Final = [{"destination": {"host": "mydb.com"}}]


def _one_route(http: dict[str, Any]) -> dict[str, Any]:
    [route] = _rendered(_load({"hosts": ["mydb.com"], "http": [http]}), 80)
    return route


def test_headers_are_set_then_added_sorted_and_the_authority_is_a_host_rewrite() -> None:
    route = _one_route(
        {
            "route": [
                {
                    "destination": {"host": "mydb.com"},
                    "headers": {"request": {"set": {"x-dest": "1"}}},
                }
            ],
            "headers": {
                "request": {
                    "set": {"x-b": "2", "x-a": "1", ":authority": "db.internal"},
                    "add": {"x-c": "3"},
                    "remove": ["x-drop"],
                },
                "response": {"set": {"x-served": "%UPSTREAM_HOST%"}, "remove": ["server"]},
            },
        }
    )
    overwrite = "OVERWRITE_IF_EXISTS_OR_ADD"  # APPEND_IF_EXISTS_OR_ADD is 0: left out
    assert route["requestHeadersToAdd"] == [
        {"header": {"key": "x-a", "value": "1"}, "appendAction": overwrite},
        {"header": {"key": "x-b", "value": "2"}, "appendAction": overwrite},
        {"header": {"key": "x-c", "value": "3"}},
        {"header": {"key": "x-dest", "value": "1"}, "appendAction": overwrite},
    ]
    assert route["requestHeadersToRemove"] == ["x-drop"]
    # After them, on the lua path, the header the script reads the served host from.
    assert route["responseHeadersToAdd"][:1] == [
        {"header": {"key": "x-served", "value": "%UPSTREAM_HOST%"}, "appendAction": overwrite}
    ]
    assert route["responseHeadersToRemove"] == ["server"]
    assert route["route"]["hostRewriteLiteral"] == "db.internal"


def test_a_rewrite_is_a_prefix_or_regex_rewrite_and_an_authority() -> None:
    prefix = _one_route({"route": ROUTE_TO_DB, "rewrite": {"uri": "/v2", "authority": "a.b"}})
    assert prefix["route"]["prefixRewrite"] == "/v2"
    assert prefix["route"]["hostRewriteLiteral"] == "a.b"
    regex = _one_route(
        {
            "route": ROUTE_TO_DB,
            "rewrite": {"uriRegexRewrite": {"match": "^/a/(.*)", "rewrite": "/\\1"}},
        }
    )
    assert regex["route"]["regexRewrite"] == {
        "pattern": {"regex": "^/a/(.*)"},
        "substitution": "/\\1",
    }


def test_a_redirect_or_direct_response_is_answered_by_envoy_with_the_data_path_off() -> None:
    redirect = _one_route(
        {"redirect": {"uri": "/new", "authority": "b.com", "derivePort": "FROM_REQUEST_PORT"}}
    )
    # The request's port is 80, the scheme's default: no port in the Location.
    assert redirect["redirect"] == {"hostRedirect": "b.com", "pathRedirect": "/new"}
    assert redirect["typedPerFilterConfig"]["envoy.filters.http.lua"]["disabled"] is True
    moved = _one_route({"redirect": {"port": 8443, "scheme": "https", "redirectCode": 308}})
    # ApplyRedirect sets path_redirect to the (empty) uri when there is no prefixRewrite.
    assert moved["redirect"] == {
        "pathRedirect": "",
        "schemeRedirect": "https",
        "portRedirect": 8443,
        "responseCode": "PERMANENT_REDIRECT",
    }
    direct = _one_route({"directResponse": {"status": 503, "body": {"string": "down\n"}}})
    assert direct["directResponse"] == {"status": 503, "body": {"inlineString": "down\n"}}
    assert "route" not in direct


def test_a_fault_is_the_fault_filters_route_config_and_the_filter_runs_first() -> None:
    from extproc.render.bootstrap import render_bootstrap

    http = {
        "route": ROUTE_TO_DB,
        "fault": {
            "delay": {"fixedDelay": "0.2s", "percentage": {"value": 12.5}},
            "abort": {"httpStatus": 503, "percentage": {"value": 50}},
        },
    }
    route = _one_route(http)
    assert route["typedPerFilterConfig"]["envoy.filters.http.fault"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {
            "fixedDelay": "0.200s",
            "percentage": {"numerator": 125000, "denominator": "MILLION"},
        },
        "abort": {"httpStatus": 503, "percentage": {"numerator": 500000, "denominator": "MILLION"}},
    }
    bootstrap = render_bootstrap(_load({"hosts": ["mydb.com"], "http": [http]}), Settings())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    names = [f["name"] for f in hcm["typed_config"]["http_filters"]]
    assert names[0] == "envoy.filters.http.fault"
    # Without a fault anywhere, no fault filter.
    plain = render_bootstrap(load_policy(FIXTURE), Settings())
    hcm = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert "envoy.filters.http.fault" not in [
        f["name"] for f in hcm["typed_config"]["http_filters"]
    ]


def test_a_virtual_service_for_gateways_only_is_ignored_with_a_warning() -> None:
    spec = copy.deepcopy(_docs()[2]["spec"]) | {"gateways": ["istio-system/egress"]}
    policy = _load(spec)
    assert _service(policy, 80).routes == ()
    assert [str(w) for w in policy.warnings] == [
        VS_AT + 'spec.gateways: binds it to gateways only ("istio-system/egress"), not to '
        'sidecars ("mesh"): it does not apply here, ignored'
    ]


def test_a_host_that_is_no_service_entry_host_is_a_warning() -> None:
    spec = copy.deepcopy(_docs()[2]["spec"]) | {"hosts": ["mydb.com", "other.com"]}
    warnings = [str(w) for w in _load(spec).warnings]
    assert warnings == [
        VS_AT + "spec.hosts[1]: 'other.com' is no ServiceEntry host: Istio's sidecar would "
        "route it to no cluster here; ignored"
    ]


def test_check_lists_the_routes_a_virtual_service_gives_each_service() -> None:
    from extproc.istio.summary import check_summary

    lines = check_summary(load_policy(FIXTURE), None).splitlines()
    start = lines.index("  outbound|80||mydb.com  " + lines[2].split("  ", 2)[2])
    assert lines[start + 1].startswith('    routes of VirtualService "mydb" (')
    assert lines[start + 2 : start + 5] == [
        "      writes.put: prefix /, x-tenant prefix acme, :method exact PUT -> timeout 2s, "
        "3 retries on 5xx,retriable-status-codes 503, 0.5s per try",
        "      reads: regex /tables/[a-z]+, any case, no x-debug present, ?consistent exact "
        "true -> no timeout, no retries",
        "      default: prefix / -> timeout 5s, 2 retries on connect-failure,refused-stream,"
        "unavailable,cancelled,retriable-status-codes",
    ]


def test_a_destination_port_or_another_host_names_that_cluster() -> None:
    # GetDestinationCluster: the destination's port, else the port the request came on.
    spec = {
        "hosts": ["mydb.com"],
        "http": [{"route": [{"destination": {"host": "mydb.com", "port": {"number": 8080}}}]}],
    }
    policy = _load(spec)
    assert [r.cluster for r in _service(policy, 80).routes] == ["outbound|8080||mydb.com"]
    assert [r.cluster for r in _service(policy, 8080).routes] == [""]  # its own
    assert policy.warnings == ()


def test_a_destination_no_service_entry_declares_is_envoys_503_with_a_warning() -> None:
    spec = {"hosts": ["mydb.com"], "http": [{"route": [{"destination": {"host": "a.com"}}]}]}
    policy = _load(spec)
    assert [r.cluster for r in _service(policy, 80).routes] == ["outbound|80||a.com"]
    # One warning for the route, not one per port of the host it is on.
    assert [str(w) for w in policy.warnings] == [
        VS_AT + "spec.http[0].route[0].destination.host: 'a.com' is no ServiceEntry host: as "
        "on Istio's sidecar, its cluster does not exist and Envoy answers 503"
    ]
    config = json_format.MessageToDict(route_config(policy, Settings()))
    assert config["validateClusters"] is False


def test_authority_and_scheme_match_as_pseudo_headers_after_method() -> None:
    http = {
        "match": [
            {
                "method": {"exact": "GET"},
                "authority": {"prefix": "mydb"},
                "scheme": {"exact": "http"},
            }
        ],
        "route": ROUTE_TO_DB,
    }
    assert _one_route(http)["match"]["headers"] == [
        {"name": ":method", "stringMatch": {"exact": "GET"}},
        {"name": ":authority", "stringMatch": {"prefix": "mydb"}},
        {"name": ":scheme", "stringMatch": {"exact": "http"}},
    ]


def test_an_unquoted_comma_in_a_flow_mapping_is_an_unknown_field_even_when_null() -> None:
    # YAML reads {retryOn: 5xx,503} as retryOn "5xx" and a key "503" with no value; the API
    # server refuses such a field, so a retry policy never silently loses its 503.
    text = FIXTURE.read_text().replace(
        "      retryOn: 5xx,503\n", "      retryOn: 5xx\n      gateway-error: null\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_policy_text(text, "cfg.yaml")
    assert [p.path for p in caught.value.problems] == ["spec.http[0].retries.gateway-error"]


WEIGHTED: Final = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [mydb.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.3.1, locality: us-east1, labels: {version: v1}}
  - {address: 127.0.3.3, locality: us-east1, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: mydb.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [mydb.com]
  http:
  - name: one
    match: [{uri: {prefix: /one}}]
    route:
    - destination: {host: mydb.com, subset: v2}
      weight: 30
  - name: split
    headers: {request: {set: {x-route: r}}}
    route:
    - destination: {host: mydb.com, subset: v1}
      weight: 90
      headers: {request: {set: {x-dest: a, ":authority": a.internal}}}
    - destination: {host: mydb.com, subset: v2}
      weight: 10
    - destination: {host: mydb.com}
      weight: 0
"""
V1: Final = "outbound|80|v1|mydb.com"
V2: Final = "outbound|80|v2|mydb.com"


def _weighted_routes(data_path: DataPath) -> list[dict[str, Any]]:
    policy = load_policy_text(WEIGHTED, "cfg.yaml", strict=True)
    config = json_format.MessageToDict(route_config(policy, Settings(data_path=data_path)))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    routes: list[dict[str, Any]] = host["routes"]
    return routes


def test_several_destinations_compile_to_weights_without_the_zero_weight_one() -> None:
    # processWeightedDestination: each destination of weight > 0 in order, its headers and
    # authority its own; the route keeps its own headers. One destination: its cluster, the
    # weight ignored (processDestination).
    policy = load_policy_text(WEIGHTED, "cfg.yaml", strict=True)
    one, split = _service(policy, 80).routes
    overwrite = HeaderOperations(request_add=(HeaderValue("x-dest", "a"),))
    assert split.weighted == (
        ClusterWeight(V1, 90, overwrite, host_rewrite="a.internal"),
        ClusterWeight(V2, 10),
    )
    assert split.headers == HeaderOperations(request_add=(HeaderValue("x-route", "r"),))
    assert split.host_rewrite == ""
    assert split.clusters("own") == (V1, V2)
    assert (one.weighted, one.cluster) == ((), V2)


@pytest.mark.parametrize("data_path", [DataPath.EXT_PROC, DataPath.MODULE], ids=lambda p: p.value)
def test_a_weighted_route_renders_as_pilots_weighted_clusters(data_path: DataPath) -> None:
    one, split = _weighted_routes(data_path)
    assert "cluster" not in split["route"]
    # No total_weight: Envoy sums the weights.
    assert split["route"]["weightedClusters"] == {
        "clusters": [
            {
                "name": V1,
                "weight": 90,
                "requestHeadersToAdd": [
                    {
                        "header": {"key": "x-dest", "value": "a"},
                        "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "hostRewriteLiteral": "a.internal",
            },
            {"name": V2, "weight": 10},
        ]
    }
    assert split["requestHeadersToAdd"] == [
        {"header": {"key": "x-route", "value": "r"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    assert one["route"]["cluster"] == V2


def test_on_lua_a_weighted_route_follows_one_sibling_per_destination_chosen_by_the_pick() -> None:
    # The script picks by the weights in the route's metadata and writes the pick into
    # CLUSTER_HEADER; each sibling matches the same request with that header and keeps only
    # its destination, so Envoy's own ClusterWeight carries the destination's headers. Every
    # one of them removes the header before the upstream, and none reads a cluster from it.
    one, first, second, split = _weighted_routes(DataPath.LUA)
    weights = {"weights": f"{V1} 90 {V2} 10"}
    parent_clusters = split["route"]["weightedClusters"]["clusters"]
    assert len(parent_clusters) == 2
    for sibling, cluster in ((first, parent_clusters[0]), (second, parent_clusters[1])):
        assert sibling["name"] == split["name"] == "split"
        assert sibling["match"] == {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "stringMatch": {"exact": cluster["name"]}}],
        }
        assert sibling["route"]["weightedClusters"] == {"clusters": [cluster]}
        assert {k: v for k, v in sibling["route"].items() if k != "weightedClusters"} == {
            k: v for k, v in split["route"].items() if k != "weightedClusters"
        }
    for route in (first, second, split):
        assert route["metadata"]["filterMetadata"]["envoy.filters.http.lua"] == weights
        assert route["requestHeadersToRemove"] == [CLUSTER_HEADER]
        assert "clusterHeader" not in route["route"]
    assert split["match"] == {"prefix": "/"}
    assert one["metadata"]["filterMetadata"]["envoy.filters.http.lua"] == {"service": V2}
    assert "requestHeadersToRemove" not in one


def test_check_shows_a_routes_weights() -> None:
    from extproc.istio.summary import check_summary

    lines = check_summary(load_policy_text(WEIGHTED, "cfg.yaml"), None).splitlines()
    assert (
        f"      split: prefix / -> weights {V1} 90 / {V2} 10, no timeout, 2 retries on "
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    ) in lines
