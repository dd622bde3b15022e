"""extproc against Istio's sidecar Envoy (the reference): same YAML, same faults, per request.

Each test replays one scenario on both proxies at once (``scenario.run_scenario``) and compares
what served each request. Where both are deterministic (one host per priority, spaced
sequential requests) the sequences must be equal. Where native Envoy has timing artifacts, the
test asserts that extproc fails no more requests than the reference and settles the same way,
and says which artifact. The artifacts, measured on this Envoy (1.40):

- **The retry of a refused connect lands on the failover priority.** The failed attempt ejects
  the host on Envoy's main thread, the first health change of a cluster reaches the workers at
  once, and the retry (after its 0-25 ms back-off) sees P0 empty. So Istio loses no request
  when a one-host P0 refuses connections (the seed's post shows one lost request; it predates
  this timing). The same holds for a connect timeout.
- **The update merge window.** Istio leaves ``update_merge_window`` at Envoy's 1 s: a health
  change of a priority less than 1 s after the previous delivered one waits for the window to
  close. An un-ejection shortly after an ejection reaches the workers up to 1 s late, and a
  re-ejection right after an un-ejection too, so a still-dead host keeps getting requests for up
  to a second (measured: about 11 failed requests in 1.1 s at 10 req/s, per un-ejection).
- **Per-worker round robin from a random start**, so with several workers the order is not a
  global alternation.
"""

from __future__ import annotations

import itertools
import textwrap

import pytest

from extproc.sandbox import Mode
from extproc.wire import DataPath

from .scenario import (
    EXTPROC,
    REFERENCE,
    Requests,
    Scenario,
    SetDns,
    SetMode,
    Sleep,
    Upstream,
    assert_no_more_failures,
    assert_same_sequence,
    assert_spread,
    run_scenario,
)

pytestmark = pytest.mark.e2e

EAST_NAME = "dynamodb.us-east-1.amazonaws.com"
WEST_NAME = "dynamodb.us-west-1.amazonaws.com"
EU_NAME = "dynamodb.eu-west-1.amazonaws.com"

EAST = Upstream("east", "127.0.3.1", (EAST_NAME,))
WEST = Upstream("west", "127.0.3.2", (WEST_NAME,))
EU = Upstream("eu", "127.0.3.4", (EU_NAME,))


def service_entry(*endpoints: tuple[str, str]) -> str:
    """The seed's ServiceEntry (``resolution: DNS``) with (address, locality) endpoints."""
    lines = "".join(f"  - address: {a}\n    locality: {loc}\n" for a, loc in endpoints)
    return (
        "apiVersion: networking.istio.io/v1beta1\n"
        "kind: ServiceEntry\n"
        "metadata:\n  name: external-svc-dns\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  location: MESH_EXTERNAL\n"
        "  ports:\n"
        "  - {number: 80, name: http, protocol: HTTP, targetPort: {port}}\n"
        "  resolution: DNS\n"
        "  endpoints:\n" + lines
    )


SEED_SE = service_entry((EAST_NAME, "us-east1"), (WEST_NAME, "us-west"))


def destination_rule(traffic_policy: str) -> str:
    return (
        "---\n"
        "apiVersion: networking.istio.io/v1beta1\n"
        "kind: DestinationRule\n"
        "metadata:\n  name: mydynamodb\n"
        "spec:\n"
        "  host: mydb.com\n"
        "  trafficPolicy:\n" + textwrap.indent(textwrap.dedent(traffic_policy).strip(), "    ")
    )


def outlier(base: str = "30s", interval: str = "0.2s", extra: str = "") -> str:
    return (
        "outlierDetection:\n"
        f"  consecutive5xxErrors: 1\n  interval: {interval}\n  baseEjectionTime: {base}\n" + extra
    )


# --- the seed's story ------------------------------------------------------------------------

SE_ONLY = Scenario(SEED_SE, (EAST, WEST), (Requests("spread", 80),))


async def test_service_entry_alone_spreads_over_both_regions(data_path: DataPath) -> None:
    # Seed step 1: no outlierDetection, so one priority; LEAST_REQUEST with idle hosts is a
    # uniform pick between the two.
    run = await run_scenario(SE_ONLY, data_path)
    assert_spread(run, "spread", {"east": 0.5, "west": 0.5})


WITH_DR = Scenario(
    SEED_SE + destination_rule(outlier()), (EAST, WEST), (Requests("pinned", 10, 0.02),)
)


async def test_destination_rule_pins_traffic_to_the_workload_region(data_path: DataPath) -> None:
    # Seed step 2: us-east1 is P0 for a us-east1 workload, us-west P1.
    run = await run_scenario(WITH_DR, data_path)
    assert_same_sequence(run, "pinned")
    assert run.tokens("pinned", REFERENCE) == ["east"] * 10


EAST_REFUSES = Scenario(
    SEED_SE + destination_rule(outlier()),
    (EAST, WEST),
    (
        Requests("warm", 3, 0.02),
        SetMode("east", Mode.REFUSE),
        Requests("trip", 1),
        Requests("failed over", 8, 0.05),
    ),
)


async def test_refused_region_fails_over_losing_no_more_than_istio(data_path: DataPath) -> None:
    # Seed step 3. Istio's retry of the refused attempt lands on us-west (the ejection reached
    # the worker before the retry): the reference loses no request here.
    run = await run_scenario(EAST_REFUSES, data_path)
    assert_same_sequence(run, "warm")
    assert_no_more_failures(run, "trip")
    assert_same_sequence(run, "failed over")
    assert run.tokens("failed over", REFERENCE) == ["west"] * 8


FAILBACK = Scenario(
    SEED_SE + destination_rule(outlier(base="1.5s")),
    (EAST, WEST),
    (
        Requests("warm", 3, 0.02),
        SetMode("east", Mode.REFUSE),
        Requests("trip", 1),
        Requests("ejected", 5, 0.05),
        SetMode("east", Mode.HEALTHY),
        # Un-ejected at the first 0.2 s sweep 1.5 s after the ejection; Envoy delivers it at
        # once (more than the 1 s merge window after the ejection). 2 s leaves room for a
        # sweep phase difference and the fast path's 100 ms table TTL.
        Sleep(2.0),
        Requests("recovered", 8, 0.05),
    ),
)


async def test_traffic_fails_back_once_the_ejection_ends(data_path: DataPath) -> None:
    # Seed step 4.
    run = await run_scenario(FAILBACK, data_path)
    assert_no_more_failures(run, "trip")
    assert_same_sequence(run, "ejected")
    assert_same_sequence(run, "recovered")
    assert run.tokens("ejected", REFERENCE) == ["west"] * 5
    assert run.tokens("recovered", REFERENCE) == ["east"] * 8


EAST_ANSWERS_503 = Scenario(
    SEED_SE + destination_rule(outlier()),
    (EAST, WEST),
    (Requests("warm", 3, 0.02), SetMode("east", Mode.FAIL_503), Requests("after", 10, 0.02)),
    concurrency=2,
)


async def test_a_503_answer_costs_one_request_like_istio(data_path: DataPath) -> None:
    # Istio (>= 1.24) does not retry 5xx answers: the 503 that ejects us-east1 reaches the
    # client on both proxies. The ejection is the cluster's first health change in over a
    # second, so Envoy's main thread delivers it to both workers at once: whichever worker
    # takes the next request (20 ms later) already sends it to us-west.
    run = await run_scenario(EAST_ANSWERS_503, data_path)
    assert_same_sequence(run, "after")
    assert run.tokens("after", REFERENCE) == ["<503>"] + ["west"] * 9


KEEPS_FAILING = Scenario(
    SEED_SE + destination_rule(outlier(base="0.5s")),
    (EAST, WEST),
    (Requests("warm", 3, 0.02), SetMode("east", Mode.FAIL_503), Requests("down", 60, 0.1)),
)


async def test_a_dead_endpoint_costs_one_request_per_unejection(data_path: DataPath) -> None:
    # Ejections of 0.5, 1.0, 1.5, 2.0 s ... (base x count), each ended by a 0.2 s sweep and
    # answered by one failed probe. The reference fails far more (about 20 requests in these
    # 6 s): its un-ejection and the re-ejection that follows each fall within Envoy's 1 s
    # update merge window after the previous change, so the workers learn of each up to 1 s
    # late and keep sending to the dead host meanwhile. Compare counts, not times.
    run = await run_scenario(KEEPS_FAILING, data_path)
    ours, ref = assert_no_more_failures(run, "down")
    assert ours > 0
    assert ref > 0
    # Growing ejections (base_ejection_time x num_ejections): each failed probe comes later
    # after the previous one.
    times = [r.t for r in run.loop("down", EXTPROC) if r.served_by is None]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 3, run.side_by_side("down")
    assert gaps == sorted(gaps), run.side_by_side("down")
    assert all(r.served_by in ("west", None) for r in run.loop("down", EXTPROC))


CONNECT_TIMEOUT = Scenario(
    SEED_SE + destination_rule(outlier() + "connectionPool:\n  tcp:\n    connectTimeout: 250ms\n"),
    (Upstream("east", "127.0.3.1", (EAST_NAME,), blackhole=True), WEST),
    (Requests("trip", 1), Requests("failed over", 6, 0.05)),
)


async def test_a_connect_timeout_fails_over_losing_no_more_than_istio(
    data_path: DataPath,
) -> None:
    # us-east1 never completes a TCP handshake. The 250 ms connect timeout is a connect
    # failure: it ejects us-east1 and, on the reference, the retry goes to us-west.
    run = await run_scenario(CONNECT_TIMEOUT, data_path)
    assert_no_more_failures(run, "trip")
    assert_same_sequence(run, "failed over")
    assert run.tokens("failed over", REFERENCE) == ["west"] * 6


# --- more regions, more hosts ----------------------------------------------------------------

THREE_REGIONS = Scenario(
    service_entry((EAST_NAME, "us-east1"), (WEST_NAME, "us-west"), (EU_NAME, "eu-west"))
    + destination_rule(
        outlier(extra="  maxEjectionPercent: 100\n")
        + "loadBalancer:\n  localityLbSetting:\n    failover:\n"
        "    - {from: us-east1, to: eu-west}\n"
    ),
    (EAST, WEST, EU),
    (
        Requests("local", 3, 0.05),
        SetMode("east", Mode.FAIL_503),
        Requests("to eu-west", 5, 0.05),
        SetMode("eu", Mode.FAIL_503),
        Requests("eu-west fails", 5, 0.05),
        Sleep(1.1),
        Requests("to us-west", 5, 0.05),
    ),
)


async def test_failover_list_orders_the_remote_regions(data_path: DataPath) -> None:
    # For a us-east1 workload: us-east1 P0, eu-west P1 (the failover target), us-west P2.
    run = await run_scenario(THREE_REGIONS, data_path)
    for label in ("local", "to eu-west", "to us-west"):
        assert_same_sequence(run, label)
    assert run.tokens("to eu-west", REFERENCE) == ["<503>"] + ["eu"] * 4
    assert run.tokens("to us-west", REFERENCE) == ["west"] * 5
    # An ejection is a health change of every priority of the cluster, so eu-west's, 0.25 s
    # after us-east1's, waits in the reference's 1 s merge window while eu-west keeps failing
    # requests there. extproc moves on after the one failed request.
    assert_no_more_failures(run, "eu-west fails")
    assert run.tokens("eu-west fails", EXTPROC) == ["<503>"] + ["west"] * 4


EAST_A = Upstream("east-a", "127.0.3.1", (EAST_NAME,))
EAST_B = Upstream("east-b", "127.0.3.3", (EAST_NAME,))

SPILL_OVER = Scenario(
    SEED_SE + destination_rule(outlier()),
    (EAST_A, EAST_B, WEST),
    (
        SetMode("east-a", Mode.FAIL_503),
        # 20 picks between two P0 hosts: east-a is among them but for a 1e-6 chance.
        Requests("ejecting", 20, 0.02),
        Requests("spill", 150),
    ),
    concurrency=2,
)


async def test_one_of_two_local_hosts_ejected_spills_30_percent(data_path: DataPath) -> None:
    # us-east-1 resolves to two IPs, one answering 503: once it is ejected P0 is 50 % healthy,
    # so 70 % stays on the other us-east1 host and 30 % spills to us-west (1.4 overprovisioning).
    run = await run_scenario(SPILL_OVER, data_path)
    assert_no_more_failures(run, "ejecting")
    assert run.failures("ejecting", EXTPROC) == 1
    assert run.failures("spill", EXTPROC) == 0
    assert_no_more_failures(run, "spill")
    assert_spread(run, "spill", {"east-b": 0.7, "west": 0.3})


def _all_failing(min_health: str) -> Scenario:
    return Scenario(
        SEED_SE + destination_rule(outlier(extra=f"  maxEjectionPercent: 100\n{min_health}")),
        (EAST, WEST),
        (
            SetMode("east", Mode.FAIL_503),
            SetMode("west", Mode.FAIL_503),
            Requests("ejecting", 6, 0.05),
            # us-west's ejection comes 50 ms after us-east1's: the reference delivers it at
            # the end of its 1 s merge window (both hosts answer 503 meanwhile anyway).
            Sleep(1.1),
            # Both hosts answer again, but stay ejected for 30 s.
            SetMode("east", Mode.HEALTHY),
            SetMode("west", Mode.HEALTHY),
            Requests("all ejected", 60),
        ),
    )


async def test_every_host_ejected_answers_no_healthy_upstream(data_path: DataPath) -> None:
    # minHealthPercent unset: Istio sets healthy_panic_threshold 0, so with every host
    # ejected the answer is 503 (no healthy upstream), even though both would answer now.
    run = await run_scenario(_all_failing(""), data_path)
    assert_no_more_failures(run, "ejecting")
    assert_same_sequence(run, "all ejected")
    assert run.tokens("all ejected", REFERENCE) == ["<503>"] * 60


async def test_every_host_ejected_with_min_health_percent_uses_them_all(
    data_path: DataPath,
) -> None:
    # minHealthPercent 50: with every priority below it, Envoy is in total panic and splits
    # the load by host count (one each), ignoring the ejections.
    run = await run_scenario(_all_failing("  minHealthPercent: 50\n"), data_path)
    assert_no_more_failures(run, "ejecting")
    assert run.failures("all ejected", EXTPROC) == 0
    assert_no_more_failures(run, "all ejected")
    assert_spread(run, "all ejected", {"east": 0.5, "west": 0.5})


LOCALITY_DISABLED = Scenario(
    SEED_SE
    + destination_rule(
        outlier() + "loadBalancer:\n  simple: ROUND_ROBIN\n  localityLbSetting:\n"
        "    enabled: false\n"
    ),
    (EAST, WEST),
    (Requests("spread", 80),),
)


async def test_locality_lb_disabled_keeps_one_priority(data_path: DataPath) -> None:
    # enabled: false turns off locality processing "in entirety", outlierDetection or not.
    run = await run_scenario(LOCALITY_DISABLED, data_path)
    assert_spread(run, "spread", {"east": 0.5, "west": 0.5})


EAST_2 = Upstream("east-2", "127.0.3.3")

RERESOLVED = Scenario(
    SEED_SE + destination_rule(outlier()),
    (EAST, EAST_2, WEST),
    (
        Requests("before", 4, 0.05),
        SetDns(EAST_NAME, ("127.0.3.3",)),
        # TTL 1 s on both resolvers; then Envoy replaces the host, extproc too.
        Sleep(2.5),
        Requests("after", 4, 0.05),
    ),
)


async def test_a_name_that_resolves_to_a_new_ip_moves_traffic(data_path: DataPath) -> None:
    run = await run_scenario(RERESOLVED, data_path)
    assert_same_sequence(run, "before")
    assert_same_sequence(run, "after")
    assert run.tokens("after", REFERENCE) == ["east-2"] * 4


# --- load balancing within a priority --------------------------------------------------------


def _three_hosts(simple: str) -> Scenario:
    return Scenario(
        service_entry((EAST_NAME, "us-east1"), (WEST_NAME, "us-west"), (EU_NAME, "eu-west"))
        + destination_rule(f"loadBalancer:\n  simple: {simple}\n"),
        (EAST, WEST, EU),
        (Requests("spread", 150),),
        concurrency=2,
    )


@pytest.mark.parametrize("simple", ["LEAST_REQUEST", "RANDOM"])
async def test_spread_over_one_priority_matches(data_path: DataPath, simple: str) -> None:
    # No outlierDetection: one priority of three hosts. Sequential requests leave every host
    # idle, so LEAST_REQUEST's two-choice pick is uniform like RANDOM.
    run = await run_scenario(_three_hosts(simple), data_path)
    third = 1 / 3
    assert_spread(run, "spread", {"east": third, "west": third, "eu": third})
