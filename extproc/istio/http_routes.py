"""Turn validated VirtualServices into each service's HTTP routes, as pilot builds a sidecar's.

Pilot's ``route.go``: a VirtualService bound to the mesh applies to the ServiceEntry hosts it
names; per host and port its ``http[]`` entries become routes in order, one per ``match[]``
entry (``BuildHTTPRoutesForVirtualService``), a match on another ``port`` is left out
(``TranslateRoute``), and nothing after a catch-all is kept. When no route is left for a port,
the VirtualService does not apply there and Istio's default route does
(``buildSidecarVirtualHostsForVirtualService``). A request that matches none of a
VirtualService's routes gets Envoy's 404: no default route is added behind them.

Cross-object rules: a VirtualService host that is no ServiceEntry host is a warning (Istio
would route it to no cluster extproc has); a second VirtualService for a host is a warning
and ignored (Istio uses the oldest; document order stands for creation time); a destination
on another host or port than the route's own service is an error, not served yet. A route
with several destinations is Envoy's ``weighted_clusters`` (``processWeightedDestination``):
each destination of weight > 0 in order, with its own headers.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from extproc.core.policy import Service, UpstreamSni, authority_key, cluster_name
from extproc.core.routes import (
    DEFAULT_RETRY_ON,
    ClusterWeight,
    Cors,
    DirectResponse,
    Fault,
    HashKey,
    HeaderMatch,
    HeaderOperations,
    HeaderValue,
    HttpRoute,
    MatchKind,
    Mirror,
    Redirect,
    RetryPolicy,
    Rewrite,
    RouteMatch,
    SourceMatch,
    StringMatch,
)
from extproc.errors import Problem
from extproc.istio.duration import parse_duration
from extproc.istio.findings import Parsed, Source
from extproc.istio.http_action_rules import GRPC_STATUS
from extproc.istio.models import (
    UPSTREAM_SNI_ANNOTATION,
    CorsPolicySpec,
    DestinationSpec,
    DirectResponseSpec,
    FaultSpec,
    HeadersSpec,
    HttpMatchSpec,
    HttpRetrySpec,
    HttpRouteSpec,
    PercentSpec,
    RedirectSpec,
    RouteDestinationSpec,
    StringMatchSpec,
    VirtualService,
)
from extproc.istio.virtual_service_rules import binds_to_mesh

__all__ = ["apply_virtual_services"]


def apply_virtual_services(
    services: Sequence[Service], objects: Sequence[Parsed]
) -> tuple[tuple[Service, ...], list[Problem], list[Problem]]:
    """Each service with its VirtualService's routes; and the errors and warnings found."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    hosts = {authority_key(s.host, None) for s in services}
    chosen: dict[str, tuple[Source, VirtualService]] = {}
    for parsed in objects:
        vs = parsed.obj
        if not isinstance(vs, VirtualService) or not binds_to_mesh(vs):
            continue
        for i, host in enumerate(vs.spec.hosts):
            key = authority_key(host, None)
            where = f"spec.hosts[{i}]"
            if key not in hosts:
                warnings.append(
                    parsed.source.problem(
                        where,
                        f"{host!r} is no ServiceEntry host: Istio's sidecar would route it "
                        "to no cluster here; ignored",
                    )
                )
            elif key in chosen:
                first = chosen[key][0]
                warnings.append(
                    parsed.source.problem(
                        where,
                        f"{host!r} already has the VirtualService of {first.cite()}; Istio "
                        "applies the oldest one, and extproc the first: this one is ignored",
                    )
                )
            else:
                chosen[key] = (parsed.source, vs)
    by_cluster = {s.cluster_name: s for s in services}
    ports: dict[str, list[int]] = {}
    for s in services:
        if not s.subset:
            ports.setdefault(s.host, []).append(s.port)
    targets = _Targets(by_cluster, ports)
    out = []
    for service in services:
        found = None if service.subset else chosen.get(authority_key(service.host, None))
        if found is None:
            out.append(service)
            continue
        source, vs = found
        routes = _routes(vs, service, targets, source, errors, warnings)
        out.append(
            dataclasses.replace(service, routes=routes, route_source=source.cite())
            if routes
            else service
        )
    # A problem of a route shows once, not once per port of its host.
    return tuple(out), list(dict.fromkeys(errors)), list(dict.fromkeys(warnings))


def _routes(
    vs: VirtualService,
    service: Service,
    targets: _Targets,
    source: Source,
    errors: list[Problem],
    warnings: list[Problem],
) -> tuple[HttpRoute, ...]:
    """``BuildHTTPRoutesForVirtualService`` for one service's port."""
    by_cluster = targets.by_cluster
    routes: list[HttpRoute] = []
    for i, http in enumerate(vs.spec.http):
        where = f"spec.http[{i}]"
        answered = http.redirect is not None or http.direct_response is not None
        if not answered and (not http.route or any(d.destination is None for d in http.route)):
            continue  # validation already said why
        clusters = [
            _destination_cluster(
                d.destination, service, targets, source, f"{where}.route[{j}].destination", warnings
            )
            for j, d in enumerate(() if answered else http.route)
            if d.destination is not None
        ]
        mirrors = () if answered else _mirrors(http, service, targets, source, where, warnings)
        cluster = clusters[0] if len(clusters) == 1 else ""
        hashes = [
            _hash_key(d, name or service.cluster_name, service, by_cluster)
            for d, name in zip(() if answered else http.route, clusters, strict=True)
        ]
        # processWeightedDestination: "Ignore 0 weighted clusters".
        weighted = tuple(
            _cluster_weight(d, name or service.cluster_name, hashed)
            for d, name, hashed in zip(http.route, clusters, hashes, strict=True)
            if len(clusters) > 1 and d.weight > 0
        )
        matches: list[HttpMatchSpec | None] = list(http.match) or [None]
        for match in matches:
            if match is not None and match.port and match.port != service.port:
                continue
            name = http.name
            if match is not None and match.name:
                name = f"{name}.{match.name}"
            route = _action(
                http,
                service,
                HttpRoute(
                    name=name,
                    match=_route_match(match),
                    cluster=cluster,
                    weighted=weighted,
                    source=_source_match(match),
                    stat_prefix=match.stat_prefix if match is not None else "",
                    mirrors=mirrors,
                ),
                hashes[0] if len(hashes) == 1 else None,
            )
            rewrites = route.host_rewrite or any(w.host_rewrite for w in route.weighted)
            if rewrites and service.tls and service.tls.sni_from is UpstreamSni.ENDPOINT:
                errors.append(
                    source.problem(
                        where,
                        "rewrites the authority, which the DestinationRule's annotation "
                        f"{UPSTREAM_SNI_ANNOTATION}: endpoint sets per endpoint: remove one",
                    )
                )
            routes.append(route)
            if route.match.catch_all and route.source is None:
                # Routes are matched in order: nothing after is reached. One with a source
                # condition may be left out for the workload, so the rendering stops there.
                return tuple(routes)
    return tuple(routes)


def _action(
    http: HttpRouteSpec, service: Service, route: HttpRoute, hashed: HashKey | None
) -> HttpRoute:
    """``TranslateRoute`` after the match: headers, then a redirect, a direct response, or
    the destination's action (``applyHTTPRouteDestination``); the fault and the CORS policy,
    on any of them. ``hashed`` is a single destination's consistentHash key."""
    route = dataclasses.replace(route, cors=_cors(http.cors_policy))
    headers, authority = _headers(http.headers)
    if http.redirect is not None:
        return dataclasses.replace(
            route, headers=headers, redirect=_redirect(http.redirect, service.port), fault=None
        )
    if http.direct_response is not None:
        return dataclasses.replace(
            route, headers=headers, direct_response=_direct_response(http.direct_response)
        )
    rewrite = None
    if http.rewrite is not None:
        regex = http.rewrite.uri_regex_rewrite
        if regex is not None:
            rewrite = Rewrite(regex=(regex.match, regex.rewrite))
        elif http.rewrite.uri:
            rewrite = Rewrite(prefix=http.rewrite.uri)
        authority = http.rewrite.authority or authority
    # processDestination: the destination's headers follow the route's; its authority only
    # when the route sets none. Several destinations keep theirs on their ClusterWeight, and
    # their hash keys (processWeightedDestination), without holding retries on the host.
    destination_headers, destination_authority = (
        _headers(http.route[0].headers) if len(http.route) == 1 else (HeaderOperations(), "")
    )
    return dataclasses.replace(
        route,
        timeout_s=_seconds(http.timeout) or 0.0,
        retries=_retry_policy(http.retries, hashed=hashed is not None),
        hash_key=hashed,
        headers=headers + destination_headers,
        host_rewrite=authority or destination_authority,
        rewrite=rewrite,
        fault=_fault(http.fault),
    )


def _headers(spec: HeadersSpec | None) -> tuple[HeaderOperations, str]:
    """``TranslateHeadersOperations``: the operations, and the authority they set (or "")."""
    if spec is None:
        return HeaderOperations(), ""
    request, response = spec.request, spec.response
    set_values, set_authority = _append_headers(request.set if request else {}, append=False)
    add_values, add_authority = _append_headers(request.add if request else {}, append=True)
    response_set, _ = _append_headers(response.set if response else {}, append=False)
    response_add, _ = _append_headers(response.add if response else {}, append=True)
    return (
        HeaderOperations(
            request_add=set_values + add_values,
            request_remove=_without_internal(request.remove if request else []),
            response_add=response_set + response_add,
            response_remove=_without_internal(response.remove if response else []),
        ),
        set_authority or add_authority,
    )


def _append_headers(values: dict[str, str], *, append: bool) -> tuple[tuple[HeaderValue, ...], str]:
    """``translateAppendHeaders``: internal headers dropped (an authority kept aside), sorted."""
    authority = ""
    kept = []
    for name, value in values.items():
        if name.lower() in (":authority", "host"):
            authority = value
        if name.startswith(":") or name.lower() == "host":
            continue
        kept.append(HeaderValue(name, value, append))
    return tuple(sorted(kept, key=lambda h: h.name)), authority


def _without_internal(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in names if not (n.startswith(":") or n.lower() == "host"))


def _redirect(spec: RedirectSpec, port: int) -> Redirect:
    """``ApplyRedirect``; the port is the request's for FROM_REQUEST_PORT, and none for the
    scheme's default port."""
    redirect_port = 0
    if spec.derive_port == "FROM_REQUEST_PORT":
        redirect_port = port
    elif spec.port is not None:
        redirect_port = spec.port
    if spec.port is not None or spec.derive_port is not None:
        scheme = spec.scheme or "http"  # a sidecar never terminates TLS
        if (redirect_port, scheme) in ((80, "http"), (443, "https")):
            redirect_port = 0
    return Redirect(
        path="" if spec.prefix_rewrite else spec.uri,
        prefix_rewrite=spec.prefix_rewrite,
        host=spec.authority,
        scheme=spec.scheme,
        port=redirect_port,
        code=spec.redirect_code or 301,
    )


def _direct_response(spec: DirectResponseSpec) -> DirectResponse:
    body: str | bytes | None = None
    if spec.body is not None and spec.body.string is not None:
        body = spec.body.string
    elif spec.body is not None and spec.body.bytes_ is not None:
        body = base64.b64decode(spec.body.bytes_)
    return DirectResponse(spec.status, body)


def _fault(spec: FaultSpec | None) -> Fault | None:
    """``TranslateFault``: percentages in millionths (``translatePercentToFractionalPercent``);
    an exponential delay or an HTTP/2 abort is left out, as pilot leaves it."""
    if spec is None:
        return None
    fault = Fault()
    delay = spec.delay
    if delay is not None and delay.fixed_delay is not None:
        if delay.percentage is not None:
            fault = dataclasses.replace(
                fault,
                delay_s=_seconds(delay.fixed_delay),
                delay_per_million=int(delay.percentage.value * 10000),
            )
        else:
            fault = dataclasses.replace(
                fault, delay_s=_seconds(delay.fixed_delay), delay_per_hundred=delay.percent or 0
            )
    abort = spec.abort
    if abort is not None and (abort.http_status is not None or abort.grpc_status is not None):
        fault = dataclasses.replace(
            fault,
            abort_http_status=abort.http_status,
            abort_grpc_status=None if abort.grpc_status is None else GRPC_STATUS[abort.grpc_status],
            abort_per_million=(
                None if abort.percentage is None else int(abort.percentage.value * 10000)
            ),
        )
    return None if fault == Fault() else fault


def _cluster_weight(
    destination: RouteDestinationSpec, cluster: str, hashed: HashKey | None
) -> ClusterWeight:
    """``processWeightedDestination``: the weight, the destination's headers and authority,
    and its hash key, which pilot appends to the route's hash policies."""
    headers, authority = _headers(destination.headers)
    return ClusterWeight(cluster, destination.weight, headers, authority, hashed)


def _hash_key(
    route_destination: RouteDestinationSpec,
    cluster: str,
    service: Service,
    by_cluster: Mapping[str, Service],
) -> HashKey | None:
    """``HashForHTTPDestination``: the key of the destination's cluster (for a subset no rule
    defines, its host's main cluster: the rule's own key; none for a host no ServiceEntry
    declares, ``SidecarScope.DestinationRule`` finds no rule), with the rule's port-level
    settings only when the destination names its port (``portLevelSettingsConsistentHash``)."""
    destination = route_destination.destination
    if destination is None:
        return None
    port = destination.port.number if destination.port is not None else service.port
    target = by_cluster.get(cluster) or by_cluster.get(cluster_name(destination.host, port, ""))
    if target is None:
        return None
    return target.hash_key if destination.port else target.hash_key_portless


@dataclass(frozen=True, slots=True)
class _Targets:
    """What a route destination may name: every cluster, and each host's ports."""

    by_cluster: Mapping[str, Service]
    ports: Mapping[str, list[int]]  # host -> the ServiceEntry ports of that host


def _destination_cluster(
    destination: DestinationSpec,
    service: Service,
    targets: _Targets,
    source: Source,
    where: str,
    warnings: list[Problem],
) -> str:
    """The destination's cluster (``GetDestinationCluster``), "" for the service's own.

    The host as written, the destination's port, else the port the request came on: on a
    sidecar, pilot looks the host up among the services of that port only
    (``BuildSidecarOutboundVirtualHosts``), so "the host's only port" is always that port.
    Pilot checks nothing here: a host no ServiceEntry declares on that port, or a subset no
    DestinationRule defines (or a DNS one with no endpoint), names a cluster that does not
    exist, and Envoy answers 503 (NC), as on Istio's sidecar.
    """
    port = destination.port.number if destination.port is not None else service.port
    name = cluster_name(destination.host, port, destination.subset)
    if name == service.cluster_name:
        return ""
    if name not in targets.by_cluster:
        ports = targets.ports.get(destination.host, [])
        if port not in ports:
            what = (
                f"{destination.host!r} is no ServiceEntry host"
                if not ports
                else f"{destination.host!r} has no port {port} in its ServiceEntry"
            )
            field = "host" if not ports else "port.number"
        else:
            what = f"{destination.subset!r} is no subset of {destination.host!r}'s DestinationRule"
            field = "subset"
        warnings.append(
            source.problem(
                f"{where}.{field}",
                f"{what}: as on Istio's sidecar, its cluster does not exist and Envoy answers 503",
            )
        )
    return name


def _route_match(match: HttpMatchSpec | None) -> RouteMatch:
    """``TranslateRouteMatch``: headers sorted by name, then ``:method``, ``:authority`` and
    ``:scheme``."""
    if match is None:
        return RouteMatch(explicit_case=False)
    headers = [HeaderMatch(name, _string_match(m)) for name, m in match.headers.items()]
    headers += [
        HeaderMatch(name, _string_match(m), invert=True)
        for name, m in match.without_headers.items()
    ]
    headers.sort(key=lambda h: h.name)
    for name, spec in ((":method", match.method), (":authority", match.authority)):
        if spec is not None:
            headers.append(HeaderMatch(name, _string_match(spec)))
    if match.scheme is not None:
        headers.append(HeaderMatch(":scheme", _string_match(match.scheme)))
    path = RouteMatch().path if match.uri is None else _string_match(match.uri)
    return RouteMatch(
        path=path,
        case_sensitive=not match.ignore_uri_case,
        headers=tuple(headers),
        query_params=tuple((name, _string_match(m)) for name, m in match.query_params.items()),
    )


def _string_match(spec: StringMatchSpec) -> StringMatch:
    """``ConvertToEnvoyMatch``; an empty match or ``regex: "*"`` is a present match."""
    if spec.exact is not None:
        return StringMatch(MatchKind.EXACT, spec.exact)
    if spec.prefix is not None:
        return StringMatch(MatchKind.PREFIX, spec.prefix)
    if spec.regex is not None and spec.regex != "*":
        return StringMatch(MatchKind.REGEX, spec.regex)
    return StringMatch(MatchKind.PRESENT)


def _cors(spec: CorsPolicySpec | None) -> Cors | None:
    """``TranslateCORSPolicy``: ``allowOrigins`` (else the deprecated exact ``allowOrigin``),
    the lists comma-joined, ``maxAge`` in whole seconds (``forwardNotMatchingPreflights``)."""
    if spec is None:
        return None
    if spec.allow_origins:
        origins = tuple(_string_match(m) for m in spec.allow_origins)
    else:
        origins = tuple(StringMatch(MatchKind.EXACT, o) for o in spec.allow_origin)
    max_age = ""
    if spec.max_age is not None:
        nanos = parse_duration(spec.max_age)
        assert nanos is not None  # the model accepted only durations
        max_age = str(nanos // 1_000_000_000)  # Duration.GetSeconds
    return Cors(
        origins=origins,
        methods=",".join(spec.allow_methods),
        headers=",".join(spec.allow_headers),
        expose_headers=",".join(spec.expose_headers),
        max_age=max_age,
        credentials=spec.allow_credentials,
        forward_unmatched_preflights=spec.unmatched_preflights != "IGNORE",
    )


def _mirrors(
    http: HttpRouteSpec,
    service: Service,
    targets: _Targets,
    source: Source,
    where: str,
    warnings: list[Problem],
) -> tuple[Mirror, ...]:
    """``mirror`` then ``mirrors[]`` (``applyHTTPRouteDestination``): a share of 0 copies
    nothing; unset is 100 % (``MirrorPercent``, ``MirrorPercentByPolicy``)."""
    out: list[Mirror] = []

    def add(destination: DestinationSpec, here: str, share: Mirror | None) -> None:
        if share is not None:
            name = _destination_cluster(destination, service, targets, source, here, warnings)
            cluster = name or service.cluster_name
            out.append(Mirror(cluster, share.numerator, share.per_million))

    if http.mirror is not None:
        add(http.mirror, f"{where}.mirror", _share(http.mirror_percentage, http.mirror_percent))
    for i, mirror in enumerate(http.mirrors):
        if mirror.destination is not None:
            add(mirror.destination, f"{where}.mirrors[{i}].destination", _share(mirror.percentage))
    return tuple(out)


def _share(percentage: PercentSpec | None, percent: int | None = None) -> Mirror | None:
    """The fraction pilot writes (the cluster left blank), None for an explicit 0."""
    if percentage is not None:
        value = int(percentage.value * 10000)  # translatePercentToFractionalPercent
        return Mirror("", value, per_million=True) if percentage.value > 0 else None
    if percent is not None:
        return Mirror("", percent) if percent > 0 else None
    return Mirror("")


def _source_match(match: HttpMatchSpec | None) -> SourceMatch | None:
    """The match's conditions on the client proxy (``sourceMatchHTTP``), None for none."""
    if match is None or not (match.source_labels or match.gateways or match.source_namespace):
        return None
    return SourceMatch(
        labels=tuple(sorted(match.source_labels.items())),
        gateways=tuple(match.gateways),
        namespace=match.source_namespace,
    )


def _retry_policy(spec: HttpRetrySpec | None, *, hashed: bool) -> RetryPolicy | None:
    """``retry.ConvertPolicy``: attempts 0 is no retry policy; ``parseRetryOn`` splits codes.

    A consistent-hash destination keeps its retries on the hashed host: no ``previous_hosts``
    predicate unless ``retryIgnorePreviousHosts`` asks for it (``newRetryPolicy(hashPolicy)``).
    """
    if spec is None:
        return RetryPolicy(previous_hosts=not hashed)
    if spec.attempts <= 0:
        return None
    retry_on = DEFAULT_RETRY_ON
    codes: tuple[int, ...] = ()
    if spec.retry_on:
        words = [w.strip() for w in spec.retry_on.split(",") if w.strip()]
        codes = tuple(int(w) for w in words if w.isdigit())
        retry_on = ",".join(w for w in words if not w.isdigit())
        if codes and "retriable-status-codes" not in retry_on:
            retry_on = (
                f"{retry_on},retriable-status-codes" if retry_on else "retriable-status-codes"
            )
    return RetryPolicy(
        num_retries=spec.attempts,
        retry_on=retry_on,
        retriable_status_codes=codes,
        per_try_timeout_s=_seconds(spec.per_try_timeout),
        previous_hosts=(
            not hashed
            if spec.retry_ignore_previous_hosts is None
            else spec.retry_ignore_previous_hosts
        ),
        remote_localities=spec.retry_remote_localities,
        backoff_s=_seconds(spec.backoff),
    )


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    nanos = parse_duration(text)
    assert nanos is not None  # validated
    return nanos / 1e9
