"""``extproc demo``: the seed's story, played on this machine with real parts.

Istio's "Configuring failover for external services" (the seed) runs a client in region
us-east1 against ``mydb.com``, backed by DynamoDB in us-east-1 and us-west-1. Here the two
DynamoDB endpoints are local stand-ins on 127.0.0.11 and 127.0.0.12, a local DNS responder
resolves their real names to those addresses, and a real Envoy with the ext_proc service
routes ``mydb.com``. The YAML is the seed's, with two changes said out loud: the
stand-ins' ports (no root needed for port 80), and short outlier times (interval 1s,
baseEjectionTime 3s instead of 15s and 1m) so the story plays in seconds.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extproc.core.policy import Locality, Workload
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.admin import endpoints_json, format_status
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"
EAST_IP = "127.0.0.11"
WEST_IP = "127.0.0.12"
WORKLOAD = "us-east1"

SERVICE_ENTRY = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - mydb.com
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  endpoints:
  - address: dynamodb.us-east-1.amazonaws.com
    locality: us-east1
    ports:
      http: {east_port}
  - address: dynamodb.us-west-1.amazonaws.com
    locality: us-west
    ports:
      http: {west_port}
"""

DESTINATION_RULE = """\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: mydynamodb
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: {interval}  # the seed: 15s
      baseEjectionTime: {base}  # the seed: 1m
"""


def seed_yaml(
    east_port: int,
    west_port: int,
    *,
    outlier: bool = True,
    interval: str = "1s",
    base: str = "3s",
) -> str:
    """The seed's ServiceEntry (and DestinationRule) with the stand-ins' ports filled in."""
    text = SERVICE_ENTRY.format(east_port=east_port, west_port=west_port)
    if outlier:
        text += "---\n" + DESTINATION_RULE.format(interval=interval, base=base)
    return text


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PICK = 20000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel hands out for a bind to port 0 (Linux's default 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for Envoy's listener, which cannot take 0).

    It is picked below the kernel's ephemeral range: a port taken from that range and closed
    again is the next one the kernel gives a later bind to port 0 (the service's admin, an
    upstream), and Envoy then fails to bind its listener. No port is handed out twice.
    """
    low, high = _LOWEST_PICK, _ephemeral_low()
    if high - low < 1000:
        low, high = 1024, 65536
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _show(reply: Reply) -> str:
    if reply.status == 200:
        return reply.body.strip()
    return reply.body.strip() or f"HTTP {reply.status}"


class _Story:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        self.out(f"  {'OK ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def curl(listen: tuple[str, int]) -> str:
    """The curl command that sends ``mydb.com`` to the demo's Envoy, ready to paste."""
    return f"curl -sS --connect-to mydb.com:80:{HostPort(*listen)} http://mydb.com"


def status_command(admin: tuple[str, int]) -> str:
    return f"extproc status --admin {HostPort(*admin)}"


async def _loop(
    stack: Stack, count: int, pause_s: float, out: Callable[[str], None]
) -> list[Reply]:
    command = curl(stack.settings.listen)
    out(f"$ for i in {{1..{count}}}; do {command}; echo; sleep {pause_s:g}; done")
    replies = []
    for _ in range(count):
        reply = await get(stack.settings.listen, "mydb.com")
        out(_show(reply))
        replies.append(reply)
        await asyncio.sleep(pause_s)
    return replies


def _status_table(stack: Stack) -> str:
    return format_status(endpoints_json(stack.app.table, stack.app.now()))


@dataclass(frozen=True, slots=True)
class _Scene:
    """What every step of the story plays on: the stand-ins, the addresses, the output."""

    east: StandIn
    ports: tuple[int, int]
    settings: Settings
    pause_s: float
    story: _Story

    def say(self, line: str) -> None:
        self.story.out(line)


async def run_demo(
    pause_s: float = 0.3,
    out: Callable[[str], None] | None = None,
    data_path: DataPath = DataPath.LUA,
) -> int:
    """Play the seed's four steps; 0 when every step turned out as the seed shows.

    Step 3 turns out better than the seed on both data paths: Envoy retries the refused
    request on us-west, so no request fails (a current Istio does the same).
    """
    story = _Story(out or (lambda line: print(line, flush=True)))
    async with (
        DnsResponder({EAST: [EAST_IP], WEST: [WEST_IP]}, ttl_s=5) as dns,
        StandIn(EAST, EAST_IP, 0) as east,
        StandIn(WEST, WEST_IP, 0) as west,
    ):
        # Fixed ports (free a moment ago), so that every step's Stack is at the addresses
        # printed here.
        settings = Settings(
            listen=HostPort("127.0.0.1", free_port()),
            admin=HostPort("127.0.0.1", free_port()),
            envoy_admin=HostPort("127.0.0.1", free_port()),
            dns_resolver=HostPort(*dns.address),
            envoy_log_level="error",
            data_path=data_path,
            workload=Workload(Locality.parse(WORKLOAD)),
        )
        scene = _Scene(east, (east.address[1], west.address[1]), settings, pause_s, story)
        _introduce(scene)
        await _without_outlier_detection(scene)
        await _with_outlier_detection(scene)
    if story.failures:
        story.out(f"\n{len(story.failures)} step(s) did not turn out as the seed shows.")
        return 1
    story.out("\nEvery step turned out as the seed shows.")
    return 0


def _introduce(scene: _Scene) -> None:
    settings, say = scene.settings, scene.say
    assert settings.dns_resolver is not None
    say(
        f"Data path: {settings.data_path.value}. Workload locality: {WORKLOAD}."
        f" DNS responder on {settings.dns_resolver}:"
    )
    say(f"  {EAST} -> {EAST_IP} (stand-in on port {scene.ports[0]})")
    say(f"  {WEST} -> {WEST_IP} (stand-in on port {scene.ports[1]})")
    say(
        f"Envoy listens on {settings.listen};"
        f" status view http://{settings.admin}/clusters;"
        f" envoy admin http://{settings.envoy_admin}/"
    )
    say("While it runs, try from another terminal:")
    say(f"  $ {curl(settings.listen)}")
    say(f"  $ {status_command(settings.admin)}")


async def _without_outlier_detection(scene: _Scene) -> None:
    """Step 1: the ServiceEntry alone spreads requests over both regions."""
    scene.say("\n== 1. ServiceEntry only: no outlierDetection, so no locality failover ==")
    se = seed_yaml(*scene.ports, outlier=False)
    scene.say(se)
    policy = load_policy_text(se, "serviceentry.yaml")
    async with Stack(policy, scene.settings) as stack:
        replies = await _loop(stack, 10, scene.pause_s, scene.say)
    served = Counter(r.served_by for r in replies)
    scene.story.expect(served[EAST] > 0 and served[WEST] > 0, "requests go to both regions")


async def _with_outlier_detection(scene: _Scene) -> None:
    """Steps 2-4: prefer the local region, fail over when it refuses, come back after."""
    say, story, pause_s = scene.say, scene.story, scene.pause_s
    say("\n== 2. DestinationRule with outlierDetection: prefer the workload's region ==")
    failover = seed_yaml(*scene.ports)
    say(failover[len(seed_yaml(*scene.ports, outlier=False)) :])
    policy = load_policy_text(failover, "failover.yaml")
    async with Stack(policy, scene.settings) as stack:
        replies = await _loop(stack, 5, pause_s, say)
        story.expect(all(r.served_by == EAST for r in replies), "every request goes to us-east1")

        say(f"\n== 3. {EAST} refuses connections (the seed points it at port 81) ==")
        scene.east.set_mode(Mode.REFUSE)
        replies = await _loop(stack, 5, pause_s, say)
        story.expect(
            all(r.served_by == WEST for r in replies),
            "every request fails over to us-west; the refused attempt was retried there,"
            " so none failed (the seed shows one connect error; Istio's Envoy, measured"
            " today, retries on us-west too)",
        )
        say(f"$ {status_command(stack.settings.admin)}")
        say(_status_table(stack))

        say(f"\n== 4. {EAST} is back: traffic returns once its ejection ends ==")
        scene.east.set_mode(Mode.HEALTHY)
        await _failback(stack, scene)


async def _failback(stack: Stack, scene: _Scene) -> None:
    """Step 4: the first request after the ejection's end lands on us-east1 again."""
    say, pause_s = scene.say, scene.pause_s
    say(
        "(the first ejection lasts baseEjectionTime = 3s; un-ejection happens at the next 1s sweep)"
    )
    say(f"$ while true; do {curl(stack.settings.listen)}; echo; sleep {pause_s:g}; done")
    back = None
    for attempt in range(int(10 / pause_s) + 1):
        reply = await get(stack.settings.listen, "mydb.com")
        say(_show(reply))
        if reply.served_by == EAST:
            back = attempt
            break
        await asyncio.sleep(pause_s)
    scene.story.expect(back is not None, "traffic is back on us-east1 after the ejection")
    if stack.settings.data_path is DataPath.LUA:
        say("(every Envoy worker refreshes its table within its 100 ms TTL)")
        await asyncio.sleep(0.2)
    replies = await _loop(stack, 3, pause_s, say)
    scene.story.expect(all(r.served_by == EAST for r in replies), "and stays there")


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo()))
