"""Turn validated ServiceEntries and DestinationRules into the ``Policy`` the core serves.

What pilot does for a ServiceEntry, reduced to what extproc routes:

1. One ``Service`` (one Envoy cluster, ``outbound|<port>||<host>``) per SE host and HTTP port
   (``pilot/pkg/networking/core/cluster.go``). Other protocols are skipped with a warning.
2. Endpoints: ``endpoints[].ports[portName]``, else ``targetPort``, else the port number
   (``pilot/pkg/serviceregistry/serviceentry/conversion.go``); weight 0 means 1
   (``model.GetLoadBalancingWeight``). Resolution DNS without endpoints resolves the host
   itself (``convertResolution``: STRICT_DNS on the host name; DNS_ROUND_ROBIN is
   LOGICAL_DNS). A wildcard host (``*.example.com``) is one cluster,
   ``outbound|80||*.example.com``, on its endpoints.
3. The DestinationRule of the SE host applies: Istio's ``MostSpecificHostMatch``
   (``pilot/pkg/model/config.go``), the same host, else the longest wildcard host that
   covers it (``*.example.com`` covers ``db.example.com`` and ``*.db.example.com``). Two
   DestinationRules for one host are merged as ``mergeDestinationRule`` does
   (``pilot/pkg/model/destination_rule.go``): the trafficPolicy of the first one that has
   one; Istio's "first" is by creation time, here document order, with a warning.
4. The policy of a port: a ``portLevelSettings`` entry for the port replaces the whole
   top-level policy (``GetPortLevelTrafficPolicy``, ``pilot/pkg/networking/util/util.go``):
   what the entry leaves out takes Istio's defaults, not the top-level values. Istio's
   documented defaults fill every unset outlier-detection field (``cluster_traffic_policy.go``
   ``applyOutlierDetection``); ``connectionPool`` sets the cluster's circuit breakers,
   keepalive, HTTP protocol options and connect timeout (else the mesh's 10s) as
   ``applyConnectionPool`` does (``connection_pool``).
5. ``tls`` in mode SIMPLE or MUTUAL originates TLS (``constructUpstreamTLS``,
   ``pilot/pkg/networking/core/cluster_tls.go``): the DestinationRule's
   ``subjectAltNames``, else the ServiceEntry's; without ``sni`` the SNI and the SAN check
   follow the request's authority, unless the DestinationRule carries extproc's
   ``extproc.io/upstream-sni: endpoint`` annotation (each endpoint's own name).

Cross-object rules are checked here: one ServiceEntry per host and port.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from extproc.core.locality import LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE
from extproc.core.policy import (
    Distribute,
    Endpoint,
    Failover,
    HashAlgorithm,
    HashRing,
    LbAlgorithm,
    Locality,
    LocalityLbSetting,
    OutlierDetection,
    Resolution,
    Service,
    SlowStart,
    TlsSettings,
    UpstreamSni,
    authority_key,
    cluster_name,
)
from extproc.core.routes import HashKey, HashOn
from extproc.errors import ConfigError, Problem
from extproc.istio.connection_pool import (
    connection_pool,
)
from extproc.istio.duration import parse_duration
from extproc.istio.findings import Parsed, Source
from extproc.istio.http_routes import apply_virtual_services
from extproc.istio.models import (
    UPSTREAM_SNI_ANNOTATION,
    ClientTlsSettingsSpec,
    ConnectionPoolSpec,
    ConsistentHashSpec,
    DestinationRule,
    LoadBalancerSpec,
    LocalityLbSettingSpec,
    OutlierDetectionSpec,
    PortTrafficPolicySpec,
    ServiceEntry,
    ServicePort,
    SubsetSpec,
    TrafficPolicySpec,
)
from extproc.istio.upstream_tls import sni_finding, tls_settings

__all__ = ["HTTP_PROTOCOLS", "README_DIFFERENCES", "compile_services", "lb_algorithm"]

# Protocols whose requests pass through Envoy's HTTP filters (where ext_proc runs). An unset
# protocol is sniffed by Istio; extproc only sees it if it is HTTP, so it is served as HTTP.
HTTP_PROTOCOLS: Final = frozenset({"", "HTTP", "HTTP2", "GRPC"})

# Istio's documented OutlierDetection defaults (networking/v1alpha3/destination_rule.proto).
_DEFAULT_CONSECUTIVE_5XX: Final = 5
_DEFAULT_INTERVAL_NS: Final = 10 * 1_000_000_000
_DEFAULT_BASE_EJECTION_NS: Final = 30 * 1_000_000_000
_DEFAULT_MAX_EJECTION_PERCENT: Final = 10  # Envoy's default; Istio sets it only when > 0
# Envoy's DEFAULT_CONSECUTIVE_GATEWAY_FAILURE and DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
# (outlier_detection_impl.h), which pilot leaves in place when the DR field is unset.
_DEFAULT_CONSECUTIVE_GATEWAY_FAILURE: Final = 5
_DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE: Final = 5


#: The README section on what extproc does differently from Istio, and why.
README_DIFFERENCES: Final = "README.md#differences-from-istio"


@dataclass(slots=True)
class _Rule:
    """The DestinationRules of one host, merged, and which services they applied to.

    ``source`` is the first DestinationRule for the host; ``policy`` is the trafficPolicy
    that applies and ``policy_source`` the DestinationRule it came from (Istio keeps the
    first rule's policy, or takes a later one's when the earlier ones have none).
    """

    source: Source
    policy: TrafficPolicySpec | None
    policy_source: Source
    # The annotation of the DestinationRule the policy came from (policy_source).
    sni_from: UpstreamSni = UpstreamSni.AUTHORITY
    used: bool = False
    ports: set[int] = field(default_factory=set)  # service ports it applied to
    # Every rule's subsets, in document order; a later rule's subset of a name already
    # taken is dropped (mergeDestinationRule).
    subsets: list[SubsetSpec] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Blocked:
    """A service whose DestinationRule would never eject on Envoy >= 1.28 (strict rule)."""

    cluster: str
    endpoints: int
    limit: int  # maxEjectionPercent


@dataclass(slots=True)
class _Compiler:
    always_eject_one_host: bool
    source: str = "<string>"
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    rules: dict[str, _Rule] = field(default_factory=dict)
    declared: dict[tuple[str, int], Source] = field(default_factory=dict)
    said: set[tuple[Source, str]] = field(default_factory=set)  # (rule, path): said once
    blocked: list[_Blocked] = field(default_factory=list)

    def collect_rules(self, objects: Sequence[Parsed]) -> None:
        """Index DestinationRules by host, merging those of one host as Istio does.

        ``mergeDestinationRule`` (pilot/pkg/model/destination_rule.go), for rules without a
        workloadSelector in one namespace: the first rule's trafficPolicy stays; a later
        rule's is used only when the earlier ones have none. Istio orders the rules by
        creation time, which a file does not have: document order stands in for it.
        """
        for parsed in objects:
            if not isinstance(parsed.obj, DestinationRule):
                continue
            source, host = parsed.source, _normalize(parsed.obj.spec.host)
            policy = parsed.obj.spec.traffic_policy
            sni_from = UpstreamSni(
                parsed.obj.metadata.annotations.get(UPSTREAM_SNI_ANNOTATION, "authority")
            )
            first = self.rules.get(host)
            if first is None:
                self.rules[host] = _Rule(
                    source, policy, source, sni_from, subsets=list(parsed.obj.spec.subsets)
                )
                continue
            taken = {subset.name for subset in first.subsets}
            for i, subset in enumerate(parsed.obj.spec.subsets):
                if subset.name in taken:
                    self.warnings.append(
                        source.problem(
                            f"spec.subsets[{i}].name",
                            f"subset {subset.name!r} of {host!r} is already defined by an "
                            "earlier DestinationRule; Istio keeps the first: ignored",
                        )
                    )
                else:
                    first.subsets.append(subset)
                    taken.add(subset.name)
            if policy is None:
                outcome = "it has no trafficPolicy, so it changes nothing"
            elif first.policy is None:
                first.policy, first.policy_source, first.sni_from = policy, source, sni_from
                outcome = "its trafficPolicy applies, as the earlier one has none"
            else:
                outcome = (
                    f"its trafficPolicy is ignored, the one of {first.policy_source.cite()} applies"
                )
            self.warnings.append(
                source.problem(
                    "spec.host",
                    f'"{host}" is also the host of {first.source.cite()}; Istio merges '
                    "DestinationRules of one host and keeps the trafficPolicy of the oldest "
                    "one that has one; extproc has no creation time and goes by document "
                    f"order: {outcome}",
                )
            )

    def rule_for(self, host: str) -> _Rule | None:
        """The DestinationRule of a ServiceEntry host: Istio's ``MostSpecificHostMatch``.

        The rule for the same host (``*.example.com`` for ``*.example.com``), else the longest
        wildcard rule host covering it (pilot/pkg/model/config.go).
        """
        rule = self.rules.get(host)
        if rule is not None:
            return rule
        best: tuple[str, _Rule] | None = None
        for pattern, candidate in self.rules.items():
            if _covers(pattern, host) and (best is None or len(pattern) > len(best[0])):
                best = (pattern, candidate)
        return None if best is None else best[1]

    def add_service_entry(self, source: Source, se: ServiceEntry) -> None:
        spec = se.spec
        http_ports: list[ServicePort] = []
        for i, port in enumerate(spec.ports):
            protocol = port.protocol.upper()
            if protocol in HTTP_PROTOCOLS:
                http_ports.append(port)
            else:
                self.warnings.append(
                    source.problem(
                        f"spec.ports[{i}]",
                        f"port {port.number} ({protocol}) is skipped: extproc serves HTTP "
                        "ports only (protocol HTTP, HTTP2, GRPC or unset)",
                    )
                )
        for i, raw_host in enumerate(spec.hosts):
            host = _normalize(raw_host)
            for port in http_ports:
                if (first := self.declared.get((host, port.number))) is not None:
                    self.errors.append(
                        source.problem(
                            f"spec.hosts[{i}]",
                            f'"{host}" port {port.number} is already declared by {first.cite()}',
                        )
                    )
                    continue
                self.declared[(host, port.number)] = source
                self.add_services(source, se, host, port)

    def add_services(self, source: Source, se: ServiceEntry, host: str, port: ServicePort) -> None:
        """The host and port's service, then one per subset of its DestinationRule."""
        spec = se.spec
        # 1. The port an endpoint listens on: its own ports[name], else targetPort, else number.
        default_port = port.target_port or port.number
        endpoints = tuple(
            Endpoint(
                address=ep.address,
                port=ep.ports.get(port.name, default_port),
                locality=Locality.parse(ep.locality),
                labels=tuple(sorted(ep.labels.items())),
                weight=ep.weight or 1,
                network=ep.network,
            )
            for ep in spec.endpoints
        )
        # 2. DNS without endpoints: Envoy resolves the host name itself (never a wildcard:
        #    validation requires endpoints for one).
        if spec.resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
            endpoints = (Endpoint(address=host, port=default_port),)

        rule = self.rule_for(host)
        main = _Components()
        where = "spec.trafficPolicy"
        if rule is not None:
            rule.used = True
            rule.ports.add(port.number)
            # 3. The port's own settings, if any, else the top-level ones (never a mix).
            policy, where = _port_policy(rule.policy, port.number)
            main = _Components.of(policy)
        service = self.apply_policy(main, where, rule, source, se, host, port, endpoints, subset="")
        self.services.append(service)
        if rule is None:
            return
        for i, subset in enumerate(rule.subsets):
            # buildSubsetCluster: the endpoints with the subset's labels, the rule's policy
            # for the port with the subset's merged over it (MergeSubsetTrafficPolicy).
            merged, subset_where = _merged(main, subset.traffic_policy, port.number)
            chosen = tuple(e for e in endpoints if _has_labels(e, subset.labels))
            if not chosen and se.spec.resolution != "STATIC":
                continue  # pilot builds no DNS cluster without endpoints (buildSubsetCluster)
            self.services.append(
                self.apply_policy(
                    merged,
                    f"spec.subsets[{i}].{subset_where}" if subset_where else where,
                    rule,
                    source,
                    se,
                    host,
                    port,
                    chosen,
                    subset=subset.name,
                )
            )

    def apply_policy(
        self,
        policy: _Components,
        where: str,
        rule: _Rule | None,
        source: Source,
        se: ServiceEntry,
        host: str,
        port: ServicePort,
        endpoints: tuple[Endpoint, ...],
        *,
        subset: str,
    ) -> Service:
        """One cluster's service: its endpoints under one (merged) traffic policy."""
        lb = LbAlgorithm.LEAST_REQUEST  # Istio's default without a DestinationRule
        outlier: OutlierDetection | None = None
        locality_lb = LocalityLbSetting()
        tls: TlsSettings | None = None
        if rule is not None and policy.tls is not None:
            tls = tls_settings(policy.tls, rule.sni_from, se.spec.subject_alt_names)
            if tls is not None:
                self.check_sni(rule, f"{where}.tls", tls, source, host, endpoints)
        hash_ring: HashRing | None = None
        slow_start: SlowStart | None = None
        if policy.load_balancer is not None:
            lb = lb_algorithm(policy.load_balancer.simple)
            lls = policy.load_balancer.locality_lb_setting
            if lls is not None:
                locality_lb = _locality_lb_setting(lls)
            hash_ring = _hash_ring(policy.load_balancer.consistent_hash)
            if hash_ring is None and lb is not LbAlgorithm.RANDOM:
                slow_start = _slow_start(policy.load_balancer)
        with_port, portless = _hash_keys(rule, port.number, subset)
        if policy.outlier_detection is not None:
            outlier = self.outlier_detection(policy.outlier_detection)
            self.check_ejection(outlier, len(endpoints), cluster_name(host, port.number, subset))
        return Service(
            host=host,
            port=port.number,
            port_name=port.name,
            protocol=port.protocol.upper(),
            resolution=Resolution(se.spec.resolution),
            endpoints=endpoints,
            lb_algorithm=lb,
            hash_ring=hash_ring,
            slow_start=slow_start,
            hash_key=with_port,
            hash_key_portless=portless,
            outlier_detection=outlier,
            locality_lb=locality_lb,
            pool=connection_pool(policy.connection_pool),
            tls=tls,
            subset=subset,
            source=f'{source.file}: ServiceEntry "{source.name}"',
        )

    def check_sni(
        self,
        rule: _Rule,
        path: str,
        tls: TlsSettings,
        source: Source,
        host: str,
        endpoints: Sequence[Endpoint],
    ) -> None:
        """Report ``upstream_tls.sni_finding``, once per DestinationRule and path."""
        finding = sni_finding(tls, path, rule.policy_source, source, host, endpoints)
        if finding is None or (rule.policy_source, finding.path) in self.said:
            return
        self.said.add((rule.policy_source, finding.path))
        (self.errors if finding.error else self.warnings).append(finding.problem)

    def outlier_detection(self, od: OutlierDetectionSpec) -> OutlierDetection:
        interval_ns = _nanos(od.interval, _DEFAULT_INTERVAL_NS)
        base_ns = _nanos(od.base_ejection_time, _DEFAULT_BASE_EJECTION_NS)
        consecutive = od.consecutive_5xx_errors
        gateway = od.consecutive_gateway_errors
        # Pilot's applyOutlierDetection (istio/istio cluster_traffic_policy.go):
        # 1. consecutiveGatewayErrors v sets the threshold v and enforcing 100 if v > 0, else
        #    0; unset leaves Envoy's threshold 5 at enforcing 0 (detected, never ejected).
        # 2. split sets consecutive_local_origin_failure only if v > 0; otherwise Envoy's
        #    default 5 applies (enforcing 100 by default).
        local_origin = od.consecutive_local_origin_failures or 0
        return OutlierDetection(
            consecutive_5xx_errors=_DEFAULT_CONSECUTIVE_5XX if consecutive is None else consecutive,
            interval_s=interval_ns / 1e9,
            base_ejection_time_s=base_ns / 1e9,
            # 0 and unset both leave Envoy's default (applyOutlierDetection sets it only if > 0).
            max_ejection_percent=od.max_ejection_percent or _DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent=od.min_health_percent or 0,
            always_eject_one_host=self.always_eject_one_host,
            consecutive_gateway_errors=(
                _DEFAULT_CONSECUTIVE_GATEWAY_FAILURE if gateway is None else gateway
            ),
            enforcing_consecutive_gateway_failure=100 if (gateway or 0) > 0 else 0,
            split_external_local_origin_errors=od.split_external_local_origin_errors,
            consecutive_local_origin_failures=(
                local_origin
                if od.split_external_local_origin_errors and local_origin > 0
                else _DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE
            ),
            # applyOutlierDetectionErrorCodes: an error matcher only for a non-empty list.
            http_error_codes=frozenset(od.outlier_detection_http_error_codes),
        )

    def check_ejection(self, outlier: OutlierDetection, endpoints: int, cluster: str) -> None:
        """Note a service where Envoy >= 1.28 would refuse even the first ejection.

        Envoy's gate (``DetectorImpl::ejectHost``, strict since 1.28): eject only if
        ``100 * (ejected + 1) / hosts <= max_ejection_percent``. The first ejection is the
        easiest; if it fails, the DestinationRule never ejects anything.
        """
        if endpoints and 100 / endpoints > outlier.max_ejection_percent:
            self.blocked.append(_Blocked(cluster, endpoints, outlier.max_ejection_percent))

    def report_blocked_ejections(self) -> None:
        """One short warning for the whole config, however many services it concerns.

        It is a known difference, explained once in the README (the seed's own
        two-endpoint DestinationRule hits it), not a mistake to repeat at every reload.
        """
        if not self.blocked:
            return
        first = self.blocked[0]
        where = first.cluster
        if len(self.blocked) > 1:
            where += f" (+{len(self.blocked) - 1} more)"
        ours = "extproc does" if self.always_eject_one_host else "nor does extproc (strict)"
        self.warnings.append(
            Problem(
                self.source,
                "",
                "",
                f"{where}: maxEjectionPercent {first.limit}% < 1 of {first.endpoints} endpoints: "
                f"Istio never ejects, {ours} ({README_DIFFERENCES})",
            )
        )

    def report_unused_rules(self) -> None:
        """Warn about DestinationRules, and port-level entries, that apply to nothing."""
        hosts = sorted({host for host, _ in self.declared})
        for pattern, rule in self.rules.items():
            if not rule.used:
                covered = [h for h in hosts if _covers(pattern, h)]
                reason = (
                    "matches no ServiceEntry host (HTTP port)"
                    if not covered
                    else f"matches ServiceEntry host {', '.join(covered)}, but a more specific "
                    "DestinationRule applies to each"
                )
                self.warnings.append(
                    rule.source.problem(
                        "spec.host", f'"{pattern}" {reason}; this DestinationRule is ignored'
                    )
                )
                continue
            if rule.policy is None:
                continue
            for i, entry in enumerate(rule.policy.port_level_settings):
                number = entry.port.number if entry.port is not None else 0
                if 1 <= number <= 65535 and number not in rule.ports:
                    self.warnings.append(
                        rule.policy_source.problem(
                            f"spec.trafficPolicy.portLevelSettings[{i}].port.number",
                            f"port {number} is not an HTTP port of a ServiceEntry host this "
                            "DestinationRule applies to; this entry never applies",
                        )
                    )


def compile_services(
    objects: Sequence[Parsed], *, always_eject_one_host: bool = True, source: str = "<string>"
) -> tuple[tuple[Service, ...], tuple[Problem, ...]]:
    """Build the services from validated objects, in document order, and this step's warnings.

    Args:
        objects: the ServiceEntries and DestinationRules, as ``validation.check_object`` returned
            them.
        always_eject_one_host: copied into every ``OutlierDetection`` (see there).
        source: names the config as a whole (a file, a directory) in warnings about it.

    Raises:
        ConfigError: with every cross-object problem (a host and port declared by two
            ServiceEntries); nothing is half-applied.
    """
    compiler = _Compiler(always_eject_one_host, source)
    compiler.collect_rules(objects)
    for parsed in objects:
        if isinstance(parsed.obj, ServiceEntry):
            compiler.add_service_entry(parsed.source, parsed.obj)
    compiler.report_unused_rules()
    compiler.report_blocked_ejections()
    services, errors, warnings = apply_virtual_services(compiler.services, objects)
    compiler.errors += errors
    compiler.warnings += warnings
    if compiler.errors:
        raise ConfigError(compiler.errors)
    return services, tuple(compiler.warnings)


def lb_algorithm(simple: str | None) -> LbAlgorithm:
    """Map ``loadBalancer.simple`` (already validated) to the algorithm Envoy would run.

    UNSPECIFIED and unset take Istio's default, LEAST_REQUEST; LEAST_CONN is deprecated and
    Istio sends LEAST_REQUEST for it (``pilot/pkg/networking/core/cluster_traffic_policy.go``
    ``applyLoadBalancer``).
    """
    if simple in (None, "UNSPECIFIED", "LEAST_CONN"):
        return LbAlgorithm.LEAST_REQUEST
    return LbAlgorithm(simple)


def _hash_ring(spec: ConsistentHashSpec | None) -> HashRing | None:
    """``ApplyRingHashLoadBalancer``: Maglev or a ring; a zero size leaves Envoy's default,
    and a consistentHash with neither is a ring of the deprecated minimumRingSize or 1024."""
    if spec is None:
        return None
    if spec.maglev is not None:
        return HashRing(HashAlgorithm.MAGLEV, spec.maglev.table_size or None)
    if spec.ring_hash is not None:
        return HashRing(HashAlgorithm.RING_HASH, spec.ring_hash.minimum_ring_size or None)
    return HashRing(HashAlgorithm.RING_HASH, spec.minimum_ring_size or 1024)


def _slow_start(lb: LoadBalancerSpec) -> SlowStart | None:
    """``setWarmup`` (v1 ``warmup``: aggression 1 and floor 10% when unset, as pilot writes
    them), else the deprecated ``setSlowStartConfig`` (the window alone)."""
    if lb.warmup is not None and lb.warmup.duration is not None:
        return SlowStart(
            window_s=_nanos(lb.warmup.duration, 0) / 1e9,
            aggression=1.0 if lb.warmup.aggression is None else lb.warmup.aggression,
            min_weight_percent=(
                10.0 if lb.warmup.minimum_percent is None else lb.warmup.minimum_percent
            ),
        )
    if lb.warmup_duration_secs is not None:
        return SlowStart(window_s=_nanos(lb.warmup_duration_secs, 0) / 1e9)
    return None


def hash_key(spec: ConsistentHashSpec | None) -> HashKey | None:
    """``ConsistentHashToHashPolicy``: the route's hash policy for a consistentHash."""
    if spec is None:
        return None
    if spec.http_header_name is not None:
        return HashKey(HashOn.HEADER, spec.http_header_name)
    if spec.http_cookie is not None:
        cookie = spec.http_cookie
        ttl = None if cookie.ttl is None else _nanos(cookie.ttl, 0) / 1e9
        return HashKey(
            HashOn.COOKIE,
            cookie.name,
            cookie_path=cookie.path,
            cookie_ttl_s=ttl,
            cookie_attributes=tuple((a.name, a.value) for a in cookie.attributes),
        )
    if spec.use_source_ip is not None:
        # Pilot writes useSourceIp: false as it is (connection_properties, source_ip false).
        return HashKey(HashOn.SOURCE_IP, source_ip=spec.use_source_ip)
    if spec.http_query_parameter_name is not None:
        return HashKey(HashOn.QUERY_PARAMETER, spec.http_query_parameter_name)
    # No key: pilot makes no hash policy, but the destination still counts as hashed.
    return HashKey(HashOn.NOTHING)


def _port_hash(
    policy: TrafficPolicySpec | None, port: int
) -> tuple[bool, ConsistentHashSpec | None]:
    """The first portLevelSettings entry for ``port``: whether there is one, and its hash."""
    for entry in policy.port_level_settings if policy is not None else ():
        if entry.port is not None and entry.port.number == port:
            lb = entry.load_balancer
            return True, None if lb is None else lb.consistent_hash
    return False, None


def _top_hash(policy: TrafficPolicySpec | None) -> ConsistentHashSpec | None:
    lb = None if policy is None else policy.load_balancer
    return None if lb is None else lb.consistent_hash


def _hash_keys(rule: _Rule | None, port: int, subset: str) -> tuple[HashKey | None, HashKey | None]:
    """A route's hash key to this cluster: with the destination's port, and without one.

    ``HashForHTTPDestination``: the subset's port-level hash, else the subset's own, else
    the rule's port-level hash (only when the destination names its port), else the rule's.
    ``hashForService`` (the default route) is the first of the two for the main cluster.
    """
    if rule is None:
        return None, None
    top = _top_hash(rule.policy)
    plain = top
    _, port_hash = _port_hash(rule.policy, port)
    ported = port_hash or top
    for spec in rule.subsets:
        if spec.name == subset and subset:
            own = _top_hash(spec.traffic_policy)
            _, own_port = _port_hash(spec.traffic_policy, port)
            plain = own or top
            ported = own_port or own or port_hash or top
            break
    return hash_key(ported), hash_key(plain)


def _locality_lb_setting(lls: LocalityLbSettingSpec) -> LocalityLbSetting:
    """``localityLbSetting`` as validated; ``distribute`` keeps each ``to`` map's YAML order."""
    return LocalityLbSetting(
        enabled=lls.enabled is not False,
        failover=tuple(Failover(f.from_, f.to) for f in lls.failover),
        distribute=tuple(Distribute(d.from_, tuple(d.to.items())) for d in lls.distribute),
        failover_priority=tuple(lls.failover_priority),
    )


def _port_policy(
    policy: TrafficPolicySpec | None, port: int
) -> tuple[TrafficPolicySpec | PortTrafficPolicySpec | None, str]:
    """The policy of one port, and its path for messages.

    Istio's ``GetPortLevelTrafficPolicy`` (pilot/pkg/networking/util/util.go): the first
    ``portLevelSettings`` entry for the port replaces the top-level policy as a whole
    ("port level policies do not inherit"); without one the top-level policy applies.
    """
    if policy is None:
        return None, "spec.trafficPolicy"
    for i, entry in enumerate(policy.port_level_settings):
        if entry.port is not None and entry.port.number == port:
            return entry, f"spec.trafficPolicy.portLevelSettings[{i}]"
    return policy, "spec.trafficPolicy"


@dataclass(frozen=True, slots=True)
class _Components:
    """The parts of a traffic policy one cluster takes (``selectTrafficPolicyComponents``)."""

    connection_pool: ConnectionPoolSpec | None = None
    outlier_detection: OutlierDetectionSpec | None = None
    load_balancer: LoadBalancerSpec | None = None
    tls: ClientTlsSettingsSpec | None = None

    @classmethod
    def of(cls, policy: TrafficPolicySpec | PortTrafficPolicySpec | None) -> _Components:
        if policy is None:
            return cls()
        return cls(
            policy.connection_pool, policy.outlier_detection, policy.load_balancer, policy.tls
        )


def _merged(
    base: _Components, subset: TrafficPolicySpec | None, port: int
) -> tuple[_Components, str]:
    """``MergeSubsetTrafficPolicy``: the subset's blocks over the rule's; the subset's own
    port-level entry replaces every block, set or not (``MergeTrafficPolicy`` hasPortLevel).
    Also the path of the subset's policy that applies, for messages ("" for none)."""
    if subset is None:
        return base, ""
    policy, where = _port_policy(subset, port)
    own = _Components.of(policy)
    if policy is not subset:  # a port-level entry of the subset's
        return own, where
    return (
        _Components(
            own.connection_pool or base.connection_pool,
            own.outlier_detection or base.outlier_detection,
            own.load_balancer or base.load_balancer,
            own.tls or base.tls,
        ),
        where,
    )


def _has_labels(endpoint: Endpoint, labels: dict[str, str]) -> bool:
    """``WithSubset``: the endpoint carries every label of the subset, the topology labels
    pilot derives from its locality included (``AugmentLabels``)."""
    own = dict(endpoint.labels)
    locality = endpoint.locality
    for key, value in (
        (LABEL_REGION, locality.region),
        (LABEL_ZONE, locality.zone),
        (LABEL_SUBZONE, locality.sub_zone),
    ):
        if value:
            own.setdefault(key, value)
    return all(own.get(key) == value for key, value in labels.items())


def _covers(pattern: str, host: str) -> bool:
    """Whether DestinationRule host ``pattern`` applies to ServiceEntry host ``host``.

    ``mostSpecificHostWildcardMatch``: a wildcard covers by suffix, a wildcard host through
    its own suffix (``*.com`` covers ``*.example.com``); an exact host only itself.
    """
    if not pattern.startswith("*"):
        return pattern == host
    needle = host[1:] if host.startswith("*") else host
    return needle.endswith(pattern[1:])


def _normalize(host: str) -> str:
    # Requests are matched lowercased and without the trailing dot (Policy.find).
    return authority_key(host, None)


def _nanos(text: str | None, default: int) -> int:
    if text is None:
        return default
    nanos = parse_duration(text)
    assert nanos is not None  # validated by the schema
    return nanos
