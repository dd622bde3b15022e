"""Turn validated ServiceEntries and DestinationRules into the ``Policy`` the core serves.

What pilot does for a ServiceEntry, reduced to what extproc routes:

1. One ``Service`` (one Envoy cluster, ``outbound|<port>||<host>``) per SE host and HTTP port
   (``pilot/pkg/networking/core/cluster.go``). Other protocols are skipped with a warning.
2. Endpoints: ``endpoints[].ports[portName]``, else ``targetPort``, else the port number
   (``pilot/pkg/serviceregistry/serviceentry/conversion.go``); weight 0 means 1
   (``model.GetLoadBalancingWeight``). Resolution DNS without endpoints resolves the host
   itself (``convertResolution``: STRICT_DNS on the host name).
3. The DestinationRule whose ``host`` equals the SE host applies, with Istio's documented
   defaults for every unset outlier-detection field (``cluster_traffic_policy.go``
   ``applyOutlierDetection``).

Cross-object rules are checked here: one DestinationRule per host, one ServiceEntry per
host and port. Wildcard hosts are not served yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from extproc.core.policy import (
    Endpoint,
    Failover,
    LbAlgorithm,
    Locality,
    LocalityLbSetting,
    OutlierDetection,
    Policy,
    Resolution,
    Service,
)
from extproc.errors import ConfigError, Problem
from extproc.istio.schema import (
    DestinationRule,
    OutlierDetectionSpec,
    Parsed,
    ServiceEntry,
    ServicePort,
    Source,
    lb_algorithm,
    parse_duration,
)

__all__ = ["HTTP_PROTOCOLS", "compile_policy"]

# Protocols whose requests pass through Envoy's HTTP filters (where ext_proc runs). An unset
# protocol is sniffed by Istio; extproc only sees it if it is HTTP, so it is served as HTTP.
HTTP_PROTOCOLS: Final = frozenset({"", "HTTP", "HTTP2", "GRPC"})

# Istio's documented OutlierDetection defaults (networking/v1alpha3/destination_rule.proto).
_DEFAULT_CONSECUTIVE_5XX: Final = 5
_DEFAULT_INTERVAL_NS: Final = 10 * 1_000_000_000
_DEFAULT_BASE_EJECTION_NS: Final = 30 * 1_000_000_000
_DEFAULT_MAX_EJECTION_PERCENT: Final = 10  # Envoy's default; Istio sets it only when > 0


@dataclass(slots=True)
class _Rule:
    """A DestinationRule with where it came from, and whether any service used it."""

    source: Source
    dr: DestinationRule
    used: bool = False


@dataclass(slots=True)
class _Compiler:
    always_eject_one_host: bool
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    rules: dict[str, _Rule] = field(default_factory=dict)
    declared: dict[tuple[str, int], Source] = field(default_factory=dict)

    def collect_rules(self, objects: Sequence[Parsed]) -> None:
        for parsed in objects:
            if not isinstance(parsed.obj, DestinationRule):
                continue
            source, host = parsed.source, _normalize(parsed.obj.spec.host)
            if "*" in host:
                self.warnings.append(
                    source.problem("spec.host", "wildcard hosts are not supported yet, ignored")
                )
                continue
            if (first := self.rules.get(host)) is not None:
                self.errors.append(
                    source.problem(
                        "spec.host",
                        f'"{host}" is also the host of {first.source.cite()}; '
                        "extproc supports one DestinationRule per host",
                    )
                )
                continue
            self.rules[host] = _Rule(source, parsed.obj)

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
            if "*" in host:
                self.warnings.append(
                    source.problem(
                        f"spec.hosts[{i}]", "wildcard hosts are not supported yet, ignored"
                    )
                )
                continue
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
                self.services.append(self.service(source, se, host, port))

    def service(self, source: Source, se: ServiceEntry, host: str, port: ServicePort) -> Service:
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
            )
            for ep in spec.endpoints
        )
        # 2. DNS without endpoints: Envoy resolves the host name itself.
        if spec.resolution == "DNS" and not endpoints:
            endpoints = (Endpoint(address=host, port=default_port),)

        lb = LbAlgorithm.LEAST_REQUEST  # Istio's default without a DestinationRule
        outlier: OutlierDetection | None = None
        locality_lb = LocalityLbSetting()
        rule = self.rules.get(host)
        if rule is not None:
            rule.used = True
            policy = rule.dr.spec.traffic_policy
            if policy is not None and policy.load_balancer is not None:
                lb = lb_algorithm(policy.load_balancer.simple)
                lls = policy.load_balancer.locality_lb_setting
                if lls is not None:
                    locality_lb = LocalityLbSetting(
                        enabled=lls.enabled is not False,
                        failover=tuple(Failover(f.from_, f.to) for f in lls.failover),
                    )
            if policy is not None and policy.outlier_detection is not None:
                outlier = self.outlier_detection(policy.outlier_detection)
                self.check_ejection(rule.source, outlier, len(endpoints), host, port.number)

        return Service(
            host=host,
            port=port.number,
            port_name=port.name,
            protocol=port.protocol.upper(),
            resolution=Resolution(spec.resolution),
            endpoints=endpoints,
            lb_algorithm=lb,
            outlier_detection=outlier,
            locality_lb=locality_lb,
            source=f'{source.file}: ServiceEntry "{source.name}"',
        )

    def outlier_detection(self, od: OutlierDetectionSpec) -> OutlierDetection:
        interval_ns = _nanos(od.interval, _DEFAULT_INTERVAL_NS)
        base_ns = _nanos(od.base_ejection_time, _DEFAULT_BASE_EJECTION_NS)
        consecutive = od.consecutive_5xx_errors
        return OutlierDetection(
            consecutive_5xx_errors=_DEFAULT_CONSECUTIVE_5XX if consecutive is None else consecutive,
            interval_s=interval_ns / 1e9,
            base_ejection_time_s=base_ns / 1e9,
            # 0 and unset both leave Envoy's default (applyOutlierDetection sets it only if > 0).
            max_ejection_percent=od.max_ejection_percent or _DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent=od.min_health_percent or 0,
            always_eject_one_host=self.always_eject_one_host,
        )

    def check_ejection(
        self, source: Source, outlier: OutlierDetection, endpoints: int, host: str, port: int
    ) -> None:
        """Warn when Envoy >= 1.28 would refuse even the first ejection.

        Envoy's gate (``DetectorImpl::ejectHost``, strict since 1.28): eject only if
        ``100 * (ejected + 1) / hosts <= max_ejection_percent``. The first ejection is the
        easiest; if it fails, the DestinationRule never ejects anything.
        """
        if endpoints == 0:
            return
        share = 100 / endpoints
        limit = outlier.max_ejection_percent
        if share <= limit:
            return
        cluster = f"outbound|{port}||{host}"
        if self.always_eject_one_host:
            ours = (
                "extproc allows the first ejection by default (Envoy's always_eject_one_host, "
                "the rule the seed relied on)"
            )
        else:
            ours = "extproc applies the same strict rule (always_eject_one_host is off)"
        self.warnings.append(
            source.problem(
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                f"on current Istio/Envoy (>= 1.28, strict max_ejection_percent) this "
                f"DestinationRule never ejects any endpoint of {cluster} "
                f"(1 of {endpoints} = {_percent(share)}% > {limit}%); {ours}; "
                "setting maxEjectionPercent: 100 makes both agree",
            )
        )

    def report_unused_rules(self) -> None:
        for host, rule in self.rules.items():
            if not rule.used:
                self.warnings.append(
                    rule.source.problem(
                        "spec.host",
                        f'"{host}" matches no ServiceEntry host (HTTP port); '
                        "this DestinationRule is ignored",
                    )
                )


def compile_policy(
    objects: Sequence[Parsed],
    *,
    always_eject_one_host: bool = True,
    warnings: Sequence[Problem] = (),
) -> Policy:
    """Build the policy from validated objects, in document order.

    Args:
        objects: the ServiceEntries and DestinationRules, as ``schema.parse_object`` returned
            them.
        always_eject_one_host: copied into every ``OutlierDetection`` (see there).
        warnings: findings of earlier steps, kept ahead of this step's in ``Policy.warnings``.

    Raises:
        ConfigError: with every cross-object problem (duplicate DestinationRule host,
            host and port declared twice); nothing is half-applied.
    """
    compiler = _Compiler(always_eject_one_host)
    compiler.collect_rules(objects)
    for parsed in objects:
        if isinstance(parsed.obj, ServiceEntry):
            compiler.add_service_entry(parsed.source, parsed.obj)
    compiler.report_unused_rules()
    if compiler.errors:
        raise ConfigError(compiler.errors)
    all_warnings = [*warnings, *compiler.warnings]
    return Policy(
        services=tuple(compiler.services),
        warnings=tuple(str(w) for w in all_warnings),
    )


def _normalize(host: str) -> str:
    # Requests are matched lowercased and without the trailing dot (Policy.find).
    return host.lower().rstrip(".")


def _nanos(text: str | None, default: int) -> int:
    if text is None:
        return default
    nanos = parse_duration(text)
    assert nanos is not None  # validated by the schema
    return nanos


def _percent(value: float) -> str:
    """``50``, ``33.3``, ``12.5``: one decimal at most, no trailing zero."""
    return f"{value:.1f}".rstrip("0").rstrip(".")
