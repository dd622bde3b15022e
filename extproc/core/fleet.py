"""Fleet-shared ejections: what one brain tells the others of its fleet, and how it is read.

One brain's ejection (a host of a cluster, why, until when) is news for every other brain of
the same fleet, which ejects the host too until that end (issue 13). This module is the
message and its rules only; the store that carries it (Redis) is an adapter.

Rules:

1. A message names its fleet, its sender, the cluster, the host (``ip:port``), the sender's
   ejection type and count, the wall-clock time the sender ejected and the wall-clock end.
2. A message that is not exactly that (a bad field, an unknown version, over
   ``MAX_MESSAGE_BYTES``, another fleet, our own) is refused with a reason, never applied.
3. Wall clocks differ between machines. The end is read on the receiver's clock as it is
   written; an end already past (or not after the start) is ignored, and no fleet ejection
   lasts longer than the receiver's own longest ejection (``max_ejection_time``), so a skewed
   or hostile clock cannot hold a host out for long.
4. The receiver's own clean answer from the host contradicts the news only when it came
   more than ``CONTRADICTION_MARGIN_S`` after the sender's ejection: the lua and module
   paths report successes in batches (every 0.1 s), so an answer from just before the
   ejection is often recorded just after it, and wall clocks differ by a little.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
from dataclasses import dataclass

from extproc.core.outlier import OutlierEjectionType

__all__ = [
    "CONTRADICTION_MARGIN_S",
    "MAX_MESSAGE_BYTES",
    "FleetEjection",
    "FleetMessageError",
    "contradicted_after",
    "decode",
    "encode",
    "remaining_s",
]

#: Version of the message layout; a message of another version is refused.
VERSION = 1
#: Longer messages are refused before they are parsed.
MAX_MESSAGE_BYTES = 1024
#: How much later than the sender's ejection the receiver's own clean answer must come to
#: contradict it (rule 4).
CONTRADICTION_MARGIN_S = 0.5
_MAX_NAME = 253


class FleetMessageError(ValueError):
    """A fleet message that must not be applied, and why (for the count and the log)."""


@dataclass(frozen=True, slots=True)
class FleetEjection:
    """One brain's ejection, as the fleet hears of it."""

    fleet: str
    proxy: str  # the sender's proxy id
    cluster: str
    host: str  # ip:port, IPv6 in brackets
    kind: OutlierEjectionType
    num_ejections: int
    ejected_at: float  # the sender's wall clock, seconds since the epoch
    until: float  # the sender's wall clock: the ejection's end


def encode(ejection: FleetEjection) -> bytes:
    """The message's bytes (compact JSON, keys sorted)."""
    data = dataclasses.asdict(ejection) | {"v": VERSION, "kind": ejection.kind.value}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes, *, fleet: str, proxy: str) -> FleetEjection:
    """The ejection a message announces to brain ``proxy`` of ``fleet``.

    Raises:
        FleetMessageError: a malformed, foreign or own message (rule 2).
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise FleetMessageError(f"{len(raw)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetMessageError("not JSON") from exc
    if not isinstance(data, dict):
        raise FleetMessageError("not an object")
    if data.get("v") != VERSION:
        raise FleetMessageError(f"version {data.get('v')!r}, not {VERSION}")
    expected = {f.name for f in dataclasses.fields(FleetEjection)} | {"v"}
    if set(data) != expected:
        raise FleetMessageError(f"fields {sorted(set(data) ^ expected)} wrong")
    ejection = FleetEjection(
        fleet=_name(data, "fleet"),
        proxy=_name(data, "proxy"),
        cluster=_name(data, "cluster"),
        host=_host(data),
        kind=_kind(data),
        num_ejections=_count(data),
        ejected_at=_time(data, "ejected_at"),
        until=_time(data, "until"),
    )
    if ejection.fleet != fleet:
        raise FleetMessageError(f"fleet {ejection.fleet!r}, not ours")
    if ejection.proxy == proxy:
        raise FleetMessageError("our own")
    return ejection


def remaining_s(ejection: FleetEjection, now_wall: float, longest_s: float) -> float | None:
    """How long the receiver keeps the host out from now (rule 3); None to ignore it."""
    if ejection.until <= ejection.ejected_at or ejection.until <= now_wall:
        return None
    return min(ejection.until - now_wall, longest_s)


def contradicted_after(ejection: FleetEjection, now: float, now_wall: float) -> float:
    """The time on the receiver's monotonic clock after which its own clean answer from the
    host contradicts the news (rule 4)."""
    return now - (now_wall - ejection.ejected_at) + CONTRADICTION_MARGIN_S


def _name(data: dict[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME or not value.isprintable():
        raise FleetMessageError(f"{key} is not a name")
    return value


def _host(data: dict[str, object]) -> str:
    value = data["host"]
    if not isinstance(value, str):
        raise FleetMessageError("host is not ip:port")
    ip, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip)
    except ValueError as exc:
        raise FleetMessageError("host is not ip:port") from exc
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetMessageError("host is not ip:port")
    return value


def _kind(data: dict[str, object]) -> OutlierEjectionType:
    try:
        kind = OutlierEjectionType(data["kind"])
    except ValueError as exc:
        raise FleetMessageError("unknown ejection type") from exc
    if kind is OutlierEjectionType.FLEET:
        # Only a brain's own detections are news: a fleet ejection is never passed on.
        raise FleetMessageError("a fleet ejection is not announced again")
    return kind


def _count(data: dict[str, object]) -> int:
    value = data["num_ejections"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise FleetMessageError("num_ejections is not a count")
    return value


def _time(data: dict[str, object], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FleetMessageError(f"{key} is not a time")
    return float(value)
