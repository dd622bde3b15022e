"""The ``extproc`` command line.

Every flag can also come from an ``EXTPROC_*`` variable (``--dns-resolver`` from
``EXTPROC_DNS_RESOLVER``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from extproc import __version__
from extproc.core.policy import DEFAULT_CLUSTER_ID, Locality, Policy, Workload
from extproc.errors import ConfigError, ExtprocError
from extproc.server.reload import PolicyChange, Stamp, fingerprint

if TYPE_CHECKING:
    from extproc.server.metrics import Metrics
    from extproc.server.reload import ConfigReloader


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises argparse.ArgumentTypeError on bad input."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """``k=v,k2=v2`` -> ((k, v), (k2, v2)); raises argparse.ArgumentTypeError on bad input.

    An empty text means no labels. Values may be empty (``k=``); keys may not, and may not
    repeat.
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        if key in labels:
            raise argparse.ArgumentTypeError(f"label {key!r} is given twice")
        labels[key] = value.strip()
    return tuple(labels.items())


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXTPROC_{name}", default)


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    default = _env("CONFIG")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        required=required and default is None,
        help="ServiceEntry/DestinationRule YAML: a file or a directory ($EXTPROC_CONFIG)",
    )
    parser.add_argument(
        "--strict-max-ejection-percent",
        action="store_true",
        default=_env("STRICT_MAX_EJECTION_PERCENT", "") in ("1", "true"),
        help="apply maxEjectionPercent to the first ejection too, as Envoy >= 1.28 does "
        "(default: the first ejection is always allowed, Envoy's always_eject_one_host)",
    )


def _add_locality(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--locality",
        default=_env("LOCALITY", ""),
        help="the workload's locality region[/zone[/subzone]] ($EXTPROC_LOCALITY)",
    )
    labels = _env("WORKLOAD_LABELS")
    parser.add_argument(
        "--workload-labels",
        type=parse_labels,
        default=parse_labels(labels) if labels else (),
        metavar="K=V[,K=V...]",
        help="the workload's labels, matched by localityLbSetting.failoverPriority; the "
        "topology labels of --locality are added ($EXTPROC_WORKLOAD_LABELS)",
    )


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload; a ``topology.istio.io/cluster`` label names its cluster, as a sidecar's
    ``ISTIO_META_CLUSTER_ID`` does (default ``Kubernetes``)."""
    labels: tuple[tuple[str, str], ...] = args.workload_labels
    cluster = dict(labels).get("topology.istio.io/cluster") or DEFAULT_CLUSTER_ID
    return Workload(locality=Locality.parse(args.locality), labels=labels, cluster_id=cluster)


def _add_dns(parser: argparse.ArgumentParser) -> None:
    default = _env("DNS_RESOLVER")
    parser.add_argument(
        "--dns-resolver",
        type=parse_hostport,
        default=parse_hostport(default) if default else None,
        help="resolve endpoint names with this DNS server, HOST:PORT ($EXTPROC_DNS_RESOLVER)",
    )


def _add_message_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--message-timeout-ms",
        type=int,
        default=int(_env("MESSAGE_TIMEOUT_MS", "1000") or 1000),
        help="Envoy's budget for each ext_proc answer; past it the request fails closed "
        "(default 1000; $EXTPROC_MESSAGE_TIMEOUT_MS)",
    )


def _add_data_path(parser: argparse.ArgumentParser) -> None:
    from extproc.render.bootstrap import DataPath

    parser.add_argument(
        "--data-path",
        type=DataPath,
        choices=list(DataPath),
        default=DataPath(_env("DATA_PATH", "lua")),
        help="lua: Envoy routes from tables the service publishes (fast, the default); "
        "ext_proc: the service is asked on every request ($EXTPROC_DATA_PATH)",
    )


def _add_system_ca_file(parser: argparse.ArgumentParser) -> None:
    from extproc.render.bootstrap import DEFAULT_SYSTEM_CA_FILE

    parser.add_argument(
        "--system-ca-file",
        default=_env("SYSTEM_CA_FILE", DEFAULT_SYSTEM_CA_FILE),
        help="the CA bundle, as Envoy sees it, for DestinationRule tls without caCertificates "
        f"(Istio's system roots; default {DEFAULT_SYSTEM_CA_FILE}; $EXTPROC_SYSTEM_CA_FILE)",
    )


def _add_reload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watch-interval-s",
        type=float,
        default=float(_env("WATCH_INTERVAL_S", "1") or 1),
        help="look for config changes this often; 0: only on SIGHUP "
        "(default 1; $EXTPROC_WATCH_INTERVAL_S)",
    )


def _add_admin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        type=parse_hostport,
        default=_hostport_default("ADMIN", "127.0.0.1:9090"),
        help="the status view HOST:PORT ($EXTPROC_ADMIN)",
    )


def _add_brain_port(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument(
        "--brain-port",
        type=int,
        default=int(_env("BRAIN_PORT", "9004") or 9004),
        help=f"the fast path's HTTP sync port, {where} ($EXTPROC_BRAIN_PORT)",
    )


def _hostport_default(name: str, fallback: str) -> tuple[str, int]:
    return parse_hostport(_env(name, fallback) or fallback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extproc",
        description="Istio's locality failover for external services, on plain Envoy.",
    )
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL"),
        choices=["debug", "info", "warning", "error"],
        help="default: info (warning for demo, whose story is the output)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the service and Envoy on this machine (foreground)")
    _add_config(up)
    _add_locality(up)
    up.add_argument(
        "--listen",
        type=parse_hostport,
        default=_hostport_default("LISTEN", "127.0.0.1:10000"),
        help="Envoy's HTTP listener HOST:PORT ($EXTPROC_LISTEN)",
    )
    _add_admin(up)
    _add_dns(up)
    up.add_argument(
        "--concurrency",
        type=int,
        default=int(_env("CONCURRENCY", "2") or 2),
        help="Envoy worker threads ($EXTPROC_CONCURRENCY)",
    )
    _add_message_timeout(up)
    _add_data_path(up)
    _add_system_ca_file(up)
    up.add_argument("--envoy-log-level", default=_env("ENVOY_LOG_LEVEL", "warning"))
    _add_reload(up)
    up.add_argument(
        "--drain-time-s",
        type=int,
        default=int(_env("DRAIN_TIME_S", "10") or 10),
        help="on a reload that restarts Envoy, how long the old Envoy drains its connections; "
        "it exits 5 s later (default 10; $EXTPROC_DRAIN_TIME_S)",
    )

    serve = sub.add_parser("serve", help="run the ext_proc service alone (compose, Kubernetes)")
    _add_config(serve)
    _add_locality(serve)
    serve.add_argument(
        "--grpc",
        type=parse_hostport,
        default=_hostport_default("GRPC", "127.0.0.1:9002"),
        help="gRPC (ext_proc + health) HOST:PORT ($EXTPROC_GRPC)",
    )
    _add_brain_port(serve, "on the --grpc host")
    _add_admin(serve)
    _add_dns(serve)
    _add_reload(serve)

    render = sub.add_parser("render", help="print the Envoy bootstrap for a config")
    _add_config(render)
    render.add_argument(
        "--listen", type=parse_hostport, default=_hostport_default("LISTEN", "0.0.0.0:10000")
    )
    render.add_argument(
        "--ext-proc",
        type=parse_hostport,
        default=_hostport_default("EXT_PROC", "127.0.0.1:9002"),
        help="where Envoy reaches the service",
    )
    render.add_argument(
        "--envoy-admin",
        type=parse_hostport,
        default=_hostport_default("ENVOY_ADMIN", "127.0.0.1:9901"),
    )
    _add_message_timeout(render)
    _add_data_path(render)
    _add_system_ca_file(render)
    _add_brain_port(render, "on the --ext-proc host")
    render.add_argument("--output", "-o", type=Path, help="write to a file instead of stdout")
    render.add_argument(
        "--validate", action="store_true", help="also run envoy --mode validate on it"
    )

    check = sub.add_parser(
        "check", help="validate a config: exit 0 ok, 1 errors; warnings on stderr"
    )
    check.add_argument("path", type=Path)
    check.add_argument("--strict-max-ejection-percent", action="store_true")

    status = sub.add_parser("status", help="print the endpoint table of a running service")
    status.add_argument(
        "--admin", type=parse_hostport, default=_hostport_default("ADMIN", "127.0.0.1:9090")
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    demo = sub.add_parser("demo", help="play the seed's failover story locally (no Docker)")
    demo.add_argument("--pause", type=float, default=0.3, help="seconds between requests")
    _add_data_path(demo)
    return parser


def load(path: Path, strict: bool) -> Policy:
    """Load a config and print its warnings to stderr."""
    from extproc.istio import load_policy

    policy = load_policy(path, always_eject_one_host=not strict)
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return policy


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (installed before anything starts)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _reloader(
    args: argparse.Namespace,
    apply: Callable[[Policy], Awaitable[PolicyChange]],
    metrics: Metrics,
    stamp: tuple[Stamp, ...],
) -> ConfigReloader:
    """Live reload of ``--config``; SIGHUP asks for one (installed here, before start)."""
    from extproc.istio import load_policy
    from extproc.server.reload import ConfigReloader

    strict = args.strict_max_ejection_percent

    def read(path: Path) -> Policy:
        return load_policy(path, always_eject_one_host=not strict)

    reloader = ConfigReloader(
        args.config, read, apply, metrics=metrics, poll_s=args.watch_interval_s, initial=stamp
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.request)
    return reloader


async def _up(args: argparse.Namespace, policy: Policy, stamp: tuple[Stamp, ...]) -> int:
    from extproc.server.stack import Stack, StackSettings

    stop = _stop_on_signals()
    stack = Stack(
        policy,
        workload_from_args(args),
        StackSettings(
            listen=args.listen,
            admin=args.admin,
            dns_resolver=args.dns_resolver,
            concurrency=args.concurrency,
            envoy_log_level=args.envoy_log_level,
            message_timeout_ms=args.message_timeout_ms,
            data_path=args.data_path,
            system_ca_file=args.system_ca_file,
            drain_time_s=args.drain_time_s,
            parent_shutdown_time_s=args.drain_time_s + 5,
        ),
    )
    reloader = _reloader(args, stack.reload, stack.app.metrics, stamp)
    # A signal during start-up stops what already runs (Stack.start cleans up on cancel).
    starting = asyncio.ensure_future(stack.start())
    await _first(starting, stop.wait())
    if not starting.done() or starting.cancelled():
        return 0
    starting.result()  # raises StartupError when a part did not start
    assert stack.envoy is not None
    print(
        "extproc up: listening on {}:{}, status view on http://{}:{}/clusters".format(
            *args.listen, *stack.app.admin_address
        ),
        file=sys.stderr,
    )
    watching = asyncio.ensure_future(reloader.run())
    try:
        await _first(stop.wait(), stack.wait())
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        code = stack.envoy.returncode
        await stack.stop()
    if not stop.is_set():
        print(f"extproc up: envoy exited with code {code}; see its log above", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace, policy: Policy, stamp: tuple[Stamp, ...]) -> int:
    from extproc.server.app import ServiceApp, ServiceSettings

    app = ServiceApp(
        policy,
        workload_from_args(args),
        ServiceSettings(
            grpc_host=args.grpc[0],
            grpc_port=args.grpc[1],
            admin_host=args.admin[0],
            admin_port=args.admin[1],
            dns_resolver=args.dns_resolver,
            brain_port=args.brain_port,
        ),
    )
    stop = _stop_on_signals()
    reloader = _reloader(args, app.apply_policy, app.metrics, stamp)
    watching: asyncio.Future[None] | None = None
    try:
        await app.start()
        watching = asyncio.ensure_future(reloader.run())
        await stop.wait()
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await app.stop()
    return 0


def _render(args: argparse.Namespace, policy: Policy) -> int:
    from extproc.render.bootstrap import RenderSettings, render_bootstrap

    bootstrap = render_bootstrap(
        policy,
        RenderSettings(
            listen_host=args.listen[0],
            listen_port=args.listen[1],
            ext_proc_host=args.ext_proc[0],
            ext_proc_port=args.ext_proc[1],
            envoy_admin_host=args.envoy_admin[0],
            envoy_admin_port=args.envoy_admin[1],
            message_timeout_ms=args.message_timeout_ms,
            data_path=args.data_path,
            brain_port=args.brain_port,
            system_ca_file=args.system_ca_file,
        ),
    )
    text = yaml.safe_dump(bootstrap, sort_keys=False)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    if args.validate:
        import tempfile

        from extproc.server.envoy_process import validate_config

        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
            handle.write(text)
            handle.flush()
            validate_config(Path(handle.name))
        print("envoy --mode validate: OK", file=sys.stderr)
    return 0


def format_status(rows: list[dict[str, Any]]) -> str:
    """The endpoint table, in ``istioctl proxy-config endpoints`` column order."""
    header = (
        "ENDPOINT",
        "STATUS",
        "OUTLIER CHECK",
        "CLUSTER",
        "LOCALITY",
        "PRIORITY",
        "5XX IN A ROW",
        "EJECTIONS",
        "EJECTION LEFT",
    )
    table = [header]
    for row in rows:
        left = row.get("ejection_time_left_s")
        table.append(
            (
                row["address"],
                "HEALTHY",
                "FAILED" if row["ejected"] else "OK",
                row["cluster_name"],
                row["locality"],
                str(row["priority"]),
                str(row["consecutive_5xx"]),
                str(row["num_ejections"]),
                f"{left:.1f}s" if left is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table
    )


def _status(args: argparse.Namespace) -> int:
    url = "http://{}:{}/endpoints".format(*args.admin)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"extproc status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from extproc.server.logs import configure_logging

    configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        if args.command == "check":
            load(args.path, args.strict_max_ejection_percent)
            print(f"{args.path}: OK", file=sys.stderr)
            return 0
        if args.command == "status":
            return _status(args)
        if args.command == "demo":
            from extproc.demo import run_demo

            return asyncio.run(run_demo(pause_s=args.pause, data_path=args.data_path))
        # Taken before reading: a change made while we start is reloaded at once.
        stamp = fingerprint(args.config)
        policy = load(args.config, args.strict_max_ejection_percent)
        if args.command == "render":
            return _render(args, policy)
        if args.command == "up":
            return asyncio.run(_up(args, policy, stamp))
        if args.command == "serve":
            return asyncio.run(_serve(args, policy, stamp))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except ExtprocError as exc:
        print(f"extproc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
