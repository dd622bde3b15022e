"""EDS over gRPC: Envoy's per-service clusters learn hosts and health from the service.

Every host a service resolved is listed with Istio's priority and locality, and an ejected
host is marked UNHEALTHY, so Envoy's own load balancer, its retries across priorities and
the fallback when the fast path's script fails all see what the service sees, and a change
reaches Envoy in a push instead of a restart.

Theory of operation (the state-of-the-world variant of the xDS transport protocol, one
resource type; https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):

1. Envoy opens a stream and names the clusters it wants (``resource_names``). The first
   request of a stream is answered with the current assignment of each named cluster; a
   name we do not know is answered with an assignment with no endpoints, so the cluster
   finishes warming and serves 503s instead of waiting out Envoy's 15 s EDS timeout.
2. Every response carries a fresh ``version_info`` and ``nonce``. Envoy answers each one
   with a request that echoes the nonce: an ACK (the new version) or, with
   ``error_detail``, a NACK (its previous version). Neither needs an answer; a NACK is
   logged and the next change is pushed as usual.
3. A request that echoes an older nonce is stale (a response crossed it on the wire) and is
   ignored; the ACK of that response carries Envoy's current names.
4. A request that changes the names is answered with the newly named clusters only: for
   EDS, unlike clusters and listeners, a response need not repeat unchanged resources.
5. ``set_cluster`` and ``remove_cluster`` mark the cluster pending on every stream that
   subscribed to it and wake those streams; each stream sends what is pending on it. A
   removed cluster is sent with no endpoints: EDS has no deletion by absence.
6. A withheld cluster (``withhold``) is sent nothing, not even an empty assignment, until
   its first ``set_cluster``: the service knows the cluster but not its hosts yet (a
   restart whose DNS has not answered). Envoy keeps the assignment it holds, as the
   protocol lets a client keep a resource until the server replaces it; an Envoy that
   holds none waits for its ``initial_fetch_timeout`` (15 s by default), then serves the
   cluster with no hosts until the first push.

Envoy 1.40 opens one stream per EDS cluster (each naming just its cluster), all on one
HTTP/2 connection to the service; the protocol also lets a client put many names on one
stream and change them later, and that works the same way here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.protobuf import any_pb2

from extproc.core.policy import is_ip

log = structlog.get_logger(__name__)

TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The explicit wildcard name of the xDS protocol: every cluster we know.
WILDCARD = "*"


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
    # The endpoint address it came from; a name is sent as the host's hostname, as a
    # STRICT_DNS host carries it (Envoy's auto_host_sni and auto_host_rewrite use it).
    hostname: str = ""


def _sort_key(host: EdsHost) -> tuple[int, str, str, str, str, int]:
    return (host.priority, host.region, host.zone, host.sub_zone, host.ip, host.port)


def load_assignment(
    cluster_name: str, hosts: Iterable[EdsHost]
) -> endpoint_pb2.ClusterLoadAssignment:
    """Build a cluster's ``ClusterLoadAssignment``: one group per (priority, locality).

    Hosts are sorted first, so the same set in another order (DNS answers rotate) gives the
    same message and no push.
    """
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    groups: dict[tuple[int, str, str, str], Any] = {}
    for host in sorted(hosts, key=_sort_key):
        key = (host.priority, host.region, host.zone, host.sub_zone)
        group = groups.get(key)
        if group is None:
            group = groups[key] = message.endpoints.add(priority=host.priority)
            group.locality.region = host.region
            group.locality.zone = host.zone
            group.locality.sub_zone = host.sub_zone
        lb_endpoint = group.lb_endpoints.add()
        lb_endpoint.endpoint.address.socket_address.address = host.ip
        lb_endpoint.endpoint.address.socket_address.port_value = host.port
        if host.hostname and not is_ip(host.hostname):
            lb_endpoint.endpoint.hostname = host.hostname
        # Envoy rejects a weight of 0; Istio reads an unset endpoint weight as 1
        # (IstioEndpoint.GetLoadBalancingWeight).
        lb_endpoint.load_balancing_weight.value = max(1, host.weight)
        lb_endpoint.health_status = (
            health_check_pb2.HEALTHY if host.healthy else health_check_pb2.UNHEALTHY
        )
    for group in groups.values():
        # Istio weighs a locality by the sum of its endpoints' weights (endpoint_builder.go);
        # Envoy reads it only when locality-weighted load balancing is on.
        group.load_balancing_weight.value = sum(
            e.load_balancing_weight.value for e in group.lb_endpoints
        )
    return message


def _pack(message: endpoint_pb2.ClusterLoadAssignment) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(eq=False, slots=True)
class _Stream:
    """One Envoy stream: what it subscribed to and what it has not been sent yet."""

    peer: str
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    started: bool = False  # the first request has arrived
    nonce: str = ""  # of the last response sent
    pending: set[str] = field(default_factory=set)  # cluster names to send next
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def wants(self, cluster_name: str) -> bool:
        return self.wildcard or cluster_name in self.names


class EndpointDiscovery(eds_pb2_grpc.EndpointDiscoveryServiceServicer):  # type: ignore[misc]
    """Serve the current assignments and push every change, state of the world.

    ``set_cluster`` and ``remove_cluster`` only record the change and wake the streams, so
    they never block; call them on the event loop's thread (the app's publish does).
    """

    def __init__(self) -> None:
        self._hosts: dict[str, tuple[EdsHost, ...]] = {}
        self._packed: dict[str, Any] = {}  # cluster name -> Any(ClusterLoadAssignment)
        self._withheld: set[str] = set()  # known clusters with no assignment to send yet
        self._streams: set[_Stream] = set()
        # One counter for versions and nonces: every response is its own version, so each
        # one is fresh and an ACK or NACK names exactly the response it answers.
        self._sequence = itertools.count(1)

    @property
    def streams(self) -> int:
        """How many Envoy streams are open (for status views and tests)."""
        return len(self._streams)

    def withhold(self, cluster_name: str) -> None:
        """Send nothing for a cluster that was never set, until ``set_cluster`` (step 6).

        A cluster already set is not affected: once sent, an assignment is only replaced.
        """
        if cluster_name not in self._hosts:
            self._withheld.add(cluster_name)

    def set_cluster(self, cluster_name: str, hosts: Sequence[EdsHost]) -> None:
        """Replace a cluster's hosts; every stream subscribed to it gets it if it changed."""
        ordered = tuple(sorted(hosts, key=_sort_key))
        self._withheld.discard(cluster_name)
        if self._hosts.get(cluster_name) == ordered:
            return
        self._hosts[cluster_name] = ordered
        self._packed[cluster_name] = _pack(load_assignment(cluster_name, ordered))
        self._changed(cluster_name)

    def remove_cluster(self, cluster_name: str) -> None:
        """Forget a cluster (a reload dropped it); subscribers get it with no endpoints."""
        if cluster_name in self._withheld:
            self._withheld.discard(cluster_name)  # what Envoy holds of it goes too
        elif self._hosts.pop(cluster_name, None) is None:
            return
        else:
            del self._packed[cluster_name]
        self._changed(cluster_name)

    def close(self) -> None:
        """End every stream (shutdown): EDS streams never finish on their own, and Envoy
        keeps the last assignment and reconnects to whoever serves next."""
        for stream in self._streams:
            stream.closed = True
            stream.wake.set()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the EDS service on a ``grpc.aio`` server (before it starts)."""
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(self, server)

    def _changed(self, cluster_name: str) -> None:
        for stream in self._streams:
            if stream.started and stream.wants(cluster_name):
                stream.pending.add(cluster_name)
                stream.wake.set()

    async def StreamEndpoints(
        self,
        request_iterator: AsyncIterable[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """Serve one Envoy stream until Envoy closes it or the server stops."""
        stream = _Stream(peer=context.peer())
        self._streams.add(stream)
        # Requests are read in their own task, so a push never waits for one to arrive.
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.closed:
                    return
                response = self._response(stream)
                if response is not None:
                    yield response
        finally:
            self._streams.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            log.info("eds.stream_closed", peer=stream.peer, cluster_names=sorted(stream.names))

    async def _read(
        self, requests: AsyncIterable[discovery_pb2.DiscoveryRequest], stream: _Stream
    ) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except (grpc.RpcError, grpc.aio.AioRpcError, grpc.aio.AbortError) as exc:
            log.info("eds.stream_error", peer=stream.peer, error=str(exc))
        finally:
            stream.closed = True
            stream.wake.set()

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        # Every step below follows the xDS protocol's "ACK/NACK and resource type instance
        # version", "When to send an update" and "Resource updates" sections:
        # https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version
        if request.type_url not in ("", TYPE_URL):
            log.warning("eds.unexpected_type", peer=stream.peer, type_url=request.type_url)
            return
        if stream.started and request.response_nonce != stream.nonce:
            return  # 3. stale: a newer response is on its way and Envoy will answer it
        names = frozenset(request.resource_names)
        if request.HasField("error_detail"):
            # 2. NACK: Envoy kept its previous version; resending the same would fail again.
            log.warning(
                "eds.nack",
                peer=stream.peer,
                cluster_names=sorted(names),
                version=request.version_info,
                nonce=request.response_nonce,
                error=request.error_detail.message,
            )
        if not stream.started:
            # 1. Subscribe. No names (or "*") on the first request is the protocol's
            #    wildcard: every cluster we know, for the life of the stream.
            stream.started = True
            stream.wildcard = not names or WILDCARD in names
            wanted = set(self._hosts) if stream.wildcard else set(names)
            log.info(
                "eds.subscribe",
                peer=stream.peer,
                node=request.node.id,
                cluster_names=sorted(names),
            )
        elif stream.wildcard:
            wanted = set()  # the names of a wildcard stream are ignored
        else:
            # 4. A new set of names: send the newly named clusters. An empty set means
            #    Envoy wants nothing any more, not every cluster.
            wanted = set(names - stream.names)
        stream.names = names - {WILDCARD}
        if wanted:
            stream.pending |= wanted
            stream.wake.set()

    def _response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse | None:
        # 6. A withheld cluster stays out; its first set_cluster makes it pending again.
        names = sorted(
            name for name in stream.pending if stream.wants(name) and name not in self._withheld
        )
        stream.pending.clear()
        if not names:
            return None
        sequence = str(next(self._sequence))
        response = discovery_pb2.DiscoveryResponse(
            version_info=sequence, type_url=TYPE_URL, nonce=sequence
        )
        for name in names:
            packed = self._packed.get(name)
            if packed is None:
                packed = _pack(endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
            response.resources.append(packed)
        stream.nonce = sequence
        return response
