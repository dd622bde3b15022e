"""The rendered bootstrap is exactly an Envoy Bootstrap message, in the .proto's field order."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Final

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from extproc.core.policy import LbAlgorithm, Policy, TlsMode, TlsSettings, UpstreamSni
from extproc.istio import load_policy
from extproc.render.bootstrap import eds_cluster_config, render_bootstrap
from extproc.render.typed import seconds, to_data
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath

ROOT: Final = Path(__file__).resolve().parents[2]
SEED: Final = ROOT / "tests" / "fixtures" / "seed"
SECRET: Final = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"

SETTINGS: Final = {
    "defaults": Settings(),
    "named-service": Settings(grpc=HostPort("extproc", 9002), secret=SECRET),
    "sockets": Settings(socket_dir=Path("/run/extproc")),
}
TLS: Final = {
    "simple": TlsSettings(TlsMode.SIMPLE),
    "endpoint-sni": TlsSettings(TlsMode.SIMPLE, sni_from=UpstreamSni.ENDPOINT),
    "sni-and-sans": TlsSettings(TlsMode.SIMPLE, sni="a.example", subject_alt_names=("a.example",)),
    "mutual": TlsSettings(
        TlsMode.MUTUAL, client_certificate="/c.pem", private_key="/k.pem", ca_crl="/crl.pem"
    ),
}


def _policies() -> dict[str, Policy]:
    policies = {
        "seed-outlier": load_policy(SEED / "step2-outlier.yaml"),
        "connection-pool": load_policy(SEED.parent / "traffic" / "connection-pool.yaml"),
    }
    (base,) = load_policy(SEED / "https.yaml").services
    for (name, tls), algorithm in zip(TLS.items(), itertools.cycle(LbAlgorithm)):
        service = dataclasses.replace(base, tls=tls, lb_algorithm=algorithm)
        policies[f"tls-{name}"] = Policy((service,))
    return policies


POLICIES: Final = _policies()


def _parsed(data: dict[str, Any], message: Any) -> Any:
    # ignore_unknown_fields=False: a key Envoy's API does not have fails the parse.
    json_format.ParseDict(data, message, ignore_unknown_fields=False)
    return message


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
@pytest.mark.parametrize("settings", list(SETTINGS.values()), ids=list(SETTINGS))
@pytest.mark.parametrize("policy", list(POLICIES.values()), ids=list(POLICIES))
def test_the_rendered_data_is_exactly_a_bootstrap_message(
    policy: Policy, settings: Settings, data_path: DataPath
) -> None:
    if data_path is DataPath.MODULE and settings.socket_dir is None:
        # The module reaches the service over its socket directory only.
        settings = dataclasses.replace(settings, socket_dir=Path("/run/extproc"))
    rendered = render_bootstrap(policy, dataclasses.replace(settings, data_path=data_path))
    message = _parsed(rendered, bootstrap_pb2.Bootstrap())
    # Nothing is lost or added on the way to plain data, and the order is the .proto's.
    assert to_data(message) == rendered
    assert list(to_data(message)) == list(rendered)


def test_the_eds_fields_are_exactly_cluster_fields() -> None:
    config = eds_cluster_config(Settings(secret=SECRET))
    cluster = _parsed(config, cluster_pb2.Cluster())
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.common_lb_config.update_merge_window.ToMilliseconds() == 0
    assert list(config) == ["type", "eds_cluster_config", "common_lb_config"]


def test_keys_come_in_the_order_envoy_documents_them() -> None:
    bootstrap = render_bootstrap(POLICIES["seed-outlier"], Settings())
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert list(route)[:3] == ["name", "match", "route"]
    assert list(hcm)[:2] == ["@type", "stat_prefix"]
    assert list(bootstrap["static_resources"]["clusters"][-1])[:2] == ["name", "type"]


@pytest.mark.parametrize(
    ("value_s", "expected"),
    [(10, "10s"), (0.25, "0.250s"), (1.0004, "1s"), (0.0016, "0.002s"), (0, "0s")],
    ids=["whole", "fraction", "below-a-millisecond", "rounded-up", "zero"],
)
def test_a_duration_keeps_istios_millisecond_precision(value_s: float, expected: str) -> None:
    cluster = cluster_pb2.Cluster(connect_timeout=seconds(value_s))
    assert to_data(cluster)["connect_timeout"] == expected
