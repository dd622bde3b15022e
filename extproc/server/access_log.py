"""Upstream resets after the response started, from Envoy's access log: what no data path sees.

An upstream that sends its response head and then resets the connection (a crash
mid-body) is an outlier to Envoy. Per attempt, Envoy 1.40's router reports
(``source/common/router/router.cc``, ``upstream_request.cc``):

1. ``LocalOriginConnectSuccess`` when the connection is ready (only split mode uses it);
2. ``putHttpResponseCode(status)`` on the head (``Filter::onUpstreamHeaders``): a 200 is a
   success and resets the 5xx and gateway counters;
3. ``LocalOriginConnectFailed`` on the reset (``Filter::onUpstreamReset``, for every reason
   but an overflow), although the response already started and nothing is retried. Outside
   split mode that is a 503 (``resultToHttpCode``), in split mode a local-origin failure.

Measured on the reference Envoy (``tests/differential``): with ``consecutive5xxErrors: 1``
the first such reset ejects the host, and so it does with ``consecutiveGatewayErrors: 1``
or ``consecutiveLocalOriginFailures: 1`` in split mode; with a threshold of 2 a host that
always resets is never ejected, and neither is one that answered a 503 just before, since
each head's 200 resets the count first. Envoy's access log shows such a request as
``code=200 flags=UPE details=upstream_reset_after_response_started{protocol_error}``.

Lua's ``envoy_on_response`` and ext_proc's response headers see step 2 only. The rendered
Envoy (``render/bootstrap.py`` ``_reset_access_log``) sends exactly these requests, filtered
inside Envoy, as ``envoy.service.accesslog.v3`` entries, and this servicer records step 3
for the entry's upstream host (``upstream_remote_address``) in the entry's cluster
(``upstream_cluster``). The result is ``AttemptResult.connect_failure()``: the
``LocalOriginConnectFailed`` alone, without another connect success, as Envoy reports it.

Order. On the ext_proc path step 2 was recorded with the response headers, before the
entry exists. On the lua path the head's success travels in the worker's success batch,
which reaches the sync endpoint with that worker's next sync, up to one table TTL later
and so usually after the entry. The log name says which path sent it
(``reset_log_name``); for lua, an entry whose head was no error records that success
itself, first, so the reset follows a success as in Envoy: a host that always resets after
a 200 then stays in with a threshold above 1, as on Istio's Envoy, instead of counting the
resets as consecutive because the batch comes late. The batch's copy later only repeats a success.

Route timeouts (module path only). When a VirtualService's ``timeout`` ends a request whose
attempt still awaits its headers, Envoy's router reports a local-origin timeout for that
attempt's host (``Filter::onResponseTimeout``), but the UT flag goes on the downstream stream
only: the attempt's own log, which the module reads, shows a reset without a flag, exactly as
when the client went away (which Envoy does not count). The module path's Envoy therefore
sends those requests on a log of their own (``ROUTE_TIMEOUT_LOG_NAME``, filtered inside
Envoy on UT and ``response_timeout``), and this servicer records the timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from extproc.core.outcome import (
    UPSTREAM_CONNECTION_FAILURE,
    UPSTREAM_CONNECTION_TERMINATION,
    UPSTREAM_OVERFLOW,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_REMOTE_RESET,
    UPSTREAM_REQUEST_TIMEOUT,
    attempt_results,
)
from extproc.core.outlier import AttemptResult, http_response_code
from extproc.core.policy import host_address
from extproc.core.table import ServiceTable
from extproc.server.metrics import Metrics
from extproc.wire import (
    ENVOY_BALANCED_ATTEMPT_LOG_NAME,
    ENVOY_BALANCED_TIMEOUT_LOG_NAME,
    LATE_UPSTREAM_RESET,
    ROUTE_TIMEOUT,
    ROUTE_TIMEOUT_LOG_NAME,
    DataPath,
    reset_log_name,
)

log = structlog.get_logger(__name__)

#: Envoy's ``LocalOriginConnectFailed`` on its own: the connection's success was reported
#: when it was ready, and recorded with the head's answer.
_RESET_AFTER_HEAD = AttemptResult.connect_failure()
#: Envoy's ``LocalOriginTimeout`` for an attempt a route timeout ended (a 504 outside split
#: mode); its connection's success was reported when it was ready.
_ROUTE_TIMEOUT = AttemptResult.timeout()
#: ``Http::Utility::resetReasonToString(Overflow)``: an overflow reset is not reported to the
#: outlier detector (``onUpstreamReset``'s ``dropped``, envoyproxy/envoy#25487).
_OVERFLOW = "overflow"


@dataclass(frozen=True, slots=True)
class LateReset:
    """One upstream reset after the response started, as an access-log entry tells it."""

    cluster_name: str
    host: str  # ip:port, IPv6 in brackets (Envoy's upstream_url)
    status: int  # the head's status, which the client already got


def late_reset(entry: accesslog_pb2.HTTPAccessLogEntry) -> LateReset | None:
    """The reset an entry reports, or None when Envoy's detector records nothing for it.

    Envoy's filter already sends only late resets; the check is repeated here because a
    misconfigured or foreign Envoy may send anything.
    """
    details = entry.response.response_code_details
    if not details.startswith(LATE_UPSTREAM_RESET):
        return None
    if details[len(LATE_UPSTREAM_RESET) :].strip("{}").split(",")[0] == _OVERFLOW:
        return None
    upstream = _upstream(entry)
    if upstream is None:
        return None
    return LateReset(*upstream, entry.response.response_code.value)


def route_timeout(entry: accesslog_pb2.HTTPAccessLogEntry) -> tuple[str, str] | None:
    """(cluster, host) of a request a route timeout ended before its response, else None.

    Only the module path's Envoy sends these (``ROUTE_TIMEOUT_LOG_NAME``): its attempt log
    shows such an attempt as a reset with no flag. The other paths see the 504 themselves.
    """
    if entry.response.response_code_details != ROUTE_TIMEOUT:
        return None
    return _upstream(entry)


def _upstream(entry: accesslog_pb2.HTTPAccessLogEntry) -> tuple[str, str] | None:
    """(cluster, ``ip:port``) of the entry's last attempt, or None when it names none."""
    common = entry.common_properties
    address = common.upstream_remote_address.socket_address
    if not address.address or not address.port_value or not common.upstream_cluster:
        return None
    return common.upstream_cluster, host_address(address.address, address.port_value)


#: The access log's ResponseFlags fields a classifier reads, as ``response.flags`` bits.
_FLAG_BITS = (
    ("upstream_request_timeout", UPSTREAM_REQUEST_TIMEOUT),
    ("upstream_remote_reset", UPSTREAM_REMOTE_RESET),
    ("upstream_connection_failure", UPSTREAM_CONNECTION_FAILURE),
    ("upstream_connection_termination", UPSTREAM_CONNECTION_TERMINATION),
    ("upstream_overflow", UPSTREAM_OVERFLOW),
    ("upstream_protocol_error", UPSTREAM_PROTOCOL_ERROR),
)


def response_flag_bits(flags: accesslog_pb2.ResponseFlags) -> int:
    """An entry's response flags as the ``response.flags`` bitmask ``classify`` reads."""
    return sum(bit for name, bit in _FLAG_BITS if getattr(flags, name))


def answer_reported_late(log_name: str) -> bool:
    """Whether the Envoy behind a log name reports the head's success after the reset (lua)."""
    return log_name == reset_log_name(DataPath.LUA)


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Records the late upstream resets Envoy's access log sends, as Envoy's detector does."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        now: Callable[[], float],
        *,
        on_change: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Record late resets against the current table, with the clock given.

        Args:
            table: returns the current table (a reload swaps it).
            now: the clock.
            on_change: called when a reset changed a cluster's health (an ejection), so EDS
                tells Envoy at once.
            metrics: where the attempts of clusters Envoy balances alone are counted.
        """
        self._table = table
        self._now = now
        self._on_change = on_change
        self._metrics = metrics

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        # One stream per Envoy worker and log; only its first message carries the identifier.
        late_answer = timeouts = attempts = False
        async for message in request_iterator:
            if message.HasField("identifier"):
                name = message.identifier.log_name
                late_answer = answer_reported_late(name)
                timeouts = name in (ROUTE_TIMEOUT_LOG_NAME, ENVOY_BALANCED_TIMEOUT_LOG_NAME)
                attempts = name == ENVOY_BALANCED_ATTEMPT_LOG_NAME
            for entry in message.http_logs.log_entry:
                try:
                    if timeouts:
                        self.record_timeout(entry)
                    elif attempts:
                        self.record_attempt(entry)
                    else:
                        self.record(entry, answer_reported_late=late_answer)
                except Exception:
                    # One bad entry is dropped; the stream and the server go on.
                    log.exception("access_log.entry_error")
        return als_pb2.StreamAccessLogsResponse()

    def record_attempt(self, entry: accesslog_pb2.HTTPAccessLogEntry) -> bool:
        """Record one attempt of a cluster Envoy balances alone; whether it was ours.

        The entry is the router's upstream log of that attempt: its own host, status and
        flags, read as the module path reads its attempt log (``outcome.attempt_results``).
        """
        common = entry.common_properties
        cluster = self._table().clusters.get(common.upstream_cluster)
        if cluster is None or not cluster.service.envoy_balances:
            return False
        flags = response_flag_bits(common.response_flags)
        if flags & UPSTREAM_OVERFLOW and self._metrics is not None:
            self._metrics.count_overflow(common.upstream_cluster)
        upstream = _upstream(entry)
        if upstream is None or not cluster.has_host(upstream[1]):
            return False
        host = upstream[1]
        now = self._now()
        generation = cluster.generation
        for result in attempt_results(entry.response.response_code.value, flags):
            cluster.record(host, result, now, finished=False)
            if self._metrics is not None:
                self._metrics.count_result(common.upstream_cluster, host, result)
        if self._on_change is not None and cluster.generation != generation:
            self._on_change()
        return True

    def record_timeout(self, entry: accesslog_pb2.HTTPAccessLogEntry) -> bool:
        """Record a route timeout's local-origin timeout for its host; whether it was ours."""
        found = route_timeout(entry)
        if found is None:
            return False
        cluster_name, host = found
        cluster = self._table().clusters.get(cluster_name)
        if cluster is None or not cluster.has_host(host):
            return False
        generation = cluster.generation
        cluster.record(host, _ROUTE_TIMEOUT, self._now(), finished=False)
        log.debug("access_log.route_timeout", cluster_name=cluster_name, upstream_url=host)
        if self._on_change is not None and cluster.generation != generation:
            self._on_change()
        return True

    def record(
        self, entry: accesslog_pb2.HTTPAccessLogEntry, *, answer_reported_late: bool
    ) -> bool:
        """Record one entry's reset; whether it was one of ours (a known cluster and host).

        Args:
            entry: one access-log entry.
            answer_reported_late: the head's success reaches the service after the reset
                (the lua path's batches; see the module docstring).
        """
        reset = late_reset(entry)
        if reset is None:
            return False
        cluster = self._table().clusters.get(reset.cluster_name)
        if cluster is None or not cluster.has_host(reset.host) or cluster.service.envoy_balances:
            # A cluster Envoy balances alone: its attempt log carries the reset already.
            return False
        now = self._now()
        generation = cluster.generation
        outlier = cluster.service.outlier_detection
        codes = outlier.http_error_codes if outlier is not None else frozenset()
        # The request ended long ago for the active-request counts (finished=False).
        if answer_reported_late and not 500 <= http_response_code(reset.status, codes) <= 599:
            cluster.record(reset.host, AttemptResult.answer(reset.status), now, finished=False)
        cluster.record(reset.host, _RESET_AFTER_HEAD, now, finished=False)
        log.debug(
            "access_log.late_reset",
            cluster_name=reset.cluster_name,
            upstream_url=reset.host,
            status=reset.status,
        )
        if self._on_change is not None and cluster.generation != generation:
            self._on_change()
        return True
