"""Outcome attribution on the ext_proc path: a final response -> the results of each attempt.

What Envoy tells the service about a response is classified as Envoy's outlier detector
would count it.

Envoy reports one result per upstream attempt (source/common/router/router.cc and
upstream_request.cc; the detector's side is outlier_detection_impl.cc ``putResult``):

- an upstream response: the connection was made (``LocalOriginConnectSuccess``), then its
  status (``putHttpResponseCode``, through ``outlierDetectionHttpErrorCodes`` when set);
- a connect failure, connect timeout or TLS failure (UF): ``LocalOriginConnectFailed``
  without a connection;
- a reset, connection termination or malformed answer after connecting (UR, UC, UPE):
  ``LocalOriginConnectSuccess`` then ``LocalOriginConnectFailed`` (``onUpstreamReset``
  counts every reset reason but an overflow; a protocol error is answered 502 to the client
  and counted as 503);
- an upstream request timeout (UT): ``LocalOriginConnectSuccess`` then ``LocalOriginTimeout``;
- circuit-breaker overflow, "no healthy upstream", no route/cluster: not reported at all.

In non-split mode the detector counts the failures as 503 (UF, UR, UC) and 504 (UT); in
split mode they feed the local-origin counter instead (``core.outlier``, rules 3 and 4).

The ext_proc filter gives us the final response only, with ``response.code_details``,
``response.flags``, ``upstream.request_attempt_count`` and ``upstream.address`` (the host of
the last attempt). Envoy's retry policy only retries local-origin failures (connect-failure,
refused-stream, reset), so every attempt before the last was such a failure. Which kind is
not reported; we count them as connect failures (a refused or dead host, what retries mostly
meet), then the final result. Where they ran:

- The last attempt ran on the host we picked: every attempt did (a retry left it only when
  no other host was eligible, as with one host, or every host in panic).
- It ran on another host: Envoy's retry left ours (``previous_hosts``, ``previous_priorities``).
  The first attempt was ours (the Override Host policy sends it there), so ours gets one
  failure and the other host the final result. The middle attempt of three ran on a host
  Envoy does not name; it is not counted (the lua path has the same blind spot).

The lua path applies the same rules in ``render/bridge.lua`` (``envoy_on_response``); one
table of cases, ``tests/attribution.py``, runs against this classifier and, in a real
Envoy, against both data paths.
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
UPSTREAM_PROTOCOL_ERROR = 0x800000  # UPE

#: The flags of an attempt that connected and then lost its answer (a local-origin failure).
RESET_AFTER_CONNECT = (
    UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_TERMINATION | UPSTREAM_PROTOCOL_ERROR
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The results to record for one request, in the order the attempts happened.

    ``results`` belong to the host the service picked. ``elsewhere`` is the last attempt's
    result when it ran on another host (``classify``'s ``moved``), else None.
    """

    results: tuple[AttemptResult, ...]
    elsewhere: AttemptResult | None = None


_EARLIER_FAILURE = (AttemptResult.connect_failure(),)
#: The common case, one attempt answered, prebuilt: nothing is allocated per response.
_ONE_ANSWER = {status: Outcome((AttemptResult.answer(status),)) for status in range(100, 600)}


def classify(
    status: int, code_details: str, flags: int, attempt_count: int, *, moved: bool = False
) -> Outcome:
    """Turn a final response into the per-attempt results Envoy's detector would see.

    Args:
        status: the ``:status`` of the response the client gets.
        code_details: ``response.code_details``; ``via_upstream`` for an upstream answer.
        flags: ``response.flags`` bitmask.
        attempt_count: ``upstream.request_attempt_count`` (0 when no upstream was tried).
        moved: the last attempt ran on another host than the picked one
            (``upstream.address``).

    Returns:
        The results to record, oldest first; empty when nothing is counted.
    """
    if attempt_count == 1 and not moved and code_details == "via_upstream":
        return _ONE_ANSWER.get(status) or Outcome((AttemptResult.answer(status),))
    final = _final_result(status, code_details, flags, attempt_count)
    earlier = _EARLIER_FAILURE * (attempt_count - 1) if attempt_count > 1 else ()
    if moved:
        # 1. The first attempt went to the picked host, so with more than one it failed.
        # 2. A single attempt elsewhere: Envoy did not know the host yet (an EDS push in
        #    flight) and its own load balancer picked; ours had no attempt.
        return Outcome(earlier[:1], final)
    return Outcome(earlier if final is None else (*earlier, final))


def _final_result(
    status: int, code_details: str, flags: int, attempt_count: int
) -> AttemptResult | None:
    """What the last attempt counts as, or None when Envoy's detector counts nothing."""
    if code_details == "via_upstream":
        return AttemptResult.answer(status)
    if attempt_count <= 0 or flags & UPSTREAM_OVERFLOW:
        return None
    if flags & UPSTREAM_REQUEST_TIMEOUT:
        return AttemptResult.timeout()
    if flags & UPSTREAM_CONNECTION_FAILURE:
        return AttemptResult.connect_failure()
    if flags & RESET_AFTER_CONNECT:
        return AttemptResult.reset()
    return None


#: The flags of an attempt reset after its response head (``streamResetReasonToResponseFlag``
#: in source/common/router/router.cc); the router reports that reset to the detector as
#: ``LocalOriginConnectFailed`` (``onUpstreamReset``), after the head's status.
_RESET_AFTER_HEAD = AttemptResult.connect_failure()


def attempt_results(status: int, flags: int) -> tuple[AttemptResult, ...]:
    """What Envoy's router reported for one attempt to its host's detector, in order.

    The router's upstream log gives each attempt's own status and response flags (the
    module's attempt log, and the upstream log of the clusters Envoy balances alone), so
    each is read alone, with the rules for one attempt (``classify``): an answer counts its
    status (``onUpstreamHeaders``); no answer counts as its flags say (a timeout, a connect
    failure, a reset after connecting) or not at all (a client that went away, an
    overflow). One case more: an answer whose attempt was then reset (a reset flag) adds the
    router's ``LocalOriginConnectFailed`` for that reset, except an overflow, which the
    router does not report.
    """
    if status == 0:
        return classify(0, "", flags, 1).results
    answer = classify(status, "via_upstream", 0, 1).results
    if flags & RESET_AFTER_CONNECT and not flags & UPSTREAM_OVERFLOW:
        return (*answer, _RESET_AFTER_HEAD)
    return answer
