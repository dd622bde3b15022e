"""Every differential scenario runs against extproc on both data paths."""

from __future__ import annotations

import pytest

from extproc.wire import DataPath


@pytest.fixture(params=list(DataPath), ids=[p.value for p in DataPath])
def data_path(request: pytest.FixtureRequest) -> DataPath:
    return request.param  # type: ignore[no-any-return]
