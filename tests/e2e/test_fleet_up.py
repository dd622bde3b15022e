"""Three ``extproc up`` processes behind one Redis (``--shared-state``), on every data path:
the seed's story for a fleet.

us-east1 refuses connections; one proxy sees it (Envoy retries the refused attempt on
us-west, so its client sees nothing) and the other two send us-east1 nothing from then on,
and fail no request. Redis is killed and restarted empty in the middle: no request fails,
every brain says so once each way, and the ejection in force is stored again. One proxy is
stopped and started again mid-ejection: it reads the ejection back before it serves and
sends us-east1 nothing either. At the ejection's end all three serve us-east1 again, at
about the same time.

What each proxy sent to us-east1 is read from its own Envoy's ``/clusters`` (the host's
``cx_total`` and ``rq_total``: a refused connect counts there and nowhere else), its brain's
state from the status view (``/endpoints``, ``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extproc.demo import free_port
from extproc.sandbox import DnsResponder, Mode
from extproc.sandbox.client import Reply, get
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath
from tests.integration.test_fleet_link import stored_keys
from tests.integration.test_module_link import until
from tests.redis_server import RedisServer, needs_redis

from .conftest import EAST, WEST, Region, first_200, start_extproc_up
from .seed_yaml import seed
from .test_seed_failover import curl_loop, served

pytestmark = [pytest.mark.e2e, needs_redis]

#: baseEjectionTime: long enough for Redis's restart and a proxy's restart inside it, on a
#: busy 2-core CI machine (measured: 2.5 s from the ejection to the restarted proxy's check,
#: 3 s with the other core busy); the sweep interval is the seed's test-sized 1 s.
BASE_S = 7.0
CLUSTER = "outbound|80||mydb.com"


@dataclass
class Up:
    """One ``extproc up`` of the fleet; ``settings`` holds the addresses it was given, so
    the e2e helpers that take a stack (``curl_loop``) take it too."""

    name: str
    process: asyncio.subprocess.Process
    settings: Settings
    envoy_admin: tuple[str, int]
    log: Path
    replies: list[Reply] = field(default_factory=list)
    _traffic: asyncio.Task[None] | None = None

    @property
    def admin(self) -> tuple[str, int]:
        return self.settings.admin

    async def endpoint(self, address: str) -> dict[str, Any]:
        """The brain's row for one host (``/endpoints``)."""
        reply = await get(self.admin, "admin", "/endpoints")
        rows: list[dict[str, Any]] = json.loads(reply.body)
        [row] = [r for r in rows if r["address"] == address]
        return row

    async def metric(self, name: str) -> float:
        reply = await get(self.admin, "admin", "/metrics")
        for line in reply.body.splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        return 0.0

    async def envoy_host(self, address: str) -> dict[str, str]:
        """One host of the cluster in this proxy's own Envoy's ``/clusters``."""
        reply = await get(self.envoy_admin, "admin", "/clusters")
        prefix = f"{CLUSTER}::{address}::"
        return {
            line[len(prefix) :].partition("::")[0]: line[len(prefix) :].partition("::")[2]
            for line in reply.body.splitlines()
            if line.startswith(prefix)
        }

    async def sent_to(self, address: str) -> int:
        """Connections and requests this proxy's Envoy sent ``address`` (refused ones too)."""
        host = await self.envoy_host(address)
        return int(host["cx_total"]) + int(host["rq_total"])

    def last_served_by(self, host: str) -> bool:
        return bool(self.replies) and self.replies[-1].served_by == host

    def start_traffic(self) -> None:
        """A request every 20 ms until ``stop_traffic``, each reply kept in order."""

        async def loop() -> None:
            while True:
                self.replies += await curl_loop(self, 1, pause_s=0.02)  # type: ignore[arg-type]

        self._traffic = asyncio.create_task(loop())

    async def stop_traffic(self) -> None:
        if self._traffic is not None:
            self._traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._traffic
            self._traffic = None

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        lines = [json.loads(t) for t in self.log.read_text().splitlines() if t.startswith("{")]
        return [line for line in lines if line.get("event") == event]

    async def stop(self) -> None:
        await self.stop_traffic()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


UpFactory = Callable[[str], Awaitable[Up]]


@pytest.fixture
async def fleet(
    tmp_path: Path,
    redis: RedisServer,
    dns: DnsResponder,
    data_path: DataPath,
    regions: dict[str, Region],
) -> AsyncIterator[UpFactory]:
    """Start one ``extproc up`` of the fleet ``shop`` (the seed, us-east1) on ``redis``."""
    config = tmp_path / "mydb.yaml"
    config.write_text(seed(regions["east"].port, regions["west"].port, base=f"{BASE_S:g}s"))
    ups: list[Up] = []

    async def start(name: str) -> Up:
        listen, admin = HostPort("127.0.0.1", free_port()), HostPort("127.0.0.1", free_port())
        envoy_admin = ("127.0.0.1", free_port())
        log = tmp_path / f"{name}-{len(ups)}.log"
        with log.open("wb") as out:
            process = await start_extproc_up(
                config,
                listen,
                admin,
                *("--data-path", data_path.value, "--envoy-admin", "{}:{}".format(*envoy_admin)),
                *("--shared-state", redis.url, "--fleet", "shop", "--proxy-id", name),
                dns_resolver=dns.address,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=out.fileno(),
            )
        up = Up(name, process, Settings(listen=listen, admin=admin), envoy_admin, log)
        ups.append(up)
        await first_200(listen)
        await _until(lambda: _connected(up), f"{name} linked to Redis", timeout_s=10.0)
        return up

    yield start
    await asyncio.gather(*(up.stop() for up in ups))
    for up in ups:  # pytest shows it when the test failed
        print(f"--- {up.log.name}:\n{up.log.read_text()[-3000:]}")


async def _until(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5.0
) -> None:
    """``until`` for a condition read over HTTP."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.05)


async def _connected(up: Up) -> bool:
    return await up.metric("extproc_fleet_connected") == 1.0


async def _ejected(up: Up, address: str) -> bool:
    return bool((await up.endpoint(address))["ejected"])


async def _unhealthy_in_envoy(up: Up, address: str) -> bool:
    """The brain's EDS push marked the host UNHEALTHY in this proxy's Envoy (every path
    routes on that cluster; the override of an UNHEALTHY host is not honoured)."""
    return "failed_eds_health" in (await up.envoy_host(address)).get("health_flags", "")


async def _no_connection(up: Up, address: str) -> bool:
    return (await up.envoy_host(address))["cx_active"] == "0"


async def _lua_errors(up: Up) -> int:
    name = "http.extproc_ingress.lua.errors"
    reply = await get(up.envoy_admin, "admin", f"/stats?filter=^{name}$")
    for line in reply.body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


async def test_three_up_processes_fail_over_and_back_together_through_redis(
    fleet: UpFactory, redis: RedisServer, regions: dict[str, Region], data_path: DataPath
) -> None:
    a, b, c = await asyncio.gather(fleet("a"), fleet("b"), fleet("c"))
    east_server = regions["east"].servers[0]
    east = f"127.0.0.11:{regions['east'].port}"
    for up in (a, b, c):
        assert served(await curl_loop(up, 1)) == [EAST]  # type: ignore[arg-type]

    # 1. us-east1 refuses connections and a sees it: its Envoy retries on us-west (a's
    #    client sees nothing), and a's brain ejects us-east1 for BASE_S.
    #    Entering REFUSE also resets the connections the warm-up left open: a request that
    #    took one in that instant would fail, on Istio's Envoy too (Istio's default retryOn
    #    has connect-failure, not reset), so the three Envoys close them first.
    east_server.set_mode(Mode.REFUSE)
    for up in (a, b, c):
        await _until(functools.partial(_no_connection, up, east), f"{up.name} closed them")
    assert served(await curl_loop(a, 1)) == [WEST]  # type: ignore[arg-type]
    assert await _ejected(a, east)
    assert int((await a.envoy_host(east))["cx_connect_fail"]) == 1
    # 2. The fleet hears of it: b's and c's Envoys have us-east1 UNHEALTHY, and from now on
    #    every request of the three goes to us-west.
    for up in (b, c):
        await _until(
            functools.partial(_unhealthy_in_envoy, up, east), f"us-east1 UNHEALTHY in {up.name}"
        )
    sent_before = {up.name: await up.sent_to(east) for up in (b, c)}
    for up in (a, b, c):
        up.start_traffic()

    # 3. Redis killed: every brain goes on alone (one log line), and comes back when it is
    #    restarted, empty; a, which decided the ejection, stores it again.
    await redis.kill()
    await _until(lambda: _none(_connected, a, b, c), "every brain sees Redis gone")
    await redis.start()
    await _until(lambda: _every(_connected, a, b, c), "every brain back", timeout_s=10.0)
    await _until(lambda: _has_keys(redis), "a stored its ejection again")

    # 4. c stopped and started again mid-ejection: it reads the key before it serves.
    assert await c.sent_to(east) == sent_before["c"]
    await c.stop()
    c_again = await fleet("c")
    assert await _ejected(c_again, east)
    c_again.start_traffic()
    await until(lambda: len(c_again.replies) >= 5)  # while us-east1 still refuses
    assert await c_again.sent_to(east) == 0
    assert await b.sent_to(east) == sent_before["b"]
    left = (await c_again.endpoint(east))["ejection_time_left_s"]
    assert left is not None, f"the ejection ended before c was back: raise BASE_S ({BASE_S:g})"

    # 5. us-east1 is back before the ejection's end; nobody sends it anything until then,
    #    and all three end the ejection within one sweep interval of each other.
    east_server.set_mode(Mode.HEALTHY)
    proxies = (a, b, c_again)
    ends, marks = await _uneject_times(proxies, east, timeout_s=left + 3.0)
    assert max(ends.values()) - min(ends.values()) < 1.5, ends
    # 6. Failback: each serves us-east1 again.
    for up in proxies:
        await until(functools.partial(up.last_served_by, EAST), timeout_s=3.0)
    if data_path is DataPath.LUA:
        assert [await _lua_errors(up) for up in proxies] == [0, 0, 0]
    for up in proxies:
        await up.stop_traffic()

    # Until its brain's end, each served its requests from us-west, and none failed.
    assert set(served(c.replies)) == {WEST}
    for up in proxies:
        assert set(served(up.replies[: marks[up.name]])) == {WEST}, up.name
    for up in (a, b, c, c_again):
        failed = [r for r in up.replies if r.status != 200]
        assert not failed, (up.name, failed[:3])
    for up in (a, b):
        assert len(up.log_lines("fleet.lost")) == 1, up.name
        assert [line["resumed"] for line in up.log_lines("fleet.connected")] == [False, True]


async def _uneject_times(
    proxies: tuple[Up, ...], address: str, timeout_s: float
) -> tuple[dict[str, float], dict[str, int]]:
    """When each brain was first seen with ``address`` un-ejected, and how many of its
    replies were in before it was last seen ejected (they went where the ejection says)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    ends: dict[str, float] = {}
    marks: dict[str, int] = {}
    while len(ends) < len(proxies):
        assert loop.time() < deadline, f"not un-ejected in time: {sorted(ends)}"
        for up in proxies:
            if up.name in ends:
                continue
            count = len(up.replies)
            if await _ejected(up, address):
                marks[up.name] = count
            else:
                ends[up.name] = loop.time()
        await asyncio.sleep(0.05)
    return ends, marks


async def _has_keys(redis: RedisServer) -> bool:
    return bool(await stored_keys(redis))


async def _every(predicate: Callable[[Up], Awaitable[bool]], *ups: Up) -> bool:
    return all(await asyncio.gather(*(predicate(up) for up in ups)))


async def _none(predicate: Callable[[Up], Awaitable[bool]], *ups: Up) -> bool:
    return not any(await asyncio.gather(*(predicate(up) for up in ups)))
