"""Every differential scenario runs against extproc on every data path (module: where it builds)."""

from __future__ import annotations

import pytest

from extproc.wire import DataPath
from tests.module_build import require_module


@pytest.fixture(params=list(DataPath), ids=[p.value for p in DataPath])
def data_path(request: pytest.FixtureRequest) -> DataPath:
    if request.param is DataPath.MODULE:
        require_module()
    return request.param  # type: ignore[no-any-return]
