"""Live reload of ``extproc up`` under a running request loop, on both data paths.

The loop sends about 40 requests a second to mydb.com while east is ejected: a new
connection per request, as the seed's curl loop does, and one keep-alive connection, which
must survive Envoy's hot restart by being closed between two requests, never during one.
Then, without stopping the loop:

(a) a reload that changes only outlier settings: no Envoy restart, the table is swapped and
    east stays ejected;
(b) a reload that adds a second ServiceEntry host: Envoy is hot restarted, the new host is
    served, east stays ejected;
(c) a config with a YAML syntax error, then one with a semantic error: both rejected, the
    same table object keeps serving, the same Envoy runs.

Every request of the loop must succeed, all of them on west.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extproc.core.change import PolicyChange
from extproc.demo import free_port
from extproc.istio import load_policy
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server import stack as stack_module
from extproc.server.admin import endpoints_json
from extproc.server.envoy_process import HotRestart
from extproc.server.reload import ConfigReloader
from extproc.server.stack import Stack
from extproc.wire import DataPath

from .conftest import EAST, WEST, Region, StackFactory, first_200, start_extproc_up
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

OTHER = "dynamodb.eu-west-1.amazonaws.com"
OTHER_IP = "127.0.0.13"


def other_entry(port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: other}}
spec:
  hosts: [other.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints:
  - {{address: {OTHER}, locality: eu-west, ports: {{http: {port}}}}}
"""


async def keep_alive_get(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, address: tuple[str, int]
) -> tuple[Reply, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """One request on a kept-alive connection (opened when None); the connection to use
    next, None when the server closed it (``connection: close``)."""
    try:
        if conn is None:
            conn = await asyncio.open_connection(*address)
        reader, writer = conn
        writer.write(b"GET / HTTP/1.1\r\nhost: mydb.com\r\n\r\n")
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        if conn is not None:
            conn[1].close()
        return Reply(0, f"keep-alive request failed: {exc!r}", {}), None
    reply = Reply(int(lines[0].split(" ", 2)[1]), body.decode(), headers)
    if headers.get("connection", "").lower() == "close":
        writer.close()
        return reply, None
    return reply, conn


@dataclass
class RequestLoop:
    """Requests at a steady pace until stopped; every reply kept."""

    stack: Stack
    pause_s: float = 0.05
    replies: list[Reply] = field(default_factory=list)
    kept_alive: list[Reply] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._new_connections()),
            asyncio.create_task(self._keep_alive()),
        ]

    async def _new_connections(self) -> None:
        while not self._stop.is_set():
            self.replies.append(await get(self.stack.settings.listen, "mydb.com"))
            await asyncio.sleep(self.pause_s)

    async def _keep_alive(self) -> None:
        conn = None
        while not self._stop.is_set():
            reply, conn = await keep_alive_get(conn, self.stack.settings.listen)
            self.kept_alive.append(reply)
            await asyncio.sleep(self.pause_s)
        if conn is not None:
            conn[1].close()

    async def run_for(self, seconds: float) -> None:
        count = len(self.replies)
        await asyncio.sleep(seconds)
        assert len(self.replies) > count  # the loop is really running

    async def stop(self) -> list[Reply]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.replies + self.kept_alive


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def east_row(stack: Stack, port: int) -> dict[str, Any]:
    rows = endpoints_json(stack.app.table, stack.app.now())
    return next(r for r in rows if r["address"] == f"127.0.0.11:{port}")


@pytest.fixture
async def other(dns: DnsResponder) -> Any:
    server = StandIn(OTHER, OTHER_IP, 0)
    await server.start()
    dns.set_records(OTHER, [OTHER_IP])
    try:
        yield server
    finally:
        await server.stop()


async def eject_east(stack: Stack, east: StandIn, port: int) -> None:
    """Make east answer 503 until the brain ejects it, then heal it (it stays ejected)."""
    east.set_mode(Mode.FAIL_503)
    async with asyncio.timeout(10):
        while not east_row(stack, port)["ejected"]:
            await get(stack.settings.listen, "mydb.com")
    east.set_mode(Mode.HEALTHY)


async def test_reloads_under_a_request_loop_lose_no_request(
    tmp_path: Path,
    regions: dict[str, Region],
    other: StandIn,
    start_stack: StackFactory,
) -> None:
    east_port, west_port = regions["east"].port, regions["west"].port
    text = seed(east_port, west_port, base="60s")
    config = tmp_path / "mesh.yaml"
    config.write_text(text)
    stack = await start_stack(text)
    changes: list[PolicyChange] = []

    async def apply(policy: Any) -> PolicyChange:
        changes.append(await stack.reload(policy))
        return changes[-1]

    reloader = ConfigReloader(config, load_policy, apply, metrics=stack.app.metrics)
    await eject_east(stack, regions["east"].servers[0], east_port)
    loop = RequestLoop(stack)
    loop.start()
    await loop.run_for(1.0)
    assert stack.envoy is not None
    first_envoy = stack.envoy.pid

    # (a) outlier settings only: the service swaps its table, Envoy stays.
    table = stack.app.table
    config.write_text(text.replace("consecutive5xxErrors: 1", "consecutive5xxErrors: 2"))
    assert await reloader.reload()
    await loop.run_for(1.5)
    outlier_only = changes[-1]
    swapped = stack.app.table is not table
    envoy_after_a = stack.envoy.pid
    east_after_a = east_row(stack, east_port)

    # (b) a second ServiceEntry host: Envoy is hot restarted with the new bootstrap.
    config.write_text(text + "---\n" + other_entry(other.address[1]))
    assert await reloader.reload()
    other_replies = [await get(stack.settings.listen, "other.com") for _ in range(3)]
    await loop.run_for(3.0)
    added = changes[-1]
    envoy_after_b = stack.envoy.pid
    east_after_b = east_row(stack, east_port)

    # (c) a syntax error, then a semantic error: nothing changes.
    table = stack.app.table
    config.write_text(text.replace("  - mydb.com\n", "  - [mydb.com\n"))
    syntax_ok = await reloader.reload()
    config.write_text(text.replace("interval: 1s", "interval: 1x"))
    semantic_ok = await reloader.reload()
    await loop.run_for(1.5)
    replies = await loop.stop()

    assert outlier_only.changed == ("outbound|80||mydb.com",)
    assert not outlier_only.envoy_restarted
    assert swapped
    assert envoy_after_a == first_envoy
    assert east_after_a["ejected"] is True
    assert east_after_a["num_ejections"] == 1
    assert added.added == ("outbound|80||other.com",)
    assert added.envoy_restarted
    assert envoy_after_b != first_envoy
    assert [r.served_by for r in other_replies] == [OTHER] * 3
    assert east_after_b["ejected"] is True
    assert east_after_b["num_ejections"] == 1
    assert (syntax_ok, semantic_ok) == (False, False)
    assert stack.app.table is table
    assert stack.envoy.pid == envoy_after_b
    failed = [r for r in replies if r.status != 200]
    assert failed == []
    assert {r.served_by for r in replies} == {WEST}
    assert len(loop.replies) > 100
    metrics = stack.app.metrics.exposition().decode()
    assert 'extproc_config_reloads_total{result="ok"} 2.0' in metrics
    assert 'extproc_config_reloads_total{result="rejected"} 2.0' in metrics


async def test_extproc_up_reloads_on_sighup_and_leaves_no_process_behind(
    tmp_path: Path, regions: dict[str, Region], other: StandIn, dns: DnsResponder
) -> None:
    text = seed(regions["east"].port, regions["west"].port)
    config = tmp_path / "mesh.yaml"
    config.write_text(text)
    listen = ("127.0.0.1", free_port())
    proc = await start_extproc_up(
        config,
        listen,
        ("127.0.0.1", 0),
        "--watch-interval-s",
        "0",
        "--drain-time-s",
        "1",
        dns_resolver=dns.address,
        stdout=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")},
    )
    assert proc.stderr is not None
    try:
        await first_200(listen, "mydb.com")
        before = await get(listen, "other.com")
        envoys = _children_of(proc.pid)

        config.write_text(text + "---\n" + other_entry(other.address[1]))
        proc.send_signal(signal.SIGHUP)
        after = await first_200(listen, "other.com")
        during = _children_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)

    log = err.decode()
    assert before.status == 404
    assert after.served_by == OTHER
    assert len(envoys) == 1
    assert envoys[0] in during  # the old Envoy drains next to the new one
    assert '"envoy_restarted": true' in log
    assert '"reason": "signal"' in log
    assert proc.returncode == 0
    assert _children_of(proc.pid) == []


lua_only = pytest.mark.parametrize("data_path", [DataPath.LUA], ids=["lua"], indirect=True)


@lua_only
async def test_without_hot_restart_envoy_still_starts_and_only_envoy_changes_are_refused(
    tmp_path: Path,
    regions: dict[str, Region],
    other: StandIn,
    start_stack: StackFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parent(**fields: Any) -> HotRestart:
        # An epoch with no Envoy before it: Envoy exits at once, as it does where hot
        # restart cannot work (no /dev/shm, no Unix domain sockets).
        return HotRestart(**{**fields, "epoch": 7, "base_id": 4242})

    monkeypatch.setattr(stack_module, "HotRestart", no_parent)
    text = seed(regions["east"].port, regions["west"].port)
    config = tmp_path / "mesh.yaml"
    config.write_text(text)
    stack = await start_stack(text)
    reloader = ConfigReloader(config, load_policy, stack.reload, metrics=stack.app.metrics)
    assert stack.envoy is not None
    table = stack.app.table

    config.write_text(text + "---\n" + other_entry(other.address[1]))
    refused = await reloader.reload()
    unchanged_table = stack.app.table is table
    config.write_text(text.replace("consecutive5xxErrors: 1", "consecutive5xxErrors: 3"))
    applied = await reloader.reload()
    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(3)]

    assert stack.envoy.hot_restart is False
    assert (refused, unchanged_table) == (False, True)
    assert applied is True
    assert stack.app.table.policy.services[0].outlier_detection is not None
    assert stack.app.table.policy.services[0].outlier_detection.consecutive_5xx_errors == 3
    assert [r.served_by for r in replies] == [EAST] * 3
