"""``--locality-from-node`` against a loopback stand-in of the API server's Node endpoint.

No cluster runs here: ``tests/kube_api_server.py`` serves ``GET /api/v1/nodes/NAME`` over
HTTPS with a trustme certificate, checks the bearer token as the API server does, and
answers as it would (200 with a Node, 401, 403, 404, 503). The service account's directory
is a temp directory, named by ``EXTPROC_KUBE_SERVICEACCOUNT_DIR``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from extproc.cli.kube_api import SERVICE_ACCOUNT_DIR_VAR, read_node_labels
from extproc.cli.kube_workload import kubernetes_workload
from extproc.core.policy import Locality
from extproc.errors import ExtprocError
from tests.kube_api_server import Cluster, NodeApi, node_api

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "envoy" / "compose" / "mydb.yaml"  # endpoints in us-east1 and us-west

NODE_A = {
    "topology.kubernetes.io/region": "us-east1",
    "topology.kubernetes.io/zone": "us-east1-b",
    "kubernetes.io/hostname": "node-a",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with node_api(tmp_path, NodeApi(nodes={"node-a": NODE_A})) as running:
        yield running


def _no_sleep(_seconds: float) -> None:
    """Retries without waiting: the deadline still bounds them."""


# --- the API read ---------------------------------------------------------------------------


def test_the_node_labels_are_read_with_the_service_account_token(cluster: Cluster) -> None:
    assert read_node_labels("node-a", env=cluster.env) == NODE_A
    assert cluster.api.requests == [("/api/v1/nodes/node-a", "Bearer token-1")]


def test_the_token_is_read_again_for_each_request(cluster: Cluster) -> None:
    read_node_labels("node-a", env=cluster.env)
    cluster.rotate_token("token-2")
    assert read_node_labels("node-a", env=cluster.env) == NODE_A
    assert cluster.api.requests[-1] == ("/api/v1/nodes/node-a", "Bearer token-2")


def test_a_node_without_labels_is_an_error_naming_the_region_label(cluster: Cluster) -> None:
    cluster.api.nodes["bare"] = None

    def node_labels(node: str) -> dict[str, str]:
        return read_node_labels(node, env=cluster.env)

    with pytest.raises(ExtprocError) as error:
        kubernetes_workload(
            locality=None, labels=(), labels_file=None, node="bare", node_labels=node_labels
        )
    assert str(error.value).startswith(
        "--locality-from-node bare: the node has no topology.kubernetes.io/region label"
    )
    assert "it has no topology label" in str(error.value)


def test_the_node_gives_the_locality_through_the_api(cluster: Cluster) -> None:
    def node_labels(node: str) -> dict[str, str]:
        return read_node_labels(node, env=cluster.env)

    locality, _ = kubernetes_workload(
        locality=None, labels=(), labels_file=None, node="node-a", node_labels=node_labels
    )
    assert locality == Locality("us-east1", "us-east1-b")


def test_403_names_the_rbac_rule_and_is_not_retried(cluster: Cluster) -> None:
    cluster.api.forbidden = True
    with pytest.raises(ExtprocError) as error:
        read_node_labels("node-a", env=cluster.env, sleep=_no_sleep)
    message = str(error.value)
    url = f"https://127.0.0.1:{cluster.port}/api/v1/nodes/node-a"
    assert message.startswith(f"--locality-from-node node-a: GET {url}: 403 Forbidden")
    assert 'resources: ["nodes"], verbs: ["get"]' in message
    assert 'cannot get resource "nodes"' in message  # the API server's own words
    assert len(cluster.api.requests) == 1


def test_404_says_no_such_node_and_is_not_retried(cluster: Cluster) -> None:
    with pytest.raises(ExtprocError, match=r"GET https://\S+/api/v1/nodes/node-z: 404: no node"):
        read_node_labels("node-z", env=cluster.env, sleep=_no_sleep)
    assert len(cluster.api.requests) == 1


def test_a_rejected_token_is_401_and_not_retried(cluster: Cluster) -> None:
    cluster.api.token = "another"
    with pytest.raises(ExtprocError, match="401 Unauthorized: the API server rejected the"):
        read_node_labels("node-a", env=cluster.env, sleep=_no_sleep)
    assert len(cluster.api.requests) == 1


def test_503_is_retried_until_the_node_is_read(cluster: Cluster) -> None:
    cluster.api.unavailable = 2
    assert read_node_labels("node-a", env=cluster.env, sleep=_no_sleep) == NODE_A
    assert len(cluster.api.requests) == 3


def test_503_past_the_deadline_is_an_error_with_the_status(cluster: Cluster) -> None:
    cluster.api.unavailable = 10**6
    with pytest.raises(ExtprocError, match=r"status 503 \(the API server says: etcd is busy\)"):
        read_node_labels("node-a", env=cluster.env, deadline_s=0.3)
    assert len(cluster.api.requests) >= 2


def test_an_unreachable_api_server_is_retried_then_an_error_naming_the_url(
    cluster: Cluster,
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = cluster.env | {"KUBERNETES_SERVICE_PORT": str(closed.getsockname()[1])}
        url = f"https://127.0.0.1:{closed.getsockname()[1]}/api/v1/nodes/node-a"
        with pytest.raises(ExtprocError) as error:
            read_node_labels("node-a", env=env, deadline_s=0.5)
    assert str(error.value).startswith(f"--locality-from-node node-a: cannot read {url}: ")
    assert "refused" in str(error.value)
    assert "attempts in 0.5 s" in str(error.value)


def test_a_silent_api_server_is_given_up_at_the_deadline(cluster: Cluster) -> None:
    with socket.socket() as silent:  # listens, never accepts: the TLS handshake hangs
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = cluster.env | {"KUBERNETES_SERVICE_PORT": str(silent.getsockname()[1])}
        started = time.monotonic()
        with pytest.raises(ExtprocError, match=r"cannot read https://\S+: .*timed out"):
            read_node_labels("node-a", env=env, deadline_s=0.5, timeout_s=5.0)
    assert time.monotonic() - started < 2.0  # not the 5 s of one attempt's timeout


def test_an_api_server_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    trustme.CA().cert_pem.write_to_path(str(cluster.account_dir / "ca.crt"))
    with pytest.raises(ExtprocError, match=r"certificate is not trusted by \S+ca\.crt"):
        read_node_labels("node-a", env=cluster.env, sleep=_no_sleep)


def test_outside_a_pod_the_error_says_so(cluster: Cluster) -> None:
    env = {SERVICE_ACCOUNT_DIR_VAR: str(cluster.account_dir)}
    with pytest.raises(ExtprocError, match="node-a: not running in a Kubernetes pod"):
        read_node_labels("node-a", env=env)
    assert cluster.api.requests == []


@pytest.mark.parametrize(("file", "what"), [("token", "token"), ("ca.crt", "CA certificate")])
def test_a_missing_service_account_file_is_named(cluster: Cluster, file: str, what: str) -> None:
    (cluster.account_dir / file).unlink()
    with pytest.raises(ExtprocError, match=f"service account's {what} .*{file} is missing"):
        read_node_labels("node-a", env=cluster.env)


# --- the real command line ----------------------------------------------------------------------


def _extproc(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXTPROC_", "KUBERNETES_"))}
    return subprocess.run(
        [sys.executable, "-m", "extproc", *argv],
        env=env | cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_shows_the_priorities_for_the_nodes_locality(
    cluster: Cluster, tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    labels.write_text('app="mydb-client"\npod-template-hash="7d9f8b6c4d"')
    result = _extproc(
        cluster,
        "check",
        str(SEED),
        "--locality-from-node",
        "node-a",
        "--workload-labels-file",
        str(labels),
    )
    assert result.returncode == 0, result.stderr
    assert 'endpoints for the locality "us-east1/us-east1-b" and labels app=mydb-client' in (
        result.stdout
    )
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if ":8080" in line}
    assert rows["dynamodb.us-east-1.amazonaws.com:8080"][-2:] == ["us-east1", "0"]
    assert rows["dynamodb.us-west-1.amazonaws.com:8080"][-2:] == ["us-west", "1"]
    assert cluster.api.requests == [("/api/v1/nodes/node-a", "Bearer token-1")]


def test_check_fails_with_the_rbac_rule_when_nodes_are_forbidden(cluster: Cluster) -> None:
    cluster.api.forbidden = True
    result = _extproc(cluster, "check", str(SEED), "--locality-from-node", "node-a")
    assert result.returncode == 1
    assert "extproc check: --locality-from-node node-a: GET https://127.0.0.1:" in result.stderr
    assert 'verbs: ["get"]' in result.stderr
