"""One table of outcome attribution cases, for both data paths.

Each case says what a host does (``Upstream``), what Envoy then reports about the final
response (the ext_proc attributes: status, ``response.code_details``, ``response.flags``,
``upstream.request_attempt_count``, whether ``upstream.address`` is another host than the
picked one), what Envoy's router logs for each attempt (``logged``: the module path's
input, the router's upstream log), and what the service must record, in order, for the
picked host (``chosen``), for the host of a middle attempt (``middle``) and for the host
that served a retry (``other``), as Envoy's outlier detector counts it.

The lua and ext_proc paths see the final response only: they record ``chosen`` and
``other`` and miss the middle attempt of three (``middle`` is what the module path, which
sees every attempt, records for it). The same table runs against the ext_proc path's
classifier (``core.outcome.classify``, plus the access log's late reset;
``tests/unit/test_attribution.py``), against the module path's attempt records
(``tests/unit/test_module_region.py``), and in a real Envoy on every data path
(``tests/e2e/test_attribution.py``). Results compare after ``normal``: the lua path sends
an answer that is no error as a success count, without its status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from extproc.core.outcome import (
    UPSTREAM_CONNECTION_FAILURE,
    UPSTREAM_CONNECTION_TERMINATION,
    UPSTREAM_OVERFLOW,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_REQUEST_TIMEOUT,
)
from extproc.core.outlier import AttemptKind, AttemptResult
from extproc.wire import LATE_UPSTREAM_RESET

#: Envoy's ``URX``: the retry limit was reached (with UF after three refused attempts).
UPSTREAM_RETRY_LIMIT_EXCEEDED = 0x8000
NO_HEALTHY_UPSTREAM = 0x2

REFUSED = (
    "upstream_reset_before_response_started"
    "{remote_connection_failure|delayed_connect_error:_Connection_refused}"
)
TERMINATED = "upstream_reset_before_response_started{connection_termination}"
PROTOCOL_ERROR = "upstream_reset_before_response_started{protocol_error}"

OK = AttemptResult.success()
UF = AttemptResult.connect_failure()
UC = AttemptResult.reset()
UT = AttemptResult.timeout()
ANSWER = AttemptResult.answer


class Role(enum.Enum):
    """Which of a case's hosts an attempt ran on."""

    CHOSEN = "chosen"  # the picked host (us-east1, priority 0)
    MIDDLE = "middle"  # a second failover host (us-east1/zone-b, priority 1 of 3)
    OTHER = "other"  # the failover host the last retry reached (us-west)


@dataclass(frozen=True, slots=True)
class Logged:
    """One attempt as Envoy's router logs it (its upstream log): host, status, flags."""

    on: Role
    status: int  # 0: no response
    flags: int = 0


class Upstream(enum.Enum):
    """What a stand-in host does with a request (``tests/e2e/test_attribution.py``)."""

    ANSWER = "answer"  # answers ``status``
    REFUSE = "refuse"  # nothing listens: the connection is refused (UF)
    CLOSE = "close"  # reads the request and closes the connection (UC)
    GARBAGE = "garbage"  # answers a malformed status line (UPE, 502 to the client)
    LATE_RESET = "late_reset"  # sends a 200 head and part of the body, then closes
    OVERFLOW = "overflow"  # its cluster's circuit breaker admits no request (UO)


@dataclass(frozen=True, slots=True)
class Case:
    """One attribution case: what the hosts do, what Envoy reports, what is recorded."""

    id: str
    chosen_does: Upstream
    #: What Envoy reports about the final response (the ext_proc attributes).
    status: int
    details: str
    flags: int
    attempts: int
    moved: bool
    #: What the service records for the picked host and for the host of the last attempt
    #: when that is another one, oldest first.
    chosen: tuple[AttemptResult, ...]
    other: AttemptResult | None = None
    #: The picked host's ``status`` for ``Upstream.ANSWER``.
    answer: int = 200
    #: The second host (us-west, priority 1), or None for a service with one host.
    other_does: Upstream | None = None
    other_answer: int = 200
    #: outlierDetectionHttpErrorCodes of the service.
    error_codes: tuple[int, ...] = ()
    #: The response code details of the access-log entry of a reset after the response
    #: started ("" for none): the classifier saw the head, the access log tells the reset.
    reset_details: str = ""
    #: Why the e2e test cannot make Envoy do it, or "" when it can.
    not_in_envoy: str = ""
    #: Each attempt as Envoy's router logs it, in order (the module path's input).
    logged: tuple[Logged, ...] = ()
    #: A host between the picked one and ``other`` (us-east1/zone-b: the second attempt
    #: of three), and what a path that sees every attempt records for it.
    middle_does: Upstream | None = None
    middle: tuple[AttemptResult, ...] = ()

    @property
    def late_reset(self) -> bool:
        """The upstream reset after the response started (the access log reports it)."""
        return bool(self.reset_details)


CASES = (
    Case(
        "upstream-200",
        Upstream.ANSWER,
        200,
        "via_upstream",
        0,
        1,
        False,
        (ANSWER(200),),
        logged=(Logged(Role.CHOSEN, 200),),
    ),
    Case(
        "upstream-503",
        Upstream.ANSWER,
        503,
        "via_upstream",
        0,
        1,
        False,
        (ANSWER(503),),
        answer=503,
        logged=(Logged(Role.CHOSEN, 503),),
    ),
    Case(
        "upstream-500",
        Upstream.ANSWER,
        500,
        "via_upstream",
        0,
        1,
        False,
        (ANSWER(500),),
        answer=500,
        logged=(Logged(Role.CHOSEN, 500),),
    ),
    Case(
        "upstream-404-is-no-error",
        Upstream.ANSWER,
        404,
        "via_upstream",
        0,
        1,
        False,
        (ANSWER(404),),
        answer=404,
        logged=(Logged(Role.CHOSEN, 404),),
    ),
    Case(
        "upstream-404-listed-in-error-codes",
        Upstream.ANSWER,
        404,
        "via_upstream",
        0,
        1,
        False,
        (ANSWER(404),),
        answer=404,
        error_codes=(404,),
        logged=(Logged(Role.CHOSEN, 404),),
    ),
    Case(
        "refused-on-the-only-host-three-attempts",
        Upstream.REFUSE,
        503,
        REFUSED,
        UPSTREAM_CONNECTION_FAILURE | UPSTREAM_RETRY_LIMIT_EXCEEDED,
        3,
        False,
        (UF, UF, UF),
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_FAILURE),) * 3,
    ),
    Case(
        "refused-then-another-host-answers-200",
        Upstream.REFUSE,
        200,
        "via_upstream",
        0,
        2,
        True,
        (UF,),
        ANSWER(200),
        other_does=Upstream.ANSWER,
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_FAILURE), Logged(Role.OTHER, 200)),
    ),
    Case(
        "refused-then-another-host-answers-503",
        Upstream.REFUSE,
        503,
        "via_upstream",
        0,
        2,
        True,
        (UF,),
        ANSWER(503),
        other_does=Upstream.ANSWER,
        other_answer=503,
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_FAILURE), Logged(Role.OTHER, 503)),
    ),
    Case(
        "refused-then-another-host-closes",
        Upstream.REFUSE,
        503,
        TERMINATED,
        UPSTREAM_CONNECTION_TERMINATION,
        2,
        True,
        (UF,),
        UC,
        other_does=Upstream.CLOSE,
        logged=(
            Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_FAILURE),
            Logged(Role.OTHER, 0, UPSTREAM_CONNECTION_TERMINATION),
        ),
    ),
    Case(
        "closed-after-connecting-is-not-retried",
        Upstream.CLOSE,
        503,
        TERMINATED,
        UPSTREAM_CONNECTION_TERMINATION,
        1,
        False,
        (UC,),
        other_does=Upstream.ANSWER,
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_TERMINATION),),
    ),
    Case(
        "malformed-answer-counts-as-a-reset",
        Upstream.GARBAGE,
        502,
        PROTOCOL_ERROR,
        UPSTREAM_PROTOCOL_ERROR,
        1,
        False,
        (UC,),
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_PROTOCOL_ERROR),),
    ),
    Case(
        "reset-after-the-response-started",
        Upstream.LATE_RESET,
        200,
        "via_upstream",
        0,
        1,
        False,
        # The head's answer (response headers), then Envoy's LocalOriginConnectFailed for
        # the reset (the access log).
        (ANSWER(200), UF),
        reset_details=LATE_UPSTREAM_RESET + "{connection_termination}",
        # The attempt's log has the head's status and the reset's flag (the body cut short
        # is a protocol error to the attempt: UPE).
        logged=(Logged(Role.CHOSEN, 200, UPSTREAM_PROTOCOL_ERROR),),
    ),
    Case(
        "circuit-breaker-overflow-is-not-counted",
        Upstream.OVERFLOW,
        503,
        "upstream_reset_before_response_started{overflow}",
        UPSTREAM_OVERFLOW,
        1,
        False,
        (),
        # No upstream request is made, so the router logs no attempt.
        logged=(),
    ),
    Case(
        "timeout-counts-as-504",
        Upstream.ANSWER,
        504,
        "response_timeout",
        UPSTREAM_REQUEST_TIMEOUT,
        1,
        False,
        (UT,),
        not_in_envoy="the rendered routes have no timeout (Istio sets none)",
        logged=(Logged(Role.CHOSEN, 0, UPSTREAM_REQUEST_TIMEOUT),),
    ),
    Case(
        "one-attempt-on-another-host",
        Upstream.ANSWER,
        200,
        "via_upstream",
        0,
        1,
        True,
        (),
        ANSWER(200),
        not_in_envoy="only while an EDS push is in flight (Envoy did not know the pick yet)",
        logged=(Logged(Role.OTHER, 200),),
    ),
    Case(
        "no-healthy-upstream-is-not-counted",
        Upstream.ANSWER,
        503,
        "no_healthy_upstream",
        NO_HEALTHY_UPSTREAM,
        0,
        False,
        (),
        not_in_envoy="the service answers it before Envoy routes (nothing to pick)",
    ),
    Case(
        # Three attempts, one per priority (previous_priorities): the picked host and the
        # middle one refuse, the third answers. The module's attempt log records all three;
        # the lua and ext_proc paths see the final response only and miss the middle one.
        "refused-twice-then-a-third-host-answers",
        Upstream.REFUSE,
        200,
        "via_upstream",
        0,
        3,
        True,
        (UF,),
        ANSWER(200),
        other_does=Upstream.ANSWER,
        middle_does=Upstream.REFUSE,
        middle=(UF,),
        logged=(
            Logged(Role.CHOSEN, 0, UPSTREAM_CONNECTION_FAILURE),
            Logged(Role.MIDDLE, 0, UPSTREAM_CONNECTION_FAILURE),
            Logged(Role.OTHER, 200),
        ),
    ),
)


def normal(result: AttemptResult, error_codes: frozenset[int]) -> AttemptResult:
    """``result`` as both data paths record it: an answer that is no error is a success."""
    if result.kind is AttemptKind.ANSWER and not 500 <= result.code(error_codes) <= 599:
        return OK
    return result
