"""Istio's rules for a VirtualService (``ValidateVirtualService``), and what extproc serves of it.

From ``pkg/config/validation/validation.go`` (``ValidateVirtualService``, ``validateStringMatch``,
``validateHTTPRouteDestinations``, ``validateDestination``), ``virtualservice.go``
(``validateHTTPRoute``, ``validateHTTPRouteConflict``, ``validateHTTPRouteMatchRequest``) and
``agent/validation.go`` (``ValidateHTTPRetry``), with Istio's messages.

extproc serves the HTTP routes of a VirtualService bound to the mesh (no ``gateways``, or
``mesh`` among them): matches on uri, headers, withoutHeaders, method, port and queryParams, one
destination per route on the VirtualService's own ServiceEntry host, ``timeout`` and
``retries``. Any other field of an HTTP route would make Envoy route differently than Istio's
sidecar, so it is an error that names it, never a field silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from extproc.istio.field_rules import check_duration, domain_error, port_error
from extproc.istio.findings import Checker
from extproc.istio.literal import show
from extproc.istio.models import (
    DirectResponseSpec,
    FaultSpec,
    HeadersSpec,
    HttpMatchSpec,
    HttpRetrySpec,
    HttpRouteSpec,
    Model,
    PercentSpec,
    RedirectSpec,
    RewriteSpec,
    StringMatchSpec,
    VirtualService,
)

__all__ = ["GRPC_STATUS", "MESH_GATEWAY", "binds_to_mesh", "check_virtual_service"]

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
_MAX_REGEX: Final = 1024  # validateStringRegexp: Envoy's re2 program size, approximated


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
    _check_conflicts(route, where, check)
    for j, match in enumerate(route.match):
        _check_match(match, f"{where}.match[{j}]", check)
    for j, destination in enumerate(route.route):
        here = f"{where}.route[{j}]"
        _unsupported(destination, here, check)
        if destination.destination is None:
            check.error(here, "destination is required")
            continue
        _unsupported(destination.destination, f"{here}.destination", check)
        host = destination.destination.host
        if host == "*":
            check.error(f"{here}.destination.host", f"invalid destination host {host}")
        elif (problem := domain_error(host)) is not None:
            check.error(f"{here}.destination.host", problem)
        port = destination.destination.port
        if port is not None and (problem := port_error(port.number)) is not None:
            check.error(f"{here}.destination.port.number", problem)
        if destination.weight < 0:
            check.error(f"{here}.weight", f"weight {destination.weight} < 0")
    if len(route.route) > 1:
        check.error(
            f"{where}.route",
            "more than one destination (weights) " + _NOT_YET.removeprefix("is "),
        )
    if route.timeout is not None:
        check_duration(route.timeout, f"{where}.timeout", check)
    if route.retries is not None:
        _check_retries(route.retries, f"{where}.retries", check)
    _check_headers(route.headers, f"{where}.headers", check)
    for j, destination in enumerate(route.route):
        _check_headers(destination.headers, f"{where}.route[{j}].headers", check)
    _check_authority_once(route, where, check)
    if route.rewrite is not None:
        _check_rewrite(route.rewrite, f"{where}.rewrite", check)
    if route.redirect is not None:
        _check_redirect(route.redirect, route, f"{where}.redirect", check)
    if route.direct_response is not None:
        _check_direct_response(route.direct_response, f"{where}.directResponse", check)
    if route.fault is not None:
        _check_fault(route.fault, f"{where}.fault", check)


def _check_conflicts(route: HttpRouteSpec, where: str, check: Checker) -> None:
    """``validateHTTPRouteConflict``."""
    if route.redirect is not None:
        for present, message in (
            (route.route, "HTTP route cannot contain both route and redirect"),
            (route.fault, "HTTP route cannot contain both fault and redirect"),
            (route.rewrite, "HTTP route rule cannot contain both rewrite and redirect"),
            (
                route.direct_response,
                "HTTP route rule cannot contain both direct_response and redirect",
            ),
        ):
            if present:
                check.error(where, message)
    elif route.direct_response is not None:
        for present, message in (
            (route.route, "HTTP route cannot contain both route and direct_response"),
            (route.fault, "HTTP route cannot contain both fault and direct_response"),
            (route.rewrite, "HTTP route rule cannot contain both rewrite and direct_response"),
        ):
            if present:
                check.error(where, message)
    elif not route.route and not _written(route, "delegate"):
        check.error(where, "HTTP route, redirect or direct_response is required")


def _check_headers(headers: HeadersSpec | None, where: str, check: Checker) -> None:
    """``validateHTTPRoute``'s header operations: names, and values Envoy can format."""
    if headers is None:
        return
    for side, ops in (("request", headers.request), ("response", headers.response)):
        if ops is None:
            continue
        for op, values in (("set", ops.set), ("add", ops.add)):
            for name, value in values.items():
                here = f"{where}.{side}.{op}.{name}"
                # A request may set its authority (a host rewrite); nothing else internal.
                if side == "request":
                    problem = _header_with_authority_error(name)
                else:
                    problem = _header_operation_error(name)
                if problem is not None:
                    check.error(here, problem)
                if not _HEADER_VALUE.fullmatch(value) or not _formats(value):
                    check.error(here, f"header value configuration {value} is invalid")
        for i, name in enumerate(ops.remove):
            if (problem := _header_operation_error(name)) is not None:
                check.error(f"{where}.{side}.remove[{i}]", problem)


def _header_with_authority_error(name: str) -> str | None:
    # ValidateHTTPHeaderWithAuthorityOperationName
    if not name:
        return "header name cannot be empty"
    if _internal(name) and not _authority(name):
        return f'invalid header "{name}": header cannot have ":" prefix'
    return None


def _header_operation_error(name: str) -> str | None:
    # ValidateHTTPHeaderOperationName
    if not name:
        return "header name cannot be empty"
    if name.lower() == "host":
        return f'invalid header "{name}": cannot set Host header'
    if _internal(name):
        return f'invalid header "{name}": header cannot have ":" prefix'
    return None


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"  # route.go isInternalHeader


def _authority(name: str) -> bool:
    return name.lower() in (":authority", "host")  # route.go isAuthorityHeader


def _formats(value: str) -> bool:
    """Envoy's header formatter: each ``%`` opens a ``%COMMAND%`` or is doubled (``%%``)."""
    i = 0
    while (i := value.find("%", i)) >= 0:
        end = value.find("%", i + 1)
        if end < 0:
            return False
        if end > i + 1 and not _COMMAND.fullmatch(value[i + 1 : end]):
            return False
        i = end + 1
    return True


def _check_authority_once(route: HttpRouteSpec, where: str, check: Checker) -> None:
    """``validateAuthorityRewrite``: the authority is rewritten in one place only."""
    current = route.rewrite.authority if route.rewrite is not None else ""
    request = route.headers.request if route.headers is not None else None
    for values in (request.set, request.add) if request is not None else ():
        for name, value in values.items():
            if not _authority(name):
                continue
            if current:
                check.error(
                    f"{where}.headers",
                    f"authority header cannot be set multiple times: have {show(current)}, "
                    f"attempting to set {show(value)}",
                )
                return
            current = value


def _check_rewrite(rewrite: RewriteSpec, where: str, check: Checker) -> None:
    """``validateHTTPRewrite``."""
    regex = rewrite.uri_regex_rewrite
    if rewrite.uri and regex is not None:
        check.error(where, "rewrite may only contain one of URI or UriRegexRewrite")
    if not rewrite.uri and regex is None and not rewrite.authority:
        check.error(
            where,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only "
            "one of URI or UriRegexRewrite may be specified",
        )
    if regex is not None:
        if not regex.match or not regex.rewrite:
            check.error(
                f"{where}.uriRegexRewrite",
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            )
        else:
            _check_regex(
                regex.match,
                f"{where}.uriRegexRewrite.match",
                "HTTPRewrite.UriRegexRewrite.Match",
                check,
            )


def _check_redirect(
    redirect: RedirectSpec, route: HttpRouteSpec, where: str, check: Checker
) -> None:
    """``validateHTTPRedirect``."""
    if redirect.uri and redirect.prefix_rewrite:
        check.error(where, "redirect may only specify one of uri or prefix_rewrite")
    if redirect.prefix_rewrite and any(
        m.uri is not None and m.uri.prefix is None for m in route.match
    ):
        check.error(
            where, "redirect prefix_rewrite requires all URI matches to use prefix match type"
        )
    if redirect.port is not None and redirect.derive_port is not None:
        check.error(where, "only one of port or derivePort can be set")  # a proto oneof
    written = (redirect.uri, redirect.prefix_rewrite, redirect.authority, redirect.scheme)
    if not any(written) and redirect.port is None and redirect.derive_port is None:
        check.error(where, "redirect must specify URI, authority, scheme, or port")
    if redirect.redirect_code and not 300 <= redirect.redirect_code <= 399:
        check.error(
            f"{where}.redirectCode",
            f"{redirect.redirect_code} is not a valid redirect code, must be 3xx",
        )
    elif redirect.redirect_code and redirect.redirect_code not in (301, 302, 303, 307, 308):
        # Pilot's ApplyRedirect has no Envoy code for it and drops the route's action.
        check.error(
            f"{where}.redirectCode",
            f"{redirect.redirect_code} is not supported by Envoy (301, 302, 303, 307 or 308)",
        )
    if redirect.scheme and redirect.scheme not in ("http", "https"):
        check.error(f"{where}.scheme", 'invalid redirect scheme, must be "http" or "https"')
    if redirect.port and (problem := port_error(redirect.port)) is not None:
        check.error(f"{where}.port", problem)
    if redirect.derive_port not in (None, "FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"):
        check.error(
            f"{where}.derivePort",
            f"Unsupported value: {show(redirect.derive_port)}: supported values: "
            '"FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"',
        )


def _check_direct_response(response: DirectResponseSpec, where: str, check: Checker) -> None:
    """``validateHTTPDirectResponse``."""
    body = response.body
    if body is not None:
        if body.string is not None and body.bytes_ is not None:
            check.error(f"{where}.body", "only one of string or bytes can be set")
        size = len(body.string or body.bytes_ or "")
        if size > 1024 * 1024:
            check.error(
                f"{where}.body",
                "large direct_responses may impact control plane performance, must be less "
                "than 1MB",
            )
        elif size > 100 * 1024:
            check.warn(
                f"{where}.body", "large direct_responses may impact control plane performance"
            )
        if body.bytes_ is not None:
            try:
                base64.b64decode(body.bytes_, validate=True)
            except binascii.Error:
                check.error(f"{where}.body.bytes", "is not base64 (the API server's bytes)")
    if not 200 <= response.status <= 600:
        check.error(f"{where}.status", f"HTTP status {response.status} is not in range 200-599")


def _check_fault(fault: FaultSpec, where: str, check: Checker) -> None:
    """``validateHTTPFaultInjection``."""
    if fault.abort is None and fault.delay is None:
        check.error(where, "HTTP fault injection must have an abort and/or a delay")
    if (abort := fault.abort) is not None:
        here = f"{where}.abort"
        _check_percentage(abort.percentage, f"{here}.percentage", check)
        kinds = [
            v for v in (abort.http_status, abort.grpc_status, abort.http2_error) if v is not None
        ]
        if len(kinds) > 1:
            check.error(here, "only one of httpStatus, grpcStatus or http2Error can be set")
        if abort.http2_error is not None:
            check.error(f"{here}.http2Error", "HTTP/2 abort fault injection not supported yet")
        elif abort.grpc_status is not None and abort.grpc_status not in GRPC_STATUS:
            check.error(
                f"{here}.grpcStatus",
                f"gRPC status {show(abort.grpc_status)} is not supported. See "
                "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of "
                "supported codes, for example 'NOT_FOUND'",
            )
        elif abort.http_status is not None and not 200 <= abort.http_status <= 600:
            check.error(
                f"{here}.httpStatus", f"HTTP status {abort.http_status} is not in range 200-599"
            )
        elif not kinds:
            check.warn(here, "abort configured, but error type not set")
    if (delay := fault.delay) is not None:
        here = f"{where}.delay"
        _check_percentage(delay.percentage, f"{here}.percentage", check)
        if delay.fixed_delay is not None and delay.exponential_delay is not None:
            check.error(here, "only one of fixedDelay or exponentialDelay can be set")
        if delay.fixed_delay is not None:
            check_duration(delay.fixed_delay, f"{here}.fixedDelay", check)
        if delay.exponential_delay is not None:
            check_duration(delay.exponential_delay, f"{here}.exponentialDelay", check)
            check.error(f"{here}.exponentialDelay", "exponentialDelay not supported yet")


def _check_percentage(percentage: PercentSpec | None, where: str, check: Checker) -> None:
    # validatePercentage
    if percentage is not None and not 0 <= percentage.value <= 100:
        check.error(where, f"percentage {percentage.value:g} is not in range 0..100")


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
    if match.method is not None:
        _check_string_match(match.method, f"{where}.method", "method", check)
    if match.port and (problem := port_error(match.port)) is not None:
        check.error(f"{where}.port", problem)


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
            _check_regex(match.regex, where, field, check)


def _check_regex(regex: str, where: str, field: str, check: Checker) -> None:
    """``validateStringRegexp``: Envoy's RE2 size limit, approximated by length, and syntax."""
    if len(regex) > _MAX_REGEX:
        check.error(where, f"{show(field)}: regex is too large, max length allowed is 1024")
        return
    try:
        re.compile(regex)
    except re.error as exc:
        check.error(
            where,
            f"{show(field)}: {exc}; Istio uses RE2 style regex-based match "
            "(https://github.com/google/re2/wiki/Syntax)",
        )


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


#: Go's grpc.SupportedGRPCStatus: the names a fault's ``grpcStatus`` may give, by code.
GRPC_STATUS: Final = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}
#: ``httpHeaderValueRegexp``: no control characters but a tab.
_HEADER_VALUE: Final = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
#: A ``%COMMAND%`` or ``%COMMAND(args)%`` of Envoy's header formatter.
_COMMAND: Final = re.compile(r"[A-Z_]+(\(.*\))?(:[0-9]+)?")
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
