"""Differential tests for ``loadBalancer.consistentHash``: the same key goes to the same
endpoint on Istio's sidecar Envoy (the reference) and on extproc, before an ejection and
after it, when Envoy's ring over priorities moves keys to the failover region.
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
    Sleep,
    Step,
    Upstream,
    assert_same_sequence,
    run_scenario,
)
from .test_virtual_service import virtual_service

pytestmark = pytest.mark.e2e

EAST_A, EAST_B = Upstream("east-a", "127.0.4.1"), Upstream("east-b", "127.0.4.2")
WEST = Upstream("west", "127.0.4.3")
KEYS = tuple(f"user-{i}" for i in range(40))


def _service_entry() -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        "metadata:\n  name: db\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  location: MESH_EXTERNAL\n"
        "  ports:\n"
        "  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}\n"
        "  resolution: STATIC\n"
        "  endpoints:\n"
        "  - {address: 127.0.4.1, locality: us-east1}\n"
        "  - {address: 127.0.4.2, locality: us-east1}\n"
        "  - {address: 127.0.4.3, locality: us-west}\n"
    )


def _destination_rule(consistent_hash: str) -> str:
    return (
        "---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata:\n  name: db\n"
        "spec:\n"
        "  host: mydb.com\n"
        "  trafficPolicy:\n"
        f"    loadBalancer: {{consistentHash: {consistent_hash}}}\n"
        "    outlierDetection:\n"
        "      {consecutive5xxErrors: 1, interval: 0.2s, baseEjectionTime: 30s,\n"
        "       maxEjectionPercent: 100}\n"
    )


def _each_key(label: str, pause_s: float = 0.0) -> tuple[Step, ...]:
    steps: list[Step] = []
    for key in KEYS:
        steps.append(Requests(f"{label} {key}", 1, headers=(("x-user", key),)))
        if pause_s:
            steps.append(Sleep(pause_s))
    return tuple(steps)


def _scenario(consistent_hash: str, extra: str = "") -> Scenario:
    return Scenario(
        _service_entry() + _destination_rule(consistent_hash) + extra,
        (EAST_A, EAST_B, WEST),
        (
            *_each_key("before"),
            SetMode("east-b", Mode.FAIL_503),
            # The first key on east-b gets its 503, and its host is ejected: Envoy's detector
            # posts the ejection to its main thread, which rebuilds the ring for the workers.
            # A request sent before that lands may still meet east-b, on either proxy, so the
            # keys are spaced by 20 ms and this loop is compared by its failures only.
            *_each_key("ejecting", pause_s=0.02),
            Sleep(0.3),
            *_each_key("after"),
        ),
    )


RING = _scenario("{httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}")
MAGLEV = _scenario("{httpHeaderName: x-user, maglev: {tableSize: 65537}}")
ROUTED = _scenario(
    "{httpHeaderName: x-user}",
    virtual_service(
        "- name: db\n"
        "  route:\n  - destination: {host: mydb.com}\n"
        "  retries: {attempts: 2, retryOn: 5xx}\n"
    ),
)


@pytest.mark.parametrize("scenario", [RING, MAGLEV, ROUTED], ids=["ring", "maglev", "routed"])
async def test_a_key_goes_where_envoys_ring_sends_it_before_and_after_an_ejection(
    data_path: DataPath, scenario: Scenario
) -> None:
    run = await run_scenario(scenario, data_path)
    for key in KEYS:
        assert_same_sequence(run, f"before {key}")
        assert_same_sequence(run, f"after {key}")
    before = {key: run.tokens(f"before {key}", REFERENCE)[0] for key in KEYS}
    after = {key: run.tokens(f"after {key}", EXTPROC)[0] for key in KEYS}
    # Before: the ring spreads the keys over us-east1's two endpoints only (priority 0).
    assert set(before.values()) == {"east-a", "east-b"}
    # After: no key reaches the ejected endpoint, and the priority spill (half of us-east1
    # healthy, times the overprovisioning factor 1.4: 70 % stays) sends some keys to us-west,
    # keys of the endpoint that stayed healthy among them.
    assert "east-b" not in after.values()
    assert any(after[key] == "west" for key in KEYS)
    # The key that met east-b's 503 is retried on the ring; extproc fails no more requests
    # than Istio's Envoy while the ejection lands.
    failed = {
        proxy: sum(run.failures(f"ejecting {key}", proxy) for key in KEYS)
        for proxy in (REFERENCE, EXTPROC)
    }
    failing = [
        run.side_by_side(f"ejecting {key}")
        for key in KEYS
        if run.failures(f"ejecting {key}", REFERENCE) or run.failures(f"ejecting {key}", EXTPROC)
    ]
    assert failed[EXTPROC] <= failed[REFERENCE], "\n".join(failing)
