"""``consistentHash`` and slow start, as pilot translates them, and who picks on each path.

Cluster side: ``ApplyRingHashLoadBalancer`` and ``applyRoundRobinLoadBalancer`` /
``applyLeastRequestLoadBalancer`` with ``setWarmup``. Route side: ``ConsistentHashToHashPolicy``
from ``hashForService`` (the default route) and ``HashForHTTPDestination`` (VirtualService
routes), and ``ConvertPolicy``'s retries that stay on the hashed host. Envoy's own balancer
picks on these clusters: no data path overrides, and lua and ext_proc learn each attempt from
the router's upstream log.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2

from extproc.core.policy import HashAlgorithm, HashRing, Policy, Service, SlowStart
from extproc.core.routes import HashKey, HashOn
from extproc.istio import load_policy, load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.render.clusters import service_cluster
from extproc.render.routes import route_config
from extproc.render.tls import HTTP_PROTOCOL_OPTIONS
from extproc.render.typed import to_data
from extproc.settings import Settings
from extproc.wire import ENVOY_BALANCED_ATTEMPT_LOG_NAME, DataPath

TRAFFIC: Final = Path(__file__).parent.parent / "fixtures" / "traffic"
FIXTURE: Final = TRAFFIC / "consistent-hash.yaml"
MAIN, V1 = "outbound|80||mydb.com", "outbound|80|v1|mydb.com"


def _by_cluster(policy: Policy) -> dict[str, Service]:
    return {s.cluster_name: s for s in policy.services}


def _load(rule: dict[str, Any] | None = None, vs: dict[str, Any] | None = None) -> Policy:
    docs = [d for d in yaml.safe_load_all(FIXTURE.read_text()) if d]
    if rule is not None:
        docs[1]["spec"] = copy.deepcopy(rule) | {"host": "mydb.com"}
    if vs == []:
        del docs[2]  # no VirtualService: Istio's default route
    elif vs is not None:
        docs[2]["spec"]["http"] = copy.deepcopy(vs)
    return load_policy_text("---\n".join(yaml.safe_dump(d) for d in docs), "cfg.yaml")


def _routes(policy: Policy, data_path: DataPath = DataPath.LUA) -> list[dict[str, Any]]:
    config = to_data(route_config(policy, Settings(data_path=data_path)))
    [host] = [h for h in config["virtual_hosts"] if "mydb.com" in h["domains"]]
    return list(host["routes"])


def _cluster(service: Service, data_path: DataPath = DataPath.LUA) -> cluster_pb2.Cluster:
    return service_cluster(service, Settings(data_path=data_path))


def test_a_ring_and_a_maglev_table_are_the_clusters_balancers() -> None:
    services = _by_cluster(load_policy(FIXTURE))
    assert services[MAIN].hash_ring == HashRing(HashAlgorithm.RING_HASH, 2048)
    assert services[V1].hash_ring == HashRing(HashAlgorithm.MAGLEV, 65537)
    main, v1 = _cluster(services[MAIN]), _cluster(services[V1])
    assert main.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert main.ring_hash_lb_config.minimum_ring_size.value == 2048
    assert v1.lb_policy == cluster_pb2.Cluster.MAGLEV
    assert v1.maglev_lb_config.table_size.value == 65537
    # No override on any path: not the lua path's override statuses, not ext_proc's policy.
    for path in DataPath:
        cluster = _cluster(services[MAIN], path)
        assert not cluster.HasField("load_balancing_policy")
        assert not cluster.common_lb_config.HasField("override_host_status")


@pytest.mark.parametrize(
    ("consistent_hash", "ring"),
    [
        ({"httpHeaderName": "x"}, HashRing(HashAlgorithm.RING_HASH, 1024)),
        ({"httpHeaderName": "x", "minimumRingSize": 4096}, HashRing(HashAlgorithm.RING_HASH, 4096)),
        ({"httpHeaderName": "x", "ringHash": {}}, HashRing(HashAlgorithm.RING_HASH, None)),
    ],
    ids=["default-1024", "deprecated-size", "ring-without-size"],
)
def test_the_ring_size_is_pilots(consistent_hash: dict[str, Any], ring: HashRing) -> None:
    rule = {"trafficPolicy": {"loadBalancer": {"consistentHash": consistent_hash}}}
    service = _by_cluster(_load(rule))[MAIN]
    assert service.hash_ring == ring
    cluster = _cluster(service)
    assert cluster.HasField("ring_hash_lb_config") == (ring.size is not None)


def test_the_default_route_hashes_on_the_rules_key_and_keeps_previous_hosts() -> None:
    policy = _load(vs=[])
    [route] = _routes(policy)
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]
    # BuildDefaultHTTPOutboundRoute: ConvertPolicy(..., false), whatever the hash.
    assert route["route"]["retry_policy"]["retry_host_predicate"]


def test_a_route_to_a_subset_hashes_on_the_subsets_key_and_stays_on_the_host() -> None:
    sessions, users = _routes(load_policy(FIXTURE))
    assert sessions["route"]["hash_policy"] == [
        {"cookie": {"name": "session", "ttl": "0s", "path": "/"}}
    ]
    assert users["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]
    # ConvertPolicy(retries, hashPolicy=true): no previous_hosts predicate.
    for route in (sessions, users):
        assert "retry_host_predicate" not in route["route"]["retry_policy"]


def test_retry_ignore_previous_hosts_brings_the_predicate_back() -> None:
    http = [
        {
            "name": "all",
            "route": [{"destination": {"host": "mydb.com"}}],
            "retries": {"attempts": 2, "retryIgnorePreviousHosts": True},
        }
    ]
    [route] = _routes(_load(vs=http))
    assert route["route"]["retry_policy"]["retry_host_predicate"]


def test_a_port_level_hash_applies_to_a_route_only_when_it_names_its_port() -> None:
    # HashForHTTPDestination reads portLevelSettings only for a destination with a port; the
    # cluster is a ring either way (GetPortLevelTrafficPolicy).
    rule = {
        "trafficPolicy": {
            "portLevelSettings": [
                {"port": {"number": 80}, "loadBalancer": {"consistentHash": {"useSourceIp": True}}}
            ]
        }
    }
    for port, hashed in ((None, False), ({"number": 80}, True)):
        destination: dict[str, Any] = {"host": "mydb.com"}
        if port is not None:
            destination["port"] = port
        policy = _load(rule, vs=[{"name": "all", "route": [{"destination": destination}]}])
        assert _by_cluster(policy)[MAIN].hash_ring is not None
        [route] = _routes(policy)
        expected = [{"connection_properties": {"source_ip": True}}] if hashed else None
        assert route["route"].get("hash_policy") == expected


def test_a_consistent_hash_without_a_key_hashes_nothing_but_keeps_retries_on_the_host() -> None:
    rule = {"trafficPolicy": {"loadBalancer": {"consistentHash": {"ringHash": {}}}}}
    policy = _load(rule, vs=[{"name": "all", "route": [{"destination": {"host": "mydb.com"}}]}])
    assert policy.services[0].hash_key == HashKey(HashOn.NOTHING)
    [route] = _routes(policy)
    assert "hash_policy" not in route["route"]
    assert "retry_host_predicate" not in route["route"]["retry_policy"]


def test_use_source_ip_false_is_written_as_pilot_writes_it() -> None:
    rule = {"trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": False}}}}
    [route] = _routes(_load(rule, vs=[]))
    assert route["route"]["hash_policy"] == [{"connection_properties": {}}]


def test_warmup_is_envoys_slow_start_with_pilots_fixed_aggression() -> None:
    service = _by_cluster(load_policy(TRAFFIC / "warmup.yaml"))[MAIN]
    assert service.slow_start == SlowStart(60.0, aggression=1.5, min_weight_percent=10.0)
    cluster = _cluster(service)
    slow = cluster.round_robin_lb_config.slow_start_config
    assert slow.slow_start_window.seconds == 60
    assert (slow.aggression.default_value, slow.aggression.runtime_key) == (1.5, "(")
    assert slow.min_weight_percent.value == 10.0
    assert service.envoy_balances


@pytest.mark.parametrize(
    ("load_balancer", "expected"),
    [
        ({"warmupDurationSecs": "30s"}, SlowStart(30.0)),  # LEAST_REQUEST, the window alone
        ({"warmup": {"duration": "30s"}}, SlowStart(30.0, 1.0, 10.0)),  # setWarmup's defaults
        ({"simple": "RANDOM", "warmup": {"duration": "30s"}}, None),  # no slow start for RANDOM
    ],
    ids=["duration-secs", "warmup-defaults", "random"],
)
def test_slow_start_is_set_where_pilot_sets_it(
    load_balancer: dict[str, Any], expected: SlowStart | None
) -> None:
    rule = {"trafficPolicy": {"loadBalancer": load_balancer}}
    service = _by_cluster(_load(rule))[MAIN]
    assert service.slow_start == expected
    if expected is not None and "simple" not in load_balancer:
        slow = _cluster(service).least_request_lb_config.slow_start_config
        assert slow.slow_start_window.seconds == 30


def test_lua_and_ext_proc_log_every_attempt_of_a_balanced_cluster_and_only_those() -> None:
    policy = load_policy(FIXTURE)
    for path in (DataPath.LUA, DataPath.EXT_PROC):
        rendered = str(render_bootstrap(policy, Settings(data_path=path)))
        assert ENVOY_BALANCED_ATTEMPT_LOG_NAME in rendered
        assert f"xds.cluster_name in ['{MAIN}', '{V1}']" in rendered
    # The module's own attempt log has every attempt already.
    module = Settings(data_path=DataPath.MODULE, socket_dir=Path("/run/extproc"))
    assert ENVOY_BALANCED_ATTEMPT_LOG_NAME not in str(render_bootstrap(policy, module))
    # Without such a cluster, no upstream log leaves lua's Envoy.
    plain = Policy(tuple(dataclasses.replace(s, hash_ring=None) for s in policy.services))
    assert ENVOY_BALANCED_ATTEMPT_LOG_NAME not in str(render_bootstrap(plain, Settings()))


def test_a_weighted_route_carries_each_destinations_hash_and_keeps_previous_hosts() -> None:
    http = [
        {
            "name": "split",
            "route": [
                {"destination": {"host": "mydb.com", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "mydb.com"}, "weight": 10},
            ],
        }
    ]
    [route] = _routes(_load(vs=http), DataPath.MODULE)
    # processWeightedDestination appends each destination's policy, in order; with several
    # destinations ConvertPolicy keeps previous_hosts.
    assert route["route"]["hash_policy"] == [
        {"cookie": {"name": "session", "ttl": "0s", "path": "/"}},
        {"header": {"header_name": "x-user"}},
    ]
    assert route["route"]["retry_policy"]["retry_host_predicate"]


def test_envoys_own_detector_ejects_on_a_cluster_envoy_balances() -> None:
    # The ejection must reach Envoy's ring on the worker that saw the failure, as on Istio's
    # sidecar (applyOutlierDetection); the service's EDS marks no such host UNHEALTHY.
    services = _by_cluster(load_policy(TRAFFIC / "warmup.yaml"))
    cluster = _cluster(services[MAIN])
    detector = cluster.outlier_detection
    assert (detector.consecutive_5xx.value, detector.enforcing_consecutive_5xx.value) == (1, 100)
    assert detector.interval.seconds == 1
    assert detector.base_ejection_time.seconds == 30
    assert detector.enforcing_success_rate.value == 0
    # outlierDetectionHttpErrorCodes: applyOutlierDetectionErrorCodes' error matcher.
    options = cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]
    assert b":status" in options.value
    # A cluster the service picks for has no detector of Envoy's: the service ejects.
    plain = dataclasses.replace(services[MAIN], slow_start=None)
    assert not _cluster(plain).HasField("outlier_detection")
