"""The command line's flags, each with its ``EXTPROC_*`` variable, and the one map to Settings.

Every flag's ``dest`` is the name of the ``Settings`` field it sets, and its default is read
from ``settings.DEFAULTS`` (``render`` has its own two, ``RENDER_LISTEN`` and
``RENDER_ENVOY_ADMIN``), so ``settings_from_args`` is one loop, not a field-by-field copy.
A variable's value is parsed as the flag's value would be, after the command line, so a bad
one is a usage error (exit 2) that names the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from extproc import __version__
from extproc.cli.kube_workload import ISTIO_POD_LABELS_PATH, kubernetes_workload, node_name
from extproc.cli.options import from_env, option, switch, typed
from extproc.cli.values import (
    BIND,
    DNS_SERVER,
    HP,
    LISTEN,
    PEER,
    count,
    data_path,
    one_of,
    parse_labels,
    port_number,
    seconds,
)
from extproc.core.policy import DEFAULT_CLUSTER_ID, Locality, Workload
from extproc.errors import ExtprocError
from extproc.settings import DEFAULTS, RENDER_ENVOY_ADMIN, RENDER_LISTEN, Settings
from extproc.wire import DataPath, is_valid_secret

# --- groups of flags ------------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """``--config`` (and, for ``check``, a positional PATH instead); ``-`` reads stdin."""
    required = from_env("CONFIG")[0] is None
    where: argparse._ActionsContainer = parser
    if positional:
        where = parser.add_mutually_exclusive_group(required=required)
        where.add_argument(
            "path", nargs="?", type=Path, metavar="PATH", help="the config, as --config"
        )
    option(
        where,
        "--config",
        "CONFIG",
        Path,
        None,
        "ServiceEntry/DestinationRule YAML: a file or a directory; - reads standard input",
        required=required and not positional,
    )
    switch(
        parser,
        "--strict",
        "STRICT",
        "warnings are errors, for CI: fields extproc ignores, a --locality no endpoint has",
    )
    switch(
        parser,
        "--strict-max-ejection-percent",
        "STRICT_MAX_EJECTION_PERCENT",
        "apply maxEjectionPercent to the first ejection too, as Envoy >= 1.28 does "
        "(default: the first ejection is always allowed, Envoy's always_eject_one_host)",
    )


def _add_locality(parser: argparse.ArgumentParser) -> None:
    option(
        parser,
        "--locality",
        "LOCALITY",
        str,
        None,
        "the workload's locality region[/zone[/subzone]]",
    )
    option(
        parser,
        "--workload-labels",
        "WORKLOAD_LABELS",
        parse_labels,
        None,
        "the workload's labels, matched by localityLbSetting.failoverPriority; the "
        "topology labels of --locality are added",
        metavar="K=V[,K=V...]",
    )
    # Kubernetes: the locality from the Node, the labels from the pod (cli/kube_workload.py).
    option(
        parser,
        "--locality-from-node",
        "LOCALITY_FROM_NODE",
        node_name,
        None,
        "read the locality from this Node's topology labels through the Kubernetes API "
        "(the pod's service account needs get on nodes); set it from the downward API's "
        "spec.nodeName; not with --locality",
        metavar="NODE",
    )
    option(
        parser,
        "--workload-labels-file",
        "WORKLOAD_LABELS_FILE",
        Path,
        None,
        "the workload's labels from a downward API file of the pod's metadata.labels "
        f"(Istio's {ISTIO_POD_LABELS_PATH}); its istio-locality label sets the locality; "
        "not with --workload-labels",
        metavar="PATH",
    )


def _add_envoy(
    parser: argparse.ArgumentParser,
    *,
    listen: object,
    envoy_admin: object,
    auto_data_path: bool = False,
) -> None:
    """What every command that renders Envoy's bootstrap takes."""
    option(parser, "--listen", "LISTEN", LISTEN, listen, "Envoy's HTTP listener", metavar=HP)
    help_admin = "Envoy's own admin (/stats, /config_dump)"
    if envoy_admin is None:
        help_admin += "; default: a free loopback port"
    option(parser, "--envoy-admin", "ENVOY_ADMIN", BIND, envoy_admin, help_admin, metavar=HP)
    option(
        parser,
        "--message-timeout-ms",
        "MESSAGE_TIMEOUT_MS",
        count,
        DEFAULTS.message_timeout_ms,
        "Envoy's budget for each ext_proc answer; past it the request fails closed",
    )
    _add_data_path(parser, auto=auto_data_path)
    option(
        parser,
        "--system-ca-file",
        "SYSTEM_CA_FILE",
        str,
        DEFAULTS.system_ca_file,
        "the CA bundle, as Envoy sees it, for DestinationRule tls without caCertificates "
        "(Istio's system roots)",
    )


def _add_data_path(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--data-path``; with ``auto`` (``up``, ``demo``) its default is ``default_data_path``."""
    help_text = (
        "module: Envoy's C module routes from tables in shared memory (the fastest; needs a "
        "C compiler; serve and render need --socket-dir); lua: Envoy's Lua filter routes "
        "from tables the service publishes; ext_proc: the service is asked on every request"
    )
    if auto:
        help_text += (
            f"; default: module where a C compiler is found, else {DEFAULTS.data_path.value}"
        )
    option(
        parser,
        "--data-path",
        "DATA_PATH",
        data_path,
        None if auto else DEFAULTS.data_path.value,
        help_text,
        metavar="{" + ",".join(p.value for p in DataPath) + "}",
    )


def default_data_path() -> DataPath:
    """``module`` where this machine can run it (x86-64, a C compiler), else ``Settings``' default.

    The module is the fastest path; without a compiler it cannot be built, and the
    default falls back rather than failing (``--data-path module`` then says what to
    install).
    """
    from extproc.module.build import ModuleBuildError, check_machine, find_compiler

    try:
        check_machine()
        find_compiler()
    except ModuleBuildError:
        return DEFAULTS.data_path
    return DataPath.MODULE


def _add_service(parser: argparse.ArgumentParser) -> None:
    """What every command that runs the service takes."""
    option(parser, "--admin", "ADMIN", BIND, DEFAULTS.admin, "the status view", metavar=HP)
    option(
        parser,
        "--dns-resolver",
        "DNS_RESOLVER",
        DNS_SERVER,
        None,
        "resolve endpoint names with this DNS server (port 53 unless given; "
        "default: the system's resolvers)",
        metavar="HOST[:PORT]",
    )
    option(
        parser,
        "--watch-interval-s",
        "WATCH_INTERVAL_S",
        seconds,
        f"{DEFAULTS.watch_interval_s:g}",
        "look for config changes this often; 0: only on SIGHUP",
    )
    option(
        parser,
        "--shared-state",
        "SHARED_STATE",
        _redis_url,
        None,
        "share ejections with the other brains of --fleet through this Redis "
        "(redis:// or rediss://, credentials in the URL); off by default",
        metavar="URL",
    )
    option(parser, "--fleet", "FLEET", _fleet_name, DEFAULTS.fleet, "the fleet's name")
    option(
        parser,
        "--proxy-id",
        "PROXY_ID",
        _fleet_name,
        None,
        "this brain's id in the fleet (default: host name and process id)",
    )


def _redis_url(text: str) -> str:
    """A Redis URL for --shared-state; an error never prints its password."""
    from extproc.server.fleet_link import check_url, redact

    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            f"{redact(text)!r} is not a redis://, rediss:// or unix:// URL"
        )
    try:
        check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fleet_name(text: str) -> str:
    """A fleet or proxy name: printable, no spaces, up to 100 characters."""
    if not 0 < len(text) <= 100 or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be 1-100 printable characters without spaces"
        )
    return text


def _add_transport(parser: argparse.ArgumentParser, grpc_flag: str) -> None:
    """How Envoy and ``serve`` reach each other when ``up`` does not run both.

    Outcome reports move traffic, so no transport is open to any local process: Unix
    sockets in a directory only Envoy and the service can open, or TCP with a shared secret
    on every ext_proc and EDS stream and sync request.
    """
    where = f"on the {grpc_flag} host"
    option(
        parser,
        ("--sync-port", "--brain-port"),
        ("SYNC_PORT", "BRAIN_PORT"),
        port_number,
        DEFAULTS.sync_port,
        f"the fast path's HTTP sync endpoint, {where} (--brain-port: its old name)",
        dest="sync_port",
    )
    option(
        parser,
        "--socket-dir",
        "SOCKET_DIR",
        Path,
        None,
        f"Unix sockets in this directory instead of TCP ({grpc_flag} and --sync-port are "
        "not used then); give it the same directory on both sides, one only they can open",
        metavar="DIR",
    )
    option(
        parser,
        "--secret-file",
        "SECRET_FILE",
        Path,
        None,
        "over TCP: a file holding the shared secret (16-512 of [A-Za-z0-9._~+/=-], e.g. "
        "`openssl rand -base64 32`), the same file for serve and render",
        metavar="FILE",
    )


# --- sub-commands ---------------------------------------------------------------------------


def _add_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run the service and Envoy on this machine (foreground)")
    _add_config(up)
    _add_locality(up)
    _add_envoy(up, listen=DEFAULTS.listen, envoy_admin=None, auto_data_path=True)
    _add_service(up)
    option(up, "--concurrency", "CONCURRENCY", count, DEFAULTS.concurrency, "Envoy worker threads")
    option(
        up,
        "--envoy-log-level",
        "ENVOY_LOG_LEVEL",
        str,
        DEFAULTS.envoy_log_level,
        "Envoy's --log-level",
    )
    option(
        up,
        "--drain-time-s",
        "DRAIN_TIME_S",
        count,
        DEFAULTS.drain_time_s,
        "on a reload that restarts Envoy, how long the old Envoy drains its connections; "
        "it exits 5 s later",
    )


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the ext_proc service alone (compose, Kubernetes)")
    _add_config(serve)
    _add_locality(serve)
    option(serve, "--grpc", "GRPC", BIND, DEFAULTS.grpc, "gRPC (ext_proc + health)", metavar=HP)
    _add_transport(serve, "--grpc")
    _add_data_path(serve)
    _add_service(serve)


def _add_render(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    render = sub.add_parser("render", help="print the Envoy bootstrap for a config")
    _add_config(render)
    _add_envoy(render, listen=RENDER_LISTEN, envoy_admin=RENDER_ENVOY_ADMIN)
    option(
        render,
        "--ext-proc",
        "EXT_PROC",
        PEER,
        DEFAULTS.grpc,
        "where Envoy reaches the service's gRPC (a name is resolved by Envoy)",
        metavar=HP,
        dest="grpc",
    )
    _add_transport(render, "--ext-proc")
    render.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write to a file instead of stdout (mode 600 when it holds the secret)",
    )
    render.add_argument(
        "--validate", action="store_true", help="also run envoy --mode validate on it"
    )


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check",
        help="validate a config: exit 0 ok (and a summary), 1 errors; warnings on stderr",
    )
    _add_config(check, positional=True)
    _add_locality(check)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="print the endpoint table of a running service")
    option(status, "--admin", "ADMIN", PEER, DEFAULTS.admin, "the status view", metavar=HP)
    status.add_argument("--json", action="store_true", help="print the raw JSON")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="play the seed's failover story locally (no Docker)")
    demo.add_argument("--pause", type=typed(seconds), default=0.3, help="seconds between requests")
    _add_data_path(demo, auto=True)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global flags, then one sub-command."""
    parser = argparse.ArgumentParser(
        prog="extproc",
        description="Istio's locality failover for external services, on plain Envoy.",
    )
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    option(
        parser,
        "--log-level",
        "LOG_LEVEL",
        one_of("debug", "info", "warning", "error"),
        None,
        "default: info (warning for demo, whose story is the output)",
        metavar="{debug,info,warning,error}",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_up, _add_serve, _add_render, _add_check, _add_status, _add_demo):
        add(sub)
    return parser


# --- flags -> Settings ----------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The one ``Settings`` of this run: every flag the command has, the defaults for the rest.

    Raises:
        ExtprocError: ``--secret-file`` cannot be read or holds no valid secret.
    """
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Settings)
        if getattr(args, field.name, None) is not None
    }
    if getattr(args, "path", None) is not None:  # check's positional PATH
        given["config"] = args.path
    if hasattr(args, "data_path") and args.data_path is None:  # up and demo: auto
        given["data_path"] = default_data_path()
    return dataclasses.replace(
        DEFAULTS,
        **given,
        workload=workload_from_args(args),
        secret=read_secret(getattr(args, "secret_file", None)),
    )


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload; a ``topology.istio.io/cluster`` label names its cluster, as a sidecar's
    ``ISTIO_META_CLUSTER_ID`` does (default ``Kubernetes``)."""
    labels: tuple[tuple[str, str], ...] = getattr(args, "workload_labels", None) or ()
    locality = Locality.parse(getattr(args, "locality", None) or "")
    if from_kubernetes(args):
        locality, labels = kubernetes_workload(
            locality=args.locality,
            labels=labels,
            labels_file=args.workload_labels_file,
            node=args.locality_from_node,
        )
    cluster = dict(labels).get("topology.istio.io/cluster") or DEFAULT_CLUSTER_ID
    return Workload(locality=locality, labels=labels, cluster_id=cluster)


def from_kubernetes(args: argparse.Namespace) -> bool:
    """Whether the workload comes (in part) from Kubernetes: the Node or the pod's labels."""
    return bool(
        getattr(args, "locality_from_node", None) or getattr(args, "workload_labels_file", None)
    )


def workload_given(args: argparse.Namespace) -> bool:
    """Whether any flag describes the workload (``check`` then shows its priorities)."""
    given = getattr(args, "locality", None) or getattr(args, "workload_labels", None)
    return bool(given) or from_kubernetes(args)


def read_secret(path: Path | None) -> str | None:
    """The shared secret in ``path`` (surrounding whitespace dropped), or None.

    Raises:
        ExtprocError: the file cannot be read or its content cannot be a secret.
    """
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtprocError(f"--secret-file {path}: cannot read: {exc}") from exc
    if not is_valid_secret(secret):
        raise ExtprocError(
            f"--secret-file {path}: the secret must be 16-512 characters of "
            "[A-Za-z0-9._~+/=-] (for example the output of `openssl rand -base64 32`)"
        )
    if mode & 0o077:
        print(
            f"warning: --secret-file {path}: readable by other users (mode "
            f"{mode & 0o777:o}); chmod 600 it",
            file=sys.stderr,
        )
    return secret


def require_transport(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``serve`` and ``render``: TCP needs a secret, the module a socket dir (usage errors)."""
    if args.command not in ("serve", "render") or args.socket_dir is not None:
        return
    # The sub-command's usage line, as argparse gives for its own errors.
    sub = next(
        (
            action.choices[args.command]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        ),
        parser,
    )
    if args.data_path is DataPath.MODULE:
        sub.error(
            f"{args.command} --data-path module needs --socket-dir (the same directory for "
            "serve and render): the module reaches the service only over its Unix socket"
        )
    if not args.secret_file:
        sub.error(
            f"{args.command} over TCP needs --secret-file (the same one for serve and "
            "render), or --socket-dir: without either, any local process could report "
            "outcomes and move traffic"
        )
