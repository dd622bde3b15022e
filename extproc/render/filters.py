"""The HCM's filters and access log: the data path's filter, the router, the reset log.

**lua (the default).** The Lua filter keeps, per Envoy worker, a routing table the service
publishes and selects a host per request with ``setUpstreamOverrideHost``; Envoy's local
replies carry their response flags (``local_reply_config``) so the script counts them as
Envoy's outlier detector would. **ext_proc.** The ext_proc filter asks the service on every
request and fails closed; the answer's pick is dynamic metadata, never a header.
**module.** Envoy's dynamic-module filter runs the C shim (``wire.MODULE_NAME``), which
picks from the tables the service writes into shared memory; the same shim is the router's
upstream log (``attempt_log``), which sees every attempt's outcome and sends it back over
the service's ``MODULE_SOCKET``, whose path is the filter's whole config.

**What neither the Lua nor the ext_proc filter sees** is an upstream reset after the
response head went downstream; the gRPC access log (``reset_access_log``) carries exactly
those requests to the service. The module sees it in the attempt's log (its status and a
reset flag) and reports it itself, so its path has no such log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.dynamic_modules.v3 import (
    dynamic_modules_pb2 as dynamic_module_filter_pb2,
)
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.type.v3 import http_status_pb2
from google.protobuf import wrappers_pb2

from extproc.render.attempt_log import module_config
from extproc.render.clusters import grpc_service
from extproc.render.typed import boolean, milliseconds, packed, uint32
from extproc.settings import Settings
from extproc.wire import (
    ENVOY_BALANCED_ATTEMPT_LOG_NAME,
    ENVOY_BALANCED_TIMEOUT_LOG_NAME,
    FLAGS_HEADER,
    LATE_UPSTREAM_RESET,
    METADATA_NAMESPACE,
    MODULE_FILTER_NAME,
    MODULE_SOCKET,
    RESPONSE_ATTRIBUTES,
    ROUTE_CLUSTER_ATTRIBUTE,
    ROUTE_TIMEOUT,
    ROUTE_TIMEOUT_LOG_NAME,
    reset_log_name,
)

LUA_FILTER = "envoy.filters.http.lua"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
MODULE_FILTER = "envoy.filters.http.dynamic_modules"
#: Envoy's fault filter; a VirtualService's ``fault`` is its per-route config.
FAULT_FILTER = "envoy.filters.http.fault"
#: Envoy's CORS filter; a VirtualService's ``corsPolicy`` is its per-route config.
CORS_FILTER = "envoy.filters.http.cors"

_Hcm = http_connection_manager_pb2
_Log = accesslog_pb2
_Mode = processing_mode_pb2.ProcessingMode

#: The response flags ``Filter::streamResetReasonToResponseFlag`` gives an upstream reset
#: (``source/common/router/router.cc``), without UO: ``onUpstreamReset`` reports every
#: reset to the outlier detector but an overflow.
_RESET_FLAGS = ("UR", "UC", "UPE", "LR", "UF", "OM")


def ext_proc_filter(settings: Settings) -> http_connection_manager_pb2.HttpFilter:
    """The ext_proc path's filter: the service's answer to each request's headers."""
    processor = ext_proc_pb2.ExternalProcessor(
        grpc_service=grpc_service(settings),
        # Fail closed: without the service's pick there is no upstream to go to anyway.
        failure_mode_allow=False,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        message_timeout=milliseconds(settings.message_timeout_ms),
        processing_mode=_Mode(
            request_header_mode=_Mode.SEND,
            response_header_mode=_Mode.SEND,
            request_body_mode=_Mode.NONE,
            response_body_mode=_Mode.NONE,
            request_trailer_mode=_Mode.SKIP,
            response_trailer_mode=_Mode.SKIP,
        ),
        # The cluster Envoy resolved for the request's route (a subset's, say): known at the
        # request's headers already, and no client header.
        request_attributes=[ROUTE_CLUSTER_ATTRIBUTE],
        response_attributes=list(RESPONSE_ATTRIBUTES),
        metadata_options=ext_proc_pb2.MetadataOptions(
            receiving_namespaces=ext_proc_pb2.MetadataOptions.MetadataNamespaces(
                untyped=[METADATA_NAMESPACE]
            )
        ),
    )
    return _Hcm.HttpFilter(name=EXT_PROC_FILTER, typed_config=packed(processor))


def lua_filter(source: str) -> http_connection_manager_pb2.HttpFilter:
    """The lua path's filter, running ``source`` (the filled-in ``bridge.lua``)."""
    script = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=source),
        # The route does not depend on what the script changes.
        clear_route_cache=boolean(False),
    )
    return _Hcm.HttpFilter(name=LUA_FILTER, typed_config=packed(script))


def module_filter(settings: Settings) -> http_connection_manager_pb2.HttpFilter:
    """The module path's filter: the C shim, told where the service's module socket is.

    ``do_not_close`` keeps the library loaded for the process's life: its link thread and
    shared region outlive any one filter config (a listener update, a hot restart's drain).

    Raises:
        ValueError: no socket directory; the module reaches the service only there.
    """
    if settings.socket_dir is None:
        raise ValueError("the module data path needs a socket directory (--socket-dir)")
    return module_filter_at(settings.socket_dir / MODULE_SOCKET)


def module_filter_at(socket_path: Path | str) -> http_connection_manager_pb2.HttpFilter:
    """The module's filter for the service's module socket at ``socket_path``."""
    config = dynamic_module_filter_pb2.DynamicModuleFilter(
        dynamic_module_config=module_config(),
        filter_name=MODULE_FILTER_NAME,
        filter_config=packed(wrappers_pb2.StringValue(value=str(socket_path))),
    )
    return _Hcm.HttpFilter(name=MODULE_FILTER, typed_config=packed(config))


def router_filter(
    upstream_log: list[accesslog_pb2.AccessLog] | None = None,
) -> http_connection_manager_pb2.HttpFilter:
    """Envoy's router, the last filter; ``upstream_log`` is logged once per upstream attempt
    (the module path's attempt log, ``attempt_log.attempt_log``)."""
    router = router_pb2.Router(upstream_log=upstream_log or [])
    return _Hcm.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router))


def local_reply_config() -> http_connection_manager_pb2.LocalReplyConfig:
    """Envoy's own replies (connect failure, timeout, no healthy upstream) carry their
    response flags, so the script can count them as Envoy's outlier detector would."""
    return _Hcm.LocalReplyConfig(
        mappers=[
            _Hcm.ResponseMapper(
                filter=_Log.AccessLogFilter(response_flag_filter=_Log.ResponseFlagFilter()),
                headers_to_add=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=FLAGS_HEADER, value="%RESPONSE_FLAGS%"),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ],
            )
        ]
    )


#: The CEL test that the response is the route's own timeout (not a per-try one).
_ROUTE_TIMEOUT_TEST = f"response.code_details == '{ROUTE_TIMEOUT}'"


def route_timeout_access_log(settings: Settings) -> accesslog_pb2.AccessLog:
    """The module path's log of each request a route timeout ended before its response.

    Envoy's router reports that attempt to its host's detector as a local-origin timeout
    (``Filter::onResponseTimeout``; 504 outside split mode), but sets the UT flag on the
    downstream stream only: the attempt's own log, which the module reads, shows a reset
    with no flag, as a client that went away does. So Envoy sends these, and only these:
    a UT flag test, then the details (a per-try timeout's are ``upstream_per_try_timeout``,
    and the attempt's log already carries its flag).
    """
    return _grpc_access_log(
        settings, ROUTE_TIMEOUT_LOG_NAME, _flags_then_cel(["UT"], _ROUTE_TIMEOUT_TEST)
    )


def _cel(expression: str) -> accesslog_pb2.AccessLogFilter:
    return _Log.AccessLogFilter(
        extension_filter=_Log.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=packed(cel_pb2.ExpressionFilter(expression=expression)),
        )
    )


def _flags_then_cel(flags: Sequence[str], expression: str) -> accesslog_pb2.AccessLogFilter:
    """A response-flag bit test, then a CEL expression only for what passes it: a normal
    request stops at the cheap test and costs no CEL evaluation."""
    flag_test = _Log.AccessLogFilter(response_flag_filter=_Log.ResponseFlagFilter(flags=flags))
    return _Log.AccessLogFilter(and_filter=_Log.AndFilter(filters=[flag_test, _cel(expression)]))


def _in_clusters(clusters: Sequence[str]) -> str:
    """A CEL test that the stream's cluster is one of ``clusters`` (Istio names: no quote)."""
    names = ", ".join(f"'{name}'" for name in clusters)
    return f"xds.cluster_name in [{names}]"


def envoy_balanced_timeout_log(
    settings: Settings, clusters: Sequence[str]
) -> accesslog_pb2.AccessLog:
    """``route_timeout_access_log`` on the lua and ext_proc paths, for the clusters Envoy
    balances alone: their filter leaves those requests alone, so it records no timeout."""
    only = _flags_then_cel(["UT"], f"{_ROUTE_TIMEOUT_TEST} && {_in_clusters(clusters)}")
    return _grpc_access_log(settings, ENVOY_BALANCED_TIMEOUT_LOG_NAME, only)


def envoy_balanced_attempt_log(
    settings: Settings, clusters: Sequence[str]
) -> accesslog_pb2.AccessLog:
    """The router's upstream log of the attempts on the clusters Envoy balances alone that
    are not a clean answer.

    The lua script and the ext_proc server see a request's last attempt only, and on these
    clusters not even which host Envoy chose first; the upstream log has each attempt's own
    host, status and flags, as the router reports each to the host's outlier detector. The
    last attempt's clean answer (2xx or 3xx, no flag), the common case, is counted by the
    data path itself (lua in its success batch), so the CEL filter keeps it and every other
    cluster's attempts inside Envoy: a normal request costs no message.
    """
    clean = "response.code >= 200 && response.code < 400 && response.flags == 0u"
    only = f"{_in_clusters(clusters)} && !({clean})"
    return _grpc_access_log(settings, ENVOY_BALANCED_ATTEMPT_LOG_NAME, _cel(only))


def _grpc_access_log(
    settings: Settings, log_name: str, only: accesslog_pb2.AccessLogFilter
) -> accesslog_pb2.AccessLog:
    """An HCM access log to the service, sending each entry its filter lets through at once.

    ``buffer_size_bytes: 0`` sends each entry at once (``GrpcAccessLogger::log`` flushes
    when the buffer reaches its size), over the service's own gRPC target and secret.
    """
    log = als_pb2.HttpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=log_name,
            grpc_service=grpc_service(settings),
            transport_api_version=config_source_pb2.V3,
            buffer_size_bytes=uint32(0),
        )
    )
    return _Log.AccessLog(
        name="envoy.access_loggers.http_grpc", filter=only, typed_config=packed(log)
    )


def cors_filter() -> http_connection_manager_pb2.HttpFilter:
    """Envoy's CORS filter with an empty config, after the fault filter as in Istio's sidecar
    (``listener_builder.go``); the routes with a ``corsPolicy`` configure it. It runs before
    the data path, so a preflight it answers chooses no endpoint."""
    return http_connection_manager_pb2.HttpFilter(
        name=CORS_FILTER, typed_config=packed(cors_pb2.Cors())
    )


def fault_filter() -> http_connection_manager_pb2.HttpFilter:
    """Envoy's fault filter with an empty config, as Istio's sidecar carries it; the routes
    with a ``fault`` configure it (``TranslateFault``). It runs first, so an abort or a delay
    happens before the data path chooses an endpoint, and an abort is no endpoint's outcome."""
    return http_connection_manager_pb2.HttpFilter(
        name=FAULT_FILTER, typed_config=packed(fault_pb2.HTTPFault())
    )


def reset_access_log(settings: Settings) -> accesslog_pb2.AccessLog:
    """The HCM access log that sends the service each upstream reset after the response started.

    Envoy's router reports such a reset to the outlier detector as
    ``LocalOriginConnectFailed`` (``Filter::onUpstreamReset``; 503 outside split mode), after
    the head's status (``onUpstreamHeaders``). Neither data path sees it, so a 200 head and a
    reset counted as a success only. The filter runs in Envoy for every request and drops
    all but those, so a normal request costs no message:

    1. ``response_flag_filter``: a bit test; a request without a reset flag stops here.
    2. CEL on ``response.code_details``: a reset before the response started is an Envoy
       local reply, which both data paths already count; only a late one goes on.

    """
    late = f"response.code_details.startsWith('{LATE_UPSTREAM_RESET}')"
    return _grpc_access_log(
        settings, reset_log_name(settings.data_path), _flags_then_cel(list(_RESET_FLAGS), late)
    )
