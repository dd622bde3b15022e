"""DestinationRule ``subsets``: one cluster each, as pilot's ``buildSubsetCluster`` builds it.

Endpoints by labels (``WithSubset``, the locality's topology labels included), the rule's
policy with the subset's merged over it (``MergeSubsetTrafficPolicy``), and the routes of a
VirtualService that name a subset.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import yaml
from google.protobuf import json_format

from extproc.core.policy import UNLIMITED, LbAlgorithm, Policy, Service, route_domains
from extproc.istio import load_policy, load_policy_text
from extproc.render.routes import route_config
from extproc.settings import Settings
from extproc.wire import DataPath

FIXTURE: Final = Path(__file__).parent.parent / "fixtures" / "traffic" / "subsets.yaml"


def _by_cluster(policy: Policy) -> dict[str, Service]:
    return {s.cluster_name: s for s in policy.services}


def _load(change: dict[str, Any]) -> Policy:
    docs = [d for d in yaml.safe_load_all(FIXTURE.read_text()) if d]
    docs[1]["spec"] |= copy.deepcopy(change)
    return load_policy_text("---\n".join(yaml.safe_dump(d) for d in docs), "cfg.yaml")


def test_each_subset_is_its_own_cluster_with_the_endpoints_of_its_labels() -> None:
    services = _by_cluster(load_policy(FIXTURE))
    assert list(services) == [
        "outbound|80||mydb.com",
        "outbound|80|v1|mydb.com",
        "outbound|80|v2|mydb.com",
        "outbound|80|east|mydb.com",
    ]
    addresses = {name: [e.address for e in s.endpoints] for name, s in services.items()}
    assert addresses["outbound|80|v1|mydb.com"] == ["127.0.3.1", "127.0.3.2"]
    assert addresses["outbound|80|v2|mydb.com"] == ["127.0.3.3", "127.0.3.4"]
    # The locality's region label counts, as pilot's AugmentLabels adds it.
    assert addresses["outbound|80|east|mydb.com"] == ["127.0.3.1", "127.0.3.3"]


def test_a_subsets_policy_is_merged_over_the_rules_block_by_block() -> None:
    services = _by_cluster(load_policy(FIXTURE))
    v1, v2 = services["outbound|80|v1|mydb.com"], services["outbound|80|v2|mydb.com"]
    # v1 has no policy of its own: the rule's, whole.
    assert v1.pool.connect_timeout_s == 0.25
    assert v1.lb_algorithm is LbAlgorithm.LEAST_REQUEST
    # v2's connectionPool replaces the rule's whole block (its connectTimeout too), its
    # loadBalancer applies, and the rule's outlierDetection stays.
    assert v2.pool.connect_timeout_s == 10.0
    assert v2.pool.max_pending_requests == 5
    assert v2.pool.max_connections == UNLIMITED
    assert v2.lb_algorithm is LbAlgorithm.ROUND_ROBIN
    assert v2.outlier_detection == v1.outlier_detection is not None


def test_a_subsets_port_level_entry_replaces_every_block() -> None:
    subset = {
        "name": "v2",
        "labels": {"version": "v2"},
        "trafficPolicy": {
            "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]
        },
    }
    services = _by_cluster(_load({"subsets": [subset]}))
    v2 = services["outbound|80|v2|mydb.com"]
    assert v2.lb_algorithm is LbAlgorithm.RANDOM
    assert v2.outlier_detection is None  # not inherited: the port's entry replaces all
    assert v2.pool.connect_timeout_s == 10.0


def test_subsets_get_no_virtual_host_and_routes_name_their_clusters() -> None:
    policy = load_policy(FIXTURE)
    assert [s.cluster_name for s, _ in route_domains(policy.services)] == ["outbound|80||mydb.com"]
    config = json_format.MessageToDict(route_config(policy, Settings(data_path=DataPath.LUA)))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    canary, stable = host["routes"]
    assert canary["route"]["cluster"] == "outbound|80|v2|mydb.com"
    assert stable["route"]["cluster"] == "outbound|80|v1|mydb.com"
    # The lua path picks a host of the route's cluster, the subset's.
    lua = canary["metadata"]["filterMetadata"]["envoy.filters.http.lua"]
    assert lua == {"service": "outbound|80|v2|mydb.com"}
    assert "validateClusters" not in config


def test_a_route_to_an_undefined_subset_is_envoys_503_with_a_warning() -> None:
    docs = [d for d in yaml.safe_load_all(FIXTURE.read_text()) if d]
    docs[2]["spec"]["http"][1]["route"][0]["destination"]["subset"] = "v9"
    policy = load_policy_text("---\n".join(yaml.safe_dump(d) for d in docs), "cfg.yaml")
    assert [w.path for w in policy.warnings] == ["spec.http[1].route[0].destination.subset"]
    config = json_format.MessageToDict(route_config(policy, Settings()))
    assert config["validateClusters"] is False


def test_subset_names_and_labels_are_validated_like_istio() -> None:
    import pytest

    from extproc.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(
            {
                "subsets": [
                    {"name": "V_1"},
                    {"name": "a", "labels": {"bad key!": "x"}},
                    {"name": "a"},
                ]
            }
        )
    messages = [f"{p.path}: {p.message}" for p in caught.value.problems]
    assert "spec.subsets[0].name: subset name is invalid: V_1" in messages
    assert 'spec.subsets[1].labels.bad key!: invalid tag key: "bad key!"' in messages
    assert "spec.subsets[2].name: duplicate subset names: a" in messages
