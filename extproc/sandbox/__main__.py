"""``python -m extproc.sandbox``: the sandbox's parts as processes (docker-compose, by hand).

    python -m extproc.sandbox stand-in --name dynamodb.us-east-1.amazonaws.com \\
        --listen 0.0.0.0:8080 --control 0.0.0.0:8081 --any-address
    python -m extproc.sandbox set-mode refuse --control 127.0.0.1:8081
    python -m extproc.sandbox set-mode healthy --control 127.0.0.1:8081
    python -m extproc.sandbox dns --listen 127.0.0.1:5353 \\
        --record dynamodb.us-east-1.amazonaws.com=127.0.8.11

docker-compose runs a stand-in for each region; ``docker compose exec us-east1 python -m
extproc.sandbox set-mode refuse`` makes us-east1 fail (``extproc/sandbox/control.py``).
Without Docker, ``dns`` resolves the seed's names to the stand-ins' loopback addresses, as
Docker's DNS resolves the compose network aliases (README.md, "Run it with docker-compose").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

import structlog

from extproc.sandbox.answers import Mode
from extproc.sandbox.control import parse_address, run_stand_in, set_mode
from extproc.sandbox.dns_responder import DnsResponder

_DEFAULT_CONTROL = "127.0.0.1:8081"
_MODES = "{" + ",".join(m.value for m in Mode) + "}"


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _record(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=IPV4")
    return name, address


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.sandbox",
        description="Stand-ins for external endpoints, as processes (docker-compose, tests).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    stand_in = sub.add_parser("stand-in", help="serve one stand-in and its control channel")
    stand_in.add_argument(
        "--name", required=True, help="the endpoint it stands in for, named in every answer"
    )
    stand_in.add_argument(
        "--listen", type=_address, required=True, help="HOST:PORT the stand-in serves HTTP on"
    )
    stand_in.add_argument(
        "--control",
        type=_address,
        default=parse_address(_DEFAULT_CONTROL),
        help=f"HOST:PORT of the control channel (default {_DEFAULT_CONTROL})",
    )
    stand_in.add_argument(
        "--mode",
        type=Mode,
        choices=list(Mode),
        metavar=_MODES,
        default=Mode.HEALTHY,
        help="the mode at start (default healthy)",
    )
    stand_in.add_argument(
        "--any-address",
        action="store_true",
        help="allow a --listen address outside 127.0.0.0/8 (a container's 0.0.0.0)",
    )

    mode = sub.add_parser("set-mode", help="switch a running stand-in's mode")
    mode.add_argument("mode", type=Mode, choices=list(Mode), metavar=_MODES)
    mode.add_argument(
        "--control",
        type=_address,
        default=parse_address(_DEFAULT_CONTROL),
        help=f"the stand-in's control HOST:PORT (default {_DEFAULT_CONTROL})",
    )
    dns = sub.add_parser("dns", help="answer A queries for fixed names (loopback addresses only)")
    dns.add_argument(
        "--listen",
        type=_address,
        default=parse_address("127.0.0.1:5353"),
        help="HOST:PORT for UDP and TCP (default 127.0.0.1:5353)",
    )
    dns.add_argument(
        "--record",
        type=_record,
        action="append",
        default=[],
        metavar="NAME=IPV4",
        help="a name and one address in 127.0.0.0/8; repeat it for more",
    )
    dns.add_argument("--ttl-s", type=int, default=5, help="TTL of every answer (default 5)")
    return parser


def _configure_logging() -> None:
    # The same shape as the service's logs (server/logs.py), which the sandbox may not import.
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _stand_in(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # PID 1 in a container gets no default SIGTERM handling: stop cleanly on it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_stand_in(
        args.name,
        args.listen,
        args.control,
        stop,
        mode=args.mode,
        loopback_only=not args.any_address,
    )
    return 0


async def _dns(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    records: dict[str, list[str]] = {}
    for name, address in args.record:
        records.setdefault(name, []).append(address)
    host, port = args.listen
    async with DnsResponder(records, host=host, port=port, ttl_s=args.ttl_s):
        await stop.wait()
    return 0


async def _set_mode(args: argparse.Namespace) -> int:
    reply = await set_mode(args.control, args.mode)
    print(json.dumps(reply.body))
    return 0 if reply.status == 200 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        if args.command == "stand-in":
            return asyncio.run(_stand_in(args))
        if args.command == "dns":
            return asyncio.run(_dns(args))
        return asyncio.run(_set_mode(args))
    except (OSError, ValueError) as exc:
        print(f"python -m extproc.sandbox {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
