"""The command line as users type it: ``extproc up``, ``check``, ``render``, ``status``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from extproc.demo import free_port
from extproc.sandbox import DnsResponder
from extproc.sandbox.client import get

from .conftest import EAST, EXTPROC, Region, first_200, start_extproc_up
from .seed_yaml import seed

pytestmark = pytest.mark.e2e


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_up_routes_like_the_seed_and_stops_cleanly_on_sigterm(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(seed(regions["east"].port, regions["west"].port))
    listen = ("127.0.0.1", free_port())
    admin = ("127.0.0.1", free_port())
    proc = await start_extproc_up(config, listen, admin, dns_resolver=dns.address)
    try:
        await first_200(listen)
        replies = [await get(listen, "mydb.com") for _ in range(5)]
        assert [r.served_by for r in replies] == [EAST] * 5

        status = await asyncio.create_subprocess_exec(
            *EXTPROC,
            "status",
            "--admin",
            "{}:{}".format(*admin),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await status.communicate()
        table = out.decode()
        assert status.returncode == 0
        assert "OUTLIER CHECK" in table
        assert f"127.0.0.11:{regions['east'].port}" in table
        assert "outbound|80||mydb.com" in table
        children = _children_of(proc.pid)
        assert children, "extproc up should run Envoy as a child"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)


async def test_up_with_a_bad_config_exits_1_naming_file_document_and_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(seed(8080, 8081).replace("interval: 1s", 'interval: "1x"'))
    listen = free_port()
    proc = await start_extproc_up(config, ("127.0.0.1", listen), ("127.0.0.1", 0))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    message = err.decode()
    assert proc.returncode == 1
    assert str(config) in message
    assert 'DestinationRule "mydynamodb"' in message
    assert "spec.trafficPolicy.outlierDetection.interval" in message
    reply = await get(("127.0.0.1", listen), "mydb.com", timeout_s=2)
    assert reply.status == 0, "nothing may listen after a rejected config"


def test_check_accepts_the_seed_and_warns_about_max_ejection_percent(tmp_path: Path) -> None:
    config = tmp_path / "seed.yaml"
    config.write_text(seed(80, 80, interval="15s", base="1m"))
    result = subprocess.run([*EXTPROC, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "maxEjectionPercent" in result.stderr


def test_check_rejects_a_bad_config_with_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(seed(80, 80).replace("consecutive5xxErrors: 1", "consecutive5xxErrors: -1"))
    result = subprocess.run([*EXTPROC, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "spec.trafficPolicy.outlierDetection.consecutive5xxErrors" in result.stderr


def test_render_output_passes_envoy_validate(tmp_path: Path) -> None:
    config = tmp_path / "seed.yaml"
    config.write_text(seed(80, 80))
    result = subprocess.run(
        [
            *EXTPROC,
            "render",
            "--config",
            str(config),
            "--validate",
            "-o",
            str(tmp_path / "envoy.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "outbound|80||mydb.com" in (tmp_path / "envoy.yaml").read_text()
