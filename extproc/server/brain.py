"""The fast path's brain endpoint: Envoy's Lua filter syncs routing tables and outcomes here.

Protocol (plain text, because Envoy's LuaJIT has no JSON library and ``gmatch`` is cheap):

``POST /v1/sync`` with ``x-extproc-service: <cluster name>`` and ``x-extproc-worker: <id>``;
the body lists, oldest first, what that Envoy worker saw since its last sync::

    s <ip:port> <n>        n successes (any non-5xx answer): resets the consecutive count
    e <ip:port> <code>     one failed attempt, as Envoy's outlier detector counts it
                           (503 for a connect failure or reset, 504 for a timeout)

The answer is always that service's current table::

    <version> <ttl_ms>
    <ip:port> <weight>     one line per host a request may go to now

Versions only go up, also across restarts: they start from the wall-clock milliseconds at
start-up (times 1000, plus the cluster state's change counter), so a restarted brain's
tables win over the old ones every Lua worker holds. Within a worker the order of events
is kept (successes are sent before the failure that follows them); across workers it is
not, see the README.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from extproc.core.cluster import ClusterState
from extproc.core.table import ServiceTable
from extproc.server.http_server import HttpServer

SYNC_PATH = "/v1/sync"
SERVICE_HEADER = "x-extproc-service"


@dataclass(frozen=True, slots=True)
class Report:
    """One line of a sync body."""

    kind: str  # "s" or "e"
    host: str
    value: int  # successes for "s", the status code for "e"


def parse_reports(body: str) -> list[Report]:
    """Parse a sync body; malformed lines are skipped (a bad worker cannot stop the others)."""
    reports = []
    for line in body.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("s", "e") and parts[2].isdigit():
            reports.append(Report(parts[0], parts[1], int(parts[2])))
    return reports


class Brain:
    """Applies reports to the cluster states and renders their routing tables."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        now: Callable[[], float],
        *,
        ttl_ms: int = 100,
        version_base: int | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._table = table
        self._now = now
        self._on_change = on_change
        self.ttl_ms = ttl_ms
        # Wall clock on purpose: versions must keep rising across restarts of the service.
        self._version_base = (
            int(time.time() * 1000) * 1000 if version_base is None else version_base
        )

    def version(self, cluster: ClusterState) -> int:
        """The table version for the cluster's current state."""
        return self._version_base + cluster.generation

    def sync(self, cluster_name: str, body: str) -> str | None:
        """Apply one sync; the table to answer, or None for an unknown service."""
        cluster = self._table().clusters.get(cluster_name)
        if cluster is None:
            return None
        now = self._now()
        for report in parse_reports(body):
            if report.kind == "s":
                if report.value > 0:
                    cluster.record(report.host, 200, now)
            else:
                cluster.record(report.host, report.value, now)
        self._on_change()
        return self.render(cluster, now)

    def render(self, cluster: ClusterState, now: float) -> str:
        """The table text for a cluster."""
        weights = cluster.route_weights(now)
        lines = [f"{self.version(cluster)} {self.ttl_ms}"]
        lines += [f"{host} {weight}" for host, weight in weights]
        return "\n".join(lines) + "\n"


class BrainServer(HttpServer):
    """The sync endpoint for the Lua filter's ``httpCall`` (HTTP/1.1 keep-alive)."""

    def __init__(self, brain: Brain) -> None:
        super().__init__()
        self._brain = brain

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if method != "POST" or target != SYNC_PATH:
            return 404, "text/plain", b"not found\n"
        service = headers.get(SERVICE_HEADER, "")
        table = self._brain.sync(service, body.decode("utf-8", "replace"))
        if table is None:
            return 404, "text/plain", f"no service {service!r}\n".encode()
        return 200, "text/plain", table.encode()
