"""Every address flag goes through one HOST:PORT parser, from the command line or from its
``EXTPROC_*`` variable, and a bad value is a usage error (exit 2, argparse's usage line)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import pytest

from extproc.cli import main, started_line
from extproc.cli.flags import build_parser
from extproc.cli.values import BIND, DNS_SERVER, LISTEN, PEER, parse_hostport
from extproc.settings import HostPort


@pytest.fixture(autouse=True)
def _no_extproc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EXTPROC_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        pytest.param(LISTEN, "127.0.0.1:10001", "127.0.0.1:10001", id="ipv4"),
        pytest.param(LISTEN, "localhost:10001", "127.0.0.1:10001", id="localhost-resolves"),
        pytest.param(LISTEN, "[::1]:10001", "[::1]:10001", id="ipv6-echoed-in-brackets"),
        pytest.param(LISTEN, " 0.0.0.0:10000 ", "0.0.0.0:10000", id="spaces"),
        pytest.param(BIND, "127.0.0.1:0", "127.0.0.1:0", id="bind-port-0-is-a-free-port"),
        pytest.param(DNS_SERVER, "127.0.0.1", "127.0.0.1:53", id="dns-without-port-is-53"),
        pytest.param(DNS_SERVER, "::1", "[::1]:53", id="dns-bare-ipv6-is-53"),
        pytest.param(DNS_SERVER, "[::1]", "[::1]:53", id="dns-bracketed-ipv6-is-53"),
        pytest.param(DNS_SERVER, "127.0.0.1:5353", "127.0.0.1:5353", id="dns-with-port"),
        pytest.param(PEER, "extproc:9002", "extproc:9002", id="peer-keeps-its-name"),
    ],
)
def test_addresses_parse_and_print_as_one_would_type_them(
    kind: Callable[[str], HostPort], text: str, expected: str
) -> None:
    assert str(kind(text)) == expected


def test_a_parsed_address_is_host_and_port() -> None:
    address = parse_hostport("[::1]:10001")
    assert address == HostPort("::1", 10001)
    assert tuple(address) == ("::1", 10001)  # a tuple, as a socket address


@pytest.mark.parametrize(
    ("kind", "text", "says"),
    [
        pytest.param(LISTEN, ":99999", "port 99999 is out of range (0-65535)", id="port-range"),
        pytest.param(BIND, "127.0.0.1:65536", "out of range", id="port-65536"),
        pytest.param(LISTEN, "127.0.0.1:0", "port 0 (any free port) cannot", id="listen-port-0"),
        pytest.param(LISTEN, "::1:10001", "goes in brackets, as in [::1]:10001", id="bare-ipv6"),
        pytest.param(LISTEN, "127.0.0.1", "has no port", id="no-port"),
        pytest.param(LISTEN, "127.0.0.1:", "no port after ':'", id="empty-port"),
        pytest.param(LISTEN, "127.0.0.1:http", "is not a number", id="named-port"),
        pytest.param(LISTEN, ":10001", "has no host: write 127.0.0.1:10001", id="no-host"),
        pytest.param(LISTEN, "[127.0.0.1]:1", "brackets hold an IPv6", id="ipv4-in-brackets"),
        pytest.param(LISTEN, "[::1:1", "brackets hold an IPv6", id="unclosed-bracket"),
        pytest.param(LISTEN, "[::1]1", "expected :PORT after ']'", id="junk-after-bracket"),
        pytest.param(LISTEN, "no such host:1", "not an IP address or a host name", id="spaces"),
        pytest.param(LISTEN, "nope.invalid:1", "cannot resolve 'nope.invalid'", id="no-name"),
        pytest.param(PEER, "-bad-:1", "not an IP address or a host name", id="peer-bad-name"),
    ],
)
def test_bad_addresses_say_what_is_wrong(
    kind: Callable[[str], HostPort], text: str, says: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        kind(text)
    assert says in str(raised.value)


# Every address flag of every command, with a value that only that parser accepts right.
FLAGS = [
    pytest.param(["up", "--config", "x"], "--listen", "LISTEN", id="up-listen"),
    pytest.param(["up", "--config", "x"], "--admin", "ADMIN", id="up-admin"),
    pytest.param(["up", "--config", "x"], "--envoy-admin", "ENVOY_ADMIN", id="up-envoy-admin"),
    pytest.param(["up", "--config", "x"], "--dns-resolver", "DNS_RESOLVER", id="up-dns"),
    pytest.param(["serve", "--config", "x"], "--grpc", "GRPC", id="serve-grpc"),
    pytest.param(["serve", "--config", "x"], "--admin", "ADMIN", id="serve-admin"),
    pytest.param(["serve", "--config", "x"], "--dns-resolver", "DNS_RESOLVER", id="serve-dns"),
    pytest.param(["render", "--config", "x"], "--listen", "LISTEN", id="render-listen"),
    pytest.param(["render", "--config", "x"], "--ext-proc", "EXT_PROC", id="render-ext-proc"),
    pytest.param(
        ["render", "--config", "x"], "--envoy-admin", "ENVOY_ADMIN", id="render-envoy-admin"
    ),
    pytest.param(["status"], "--admin", "ADMIN", id="status-admin"),
]


def _dest(flag: str) -> str:
    """The settings field a flag sets (``--ext-proc`` sets ``grpc``)."""
    for action in _all_actions(build_parser()):
        if flag in action.option_strings:
            return action.dest
    raise AssertionError(f"no flag {flag}")


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions.extend(_all_actions(sub))
    return actions


@pytest.mark.parametrize(("command", "flag", "env"), FLAGS)
def test_every_address_flag_brackets_ipv6(command: list[str], flag: str, env: str) -> None:
    args = build_parser().parse_args([*command, flag, "[::1]:10001"])
    assert str(getattr(args, _dest(flag))) == "[::1]:10001"


@pytest.mark.parametrize(("command", "flag", "env"), FLAGS)
def test_every_address_flag_refuses_an_out_of_range_port_with_usage_and_exit_2(
    command: list[str], flag: str, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, flag, "127.0.0.1:99999"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith(f"usage: extproc {command[0]}")
    assert f"argument {flag}: '127.0.0.1:99999': port 99999 is out of range" in err


@pytest.mark.parametrize(("command", "flag", "env"), FLAGS)
def test_a_bad_address_variable_is_a_usage_error_naming_it(
    command: list[str],
    flag: str,
    env: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(f"EXTPROC_{env}", "[::1")
    parser = build_parser()  # parsing the variable waits for parse_args

    with pytest.raises(SystemExit) as exited:
        parser.parse_args(command)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith(f"usage: extproc {command[0]}")
    assert f"argument {flag}: (from $EXTPROC_{env}) '[::1': brackets hold" in err


@pytest.mark.parametrize(("command", "flag", "env"), FLAGS)
def test_an_address_variable_is_parsed_like_the_flag(
    command: list[str], flag: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"EXTPROC_{env}", "[::1]:10001")
    assert str(getattr(build_parser().parse_args(command), _dest(flag))) == "[::1]:10001"


def test_a_flag_given_wins_over_a_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTPROC_LISTEN", "localhost:99999")
    args = build_parser().parse_args(["up", "--config", "x", "--listen", "127.0.0.1:1"])
    assert args.listen == HostPort("127.0.0.1", 1)


def test_listen_localhost_becomes_an_ip_envoy_accepts() -> None:
    args = build_parser().parse_args(["up", "--config", "x", "--listen", "localhost:10001"])
    assert args.listen == HostPort("127.0.0.1", 10001)


def test_a_dns_resolver_without_a_port_means_port_53() -> None:
    args = build_parser().parse_args(["serve", "--config", "x", "--dns-resolver", "127.0.0.1"])
    assert tuple(args.dns_resolver) == ("127.0.0.1", 53)


def test_up_takes_envoy_admin_and_defaults_to_a_free_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    assert parser.parse_args(["up", "--config", "x"]).envoy_admin is None
    given = parser.parse_args(["up", "--config", "x", "--envoy-admin", "localhost:9901"])
    assert given.envoy_admin == HostPort("127.0.0.1", 9901)
    monkeypatch.setenv("EXTPROC_ENVOY_ADMIN", "127.0.0.1:0")
    parsed = build_parser().parse_args(["up", "--config", "x"]).envoy_admin
    assert tuple(parsed) == ("127.0.0.1", 0)


def test_up_prints_every_address_in_one_pasteable_line() -> None:
    line = started_line(("::1", 10000), ("127.0.0.1", 9090), ("127.0.0.1", 9901))
    assert line == (
        "extproc up: listening on [::1]:10000; status view http://127.0.0.1:9090/clusters;"
        " envoy admin http://127.0.0.1:9901/"
    )


def test_the_sync_port_and_its_old_name_are_range_checked_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flag in ("--sync-port", "--brain-port"):
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--config", "x", flag, "99999"])
        assert exited.value.code == 2
        assert (
            "argument --sync-port/--brain-port: port 99999 is out of range (0-65535)"
            in capsys.readouterr().err
        )
