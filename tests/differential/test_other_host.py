"""Differential tests for VirtualService destinations on another ServiceEntry host: the route
names that host's cluster (``GetDestinationCluster``), which keeps its own outlier state and
its own locality failover; a host no ServiceEntry declares names no cluster (Envoy's 503).
"""

from __future__ import annotations

import pytest

from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Requests,
    Scenario,
    SetMode,
    Upstream,
    assert_same_sequence,
    run_scenario,
)
from .test_virtual_service import virtual_service

pytestmark = pytest.mark.e2e

DB_EAST, DB_WEST = Upstream("db-east", "127.0.6.11"), Upstream("db-west", "127.0.6.12")
BACKUP_EAST = Upstream("backup-east", "127.0.6.13")
BACKUP_WEST = Upstream("backup-west", "127.0.6.14")


def service_entry(host: str, east: str, west: str, number: int = 80) -> str:
    """A STATIC ServiceEntry for ``host`` with one endpoint in us-east1 and one in us-west."""
    return (
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        f"metadata:\n  name: {host.split('.')[0]}\n"
        "spec:\n"
        f"  hosts: [{host}]\n"
        "  location: MESH_EXTERNAL\n"
        "  ports:\n"
        f"  - {{number: {number}, name: http, protocol: HTTP, targetPort: {{port}}}}\n"
        "  resolution: STATIC\n"
        "  endpoints:\n"
        f"  - {{address: {east}, locality: us-east1}}\n"
        f"  - {{address: {west}, locality: us-west}}\n"
    )


def outlier_rule(host: str) -> str:
    """A DestinationRule whose outlierDetection ejects on the first 5xx (and gives priorities)."""
    return (
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        f"metadata:\n  name: {host.split('.')[0]}\n"
        "spec:\n"
        f"  host: {host}\n"
        "  trafficPolicy:\n"
        "    outlierDetection:\n"
        "      {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s,\n"
        "       maxEjectionPercent: 100}\n"
    )


#: mydb.com's VirtualService: ``x-target: backup`` to backup.com, ``x-target: nowhere`` to a
#: host no ServiceEntry declares, everything else to mydb.com.
ROUTES = virtual_service(
    "- name: backup\n"
    "  match:\n  - headers: {x-target: {exact: backup}}\n"
    "  route:\n  - destination: {host: backup.com}\n"
    "- name: nowhere\n"
    "  match:\n  - headers: {x-target: {exact: nowhere}}\n"
    "  route:\n  - destination: {host: nowhere.com}\n"
    "- name: db\n"
    "  route:\n  - destination: {host: mydb.com}\n"
)

TO_BACKUP = (("x-target", "backup"),)

# mydb.com has a DestinationRule too, so that its picks are deterministic (us-east1 first).
OTHER_HOST = Scenario(
    service_entry("mydb.com", DB_EAST.ip, DB_WEST.ip)
    + service_entry("backup.com", BACKUP_EAST.ip, BACKUP_WEST.ip)
    + outlier_rule("mydb.com")
    + outlier_rule("backup.com")
    + ROUTES,
    (DB_EAST, DB_WEST, BACKUP_EAST, BACKUP_WEST),
    (
        Requests("mydb", 3, 0.05),
        Requests("backup", 3, 0.05, headers=TO_BACKUP),
        Requests("nowhere", 2, 0.05, headers=(("x-target", "nowhere"),)),
        SetMode("backup-east", Mode.FAIL_503),
        Requests("backup fails over", 5, 0.05, headers=TO_BACKUP),
        Requests("mydb unaffected", 3, 0.05),
    ),
)


async def test_another_hosts_route_fails_over_in_its_cluster_and_no_hosts_gets_envoys_503(
    data_path: DataPath,
) -> None:
    # The backup route names outbound|80||backup.com, with backup.com's own priorities and
    # outlier detector: its us-east1 endpoint's 503 ejects it and the backup requests go to
    # backup's us-west endpoint, while mydb.com's cluster keeps its us-east1 endpoint.
    # The nowhere route names outbound|80||nowhere.com, which no ServiceEntry builds: with
    # validate_clusters false, Envoy answers 503 itself (NC) and asks no endpoint.
    run = await run_scenario(OTHER_HOST, data_path)
    for label in ("mydb", "backup", "nowhere", "backup fails over", "mydb unaffected"):
        assert_same_sequence(run, label)
    assert run.tokens("mydb", REFERENCE) == ["db-east"] * 3
    assert run.tokens("backup", REFERENCE) == ["backup-east"] * 3
    assert run.tokens("nowhere", REFERENCE) == ["<503>"] * 2
    assert run.tokens("backup fails over", EXTPROC) == ["<503>"] + ["backup-west"] * 4
    assert run.tokens("mydb unaffected", EXTPROC) == ["db-east"] * 3
    for proxy in (REFERENCE, EXTPROC):
        answered_by = [r.detail for r in run.loop("nowhere", proxy) if r.detail.startswith("from ")]
        assert answered_by == [], run.side_by_side("nowhere")


#: backup.com declares only port 8080; mydb.com's route to it names no port.
ONE_PORT = Scenario(
    service_entry("mydb.com", DB_EAST.ip, DB_WEST.ip)
    + service_entry("backup.com", BACKUP_EAST.ip, BACKUP_WEST.ip, number=8080)
    + outlier_rule("backup.com")
    + ROUTES,
    (DB_EAST, DB_WEST, BACKUP_EAST, BACKUP_WEST),
    (Requests("backup", 2, 0.05, headers=TO_BACKUP),),
)


async def test_a_portless_route_to_a_host_on_another_port_gets_envoys_503(
    data_path: DataPath,
) -> None:
    # GetDestinationCluster takes the looked-up service's only port, but on a sidecar's
    # routes for port 80 the lookup (httproute.go servicesByName) holds only services with
    # port 80: backup.com is not found and the cluster is outbound|80||backup.com, which
    # does not exist (Envoy's 503 NC), not backup.com's outbound|8080||backup.com.
    run = await run_scenario(ONE_PORT, data_path)
    assert run.tokens("backup", REFERENCE) == ["<503>"] * 2
    assert_same_sequence(run, "backup")
