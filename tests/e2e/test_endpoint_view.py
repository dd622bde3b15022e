"""Our ``/clusters?format=json`` against a real Envoy's, for the same YAML and the same ejection.

The reference is Istio's sidecar config for the seed's YAML on the wheel's Envoy
(``tests/differential/reference.py``): STRICT_DNS, Envoy's own outlier detection. Ours is
``extproc up`` from the command line. Both resolve the endpoint names through the same DNS
responder to the same stand-ins, us-east1 answers 503, one request goes through each, and
each ejects us-east1. Then:

1. Every host entry has the keys and nesting istioctl reads, with the same values
   (address, EDS health, ``failed_outlier_check``, priority, locality, weight, hostname).
2. ``failed_outlier_check`` is true exactly for the ejected host, on both.
3. istioctl's endpoint table, computed from both by its own column logic, is the same:
   OUTLIER CHECK FAILED for us-east1 and OK for us-west. ``extproc status`` agrees.
4. ``extproc up`` (stderr not a terminal) logged the ejection as one JSON line in Envoy's
   outlier event field names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from extproc.demo import free_port
from extproc.sandbox import DnsResponder, Mode
from extproc.sandbox.client import get
from extproc.wire import DataPath
from tests.differential.reference import Proxy, ReferenceEnvoy, render_reference

from .conftest import EAST, EXTPROC, WEST, Region, first_200, start_extproc_up
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

CLUSTER = "outbound|80||mydb.com"

#: The parts of an ``envoy.admin.v3.HostStatus`` that istioctl's endpoint views read
#: (``istioctl/pkg/writer/envoy/clusters/clusters.go``: address, EDS health status,
#: ``failed_outlier_check``; ``-o json`` prints the rest, where priority, locality, weight
#: and hostname show where each endpoint sits in the failover order).
ISTIOCTL_FIELDS = ("address", "health_status", "priority", "locality", "weight", "hostname")

#: envoy.config.core.v3.HealthStatus names, as istioctl prints them (core.HealthStatus_name).
HEALTH_STATUS_NAMES = {0: "UNKNOWN", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT"}


def istioctl_endpoints(clusters: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``istioctl proxy-config endpoints --file`` rows for a ``/clusters?format=json`` body.

    Mirrors ``PrintEndpointsSummary`` in ``istioctl/pkg/writer/envoy/clusters/clusters.go``:
    ENDPOINT is ``address:port`` (the address alone when the port is 0), STATUS the name of
    ``health_status.eds_health_status``, OUTLIER CHECK "FAILED" iff
    ``health_status.failed_outlier_check`` else "OK", then CLUSTER; rows sorted by address,
    then port, then cluster (``retrieveSortedEndpointClusterSlice``). protojson leaves out
    defaults, so a missing field reads as its zero value, as the Go getters do.
    """
    rows: list[tuple[str, int, str, str, bool]] = []
    for cluster in clusters.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            socket_address = host.get("address", {}).get("socket_address", {})
            health = host.get("health_status", {})
            status = health.get("eds_health_status", 0)
            name = status if isinstance(status, str) else HEALTH_STATUS_NAMES[status]
            rows.append(
                (
                    socket_address.get("address", ""),
                    int(socket_address.get("port_value", 0)),
                    cluster["name"],
                    name,
                    bool(health.get("failed_outlier_check", False)),
                )
            )
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [
        (
            f"{address}:{port}" if port else address,
            status,
            "FAILED" if failed else "OK",
            cluster,
        )
        for address, port, cluster, status, failed in rows
    ]


def _fetch_json(address: tuple[str, int], path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as reply:
        return json.load(reply)  # type: ignore[no-any-return]


async def clusters_json(address: tuple[str, int]) -> dict[str, Any]:
    return await asyncio.to_thread(_fetch_json, address, "/clusters?format=json")


def _hosts(clusters: dict[str, Any], cluster_name: str) -> dict[str, dict[str, Any]]:
    """The cluster's host statuses by ``ip:port``."""
    [cluster] = [c for c in clusters["cluster_statuses"] if c["name"] == cluster_name]
    return {
        "{address}:{port_value}".format(**h["address"]["socket_address"]): h
        for h in cluster["host_statuses"]
    }


def _shape(value: Any) -> Any:
    """The keys and nesting of a JSON value, without its leaf values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


def _ejected(clusters: dict[str, Any], cluster_name: str) -> set[str]:
    return {
        address
        for address, host in _hosts(clusters, cluster_name).items()
        if host["health_status"].get("failed_outlier_check", False)
    }


async def _wait_ejected(address: tuple[str, int], expected: set[str]) -> dict[str, Any]:
    """Envoy ejects on its main thread a moment after the 503; poll until it shows."""
    for _ in range(100):
        clusters = await clusters_json(address)
        if _ejected(clusters, CLUSTER) == expected:
            return clusters
        await asyncio.sleep(0.05)
    raise AssertionError(f"never ejected {expected}: {clusters}")


async def _status_rows(admin: tuple[str, int]) -> set[tuple[str, ...]]:
    """``extproc status``'s first four columns (istioctl's), one tuple per endpoint."""
    status = await asyncio.create_subprocess_exec(
        *EXTPROC,
        "status",
        "--admin",
        "{}:{}".format(*admin),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await status.communicate()
    assert status.returncode == 0, err.decode()
    header, *lines = out.decode().splitlines()
    assert header.split()[:5] == ["ENDPOINT", "STATUS", "OUTLIER", "CHECK", "CLUSTER"]
    return {tuple(line.split()[:4]) for line in lines}


async def test_clusters_json_matches_a_real_envoys_for_the_same_yaml_and_ejection(
    tmp_path: Path, regions: dict[str, Region], dns: DnsResponder, data_path: DataPath
) -> None:
    east, west = regions["east"], regions["west"]
    east_host, west_host = f"127.0.0.11:{east.port}", f"127.0.0.12:{west.port}"
    # A long ejection, so both views still show it when they are read.
    yaml_text = seed(east.port, west.port, interval="1s", base="60s")
    config = tmp_path / "mydb.yaml"
    config.write_text(yaml_text)
    listen, admin = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())

    reference = ReferenceEnvoy(
        render_reference(
            yaml_text,
            Proxy(locality="us-east1"),
            listen=("127.0.0.1", free_port()),
            dns_resolver=dns.address,
        ),
        concurrency=1,
    )
    proc = await start_extproc_up(
        config,
        listen,
        admin,
        "--data-path",
        data_path.value,
        dns_resolver=dns.address,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    stderr_lines: list[bytes] = []

    async def drain_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            stderr_lines.append(line)

    reader = asyncio.create_task(drain_stderr())
    try:
        async with reference:
            await first_200(listen)
            assert reference.envoy.admin_address is not None
            envoy_admin = reference.envoy.admin_address
            # Both route to us-east1 (priority 0) while it is healthy.
            assert (await get(reference.listen, "mydb.com")).served_by == EAST
            assert (await get(listen, "mydb.com")).served_by == EAST

            east.servers[0].set_mode(Mode.FAIL_503)
            assert (await get(reference.listen, "mydb.com")).status == 503
            assert (await get(listen, "mydb.com")).status == 503
            theirs = await _wait_ejected(envoy_admin, {east_host})
            ours = await _wait_ejected(admin, {east_host})
            # Both fail over to us-west now (the fast path's other Envoy worker takes the new
            # table when its copy is a TTL old).
            await asyncio.sleep(0.25)
            assert (await get(reference.listen, "mydb.com")).served_by == WEST
            assert (await get(listen, "mydb.com")).served_by == WEST

        their_hosts, our_hosts = _hosts(theirs, CLUSTER), _hosts(ours, CLUSTER)
        assert set(our_hosts) == set(their_hosts) == {east_host, west_host}
        for address in (east_host, west_host):
            their = {
                k: their_hosts[address][k] for k in ISTIOCTL_FIELDS if k in their_hosts[address]
            }
            our = {k: our_hosts[address][k] for k in ISTIOCTL_FIELDS if k in our_hosts[address]}
            assert our == their, address
            assert set(our) >= {"address", "health_status", "locality", "weight", "hostname"}
            # Per-host stats are there too, in Envoy's form (values differ: ours count the
            # attempts the data path reported, not Envoy's connections).
            assert _shape(our_hosts[address]["stats"][0]) == _shape(
                their_hosts[address]["stats"][0]
            )
        assert _ejected(ours, CLUSTER) == _ejected(theirs, CLUSTER) == {east_host}

        table = istioctl_endpoints(ours)
        assert table == istioctl_endpoints(theirs)
        assert table == [
            (east_host, "HEALTHY", "FAILED", CLUSTER),
            (west_host, "HEALTHY", "OK", CLUSTER),
        ]
        assert await _status_rows(admin) == set(table)
    finally:
        east.servers[0].set_mode(Mode.HEALTHY)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(reader, 5)
    assert proc.returncode == 0, b"".join(stderr_lines).decode()

    records = []
    for line in stderr_lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    [eject] = [r for r in records if r.get("event") == "outlier.eject"]
    assert {k: eject[k] for k in ("action", "type", "cluster_name", "upstream_url")} == {
        "action": "EJECT",
        "type": "CONSECUTIVE_5XX",
        "cluster_name": CLUSTER,
        "upstream_url": east_host,
    }
    assert (eject["num_ejections"], eject["enforced"]) == (1, True)
    assert "secs_since_last_action" not in eject  # never un-ejected before, as Envoy leaves it
