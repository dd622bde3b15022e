"""A VirtualService ``mirror`` on a real Envoy, on every data path: Envoy copies each
request to the mirror's cluster and drops the copy's answer, so a failing mirror fails no
client request and the primary keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from extproc.sandbox import Mode, StandIn
from extproc.sandbox.client import get

from .conftest import StackFactory

pytestmark = pytest.mark.e2e


def _config(port: int) -> str:
    entries = "".join(
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  hosts: [{name}.com]\n"
        "  location: MESH_EXTERNAL\n"
        f"  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n"
        "  resolution: STATIC\n"
        f"  endpoints: [{{address: {ip}, locality: us-east1}}]\n"
        for name, ip in (("mydb", "127.0.6.1"), ("shadow", "127.0.6.9"))
    )
    return entries + (
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata: {name: mydb}\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  http:\n"
        "  - route: [{destination: {host: mydb.com}}]\n"
        "    mirror: {host: shadow.com}\n"
    )


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[StandIn, StandIn]]:
    primary = StandIn("primary", "127.0.6.1", 0)
    await primary.start()
    shadow = StandIn("shadow", "127.0.6.9", primary.address[1])
    await shadow.start()
    try:
        yield primary, shadow
    finally:
        await shadow.stop()
        await primary.stop()


async def _served(stand_in: StandIn, n: int) -> int:
    """What ``stand_in`` answered once ``n`` copies arrived or a second passed."""
    for _ in range(100):
        if sum(stand_in.requests_served.values()) >= n:
            break
        await asyncio.sleep(0.01)
    return sum(stand_in.requests_served.values())


async def test_every_request_is_copied_to_the_mirror_and_its_answer_dropped(
    start_stack: StackFactory, upstreams: tuple[StandIn, StandIn]
) -> None:
    primary, shadow = upstreams
    stack = await start_stack(_config(primary.address[1]))
    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(10)]
    assert [r.body.strip() for r in replies] == ["healthy: primary"] * 10
    assert await _served(shadow, 10) == 10
    shadow.set_mode(Mode.FAIL_503)
    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(10)]
    assert [r.status for r in replies] == [200] * 10
    assert [r.body.strip() for r in replies] == ["healthy: primary"] * 10
