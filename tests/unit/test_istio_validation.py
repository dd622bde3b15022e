"""Istio's validation rules: what is rejected, what is only warned about, and the exact words."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any, Final

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.policy import Policy
from extproc.errors import ConfigError, Problem
from extproc.istio import api, load_policy_text
from extproc.istio.duration import parse_duration
from extproc.istio.findings import model_in
from extproc.istio.models import MODELS

DELETE: Final = object()

SE: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "db"},
    "spec": {
        "hosts": ["mydb.com"],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS",
        "endpoints": [
            {"address": "east.example.com", "locality": "us-east1", "ports": {"http": 80}},
            {"address": "west.example.com", "locality": "us-west", "ports": {"http": 80}},
        ],
    },
}

DR: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "db"},
    "spec": {
        "host": "mydb.com",
        "trafficPolicy": {
            "loadBalancer": {
                "simple": "ROUND_ROBIN",
                "localityLbSetting": {
                    "enabled": True,
                    "failover": [{"from": "us-east1", "to": "us-west"}],
                },
            },
            "outlierDetection": {
                "consecutive5xxErrors": 1,
                "interval": "15s",
                "baseEjectionTime": "1m",
                "maxEjectionPercent": 100,
            },
        },
    },
}

SE_AT: Final = 'cfg.yaml: ServiceEntry "db" (document 1): '
DR_AT: Final = 'cfg.yaml: DestinationRule "db" (document 2): '
OD: Final = "spec.trafficPolicy.outlierDetection"
LB: Final = "spec.trafficPolicy.loadBalancer"
LLS: Final = "spec.trafficPolicy.loadBalancer.localityLbSetting"


def _patched(base: dict[str, Any], changes: dict[str, object]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``{"spec.ports[0].number": 0}``-style changes applied."""
    doc = copy.deepcopy(base)
    for path, value in changes.items():
        parts: list[str | int] = []
        for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
            parts.append(int(index) if index else name)
        target: Any = doc
        for part in parts[:-1]:
            target = target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return doc


def _text(*docs: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def _errors(*docs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_policy_text(_text(*docs), "cfg.yaml")
    return [str(p) for p in caught.value.problems]


def _policy(*docs: dict[str, Any]) -> Policy:
    return load_policy_text(_text(*docs), "cfg.yaml")


def test_base_documents_are_valid_and_warning_free() -> None:
    assert _texts(_policy(SE, DR).warnings) == ()


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_supported_api_version_is_accepted(version: str) -> None:
    se = _patched(SE, {"apiVersion": f"networking.istio.io/{version}"})
    dr = _patched(DR, {"apiVersion": f"networking.istio.io/{version}"})
    policy = _policy(se, dr)
    assert len(policy.services) == 1
    assert _texts(policy.warnings) == ()


# ---------------------------------------------------------------------------------------------
# ServiceEntry errors

SE_ERRORS = [
    ("hosts-empty", {"spec.hosts": []}, "spec.hosts: service entry must have at least one host"),
    (
        "hosts-missing",
        {"spec.hosts": DELETE},
        "spec.hosts: service entry must have at least one host",
    ),
    ("hosts-not-a-list", {"spec.hosts": "mydb.com"}, 'spec.hosts: must be a list, got "mydb.com"'),
    ("host-full-wildcard", {"spec.hosts": ["*"]}, 'spec.hosts[0]: invalid host "*"'),
    (
        "host-uppercase",
        {"spec.hosts": ["MyDB.com"]},
        'spec.hosts[0]: domain name "MyDB.com" invalid (label "MyDB" invalid)',
    ),
    (
        "host-numeric-tld",
        {"spec.hosts": ["mydb.123"]},
        'spec.hosts[0]: domain name "mydb.123" invalid '
        '(top level domain "123" cannot be all-numeric)',
    ),
    (
        "host-wildcard-in-middle",
        {"spec.hosts": ["a.*.com"]},
        'spec.hosts[0]: domain name "a.*.com" invalid (label "*" invalid)',
    ),
    (
        "port-number-zero",
        {"spec.ports[0].number": 0},
        "spec.ports[0].number: port number 0 must be in the range 1..65535",
    ),
    (
        "port-number-too-big",
        {"spec.ports[0].number": 65536},
        "spec.ports[0].number: port number 65536 must be in the range 1..65535",
    ),
    ("port-number-missing", {"spec.ports[0].number": DELETE}, "spec.ports[0].number: is required"),
    (
        "port-number-string",
        {"spec.ports[0].number": "80"},
        'spec.ports[0].number: must be an integer, got "80"',
    ),
    ("port-name-missing", {"spec.ports[0].name": DELETE}, "spec.ports[0].name: is required"),
    (
        "port-name-invalid",
        {"spec.ports[0].name": "Http_1"},
        'spec.ports[0].name: invalid port name "Http_1"',
    ),
    (
        "target-port-out-of-range",
        {"spec.ports[0].targetPort": 70000},
        "spec.ports[0].targetPort: port number 70000 must be in the range 1..65535",
    ),
    (
        "protocol-unknown",
        {"spec.ports[0].protocol": "QUIC"},
        'spec.ports[0].protocol: unsupported protocol "QUIC"',
    ),
    (
        "location-unknown",
        {"spec.location": "MESH_ELSEWHERE"},
        'spec.location: unknown location "MESH_ELSEWHERE"; expected MESH_EXTERNAL or MESH_INTERNAL',
    ),
    (
        "resolution-unset",
        {"spec.resolution": DELETE},
        "spec.resolution: is unset, which Istio reads as NONE; NONE is not supported "
        "(extproc must know the endpoints it chooses between): use DNS or STATIC",
    ),
    (
        "resolution-none",
        {"spec.resolution": "NONE", "spec.endpoints": DELETE},
        "spec.resolution: NONE is not supported "
        "(extproc must know the endpoints it chooses between): use DNS or STATIC",
    ),
    (
        "dns-round-robin-with-two-endpoints",
        {"spec.resolution": "DNS_ROUND_ROBIN"},
        "spec.endpoints: there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
    ),
    (
        "dns-round-robin-without-endpoints-needs-fqdn-hosts",
        {"spec.resolution": "DNS_ROUND_ROBIN", "spec.hosts": ["*.mydb.com"], "spec.endpoints": []},
        "spec.hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode "
        "DNS_ROUND_ROBIN",
    ),
    (
        "resolution-dynamic-dns",
        {"spec.resolution": "DYNAMIC_DNS"},
        "spec.resolution: DYNAMIC_DNS is not supported "
        "(it resolves wildcard hosts per request): use DNS or STATIC",
    ),
    (
        "resolution-unknown",
        {"spec.resolution": "dns"},
        'spec.resolution: unknown resolution "dns"; '
        "expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS",
    ),
    (
        "static-endpoint-hostname",
        {"spec.resolution": "STATIC", "spec.endpoints[1].address": "10.0.0.2"},
        'spec.endpoints[0].address: endpoint address "east.example.com" is not a valid IP address',
    ),
    (
        "dns-endpoint-invalid-name",
        {"spec.endpoints[0].address": "east_1.example.com"},
        'spec.endpoints[0].address: endpoint address "east_1.example.com" '
        "is not a valid FQDN or an IP address",
    ),
    (
        "endpoint-address-missing",
        {"spec.endpoints[0].address": DELETE},
        "spec.endpoints[0].address: is required",
    ),
    (
        "endpoint-unix-socket",
        {"spec.endpoints[0].address": "unix:///var/run/db.sock"},
        "spec.endpoints[0].address: unix domain socket endpoints are not supported",
    ),
    (
        "endpoint-port-out-of-range",
        {"spec.endpoints[0].ports.http": 0},
        "spec.endpoints[0].ports.http: port number 0 must be in the range 1..65535",
    ),
    (
        "endpoint-port-string",
        {"spec.endpoints[0].ports.http": "80"},
        'spec.endpoints[0].ports.http: must be an integer, got "80"',
    ),
    (
        "endpoint-weight-negative",
        {"spec.endpoints[0].weight": -1},
        "spec.endpoints[0].weight: weight -1 < 0",
    ),
    (
        "endpoint-locality-not-a-string",
        {"spec.endpoints[0].locality": 5},
        "spec.endpoints[0].locality: must be a string, got 5",
    ),
    (
        "workload-selector-with-endpoints",
        {"spec.workloadSelector": {"labels": {"app": "db"}}},
        "spec.workloadSelector: "
        "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
    ),
    (
        "dns-without-endpoints-needs-fqdn-hosts",
        {"spec.hosts": ["*.mydb.com"], "spec.endpoints": DELETE},
        "spec.hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode DNS",
    ),
    (
        "several-hosts-with-a-tcp-port",
        {"spec.hosts": ["a.com", "b.com"], "spec.ports[0].protocol": "TCP"},
        "spec.ports[0].protocol: multiple hosts provided with non-HTTP, non-TLS ports",
    ),
    (
        "several-hosts-with-an-unset-protocol",
        {"spec.hosts": ["a.com", "b.com"], "spec.ports[0].protocol": DELETE},
        "spec.ports[0].protocol: multiple hosts provided with non-HTTP, non-TLS ports",
    ),
    ("spec-missing", {"spec": DELETE}, "spec: is required"),
    ("spec-not-a-mapping", {"spec": ["x"]}, "spec: must be a mapping, got a list"),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in SE_ERRORS]
)
def test_service_entry_error_names_document_path_and_rule(
    changes: dict[str, object], expected: str
) -> None:
    assert _errors(_patched(SE, changes)) == [SE_AT + expected]


def test_duplicate_port_number_and_name_are_both_reported() -> None:
    ports = [
        {"number": 80, "name": "http", "protocol": "HTTP"},
        {"number": 80, "name": "http", "protocol": "HTTP"},
    ]
    assert _errors(_patched(SE, {"spec.ports": ports})) == [
        SE_AT + 'spec.ports[1].name: service entry port name "http" already defined',
        SE_AT + "spec.ports[1].number: service entry port 80 already defined",
    ]


def test_every_error_of_a_document_is_reported() -> None:
    changes = {
        "spec.ports[0].number": 0,
        "spec.resolution": "NONE",
        "spec.endpoints[1].weight": -2,
    }
    assert _errors(_patched(SE, changes)) == [
        SE_AT + "spec.ports[0].number: port number 0 must be in the range 1..65535",
        SE_AT + "spec.resolution: NONE is not supported "
        "(extproc must know the endpoints it chooses between): use DNS or STATIC",
        SE_AT + "spec.endpoints[1].weight: weight -2 < 0",
    ]


def test_missing_name_is_an_error_and_the_document_is_named_by_kind() -> None:
    assert _errors(_patched(SE, {"metadata": DELETE})) == [
        "cfg.yaml: ServiceEntry (document 1): metadata.name: is required"
    ]


@pytest.mark.parametrize(
    ("api_version", "expected"),
    [
        pytest.param(
            "networking.istio.io/v2",
            'apiVersion: "networking.istio.io/v2" is not supported for ServiceEntry; use '
            "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            id="unknown-version",
        ),
        pytest.param(
            "v1",
            'apiVersion: "v1" is not supported for ServiceEntry; use '
            "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            id="wrong-group",
        ),
        pytest.param(DELETE, "apiVersion: is required", id="missing"),
    ],
)
def test_unsupported_api_version_of_a_known_kind_is_an_error(
    api_version: object, expected: str
) -> None:
    assert _errors(_patched(SE, {"apiVersion": api_version})) == [SE_AT + expected]


def test_the_rest_of_an_object_is_checked_despite_a_wrong_api_version() -> None:
    se = _patched(SE, {"apiVersion": "networking.istio.io/v2", "spec.ports[0].number": 0})
    assert _errors(se) == [
        SE_AT + 'apiVersion: "networking.istio.io/v2" is not supported for ServiceEntry; use '
        "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
        SE_AT + "spec.ports[0].number: port number 0 must be in the range 1..65535",
    ]


def test_missing_kind_is_an_error() -> None:
    assert _errors(_patched(SE, {"kind": DELETE})) == [
        "cfg.yaml: document 1: kind: is required",
        "cfg.yaml: no ServiceEntry in this file (read: 1 without a kind): nothing to serve",
    ]


# ---------------------------------------------------------------------------------------------
# DestinationRule errors

DR_ERRORS = [
    ("host-missing", {"spec.host": DELETE}, "spec.host: is required"),
    (
        "host-invalid",
        {"spec.host": "my_db.com"},
        'spec.host: domain name "my_db.com" invalid (label "my_db" invalid)',
    ),
    (
        "traffic-policy-empty",
        {"spec.trafficPolicy": {}},
        "spec.trafficPolicy: traffic policy must have at least one field",
    ),
    (
        "passthrough",
        {"spec.trafficPolicy.loadBalancer.simple": "PASSTHROUGH"},
        "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported (it forwards to "
        "the caller's original destination; there is no endpoint to choose)",
    ),
    (
        "simple-unknown",
        {"spec.trafficPolicy.loadBalancer.simple": "FASTEST"},
        'spec.trafficPolicy.loadBalancer.simple: unknown load balancer "FASTEST"; expected one '
        "of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST",
    ),
    (
        "two-hash-keys",
        {
            f"{LB}.simple": DELETE,
            f"{LB}.consistentHash": {"httpHeaderName": "x-user", "useSourceIp": True},
        },
        f"{LB}.consistentHash: only one hash key can be set, not httpHeaderName, useSourceIp",
    ),
    (
        "empty-header-name",
        {f"{LB}.simple": DELETE, f"{LB}.consistentHash": {"httpHeaderName": ""}},
        f"{LB}.consistentHash.httpHeaderName: must not be empty",
    ),
    (
        "cookie-without-name",
        {f"{LB}.simple": DELETE, f"{LB}.consistentHash": {"httpCookie": {"ttl": "0s"}}},
        f"{LB}.consistentHash.httpCookie.name: name required for HttpCookie",
    ),
    (
        "cookie-attribute-twice",
        {
            f"{LB}.simple": DELETE,
            f"{LB}.consistentHash": {
                "httpCookie": {
                    "name": "c",
                    "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "SameSite"}],
                }
            },
        },
        f"{LB}.consistentHash.httpCookie.attributes[1].name: duplicate cookie attribute name: "
        "SameSite",
    ),
    (
        "ring-too-large",
        {
            f"{LB}.simple": DELETE,
            f"{LB}.consistentHash": {
                "httpHeaderName": "x",
                "ringHash": {"minimumRingSize": 8388609},
            },
        },
        f"{LB}.consistentHash.ringHash.minimumRingSize: 8388609 > 8388608, the largest ring "
        "Envoy takes",
    ),
    (
        "maglev-table-not-prime",
        {
            f"{LB}.simple": DELETE,
            f"{LB}.consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 1000}},
        },
        f"{LB}.consistentHash.maglev.tableSize: tableSize must be a prime number for maglev",
    ),
    (
        "ring-and-maglev",
        {
            f"{LB}.simple": DELETE,
            f"{LB}.consistentHash": {
                "httpHeaderName": "x",
                "ringHash": {"minimumRingSize": 1024},
                "maglev": {"tableSize": 65537},
            },
        },
        f"{LB}.consistentHash: only one of ringHash or maglev can be set",
    ),
    (
        "warmup-without-duration",
        {f"{LB}.warmup": {"aggression": 2}},
        f"{LB}.warmup.duration: duration is required",
    ),
    (
        "warmup-aggression-zero",
        {f"{LB}.warmup": {"duration": "10s", "aggression": 0}},
        f"{LB}.warmup.aggression: aggression should be greater than 0",
    ),
    (
        "warmup-minimum-over-100",
        {f"{LB}.warmup": {"duration": "10s", "minimumPercent": 101}},
        f"{LB}.warmup.minimumPercent: minimumPercent value should be less than or equal to 100",
    ),
    (
        "consecutive-5xx-negative",
        {f"{OD}.consecutive5xxErrors": -1},
        f"{OD}.consecutive5xxErrors: must be 0 or more, got -1",
    ),
    (
        "consecutive-5xx-string",
        {f"{OD}.consecutive5xxErrors": "1"},
        f'{OD}.consecutive5xxErrors: must be an integer, got "1"',
    ),
    ("interval-not-a-duration", {f"{OD}.interval": "1x"}, f'{OD}.interval: "1x" is not a duration'),
    (
        "base-ejection-time-not-a-duration",
        {f"{OD}.baseEjectionTime": "1x"},
        f'{OD}.baseEjectionTime: "1x" is not a duration',
    ),
    (
        "interval-without-unit",
        {f"{OD}.interval": 15},
        f'{OD}.interval: 15 is not a duration (write a string with a unit, e.g. "15s")',
    ),
    (
        "interval-a-mapping",
        {f"{OD}.interval": {"seconds": 15}},
        f"{OD}.interval: a mapping is not a duration",
    ),
    (
        "interval-below-1ms",
        {f"{OD}.interval": "999us"},
        f'{OD}.interval: "999us" is too short: duration must be at least 1ms',
    ),
    (
        "base-ejection-time-zero",
        {f"{OD}.baseEjectionTime": "0s"},
        f'{OD}.baseEjectionTime: "0s" is too short: duration must be at least 1ms',
    ),
    (
        "base-ejection-time-negative",
        {f"{OD}.baseEjectionTime": "-1m"},
        f'{OD}.baseEjectionTime: "-1m" is too short: duration must be at least 1ms',
    ),
    (
        "interval-sub-millisecond",
        {f"{OD}.interval": "1.5ms"},
        f'{OD}.interval: "1.5ms": only durations to ms precision are supported',
    ),
    (
        "max-ejection-percent-above-100",
        {f"{OD}.maxEjectionPercent": 101},
        f"{OD}.maxEjectionPercent: percentage 101 is not in range 0..100",
    ),
    (
        "min-health-percent-negative",
        {f"{OD}.minHealthPercent": -1},
        f"{OD}.minHealthPercent: percentage -1 is not in range 0..100",
    ),
    (
        "local-origin-failures-without-split",
        {f"{OD}.consecutiveLocalOriginFailures": 3},
        f"{OD}.consecutiveLocalOriginFailures: outlier detection consecutive local origin "
        "failures is specified, but split external local origin errors is set to false",
    ),
    (
        "enabled-not-a-boolean",
        {f"{LLS}.enabled": "true"},
        f'{LLS}.enabled: must be true or false, got "true"',
    ),
    (
        "failover-same-region",
        {f"{LLS}.failover": [{"from": "us-east1", "to": "us-east1"}]},
        f"{LLS}.failover[0]: locality lb failover settings must specify different regions",
    ),
    (
        "failover-zone",
        {f"{LLS}.failover": [{"from": "us-east1/a", "to": "us-west"}]},
        f"{LLS}.failover[0]: locality lb failover only specify region",
    ),
    (
        "failover-wildcard",
        {f"{LLS}.failover": [{"from": "us-east1", "to": "*"}]},
        f"{LLS}.failover[0]: locality lb failover region should not contain '*' wildcard",
    ),
    (
        "failover-from-missing",
        {f"{LLS}.failover": [{"to": "us-west"}]},
        f"{LLS}.failover[0].from: is required",
    ),
    (
        "distribute-and-failover",
        {f"{LLS}.distribute": [{"from": "us-east1/*", "to": {"us-west/*": 100}}]},
        f"{LLS}: can not simultaneously specify 'distribute' and 'failover'",
    ),
    (
        "failover-with-topology-label-priority",
        {f"{LLS}.failoverPriority": ["topology.istio.io/network", "topology.kubernetes.io/zone"]},
        f"{LLS}.failoverPriority[1]: can not simultaneously set 'failover' and topology label "
        "'topology.kubernetes.io/zone' in 'failover_priority'",
    ),
]


def test_a_maglev_table_without_a_size_gets_both_of_istios_errors() -> None:
    # validateLoadBalancer: 0 is "not set", and isPrime(0) is false.
    changes = {
        f"{LB}.simple": DELETE,
        f"{LB}.consistentHash": {"httpHeaderName": "x", "maglev": {}},
    }
    where = f"{DR_AT}{LB}.consistentHash.maglev.tableSize: "
    assert _errors(SE, _patched(DR, changes)) == [
        where + "tableSize must be set for maglev",
        where + "tableSize must be a prime number for maglev",
    ]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in DR_ERRORS]
)
def test_destination_rule_error_names_document_path_and_rule(
    changes: dict[str, object], expected: str
) -> None:
    assert _errors(SE, _patched(DR, changes)) == [DR_AT + expected]


def test_simple_and_consistent_hash_together_are_an_error() -> None:
    dr = _patched(DR, {"spec.trafficPolicy.loadBalancer.consistentHash": {"useSourceIp": True}})
    assert _errors(SE, dr) == [
        DR_AT + "spec.trafficPolicy.loadBalancer: only one of simple or consistentHash can be set"
    ]


DISTRIBUTE_ERRORS = [
    (
        "weight-zero",
        [{"from": "a/*", "to": {"b/*": 0, "c/*": 100}}],
        f"{LLS}.distribute[0].to: locality weight must be in range [1, 100]",
    ),
    (
        "weights-not-100",
        [{"from": "a/*", "to": {"b/*": 50, "c/*": 40}}],
        f"{LLS}.distribute[0].to: total locality weight 90 != 100",
    ),
    (
        "wildcard-not-at-end",
        [{"from": "a/*", "to": {"*/b": 100}}],
        f"{LLS}.distribute[0].to: locality */b wildcard '*' number can not exceed 1 "
        "and must be in the end",
    ),
    (
        "empty-segment",
        [{"from": "a//b", "to": {"c": 100}}],
        f"{LLS}.distribute: locality a//b must not contain empty region/zone/subzone info",
    ),
    (
        "overlapping-targets",
        [{"from": "a", "to": {"b": 50, "b/z1": 50}}],
        f"{LLS}.distribute[0].to: locality b/z1 overlap with previous specified ones",
    ),
    (
        "overlapping-sources",
        [{"from": "a/*", "to": {"b": 100}}, {"from": "a/z1", "to": {"c": 100}}],
        f"{LLS}.distribute: locality a/z1 overlap with previous specified ones",
    ),
]


@pytest.mark.parametrize(
    ("distribute", "expected"), [pytest.param(d, e, id=i) for i, d, e in DISTRIBUTE_ERRORS]
)
def test_distribute_is_validated(distribute: list[dict[str, Any]], expected: str) -> None:
    dr = _patched(DR, {f"{LLS}.failover": DELETE, f"{LLS}.distribute": distribute})
    assert _errors(SE, dr) == [DR_AT + expected]


def test_errors_of_every_document_are_reported_together() -> None:
    se = _patched(SE, {"spec.ports[0].number": 0})
    dr = _patched(DR, {f"{OD}.maxEjectionPercent": 200})
    assert _errors(se, dr) == [
        SE_AT + "spec.ports[0].number: port number 0 must be in the range 1..65535",
        DR_AT + f"{OD}.maxEjectionPercent: percentage 200 is not in range 0..100",
    ]


# ---------------------------------------------------------------------------------------------
# Warnings

NOT_YET: Final = "not supported yet, ignored"

SE_WARNINGS = [
    ("addresses", {"spec.addresses": ["10.0.0.1"]}, f"spec.addresses: {NOT_YET}"),
    ("export-to", {"spec.exportTo": ["."]}, f"spec.exportTo: {NOT_YET}"),
    (
        "workload-selector",
        {"spec.workloadSelector": {"labels": {"app": "db"}}, "spec.endpoints": DELETE},
        f"spec.workloadSelector: {NOT_YET}",
    ),
    (
        "endpoint-service-account",
        {"spec.endpoints[1].serviceAccount": "sa"},
        f"spec.endpoints[1].serviceAccount: {NOT_YET}",
    ),
    (
        "endpoint-port-not-declared",
        {"spec.endpoints[0].ports": {"grpc": 90}},
        "spec.endpoints[0].ports.grpc: endpoint port 90 is not defined by the service entry "
        '(no port named "grpc"; declared: http), ignored',
    ),
    (
        "partial-wildcard-host",
        {"spec.hosts": ["mydb.com", "*db.com"]},
        'spec.hosts[1]: partial wildcard "*db.com" not allowed',
    ),
    (
        "static-without-endpoints",
        {"spec.resolution": "STATIC", "spec.endpoints": DELETE},
        "spec.endpoints: STATIC resolution without endpoints: no request can be served",
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in SE_WARNINGS]
)
def test_service_entry_field_we_do_not_implement_is_a_warning(
    changes: dict[str, object], expected: str
) -> None:
    assert SE_AT + expected in _texts(_policy(_patched(SE, changes), DR).warnings)


DR_WARNINGS = [
    (
        "tunnel",
        {"spec.trafficPolicy.tunnel": {"targetHost": "a", "targetPort": 1}},
        f"spec.trafficPolicy.tunnel: {NOT_YET}",
    ),
    (
        "proxy-protocol",
        {"spec.trafficPolicy.proxyProtocol": {}},
        f"spec.trafficPolicy.proxyProtocol: {NOT_YET}",
    ),
    ("export-to", {"spec.exportTo": ["."]}, f"spec.exportTo: {NOT_YET}"),
    (
        "workload-selector",
        {"spec.workloadSelector": {"matchLabels": {"a": "b"}}},
        f"spec.workloadSelector: {NOT_YET}",
    ),
    (
        "warmup-with-random",
        {
            "spec.trafficPolicy.loadBalancer.simple": "RANDOM",
            "spec.trafficPolicy.loadBalancer.warmup": {"duration": "1m"},
        },
        "spec.trafficPolicy.loadBalancer.warmup: has no effect with RANDOM: Istio applies "
        "slow start to ROUND_ROBIN and LEAST_REQUEST only",
    ),
    (
        "consistent-hash-without-key",
        {
            "spec.trafficPolicy.loadBalancer.simple": DELETE,
            "spec.trafficPolicy.loadBalancer.consistentHash": {"ringHash": {}},
        },
        "spec.trafficPolicy.loadBalancer.consistentHash: no hash key (httpHeaderName, "
        "httpCookie, useSourceIp or httpQueryParameterName): Envoy picks at random",
    ),
    (
        "minimum-ring-size-deprecated",
        {
            "spec.trafficPolicy.loadBalancer.simple": DELETE,
            "spec.trafficPolicy.loadBalancer.consistentHash": {
                "httpHeaderName": "x-user",
                "minimumRingSize": 2048,
            },
        },
        "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: consistent hash "
        "MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
    ),
    (
        "zone-aware",
        {f"{LLS}": DELETE, "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting": {}},
        f"spec.trafficPolicy.loadBalancer.zoneAwareLbSetting: {NOT_YET}",
    ),
    (
        "consecutive-errors-deprecated",
        {f"{OD}.consecutiveErrors": 5},
        f"{OD}.consecutiveErrors: deprecated by Istio (use consecutive5xxErrors), ignored",
    ),
    (
        "least-conn-deprecated",
        {"spec.trafficPolicy.loadBalancer.simple": "LEAST_CONN"},
        "spec.trafficPolicy.loadBalancer.simple: LEAST_CONN is deprecated; "
        "Istio uses LEAST_REQUEST for it, and so does extproc",
    ),
    (
        "failover-without-outlier-detection",
        {f"{OD}": DELETE},
        f"{LLS}.failover: outlier detection policy must be provided for failover: without "
        "outlierDetection Istio does not fail over (it will not take effect), and neither does "
        "extproc",
    ),
    (
        "failover-priority-without-outlier-detection",
        {f"{OD}": DELETE, f"{LLS}.failover": DELETE, f"{LLS}.failoverPriority": ["a"]},
        f"{LLS}.failoverPriority: outlier detection policy must be provided for failover: without "
        "outlierDetection Istio does not fail over (it will not take effect), and neither does "
        "extproc",
    ),
    (
        "failover-while-disabled",
        {f"{LLS}.enabled": False},
        f"{LLS}.failover: has no effect: localityLbSetting.enabled is false",
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in DR_WARNINGS]
)
def test_destination_rule_field_we_do_not_implement_is_a_warning(
    changes: dict[str, object], expected: str
) -> None:
    assert DR_AT + expected in _texts(_policy(SE, _patched(DR, changes)).warnings)


# ---------------------------------------------------------------------------------------------
# Names Istio's API does not have: errors, as the API server (strict field validation) makes them

UNKNOWN_SE_FIELDS = [
    ("spec-field", {"spec.host": "mydb.com"}, 'spec.host: unknown field; did you mean "hosts"?'),
    (
        "port-field",
        {"spec.ports[0].tls": {"mode": "SIMPLE"}},
        "spec.ports[0].tls: unknown field; expected one of number, protocol, name, targetPort",
    ),
    (
        "top-level-field",
        {"extra": 1},
        "extra: unknown field; expected one of apiVersion, kind, metadata, spec, status",
    ),
    (
        "endpoint-field-case",
        {"spec.endpoints[1].Locality": "us-west"},
        'spec.endpoints[1].Locality: unknown field; did you mean "locality"?',
    ),
    (
        "metadata-field",
        {"metadata.lables": {"app": "db"}},
        'metadata.lables: unknown field; did you mean "labels"?',
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in UNKNOWN_SE_FIELDS]
)
def test_unknown_service_entry_field_is_an_error_with_a_suggestion(
    changes: dict[str, object], expected: str
) -> None:
    assert _errors(_patched(SE, changes), DR) == [SE_AT + expected]


UNKNOWN_DR_FIELDS = [
    (
        "outlier-field-typo",
        {f"{OD}.consecutive5xxError": 3},
        f'{OD}.consecutive5xxError: unknown field; did you mean "consecutive5xxErrors"?',
    ),
    (
        "failover-field",
        {f"{LLS}.failover[0].weight": 3},
        f"{LLS}.failover[0].weight: unknown field; expected one of from, to",
    ),
    (
        "inside-a-field-extproc-ignores",
        {"spec.subsets": [{"name": "v1", "trafficPolicy": {"tsl": {"mode": "SIMPLE"}}}]},
        'spec.subsets[0].trafficPolicy.tsl: unknown field; did you mean "tls"?',
    ),
    (
        "connection-pool-typo",
        {"spec.trafficPolicy.connectionPool": {"http": {"maxRetires": 3}}},
        "spec.trafficPolicy.connectionPool.http.maxRetires: unknown field; did you mean "
        '"maxRetries"?',
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in UNKNOWN_DR_FIELDS]
)
def test_unknown_destination_rule_field_is_an_error_with_a_suggestion(
    changes: dict[str, object], expected: str
) -> None:
    assert DR_AT + expected in _errors(SE, _patched(DR, changes))


@pytest.mark.parametrize("misspelt", ["traficPolicy", "TrafficPolicy"])
def test_a_misspelt_traffic_policy_is_an_error_not_a_policy_dropped(misspelt: str) -> None:
    dr = copy.deepcopy(DR)
    dr["spec"][misspelt] = dr["spec"].pop("trafficPolicy")
    assert _errors(SE, dr) == [
        DR_AT + f'spec.{misspelt}: unknown field; did you mean "trafficPolicy"?'
    ]


def test_a_misspelt_spec_is_reported_as_such_and_as_missing() -> None:
    se = copy.deepcopy(SE)
    se["spc"] = se.pop("spec")
    assert _errors(se, DR)[:2] == [
        SE_AT + 'spc: unknown field; did you mean "spec"?',
        SE_AT + "spec: is required",
    ]


def test_every_unknown_field_is_reported_in_the_order_written() -> None:
    dr = _patched(DR, {f"{OD}.intervall": "1s", "spec.hots": "x", f"{OD}.baseEjection": "1s"})
    assert _errors(SE, dr) == [
        DR_AT + f'{OD}.intervall: unknown field; did you mean "interval"?',
        DR_AT + f'{OD}.baseEjection: unknown field; did you mean "baseEjectionTime"?',
        DR_AT + 'spec.hots: unknown field; did you mean "host"?',
    ]


def test_unknown_fields_of_a_traffic_policy_do_not_make_it_non_empty() -> None:
    dr = _patched(DR, {"spec.trafficPolicy": {"outlierDetectoin": {"interval": "1s"}}})
    with pytest.raises(ConfigError) as caught:
        _policy(SE, dr)
    assert [str(p) for p in caught.value.problems] == [
        DR_AT
        + 'spec.trafficPolicy.outlierDetectoin: unknown field; did you mean "outlierDetection"?',
        DR_AT + "spec.trafficPolicy: traffic policy must have at least one field",
    ]


def test_unsupported_fields_alone_make_a_traffic_policy_non_empty() -> None:
    dr = _patched(DR, {"spec.trafficPolicy": {"proxyProtocol": {}}})
    assert _texts(_policy(SE, dr).warnings) == (
        DR_AT + f"spec.trafficPolicy.proxyProtocol: {NOT_YET}",
    )


def test_warnings_follow_the_order_fields_are_written_in() -> None:
    se = _patched(SE, {"spec.exportTo": ["."]})
    se["spec"] = {"addresses": ["10.0.0.1"], **se["spec"]}
    warnings = _texts(_policy(se, DR).warnings)
    assert warnings == (
        SE_AT + f"spec.addresses: {NOT_YET}",
        SE_AT + f"spec.exportTo: {NOT_YET}",
    )


def test_null_means_unset_and_is_not_warned_about() -> None:
    se = _patched(SE, {"spec.addresses": None, "spec.endpoints[0].weight": None})
    dr = _patched(DR, {"spec.trafficPolicy.tls": None})
    assert _texts(_policy(se, dr).warnings) == ()


def test_kubernetes_metadata_and_status_are_not_warned_about() -> None:
    meta = {
        "name": "db",
        "namespace": "prod",
        "labels": {"app": "db"},
        "annotations": {"a": "b"},
        "resourceVersion": "12",
        "uid": "x",
    }
    se = _patched(SE, {"metadata": meta, "status": {"conditions": []}})
    assert _texts(_policy(se, DR).warnings) == ()


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        pytest.param("networking.istio.io/v1beta1", "Gateway", id="gateway"),
        pytest.param("networking.istio.io/v1", "Sidecar", id="sidecar"),
        pytest.param("networking.istio.io/v1alpha3", "WorkloadEntry", id="workload-entry"),
        pytest.param("networking.istio.io/v1alpha3", "EnvoyFilter", id="envoy-filter"),
    ],
)
def test_other_istio_networking_kinds_are_ignored_with_a_warning(
    api_version: str, kind: str
) -> None:
    other = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "db"}}
    policy = _policy(SE, DR, other)
    assert _texts(policy.warnings) == (
        f'cfg.yaml: {kind} "db" (document 3): kind: "{kind}" is not supported by extproc, ignored',
    )
    assert len(policy.services) == 1


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param(
            "ServiceEnrty",
            '"ServiceEnrty" is not a kind of networking.istio.io; did you mean "ServiceEntry"?',
            id="typo",
        ),
        pytest.param(
            "Service",
            '"Service" is not a kind of networking.istio.io; did you mean "ServiceEntry"?',
            id="kubernetes-kind-in-istio-group",
        ),
        pytest.param(
            "destinationrule",
            '"destinationrule" is not a kind of networking.istio.io; did you mean '
            '"DestinationRule"?',
            id="case",
        ),
        pytest.param(
            "Mesh",
            '"Mesh" is not a kind of networking.istio.io (its kinds: DestinationRule, '
            "EnvoyFilter, Gateway, ProxyConfig, ServiceEntry, Sidecar, VirtualService, "
            "WorkloadEntry, WorkloadGroup)",
            id="no-near-kind",
        ),
    ],
)
def test_unknown_kind_of_the_istio_networking_group_is_an_error_with_a_suggestion(
    kind: str, expected: str
) -> None:
    other = {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": "x"}}
    assert _errors(SE, DR, other) == [f'cfg.yaml: {kind} "x" (document 3): kind: {expected}']


def test_a_misspelt_service_entry_kind_is_an_error_and_leaves_no_service_entry() -> None:
    assert _errors(_patched(SE, {"kind": "ServiceEnrty"}), DR) == [
        'cfg.yaml: ServiceEnrty "db" (document 1): kind: "ServiceEnrty" is not a kind of '
        'networking.istio.io; did you mean "ServiceEntry"?',
        "cfg.yaml: no ServiceEntry in this file (read: 1 DestinationRule, 1 ServiceEnrty): "
        "nothing to serve",
    ]


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        pytest.param(
            "networking.istio.oi/v1",
            "Gateway",
            'apiVersion: "networking.istio.oi/v1" is not an API version; did you mean '
            '"networking.istio.io/v1"?',
            id="group-typo",
        ),
        pytest.param(
            "networking.istio.io",
            "Gateway",
            'apiVersion: "networking.istio.io" is not an API version; did you mean '
            '"networking.istio.io/v1"?',
            id="no-version",
        ),
        pytest.param(
            "v1",
            "Gateway",
            'apiVersion: "v1" has no Gateway; did you mean "networking.istio.io/v1"?',
            id="group-left-out",
        ),
        pytest.param(
            "networking.istio.io/v1",
            "EnvoyFilter",
            'apiVersion: "networking.istio.io/v1" is not served for EnvoyFilter; use '
            "networking.istio.io/v1alpha3",
            id="version-the-kind-lacks",
        ),
    ],
)
def test_wrong_api_version_of_an_istio_networking_kind_is_an_error(
    api_version: str, kind: str, expected: str
) -> None:
    other = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    assert _errors(SE, DR, other) == [f'cfg.yaml: {kind} "x" (document 3): {expected}']


def test_a_service_entry_group_typo_gets_a_suggestion() -> None:
    assert _errors(_patched(SE, {"apiVersion": "networking.isito.io/v1"}), DR) == [
        SE_AT + 'apiVersion: "networking.isito.io/v1" is not supported for ServiceEntry; use '
        "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3; "
        'did you mean "networking.istio.io/v1"?'
    ]


def _object(api_version: str, kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}


def test_objects_of_other_api_groups_are_skipped_with_one_warning_that_counts_them() -> None:
    others = [
        _object("apps/v1", "Deployment", "app"),
        _object("v1", "Service", "app"),
        _object("v1", "ConfigMap", "conf"),
        _object("v1", "Service", "db"),
        _object("gateway.networking.k8s.io/v1", "Gateway", "gw"),
        _object("networking.k8s.io/v1", "Ingress", "in"),
        _object("security.istio.io/v1", "PeerAuthentication", "pa"),
    ]
    policy = _policy(SE, *others, DR)
    assert _texts(policy.warnings) == (
        "cfg.yaml: 7 objects of other API groups skipped (2 Service, 1 ConfigMap, "
        "1 Deployment, 1 Gateway, 1 Ingress, 1 PeerAuthentication): "
        "extproc reads networking.istio.io only",
    )
    assert len(policy.services) == 1


def test_one_object_of_another_api_group_is_counted_in_the_singular() -> None:
    policy = _policy(SE, DR, _object("v1", "Namespace", "prod"))
    assert _texts(policy.warnings) == (
        "cfg.yaml: 1 object of another API group skipped (1 Namespace): "
        "extproc reads networking.istio.io only",
    )


@pytest.mark.parametrize(
    ("api_version", "expected"),
    [
        pytest.param(DELETE, "apiVersion: is required", id="missing"),
        pytest.param(1, "apiVersion: must be a string, got 1", id="not-a-string"),
    ],
)
def test_an_object_of_another_kind_needs_an_api_version(api_version: object, expected: str) -> None:
    other = _patched(_object("v1", "Service", "x"), {"apiVersion": api_version})
    assert _errors(SE, DR, other) == [f'cfg.yaml: Service "x" (document 3): {expected}']


def test_a_kind_that_is_not_a_string_is_an_error() -> None:
    assert _errors(SE, DR, _object("v1", "Service", "x") | {"kind": ["Service"]}) == [
        "cfg.yaml: document 3: kind: must be a string, got a list"
    ]


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("15s", 15_000_000_000),
        ("1m", 60_000_000_000),
        ("500ms", 500_000_000),
        ("1m30s", 90_000_000_000),
        ("1h", 3_600_000_000_000),
        ("1.5h", 5_400_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("0", 0),
        ("0s", 0),
        ("+5s", 5_000_000_000),
        ("-5s", -5_000_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("1µs", 1_000),
        ("1μs", 1_000),
        ("2562047h47m16.854775807s", 2**63 - 1),
    ],
)
def test_go_durations_parse_to_nanoseconds(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize(
    "text",
    [
        "1x",
        "15",
        "",
        "s",
        ".s",
        "1S",
        "1 s",
        " 1s",
        "1s ",
        "--1s",
        "1d",
        "1m-30s",
        "2562047h47m16.854775808s",
    ],
)
def test_other_strings_are_not_durations(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(0, 1000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_composed_durations_add_up(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    expected = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + millis * 1_000_000
    assert parse_duration(text) == expected


# ---------------------------------------------------------------------------------------------
# distribute sources and targets (validateLocalities)


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param(["us-east/a", "us-east/*"], id="broader-wildcard-after-narrower"),
        pytest.param(["us-east", "*"], id="catch-all-last"),
        pytest.param(["us-east/a/1", "us-east/a/*"], id="subzone-then-zone-wildcard"),
        pytest.param(["us-east/a", "us-east/b", "us-west"], id="disjoint"),
    ],
)
def test_distribute_sources_may_widen_in_order_as_istio_allows(sources: list[str]) -> None:
    rules = [{"from": src, "to": {"us-west": 100}} for src in sources]
    dr = _patched(DR, {f"{LLS}.failover": DELETE, f"{LLS}.distribute": rules})
    assert _texts(_policy(SE, dr).warnings) == ()


@pytest.mark.parametrize(
    ("sources", "overlapping"),
    [
        pytest.param(["*", "us-east"], "us-east", id="catch-all-first"),
        pytest.param(["us-east/a", "us-east"], "us-east", id="region-after-its-zone"),
        pytest.param(["us-east/a/1", "us-east/a"], "us-east/a", id="zone-after-its-subzone"),
        pytest.param(["us-east/*", "us-east/a/1"], "us-east/a/1", id="covered-by-wildcard"),
        pytest.param(["us-east/a", "us-east/a"], "us-east/a", id="repeated"),
    ],
)
def test_distribute_sources_covered_by_an_earlier_one_are_an_error(
    sources: list[str], overlapping: str
) -> None:
    rules = [{"from": src, "to": {"us-west": 100}} for src in sources]
    dr = _patched(DR, {f"{LLS}.failover": DELETE, f"{LLS}.distribute": rules})
    assert _errors(SE, dr) == [
        DR_AT + f"{LLS}.distribute: locality {overlapping} overlap with previous specified ones"
    ]


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param({"us-east/a": 50, "us-east/*": 50}, id="narrower-first"),
        pytest.param({"us-east/*": 50, "us-east/a": 50}, id="wildcard-first"),
        pytest.param({"us-east": 50, "*": 50}, id="catch-all"),
    ],
)
def test_overlapping_distribute_targets_are_an_error_in_any_order(
    targets: dict[str, int],
) -> None:
    # Istio checks the target map in Go's random order: it would accept these only sometimes.
    second = list(targets)[1]
    rules = [{"from": "us-east", "to": targets}]
    dr = _patched(DR, {f"{LLS}.failover": DELETE, f"{LLS}.distribute": rules})
    assert _errors(SE, dr) == [
        DR_AT + f"{LLS}.distribute[0].to: locality {second} overlap with previous specified ones"
    ]


def test_distribute_failover_priority_and_endpoint_network_are_not_warned_about() -> None:
    se = _patched(SE, {"spec.endpoints[0].network": "n1"})
    dr = _patched(
        DR,
        {
            f"{LLS}.failover": DELETE,
            f"{LLS}.failoverPriority": ["topology.istio.io/network"],
        },
    )
    assert _texts(_policy(se, dr).warnings) == ()
    dr = _patched(
        DR,
        {f"{LLS}.failover": DELETE, f"{LLS}.distribute": [{"from": "a/*", "to": {"b/*": 100}}]},
    )
    assert _texts(_policy(SE, dr).warnings) == ()


# ---------------------------------------------------------------------------------------------
# portLevelSettings and connectionPool (validatePortTrafficPolicies, validateConnectionPool)

PLS: Final = "spec.trafficPolicy.portLevelSettings"
POOL: Final = "spec.trafficPolicy.connectionPool"

PORT_LEVEL_ERRORS = [
    (
        "port-missing",
        [{"outlierDetection": {"interval": "1s"}}],
        [f"{PLS}[0].port: portTrafficPolicy must have valid port"],
    ),
    (
        "no-field",
        [{"port": {"number": 80}}],
        [f"{PLS}[0]: port traffic policy must have at least one field"],
    ),
    (
        "port-missing-and-no-field",
        [{"tls": None}],
        [
            f"{PLS}[0].port: portTrafficPolicy must have valid port",
            f"{PLS}[0]: port traffic policy must have at least one field",
        ],
    ),
    (
        "outlier-detection-checked",
        [{"port": {"number": 80}, "outlierDetection": {"interval": "0s"}}],
        [f'{PLS}[0].outlierDetection.interval: "0s" is too short: duration must be at least 1ms'],
    ),
    (
        "load-balancer-checked",
        [{"port": {"number": 80}, "loadBalancer": {"simple": "FASTEST"}}],
        [
            f'{PLS}[0].loadBalancer.simple: unknown load balancer "FASTEST"; expected one of '
            "UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST"
        ],
    ),
    (
        "connect-timeout-checked",
        [{"port": {"number": 80}, "connectionPool": {"tcp": {"connectTimeout": "500us"}}}],
        [
            f'{PLS}[0].connectionPool.tcp.connectTimeout: "500us" is too short: '
            "duration must be at least 1ms"
        ],
    ),
    (
        "port-number-not-an-integer",
        [{"port": {"number": "80"}, "outlierDetection": {}}],
        [f'{PLS}[0].port.number: must be an integer, got "80"'],
    ),
]


@pytest.mark.parametrize(
    ("settings", "expected"), [pytest.param(s, e, id=i) for i, s, e in PORT_LEVEL_ERRORS]
)
def test_port_level_settings_are_validated_like_istio(
    settings: list[dict[str, Any]], expected: list[str]
) -> None:
    dr = _patched(DR, {PLS: settings})
    assert _errors(SE, dr) == [DR_AT + e for e in expected]


def test_port_level_settings_alone_make_a_traffic_policy_non_empty() -> None:
    entry = {"port": {"number": 80}, "outlierDetection": {"maxEjectionPercent": 100}}
    dr = _patched(DR, {"spec.trafficPolicy": {"portLevelSettings": [entry]}})
    assert _texts(_policy(SE, dr).warnings) == ()


def test_empty_port_level_settings_do_not_make_a_traffic_policy_non_empty() -> None:
    dr = _patched(DR, {"spec.trafficPolicy": {"portLevelSettings": []}})
    assert _errors(SE, dr) == [
        DR_AT + "spec.trafficPolicy: traffic policy must have at least one field"
    ]


def test_port_level_failover_needs_outlier_detection_on_the_same_level() -> None:
    failover = {"localityLbSetting": {"failover": [{"from": "us-east1", "to": "us-west"}]}}
    dr = _patched(DR, {PLS: [{"port": {"number": 80}, "loadBalancer": failover}]})
    assert _texts(_policy(SE, dr).warnings) == (
        DR_AT + f"{PLS}[0].loadBalancer.localityLbSetting.failover: outlier detection policy "
        "must be provided for failover: without outlierDetection Istio does not fail over (it "
        "will not take effect), and neither does extproc",
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            [{"port": {}, "outlierDetection": {}}],
            f"{PLS}[0].port.number: port number 0 must be in the range 1..65535; "
            "this entry never applies",
            id="port-number-unset",
        ),
        pytest.param(
            [
                {"port": {"number": 80}, "outlierDetection": {}},
                {"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}},
            ],
            f"{PLS}[1].port.number: port 80 is already set by portLevelSettings[0]; Istio "
            "applies the first entry for a port, and so does extproc: this entry is ignored",
            id="port-set-twice",
        ),
    ],
)
def test_port_level_entry_that_can_never_apply_is_a_warning(
    settings: list[dict[str, Any]], expected: str
) -> None:
    assert DR_AT + expected in _texts(_policy(SE, _patched(DR, {PLS: settings})).warnings)


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        pytest.param({}, f"{POOL}: connection pool must have at least one field", id="empty"),
        pytest.param(
            {"tcp": {"connectTimeout": "0s"}},
            f'{POOL}.tcp.connectTimeout: "0s" is too short: duration must be at least 1ms',
            id="connect-timeout-zero",
        ),
        pytest.param(
            {"tcp": {"connectTimeout": "1500us"}},
            f'{POOL}.tcp.connectTimeout: "1500us": only durations to ms precision are supported',
            id="connect-timeout-below-ms",
        ),
        pytest.param(
            {"tcp": {"connectTimeout": 5}},
            f"{POOL}.tcp.connectTimeout: 5 is not a duration (write a string with a unit, "
            'e.g. "5s")',
            id="connect-timeout-number",
        ),
        pytest.param(
            {"http": {"http1MaxPendingRequests": -1}},
            f"{POOL}.http.http1MaxPendingRequests: http1 max pending requests must be non-negative",
            id="pending-negative",
        ),
        pytest.param(
            {"http": {"http2MaxRequests": -1}},
            f"{POOL}.http.http2MaxRequests: http2 max requests must be non-negative",
            id="requests-negative",
        ),
        pytest.param(
            {"http": {"maxRequestsPerConnection": -1}},
            f"{POOL}.http.maxRequestsPerConnection: max requests per connection must be "
            "non-negative",
            id="per-connection-negative",
        ),
        pytest.param(
            {"http": {"maxRetries": -1}},
            f"{POOL}.http.maxRetries: max retries must be non-negative",
            id="retries-negative",
        ),
        pytest.param(
            {"http": {"maxConcurrentStreams": -1}},
            f"{POOL}.http.maxConcurrentStreams: max concurrent streams must be non-negative",
            id="streams-negative",
        ),
        pytest.param(
            {"tcp": {"maxConnections": -1}},
            f"{POOL}.tcp.maxConnections: max connections must be non-negative",
            id="connections-negative",
        ),
        pytest.param(
            {"tcp": {"maxConnections": 2**31}},
            f"{POOL}.tcp.maxConnections: 2147483648 is out of range for an int32 "
            "(at most 2147483647)",
            id="connections-over-int32",
        ),
        pytest.param(
            {"http": {"maxRetries": "3"}},
            f'{POOL}.http.maxRetries: must be an integer, got "3"',
            id="retries-string",
        ),
        pytest.param(
            {"http": {"idleTimeout": "0s"}},
            f'{POOL}.http.idleTimeout: "0s" is too short: duration must be at least 1ms',
            id="http-idle-zero",
        ),
        pytest.param(
            {"tcp": {"idleTimeout": "1500us"}},
            f'{POOL}.tcp.idleTimeout: "1500us": only durations to ms precision are supported',
            id="tcp-idle-below-ms",
        ),
        pytest.param(
            {"tcp": {"maxConnectionDuration": "0s"}},
            f'{POOL}.tcp.maxConnectionDuration: "0s" is too short: duration must be at least 1ms',
            id="duration-zero",
        ),
        pytest.param(
            {"http": {"h2UpgradePolicy": "ALWAYS"}},
            f'{POOL}.http.h2UpgradePolicy: Unsupported value: "ALWAYS": supported values: '
            '"DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"',
            id="h2-policy-unknown",
        ),
        pytest.param(
            {"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}},
            f"{POOL}.http.useClientProtocol: use client protocol must not be true when "
            "H2UpgradePolicy is UPGRADE",
            id="upgrade-and-client-protocol",
        ),
        pytest.param(
            {"http": {"http2KeepAlive": {"interval": "10s"}}},
            f"{POOL}.http.http2KeepAlive: http2 keepalive timeout is required",
            id="h2-keepalive-no-timeout",
        ),
        pytest.param(
            {"tcp": {"tcpKeepalive": {"probes": -1}}},
            f"{POOL}.tcp.tcpKeepalive.probes: Invalid value: -1: {POOL}.tcp.tcpKeepalive.probes"
            " in body should be greater than or equal to 0",
            id="probes-negative",
        ),
        pytest.param(
            {"tcp": {"tcpKeepalive": {"time": "0s"}}},
            f'{POOL}.tcp.tcpKeepalive.time: "0s" is too short: duration must be at least 1ms',
            id="keepalive-time-zero",
        ),
    ],
)
def test_connection_pool_is_validated_like_istio(pool: dict[str, Any], expected: str) -> None:
    assert _errors(SE, _patched(DR, {POOL: pool})) == [DR_AT + expected]


def test_connect_timeout_alone_is_accepted_without_warnings() -> None:
    dr = _patched(DR, {POOL: {"tcp": {"connectTimeout": "250ms"}}})
    assert _texts(_policy(SE, dr).warnings) == ()


def test_every_connection_pool_field_is_accepted_without_warnings() -> None:
    pool = {
        "tcp": {
            "maxConnections": 10,
            "connectTimeout": "250ms",
            "tcpKeepalive": {"probes": 3, "time": "60s", "interval": "10s"},
            "maxConnectionDuration": "1h",
            "idleTimeout": "0s",  # disables the idle timeout: no 1ms minimum
        },
        "http": {
            "http1MaxPendingRequests": 5,
            "http2MaxRequests": 100,
            "maxRequestsPerConnection": 10,
            "maxRetries": 3,
            "idleTimeout": "30s",
            "h2UpgradePolicy": "UPGRADE",
            "maxConcurrentStreams": 50,
            "http2KeepAlive": {"interval": "10s", "timeout": "3s"},
        },
    }
    assert _texts(_policy(SE, _patched(DR, {POOL: pool})).warnings) == ()


def test_dns_round_robin_with_one_endpoint_is_accepted() -> None:
    se = _patched(SE, {"spec.resolution": "DNS_ROUND_ROBIN", "spec.endpoints[1]": DELETE})
    assert _texts(_policy(se).warnings) == ()


def test_wildcard_host_with_endpoints_is_accepted() -> None:
    se = _patched(SE, {"spec.hosts": ["*.mydb.com"]})
    assert _texts(_policy(se, _patched(DR, {"spec.host": "*.mydb.com"})).warnings) == ()


@pytest.mark.parametrize(
    ("code", "bound"),
    [
        pytest.param(99, "greater than or equal to 100", id="below-100"),
        pytest.param(600, "less than or equal to 599", id="above-599"),
    ],
)
def test_outlier_http_error_code_out_of_range_is_rejected_as_the_crd_schema_does(
    code: int, bound: str
) -> None:
    field = f"{OD}.outlierDetectionHttpErrorCodes[1]"
    changes = {f"{OD}.outlierDetectionHttpErrorCodes": [404, code]}
    assert _errors(SE, _patched(DR, changes)) == [
        f"{DR_AT}{field}: Invalid value: {code}: {field} in body should be {bound}"
    ]


def test_negative_consecutive_gateway_errors_is_rejected() -> None:
    assert _errors(SE, _patched(DR, {f"{OD}.consecutiveGatewayErrors": -1})) == [
        f"{DR_AT}{OD}.consecutiveGatewayErrors: must be 0 or more, got -1"
    ]


def test_gateway_local_origin_and_error_code_fields_are_served_without_warnings() -> None:
    changes = {
        f"{OD}.consecutiveGatewayErrors": 3,
        f"{OD}.splitExternalLocalOriginErrors": True,
        f"{OD}.consecutiveLocalOriginFailures": 2,
        f"{OD}.outlierDetectionHttpErrorCodes": [100, 404, 599],
    }
    assert _texts(_policy(SE, _patched(DR, changes)).warnings) == ()


def _shape_problems(model: type[Any], shape: api.Shape, path: str) -> list[str]:
    """Fields a model reads (or names in IGNORED) that Istio's API shape lacks, recursively."""
    problems = []
    fields = shape.fields or {}
    for name in model.IGNORED:
        if name not in fields:
            problems.append(f"{path}.{name}")
    for name, info in model.model_fields.items():
        alias = info.alias or name
        child_shape = fields.get(alias)
        if child_shape is None:
            problems.append(f"{path}.{alias}")
            continue
        child = model_in(info.annotation)
        while child_shape.items is not None:
            child_shape = child_shape.items
        if child is not None:
            problems += _shape_problems(child, child_shape, f"{path}.{alias}")
    return problems


@pytest.mark.parametrize("kind", ["ServiceEntry", "DestinationRule"])
def test_every_field_extproc_reads_is_a_field_of_istios_api(kind: str) -> None:
    assert _shape_problems(MODELS[kind], api.SHAPES[kind], kind) == []


# ---------------------------------------------------------------------------------------------
# uint32 fields (the CRD's maximum) and the weights Envoy adds up

UINT32_OVER: Final = 2**32


@pytest.mark.parametrize(
    ("doc", "changes", "path"),
    [
        pytest.param("SE", {"spec.endpoints[0].weight": UINT32_OVER}, "spec.endpoints[0].weight"),
        pytest.param(
            "DR", {f"{OD}.consecutive5xxErrors": UINT32_OVER}, f"{OD}.consecutive5xxErrors"
        ),
        pytest.param(
            "DR", {f"{OD}.consecutiveGatewayErrors": UINT32_OVER}, f"{OD}.consecutiveGatewayErrors"
        ),
        pytest.param(
            "DR",
            {
                "spec.trafficPolicy.portLevelSettings": [
                    {"port": {"number": UINT32_OVER}, "tls": {}}
                ]
            },
            "spec.trafficPolicy.portLevelSettings[0].port.number",
        ),
    ],
)
def test_a_uint32_field_over_its_maximum_is_an_error(
    doc: str, changes: dict[str, object], path: str
) -> None:
    se, dr = (_patched(SE, changes), DR) if doc == "SE" else (SE, _patched(DR, changes))
    at = SE_AT if doc == "SE" else DR_AT
    assert at + (
        f"{path}: Invalid value: {UINT32_OVER}: {path} in body should be less than or equal to "
        "4294967295"
    ) in _errors(se, dr)


def test_endpoint_weights_that_add_up_past_uint32_are_an_error() -> None:
    half = 2**31
    se = _patched(SE, {"spec.endpoints[0].weight": half, "spec.endpoints[1].weight": half})
    assert _errors(se, DR) == [
        SE_AT + f"spec.endpoints: the endpoint weights add up to {2 * half}, more than "
        "4294967295 (Envoy's limit for the endpoints of one locality and the localities of a "
        "priority)"
    ]


def test_a_problem_stays_one_printable_line_whatever_the_names_hold() -> None:
    se = _patched(SE, {"metadata.name": "db\n\ud800"})
    se["spec"]["x\ny"] = 1
    (problem,) = _errors(se, DR)
    assert problem == (
        'cfg.yaml: ServiceEntry "db\\n\\ud800" (document 1): spec.x\\ny: unknown field; '
        "expected one of hosts, addresses, ports, location, resolution, endpoints, "
        "workloadSelector, exportTo, subjectAltNames"
    )


def _texts(warnings: Iterable[Problem]) -> tuple[str, ...]:
    """Warnings as ``extproc check`` prints them (after ``warning: ``)."""
    return tuple(str(w) for w in warnings)
