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
from tests.module_build import require_module

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


@pytest.mark.parametrize("data_path", ["lua", "module"])
def test_render_output_passes_envoy_validate(tmp_path: Path, data_path: str) -> None:
    if data_path == "module":
        require_module()  # render --validate builds it too (the same cache)
    config = tmp_path / "seed.yaml"
    config.write_text(seed(80, 80))
    result = subprocess.run(
        [
            *EXTPROC,
            "render",
            "--config",
            str(config),
            "--socket-dir",
            str(tmp_path),
            "--data-path",
            data_path,
            "--validate",
            "-o",
            str(tmp_path / "envoy.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "outbound|80||mydb.com" in (tmp_path / "envoy.yaml").read_text()


async def _stderr_line(proc: asyncio.subprocess.Process, starts: str, seen: list[str]) -> str:
    """Read ``proc``'s stderr until a line starts with ``starts``; every line goes in ``seen``."""
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while raw := await proc.stderr.readline():
            seen.append(raw.decode().rstrip("\n"))
            if seen[-1].startswith(starts):
                return seen[-1]
    raise AssertionError(f"no line starting {starts!r} in:\n" + "\n".join(seen))


async def test_up_listens_on_localhost_and_prints_listener_status_view_and_envoy_admin(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(seed(regions["east"].port, regions["west"].port))
    port, admin, envoy_admin = free_port(), free_port(), free_port()
    proc = await start_extproc_up(
        config,
        ("localhost", port),  # a name: Envoy itself takes only IP addresses
        ("127.0.0.1", admin),
        "--envoy-admin",
        f"localhost:{envoy_admin}",
        "--locality",
        "US-EAST1",  # (the last --locality wins) matches no endpoint: a warning
        dns_resolver=dns.address,
    )
    lines: list[str] = []
    try:
        started = await _stderr_line(proc, "extproc up: ", lines)
        assert started == (
            f"extproc up: listening on 127.0.0.1:{port};"
            f" status view http://127.0.0.1:{admin}/clusters;"
            f" envoy admin http://127.0.0.1:{envoy_admin}/"
        )
        assert any(
            line.startswith('warning: --locality "US-EAST1" matches no endpoint') for line in lines
        ), lines
        assert (await first_200(("127.0.0.1", port))).status == 200
        stats = await get(("127.0.0.1", envoy_admin), "admin", "/stats?filter=^server.live$")
        assert stats.status == 200
        assert "server.live: 1" in stats.body
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0


async def test_strict_up_refuses_a_locality_that_matches_no_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "mydb.yaml"
    config.write_text(
        seed(8080, 8081).replace(
            "consecutive5xxErrors: 1", "consecutive5xxErrors: 1\n      maxEjectionPercent: 100"
        )
    )
    port = free_port()
    proc = await start_extproc_up(
        config, ("127.0.0.1", port), ("127.0.0.1", 0), "--locality", "us-east", "--strict"
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f'error: {config}: --locality "us-east" matches no endpoint\'s region' in err.decode()
    assert (await get(("127.0.0.1", port), "mydb.com", timeout_s=2)).status == 0


def test_check_reads_standard_input_and_prints_a_summary() -> None:
    result = subprocess.run(
        [*EXTPROC, "check", "-", "--locality", "us-east1"],
        input=seed(80, 80),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "<stdin>: OK" in result.stderr
    assert "services: 1" in result.stdout
    assert "PRIORITY" in result.stdout


@pytest.mark.parametrize(
    ("env", "value"),
    [
        pytest.param("LISTEN", "localhost:99999", id="listen"),
        pytest.param("DATA_PATH", "DataPath.LUA", id="data-path"),
        pytest.param("CONCURRENCY", "many", id="concurrency"),
    ],
)
def test_a_bad_extproc_variable_is_a_usage_error_not_a_traceback(env: str, value: str) -> None:
    result = subprocess.run(
        [*EXTPROC, "up", "--config", "mydb.yaml"],
        capture_output=True,
        text=True,
        env={**os.environ, f"EXTPROC_{env}": value},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: extproc up")
    assert f"$EXTPROC_{env}" in result.stderr
    assert "Traceback" not in result.stderr
