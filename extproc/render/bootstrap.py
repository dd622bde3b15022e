"""Render the Envoy bootstrap for any data path over the same service.

Every path routes each request to one host (IP:port) the service's core chose, in a way no
client can forge, and report outcomes back so the core runs Istio's outlier detection.

**lua (the default, the fast path).** A Lua filter keeps, per Envoy worker, a routing table
the service publishes (``server/sync.py``), draws a host per request and selects it with
``setUpstreamOverrideHost`` on the service's cluster. That cluster is an EDS cluster fed by
the service: every resolved host with Istio's priority and locality, ejected hosts marked
UNHEALTHY. So Envoy's own retry (Istio's default ``retryOn``: connect-failure,
refused-stream, unavailable, cancelled, retriable-status-codes, with previous hosts and
previous priorities, as Istio's sidecar retries) moves a refused request on to the
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

**module.** Envoy's dynamic-module filter runs the C shim (``extproc/module``): per request
it picks a host from the service's table in a shared region and selects it with
``set_upstream_override_host`` on the same EDS cluster, routes and retry policy as the lua
path. The same shim is the router's upstream log (``attempt_log``): Envoy logs each
upstream attempt to it as the attempt ends, so every attempt's outcome goes back over the
service's module socket (``server/module_link.py``), each on its own host. No Lua, no sync
cluster: it needs the socket directory.

**What neither the Lua nor the ext_proc filter sees** is an upstream reset after the
response head went downstream: Lua's ``envoy_on_response`` and ext_proc's response headers
run on the head, and Envoy's detector counts the head's status and then the reset as a
local-origin failure. The HCM's gRPC access log carries exactly those requests to the
service (``filters.reset_access_log``, ``server/access_log.py``); its filter drops every
other request inside Envoy. The module reads each attempt's outcome from the attempt's
log, reset included, so its path has no such log.

Why not a header: with ``cluster_header`` routes, ORIGINAL_DST's ``use_http_header`` or an
Override Host ``header`` source, a client header decides the upstream whenever the filter
is skipped or fails, even Envoy's admin port (verified on Envoy 1.40). Authorities that
match no ServiceEntry host go to a catch-all virtual host that answers 404 without asking
the service. Envoy's own outlier detection stays off on both paths: the service is the
detector.

**TLS origination** (``tls`` SIMPLE or MUTUAL) is the cluster's ``UpstreamTlsContext`` as
pilot builds it, on both paths (``render/tls.py``).

The pieces are xds-protos messages (``render/typed.py``): a misspelled field raises where
it is written. ``render_bootstrap`` and ``eds_cluster_config`` hand back plain data.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)

from extproc.core.policy import Policy
from extproc.render.attempt_log import attempt_log
from extproc.render.clusters import (
    eds_cluster,
    grpc_cluster,
    service_cluster,
    socket_address,
    sync_cluster,
)
from extproc.render.filters import (
    cors_filter,
    envoy_balanced_attempt_log,
    envoy_balanced_timeout_log,
    ext_proc_filter,
    fault_filter,
    local_reply_config,
    lua_filter,
    module_filter,
    reset_access_log,
    route_timeout_access_log,
    router_filter,
)
from extproc.render.routes import route_config
from extproc.render.typed import boolean, packed, to_data
from extproc.settings import Settings
from extproc.wire import (
    CLUSTER_HEADER,
    FLAGS_HEADER,
    LUA_METADATA_NAMESPACE,
    SECRET_HEADER,
    SERVICE_HEADER,
    SYNC_AUTHORITY,
    SYNC_CLUSTER,
    SYNC_PATH,
    UP_HEADER,
    WORKER_HEADER,
    DataPath,
    is_valid_secret,
)

#: Envoy's global limit on downstream connections (overload manager). Envoy warns at start
#: when none is set; Istio's sidecar has no limit of its own, so this one is high enough
#: never to be what stops a workload, and bounds file descriptors under a connection flood.
MAX_DOWNSTREAM_CONNECTIONS = 65536


def render_bootstrap(policy: Policy, settings: Settings) -> dict[str, Any]:
    """Build the Envoy bootstrap (v3) as plain data, ready for YAML or JSON.

    Args:
        policy: the compiled policy; one cluster and virtual host per service.
        settings: addresses and the data path.

    Returns:
        The bootstrap as nested dicts and lists, under the ``.proto`` field names.
    """
    clusters = [grpc_cluster(settings)]
    if settings.data_path is DataPath.LUA:
        clusters.append(sync_cluster(settings))
    clusters += [service_cluster(s, settings) for s in policy.services]
    bootstrap = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id="extproc", cluster="extproc"),
        admin=bootstrap_pb2.Admin(
            address=socket_address(settings.envoy_admin.host, settings.envoy_admin.port)
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[_listener(policy, settings)], clusters=clusters
        ),
        overload_manager=_overload_manager(),
    )
    return to_data(bootstrap)


def eds_cluster_config(settings: Settings) -> dict[str, Any]:
    """The fields that make an Envoy cluster take its hosts from the service over EDS.

    ``type``, ``eds_cluster_config`` and ``common_lb_config`` as plain data, to merge into
    a cluster (``clusters.eds_cluster``).
    """
    return to_data(eds_cluster(settings))


def _one_socket_for_all_workers() -> dict[str, Any]:
    """The listener fields that keep its port ours alone and its workers evenly loaded."""
    balance = listener_pb2.Listener.ConnectionBalanceConfig
    return {
        # Envoy sets SO_REUSEPORT by default, so a second process could bind the same port
        # and take half of the connections meant for this listener. Without it the port is
        # ours alone; hot restart still hands the socket over (listener.proto
        # enable_reuse_port).
        "enable_reuse_port": boolean(False),
        # With one listening socket the kernel wakes whichever worker it likes, and a few
        # long-lived connections can all land on one of them: measured here at 1,000
        # req/s over 10 connections, p50 1.3-1.5 ms against 0.8 ms with reuse_port.
        # Exact balance hands each new connection to the worker with the fewest (0.7-0.8
        # ms), the case Envoy documents it for: "a small number of connections that
        # rarely cycle (e.g., service mesh gRPC egress)" (listener.proto ExactBalance).
        "connection_balance_config": balance(exact_balance=balance.ExactBalance()),
    }


def listener_worker_fields() -> dict[str, Any]:
    """``_one_socket_for_all_workers`` as plain data, for a listener written by hand (bench)."""
    return to_data(listener_pb2.Listener(**_one_socket_for_all_workers()))


def _listener(policy: Policy, settings: Settings) -> listener_pb2.Listener:
    hcm = _http_connection_manager(policy, settings)
    return listener_pb2.Listener(
        name="extproc_http",
        address=socket_address(settings.listen.host, settings.listen.port),
        **_one_socket_for_all_workers(),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=packed(hcm),
                    )
                ]
            )
        ],
    )


def _http_connection_manager(
    policy: Policy, settings: Settings
) -> http_connection_manager_pb2.HttpConnectionManager:
    hcm = http_connection_manager_pb2.HttpConnectionManager
    path = settings.data_path
    upstream_log: list[accesslog_pb2.AccessLog] = []
    if path is DataPath.LUA:
        data_filter = lua_filter(lua_source(settings))
    elif path is DataPath.MODULE:
        data_filter = module_filter(settings)
        upstream_log = [attempt_log()]  # every attempt's outcome, into the module
    else:
        data_filter = ext_proc_filter(settings)
    balanced = [s for s in policy.services if s.envoy_balances]
    if path is not DataPath.MODULE:
        access_log = [reset_access_log(settings)]
        if balanced:
            # No script or ext_proc answer learns these clusters' attempts (Envoy picks).
            names = [s.cluster_name for s in balanced]
            upstream_log = [envoy_balanced_attempt_log(settings, names)]
            if _any_timeout(policy):
                access_log.append(envoy_balanced_timeout_log(settings, names))
    elif _any_timeout(policy):
        # The module sees a reset after the response started itself, not a route's timeout.
        access_log = [route_timeout_access_log(settings)]
    else:
        access_log = []
    manager = hcm(
        stat_prefix="extproc_ingress",
        codec_type=hcm.AUTO,
        route_config=route_config(policy, settings),
        http_filters=[
            *([fault_filter()] if _any_fault(policy) else []),
            *([cors_filter()] if _any_cors(policy) else []),
            data_filter,
            router_filter(upstream_log),
        ],
        access_log=access_log,
    )
    if path is DataPath.LUA:
        manager.local_reply_config.CopyFrom(local_reply_config())
    return manager


def _any_timeout(policy: Policy) -> bool:
    return any(route.timeout_s for service in policy.services for route in service.routes)


def _any_cors(policy: Policy) -> bool:
    """Whether a route has a CORS policy: the CORS filter is in the chain only then."""
    return any(route.cors is not None for s in policy.services for route in s.routes)


def _any_fault(policy: Policy) -> bool:
    """Whether a route injects faults: the fault filter is in the chain only then (an empty
    one costs every request a pass; Istio's sidecar always has it)."""
    return any(route.fault is not None for s in policy.services for route in s.routes)


def _overload_manager() -> overload_pb2.OverloadManager:
    limit = downstream_connections_pb2.DownstreamConnectionsConfig(
        max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS
    )
    return overload_pb2.OverloadManager(
        resource_monitors=[
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=packed(limit),
            )
        ]
    )


def lua_source(settings: Settings) -> str:
    """The fast path's Lua script with its constants filled in."""
    template = resources.files("extproc.render").joinpath("bridge.lua").read_text()
    secret = settings.secret if settings.secret is not None else ""
    if not is_valid_secret(secret) and secret:
        raise ValueError("the shared secret must be 16-512 characters of [A-Za-z0-9._~+/=-]")
    words = {
        "SYNC_CLUSTER": SYNC_CLUSTER,
        "SYNC_PATH": SYNC_PATH,
        "SYNC_AUTHORITY": SYNC_AUTHORITY,
        "SERVICE_HEADER": SERVICE_HEADER,
        "WORKER_HEADER": WORKER_HEADER,
        "UP_HEADER": UP_HEADER,
        "FLAGS_HEADER": FLAGS_HEADER,
        "CLUSTER_HEADER": CLUSTER_HEADER,
        "LUA_METADATA_NAMESPACE": LUA_METADATA_NAMESPACE,
        "SECRET_HEADER": SECRET_HEADER,
        "SYNC_TIMEOUT_MS": str(settings.sync_timeout_ms),
        "SECRET": f'"{secret}"',
    }
    source = re.sub(r"@@([A-Z_]+)@@", lambda m: words[m.group(1)], template)
    return source
