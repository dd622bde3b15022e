"""The bootstrap's clusters: one EDS cluster per service, and the two that reach the service.

Each service's cluster takes its hosts from the service over EDS: every resolved host with
Istio's priority and locality, ejected hosts marked UNHEALTHY. Envoy's own outlier
detection stays off: the service is the detector. The lua path balances it with Istio's
``lb_policy`` and an override host the script selects; the ext_proc path with Envoy's
Override Host policy, which reads the pick from dynamic metadata (``override_host_policy``).

The service itself is ``GRPC_CLUSTER`` (HTTP/2: ext_proc, EDS, health, the access log) and,
on the lua path, ``SYNC_CLUSTER`` (the fast path's HTTP sync), each a Unix socket in
``settings.socket_dir`` or the host and port of ``settings.grpc``.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.matcher.v3 import matcher_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf.message import Message

from extproc.core.policy import (
    ConnectionPool,
    HashAlgorithm,
    LbAlgorithm,
    OutlierDetection,
    Service,
    TcpKeepalive,
    UpstreamProtocol,
    is_ip,
)
from extproc.render.tls import HTTP_PROTOCOL_OPTIONS, auto_sni_options, upstream_tls_socket
from extproc.render.typed import boolean, milliseconds, packed, seconds, uint32
from extproc.settings import Settings
from extproc.wire import (
    GRPC_CLUSTER,
    GRPC_HEALTH_SERVICE,
    GRPC_SOCKET,
    METADATA_HOST_KEY,
    METADATA_NAMESPACE,
    SECRET_HEADER,
    SYNC_CLUSTER,
    SYNC_SOCKET,
    DataPath,
)

_Cluster = cluster_pb2.Cluster

_ENVOY_LB = {
    LbAlgorithm.ROUND_ROBIN: _Cluster.ROUND_ROBIN,
    LbAlgorithm.LEAST_REQUEST: _Cluster.LEAST_REQUEST,
    LbAlgorithm.RANDOM: _Cluster.RANDOM,
}
#: The same algorithms as typed load-balancing policies: (extension name, config message).
_TYPED_LB = {
    LbAlgorithm.ROUND_ROBIN: ("round_robin", round_robin_pb2.RoundRobin),
    LbAlgorithm.LEAST_REQUEST: ("least_request", least_request_pb2.LeastRequest),
    LbAlgorithm.RANDOM: ("random", random_pb2.Random),
}
#: The hosts an override may name on the lua path (``service_cluster``).
_OVERRIDABLE = (health_check_pb2.UNKNOWN, health_check_pb2.HEALTHY, health_check_pb2.DEGRADED)


def grpc_service(settings: Settings) -> grpc_service_pb2.GrpcService:
    """The service as a gRPC target; with a secret, every stream carries it."""
    service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=GRPC_CLUSTER)
    )
    if settings.secret is not None:
        service.initial_metadata.append(
            base_pb2.HeaderValue(key=SECRET_HEADER, value=settings.secret)
        )
    return service


def eds_cluster(settings: Settings) -> cluster_pb2.Cluster:
    """The fields that make an Envoy cluster take its hosts from the service over EDS.

    ``update_merge_window: 0s`` applies each push (an ejection) at once instead of after
    Envoy's default 1 s of batching.

    Args:
        settings: How Envoy reaches the service (``grpc_service``: the static HTTP/2
            cluster ``GRPC_CLUSTER``, with the shared secret when there is one).
    """
    source = config_source_pb2
    return _Cluster(
        type=_Cluster.EDS,
        eds_cluster_config=_Cluster.EdsClusterConfig(
            eds_config=source.ConfigSource(
                resource_api_version=source.V3,
                api_config_source=source.ApiConfigSource(
                    api_type=source.ApiConfigSource.GRPC,
                    transport_api_version=source.V3,
                    grpc_services=[grpc_service(settings)],
                    set_node_on_first_message_only=True,
                ),
            )
        ),
        common_lb_config=_Cluster.CommonLbConfig(update_merge_window=milliseconds(0)),
    )


def service_cluster(service: Service, settings: Settings) -> cluster_pb2.Cluster:
    """A service's EDS cluster, balanced for the data path, with its TLS origination."""
    outlier = service.outlier_detection
    cluster = _Cluster(
        name=service.cluster_name,
        # connectionPool.tcp.connectTimeout, else the mesh default (10s): applyConnectionPool.
        connect_timeout=seconds(service.pool.connect_timeout_s),
        circuit_breakers=_circuit_breakers(service.pool),
        common_lb_config=_Cluster.CommonLbConfig(
            # Istio sets the panic threshold to minHealthPercent when outlierDetection is set.
            healthy_panic_threshold=percent_pb2.Percent(
                value=float(outlier.min_health_percent if outlier else 50)
            ),
        ),
    )
    cluster.MergeFrom(eds_cluster(settings))
    if service.envoy_balances:
        # No data path overrides the pick here: Envoy's own balancer, as pilot sets it.
        _envoy_balancer(cluster, service)
    elif settings.data_path is DataPath.EXT_PROC:
        cluster.load_balancing_policy.CopyFrom(override_host_policy(service.lb_algorithm))
    else:
        cluster.lb_policy = _ENVOY_LB[service.lb_algorithm]
        # An override naming a host EDS marks UNHEALTHY (ejected) is not honoured: Envoy's
        # own load balancer picks over the same priorities and health instead. So once the
        # service ejects a host, every worker avoids it as soon as the EDS push lands, even
        # with a table made before the ejection; in panic Envoy's pick has the same spread.
        cluster.common_lb_config.override_host_status.statuses.extend(_OVERRIDABLE)
    if service.tls is not None:
        cluster.transport_socket.CopyFrom(upstream_tls_socket(service.tls, settings.system_ca_file))
    keepalive = service.pool.tcp_keepalive
    if keepalive is not None:
        cluster.upstream_connection_options.CopyFrom(_upstream_connection_options(keepalive))
    options = _http_protocol_options(service)
    if options is not None:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(packed(options))
    return cluster


def _envoy_balancer(cluster: cluster_pb2.Cluster, service: Service) -> None:
    """``applyLoadBalancer`` for a cluster Envoy balances alone: a consistent-hash ring
    (``ApplyRingHashLoadBalancer``), or ROUND_ROBIN / LEAST_REQUEST with slow start
    (``applyRoundRobinLoadBalancer``, ``applyLeastRequestLoadBalancer``)."""
    if service.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(_outlier_detection(service.outlier_detection))
    ring, slow = service.hash_ring, service.slow_start
    if ring is not None:
        if ring.algorithm is HashAlgorithm.MAGLEV:
            cluster.lb_policy = _Cluster.MAGLEV
            if ring.size is not None:
                cluster.maglev_lb_config.table_size.value = ring.size
        else:
            cluster.lb_policy = _Cluster.RING_HASH
            if ring.size is not None:
                cluster.ring_hash_lb_config.minimum_ring_size.value = ring.size
        return
    assert slow is not None
    config = _Cluster.SlowStartConfig(slow_start_window=seconds(slow.window_s))
    if slow.aggression is not None:
        # setWarmup: "Runtime key is not exposed, the value is fixed".
        config.aggression.CopyFrom(
            base_pb2.RuntimeDouble(default_value=slow.aggression, runtime_key="(")
        )
    if slow.min_weight_percent is not None:
        config.min_weight_percent.CopyFrom(percent_pb2.Percent(value=slow.min_weight_percent))
    cluster.lb_policy = _ENVOY_LB[service.lb_algorithm]
    if service.lb_algorithm is LbAlgorithm.ROUND_ROBIN:
        cluster.round_robin_lb_config.slow_start_config.CopyFrom(config)
    else:
        cluster.least_request_lb_config.slow_start_config.CopyFrom(config)


def _outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """``applyOutlierDetection``, for a cluster Envoy balances alone.

    The service's EDS marks no host of such a cluster UNHEALTHY: an ejection must reach
    Envoy's ring or slow-start balancer on the worker that saw the failure, as on Istio's
    sidecar, not one EDS push later. The service still records every attempt (its view
    and metrics follow the same rules). ``always_eject_one_host`` is extproc's first-ejection
    rule (see the README's differences); Istio's values otherwise.
    """
    out = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=uint32(od.consecutive_5xx_errors),
        enforcing_consecutive_5xx=uint32(100 if od.consecutive_5xx_errors > 0 else 0),
        consecutive_gateway_failure=uint32(od.consecutive_gateway_errors),
        enforcing_consecutive_gateway_failure=uint32(od.enforcing_consecutive_gateway_failure),
        interval=seconds(od.interval_s),
        base_ejection_time=seconds(od.base_ejection_time_s),
        max_ejection_percent=uint32(od.max_ejection_percent),
        enforcing_success_rate=uint32(0),
        always_eject_one_host=boolean(od.always_eject_one_host),
    )
    if od.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        out.consecutive_local_origin_failure.CopyFrom(uint32(od.consecutive_local_origin_failures))
        out.enforcing_consecutive_local_origin_failure.CopyFrom(uint32(100))
        out.enforcing_local_origin_success_rate.CopyFrom(uint32(0))
    return out


def _error_matcher(codes: frozenset[int]) -> matcher_pb2.MatchPredicate:
    """``applyOutlierDetectionErrorCodes``: the statuses Envoy's detector counts as errors."""
    predicate = matcher_pb2.MatchPredicate
    rules = [
        predicate(
            http_response_headers_match=matcher_pb2.HttpHeadersMatch(
                headers=[
                    route_components_pb2.HeaderMatcher(
                        name=":status", string_match=string_pb2.StringMatcher(exact=str(code))
                    )
                ]
            )
        )
        for code in sorted(codes)
    ]
    if len(rules) == 1:
        return rules[0]
    return predicate(or_match=predicate.MatchSet(rules=rules))


def _circuit_breakers(pool: ConnectionPool) -> circuit_breaker_pb2.CircuitBreakers:
    """Istio's thresholds (``applyConnectionPool`` over ``getDefaultCircuitBreakerThresholds``).

    Unset limits are unlimited: Envoy's own default max_retries (3) overflows under load and
    fails requests (UO). ``track_remaining`` is Istio's default too (the ``remaining_*`` gauges).
    """
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=uint32(pool.max_connections),
                max_pending_requests=uint32(pool.max_pending_requests),
                max_requests=uint32(pool.max_requests),
                max_retries=uint32(pool.max_retries),
                track_remaining=True,
            )
        ]
    )


def _upstream_connection_options(keepalive: TcpKeepalive) -> cluster_pb2.UpstreamConnectionOptions:
    """``setKeepAliveSettings``: SO_KEEPALIVE, with the OS defaults where a field is unset."""
    tcp = address_pb2.TcpKeepalive()
    if keepalive.probes is not None:
        tcp.keepalive_probes.CopyFrom(uint32(keepalive.probes))
    if keepalive.time_s is not None:
        tcp.keepalive_time.CopyFrom(uint32(keepalive.time_s))
    if keepalive.interval_s is not None:
        tcp.keepalive_interval.CopyFrom(uint32(keepalive.interval_s))
    return cluster_pb2.UpstreamConnectionOptions(tcp_keepalive=tcp)


def _http_protocol_options(
    service: Service,
) -> http_protocol_options_pb2.HttpProtocolOptions | None:
    """The cluster's HTTP protocol options: SNI from the authority (``render.tls``), and the
    pool's connection limits and protocol (``applyConnectionPool``, ``setH2Options``,
    ``setUseDownstreamProtocol``); None when all are Envoy's defaults."""
    options_type = http_protocol_options_pb2.HttpProtocolOptions
    pool = service.pool
    options = (auto_sni_options(service.tls) if service.tls is not None else None) or options_type()
    common = options.common_http_protocol_options
    if pool.idle_timeout_s is not None:
        common.idle_timeout.CopyFrom(seconds(pool.idle_timeout_s))
    if pool.max_requests_per_connection > 0:
        common.max_requests_per_connection.CopyFrom(uint32(pool.max_requests_per_connection))
    if pool.max_connection_duration_s is not None:
        common.max_connection_duration.CopyFrom(seconds(pool.max_connection_duration_s))
    if pool.protocol is UpstreamProtocol.HTTP2:
        http2 = protocol_pb2.Http2ProtocolOptions()
        if pool.max_concurrent_streams > 0:
            http2.max_concurrent_streams.CopyFrom(uint32(pool.max_concurrent_streams))
        if pool.http2_keepalive is not None:
            interval_s, timeout_s = pool.http2_keepalive
            http2.connection_keepalive.CopyFrom(
                protocol_pb2.KeepaliveSettings(
                    interval=seconds(interval_s), timeout=seconds(timeout_s)
                )
            )
        options.explicit_http_config.CopyFrom(
            options_type.ExplicitHttpConfig(http2_protocol_options=http2)
        )
    elif pool.protocol is UpstreamProtocol.CLIENT:
        http1 = options.explicit_http_config.http_protocol_options
        options.use_downstream_protocol_config.CopyFrom(
            options_type.UseDownstreamHttpConfig(
                http_protocol_options=http1,
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
            )
        )
    outlier = service.outlier_detection
    if service.envoy_balances and outlier is not None and outlier.http_error_codes:
        options.outlier_detection.error_matcher.CopyFrom(_error_matcher(outlier.http_error_codes))
    if options == options_type():
        return None
    if options.WhichOneof("upstream_protocol_options") is None:
        # Envoy requires one; HTTP/1.1 is what the cluster speaks without it.
        options.explicit_http_config.http_protocol_options.SetInParent()
    return options


def override_host_policy(algorithm: LbAlgorithm) -> cluster_pb2.LoadBalancingPolicy:
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
    name, config = _TYPED_LB[algorithm]
    override = override_host_pb2.OverrideHost(
        override_host_sources=[
            override_host_pb2.OverrideHost.OverrideHostSource(
                metadata=metadata_pb2.MetadataKey(
                    key=METADATA_NAMESPACE,
                    path=[metadata_pb2.MetadataKey.PathSegment(key=METADATA_HOST_KEY)],
                )
            )
        ],
        fallback_policy=_load_balancing_policy(f"envoy.load_balancing_policies.{name}", config()),
    )
    return _load_balancing_policy("envoy.load_balancing_policies.override_host", override)


def _load_balancing_policy(name: str, config: Message) -> cluster_pb2.LoadBalancingPolicy:
    policy = cluster_pb2.LoadBalancingPolicy
    return policy(
        policies=[
            policy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name=name, typed_config=packed(config)
                )
            )
        ]
    )


def grpc_cluster(settings: Settings) -> cluster_pb2.Cluster:
    """``GRPC_CLUSTER``: the service's gRPC listener over HTTP/2, health-checked."""
    options = http_protocol_options_pb2.HttpProtocolOptions
    http2 = options(
        explicit_http_config=options.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    return _Cluster(
        name=GRPC_CLUSTER,
        type=_static_or_dns(settings),
        connect_timeout=milliseconds(1000),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: packed(http2)},
        load_assignment=_assignment(
            GRPC_CLUSTER, _service_address(settings, settings.grpc.port, GRPC_SOCKET)
        ),
        health_checks=[_service_health_check()],
    )


def _service_health_check() -> health_check_pb2.HealthCheck:
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
    return health_check_pb2.HealthCheck(
        timeout=milliseconds(1000),
        interval=milliseconds(1000),
        no_traffic_interval=milliseconds(1000),
        unhealthy_threshold=uint32(2),
        healthy_threshold=uint32(1),
        grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(
            service_name=GRPC_HEALTH_SERVICE
        ),
    )


def sync_cluster(settings: Settings) -> cluster_pb2.Cluster:
    """``SYNC_CLUSTER``: the fast path's HTTP sync endpoint."""
    return _Cluster(
        name=SYNC_CLUSTER,
        type=_static_or_dns(settings),
        connect_timeout=milliseconds(250),
        load_assignment=_assignment(
            SYNC_CLUSTER, _service_address(settings, settings.sync_port, SYNC_SOCKET)
        ),
    )


def _static_or_dns(settings: Settings) -> int:
    # A name (compose: "extproc") is resolved by Envoy; an IP or a socket needs no DNS.
    if settings.socket_dir is not None or is_ip(settings.grpc.host):
        return int(_Cluster.STATIC)
    return int(_Cluster.STRICT_DNS)


def _service_address(settings: Settings, port: int, socket: str) -> address_pb2.Address:
    """Where Envoy reaches one of the service's listeners: a Unix socket or host:port."""
    if settings.socket_dir is not None:
        return address_pb2.Address(pipe=address_pb2.Pipe(path=str(settings.socket_dir / socket)))
    return socket_address(settings.grpc.host, port)


def socket_address(host: str, port: int) -> address_pb2.Address:
    """An IP or name and a port."""
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def _assignment(
    cluster_name: str, address: address_pb2.Address
) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=address)
    )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[lb_endpoint])],
    )
