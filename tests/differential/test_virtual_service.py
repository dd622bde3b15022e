"""Differential tests for a VirtualService: timeouts, retries, matches, on Istio's sidecar Envoy
(the reference, ``reference.py``) and on extproc, request by request.
"""

from __future__ import annotations

import textwrap

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
    assert_no_more_failures,
    assert_same_sequence,
    run_scenario,
)
from .test_failover import EAST, SEED_SE, WEST, destination_rule, outlier

pytestmark = pytest.mark.e2e


def virtual_service(http: str) -> str:
    return (
        "\n---\n"
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata:\n  name: mydb\n"
        "spec:\n"
        "  hosts: [mydb.com]\n"
        "  http:\n" + textwrap.indent(textwrap.dedent(http).strip(), "  ") + "\n"
    )


def _to_mydb(extra: str) -> str:
    return virtual_service(
        "- name: db\n  route:\n  - destination: {host: mydb.com}\n"
        + textwrap.indent(textwrap.dedent(extra).strip(), "  ")
    )


TIMEOUT = Scenario(
    SEED_SE + destination_rule(outlier()) + _to_mydb("timeout: 0.5s"),
    (EAST, WEST),
    (
        Requests("before", 2, 0.05),
        SetMode("east", Mode.HANG),
        Requests("hang", 1),
        # The module path learns of a route timeout from Envoy's access log, one gRPC message
        # after the stream (about a millisecond on loopback; see the README's differences).
        Sleep(0.02),
        Requests("after", 5, 0.05),
    ),
)


async def test_a_timeout_answers_504_ejects_the_hanging_endpoint_and_fails_over(
    data_path: DataPath,
) -> None:
    # The route's timeout ends the hung request with 504 (UT); Envoy's router reports it
    # to the host's detector as a local-origin timeout, a 5xx outside split mode, so
    # consecutive5xxErrors: 1 ejects us-east1 and the next requests go to us-west.
    run = await run_scenario(TIMEOUT, data_path)
    for label in ("before", "hang", "after"):
        assert_same_sequence(run, label)
    [hung] = run.loop("hang", EXTPROC)
    assert hung.status == 504
    assert 0.45 < hung.elapsed < 2.0, run.side_by_side("hang")
    assert run.tokens("after", REFERENCE) == ["west"] * 5


def _retrying(retries: str, threshold: int) -> Scenario:
    return Scenario(
        SEED_SE
        + destination_rule(
            outlier().replace("consecutive5xxErrors: 1", f"consecutive5xxErrors: {threshold}")
        )
        + _to_mydb(retries),
        (EAST, WEST),
        (
            Requests("before", 2, 0.05),
            SetMode("east", Mode.FAIL_503),
            Requests("failing", 2, 0.1),
        ),
    )


RETRY_5XX = _retrying("retries: {attempts: 2, retryOn: 5xx}", threshold=1)


async def test_retries_on_5xx_hide_the_503_that_ejects(data_path: DataPath) -> None:
    # retryOn 5xx: the 503 ejects us-east1 and is retried; the retry lands on us-west (on
    # the reference once the ejection reached the worker, 0-25 ms of retry back-off later;
    # extproc also leaves the failed priority), so the client sees no failure.
    run = await run_scenario(RETRY_5XX, data_path)
    assert_same_sequence(run, "before")
    assert_no_more_failures(run, "failing")
    assert run.tokens("failing", EXTPROC) == ["west"] * 2


NO_RETRY = _retrying("retries: {attempts: 0}", threshold=1)


async def test_attempts_0_sends_the_503_to_the_client(data_path: DataPath) -> None:
    # No retry policy at all: even a refused connection is not retried; the 503 that
    # ejects reaches the client once, then us-west serves.
    run = await run_scenario(NO_RETRY, data_path)
    assert_same_sequence(run, "failing")
    assert run.tokens("failing", REFERENCE) == ["<503>", "west"]


REMOTE_LOCALITIES = _retrying(
    "retries: {attempts: 2, retryOn: 5xx, retryRemoteLocalities: true}", threshold=5
)


async def test_retry_remote_localities_moves_the_last_retry_to_the_failover_region(
    data_path: DataPath,
) -> None:
    # Below the ejection threshold: us-east1 stays in. Istio's previous_priorities
    # (update frequency 2) keeps the first retry in P0 (us-east1 again, a 503) and sends the
    # second to us-west, so the client gets us-west's 200.
    run = await run_scenario(REMOTE_LOCALITIES, data_path)
    assert_same_sequence(run, "failing")
    assert run.tokens("failing", REFERENCE) == ["west"] * 2


HEADER_ROUTE = Scenario(
    SEED_SE
    + destination_rule(outlier())
    + virtual_service(
        "- name: tenant\n"
        "  match:\n  - headers: {x-tenant: {exact: acme}}\n"
        "  route:\n  - destination: {host: mydb.com}\n"
    ),
    (EAST, WEST),
    (
        Requests("matched", 3, 0.05, headers=(("x-tenant", "acme"),)),
        Requests("unmatched", 3, 0.05),
        Requests("other tenant", 2, 0.05, headers=(("x-tenant", "other"),)),
    ),
)


async def test_a_request_no_route_matches_gets_envoys_404(data_path: DataPath) -> None:
    # The VirtualService's routes replace the default one: nothing behind them but 404 (NR).
    run = await run_scenario(HEADER_ROUTE, data_path)
    for label in ("matched", "unmatched", "other tenant"):
        assert_same_sequence(run, label)
    assert run.tokens("matched", REFERENCE) == ["east"] * 3
    assert run.tokens("unmatched", REFERENCE) == ["<404>"] * 3


ANSWERED_BY_ENVOY = Scenario(
    SEED_SE
    + destination_rule(outlier())
    + virtual_service(
        "- name: aborted\n"
        "  match:\n  - headers: {x-case: {exact: abort}}\n"
        "  fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n"
        "  route:\n  - destination: {host: mydb.com}\n"
        "- name: delayed\n"
        "  match:\n  - headers: {x-case: {exact: delay}}\n"
        "  fault: {delay: {fixedDelay: 0.3s, percentage: {value: 100}}}\n"
        "  route:\n  - destination: {host: mydb.com}\n"
        "- name: direct\n"
        "  match:\n  - headers: {x-case: {exact: direct}}\n"
        "  directResponse: {status: 418, body: {string: teapot}}\n"
        "- name: moved\n"
        "  match:\n  - headers: {x-case: {exact: moved}}\n"
        "  redirect: {uri: /elsewhere, authority: other.example}\n"
        "- name: default\n"
        "  route:\n  - destination: {host: mydb.com}\n"
    ),
    (EAST, WEST),
    (
        Requests("aborted", 3, 0.05, headers=(("x-case", "abort"),)),
        Requests("delayed", 2, 0.05, headers=(("x-case", "delay"),)),
        Requests("direct", 2, 0.05, headers=(("x-case", "direct"),)),
        Requests("moved", 2, 0.05, headers=(("x-case", "moved"),)),
        Requests("after", 3, 0.05),
    ),
)


async def test_fault_aborts_delays_and_envoys_own_answers_count_for_no_endpoint(
    data_path: DataPath,
) -> None:
    # The fault filter runs before any endpoint is chosen: an abort is Envoy's own 503 and
    # no endpoint's outcome (consecutive5xxErrors: 1 would otherwise eject us-east1), a
    # delay only delays. A direct response and a redirect never reach an endpoint.
    run = await run_scenario(ANSWERED_BY_ENVOY, data_path)
    for label in ("aborted", "delayed", "direct", "moved", "after"):
        assert_same_sequence(run, label)
    assert run.tokens("aborted", REFERENCE) == ["<503>"] * 3
    assert run.tokens("direct", REFERENCE) == ["<418>"] * 2
    assert run.tokens("moved", REFERENCE) == ["<301>"] * 2
    assert run.tokens("after", REFERENCE) == ["east"] * 3
    # Envoy's timers have millisecond granularity: 0.3 s may end a hair early.
    delayed = run.loop("delayed", EXTPROC) + run.loop("delayed", REFERENCE)
    assert all(r.elapsed >= 0.29 for r in delayed), run.side_by_side("delayed")
