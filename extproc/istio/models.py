"""The Istio objects we read, as strict pydantic models: ServiceEntry and DestinationRule.

Shape only, as the Kubernetes API server checks a CRD's OpenAPI schema: strict types (``"80"``
is not a port number, ``on`` is not a boolean), fields read by their Istio (camelCase) names
through explicit aliases, nulls as unset. What a value means is validation's
(``service_entry_rules``, ``traffic_policy_rules``); field names are checked against Istio's
API (``api``) by ``findings.walk_fields``, so a model declares only what extproc reads and
keeps the rest (``extra="allow"``) to warn about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.istio.duration import GoDuration

__all__ = [
    "API_VERSIONS",
    "MODELS",
    "UPSTREAM_SNI_ANNOTATION",
    "UPSTREAM_SNI_VALUES",
    "ClientTlsSettingsSpec",
    "ConnectionPoolSpec",
    "DestinationRule",
    "HttpMatchSpec",
    "HttpRetrySpec",
    "HttpRouteSpec",
    "IstioObject",
    "LoadBalancerSpec",
    "LocalityLbSettingSpec",
    "Model",
    "OutlierDetectionSpec",
    "PortTrafficPolicySpec",
    "ServiceEntry",
    "ServicePort",
    "StringMatchSpec",
    "TrafficPolicySpec",
    "VirtualService",
    "WorkloadEntry",
    "tls_settings_of",
]

API_VERSIONS: Final = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)

#: extproc's switch on a DestinationRule (Istio ignores annotations it does not know): with
#: ``endpoint``, TLS without ``sni`` sends each endpoint's own name as SNI and Host instead of
#: the request's authority (``authority``, Istio's behaviour and the default).
UPSTREAM_SNI_ANNOTATION: Final = "extproc.io/upstream-sni"
UPSTREAM_SNI_VALUES: Final = ("authority", "endpoint")
#: The ClientTLSSettings modes in which the sidecar originates TLS with its own settings.
ORIGINATING_TLS_MODES: Final = ("SIMPLE", "MUTUAL")


class Model(BaseModel):
    """Strict, immutable, and keeping what it does not declare (see ``findings.walk_fields``)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, populate_by_name=False)

    # Istio fields with their own message when written (None: say nothing). Every other
    # Istio field the model does not declare gets NOT_YET; a name not in Istio's API
    # (``api.py``) is an error.
    IGNORED: ClassVar[Mapping[str, str | None]] = {}
    # False for Kubernetes metadata, whose many server-written fields are not configuration.
    WARN_UNIMPLEMENTED: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # The API server prunes null values of non-nullable CRD fields: null means unset.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class ObjectMeta(Model):
    """``metadata``: the name (in messages) and extproc's annotation."""

    WARN_UNIMPLEMENTED = False

    name: str = ""
    namespace: str = ""
    annotations: dict[str, Any] = Field(default_factory=dict)


class ServicePort(Model):
    """``ServiceEntry.spec.ports[]`` (``networking.Port`` in istio/api)."""

    number: int
    name: str = ""
    protocol: str = ""
    target_port: int = Field(default=0, alias="targetPort")


class WorkloadEntry(Model):
    """``ServiceEntry.spec.endpoints[]``."""

    address: str = ""
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    locality: str = ""
    weight: int = 0
    network: str = ""  # only as the topology.istio.io/network label (failoverPriority)


class ServiceEntrySpec(Model):
    hosts: list[str] = Field(default_factory=list)
    # The SANs TLS origination checks when the DestinationRule's tls names none
    # (constructUpstreamTLS, for ServiceEntries).
    subject_alt_names: list[str] = Field(default_factory=list, alias="subjectAltNames")
    ports: list[ServicePort] = Field(default_factory=list)
    location: str = ""
    resolution: str = ""
    endpoints: list[WorkloadEntry] = Field(default_factory=list)


class ServiceEntry(Model):
    """A ``networking.istio.io`` ServiceEntry."""

    IGNORED = {"status": None}

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta = ObjectMeta()
    spec: ServiceEntrySpec


class OutlierDetectionSpec(Model):
    """``trafficPolicy.outlierDetection``; unset fields stay ``None`` (defaults in compile)."""

    IGNORED = {
        "consecutiveErrors": "deprecated by Istio (use consecutive5xxErrors), ignored",
    }

    consecutive_5xx_errors: int | None = Field(default=None, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = Field(default=None, alias="consecutiveGatewayErrors")
    interval: GoDuration | None = None
    base_ejection_time: GoDuration | None = Field(default=None, alias="baseEjectionTime")
    max_ejection_percent: int | None = Field(default=None, alias="maxEjectionPercent")
    min_health_percent: int | None = Field(default=None, alias="minHealthPercent")
    split_external_local_origin_errors: bool = Field(
        default=False, alias="splitExternalLocalOriginErrors"
    )
    consecutive_local_origin_failures: int | None = Field(
        default=None, alias="consecutiveLocalOriginFailures"
    )
    outlier_detection_http_error_codes: list[int] = Field(
        default_factory=list, alias="outlierDetectionHttpErrorCodes"
    )


class FailoverSpec(Model):
    """``localityLbSetting.failover[]``: regions only."""

    from_: str = Field(alias="from")
    to: str


class DistributeSpec(Model):
    """``localityLbSetting.distribute[]``: weights for the localities of one client locality."""

    from_: str = Field(default="", alias="from")
    to: dict[str, int] = Field(default_factory=dict)


class LocalityLbSettingSpec(Model):
    enabled: bool | None = None
    failover: list[FailoverSpec] = Field(default_factory=list)
    distribute: list[DistributeSpec] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list, alias="failoverPriority")


class CookieAttributeSpec(Model):
    name: str = ""
    value: str = ""


class HttpCookieSpec(Model):
    """``consistentHash.httpCookie``: Envoy generates the cookie when a ``ttl`` is set."""

    name: str = ""
    path: str = ""
    ttl: GoDuration | None = None
    attributes: list[CookieAttributeSpec] = Field(default_factory=list)


class RingHashSpec(Model):
    minimum_ring_size: int = Field(default=0, alias="minimumRingSize")


class MaglevSpec(Model):
    table_size: int = Field(default=0, alias="tableSize")


class ConsistentHashSpec(Model):
    """``loadBalancer.consistentHash``: one hash key and at most one hash algorithm."""

    http_header_name: str | None = Field(default=None, alias="httpHeaderName")
    http_cookie: HttpCookieSpec | None = Field(default=None, alias="httpCookie")
    use_source_ip: bool | None = Field(default=None, alias="useSourceIp")
    http_query_parameter_name: str | None = Field(default=None, alias="httpQueryParameterName")
    ring_hash: RingHashSpec | None = Field(default=None, alias="ringHash")
    maglev: MaglevSpec | None = None
    minimum_ring_size: int = Field(default=0, alias="minimumRingSize")  # deprecated


class WarmupSpec(Model):
    """``loadBalancer.warmup`` (v1): Envoy's slow start with its aggression and floor."""

    duration: GoDuration | None = None
    minimum_percent: float | None = Field(default=None, alias="minimumPercent")
    aggression: float | None = None


class LoadBalancerSpec(Model):
    simple: str | None = None
    consistent_hash: ConsistentHashSpec | None = Field(default=None, alias="consistentHash")
    locality_lb_setting: LocalityLbSettingSpec | None = Field(
        default=None, alias="localityLbSetting"
    )
    warmup_duration_secs: GoDuration | None = Field(default=None, alias="warmupDurationSecs")
    warmup: WarmupSpec | None = None


class TcpKeepaliveSpec(Model):
    """``connectionPool.tcp.tcpKeepalive``: unset fields keep the OS defaults."""

    probes: int | None = None
    time: GoDuration | None = None
    interval: GoDuration | None = None


class TcpSettingsSpec(Model):
    """``connectionPool.tcp`` (``ConnectionPoolSettings.TCPSettings``)."""

    max_connections: int = Field(default=0, alias="maxConnections")
    connect_timeout: GoDuration | None = Field(default=None, alias="connectTimeout")
    tcp_keepalive: TcpKeepaliveSpec | None = Field(default=None, alias="tcpKeepalive")
    max_connection_duration: GoDuration | None = Field(default=None, alias="maxConnectionDuration")
    idle_timeout: GoDuration | None = Field(default=None, alias="idleTimeout")


class Http2KeepAliveSpec(Model):
    """``connectionPool.http.http2KeepAlive``: both fields are required (validation)."""

    interval: GoDuration | None = None
    timeout: GoDuration | None = None


class HttpSettingsSpec(Model):
    """``connectionPool.http`` (``ConnectionPoolSettings.HTTPSettings``); 0 is unset."""

    http1_max_pending_requests: int = Field(default=0, alias="http1MaxPendingRequests")
    http2_max_requests: int = Field(default=0, alias="http2MaxRequests")
    max_requests_per_connection: int = Field(default=0, alias="maxRequestsPerConnection")
    max_retries: int = Field(default=0, alias="maxRetries")
    idle_timeout: GoDuration | None = Field(default=None, alias="idleTimeout")
    h2_upgrade_policy: str = Field(default="DEFAULT", alias="h2UpgradePolicy")
    use_client_protocol: bool = Field(default=False, alias="useClientProtocol")
    max_concurrent_streams: int = Field(default=0, alias="maxConcurrentStreams")
    http2_keep_alive: Http2KeepAliveSpec | None = Field(default=None, alias="http2KeepAlive")


class ConnectionPoolSpec(Model):
    """``trafficPolicy.connectionPool`` (``ConnectionPoolSettings``)."""

    tcp: TcpSettingsSpec | None = None
    http: HttpSettingsSpec | None = None


class ClientTlsSettingsSpec(Model):
    """``tls`` of a traffic policy or a port's (``ClientTLSSettings``); unset mode is DISABLE."""

    mode: str = ""
    client_certificate: str = Field(default="", alias="clientCertificate")
    private_key: str = Field(default="", alias="privateKey")
    ca_certificates: str = Field(default="", alias="caCertificates")
    credential_name: str = Field(default="", alias="credentialName")
    subject_alt_names: list[str] = Field(default_factory=list, alias="subjectAltNames")
    sni: str = ""
    insecure_skip_verify: bool | None = Field(default=None, alias="insecureSkipVerify")
    ca_crl: str = Field(default="", alias="caCrl")


class PortSelectorSpec(Model):
    """``portLevelSettings[].port`` (``PortSelector``)."""

    number: int = 0


class PortTrafficPolicySpec(Model):
    """``trafficPolicy.portLevelSettings[]``: replaces the top-level policy on its port.

    Its fields mirror ``TrafficPolicySpec``'s, so either can be the policy of a port
    (Istio's ``GetPortLevelTrafficPolicy`` returns the port's settings as a TrafficPolicy).
    """

    port: PortSelectorSpec | None = None
    load_balancer: LoadBalancerSpec | None = Field(default=None, alias="loadBalancer")
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    connection_pool: ConnectionPoolSpec | None = Field(default=None, alias="connectionPool")
    tls: ClientTlsSettingsSpec | None = None


class TrafficPolicySpec(Model):
    load_balancer: LoadBalancerSpec | None = Field(default=None, alias="loadBalancer")
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    connection_pool: ConnectionPoolSpec | None = Field(default=None, alias="connectionPool")
    tls: ClientTlsSettingsSpec | None = None
    port_level_settings: list[PortTrafficPolicySpec] = Field(
        default_factory=list, alias="portLevelSettings"
    )


class SubsetSpec(Model):
    """``subsets[]``: endpoints by labels, with a policy merged over the rule's."""

    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicySpec | None = Field(default=None, alias="trafficPolicy")


class DestinationRuleSpec(Model):
    host: str = ""
    traffic_policy: TrafficPolicySpec | None = Field(default=None, alias="trafficPolicy")
    subsets: list[SubsetSpec] = Field(default_factory=list)


class DestinationRule(Model):
    """A ``networking.istio.io`` DestinationRule."""

    IGNORED = {"status": None}

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta = ObjectMeta()
    spec: DestinationRuleSpec


class StringMatchSpec(Model):
    """``StringMatch``: one of exact, prefix or regex (a proto oneof; validation checks it)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class HttpMatchSpec(Model):
    """``HTTPMatchRequest``; the fields extproc does not serve are errors (rules), not warnings."""

    WARN_UNIMPLEMENTED = False

    name: str = ""
    uri: StringMatchSpec | None = None
    method: StringMatchSpec | None = None
    authority: StringMatchSpec | None = None
    scheme: StringMatchSpec | None = None
    headers: dict[str, StringMatchSpec] = Field(default_factory=dict)
    without_headers: dict[str, StringMatchSpec] = Field(
        default_factory=dict, alias="withoutHeaders"
    )
    query_params: dict[str, StringMatchSpec] = Field(default_factory=dict, alias="queryParams")
    port: int = 0
    ignore_uri_case: bool = Field(default=False, alias="ignoreUriCase")
    source_labels: dict[str, str] = Field(default_factory=dict, alias="sourceLabels")
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str = Field(default="", alias="sourceNamespace")
    stat_prefix: str = Field(default="", alias="statPrefix")


class DestinationSpec(Model):
    """``Destination``: a ServiceEntry host and, optionally, its port and a subset."""

    WARN_UNIMPLEMENTED = False

    host: str = ""
    port: PortSelectorSpec | None = None
    subset: str = ""


class HeaderOperationsSpec(Model):
    """``Headers.HeaderOperations``: set (overwrite), add (append) and remove."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class HeadersSpec(Model):
    """``Headers``: the request's and the response's operations."""

    request: HeaderOperationsSpec | None = None
    response: HeaderOperationsSpec | None = None


class RouteDestinationSpec(Model):
    """``HTTPRouteDestination``."""

    WARN_UNIMPLEMENTED = False

    destination: DestinationSpec | None = None
    weight: int = 0
    headers: HeadersSpec | None = None


class RegexRewriteSpec(Model):
    """``RegexRewrite``: an RE2 pattern and its substitution."""

    match: str = ""
    rewrite: str = ""


class RewriteSpec(Model):
    """``HTTPRewrite``."""

    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewriteSpec | None = Field(default=None, alias="uriRegexRewrite")


class RedirectSpec(Model):
    """``HTTPRedirect``; ``port`` and ``derivePort`` are a proto oneof."""

    uri: str = ""
    authority: str = ""
    port: int | None = None
    derive_port: str | None = Field(default=None, alias="derivePort")
    scheme: str = ""
    redirect_code: int = Field(default=0, alias="redirectCode")
    prefix_rewrite: str = Field(default="", alias="prefixRewrite")


class BodySpec(Model):
    """``HTTPBody``: a string or bytes (base64 in YAML, as the API server reads ``bytes``)."""

    string: str | None = None
    bytes_: str | None = Field(default=None, alias="bytes")


class DirectResponseSpec(Model):
    """``HTTPDirectResponse``."""

    status: int = 0
    body: BodySpec | None = None


class PercentSpec(Model):
    """``Percent``: a double from 0 to 100."""

    value: float | int = 0.0


class DelaySpec(Model):
    """``HTTPFaultInjection.Delay``."""

    fixed_delay: GoDuration | None = Field(default=None, alias="fixedDelay")
    exponential_delay: GoDuration | None = Field(default=None, alias="exponentialDelay")
    percentage: PercentSpec | None = None
    percent: int | None = None  # deprecated: an integer percentage


class AbortSpec(Model):
    """``HTTPFaultInjection.Abort``: one of httpStatus, grpcStatus, http2Error."""

    http_status: int | None = Field(default=None, alias="httpStatus")
    grpc_status: str | None = Field(default=None, alias="grpcStatus")
    http2_error: str | None = Field(default=None, alias="http2Error")
    percentage: PercentSpec | None = None


class FaultSpec(Model):
    """``HTTPFaultInjection``."""

    delay: DelaySpec | None = None
    abort: AbortSpec | None = None


class HttpRetrySpec(Model):
    """``HTTPRetry`` (``retries``)."""

    attempts: int = 0
    per_try_timeout: GoDuration | None = Field(default=None, alias="perTryTimeout")
    retry_on: str = Field(default="", alias="retryOn")
    retry_remote_localities: bool | None = Field(default=None, alias="retryRemoteLocalities")
    retry_ignore_previous_hosts: bool | None = Field(default=None, alias="retryIgnorePreviousHosts")
    backoff: GoDuration | None = None


class CorsPolicySpec(Model):
    """``CorsPolicy``: Envoy's CORS filter answers preflights and adds the response headers."""

    allow_origins: list[StringMatchSpec] = Field(default_factory=list, alias="allowOrigins")
    allow_origin: list[str] = Field(default_factory=list, alias="allowOrigin")  # deprecated
    allow_methods: list[str] = Field(default_factory=list, alias="allowMethods")
    allow_headers: list[str] = Field(default_factory=list, alias="allowHeaders")
    expose_headers: list[str] = Field(default_factory=list, alias="exposeHeaders")
    max_age: GoDuration | None = Field(default=None, alias="maxAge")
    allow_credentials: bool | None = Field(default=None, alias="allowCredentials")
    unmatched_preflights: str | None = Field(default=None, alias="unmatchedPreflights")


class HttpMirrorPolicySpec(Model):
    """``HTTPMirrorPolicy``: a destination and the share of requests copied to it."""

    WARN_UNIMPLEMENTED = False

    destination: DestinationSpec | None = None
    percentage: PercentSpec | None = None


class HttpRouteSpec(Model):
    """``HTTPRoute`` (``http[]``); the fields extproc does not serve are errors (rules)."""

    WARN_UNIMPLEMENTED = False

    name: str = ""
    match: list[HttpMatchSpec] = Field(default_factory=list)
    route: list[RouteDestinationSpec] = Field(default_factory=list)
    timeout: GoDuration | None = None
    retries: HttpRetrySpec | None = None
    headers: HeadersSpec | None = None
    rewrite: RewriteSpec | None = None
    redirect: RedirectSpec | None = None
    direct_response: DirectResponseSpec | None = Field(default=None, alias="directResponse")
    fault: FaultSpec | None = None
    mirror: DestinationSpec | None = None
    mirror_percentage: PercentSpec | None = Field(default=None, alias="mirrorPercentage")
    mirror_percent: int | None = Field(default=None, alias="mirrorPercent")  # deprecated
    mirrors: list[HttpMirrorPolicySpec] = Field(default_factory=list)
    cors_policy: CorsPolicySpec | None = Field(default=None, alias="corsPolicy")


class VirtualServiceSpec(Model):
    """``VirtualService``'s spec: its HTTP routes (tcp and tls routes are warned about)."""

    IGNORED = {
        "exportTo": None,  # visibility across namespaces: extproc has one proxy, no namespaces
        "tcp": "is not served: extproc routes HTTP ports only; ignored",
        "tls": "is not served: extproc routes HTTP ports only; ignored",
    }

    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    http: list[HttpRouteSpec] = Field(default_factory=list)


class VirtualService(Model):
    """A ``networking.istio.io`` VirtualService."""

    IGNORED = {"status": None}

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta = ObjectMeta()
    spec: VirtualServiceSpec


IstioObject = ServiceEntry | DestinationRule | VirtualService
MODELS: Final[Mapping[str, type[ServiceEntry] | type[DestinationRule] | type[VirtualService]]] = {
    "ServiceEntry": ServiceEntry,
    "DestinationRule": DestinationRule,
    "VirtualService": VirtualService,
}


def tls_settings_of(dr: DestinationRule) -> list[tuple[str, ClientTlsSettingsSpec]]:
    """Every ``tls`` of a DestinationRule's traffic policy, with its path."""
    policy = dr.spec.traffic_policy
    if policy is None:
        return []
    found = [] if policy.tls is None else [("spec.trafficPolicy.tls", policy.tls)]
    for i, entry in enumerate(policy.port_level_settings):
        if entry.tls is not None:
            found.append((f"spec.trafficPolicy.portLevelSettings[{i}].tls", entry.tls))
    return found
