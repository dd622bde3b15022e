"""``connectionPool``: compiled as pilot's ``applyConnectionPool`` and rendered as its cluster.

The expected values are pilot's (``cluster_traffic_policy.go`` ``applyConnectionPool``,
``getDefaultCircuitBreakerThresholds``, ``applyH2Upgrade``; ``cluster.go``
``setKeepAliveSettings``; ``cluster_builder.go`` ``setH2Options``, ``setUseDownstreamProtocol``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from extproc.core.policy import (
    UNLIMITED,
    ConnectionPool,
    Service,
    TcpKeepalive,
    UpstreamProtocol,
)
from extproc.istio import load_policy
from extproc.render.clusters import service_cluster
from extproc.render.tls import HTTP_PROTOCOL_OPTIONS
from extproc.settings import Settings
from extproc.testing import find_service

FIXTURE: Final = Path(__file__).parent.parent / "fixtures" / "traffic" / "connection-pool.yaml"
SEED: Final = Path(__file__).parent.parent / "fixtures" / "seed" / "step2-outlier.yaml"


def _service(port: int) -> Service:
    service = find_service(load_policy(FIXTURE), "mydb.com", port)
    assert service is not None
    return service


def _cluster(service: Service) -> dict[str, Any]:
    return json_format.MessageToDict(service_cluster(service, Settings()))


def _protocol_options(service: Service) -> dict[str, Any] | None:
    cluster = service_cluster(service, Settings())
    if HTTP_PROTOCOL_OPTIONS not in cluster.typed_extension_protocol_options:
        return None
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    return json_format.MessageToDict(options)


def test_every_tcp_and_http_field_reaches_the_pool() -> None:
    assert _service(80).pool == ConnectionPool(
        connect_timeout_s=0.25,
        max_connections=10,
        max_pending_requests=5,
        max_requests=100,
        max_retries=3,
        idle_timeout_s=30.0,  # http.idleTimeout wins over tcp.idleTimeout
        max_requests_per_connection=10,
        max_connection_duration_s=3600.0,
        tcp_keepalive=TcpKeepalive(probes=3, time_s=60, interval_s=10),
    )
    assert _service(80).pool.connect_timeout_s == 0.25


def test_a_port_level_pool_replaces_the_top_level_one() -> None:
    # portLevelSettings replace the whole policy on their port: no top-level limit stays.
    assert _service(8080).pool == ConnectionPool(
        protocol=UpstreamProtocol.HTTP2,
        max_concurrent_streams=50,
        http2_keepalive=(10.0, 3.0),
    )
    assert _service(8080).pool.connect_timeout_s == 10.0


def test_max_concurrent_streams_applies_to_an_http2_cluster_only() -> None:
    # GetExplicitHttpConfig().GetHttp2ProtocolOptions() is nil for the client's protocol.
    assert _service(8081).pool == ConnectionPool(protocol=UpstreamProtocol.CLIENT)


def test_no_pool_gets_istios_unlimited_thresholds_with_track_remaining() -> None:
    (service,) = load_policy(SEED).services
    assert _cluster(service)["circuitBreakers"] == {
        "thresholds": [
            {
                "maxConnections": UNLIMITED,
                "maxPendingRequests": UNLIMITED,
                "maxRequests": UNLIMITED,
                "maxRetries": UNLIMITED,
                "trackRemaining": True,
            }
        ]
    }
    assert "upstreamConnectionOptions" not in _cluster(service)
    assert _protocol_options(service) is None


def test_the_pool_limits_are_the_clusters_circuit_breakers() -> None:
    cluster = _cluster(_service(80))
    assert cluster["circuitBreakers"]["thresholds"] == [
        {
            "maxConnections": 10,
            "maxPendingRequests": 5,
            "maxRequests": 100,
            "maxRetries": 3,
            "trackRemaining": True,
        }
    ]
    assert cluster["connectTimeout"] == "0.250s"
    assert cluster["upstreamConnectionOptions"] == {
        "tcpKeepalive": {"keepaliveProbes": 3, "keepaliveTime": 60, "keepaliveInterval": 10}
    }


def test_idle_timeout_requests_per_connection_and_duration_are_protocol_options() -> None:
    assert _protocol_options(_service(80)) == {
        "commonHttpProtocolOptions": {
            "idleTimeout": "30s",
            "maxRequestsPerConnection": 10,
            "maxConnectionDuration": "3600s",
        },
        "explicitHttpConfig": {"httpProtocolOptions": {}},
    }


def test_h2_upgrade_makes_an_http2_cluster_with_its_stream_limit_and_keepalive() -> None:
    assert _protocol_options(_service(8080)) == {
        "explicitHttpConfig": {
            "http2ProtocolOptions": {
                "maxConcurrentStreams": 50,
                "connectionKeepalive": {"interval": "10s", "timeout": "3s"},
            }
        }
    }


def test_use_client_protocol_speaks_the_downstreams_protocol() -> None:
    assert _protocol_options(_service(8081)) == {
        "useDownstreamProtocolConfig": {"httpProtocolOptions": {}, "http2ProtocolOptions": {}}
    }
