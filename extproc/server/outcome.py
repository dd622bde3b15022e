"""Classify what Envoy tells the service about a response, as Envoy's outlier detector would.

Envoy reports one result per upstream attempt (source/common/router/router.cc and
upstream_request.cc; the detector's side is outlier_detection_impl.cc ``putResult``):

- an upstream response: the connection was made (``LocalOriginConnectSuccess``), then its
  status (``putHttpResponseCode``, through ``outlierDetectionHttpErrorCodes`` when set);
- a connect failure, connect timeout or TLS failure (UF): ``LocalOriginConnectFailed``
  without a connection;
- a reset or connection termination after connecting (UR, UC): ``LocalOriginConnectSuccess``
  then ``LocalOriginConnectFailed``;
- an upstream request timeout (UT): ``LocalOriginConnectSuccess`` then ``LocalOriginTimeout``;
- circuit-breaker overflow, "no healthy upstream", no route/cluster: not reported at all.

In non-split mode the detector counts the failures as 503 (UF, UR, UC) and 504 (UT); in
split mode they feed the local-origin counter instead (``core.outlier``, rules 3 and 4).

The ext_proc filter gives us the final response only, with ``response.code_details``,
``response.flags`` and ``upstream.request_attempt_count``. Our cluster pins every attempt of
a request to the host we picked (ORIGINAL_DST), and Envoy's retry policy only retries
local-origin failures (connect-failure, refused-stream, reset), so every attempt before the
last was such a failure of that same host. Which kind is not reported; we count them as
connect failures (a refused or dead host, what retries mostly meet), then the final result.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.core.outlier import AttemptResult

# Envoy's ResponseFlag bits as the ``response.flags`` attribute carries them
# (envoy/stream_info/stream_info.h CoreResponseFlag order).
UPSTREAM_REQUEST_TIMEOUT = 0x4  # UT
UPSTREAM_REMOTE_RESET = 0x10  # UR
UPSTREAM_CONNECTION_FAILURE = 0x20  # UF
UPSTREAM_CONNECTION_TERMINATION = 0x40  # UC
UPSTREAM_OVERFLOW = 0x80  # UO

_RESET_AFTER_CONNECT = UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_TERMINATION


@dataclass(frozen=True, slots=True)
class Outcome:
    """The results to record for one request, in the order the attempts happened."""

    results: tuple[AttemptResult, ...]

    @property
    def codes(self) -> tuple[int, ...]:
        """The codes Envoy's non-split detector counts, without error-code matching."""
        return tuple(result.code() for result in self.results)


def classify(status: int, code_details: str, flags: int, attempt_count: int) -> Outcome:
    """Turn a final response into the per-attempt results Envoy's detector would see.

    Args:
        status: the ``:status`` of the response the client gets.
        code_details: ``response.code_details``; ``via_upstream`` for an upstream answer.
        flags: ``response.flags`` bitmask.
        attempt_count: ``upstream.request_attempt_count`` (0 when no upstream was tried).

    Returns:
        The results to record, oldest first; empty when nothing is counted.
    """
    earlier = (AttemptResult.connect_failure(),) * max(0, attempt_count - 1)
    if code_details == "via_upstream":
        return Outcome((*earlier, AttemptResult.answer(status)))
    if attempt_count <= 0 or flags & UPSTREAM_OVERFLOW:
        return Outcome(())
    if flags & UPSTREAM_REQUEST_TIMEOUT:
        return Outcome((*earlier, AttemptResult.timeout()))
    if flags & UPSTREAM_CONNECTION_FAILURE:
        return Outcome((*earlier, AttemptResult.connect_failure()))
    if flags & _RESET_AFTER_CONNECT:
        return Outcome((*earlier, AttemptResult.reset()))
    return Outcome(earlier)
