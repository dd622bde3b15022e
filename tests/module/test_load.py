"""Envoy 1.40 loads the module: every hook it needs is there, the ABI version matches, the
callbacks answer as declared, and ``--mode validate`` creates nothing."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from extproc import wire
from extproc.module.build import LIBRARY_NAME, SOURCE, compile_flags, find_compiler

from .conftest import ABI_MATCHED, Envoy, ServiceEnd, bootstrap, wait_until

pytestmark = [pytest.mark.module, pytest.mark.e2e]

#: The hooks Envoy 1.40 resolves for an HTTP filter module and for an access logger (the
#: router's attempt log); a module without any one of them is refused (test below). The
#: config-level hooks its binary also names (``on_http_filter_config_scheduled``,
#: ``..._config_http_callout_done``, ``..._config_http_stream_*``),
#: ``local_reply``/``per_route_config_*`` and ``on_access_logger_flush`` are optional.
HOOKS = frozenset(
    "envoy_dynamic_module_on_" + name
    for name in [
        "program_init",
        "http_filter_config_new",
        "http_filter_config_destroy",
        "http_filter_new",
        "http_filter_request_headers",
        "http_filter_request_body",
        "http_filter_request_trailers",
        "http_filter_response_headers",
        "http_filter_response_body",
        "http_filter_response_trailers",
        "http_filter_stream_complete",
        "http_filter_destroy",
        "http_filter_http_callout_done",
        "http_filter_http_stream_headers",
        "http_filter_http_stream_data",
        "http_filter_http_stream_trailers",
        "http_filter_http_stream_complete",
        "http_filter_http_stream_reset",
        "http_filter_scheduled",
        "http_filter_downstream_above_write_buffer_high_watermark",
        "http_filter_downstream_below_write_buffer_low_watermark",
        "access_logger_config_new",
        "access_logger_config_destroy",
        "access_logger_new",
        "access_logger_log",
        "access_logger_destroy",
    ]
)


def exported(library: Path) -> set[str]:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_the_module_exports_exactly_the_hooks(module_dir: Path) -> None:
    assert exported(module_dir / LIBRARY_NAME) == HOOKS


def link_without(obj: Path, hook: str, directory: Path) -> None:
    """Link the module's object file into ``directory`` with every hook exported but one."""
    directory.mkdir()
    script = directory / "exports.map"
    script.write_text("{ global: " + "".join(f"{h}; " for h in HOOKS - {hook}) + "local: *; };")
    command = ["-shared", "-pthread", f"-Wl,--version-script={script}"]
    subprocess.run(
        [*find_compiler(), *command, "-o", str(directory / LIBRARY_NAME), str(obj)], check=True
    )


async def test_envoy_refuses_a_module_without_any_one_of_its_hooks(tmp_path: Path) -> None:
    obj = tmp_path / "module.o"
    flags = [f for f in compile_flags() if f != "-shared"]
    compile_object = [*find_compiler(), *flags, "-c", "-o", str(obj), str(SOURCE)]
    await asyncio.to_thread(subprocess.run, compile_object, check=True)
    config = bootstrap(1, tmp_path / "none.sock", [("127.0.0.1", 1)])
    refused = set()

    for hook in sorted(HOOKS):
        await asyncio.to_thread(link_without, obj, hook, tmp_path / hook)
        code, output = await Envoy(config, tmp_path / hook, tmp_path / hook).validate()
        if code != 0 and f"Failed to resolve symbol {hook}" in output:
            refused.add(hook)

    assert refused == HOOKS


async def test_envoy_loads_the_module_and_matches_its_abi_version(
    tmp_path: Path, module_dir: Path, service_end: ServiceEnd
) -> None:
    envoy = Envoy(bootstrap(1, service_end.path, [("127.0.0.1", 1)]), tmp_path, module_dir)
    try:
        await envoy.start(concurrency=2)
        link = await asyncio.to_thread(service_end.wait_link)
        await wait_until(lambda: "extproc module: linked" in envoy.log())
    finally:
        await envoy.stop()
    log = envoy.log()
    assert ABI_MATCHED in log
    assert "is deprecated" not in log
    # log and log_enabled, from the main thread and from the link thread.
    assert f"extproc module: region of {wire.REGION_SIZE} bytes for 2 workers" in log
    assert f"extproc module: linked to {service_end.path}" in log
    # The hello: what the module read from Envoy (get_concurrency, its own pid).
    assert link.hello_ok
    assert (link.layout, link.region_size, link.concurrency) == (1, wire.REGION_SIZE, 2)
    assert envoy.proc is not None
    assert link.pid == envoy.proc.pid
    # The header the module wrote.
    header = link.header()
    assert header[:10] == (
        wire.REGION_MAGIC, wire.LAYOUT_VERSION, wire.REGION_SIZE, wire.MAX_SERVICES,
        wire.MAX_HOSTS, wire.MAX_WORKERS, wire.HOST_SLOTS, 2, link.pid, 0,
    )  # fmt: skip
    assert bytes(link.region[64:128]) == bytes(64)


async def test_the_region_cannot_shrink_or_grow_under_envoy(
    tmp_path: Path, module_dir: Path, service_end: ServiceEnd
) -> None:
    envoy = Envoy(bootstrap(1, service_end.path, [("127.0.0.1", 1)]), tmp_path, module_dir)
    try:
        await envoy.start()
        link = await asyncio.to_thread(service_end.wait_link)
        seals = fcntl.fcntl(link.memfd, fcntl.F_GET_SEALS)
        errors = []
        for size in (0, wire.REGION_SIZE + 4096):
            try:
                os.ftruncate(link.memfd, size)
            except OSError as exc:
                errors.append(exc.errno)
        assert envoy.alive
    finally:
        await envoy.stop()
    assert link.memfd_size == wire.REGION_SIZE
    assert seals == fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    assert errors == [errno.EPERM, errno.EPERM]


async def test_validate_mode_creates_no_region_and_no_link(
    tmp_path: Path, module_dir: Path, service_end: ServiceEnd
) -> None:
    envoy = Envoy(bootstrap(1, service_end.path, [("127.0.0.1", 1)]), tmp_path, module_dir)

    code, output = await envoy.validate()
    await asyncio.sleep(0.3)

    assert code == 0, output
    assert ABI_MATCHED in output  # loaded, and config_new ran
    assert "extproc module: region" not in output
    assert service_end.connections == 0


async def test_a_filter_config_that_is_no_socket_path_is_rejected(
    tmp_path: Path, module_dir: Path
) -> None:
    config = bootstrap(1, "/" + "x" * 200, [("127.0.0.1", 1)])

    code, output = await Envoy(config, tmp_path, module_dir).validate()

    assert code != 0
    assert "filter_config must be the service's socket path" in output


async def test_an_access_logger_of_another_name_is_rejected(
    tmp_path: Path, module_dir: Path
) -> None:
    config = bootstrap(1, tmp_path / "none.sock", [("127.0.0.1", 1)])
    router = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [log] = router["typed_config"]["http_filters"][1]["typed_config"]["upstream_log"]
    log["typed_config"]["logger_name"] = "requests"

    code, output = await Envoy(config, tmp_path, module_dir).validate()

    assert code != 0
    assert f'logger_name must be "{wire.MODULE_ATTEMPT_LOGGER}"' in output
