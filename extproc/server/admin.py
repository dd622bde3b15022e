"""The admin address: the endpoint view, metrics, health and readiness, over plain HTTP.

- ``/clusters?format=json``: Envoy's admin ``envoy.admin.v3.Clusters`` JSON, with
  ``health_status.failed_outlier_check`` set exactly for ejected hosts, so tools that read
  Envoy's ``/clusters`` (``istioctl proxy-config endpoints --file``) read ours unchanged.
  Field names are the proto's (snake_case) and defaults are left out, as Envoy writes them.
- ``/clusters``: the same as Envoy's text lines (``cluster::ip:port::health_flags::...``).
- ``/endpoints``: our own JSON per host (locality, priority, counters, ejection time left);
  ``extproc status`` prints it as a table.
- ``/metrics``: Prometheus text format (``server/metrics.py``).
- ``/healthz`` (live) and ``/readyz`` (config loaded and DNS answered once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from envoy.admin.v3 import clusters_pb2, metrics_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from extproc.core.hostset import HostView
from extproc.core.policy import ConnectionPool, is_ip
from extproc.core.table import ServiceTable
from extproc.server.http_server import HttpServer
from extproc.server.metrics import (
    CONNECT_FAILURE,
    CONTENT_TYPE,
    HTTP_5XX,
    SUCCESS,
    TIMEOUT,
    Metrics,
)

#: The attempts counted on one host by outcome: ``(cluster_name, upstream_url) -> counts``.
HostStats = Callable[[str, str], dict[str, int]]

_HEALTHY = 1  # envoy.config.core.v3.HealthStatus.HEALTHY
#: The high-priority thresholds Envoy gives a cluster that sets none (circuit_breaker.proto
#: defaults); Istio sets the default priority's only.
_ENVOY_HIGH_PRIORITY = (1024, 1024, 1024, 3)


def _breakers(pool: ConnectionPool) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Per routing priority, as Envoy's admin shows them: max connections, pending
    requests, requests and retries."""
    default = (pool.max_connections, pool.max_pending_requests, pool.max_requests, pool.max_retries)
    return [("default", default), ("high", _ENVOY_HIGH_PRIORITY)]


_BREAKER_FIELDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def endpoints_json(table: ServiceTable, now: float) -> list[dict[str, Any]]:
    """Every host of every cluster, as ``extproc status`` shows them."""
    rows: list[dict[str, Any]] = []
    for cluster in table:
        for view in cluster.hosts(now):
            row = {"address": view.address} | asdict(view)
            row["locality"] = str(view.locality)
            row["cluster_name"] = cluster.service.cluster_name
            rows.append(row)
    return rows


def _envoy_stats(view: HostView, counts: dict[str, int]) -> list[tuple[str, int, bool]]:
    """Envoy's per-host stats we can give, as ``(name, value, is_gauge)``.

    From the attempts the data path reported: ``rq_error`` counts 5xx answers, ``rq_timeout``
    timeouts, ``cx_connect_fail`` attempts that got no answer (connect failures and resets),
    ``rq_total`` the attempts that reached the host. Connection counts are not known here.
    """
    answered = counts[SUCCESS] + counts[HTTP_5XX] + counts[TIMEOUT]
    return [
        ("cx_connect_fail", counts[CONNECT_FAILURE], False),
        ("rq_error", counts[HTTP_5XX], False),
        ("rq_success", counts[SUCCESS], False),
        ("rq_timeout", counts[TIMEOUT], False),
        ("rq_total", answered, False),
        ("rq_active", view.active_requests, True),
    ]


def _no_stats(cluster_name: str, upstream_url: str) -> dict[str, int]:
    return dict.fromkeys((SUCCESS, HTTP_5XX, CONNECT_FAILURE, TIMEOUT), 0)


def _host_status(view: HostView, counts: dict[str, int]) -> clusters_pb2.HostStatus:
    status = clusters_pb2.HostStatus(weight=view.weight, priority=view.priority)
    # Envoy's STRICT_DNS hosts carry the name they were resolved from; an IP endpoint has
    # no hostname.
    if not is_ip(view.endpoint_address):
        status.hostname = view.endpoint_address
    status.address.socket_address.address = view.ip
    status.address.socket_address.port_value = view.port
    for name, value, gauge in _envoy_stats(view, counts):
        status.stats.add(
            name=name,
            value=value,
            type=metrics_pb2.SimpleMetric.GAUGE if gauge else metrics_pb2.SimpleMetric.COUNTER,
        )
    # DNS hosts are healthy to EDS; the outlier detector's verdict is a flag of its own.
    status.health_status.eds_health_status = _HEALTHY
    status.health_status.failed_outlier_check = view.ejected
    status.locality.region = view.locality.region
    status.locality.zone = view.locality.zone
    status.locality.sub_zone = view.locality.sub_zone
    return status


def clusters_proto(
    table: ServiceTable, now: float, stats: HostStats = _no_stats
) -> clusters_pb2.Clusters:
    """Our state in Envoy's admin ``Clusters`` message."""
    message = clusters_pb2.Clusters()
    for cluster in table:
        name = cluster.service.cluster_name
        status = message.cluster_statuses.add(name=name, observability_name=name)
        for priority, limits in _breakers(cluster.service.pool):
            threshold = status.circuit_breakers.thresholds.add()
            if priority == "high":
                threshold.priority = base_pb2.RoutingPriority.HIGH
            for field, limit in zip(_BREAKER_FIELDS, limits, strict=True):
                getattr(threshold, field).value = limit
        status.host_statuses.extend(
            _host_status(view, stats(name, view.address)) for view in cluster.hosts(now)
        )
    return message


def clusters_json(table: ServiceTable, now: float, stats: HostStats = _no_stats) -> str:
    """``/clusters?format=json`` as Envoy writes it: proto field names, defaults left out."""
    text: str = json_format.MessageToJson(
        clusters_proto(table, now, stats), preserving_proto_field_name=True
    )
    return text


def clusters_text(table: ServiceTable, now: float, stats: HostStats = _no_stats) -> str:
    """Envoy's ``/clusters`` text form, in Envoy's line order.

    Per cluster its names, its circuit breakers per routing priority, then per host its
    stats (sorted by name), hostname, health flags (``healthy`` or ``/failed_outlier_check``),
    weight, locality, canary, priority and the success rates, which are -1 because
    success-rate ejection is off under Istio.
    """
    lines = []
    for cluster in table:
        name = cluster.service.cluster_name
        lines.append(f"{name}::observability_name::{name}")
        if cluster.service.outlier_detection is not None:
            lines += [
                f"{name}::outlier::{stat}::-1"
                for stat in (
                    "success_rate_average",
                    "success_rate_ejection_threshold",
                    "local_origin_success_rate_average",
                    "local_origin_success_rate_ejection_threshold",
                )
            ]
        for priority, limits in _breakers(cluster.service.pool):
            lines += [
                f"{name}::{priority}_priority::{field}::{limit}"
                for field, limit in zip(_BREAKER_FIELDS, limits, strict=True)
            ]
        lines.append(f"{name}::added_via_api::false")
        for view in cluster.hosts(now):
            prefix = f"{name}::{view.address}"
            stat_lines = sorted(
                (stat, value) for stat, value, _ in _envoy_stats(view, stats(name, view.address))
            )
            lines += [f"{prefix}::{stat}::{value}" for stat, value in stat_lines]
            hostname = "" if is_ip(view.endpoint_address) else view.endpoint_address
            flags = "/failed_outlier_check" if view.ejected else "healthy"
            lines += [
                f"{prefix}::hostname::{hostname}",
                f"{prefix}::health_flags::{flags}",
                f"{prefix}::weight::{view.weight}",
                f"{prefix}::region::{view.locality.region}",
                f"{prefix}::zone::{view.locality.zone}",
                f"{prefix}::sub_zone::{view.locality.sub_zone}",
                f"{prefix}::canary::false",
                f"{prefix}::priority::{view.priority}",
                f"{prefix}::success_rate::-1",
                f"{prefix}::local_origin_success_rate::-1",
            ]
    return "\n".join(lines) + "\n"


class AdminServer(HttpServer):
    """The admin view over HTTP/1.1."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        now: Callable[[], float],
        ready: Callable[[], bool],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self._table = table
        self._now = now
        self._ready = ready
        self._metrics = metrics
        self._stats: HostStats = metrics.host_stats if metrics is not None else _no_stats

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        path, _, query = target.partition("?")
        if path == "/metrics" and self._metrics is not None:
            return 200, CONTENT_TYPE, self._metrics.exposition()
        status, content_type, text = self._respond(path, query)
        return status, content_type, text.encode()

    def _respond(self, path: str, query: str) -> tuple[int, str, str]:
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
                return (
                    200,
                    "application/json",
                    clusters_json(self._table(), now, self._stats) + "\n",
                )
            return 200, "text/plain", clusters_text(self._table(), now, self._stats)
        return (
            404,
            "text/plain",
            "not found: try /clusters, /endpoints, /metrics, /healthz, /readyz\n",
        )


def format_status(rows: list[dict[str, Any]]) -> str:
    """The endpoint table, in ``istioctl proxy-config endpoints`` column order."""
    header = (
        "ENDPOINT",
        "STATUS",
        "OUTLIER CHECK",
        "CLUSTER",
        "LOCALITY",
        "PRIORITY",
        "5XX IN A ROW",
        "EJECTIONS",
        "EJECTION LEFT",
    )
    table = [header]
    for row in rows:
        left = row.get("ejection_time_left_s")
        table.append(
            (
                row["address"],
                "HEALTHY",
                "FAILED" if row["ejected"] else "OK",
                row["cluster_name"],
                row["locality"],
                str(row["priority"]),
                str(row["consecutive_5xx"]),
                str(row["num_ejections"]),
                f"{left:.1f}s" if left is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table
    )


def overflows_from_metrics(text: str) -> dict[str, int]:
    """Per cluster, the requests over its connection pool's limits, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["cluster_name"]: int(sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "extproc_upstream_rq_pending_overflow"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def format_overflows(overflows: dict[str, int]) -> str:
    """Lines under the endpoint table for the clusters whose pool refused requests."""
    return "".join(
        f"\n{name}: {count} requests over the connection pool's limits (Envoy's 503, UO)"
        for name, count in overflows.items()
        if count
    )
