"""The C module for tests that run a real Envoy on ``--data-path module``.

Built once per test session (``extproc.module.build``, into its cache). A test that needs
it is skipped only where no C compiler exists; a compiler that rejects the source fails
the test, as it would fail ``extproc up``.
"""

from __future__ import annotations

import functools

import pytest

from extproc.errors import StartupError
from extproc.wire import MODULE_SEARCH_PATH_VAR


@functools.cache
def _built() -> str:
    from extproc.module.build import build

    return str(build())


def require_module() -> dict[str, str]:
    """Envoy's environment for the module (its search path); skips without a C compiler."""
    try:
        from extproc.module.build import find_compiler
    except ImportError as exc:  # a tree without the module's build
        pytest.skip(f"--data-path module: extproc.module.build is not here ({exc})")
    try:
        find_compiler()
    except StartupError as exc:
        pytest.skip(f"--data-path module: {exc}")
    return {MODULE_SEARCH_PATH_VAR: _built()}
