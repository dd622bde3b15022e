"""A VirtualService's ``corsPolicy``: Envoy's CORS policy as pilot's ``TranslateCORSPolicy``
writes it, the filter in the chain only when a route has one, and Istio's validation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from extproc.core.policy import Policy
from extproc.errors import ConfigError
from extproc.istio import load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.render.filters import CORS_FILTER
from extproc.render.routes import route_config
from extproc.settings import Settings

from .test_mirror import VS_AT, _entry


def _policy(cors: dict[str, Any] | None) -> Policy:
    http: dict[str, Any] = {"route": [{"destination": {"host": "mydb.com"}}]}
    if cors is not None:
        http["corsPolicy"] = cors
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "db"},
        "spec": {"hosts": ["mydb.com"], "http": [http]},
    }
    return load_policy_text(yaml.safe_dump_all([_entry("mydb.com", "127.0.3.1"), vs]), "cfg.yaml")


def _cors_config(policy: Policy) -> dict[str, Any]:
    config = json_format.MessageToDict(route_config(policy, Settings()))
    [host] = [h for h in config["virtualHosts"] if h["name"] == "outbound|80||mydb.com"]
    return dict(host["routes"][0]["typedPerFilterConfig"][CORS_FILTER])


def test_a_cors_policy_is_pilots_translation() -> None:
    policy = _policy(
        {
            "allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}],
            "allowMethods": ["GET", "POST"],
            "allowHeaders": ["x-a", "x-b"],
            "exposeHeaders": ["x-c"],
            "maxAge": "90s",
            "allowCredentials": True,
        }
    )
    assert _cors_config(policy) == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allowOriginStringMatch": [
            {"exact": "https://a.example"},
            {"safeRegex": {"regex": "https://.*\\.b\\.example"}},
        ],
        "allowMethods": "GET,POST",
        "allowHeaders": "x-a,x-b",
        "exposeHeaders": "x-c",
        "maxAge": "90",
        "allowCredentials": True,
        "filterEnabled": {"defaultValue": {"numerator": 100}},
        "forwardNotMatchingPreflights": True,
    }


def test_the_deprecated_allow_origin_is_exact_and_ignore_answers_unmatched_preflights() -> None:
    cors = _cors_config(
        _policy({"allowOrigin": ["https://a.example"], "unmatchedPreflights": "IGNORE"})
    )
    assert cors["allowOriginStringMatch"] == [{"exact": "https://a.example"}]
    assert cors["forwardNotMatchingPreflights"] is False


def test_the_cors_filter_is_in_the_chain_after_the_fault_filter_only_with_a_policy() -> None:
    def names(policy: Policy) -> list[str]:
        hcm = render_bootstrap(policy, Settings())["static_resources"]["listeners"][0]
        chain = hcm["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        return [f["name"] for f in chain]

    assert CORS_FILTER not in names(_policy(None))
    assert names(_policy({"allowOrigins": [{"exact": "https://a.example"}]}))[0] == CORS_FILTER


@pytest.mark.parametrize(
    ("cors", "expected"),
    [
        (
            {"allowOrigins": [{"exact": ""}]},
            "allowOrigins[0]: '' is not a valid match type for CORS allow origins",
        ),
        ({"allowMethods": ["get"]}, 'allowMethods: "get" is not a supported HTTP method'),
        ({"allowHeaders": ["a b"]}, "allowHeaders: header name a b is not a valid header name"),
        ({"maxAge": "1.5s"}, "maxAge: max_age duration is accurate only to seconds precision"),
    ],
    ids=["empty-origin", "method-case", "header-name", "max-age-fraction"],
)
def test_a_cors_policy_is_validated_like_istio(cors: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy(cors)
    assert [str(p) for p in caught.value.problems] == [
        VS_AT + "spec.http[0].corsPolicy." + expected
    ]
