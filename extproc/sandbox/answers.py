"""What a stand-in answers in each mode: the ``Mode`` enum and its HTTP answers, rendered once.

The demo, the e2e tests and the benchmark need upstreams that behave like a real service going
bad and coming back, in each of the ways Envoy's outlier detection tells apart:

- ``Mode.HEALTHY``: ``200 healthy: <name>``.
- ``Mode.FAIL_503``: ``503 unhealthy: <name>`` (gateway errors, ``consecutive_5xx``).
- ``Mode.FAIL_500``: ``500 unhealthy: <name>`` (a 5xx that is no gateway error).
- ``Mode.REFUSE``: nothing listens on the port, and open connections are reset (connect failures,
  ``consecutive_local_origin_failure``); leaving REFUSE listens on the SAME port again, because
  Envoy's endpoint (from DNS) names that port (``stand_in.py``).
- ``Mode.HANG``: connections are accepted and requests read, but never answered (timeouts).
- ``Mode.RESET``: the status line, the headers and half the body of the healthy answer, then
  RST a moment later (a server that crashes mid-response; ``http_connection.py``).

Every answer is bytes built once, per stand-in, so that a request costs a header scan, one dict
increment and a write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The four wire variants of one answer, indexed by (is HEAD) * 2 + (close after).
KEEP_ALIVE, CLOSE, HEAD_KEEP_ALIVE, HEAD_CLOSE = range(4)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Mode(enum.Enum):
    """How a ``StandIn`` treats the next connection or request."""

    HEALTHY = "healthy"
    FAIL_503 = "fail_503"
    FAIL_500 = "fail_500"
    REFUSE = "refuse"
    HANG = "hang"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Reply:
    """One status, pre-rendered in its four wire forms."""

    status: int
    wire: tuple[bytes, bytes, bytes, bytes]
    log_entry: tuple[int]


@dataclass(frozen=True, slots=True)
class Answers:
    """Every answer of one stand-in: by mode, the 400 for framing errors, RESET's partial one."""

    by_mode: dict[Mode, Reply]
    bad_request: Reply
    partial: bytes


def render_reply(status: int, reason: str, body: bytes, name: str) -> Reply:
    """Render the status line, headers and body of one answer, once."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-served-by: {name}\r\n"
    ).encode("ascii")
    keep_alive = head + b"\r\n"
    close = head + b"connection: close\r\n\r\n"
    return Reply(
        status=status,
        wire=(keep_alive + body, close + body, keep_alive, close),
        log_entry=(status,),
    )


def render_answers(name: str) -> Answers:
    """Render every answer of the stand-in ``name`` (printable ASCII, checked by the caller)."""
    by_mode = {
        Mode.HEALTHY: render_reply(200, "OK", f"healthy: {name}\n".encode("ascii"), name),
        Mode.FAIL_503: render_reply(
            503, "Service Unavailable", f"unhealthy: {name}\n".encode("ascii"), name
        ),
        Mode.FAIL_500: render_reply(
            500, "Internal Server Error", f"unhealthy: {name}\n".encode("ascii"), name
        ),
    }
    # RESET's partial answer: the healthy head (keep-alive form) and half its body.
    healthy = by_mode[Mode.HEALTHY].wire[KEEP_ALIVE]
    body_size = len(f"healthy: {name}\n")
    return Answers(
        by_mode=by_mode,
        bad_request=render_reply(400, "Bad Request", b"bad request\n", name),
        partial=healthy[: len(healthy) - body_size + body_size // 2],
    )
