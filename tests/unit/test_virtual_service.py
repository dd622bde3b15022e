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
    HeaderMatch,
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
            {"http": [{"route": [{"destination": {"host": "other.com"}}]}]},
            "spec.http[0].route[0].destination.host: routes 'mydb.com' to another host, "
            "'other.com': not supported yet (a VirtualService may route only to its own "
            "ServiceEntry host)",
            id="other-host",
        ),
        pytest.param(
            {"http": [{"route": [{"destination": {"host": "mydb.com", "port": {"number": 81}}}]}]},
            "spec.http[0].route[0].destination.port.number: routes port 80 to port 81: not "
            "supported yet (a route goes to the port it was asked on)",
            id="other-port",
        ),
        pytest.param(
            {"http": [{"route": [{"destination": {"host": "mydb.com"}}], "fault": {}}]},
            "spec.http[0].fault: is not supported yet: Envoy would route differently than "
            "Istio's sidecar",
            id="fault",
        ),
        pytest.param(
            {"http": [{"redirect": {"uri": "/x"}}]},
            "spec.http[0].redirect: is not supported yet: Envoy would route differently than "
            "Istio's sidecar",
            id="redirect",
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
                        "match": [{"sourceLabels": {"app": "a"}}],
                        "route": [{"destination": {"host": "mydb.com"}}],
                    }
                ]
            },
            "spec.http[0].match[0].sourceLabels: is not supported yet: Envoy would route "
            "differently than Istio's sidecar",
            id="source-labels",
        ),
        pytest.param(
            {
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "mydb.com"}, "weight": 50},
                            {"destination": {"host": "mydb.com"}, "weight": 50},
                        ]
                    }
                ]
            },
            "spec.http[0].route: more than one destination (weights) not supported yet: "
            "Envoy would route differently than Istio's sidecar",
            id="weights",
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
    assert VS_AT + expected in _errors(spec)


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
