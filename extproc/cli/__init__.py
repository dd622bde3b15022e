"""The ``extproc`` command line: parse the flags, build the settings, run the command.

Modules: ``values`` (what each flag takes: addresses, labels, counts), ``options`` (an
argparse option whose default an ``EXTPROC_*`` variable overrides), ``flags`` (the flags and
the one map to ``Settings``), and this one (the commands). ``up`` and ``serve`` run
through ``server.lifecycle.Lifecycle``, which owns signals, reload and shutdown; nothing
here does. The CLI may import every layer; it imports the server lazily so that ``check``
and ``render`` start fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from extproc.cli.flags import build_parser, require_transport, settings_from_args, workload_given
from extproc.core.policy import Policy
from extproc.errors import ConfigError, ExtprocError
from extproc.settings import HostPort, Settings

if TYPE_CHECKING:
    from extproc.server.reload import Stamp
    from extproc.wire import DataPath


def show_warnings(policy: Policy) -> None:
    """Print the config's warnings on stderr, one line each (file, object, field)."""
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def started_line(
    listen: tuple[str, int], admin: tuple[str, int], envoy_admin: tuple[str, int]
) -> str:
    """What ``extproc up`` prints once it serves: every address, ready to paste."""
    return (
        f"extproc up: listening on {HostPort(*listen)};"
        f" status view http://{HostPort(*admin)}/clusters;"
        f" envoy admin http://{HostPort(*envoy_admin)}/"
    )


async def _up(settings: Settings, policy: Policy, stamp: tuple[Stamp, ...]) -> int:
    from extproc.server.lifecycle import TARGET_ENDED, Lifecycle
    from extproc.server.stack import Stack

    stack = Stack(policy, settings)
    lifecycle = Lifecycle(settings)

    def started() -> None:
        line = started_line(settings.listen, stack.app.admin_address, stack.envoy_admin_address)
        print(line, file=sys.stderr, flush=True)

    code = await lifecycle.run(
        stack,
        policy,
        apply=stack.reload,
        metrics=stack.app.metrics,
        stamp=stamp,
        on_started=started,
    )
    if code == TARGET_ENDED:
        print(
            f"extproc up: envoy exited with code {lifecycle.exit_code}; see its log above",
            file=sys.stderr,
        )
    return code


async def _serve(settings: Settings, policy: Policy, stamp: tuple[Stamp, ...]) -> int:
    from extproc.server.app import ServiceApp
    from extproc.server.lifecycle import Lifecycle

    app = ServiceApp(policy, settings)
    return await Lifecycle(settings).run(
        app, policy, apply=app.apply_policy, metrics=app.metrics, stamp=stamp
    )


def _render(settings: Settings, policy: Policy, output: Path | None, validate: bool) -> int:
    from extproc.render.bootstrap import render_bootstrap

    text = yaml.safe_dump(render_bootstrap(policy, settings), sort_keys=False)
    if output:
        # The bootstrap holds the secret when there is one: only its owner may read it.
        mode = 0o600 if settings.secret else 0o644
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    if validate:
        from extproc.server.envoy_process import validate_config
        from extproc.server.stack import envoy_environment

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
            handle.write(text)
            handle.flush()
            # Envoy loads the module to validate a module config: it needs its directory.
            validate_config(Path(handle.name), env=envoy_environment(settings))
        print("envoy --mode validate: OK", file=sys.stderr)
    return 0


def _check(settings: Settings, workload_given: bool) -> int:
    from extproc.istio import check_summary
    from extproc.server.lifecycle import source_name

    assert settings.config is not None
    policy = _read(settings, with_workload=workload_given)
    print(f"{source_name(settings.config)}: OK", file=sys.stderr)
    print(check_summary(policy, settings.workload if workload_given else None))
    return 0


def _status(admin: HostPort, as_json: bool) -> int:
    from extproc.server.admin import format_overflows, format_status, overflows_from_metrics

    url = f"http://{admin}/endpoints"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = json.loads(response.read())
        if not as_json:
            url = f"http://{admin}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                overflows = overflows_from_metrics(response.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        print(f"extproc status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_status(rows) + format_overflows(overflows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0 ok, 1 failed, 2 usage (argparse), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_transport(parser, args)
    from extproc.server.logs import configure_logging

    configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        if args.command == "status":
            return _status(args.admin, args.json)
        if args.command == "demo":
            return _demo(args.pause, settings_from_args(args).data_path)
        settings = settings_from_args(args)
        if args.command == "check":
            return _check(settings, workload_given(args))
        if args.command == "render":
            policy = _read(settings, with_workload=False)
            return _render(settings, policy, args.output, args.validate)
        return _run(args.command, settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except ExtprocError as exc:
        print(f"extproc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _read(settings: Settings, *, with_workload: bool = True) -> Policy:
    from extproc.server.lifecycle import read_config

    assert settings.config is not None
    policy = read_config(settings.config, settings, with_workload=with_workload)
    show_warnings(policy)
    return policy


def _run(command: str, settings: Settings) -> int:
    """``up`` and ``serve``: read the config, then serve it until a signal."""
    from extproc.server.reload import fingerprint

    assert settings.config is not None
    # Taken before reading: a change made while we start is reloaded at once.
    stamp = fingerprint(settings.config)
    policy = _read(settings)
    if command == "up":
        return asyncio.run(_up(settings, policy, stamp))
    return asyncio.run(_serve(settings, policy, stamp))


def _demo(pause_s: float, data_path: DataPath) -> int:
    from extproc.demo import run_demo
    from extproc.server.lifecycle import Lifecycle

    async def play() -> int:
        return await Lifecycle(Settings()).run_main(run_demo(pause_s=pause_s, data_path=data_path))

    return asyncio.run(play())
