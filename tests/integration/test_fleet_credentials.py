"""Only the fleet's brains publish: a real ``redis-server`` that speaks TLS only, with an ACL
user for the fleet and the default user off.

The fleet's user may do what the link does and nothing else (SUBSCRIBE and PING on the
fleet's channel, SCAN, GET and SET on its keys, PUBLISH). A brain with the user, its
password and the CA (``rediss://fleet:secret@.../0?ssl_ca_certs=FILE``) shares ejections;
one with a wrong password, without TLS or without the CA is refused: it says so in one log
line, decides alone, and never applies or publishes anything. A client without the
credentials, or another application's user, cannot write the fleet's channel or keys. No
log line shows the password.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError
from structlog.testing import capture_logs

from extproc.server import fleet_link
from tests.integration.test_fleet_link import EAST, WEST, Brain
from tests.integration.test_module_link import until
from tests.redis_server import RedisServer, RedisTls, needs_redis, redis_server

pytestmark = needs_redis

PASSWORD = "s3cret-fleet-pw"
#: What the link needs, on the fleet ``shop``'s keys and channel only (the README's rule).
FLEET_USER = (
    f"fleet on >{PASSWORD} resetchannels ~extproc:fleet:shop:* &extproc:fleet:shop "
    "-@all +subscribe +ping +scan +get +set +publish"
)
#: Another application's user on the same Redis.
OTHER_USER = "other on >other-pw resetchannels ~other:* &other:* +@all"
CHANNEL = "extproc:fleet:shop"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    tls = RedisTls.make(tmp_path)
    async for server in redis_server(tls=tls, users=[FLEET_USER, OTHER_USER, "default off"]):
        yield server


def _url(redis: RedisServer, *, password: str = PASSWORD, scheme: str = "rediss") -> str:
    assert redis.tls is not None
    query = f"?ssl_ca_certs={redis.tls.ca}" if scheme == "rediss" else ""
    return f"{scheme}://fleet:{password}@127.0.0.1:{redis.port}/0{query}"


@pytest.fixture
async def brains() -> AsyncIterator[Callable[[str, str], Brain]]:
    made: list[Brain] = []

    def make(url: str, name: str) -> Brain:
        brain = Brain(url, name)
        brain.link.start()
        made.append(brain)
        return brain

    yield make
    for brain in made:
        await brain.link.stop()


async def _keys(client: Any) -> list[bytes]:
    return [key async for key in client.scan_iter(match="extproc:fleet:*")]


async def test_brains_with_the_fleets_user_over_tls_share_ejections(
    redis: RedisServer, brains: Callable[[str, str], Brain]
) -> None:
    with capture_logs() as logs:
        a, b = brains(_url(redis), "a"), brains(_url(redis), "b")
        await until(lambda: a.link.connected and b.link.connected)
        a.fail_east()
        await until(lambda: b.changes > 0)
    assert b.routes_to() == WEST
    connected = [line for line in logs if line["event"] == "fleet.connected"]
    assert len(connected) == 2
    assert connected[0]["redis"].startswith(f"rediss://fleet:***@127.0.0.1:{redis.port}/0")
    assert PASSWORD not in repr(logs)


@pytest.mark.parametrize(
    "how",
    ["wrong password", "no TLS", "TLS without the CA", "no user"],
)
async def test_a_brain_the_redis_refuses_says_so_once_and_never_applies_or_publishes(
    redis: RedisServer,
    brains: Callable[[str, str], Brain],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    monkeypatch.setattr(fleet_link, "RETRY_S", 0.02)  # many refusals in the test's time
    assert redis.tls is not None
    url = {
        "wrong password": _url(redis, password="wrong-password"),
        "no TLS": _url(redis, scheme="redis"),
        "TLS without the CA": f"rediss://fleet:{PASSWORD}@127.0.0.1:{redis.port}/0",
        "no user": redis.url,
    }[how]
    good_url = _url(redis)
    with capture_logs() as logs:
        a, watcher = brains(good_url, "a"), brains(good_url, "watcher")
        refused = brains(url, "refused")
        await until(lambda: a.link.connected and watcher.link.connected)
        await until(lambda: any(line["event"] == "fleet.lost" for line in logs))
        # The fleet's news does not reach it.
        a.fail_east()
        await until(lambda: watcher.changes > 0)
        await asyncio.sleep(0.1)
        assert refused.changes == 0
        assert refused.routes_to() == EAST
        # It decides alone: its own failure ejects us-east1 here, and the fleet hears nothing.
        refused.fail_east()
        assert refused.routes_to() == WEST
        await asyncio.sleep(0.3)  # some 15 more refusals
    assert not refused.link.connected
    assert watcher.link.received == 1  # a's
    lost = [line for line in logs if line["event"] == "fleet.lost"]
    assert len(lost) == 1, lost
    assert lost[0]["redis"] == fleet_link.redact(url)
    assert PASSWORD not in repr(logs)
    assert "wrong-password" not in repr(logs)
    # Only a's ejection is stored.
    client = aioredis.from_url(good_url)
    try:
        [key] = await _keys(client)
        stored = await client.get(key)
        assert isinstance(stored, bytes)
        assert b'"proxy":"a"' in stored
    finally:
        await client.aclose()


async def test_without_the_fleets_credentials_no_client_writes_its_channel_or_keys(
    redis: RedisServer, brains: Callable[[str, str], Brain]
) -> None:
    watcher = brains(_url(redis), "watcher")
    await until(lambda: watcher.link.connected)
    assert redis.tls is not None
    ca = f"?ssl_ca_certs={redis.tls.ca}"
    # RESP2, so that the PUBLISH itself is refused, not the RESP3 handshake.
    anonymous = aioredis.from_url(f"rediss://127.0.0.1:{redis.port}/0{ca}", protocol=2)
    other = aioredis.from_url(f"rediss://other:other-pw@127.0.0.1:{redis.port}/0{ca}")
    fleet_member = aioredis.from_url(_url(redis))
    forged = b'{"v": 1}'
    try:
        # The fleet's user writes its own fleet only.
        with pytest.raises(NoPermissionError):
            await fleet_member.publish("extproc:fleet:another", forged)
        with pytest.raises(AuthenticationError, match="Authentication required"):
            await anonymous.publish(CHANNEL, forged)
        with pytest.raises(NoPermissionError):
            await other.publish(CHANNEL, forged)
        with pytest.raises(NoPermissionError):
            await other.set(f"{CHANNEL}:x|10.0.0.1:443", forged)
        assert await other.publish("other:news", b"hi") == 0  # its own channel it may
    finally:
        await anonymous.aclose()
        await other.aclose()
        await fleet_member.aclose()
    await asyncio.sleep(0.1)
    assert watcher.link.received == 0
