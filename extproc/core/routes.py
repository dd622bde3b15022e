"""A service's HTTP routes, compiled from a VirtualService: matches, timeout and retries.

Values only, already in Envoy's terms as pilot translates them (``route.go``
``TranslateRouteMatch``, ``setTimeout``; ``retry/retry.go`` ``ConvertPolicy``): ``render.routes``
writes them out, and a service without routes gets Istio's default route.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_RETRY_ON",
    "HeaderMatch",
    "HttpRoute",
    "MatchKind",
    "RetryPolicy",
    "RouteMatch",
    "StringMatch",
]

#: Istio's default retryOn (``retry.go`` defaultRetryOn; >= 1.24 no 503 in it).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


class MatchKind(enum.Enum):
    """How a string is matched; PRESENT is Istio's ``regex: "*"`` (canBeConvertedToPresentMatch)."""

    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: MatchKind
    value: str = ""


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition; ``invert`` is a ``withoutHeaders`` entry."""

    name: str
    match: StringMatch
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One ``match[]`` entry (or none: everything under ``/``)."""

    path: StringMatch = StringMatch(MatchKind.PREFIX, "/")
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()  # sorted by name as pilot sorts them, :method last
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    # Set by pilot on every route it translates (``out.CaseSensitive``), not on the default.
    explicit_case: bool = True

    @property
    def catch_all(self) -> bool:
        """``IsCatchAllRoute``: prefix ``/`` (or regex ``.*``) and no other condition."""
        path = self.path
        everything = (path.kind is MatchKind.PREFIX and path.value == "/") or (
            path.kind is MatchKind.REGEX and path.value == ".*"
        )
        return everything and not self.headers and not self.query_params


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry policy (``ConvertPolicy``); None on a route is no retries at all."""

    num_retries: int = 2
    retry_on: str = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = ()
    per_try_timeout_s: float | None = None
    previous_hosts: bool = True
    # retryRemoteLocalities: None unset, else as written (True: Istio's previous_priorities).
    remote_localities: bool | None = None
    backoff_s: float | None = None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One Envoy route of a VirtualService ``http[]`` entry (one per ``match[]`` entry)."""

    name: str
    match: RouteMatch = field(default_factory=RouteMatch)
    timeout_s: float = 0.0  # 0: no timeout, Istio's default
    retries: RetryPolicy | None = field(default_factory=RetryPolicy)
