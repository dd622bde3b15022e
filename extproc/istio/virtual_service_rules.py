"""Istio's rules for a VirtualService (``ValidateVirtualService``), and what extproc serves of it.

From ``pkg/config/validation/validation.go`` (``ValidateVirtualService``, ``validateStringMatch``,
``validateHTTPRouteDestinations``, ``validateDestination``), ``virtualservice.go``
(``validateHTTPRoute``, ``validateHTTPRouteConflict``, ``validateHTTPRouteMatchRequest``) and
``agent/validation.go`` (``ValidateHTTPRetry``), with Istio's messages.

extproc serves the HTTP routes of a VirtualService bound to the mesh (no ``gateways``, or
``mesh`` among them): matches on uri, headers, withoutHeaders, method, authority, scheme, port
and queryParams, destinations (one, or several by weight) on the VirtualService's own
ServiceEntry host, ``timeout``, ``retries``, and what ``http_action_rules`` checks (headers,
rewrite, redirect, direct response, fault).
Any other field of an HTTP route would make Envoy route differently than Istio's sidecar, so
it is an error that names it, never a field silently dropped.
"""

from __future__ import annotations

import re
from typing import Final

from extproc.istio.duration import parse_duration
from extproc.istio.field_rules import (
    check_duration,
    check_regex,
    domain_error,
    label_error,
    port_error,
)
from extproc.istio.findings import Checker
from extproc.istio.http_action_rules import check_conflicts, check_route_actions
from extproc.istio.literal import show
from extproc.istio.models import (
    CorsPolicySpec,
    DestinationSpec,
    HttpMatchSpec,
    HttpRetrySpec,
    HttpRouteSpec,
    Model,
    StringMatchSpec,
    VirtualService,
)

__all__ = ["MESH_GATEWAY", "binds_to_mesh", "check_virtual_service"]

#: The reserved gateway name of every sidecar (``constants.IstioMeshGateway``).
MESH_GATEWAY: Final = "mesh"
#: ``agent.supportedRetryOnPolicies``: Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on words.
_RETRY_ON: Final = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
#: Go's ``net/http`` StatusText: the codes ``parseRetryOn`` reads as status codes.
_STATUS_CODES: Final = frozenset(
    {100, 101, 102, 103, *range(200, 209), 226, *range(300, 309), *range(400, 419)}
    | {421, 422, 423, 424, 425, 426, 428, 429, 431, 451}
    | {500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511}
)
_NOT_YET: Final = "is not supported yet: Envoy would route differently than Istio's sidecar"
_INT32_MAX: Final = 2**31 - 1
#: Envoy's bound on a route's total weight (``WeightedClusterSpecifierPlugin``).
_UINT32_MAX: Final = 2**32 - 1


def binds_to_mesh(vs: VirtualService) -> bool:
    """Whether the VirtualService applies to sidecars: no ``gateways``, or ``mesh`` among them."""
    gateways = vs.spec.gateways
    return not gateways or MESH_GATEWAY in gateways


def check_virtual_service(vs: VirtualService, check: Checker) -> None:
    """``ValidateVirtualService`` for one bound to the mesh, and what extproc serves of it."""
    spec = vs.spec
    if not spec.hosts:
        check.error("spec.hosts", "delegate virtual services are not supported: hosts is required")
    for i, host in enumerate(spec.hosts):
        if host == "*":
            check.error(
                f"spec.hosts[{i}]",
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            )
        elif (problem := domain_error(host)) is not None:
            check.error(f"spec.hosts[{i}]", problem)
    seen: dict[str, int] = {}
    for i, host in enumerate(spec.hosts):
        if host in seen:
            check.error(
                f"spec.hosts[{i}]",
                f"duplicate hosts in virtual service: {host} & {spec.hosts[seen[host]]}",
            )
        seen.setdefault(host, i)
    extra = vs.spec.model_extra or {}
    if not spec.http and "tcp" not in extra and "tls" not in extra:
        check.error("spec", "http, tcp or tls must be provided in virtual service")
    if not binds_to_mesh(vs):
        check.warn(
            "spec.gateways",
            f"binds it to gateways only ({', '.join(map(show, spec.gateways))}), not to sidecars "
            f"({show(MESH_GATEWAY)}): it does not apply here, ignored",
        )
        return
    for i, route in enumerate(spec.http):
        _check_http_route(route, f"spec.http[{i}]", check)


def _check_http_route(route: HttpRouteSpec, where: str, check: Checker) -> None:
    """``validateHTTPRoute``, for the fields extproc serves; the others are errors."""
    _unsupported(route, where, check)
    check_conflicts(route, where, check)
    for j, match in enumerate(route.match):
        _check_match(match, f"{where}.match[{j}]", check)
    for j, destination in enumerate(route.route):
        here = f"{where}.route[{j}]"
        _unsupported(destination, here, check)
        if destination.destination is None:
            check.error(here, "destination is required")
            continue
        _check_destination(destination.destination, f"{here}.destination", check)
        if destination.weight < 0:
            check.error(f"{here}.weight", f"weight {destination.weight} < 0")
        elif destination.weight > _INT32_MAX:  # the API's int32: the API server refuses it
            check.error(f"{here}.weight", f"weight {destination.weight} is over int32")
    weights = [d.weight for d in route.route]
    if len(weights) > 1 and sum(weights) == 0:
        check.error(f"{where}.route", "total destination weight = 0")
    elif len(weights) > 1 and sum(w for w in weights if w > 0) > _UINT32_MAX:
        # Envoy refuses such a route (WeightedClusterSpecifierPlugin): Istio's sidecar would
        # reject the whole route configuration.
        check.error(
            f"{where}.route",
            f"the sum of the weights exceeds {_UINT32_MAX}: Envoy refuses the route",
        )
    if route.timeout is not None:
        check_duration(route.timeout, f"{where}.timeout", check)
    if route.retries is not None:
        _check_retries(route.retries, f"{where}.retries", check)
    _check_mirrors(route, where, check)
    if route.cors_policy is not None:
        _check_cors(route.cors_policy, f"{where}.corsPolicy", check)
    check_route_actions(route, where, check)


def _check_destination(destination: DestinationSpec, where: str, check: Checker) -> None:
    """``validateDestination``: a host (no ``*``), a port, a subset name."""
    _unsupported(destination, where, check)
    host = destination.host
    if host == "*":
        check.error(f"{where}.host", f"invalid destination host {host}")
    elif (problem := domain_error(host)) is not None:
        check.error(f"{where}.host", problem)
    port = destination.port
    if port is not None and (problem := port_error(port.number)) is not None:
        check.error(f"{where}.port.number", problem)
    subset = destination.subset
    if subset and not _DNS1123_LABEL.fullmatch(subset):  # validateSubsetName
        check.error(f"{where}.subset", f"subset name is invalid: {subset}")


#: ``supportedCORSMethods``.
_CORS_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"}
)
_UNMATCHED_PREFLIGHTS: Final = ("UNSPECIFIED", "FORWARD", "IGNORE")


def _check_cors(cors: CorsPolicySpec, where: str, check: Checker) -> None:
    """``validateCORSPolicy``, with Istio's messages."""
    for i, origin in enumerate(cors.allow_origins):
        here = f"{where}.allowOrigins[{i}]"
        text = origin.exact or origin.prefix or origin.regex or ""
        if not text:
            check.error(here, f"'{text}' is not a valid match type for CORS allow origins")
        elif origin.regex is not None:
            check_regex(origin.regex, here, "corsPolicy.allowOrigins", check)
    for method in cors.allow_methods:
        if method not in _CORS_METHODS:
            check.error(f"{where}.allowMethods", f'"{method}" is not a supported HTTP method')
    for field, names in (
        ("allowHeaders", cors.allow_headers),
        ("exposeHeaders", cors.expose_headers),
    ):
        for name in names:
            if not name:
                check.error(f"{where}.{field}", "header name cannot be empty")
            elif name != "*" and not _HEADER_NAME.fullmatch(name):
                check.error(f"{where}.{field}", f"header name {name} is not a valid header name")
    if cors.max_age is not None:
        check_duration(cors.max_age, f"{where}.maxAge", check)
        nanos = parse_duration(cors.max_age)
        if nanos is not None and nanos % 1_000_000_000:
            check.error(f"{where}.maxAge", "max_age duration is accurate only to seconds precision")
    if (
        cors.unmatched_preflights is not None
        and cors.unmatched_preflights not in _UNMATCHED_PREFLIGHTS
    ):
        check.error(
            f"{where}.unmatchedPreflights",
            f"unknown value {show(cors.unmatched_preflights)}; expected one of "
            + ", ".join(_UNMATCHED_PREFLIGHTS),
        )


def _check_mirrors(route: HttpRouteSpec, where: str, check: Checker) -> None:
    """``validateHTTPRoute``'s mirror checks and ``validateHTTPMirrors``, Istio's messages."""
    if route.mirror_percent is not None:
        if route.mirror_percent > 100:
            check.error(
                f"{where}.mirrorPercent",
                f"mirror_percent must have a max value of 100 (it has {route.mirror_percent})",
            )
        check.warn(
            f"{where}.mirrorPercent",
            'using deprecated setting "mirrorPercent", use "mirrorPercentage" instead',
        )
    for here, percent, name in (
        (f"{where}.mirrorPercentage", route.mirror_percentage, "mirror_percentage"),
        *(
            (f"{where}.mirrors[{i}].percentage", m.percentage, "mirror percentage")
            for i, m in enumerate(route.mirrors)
        ),
    ):
        if percent is None:
            continue
        if percent.value > 100:
            check.error(here, f"{name} must have a max value of 100 (it has {percent.value:f})")
        if percent.value < 0:
            check.error(here, f"{name} must have a min value of 0 (it has {percent.value:f})")
    if route.mirror is not None:
        _check_destination(route.mirror, f"{where}.mirror", check)
    for i, mirror in enumerate(route.mirrors):
        _unsupported(mirror, f"{where}.mirrors[{i}]", check)
        if mirror.destination is None:
            check.error(f"{where}.mirrors[{i}]", "destination is required for mirrors")
        else:
            _check_destination(mirror.destination, f"{where}.mirrors[{i}].destination", check)
    if route.mirror is not None and route.mirrors:
        check.error(where, "HTTP route cannot contain both mirror and mirrors")


def _check_match(match: HttpMatchSpec, where: str, check: Checker) -> None:
    """``validateHTTPRouteMatchRequest``."""
    _unsupported(match, where, check)
    for field, matches in (
        ("headers", match.headers),
        ("withoutHeaders", match.without_headers),
        ("queryParams", match.query_params),
    ):
        for name, string_match in matches.items():
            here = f"{where}.{field}.{name}"
            if field != "queryParams" and not (
                name in _PSEUDO_HEADERS or _HEADER_NAME.fullmatch(name)
            ):
                check.error(here, f"header name {name} is not a valid header name")
            if name.startswith("@request.auth.claims"):
                check.error(
                    here, "JWT claim based routing is only supported for gateway, found no gateways"
                )
            # withoutHeaders: "*" is not a regex but a present match (route.go).
            if not (field == "withoutHeaders" and string_match.regex == "*"):
                _check_string_match(string_match, here, field, check)
    if match.uri is not None:
        _check_string_match(match.uri, f"{where}.uri", "uri", check, empty_prefix_ok=True)
    for field, value in (
        ("method", match.method),
        ("authority", match.authority),
        ("scheme", match.scheme),
    ):
        if value is not None:
            _check_string_match(value, f"{where}.{field}", field, check)
    if match.port and (problem := port_error(match.port)) is not None:
        check.error(f"{where}.port", problem)
    for key, label in match.source_labels.items():
        if (problem := label_error(key, label)) is not None:
            check.error(f"{where}.sourceLabels", problem)
    _check_gateway_names(match.gateways, f"{where}.gateways", check)
    if match.source_namespace and not _DNS1123_LABEL.fullmatch(match.source_namespace):
        check.error(
            f"{where}.sourceNamespace", f"sourceNamespace match {match.source_namespace} is invalid"
        )


def _check_gateway_names(names: list[str], where: str, check: Checker) -> None:
    """``validateGatewayNames`` (sidecar semantics), which stops at the first name without
    a namespace (an FQDN such as ``mesh``) as pilot's does."""
    for name in names:
        namespace, slash, gateway = name.partition("/")
        if not slash:
            if (problem := domain_error(name)) is not None:
                check.error(where, problem)
            return
        if not namespace or not gateway:
            check.error(where, "config namespace and gateway name cannot be empty")
        if not _DNS1123_LABEL.fullmatch(namespace):
            check.error(where, f"invalid value for namespace: {namespace!r}")
        if not _DNS1123_LABEL.fullmatch(gateway):
            check.error(where, f"invalid value for gateway name: {gateway!r}")


def _check_string_match(
    match: StringMatchSpec,
    where: str,
    field: str,
    check: Checker,
    *,
    empty_prefix_ok: bool = False,
) -> None:
    """``validateStringMatch`` (a uri may have an empty prefix; the other fields may not)."""
    written = [name for name in ("exact", "prefix", "regex") if getattr(match, name) is not None]
    if len(written) > 1:
        check.error(where, f"only one of {', '.join(written)} can be set")  # a proto oneof
    if match.prefix == "" and not empty_prefix_ok:
        check.error(where, f"{show(field)}: prefix string match should not be empty")
    if match.regex is not None:
        if match.regex == "":
            check.error(where, f"{show(field)}: regex string match should not be empty")
        else:
            check_regex(match.regex, where, field, check)


def _check_retries(retries: HttpRetrySpec, where: str, check: Checker) -> None:
    """``agent.ValidateHTTPRetry``."""
    if retries.attempts < 0:
        check.error(f"{where}.attempts", "attempts cannot be negative")
    if retries.attempts == 0 and (
        retries.per_try_timeout is not None
        or retries.retry_on
        or retries.retry_remote_localities is not None
    ):
        check.error(where, "http retry policy configured when attempts are set to 0 (disabled)")
    if retries.per_try_timeout is not None:
        check_duration(retries.per_try_timeout, f"{where}.perTryTimeout", check)
    if retries.backoff is not None:
        check_duration(retries.backoff, f"{where}.backoff", check)
    for policy in retries.retry_on.split(",") if retries.retry_on else ():
        if not (policy.isdigit() and int(policy) in _STATUS_CODES) and policy not in _RETRY_ON:
            check.error(f"{where}.retryOn", f"{show(policy)} is not a valid retryOn policy")


_DNS1123_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: ``validHeaderNameRegex``: RFC 7230 token characters; and the pseudo-headers Istio allows.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PSEUDO_HEADERS: Final = frozenset({":method", ":scheme", ":authority", ":path", ":status"})


def _unsupported(obj: Model, where: str, check: Checker) -> None:
    """An error for each Istio field of ``obj`` extproc does not serve (its model's extras)."""
    for name in obj.model_extra or {}:
        check.error(f"{where}.{name}", _NOT_YET)


def _written(obj: Model, *names: str) -> bool:
    extra = obj.model_extra or {}
    return any(name in extra for name in names)
