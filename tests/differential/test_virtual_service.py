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
