"""A VirtualService ``corsPolicy`` on a real Envoy, on every data path: Envoy's CORS filter
answers a preflight before any endpoint is chosen, and adds the CORS headers to answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from extproc.sandbox import StandIn
from extproc.sandbox.client import get

from .conftest import StackFactory

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example.com"


def _config(port: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        "metadata: {name: mydb}\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  location: MESH_EXTERNAL\n"
        f"  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n"
        "  resolution: STATIC\n"
        "  endpoints: [{address: 127.0.6.1, locality: us-east1}]\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata: {name: mydb}\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  http:\n"
        "  - route: [{destination: {host: mydb.com}}]\n"
        "    corsPolicy:\n"
        f"      allowOrigins: [{{exact: '{ORIGIN}'}}]\n"
        "      allowMethods: [GET, PUT]\n"
        "      maxAge: 24h\n"
        "      unmatchedPreflights: IGNORE\n"
    )


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    async with StandIn("db", "127.0.6.1", 0) as stand_in:
        yield stand_in


async def test_a_preflight_is_answered_by_envoy_and_an_answer_gets_the_cors_headers(
    start_stack: StackFactory, upstream: StandIn
) -> None:
    stack = await start_stack(_config(upstream.address[1]))
    preflight = {"origin": ORIGIN, "access-control-request-method": "PUT"}
    reply = await get(stack.settings.listen, "mydb.com", method="OPTIONS", headers=preflight)
    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert reply.headers["access-control-allow-methods"] == "GET,PUT"
    assert reply.headers["access-control-max-age"] == "86400"
    assert sum(upstream.requests_served.values()) == 0  # no endpoint was chosen
    answer = await get(stack.settings.listen, "mydb.com", headers={"origin": ORIGIN})
    assert answer.status == 200
    assert answer.served_by == "db"
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    # unmatchedPreflights: IGNORE: a preflight from another origin is answered too, without
    # the CORS headers, and never forwarded.
    other = {"origin": "https://evil.example", "access-control-request-method": "PUT"}
    reply = await get(stack.settings.listen, "mydb.com", method="OPTIONS", headers=other)
    assert "access-control-allow-origin" not in reply.headers
    assert sum(upstream.requests_served.values()) == 1
