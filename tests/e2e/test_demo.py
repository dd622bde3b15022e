"""``extproc demo``, the main job, plays the seed's story with the right outcome at every step."""

from __future__ import annotations

import pytest

from extproc.demo import run_demo
from extproc.render.bootstrap import DataPath

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
