"""Measure what each data path of ``extproc up`` costs, against Istio's native Envoy, in one run.

``extproc up`` has three data paths. On ``module`` a C dynamic module inside Envoy picks
each request's host from a table the service writes into shared memory. On ``lua`` Envoy's Lua
filter picks each request's host from a table the Python service publishes; Python is
only asked for a fresh table once per Envoy worker per 100 ms and feeds the service
cluster over EDS. On ``ext_proc`` every request waits for a gRPC exchange with the
Python service. The yardstick is the Envoy an Istio user would have instead: a native
Envoy configured as Istio's pilot configures a sidecar for the same YAML. So this
script measures every data path side by side with that Envoy, and with a bare Envoy as
the floor, on loopback only.

Theory of operation (the method the ext_proc and Lua prototypes were measured with before the
product existed, kept so that the figures compare):

1. One fast upstream: nginx with one worker answering ``return 200`` on 127.0.0.21, on
   two ports (one per locality, below), or, when nginx is missing, the project's
   ``StandIn`` in a child process. It must be far faster than any variant, so that it
   never is the bottleneck.
2. One Istio config for every variant that reads one (``_SERVICE_YAML``): a ServiceEntry
   ``bench.local`` (port 80, ``resolution: STATIC``, so no DNS anywhere) with two
   endpoints on the upstream, ``127.0.0.21:<port A>`` in ``us-east1`` and
   ``127.0.0.21:<port B>`` in ``us-west1``; a DestinationRule with outlierDetection
   (``consecutive5xxErrors: 5``, ``interval: 10s``, ``baseEjectionTime: 30s``) and
   ``localityLbSetting`` failover ``us-east1 -> us-west1``. The client is in ``us-east1``,
   so port A is priority 0 and port B priority 1: every variant sends all its traffic
   to port A while it is healthy, and each does the work failover needs (priorities,
   outlier accounting, retries) on every request.
3. The variants, started once and kept running through all rounds, so runs can
   interleave without restarts:

   - ``istio``: a native Envoy with the bootstrap that ``tests/differential/reference.py``
     (the pilot-like translator of the differential tests) renders from that YAML for a
     sidecar in ``us-east1``: STATIC endpoints in two priorities, outlier_detection,
     ``healthy_panic_threshold`` 0, LEAST_REQUEST, Istio's default circuit breakers and
     retry policy (``DefaultPolicy``), no route timeout. No filter but the router. Its
     listener keeps Envoy's default ``enable_reuse_port`` (on), as pilot does.
   - ``plain``: Envoy with a minimal bootstrap built here, one route to a STATIC cluster
     with port A only: the floor.
   - ``module``: ``python -m extproc up --data-path module`` on the same YAML (the C
     dynamic module; skipped, with the reason, where it cannot be built).
   - ``lua``: ``python -m extproc up --data-path lua`` on the same YAML; its Envoy is a
     child process of the Python one. Its listener has ``enable_reuse_port: false`` and
     Envoy's exact connection balance.
   - ``ext_proc``: the same with ``--data-path ext_proc``.
   - ``plain_no_reuse_port`` (only with ``--reuse-port-ab``): ``plain`` with the
     listener fields of ``extproc up`` (``enable_reuse_port: false``, exact connection
     balance), to measure what that listener difference costs.

4. For each connection count, ``--rounds`` rounds; each round runs wrk against every
   variant, in an order rotated and reversed every other round (``round_order``), so a
   slow drift of the machine (thermal, noisy neighbours) does not always land on the same
   variant, nor a variant's after-effects on the same successor.
5. Around each wrk run, the CPU seconds of every process involved are read from
   ``/proc/<pid>/stat`` (utime + stime, all threads). Divided by wrk's request count
   this gives CPU microseconds per request, which says where the time goes even when
   the machine is saturated and req/s alone cannot. Around each run the counters of the
   variant's Envoy that explain a failed request (5xx, Lua errors, ext_proc timeouts,
   retries, overflows) are read from its admin port too.
6. Then, with ``--paced-rps`` (1,000 by default), the same interleaved rounds at a fixed
   offered rate far below saturation (wrk's ``delay()`` paces each connection): p99 there
   is what a request costs, not how long a queue is, and it is compared with ``istio``'s.
7. The tables show per-metric medians over the rounds and each variant's median req/s
   as a ratio to ``istio`` first, then to ``plain``; ``--json`` keeps every round.

Everything started here runs in its own session (process group) and is stopped in a
``finally``: on success, on errors, on Ctrl-C, and on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

from extproc.demo import free_port
from extproc.errors import StartupError
from extproc.render.bootstrap import listener_worker_fields
from extproc.server.envoy_process import find_envoy_binary

#: The upstream gets its own loopback address, so its port can never collide with the
#: listeners on 127.0.0.1, and the ServiceEntry endpoint is a literal IP (STATIC).
UPSTREAM_HOST = "127.0.0.21"
LISTEN_HOST = "127.0.0.1"
SERVICE_HOST = "bench.local"
#: The ``plain`` variants' one cluster (the others are named as Istio names them).
PLAIN_CLUSTER = "bench"
UPSTREAM_BODY = "ok\n"

#: The client's locality and the two endpoint localities of ``_SERVICE_YAML``: the first
#: is priority 0 for every variant, the second its failover (priority 1).
LOCALITY = "us-east1"
FAILOVER_LOCALITY = "us-west1"

#: Variant keys, in the order of the first round; later rounds reorder it (``round_order``).
#: ``module``, ``lua`` and ``ext_proc`` are also the values of ``extproc up --data-path``.
VARIANTS = ("istio", "plain", "module", "lua", "ext_proc")
#: Only with ``--reuse-port-ab``: plain Envoy with its listener as ``extproc up`` renders it.
NO_REUSE_PORT = "plain_no_reuse_port"
VARIANT_LABELS = {
    "istio": "native envoy (istio's config)",
    "plain": "plain envoy",
    NO_REUSE_PORT: "plain envoy, extproc's listener",
    "module": "envoy + module",
    "lua": "envoy + lua",
    "ext_proc": "envoy + ext_proc",
}
#: The variants that run ``extproc up``.
DATA_PATHS = ("module", "lua", "ext_proc")
#: Data paths that may be unavailable on a machine (the module needs a C compiler): a
#: start-up failure drops the variant with its reason instead of ending the run.
OPTIONAL_DATA_PATHS = ("module",)
#: What every variant's req/s is divided by, in the order the reports show the ratios.
BASELINES = ("istio", "plain")

#: How long each variant runs once, untimed, before the first measured round: the first
#: seconds include connection set-up, lazy allocations and cold caches on both sides.
WARMUP_S = 2
#: Start-up budget for each process to answer its first 200.
READY_TIMEOUT_S = 60.0
#: How long a stopped process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_EXIT_WRK_MISSING = 2

_SERVICE_YAML = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: bench
spec:
  hosts:
  - {host}
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: {upstream_host}
    locality: {locality}
    ports:
      http: {port}
  - address: {upstream_host}
    locality: {failover_locality}
    ports:
      http: {failover_port}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: bench
spec:
  host: {host}
  trafficPolicy:
    loadBalancer:{hash}
      localityLbSetting:
        enabled: true
        failover:
        - from: {locality}
          to: {failover_locality}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
"""

_VIRTUAL_SERVICE_YAML = """\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bench
spec:
  hosts:
  - {host}
  http:
  - name: bench
    route:
    - destination:
        host: {host}
    timeout: 5s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: connect-failure,refused-stream,503
"""

_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  # nginx closes a keep-alive connection after 1000 requests by default; Envoy would then
  # reconnect mid-run, which is noise that has nothing to do with either variant.
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen {host}:{port};
    listen {host}:{failover_port};
    location / {{ return 200 "{body}"; }}
  }}
}}
"""


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def _read_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if gone.

    The command name is in parentheses and may itself contain spaces and parentheses,
    so the fields start after the LAST ``)``. Index 0 is field 3 (state) of proc(5).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), 0.0 if it is gone."""
    fields = _read_stat(pid)
    if fields is None:
        return 0.0
    # proc(5): utime is field 14, stime field 15; index = field - 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _start_time(pid: int) -> int | None:
    """Field 22 (starttime): with the pid, it names a process even after pid reuse."""
    fields = _read_stat(pid)
    return int(fields[19]) if fields is not None else None


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``, found by scanning /proc (no psutil here)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    pending, found = [pid], []
    while pending:
        for child in _children(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


@dataclass
class Child:
    """One process started here, in its own session, and everything it must not outlive.

    ``extra`` holds (pid, starttime) of the processes this one started: ``extproc up``'s
    Envoy, nginx's worker. Today they stay in the child's process group (``extproc up``
    starts Envoy without a session of its own), so signalling the group reaches them.
    They are still adopted, so that one which leaves the group (an older ``extproc up``
    used ``start_new_session``; a future one might again) or survives its parent is
    stopped as well. The starttime check makes sure a recycled pid is never hit.
    """

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: list[tuple[int, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def adopt(self, pid: int) -> None:
        """Remember a process that must not outlive this one."""
        started = _start_time(pid)
        if started is not None:
            self.extra.append((pid, started))

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after a grace period, then reap what it left."""
        # Snapshot before signalling: once the parent dies its children are reparented.
        for pid in _descendants(self.pid):
            if all(pid != known for known, _ in self.extra):
                self.adopt(pid)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        # The leader is gone; anything left in its group is killed too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE_S
        for pid, started in self.extra:
            while _start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(0.05)
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def spawn(name: str, argv: Sequence[str], log_dir: Path, started: list[Child]) -> Child:
    """Start ``argv`` in a new session with its output in a log file.

    A new session keeps Ctrl-C (sent to the terminal's foreground group) away from the
    children, so shutdown happens in one order, ours, from the ``finally`` in ``main``.
    The child joins ``started`` at once, before any wait for it to be ready, so that
    a stop signal during start-up cannot leave it behind.
    """
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name=name, proc=proc, log_path=log_path)
    started.append(child)
    return child


def http_status(host: str, port: int, authority: str) -> int:
    """Status of one ``GET /`` with the given Host header; raises OSError when down."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": authority})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ok(child: Child, host: str, port: int, authority: str) -> None:
    """Wait until ``child`` answers 200 on ``host:port``.

    Raises:
        StartupError: the process exited, or did not answer 200 in time; the message
            carries the end of its log.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise StartupError(
                f"{child.name} exited with code {child.proc.returncode}:\n{child.log_tail()}"
            )
        try:
            status = http_status(host, port, authority)
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise StartupError(
        f"{child.name} did not answer 200 on {host}:{port} within {READY_TIMEOUT_S:g}s "
        f"(last: {last}):\n{child.log_tail()}"
    )


# --------------------------------------------------------------------------------------
# The things under test
# --------------------------------------------------------------------------------------


def start_upstream(
    tmp: Path, started: list[Child], prefer_standin: bool
) -> tuple[Child, tuple[int, int], str]:
    """Start nginx (one worker) or, without nginx, a StandIn child process, on two ports.

    The first port is the endpoint in ``LOCALITY``, the second the one in
    ``FAILOVER_LOCALITY``: one server, so the failover endpoint is real without a second
    process competing for the cores.

    Returns:
        The child, its two ports on ``UPSTREAM_HOST``, and a label naming what it is.
    """
    port = free_port(UPSTREAM_HOST)
    failover_port = free_port(UPSTREAM_HOST)  # never the same port twice
    nginx = None if prefer_standin else shutil.which("nginx")
    if nginx is not None:
        conf = tmp / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                tmp=tmp,
                host=UPSTREAM_HOST,
                port=port,
                failover_port=failover_port,
                body=UPSTREAM_BODY.replace("\n", "\\n"),
            )
        )
        argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
        child = spawn("nginx", argv, tmp, started)
        label = f"nginx, 1 worker ({_version([nginx, '-v'])})"
    else:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_standin",
            str(port),
            str(failover_port),
        ]
        child = spawn("standin", argv, tmp, started)
        label = "extproc.sandbox.StandIn (nginx not found)"
    for each in (port, failover_port):
        wait_ok(child, UPSTREAM_HOST, each, SERVICE_HOST)
    return child, (port, failover_port), label


#: ``--consistent-hash``: requests hashed on a header wrk does not send (one ring key for
#: all), so Envoy's own ring balances on every path and lua and ext_proc log each attempt.
_CONSISTENT_HASH = "\n      consistentHash: {httpHeaderName: x-user}"


def service_yaml(
    upstream_ports: tuple[int, int], *, virtual_service: bool = False, consistent_hash: bool = False
) -> str:
    """The Istio config of the ``istio`` and extproc variants; with ``virtual_service``, a
    VirtualService with a timeout and retries too (what egress configs usually carry); with
    ``consistent_hash``, a ring-hash cluster that Envoy balances alone."""
    text = _SERVICE_YAML.format(
        hash=_CONSISTENT_HASH if consistent_hash else "",
        host=SERVICE_HOST,
        upstream_host=UPSTREAM_HOST,
        locality=LOCALITY,
        failover_locality=FAILOVER_LOCALITY,
        port=upstream_ports[0],
        failover_port=upstream_ports[1],
    )
    return text + (_VIRTUAL_SERVICE_YAML.format(host=SERVICE_HOST) if virtual_service else "")


def plain_bootstrap(
    listen_port: int, upstream_port: int, *, reuse_port: bool = True
) -> dict[str, Any]:
    """The smallest Envoy config that proxies ``bench.local`` to the upstream.

    No filter but the router, a STATIC cluster of one endpoint, no retries, no outlier
    detection: the floor every variant is also compared with. Envoy reads JSON as YAML,
    so no YAML library is needed.

    Args:
        listen_port: The listener's port on ``LISTEN_HOST``.
        upstream_port: The upstream's port on ``UPSTREAM_HOST``.
        reuse_port: Envoy's default (on). Off is how ``extproc up`` renders its listener,
            so that no other process can share its port: one socket for all workers,
            with Envoy's exact connection balance (``listener_worker_fields``).
    """

    def address(host: str, port: int) -> dict[str, Any]:
        return {"socket_address": {"address": host, "port_value": port}}

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "plain",
        "codec_type": "AUTO",
        "route_config": {
            "name": "plain",
            "virtual_hosts": [
                {
                    "name": "bench",
                    "domains": [SERVICE_HOST],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": PLAIN_CLUSTER, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener: dict[str, Any] = {"name": "plain", "address": address(LISTEN_HOST, listen_port)}
    if not reuse_port:
        listener.update(listener_worker_fields())
    return {
        "admin": {"address": address(LISTEN_HOST, 0)},
        "static_resources": {
            "listeners": [
                {
                    **listener,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": PLAIN_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "10s",
                    "load_assignment": {
                        "cluster_name": PLAIN_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": address(UPSTREAM_HOST, upstream_port)}}
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def _repo_root_on_path() -> None:
    """Make ``tests`` importable: the script runs as ``bench/bench.py``, not as a module."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def istio_bootstrap(yaml_text: str, listen_port: int) -> dict[str, Any]:
    """Istio's sidecar config for ``yaml_text`` (client in ``LOCALITY``), as pilot renders it.

    The translator is the differential tests' reference (tests/differential/reference.py),
    which reads the raw YAML without extproc's loader, so the yardstick is independent of
    the product it measures.

    Raises:
        StartupError: the config needs DNS (a STRICT_DNS cluster): the bench has no DNS
            responder, so it uses literal IPs (``resolution: STATIC``) only.
    """
    _repo_root_on_path()
    from tests.differential.reference import Proxy, render_reference

    bootstrap = render_reference(
        yaml_text,
        Proxy(locality=LOCALITY),
        listen=(LISTEN_HOST, listen_port),
        # Unused: every cluster is STATIC (checked below).
        dns_resolver=(LISTEN_HOST, 53),
    )
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["type"] != "STATIC":
            raise StartupError(f"istio variant: cluster {cluster['name']} needs DNS")
    return bootstrap


def start_envoy(
    tmp: Path,
    started: list[Child],
    envoy: Path,
    name: str,
    bootstrap: dict[str, Any],
    port: int,
    concurrency: int,
) -> Child:
    """Start Envoy with ``bootstrap`` (listening on ``port``); wait until it proxies a 200."""
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(bootstrap, indent=2))
    argv = [
        str(envoy),
        "-c",
        str(config),
        "--concurrency",
        str(concurrency),
        "--log-level",
        "warning",
        "--admin-address-path",
        str(tmp / f"{name}-admin-address"),
        # Several Envoys share the host: without this they fight over the hot-restart
        # shared memory of the default base id.
        "--disable-hot-restart",
    ]
    child = spawn(name, argv, tmp, started)
    wait_ok(child, LISTEN_HOST, port, SERVICE_HOST)
    return child


def start_extproc(
    tmp: Path, started: list[Child], config: Path, concurrency: int, data_path: str
) -> tuple[Child, int, int]:
    """Start ``python -m extproc up --data-path <data_path>``; wait for a 200 through it.

    Returns:
        The child (the Python service), its Envoy's pid, and the listener port.
    """
    port = free_port(LISTEN_HOST)
    admin = free_port(LISTEN_HOST)
    argv = [
        sys.executable,
        "-m",
        "extproc",
        # --log-level belongs to the top-level parser, so it comes before "up".
        "--log-level",
        "warning",
        "up",
        "--data-path",
        data_path,
        "--config",
        str(config),
        "--locality",
        LOCALITY,
        "--listen",
        f"{LISTEN_HOST}:{port}",
        "--admin",
        f"{LISTEN_HOST}:{admin}",
        "--concurrency",
        str(concurrency),
    ]
    child = spawn(f"extproc-up-{data_path}", argv, tmp, started)
    wait_ok(child, LISTEN_HOST, port, SERVICE_HOST)
    envoys = [pid for pid in _children(child.pid) if _comm(pid) == "envoy"]
    if len(envoys) != 1:
        raise StartupError(f"expected one envoy child of {child.name}, found {envoys}")
    child.adopt(envoys[0])
    return child, envoys[0], port


def envoy_admin(pid: int) -> tuple[str, int] | None:
    """The admin address of the Envoy ``pid``, from its ``--admin-address-path`` file.

    Both Envoys here bind their admin to port 0 and write the real address to that file;
    ``extproc up`` keeps the file in a temp dir of its own, hence the detour via cmdline.
    """
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        path = argv[argv.index("--admin-address-path") + 1]
        host, _, port = Path(path).read_text().strip().rpartition(":")
        return host, int(port)
    return None


#: The Envoy counters that explain a failed or retried request, on any variant:
#: downstream 4xx/5xx, Lua script errors, ext_proc stream failures and timeouts, the
#: service cluster's retries, connect failures and circuit-breaker overflows, and the
#: Lua path's calls to the brain (refreshes and failure reports).
_COUNTER_FILTER = (
    r"(downstream_rq_[45]xx|downstream_rq_total|\.lua\.|\.ext_proc\.|upstream_rq_retry|"
    r"upstream_cx_connect_fail|overflow|upstream_rq_[45]xx|upstream_rq_timeout|"
    r"upstream_rq_total|no_healthy|upstream_reset)"
)


def envoy_counters(admin: tuple[str, int] | None) -> dict[str, int]:
    """Counters matching ``_COUNTER_FILTER`` from an Envoy admin; {} when unreachable."""
    if admin is None:
        return {}
    conn = http.client.HTTPConnection(*admin, timeout=5)
    try:
        conn.request("GET", f"/stats?type=Counters&filter={quote(_COUNTER_FILTER)}")
        text = conn.getresponse().read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    counters: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        # http.admin.*: our own stats requests to the admin port.
        if value.strip().isdigit() and not name.startswith("http.admin."):
            counters[name] = int(value)
    return counters


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` per counter, only where it moved."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v != before.get(k, 0)}


def served_by(clusters_text: str) -> dict[str, int]:
    """Requests per upstream host of the ``bench.local`` cluster, from Envoy's ``/clusters``.

    The lines read ``<cluster>::<host:port>::rq_total::<n>``; the brain's and the ext_proc
    service's clusters are left out.
    """
    hosts: dict[str, int] = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if (
            len(parts) == 4
            and parts[2] == "rq_total"
            and (parts[0] == PLAIN_CLUSTER or SERVICE_HOST in parts[0])
        ):
            hosts[parts[1]] = hosts.get(parts[1], 0) + int(parts[3])
    return dict(sorted(hosts.items()))


def envoy_served_by(admin: tuple[str, int] | None) -> dict[str, int]:
    """``served_by`` of an Envoy admin; {} when unreachable."""
    if admin is None:
        return {}
    conn = http.client.HTTPConnection(*admin, timeout=5)
    try:
        conn.request("GET", "/clusters")
        return served_by(conn.getresponse().read().decode(errors="replace"))
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()


def format_served_by(
    per_variant: dict[str, dict[str, int]], upstream_ports: tuple[int, int]
) -> str:
    """One line per variant: the share of its requests each endpoint served."""
    names = {
        f"{UPSTREAM_HOST}:{upstream_ports[0]}": LOCALITY,
        f"{UPSTREAM_HOST}:{upstream_ports[1]}": FAILOVER_LOCALITY,
    }
    order = list(names)
    lines = ["served by (all requests of the run, warm-up included):"]
    for key, hosts in per_variant.items():
        total = max(sum(hosts.values()), 1)
        # Priority 0's endpoint first; a host the config does not name (none expected) last.
        ranked = sorted(hosts.items(), key=lambda h: order.index(h[0]) if h[0] in order else 2)
        cells = ", ".join(
            f"{host} ({names.get(host, '?')}) {n:,} = {100 * n / total:.1f} %" for host, n in ranked
        )
        lines.append(f"  {VARIANT_LABELS[key]:<29} {cells or 'unknown (no admin)'}")
    return "\n".join(lines)


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def _version(argv: list[str]) -> str:
    """The first line a tool prints about its version, or "unknown"."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    if not lines:
        return "unknown"
    # "<path>  version: <sha>/1.40.0/..." and "nginx version: nginx/1.22.1": drop the prefix.
    return lines[0].partition("version:")[2].strip() or lines[0].strip()


# --------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run reports; latencies from its ``--latency`` distribution."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk 4's text report.

    wrk counts a response as an error when its status is 400 or more and reports it as
    "Non-2xx or 3xx responses"; socket errors (connect, read, write, timeout) are
    summed, as any of them means requests that never got an answer.

    Raises:
        ValueError: the report lacks the request count, req/s or the percentiles.
    """
    percentiles = {
        float(pct): float(value) * _TIME_UNITS_MS[unit]
        for pct, value, unit in _PERCENTILE.findall(text)
    }
    requests = _REQUESTS.search(text)
    rps = _RPS.search(text)
    if requests is None or rps is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError(f"cannot parse wrk output:\n{text}")
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET_ERRORS.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=float(requests.group(2)) * _TIME_UNITS_MS[requests.group(3)] / 1e3,
        rps=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def run_wrk(
    wrk: str, port: int, connections: int, duration_s: int, script: Path | None = None
) -> tuple[WrkResult, float]:
    """One wrk run against ``LISTEN_HOST:port`` with ``Host: bench.local``.

    ``script`` is a wrk Lua script (the paced runs': see ``pacing_script``).

    Returns:
        The parsed report and the CPU seconds wrk itself used (it shares the 2 cores).

    Raises:
        RuntimeError: wrk failed or did not finish well after its duration.
    """
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-H",
        f"Host: {SERVICE_HOST}",
        *(["-s", str(script)] if script is not None else []),
        f"http://{LISTEN_HOST}:{port}/",
    ]
    before = _children_cpu_s()
    # A session of its own, like every child: if we are killed, so is it (finally).
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=duration_s + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"wrk did not finish within {duration_s + 30}s against port {port}: "
            "the variant stopped answering"
        ) from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with code {proc.returncode}:\n{text}")
    return parse_wrk(text), _children_cpu_s() - before


def pacing_script(directory: Path, rate_rps: int, connections: int) -> Path:
    """A wrk script that holds each connection to ``rate_rps / connections`` requests/s.

    wrk's ``delay()`` hook pauses a connection before its next request, so ``connections``
    connections with a pause of ``connections / rate_rps`` seconds each offer at most
    ``rate_rps`` requests per second: a fixed rate far below every variant's saturation,
    where latency says what a request costs rather than how long the queue is.
    """
    delay_ms = connections * 1000 / rate_rps
    path = directory / f"pace-{rate_rps}.lua"
    path.write_text(f"function delay()\n  return {delay_ms:g}\nend\n")
    return path


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One variant: where wrk sends load, and whose CPU is charged to it."""

    key: str
    port: int
    #: role ("envoy", "python") -> pids summed for that role.
    cpu_pids: dict[str, list[int]]
    #: the variant's Envoy admin, for its counters; None if it could not be found.
    admin: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One wrk run of one variant in one round, as written to ``--json``."""

    connections: int
    round: int
    position: int
    variant: str
    wrk: WrkResult
    cpu_s: dict[str, float]
    cpu_us_per_request: dict[str, float]
    cpu_percent: dict[str, float]
    #: how much each counter of ``_COUNTER_FILTER`` moved during the run (only those that did).
    envoy_counters: dict[str, int]


def measure(
    target: Target,
    upstream_pids: list[int],
    wrk: str,
    connections: int,
    duration_s: int,
    round_no: int,
    position: int,
    script: Path | None = None,
) -> RunRecord:
    """Run wrk once against ``target`` and charge the CPU each process used meanwhile."""
    roles = {**target.cpu_pids, "upstream": upstream_pids}
    counters_before = envoy_counters(target.admin)
    before = {role: sum(cpu_seconds(p) for p in pids) for role, pids in roles.items()}
    result, wrk_cpu_s = run_wrk(wrk, target.port, connections, duration_s, script)
    cpu_s = {role: sum(cpu_seconds(p) for p in pids) - before[role] for role, pids in roles.items()}
    counters = counter_delta(counters_before, envoy_counters(target.admin))
    cpu_s["wrk"] = wrk_cpu_s
    requests = max(result.requests, 1)
    wall_s = max(result.duration_s, 1e-9)
    return RunRecord(
        connections=connections,
        round=round_no,
        position=position,
        variant=target.key,
        wrk=result,
        cpu_s={k: round(v, 3) for k, v in cpu_s.items()},
        # Two decimals: the lua variant's Python spends well under 1 µs per request.
        cpu_us_per_request={k: round(v * 1e6 / requests, 2) for k, v in cpu_s.items()},
        cpu_percent={k: round(v * 100 / wall_s, 1) for k, v in cpu_s.items()},
        envoy_counters=counters,
    )


#: ``RunRecord.connections`` of a paced run is its connection count with this sign, so
#: paced runs never mix with the throughput runs at the same connection count.
PACED = -1


def _paced_rounds(
    args: argparse.Namespace,
    targets: dict[str, Target],
    variants: list[str],
    upstream_pids: list[int],
    wrk: str,
    tmp: Path,
    records: list[RunRecord],
) -> dict[str, dict[str, Any]]:
    """Latency and CPU per request at a fixed offered rate, interleaved like the rest."""
    script = pacing_script(tmp, args.paced_rps, args.paced_connections)
    paced: list[RunRecord] = []
    for round_no in range(args.rounds):
        for position, key in enumerate(round_order(variants, round_no)):
            record = measure(
                targets[key],
                upstream_pids,
                wrk,
                args.paced_connections,
                args.duration,
                round_no,
                position,
                script,
            )
            record = dataclasses.replace(record, connections=PACED * args.paced_connections)
            paced.append(record)
            print(
                f"  paced {args.paced_rps} req/s round {round_no + 1}/{args.rounds} "
                f"{VARIANT_LABELS[key]:<29} {record.wrk.rps:>8,.0f} req/s "
                f"p50 {record.wrk.p50_ms:.2f} ms p99 {record.wrk.p99_ms:.2f} ms",
                flush=True,
            )
    records.extend(paced)
    return {key: medians([r for r in paced if r.variant == key]) for key in variants}


def format_paced(per_variant: dict[str, dict[str, Any]], rate_rps: int, rounds: int) -> str:
    """The fixed-rate table: latency and CPU per request, and p99 against native Istio's."""
    native = per_variant.get("istio")
    rows = [("variant", "req/s", "p50 ms", "p99 ms", "p99 - istio ms", "envoy µs/req")]
    for key, s in per_variant.items():
        delta = "-" if native is None else f"{s['p99_ms'] - native['p99_ms']:+.2f}"
        rows.append(
            (
                VARIANT_LABELS[key],
                f"{s['rps']:,.0f}",
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                delta,
                _cpu_cell(s, "envoy"),
            )
        )
    lines = [f"paced at {rate_rps:,} req/s offered (medians of {rounds} rounds)"]
    return "\n".join([*lines, *_aligned(rows)])


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Table rows as text: the first column left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in rows
    ]


def rotated(items: Sequence[str], start: int) -> list[str]:
    """``items`` starting at index ``start`` (mod len), wrapping around."""
    start %= len(items)
    return [*items[start:], *items[:start]]


def round_order(items: Sequence[str], round_no: int) -> list[str]:
    """The order of the variants in round ``round_no``: rotated, and reversed every other round.

    Rotation alone moves every variant through every position but keeps its neighbours:
    each variant would always run right after the same one, so whatever one variant leaves
    behind (cold caches after a slow one, a busy service finishing its work) would always
    land on the same other variant. Reversing every other round gives each variant both
    neighbours as predecessors.
    """
    forward = round_no % 2 == 0
    return rotated(items if forward else list(reversed(items)), round_no // 2)


def medians(records: list[RunRecord]) -> dict[str, Any]:
    """Per-metric medians of the runs of one variant at one connection count.

    Each metric is a median on its own (the p99 median need not come from the same
    round as the req/s median): with 3 rounds, one disturbed round cannot move any of
    them. Counts (non-2xx, socket errors, Envoy counters) are summed over the rounds.
    """
    roles = sorted({role for r in records for role in r.cpu_us_per_request})
    counters: dict[str, int] = {}
    for r in records:
        for name, value in r.envoy_counters.items():
            counters[name] = counters.get(name, 0) + value
    return {
        "rounds": len(records),
        "rps": statistics.median(r.wrk.rps for r in records),
        "p50_ms": statistics.median(r.wrk.p50_ms for r in records),
        "p99_ms": statistics.median(r.wrk.p99_ms for r in records),
        "non_2xx": sum(r.wrk.non_2xx for r in records),
        "socket_errors": sum(r.wrk.socket_errors for r in records),
        "cpu_us_per_request": {
            role: statistics.median(r.cpu_us_per_request.get(role, 0.0) for r in records)
            for role in roles
        },
        "cpu_percent": {
            role: statistics.median(r.cpu_percent.get(role, 0.0) for r in records) for role in roles
        },
        "envoy_counters": dict(sorted(counters.items())),
    }


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def _cpu_cell(summary: dict[str, Any], role: str) -> str:
    value = summary["cpu_us_per_request"].get(role)
    if value is None:
        return "-"
    # Whole µs where the cost is large; the lua variant's Python is a fraction of one.
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


#: Counters that move on every request; the report lists only the ones that explain
#: failures, retries and brain calls (``--json`` keeps them all).
_ROUTINE_COUNTERS = re.compile(
    r"(downstream_rq_total|upstream_rq_total|lua\.executions|ext_proc\.streams_(started|closed)"
    r"|ext_proc\.stream_msgs_(sent|received))$"
)


def format_counters(per_variant: dict[str, dict[str, Any]]) -> list[str]:
    """One line per variant whose Envoy counted failures, retries or brain calls."""
    lines = []
    for key in per_variant:
        moved = {
            name: value
            for name, value in per_variant[key]["envoy_counters"].items()
            if not _ROUTINE_COUNTERS.search(name) or "extproc_brain" in name
        }
        if moved:
            cells = ", ".join(f"{name} {value:,}" for name, value in moved.items())
            lines.append(f"  {VARIANT_LABELS[key]} envoy counters (sum of rounds): {cells}")
    return lines


def ratio(rps: float, base_rps: float) -> float | None:
    """``rps / base_rps``, None when the baseline served nothing."""
    return rps / base_rps if base_rps > 0 else None


def ratios(
    summary: dict[int, dict[str, dict[str, Any]]],
) -> dict[str, dict[str, dict[int, float | None]]]:
    """baseline -> variant -> connections -> median req/s of the variant / the baseline's.

    Every variant, the baselines included (1.0 to themselves, and ``plain`` to ``istio``
    says what Istio's config costs over a bare Envoy).
    """
    return {
        base: {
            key: {c: ratio(s[key]["rps"], s[base]["rps"]) for c, s in summary.items()}
            for key in next(iter(summary.values()))
        }
        for base in BASELINES
    }


def paired_ratio(
    records: Sequence[RunRecord], key: str, base: str, connections: int, metric: str = "rps"
) -> float | None:
    """The median over rounds of each round's own ``key / base`` ratio.

    The machine drifts by more between rounds than between two variants of one round
    (on the 2-core box the same Envoy ran 13k-22k req/s in consecutive rounds), so a ratio
    taken within a round, where both ran seconds apart, is the steadier estimate; the
    ratio of medians is printed beside it. ``metric`` is ``rps`` or ``envoy_cpu`` (Envoy
    µs CPU per request).
    """

    def value(record: RunRecord) -> float:
        return record.wrk.rps if metric == "rps" else record.cpu_us_per_request.get("envoy", 0.0)

    by_round: dict[int, dict[str, RunRecord]] = {}
    for record in records:
        if record.connections == connections:
            by_round.setdefault(record.round, {})[record.variant] = record
    within = [
        value(pair[key]) / value(pair[base])
        for pair in by_round.values()
        if key in pair and base in pair and value(pair[base]) > 0
    ]
    return statistics.median(within) if within else None


def _ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(connections: int, per_variant: dict[str, dict[str, Any]], rounds: int) -> str:
    """One table for one connection count, medians only, ratios to ``istio`` and ``plain``."""
    header = (
        "variant",
        "req/s",
        "p50 ms",
        "p99 ms",
        *(f"vs {base}" for base in BASELINES),
        "envoy µs/req",
        "python µs/req",
        "upstream µs/req",
        "non-2xx",
        "sock err",
    )
    rows = [header]
    for key, s in per_variant.items():
        rows.append(
            (
                VARIANT_LABELS[key],
                f"{s['rps']:,.0f}",
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                *(_ratio_cell(ratio(s["rps"], per_variant[b]["rps"])) for b in BASELINES),
                _cpu_cell(s, "envoy"),
                _cpu_cell(s, "python"),
                _cpu_cell(s, "upstream"),
                str(s["non_2xx"]),
                str(s["socket_errors"]),
            )
        )
    lines = [f"connections={connections} (medians of {rounds} rounds)", *_aligned(rows)]
    lines.extend(format_counters(per_variant))
    return "\n".join(lines)


def _parse_connections(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: connection counts must be >= 1")
    return values


def _parse_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: variants are {', '.join(VARIANTS)} (unknown: {', '.join(unknown)})"
        )
    # The baselines always run: every ratio is to them.
    return [key for key in VARIANTS if key in names or key in BASELINES]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Throughput, latency and CPU per request of extproc up's data paths "
        "(module, lua, ext_proc) vs a native Envoy with Istio's config for the same YAML, and vs "
        "plain Envoy.",
    )
    parser.add_argument(
        "--connections",
        type=_parse_connections,
        default=[16, 64],
        help="wrk connection counts, comma-separated (default 16,64)",
    )
    # Many short rounds rather than a few long ones: the machine drifts between rounds, and
    # medians (and the within-round ratios) of 9 rounds move less than those of 3.
    parser.add_argument("--duration", type=_positive, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=_positive, default=9, help="rounds per connection count")
    parser.add_argument(
        "--concurrency", type=_positive, default=2, help="Envoy worker threads (all variants)"
    )
    parser.add_argument(
        "--variants",
        type=_parse_variants,
        default=list(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (the baselines always run)",
    )
    parser.add_argument(
        "--paced-rps",
        type=_non_negative,
        default=1000,
        help="after the throughput rounds, latency at this fixed offered rate (0: skip)",
    )
    parser.add_argument(
        "--paced-connections",
        type=_positive,
        default=10,
        help="connections of the paced runs (each paced to its share of --paced-rps)",
    )
    parser.add_argument(
        "--virtual-service",
        action="store_true",
        help="add a VirtualService with a timeout and retries to the config of every variant",
    )
    parser.add_argument(
        "--consistent-hash",
        action="store_true",
        help="hash on a header (consistentHash): Envoy's own ring balances on every variant",
    )
    parser.add_argument("--json", type=Path, help="write every round and the medians here")
    parser.add_argument(
        "--standin", action="store_true", help="use the StandIn upstream even if nginx exists"
    )
    parser.add_argument(
        "--reuse-port-ab",
        action="store_true",
        help="also run plain Envoy with enable_reuse_port: false (as extproc up renders its "
        "listener), to measure that difference",
    )
    # Internal: the StandIn upstream runs in a child process of its own, so its event
    # loop neither competes with this script's GIL nor hides in this script's CPU time.
    parser.add_argument("--_standin", type=int, nargs="+", metavar="PORT", help=argparse.SUPPRESS)
    return parser


def _serve_standin(ports: Sequence[int]) -> int:
    """Run a StandIn on ``UPSTREAM_HOST:port`` for each port until SIGTERM."""
    import asyncio

    from extproc.sandbox import StandIn

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            for port in ports:
                # log_limit=1: the request log is for tests; here it would only cost time.
                await stack.enter_async_context(
                    StandIn(f"bench-upstream-{port}", UPSTREAM_HOST, port, log_limit=1)
                )
            await stop.wait()

    asyncio.run(serve())
    return 0


class Stopped(BaseException):
    """A stop signal arrived; a BaseException so that no ``except Exception`` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into exceptions, so the ``finally`` blocks run.

    SIGINT is set explicitly: a shell starts background jobs with SIGINT ignored, and a
    Python started that way would otherwise never see a Ctrl-C or a ``kill -INT``.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in stops}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._standin is not None:
        return _serve_standin(args._standin)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "bench: wrk not found on PATH; install it (apt-get install wrk) and run again",
            file=sys.stderr,
        )
        return _EXIT_WRK_MISSING
    envoy = find_envoy_binary()
    variants = [*args.variants, NO_REUSE_PORT] if args.reuse_port_ab else list(args.variants)

    load_s = args.rounds * len(variants) * len(args.connections) * args.duration
    warmup_s = len(variants) * WARMUP_S
    print(
        f"bench: {args.rounds} rounds x {len(variants)} variants x {len(args.connections)} "
        f"connection counts x {args.duration}s = {load_s}s of load "
        f"(+ {warmup_s}s warm-up and a few seconds of start-up)",
        flush=True,
    )

    children: list[Child] = []
    records: list[RunRecord] = []
    summary: dict[int, dict[str, dict[str, Any]]] = {}
    istio_config: dict[str, Any] = {}
    with _signals_raise(), tempfile.TemporaryDirectory(prefix="extproc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            upstream, upstream_ports, upstream_label = start_upstream(tmp, children, args.standin)
            upstream_pids = [upstream.pid, *_descendants(upstream.pid)]
            yaml_text = service_yaml(
                upstream_ports,
                virtual_service=args.virtual_service,
                consistent_hash=args.consistent_hash,
            )
            config = tmp / "bench-service.yaml"
            config.write_text(yaml_text)

            targets: dict[str, Target] = {}
            # The Envoys this script configures itself; the data paths' come from extproc up.
            for key in [k for k in variants if k not in DATA_PATHS]:
                port = free_port(LISTEN_HOST)
                if key == "istio":
                    bootstrap = istio_config = istio_bootstrap(yaml_text, port)
                else:
                    reuse_port = key != NO_REUSE_PORT
                    bootstrap = plain_bootstrap(port, upstream_ports[0], reuse_port=reuse_port)
                child = start_envoy(
                    tmp, children, envoy, f"{key}-envoy", bootstrap, port, args.concurrency
                )
                targets[key] = Target(key, port, {"envoy": [child.pid]}, envoy_admin(child.pid))
            for data_path in [k for k in variants if k in DATA_PATHS]:
                try:
                    service, service_envoy, service_port = start_extproc(
                        tmp, children, config, args.concurrency, data_path
                    )
                except StartupError as exc:
                    if data_path not in OPTIONAL_DATA_PATHS:
                        raise
                    print(f"bench: {data_path} variant skipped: {exc}", flush=True)
                    variants.remove(data_path)
                    continue
                targets[data_path] = Target(
                    data_path,
                    service_port,
                    {"envoy": [service_envoy], "python": [service.pid]},
                    envoy_admin(service_envoy),
                )
            print(
                f"bench: upstream {upstream_label} on {UPSTREAM_HOST}:{upstream_ports[0]} "
                f"({LOCALITY}) and :{upstream_ports[1]} ({FAILOVER_LOCALITY})"
            )
            print(f"bench: envoy {_version([str(envoy), '--version'])}", flush=True)

            for key in variants:
                run_wrk(wrk, targets[key].port, args.connections[0], WARMUP_S)

            for connections in args.connections:
                for round_no in range(args.rounds):
                    order = round_order(variants, round_no)
                    for position, key in enumerate(order):
                        record = measure(
                            targets[key],
                            upstream_pids,
                            wrk,
                            connections,
                            args.duration,
                            round_no,
                            position,
                        )
                        records.append(record)
                        print(
                            f"  c={connections} round {round_no + 1}/{args.rounds} "
                            f"{VARIANT_LABELS[key]:<29} {record.wrk.rps:>10,.0f} req/s "
                            f"p50 {record.wrk.p50_ms:.2f} ms p99 {record.wrk.p99_ms:.2f} ms"
                            + (f" non-2xx {record.wrk.non_2xx}" if record.wrk.non_2xx else ""),
                            flush=True,
                        )
                summary[connections] = {
                    key: medians(
                        [r for r in records if r.connections == connections and r.variant == key]
                    )
                    for key in variants
                }
            paced = (
                _paced_rounds(args, targets, variants, upstream_pids, wrk, tmp, records)
                if args.paced_rps
                else {}
            )
            hosts = {key: envoy_served_by(targets[key].admin) for key in variants}
        finally:
            # Reverse start order: the Envoys stop before the upstream they send to.
            # A second Ctrl-C must not cut the clean-up short.
            blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            try:
                for child in reversed(children):
                    child.stop()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    print()
    for connections, per_variant in summary.items():
        print(format_table(connections, per_variant, args.rounds))
        print()
    if paced:
        print(format_paced(paced, args.paced_rps, args.rounds))
        print()
    print(format_served_by(hosts, upstream_ports))
    print()
    by_base = ratios(summary)
    paired = {
        base: {
            key: {
                c: {
                    "rps": paired_ratio(records, key, base, c),
                    "envoy_cpu": paired_ratio(records, key, base, c, "envoy_cpu"),
                }
                for c in summary
            }
            for key in variants
            if key != base
        }
        for base in BASELINES
    }
    for base, per_variant_ratios in by_base.items():
        print(
            f"ratio to {VARIANT_LABELS[base]}: median req/s, then [the median of each "
            "round's own req/s ratio; its Envoy CPU per request ratio]:"
        )
        for key, by_connections in per_variant_ratios.items():
            if key == base:
                continue
            print(
                f"  {VARIANT_LABELS[key]:<29} "
                + ", ".join(
                    f"{_ratio_cell(r)} [{_ratio_cell(paired[base][key][c]['rps'])}; "
                    f"{_ratio_cell(paired[base][key][c]['envoy_cpu'])}] at c={c}"
                    for c, r in by_connections.items()
                )
            )

    if args.json is not None:
        report = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "versions": {
                "envoy": _version([str(envoy), "--version"]),
                "wrk": _version([wrk, "-v"]),
                "upstream": upstream_label,
            },
            "settings": {
                "variants": variants,
                "baselines": list(BASELINES),
                "connections": args.connections,
                "duration_s": args.duration,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "warmup_s": WARMUP_S,
            },
            "rounds": [asdict(r) for r in records],
            "medians": {str(c): s for c, s in summary.items()},
            # variant -> medians of the runs at the fixed rate (--paced-rps).
            "paced": {"rate_rps": args.paced_rps, "medians": paced},
            # variant -> upstream host -> requests it served over the whole run.
            "served_by": hosts,
            # baseline ("istio" first, then "plain") -> variant -> connections -> median
            # req/s of the variant / that of the baseline.
            "ratios": {
                base: {
                    key: {
                        str(c): None if r is None else round(r, 4)
                        for c, r in by_connections.items()
                    }
                    for key, by_connections in per_variant_ratios.items()
                }
                for base, per_variant_ratios in by_base.items()
            },
            # baseline -> variant -> connections -> the median over rounds of each round's
            # own ratio, of req/s ("rps") and of Envoy CPU per request ("envoy_cpu").
            "paired_ratios": {
                base: {
                    key: {
                        str(c): {m: None if r is None else round(r, 4) for m, r in pair.items()}
                        for c, pair in by_connections.items()
                    }
                    for key, by_connections in per_variant.items()
                }
                for base, per_variant in paired.items()
            },
            # What the istio variant ran: the Istio YAML and pilot's translation of it.
            "istio_config": {"yaml": yaml_text, "envoy_bootstrap": istio_config},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"bench: wrote {args.json}")
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stopped as stop:
        print(f"\nbench: {stop}; everything it started is stopped", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except (StartupError, RuntimeError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
