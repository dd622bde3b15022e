"""EDS state of the world: a grpc.aio client speaking the protocol, then a real Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.protobuf import json_format
from structlog.testing import capture_logs

from extproc.render.bootstrap import eds_cluster_config
from extproc.sandbox import StandIn
from extproc.sandbox.client import get
from extproc.server.eds import TYPE_URL, EdsHost, EndpointDiscovery
from extproc.server.envoy_process import EnvoyProcess, validate_config
from extproc.settings import Settings

MYDB = "outbound|80||mydb.com"
OTHER = "outbound|80||other.com"
EAST = EdsHost("127.0.0.11", 443, 0, 3, "us-east1", "us-east1-b", "rack1")
WEST = EdsHost("127.0.0.12", 443, 1, 1, "us-west", "", "", healthy=False)
SOUTH = EdsHost("127.0.0.13", 8443, 1, 1, "us-south", "", "")

HEALTHY = health_check_pb2.HEALTHY
UNHEALTHY = health_check_pb2.UNHEALTHY


# --- a client that speaks SotW EDS as Envoy does --------------------------------------------


class Subscriber:
    """One EDS stream from the client side; responses are collected by a reader task.

    A background reader keeps reads from being cancelled by a timeout (cancelling a
    ``grpc.aio`` read cancels the whole call).
    """

    def __init__(self, stub: eds_pb2_grpc.EndpointDiscoveryServiceStub) -> None:
        self.call = stub.StreamEndpoints()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (message := await self.call.read()) is not grpc.aio.EOF:
            self.responses.put_nowait(message)

    async def send(
        self, *names: str, last: discovery_pb2.DiscoveryResponse | None = None, error: str = ""
    ) -> None:
        """Subscribe to ``names``; with ``last``, ACK it (or NACK it, with ``error``)."""
        request = discovery_pb2.DiscoveryRequest(type_url=TYPE_URL, resource_names=names)
        request.node.id = "test-node"
        if last is not None:
            request.response_nonce = last.nonce
            # An ACK carries the version it applied; a NACK the one it kept (none here).
            request.version_info = "" if error else last.version_info
        if error:
            request.error_detail.message = error
        await self.call.write(request)

    async def next(self, timeout_s: float = 2.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), timeout_s)

    async def quiet(self, wait_s: float = 0.2) -> bool:
        """True when nothing arrives within ``wait_s``."""
        with contextlib.suppress(TimeoutError):
            await self.next(wait_s)
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.call.done_writing()
            await asyncio.wait_for(self._reader, 2.0)
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


Subscribe = Callable[[], Awaitable[Subscriber]]


@pytest.fixture
def discovery() -> EndpointDiscovery:
    return EndpointDiscovery()


@pytest.fixture
async def subscribe(discovery: EndpointDiscovery) -> AsyncIterator[Subscribe]:
    """Open EDS streams to a real grpc.aio server on 127.0.0.1:0; all closed at the end."""
    server = grpc.aio.server()
    discovery.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel)
    opened: list[Subscriber] = []

    async def open_stream() -> Subscriber:
        opened.append(Subscriber(stub))
        return opened[-1]

    try:
        yield open_stream
    finally:
        for subscriber in opened:
            await subscriber.close()
        await channel.close()
        await server.stop(0)


HostView = tuple[int, str, str, int, int, int]  # priority, region, ip, port, weight, health


def assignments(response: discovery_pb2.DiscoveryResponse) -> dict[str, list[HostView]]:
    """Each cluster in a response, host by host, with its group's priority and region."""
    found: dict[str, list[HostView]] = {}
    for resource in response.resources:
        assert resource.type_url == TYPE_URL
        assignment = endpoint_pb2.ClusterLoadAssignment()
        assert resource.Unpack(assignment)
        found[assignment.cluster_name] = [
            (
                group.priority,
                group.locality.region,
                lb.endpoint.address.socket_address.address,
                lb.endpoint.address.socket_address.port_value,
                lb.load_balancing_weight.value,
                lb.health_status,
            )
            for group in assignment.endpoints
            for lb in group.lb_endpoints
        ]
    return found


# --- the protocol ----------------------------------------------------------------------------


async def test_subscribe_gets_the_current_assignment(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [WEST, EAST, SOUTH])
    envoy = await subscribe()

    await envoy.send(MYDB)
    response = await envoy.next()

    assert response.type_url == TYPE_URL
    assert response.version_info
    assert response.nonce
    assert assignments(response) == {
        MYDB: [
            (0, "us-east1", "127.0.0.11", 443, 3, HEALTHY),
            (1, "us-south", "127.0.0.13", 8443, 1, HEALTHY),
            (1, "us-west", "127.0.0.12", 443, 1, UNHEALTHY),
        ]
    }
    assignment = endpoint_pb2.ClusterLoadAssignment()
    response.resources[0].Unpack(assignment)
    east = assignment.endpoints[0]
    assert (east.locality.zone, east.locality.sub_zone) == ("us-east1-b", "rack1")
    assert east.load_balancing_weight.value == 3  # Istio: the sum of its endpoints' weights
    # One group per (priority, locality): us-south and us-west share priority 1.
    assert [(g.priority, g.locality.region) for g in assignment.endpoints] == [
        (0, "us-east1"),
        (1, "us-south"),
        (1, "us-west"),
    ]


async def test_an_ack_gets_no_answer_and_only_a_change_is_pushed(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST, WEST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    first = await envoy.next()

    await envoy.send(MYDB, last=first)
    assert await envoy.quiet()
    discovery.set_cluster(MYDB, [WEST, EAST])  # the same hosts in another order
    assert await envoy.quiet()

    discovery.set_cluster(MYDB, [EdsHost("127.0.0.11", 443, 0, 3, "us-east1", "", "", False)])
    pushed = await envoy.next()

    assert pushed.version_info != first.version_info
    assert pushed.nonce != first.nonce
    assert assignments(pushed) == {MYDB: [(0, "us-east1", "127.0.0.11", 443, 3, UNHEALTHY)]}


async def test_a_nack_is_logged_and_the_next_change_is_pushed(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    first = await envoy.next()

    with capture_logs() as logs:
        await envoy.send(MYDB, last=first, error="bad endpoint")
        assert await envoy.quiet()
        for _ in range(200):  # a loaded machine may take longer than the quiet window
            nacks = [entry for entry in logs if entry["event"] == "eds.nack"]
            if nacks:
                break
            await asyncio.sleep(0.01)
    assert len(nacks) == 1
    assert nacks[0]["log_level"] == "warning"
    assert nacks[0]["error"] == "bad endpoint"
    assert nacks[0]["cluster_names"] == [MYDB]

    discovery.set_cluster(MYDB, [EAST, WEST])
    pushed = await envoy.next()
    assert pushed.version_info not in (first.version_info, "")
    assert len(assignments(pushed)[MYDB]) == 2


async def test_only_subscribed_clusters_are_sent(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    discovery.set_cluster(OTHER, [WEST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    first = await envoy.next()
    assert set(assignments(first)) == {MYDB}
    await envoy.send(MYDB, last=first)

    discovery.set_cluster(OTHER, [SOUTH])
    assert await envoy.quiet()

    # Naming another cluster (with an ACK, as Envoy does) sends just that one.
    await envoy.send(MYDB, OTHER, last=first)
    added = await envoy.next()
    assert assignments(added) == {OTHER: [(1, "us-south", "127.0.0.13", 8443, 1, HEALTHY)]}

    # Dropping a name needs no answer and stops its pushes.
    await envoy.send(OTHER, last=added)
    assert await envoy.quiet()
    discovery.set_cluster(MYDB, [EAST, WEST])
    assert await envoy.quiet()


async def test_an_unknown_cluster_is_sent_empty_and_pushed_when_it_appears(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    envoy = await subscribe()
    await envoy.send(MYDB)
    empty = await envoy.next()
    assert assignments(empty) == {MYDB: []}
    await envoy.send(MYDB, last=empty)

    discovery.set_cluster(MYDB, [EAST])
    appeared = await envoy.next()
    assert assignments(appeared) == {MYDB: [(0, "us-east1", "127.0.0.11", 443, 3, HEALTHY)]}
    await envoy.send(MYDB, last=appeared)

    discovery.set_cluster(MYDB, [])
    assert assignments(await envoy.next()) == {MYDB: []}


async def test_a_removed_cluster_is_sent_with_no_endpoints(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    await envoy.send(MYDB, last=await envoy.next())

    discovery.remove_cluster(MYDB)

    assert assignments(await envoy.next()) == {MYDB: []}


async def test_a_withheld_cluster_is_sent_nothing_until_it_is_set(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.withhold(MYDB)
    discovery.set_cluster(OTHER, [WEST])
    envoy = await subscribe()

    await envoy.send(MYDB, OTHER)
    first = await envoy.next()
    await envoy.send(MYDB, OTHER, last=first)
    # Not even an empty assignment: Envoy keeps the one it holds for MYDB.
    assert set(assignments(first)) == {OTHER}
    assert await envoy.quiet()

    discovery.set_cluster(MYDB, [EAST])
    assert assignments(await envoy.next()) == {
        MYDB: [(0, "us-east1", "127.0.0.11", 443, 3, HEALTHY)]
    }


async def test_a_withheld_cluster_is_not_sent_to_a_wildcard_stream_until_it_is_set(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.withhold(MYDB)
    envoy = await subscribe()
    await envoy.send()
    assert await envoy.quiet()

    discovery.set_cluster(MYDB, [])  # the first answer may be empty (NXDOMAIN): that is sent

    assert assignments(await envoy.next()) == {MYDB: []}


async def test_a_withheld_cluster_that_is_removed_is_sent_empty(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.withhold(MYDB)
    envoy = await subscribe()
    await envoy.send(MYDB)
    assert await envoy.quiet()

    discovery.remove_cluster(MYDB)

    assert assignments(await envoy.next()) == {MYDB: []}


async def test_withholding_a_cluster_already_sent_changes_nothing(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    discovery.withhold(MYDB)
    envoy = await subscribe()

    await envoy.send(MYDB)

    assert assignments(await envoy.next()) == {
        MYDB: [(0, "us-east1", "127.0.0.11", 443, 3, HEALTHY)]
    }


async def test_no_names_on_the_first_request_subscribes_to_every_cluster(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    envoy = await subscribe()
    await envoy.send()
    first = await envoy.next()
    assert set(assignments(first)) == {MYDB}
    await envoy.send(last=first)

    discovery.set_cluster(OTHER, [WEST])

    assert set(assignments(await envoy.next())) == {OTHER}


async def test_a_request_with_a_stale_nonce_is_not_answered(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    discovery.set_cluster(OTHER, [WEST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    first = await envoy.next()
    discovery.set_cluster(MYDB, [EAST, WEST])
    second = await envoy.next()

    # Written before Envoy saw `second`: the protocol says not to answer it.
    await envoy.send(MYDB, OTHER, last=first)
    assert await envoy.quiet()

    # The ACK of `second` carries the new names: now OTHER is sent.
    await envoy.send(MYDB, OTHER, last=second)
    assert set(assignments(await envoy.next())) == {OTHER}


async def test_each_stream_gets_only_its_own_clusters(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    """Envoy 1.40 opens one stream per EDS cluster; a push goes to the right one."""
    mydb, other = await subscribe(), await subscribe()
    await mydb.send(MYDB)
    await other.send(OTHER)
    await mydb.send(MYDB, last=await mydb.next())
    await other.send(OTHER, last=await other.next())
    assert discovery.streams == 2

    discovery.set_cluster(OTHER, [SOUTH])

    assert set(assignments(await other.next())) == {OTHER}
    assert await mydb.quiet()
    await mydb.close()
    for _ in range(200):  # the server sees the stream end soon after the client
        if discovery.streams == 1:
            break
        await asyncio.sleep(0.01)
    assert discovery.streams == 1


def test_the_cluster_config_matches_envoys_descriptors() -> None:
    cluster = cluster_pb2.Cluster()
    json_format.ParseDict({"name": MYDB, **eds_cluster_config(Settings())}, cluster)

    assert cluster.type == cluster_pb2.Cluster.EDS
    source = cluster.eds_cluster_config.eds_config.api_config_source
    assert source.grpc_services[0].envoy_grpc.cluster_name == "extproc"
    assert source.set_node_on_first_message_only
    assert cluster.common_lb_config.update_merge_window.ToNanoseconds() == 0
    assert cluster.common_lb_config.HasField("update_merge_window")


# --- a real Envoy ----------------------------------------------------------------------------


def envoy_config(grpc_port: int) -> dict[str, Any]:
    """Envoy with the service's gRPC cluster, two EDS clusters and a listener to mydb.com."""

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    http_connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "mydb",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": MYDB}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "node": {"id": "test-envoy", "cluster": "test"},
        "admin": {"address": address(0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": address(0),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": http_connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "extproc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "extproc",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": address(grpc_port)}}]}
                        ],
                    },
                },
                {"name": MYDB, "connect_timeout": "1s", **eds_cluster_config(Settings())},
                # Never set: it must still finish warming (an empty assignment) at once.
                {"name": OTHER, "connect_timeout": "1s", **eds_cluster_config(Settings())},
            ],
        },
    }


async def admin_json(envoy: EnvoyProcess, path: str) -> Any:
    """GET a JSON admin page (urllib: Envoy's admin answers chunked)."""
    assert envoy.admin_address is not None
    host, port = envoy.admin_address

    def fetch() -> Any:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2.0) as reply:
            return json.load(reply)

    return await asyncio.to_thread(fetch)


HostState = tuple[str, int, int, str, str]  # ip, port, priority, region, eds_health_status


async def envoy_hosts(envoy: EnvoyProcess, cluster_name: str) -> set[HostState]:
    """The hosts of one cluster as Envoy's admin ``/clusters`` shows them."""
    clusters = await admin_json(envoy, "/clusters?format=json")
    for cluster in clusters["cluster_statuses"]:
        if cluster["name"] == cluster_name:
            return {
                (
                    host["address"]["socket_address"]["address"],
                    host["address"]["socket_address"]["port_value"],
                    host.get("priority", 0),  # proto3 JSON leaves out a zero
                    host.get("locality", {}).get("region", ""),
                    host["health_status"]["eds_health_status"],
                )
                for host in cluster.get("host_statuses", [])
            }
    raise AssertionError(f"{cluster_name} is not in Envoy's /clusters")


async def wait_for_hosts(
    envoy: EnvoyProcess, cluster_name: str, expected: set[HostState], timeout_s: float
) -> float:
    """Poll ``/clusters`` until it shows ``expected``; how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: set[HostState] = set()
    while loop.time() - start < timeout_s:
        seen = await envoy_hosts(envoy, cluster_name)
        if seen == expected:
            return loop.time() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"Envoy shows {sorted(seen)}, not {sorted(expected)}, after {timeout_s}s")


async def served_by(envoy: EnvoyProcess, listener: tuple[str, int]) -> str:
    reply = await get(listener, "mydb.com", timeout_s=5.0)
    assert reply.status == 200, reply.body
    return reply.served_by


@pytest.mark.e2e
async def test_envoy_follows_pushed_hosts_and_health_without_a_restart(tmp_path: Path) -> None:
    discovery = EndpointDiscovery()
    server = grpc.aio.server()
    discovery.add_to_server(server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    east_up = StandIn("east", "127.0.0.11", 0)
    west_up = StandIn("west", "127.0.0.12", 0)
    envoy: EnvoyProcess | None = None
    try:
        await server.start()
        await east_up.start()
        await west_up.start()
        east_port, west_port = east_up.address[1], west_up.address[1]
        east = EdsHost("127.0.0.11", east_port, 0, 1, "us-east1", "us-east1-b", "")
        west = EdsHost("127.0.0.12", west_port, 1, 1, "us-west", "", "")
        discovery.set_cluster(
            MYDB, [east, EdsHost(west.ip, west.port, 1, 1, "us-west", "", "", healthy=False)]
        )

        config_path = tmp_path / "envoy.json"
        config_path.write_text(json.dumps(envoy_config(grpc_port)))
        await asyncio.to_thread(validate_config, config_path)
        envoy = EnvoyProcess(config_path, concurrency=1)
        await envoy.start()

        # Ready well before Envoy's 15 s initial fetch timeout: both EDS clusters (OTHER
        # with no endpoints) finished warming from our first answers.
        await wait_for_hosts(
            envoy,
            MYDB,
            {
                ("127.0.0.11", east_port, 0, "us-east1", "HEALTHY"),
                ("127.0.0.12", west_port, 1, "us-west", "UNHEALTHY"),
            },
            timeout_s=10.0,
        )
        assert await envoy_hosts(envoy, OTHER) == set()
        listeners = await admin_json(envoy, "/listeners?format=json")
        bound = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        listener = (bound["address"], bound["port_value"])
        assert await served_by(envoy, listener) == "east"

        # Health: east ejected, west healthy -> Envoy's priority load moves to west.
        discovery.set_cluster(
            MYDB, [EdsHost(east.ip, east.port, 0, 1, "us-east1", "us-east1-b", "", False), west]
        )
        took_s = await wait_for_hosts(
            envoy,
            MYDB,
            {
                ("127.0.0.11", east_port, 0, "us-east1", "UNHEALTHY"),
                ("127.0.0.12", west_port, 1, "us-west", "HEALTHY"),
            },
            timeout_s=2.0,
        )
        assert took_s < 2.0
        assert {await served_by(envoy, listener) for _ in range(5)} == {"west"}

        # Membership: east leaves, west is promoted to priority 0.
        discovery.set_cluster(MYDB, [EdsHost(west.ip, west.port, 0, 1, "us-west", "", "")])
        await wait_for_hosts(
            envoy, MYDB, {("127.0.0.12", west_port, 0, "us-west", "HEALTHY")}, timeout_s=2.0
        )
        assert await served_by(envoy, listener) == "west"
        assert envoy.returncode is None  # the same Envoy all along
    finally:
        if envoy is not None:
            await envoy.stop()
        await west_up.stop()
        await east_up.stop()
        await server.stop(0)


async def test_close_ends_every_stream_so_shutdown_need_not_wait(
    discovery: EndpointDiscovery, subscribe: Subscribe
) -> None:
    discovery.set_cluster(MYDB, [EAST])
    envoy = await subscribe()
    await envoy.send(MYDB)
    await envoy.next()
    assert discovery.streams == 1

    discovery.close()

    for _ in range(50):
        if discovery.streams == 0:
            break
        await asyncio.sleep(0.02)
    assert discovery.streams == 0
