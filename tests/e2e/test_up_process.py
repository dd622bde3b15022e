"""``extproc up`` as a process: one log format, no start-up noise, Envoy's death noticed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from extproc.demo import free_port
from extproc.sandbox import DnsResponder

from .conftest import Region, first_200, start_extproc_up
from .seed_yaml import seed

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


async def _up(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder, *extra: str
) -> tuple[asyncio.subprocess.Process, tuple[str, int]]:
    """``extproc up`` for the seed on free ports; the process and its listener."""
    config = tmp_path / "mydb.yaml"
    config.write_text(seed(regions["east"].port, regions["west"].port))
    listen, admin = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    proc = await start_extproc_up(config, listen, admin, *extra, dns_resolver=dns.address)
    return proc, listen


async def _gone(pids: list[int], timeout_s: float) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if not any(_alive(pid) for pid in pids):
            return True
        await asyncio.sleep(0.05)
    return False


async def _stderr_once_exited(proc: asyncio.subprocess.Process, timeout_s: float) -> bytes:
    """The process's stderr once it has exited; on a timeout, what it printed and what runs.

    The pipes are read while it runs, so a full pipe never holds it up.
    """
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = proc.stdout, proc.stderr
    reading = asyncio.gather(out.read(), err.read())
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        left = [_cmdline(pid) for pid in _descendants(proc.pid)]
        proc.kill()
        _, text = await reading
        raise AssertionError(
            f"still running after {timeout_s:g}s; its processes {left}; it printed:\n"
            + text.decode(errors="replace")[-4000:]
        ) from None
    _, text = await asyncio.wait_for(reading, timeout_s)
    return text


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _is_envoy(pid: int) -> bool:
    return "envoy" in Path(f"/proc/{pid}/cmdline").read_text()


async def test_up_logs_only_json_lines_when_stderr_is_not_a_terminal_and_no_limit_warning(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    proc, listen = await _up(tmp_path, regions, dns, "--envoy-log-level", "info")
    try:
        await first_200(listen)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    lines = err.decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    envoy = [r for r in records if str(r.get("logger", "")).startswith("envoy.")]
    assert envoy, "Envoy logged at info level"
    assert all({"timestamp", "level", "event"} <= r.keys() for r in records)
    # Plain lines are only the command's own messages to the user (prefixed), never Envoy's.
    plain = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith(("extproc up:", "warning:")) for line in plain), plain
    # Envoy's "no configured limit to the number of allowed active downstream connections":
    # the overload manager sets one.
    assert not [r for r in envoy if "no configured limit" in str(r["event"])]


async def test_up_exits_non_zero_when_envoy_is_killed_and_leaves_no_process(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    proc, listen = await _up(tmp_path, regions, dns)
    try:
        await first_200(listen)
        [envoy] = [pid for pid in _descendants(proc.pid) if _is_envoy(pid)]
        os.kill(envoy, signal.SIGKILL)
        err = await _stderr_once_exited(proc, timeout_s=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, err.decode()
    assert "envoy exited" in err.decode()
    assert await _gone([envoy], timeout_s=5)
    # Its listen port is free again.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        probe.bind(listen)


async def test_envoy_does_not_outlive_an_up_killed_with_sigkill(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    proc, listen = await _up(tmp_path, regions, dns)
    try:
        await first_200(listen)
        envoys = _descendants(proc.pid)
        assert envoys
        proc.kill()
        await proc.wait()
        assert await _gone(envoys, timeout_s=10), "Envoy outlived extproc up"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
