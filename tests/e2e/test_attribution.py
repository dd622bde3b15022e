"""The attribution table (``tests/attribution.py``) driven through a real Envoy, both data paths.

Every case gets its own service (``<case>.test``) with its own hosts: a stand-in that does
what the case says, and for some a second host in us-west (priority 1) that a retry reaches.
One request per case; what the service records (every ``ClusterState.record``) is compared
with the table. On ext_proc, what Envoy reports to the classifier is compared too, so the
table's inputs are Envoy's, not guesses.
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
from extproc.server import servicer as servicer_module
from extproc.server import stack as stack_module
from extproc.wire import DataPath
from tests.attribution import CASES, OK, UF, Case, Upstream, normal

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


def _yaml(case: Case, chosen: int, other: int | None) -> str:
    endpoints = (
        f"  - address: 127.0.0.1\n    locality: us-east1\n    ports:\n      http: {chosen}\n"
    )
    if other is not None:
        endpoints += (
            f"  - address: 127.0.0.1\n    locality: us-west\n    ports:\n      http: {other}\n"
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


Recorded = tuple[tuple[AttemptResult, ...], tuple[AttemptResult, ...]]
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


@pytest.mark.parametrize(
    "data_path", list(DataPath), ids=[p.value for p in DataPath], indirect=True
)
async def test_every_attribution_case_is_recorded_as_the_table_says(
    start_stack: StackFactory,
    hosts: _Hosts,
    data_path: DataPath,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports: dict[str, tuple[int, int | None]] = {}
    for case in DRIVEN:
        chosen = await hosts.host(case.chosen_does, case.answer)
        other = None
        if case.other_does is not None:
            other = await hosts.host(case.other_does, case.other_answer)
        ports[case.id] = (chosen, other)
    overflow = {_cluster_name(c) for c in DRIVEN if c.chosen_does is Upstream.OVERFLOW}
    monkeypatch.setattr(stack_module, "render_bootstrap", _no_admission(overflow))

    records = _spy_on_records(monkeypatch)
    running: list[str] = []
    reported = _spy_on_the_classifier(monkeypatch, running)
    stack = await start_stack(
        "".join(_yaml(case, *ports[case.id]) for case in DRIVEN), concurrency=1
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


def _recorded(
    records: list[Record],
    case: Case,
    ports: dict[str, tuple[int, int | None]],
) -> Recorded:
    codes = frozenset(case.error_codes)
    chosen, other = ports[case.id]
    mine = [
        (host, normal(result, codes))
        for name, host, result in records
        if name == _cluster_name(case)
    ]
    return (
        tuple(result for host, result in mine if host == f"127.0.0.1:{chosen}"),
        tuple(result for host, result in mine if host == f"127.0.0.1:{other}"),
    )


def _expected(case: Case, data_path: DataPath) -> Recorded:
    codes = frozenset(case.error_codes)
    chosen = tuple(normal(result, codes) for result in case.chosen)
    if data_path is DataPath.LUA and case.late_reset:
        # The worker's success count for the head arrives after the access log's entry,
        # which recorded the head's answer first (server/access_log.py): it repeats a success.
        chosen += (OK,)
    other = () if case.other is None else (normal(case.other, codes),)
    return chosen, other


def _reset_recorded(
    records: list[Record], case: Case, ports: dict[str, tuple[int, int | None]]
) -> bool:
    """Whether the access log's reset reached the service (its last record for the host)."""
    return _recorded(records, case, ports)[0][-1:] == (UF,)


def _short(recorded: Recorded) -> tuple[list[str], list[str]]:
    """Results as short words, for a readable diff."""

    def word(result: AttemptResult) -> str:
        return str(result.status) if result.status is not None else result.kind.value

    return [word(r) for r in recorded[0]], [word(r) for r in recorded[1]]


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds or ``timeout_s`` passed (the assertion tells)."""
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
