"""A match's conditions on the client proxy (``sourceLabels``, ``gateways``,
``sourceNamespace``): pilot resolves them when it builds the proxy's routes
(``sourceMatchHTTP``), so each workload gets only the routes meant for it."""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf import json_format

from extproc.core.policy import Locality, Policy, Workload
from extproc.istio import load_policy_text
from extproc.render.routes import route_config
from extproc.settings import Settings

SERVICE_ENTRY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "db"},
    "spec": {
        "hosts": ["mydb.com"],
        "location": "MESH_EXTERNAL",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "endpoints": [{"address": "127.0.3.1", "locality": "us-east1"}],
    },
}


def _policy(*http: dict[str, Any]) -> Policy:
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "db"},
        "spec": {"hosts": ["mydb.com"], "http": list(http)},
    }
    return load_policy_text(yaml.safe_dump_all([SERVICE_ENTRY, vs]), "cfg.yaml", strict=True)


def _route(name: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"name": name, "route": [{"destination": {"host": "mydb.com"}}]}
    if match is not None:
        route["match"] = [match]
    return route


def _names(policy: Policy, workload: Workload) -> list[str]:
    config = json_format.MessageToDict(route_config(policy, Settings(workload=workload)))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    return [r["name"] for r in host["routes"]]


CANARY = Workload(Locality.parse("us-east1"), labels=(("app", "checkout"), ("track", "canary")))
STABLE = Workload(Locality.parse("us-east1"), labels=(("app", "checkout"),))


def test_a_route_for_other_workloads_is_left_out_and_the_next_one_reached() -> None:
    policy = _policy(_route("canary", {"sourceLabels": {"track": "canary"}}), _route("rest"))
    assert _names(policy, CANARY) == ["canary"]  # a catch-all: nothing after it
    assert _names(policy, STABLE) == ["rest"]


def test_source_labels_see_the_workloads_topology_labels() -> None:
    # The proxy's labels carry its locality, as pilot's AugmentLabels adds them.
    match = {"sourceLabels": {"topology.kubernetes.io/region": "us-east1"}}
    policy = _policy(_route("east", match), _route("rest"))
    assert _names(policy, STABLE) == ["east"]
    assert _names(policy, Workload(Locality.parse("us-west"))) == ["rest"]


def test_gateways_in_a_match_decide_alone() -> None:
    # sourceMatchHTTP: with gateways, "mesh" among them is enough; labels are not read.
    policy = _policy(
        _route("gateway-only", {"gateways": ["istio-system/egress"]}),
        _route("mesh", {"gateways": ["mesh"], "sourceLabels": {"app": "other"}}),
    )
    assert _names(policy, STABLE) == ["mesh"]


def test_a_source_namespace_never_matches_a_workload_without_one() -> None:
    policy = _policy(_route("ns", {"sourceNamespace": "shop"}), _route("rest"))
    assert _names(policy, STABLE) == ["rest"]


def test_no_route_left_for_the_workload_is_istios_default_route() -> None:
    policy = _policy(_route("canary", {"sourceLabels": {"track": "canary"}}))
    assert _names(policy, STABLE) == ["outbound|80||mydb.com"]


def test_a_stat_prefix_is_the_routes() -> None:
    policy = _policy(_route("stats", {"statPrefix": "db_reads", "uri": {"prefix": "/r"}}))
    config = json_format.MessageToDict(route_config(policy, Settings(workload=STABLE)))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    assert host["routes"][0]["statPrefix"] == "db_reads"
