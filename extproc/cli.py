"""The ``extproc`` command line.

Every flag can also come from an ``EXTPROC_*`` variable (``--dns-resolver`` from
``EXTPROC_DNS_RESOLVER``); a flag on the command line wins. A variable's value is parsed
as the flag's value would be, after the command line, so a bad one is a usage error (exit
2) that names the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from extproc import __version__
from extproc.core.policy import (
    DEFAULT_CLUSTER_ID,
    Locality,
    Policy,
    Workload,
    host_address,
    is_ip,
)
from extproc.errors import ConfigError, ExtprocError, Problem
from extproc.server.reload import PolicyChange, Stamp, fingerprint

if TYPE_CHECKING:
    from extproc.server.metrics import Metrics
    from extproc.server.reload import ConfigReloader
    from extproc.wire import DataPath

T = TypeVar("T")

# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPort:
    """An address as the flags take it; ``str`` gives it back as one would type it."""

    host: str
    port: int

    def __str__(self) -> str:
        return host_address(self.host, self.port)

    @property
    def pair(self) -> tuple[str, int]:
        """``(host, port)``, as the settings classes take it."""
        return (self.host, self.port)


# A DNS name as Envoy's STRICT_DNS cluster would resolve it: dot-separated labels.
_DNS_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")


def parse_hostport(
    text: str, *, default_port: int | None = None, resolve: bool = True, fixed_port: bool = False
) -> HostPort:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> ``HostPort``.

    Args:
        text: what the user typed.
        default_port: the port when ``text`` has none (53 for a DNS server); None: required.
        resolve: turn a name into its first IPv4 address (else IPv6), for what must bind
            or what Envoy takes only as an IP; False keeps a name (a peer that resolves it
            itself, such as Envoy's STRICT_DNS cluster for ``--ext-proc``).
        fixed_port: refuse port 0 (any free port) where the port must be known.

    Raises:
        argparse.ArgumentTypeError: saying what is wrong, so argparse prints it with usage.
    """
    text = text.strip()
    host, port_text = _split_hostport(text, default_port is not None)
    if port_text is None:
        assert default_port is not None
        port = default_port
    elif not (port_text.isascii() and port_text.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the port {port_text!r} is not a number"
            if port_text
            else f"{text!r}: no port after ':'"
        )
    else:
        port = int(port_text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is out of range (0-65535)")
    if port == 0 and fixed_port:
        raise argparse.ArgumentTypeError(
            f"{text!r}: port 0 (any free port) cannot be used here; give the port"
        )
    if not host:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no host: write 127.0.0.1:{port} (this machine only)"
            f" or 0.0.0.0:{port} (every interface)"
        )
    if is_ip(host):
        return HostPort(host, port)
    if not _DNS_NAME.match(host):
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not an IP address or a host name")
    return HostPort(_resolve(host) if resolve else host, port)


def _split_hostport(text: str, port_optional: bool) -> tuple[str, str | None]:
    """``text`` -> (host, port text or None when absent and ``port_optional``)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in host or not is_ip(host):
            raise argparse.ArgumentTypeError(
                f"{text!r}: brackets hold an IPv6 address, as in [::1]:10000"
            )
        if not rest and port_optional:
            return host, None
        if not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected :PORT after ']'")
        return host, rest[1:]
    if port_optional and (is_ip(text) or ":" not in text):
        return text, None  # an address without a port, IPv6 included
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} has no port: write HOST:PORT")
    if ":" in host:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an IPv6 address goes in brackets, as in [{host}]:{port}"
        )
    return host, port


def _resolve(host: str) -> str:
    """A name's first IPv4 address, else its first IPv6 one (``localhost`` -> 127.0.0.1).

    Envoy takes only IP addresses for its listeners and admin (a name there fails with
    ``malformed IP address``), and a DNS resolver is reached by address.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise argparse.ArgumentTypeError(
            f"cannot resolve {host!r} to an IP address ({reason}); give an IP address"
        ) from None
    addresses = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
    ipv4 = [address for family, address in addresses if family == socket.AF_INET]
    ipv6 = [address for family, address in addresses if family == socket.AF_INET6]
    if not ipv4 + ipv6:
        raise argparse.ArgumentTypeError(f"{host!r} has no IPv4 or IPv6 address")
    return (ipv4 + ipv6)[0]


def _address(
    *, default_port: int | None = None, resolve: bool = True, fixed_port: bool = False
) -> Callable[[str], HostPort]:
    """``parse_hostport`` with these options, as an argparse type."""
    return functools.partial(
        parse_hostport, default_port=default_port, resolve=resolve, fixed_port=fixed_port
    )


HP = "HOST:PORT"  # the metavar of address flags
#: What binds in this process or in Envoy: names resolved, port 0 means a free one.
BIND = _address()
#: Envoy's HTTP listener: an IP and a fixed port (what clients are told to use).
LISTEN = _address(fixed_port=True)
#: A DNS server: an IP (dnspython asks it directly), port 53 unless given.
DNS_SERVER = _address(default_port=53, fixed_port=True)
#: Something that is reached, not bound: a name stays a name (it resolves where it is used).
PEER = _address(resolve=False, fixed_port=True)


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


def _count(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _port(text: str) -> int:
    port = _count(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (1/true/yes or 0/false/no)")


def _one_of(*values: str) -> Callable[[str], str]:
    def choice(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(values)})"
            )
        return text

    return choice


def _data_path(text: str) -> DataPath:
    from extproc.wire import DataPath

    return DataPath(_one_of(*(p.value for p in DataPath))(text))


# --- flags and their EXTPROC_* variables ----------------------------------------------------


class _FromEnv(str):
    """A flag's default read from an ``EXTPROC_*`` variable.

    argparse parses a string default as it parses the flag's value, after the command line
    and only when the flag was not given (its documented rule), so a bad value becomes a
    usage error; ``_typed`` adds the variable's name to it.
    """

    var: str

    def __new__(cls, text: str, var: str) -> _FromEnv:
        self = super().__new__(cls, text)
        self.var = var
        return self


def _typed(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert`` as an argparse type whose errors name the variable a value came from."""

    @functools.wraps(convert)
    def parse(text: str) -> T:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as exc:
            if isinstance(text, _FromEnv):
                raise argparse.ArgumentTypeError(f"(from ${text.var}) {exc}") from None
            raise

    return parse


class _Switch(argparse.Action):
    """A flag without a value (``--strict``) whose variable may say 1/true or 0/false."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        default: Any = False,
        type: Callable[[str], Any] | None = None,  # noqa: A002 (argparse's keyword)
        help: str | None = None,  # noqa: A002 (argparse's keyword)
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, type=type, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def _env_name(name: str) -> str:
    return f"EXTPROC_{name}"


def _option(
    parser: argparse._ActionsContainer,
    flag: str,
    env: str,
    convert: Callable[[str], Any],
    default: str | None,
    help: str,  # noqa: A002 (argparse's keyword)
    **kwargs: Any,
) -> None:
    """Add ``flag`` (``--listen``), its default overridable by ``EXTPROC_<env>``.

    ``default`` is text, parsed by ``convert`` like a value given on the command line, and
    only if it is used. An empty variable counts as unset.
    """
    var = _env_name(env)
    text = os.environ.get(var) or None
    shown = f"default {default}; ${var}" if default else f"${var}"
    parser.add_argument(
        flag,
        type=_typed(convert),
        default=_FromEnv(text, var) if text is not None else default,
        help=f"{help} ({shown})",
        **kwargs,
    )


def _switch(parser: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:  # noqa: A002
    """Add an on/off ``flag``; ``EXTPROC_<env>=1`` turns it on."""
    var = _env_name(env)
    text = os.environ.get(var) or None
    parser.add_argument(
        flag,
        action=_Switch,
        type=_typed(_boolean),
        default=_FromEnv(text, var) if text is not None else False,
        help=f"{help} (${var}=1)",
    )


def _add_config(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """``--config`` (and, for ``check``, a positional PATH instead); ``-`` reads stdin."""
    required = not os.environ.get(_env_name("CONFIG"))
    where: argparse._ActionsContainer = parser
    if positional:
        where = parser.add_mutually_exclusive_group(required=required)
        where.add_argument(
            "path", nargs="?", type=Path, metavar="PATH", help="the config, as --config"
        )
    _option(
        where,
        "--config",
        "CONFIG",
        Path,
        None,
        "ServiceEntry/DestinationRule YAML: a file or a directory; - reads standard input",
        required=required and not positional,
    )


def _add_strict(parser: argparse.ArgumentParser) -> None:
    _switch(
        parser,
        "--strict",
        "STRICT",
        "warnings are errors, for CI: fields extproc ignores, a --locality no endpoint has",
    )
    _switch(
        parser,
        "--strict-max-ejection-percent",
        "STRICT_MAX_EJECTION_PERCENT",
        "apply maxEjectionPercent to the first ejection too, as Envoy >= 1.28 does "
        "(default: the first ejection is always allowed, Envoy's always_eject_one_host)",
    )


def _add_locality(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--locality",
        "LOCALITY",
        str,
        "",
        "the workload's locality region[/zone[/subzone]]",
    )
    _option(
        parser,
        "--workload-labels",
        "WORKLOAD_LABELS",
        parse_labels,
        "",
        "the workload's labels, matched by localityLbSetting.failoverPriority; the "
        "topology labels of --locality are added",
        metavar="K=V[,K=V...]",
    )


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The workload; a ``topology.istio.io/cluster`` label names its cluster, as a sidecar's
    ``ISTIO_META_CLUSTER_ID`` does (default ``Kubernetes``)."""
    labels: tuple[tuple[str, str], ...] = args.workload_labels
    cluster = dict(labels).get("topology.istio.io/cluster") or DEFAULT_CLUSTER_ID
    return Workload(locality=Locality.parse(args.locality), labels=labels, cluster_id=cluster)


def _add_dns(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--dns-resolver",
        "DNS_RESOLVER",
        DNS_SERVER,
        None,
        "resolve endpoint names with this DNS server (port 53 unless given; "
        "default: the system's resolvers)",
        metavar="HOST[:PORT]",
    )


def _add_message_timeout(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--message-timeout-ms",
        "MESSAGE_TIMEOUT_MS",
        _count,
        "1000",
        "Envoy's budget for each ext_proc answer; past it the request fails closed",
    )


def _add_data_path(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--data-path",
        "DATA_PATH",
        _data_path,
        "lua",
        "lua: Envoy routes from tables the service publishes (fast); "
        "ext_proc: the service is asked on every request",
        metavar="{lua,ext_proc}",
    )


def _add_system_ca_file(parser: argparse.ArgumentParser) -> None:
    from extproc.render.bootstrap import DEFAULT_SYSTEM_CA_FILE

    _option(
        parser,
        "--system-ca-file",
        "SYSTEM_CA_FILE",
        str,
        DEFAULT_SYSTEM_CA_FILE,
        "the CA bundle, as Envoy sees it, for DestinationRule tls without caCertificates "
        "(Istio's system roots)",
    )


def _add_reload(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "--watch-interval-s",
        "WATCH_INTERVAL_S",
        _seconds,
        "1",
        "look for config changes this often; 0: only on SIGHUP",
    )


def _add_admin(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--admin", "ADMIN", BIND, "127.0.0.1:9090", "the status view", metavar=HP)


def _add_listen(parser: argparse.ArgumentParser, default: str) -> None:
    _option(parser, "--listen", "LISTEN", LISTEN, default, "Envoy's HTTP listener", metavar=HP)


def _add_envoy_admin(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:  # noqa: A002
    _option(parser, "--envoy-admin", "ENVOY_ADMIN", BIND, default, help, metavar=HP)


def _add_brain_port(parser: argparse.ArgumentParser, where: str) -> None:
    _option(
        parser,
        "--brain-port",
        "BRAIN_PORT",
        _port,
        "9004",
        f"the fast path's HTTP sync port, {where}",
    )


def _add_transport(parser: argparse.ArgumentParser, who: str) -> None:
    """How Envoy and ``serve`` reach each other when ``up`` does not run both.

    Outcome reports move traffic, so no transport is open to any local process: Unix
    sockets in a directory only Envoy and the service can open, or TCP with a shared secret
    on every ext_proc and EDS stream and sync request.
    """
    _option(
        parser,
        "--socket-dir",
        "SOCKET_DIR",
        Path,
        None,
        f"Unix sockets in this directory instead of TCP ({who}); give it the same "
        "directory on both sides, one only they can open",
        metavar="DIR",
    )
    _option(
        parser,
        "--secret-file",
        "SECRET_FILE",
        Path,
        None,
        "over TCP: a file holding the shared secret (16-512 of [A-Za-z0-9._~+/=-], e.g. "
        "`openssl rand -base64 32`), the same file for serve and render",
        metavar="FILE",
    )


def read_secret(path: Path | None) -> str | None:
    """The shared secret in ``path`` (surrounding whitespace dropped), or None.

    Raises:
        ExtprocError: the file cannot be read or its content cannot be a secret.
    """
    from extproc.wire import is_valid_secret

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


def _require_transport(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.command in ("serve", "render") and args.socket_dir is None and not args.secret_file:
        # The sub-command's usage line, as argparse gives for its own errors.
        sub = next(
            (
                action.choices[args.command]
                for action in parser._actions
                if isinstance(action, argparse._SubParsersAction)
            ),
            parser,
        )
        sub.error(
            f"{args.command} over TCP needs --secret-file (the same one for serve and "
            "render), or --socket-dir: without either, any local process could report "
            "outcomes and move traffic"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extproc",
        description="Istio's locality failover for external services, on plain Envoy.",
    )
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    _option(
        parser,
        "--log-level",
        "LOG_LEVEL",
        _one_of("debug", "info", "warning", "error"),
        None,
        "default: info (warning for demo, whose story is the output)",
        metavar="{debug,info,warning,error}",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the service and Envoy on this machine (foreground)")
    _add_config(up)
    _add_strict(up)
    _add_locality(up)
    _add_listen(up, "127.0.0.1:10000")
    _add_admin(up)
    _add_envoy_admin(
        up,
        None,
        "Envoy's own admin (/stats, /config_dump); default: a free loopback port",
    )
    _add_dns(up)
    _option(up, "--concurrency", "CONCURRENCY", _count, "2", "Envoy worker threads")
    _add_message_timeout(up)
    _add_data_path(up)
    _add_system_ca_file(up)
    _option(
        up,
        "--envoy-log-level",
        "ENVOY_LOG_LEVEL",
        str,
        "warning",
        "Envoy's --log-level",
    )
    _add_reload(up)
    _option(
        up,
        "--drain-time-s",
        "DRAIN_TIME_S",
        _count,
        "10",
        "on a reload that restarts Envoy, how long the old Envoy drains its connections; "
        "it exits 5 s later",
    )

    serve = sub.add_parser("serve", help="run the ext_proc service alone (compose, Kubernetes)")
    _add_config(serve)
    _add_strict(serve)
    _add_locality(serve)
    _option(serve, "--grpc", "GRPC", BIND, "127.0.0.1:9002", "gRPC (ext_proc + health)", metavar=HP)
    _add_brain_port(serve, "on the --grpc host")
    _add_transport(serve, "--grpc and --brain-port are not used then")
    _add_admin(serve)
    _add_dns(serve)
    _add_reload(serve)

    render = sub.add_parser("render", help="print the Envoy bootstrap for a config")
    _add_config(render)
    _add_strict(render)
    _add_listen(render, "0.0.0.0:10000")
    _option(
        render,
        "--ext-proc",
        "EXT_PROC",
        PEER,
        "127.0.0.1:9002",
        "where Envoy reaches the service (a name is resolved by Envoy)",
        metavar=HP,
    )
    _add_envoy_admin(render, "127.0.0.1:9901", "Envoy's own admin")
    _add_message_timeout(render)
    _add_data_path(render)
    _add_system_ca_file(render)
    _add_brain_port(render, "on the --ext-proc host")
    _add_transport(render, "--ext-proc and --brain-port are not used then")
    render.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write to a file instead of stdout (mode 600 when it holds the secret)",
    )
    render.add_argument(
        "--validate", action="store_true", help="also run envoy --mode validate on it"
    )

    check = sub.add_parser(
        "check",
        help="validate a config: exit 0 ok (and a summary), 1 errors; warnings on stderr",
    )
    _add_config(check, positional=True)
    _add_strict(check)
    _add_locality(check)

    status = sub.add_parser("status", help="print the endpoint table of a running service")
    _option(status, "--admin", "ADMIN", PEER, "127.0.0.1:9090", "the status view", metavar=HP)
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    demo = sub.add_parser("demo", help="play the seed's failover story locally (no Docker)")
    demo.add_argument(
        "--pause", type=_typed(_seconds), default=0.3, help="seconds between requests"
    )
    _add_data_path(demo)
    return parser


# --- commands -------------------------------------------------------------------------------


def read_config(path: Path, args: argparse.Namespace, workload: Workload | None) -> Policy:
    """Load a config as the flags say; the workload's locality warnings join its warnings.

    Raises:
        ConfigError: the config's errors, and with ``--strict`` its warnings too.
    """
    from extproc.istio import load_policy, locality_warnings

    strict: bool = args.strict
    policy = load_policy(
        path, always_eject_one_host=not args.strict_max_ejection_percent, strict=strict
    )
    extra = locality_warnings(policy, workload) if workload is not None else []
    if extra and strict:
        raise ConfigError([Problem(_source(path), "", "", text) for text in extra])
    if extra:
        policy = dataclasses.replace(policy, warnings=(*policy.warnings, *extra))
    return policy


def _source(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def show_warnings(policy: Policy) -> None:
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)


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
    policy: Policy,
    apply: Callable[[Policy], Awaitable[PolicyChange]],
    metrics: Metrics,
    stamp: tuple[Stamp, ...],
) -> ConfigReloader:
    """Live reload of ``--config``; SIGHUP asks for one (installed here, before start)."""
    from extproc.server.reload import ConfigReloader

    workload = workload_from_args(args)

    def read(path: Path) -> Policy:
        return read_config(path, args, workload)

    reloader = ConfigReloader(
        args.config,
        read,
        apply,
        metrics=metrics,
        poll_s=args.watch_interval_s,
        initial=stamp,
        policy=policy,
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.request)
    return reloader


def started_line(
    listen: tuple[str, int], admin: tuple[str, int], envoy_admin: tuple[str, int]
) -> str:
    """What ``extproc up`` prints once it serves: every address, ready to paste."""
    return (
        f"extproc up: listening on {HostPort(*listen)};"
        f" status view http://{HostPort(*admin)}/clusters;"
        f" envoy admin http://{HostPort(*envoy_admin)}/"
    )


async def _up(args: argparse.Namespace, policy: Policy, stamp: tuple[Stamp, ...]) -> int:
    from extproc.server.stack import Stack, StackSettings

    stop = _stop_on_signals()
    envoy_admin: HostPort | None = args.envoy_admin
    stack = Stack(
        policy,
        workload_from_args(args),
        StackSettings(
            listen=args.listen.pair,
            admin=args.admin.pair,
            dns_resolver=args.dns_resolver.pair if args.dns_resolver else None,
            concurrency=args.concurrency,
            envoy_log_level=args.envoy_log_level,
            message_timeout_ms=args.message_timeout_ms,
            data_path=args.data_path,
            system_ca_file=args.system_ca_file,
            drain_time_s=args.drain_time_s,
            parent_shutdown_time_s=args.drain_time_s + 5,
            envoy_admin=envoy_admin.pair if envoy_admin else None,
        ),
    )
    reloader = _reloader(args, policy, stack.reload, stack.app.metrics, stamp)
    # A signal during start-up stops what already runs (Stack.start cleans up on cancel).
    starting = asyncio.ensure_future(stack.start())
    await _first(starting, stop.wait())
    if not starting.done() or starting.cancelled():
        return 0
    starting.result()  # raises StartupError when a part did not start
    assert stack.envoy is not None
    print(
        started_line(stack.settings.listen, stack.app.admin_address, stack.envoy_admin_address),
        file=sys.stderr,
        flush=True,
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
            grpc_host=args.grpc.host,
            grpc_port=args.grpc.port,
            admin_host=args.admin.host,
            admin_port=args.admin.port,
            dns_resolver=args.dns_resolver.pair if args.dns_resolver else None,
            brain_port=args.brain_port,
            socket_dir=args.socket_dir,
            secret=read_secret(args.secret_file),
        ),
    )
    stop = _stop_on_signals()
    reloader = _reloader(args, policy, app.apply_policy, app.metrics, stamp)
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

    secret = read_secret(args.secret_file)
    bootstrap = render_bootstrap(
        policy,
        RenderSettings(
            listen_host=args.listen.host,
            listen_port=args.listen.port,
            ext_proc_host=args.ext_proc.host,
            ext_proc_port=args.ext_proc.port,
            envoy_admin_host=args.envoy_admin.host,
            envoy_admin_port=args.envoy_admin.port,
            message_timeout_ms=args.message_timeout_ms,
            data_path=args.data_path,
            brain_port=args.brain_port,
            system_ca_file=args.system_ca_file,
            socket_dir=str(args.socket_dir) if args.socket_dir is not None else None,
            secret=secret,
        ),
    )
    text = yaml.safe_dump(bootstrap, sort_keys=False)
    if args.output:
        # The bootstrap holds the secret when there is one: only its owner may read it.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
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


def _check(args: argparse.Namespace) -> int:
    from extproc.istio import check_summary

    path: Path = args.path if args.path is not None else args.config
    given = bool(args.locality or args.workload_labels)
    workload = workload_from_args(args) if given else None
    policy = read_config(path, args, workload)
    show_warnings(policy)
    print(f"{_source(path)}: OK", file=sys.stderr)
    print(check_summary(policy, workload))
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
    url = f"http://{args.admin}/endpoints"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"extproc status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _require_transport(parser, args)
    from extproc.server.logs import configure_logging

    configure_logging(args.log_level or ("warning" if args.command == "demo" else "info"))
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "status":
            return _status(args)
        if args.command == "demo":
            from extproc.demo import run_demo

            return asyncio.run(run_demo(pause_s=args.pause, data_path=args.data_path))
        # Taken before reading: a change made while we start is reloaded at once.
        stamp = fingerprint(args.config)
        workload = workload_from_args(args) if args.command in ("up", "serve") else None
        policy = read_config(args.config, args, workload)
        show_warnings(policy)
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
