"""What ``extproc check`` reports for a valid config: the summary and the locality warning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from extproc.core.policy import Locality, Policy, Workload
from extproc.istio import check_summary, load_policy, load_policy_text, locality_warnings

SEED: Final = Path(__file__).parent.parent / "fixtures" / "seed"

SE: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "db"},
    "spec": {
        "hosts": ["mydb.com"],
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "endpoints": [
            {"address": "10.0.0.1", "locality": "us-east1/us-east1-b"},
            {"address": "10.0.0.2", "locality": "us-west"},
        ],
    },
}

OUTLIER: Final = {"outlierDetection": {"maxEjectionPercent": 100}}


def _dr(host: str = "mydb.com", **policy: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split(".")[0]},
        "spec": {"host": host, "trafficPolicy": policy},
    }


def _policy(*docs: dict[str, Any]) -> Policy:
    return load_policy_text("---\n".join(yaml.safe_dump(d) for d in docs), "cfg.yaml")


def _at(locality: str) -> Workload:
    return Workload(locality=Locality.parse(locality))


# ---------------------------------------------------------------------------------------------
# locality_warnings

SEED_REGIONS: Final = "(the config has: us-east1, us-west)"
FLAT: Final = "every endpoint is in priority 0 and locality failover is off"


@pytest.mark.parametrize(
    ("locality", "expected"),
    [
        pytest.param(
            "US-EAST1",
            f'--locality "US-EAST1" matches no endpoint\'s region {SEED_REGIONS}: {FLAT}; '
            'regions are case-sensitive, as in Istio: did you mean "us-east1"?',
            id="wrong-case",
        ),
        pytest.param(
            "", f'--locality "" matches no endpoint\'s region {SEED_REGIONS}: {FLAT}', id="empty"
        ),
        pytest.param(
            "eu-west1/a",
            f'--locality "eu-west1/a" matches no endpoint\'s region {SEED_REGIONS}: {FLAT}',
            id="other-region",
        ),
    ],
)
def test_a_locality_that_matches_no_region_is_warned_with_the_regions_there_are(
    locality: str, expected: str
) -> None:
    policy = load_policy(SEED / "step2-outlier.yaml")
    assert locality_warnings(policy, _at(locality)) == [expected]


@pytest.mark.parametrize("locality", ["us-east1", "us-west", "us-east1/other-zone"])
def test_a_locality_in_an_endpoint_region_is_not_warned(locality: str) -> None:
    policy = load_policy(SEED / "step2-outlier.yaml")
    assert locality_warnings(policy, _at(locality)) == []


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(None, id="no-destination-rule"),
        pytest.param({"loadBalancer": {"simple": "RANDOM"}}, id="no-outlier-detection"),
        pytest.param(
            {"loadBalancer": {"localityLbSetting": {"enabled": False}}, **OUTLIER},
            id="locality-lb-disabled",
        ),
        pytest.param(
            {
                "loadBalancer": {
                    "localityLbSetting": {"distribute": [{"from": "*", "to": {"us-west/*": 100}}]}
                },
                **OUTLIER,
            },
            id="distribute",
        ),
        pytest.param(
            {"loadBalancer": {"localityLbSetting": {"failoverPriority": ["app"]}}, **OUTLIER},
            id="failover-priority-without-locality-labels",
        ),
    ],
)
def test_a_locality_that_cannot_matter_is_not_warned(policy: dict[str, Any] | None) -> None:
    docs = [SE] if policy is None else [SE, _dr(**policy)]
    assert locality_warnings(_policy(*docs), _at("US-EAST1")) == []


def test_endpoints_without_a_locality_are_not_warned_about() -> None:
    se = copy.deepcopy(SE)
    for endpoint in se["spec"]["endpoints"]:
        del endpoint["locality"]
    assert locality_warnings(_policy(se, _dr(**OUTLIER)), _at("us-east1")) == []


def test_a_failover_priority_on_the_region_label_is_warned() -> None:
    lls = {"failoverPriority": ["topology.kubernetes.io/region"]}
    policy = _policy(SE, _dr(loadBalancer={"localityLbSetting": lls}, **OUTLIER))
    assert locality_warnings(policy, _at("eu")) == [
        '--locality "eu" matches no endpoint\'s region (the config has: us-east1, us-west): ' + FLAT
    ]


def test_one_warning_per_config_names_the_services_only_some_of_which_miss() -> None:
    se = copy.deepcopy(SE)
    se["spec"]["hosts"] = ["mydb.com", "other.com"]
    other = copy.deepcopy(SE)
    other["metadata"]["name"] = "far"
    other["spec"]["hosts"] = ["far.com"]
    other["spec"]["endpoints"] = [
        {"address": "10.0.1.1", "locality": "eu-west1"},
        {"address": "10.0.1.2", "locality": "eu-north1"},
    ]
    policy = _policy(
        se, other, _dr(**OUTLIER), _dr("other.com", **OUTLIER), _dr("far.com", **OUTLIER)
    )
    assert locality_warnings(policy, _at("us-east1")) == [
        '--locality "us-east1" matches no endpoint\'s region in outbound|80||far.com '
        f"(the config has: eu-north1, eu-west1): {FLAT}"
    ]


# ---------------------------------------------------------------------------------------------
# check_summary


def test_summary_counts_objects_lists_services_and_the_priorities_a_workload_gets() -> None:
    policy = load_policy(SEED / "https.yaml")
    assert check_summary(policy, _at("us-east1")) == (
        "objects: 2 (1 DestinationRule, 1 ServiceEntry)\n"
        "services: 1\n"
        "  outbound|80||mydb.com  2 endpoints, DNS, ROUND_ROBIN, outlier detection (1 x 5xx, "
        "every 15s, ejected 60s, at most 10%), locality failover, TLS SIMPLE\n"
        'endpoints for the locality "us-east1", before any traffic:\n'
        "ENDPOINT                              STATUS   OUTLIER CHECK  CLUSTER                "
        "LOCALITY  PRIORITY\n"
        "dynamodb.us-east-1.amazonaws.com:443  HEALTHY  OK             outbound|80||mydb.com  "
        "us-east1  0\n"
        "dynamodb.us-west-1.amazonaws.com:443  HEALTHY  OK             outbound|80||mydb.com  "
        "us-west   1"
    )


def test_summary_priorities_follow_the_workload() -> None:
    policy = load_policy(SEED / "https.yaml")
    rows = check_summary(policy, _at("us-west")).splitlines()[-2:]
    assert [row.split()[-1] for row in rows] == ["1", "0"]


def test_summary_without_a_workload_has_no_priority_column() -> None:
    summary = check_summary(load_policy(SEED / "step1-serviceentry.yaml"), None)
    assert summary.splitlines() == [
        "objects: 1 (1 ServiceEntry)",
        "services: 1",
        "  outbound|80||mydb.com  2 endpoints, DNS, LEAST_REQUEST, no outlier detection, "
        "no locality failover (it needs outlierDetection)",
        "endpoints, before any traffic (give --locality for their priorities):",
        "ENDPOINT                             STATUS   OUTLIER CHECK  CLUSTER                "
        "LOCALITY",
        "dynamodb.us-east-1.amazonaws.com:80  HEALTHY  OK             outbound|80||mydb.com  "
        "us-east1",
        "dynamodb.us-west-1.amazonaws.com:80  HEALTHY  OK             outbound|80||mydb.com  "
        "us-west",
    ]


def test_summary_counts_skipped_objects_too() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}
    summary = check_summary(_policy(SE, service, service), None)
    assert summary.splitlines()[0] == "objects: 3 (2 Service, 1 ServiceEntry)"


def test_summary_marks_an_endpoint_distribute_sends_nothing() -> None:
    lls = {"distribute": [{"from": "us-east1/*", "to": {"us-west/*": 100}}]}
    policy = _policy(SE, _dr(loadBalancer={"localityLbSetting": lls}))
    rows = check_summary(policy, _at("us-east1/us-east1-b")).splitlines()
    assert rows[2].endswith("locality weights (distribute)")
    assert [row.split()[-1] for row in rows[-2:]] == ["-", "0"]


def test_summary_shows_an_ipv6_endpoint_in_brackets() -> None:
    se = copy.deepcopy(SE)
    se["spec"]["endpoints"] = [{"address": "2001:db8::1", "locality": "us-east1"}]
    rows = check_summary(_policy(se), None).splitlines()
    assert rows[-1].startswith("[2001:db8::1]:80  HEALTHY")
