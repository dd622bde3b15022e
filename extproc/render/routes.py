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
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import struct_pb2

from extproc.core.policy import Policy, Service, route_domains
from extproc.core.routes import (
    HeaderMatch,
    HttpRoute,
    MatchKind,
    RetryPolicy,
    RouteMatch,
    StringMatch,
)
from extproc.render.filters import EXT_PROC_FILTER, LUA_FILTER, MODULE_FILTER
from extproc.render.tls import endpoint_sni
from extproc.render.typed import boolean, packed, seconds, uint32
from extproc.settings import Settings
from extproc.wire import UP_HEADER, DataPath

_Route = route_components_pb2

#: ``retryRemoteLocalities``' previous_priorities (retry.go buildPreviousPrioritiesConfig).
_ISTIO_REMOTE_LOCALITIES_FREQUENCY = 2

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
            routes=[_service_route(service, route, settings) for route in _routes_of(service)],
        )
        for service, domains in route_domains(policy.services)
    ]
    hosts.append(_unknown_host(settings))
    return route_pb2.RouteConfiguration(name="extproc_routes", virtual_hosts=hosts)


def _routes_of(service: Service) -> tuple[HttpRoute | None, ...]:
    """The VirtualService's routes, else one: Istio's default route (None)."""
    return service.routes or (None,)


def _service_route(
    service: Service, http: HttpRoute | None, settings: Settings
) -> route_components_pb2.Route:
    """One route to the service's cluster: a VirtualService's, or Istio's default one.

    The default (``BuildDefaultHTTPOutboundRoute``): everything under ``/``, no timeout,
    Istio's default retries. A VirtualService's (``TranslateRoute``): its match, its
    ``timeout`` (``setTimeout``) and its ``retries`` (``ConvertPolicy``; none at 0 attempts).
    """
    timeout = seconds(0.0 if http is None else http.timeout_s)  # Istio's default: none
    # setTimeout also bounds a gRPC client's grpc-timeout by the route's (0: unbounded).
    action = _Route.RouteAction(
        cluster=service.cluster_name, timeout=timeout, max_grpc_timeout=timeout
    )
    retries = RetryPolicy() if http is None else http.retries
    if retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(retries))
    route = _Route.Route(
        name=service.cluster_name if http is None else http.name,
        match=_Route.RouteMatch(prefix="/") if http is None else _route_match(http.match),
        route=action,
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


def _retry_policy(retries: RetryPolicy) -> route_components_pb2.RetryPolicy:
    """Istio's retry policy (``retry.ConvertPolicy``), with the previous priorities extproc adds.

    ``retryRemoteLocalities: true`` is Istio's own ``previous_priorities`` (update frequency
    2, ``buildPreviousPrioritiesConfig``). Unset, extproc adds one with update frequency 1,
    so a refused connection is retried on the failover endpoint in the same request (see
    the README's differences); ``false`` says no, and gets none.
    """
    policy = _Route.RetryPolicy
    out = policy(
        retry_on=retries.retry_on,
        num_retries=uint32(retries.num_retries),
        retriable_status_codes=list(retries.retriable_status_codes),
        host_selection_retry_max_attempts=5,
    )
    if retries.previous_hosts:
        out.retry_host_predicate.append(
            policy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        )
    if retries.remote_localities is not False:
        frequency = _ISTIO_REMOTE_LOCALITIES_FREQUENCY if retries.remote_localities else 1
        out.retry_priority.CopyFrom(
            policy.RetryPriority(
                name="envoy.retry_priorities.previous_priorities",
                typed_config=packed(
                    previous_priorities_config_pb2.PreviousPrioritiesConfig(
                        update_frequency=frequency
                    )
                ),
            )
        )
    if retries.per_try_timeout_s is not None:
        out.per_try_timeout.CopyFrom(seconds(retries.per_try_timeout_s))
    if retries.backoff_s is not None:
        out.retry_back_off.base_interval.CopyFrom(seconds(retries.backoff_s))
    return out


def _route_match(match: RouteMatch) -> route_components_pb2.RouteMatch:
    """``TranslateRouteMatch``: the path, ``case_sensitive``, headers and query parameters."""
    out = _Route.RouteMatch(headers=[_header(h) for h in match.headers])
    path = match.path
    if path.kind is MatchKind.EXACT:
        out.path = path.value
    elif path.kind is MatchKind.REGEX:
        out.safe_regex.regex = path.value
    else:
        out.prefix = path.value
    if match.explicit_case:
        out.case_sensitive.CopyFrom(boolean(match.case_sensitive))
    for name, value in match.query_params:
        param = out.query_parameters.add(name=name)
        if value.kind is MatchKind.PRESENT:
            param.present_match = True
        else:
            param.string_match.CopyFrom(_string_matcher(value))
    return out


def _header(header: HeaderMatch) -> route_components_pb2.HeaderMatcher:
    """``translateHeaderMatch``; withoutHeaders inverts it, treating a missing header as ""."""
    out = _Route.HeaderMatcher(name=header.name)
    if header.match.kind is MatchKind.PRESENT:
        out.present_match = True
    else:
        out.string_match.CopyFrom(_string_matcher(header.match))
    if header.invert:
        out.invert_match = True
        # treat_missing_header_as_empty conflicts with present_match (route.go).
        out.treat_missing_header_as_empty = header.match.kind is not MatchKind.PRESENT
    return out


def _string_matcher(match: StringMatch) -> string_pb2.StringMatcher:
    """``util.ConvertToEnvoyMatch``."""
    if match.kind is MatchKind.EXACT:
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind is MatchKind.PREFIX:
        return string_pb2.StringMatcher(prefix=match.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))


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
