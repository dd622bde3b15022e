"""Start-up and shutdown of the service in one place, in order.

Start: build the table (NOT_SERVING), endpoints written as IPs filled in -> gRPC server
(ext_proc + health; liveness SERVING) -> admin, the sync endpoint and, on the module path,
the module's links (``server/module_link.py``) -> resolve DNS once -> sweep timer ->
SERVING. Stop: NOT_SERVING -> stop the gRPC server with a grace period for in-flight
streams -> timers, DNS, admin.

Until each DNS name of a cluster has had an answer once (NXDOMAIN counts), the cluster is
withheld: EDS sends Envoy nothing for it, the sync endpoint answers its syncs 503, the
module's entry is flagged withheld and the ext_proc servicer sets no override. Envoy keeps
routing on what it holds (the Lua workers' last tables, the last EDS assignment), which is
the fail-static state a restarted service must not overwrite with empty hosts it has not
learned yet. Once published, a cluster is not
withheld again (a reload that adds a name to it publishes the hosts it has, as before)
unless a reload removes it.

Reload (``apply_policy``): resolve the names the new config adds -> build the new table
and carry every kept host's state over -> swap it in one assignment (the servicer, the
sync endpoint, EDS, metrics and the admin view all read ``self.table``) -> push EDS (and
the module's regions) -> DNS refresh follows the new table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.clock import Clock, MonotonicClock
from extproc.core.change import PolicyChange, fill_new_endpoints, new_dns_names, policy_change
from extproc.core.cluster import ClusterState
from extproc.core.policy import Policy
from extproc.core.table import ServiceTable
from extproc.errors import StartupError
from extproc.module.build import check_machine
from extproc.server.access_log import AccessLogReceiver
from extproc.server.admin import AdminServer
from extproc.server.eds import EdsHost, EndpointDiscovery
from extproc.server.fleet_link import FleetLink
from extproc.server.http_server import HttpServer
from extproc.server.logs import OutlierEventLog
from extproc.server.metrics import Metrics
from extproc.server.module_link import ModuleLinks
from extproc.server.resolver import (
    EndpointResolver,
    make_resolver,
    resolve,
)
from extproc.server.servicer import ExternalProcessor
from extproc.server.sync import SyncEndpoint, SyncServer
from extproc.settings import Settings
from extproc.wire import (
    GRPC_HEALTH_SERVICE,
    GRPC_SOCKET,
    MODULE_SOCKET,
    SECRET_HEADER,
    SYNC_SOCKET,
    DataPath,
)

log = structlog.get_logger(__name__)

#: gRPC health service names: overall, the EPP-style probes, and the ext_proc service (the
#: one the rendered Envoy's ``grpc_health_check`` asks about). ``liveness`` is SERVING from
#: the moment the gRPC port is up (a slow first DNS answer is no reason to restart us); the
#: others once the service is ready; all are NOT_SERVING from the start of shutdown.
HEALTH_SERVICES = ("", "liveness", "readiness", GRPC_HEALTH_SERVICE)
LIVENESS = "liveness"
#: SERVING only once every DNS endpoint has answered, like the admin view's /readyz.
READINESS = "readiness"


class ServiceApp:
    """The ext_proc service: gRPC, DNS refresh, outlier sweeps and the admin view."""

    def __init__(
        self,
        policy: Policy,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self.table = ServiceTable(policy, settings.workload, now=self._clock.now(), rng=self._rng)
        self._ready = False
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._dns = make_resolver(settings.dns_resolver)
        self._reload_lock = asyncio.Lock()
        self._resolver = EndpointResolver(
            lambda: list(self.table),
            self._dns,
            self._clock.now,
            on_change=self.publish,
        )
        self.eds = EndpointDiscovery()
        self.metrics = Metrics(lambda: self.table, self._clock.now)
        self._outlier_log = OutlierEventLog()
        self.sync_endpoint = SyncEndpoint(
            lambda: self.table,
            self._clock,
            ttl_ms=settings.table_ttl_ms,
            on_change=self.publish,
            metrics=self.metrics,
            withheld=self.withheld,
        )
        self._sync_server = SyncServer(self.sync_endpoint, settings.secret)
        # The module path's links (Envoy's C shim), on the socket directory only.
        self.module_links: ModuleLinks | None = None
        if settings.data_path is DataPath.MODULE:
            self.module_links = ModuleLinks(
                lambda: self.table,
                self._clock,
                version=self.sync_endpoint.version,
                withheld=self.withheld,
                on_change=self.publish,
                metrics=self.metrics,
            )
            self.metrics.registry.register(self.module_links)
        # --shared-state: this brain's ejections to its fleet, and the fleet's to it.
        self.fleet: FleetLink | None = None
        if settings.shared_state is not None:
            self.fleet = FleetLink(
                settings.shared_state,
                settings.fleet,
                settings.proxy_id or f"{socket.gethostname()}/{os.getpid()}",
                lambda: self.table,
                self._clock,
                on_change=self.publish,
            )
            self.metrics.registry.register(self.fleet)
        # Cluster name -> the generation EDS was last given; a cluster in here has been
        # published since start (or since a reload re-added it) and is never withheld.
        self._published: dict[str, int] = {}
        self._admin = AdminServer(
            lambda: self.table, self._clock.now, lambda: self.ready, metrics=self.metrics
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.grpc_port = settings.grpc.port
        self.sync_port = settings.sync_port

    @property
    def admin_address(self) -> tuple[str, int]:
        return self._admin.address

    @property
    def ready(self) -> bool:
        """Started, and every DNS endpoint has had an answer (NXDOMAIN counts) once.

        From start-up to ready, the clusters still waiting for a name are withheld.
        """
        return self._ready and self._resolver.all_answered()

    def withheld(self, cluster: ClusterState) -> bool:
        """Whether a cluster is not published yet: a DNS name of it never answered."""
        return (
            cluster.service.cluster_name not in self._published
            and not self._resolver.cluster_answered(cluster)
        )

    @property
    def grpc_target(self) -> str:
        """Where gRPC listens, as a gRPC target (``host:port`` or ``unix:PATH``)."""
        if self.settings.socket_dir is not None:
            return f"unix:{self.settings.socket_dir / GRPC_SOCKET}"
        return f"{self.settings.grpc.host}:{self.grpc_port}"

    @property
    def health(self) -> health.aio.HealthServicer:
        """The gRPC health servicer (every name in ``HEALTH_SERVICES``)."""
        return self._health

    def now(self) -> float:
        """The service's clock reading (for views computed outside a request)."""
        return self._clock.now()

    async def start(self) -> None:
        """Bring everything up; raises StartupError when a port cannot be bound."""
        if self.module_links is not None:
            # serve runs beside an Envoy that loads a module built elsewhere (the image).
            check_machine()
        for name in HEALTH_SERVICES:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        interceptors = [] if self.settings.secret is None else [_SecretCheck(self.settings.secret)]
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 10000)],
            interceptors=interceptors,
        )
        pb_grpc.add_ExternalProcessorServicer_to_server(
            ExternalProcessor(
                lambda: self.table,
                self._clock.now,
                metrics=self.metrics,
                on_change=self.publish,
                withheld=self.withheld,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # Upstream resets after the response started, which neither data path sees.
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(
            AccessLogReceiver(
                lambda: self.table, self._clock.now, on_change=self.publish, metrics=self.metrics
            ),
            server,
        )
        self.eds.add_to_server(server)
        socket_dir = self.settings.socket_dir
        if socket_dir is None:
            if self.module_links is not None:
                raise StartupError("the module data path needs a socket directory (--socket-dir)")
            address = f"{self.settings.grpc.host}:{self.settings.grpc.port}"
        else:
            address = f"unix:{socket_dir / GRPC_SOCKET}"
            _claim_socket(socket_dir / GRPC_SOCKET)
            _claim_socket(socket_dir / SYNC_SOCKET)
            if self.module_links is not None:
                _claim_socket(socket_dir / MODULE_SOCKET, socket.SOCK_SEQPACKET)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if socket_dir is None:
            self.grpc_port = bound
        # Before any stream or sync: IP endpoints are known now, the rest is withheld.
        self._resolver.set_ip_endpoints()
        self.publish()
        await server.start()
        self._server = server
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._listen(self._admin, "admin", self.settings.admin.host, self.settings.admin.port)
        if socket_dir is None:
            await self._listen(
                self._sync_server,
                "the fast path's sync",
                self.settings.grpc.host,
                self.settings.sync_port,
            )
            self.sync_port = self._sync_server.address[1]
        else:
            await self._listen_unix(socket_dir)
        await self._resolver.resolve_all()
        if self.fleet is not None:
            # The fleet's ejections in force before the first push with every host: a brain
            # restarted mid-ejection sends the ejected host nothing.
            self.fleet.start()
            await self.fleet.caught_up()
        self.publish()
        self._sweeper = asyncio.create_task(self._sweep_loop())
        self._ready = True
        for name in HEALTH_SERVICES:
            if name != READINESS or self.ready:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "service.ready",
            grpc=self.grpc_target,
            admin="{}:{}".format(*self.admin_address),
            clusters=[c.service.cluster_name for c in self.table],
        )

    async def _listen_unix(self, socket_dir: Path) -> None:
        """Start the sync and, on the module path, the module's links on their sockets."""
        what, path = "the fast path's sync", socket_dir / SYNC_SOCKET
        try:
            await self._sync_server.start_unix(str(path))
            if self.module_links is not None:
                what, path = "the module", socket_dir / MODULE_SOCKET
                await self.module_links.start(path)
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot listen for {what} on {path}: {exc}") from exc

    async def _listen(self, server: HttpServer, what: str, host: str, port: int) -> None:
        """Start one HTTP server; on failure stop what already runs and say where."""
        try:
            await server.start(host, port)
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot listen for {what} on {host}:{port}: {exc}") from exc

    async def _sweep_loop(self) -> None:
        # The core runs due sweeps lazily on every pick; this timer makes un-ejections
        # happen on time even when no request arrives, and it is the one place that logs
        # and counts outlier events (within 0.1 s), so no request pays for either.
        readiness_served = self.ready
        while True:
            await asyncio.sleep(0.1)
            ready = self.ready
            if ready != readiness_served:
                # Both ways, as /readyz: a reload can add a name that has not answered yet.
                readiness_served = ready
                serving = health_pb2.HealthCheckResponse.SERVING
                not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
                await self._health.set(READINESS, serving if ready else not_serving)
                if ready:
                    log.info("service.dns_answered")
            now = self._clock.now()
            for cluster in self.table:
                cluster.advance(now)
            self.drain_events()
            self.publish()

    def drain_events(self) -> None:
        """Log and count every cluster's outlier events since the last drain; this brain's
        own ejections go to the fleet too (``--shared-state``)."""
        for cluster in self.table:
            for event in cluster.drain_events():
                self._outlier_log.write(event)
                self.metrics.count_event(event)
                if self.fleet is not None:
                    self.fleet.announce(event)

    def publish(self) -> None:
        """Push every cluster whose hosts or health changed to Envoy over EDS.

        A withheld cluster is not pushed, not even empty: Envoy keeps what it has.
        """
        now = self._clock.now()
        for cluster in self.table:
            name = cluster.service.cluster_name
            if self.withheld(cluster):
                self.eds.withhold(name)
                continue
            generation = cluster.generation
            if self._published.get(name) == generation:
                continue
            self._published[name] = generation
            self.eds.set_cluster(
                name,
                [
                    EdsHost(
                        ip=view.ip,
                        port=view.port,
                        priority=view.priority,
                        weight=view.weight,
                        region=view.locality.region,
                        zone=view.locality.zone,
                        sub_zone=view.locality.sub_zone,
                        # A cluster Envoy balances alone has Envoy's own detector, which
                        # ejects on the worker at once (render.clusters): EDS stays out of it.
                        healthy=not view.ejected or cluster.service.envoy_balances,
                        hostname=view.endpoint_address,
                    )
                    for view in cluster.hosts(now)
                ],
            )
        if self.module_links is not None:
            # Every linked Envoy's region, withheld clusters included (flagged: no override).
            self.module_links.publish()

    async def apply_policy(self, policy: Policy) -> PolicyChange:
        """Serve a new, validated policy: swap the whole table at once.

        Hosts (cluster name + ``ip:port``) that stay keep their outlier state and active
        requests (``ClusterState.carry_over``); requests picked before the swap report to
        the new table. Names the new config adds are resolved before the swap, so a new
        endpoint takes traffic from the first request. Removed clusters are sent to Envoy
        with no endpoints.

        Returns:
            What changed; ``unchanged`` when the services are the same (nothing swapped).
        """
        async with self._reload_lock:
            old = self.table
            change = policy_change(old.policy, policy)
            if change.unchanged:
                return change
            names = sorted(new_dns_names(old, policy))
            answers = dict(
                zip(
                    names,
                    await asyncio.gather(*(resolve(self._dns, name) for name in names)),
                    strict=True,
                )
            )
            resolved = {name: answer.ips for name, answer in answers.items() if answer.ok}
            for name in resolved:
                self._resolver.answered(name)
            # From here to the swap nothing awaits: no outcome can land in the old table
            # after its state was carried over.
            now = self._clock.now()
            table = ServiceTable(policy, old.workload, now=now, rng=self._rng)
            for cluster in table:
                name = cluster.service.cluster_name
                cluster.carry_over(
                    old.clusters.get(name), now, after_generation=self._published.get(name, 0)
                )
                fill_new_endpoints(cluster, old, resolved, now)
            self.drain_events()  # the old table's last events (sweeps run by the carry-over)
            self.table = table
            for name in old.clusters.keys() - table.clusters.keys():
                self.eds.remove_cluster(name)
                self._published.pop(name, None)
            self.publish()
            # DNS refresh follows the new table: new names are kept fresh, dropped ones no
            # longer asked for.
            await self._resolver.stop()
            await self._resolver.resolve_all()
            return change

    async def wait(self) -> int:
        """Return 0 once the service has stopped (it never ends on its own)."""
        await self._stopped.wait()
        return 0

    async def stop(self) -> None:
        """Stop in order; in-flight streams get the grace period."""
        self._ready = False
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        # Long-lived EDS streams end now; the grace period is for in-flight requests.
        self.eds.close()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_s)
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.module_links is not None:
            await self.module_links.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        self.drain_events()  # what happened since the last sweep tick
        await self._resolver.stop()
        await self._sync_server.stop()
        await self._admin.stop()
        self._stopped.set()


def _claim_socket(path: Path, kind: int = socket.SOCK_STREAM) -> None:
    """Remove a Unix socket left by a service that died; refuse one that is in use.

    ``kind`` is the socket's type: a probe of another type is refused even by a live one.
    """
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise StartupError(f"cannot listen on {path}: it exists and is not a socket")
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens there: a leftover
            return
    raise StartupError(f"cannot listen on {path}: another process is listening there")


_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class _SecretCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse ext_proc, EDS and access-log streams that do not carry the shared secret.

    Health stays open: it says only SERVING or NOT_SERVING, and Envoy's health check of the
    service is not given the secret. A refused stream ends UNAUTHENTICATED before any
    message is read, so it can neither report an outcome nor read an assignment.
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
        self, continuation: _Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or str(details.method).startswith("/grpc.health.v1.Health/"):
            return handler
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == SECRET_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
        if hmac.compare_digest(given, self._secret):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "extproc: wrong or missing secret")

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
