"""The listener's routes: one virtual host per service with Istio's retries, and a 404 for the rest.

Every route goes to its service's cluster, never to a cluster a header names: which host
serves is the service's pick (the lua script's or the module's override host, or the
ext_proc answer's metadata), and a retry leaves the failed host and priority as Istio's
sidecar does.
Authorities that match no ServiceEntry host go to a catch-all virtual host that answers
404 without asking the service.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from google.protobuf import struct_pb2

from extproc.core.policy import Policy, Service, route_domains
from extproc.render.filters import EXT_PROC_FILTER, LUA_FILTER, MODULE_FILTER
from extproc.render.tls import endpoint_sni
from extproc.render.typed import boolean, milliseconds, packed, uint32
from extproc.settings import Settings
from extproc.wire import UP_HEADER, DataPath

_Route = route_components_pb2

#: Istio's default outbound retry policy (>= 1.24: 5xx responses are not retried).
#: istio/istio pilot/pkg/networking/core/route/retry/retry.go DefaultPolicy.
_ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_ISTIO_NUM_RETRIES = 2

_UNKNOWN_HOST_BODY = "extproc: no ServiceEntry host matches this request's authority\n"


def route_config(policy: Policy, settings: Settings) -> route_pb2.RouteConfiguration:
    """The HCM's routes: the services' virtual hosts, then the catch-all."""
    # The domains ServiceTable.lookup matches too (core/policy.py route_domains): a bare host
    # means its port-80 service, else its first (route/route.go generateVirtualHostDomains);
    # a wildcard host (*.example.com) is an Envoy suffix wildcard, where an exact host wins
    # and then the longest suffix. The catch-all "*" takes everything else.
    hosts = [
        _Route.VirtualHost(
            name=service.cluster_name,
            domains=list(domains),
            routes=[_service_route(service, settings)],
        )
        for service, domains in route_domains(policy.services)
    ]
    hosts.append(_unknown_host(settings))
    return route_pb2.RouteConfiguration(name="extproc_routes", virtual_hosts=hosts)


def _service_route(service: Service, settings: Settings) -> route_components_pb2.Route:
    route = _Route.Route(
        name=service.cluster_name,
        match=_Route.RouteMatch(prefix="/"),
        route=_Route.RouteAction(
            cluster=service.cluster_name,
            timeout=milliseconds(0),  # Istio sets no route timeout
            retry_policy=_retry_policy(),
        ),
    )
    if endpoint_sni(service.tls):
        # Host = the EDS host's name, per attempt (a retry on us-west says us-west).
        route.route.auto_host_rewrite.CopyFrom(boolean(True))
    if settings.data_path is DataPath.LUA:
        script = struct_pb2.Struct()
        script.update({"service": service.cluster_name})
        route.metadata.CopyFrom(base_pb2.Metadata(filter_metadata={LUA_FILTER: script}))
        # Who served the last attempt, and after how many attempts; the upstream cannot
        # forge it (overwritten), and the script removes it before the client sees the
        # response.
        route.response_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key=UP_HEADER, value="%UPSTREAM_HOST% %UPSTREAM_REQUEST_ATTEMPT_COUNT%"
                ),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
    return route


def _retry_policy() -> route_components_pb2.RetryPolicy:
    policy = _Route.RetryPolicy
    return policy(
        retry_on=_ISTIO_RETRY_ON,
        num_retries=uint32(_ISTIO_NUM_RETRIES),
        retry_host_predicate=[
            policy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=5,
        # A retry leaves the failed priority (Istio's retryRemoteLocalities does the same),
        # so a refused connection is retried on the failover endpoint in the same request.
        retry_priority=policy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=packed(
                previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1)
            ),
        ),
    )


def _unknown_host(settings: Settings) -> route_components_pb2.VirtualHost:
    """The catch-all: 404, with the data path's filter off (the service is not asked)."""
    if settings.data_path is DataPath.LUA:
        filter_name, disabled = LUA_FILTER, packed(lua_pb2.LuaPerRoute(disabled=True))
    elif settings.data_path is DataPath.MODULE:
        # The dynamic-module filter has no per-route "disabled" of its own: Envoy's generic
        # per-filter wrapper turns any filter off (route_components.proto FilterConfig).
        filter_name = MODULE_FILTER
        disabled = packed(_Route.FilterConfig(disabled=True))
    else:
        filter_name = EXT_PROC_FILTER
        disabled = packed(ext_proc_pb2.ExtProcPerRoute(disabled=True))
    return _Route.VirtualHost(
        name="unknown_host",
        domains=["*"],
        routes=[
            _Route.Route(
                name="unknown_host",
                match=_Route.RouteMatch(prefix="/"),
                direct_response=_Route.DirectResponseAction(
                    status=404, body=base_pb2.DataSource(inline_string=_UNKNOWN_HOST_BODY)
                ),
                typed_per_filter_config={filter_name: disabled},
            )
        ],
    )
