"""Config shapes beyond the seed's on a real Envoy: wildcard hosts, several ServiceEntries and
DestinationRules, portLevelSettings, connectionPool.tcp.connectTimeout and DNS_ROUND_ROBIN."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.stack import Stack
from extproc.wire import DataPath

from .conftest import EAST, WEST, Region, StackFactory

pytestmark = pytest.mark.e2e

BLACKHOLE_IP = "127.0.0.13"


def _service_entry(name: str, hosts: list[str], east_port: int, west_port: int) -> str:
    """A ServiceEntry with the seed's two endpoints on HTTP ports 80 and 8080."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
spec:
  hosts: {hosts}
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 8080, name: http-alt, protocol: HTTP}}
  resolution: DNS
  endpoints:
  - address: {EAST}
    locality: us-east1
    ports: {{http: {east_port}, http-alt: {east_port}}}
  - address: {WEST}
    locality: us-west
    ports: {{http: {west_port}, http-alt: {west_port}}}
"""


def _destination_rule(name: str, host: str, traffic_policy: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
spec:
  host: "{host}"
  trafficPolicy:
{traffic_policy}"""


# Fails over on the first 5xx; a long ejection so nothing comes back during a test.
OUTLIER = """\
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"""


async def _loop(stack: Stack, authority: str, count: int) -> list[Reply]:
    return [await get(stack.settings.listen, authority) for _ in range(count)]


def _served(replies: list[Reply]) -> list[str]:
    return [r.served_by or f"<{r.status}>" for r in replies]


def _max_failed(data_path: DataPath) -> int:
    # A 503 answer costs one request on ext_proc, at most one per Envoy worker (2) on lua.
    return 2 if data_path is DataPath.LUA else 1


async def _after_failover(stack: Stack, authority: str, count: int) -> list[Reply]:
    """Requests sent once every worker has had to ask for a new table.

    A lua worker routes on its table for ``table_ttl_ms`` before asking again, so the worker
    that did not see the failure may still send one request to the ejected host, and not
    necessarily among the first few of a loop. After a TTL every worker refreshes first.
    """
    await asyncio.sleep(2 * stack.settings.table_ttl_ms / 1000)
    return await _loop(stack, authority, count)


async def test_a_wildcard_service_entry_serves_the_hosts_under_it(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    east, west = regions["east"].port, regions["west"].port
    exact = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: exact
spec:
  hosts: [db.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: {WEST}, ports: {{http: {west}}}}}]
"""
    stack = await start_stack(
        "---\n".join(
            [
                _service_entry("wild", ["*.example.com"], east, west),
                _destination_rule("wild", "*.example.com", OUTLIER),
                exact,
            ]
        )
    )

    # The wildcard DestinationRule's failover keeps every host under it on us-east1.
    assert _served(await _loop(stack, "a.example.com", 4)) == [EAST] * 4
    assert _served(await _loop(stack, "x.y.example.com:8080", 2)) == [EAST] * 2
    # An exact host wins over the wildcard.
    assert _served(await _loop(stack, "db.example.com", 2)) == [WEST] * 2
    # The wildcard needs a label in front; other hosts land on the catch-all 404.
    assert [r.status for r in await _loop(stack, "example.com", 1)] == [404]
    assert [r.status for r in await _loop(stack, "a.example.com.evil.org", 1)] == [404]


async def test_two_service_entries_each_get_their_own_destination_rule(
    regions: dict[str, Region], start_stack: StackFactory, data_path: DataPath
) -> None:
    east, west = regions["east"].port, regions["west"].port
    round_robin = "    loadBalancer: {simple: ROUND_ROBIN}\n"
    stack = await start_stack(
        "---\n".join(
            [
                _service_entry("one", ["one.com"], east, west),
                _service_entry("two", ["two.com"], east, west),
                _destination_rule("one", "one.com", OUTLIER),
                _destination_rule("two", "two.com", round_robin),
            ]
        )
    )
    assert _served(await _loop(stack, "one.com", 6)) == [EAST] * 6
    assert set(_served(await _loop(stack, "two.com", 20))) == {EAST, WEST}

    regions["east"].servers[0].set_mode(Mode.FAIL_503)

    # one.com ejects us-east1 and fails over; two.com has no outlier detection, so us-east1
    # keeps its share there and its 503s reach the client.
    one = await _loop(stack, "one.com", 10)
    assert 1 <= sum(r.status == 503 for r in one) <= _max_failed(data_path)
    assert _served(await _after_failover(stack, "one.com", 6)) == [WEST] * 6
    two = Counter(_served(await _loop(stack, "two.com", 20)))
    assert set(two) == {EAST, WEST}, two


async def test_port_level_outlier_detection_applies_to_its_port_only(
    regions: dict[str, Region], start_stack: StackFactory, data_path: DataPath
) -> None:
    east, west = regions["east"].port, regions["west"].port
    port_level = """\
    portLevelSettings:
    - port: {number: 8080}
      outlierDetection:
        consecutive5xxErrors: 1
        interval: 1s
        baseEjectionTime: 30s
        maxEjectionPercent: 100
"""
    stack = await start_stack(
        _service_entry("db", ["mydb.com"], east, west)
        + "---\n"
        + _destination_rule("db", "mydb.com", port_level)
    )
    # Port 8080 has outlier detection, so locality failover: us-east1 only.
    assert _served(await _loop(stack, "mydb.com:8080", 6)) == [EAST] * 6
    # Port 80 has none: one priority, both regions.
    assert set(_served(await _loop(stack, "mydb.com", 20))) == {EAST, WEST}

    regions["east"].servers[0].set_mode(Mode.FAIL_503)

    alt = await _loop(stack, "mydb.com:8080", 10)
    assert 1 <= sum(r.status == 503 for r in alt) <= _max_failed(data_path)
    assert _served(await _after_failover(stack, "mydb.com:8080", 6)) == [WEST] * 6
    # Nothing is ejected on port 80: us-east1 still answers there, with its 503s.
    plain = Counter(_served(await _loop(stack, "mydb.com:80", 20)))
    assert set(plain) == {EAST, WEST}, plain


async def _envoy_connect_timeout(stack: Stack, cluster_name: str) -> str:
    """The ``connect_timeout`` Envoy loaded for a cluster (admin ``/config_dump``)."""
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    reply = await get(stack.envoy.admin_address, "admin", "/config_dump?resource=static_clusters")
    body = reply.body
    if reply.headers.get("transfer-encoding") == "chunked":
        parts, rest = [], body
        while size := int(rest.partition("\r\n")[0], 16):
            rest = rest.partition("\r\n")[2]
            parts.append(rest[:size])
            rest = rest[size + 2 :]
        body = "".join(parts)
    for config in json.loads(body)["configs"]:
        if config["cluster"]["name"] == cluster_name:
            return str(config["cluster"]["connect_timeout"])
    raise AssertionError(f"{cluster_name} is not in Envoy's config")


@contextlib.contextmanager
def _unanswered_port(ip: str) -> Iterator[int]:
    """A loopback port where a TCP connect is never answered, like a firewalled host.

    Linux drops an incoming SYN while the listening socket's accept queue is full
    (``tcp_conn_request``: ``sk_acceptq_is_full`` -> drop, with the default
    ``tcp_abort_on_overflow = 0``); the client resends it after 1s, 3s, ..., so its connect
    hangs until its own timeout. ``listen(0)`` leaves room for one connection, and a few
    connections that are never accepted fill it. A refused connection (RST) would be a
    different failure, answered at once.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind((ip, 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        time.sleep(0.05)  # let the handshakes that fit complete
        probe = stack.enter_context(socket.socket())
        probe.settimeout(0.3)
        with pytest.raises(TimeoutError):
            probe.connect(address)  # the port really swallows connects
        yield int(address[1])


async def test_connect_timeout_makes_an_unanswered_connect_fail_over_fast(
    regions: dict[str, Region],
    start_stack: StackFactory,
    dns: DnsResponder,
) -> None:
    with _unanswered_port(BLACKHOLE_IP) as silent_port:
        dns.set_records(EAST, [BLACKHOLE_IP])
        connect_timeout = "    connectionPool:\n      tcp: {connectTimeout: 250ms}\n"
        stack = await start_stack(
            _service_entry("db", ["mydb.com"], silent_port, regions["west"].port)
            + "---\n"
            + _destination_rule("db", "mydb.com", OUTLIER + connect_timeout)
        )

        assert await _envoy_connect_timeout(stack, "outbound|80||mydb.com") == "0.250s"

        started = time.monotonic()
        first = await get(stack.settings.listen, "mydb.com", timeout_s=5.0)
        elapsed = time.monotonic() - started

        # With Istio's default 10s connect timeout the first attempt alone would take 10s.
        # One 250 ms attempt on us-east1, then Envoy's retry on the failover priority.
        assert first.served_by == WEST
        assert elapsed < 1.5, elapsed
        # The connect timeout counted as an error of us-east1 (a 503): it is ejected.
        started = time.monotonic()
        assert _served(await _loop(stack, "mydb.com", 5)) == [WEST] * 5
        assert time.monotonic() - started < 1.0


def _addresses(stack: Stack) -> set[str]:
    from extproc.server.admin import endpoints_json

    return {str(row["address"]) for row in endpoints_json(stack.app.table, stack.app.now())}


async def test_dns_round_robin_has_one_host_from_each_answer(
    regions: dict[str, Region], start_stack: StackFactory, dns: DnsResponder
) -> None:
    port = regions["east"].port
    second = StandIn(f"{EAST} (second address)", BLACKHOLE_IP, port)
    await second.start()
    names = {f"127.0.0.11:{port}": EAST, f"{BLACKHOLE_IP}:{port}": second.name}
    try:
        # The responder shuffles the records of each answer, as a round-robin DNS server does.
        dns.set_records(EAST, ["127.0.0.11", BLACKHOLE_IP])
        stack = await start_stack(f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [mydb.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{{address: {EAST}, ports: {{http: {port}}}}}]
""")
        # Envoy's LOGICAL_DNS: one host (the answer's first address) where STRICT_DNS has two.
        (host,) = _addresses(stack)
        assert _served(await _loop(stack, "mydb.com", 6)) == [names[host]] * 6

        # The next answers hold only the second address: the one host moves there (TTL 1 s).
        dns.set_records(EAST, [BLACKHOLE_IP])
        deadline = time.monotonic() + 5.0
        while _addresses(stack) != {f"{BLACKHOLE_IP}:{port}"}:
            assert time.monotonic() < deadline, _addresses(stack)
            await asyncio.sleep(0.1)
        assert _served(await _loop(stack, "mydb.com", 6)) == [second.name] * 6
    finally:
        await second.stop()
