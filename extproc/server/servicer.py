"""The ext_proc servicer: a thin adapter from Envoy's stream to the core.

Envoy opens one bidirectional stream per HTTP request. We answer:

- request headers: dynamic metadata ``extproc.host = "<ip>:<port>"`` (the pick), or an
  immediate 503 "no healthy upstream" when nothing can serve, or an immediate 404 when no
  ServiceEntry host matches the authority; Envoy's Override Host policy sends the first
  attempt to the pick, a retry to the cluster's own load balancer. While the cluster's
  DNS names have not all answered since start, no override: Envoy's load balancer routes
  over the last EDS assignment, which EDS does not replace before then;
- response headers: nothing to change; the status and attributes are recorded against the
  host we picked, or, when Envoy's retry left it (``upstream.address`` names another
  host), as one failure of ours and the final result of the host that served
  (``core.outcome.classify``).

Everything that decides lives in ``extproc.core``; this module only parses and builds
protos. An exception inside one stream is logged and answered so that Envoy fails that one
request closed; it never reaches the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from extproc.core.cluster import ClusterState
from extproc.core.outcome import UPSTREAM_OVERFLOW, classify
from extproc.core.outlier import AttemptResult
from extproc.core.table import ServiceTable
from extproc.server.metrics import DecisionHistogram, Metrics
from extproc.wire import METADATA_HOST_KEY, METADATA_NAMESPACE, ROUTE_CLUSTER_ATTRIBUTE

log = structlog.get_logger(__name__)

_ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
_EMPTY_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
# No extproc.host: Envoy's Override Host policy finds no override and its fallback (Istio's
# LB over the cluster's EDS hosts) picks (OverrideHostLoadBalancer::chooseHostInternal,
# envoyproxy/envoy source/extensions/load_balancing_policies/override_host/load_balancer.cc).
_NO_OVERRIDE = pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def _immediate(status: int, body: str, details: str) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            body=body.encode(),
            details=details,
            headers=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="content-type", raw_value=b"text/plain")
                    )
                ]
            ),
        )
    )


# Envoy's own words for this local reply, so clients and scripts see the same text.
_NO_HEALTHY_UPSTREAM = _immediate(503, "no healthy upstream", "no_healthy_upstream")


def _unknown_host(authority: str) -> pb.ProcessingResponse:
    return _immediate(
        404,
        f"extproc: no ServiceEntry host matches authority {authority!r}\n",
        "extproc_unknown_host",
    )


def _route_to(host: str) -> pb.ProcessingResponse:
    metadata = struct_pb2.Struct()
    metadata.fields[METADATA_NAMESPACE].struct_value.fields[METADATA_HOST_KEY].string_value = host
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), dynamic_metadata=metadata)


#: Far above any attempt count our Envoy reports (1 + the route's retries); classify builds
#: one result per attempt, so a larger count is not taken.
_MAX_ATTEMPTS = 100
#: ``response.flags`` is Envoy's 64-bit response-flag mask.
_MAX_FLAGS = (1 << 64) - 1


def _whole(value: float, limit: int) -> int:
    """A whole-number attribute (a Struct number is a double); 0 unless within 0..limit.

    ``int`` raises on NaN and the infinities, which Envoy never sends.
    """
    return int(value) if 0 <= value <= limit else 0


def _status(text: str) -> int:
    """The ``:status``, 0 unless it is 1-3 ASCII digits.

    ``str.isdigit`` alone accepts what ``int`` refuses (``"\u00b2"``, which is also a
    latin-1 byte) and numbers of any length.
    """
    return int(text) if len(text) <= 3 and text.isascii() and text.isdigit() else 0


def _header(headers: Any, name: str) -> str:
    for header in headers.headers.headers:
        if header.key == name:
            return str(header.raw_value.decode("latin-1") or header.value)
    return ""


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Routes each request to the host the core picks and records what came back."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        now: Callable[[], float],
        *,
        metrics: Metrics | None = None,
        on_change: Callable[[], None] | None = None,
        withheld: Callable[[ClusterState], bool] = lambda _cluster: False,
    ) -> None:
        """Route requests from the current table, with the clock and hooks given.

        Args:
            table: returns the current table (a reload swaps it).
            now: the clock.
            metrics: where decision times and attempt outcomes are counted.
            on_change: called when an outcome changed a cluster's health (an ejection), so
                EDS tells Envoy's load balancer at once: it picks every retry.
            withheld: whether a cluster's hosts are not known yet (its DNS names have not all
                answered since start); its requests get no override.
        """
        self._table = table
        self._now = now
        self._on_change = on_change
        self._withheld = withheld
        self._route_cache: dict[str, pb.ProcessingResponse] = {}
        self._metrics = metrics
        self._decisions = metrics.ext_proc_decisions if metrics else DecisionHistogram()

    def _routing_answer(self, host: str) -> pb.ProcessingResponse:
        answer = self._route_cache.get(host)
        if answer is None:
            if len(self._route_cache) > 4096:
                self._route_cache.clear()
            answer = self._route_cache[host] = _route_to(host)
        return answer

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = _Stream()
        try:
            async for request in request_iterator:
                try:
                    answer = self._answer(stream, request)
                except Exception:
                    # One bad message fails its own request, never the server or the stream.
                    log.exception(
                        "ext_proc.message_error",
                        kind=request.WhichOneof("request"),
                        cluster_name=stream.cluster.service.cluster_name
                        if stream.cluster
                        else None,
                        upstream_url=stream.host,
                    )
                    answer = _error_answer(request.WhichOneof("request"))
                yield answer
        finally:
            if stream.cluster is not None and stream.host is not None:
                stream.cluster.release(stream.host)

    def _answer(self, stream: _Stream, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            started = self._now()
            answer = self._route(stream, request, started)
            self._decisions.observe(self._now() - started)
            return answer
        if kind == "response_headers":
            if stream.cluster is not None and stream.host is not None:
                host, stream.host = stream.host, None
                self._record(stream.cluster, host, request)
            elif stream.cluster is not None and stream.cluster.service.envoy_balances:
                self._record_clean_answer(stream.cluster, request)
            return _EMPTY_RESPONSE_HEADERS
        # Modes we did not ask for (bodies, trailers): pass through untouched.
        return _passthrough(kind)

    def _route(
        self, stream: _Stream, request: pb.ProcessingRequest, now: float
    ) -> pb.ProcessingResponse:
        if stream.cluster is not None and stream.host is not None:
            # Envoy sends request headers once per stream; a second set starts over, and
            # the first pick ends without an outcome.
            stream.cluster.release(stream.host)
            stream.host = None
        cluster = stream.cluster = self._cluster_of(request)
        if cluster is None:
            return _unknown_host(_header(request.request_headers, ":authority"))
        if self._withheld(cluster):
            # Our hosts are not the truth yet; EDS keeps Envoy's last assignment, so
            # Envoy's own LB over it routes (fail-static), never a client's choice.
            return _NO_OVERRIDE
        if cluster.service.envoy_balances:
            # Envoy's ring or slow start picks; the router's upstream log reports attempts.
            return _NO_OVERRIDE
        pick = cluster.pick(now)
        if pick.host is None:
            return _NO_HEALTHY_UPSTREAM
        stream.host = pick.host
        return self._routing_answer(pick.host)

    def _cluster_of(self, request: pb.ProcessingRequest) -> ClusterState | None:
        """The request's cluster: the one Envoy resolved for its route (a subset's, say), else
        the one its authority names (an Envoy config that does not send the attribute)."""
        table = self._table()
        if _ATTRIBUTES_KEY in request.attributes:
            named = request.attributes[_ATTRIBUTES_KEY].fields.get(ROUTE_CLUSTER_ATTRIBUTE)
            cluster = None if named is None else table.clusters.get(named.string_value)
            if cluster is not None:
                return cluster
        return table.lookup(_header(request.request_headers, ":authority"))

    def _record_clean_answer(self, cluster: ClusterState, request: pb.ProcessingRequest) -> None:
        """A cluster Envoy balances alone: its last attempt's clean answer (2xx, 3xx, no flag)
        is a success of the host that served it. The router's upstream log sends the service
        every other attempt (``filters.envoy_balanced_attempt_log``)."""
        status = _status(_header(request.response_headers, ":status"))
        fields = request.attributes[_ATTRIBUTES_KEY].fields
        served = fields["upstream.address"].string_value
        if not 200 <= status < 400 or fields["response.flags"].number_value:
            return
        if not cluster.has_host(served):
            return
        result = AttemptResult.answer(status)
        cluster.record(served, result, self._now(), finished=False)
        if self._metrics is not None:
            self._metrics.count_result(cluster.service.cluster_name, served, result)

    def _record(self, cluster: ClusterState, host: str, request: pb.ProcessingRequest) -> None:
        status_text = _header(request.response_headers, ":status")
        fields = request.attributes[_ATTRIBUTES_KEY].fields
        details = fields["response.code_details"].string_value
        # The host of the last attempt; another one than ours when Envoy's retry left ours.
        served = fields["upstream.address"].string_value
        moved = served != host and served != ""
        flags = _whole(fields["response.flags"].number_value, _MAX_FLAGS)
        outcome = classify(
            _status(status_text),
            details,
            flags,
            _whole(fields["upstream.request_attempt_count"].number_value, _MAX_ATTEMPTS),
            moved=moved,
        )
        now = self._now()
        generation = cluster.generation
        if not outcome.results:
            cluster.release(host)
        last = len(outcome.results) - 1
        for index, result in enumerate(outcome.results):
            cluster.record(host, result, now, finished=index == last)
        if outcome.elsewhere is not None:
            # Not picked by us, so not counted active: nothing to release there.
            cluster.record(served, outcome.elsewhere, now, finished=False)
        if self._on_change is not None and cluster.generation != generation:
            self._on_change()
        if self._metrics is not None:
            name = cluster.service.cluster_name
            if flags & UPSTREAM_OVERFLOW:
                self._metrics.count_overflow(name)
            for result in outcome.results:
                self._metrics.count_result(name, host, result)
            # The record above ignores an address that is no host of ours; so do the metrics.
            if outcome.elsewhere is not None and cluster.has_host(served):
                self._metrics.count_result(name, served, outcome.elsewhere)


class _Stream:
    """What one stream (one HTTP request) has decided so far."""

    __slots__ = ("cluster", "host")

    def __init__(self) -> None:
        self.cluster: ClusterState | None = None
        self.host: str | None = None


_INTERNAL_ERROR = _immediate(503, "extproc: internal error\n", "extproc_internal_error")


def _error_answer(kind: str | None) -> pb.ProcessingResponse:
    # A request we could not route fails closed; a response passes through unchanged.
    if kind == "request_headers":
        return _INTERNAL_ERROR
    return _passthrough(kind)


def _passthrough(kind: str | None) -> pb.ProcessingResponse:
    if kind == "request_body":
        return pb.ProcessingResponse(request_body=pb.BodyResponse())
    if kind == "response_body":
        return pb.ProcessingResponse(response_body=pb.BodyResponse())
    if kind == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    if kind == "response_headers":
        return _EMPTY_RESPONSE_HEADERS
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
