"""The ext_proc servicer on a real grpc.aio server, driven as Envoy drives it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.core.outlier import AttemptResult
from extproc.core.policy import Locality, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.server.servicer import ExternalProcessor
from extproc.testing import (
    FakeClock,
    endpoint,
    outlier,
    request_headers,
    response_headers,
    routed_host,
    service,
)

EAST = "10.0.0.1:443"
WEST = "10.0.0.2:443"


class Harness:
    def __init__(self, max_ejection_percent: int) -> None:
        self.clock = FakeClock()
        policy = Policy(
            (
                service(
                    endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
                    outlier=outlier(
                        consecutive_5xx_errors=1, max_ejection_percent=max_ejection_percent
                    ),
                ),
            )
        )
        self.table = ServiceTable(
            policy, Workload(Locality.parse("us-east1")), now=self.clock.now(), rng=random.Random(7)
        )
        self.broken = False
        self.changes = 0  # on_change calls: the EDS pushes the service would make

    def note_change(self) -> None:
        self.changes += 1

    def current_table(self) -> ServiceTable:
        if self.broken:
            raise RuntimeError("boom")
        return self.table


Fixture = tuple["Harness", pb_grpc.ExternalProcessorStub]


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Fixture]:
    h = Harness(getattr(request, "param", 10))
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(h.current_table, h.clock.now, on_change=h.note_change), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield h, pb_grpc.ExternalProcessorStub(channel)
    await server.stop(0)


async def exchange(
    stub: pb_grpc.ExternalProcessorStub, *messages: pb.ProcessingRequest
) -> list[pb.ProcessingResponse]:
    call = stub.Process()
    answers = []
    for message in messages:
        await call.write(message)
        answers.append(await call.read())
    await call.done_writing()
    return answers


async def test_request_is_routed_by_dynamic_metadata_to_the_picked_host(harness: Fixture) -> None:
    _, stub = harness
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert routed_host(answer) == EAST
    assert not answer.request_headers.response.header_mutation.set_headers


async def test_unknown_authority_gets_an_immediate_404(harness: Fixture) -> None:
    _, stub = harness
    [answer] = await exchange(stub, request_headers("other.com"))
    assert answer.immediate_response.status.code == 404
    assert b"no ServiceEntry host" in answer.immediate_response.body
    assert routed_host(answer) is None


async def test_a_503_response_ejects_the_host_and_the_next_request_fails_over(
    harness: Fixture,
) -> None:
    h, stub = harness
    await exchange(stub, request_headers("mydb.com"), response_headers(503))
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert routed_host(answer) == WEST
    assert h.table.lookup("mydb.com").ejections_active == 1  # type: ignore[union-attr]


async def test_a_refused_connection_with_retries_counts_every_attempt(harness: Fixture) -> None:
    h, stub = harness
    await exchange(
        stub,
        request_headers("mydb.com"),
        response_headers(
            503,
            code_details="upstream_reset_before_response_started{x}",
            flags=0x8020,
            attempts=3,
            upstream=EAST,
        ),
    )
    [row] = [v for v in h.table.lookup("mydb.com").hosts(h.clock.now()) if v.address == EAST]  # type: ignore[union-attr]
    assert row.ejected
    assert row.consecutive_5xx == 2  # 1st attempt ejected (and reset); 2 more while ejected
    assert row.active_requests == 0


async def test_a_retry_that_left_the_picked_host_counts_its_failure_and_the_other_answer(
    harness: Fixture,
) -> None:
    # us-east1 refused; Envoy's retry left it (previous priorities) and us-west answered 200.
    h, stub = harness
    await exchange(
        stub, request_headers("mydb.com"), response_headers(200, attempts=2, upstream=WEST)
    )
    cluster = h.table.lookup("mydb.com")
    assert cluster is not None
    rows = {v.address: v for v in cluster.hosts(h.clock.now())}
    assert rows[EAST].ejected  # consecutive5xxErrors: 1, and a refused connect counts 503
    assert rows[EAST].num_ejections == 1
    assert not rows[WEST].ejected
    assert rows[WEST].consecutive_5xx == 0
    assert all(v.active_requests == 0 for v in rows.values())
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert routed_host(answer) == WEST


async def test_an_ejection_is_pushed_at_once_and_a_success_pushes_nothing(
    harness: Fixture,
) -> None:
    # Envoy's load balancer picks every retry from EDS health: it must learn of an ejection
    # with the response that caused it, not at the next sweep.
    h, stub = harness
    await exchange(stub, request_headers("mydb.com"), response_headers(200, upstream=EAST))
    assert h.changes == 0
    await exchange(stub, request_headers("mydb.com"), response_headers(503, upstream=EAST))
    assert h.changes == 1


@pytest.mark.parametrize("harness", [100], indirect=True)
async def test_a_503_from_the_host_a_retry_moved_to_is_counted_there(harness: Fixture) -> None:
    h, stub = harness
    await exchange(
        stub, request_headers("mydb.com"), response_headers(503, attempts=2, upstream=WEST)
    )
    cluster = h.table.lookup("mydb.com")
    assert cluster is not None
    rows = {v.address: v for v in cluster.hosts(h.clock.now())}
    assert rows[EAST].ejected
    assert rows[WEST].ejected


async def test_the_second_ejection_needs_max_ejection_percent(harness: Fixture) -> None:
    h, stub = harness
    cluster = h.table.lookup("mydb.com")
    assert cluster is not None
    for host in (EAST, WEST):
        cluster.record(host, AttemptResult.answer(503), h.clock.now())
    # The first ejection is always allowed; the second (2 of 2 = 100 % > 10 %) is refused.
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert routed_host(answer) == WEST


@pytest.mark.parametrize("harness", [100], indirect=True)
async def test_when_every_host_is_ejected_the_answer_is_no_healthy_upstream(
    harness: Fixture,
) -> None:
    h, stub = harness
    cluster = h.table.lookup("mydb.com")
    assert cluster is not None
    for host in (EAST, WEST):
        cluster.record(host, AttemptResult.answer(503), h.clock.now())
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert answer.immediate_response.status.code == 503
    assert answer.immediate_response.body == b"no healthy upstream"


async def test_an_error_inside_a_stream_fails_only_that_request(harness: Fixture) -> None:
    h, stub = harness
    h.broken = True
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert answer.immediate_response.status.code == 503
    assert b"internal error" in answer.immediate_response.body
    h.broken = False
    [answer] = await exchange(stub, request_headers("mydb.com"))
    assert routed_host(answer) == EAST


async def test_an_aborted_stream_releases_its_active_request(harness: Fixture) -> None:
    h, stub = harness
    call = stub.Process()
    await call.write(request_headers("mydb.com"))
    await call.read()
    call.cancel()
    cluster = h.table.lookup("mydb.com")
    assert cluster is not None
    for _ in range(50):
        if all(v.active_requests == 0 for v in cluster.hosts(h.clock.now())):
            break
        await asyncio.sleep(0.02)
    assert all(v.active_requests == 0 for v in cluster.hosts(h.clock.now()))
