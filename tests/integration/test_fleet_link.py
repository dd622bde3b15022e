"""Brains sharing ejections through a real Redis (``redis-server`` on loopback).

One brain's ejection reaches the others, which eject the host until the same end; a brain
that starts later catches up from the stored keys, before it serves; with Redis gone each
brain goes on alone, and the link comes back by itself; a Redis restarted empty gets the
ejections in force back from the brains that decided them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from extproc.clock import MonotonicClock
from extproc.core.cluster import ClusterState
from extproc.core.outlier import AttemptResult
from extproc.core.policy import Locality, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.server import fleet_link
from extproc.server.app import ServiceApp
from extproc.server.fleet_link import FleetLink
from extproc.settings import HostPort, Settings
from extproc.testing import endpoint, outlier, service
from tests.integration.test_module_link import until
from tests.redis_server import RedisServer, needs_redis

pytestmark = needs_redis

EAST, WEST = "10.0.0.1:443", "10.0.0.2:443"
SERVICE = service(
    endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
    outlier=outlier(max_ejection_percent=100, base_ejection_time_s=30.0),
)


class Brain:
    """One brain's table and its fleet link."""

    def __init__(self, url: str, name: str) -> None:
        self.clock = MonotonicClock()
        self.table = ServiceTable(
            Policy((SERVICE,)),
            Workload(Locality.parse("us-east1")),
            now=self.clock.now(),
            rng=random.Random(1),
        )
        self.changes = 0
        self.link = FleetLink(
            url, "shop", name, lambda: self.table, self.clock, on_change=self._changed
        )

    def _changed(self) -> None:
        self.changes += 1

    @property
    def cluster(self) -> ClusterState:
        return self.table.clusters[SERVICE.cluster_name]

    def fail_east(self) -> None:
        """This brain sees us-east1's 503 (threshold 1): its own ejection, announced."""
        self.cluster.record(EAST, AttemptResult.answer(503), self.clock.now(), finished=False)
        for event in self.cluster.drain_events():
            self.link.announce(event)

    def routes_to(self) -> str | None:
        pick = self.cluster.pick(self.clock.now())
        if pick.host is not None:
            self.cluster.release(pick.host)
        return pick.host


@pytest.fixture
async def brains(redis: RedisServer) -> AsyncIterator[Callable[[str], Brain]]:
    made: list[Brain] = []

    def make(name: str) -> Brain:
        brain = Brain(redis.url, name)
        brain.link.start()
        made.append(brain)
        return brain

    yield make
    for brain in made:
        await brain.link.stop()


async def test_one_brains_ejection_fails_the_other_brains_over(
    brains: Callable[[str], Brain],
) -> None:
    a, b, c = brains("a"), brains("b"), brains("c")
    await until(lambda: a.link.connected and b.link.connected and c.link.connected)
    assert b.routes_to() == EAST
    a.fail_east()
    await until(lambda: b.changes > 0 and c.changes > 0)
    assert b.routes_to() == WEST
    assert c.routes_to() == WEST
    # The news ends with a's ejection: 30 s, the receivers' own sweeps end it.
    left = b.cluster.ejection_time_left_s(EAST, b.clock.now())
    assert left is not None
    assert 29.0 < left <= 30.0


async def ejected_and_sent(a: Brain) -> Brain:
    """``a``, once connected, has ejected us-east1 and sent the news to Redis."""
    await until(lambda: a.link.connected)
    a.fail_east()
    await until(lambda: not a.link._outbox)
    return a


async def test_a_brain_that_starts_later_catches_up_from_the_stored_keys(
    brains: Callable[[str], Brain],
) -> None:
    await ejected_and_sent(brains("a"))
    late = brains("late")
    await until(lambda: late.changes > 0)
    assert late.routes_to() == WEST


async def test_with_redis_gone_each_brain_goes_on_alone_and_the_link_comes_back(
    redis: RedisServer, brains: Callable[[str], Brain]
) -> None:
    a, b = brains("a"), brains("b")
    await until(lambda: a.link.connected and b.link.connected)
    await redis.kill()
    await until(lambda: not a.link.connected and not b.link.connected)
    a.fail_east()  # decided alone: a fails over at once, b does not hear of it yet
    assert a.routes_to() == WEST
    assert b.routes_to() == EAST
    await redis.start()
    await until(lambda: a.link.connected and b.link.connected, timeout_s=10.0)
    # a's queued news goes out on reconnect.
    await until(lambda: b.changes > 0, timeout_s=5.0)
    assert b.routes_to() == WEST


async def test_a_foreign_or_malformed_message_is_counted_never_applied(
    brains: Callable[[str], Brain],
) -> None:
    b = brains("b")
    assert b.link.receive(b"{not json") is None
    assert b.link.receive(b'{"v": 1}') is None
    assert sum(b.link.refused.values()) == 2
    assert b.routes_to() == EAST
    [refused] = [m for m in b.link.collect() if m.name == "extproc_fleet_messages_refused"]
    assert sum(sample.value for sample in refused.samples) == 2


async def stored_keys(redis: RedisServer) -> list[bytes]:
    """The fleet's keys in ``redis`` now."""
    client = aioredis.from_url(redis.url)
    try:
        return [key async for key in client.scan_iter(match="extproc:fleet:*")]
    finally:
        await client.aclose()


async def test_an_idle_link_counts_no_message_of_its_own_pings(
    brains: Callable[[str], Brain], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_link, "PING_S", 0.02)
    b = brains("b")
    await until(lambda: b.link.connected)
    await asyncio.sleep(0.3)  # some 15 pings, each answered on the subscription
    assert b.link.received == 0
    assert not b.link.refused


async def test_a_redis_restarted_empty_gets_the_ejections_in_force_back_for_later_brains(
    redis: RedisServer, brains: Callable[[str], Brain]
) -> None:
    a = await ejected_and_sent(brains("a"))
    await redis.kill()
    await redis.start()  # no persistence: the key is gone
    assert await stored_keys(redis) == []
    await until(lambda: a.link.connected, timeout_s=10.0)
    assert len(await stored_keys(redis)) == 1
    late = brains("late")
    await until(lambda: late.changes > 0)
    assert late.routes_to() == WEST


async def test_a_brain_restarted_under_its_own_id_reads_its_own_ejection_back(
    brains: Callable[[str], Brain],
) -> None:
    a = await ejected_and_sent(brains("a"))
    await a.link.stop()
    again = brains("a")  # a fresh table, the same --proxy-id
    assert again.routes_to() == EAST
    await until(lambda: again.changes > 0)
    assert again.routes_to() == WEST


async def test_a_starting_service_reads_the_stored_ejections_before_it_serves(
    redis: RedisServer, brains: Callable[[str], Brain]
) -> None:
    await ejected_and_sent(brains("a"))
    app = ServiceApp(
        Policy((SERVICE,)),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            admin=HostPort("127.0.0.1", 0),
            sync_port=0,
            shutdown_grace_s=0,
            workload=Workload(Locality.parse("us-east1")),
            shared_state=redis.url,
            fleet="shop",
            proxy_id="restarted",
        ),
    )
    await app.start()
    try:
        # Ejected before the first push to Envoy: no request can reach us-east1.
        assert app.table.clusters[SERVICE.cluster_name].ejection_time_left_s(EAST, app.now())
    finally:
        await app.stop()


async def test_the_link_stops_whenever_it_is_stopped(redis: RedisServer) -> None:
    # Stopped at every moment of its start (connect, subscribe, catch-up, listen): a
    # cancellation redis-py's writes lose must not keep it running.
    for step in range(60):
        brain = Brain(redis.url, f"b{step}")
        brain.link.start()
        await asyncio.sleep(step * 0.0002)
        task = brain.link._task
        stopping = asyncio.create_task(brain.link.stop())
        done, _ = await asyncio.wait([stopping], timeout=2.0)
        if not done:
            assert task is not None
            task.cancel()  # end it all the same, then fail
            await asyncio.wait([stopping], timeout=2.0)
        assert done, f"stopped {step * 0.2:g} ms after its start, the link ran on"
