"""Only the Envoy we configured can report outcomes or read routing tables.

``extproc up`` reaches its service over Unix sockets in a private (0700) directory, so no
port on the host takes outcome reports. ``extproc serve`` over TCP requires a shared secret
on every ext_proc and EDS stream and on every sync request; the Envoy rendered with it
works on both data paths, and a local process without it changes nothing. Envoy's listener
is its own: no ``SO_REUSEPORT`` sharing with another process (and its one socket still
feeds every worker evenly).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.core.policy import Locality, Workload
from extproc.errors import StartupError
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode
from extproc.sandbox.client import get
from extproc.server.app import ServiceApp
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import (
    GRPC_CLUSTER,
    GRPC_SOCKET,
    SECRET_HEADER,
    SERVICE_HEADER,
    SYNC_AUTHORITY,
    SYNC_CLUSTER,
    SYNC_PATH,
    SYNC_SOCKET,
    DataPath,
)

from .conftest import EAST, WEST, Region, StackFactory, envoy_stat, first_200, serve_with_envoy
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

SECRET = "s3cret-token-for-tests-0123456789"
CLUSTER = "outbound|80||mydb.com"
#: An interpreter another user can run (this one may live in root's home).
SYSTEM_PYTHON = "/usr/bin/python3"


def _tcp_listening_inodes() -> dict[int, int]:
    """inode -> port of every listening TCP socket on this machine (IPv4 and IPv6)."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[int(fields[9])] = int(fields[1].rpartition(":")[2], 16)
    return found


def _our_tcp_listen_ports() -> set[int]:
    """The TCP ports this process (the test, with the service inside it) listens on."""
    listening = _tcp_listening_inodes()
    ports = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in listening:
                ports.add(listening[inode])
    return ports


async def test_up_takes_outcome_reports_on_no_tcp_port(
    start_stack: StackFactory, regions: dict[str, Region], dns: DnsResponder
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    assert (await get(stack.settings.listen, "mydb.com")).served_by == EAST
    # Stand-ins, the DNS responder and the admin view listen in this process; the
    # service's gRPC and sync do not listen on TCP at all.
    expected = {r.port for r in regions.values()} | {dns.address[1], stack.app.admin_address[1]}
    assert _our_tcp_listen_ports() == expected
    clusters = {
        c["name"]: c
        for c in yaml.safe_load(stack.config_path.read_text())["static_resources"]["clusters"]
    }
    for name in (GRPC_CLUSTER, SYNC_CLUSTER):
        if name not in clusters:
            continue  # the brain cluster exists on the lua path only
        [lb] = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert "pipe" in lb["endpoint"]["address"], name


async def test_up_keeps_its_sockets_in_a_directory_only_its_user_can_open(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    directory = stack.config_path.parent
    info = directory.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    for name in (GRPC_SOCKET, SYNC_SOCKET):
        assert (directory / name).is_socket()


@pytest.mark.skipif(
    os.getuid() != 0 or not Path(SYSTEM_PYTHON).exists() or not shutil.which("setpriv"),
    reason="connecting as another user needs root and setpriv (to become nobody) and a "
    "system python3",
)
async def test_another_local_user_cannot_connect_to_ups_sockets(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    directory = stack.config_path.parent
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    sys.exit(13)\n"
        "sys.exit(0)\n"
    )
    for name in (GRPC_SOCKET, SYNC_SOCKET):
        # setpriv drops to nobody in the child only (fork-safe with gRPC's threads here).
        proc = await asyncio.create_subprocess_exec(
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
            *("/usr/bin/env", "-i", SYSTEM_PYTHON, "-I", "-c", probe, str(directory / name)),
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
        )
        _, stderr = await proc.communicate()
        assert proc.returncode == 13, stderr


async def test_a_second_up_on_a_busy_listen_port_is_refused_and_takes_no_traffic(
    start_stack: StackFactory, regions: dict[str, Region], dns: DnsResponder
) -> None:
    first = await start_stack(seed(regions["east"].port, regions["west"].port))
    second = Stack(
        load_policy_text(seed(regions["east"].port, regions["west"].port), "test.yaml"),
        Settings(
            listen=first.settings.listen,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-west")),
        ),
    )
    with pytest.raises(
        StartupError, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"
    ):
        await second.start()
    replies = [await get(first.settings.listen, "mydb.com") for _ in range(10)]
    assert {r.served_by for r in replies} == {EAST}


async def test_envoys_listener_does_not_share_its_port_through_so_reuseport(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="Address already in use"):
            intruder.bind(stack.settings.listen)


async def test_one_listening_socket_still_spreads_connections_evenly_over_the_workers(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    """Without SO_REUSEPORT the kernel may wake one worker for every accept; Envoy's exact
    balance hands each connection to the worker with the fewest."""
    stack = await start_stack(seed(regions["east"].port, regions["west"].port), concurrency=2)
    writers = []
    try:
        for _ in range(6):
            reader, writer = await asyncio.open_connection(*stack.settings.listen)
            writers.append(writer)
            writer.write(b"GET / HTTP/1.1\r\nhost: mydb.com\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        host, port = stack.settings.listen
        active = [
            await envoy_stat(stack, f"listener.{host}_{port}.worker_{n}.downstream_cx_active")
            for n in range(2)
        ]
    finally:
        for writer in writers:
            writer.close()
    assert active == [3, 3]


# -- extproc serve over TCP, with a shared secret ------------------------------------------


def _ejected(app: ServiceApp) -> set[str]:
    cluster = app.table.clusters[CLUSTER]
    return {view.address for view in cluster.hosts(app.now()) if view.ejected}


async def test_serve_with_a_secret_works_with_the_envoy_given_it(
    tmp_path: Path, data_path: DataPath, regions: dict[str, Region], dns: DnsResponder
) -> None:
    app, envoy, listen = await serve_with_envoy(
        tmp_path, seed(regions["east"].port, regions["west"].port), data_path, dns, SECRET
    )
    try:
        await first_200(listen)
        assert (await get(listen, "mydb.com")).served_by == EAST
        # Its outcome reports are accepted: a 503 ejects us-east1 and traffic moves.
        regions["east"].servers[0].set_mode(Mode.FAIL_503)
        replies = [await get(listen, "mydb.com") for _ in range(6)]
        assert replies[-1].served_by == WEST
        assert _ejected(app) == {f"127.0.0.11:{regions['east'].port}"}
    finally:
        await envoy.stop()
        await app.stop()


@pytest.mark.parametrize("secret", [None, "wrong-secret-but-long-enough"], ids=["none", "wrong"])
async def test_serve_refuses_a_local_process_without_the_secret_on_every_port(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder, secret: str | None
) -> None:
    app, envoy, listen = await serve_with_envoy(
        tmp_path, seed(regions["east"].port, regions["west"].port), DataPath.LUA, dns, SECRET
    )
    east = f"127.0.0.11:{regions['east'].port}"
    try:
        await first_200(listen)
        # The fast path's sync: a forged report that would eject a healthy us-east1.
        headers = {SERVICE_HEADER: CLUSTER, "x-extproc-worker": "forged"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        for _ in range(3):
            reply = await get(
                ("127.0.0.1", app.sync_port),
                SYNC_AUTHORITY,
                SYNC_PATH,
                method="POST",
                headers=headers,
                body=f"e {east} 503\n".encode(),
            )
            assert reply.status == 403
        assert _ejected(app) == set()

        metadata = () if secret is None else ((SECRET_HEADER, secret),)
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            # ext_proc: a stream that would report a 503 of us-east1.
            stream = pb_grpc.ExternalProcessorStub(channel).Process(metadata=metadata)
            request = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
            assert await _refusal(stream, request) is grpc.StatusCode.UNAUTHENTICATED
            # EDS: the routing tables (every host, priority and health) are not readable.
            eds = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel).StreamEndpoints(
                metadata=metadata
            )
            discovery = discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id="intruder"), resource_names=[CLUSTER]
            )
            assert await _refusal(eds, discovery) is grpc.StatusCode.UNAUTHENTICATED
            # Health stays open: it tells nothing but SERVING.
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert _ejected(app) == set()
        replies = [await get(listen, "mydb.com") for _ in range(5)]
        assert {r.served_by for r in replies} == {EAST}
    finally:
        await envoy.stop()
        await app.stop()


async def _refusal(call: Any, request: Any) -> grpc.StatusCode | None:
    """The status a stream ends with after one message; None if it answered.

    The server may end the stream before the message is written (the write raises) or
    after (the read does): either way it is refused, never read.
    """
    try:
        await call.write(request)
        await call.read()
    except grpc.aio.AioRpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_the_admin_view_is_read_only(
    start_stack: StackFactory, regions: dict[str, Region], method: str
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    before = (await get(stack.app.admin_address, "admin", "/endpoints")).body
    for path in ("/endpoints", "/clusters", "/v1/sync", "/metrics"):
        reply = await get(
            stack.app.admin_address,
            "admin",
            path,
            method=method,
            headers={SERVICE_HEADER: CLUSTER},
            body=f"e 127.0.0.11:{regions['east'].port} 503\n".encode(),
        )
        assert reply.status == 405, path
    assert (await get(stack.app.admin_address, "admin", "/endpoints")).body == before
