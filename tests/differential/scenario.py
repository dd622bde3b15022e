"""Scenarios replayed against the reference proxy and extproc at the same time, and comparisons.

A ``Scenario`` is Istio YAML, the workload's locality (and labels), Envoy's concurrency, the
stand-in upstreams and a timeline. ``run_scenario`` starts one DNS responder and the stand-ins,
then the reference Envoy (``reference.py``) and extproc's ``Stack`` on the same YAML, locality,
concurrency and DNS, and replays the timeline. Both proxies share the stand-ins, so every fault
is literally the same fault; each request of a loop goes to both proxies at the same moment
(``asyncio.gather``), so both see the same state of the world.

The timeline starts once the reference Envoy is more than ``MERGE_WINDOW_S`` past its start:
its first DNS answers are host updates that open Envoy's 1 s update merge window, and an
ejection inside that window would wait for it (a sidecar that just started; rarely the case).

Comparisons, chosen per loop by the tests:

- ``assert_same_sequence``: the same endpoint served (or the same status failed) request i on
  both proxies, for deterministic loops (one host per priority, spaced requests).
- ``assert_no_more_failures``: extproc fails at most as many requests as the reference, for
  loops where native Envoy has timing artifacts (asynchronous ejection, the update merge
  window, per-worker round robin).
- ``assert_spread``: statistical shares. With p the pooled share of an endpoint and n1, n2 the
  successes of each side, ``|p_ours - p_ref| <= 4 * sqrt(p(1-p)(1/n1 + 1/n2)) + 0.05``, and
  each side ``|p_side - p0| <= 4 * sqrt(p0(1-p0)/n) + 0.05`` around the theoretical share p0.
  4 standard deviations make a false alarm about 1 in 15 000 per check; the 0.05 floor covers
  shares that are not quite binomial (round robin, locality picking).

Every failed assertion prints both request sequences side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from extproc.core.policy import Locality, Workload
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import get
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath

from .reference import Proxy, ReferenceEnvoy, render_reference

REFERENCE = "reference"
EXTPROC = "extproc"
#: The floor added to every statistical tolerance (see the module docstring).
SHARE_FLOOR = 0.05
#: Envoy's default ``update_merge_window`` (Istio keeps it), plus a margin.
MERGE_WINDOW_S = 1.1
#: A request gets this long before it counts as failed (status 0).
REQUEST_TIMEOUT_S = 10.0


# --- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """One stand-in on a loopback IP; ``dns`` names resolve to it at the start.

    ``blackhole`` makes it an address whose connects never complete (connect timeouts).
    """

    name: str
    ip: str
    dns: tuple[str, ...] = ()
    blackhole: bool = False


@dataclass(frozen=True, slots=True)
class SetMode:
    upstream: str
    mode: Mode


@dataclass(frozen=True, slots=True)
class SetDns:
    name: str
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Requests:
    """``n`` requests to both proxies, started ``spacing_s`` apart (0: back to back)."""

    label: str
    n: int
    spacing_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request of the loop
    read_header: str = ""  # a response header each record keeps (``Record.header``)


@dataclass(frozen=True, slots=True)
class Burst:
    """``n`` requests to both proxies all at once, each given up after ``timeout_s``.

    For what only concurrency shows (a connection pool's limits): the order of the answers
    inside a burst is not compared, only what they were.
    """

    label: str
    n: int
    timeout_s: float = REQUEST_TIMEOUT_S


Step = SetMode | SetDns | Sleep | Requests | Burst


@dataclass(frozen=True, slots=True)
class Scenario:
    """Istio YAML (``{port}`` stands for the upstreams' shared port) and a timeline."""

    yaml: str
    upstreams: tuple[Upstream, ...]
    steps: tuple[Step, ...]
    locality: str = "us-east1"
    labels: tuple[tuple[str, str], ...] = ()
    concurrency: int = 1
    host: str = "mydb.com"

    def yaml_for(self, port: int) -> str:
        return self.yaml.replace("{port}", str(port))

    @property
    def proxy(self) -> Proxy:
        return Proxy(locality=self.locality, labels=dict(self.labels))


# --- what happened ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One request: which proxy, which loop, when, and what served it."""

    proxy: str
    loop: str
    index: int
    t: float  # seconds since the timeline started
    elapsed: float  # how long the answer took, in seconds
    status: int
    served_by: str | None  # the stand-in that answered 200, None for a failure
    detail: str = ""  # for a failure: who answered, or the start of Envoy's own body
    header: str = ""  # the value of the loop's ``read_header`` ("" when absent)

    @property
    def token(self) -> str:
        return self.served_by or f"<{self.status}>"

    @property
    def shown(self) -> str:
        slow = f" ({self.elapsed:.2f}s)" if self.elapsed >= 0.1 else ""
        return (
            f"{self.token} {self.detail}"[: 34 - len(slow)] if self.detail else self.token
        ) + slow


@dataclass(slots=True)
class Run:
    scenario: Scenario
    port: int
    reference_config: dict[str, object]
    records: list[Record] = field(default_factory=list)

    def loop(self, label: str, proxy: str) -> list[Record]:
        return [r for r in self.records if r.loop == label and r.proxy == proxy]

    def tokens(self, label: str, proxy: str) -> list[str]:
        return [r.token for r in self.loop(label, proxy)]

    def failures(self, label: str, proxy: str) -> int:
        return sum(r.served_by is None for r in self.loop(label, proxy))

    def served(self, label: str, proxy: str) -> Counter[str]:
        return Counter(r.served_by for r in self.loop(label, proxy) if r.served_by)

    def side_by_side(self, label: str) -> str:
        """Both sequences of a loop, one request per line, mismatches marked."""
        ref, ours = self.loop(label, REFERENCE), self.loop(label, EXTPROC)
        lines = [f"loop {label!r}:  i     t  {'reference':<36} extproc"]
        for i in range(max(len(ref), len(ours))):
            a = ref[i].shown if i < len(ref) else "-"
            b = ours[i].shown if i < len(ours) else "-"
            t = (ref[i] if i < len(ref) else ours[i]).t
            same = i < len(ref) and i < len(ours) and ref[i].token == ours[i].token
            mark = "" if same else "   <-- differs"
            lines.append(f"  {i:>3} {t:>6.2f}  {a:<36} {b}{mark}")
        return "\n".join(lines)


# --- comparisons -----------------------------------------------------------------------------


def assert_same_sequence(run: Run, label: str) -> None:
    """The same endpoint served each request, and the same requests failed, on both proxies."""
    ref, ours = run.tokens(label, REFERENCE), run.tokens(label, EXTPROC)
    assert ref == ours, "sequences differ\n" + run.side_by_side(label)


def assert_no_more_failures(run: Run, label: str) -> tuple[int, int]:
    """extproc failed at most as many requests as the reference; returns (ours, reference)."""
    ours, ref = run.failures(label, EXTPROC), run.failures(label, REFERENCE)
    assert ours <= ref, f"extproc failed {ours} requests, the reference {ref}\n" + run.side_by_side(
        label
    )
    return ours, ref


def binomial_tolerance(p: float, *sizes: int) -> float:
    """4 standard deviations of a share (or a difference of shares) plus the floor."""
    variance = p * (1 - p) * sum(1 / n for n in sizes)
    return 4 * math.sqrt(variance) + SHARE_FLOOR


def assert_spread(run: Run, label: str, expected: Mapping[str, float]) -> None:
    """Each side's share of each endpoint is near ``expected``, and near the other side's."""
    ref, ours = run.served(label, REFERENCE), run.served(label, EXTPROC)
    n_ref, n_ours = sum(ref.values()), sum(ours.values())
    assert n_ref, "no successful request on the reference\n" + run.side_by_side(label)
    assert n_ours, "no successful request on extproc\n" + run.side_by_side(label)
    unexpected = (set(ref) | set(ours)) - set(expected)
    assert not unexpected, f"served by {unexpected}\n" + run.side_by_side(label)
    problems = []
    for name, p0 in expected.items():
        p_ref, p_ours = ref[name] / n_ref, ours[name] / n_ours
        for side, p, n in ((REFERENCE, p_ref, n_ref), (EXTPROC, p_ours, n_ours)):
            if abs(p - p0) > binomial_tolerance(p0, n):
                problems.append(f"{side}: {name} {p:.3f} vs theory {p0:.3f} (n={n})")
        pooled = (ref[name] + ours[name]) / (n_ref + n_ours)
        if abs(p_ref - p_ours) > binomial_tolerance(pooled, n_ref, n_ours):
            problems.append(f"{name}: reference {p_ref:.3f} vs extproc {p_ours:.3f}")
    assert not problems, (
        "; ".join(problems) + f"\nreference {dict(ref)}, extproc {dict(ours)}\n"
        f"{run.side_by_side(label)}"
    )


# --- the runner ------------------------------------------------------------------------------


class Blackhole:
    """An address whose connects never complete: a listener with a full accept queue.

    ``listen(0)`` admits one connection to the accept queue; our own plug connection fills it,
    and nothing is ever accepted. Linux then drops every further SYN (``tcp_conn_request``:
    accept queue full), so a client's connect hangs until its own timeout, as towards a host
    that silently drops packets.
    """

    def __init__(self, ip: str, port: int) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._plug = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((ip, port))
            self._listener.listen(0)
            self._plug.settimeout(1.0)
            self._plug.connect((ip, port))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._plug.close()
        self._listener.close()


class _Upstreams:
    """The stand-ins (and black holes), all on one port so one YAML port fits every IP."""

    def __init__(self, specs: Sequence[Upstream]) -> None:
        self._specs = specs
        self.port = 0
        self.stand_ins: dict[str, StandIn] = {}
        self._blackholes: list[Blackhole] = []

    async def __aenter__(self) -> _Upstreams:
        for attempt in range(20):
            self.port = free_port(self._specs[0].ip)
            try:
                for spec in self._specs:
                    if spec.blackhole:
                        self._blackholes.append(Blackhole(spec.ip, self.port))
                    else:
                        stand_in = StandIn(spec.name, spec.ip, self.port)
                        await stand_in.start()
                        self.stand_ins[spec.name] = stand_in
                return self
            except OSError as exc:
                await self._close()
                if exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _close(self) -> None:
        for blackhole in self._blackholes:
            blackhole.close()
        self._blackholes.clear()
        for stand_in in self.stand_ins.values():
            await stand_in.stop()
        self.stand_ins.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()


async def _get(
    address: tuple[str, int],
    host: str,
    timeout_s: float = REQUEST_TIMEOUT_S,
    headers: tuple[tuple[str, str], ...] = (),
) -> tuple[int, dict[str, str], str]:
    """``GET /`` on a new connection, read by ``content-length``.

    ``extproc.sandbox.client.get`` reads until the server closes, and Envoy closes some local
    replies only after its ``delayed_close_timeout`` (1 s): that would stretch the timeline.
    """
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    request = f"GET / HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n".encode()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length else reader.read())
            return int(head[0].split(" ", 2)[1]), headers, body.decode("utf-8", "replace")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        return 0, {}, f"request failed: {exc!r}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _request(
    proxy: str,
    address: tuple[str, int],
    host: str,
    label: str,
    index: int,
    t: float,
    timeout_s: float = REQUEST_TIMEOUT_S,
    extra: tuple[tuple[str, str], ...] = (),
    read_header: str = "",
) -> Record:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    status, headers, body = await _get(address, host, timeout_s, extra)
    elapsed = loop.time() - sent
    served_by = headers.get("x-served-by", "")
    header = headers.get(read_header, "") if read_header else ""
    if status == 200 and served_by:
        return Record(proxy, label, index, t, elapsed, status, served_by, header=header)
    detail = f"from {served_by}" if served_by else " ".join(body.split())
    return Record(proxy, label, index, t, elapsed, status, None, detail, header)


async def _lua_errors(stack: Stack) -> int:
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    name = "http.extproc_ingress.lua.errors"
    reply = await get(stack.envoy.admin_address, "admin", f"/stats?filter=^{name}$")
    for line in reply.body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


async def run_scenario(scenario: Scenario, data_path: DataPath) -> Run:
    """Replay ``scenario`` on the reference Envoy and on extproc; every request recorded."""
    async with DnsResponder({}, ttl_s=1) as dns, _Upstreams(scenario.upstreams) as upstreams:
        names: dict[str, list[str]] = {}
        for spec in scenario.upstreams:
            for name in spec.dns:
                names.setdefault(name, []).append(spec.ip)
        for name, ips in names.items():
            dns.set_records(name, ips)
        yaml_text = scenario.yaml_for(upstreams.port)
        bootstrap = render_reference(
            yaml_text,
            scenario.proxy,
            listen=("127.0.0.1", free_port()),
            dns_resolver=dns.address,
        )
        run = Run(scenario, upstreams.port, bootstrap)
        reference = ReferenceEnvoy(bootstrap, concurrency=scenario.concurrency)
        stack = Stack(
            load_policy_text(yaml_text, "scenario.yaml"),
            Settings(
                listen=HostPort("127.0.0.1", free_port()),
                admin=HostPort("127.0.0.1", 0),
                dns_resolver=dns.address,
                concurrency=scenario.concurrency,
                data_path=data_path,
                workload=Workload(
                    locality=Locality.parse(scenario.locality), labels=scenario.labels
                ),
            ),
        )
        try:
            await asyncio.gather(reference.start(), stack.start())
            # Each first resolution of a name is a host update that Envoy delivers at once and
            # that opens its 1 s update merge window: an ejection in the first second would
            # wait for it. A sidecar is rarely that young; start the timeline once it is over.
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, reference.ready_at + MERGE_WINDOW_S - loop.time()))
            await _replay(scenario, run, upstreams, dns, reference.listen, stack.settings.listen)
            # Captured by pytest and shown with a failure: the whole run, side by side.
            for label in dict.fromkeys(r.loop for r in run.records):
                print(run.side_by_side(label))
            if data_path is DataPath.LUA:
                # Every Lua error fails open and hides a bug: none may happen in any scenario.
                assert await _lua_errors(stack) == 0
        finally:
            with contextlib.suppress(Exception):
                await reference.stop()
            await stack.stop()
        return run


async def _replay(
    scenario: Scenario,
    run: Run,
    upstreams: _Upstreams,
    dns: DnsResponder,
    reference: tuple[str, int],
    ours: tuple[str, int],
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for step in scenario.steps:
        if isinstance(step, SetMode):
            upstreams.stand_ins[step.upstream].set_mode(step.mode)
        elif isinstance(step, SetDns):
            dns.set_records(step.name, list(step.ips))
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Burst):
            t = loop.time() - start
            proxies = ((REFERENCE, reference), (EXTPROC, ours))
            run.records += await asyncio.gather(
                *(
                    _request(name, address, scenario.host, step.label, i, t, step.timeout_s)
                    for i in range(step.n)
                    for name, address in proxies
                )
            )
        else:
            first = loop.time()
            for i in range(step.n):
                # A schedule, not a pause after each request: slow answers do not stretch it.
                await asyncio.sleep(max(0.0, first + i * step.spacing_s - loop.time()))
                t = loop.time() - start
                run.records += await asyncio.gather(
                    *(
                        _request(
                            name,
                            address,
                            scenario.host,
                            step.label,
                            i,
                            t,
                            extra=step.headers,
                            read_header=step.read_header,
                        )
                        for name, address in ((REFERENCE, reference), (EXTPROC, ours))
                    )
                )
