"""What the service records for a response, as Envoy's outlier detector would count it."""

from __future__ import annotations

import pytest

from extproc.core.outcome import Outcome, classify
from extproc.core.outlier import AttemptResult

REFUSED = (
    "upstream_reset_before_response_started"
    "{remote_connection_failure|delayed_connect_error:_Connection_refused}"
)
RESET = "upstream_reset_before_response_started{connection_termination}"
PROTOCOL_ERROR = "upstream_reset_before_response_started{protocol_error}"

ANSWER = AttemptResult.answer
UF = AttemptResult.connect_failure()
UC = AttemptResult.reset()
UT = AttemptResult.timeout()


def _codes(outcome: Outcome) -> tuple[int, ...]:
    """The picked host's codes as Envoy's non-split detector counts them."""
    return tuple(result.code() for result in outcome.results)


@pytest.mark.parametrize(
    ("status", "details", "flags", "attempts", "codes"),
    [
        pytest.param(200, "via_upstream", 0, 1, (200,), id="upstream-200"),
        pytest.param(404, "via_upstream", 0, 1, (404,), id="upstream-404-resets"),
        pytest.param(503, "via_upstream", 0, 1, (503,), id="upstream-503"),
        pytest.param(200, "via_upstream", 0, 2, (503, 200), id="retried-connect-failure-then-200"),
        pytest.param(503, REFUSED, 0x8020, 3, (503, 503, 503), id="refused-three-attempts"),
        pytest.param(503, REFUSED, 0x20, 1, (503,), id="refused-once"),
        pytest.param(503, RESET, 0x40, 1, (503,), id="reset-counts-as-503"),
        pytest.param(502, PROTOCOL_ERROR, 0x800000, 1, (503,), id="protocol-error-counts-as-503"),
        pytest.param(504, "response_timeout", 0x4, 1, (504,), id="timeout-counts-as-504"),
        pytest.param(503, "no_healthy_upstream", 0x2, 0, (), id="no-healthy-upstream-not-counted"),
        pytest.param(503, "cluster_not_found", 0x1000000, 0, (), id="no-cluster-not-counted"),
        pytest.param(503, "overflow", 0x80, 1, (), id="overflow-not-counted"),
        pytest.param(503, "overflow", 0x80, 2, (503,), id="only-the-overflow-not-counted"),
        pytest.param(0, "downstream_remote_disconnect", 0x4000, 1, (), id="client-went-away"),
    ],
)
def test_classify_counts_attempts_like_envoy(
    status: int, details: str, flags: int, attempts: int, codes: tuple[int, ...]
) -> None:
    assert _codes(classify(status, details, flags, attempts)) == codes


@pytest.mark.parametrize(
    ("status", "details", "flags", "attempts", "results"),
    [
        pytest.param(503, "via_upstream", 0, 1, (ANSWER(503),), id="upstream-503-is-an-answer"),
        pytest.param(503, REFUSED, 0x20, 1, (UF,), id="refused-never-connected"),
        pytest.param(503, RESET, 0x40, 1, (UC,), id="terminated-after-connecting"),
        pytest.param(503, "upstream_reset", 0x10, 1, (UC,), id="remote-reset-after-connecting"),
        pytest.param(
            502, PROTOCOL_ERROR, 0x800000, 1, (UC,), id="malformed-answer-after-connecting"
        ),
        pytest.param(504, "response_timeout", 0x4, 1, (UT,), id="timeout-after-connecting"),
        pytest.param(200, "via_upstream", 0, 3, (UF, UF, ANSWER(200)), id="retries-then-answer"),
        pytest.param(504, "response_timeout", 0x4, 2, (UF, UT), id="retry-then-timeout"),
    ],
)
def test_classify_tells_local_origin_failures_from_upstream_answers(
    status: int, details: str, flags: int, attempts: int, results: tuple[AttemptResult, ...]
) -> None:
    # Split mode needs the kind: only answers reach the 5xx and gateway counters, and only
    # attempts that connected reset the local-origin counter.
    assert classify(status, details, flags, attempts).results == results


@pytest.mark.parametrize(
    ("status", "details", "flags", "attempts", "ours", "elsewhere"),
    [
        pytest.param(200, "via_upstream", 0, 2, (UF,), ANSWER(200), id="refused-then-200"),
        pytest.param(503, "via_upstream", 0, 2, (UF,), ANSWER(503), id="refused-then-503"),
        pytest.param(200, "via_upstream", 0, 3, (UF,), ANSWER(200), id="middle-attempt-unknown"),
        pytest.param(503, REFUSED, 0x20, 3, (UF,), UF, id="refused-everywhere"),
        pytest.param(504, "response_timeout", 0x4, 2, (UF,), UT, id="refused-then-timeout"),
        pytest.param(503, "overflow", 0x80, 2, (UF,), None, id="refused-then-overflow"),
        pytest.param(200, "via_upstream", 0, 1, (), ANSWER(200), id="one-attempt-elsewhere"),
    ],
)
def test_a_retry_that_left_the_picked_host_splits_the_attempts(
    status: int,
    details: str,
    flags: int,
    attempts: int,
    ours: tuple[AttemptResult, ...],
    elsewhere: AttemptResult | None,
) -> None:
    # The override sends the first attempt to the picked host: with more than one attempt it
    # failed there (once), and the host that served the last one gets the final result.
    outcome = classify(status, details, flags, attempts, moved=True)
    assert outcome.results == ours
    assert outcome.elsewhere == elsewhere


def test_an_answer_on_the_picked_host_is_not_counted_elsewhere() -> None:
    outcome = classify(200, "via_upstream", 0, 1)
    assert outcome.results == (ANSWER(200),)
    assert outcome.elsewhere is None
