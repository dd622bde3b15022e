"""Classify what Envoy tells the service about a response, as Envoy's outlier detector would.

Envoy reports one result per upstream attempt (source/common/router/router.cc, and
outlier_detection_impl.cc ``putResultNoLocalExternalSplit``):

- an upstream response: its status code (500-599 count as errors, anything else resets);
- a connect failure, connect timeout, TLS failure, reset or connection termination
  (``LocalOriginConnectFailed``): counted as a 503;
- an upstream request timeout (``LocalOriginTimeout``): counted as a 504;
- circuit-breaker overflow, "no healthy upstream", no route/cluster: not reported at all.

The ext_proc filter gives us the final response only, with ``response.code_details``,
``response.flags`` and ``upstream.request_attempt_count``. Our cluster pins every attempt of
a request to the host we picked (ORIGINAL_DST), and Envoy's retry policy only retries
local-origin failures (connect-failure, refused-stream, reset), so every attempt before the
last was such a failure of that same host: each counts as a 503, then the final result.
"""

from __future__ import annotations

from dataclasses import dataclass

# Envoy's ResponseFlag bits as the ``response.flags`` attribute carries them
# (envoy/stream_info/stream_info.h CoreResponseFlag order).
UPSTREAM_REQUEST_TIMEOUT = 0x4  # UT
UPSTREAM_REMOTE_RESET = 0x10  # UR
UPSTREAM_CONNECTION_FAILURE = 0x20  # UF
UPSTREAM_CONNECTION_TERMINATION = 0x40  # UC
UPSTREAM_OVERFLOW = 0x80  # UO

_LOCAL_ORIGIN_FAILURE = (
    UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_FAILURE | UPSTREAM_CONNECTION_TERMINATION
)

CONNECT_FAILURE_CODE = 503
TIMEOUT_CODE = 504


@dataclass(frozen=True, slots=True)
class Outcome:
    """The results to record for one request, in the order the attempts happened."""

    codes: tuple[int, ...]


def classify(status: int, code_details: str, flags: int, attempt_count: int) -> Outcome:
    """Turn a final response into the per-attempt results Envoy's detector would see.

    Args:
        status: the ``:status`` of the response the client gets.
        code_details: ``response.code_details``; ``via_upstream`` for an upstream answer.
        flags: ``response.flags`` bitmask.
        attempt_count: ``upstream.request_attempt_count`` (0 when no upstream was tried).

    Returns:
        The codes to record, oldest first; empty when nothing is counted.
    """
    earlier = (CONNECT_FAILURE_CODE,) * max(0, attempt_count - 1)
    if code_details == "via_upstream":
        return Outcome((*earlier, status))
    if attempt_count <= 0 or flags & UPSTREAM_OVERFLOW:
        return Outcome(())
    if flags & UPSTREAM_REQUEST_TIMEOUT:
        return Outcome((*earlier, TIMEOUT_CODE))
    if flags & _LOCAL_ORIGIN_FAILURE:
        return Outcome((*earlier, CONNECT_FAILURE_CODE))
    return Outcome(earlier)
