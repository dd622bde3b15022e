"""The one Kubernetes API read extproc makes: a Node's labels, with the pod's service account.

In a pod, the kubelet sets ``KUBERNETES_SERVICE_HOST`` and ``KUBERNETES_SERVICE_PORT`` and
mounts the service account's token and the cluster's CA in
``/var/run/secrets/kubernetes.io/serviceaccount/`` (``EXTPROC_KUBE_SERVICEACCOUNT_DIR``
overrides that directory, for tests), which is what client-go's ``rest.InClusterConfig``
reads. The token is read again for every request because the kubelet rotates it.

The service account needs ``get`` on ``nodes`` (a ClusterRole: nodes are not namespaced).
Standard library only: one ``GET /api/v1/nodes/NAME`` over TLS checked against ``ca.crt``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from extproc import __version__
from extproc.clock import Clock, MonotonicClock
from extproc.errors import ExtprocError

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_ACCOUNT_DIR_VAR = "EXTPROC_KUBE_SERVICEACCOUNT_DIR"
#: What the service account must be allowed, said in every 403's message.
RBAC_RULE = 'apiGroups: [""], resources: ["nodes"], verbs: ["get"]'

_MAX_BODY = 4 << 20  # a Node object is a few kB; managedFields can make it tens


@dataclass(frozen=True, slots=True)
class InCluster:
    """Where the API server is and the service account's files, as a pod sees them."""

    host: str
    port: int
    token_file: Path
    ca_file: Path

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def in_cluster(env: Mapping[str, str] | None = None) -> InCluster:
    """The in-cluster API server and credentials (client-go's ``rest.InClusterConfig``).

    Raises:
        ExtprocError: not in a pod (the variables are unset), or the token or CA is missing.
    """
    env = os.environ if env is None else env
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip("[]")
    port_text = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port_text:
        raise ExtprocError(
            "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT are not set (the kubelet sets them in every container)"
        )
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ExtprocError(f"KUBERNETES_SERVICE_PORT={port_text!r} is not a port")
    directory = Path(env.get(SERVICE_ACCOUNT_DIR_VAR) or SERVICE_ACCOUNT_DIR)
    found = InCluster(host, int(port_text), directory / "token", directory / "ca.crt")
    for path, what in ((found.token_file, "token"), (found.ca_file, "CA certificate")):
        if not path.is_file():
            raise ExtprocError(
                f"the service account's {what} {path} is missing: the pod needs "
                "automountServiceAccountToken (the default) or a projected token volume "
                f"there (${SERVICE_ACCOUNT_DIR_VAR} names another directory)"
            )
    return found


class _Retry(Exception):
    """An answer worth asking again: no connection, or a 5xx / 429."""


def read_node_labels(
    node: str,
    *,
    env: Mapping[str, str] | None = None,
    deadline_s: float = 10.0,
    timeout_s: float = 5.0,
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """The labels of Node ``node``, read from the API server with the pod's service account.

    Connection errors, 5xx and 429 are retried with backoff (0.2 s doubling to 2 s) for
    ``deadline_s``; 401, 403 and 404 are answers, not retried.

    Raises:
        ExtprocError: naming the node and the URL, and what is needed (the RBAC rule on a 403).
    """
    try:
        cluster = in_cluster(env)
        url = f"{cluster.base_url}/api/v1/nodes/{urllib.parse.quote(node, safe='')}"
        context = _tls_context(cluster.ca_file)
        return _with_retries(
            lambda attempt_s: _get_node_labels(cluster, node, url, context, attempt_s),
            url,
            deadline_s,
            timeout_s,
            clock or MonotonicClock(),
            sleep,
        )
    except ExtprocError as exc:
        raise ExtprocError(f"--locality-from-node {node}: {exc}") from exc


def _with_retries(
    get: Callable[[float], dict[str, str]],
    url: str,
    deadline_s: float,
    timeout_s: float,
    clock: Clock,
    sleep: Callable[[float], None],
) -> dict[str, str]:
    """``get(timeout)``, again after each ``_Retry`` until ``deadline_s`` has passed; no
    attempt waits past the deadline (by more than a tenth of a second)."""
    end, delay_s, attempts = clock.now() + deadline_s, 0.2, 0
    while True:
        attempts += 1
        try:
            return get(max(min(timeout_s, end - clock.now()), 0.1))
        except _Retry as exc:
            left_s = end - clock.now()
            if left_s <= 0:
                raise ExtprocError(
                    f"cannot read {url}: {exc} ({attempts} attempts in {deadline_s:g} s)"
                ) from None
            log.warning("kube.retry", url=url, error=str(exc), attempt=attempts)
            sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, 2.0)


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ExtprocError(f"the service account's CA certificate {ca_file}: {exc}") from exc


def _get_node_labels(
    cluster: InCluster, node: str, url: str, context: ssl.SSLContext, timeout_s: float
) -> dict[str, str]:
    """One GET of the Node; raises ``_Retry`` for what may pass, ExtprocError for the rest."""
    try:
        token = cluster.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtprocError(f"cannot read the service account token: {exc}") from exc
    if not token:
        raise ExtprocError(f"the service account token {cluster.token_file} is empty")
    connection = http.client.HTTPSConnection(
        cluster.host, cluster.port, timeout=timeout_s, context=context
    )
    try:
        connection.request(
            "GET",
            urllib.parse.urlsplit(url).path,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"extproc/{__version__}",
            },
        )
        response = connection.getresponse()
        body = response.read(_MAX_BODY)
    except ssl.SSLCertVerificationError as exc:
        raise ExtprocError(
            f"GET {url}: the API server's certificate is not "
            f"trusted by {cluster.ca_file}: {exc.verify_message}"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    status = response.status
    if status == 200:
        return _labels_of(node, url, body)
    said = _status_message(body)
    if status >= 500 or status == 429:
        raise _Retry(f"status {status}{said}")
    if status == 401:
        raise ExtprocError(
            f"GET {url}: 401 Unauthorized: the API server "
            f"rejected the service account token in {cluster.token_file}{said}"
        )
    if status == 403:
        raise ExtprocError(
            f"GET {url}: 403 Forbidden: the pod's service "
            "account may not read nodes; bind it to a ClusterRole with the rule "
            f"{RBAC_RULE}{said}"
        )
    if status == 404:
        raise ExtprocError(
            f"GET {url}: 404: no node named {node!r} (set the "
            "flag from the downward API's spec.nodeName)"
        )
    raise ExtprocError(f"GET {url}: status {status}{said}")


def _labels_of(node: str, url: str, body: bytes) -> dict[str, str]:
    """``metadata.labels`` of a Node object (none: an empty dict)."""
    try:
        obj = json.loads(body)
        labels = obj.get("metadata", {}).get("labels") or {}
        if obj.get("kind", "Node") != "Node" or not isinstance(labels, dict):
            raise TypeError(obj.get("kind"))
    except (ValueError, TypeError, AttributeError):
        raise ExtprocError(f"GET {url}: the answer is not a Node object") from None
    return {str(k): str(v) for k, v in labels.items()}


def _status_message(body: bytes) -> str:
    """``; the API server says: ...`` from a ``Status`` object, or nothing."""
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return ""
    return (
        f" (the API server says: {message[:300]})" if isinstance(message, str) and message else ""
    )
