"""A VirtualService's ``mirror`` and ``mirrors``: Envoy's request mirror policies, as pilot's
``applyHTTPRouteDestination`` and ``TranslateRequestMirrorPolicy`` write them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from extproc.core.policy import Policy
from extproc.core.routes import Mirror
from extproc.errors import ConfigError
from extproc.istio import load_policy_text
from extproc.render.routes import route_config
from extproc.settings import Settings

VS_AT = 'cfg.yaml: VirtualService "db" (document 2): '


def _entry(host: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": ip, "locality": "us-east1"}],
        },
    }


def _policy(http: dict[str, Any]) -> Policy:
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "db"},
        "spec": {
            "hosts": ["mydb.com"],
            "http": [{"name": "db", "route": [{"destination": {"host": "mydb.com"}}], **http}],
        },
    }
    docs = [_entry("mydb.com", "127.0.3.1"), vs, _entry("shadow.com", "127.0.3.9")]
    return load_policy_text(yaml.safe_dump_all(docs), "cfg.yaml")


def _mirror_policies(policy: Policy) -> list[dict[str, Any]]:
    config = json_format.MessageToDict(route_config(policy, Settings()))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    return list(host["routes"][0]["route"].get("requestMirrorPolicies", []))


SHADOW = "outbound|80||shadow.com"


def test_a_mirror_copies_every_request_unless_a_share_is_given() -> None:
    assert _mirror_policies(_policy({"mirror": {"host": "shadow.com"}})) == [
        {
            "cluster": SHADOW,
            "runtimeFraction": {"defaultValue": {"numerator": 100}},
            "traceSampled": False,
        }
    ]


def test_a_mirror_percentage_is_in_millionths_and_the_old_percent_in_hundredths() -> None:
    policy = _policy({"mirror": {"host": "shadow.com"}, "mirrorPercentage": {"value": 12.5}})
    [route] = policy.services[0].routes
    assert route.mirrors == (Mirror(SHADOW, 125000, per_million=True),)
    [rendered] = _mirror_policies(policy)
    assert rendered["runtimeFraction"]["defaultValue"] == {
        "numerator": 125000,
        "denominator": "MILLION",
    }
    old = _policy({"mirror": {"host": "shadow.com"}, "mirrorPercent": 30})
    assert old.services[0].routes[0].mirrors == (Mirror(SHADOW, 30),)
    assert [str(w) for w in old.warnings] == [
        VS_AT + 'spec.http[0].mirrorPercent: using deprecated setting "mirrorPercent", use '
        '"mirrorPercentage" instead'
    ]


def test_mirrors_each_get_a_policy_and_a_zero_share_copies_nothing() -> None:
    http = {
        "mirrors": [
            {"destination": {"host": "shadow.com"}, "percentage": {"value": 50}},
            {"destination": {"host": "mydb.com"}, "percentage": {"value": 0}},
            {"destination": {"host": "mydb.com"}},
        ]
    }
    [route] = _policy(http).services[0].routes
    assert route.mirrors == (
        Mirror(SHADOW, 500000, per_million=True),
        Mirror("outbound|80||mydb.com", 100),
    )


def test_a_mirror_to_a_host_no_service_entry_declares_is_a_warning() -> None:
    policy = _policy({"mirror": {"host": "nowhere.com"}})
    assert [str(w) for w in policy.warnings] == [
        VS_AT + "spec.http[0].mirror.host: 'nowhere.com' is no ServiceEntry host: as on "
        "Istio's sidecar, its cluster does not exist and Envoy answers 503"
    ]
    config = json_format.MessageToDict(route_config(policy, Settings()))
    assert config["validateClusters"] is False


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        (
            {"mirror": {"host": "shadow.com"}, "mirrors": [{"destination": {"host": "a.com"}}]},
            "spec.http[0]: HTTP route cannot contain both mirror and mirrors",
        ),
        (
            {"mirror": {"host": "shadow.com"}, "mirrorPercentage": {"value": 101}},
            "spec.http[0].mirrorPercentage: mirror_percentage must have a max value of 100 "
            "(it has 101.000000)",
        ),
        (
            {"mirrors": [{"percentage": {"value": 5}}]},
            "spec.http[0].mirrors[0]: destination is required for mirrors",
        ),
        (
            {"mirror": {"host": "*"}},
            "spec.http[0].mirror.host: invalid destination host *",
        ),
    ],
    ids=["mirror-and-mirrors", "percentage-over-100", "mirrors-without-destination", "star"],
)
def test_mirrors_are_validated_like_istio(http: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy(http)
    assert [str(p) for p in caught.value.problems] == [VS_AT + expected]
