"""The listener's routes: one virtual host per service with Istio's retries, and a 404 for the rest.

Every route goes to its service's cluster (or its subsets' by weight), never to a cluster a
header names: which host serves is the service's pick (the lua script's or the module's
override host, or the ext_proc answer's metadata), and a retry leaves the failed host and
priority as Istio's sidecar does.

A weighted route is Envoy's ``weighted_clusters``, whose pick the module and ext_proc read
back from Envoy. The Lua filter cannot see that pick, so on lua the script picks with the
route's weights (metadata ``weights``), writes the pick in ``CLUSTER_HEADER`` and clears the
route cache; the route is then re-matched to one sibling route per destination, placed just
before it, that matches the same request with that header and has only that destination.
A client that sends the header reaches one of the route's own destinations at most (the
script overwrites it in any case), and Envoy removes it before the upstream.
Authorities that match no ServiceEntry host go to a catch-all virtual host that answers
404 without asking the service.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, struct_pb2

from extproc.core.locality import augment_labels
from extproc.core.policy import Policy, Service, Workload, route_domains
from extproc.core.routes import (
    ClusterWeight,
    Cors,
    Fault,
    HashKey,
    HashOn,
    HeaderMatch,
    HeaderOperations,
    HttpRoute,
    MatchKind,
    RetryPolicy,
    RouteMatch,
    StringMatch,
)
from extproc.render.filters import (
    CORS_FILTER,
    EXT_PROC_FILTER,
    FAULT_FILTER,
    LUA_FILTER,
    MODULE_FILTER,
)
from extproc.render.tls import endpoint_sni
from extproc.render.typed import boolean, packed, seconds, uint32
from extproc.settings import Settings
from extproc.wire import CLUSTER_HEADER, UP_HEADER, DataPath

_Route = route_components_pb2

#: ``retryRemoteLocalities``' previous_priorities (retry.go buildPreviousPrioritiesConfig).
_ISTIO_REMOTE_LOCALITIES_FREQUENCY = 2
#: Pilot's route configs (``route.DefaultMaxDirectResponseBodySizeBytes``): 1 MB.
_MAX_DIRECT_RESPONSE_BYTES = 1024 * 1024

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
            routes=[
                out
                for route in routes_for(service, settings.workload)
                for out in _service_routes(service, route, settings)
            ],
        )
        for service, domains in route_domains(policy.services)
    ]
    hosts.append(_unknown_host(settings))
    known = {service.cluster_name for service in policy.services}
    missing = any(
        cluster not in known
        for service in policy.services
        for route in service.routes
        for cluster in (*route.clusters(service.cluster_name), *(m.cluster for m in route.mirrors))
    )
    return route_pb2.RouteConfiguration(
        name="extproc_routes",
        virtual_hosts=hosts,
        # A route to a subset nobody defines names no cluster: Envoy answers it 503 (NC),
        # as Istio's sidecar does (its route configs are not validated either).
        validate_clusters=boolean(False) if missing else None,
        # A directResponse body may be up to Istio's 1 MB (Envoy's own default is 4 KiB).
        max_direct_response_body_size_bytes=uint32(_MAX_DIRECT_RESPONSE_BYTES),
    )


def routes_for(service: Service, workload: Workload) -> tuple[HttpRoute, ...]:
    """The VirtualService's routes for this workload, else Istio's default route
    (``BuildDefaultHTTPOutboundRoute``: everything under ``/``, no timeout, Istio's default
    retries, and no explicit ``case_sensitive``).

    A route whose ``sourceLabels`` (or ``gateways``, ``sourceNamespace``) leave this workload
    out is dropped, and nothing after the first catch-all left is reached
    (``BuildHTTPRoutesForVirtualService``, ``sourceMatchHTTP``; the workload has no
    namespace). When none is left, the default route applies, as pilot builds no virtual
    host of the VirtualService then.
    """
    labels = augment_labels(workload.labels, workload.cluster_id, workload.locality, "")
    routes: list[HttpRoute] = []
    for route in service.routes:
        if route.source is not None and not route.source.applies_to(labels):
            continue
        routes.append(route)
        if route.match.catch_all:
            break
    return tuple(routes) or (
        HttpRoute(
            name=service.cluster_name,
            match=RouteMatch(explicit_case=False),
            # hashForService; the default route keeps previous_hosts (ConvertPolicy(.., false)).
            hash_key=service.hash_key,
        ),
    )


def _service_routes(
    service: Service, http: HttpRoute, settings: Settings
) -> list[route_components_pb2.Route]:
    """The route, after its siblings on the lua path when it is weighted (module docstring)."""
    route = _service_route(service, http, settings)
    if not http.weighted or settings.data_path is not DataPath.LUA:
        return [route]
    route.request_headers_to_remove.append(CLUSTER_HEADER)
    siblings = []
    for weight in http.weighted:
        sibling = route_components_pb2.Route()
        sibling.CopyFrom(route)
        sibling.match.headers.append(
            _Route.HeaderMatcher(
                name=CLUSTER_HEADER, string_match=string_pb2.StringMatcher(exact=weight.cluster)
            )
        )
        clusters = sibling.route.weighted_clusters.clusters
        del clusters[:]
        clusters.append(_cluster_weight(weight))
        siblings.append(sibling)
    return [*siblings, route]


def _service_route(
    service: Service, http: HttpRoute, settings: Settings
) -> route_components_pb2.Route:
    """One route of the service's virtual host (``TranslateRoute``): its match, headers and
    fault, then Envoy's own answer or the action to the route's cluster, with its
    ``timeout`` (``setTimeout``) and its ``retries`` (``ConvertPolicy``; none at 0 attempts)."""
    route = _Route.Route(name=http.name, match=_route_match(http.match))
    route.stat_prefix = http.stat_prefix
    _add_headers(route, http.headers)
    if http.fault is not None:
        route.typed_per_filter_config[FAULT_FILTER].CopyFrom(packed(_fault(http.fault)))
    if http.cors is not None:
        route.typed_per_filter_config[CORS_FILTER].CopyFrom(packed(_cors_policy(http.cors)))
    if not http.forwards:
        # Envoy answers itself: no endpoint to choose, so the data path's filter is off.
        _answer(route, http)
        route.typed_per_filter_config[_data_filter_name(settings)].CopyFrom(
            _data_filter_disabled(settings)
        )
        return route
    timeout = seconds(http.timeout_s)  # Istio's default: none
    # setTimeout also bounds a gRPC client's grpc-timeout by the route's (0: unbounded).
    action = route.route
    cluster = http.cluster or service.cluster_name
    if http.weighted:
        # processWeightedDestination; no total_weight: Envoy sums the weights.
        action.weighted_clusters.clusters.extend(_cluster_weight(w) for w in http.weighted)
    else:
        action.cluster = cluster
    action.timeout.CopyFrom(timeout)
    action.max_grpc_timeout.CopyFrom(timeout)
    if http.retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(http.retries))
    for mirror in http.mirrors:
        # TranslateRequestMirrorPolicy: trace_sampled false; the shadow's Host gets Envoy's
        # "-shadow" suffix (features.DisableShadowHostSuffix is false by default).
        action.request_mirror_policies.append(
            _Route.RouteAction.RequestMirrorPolicy(
                cluster=mirror.cluster,
                runtime_fraction=base_pb2.RuntimeFractionalPercent(
                    default_value=_fraction(mirror.numerator, per_million=mirror.per_million)
                ),
                trace_sampled=boolean(False),
            )
        )
    keys = [w.hash_key for w in http.weighted] if http.weighted else [http.hash_key]
    # Each destination's policy, in order (processDestination, processWeightedDestination).
    action.hash_policy.extend(
        hash_policy(key) for key in keys if key is not None and key.on is not HashOn.NOTHING
    )
    if http.rewrite is not None:
        if http.rewrite.regex is not None:
            pattern, substitution = http.rewrite.regex
            action.regex_rewrite.CopyFrom(
                regex_pb2.RegexMatchAndSubstitute(
                    pattern=regex_pb2.RegexMatcher(regex=pattern), substitution=substitution
                )
            )
        else:
            action.prefix_rewrite = http.rewrite.prefix
    if http.host_rewrite:
        action.host_rewrite_literal = http.host_rewrite
    elif endpoint_sni(service.tls):
        # Host = the EDS host's name, per attempt (a retry on us-west says us-west).
        route.route.auto_host_rewrite.CopyFrom(boolean(True))
    if settings.data_path is DataPath.LUA:
        script = struct_pb2.Struct()
        if http.weighted:
            # "<cluster> <weight> ...", in the route's order: the script's pick (bridge.lua).
            script.update({"weights": " ".join(f"{w.cluster} {w.weight}" for w in http.weighted)})
        else:
            script.update({"service": cluster})
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


def hash_policy(key: HashKey) -> route_components_pb2.RouteAction.HashPolicy:
    """``ConsistentHashToHashPolicy``: the key Envoy's ring hashes the request on."""
    policy = _Route.RouteAction.HashPolicy
    if key.on is HashOn.HEADER:
        return policy(header=policy.Header(header_name=key.name))
    if key.on is HashOn.COOKIE:
        cookie = policy.Cookie(
            name=key.name,
            path=key.cookie_path,
            attributes=[
                policy.CookieAttribute(name=name, value=value)
                for name, value in key.cookie_attributes
            ],
        )
        if key.cookie_ttl_s is not None:
            # Set even at 0s, which makes Envoy generate a session cookie.
            cookie.ttl.SetInParent()
            cookie.ttl.CopyFrom(seconds(key.cookie_ttl_s))
        return policy(cookie=cookie)
    if key.on is HashOn.SOURCE_IP:
        return policy(connection_properties=policy.ConnectionProperties(source_ip=key.source_ip))
    return policy(query_parameter=policy.QueryParameter(name=key.name))


def _cluster_weight(weight: ClusterWeight) -> route_components_pb2.WeightedCluster.ClusterWeight:
    """One destination of ``weighted_clusters``, with its own headers and authority."""
    out = _Route.WeightedCluster.ClusterWeight(name=weight.cluster, weight=uint32(weight.weight))
    _add_headers(out, weight.headers)
    if weight.host_rewrite:
        out.host_rewrite_literal = weight.host_rewrite
    return out


def _add_headers(
    route: route_components_pb2.Route | route_components_pb2.WeightedCluster.ClusterWeight,
    headers: HeaderOperations,
) -> None:
    """``TranslateHeadersOperations``: set overwrites, add appends; removes as given."""
    option = base_pb2.HeaderValueOption
    for target, values in (
        (route.request_headers_to_add, headers.request_add),
        (route.response_headers_to_add, headers.response_add),
    ):
        target.extend(
            option(
                header=base_pb2.HeaderValue(key=h.name, value=h.value),
                append_action=option.APPEND_IF_EXISTS_OR_ADD
                if h.append
                else option.OVERWRITE_IF_EXISTS_OR_ADD,
            )
            for h in values
        )
    route.request_headers_to_remove.extend(headers.request_remove)
    route.response_headers_to_remove.extend(headers.response_remove)


#: ``ApplyRedirect``'s response codes.
_REDIRECT_CODES = {
    301: _Route.RedirectAction.MOVED_PERMANENTLY,
    302: _Route.RedirectAction.FOUND,
    303: _Route.RedirectAction.SEE_OTHER,
    307: _Route.RedirectAction.TEMPORARY_REDIRECT,
    308: _Route.RedirectAction.PERMANENT_REDIRECT,
}


def _answer(route: route_components_pb2.Route, http: HttpRoute) -> None:
    """``ApplyRedirect`` or ``ApplyDirectResponse``."""
    if http.redirect is not None:
        redirect = http.redirect
        action = route.redirect
        action.host_redirect = redirect.host
        if redirect.prefix_rewrite:
            action.prefix_rewrite = redirect.prefix_rewrite
        else:
            action.path_redirect = redirect.path
        if redirect.scheme:
            action.scheme_redirect = redirect.scheme
        action.port_redirect = redirect.port
        action.response_code = _REDIRECT_CODES[redirect.code]
        return
    response = http.direct_response
    assert response is not None
    route.direct_response.status = response.status
    if isinstance(response.body, bytes):
        route.direct_response.body.inline_bytes = response.body
    elif response.body is not None:
        route.direct_response.body.inline_string = response.body


def _fault(fault: Fault) -> fault_pb2.HTTPFault:
    """``TranslateFault``: the per-route config of Envoy's fault filter."""
    out = fault_pb2.HTTPFault()
    if fault.delay_s is not None:
        delay = out.delay
        delay.fixed_delay.CopyFrom(seconds(fault.delay_s))
        if fault.delay_per_hundred is not None:
            delay.percentage.CopyFrom(_fraction(fault.delay_per_hundred, per_million=False))
        else:
            delay.percentage.CopyFrom(_fraction(fault.delay_per_million, per_million=True))
    if fault.abort_http_status is not None or fault.abort_grpc_status is not None:
        abort = out.abort
        if fault.abort_http_status is not None:
            abort.http_status = fault.abort_http_status
        else:
            assert fault.abort_grpc_status is not None
            abort.grpc_status = fault.abort_grpc_status
        if fault.abort_per_million is not None:
            abort.percentage.CopyFrom(_fraction(fault.abort_per_million, per_million=True))
    return out


def _fraction(numerator: int, *, per_million: bool) -> percent_pb2.FractionalPercent:
    """A share as pilot writes it: millionths for a ``Percent``, hundredths for an integer."""
    fraction = percent_pb2.FractionalPercent
    return fraction(
        numerator=numerator, denominator=fraction.MILLION if per_million else fraction.HUNDRED
    )


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


def _cors_policy(cors: Cors) -> cors_pb2.CorsPolicy:
    """``TranslateCORSPolicy``: enabled for every request (100 %), the rest as written."""
    policy = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_string_matcher(m) for m in cors.origins],
        allow_methods=cors.methods,
        allow_headers=cors.headers,
        expose_headers=cors.expose_headers,
        max_age=cors.max_age,
        filter_enabled=base_pb2.RuntimeFractionalPercent(
            default_value=_fraction(100, per_million=False)
        ),
        forward_not_matching_preflights=boolean(cors.forward_unmatched_preflights),
    )
    if cors.credentials is not None:
        policy.allow_credentials.CopyFrom(boolean(cors.credentials))
    return policy


def _string_matcher(match: StringMatch) -> string_pb2.StringMatcher:
    """``util.ConvertToEnvoyMatch``."""
    if match.kind is MatchKind.EXACT:
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind is MatchKind.PREFIX:
        return string_pb2.StringMatcher(prefix=match.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.value))


def _data_filter_name(settings: Settings) -> str:
    if settings.data_path is DataPath.LUA:
        return LUA_FILTER
    return MODULE_FILTER if settings.data_path is DataPath.MODULE else EXT_PROC_FILTER


def _data_filter_disabled(settings: Settings) -> any_pb2.Any:
    """The per-route config that turns the data path's filter off on a route."""
    if settings.data_path is DataPath.LUA:
        return packed(lua_pb2.LuaPerRoute(disabled=True))
    if settings.data_path is DataPath.MODULE:
        # The dynamic-module filter has no per-route "disabled" of its own: Envoy's generic
        # per-filter wrapper turns any filter off (route_components.proto FilterConfig).
        return packed(_Route.FilterConfig(disabled=True))
    return packed(ext_proc_pb2.ExtProcPerRoute(disabled=True))


def _unknown_host(settings: Settings) -> route_components_pb2.VirtualHost:
    """The catch-all: 404, with the data path's filter off (the service is not asked)."""
    filter_name, disabled = _data_filter_name(settings), _data_filter_disabled(settings)
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
