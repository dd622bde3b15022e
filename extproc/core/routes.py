"""A service's HTTP routes, compiled from a VirtualService: matches, timeout and retries.

Values only, already in Envoy's terms as pilot translates them (``route.go``
``TranslateRouteMatch``, ``setTimeout``, ``processWeightedDestination``; ``retry/retry.go``
``ConvertPolicy``): ``render.routes``
writes them out, and a service without routes gets Istio's default route.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_RETRY_ON",
    "ClusterWeight",
    "DirectResponse",
    "Fault",
    "HeaderMatch",
    "HeaderOperations",
    "HeaderValue",
    "HttpRoute",
    "MatchKind",
    "Redirect",
    "RetryPolicy",
    "Rewrite",
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


#: The one gateway a sidecar is: pilot's ``constants.IstioMeshGateway``.
MESH_GATEWAY = "mesh"


@dataclass(frozen=True, slots=True)
class SourceMatch:
    """A match entry's conditions on the client proxy itself, which pilot resolves when it
    builds the proxy's routes (``sourceMatchHTTP``), not per request."""

    labels: tuple[tuple[str, str], ...] = ()  # sourceLabels
    gateways: tuple[str, ...] = ()
    namespace: str = ""  # sourceNamespace

    def applies_to(self, proxy_labels: Mapping[str, str], proxy_namespace: str = "") -> bool:
        """``sourceMatchHTTP`` for a sidecar: ``gateways`` naming ``mesh`` decide alone;
        else every source label must be the proxy's, and the namespace its own."""
        if self.gateways:
            return MESH_GATEWAY in self.gateways
        if any(proxy_labels.get(name) != value for name, value in self.labels):
            return False
        return not self.namespace or self.namespace == proxy_namespace


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
class HeaderValue:
    """A header to add: ``append`` adds another value (``add``), else it overwrites (``set``)."""

    name: str
    value: str
    append: bool = False


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """``TranslateHeadersOperations``: set then add (each sorted by name), removes in order."""

    request_add: tuple[HeaderValue, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[HeaderValue, ...] = ()
    response_remove: tuple[str, ...] = ()

    def __add__(self, other: HeaderOperations) -> HeaderOperations:
        """The route's operations, then a destination's (``processDestination`` appends)."""
        return HeaderOperations(
            self.request_add + other.request_add,
            self.request_remove + other.request_remove,
            self.response_add + other.response_add,
            self.response_remove + other.response_remove,
        )


@dataclass(frozen=True, slots=True)
class Rewrite:
    """``rewrite``: the path (a prefix, or an RE2 pattern and substitution)."""

    prefix: str = ""
    regex: tuple[str, str] | None = None  # (pattern, substitution)


@dataclass(frozen=True, slots=True)
class Redirect:
    """``ApplyRedirect``: Envoy's redirect action; ``port`` 0 keeps the request's default."""

    path: str = ""
    prefix_rewrite: str = ""
    host: str = ""
    scheme: str = ""
    port: int = 0
    code: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """``ApplyDirectResponse``: a status and an optional inline body."""

    status: int
    body: str | bytes | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """``TranslateFault``: a fixed delay and an abort, each with a share in millionths."""

    delay_s: float | None = None
    delay_per_million: int = 0
    delay_per_hundred: int | None = None  # the deprecated integer ``percent``
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_per_million: int | None = None  # unset: every request


class HashOn(enum.Enum):
    """What a consistent-hash key is read from (``ConsistentHashToHashPolicy``)."""

    HEADER = "header"  # httpHeaderName
    COOKIE = "cookie"  # httpCookie (Envoy sets it when it has a ttl)
    SOURCE_IP = "source_ip"  # useSourceIp
    QUERY_PARAMETER = "query_parameter"  # httpQueryParameterName
    # A consistentHash without a key: no hash policy, yet a hashed destination for retries.
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class HashKey:
    """A route's hash policy: the DestinationRule's ``consistentHash`` key for its cluster."""

    on: HashOn
    name: str = ""  # the header, cookie or query parameter
    cookie_path: str = ""
    cookie_ttl_s: float | None = None
    cookie_attributes: tuple[tuple[str, str], ...] = ()
    source_ip: bool = True  # useSourceIp as written (false: a policy Envoy hashes nothing on)


@dataclass(frozen=True, slots=True)
class ClusterWeight:
    """One destination of a weighted route (``processWeightedDestination``): its cluster, its
    weight (> 0: pilot drops a destination of weight 0), and its own ``headers`` and their
    authority, which Envoy applies to the requests it sends there."""

    cluster: str
    weight: int
    headers: HeaderOperations = HeaderOperations()
    host_rewrite: str = ""
    hash_key: HashKey | None = None  # the destination's consistentHash key


@dataclass(frozen=True, slots=True)
class Cors:
    """``TranslateCORSPolicy``: Envoy's CORS policy for the route, always enabled."""

    origins: tuple[StringMatch, ...] = ()
    methods: str = ""  # comma-joined, as pilot joins them
    headers: str = ""
    expose_headers: str = ""
    max_age: str = ""  # whole seconds as text, "" for unset
    credentials: bool | None = None
    # unmatchedPreflights: IGNORE answers them; else Envoy forwards them (its <1.30 default).
    forward_unmatched_preflights: bool = True


@dataclass(frozen=True, slots=True)
class Mirror:
    """``TranslateRequestMirrorPolicy``: a cluster and the share of requests Envoy copies
    to it, as pilot writes the fraction (``mirrorPercentage`` in millionths, the deprecated
    integer ``mirrorPercent`` and the default 100 in hundredths)."""

    cluster: str
    numerator: int = 100
    per_million: bool = False  # else per hundred


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One Envoy route of a VirtualService ``http[]`` entry (one per ``match[]`` entry).

    A route forwards to its service's cluster (or a subset's, or one of several by weight)
    unless it has a ``redirect`` or a ``direct_response``, which Envoy answers itself.
    """

    name: str
    match: RouteMatch = field(default_factory=RouteMatch)
    # The cluster it forwards to: its service's own (""), or one of its subsets'.
    cluster: str = ""
    # Several destinations: Envoy picks one per request by weight (``weighted_clusters``),
    # and ``cluster`` is unused.
    weighted: tuple[ClusterWeight, ...] = ()
    timeout_s: float = 0.0  # 0: no timeout, Istio's default
    retries: RetryPolicy | None = field(default_factory=RetryPolicy)
    headers: HeaderOperations = HeaderOperations()
    host_rewrite: str = ""  # rewrite.authority, or an authority header set or added
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    fault: Fault | None = None
    # The destination's consistentHash key (hashForService, HashForHTTPDestination).
    hash_key: HashKey | None = None
    # sourceLabels, gateways, sourceNamespace: None when the match names none.
    source: SourceMatch | None = None
    stat_prefix: str = ""  # match.statPrefix
    mirrors: tuple[Mirror, ...] = ()  # mirror (and mirrorPercentage), then mirrors[]
    cors: Cors | None = None

    @property
    def forwards(self) -> bool:
        """Whether the route goes to an endpoint (not a redirect or a direct response)."""
        return self.redirect is None and self.direct_response is None

    def clusters(self, own: str) -> tuple[str, ...]:
        """The clusters the route forwards to, ``own`` standing for its service's cluster."""
        if self.weighted:
            return tuple(w.cluster for w in self.weighted)
        return (self.cluster or own,) if self.forwards else ()
