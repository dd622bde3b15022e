"""``extproc demo``, the main job, plays the seed's story with the right outcome at every step,
and the commands it prints work when pasted while it runs."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from extproc.demo import run_demo
from extproc.wire import DataPath

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
async def test_demo_plays_every_step_of_the_seed(data_path: DataPath) -> None:
    lines: list[str] = []

    code = await run_demo(pause_s=0.05, out=lines.append, data_path=data_path)

    text = "\n".join(lines)
    assert code == 0, text
    assert not [line for line in lines if line.startswith("  FAIL ")]
    assert "FAILED" in text  # the status table shows us-east1 failing its outlier check
    assert "upstream connect error" not in text  # retried on us-west inside the request
    assert "Every step turned out as the seed shows." in text


async def test_the_commands_the_demo_prints_can_be_pasted_while_it_runs() -> None:
    lines: list[str] = []
    failing_over = asyncio.Event()  # step 3: the failover stack serves, east refuses

    def out(line: str) -> None:
        lines.append(line)
        if line.lstrip().startswith("== 3."):
            failing_over.set()

    demo = asyncio.create_task(run_demo(pause_s=0.1, out=out))
    try:
        await asyncio.wait_for(failing_over.wait(), 60)
        pasteable = [line.removeprefix("  $ ") for line in lines if line.startswith("  $ ")]
        curl, status = pasteable
        results = [
            await _shell(curl),
            await _shell(status.replace("extproc", f"{sys.executable} -m extproc", 1)),
        ]
    finally:
        code = await demo

    text = "\n".join(lines)
    assert code == 0, text
    assert re.search(
        r"Envoy listens on 127\.0\.0\.1:\d+; status view http://127\.0\.0\.1:\d+/", text
    )
    assert curl.startswith("curl -sS --connect-to mydb.com:80:127.0.0.1:")
    assert status.startswith("extproc status --admin 127.0.0.1:")
    (curl_code, served), (status_code, table) = results
    assert curl_code == 0
    assert "dynamodb.us-" in served  # a stand-in answered, through the demo's Envoy
    assert status_code == 0
    assert "OUTLIER CHECK" in table
    assert "outbound|80||mydb.com" in table
    assert f"$ {status}" in text  # the status step prints the same command


async def _shell(command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()
