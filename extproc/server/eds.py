"""EDS over gRPC: the fast path's per-service clusters learn hosts and health from us.

State of the world, one type (``ClusterLoadAssignment``), per the xDS protocol
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol): Envoy subscribes
with resource names; we answer with the current assignments and a fresh version and
nonce; a request that echoes our nonce is an ACK (or, with ``error_detail``, a NACK) and
needs no answer; every later change is pushed on every stream that subscribed to it.

An assignment lists every resolved host of a service with Istio's priority and locality;
ejected hosts are UNHEALTHY, so Envoy's own load balancer (retries, and the fallback when
the Lua script fails) avoids them as Istio's sidecar would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc

log = structlog.get_logger(__name__)

TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


@dataclass(frozen=True, slots=True)
class EdsHost:
    """One host of a cluster as Envoy should see it."""

    ip: str
    port: int
    priority: int
    weight: int
    region: str
    zone: str
    sub_zone: str
    healthy: bool = True  # False: UNHEALTHY (an ejected host)


def assignment(cluster_name: str, hosts: Sequence[EdsHost]) -> endpoint_pb2.ClusterLoadAssignment:
    """The ``ClusterLoadAssignment``: one locality group per (priority, locality)."""
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    groups: dict[tuple[int, str, str, str], Any] = {}
    for host in sorted(hosts, key=lambda h: (h.priority, h.region, h.zone, h.sub_zone)):
        key = (host.priority, host.region, host.zone, host.sub_zone)
        group = groups.get(key)
        if group is None:
            group = groups[key] = message.endpoints.add(priority=host.priority)
            group.locality.region = host.region
            group.locality.zone = host.zone
            group.locality.sub_zone = host.sub_zone
        lb = group.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = host.ip
        lb.endpoint.address.socket_address.port_value = host.port
        lb.load_balancing_weight.value = max(1, host.weight)
        lb.health_status = health_check_pb2.HEALTHY if host.healthy else health_check_pb2.UNHEALTHY
    for group in groups.values():
        group.load_balancing_weight.value = sum(
            e.load_balancing_weight.value for e in group.lb_endpoints
        )
    return message


class _Stream:
    """One Envoy subscription: what it asked for and a wake-up for changes."""

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()  # empty: every cluster
        self.changed = asyncio.Event()

    def wants(self, cluster_name: str) -> bool:
        return not self.names or cluster_name in self.names


class EndpointDiscovery(eds_pb2_grpc.EndpointDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the current assignments and pushes every change."""

    def __init__(self) -> None:
        self._assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        self._version = 0
        self._nonce = 0
        self._streams: set[_Stream] = set()

    def set_cluster(self, cluster_name: str, hosts: Sequence[EdsHost]) -> None:
        """Replace a cluster's hosts; subscribed streams get it if it changed."""
        message = assignment(cluster_name, hosts)
        if self._assignments.get(cluster_name) == message:
            return
        self._assignments[cluster_name] = message
        self._changed(cluster_name)

    def remove_cluster(self, cluster_name: str) -> None:
        """Forget a cluster (a reload dropped it)."""
        if self._assignments.pop(cluster_name, None) is not None:
            self._changed(cluster_name)

    def _changed(self, cluster_name: str) -> None:
        self._version += 1
        for stream in self._streams:
            if stream.wants(cluster_name):
                stream.changed.set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(self, server)

    def _response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse:
        self._nonce += 1
        response = discovery_pb2.DiscoveryResponse(
            version_info=str(self._version), type_url=TYPE_URL, nonce=str(self._nonce)
        )
        for name, message in self._assignments.items():
            if stream.wants(name):
                response.resources.add().Pack(message)
        # A subscribed cluster we do not know (yet) gets an empty assignment: no hosts.
        for name in sorted(stream.names - self._assignments.keys()):
            response.resources.add().Pack(endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
        return response

    async def StreamEndpoints(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: Any,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream()
        self._streams.add(stream)
        requests = request_iterator.__aiter__()
        next_request: asyncio.Task[discovery_pb2.DiscoveryRequest] | None = None
        try:
            while True:
                next_request = next_request or asyncio.ensure_future(requests.__anext__())
                changed = asyncio.ensure_future(stream.changed.wait())
                done, _ = await asyncio.wait(
                    {next_request, changed}, return_when=asyncio.FIRST_COMPLETED
                )
                if changed not in done:
                    changed.cancel()
                if next_request in done:
                    try:
                        request = next_request.result()
                    except StopAsyncIteration:
                        return
                    next_request = None
                    if request.error_detail.message:
                        log.warning(
                            "eds.nack",
                            version=request.version_info,
                            error=request.error_detail.message,
                        )
                    names = frozenset(request.resource_names)
                    # ACK or NACK of our last answer with the same subscription: nothing to send.
                    if request.response_nonce and names == stream.names:
                        continue
                    stream.names = names
                    stream.changed.set()
                if stream.changed.is_set():
                    stream.changed.clear()
                    yield self._response(stream)
        finally:
            self._streams.discard(stream)
            if next_request is not None:
                next_request.cancel()
