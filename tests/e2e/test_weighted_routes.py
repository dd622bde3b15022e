"""A VirtualService route with weights on a real Envoy, on every data path.

Each data path learns the cluster Envoy's (or, on lua, the script's) weighted pick chose: the
module reads the route's cluster from Envoy (``get_cluster_name``), ext_proc the request
attribute ``xds.cluster_name``, and the lua script picks itself and writes its pick into
``CLUSTER_HEADER`` (``render/routes.py``). The proof is the service's own counts: every
request counts on the host that served it, in the cluster of that host's subset. A client
that sends ``CLUSTER_HEADER`` chooses nothing, and the header never reaches the upstream
on lua, where extproc writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.demo import free_port
from extproc.sandbox.client import get
from extproc.server.stack import Stack
from extproc.wire import CLUSTER_HEADER, GRPC_CLUSTER, DataPath

from .conftest import StackFactory

pytestmark = pytest.mark.e2e

V1_IP, V2_IP = "127.0.4.1", "127.0.4.2"
V1, V2 = "outbound|80|v1|mydb.com", "outbound|80|v2|mydb.com"


class Echo:
    """An upstream that answers 200, naming itself and the request headers it received."""

    def __init__(self, name: str, ip: str) -> None:
        self.name, self.ip = name, ip
        self.header_names: list[set[str]] = []
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = f"HTTP/1.1 200 OK\r\nx-served-by: {self.name}\r\ncontent-length: 2\r\n\r\nok"
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                self.header_names.append(
                    {line.partition(":")[0].strip().lower() for line in lines if ":" in line}
                )
                writer.write(reply.encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[int, dict[str, Echo]]]:
    """v1 on 127.0.4.1 and v2 on 127.0.4.2, on one port; the port and the echoes by name."""
    echoes = {"v1": Echo("v1", V1_IP), "v2": Echo("v2", V2_IP)}
    port = free_port(V1_IP)
    for echo in echoes.values():
        await echo.start(port)
    try:
        yield port, echoes
    finally:
        for echo in echoes.values():
            await echo.stop()


def _config(port: int, v1_weight: int, v2_weight: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints:
  - {{address: {V1_IP}, locality: us-east1, labels: {{version: v1}}}}
  - {{address: {V2_IP}, locality: us-east1, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  http:
  - name: only-v1
    match: [{{uri: {{prefix: /v1}}}}]
    route: [{{destination: {{host: mydb.com, subset: v1}}}}]
  - name: only-v2
    match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: mydb.com, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: mydb.com, subset: v1}}, weight: {v1_weight}}}
    - {{destination: {{host: mydb.com, subset: v2}}, weight: {v2_weight}}}
"""


def _counted(stack: Stack) -> Counter[tuple[str, str]]:
    """The service's successes by (cluster, host), as the data path reported them."""
    text = stack.app.metrics.exposition().decode()
    return Counter(
        {
            (sample.labels["cluster_name"], sample.labels["upstream_url"].split(":")[0]): int(
                sample.value
            )
            for family in text_string_to_metric_families(text)
            if family.name == "extproc_upstream_rq"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] == "success"
        }
    )


async def test_each_request_counts_in_the_cluster_it_was_weighted_to(
    upstreams: tuple[int, dict[str, Echo]], start_stack: StackFactory
) -> None:
    port, _ = upstreams
    stack = await start_stack(_config(port, 50, 50), concurrency=1)
    replies = [await get(stack.settings.listen, "mydb.com", "/split") for _ in range(60)]
    served = Counter(r.served_by for r in replies)
    assert served["v1"] + served["v2"] == 60, served
    # Both got some (binomial(60, 0.5): none at all is 2 * 2^-60).
    assert min(served["v1"], served["v2"]) > 0, served
    # The lua path sends successes with its next sync of a table (after its 100 ms TTL):
    # one request on each subset's own route refreshes both.
    await asyncio.sleep(0.2)
    for path in ("/v1", "/v2"):
        assert (await get(stack.settings.listen, "mydb.com", path)).status == 200
    expected = {(V1, V1_IP): served["v1"], (V2, V2_IP): served["v2"]}
    for _ in range(40):
        counted = _counted(stack)
        if all(counted[key] >= n for key, n in expected.items()):
            break
        await asyncio.sleep(0.05)
    # Counted on the host that served, in its own subset's cluster, nowhere else; at most
    # the two refreshing requests more.
    assert set(counted) == set(expected), counted
    for key, n in expected.items():
        assert n <= counted[key] <= n + 1, (key, counted, served)


@pytest.mark.parametrize("forged", [V2, GRPC_CLUSTER, "outbound|80||mydb.com"])
async def test_a_client_sent_cluster_header_chooses_no_cluster(
    upstreams: tuple[int, dict[str, Echo]],
    start_stack: StackFactory,
    data_path: DataPath,
    forged: str,
) -> None:
    # v2 has one millionth of the weight: 20 requests all on v1 but with a chance of 2e-5.
    port, echoes = upstreams
    stack = await start_stack(_config(port, 999_999, 1), concurrency=1)
    replies = [
        await get(stack.settings.listen, "mydb.com", "/split", headers={CLUSTER_HEADER: forged})
        for _ in range(20)
    ]
    assert [r.served_by for r in replies] == ["v1"] * 20
    if data_path is DataPath.LUA:
        # The script overwrote it with its pick, and the route removed it before the upstream.
        seen = echoes["v1"].header_names
        assert len(seen) == 20
        assert not any(CLUSTER_HEADER in names for names in seen), seen
