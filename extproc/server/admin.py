"""The admin address: the endpoint view, health and readiness, over plain HTTP.

- ``/clusters?format=json``: Envoy's admin ``envoy.admin.v3.Clusters`` JSON, with
  ``health_status.failed_outlier_check`` set exactly for ejected hosts, so tools that read
  Envoy's ``/clusters`` (``istioctl proxy-config endpoints --file``) read ours unchanged.
- ``/clusters``: the same as Envoy's text lines (``cluster::ip:port::health_flags::...``).
- ``/endpoints``: our own JSON per host (locality, priority, counters, ejection time left);
  ``extproc status`` prints it as a table.
- ``/healthz`` (live) and ``/readyz`` (config loaded and DNS answered once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from envoy.admin.v3 import clusters_pb2
from google.protobuf import json_format

from extproc.core.cluster import HostView
from extproc.core.table import ServiceTable
from extproc.server.http_server import HttpServer


def endpoints_json(table: ServiceTable, now: float) -> list[dict[str, Any]]:
    """Every host of every cluster, as ``extproc status`` shows them."""
    rows: list[dict[str, Any]] = []
    for cluster in table:
        for view in cluster.hosts(now):
            row = asdict(view)
            row["locality"] = str(view.locality)
            row["cluster_name"] = cluster.service.cluster_name
            rows.append(row)
    return rows


def _host_status(view: HostView) -> clusters_pb2.HostStatus:
    host, _, port = view.address.rpartition(":")
    status = clusters_pb2.HostStatus(
        weight=view.weight, priority=view.priority, hostname=view.endpoint_address
    )
    status.address.socket_address.address = host.strip("[]")
    status.address.socket_address.port_value = int(port)
    status.health_status.eds_health_status = 1  # HEALTHY: DNS hosts are healthy to EDS
    status.health_status.failed_outlier_check = view.ejected
    status.locality.region = view.locality.region
    status.locality.zone = view.locality.zone
    status.locality.sub_zone = view.locality.sub_zone
    return status


def clusters_proto(table: ServiceTable, now: float) -> clusters_pb2.Clusters:
    """Our state in Envoy's admin ``Clusters`` message."""
    message = clusters_pb2.Clusters()
    for cluster in table:
        status = message.cluster_statuses.add(name=cluster.service.cluster_name)
        status.host_statuses.extend(_host_status(v) for v in cluster.hosts(now))
    return message


def clusters_text(table: ServiceTable, now: float) -> str:
    """Envoy's ``/clusters`` text form, one line per host fact."""
    lines = []
    for cluster in table:
        name = cluster.service.cluster_name
        for view in cluster.hosts(now):
            prefix = f"{name}::{view.address}"
            flags = "/failed_outlier_check" if view.ejected else "healthy"
            lines += [
                f"{prefix}::hostname::{view.endpoint_address}",
                f"{prefix}::health_flags::{flags}",
                f"{prefix}::weight::{view.weight}",
                f"{prefix}::region::{view.locality.region}",
                f"{prefix}::zone::{view.locality.zone}",
                f"{prefix}::sub_zone::{view.locality.sub_zone}",
                f"{prefix}::priority::{view.priority}",
                f"{prefix}::rq_active::{view.active_requests}",
            ]
    return "\n".join(lines) + "\n"


class AdminServer(HttpServer):
    """The admin view over HTTP/1.1."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        now: Callable[[], float],
        ready: Callable[[], bool],
    ) -> None:
        super().__init__()
        self._table = table
        self._now = now
        self._ready = ready

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        status, content_type, text = self._respond(target)
        return status, content_type, text.encode()

    def _respond(self, target: str) -> tuple[int, str, str]:
        path, _, query = target.partition("?")
        now = self._now()
        if path == "/healthz":
            return 200, "text/plain", "ok\n"
        if path == "/readyz":
            return (
                (200, "text/plain", "ready\n")
                if self._ready()
                else (503, "text/plain", "not ready\n")
            )
        if path == "/endpoints":
            body = json.dumps(endpoints_json(self._table(), now), indent=2)
            return 200, "application/json", body + "\n"
        if path == "/clusters":
            if "format=json" in query.split("&"):
                message = clusters_proto(self._table(), now)
                return 200, "application/json", json_format.MessageToJson(message) + "\n"
            return 200, "text/plain", clusters_text(self._table(), now)
        return 404, "text/plain", "not found: try /clusters, /endpoints, /healthz, /readyz\n"
