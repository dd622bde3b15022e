"""The fast path's sync endpoint: Envoy's Lua filter syncs routing tables and outcomes here.

Protocol (plain text, because Envoy's LuaJIT has no JSON library and ``gmatch`` is cheap):

``POST SYNC_PATH`` (``/v1/sync``) with ``SERVICE_HEADER: <cluster name>`` and
``WORKER_HEADER: <id>`` (``extproc.wire``); the body lists, oldest first, what that Envoy
worker saw since its last sync (the report lines, ``core.reports``).

The answer is that service's current table::

    <version> <ttl_ms>
    lb=<algorithm>         loadBalancer.simple as compiled: ROUND_ROBIN, LEAST_REQUEST or
                           RANDOM; the script balances over the hosts below with it
    codes=<status>,...     only with outlierDetectionHttpErrorCodes: the statuses to report
                           one by one
    <ip:port> <weight>     one line per host a request may go to now

A script skips a line without a space that it does not know (``lb=`` and ``codes=`` have
none), so an older script reads a newer table; a table without ``lb=`` is drawn from by
weight.

except for a service whose DNS names have not all answered since this process started
(``withheld``): its hosts are not known yet, and an empty table would win over the one
each worker holds (see versions below). It is answered 503 with no table, and the script
keeps routing on the table it has (fail-static) and asks again one TTL later; a worker
that has none sets no override, so Envoy's load balancer routes over the last EDS
assignment, which EDS does not replace meanwhile either. The reports are still recorded.

Versions only go up, also across restarts: they start from the wall-clock milliseconds at
start-up (times 1000, plus the cluster state's change counter), so a restarted service's
tables win over the old ones every Lua worker holds. Within a worker the order of events
is kept (successes are sent before the failure that follows them); across workers it is
not, see the README.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from extproc.clock import Clock
from extproc.core.cluster import ClusterState
from extproc.core.reports import parse_reports
from extproc.core.table import ServiceTable
from extproc.server.http_server import HttpServer
from extproc.server.metrics import Metrics
from extproc.wire import SECRET_HEADER, SERVICE_HEADER, SYNC_PATH

_FORBIDDEN = (403, "text/plain", b"forbidden\n")


class SyncEndpoint:
    """Applies reports to the cluster states and renders their routing tables."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        clock: Clock,
        *,
        ttl_ms: int = 100,
        version_base: int | None = None,
        on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
        withheld: Callable[[ClusterState], bool] = lambda _cluster: False,
    ) -> None:
        """Serve the routing tables and record the reports of Envoy's workers.

        Args:
            table: returns the current table (a reload swaps it).
            clock: the clock; its wall clock only for the default first version.
            ttl_ms: how long a worker routes on a table before it asks again.
            version_base: the first version (default: from the wall clock, see above).
            on_change: called after reports were recorded (EDS pushes what changed).
            metrics: where attempt outcomes and decision times are counted.
            withheld: whether a cluster has no table to give yet (its DNS names have not
                all answered since start).
        """
        self._table = table
        self._now = clock.now
        self._on_change = on_change
        self._metrics = metrics
        self._withheld = withheld
        self.ttl_ms = ttl_ms
        # Wall clock on purpose: versions must keep rising across restarts of the service.
        self._version_base = (
            int(clock.wall() * 1000) * 1000 if version_base is None else version_base
        )

    def version(self, cluster: ClusterState) -> int:
        """The table version for the cluster's current state."""
        return self._version_base + cluster.generation

    def withheld(self, cluster_name: str) -> bool:
        """Whether a known service has no table to answer yet (its DNS has not answered)."""
        cluster = self._table().clusters.get(cluster_name)
        return cluster is not None and self._withheld(cluster)

    def sync(self, cluster_name: str, body: str) -> str | None:
        """Apply one sync; the table to answer, or None for an unknown or withheld service."""
        cluster = self._table().clusters.get(cluster_name)
        if cluster is None:
            return None
        now = self._now()
        # A line naming no host of this service (one a DNS change dropped, a made-up one)
        # changes nothing; dropped here, it does not reach the metrics either.
        generation = cluster.generation
        for report in parse_reports(body):
            if report.overflow:
                if self._metrics is not None:
                    self._metrics.count_overflow(cluster_name, report.count)
                continue
            if report.count <= 0 or not cluster.has_host(report.host):
                continue
            # n successes in a row reset the counters as one does.
            cluster.record(report.host, report.result, now)
            if self._metrics is not None:
                self._metrics.count_result(cluster_name, report.host, report.result, report.count)
        if cluster.generation != generation:
            self._on_change()  # an ejection: EDS and the module's regions learn it now
        table = None if self._withheld(cluster) else self.render(cluster, now)
        if self._metrics is not None:
            self._metrics.sync_decisions.observe(self._now() - now)
        return table

    def render(self, cluster: ClusterState, now: float) -> str:
        """The table text for a cluster."""
        weights = cluster.route_weights(now)
        service = cluster.service
        # ENVOY: Envoy's own balancer picks (consistent hash, slow start); no override.
        lb = "ENVOY" if service.envoy_balances else service.lb_algorithm.value
        lines = [f"{self.version(cluster)} {self.ttl_ms}", f"lb={lb}"]
        outlier = cluster.service.outlier_detection
        if outlier is not None and outlier.http_error_codes:
            lines.append("codes=" + ",".join(map(str, sorted(outlier.http_error_codes))))
        lines += [f"{host} {weight}" for host, weight in weights]
        return "\n".join(lines) + "\n"


class SyncServer(HttpServer):
    """Serves the sync endpoint to the Lua filter's ``httpCall`` (HTTP/1.1 keep-alive)."""

    def __init__(self, endpoint: SyncEndpoint, secret: str | None = None) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._secret = secret.encode() if secret is not None else None

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if self._secret is not None and not hmac.compare_digest(
            headers.get(SECRET_HEADER, "").encode("latin-1"), self._secret
        ):
            # Outcome reports move traffic: only the Envoy given the secret may send them.
            return _FORBIDDEN
        if method != "POST" or target != SYNC_PATH:
            return 404, "text/plain", b"not found\n"
        service = headers.get(SERVICE_HEADER, "")
        table = self._endpoint.sync(service, body.decode("utf-8", "replace"))
        if table is not None:
            return 200, "text/plain", table.encode()
        if self._endpoint.withheld(service):
            # Anything but 200 keeps the worker's table (bridge.lua's sync).
            return 503, "text/plain", f"no DNS answer yet for {service!r}\n".encode()
        return 404, "text/plain", f"no service {service!r}\n".encode()
