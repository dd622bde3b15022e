"""Istio's rules for what an HTTP route does: headers, rewrite, redirect, direct response, fault.

From ``pkg/config/validation/virtualservice.go`` (``validateHTTPRouteConflict``,
``validateAuthorityRewrite``) and ``validation.go`` (``ValidateHTTPHeader*``,
``validateHTTPRewrite``, ``validateHTTPRedirect``, ``validateHTTPDirectResponse``,
``validateHTTPFaultInjection``), with Istio's messages; ``virtual_service_rules`` checks the
rest of a VirtualService and calls these.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from extproc.istio.field_rules import check_duration, check_regex, port_error
from extproc.istio.findings import Checker
from extproc.istio.literal import show
from extproc.istio.models import (
    DirectResponseSpec,
    FaultSpec,
    HeadersSpec,
    HttpRouteSpec,
    PercentSpec,
    RedirectSpec,
    RewriteSpec,
)

__all__ = ["GRPC_STATUS", "check_conflicts", "check_route_actions"]

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


def check_route_actions(route: HttpRouteSpec, where: str, check: Checker) -> None:
    """Everything a route does besides matching and forwarding: ``validateHTTPRoute``'s rest."""
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


def check_conflicts(route: HttpRouteSpec, where: str, check: Checker) -> None:
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
    elif not route.route and "delegate" not in (route.model_extra or {}):
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
            check_regex(
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
