"""EDS state of the world, as Envoy speaks it, on a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc

from extproc.server.eds import TYPE_URL, EdsHost, EndpointDiscovery

MYDB = "outbound|80||mydb.com"
OTHER = "outbound|80||other.com"
EAST = EdsHost("127.0.0.11", 80, 0, 1, "us-east1", "", "")
WEST = EdsHost("127.0.0.12", 80, 1, 1, "us-west", "", "")


@pytest.fixture
async def eds() -> AsyncIterator[
    tuple[EndpointDiscovery, eds_pb2_grpc.EndpointDiscoveryServiceStub]
]:
    discovery = EndpointDiscovery()
    server = grpc.aio.server()
    discovery.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield discovery, eds_pb2_grpc.EndpointDiscoveryServiceStub(channel)
    await server.stop(0)


def request(
    *names: str, nonce: str = "", version: str = "", error: str = ""
) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        type_url=TYPE_URL, resource_names=names, response_nonce=nonce, version_info=version
    )
    if error:
        message.error_detail.message = error
    return message


def hosts(response: discovery_pb2.DiscoveryResponse) -> dict[str, list[tuple[str, int, int]]]:
    found = {}
    for resource in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        resource.Unpack(assignment)
        found[assignment.cluster_name] = [
            (lb.endpoint.address.socket_address.address, group.priority, lb.health_status)
            for group in assignment.endpoints
            for lb in group.lb_endpoints
        ]
    return found


class Reader:
    """Reads a stream without cancelling it (a cancelled read cancels a grpc.aio call)."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self._pending: asyncio.Task[discovery_pb2.DiscoveryResponse] | None = None

    def _task(self) -> asyncio.Task[discovery_pb2.DiscoveryResponse]:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call.read())
        return self._pending

    async def read(self, timeout_s: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        task = self._task()
        await asyncio.wait({task}, timeout=timeout_s)
        assert task.done(), "no message in time"
        self._pending = None
        return task.result()

    async def silent(self, wait_s: float = 0.2) -> bool:
        task = self._task()
        await asyncio.wait({task}, timeout=wait_s)
        return not task.done()


async def test_subscribe_gets_the_current_hosts_with_priorities_and_health(eds) -> None:  # type: ignore[no-untyped-def]
    discovery, stub = eds
    discovery.set_cluster(MYDB, [EAST, WEST])
    call = stub.StreamEndpoints()
    reader = Reader(call)
    await call.write(request(MYDB))
    response = await reader.read()
    assert response.type_url == TYPE_URL
    assert hosts(response) == {MYDB: [("127.0.0.11", 0, 1), ("127.0.0.12", 1, 1)]}
    call.cancel()


async def test_an_ack_gets_no_answer_and_a_change_is_pushed(eds) -> None:  # type: ignore[no-untyped-def]
    discovery, stub = eds
    discovery.set_cluster(MYDB, [EAST, WEST])
    call = stub.StreamEndpoints()
    reader = Reader(call)
    await call.write(request(MYDB))
    first = await reader.read()
    await call.write(request(MYDB, nonce=first.nonce, version=first.version_info))
    assert await reader.silent()

    discovery.set_cluster(
        MYDB, [EdsHost("127.0.0.11", 80, 0, 1, "us-east1", "", "", healthy=False), WEST]
    )
    pushed = await reader.read()

    assert int(pushed.version_info) > int(first.version_info)
    assert pushed.nonce != first.nonce
    assert hosts(pushed)[MYDB][0] == ("127.0.0.11", 0, 2)  # UNHEALTHY
    call.cancel()


async def test_an_unchanged_assignment_is_not_pushed_again(eds) -> None:  # type: ignore[no-untyped-def]
    discovery, stub = eds
    discovery.set_cluster(MYDB, [EAST])
    call = stub.StreamEndpoints()
    reader = Reader(call)
    await call.write(request(MYDB))
    first = await reader.read()
    await call.write(request(MYDB, nonce=first.nonce, version=first.version_info))
    discovery.set_cluster(MYDB, [EAST])
    assert await reader.silent()
    call.cancel()


async def test_a_nack_is_not_answered_until_the_next_change(eds) -> None:  # type: ignore[no-untyped-def]
    discovery, stub = eds
    discovery.set_cluster(MYDB, [EAST])
    call = stub.StreamEndpoints()
    reader = Reader(call)
    await call.write(request(MYDB))
    first = await reader.read()
    await call.write(request(MYDB, nonce=first.nonce, error="bad"))
    assert await reader.silent()
    discovery.set_cluster(MYDB, [EAST, WEST])
    assert len(hosts(await reader.read())[MYDB]) == 2
    call.cancel()


async def test_only_subscribed_clusters_are_sent_and_unknown_ones_are_empty(eds) -> None:  # type: ignore[no-untyped-def]
    discovery, stub = eds
    discovery.set_cluster(MYDB, [EAST])
    discovery.set_cluster("outbound|80||third.com", [WEST])
    call = stub.StreamEndpoints()
    reader = Reader(call)
    await call.write(request(MYDB, OTHER))
    response = await reader.read()
    assert hosts(response) == {MYDB: [("127.0.0.11", 0, 1)], OTHER: []}
    call.cancel()
