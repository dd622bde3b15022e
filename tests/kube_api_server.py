"""A loopback stand-in of the Kubernetes API server's Node endpoint, over HTTPS.

No cluster runs on our machines. The stand-in serves ``GET /api/v1/nodes/NAME`` with a
trustme certificate, checks the bearer token as the API server does, and answers as it
would (200 with a Node, 401, 403, 404, 503). ``account_dir`` is the pod's service-account
directory (token, ``ca.crt``, namespace), named to the service by
``EXTPROC_KUBE_SERVICEACCOUNT_DIR``.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

from extproc.cli.kube_api import SERVICE_ACCOUNT_DIR_VAR


@dataclass
class NodeApi:
    """What the stand-in answers, and what it was asked."""

    token: str = "token-1"
    #: node -> its labels (None: a Node without metadata.labels)
    nodes: dict[str, dict[str, str] | None] = field(default_factory=dict)
    #: 403 for every node: the RBAC rule is missing
    forbidden: bool = False
    #: answer 503 to this many requests first
    unavailable: int = 0
    #: (path, Authorization) of every request
    requests: list[tuple[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    api: NodeApi

    def do_GET(self) -> None:
        api = self.api
        api.requests.append((self.path, self.headers.get("Authorization", "")))
        name = self.path.removeprefix("/api/v1/nodes/")
        if api.unavailable > 0:
            api.unavailable -= 1
            return self._status(503, "ServiceUnavailable", "etcd is busy")
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if api.forbidden:
            return self._status(
                403,
                "Forbidden",
                f'nodes "{name}" is forbidden: User "system:serviceaccount:app:client" '
                'cannot get resource "nodes" in API group "" at the cluster scope',
            )
        if not self.path.startswith("/api/v1/nodes/") or name not in api.nodes:
            return self._status(404, "NotFound", f'nodes "{name}" not found')
        metadata: dict[str, object] = {"name": name, "uid": "6f0c1c4e"}
        if (labels := api.nodes[name]) is not None:
            metadata["labels"] = labels
        self._json(200, {"kind": "Node", "apiVersion": "v1", "metadata": metadata})

    def _status(self, code: int, reason: str, message: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
        self._json(code, status | {"message": message, "reason": reason, "code": code})

    def _json(self, code: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@dataclass
class Cluster:
    """The stand-in, and the environment a pod on it would have."""

    api: NodeApi
    port: int
    account_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.port),
            SERVICE_ACCOUNT_DIR_VAR: str(self.account_dir),
        }

    def rotate_token(self, token: str) -> None:
        """What the kubelet does: a new token in the file, the old one no longer accepted."""
        (self.account_dir / "token").write_text(token + "\n")
        self.api.token = token


@contextmanager
def node_api(tmp_path: Path, api: NodeApi) -> Iterator[Cluster]:
    """Serve ``api`` on a free loopback port until the block ends."""
    ca = trustme.CA()
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    account_dir = tmp_path / "serviceaccount"
    account_dir.mkdir()
    (account_dir / "token").write_text(api.token + "\n")
    (account_dir / "namespace").write_text("default")
    ca.cert_pem.write_to_path(str(account_dir / "ca.crt"))
    try:
        yield Cluster(api, server.server_address[1], account_dir)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
