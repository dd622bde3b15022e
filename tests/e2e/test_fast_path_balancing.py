"""The fast path balances as Envoy's workers do: ROUND_ROBIN rotates, LEAST_REQUEST prefers
the host with fewer of the worker's requests in flight, RANDOM draws by weight."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator

import pytest

from extproc.sandbox import Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.stack import Stack
from extproc.wire import DataPath

from .conftest import StackFactory

pytestmark = pytest.mark.e2e

lua_only = pytest.mark.parametrize("data_path", [DataPath.LUA], ids=["lua"], indirect=True)

A = "a.mydb.test"
B = "b.mydb.test"
# A request that has not come back by then is held by the hanging stand-in (the other one
# answers in milliseconds).
_HELD_AFTER_S = 0.5


def _yaml(ports: tuple[int, int], simple: str, weights: tuple[int, int] = (1, 1)) -> str:
    """Two STATIC hosts of one locality (one priority), with ``loadBalancer.simple``."""
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: mydb}}
spec:
  hosts: [mydb.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.11, locality: us-east1, weight: {weights[0]}, ports: {{http: {ports[0]}}}}}
  - {{address: 127.0.0.13, locality: us-east1, weight: {weights[1]}, ports: {{http: {ports[1]}}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: mydb}}
spec:
  host: mydb.com
  trafficPolicy:
    loadBalancer: {{simple: {simple}}}
"""


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[StandIn, StandIn]]:
    a = StandIn(A, "127.0.0.11", 0)
    b = StandIn(B, "127.0.0.13", 0)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def _ports(hosts: tuple[StandIn, StandIn]) -> tuple[int, int]:
    return hosts[0].address[1], hosts[1].address[1]


async def _on_one_connection(stack: Stack, count: int) -> list[str]:
    """``count`` sequential keep-alive requests on one connection (so one Envoy worker):
    which stand-in served each."""
    reader, writer = await asyncio.open_connection(*stack.settings.listen)
    served = []
    try:
        for _ in range(count):
            writer.write(b"GET / HTTP/1.1\r\nhost: mydb.com\r\n\r\n")
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            await reader.readexactly(int(fields.get("content-length", "0")))
            assert head.startswith("http/1.1 200"), head
            served.append(fields["x-served-by"])
    finally:
        writer.close()
    return served


@lua_only
async def test_round_robin_alternates_exactly_on_one_worker(
    hosts: tuple[StandIn, StandIn], start_stack: StackFactory
) -> None:
    stack = await start_stack(_yaml(_ports(hosts), "ROUND_ROBIN"), concurrency=2)

    served = await _on_one_connection(stack, 12)

    # Two workers, but one connection is served by one of them, which rotates on its own.
    assert all(x != y for x, y in itertools.pairwise(served)), served
    assert collections.Counter(served) == {A: 6, B: 6}


@lua_only
async def test_weighted_round_robin_follows_the_earliest_deadline_schedule(
    hosts: tuple[StandIn, StandIn], start_stack: StackFactory
) -> None:
    stack = await start_stack(_yaml(_ports(hosts), "ROUND_ROBIN", weights=(3, 1)), concurrency=1)

    served = await _on_one_connection(stack, 16)

    # Weights 3:1: Envoy's EDF scheduler gives b every fourth pick (give or take one where
    # the deadlines tie, as doubles decide), never a draw's runs or clusters.
    b_at = [i for i, name in enumerate(served) if name == B]
    assert len(b_at) == 4, served
    assert all(3 <= y - x <= 5 for x, y in itertools.pairwise(b_at)), served


@lua_only
async def test_random_stays_a_draw(
    hosts: tuple[StandIn, StandIn], start_stack: StackFactory
) -> None:
    stack = await start_stack(_yaml(_ports(hosts), "RANDOM"), concurrency=1)

    served = await _on_one_connection(stack, 40)

    # Not a rotation (40 draws alternate exactly with probability 2^-39), both hosts drawn.
    assert any(x == y for x, y in itertools.pairwise(served)), served
    counts = collections.Counter(served)
    assert counts[A] >= 8, counts
    assert counts[B] >= 8, counts


async def _send(stack: Stack, pending: set[asyncio.Task[Reply]]) -> str | None:
    """One request on a new connection: who served it, or None while it is held (it stays
    in ``pending``)."""
    task = asyncio.create_task(get(stack.settings.listen, "mydb.com", timeout_s=60))
    done, _ = await asyncio.wait({task}, timeout=_HELD_AFTER_S)
    if not done:
        pending.add(task)
        return None
    reply = task.result()
    assert reply.status == 200, reply
    return reply.served_by


async def _hold(stack: Stack, count: int, pending: set[asyncio.Task[Reply]]) -> None:
    """Send requests until ``count`` are held by the hanging stand-in."""
    for _ in range(200):
        if len(pending) >= count:
            return
        await _send(stack, pending)
    raise AssertionError(f"only {len(pending)} requests held after 200")


async def _abandon(pending: set[asyncio.Task[Reply]]) -> None:
    """The clients of the held requests go away (their connections close)."""
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    pending.clear()


@lua_only
async def test_least_request_prefers_the_host_with_fewer_requests_in_flight(
    hosts: tuple[StandIn, StandIn], start_stack: StackFactory
) -> None:
    a, _ = hosts
    stack = await start_stack(_yaml(_ports(hosts), "LEAST_REQUEST"), concurrency=1)
    a.set_mode(Mode.HANG)
    pending: set[asyncio.Task[Reply]] = set()
    try:
        await _hold(stack, 3, pending)
        held_before = len(pending)

        served = [await _send(stack, pending) for _ in range(60)]

        # Two choices with replacement: a is taken only when both draws name it, 1 in 4
        # (mean 15 of 60); a uniform draw would send it 30.
        to_a = len(pending) - held_before
        assert served.count(None) == to_a
        assert served.count(B) == 60 - to_a
        assert to_a <= 24, served
    finally:
        await _abandon(pending)


@lua_only
async def test_least_request_forgets_requests_whose_client_went_away(
    hosts: tuple[StandIn, StandIn], start_stack: StackFactory
) -> None:
    a, _ = hosts
    stack = await start_stack(_yaml(_ports(hosts), "LEAST_REQUEST"), concurrency=1)
    a.set_mode(Mode.HANG)
    pending: set[asyncio.Task[Reply]] = set()
    try:
        await _hold(stack, 5, pending)
    finally:
        await _abandon(pending)  # no response ever reaches the script for these
    a.set_mode(Mode.HEALTHY)

    # Their streams ended without a response; the script releases them once Lua collects
    # their handles, which some hundreds of requests make it do. Until then a looks busier
    # and gets 1 in 4; released, both hosts are idle between sequential requests, and a gets
    # half (mean 50 of 100 against 25).
    shares = []
    for _ in range(20):
        replies = [await get(stack.settings.listen, "mydb.com") for _ in range(100)]
        assert {r.status for r in replies} == {200}
        shares.append(sum(r.served_by == A for r in replies))
        if shares[-1] >= 40:
            break
    assert shares[-1] >= 40, shares
