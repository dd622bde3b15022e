"""``connectionPool`` on a real Envoy, on every data path: its limits hold, and what overflows
is Envoy's 503, shown per cluster by ``/metrics`` and the status view, and no endpoint's result.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.sandbox import Mode
from extproc.sandbox.client import Reply, get
from extproc.server.stack import Stack

from .conftest import EAST, EXTPROC, Region, StackFactory
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

CLUSTER = "outbound|80||mydb.com"
POOL = """\
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRetries: 2}
"""
BURST = 6


async def _burst(stack: Stack) -> list[Reply]:
    """Requests sent together to an endpoint that answers none: the pool's limits decide."""
    return list(
        await asyncio.gather(
            *(get(stack.settings.listen, "mydb.com", timeout_s=3.0) for _ in range(BURST))
        )
    )


def _overflows(stack: Stack) -> dict[str, float]:
    text = stack.app.metrics.exposition().decode()
    return {
        sample.labels["cluster_name"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "extproc_upstream_rq_pending_overflow"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def _until(check: object, timeout_s: float = 5.0) -> None:
    assert callable(check)
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    assert check()


async def test_an_overflow_is_envoys_503_counted_per_cluster_and_ejects_nothing(
    regions: dict[str, Region],
    start_stack: StackFactory,
) -> None:
    east = regions["east"]
    stack = await start_stack(
        seed(east.port, regions["west"].port, base="30s") + POOL, concurrency=1
    )
    assert (await get(stack.settings.listen, "mydb.com")).served_by == EAST
    assert _overflows(stack) == {CLUSTER: 0}

    east.servers[0].set_mode(Mode.HANG)
    replies = await _burst(stack)
    # One request holds the only connection, one waits for it (both give up at the
    # client); the rest are over http1MaxPendingRequests: Envoy's 503, at once.
    assert Counter(r.status for r in replies) == {0: 2, 503: BURST - 2}, replies
    assert all("overflow" in r.body for r in replies if r.status == 503)
    # The data paths report the lua path's overflows with its next sync.
    east.servers[0].set_mode(Mode.HEALTHY)
    for _ in range(3):
        await asyncio.sleep(2 * stack.settings.table_ttl_ms / 1000)
        assert (await get(stack.settings.listen, "mydb.com")).served_by == EAST
    await _until(lambda: _overflows(stack) == {CLUSTER: BURST - 2})
    # No endpoint was ejected for it, and the status view says what overflowed.
    status = await asyncio.create_subprocess_exec(
        *EXTPROC,
        "status",
        "--admin",
        "{}:{}".format(*stack.app.admin_address),
        stdout=asyncio.subprocess.PIPE,
    )
    out = (await status.communicate())[0].decode()
    assert status.returncode == 0
    assert "FAILED" not in out
    assert f"{CLUSTER}: {BURST - 2} requests over the connection pool's limits" in out


def _fetch(address: tuple[str, int], path: str) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def _breakers(view: dict[str, Any]) -> Any:
    [status] = [c for c in view["cluster_statuses"] if c["name"] == CLUSTER]
    return status["circuit_breakers"]


def _breaker_lines(text: str) -> set[str]:
    return {
        line
        for line in text.splitlines()
        if line.startswith(f"{CLUSTER}::") and "_priority::" in line
    }


async def test_the_clusters_view_shows_the_pools_circuit_breakers_as_envoy_does(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port) + POOL)
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    ours, envoys = stack.app.admin_address, stack.envoy.admin_address
    json_path = "/clusters?format=json"
    our_json = json.loads(await asyncio.to_thread(_fetch, ours, json_path))
    envoy_json = json.loads(await asyncio.to_thread(_fetch, envoys, json_path))
    assert _breakers(our_json) == _breakers(envoy_json)
    our_text = _breaker_lines(await asyncio.to_thread(_fetch, ours, "/clusters"))
    assert our_text == _breaker_lines(await asyncio.to_thread(_fetch, envoys, "/clusters"))
    assert f"{CLUSTER}::default_priority::max_connections::1" in our_text
