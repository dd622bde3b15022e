"""The attribution table (``tests/attribution.py``) driven through a real Envoy, both data paths.

Every case gets its own service (``<case>.test``) with its own hosts: a stand-in that does
what the case says, for some a second host in us-west that a retry reaches, and for one a
host in us-east1/zone-b between them (three priorities: a retry leaves each in turn).
One request per case; what the service records (every ``ClusterState.record``) is compared
with the table. On ext_proc, what Envoy reports to the classifier is compared too, and on
module what the router's upstream log gave the module for each attempt, so the table's
inputs are Envoy's, not guesses.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from extproc.core.cluster import ClusterState
from extproc.core.outcome import Outcome
from extproc.core.outlier import AttemptResult
from extproc.sandbox.client import get
from extproc.server import module_link as module_link_module
from extproc.server import servicer as servicer_module
from extproc.server import stack as stack_module
from extproc.server.module_region import Record as ModuleRecord
from extproc.wire import DataPath
from tests.attribution import CASES, OK, UF, Case, Logged, Role, Upstream, normal

from .conftest import StackFactory

pytestmark = pytest.mark.e2e

DRIVEN = tuple(case for case in CASES if not case.not_in_envoy)
_LATE_BODY = b"partial"
#: The lua path's extra request that carries a worker's success counts: always a 200.
FLUSH_HEADER = "x-attribution-flush"


async def _serve(behaviour: Upstream, status: int, reader: Any, writer: Any) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if FLUSH_HEADER.encode() in head:
            behaviour, status = Upstream.ANSWER, 200
        if behaviour is Upstream.GARBAGE:
            writer.write(b"HTTP/1.1 abc\r\n\r\n")
        elif behaviour is Upstream.LATE_RESET:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + _LATE_BODY)
        elif behaviour is not Upstream.CLOSE:
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".encode()
            )
        await writer.drain()
        if behaviour is Upstream.LATE_RESET:
            await asyncio.sleep(0.05)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _Hosts:
    """The stand-in hosts of every case, on 127.0.0.1; refused ports are bound, not listening."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.refused: list[socket.socket] = []

    async def host(self, behaviour: Upstream, status: int) -> int:
        if behaviour is Upstream.REFUSE:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.refused.append(sock)
            return int(sock.getsockname()[1])

        async def handle(reader: Any, writer: Any) -> None:
            await _serve(behaviour, status, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for sock in self.refused:
            sock.close()


@pytest.fixture
async def hosts() -> AsyncIterator[_Hosts]:
    stand_ins = _Hosts()
    yield stand_ins
    await stand_ins.close()


Ports = dict[Role, int]
#: Each role's locality, seen from us-east1: priorities 0, 1 (zone-b) and 2 (us-west).
_LOCALITY = {Role.CHOSEN: "us-east1", Role.MIDDLE: "us-east1/zone-b", Role.OTHER: "us-west"}


def _yaml(case: Case, ports: Ports) -> str:
    endpoints = "".join(
        f"  - address: 127.0.0.1\n    locality: {_LOCALITY[role]}\n    ports:\n      http: {port}\n"
        for role, port in ports.items()
    )
    codes = f"      outlierDetectionHttpErrorCodes: {list(case.error_codes)}\n"
    return (
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\n"
        f"metadata:\n  name: {case.id}\nspec:\n  hosts:\n  - {case.id}.test\n"
        "  location: MESH_EXTERNAL\n  ports:\n  - number: 80\n    name: http\n"
        f"    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n{endpoints}---\n"
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        f"metadata:\n  name: {case.id}\nspec:\n  host: {case.id}.test\n  trafficPolicy:\n"
        # Never an ejection: every case routes to its picked host.
        "    outlierDetection:\n      consecutive5xxErrors: 1000\n      interval: 60s\n"
        "      baseEjectionTime: 1s\n" + (codes if case.error_codes else "") + "---\n"
    )


def _cluster_name(case: Case) -> str:
    return f"outbound|80||{case.id}.test"


def _no_admission(overflow: set[str]) -> Any:
    """``render_bootstrap`` with circuit breakers that admit no request to ``overflow``."""
    real = stack_module.render_bootstrap

    def render(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bootstrap: dict[str, Any] = real(*args, **kwargs)
        for cluster in bootstrap["static_resources"]["clusters"]:
            if cluster["name"] in overflow:
                cluster["circuit_breakers"] = {
                    "thresholds": [{"max_requests": 0, "max_pending_requests": 0}]
                }
        return bootstrap

    return render


Recorded = dict[Role, tuple[AttemptResult, ...]]
Record = tuple[str, str, AttemptResult]
Reported = tuple[int, str, int, int, bool]


def _spy_on_records(monkeypatch: pytest.MonkeyPatch) -> list[Record]:
    """Every ``ClusterState.record`` either data path (and the access log) makes, in order."""
    records: list[Record] = []
    real = ClusterState.record

    def record(
        self: ClusterState, host: str, result: AttemptResult, now: float, *, finished: bool = True
    ) -> None:
        records.append((self.service.cluster_name, host, result))
        real(self, host, result, now, finished=finished)

    monkeypatch.setattr(ClusterState, "record", record)
    return records


def _spy_on_the_classifier(
    monkeypatch: pytest.MonkeyPatch, running: list[str]
) -> dict[str, Reported]:
    """What Envoy reported to the ext_proc classifier, by the case running then."""
    reported: dict[str, Reported] = {}
    real = servicer_module.classify

    def classify(
        status: int, code_details: str, flags: int, attempt_count: int, *, moved: bool = False
    ) -> Outcome:
        reported[running[-1]] = (status, code_details, flags, attempt_count, moved)
        return real(status, code_details, flags, attempt_count, moved=moved)

    monkeypatch.setattr(servicer_module, "classify", classify)
    return reported


def _spy_on_attempts(monkeypatch: pytest.MonkeyPatch) -> list[ModuleRecord]:
    """Every attempt record the module path applies (its inputs: Envoy's upstream log)."""
    attempts: list[ModuleRecord] = []
    real = module_link_module.attempt_results

    def attempt_results(record: ModuleRecord) -> tuple[AttemptResult, ...]:
        attempts.append(record)
        return real(record)

    monkeypatch.setattr(module_link_module, "attempt_results", attempt_results)
    return attempts


@pytest.mark.parametrize(
    "data_path", list(DataPath), ids=[p.value for p in DataPath], indirect=True
)
async def test_every_attribution_case_is_recorded_as_the_table_says(
    start_stack: StackFactory,
    hosts: _Hosts,
    data_path: DataPath,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports: dict[str, Ports] = {}
    for case in DRIVEN:
        ports[case.id] = {Role.CHOSEN: await hosts.host(case.chosen_does, case.answer)}
        if case.middle_does is not None:
            ports[case.id][Role.MIDDLE] = await hosts.host(case.middle_does, 200)
        if case.other_does is not None:
            ports[case.id][Role.OTHER] = await hosts.host(case.other_does, case.other_answer)
    overflow = {_cluster_name(c) for c in DRIVEN if c.chosen_does is Upstream.OVERFLOW}
    monkeypatch.setattr(stack_module, "render_bootstrap", _no_admission(overflow))

    records = _spy_on_records(monkeypatch)
    running: list[str] = []
    reported = _spy_on_the_classifier(monkeypatch, running)
    attempts = _spy_on_attempts(monkeypatch)
    stack = await start_stack(
        "".join(_yaml(case, ports[case.id]) for case in DRIVEN), concurrency=1
    )
    ttl_s = stack.settings.table_ttl_ms / 1000
    for case in DRIVEN:
        running.append(case.id)
        await get(stack.settings.listen, f"{case.id}.test", timeout_s=5)
        if case.late_reset:
            await _wait_for(functools.partial(_reset_recorded, records, case, ports))
        if data_path is DataPath.LUA and case.chosen_does is not Upstream.REFUSE:
            # A worker sends its success counts with the service's next sync, one TTL later;
            # this request's own success stays in the worker.
            await asyncio.sleep(ttl_s * 3)
            await get(
                stack.settings.listen, f"{case.id}.test", headers={FLUSH_HEADER: "1"}, timeout_s=5
            )
    # Envoy's gRPC access log sends its buffer once a second: no late entry may be missed.
    await asyncio.sleep(1.5)

    observed = {case.id: _recorded(records, case, ports) for case in DRIVEN}
    expected = {case.id: _expected(case, data_path) for case in DRIVEN}
    assert {k: _short(v) for k, v in observed.items()} == {
        k: _short(v) for k, v in expected.items()
    }
    if data_path is DataPath.EXT_PROC:
        assert reported == {
            case.id: (case.status, case.details, case.flags, case.attempts, case.moved)
            for case in DRIVEN
        }
    if data_path is DataPath.MODULE:
        logged = {case.id: _logged(attempts, case, ports[case.id]) for case in DRIVEN}
        assert logged == {case.id: _sent(case) for case in DRIVEN}


def _logged(attempts: list[ModuleRecord], case: Case, ports: Ports) -> list[Logged]:
    """The case's attempt records, as the table writes what Envoy logs."""
    roles = {f"127.0.0.1:{port}": role for role, port in ports.items()}
    return [
        Logged(roles[record.address], record.status, record.flags)
        for record in attempts
        if record.address in roles
    ]


def _sent(case: Case) -> list[Logged]:
    """The attempts of ``case.logged`` the module sends as records: all but a clean answer
    from the picked host, the one host of the service's entry, which it counts instead."""
    codes = frozenset(case.error_codes) or frozenset(range(500, 600))

    def counted(attempt: Logged) -> bool:
        clean = attempt.status != 0 and attempt.flags == 0 and attempt.status not in codes
        return clean and attempt.on is Role.CHOSEN

    return [attempt for attempt in case.logged if not counted(attempt)]


def _recorded(records: list[Record], case: Case, ports: dict[str, Ports]) -> Recorded:
    codes = frozenset(case.error_codes)
    mine = [
        (host, normal(result, codes))
        for name, host, result in records
        if name == _cluster_name(case)
    ]
    return {
        role: tuple(result for host, result in mine if host == f"127.0.0.1:{port}")
        for role, port in ports[case.id].items()
    }


def _expected(case: Case, data_path: DataPath) -> Recorded:
    codes = frozenset(case.error_codes)
    chosen = tuple(normal(result, codes) for result in case.chosen)
    if data_path is DataPath.LUA and case.late_reset:
        # The worker's success count for the head arrives after the access log's entry,
        # which recorded the head's answer first (server/access_log.py): it repeats a success.
        chosen += (OK,)
    expected = {Role.CHOSEN: chosen}
    if case.middle_does is not None:
        # Only the module sees the middle attempt (the router's upstream log); the others
        # see the final response and the attempt count.
        sees_every_attempt = data_path is DataPath.MODULE
        expected[Role.MIDDLE] = tuple(normal(r, codes) for r in case.middle) * sees_every_attempt
    if case.other_does is not None:
        expected[Role.OTHER] = () if case.other is None else (normal(case.other, codes),)
    return expected


def _reset_recorded(records: list[Record], case: Case, ports: dict[str, Ports]) -> bool:
    """Whether the access log's reset reached the service (its last record for the host)."""
    return _recorded(records, case, ports)[Role.CHOSEN][-1:] == (UF,)


def _short(recorded: Recorded) -> dict[str, list[str]]:
    """Results as short words, for a readable diff."""

    def word(result: AttemptResult) -> str:
        return str(result.status) if result.status is not None else result.kind.value

    return {role.value: [word(r) for r in results] for role, results in recorded.items()}


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds or ``timeout_s`` passed (the assertion tells)."""
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
