"""Envoy health-checks the service over gRPC, as the rendered bootstrap tells it to.

The service cluster's ``grpc_health_check`` asks for
``envoy.service.ext_proc.v3.ExternalProcessor``. A healthy service shows as a healthy host
in Envoy's ``/clusters`` with ``health_check.success`` counting; NOT_SERVING (shutdown)
marks it unhealthy at once; and an unhealthy or absent service never stops Envoy from
starting, nor fails a request that would otherwise work. The probes' names follow the EPP
protocol: ``liveness`` as soon as the port is up, the others once the service is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.core.policy import Locality, Workload
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.sandbox import DnsResponder
from extproc.sandbox.client import get
from extproc.server.app import ServiceApp
from extproc.server.envoy_process import EnvoyProcess
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import GRPC_CLUSTER, GRPC_HEALTH_SERVICE, DataPath

from .conftest import EAST, WEST, Region, StackFactory, envoy_stat
from .seed_yaml import seed

pytestmark = pytest.mark.e2e


def _admin_json(admin: tuple[str, int], path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}{path}", timeout=2) as reply:
        return json.load(reply)


async def service_host_health(admin: tuple[str, int]) -> dict[str, Any]:
    """The ``health_status`` of the service cluster's one host in Envoy's ``/clusters``."""
    clusters = await asyncio.to_thread(_admin_json, admin, "/clusters?format=json")
    [cluster] = [c for c in clusters["cluster_statuses"] if c["name"] == GRPC_CLUSTER]
    [host] = cluster["host_statuses"]
    return host["health_status"]  # type: ignore[no-any-return]


async def wait_for_health(
    admin: tuple[str, int], failed: bool, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Poll until the service host's active health check has (not) failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status = await service_host_health(admin)
        if status.get("failed_active_health_check", False) == failed:
            return status
        if loop.time() > deadline:
            raise AssertionError(f"service host health stayed {status}")
        await asyncio.sleep(0.1)


def _envoy_admin(stack: Stack) -> tuple[str, int]:
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    return stack.envoy.admin_address


async def test_envoy_health_checks_the_service_and_sees_it_healthy(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    admin = _envoy_admin(stack)
    status = await wait_for_health(admin, failed=False)
    assert status["eds_health_status"] == "HEALTHY"
    for _ in range(50):
        if await envoy_stat(stack, f"cluster.{GRPC_CLUSTER}.health_check.success") > 0:
            break
        await asyncio.sleep(0.1)
    assert await envoy_stat(stack, f"cluster.{GRPC_CLUSTER}.health_check.success") > 0
    assert await envoy_stat(stack, f"cluster.{GRPC_CLUSTER}.health_check.healthy") == 1
    assert (await get(stack.settings.listen, "mydb.com")).served_by == EAST


async def test_not_serving_marks_the_service_unhealthy_and_requests_still_work(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    admin = _envoy_admin(stack)
    await wait_for_health(admin, failed=False)

    await stack.app.health.set(GRPC_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    await wait_for_health(admin, failed=True, timeout_s=5)
    # An answered NOT_SERVING is an active failure, not a network one.
    assert await envoy_stat(stack, f"cluster.{GRPC_CLUSTER}.health_check.failure") > 0
    assert await envoy_stat(stack, f"cluster.{GRPC_CLUSTER}.health_check.network_failure") == 0
    # The only service host is in panic: Envoy still uses it for ext_proc, EDS and syncs.
    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(5)]
    assert [(r.status, r.served_by) for r in replies] == [(200, EAST)] * 5

    await stack.app.health.set(GRPC_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await wait_for_health(admin, failed=False, timeout_s=5)


async def test_shutdown_turns_the_service_not_serving_then_envoy_marks_it_unhealthy(
    start_stack: StackFactory, regions: dict[str, Region]
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    admin = _envoy_admin(stack)
    await wait_for_health(admin, failed=False)

    async with grpc.aio.insecure_channel(stack.app.grpc_target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=GRPC_HEALTH_SERVICE)
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(stack.app.stop())
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # an open watch would hold the server for its grace period
        await asyncio.wait_for(stopping, 10)
    await wait_for_health(admin, failed=True)


async def test_envoy_started_before_the_service_waits_for_it_then_serves(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder
) -> None:
    # Both paths route over the service's EDS cluster: Envoy's initialization waits for the
    # first EDS answer (ConfigSource initial_fetch_timeout, 15 s by default), so a listener
    # opened before the service could only fail requests closed anyway.
    yaml_text = seed(regions["east"].port, regions["west"].port)
    grpc_port, sync_port, listen_port = free_port(), free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    bootstrap = render_bootstrap(
        load_policy_text(yaml_text, "test.yaml"),
        Settings(
            listen=HostPort("127.0.0.1", listen_port),
            grpc=HostPort("127.0.0.1", grpc_port),
            sync_port=sync_port,
            data_path=DataPath.EXT_PROC,
        ),
    )
    config.write_text(yaml.safe_dump(bootstrap))
    envoy = EnvoyProcess(config, concurrency=1)
    app = ServiceApp(
        load_policy_text(yaml_text, "test.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", grpc_port),
            sync_port=sync_port,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            shutdown_grace_s=0,
            workload=Workload(Locality.parse("us-east1")),
        ),
        rng=random.Random(1),
    )
    try:
        await envoy.start()
        assert envoy.admin_address is not None
        admin = envoy.admin_address
        # No service yet: Envoy runs, its health check fails the service host, and it is not
        # ready: its listener stays closed, no request gets anywhere.
        for _ in range(100):
            if (await service_host_health(admin)).get("failed_active_health_check") is True:
                break
            await asyncio.sleep(0.1)
        assert (await service_host_health(admin)).get("failed_active_health_check") is True
        assert await _ready_status(admin) != 200
        assert (await get(("127.0.0.1", listen_port), "mydb.com")).status == 0

        await app.start()
        for _ in range(100):
            if await _ready_status(admin) == 200:
                break
            await asyncio.sleep(0.1)
        await wait_for_health(admin, failed=False)
        reply = await get(("127.0.0.1", listen_port), "mydb.com")
        assert (reply.status, reply.served_by) == (200, EAST)
    finally:
        await envoy.stop()
        await app.stop()


async def _ready_status(admin: tuple[str, int]) -> int:
    """Envoy's ``/ready``: 200 once initialized (EDS included), 503 before."""
    url = f"http://{admin[0]}:{admin[1]}/ready"
    try:
        reply = await asyncio.to_thread(urllib.request.urlopen, url, None, 2)
    except urllib.error.HTTPError as exc:
        return exc.code
    return int(reply.status)


async def _check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


async def test_liveness_serves_while_the_first_dns_answer_is_pending_readiness_waits(
    regions: dict[str, Region],
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent_dns:
        silent_dns.bind(("127.0.0.1", 0))  # takes queries, never answers: DNS times out
        grpc_port = free_port()
        app = ServiceApp(
            load_policy_text(seed(regions["east"].port, regions["west"].port), "test.yaml"),
            Settings(
                grpc=HostPort("127.0.0.1", grpc_port),
                sync_port=0,
                admin=HostPort("127.0.0.1", 0),
                dns_resolver=silent_dns.getsockname(),
                shutdown_grace_s=0,
                workload=Workload(Locality.parse("us-east1")),
            ),
        )
        starting = asyncio.create_task(app.start())
        try:
            for _ in range(50):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    if await _check(grpc_port, "liveness") == serving:
                        break
                await asyncio.sleep(0.02)
            assert not starting.done()
            assert await _check(grpc_port, "liveness") == serving
            for name in ("", "readiness", GRPC_HEALTH_SERVICE):
                assert await _check(grpc_port, name) == not_serving, name
            await asyncio.wait_for(starting, 10)
            # Started, but no DNS answer yet: not ready (README: ready means DNS answered).
            assert await _check(grpc_port, "readiness") == not_serving
            assert await _readyz(app) == 503
        finally:
            await app.stop()


async def _readyz(app: ServiceApp) -> int:
    url = "http://{}:{}/readyz".format(*app.admin_address)
    try:
        reply = await asyncio.to_thread(urllib.request.urlopen, url, None, 2)
    except urllib.error.HTTPError as exc:
        return exc.code
    return int(reply.status)


async def test_readiness_waits_for_a_dns_answer_and_nxdomain_is_an_answer(
    regions: dict[str, Region], dns: DnsResponder
) -> None:
    # us-west answers NXDOMAIN (no records): an answer, so it does not hold readiness.
    dns.set_records(WEST, [])
    app = ServiceApp(
        load_policy_text(seed(regions["east"].port, regions["west"].port), "test.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            sync_port=0,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            shutdown_grace_s=0,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    await app.start()
    try:
        assert app.ready
        assert await _readyz(app) == 200
        assert await _check(app.grpc_port, "readiness") == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop()
