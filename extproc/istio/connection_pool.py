"""``trafficPolicy.connectionPool`` as the ``ConnectionPool`` of pilot's ``applyConnectionPool``.

``pilot/pkg/networking/core/cluster_traffic_policy.go``: the thresholds start from
``getDefaultCircuitBreakerThresholds`` (all unlimited); ``applyH2Upgrade`` and
``applyTCPKeepalive`` (``cluster.go``) are folded in; the connect timeout falls back to the
mesh's (``applyDefaultConnectionPool``).
"""

from __future__ import annotations

import dataclasses
from typing import Final

from extproc.core.policy import UNLIMITED, ConnectionPool, TcpKeepalive, UpstreamProtocol
from extproc.istio.duration import parse_duration
from extproc.istio.models import ConnectionPoolSpec

__all__ = ["MESH_CONNECT_TIMEOUT_S", "connection_pool"]

#: Istio's mesh default connectTimeout (pkg/config/mesh/mesh.go DefaultMeshConfig).
MESH_CONNECT_TIMEOUT_S: Final = 10.0


def connection_pool(spec: ConnectionPoolSpec | None) -> ConnectionPool:
    """The pool ``applyConnectionPool`` builds (``applyH2Upgrade`` and ``applyTCPKeepalive``
    included): a limit of 0 is unset (pilot's FIXME: it cannot tell 0 from unset)."""
    if spec is None:
        return ConnectionPool()
    http, tcp = spec.http, spec.tcp
    pool = ConnectionPool()
    if http is not None:
        protocol = UpstreamProtocol.HTTP1
        if http.use_client_protocol:
            protocol = UpstreamProtocol.CLIENT  # shouldH2Upgrade: never with useClientProtocol
        elif http.h2_upgrade_policy == "UPGRADE":
            protocol = UpstreamProtocol.HTTP2
        keepalive = http.http2_keep_alive
        pool = dataclasses.replace(
            pool,
            max_requests=http.http2_max_requests or UNLIMITED,
            max_pending_requests=http.http1_max_pending_requests or UNLIMITED,
            max_retries=http.max_retries or UNLIMITED,
            idle_timeout_s=_seconds(http.idle_timeout),
            max_requests_per_connection=http.max_requests_per_connection,
            protocol=protocol,
            # Set on an HTTP/2 cluster only (GetExplicitHttpConfig().GetHttp2ProtocolOptions()).
            max_concurrent_streams=(
                http.max_concurrent_streams if protocol is UpstreamProtocol.HTTP2 else 0
            ),
            http2_keepalive=(
                # Both are required (validation), so neither is None here.
                (_seconds(keepalive.interval) or 0.0, _seconds(keepalive.timeout) or 0.0)
                if keepalive is not None and protocol is UpstreamProtocol.HTTP2
                else None
            ),
        )
    if tcp is not None:
        keep = tcp.tcp_keepalive
        pool = dataclasses.replace(
            pool,
            connect_timeout_s=(
                MESH_CONNECT_TIMEOUT_S
                if tcp.connect_timeout is None
                else _nanos(tcp.connect_timeout) / 1e9
            ),
            max_connections=tcp.max_connections or UNLIMITED,
            max_connection_duration_s=_seconds(tcp.max_connection_duration),
            idle_timeout_s=(
                pool.idle_timeout_s
                if pool.idle_timeout_s is not None
                else _seconds(tcp.idle_timeout)
            ),
            tcp_keepalive=(
                None
                if keep is None
                else TcpKeepalive(
                    probes=keep.probes or None,
                    # Duration.Seconds: whole seconds, the fraction dropped.
                    time_s=None if keep.time is None else _nanos(keep.time) // 10**9,
                    interval_s=None if keep.interval is None else _nanos(keep.interval) // 10**9,
                )
            ),
        )
    return pool


def _seconds(text: str | None) -> float | None:
    return None if text is None else _nanos(text) / 1e9


def _nanos(text: str) -> int:
    nanos = parse_duration(text)
    assert nanos is not None  # validated by the schema
    return nanos
