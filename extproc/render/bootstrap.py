"""Render the Envoy bootstrap that puts the ext_proc service in front of every request.

How a request is routed (the choice, and why):

1. The listener's route table has one virtual host per ServiceEntry host; its only route
   sends the request to that service's cluster ``outbound|<port>||<host>``, an
   ``ORIGINAL_DST`` cluster whose load balancer takes the destination IP:port from the
   request's *dynamic metadata* (``original_dst_lb_config.metadata_key``).
2. The ext_proc filter sees the request headers first; the service answers with dynamic
   metadata ``extproc.host = "<ip>:<port>"``, the host it picked.
3. A client cannot set dynamic metadata, so it cannot pick an upstream: not by a header,
   not when the service is down (the filter fails closed), not when it is slow. With no
   metadata the ORIGINAL_DST load balancer finds no host and Envoy answers 503.
   Routing by a header (``cluster_header``, or ORIGINAL_DST's ``use_http_header``) would be
   a client-controlled router whenever the filter is skipped.
4. The route does not depend on the service's answer, so no route-cache clearing is needed.

Hosts the config does not know match a catch-all virtual host that answers 404 without
asking the service. Envoy's own outlier detection stays off: the service is the detector.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from extproc.core.policy import Policy, Service

#: The dynamic-metadata namespace and key the service writes its pick into.
METADATA_NAMESPACE = "extproc"
METADATA_HOST_KEY = "host"
EXT_PROC_CLUSTER = "extproc"

#: Istio's default outbound retry policy (>= 1.24: 5xx responses are not retried).
#: istio/istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy.
_ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_ISTIO_NUM_RETRIES = 2
#: Istio's mesh default connectTimeout (pkg/config/mesh/mesh.go).
_ISTIO_CONNECT_TIMEOUT = "10s"
#: Istio's default circuit-breaker thresholds: effectively unlimited
#: (cluster_traffic_policy.go getDefaultCircuitBreakerThresholds).
_UNLIMITED = 4294967295

_UNKNOWN_HOST_BODY = "extproc: no ServiceEntry host matches this request's authority\n"

#: Response attributes the service reads to classify an outcome (see server/outcome.py).
RESPONSE_ATTRIBUTES = (
    "response.code_details",
    "response.flags",
    "upstream.address",
    "upstream.request_attempt_count",
)


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Where things listen; everything else comes from the policy."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 10000
    ext_proc_host: str = "127.0.0.1"
    ext_proc_port: int = 9002
    envoy_admin_host: str = "127.0.0.1"
    envoy_admin_port: int = 0
    # Envoy's default per-message budget is 200 ms. Under saturation the service's queue
    # alone exceeded that (bench: p99 187-230 ms at 64 connections), and the filter fails
    # closed, so slow turned into failed. One second keeps a stalled service bounded.
    message_timeout_ms: int = 1000


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _service_cluster(service: Service) -> dict[str, Any]:
    return {
        "name": service.cluster_name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": _ISTIO_CONNECT_TIMEOUT,
        "original_dst_lb_config": {
            "use_http_header": False,
            "metadata_key": {
                "key": METADATA_NAMESPACE,
                "path": [{"key": METADATA_HOST_KEY}],
            },
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": _UNLIMITED,
                    "max_pending_requests": _UNLIMITED,
                    "max_requests": _UNLIMITED,
                    "max_retries": _UNLIMITED,
                }
            ]
        },
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ext_proc_cluster(settings: RenderSettings) -> dict[str, Any]:
    # A name (compose: "extproc") is resolved by Envoy; an IP needs no DNS.
    return {
        "name": EXT_PROC_CLUSTER,
        "type": "STATIC" if _is_ip(settings.ext_proc_host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
        "load_assignment": {
            "cluster_name": EXT_PROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": _socket_address(
                                    settings.ext_proc_host, settings.ext_proc_port
                                )
                            }
                        }
                    ]
                }
            ],
        },
    }


def _virtual_hosts(policy: Policy) -> list[dict[str, Any]]:
    by_host: dict[str, list[Service]] = {}
    for service in policy.services:
        by_host.setdefault(service.host, []).append(service)
    hosts: list[dict[str, Any]] = []
    for host, services in by_host.items():
        # A bare host without a port means the service's HTTP port: prefer port 80, as a
        # client on port 80 would reach it; explicit host:port domains reach every port.
        default = next((s for s in services if s.port == 80), services[0])
        for service in services:
            domains = [f"{host}:{service.port}"]
            if service is default:
                domains.insert(0, host)
            hosts.append(
                {
                    "name": service.cluster_name,
                    "domains": domains,
                    "routes": [
                        {
                            "name": service.cluster_name,
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": service.cluster_name,
                                "timeout": "0s",  # Istio sets no route timeout
                                "retry_policy": {
                                    "retry_on": _ISTIO_RETRY_ON,
                                    "num_retries": _ISTIO_NUM_RETRIES,
                                    "retry_host_predicate": [
                                        {
                                            "name": "envoy.retry_host_predicates.previous_hosts",
                                            "typed_config": _typed(
                                                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                                            ),
                                        }
                                    ],
                                    "host_selection_retry_max_attempts": "5",
                                },
                            },
                        }
                    ],
                }
            )
    hosts.append(
        {
            "name": "unknown_host",
            "domains": ["*"],
            "routes": [
                {
                    "name": "unknown_host",
                    "match": {"prefix": "/"},
                    "direct_response": {
                        "status": 404,
                        "body": {"inline_string": _UNKNOWN_HOST_BODY},
                    },
                    "typed_per_filter_config": {
                        "envoy.filters.http.ext_proc": _typed(
                            "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                            disabled=True,
                        )
                    },
                }
            ],
        }
    )
    return hosts


def _ext_proc_filter(settings: RenderSettings) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
            # Fail closed: without the service's pick there is no upstream to go to anyway.
            failure_mode_allow=False,
            status_on_error={"code": 503},
            message_timeout=f"{settings.message_timeout_ms / 1000:g}s",
            processing_mode={
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            response_attributes=list(RESPONSE_ATTRIBUTES),
            metadata_options={"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
        ),
    }


def render_bootstrap(policy: Policy, settings: RenderSettings) -> dict[str, Any]:
    """Build the Envoy bootstrap (v3) as plain data, ready for YAML or JSON.

    Args:
        policy: the compiled policy; one cluster and virtual host per service.
        settings: listener, ext_proc and Envoy admin addresses.

    Returns:
        The bootstrap as nested dicts and lists.
    """
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="extproc_ingress",
        codec_type="AUTO",
        route_config={"name": "extproc_routes", "virtual_hosts": _virtual_hosts(policy)},
        http_filters=[
            _ext_proc_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    return {
        "node": {"id": "extproc", "cluster": "extproc"},
        "admin": {"address": _socket_address(settings.envoy_admin_host, settings.envoy_admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "extproc_http",
                    "address": _socket_address(settings.listen_host, settings.listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_ext_proc_cluster(settings)]
            + [_service_cluster(s) for s in policy.services],
        },
    }
