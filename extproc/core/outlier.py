"""Outlier detection's inputs and outputs: how an attempt ended, and the ejection events.

Theory of operation
-------------------
``outlier_detector.py`` mirrors Envoy's ``source/common/upstream/outlier_detection_impl.cc``
for the detectors Istio's ``outlierDetection`` can enable. This module holds what crosses its
boundary, as Envoy's ``envoy/upstream/outlier_detection.h`` does: the result of one attempt
(Envoy's ``Outlier::Result`` plus the HTTP status) going in; a host's outlier state
(``DetectorHostMonitor``) and the ejection events (``OutlierDetectionEvent``) coming out.
Rules 1-3 are here; the detector's rules 4-10 continue in ``outlier_detector.py``.

1. Each upstream attempt ends one of four ways (``AttemptKind``), which is what Envoy's HTTP
   router reports (``router.cc``, ``upstream_request.cc``): the upstream answered (the
   connection was made, ``LocalOriginConnectSuccess``, then the status); no connection
   (UF: refused, connect timeout, TLS failure, ``LocalOriginConnectFailed``); connected,
   then reset or closed before the answer (UC, UR: ``LocalOriginConnectSuccess`` then
   ``LocalOriginConnectFailed``); connected, then no answer in time (UT:
   ``LocalOriginConnectSuccess`` then ``LocalOriginTimeout`` with code 504).
2. An answer's status goes through ``outlierDetectionHttpErrorCodes`` first, as the router
   does with the cluster's ``HttpProtocolOptions.outlier_detection.error_matcher``
   (``processHttpForOutlierDetection``): without codes the status is used as is; with
   codes a listed status is an error (a listed 5xx keeps its code, any other listed status
   counts as 500) and every other status counts as 200, 5xx included.
3. Non-split mode (``putResultNoLocalExternalSplit``): a connection failure or reset counts
   as 503, a timeout as 504, an answer as its (matched) code; connection success alone
   counts nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CONNECT_FAILURE_CODE",
    "TIMEOUT_CODE",
    "AttemptKind",
    "AttemptResult",
    "HostMonitor",
    "OutlierAction",
    "OutlierEjectionType",
    "OutlierEvent",
    "http_response_code",
]

# What the router reports for a connection failure or reset (resultToHttpCode) and for a
# timeout (timeout_response_code, which Istio leaves at 504) in non-split mode.
CONNECT_FAILURE_CODE = 503
TIMEOUT_CODE = 504


class AttemptKind(enum.Enum):
    """How one upstream attempt ended, as Envoy's HTTP router reports it (rule 1)."""

    ANSWER = "answer"  # connected, and the upstream answered
    CONNECT_FAILURE = "connect_failure"  # no connection (UF)
    RESET = "reset"  # connected, then reset or closed before the answer (UC, UR)
    TIMEOUT = "timeout"  # connected, then no answer in time (UT)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one upstream attempt, in the terms of Envoy's outlier detector.

    ``status`` is the upstream ``:status`` of an ANSWER; None for an answer the caller already
    knows is not an error (the fast path sends those as counts), and for the other kinds.
    """

    kind: AttemptKind
    status: int | None = None

    @classmethod
    def answer(cls, status: int) -> AttemptResult:
        """An upstream answer with this ``:status``.

        Prebuilt for 100-599, so the ext_proc path allocates nothing per response.
        """
        result = _ANSWERS.get(status)
        return cls(AttemptKind.ANSWER, status) if result is None else result

    @classmethod
    def success(cls) -> AttemptResult:
        """An upstream answer that is not an error, whatever its status."""
        return _SUCCESS

    @classmethod
    def connect_failure(cls) -> AttemptResult:
        """No connection: refused, connect timeout, TLS handshake failure (UF)."""
        return _CONNECT_FAILURE

    @classmethod
    def reset(cls) -> AttemptResult:
        """Connected, then reset or closed before the answer (UC, UR)."""
        return _RESET

    @classmethod
    def timeout(cls) -> AttemptResult:
        """Connected, then no answer before the route or per-try timeout (UT)."""
        return _TIMEOUT

    @property
    def connected(self) -> bool:
        """Whether the connection was made (the router's ``LocalOriginConnectSuccess``)."""
        return self.kind is not AttemptKind.CONNECT_FAILURE

    def code(self, http_error_codes: frozenset[int] = frozenset()) -> int:
        """The code Envoy's non-split detector counts for this attempt (rules 2 and 3)."""
        if self.kind is AttemptKind.ANSWER:
            return http_response_code(self.status, http_error_codes)
        return TIMEOUT_CODE if self.kind is AttemptKind.TIMEOUT else CONNECT_FAILURE_CODE


_ANSWERS: dict[int, AttemptResult] = {
    status: AttemptResult(AttemptKind.ANSWER, status) for status in range(100, 600)
}
_SUCCESS = AttemptResult(AttemptKind.ANSWER)
_CONNECT_FAILURE = AttemptResult(AttemptKind.CONNECT_FAILURE)
_RESET = AttemptResult(AttemptKind.RESET)
_TIMEOUT = AttemptResult(AttemptKind.TIMEOUT)


def http_response_code(status: int | None, http_error_codes: frozenset[int]) -> int:
    """The code the router reports for an upstream answer (rule 2).

    Mirrors ``Filter::onUpstreamHeaders`` with the cluster's outlier-detection matcher
    (envoyproxy/envoy#39947): no matcher -> the status; matched -> the status if it is a 5xx,
    else 500; not matched -> 200. None (a known success) is 200.
    """
    if status is None:
        return 200
    if not http_error_codes:
        return status
    if status in http_error_codes:
        return status if 500 <= status <= 599 else 500
    return 200


class OutlierAction(enum.Enum):
    """Envoy's ``envoy.data.cluster.v3.Action``; the value is what logs and metrics write."""

    EJECT = "EJECT"
    UNEJECT = "UNEJECT"


class OutlierEjectionType(enum.Enum):
    """Envoy's ``envoy.data.cluster.v3.OutlierEjectionType`` of the three consecutive
    detectors; the value is what logs write (metrics write it in lower case)."""

    CONSECUTIVE_5XX = "CONSECUTIVE_5XX"
    CONSECUTIVE_GATEWAY_FAILURE = "CONSECUTIVE_GATEWAY_FAILURE"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "CONSECUTIVE_LOCAL_ORIGIN_FAILURE"
    # Not Envoy's: another brain of the fleet ejected the host (``core.fleet``).
    FLEET = "FLEET"


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """One ejection decision, named after Envoy's ``envoy.data.cluster.v3.OutlierDetectionEvent``.

    ``enforced`` is False for a detection that did not eject: either the
    ``max_ejection_percent`` gate refused it (``overflow``, Envoy's ``ejections_overflow``,
    so operators can see why a failing host kept its traffic), or its detector's enforcing
    is 0 (Envoy logs those with ``enforced: false`` too). An UNEJECT carries
    ``enforced=True`` (it ends an enforced ejection) and the type of the ejection it ends.
    """

    action: OutlierAction
    cluster_name: str
    upstream_url: str  # "ip:port"
    type: OutlierEjectionType
    num_ejections: int
    enforced: bool
    time_s: float
    overflow: bool = False


@dataclass(slots=True)
class HostMonitor:
    """Outlier state of one host (Envoy's ``DetectorHostMonitorImpl``); mutable on purpose."""

    consecutive_5xx: int = 0
    consecutive_gateway_failure: int = 0
    consecutive_local_origin_failure: int = 0
    ejected: bool = False
    ejection_type: OutlierEjectionType = (
        OutlierEjectionType.CONSECUTIVE_5XX
    )  # of the current or last ejection
    num_ejections: int = 0  # lifetime count, never decays
    ejection_backoff: int = 0  # Envoy's ejectTimeBackoff
    last_ejection_time: float | None = None
    last_unejection_time: float | None = None
    # The last answer that reset the consecutive counts (a fleet ejection older than it is
    # contradicted by this proxy's own evidence), and a fleet ejection's end.
    last_success_time: float | None = None
    fleet_until: float | None = None
