"""TLS origination from the DestinationRule's ``tls``, on a real Envoy, both data paths.

The seed's HTTPS variant: service port 80, ``targetPort`` shared by both regions, ``tls.mode:
SIMPLE``. The regions are TLS stand-ins on loopback with certificates made now by trustme
for their own names, as DynamoDB's name theirs. Where a test needs "the system CA bundle"
(the literal seed has no ``caCertificates``), the stack's ``system_ca_file`` is the trustme
CA, which stands for the public roots real endpoints chain to.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from extproc.core.policy import Locality, Workload
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.admin import endpoints_json
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath

from .conftest import EAST, WEST, lua_errors

pytestmark = pytest.mark.e2e

CLUSTER = "outbound|80||mydb.com"
ANNOTATION = "extproc.io/upstream-sni: endpoint"


@dataclass(frozen=True)
class Pki:
    """Certificates made for this test session; files for Envoy, objects for the stand-ins."""

    ca: trustme.CA
    ca_file: Path
    other_ca: trustme.CA  # a CA Envoy does not trust
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ca.issue_cert("workload.example")
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client-key.pem"))
    return Pki(
        ca=ca,
        ca_file=directory / "ca.pem",
        other_ca=trustme.CA(),
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )


def server_context(
    ca: trustme.CA, name: str, *, client_ca: trustme.CA | None = None
) -> ssl.SSLContext:
    """A stand-in's TLS context: a certificate for ``name`` from ``ca``; with ``client_ca``,
    a client certificate from it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


@dataclass
class TlsRegions:
    east: StandIn
    west: StandIn

    @property
    def port(self) -> int:
        return self.east.address[1]


RegionsFactory = Callable[..., Awaitable[TlsRegions]]


@pytest.fixture
async def tls_regions(dns: DnsResponder, pki: Pki) -> AsyncIterator[RegionsFactory]:
    """Start us-east1 (127.0.0.11) and us-west (127.0.0.12) on one port, the seed's
    ``targetPort``; by default each with a certificate for its own name from ``pki.ca``."""
    started: list[StandIn] = []

    async def start(
        east_context: ssl.SSLContext | None = None, west_context: ssl.SSLContext | None = None
    ) -> TlsRegions:
        east = StandIn(
            EAST,
            "127.0.0.11",
            0,
            ssl_context=east_context or server_context(pki.ca, EAST),
            record_requests=True,
        )
        await east.start()
        started.append(east)
        west = StandIn(
            WEST,
            "127.0.0.12",
            east.address[1],
            ssl_context=west_context or server_context(pki.ca, WEST),
            record_requests=True,
        )
        await west.start()
        started.append(west)
        dns.set_records(EAST, ["127.0.0.11"])
        dns.set_records(WEST, ["127.0.0.12"])
        return TlsRegions(east, west)

    yield start
    for stand_in in started:
        await stand_in.stop()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_tls_stack(dns: DnsResponder, data_path: DataPath) -> AsyncIterator[StackFactory]:
    """Like conftest's ``start_stack``, with the system CA bundle Envoy is given."""
    stacks: list[Stack] = []

    async def start(yaml_text: str, system_ca_file: Path | str) -> Stack:
        stack = Stack(
            load_policy_text(yaml_text, "https.yaml"),
            Settings(
                listen=HostPort("127.0.0.1", free_port()),
                admin=HostPort("127.0.0.1", 0),
                dns_resolver=dns.address,
                data_path=data_path,
                system_ca_file=str(system_ca_file),
                workload=Workload(Locality.parse("us-east1")),
            ),
        )
        await stack.start()
        stacks.append(stack)
        return stack

    yield start
    try:
        if data_path is DataPath.LUA:
            for stack in stacks:
                assert await lua_errors(stack) == 0
    finally:
        for stack in stacks:
            await stack.stop()


def https_seed(port: int, tls: str = "", *, annotation: bool = False, mode: str = "SIMPLE") -> str:
    """The seed's HTTPS variant, ``targetPort`` = the stand-ins' port, test-sized ejection."""
    annotations = f"  annotations:\n    {ANNOTATION}\n" if annotation else ""
    extra = "".join(f"\n      {line}" for line in tls.splitlines())
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - mydb.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: {port}
  resolution: DNS
  endpoints:
  - address: {EAST}
    locality: us-east1
  - address: {WEST}
    locality: us-west
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: mydynamodb
{annotations}spec:
  host: mydb.com
  trafficPolicy:
    tls:
      mode: {mode}{extra}
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - from: us-east1
          to: us-west
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
"""


async def curl_loop(stack: Stack, count: int) -> list[Reply]:
    return [await get(stack.settings.listen, "mydb.com") for _ in range(count)]


def served(replies: list[Reply]) -> list[str]:
    return [r.served_by or f"<{r.status}>" for r in replies]


async def cluster_stat(stack: Stack, suffix: str) -> int:
    """A counter of the service's cluster (``cluster.outbound|80||mydb.com.<suffix>``)."""
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    name = f"cluster.{CLUSTER}.{suffix}"
    query = urllib.parse.quote(f"^{re.escape(name)}$", safe="")
    reply = await get(stack.envoy.admin_address, "admin", f"/stats?filter={query}")
    for line in reply.body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def east_row(stack: Stack, regions: TlsRegions) -> dict[str, object]:
    rows = {r["address"]: r for r in endpoints_json(stack.app.table, stack.app.now())}
    return rows[f"127.0.0.11:{regions.port}"]


async def test_endpoint_sni_serves_us_east1_with_its_own_name_as_sni_and_host(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    regions = await tls_regions()
    stack = await start_tls_stack(https_seed(regions.port, annotation=True), pki.ca_file)

    replies = await curl_loop(stack, 5)

    assert served(replies) == [EAST] * 5
    assert regions.east.received == [(EAST, EAST)] * 5
    assert regions.west.received == []


async def test_endpoint_sni_fails_over_to_us_west_under_its_own_name_when_us_east1_refuses(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    regions = await tls_regions()
    stack = await start_tls_stack(https_seed(regions.port, annotation=True), pki.ca_file)
    assert served(await curl_loop(stack, 2)) == [EAST, EAST]
    regions.east.set_mode(Mode.REFUSE)

    replies = await curl_loop(stack, 5)

    assert served(replies) == [WEST] * 5  # Envoy retried on us-west inside the request
    assert set(regions.west.received) == {(WEST, WEST)}
    assert east_row(stack, regions)["ejected"] is True


async def test_a_failed_handshake_is_a_connect_failure_that_fails_over_to_us_west(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    # us-east1's certificate comes from a CA Envoy does not trust: every handshake fails.
    regions = await tls_regions(east_context=server_context(pki.other_ca, EAST))
    stack = await start_tls_stack(https_seed(regions.port, annotation=True), pki.ca_file)

    replies = await curl_loop(stack, 5)

    assert served(replies) == [WEST] * 5  # the failed handshake was retried on us-west
    assert await cluster_stat(stack, "ssl.fail_verify_error") >= 1
    assert regions.east.sni_seen[0] == EAST
    assert regions.east.received == []
    row = east_row(stack, regions)
    assert row["ejected"] is True
    assert row["num_ejections"] == 1


async def test_the_literal_seed_https_config_fails_verification_as_istio_does(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    # No sni: the authority mydb.com is the SNI and the name checked, and the endpoints'
    # certificates name themselves, as DynamoDB's do. The CA is trusted: only the SAN fails.
    regions = await tls_regions()
    stack = await start_tls_stack(https_seed(regions.port), pki.ca_file)

    replies = await curl_loop(stack, 4)

    assert [(r.status, r.served_by) for r in replies] == [(503, "")] * 4, replies
    assert "upstream connect error" in replies[0].body
    assert await cluster_stat(stack, "ssl.fail_verify_san") >= 1
    assert set(regions.east.sni_seen) == {"mydb.com"}
    assert regions.east.received == []
    assert regions.west.received == []


async def test_sni_and_subject_alt_names_name_one_endpoint_and_keep_the_host(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    regions = await tls_regions()
    tls = f"sni: {EAST}\nsubjectAltNames:\n- {EAST}"
    stack = await start_tls_stack(https_seed(regions.port, tls), pki.ca_file)

    replies = await curl_loop(stack, 3)

    assert served(replies) == [EAST] * 3
    # Istio's fixed sni changes the SNI only: the Host stays the client's authority.
    assert regions.east.received == [(EAST, "mydb.com")] * 3


@pytest.mark.parametrize(
    ("annotation", "name"), [(False, "mydb.com"), (True, EAST)], ids=["authority", "endpoint"]
)
async def test_insecure_skip_verify_accepts_a_certificate_no_one_trusts(
    tls_regions: RegionsFactory,
    start_tls_stack: StackFactory,
    pki: Pki,
    annotation: bool,
    name: str,
) -> None:
    regions = await tls_regions(east_context=server_context(pki.other_ca, EAST))
    yaml_text = https_seed(regions.port, "insecureSkipVerify: true", annotation=annotation)
    stack = await start_tls_stack(yaml_text, pki.ca_file)

    replies = await curl_loop(stack, 3)

    assert served(replies) == [EAST] * 3
    assert regions.east.received == [(name, name)] * 3


async def test_mutual_tls_presents_the_client_certificate_the_endpoint_requires(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    regions = await tls_regions(
        east_context=server_context(pki.ca, EAST, client_ca=pki.ca),
        west_context=server_context(pki.ca, WEST, client_ca=pki.ca),
    )
    tls = f"clientCertificate: {pki.client_cert}\nprivateKey: {pki.client_key}"
    yaml_text = https_seed(regions.port, tls, annotation=True, mode="MUTUAL")
    stack = await start_tls_stack(yaml_text, pki.ca_file)

    replies = await curl_loop(stack, 3)

    assert served(replies) == [EAST] * 3
    assert regions.east.received == [(EAST, EAST)] * 3


async def test_ca_certificates_is_trusted_where_the_system_bundle_is_not(
    tls_regions: RegionsFactory, start_tls_stack: StackFactory, pki: Pki
) -> None:
    regions = await tls_regions()
    # The machine's real bundle does not hold the trustme CA: without caCertificates, no
    # endpoint is trusted; with it, us-east1 serves.
    system = "/etc/ssl/certs/ca-certificates.crt"
    untrusted = await start_tls_stack(https_seed(regions.port, annotation=True), system)
    trusted = await start_tls_stack(
        https_seed(regions.port, f"caCertificates: {pki.ca_file}", annotation=True), system
    )

    assert [r.status for r in await curl_loop(untrusted, 2)] == [503, 503]
    assert await cluster_stat(untrusted, "ssl.fail_verify_error") >= 1
    assert served(await curl_loop(trusted, 3)) == [EAST] * 3
