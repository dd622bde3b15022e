"""The module's table reader and outcome path under AddressSanitizer and UBSan.

AddressSanitizer cannot run inside the wheel's Envoy: preloaded, its start-up re-enters the
tcmalloc that Envoy exports as ``malloc`` and crashes; loaded with the module, it finds
Envoy's heap where its shadow memory must go and aborts. So ``fuzz_driver.c`` plays Envoy
instead: it links the module compiled with ``-DEXTPROC_MODULE_FUZZ`` (a heap region of
exactly the region's size, no link thread), calls its hooks as Envoy does, and fills the
region with valid entries, random bytes, wild fields and torn seqlocks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from extproc.module.build import ASAN_FLAGS, SOURCE, find_compiler

pytestmark = pytest.mark.module

DRIVER = Path(__file__).with_name("fuzz_driver.c")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("fuzz") / "fuzz_driver"
    flags = [f for f in ASAN_FLAGS if f != "-fsanitize=address"]
    subprocess.run(
        [
            *find_compiler(),
            "-std=c11",
            "-pthread",
            "-Wall",
            "-Wextra",
            "-Werror",
            *flags,
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-DEXTPROC_MODULE_FUZZ",
            "-o",
            str(binary),
            str(SOURCE),
            str(DRIVER),
        ],
        check=True,
    )
    return binary


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_table_reader_survives_anything_in_the_region(driver: Path, seed: int) -> None:
    proc = subprocess.run(
        [str(driver), str(seed), "200000"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"},
        check=False,
    )

    assert proc.returncode == 0, proc.stderr[-4000:]
    counts = dict(item.split("=") for item in proc.stdout.split()[1:])
    assert proc.stdout.startswith("ok ")
    # It did route (overrides checked against the hosts written), refuse and report.
    assert int(counts["checked"]) > 10_000
    assert int(counts["bad_snapshots"]) > 1_000
    assert int(counts["records"]) > 10_000
