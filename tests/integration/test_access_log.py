"""The access-log receiver on a real grpc.aio server, fed as Envoy's gRPC access log feeds it."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from extproc.core.cluster import ClusterState
from extproc.core.outlier import (
    AttemptResult,
    OutlierAction,
    OutlierEjectionType,
    OutlierEvent,
)
from extproc.core.policy import Locality, OutlierDetection, Policy, Workload
from extproc.core.table import ServiceTable
from extproc.server.access_log import AccessLogReceiver, LateReset, late_reset
from extproc.testing import FakeClock, endpoint, outlier, service
from extproc.wire import LATE_UPSTREAM_RESET, DataPath, reset_log_name

EAST = "10.0.0.1:443"
WEST = "10.0.0.2:443"
CLUSTER = service().cluster_name  # outbound|80||mydb.com
LUA = reset_log_name(DataPath.LUA)
EXT_PROC = reset_log_name(DataPath.EXT_PROC)


def entry(
    host: str = EAST,
    *,
    status: int = 200,
    details: str = LATE_UPSTREAM_RESET + "{protocol_error}",
    cluster: str = CLUSTER,
) -> accesslog_pb2.HTTPAccessLogEntry:
    """An access-log entry as Envoy's ``http_grpc`` logger writes it."""
    ip, _, port = host.rpartition(":")
    log = accesslog_pb2.HTTPAccessLogEntry()
    log.common_properties.upstream_cluster = cluster
    log.common_properties.upstream_remote_address.CopyFrom(
        address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=ip.strip("[]"), port_value=int(port))
        )
    )
    log.response.response_code.value = status
    log.response.response_code_details = details
    return log


def messages(
    log_name: str, *entries: accesslog_pb2.HTTPAccessLogEntry
) -> list[als_pb2.StreamAccessLogsMessage]:
    """One message per entry; only the first names the log, as Envoy sends them."""
    out = []
    for index, log in enumerate(entries):
        message = als_pb2.StreamAccessLogsMessage()
        if index == 0:
            message.identifier.log_name = log_name
        message.http_logs.log_entry.append(log)
        out.append(message)
    return out


class Harness:
    def __init__(self, detection: OutlierDetection) -> None:
        self.clock = FakeClock()
        policy = Policy(
            (
                service(
                    endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
                    outlier=detection,
                ),
            )
        )
        self.table = ServiceTable(
            policy, Workload(Locality.parse("us-east1")), now=self.clock.now(), rng=random.Random(7)
        )
        self.changes = 0
        self.fail_next = False  # the next table lookup raises: a bug inside one entry

    def current_table(self) -> ServiceTable:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self.table

    @property
    def cluster(self) -> ClusterState:
        return self.table.clusters[CLUSTER]

    def ejected(self) -> set[str]:
        return {v.address for v in self.cluster.hosts(self.clock.now()) if v.ejected}

    def events(self) -> list[OutlierEvent]:
        return self.cluster.drain_events()


Fixture = tuple[Harness, als_pb2_grpc.AccessLogServiceStub]


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Fixture]:
    h = Harness(getattr(request, "param", outlier(consecutive_5xx_errors=1)))
    server = grpc.aio.server()

    def changed() -> None:
        h.changes += 1

    receiver = AccessLogReceiver(h.current_table, h.clock.now, on_change=changed)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield h, als_pb2_grpc.AccessLogServiceStub(channel)
    await server.stop(0)


async def send(
    stub: als_pb2_grpc.AccessLogServiceStub, stream: list[als_pb2.StreamAccessLogsMessage]
) -> None:
    await stub.StreamAccessLogs(iter(stream))


@pytest.mark.parametrize("log_name", [LUA, EXT_PROC], ids=["lua", "ext_proc"])
async def test_a_late_reset_ejects_the_host_it_names_at_once(
    harness: Fixture, log_name: str
) -> None:
    h, stub = harness
    await send(stub, messages(log_name, entry(EAST)))
    assert h.ejected() == {EAST}
    [event] = h.events()
    assert (event.action, event.upstream_url, event.type) == (
        OutlierAction.EJECT,
        EAST,
        OutlierEjectionType.CONSECUTIVE_5XX,
    )
    assert h.changes == 1  # EDS is told with the entry that ejected


TWO_5XX = outlier(consecutive_5xx_errors=2)


@pytest.mark.parametrize("harness", [TWO_5XX], indirect=True, ids=["5xx=2"])
@pytest.mark.parametrize(
    ("log_name", "status", "ejected"),
    [
        # lua: the 200 head's success comes batched, after the entry; counted first here,
        # it resets the 503's count as Envoy's onUpstreamHeaders did: 0, then the reset 1.
        (LUA, 200, set()),
        # lua with a 5xx head: the script reported it at once, so only the reset is new.
        (LUA, 503, {EAST}),
        # ext_proc: the servicer recorded the head with the response headers already.
        (EXT_PROC, 200, {EAST}),
        # A log name of no extproc Envoy: the reset alone, what Envoy's detector saw last.
        ("someone-elses-log", 200, {EAST}),
    ],
    ids=["lua-200", "lua-503", "ext_proc-200", "foreign-200"],
)
async def test_after_a_503_the_reset_is_counted_after_the_heads_own_result(
    harness: Fixture, log_name: str, status: int, ejected: set[str]
) -> None:
    h, stub = harness
    h.cluster.record(EAST, AttemptResult.answer(503), h.clock.now())
    await send(stub, messages(log_name, entry(EAST, status=status)))
    assert h.ejected() == ejected


@pytest.mark.parametrize("harness", [TWO_5XX], indirect=True, ids=["5xx=2"])
async def test_a_host_that_always_resets_after_a_200_stays_in_with_two_errors_on_lua(
    harness: Fixture,
) -> None:
    h, stub = harness
    # Ten resets whose heads' successes have not arrived yet: still never two in a row.
    await send(stub, messages(LUA, *[entry(EAST) for _ in range(10)]))
    assert h.ejected() == set()


SPLIT = dataclasses.replace(
    outlier(consecutive_5xx_errors=1),
    split_external_local_origin_errors=True,
    consecutive_local_origin_failures=1,
)


@pytest.mark.parametrize("harness", [SPLIT], indirect=True, ids=["split"])
@pytest.mark.parametrize("log_name", [LUA, EXT_PROC], ids=["lua", "ext_proc"])
async def test_in_split_mode_a_late_reset_is_a_local_origin_failure(
    harness: Fixture, log_name: str
) -> None:
    h, stub = harness
    await send(stub, messages(log_name, entry(EAST)))
    [event] = h.events()
    assert (event.upstream_url, event.type) == (
        EAST,
        OutlierEjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
    )


@pytest.mark.parametrize(
    "ignored",
    [
        entry(details="upstream_reset_before_response_started{connection_termination}"),
        entry(details="via_upstream"),
        entry(details=LATE_UPSTREAM_RESET + "{overflow}"),
        entry(cluster="outbound|80||other.com"),
        entry("10.9.9.9:443"),
    ],
    ids=["before-the-response", "an-answer", "overflow", "unknown-cluster", "unknown-host"],
)
async def test_entries_envoys_detector_would_not_count_change_nothing(
    harness: Fixture, ignored: accesslog_pb2.HTTPAccessLogEntry
) -> None:
    h, stub = harness
    await send(stub, messages(EXT_PROC, ignored))
    assert h.ejected() == set()
    assert h.changes == 0


async def test_a_broken_entry_is_dropped_and_the_stream_goes_on(harness: Fixture) -> None:
    h, stub = harness
    h.fail_next = True
    await send(stub, messages(EXT_PROC, entry(EAST), entry(EAST)))
    assert h.ejected() == {EAST}  # by the second entry


@pytest.mark.parametrize(
    ("ip", "port", "host"),
    [("10.0.0.1", 443, "10.0.0.1:443"), ("2001:db8::1", 8080, "[2001:db8::1]:8080")],
    ids=["ipv4", "ipv6"],
)
def test_late_reset_names_the_host_as_envoys_upstream_url(ip: str, port: int, host: str) -> None:
    log = entry(f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}", status=200)
    assert late_reset(log) == LateReset(CLUSTER, host, 200)
