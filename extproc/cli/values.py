"""The values the command line's flags take: addresses, labels, counts, seconds, choices.

Each parser raises ``argparse.ArgumentTypeError`` saying what is wrong, so argparse prints
it with the usage line (exit 2); ``flags.py`` adds the ``EXTPROC_*`` variable a value came
from. ``HostPort`` itself is in ``extproc/settings.py``.
"""

from __future__ import annotations

import argparse
import functools
import re
import socket
from collections.abc import Callable

from extproc.core.policy import is_ip
from extproc.settings import HostPort
from extproc.wire import DataPath

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


def count(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def port_number(text: str) -> int:
    port = count(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (1/true/yes or 0/false/no)")


def one_of(*values: str) -> Callable[[str], str]:
    def choice(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(values)})"
            )
        return text

    return choice


def data_path(text: str) -> DataPath:
    return DataPath(one_of(*(p.value for p in DataPath))(text))
