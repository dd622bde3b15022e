"""The C module for tests that run a real Envoy on ``--data-path module``.

Built once per test session (``extproc.module.build``, into its cache). A test that needs
it is skipped only where no C compiler exists; a compiler that rejects the source fails
the test, as it would fail ``extproc up``.
"""

from __future__ import annotations

import functools

import pytest

from extproc.module.build import ModuleBuildError, build, find_compiler
from extproc.wire import MODULE_SEARCH_PATH_VAR


@functools.cache
def _built() -> str:
    return str(build())


def require_module() -> dict[str, str]:
    """Envoy's environment for the module (its search path); skips without a C compiler."""
    try:
        find_compiler()
    except ModuleBuildError as exc:  # the one line that says which compiler to install
        pytest.skip(f"--data-path module needs a C compiler here: {exc}")
    return {MODULE_SEARCH_PATH_VAR: _built()}
