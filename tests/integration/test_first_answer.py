"""Until a cluster's DNS names have answered once, the service withholds it.

A restarted service knows its clusters but not their hosts. Publishing them empty would
overwrite what Envoy routes on (each Lua worker's last table, the last EDS assignment), so
EDS sends nothing for such a cluster, the brain answers its syncs 503 and the ext_proc
servicer sets no override. These tests drive a real ``ServiceApp`` over its real ports with
a DNS responder that answers SERVFAIL (no answer) until told otherwise.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.core.policy import Locality, Workload
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder
from extproc.server import resolver
from extproc.server.app import READINESS, ServiceApp
from extproc.settings import HostPort, Settings
from extproc.testing import request_headers, routed_host
from extproc.wire import SERVICE_HEADER, SYNC_PATH

from .test_eds import Subscriber, assignments
from .test_reload import entry, rule

MYDB = "outbound|80||mydb.com"
OTHER = "outbound|80||other.com"
NEW = "outbound|80||new.com"
EAST = "127.0.0.11:80"

MYDB_YAML = (
    entry(
        "mydb.com",
        [("east.example", "us-east1"), ("west.example", "us-west")],
        resolution="DNS",
        name="mydb",
    )
    + "---\n"
    + rule("mydb.com")
)
# An IP written in a DNS ServiceEntry: its host needs no answer.
OTHER_YAML = entry("other.com", [("127.0.0.13", "us-east1")], resolution="DNS", name="other")
RECORDS = {"east.example": ["127.0.0.11"], "west.example": ["127.0.0.12"]}


@pytest.fixture(autouse=True)
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed query is retried after 0.2 s instead of 5 s."""
    monkeypatch.setattr(resolver, "_FAILURE_RETRY_S", 0.2)


@pytest.fixture
async def dns() -> AsyncIterator[DnsResponder]:
    """A DNS server that answers SERVFAIL until a test sets ``servfail = False``."""
    async with DnsResponder(RECORDS, ttl_s=1) as responder:
        responder.servfail = True
        yield responder


async def start(dns: DnsResponder, text: str = MYDB_YAML + "---\n" + OTHER_YAML) -> ServiceApp:
    app = ServiceApp(
        load_policy_text(text, "mydb.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            admin=HostPort("127.0.0.1", 0),
            sync_port=0,
            shutdown_grace_s=0,
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    await app.start()
    return app


@pytest.fixture
async def app(dns: DnsResponder) -> AsyncIterator[ServiceApp]:
    service = await start(dns)
    try:
        yield service
    finally:
        await service.stop()


async def sync(app: ServiceApp, cluster: str = MYDB) -> tuple[int, list[str]]:
    """One fast-path sync: the status, and the body's header and host lines."""
    return await asyncio.to_thread(_sync, app.sync_port, cluster)


def _sync(port: int, cluster: str) -> tuple[int, list[str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{SYNC_PATH}",
        data=b"",
        headers={SERVICE_HEADER: cluster},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), _table_lines(response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, _table_lines(exc.read().decode())


def _table_lines(body: str) -> list[str]:
    """The header and the host lines (settings such as ``lb=`` have no space)."""
    lines = body.splitlines()
    return lines[:1] + [line for line in lines[1:] if " " in line]


async def wait_until_ready(app: ServiceApp) -> None:
    for _ in range(100):
        if app.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no DNS answer within 5 s")


async def readiness(app: ServiceApp) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=READINESS), timeout=2
        )
        return int(reply.status)


async def test_eds_sends_nothing_for_a_cluster_until_its_names_answer_then_its_hosts(
    app: ServiceApp, dns: DnsResponder
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        envoy = Subscriber(eds_pb2_grpc.EndpointDiscoveryServiceStub(channel))
        await envoy.send(MYDB)
        # No answer at all, not an empty assignment: Envoy keeps the one it holds.
        assert await envoy.quiet(0.5)

        dns.servfail = False
        first = await envoy.next(5)
        envoy.call.cancel()

    assert [(h[0], h[2]) for h in assignments(first)[MYDB]] == [
        (0, "127.0.0.11"),
        (1, "127.0.0.12"),
    ]


async def test_the_brain_answers_503_until_the_names_answer_then_the_table(
    app: ServiceApp, dns: DnsResponder
) -> None:
    status, body = await sync(app)
    assert status == 503  # bridge.lua keeps its table on anything but 200
    assert body == [f"no DNS answer yet for {MYDB!r}"]

    dns.servfail = False
    await wait_until_ready(app)
    status, table = await sync(app)

    assert status == 200
    assert [line.split()[0] for line in table[1:]] == [EAST]  # us-west is priority 1


async def test_ext_proc_sets_no_override_until_the_names_answer_then_picks(
    app: ServiceApp, dns: DnsResponder
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)

        async def route() -> Any:
            call = stub.Process()
            await call.write(request_headers("mydb.com"))
            answer = await call.read()
            await call.done_writing()
            return answer

        waiting = await route()
        dns.servfail = False
        await wait_until_ready(app)
        answered = await route()

    # No override and no immediate 503: Envoy's Override Host fallback (Istio's LB over
    # the EDS hosts it still holds) picks.
    assert waiting.WhichOneof("response") == "request_headers"
    assert routed_host(waiting) is None
    assert routed_host(answered) == EAST


async def test_a_cluster_that_needs_no_answer_is_served_while_another_waits(
    app: ServiceApp,
) -> None:
    status, table = await sync(app, OTHER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        envoy = Subscriber(eds_pb2_grpc.EndpointDiscoveryServiceStub(channel))
        await envoy.send(OTHER)
        sent = assignments(await envoy.next())
        envoy.call.cancel()

    assert (status, [line.split()[0] for line in table[1:]]) == (200, ["127.0.0.13:80"])
    assert [h[2] for h in sent[OTHER]] == ["127.0.0.13"]
    assert (await sync(app, MYDB))[0] == 503


async def test_readiness_waits_for_the_first_answers_the_clusters_withheld_until_then(
    app: ServiceApp, dns: DnsResponder
) -> None:
    assert not app.ready
    assert await readiness(app) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert app.withheld(app.table.clusters[MYDB])

    dns.servfail = False
    await wait_until_ready(app)
    await asyncio.sleep(0.3)  # the sweep timer sets the gRPC readiness within 0.1 s

    assert not app.withheld(app.table.clusters[MYDB])
    assert await readiness(app) == health_pb2.HealthCheckResponse.SERVING


async def test_nxdomain_is_an_answer_and_the_cluster_is_published_empty(
    dns: DnsResponder,
) -> None:
    for name in RECORDS:
        dns.set_records(name, [])
    dns.servfail = False
    app = await start(dns)
    try:
        ready = app.ready
        status, table = await sync(app)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            envoy = Subscriber(eds_pb2_grpc.EndpointDiscoveryServiceStub(channel))
            await envoy.send(MYDB)
            sent = assignments(await envoy.next())
            envoy.call.cancel()
    finally:
        await app.stop()

    assert ready
    assert (status, len(table)) == (200, 1)  # the version line, no host: the truth
    assert sent == {MYDB: []}


async def test_a_reload_serves_a_new_name_that_answers_from_the_swap(
    app: ServiceApp, dns: DnsResponder
) -> None:
    dns.servfail = False
    await wait_until_ready(app)
    dns.set_records("new.example", ["127.0.0.14"])
    text = MYDB_YAML + "---\n" + OTHER_YAML + "---\n"
    text += entry("new.com", [("new.example", "us-east1")], resolution="DNS", name="new")

    await app.apply_policy(load_policy_text(text, "mydb.yaml"))
    status, table = await sync(app, NEW)  # no DNS refresh has run since the swap

    assert (status, [line.split()[0] for line in table[1:]]) == (200, ["127.0.0.14:80"])
    assert app.ready


async def test_a_reload_adding_a_name_that_does_not_answer_withholds_only_a_new_cluster(
    app: ServiceApp, dns: DnsResponder
) -> None:
    dns.servfail = False
    await wait_until_ready(app)
    dns.set_records("new.example", ["127.0.0.14"])
    dns.set_records("south.example", ["127.0.0.15"])
    mydb = entry(
        "mydb.com",
        [("east.example", "us-east1"), ("west.example", "us-west"), ("south.example", "us-south")],
        resolution="DNS",
        name="mydb",
    )
    text = mydb + "---\n" + rule("mydb.com") + "---\n" + OTHER_YAML + "---\n"
    text += entry("new.com", [("new.example", "us-east1")], resolution="DNS", name="new")
    dns.servfail = True

    await app.apply_policy(load_policy_text(text, "mydb.yaml"))
    kept, table = await sync(app, MYDB)
    new, _ = await sync(app, NEW)
    await asyncio.sleep(0.3)  # the sweep timer follows readiness both ways
    grpc_readiness = await readiness(app)

    # mydb.com was published: its known hosts stay served (south.example joins when it
    # answers); new.com has no host known yet, so it is withheld.
    assert (kept, [line.split()[0] for line in table[1:]]) == (200, [EAST])
    assert new == 503
    assert not app.ready
    assert grpc_readiness == health_pb2.HealthCheckResponse.NOT_SERVING

    dns.servfail = False
    await wait_until_ready(app)
    assert (await sync(app, NEW))[0] == 200


async def test_clusters_that_share_a_name_are_published_together_when_it_answers(
    dns: DnsResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One ServiceEntry, two ports: two clusters with the same endpoint names.
    text = MYDB_YAML.replace(
        "ports: [{number: 80, name: http, protocol: HTTP}]",
        "ports: [{number: 80, name: http, protocol: HTTP},"
        " {number: 8080, name: alt, protocol: HTTP}]",
    )
    app = ServiceApp(
        load_policy_text(text, "mydb.yaml"),
        Settings(
            grpc=HostPort("127.0.0.1", 0),
            admin=HostPort("127.0.0.1", 0),
            sync_port=0,
            shutdown_grace_s=0,
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    published: list[tuple[str, int]] = []
    set_cluster = app.eds.set_cluster

    def record(name: str, hosts: Any) -> None:
        published.append((name, len(hosts)))
        set_cluster(name, hosts)

    monkeypatch.setattr(app.eds, "set_cluster", record)
    await app.start()
    try:
        dns.servfail = False
        await wait_until_ready(app)
    finally:
        await app.stop()

    assert sorted(published) == [("outbound|8080||mydb.com", 2), (MYDB, 2)]
