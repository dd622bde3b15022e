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
on another host or port than the route's own service is an error, not served yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from extproc.core.policy import Service, authority_key
from extproc.core.routes import (
    DEFAULT_RETRY_ON,
    HeaderMatch,
    HttpRoute,
    MatchKind,
    RetryPolicy,
    RouteMatch,
    StringMatch,
)
from extproc.errors import Problem
from extproc.istio.duration import parse_duration
from extproc.istio.findings import Parsed, Source
from extproc.istio.models import (
    HttpMatchSpec,
    HttpRetrySpec,
    HttpRouteSpec,
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
    out = []
    for service in services:
        found = chosen.get(authority_key(service.host, None))
        if found is None:
            out.append(service)
            continue
        source, vs = found
        routes = _routes(vs, service, source, errors)
        out.append(
            dataclasses.replace(service, routes=routes, route_source=source.cite())
            if routes
            else service
        )
    return tuple(out), errors, warnings


def _routes(
    vs: VirtualService, service: Service, source: Source, errors: list[Problem]
) -> tuple[HttpRoute, ...]:
    """``BuildHTTPRoutesForVirtualService`` for one service's port."""
    routes: list[HttpRoute] = []
    for i, http in enumerate(vs.spec.http):
        where = f"spec.http[{i}]"
        if not _destination_is(http, service, source, where, errors):
            continue
        matches: list[HttpMatchSpec | None] = list(http.match) or [None]
        for match in matches:
            if match is not None and match.port and match.port != service.port:
                continue
            name = http.name
            if match is not None and match.name:
                name = f"{name}.{match.name}"
            route = HttpRoute(
                name=name,
                match=_route_match(match),
                timeout_s=_seconds(http.timeout) or 0.0,
                retries=_retry_policy(http.retries),
            )
            routes.append(route)
            if route.match.catch_all:
                return tuple(routes)  # routes are matched in order: nothing after is reached
    return tuple(routes)


def _destination_is(
    http: HttpRouteSpec, service: Service, source: Source, where: str, errors: list[Problem]
) -> bool:
    """Whether the route's one destination is this service (another is not served yet)."""
    if len(http.route) != 1 or http.route[0].destination is None:
        return False  # validation already said why
    destination = http.route[0].destination
    if authority_key(destination.host, None) != authority_key(service.host, None):
        errors.append(
            source.problem(
                f"{where}.route[0].destination.host",
                f"routes {service.host!r} to another host, {destination.host!r}: not supported "
                "yet (a VirtualService may route only to its own ServiceEntry host)",
            )
        )
        return False
    if destination.port is not None and destination.port.number != service.port:
        errors.append(
            source.problem(
                f"{where}.route[0].destination.port.number",
                f"routes port {service.port} to port {destination.port.number}: not supported "
                "yet (a route goes to the port it was asked on)",
            )
        )
        return False
    return True


def _route_match(match: HttpMatchSpec | None) -> RouteMatch:
    """``TranslateRouteMatch``: headers sorted by name, then ``:method``."""
    if match is None:
        return RouteMatch(explicit_case=False)
    headers = [HeaderMatch(name, _string_match(m)) for name, m in match.headers.items()]
    headers += [
        HeaderMatch(name, _string_match(m), invert=True)
        for name, m in match.without_headers.items()
    ]
    headers.sort(key=lambda h: h.name)
    if match.method is not None:
        headers.append(HeaderMatch(":method", _string_match(match.method)))
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


def _retry_policy(spec: HttpRetrySpec | None) -> RetryPolicy | None:
    """``retry.ConvertPolicy``: attempts 0 is no retry policy; ``parseRetryOn`` splits codes."""
    if spec is None:
        return RetryPolicy()
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
        previous_hosts=spec.retry_ignore_previous_hosts is not False,
        remote_localities=spec.retry_remote_localities,
        backoff_s=_seconds(spec.backoff),
    )


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    nanos = parse_duration(text)
    assert nanos is not None  # validated
    return nanos / 1e9
