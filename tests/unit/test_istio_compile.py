"""Compiling Istio objects into the Policy: seed fixtures, Istio defaults, cross-object rules."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from extproc.core.policy import (
    Distribute,
    Endpoint,
    Failover,
    LbAlgorithm,
    Locality,
    LocalityLbSetting,
    OutlierDetection,
    Policy,
    Resolution,
    Service,
    TlsMode,
    TlsSettings,
)
from extproc.errors import ConfigError, Problem
from extproc.istio import load_policy, load_policy_text
from extproc.istio.compile import README_DIFFERENCES
from extproc.testing import find_service

SEED: Final = Path(__file__).parent.parent / "fixtures" / "seed"

SE: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "db"},
    "spec": {
        "hosts": ["mydb.com"],
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS",
        "endpoints": [
            {"address": "east.example.com", "locality": "us-east1"},
            {"address": "west.example.com", "locality": "us-west"},
        ],
    },
}

DR: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "db"},
    "spec": {
        "host": "mydb.com",
        "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 100}},
    },
}


def _doc(base: dict[str, Any], name: str | None = None, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    if name is not None:
        doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


def _policy(*docs: dict[str, Any], always_eject_one_host: bool = True) -> Policy:
    text = "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
    return load_policy_text(text, "cfg.yaml", always_eject_one_host=always_eject_one_host)


def _errors(*docs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _policy(*docs)
    return [str(p) for p in caught.value.problems]


def _only_service(policy: Policy) -> Service:
    (service,) = policy.services
    return service


# ---------------------------------------------------------------------------------------------
# The seed

SEED_ENDPOINTS_80: Final = (
    Endpoint("dynamodb.us-east-1.amazonaws.com", 80, Locality("us-east1")),
    Endpoint("dynamodb.us-west-1.amazonaws.com", 80, Locality("us-west")),
)
SEED_OUTLIER: Final = OutlierDetection(
    consecutive_5xx_errors=1,
    interval_s=15.0,
    base_ejection_time_s=60.0,
    max_ejection_percent=10,
    min_health_percent=0,
    always_eject_one_host=True,
)


def _seed_warning(file: str) -> str:
    return (
        f"{SEED / file}: outbound|80||mydb.com: maxEjectionPercent 10% < 1 of 2 endpoints: "
        "Istio never ejects, extproc does (README.md#differences-from-istio)"
    )


def test_seed_step1_serviceentry_alone_balances_without_outlier_detection() -> None:
    policy = load_policy(SEED / "step1-serviceentry.yaml")
    assert policy == Policy(
        services=(
            Service(
                host="mydb.com",
                port=80,
                port_name="http",
                protocol="HTTP",
                resolution=Resolution.DNS,
                endpoints=SEED_ENDPOINTS_80,
                lb_algorithm=LbAlgorithm.LEAST_REQUEST,
                outlier_detection=None,
                locality_lb=LocalityLbSetting(),
                source=f'{SEED / "step1-serviceentry.yaml"}: ServiceEntry "external-svc-dns"',
            ),
        ),
    )


def test_seed_step2_adds_outlier_detection_and_warns_about_strict_ejection() -> None:
    policy = load_policy(SEED / "step2-outlier.yaml")
    service = _only_service(policy)
    assert service.endpoints == SEED_ENDPOINTS_80
    assert service.outlier_detection == SEED_OUTLIER
    assert service.locality_lb == LocalityLbSetting(enabled=True, failover=())
    assert service.cluster_name == "outbound|80||mydb.com"
    assert _texts(policy.warnings) == (_seed_warning("step2-outlier.yaml"),)


def test_seed_step3_points_the_east_endpoint_at_port_81() -> None:
    service = _only_service(load_policy(SEED / "step3-invalid-port.yaml"))
    assert service.endpoints == (
        Endpoint("dynamodb.us-east-1.amazonaws.com", 81, Locality("us-east1")),
        Endpoint("dynamodb.us-west-1.amazonaws.com", 80, Locality("us-west")),
    )
    assert service.outlier_detection == SEED_OUTLIER


def test_seed_https_variant_uses_target_port_round_robin_and_failover() -> None:
    policy = load_policy(SEED / "https.yaml")
    assert policy == Policy(
        services=(
            Service(
                host="mydb.com",
                port=80,
                port_name="http-port",
                protocol="HTTP",
                resolution=Resolution.DNS,
                endpoints=(
                    Endpoint("dynamodb.us-east-1.amazonaws.com", 443, Locality("us-east1")),
                    Endpoint("dynamodb.us-west-1.amazonaws.com", 443, Locality("us-west")),
                ),
                lb_algorithm=LbAlgorithm.ROUND_ROBIN,
                outlier_detection=SEED_OUTLIER,
                locality_lb=LocalityLbSetting(
                    enabled=True, failover=(Failover(from_region="us-east1", to_region="us-west"),)
                ),
                tls=TlsSettings(mode=TlsMode.SIMPLE),
                source=f'{SEED / "https.yaml"}: ServiceEntry "external-svc-dns"',
            ),
        ),
        warnings=policy.warnings,
    )
    # The SNI warning's text is tested in test_istio_tls.py.
    assert _texts(policy.warnings)[1:] == (_seed_warning("https.yaml"),)
    assert _texts(policy.warnings)[0].startswith(
        f'{SEED / "https.yaml"}: DestinationRule "mydynamodb" (document 2): '
        "spec.trafficPolicy.tls: mode SIMPLE without sni"
    )


def test_seed_policy_finds_the_service_by_request_authority() -> None:
    policy = load_policy(SEED / "https.yaml")
    assert find_service(policy, "MyDB.com.", 80) is policy.services[0]
    assert find_service(policy, "mydb.com", 443) is None


def test_seed_strict_mode_says_extproc_will_not_eject_either() -> None:
    policy = load_policy(SEED / "step2-outlier.yaml", always_eject_one_host=False)
    outlier = _only_service(policy).outlier_detection
    assert outlier is not None
    assert outlier.always_eject_one_host is False
    assert _texts(policy.warnings) == (
        f"{SEED / 'step2-outlier.yaml'}: outbound|80||mydb.com: maxEjectionPercent 10% < 1 of "
        "2 endpoints: Istio never ejects, nor does extproc (strict) "
        "(README.md#differences-from-istio)",
    )


# ---------------------------------------------------------------------------------------------
# Endpoints


@pytest.mark.parametrize(
    ("port", "endpoint_ports", "expected"),
    [
        pytest.param({}, {"http": 8080}, 8080, id="endpoint-port-wins"),
        pytest.param({"targetPort": 443}, {"http": 8080}, 8080, id="endpoint-port-beats-target"),
        pytest.param({"targetPort": 443}, {}, 443, id="target-port-without-endpoint-port"),
        pytest.param({}, {}, 80, id="service-port-last"),
        pytest.param({"targetPort": 443}, {"other": 9}, 443, id="other-port-name-ignored"),
    ],
)
def test_endpoint_port_is_its_own_then_target_then_service_port(
    port: dict[str, int], endpoint_ports: dict[str, int], expected: int
) -> None:
    ports = [{"number": 80, "name": "http", "protocol": "HTTP", **port}]
    if "other" in endpoint_ports:
        ports.append({"number": 90, "name": "other", "protocol": "TCP"})
    endpoints = [{"address": "east.example.com", "ports": endpoint_ports}]
    service = _only_service(_policy(_doc(SE, ports=ports, endpoints=endpoints)))
    assert service.endpoints[0].port == expected


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        pytest.param(None, 1, id="unset-is-1"),
        pytest.param(0, 1, id="zero-is-1"),
        pytest.param(7, 7, id="kept"),
    ],
)
def test_endpoint_weight_zero_or_unset_means_one(weight: int | None, expected: int) -> None:
    endpoint: dict[str, Any] = {"address": "east.example.com"}
    if weight is not None:
        endpoint["weight"] = weight
    service = _only_service(_policy(_doc(SE, endpoints=[endpoint])))
    assert service.endpoints[0].weight == expected


def test_endpoint_locality_labels_and_address_are_kept() -> None:
    endpoint = {
        "address": "10.0.0.1",
        "locality": "us-east1/us-east1-b/rack1/ignored",
        "labels": {"tier": "db", "app": "x"},
    }
    service = _only_service(_policy(_doc(SE, resolution="STATIC", endpoints=[endpoint])))
    assert service.resolution is Resolution.STATIC
    assert service.endpoints == (
        Endpoint(
            address="10.0.0.1",
            port=80,
            locality=Locality("us-east1", "us-east1-b", "rack1"),
            labels=(("app", "x"), ("tier", "db")),
            weight=1,
        ),
    )


@pytest.mark.parametrize(
    ("port", "expected_port"),
    [
        pytest.param({}, 80, id="service-port"),
        pytest.param({"targetPort": 8443}, 8443, id="target-port"),
    ],
)
def test_dns_without_endpoints_resolves_the_host_itself(
    port: dict[str, int], expected_port: int
) -> None:
    ports = [{"number": 80, "name": "http", "protocol": "HTTP", **port}]
    se = _doc(SE, ports=ports)
    del se["spec"]["endpoints"]
    service = _only_service(_policy(se))
    assert service.endpoints == (Endpoint("mydb.com", expected_port),)


def test_static_without_endpoints_compiles_to_an_empty_service() -> None:
    se = _doc(SE, resolution="STATIC")
    del se["spec"]["endpoints"]
    assert _only_service(_policy(se)).endpoints == ()


# ---------------------------------------------------------------------------------------------
# Hosts and ports


@pytest.mark.parametrize(
    ("protocol", "served"),
    [
        pytest.param("HTTP", "HTTP", id="http"),
        pytest.param("http", "HTTP", id="lowercase-http"),
        pytest.param("HTTP2", "HTTP2", id="http2"),
        pytest.param("GRPC", "GRPC", id="grpc"),
        pytest.param(None, "", id="unset"),
    ],
)
def test_http_ports_become_services(protocol: str | None, served: str) -> None:
    port: dict[str, Any] = {"number": 80, "name": "http"}
    if protocol is not None:
        port["protocol"] = protocol
    service = _only_service(_policy(_doc(SE, ports=[port])))
    assert service.protocol == served


@pytest.mark.parametrize("protocol", ["HTTPS", "TLS", "TCP", "MONGO", "GRPC-WEB", "HTTP_PROXY"])
def test_other_protocols_are_skipped_with_a_warning(protocol: str) -> None:
    ports = [
        {"number": 80, "name": "http", "protocol": "HTTP"},
        {"number": 443, "name": "other", "protocol": protocol},
    ]
    policy = _policy(_doc(SE, ports=ports))
    assert [s.port for s in policy.services] == [80]
    assert _texts(policy.warnings) == (
        f'cfg.yaml: ServiceEntry "db" (document 1): spec.ports[1]: port 443 ({protocol}) is '
        "skipped: extproc serves HTTP ports only (protocol HTTP, HTTP2, GRPC or unset)",
    )


def test_one_service_per_host_and_port_in_declaration_order() -> None:
    ports = [
        {"number": 80, "name": "http", "protocol": "HTTP"},
        {"number": 8080, "name": "alt", "protocol": "HTTP", "targetPort": 9090},
    ]
    se = _doc(SE, hosts=["a.example.com", "b.example.com"], ports=ports)
    policy = _policy(se)
    assert [(s.host, s.port, s.port_name, s.endpoints[0].port) for s in policy.services] == [
        ("a.example.com", 80, "http", 80),
        ("a.example.com", 8080, "alt", 9090),
        ("b.example.com", 80, "http", 80),
        ("b.example.com", 8080, "alt", 9090),
    ]


def test_trailing_dot_host_is_served_without_it() -> None:
    service = _only_service(_policy(_doc(SE, hosts=["mydb.com."])))
    assert service.host == "mydb.com"


def test_wildcard_service_entry_host_is_one_cluster_named_as_istio_names_it() -> None:
    policy = _policy(_doc(SE, hosts=["mydb.com", "*.example.com"]))
    assert [s.cluster_name for s in policy.services] == [
        "outbound|80||mydb.com",
        "outbound|80||*.example.com",
    ]
    assert policy.services[1].endpoints == policy.services[0].endpoints
    assert _texts(policy.warnings) == ()


def test_same_host_and_port_in_two_service_entries_is_an_error() -> None:
    assert _errors(_doc(SE, "first"), _doc(SE, "second", hosts=["other.com", "mydb.com"])) == [
        'cfg.yaml: ServiceEntry "second" (document 2): spec.hosts[1]: "mydb.com" port 80 is '
        'already declared by ServiceEntry "first" (cfg.yaml, document 1)'
    ]


def test_same_host_on_another_port_in_two_service_entries_is_fine() -> None:
    other_port = [{"number": 81, "name": "http", "protocol": "HTTP"}]
    policy = _policy(_doc(SE, "first"), _doc(SE, "second", ports=other_port))
    assert [(s.host, s.port) for s in policy.services] == [("mydb.com", 80), ("mydb.com", 81)]


# ---------------------------------------------------------------------------------------------
# DestinationRules


@pytest.mark.parametrize(
    ("od", "expected"),
    [
        pytest.param(
            {"maxEjectionPercent": 100},
            OutlierDetection(5, 10.0, 30.0, 100, 0, True),
            id="istio-defaults",
        ),
        pytest.param(
            {"consecutive5xxErrors": 0, "maxEjectionPercent": 100},
            OutlierDetection(0, 10.0, 30.0, 100, 0, True),
            id="zero-5xx-disables",
        ),
        pytest.param(
            {"interval": "1m30s", "baseEjectionTime": "500ms", "maxEjectionPercent": 100},
            OutlierDetection(5, 90.0, 0.5, 100, 0, True),
            id="durations",
        ),
        pytest.param(
            {"interval": "1h", "baseEjectionTime": "2m", "maxEjectionPercent": 100},
            OutlierDetection(5, 3600.0, 120.0, 100, 0, True),
            id="hours-and-minutes",
        ),
        pytest.param(
            {"maxEjectionPercent": 0, "minHealthPercent": 50},
            OutlierDetection(5, 10.0, 30.0, 10, 50, True),
            id="zero-max-ejection-means-10",
        ),
        pytest.param({}, OutlierDetection(5, 10.0, 30.0, 10, 0, True), id="empty"),
    ],
)
def test_outlier_detection_fills_istio_defaults(
    od: dict[str, Any], expected: OutlierDetection
) -> None:
    dr = _doc(DR, trafficPolicy={"outlierDetection": od})
    service = _only_service(_policy(_doc(SE, endpoints=[{"address": "a.example.com"}]), dr))
    assert service.outlier_detection == expected


def test_always_eject_one_host_comes_from_the_caller() -> None:
    policy = _policy(SE, DR, always_eject_one_host=False)
    outlier = _only_service(policy).outlier_detection
    assert outlier is not None
    assert outlier.always_eject_one_host is False


@pytest.mark.parametrize(
    ("simple", "expected"),
    [
        pytest.param("ROUND_ROBIN", LbAlgorithm.ROUND_ROBIN, id="round-robin"),
        pytest.param("RANDOM", LbAlgorithm.RANDOM, id="random"),
        pytest.param("LEAST_REQUEST", LbAlgorithm.LEAST_REQUEST, id="least-request"),
        pytest.param("LEAST_CONN", LbAlgorithm.LEAST_REQUEST, id="least-conn-is-least-request"),
        pytest.param("UNSPECIFIED", LbAlgorithm.LEAST_REQUEST, id="unspecified-is-default"),
        pytest.param(None, LbAlgorithm.LEAST_REQUEST, id="unset-is-default"),
    ],
)
def test_load_balancer_maps_like_istio(simple: str | None, expected: LbAlgorithm) -> None:
    lb: dict[str, Any] = {} if simple is None else {"simple": simple}
    lb["localityLbSetting"] = {"enabled": True}
    dr = _doc(DR, trafficPolicy={"loadBalancer": lb})
    assert _only_service(_policy(SE, dr)).lb_algorithm is expected


def test_without_destination_rule_istio_defaults_apply() -> None:
    service = _only_service(_policy(SE))
    assert service.lb_algorithm is LbAlgorithm.LEAST_REQUEST
    assert service.outlier_detection is None
    assert service.locality_lb == LocalityLbSetting(enabled=True, failover=())


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param({}, LocalityLbSetting(True, ()), id="unset-enabled-is-mesh-default"),
        pytest.param({"enabled": False}, LocalityLbSetting(False, ()), id="disabled"),
        pytest.param(
            {"failover": [{"from": "a", "to": "b"}, {"from": "c", "to": "d"}]},
            LocalityLbSetting(True, (Failover("a", "b"), Failover("c", "d"))),
            id="failover-in-order",
        ),
    ],
)
def test_locality_lb_setting_is_carried_over(
    setting: dict[str, Any], expected: LocalityLbSetting
) -> None:
    dr = _doc(
        DR,
        trafficPolicy={
            "loadBalancer": {"localityLbSetting": setting},
            "outlierDetection": {"maxEjectionPercent": 100},
        },
    )
    assert _only_service(_policy(SE, dr)).locality_lb == expected


def test_destination_rule_applies_to_every_port_of_its_host_only() -> None:
    ports = [
        {"number": 80, "name": "http", "protocol": "HTTP"},
        {"number": 81, "name": "http2", "protocol": "HTTP2"},
    ]
    se = _doc(SE, hosts=["mydb.com", "other.com"], ports=ports)
    dr = _doc(DR, trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})
    assert [(s.host, s.port, s.lb_algorithm) for s in _policy(se, dr).services] == [
        ("mydb.com", 80, LbAlgorithm.RANDOM),
        ("mydb.com", 81, LbAlgorithm.RANDOM),
        ("other.com", 80, LbAlgorithm.LEAST_REQUEST),
        ("other.com", 81, LbAlgorithm.LEAST_REQUEST),
    ]


def test_destination_rule_may_come_before_its_service_entry() -> None:
    dr = _doc(DR, trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})
    assert _only_service(_policy(dr, SE)).lb_algorithm is LbAlgorithm.RANDOM


def test_destination_rule_matching_no_host_is_a_warning() -> None:
    policy = _policy(SE, _doc(DR, host="elsewhere.com"))
    assert _only_service(policy).outlier_detection is None
    assert _texts(policy.warnings) == (
        'cfg.yaml: DestinationRule "db" (document 2): spec.host: "elsewhere.com" matches no '
        "ServiceEntry host (HTTP port); this DestinationRule is ignored",
    )


def test_wildcard_destination_rule_host_applies_to_the_hosts_it_covers() -> None:
    policy = _policy(SE, _doc(DR, host="*.com"))
    assert _only_service(policy).outlier_detection == OutlierDetection(max_ejection_percent=100)
    assert _texts(policy.warnings) == ()


def test_schema_and_cross_object_errors_are_reported_together() -> None:
    bad = _doc(SE, "bad", hosts=["bad.com"], resolution="NONE")
    assert _errors(bad, SE, _doc(SE, "again")) == [
        'cfg.yaml: ServiceEntry "bad" (document 1): spec.resolution: NONE is not supported '
        "(extproc must know the endpoints it chooses between): use DNS or STATIC",
        'cfg.yaml: ServiceEntry "again" (document 3): spec.hosts[0]: "mydb.com" port 80 is '
        'already declared by ServiceEntry "db" (cfg.yaml, document 2)',
    ]


# ---------------------------------------------------------------------------------------------
# The maxEjectionPercent trap (Envoy >= 1.28)


@pytest.mark.parametrize(
    ("endpoints", "max_percent"),
    [
        pytest.param(1, None, id="one-endpoint-default"),
        pytest.param(2, 10, id="two-endpoints"),
        pytest.param(3, 30, id="three-endpoints"),
        pytest.param(8, 0, id="eight-endpoints-zero-means-10"),
    ],
)
def test_max_ejection_percent_that_blocks_every_ejection_is_warned(
    endpoints: int, max_percent: int | None
) -> None:
    se = _doc(SE, endpoints=[{"address": f"e{i}.example.com"} for i in range(endpoints)])
    od: dict[str, Any] = {}
    if max_percent is not None:
        od["maxEjectionPercent"] = max_percent
    policy = _policy(se, _doc(DR, trafficPolicy={"outlierDetection": od}))
    limit = max_percent or 10
    assert _texts(policy.warnings) == (
        f"cfg.yaml: outbound|80||mydb.com: maxEjectionPercent {limit}% < 1 of {endpoints} "
        "endpoints: Istio never ejects, extproc does (README.md#differences-from-istio)",
    )


@pytest.mark.parametrize(
    ("endpoints", "max_percent"),
    [
        pytest.param(2, 100, id="two-endpoints-100"),
        pytest.param(2, 50, id="two-endpoints-exactly-50"),
        pytest.param(10, None, id="ten-endpoints-default"),
    ],
)
def test_max_ejection_percent_that_allows_an_ejection_is_not_warned(
    endpoints: int, max_percent: int | None
) -> None:
    se = _doc(SE, endpoints=[{"address": f"e{i}.example.com"} for i in range(endpoints)])
    od: dict[str, Any] = {}
    if max_percent is not None:
        od["maxEjectionPercent"] = max_percent
    assert _texts(_policy(se, _doc(DR, trafficPolicy={"outlierDetection": od})).warnings) == ()


def test_dns_host_without_endpoints_counts_as_one_endpoint() -> None:
    se = _doc(SE)
    del se["spec"]["endpoints"]
    dr = _doc(DR, trafficPolicy={"outlierDetection": {"maxEjectionPercent": 99}})
    (warning,) = _texts(_policy(se, dr).warnings)
    assert "maxEjectionPercent 99% < 1 of 1 endpoints:" in warning


def test_blocked_ejections_are_one_short_warning_for_the_whole_config() -> None:
    hosts = [f"db{i}.example.com" for i in range(4)]
    se = _doc(SE, hosts=hosts)
    rules = [
        _doc(DR, f"dr{i}", host=host, trafficPolicy={"outlierDetection": {}})
        for i, host in enumerate(hosts)
    ]
    (warning,) = _texts(_policy(se, *rules).warnings)
    assert warning == (
        "cfg.yaml: outbound|80||db0.example.com (+3 more): maxEjectionPercent 10% < 1 of 2 "
        "endpoints: Istio never ejects, extproc does (README.md#differences-from-istio)"
    )


def _github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, - for spaces."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_ejection_warning_points_at_a_readme_heading_that_exists() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    anchors = {
        _github_anchor(line.lstrip("#")) for line in readme.splitlines() if line.startswith("#")
    }
    file, _, anchor = README_DIFFERENCES.partition("#")
    assert file == "README.md"
    assert anchor in anchors


# ---------------------------------------------------------------------------------------------
# localityLbSetting: distribute and failoverPriority


def _with_locality_lb(setting: dict[str, Any]) -> Service:
    dr = _doc(
        DR,
        trafficPolicy={
            "loadBalancer": {"localityLbSetting": setting},
            "outlierDetection": {"maxEjectionPercent": 100},
        },
    )
    policy = _policy(SE, dr)
    assert _texts(policy.warnings) == ()
    return _only_service(policy)


def test_distribute_is_compiled_with_its_targets_in_yaml_order() -> None:
    service = _with_locality_lb(
        {
            "distribute": [
                {"from": "us-east1/*", "to": {"us-west/*": 30, "us-east1/*": 70}},
                {"from": "us-west/*", "to": {"us-west/*": 100}},
            ]
        }
    )
    assert service.locality_lb.distribute == (
        Distribute("us-east1/*", (("us-west/*", 30), ("us-east1/*", 70))),
        Distribute("us-west/*", (("us-west/*", 100),)),
    )


def test_failover_priority_is_compiled_with_failover() -> None:
    service = _with_locality_lb(
        {
            "failoverPriority": ["topology.istio.io/network", "tier=gold"],
            "failover": [{"from": "us-east1", "to": "us-west"}],
        }
    )
    assert service.locality_lb == LocalityLbSetting(
        failover=(Failover("us-east1", "us-west"),),
        failover_priority=("topology.istio.io/network", "tier=gold"),
    )


def test_endpoint_network_is_kept_for_failover_priority() -> None:
    endpoint = {"address": "10.0.0.1", "network": "net-2"}
    service = _only_service(_policy(_doc(SE, resolution="STATIC", endpoints=[endpoint])))
    assert service.endpoints[0].network == "net-2"


# ---------------------------------------------------------------------------------------------
# Wildcard hosts, several DestinationRules for one host, portLevelSettings, connectTimeout,
# DNS_ROUND_ROBIN


def _rule(name: str, host: str, **traffic_policy: Any) -> dict[str, Any]:
    return _doc(DR, name, host=host, trafficPolicy=traffic_policy)


def _interval_rule(name: str, host: str, interval_s: int) -> dict[str, Any]:
    """A DestinationRule recognisable by its outlier-detection interval."""
    od = {"interval": f"{interval_s}s", "maxEjectionPercent": 100}
    return _rule(name, host, outlierDetection=od)


@pytest.mark.parametrize(
    ("se_host", "dr_hosts", "expected"),
    [
        pytest.param(
            "db.example.com", ["*.example.com", "db.example.com"], 1, id="exact-beats-wildcard"
        ),
        pytest.param("db.example.com", ["*.com", "*.example.com"], 1, id="longest-wildcard"),
        pytest.param(
            "a.db.example.com", ["*.db.example.com", "*.example.com"], 0, id="longest-first"
        ),
        pytest.param("*.example.com", ["*.com", "*.example.com"], 1, id="wildcard-own-rule"),
        pytest.param(
            "*.db.example.com", ["*.com", "*.example.com"], 1, id="wildcard-longest-cover"
        ),
    ],
)
def test_the_most_specific_destination_rule_applies(
    se_host: str, dr_hosts: list[str], expected: int
) -> None:
    rules = [_interval_rule(f"r{i}", host, i + 1) for i, host in enumerate(dr_hosts)]
    service = _only_service(_policy(_doc(SE, hosts=[se_host]), *rules))
    assert service.outlier_detection is not None
    assert service.outlier_detection.interval_s == expected + 1


def test_exact_destination_rule_does_not_apply_to_a_wildcard_service_entry() -> None:
    policy = _policy(_doc(SE, hosts=["*.example.com"]), _doc(DR, host="db.example.com"))
    assert _only_service(policy).outlier_detection is None
    assert _texts(policy.warnings) == (
        'cfg.yaml: DestinationRule "db" (document 2): spec.host: "db.example.com" matches no '
        "ServiceEntry host (HTTP port); this DestinationRule is ignored",
    )


def test_wildcard_destination_rule_matching_no_host_is_a_warning() -> None:
    policy = _policy(SE, _doc(DR, host="*.example.com"))
    assert _texts(policy.warnings) == (
        'cfg.yaml: DestinationRule "db" (document 2): spec.host: "*.example.com" matches no '
        "ServiceEntry host (HTTP port); this DestinationRule is ignored",
    )


def test_wildcard_destination_rule_shadowed_on_every_host_it_covers_is_a_warning() -> None:
    se = _doc(SE, hosts=["a.example.com", "b.example.com", "other.com"])
    policy = _policy(
        se,
        _interval_rule("wild", "*.example.com", 1),
        _interval_rule("a", "a.example.com", 2),
        _interval_rule("b", "b.example.com", 3),
    )
    assert [s.outlier_detection.interval_s for s in policy.services if s.outlier_detection] == [
        2.0,
        3.0,
    ]
    assert _texts(policy.warnings) == (
        'cfg.yaml: DestinationRule "wild" (document 2): spec.host: "*.example.com" matches '
        "ServiceEntry host a.example.com, b.example.com, but a more specific DestinationRule "
        "applies to each; this DestinationRule is ignored",
    )


MERGE_WARNING: Final = (
    'cfg.yaml: DestinationRule "second" (document 3): spec.host: "mydb.com" is also the host '
    'of DestinationRule "first" (cfg.yaml, document 2); Istio merges DestinationRules of one '
    "host and keeps the trafficPolicy of the oldest one that has one; extproc has no creation "
    "time and goes by document order: "
)


@pytest.mark.parametrize(
    ("first", "second", "interval_s", "outcome"),
    [
        pytest.param(
            1,
            2,
            1.0,
            'its trafficPolicy is ignored, the one of DestinationRule "first" (cfg.yaml, '
            "document 2) applies",
            id="first-policy-stays",
        ),
        pytest.param(
            None, 2, 2.0, "its trafficPolicy applies, as the earlier one has none", id="fills-in"
        ),
        pytest.param(1, None, 1.0, "it has no trafficPolicy, so it changes nothing", id="empty"),
    ],
)
def test_two_destination_rules_for_one_host_merge_as_istio_in_document_order(
    first: int | None, second: int | None, interval_s: float, outcome: str
) -> None:
    def rule(name: str, interval: int | None) -> dict[str, Any]:
        if interval is None:
            doc = _doc(DR, name)
            del doc["spec"]["trafficPolicy"]
            return doc
        return _interval_rule(name, "mydb.com", interval)

    policy = _policy(SE, rule("first", first), rule("second", second))
    outlier = _only_service(policy).outlier_detection
    assert outlier is not None
    assert outlier.interval_s == interval_s
    assert _texts(policy.warnings) == (MERGE_WARNING + outcome,)


def test_merged_rule_warns_about_ejection_with_the_policy_that_applies() -> None:
    first = _doc(DR, "first")
    del first["spec"]["trafficPolicy"]
    second = _rule("second", "mydb.com", outlierDetection={"maxEjectionPercent": 20})
    warnings = _texts(_policy(SE, first, second).warnings)
    assert warnings[1].startswith(
        "cfg.yaml: outbound|80||mydb.com: maxEjectionPercent 20% < 1 of 2 endpoints:"
    )


TWO_PORTS: Final = [
    {"number": 80, "name": "http", "protocol": "HTTP"},
    {"number": 8080, "name": "http-alt", "protocol": "HTTP"},
]


PORT_8080_OD: Final = {"consecutive5xxErrors": 2, "maxEjectionPercent": 100}


def test_port_level_settings_replace_the_whole_policy_on_their_port_only() -> None:
    dr = _rule(
        "db",
        "mydb.com",
        loadBalancer={"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": False}},
        outlierDetection={"interval": "1s", "maxEjectionPercent": 100},
        connectionPool={"tcp": {"connectTimeout": "250ms"}},
        portLevelSettings=[{"port": {"number": 8080}, "outlierDetection": PORT_8080_OD}],
    )
    port80, port8080 = _policy(_doc(SE, ports=TWO_PORTS), dr).services
    assert (port80.lb_algorithm, port80.outlier_detection, port80.pool.connect_timeout_s) == (
        LbAlgorithm.ROUND_ROBIN,
        OutlierDetection(interval_s=1.0, max_ejection_percent=100),
        0.25,
    )
    assert port80.locality_lb == LocalityLbSetting(enabled=False)
    # Nothing inherited from the top level: Istio's defaults fill what the entry leaves out.
    assert (port8080.lb_algorithm, port8080.outlier_detection, port8080.pool.connect_timeout_s) == (
        LbAlgorithm.LEAST_REQUEST,
        OutlierDetection(consecutive_5xx_errors=2, max_ejection_percent=100),
        10.0,
    )
    assert port8080.locality_lb == LocalityLbSetting()


def test_port_level_settings_alone_leave_other_ports_on_istio_defaults() -> None:
    entry = {"port": {"number": 8080}, "loadBalancer": {"simple": "RANDOM"}}
    dr = _rule("db", "mydb.com", portLevelSettings=[entry])
    policy = _policy(_doc(SE, ports=TWO_PORTS), dr)
    assert [s.lb_algorithm for s in policy.services] == [
        LbAlgorithm.LEAST_REQUEST,
        LbAlgorithm.RANDOM,
    ]
    assert _texts(policy.warnings) == ()


def test_first_port_level_entry_for_a_port_wins() -> None:
    entries = [
        {"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}},
        {"port": {"number": 80}, "loadBalancer": {"simple": "ROUND_ROBIN"}},
    ]
    service = _only_service(_policy(SE, _rule("db", "mydb.com", portLevelSettings=entries)))
    assert service.lb_algorithm is LbAlgorithm.RANDOM


def test_port_level_entry_for_a_port_no_service_has_is_a_warning() -> None:
    entry = {"port": {"number": 9090}, "loadBalancer": {"simple": "RANDOM"}}
    policy = _policy(SE, _rule("db", "mydb.com", portLevelSettings=[entry]))
    assert _only_service(policy).lb_algorithm is LbAlgorithm.LEAST_REQUEST
    assert _texts(policy.warnings) == (
        'cfg.yaml: DestinationRule "db" (document 2): '
        "spec.trafficPolicy.portLevelSettings[0].port.number: port 9090 is not an HTTP port of "
        "a ServiceEntry host this DestinationRule applies to; this entry never applies",
    )


def test_port_level_outlier_detection_is_checked_for_blocked_ejections() -> None:
    entry = {"port": {"number": 80}, "outlierDetection": {"maxEjectionPercent": 30}}
    (warning,) = _texts(_policy(SE, _rule("db", "mydb.com", portLevelSettings=[entry])).warnings)
    assert warning.startswith(
        "cfg.yaml: outbound|80||mydb.com: maxEjectionPercent 30% < 1 of 2 endpoints:"
    )


@pytest.mark.parametrize(
    ("pool", "expected_s"),
    [
        pytest.param({"tcp": {"connectTimeout": "250ms"}}, 0.25, id="250ms"),
        pytest.param({"tcp": {"connectTimeout": "1m30s"}}, 90.0, id="composite"),
        pytest.param({"tcp": {"connectTimeout": "1ms"}}, 0.001, id="smallest"),
        pytest.param({"http": {"maxRetries": 1}}, 10.0, id="http-only-is-mesh-default"),
        pytest.param(None, 10.0, id="unset-is-mesh-default"),
    ],
)
def test_connect_timeout_comes_from_connection_pool_tcp(
    pool: dict[str, Any] | None, expected_s: float
) -> None:
    policy: dict[str, Any] = {"loadBalancer": {"simple": "RANDOM"}}
    if pool is not None:
        policy["connectionPool"] = pool
    service = _only_service(_policy(SE, _rule("db", "mydb.com", **policy)))
    assert service.pool.connect_timeout_s == expected_s


def test_dns_round_robin_keeps_its_resolution_and_its_one_endpoint() -> None:
    se = _doc(SE, resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "db.example.com"}])
    service = _only_service(_policy(se))
    assert (service.resolution, service.endpoints) == (
        Resolution.DNS_ROUND_ROBIN,
        (Endpoint("db.example.com", 80),),
    )


def test_dns_round_robin_without_endpoints_resolves_the_host_itself() -> None:
    se = _doc(SE, resolution="DNS_ROUND_ROBIN")
    del se["spec"]["endpoints"]
    assert _only_service(_policy(se)).endpoints == (Endpoint("mydb.com", 80),)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        pytest.param("db.example.com", None, "outbound|80||db.example.com", id="exact"),
        pytest.param("other.example.com", None, "outbound|80||*.example.com", id="wildcard"),
        pytest.param("a.b.example.com", 80, "outbound|80||*.b.example.com", id="longest"),
        pytest.param("x.b.example.com", 8080, "outbound|8080||*.example.com", id="port"),
        pytest.param("example.com", None, None, id="suffix-alone-is-no-match"),
        pytest.param("db.example.org", None, None, id="no-match"),
    ],
)
def test_policy_finds_exact_hosts_first_then_the_longest_wildcard(
    host: str, port: int | None, expected: str | None
) -> None:
    policy = _policy(
        _doc(SE, "wild", hosts=["*.example.com"], ports=TWO_PORTS),
        _doc(SE, "exact", hosts=["db.example.com", "*.b.example.com"]),
    )
    found = find_service(policy, host, port)
    assert (found.cluster_name if found else None) == expected


@pytest.mark.parametrize(
    ("od", "gateway", "enforcing", "split", "local_origin", "codes"),
    [
        pytest.param({}, 5, 0, False, 5, (), id="unset-envoy-defaults-gateway-unenforced"),
        pytest.param({"consecutiveGatewayErrors": 3}, 3, 100, False, 5, (), id="gateway-3"),
        pytest.param({"consecutiveGatewayErrors": 0}, 0, 0, False, 5, (), id="gateway-0-off"),
        pytest.param(
            {"splitExternalLocalOriginErrors": True}, 5, 0, True, 5, (), id="split-default-5"
        ),
        pytest.param(
            {"splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 2},
            5,
            0,
            True,
            2,
            (),
            id="split-2",
        ),
        pytest.param(
            {"splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 0},
            5,
            0,
            True,
            5,
            (),
            id="split-0-keeps-envoy-default",
        ),
        pytest.param(
            {"outlierDetectionHttpErrorCodes": [503, 404, 503]},
            5,
            0,
            False,
            5,
            (404, 503),
            id="error-codes",
        ),
        pytest.param(
            {"outlierDetectionHttpErrorCodes": []}, 5, 0, False, 5, (), id="empty-codes-5xx-rule"
        ),
    ],
)
def test_outlier_detection_maps_gateway_local_origin_and_error_codes_like_pilot(
    od: dict[str, Any],
    gateway: int,
    enforcing: int,
    split: bool,
    local_origin: int,
    codes: tuple[int, ...],
) -> None:
    dr = _doc(DR, trafficPolicy={"outlierDetection": {"maxEjectionPercent": 100, **od}})
    service = _only_service(_policy(_doc(SE, endpoints=[{"address": "a.example.com"}]), dr))
    outlier = service.outlier_detection
    assert outlier is not None
    assert (
        outlier.consecutive_gateway_errors,
        outlier.enforcing_consecutive_gateway_failure,
        outlier.split_external_local_origin_errors,
        outlier.consecutive_local_origin_failures,
        outlier.http_error_codes,
    ) == (gateway, enforcing, split, local_origin, frozenset(codes))


def _texts(warnings: Iterable[Problem]) -> tuple[str, ...]:
    """Warnings as ``extproc check`` prints them (after ``warning: ``)."""
    return tuple(str(w) for w in warnings)
