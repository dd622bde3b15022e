"""Istio's rules for a DestinationRule (``ValidateDestinationRule``) and its traffic policy.

From ``pkg/config/validation/validation.go``, with Istio's messages: the host, the traffic
policy and its port-level settings, outlier detection, the load balancer and the connection
pool, and extproc's ``extproc.io/upstream-sni`` annotation. The field rules they share with
other kinds (TLS, localities, durations) are ``field_rules``'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Final

from extproc.istio import api
from extproc.istio.duration import parse_duration
from extproc.istio.field_rules import (
    check_duration,
    check_locality_lb,
    check_tls,
    domain_error,
    label_error,
    port_error,
    uint32_error,
)
from extproc.istio.findings import Checker
from extproc.istio.literal import show
from extproc.istio.models import (
    ORIGINATING_TLS_MODES,
    UPSTREAM_SNI_ANNOTATION,
    UPSTREAM_SNI_VALUES,
    ConnectionPoolSpec,
    ConsistentHashSpec,
    DestinationRule,
    LoadBalancerSpec,
    Model,
    OutlierDetectionSpec,
    PortTrafficPolicySpec,
    TrafficPolicySpec,
    WarmupSpec,
    tls_settings_of,
)

__all__ = ["check_destination_rule"]

# LoadBalancerSettings.SimpleLB in networking/v1alpha3/destination_rule.proto
_SIMPLE_LB: Final = (
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
)
# ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy
_H2_UPGRADE_POLICIES: Final = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
INT32_MAX: Final = 2**31 - 1
_DNS1123_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PORT_POLICY_FIELDS: Final = frozenset(api.PORT_TRAFFIC_POLICY.field_names()) - {"port"}


def check_destination_rule(dr: DestinationRule, check: Checker) -> None:
    """``ValidateDestinationRule`` (pkg/config/validation/validation.go), for what we serve."""
    spec = dr.spec
    if not spec.host:
        check.error("spec.host", "is required")
    elif (problem := domain_error(spec.host)) is not None:
        check.error("spec.host", problem)
    _check_upstream_sni(dr, check)
    _check_subsets(dr, check)
    if spec.traffic_policy is not None:
        _check_traffic_policy(spec.traffic_policy, "spec.trafficPolicy", check)


def _check_traffic_policy(policy: TrafficPolicySpec, where: str, check: Checker) -> None:
    """``validateTrafficPolicy``."""
    # An empty trafficPolicy is a mistake, not a no-op.
    # (An empty portLevelSettings list is unset, as an empty repeated field is in protobuf.)
    written = _written(policy, api.TRAFFIC_POLICY.field_names())
    if not policy.port_level_settings:
        written.discard("portLevelSettings")
    if not written:
        check.error(where, "traffic policy must have at least one field")
    _check_policy_components(policy, where, check)
    _check_port_level_settings(policy.port_level_settings, f"{where}.portLevelSettings", check)


def _check_subsets(dr: DestinationRule, check: Checker) -> None:
    """``ValidateDestinationRule``'s subsets: unique names, ``validateSubset`` each."""
    seen: set[str] = set()
    for i, subset in enumerate(dr.spec.subsets):
        where = f"spec.subsets[{i}]"
        if subset.name in seen:
            check.error(f"{where}.name", f"duplicate subset names: {subset.name}")
        seen.add(subset.name)
        if not subset.name:
            check.error(f"{where}.name", "subset name cannot be empty")
        elif not _DNS1123_LABEL.fullmatch(subset.name) or len(subset.name) > 63:
            check.error(f"{where}.name", f"subset name is invalid: {subset.name}")
        for key, value in subset.labels.items():
            if (problem := label_error(key, value)) is not None:
                check.error(f"{where}.labels.{key}", problem)
        if subset.traffic_policy is not None:
            _check_traffic_policy(subset.traffic_policy, f"{where}.trafficPolicy", check)


def _check_policy_components(
    policy: TrafficPolicySpec | PortTrafficPolicySpec, where: str, check: Checker
) -> None:
    """What ``validateTrafficPolicy`` and ``validatePortTrafficPolicies`` both check."""
    if policy.outlier_detection is not None:
        _check_outlier_detection(policy.outlier_detection, f"{where}.outlierDetection", check)
    if policy.connection_pool is not None:
        _check_connection_pool(policy.connection_pool, f"{where}.connectionPool", check)
    if policy.tls is not None:
        check_tls(policy.tls, f"{where}.tls", check)
    if policy.load_balancer is not None:
        # validateLoadBalancer(lb, outlier): failover needs the same level's outlierDetection.
        _check_load_balancer(
            policy.load_balancer,
            f"{where}.loadBalancer",
            policy.outlier_detection is not None,
            check,
        )


def _written(obj: Model, names: Iterable[str]) -> set[str]:
    """The fields written in ``obj``, by their Istio names, among ``names`` (Istio's)."""
    declared = type(obj).model_fields
    written = {declared[n].alias or n for n in obj.model_fields_set if n in declared}
    return (written | set(obj.model_extra or {})) & set(names)


def _check_port_level_settings(
    settings: Sequence[PortTrafficPolicySpec], where: str, check: Checker
) -> None:
    """``validatePortTrafficPolicies``, plus warnings for entries that can never apply."""
    first: dict[int, int] = {}
    for i, entry in enumerate(settings):
        here = f"{where}[{i}]"
        if entry.port is None:
            check.error(f"{here}.port", "portTrafficPolicy must have valid port")
        if not _written(entry, _PORT_POLICY_FIELDS):
            check.error(here, "port traffic policy must have at least one field")
        else:
            _check_policy_components(entry, here, check)
        if entry.port is None:
            continue
        number = entry.port.number
        if number < 0 or (problem := uint32_error(number, f"{here}.port.number")):
            check.error(f"{here}.port.number", problem or f"must be 0 or more, got {number}")
        elif (problem := port_error(number)) is not None:
            # Istio accepts it (PortSelector.number is any uint32); it matches no port.
            check.warn(f"{here}.port.number", f"{problem}; this entry never applies")
        elif number in first:
            # GetPortLevelTrafficPolicy takes the first entry for a port (break).
            check.warn(
                f"{here}.port.number",
                f"port {number} is already set by portLevelSettings[{first[number]}]; "
                "Istio applies the first entry for a port, and so does extproc: "
                "this entry is ignored",
            )
        else:
            first[number] = i


def _check_connection_pool(pool: ConnectionPoolSpec, where: str, check: Checker) -> None:
    """``validateConnectionPool`` (pkg/config/validation/validation.go), with its messages."""
    if pool.tcp is None and pool.http is None:
        check.error(where, "connection pool must have at least one field")
    if (http := pool.http) is not None:
        here = f"{where}.http"
        for alias, value, what in (
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests",
            ),
            ("http2MaxRequests", http.http2_max_requests, "http2 max requests"),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection",
            ),
            ("maxRetries", http.max_retries, "max retries"),
            ("maxConcurrentStreams", http.max_concurrent_streams, "max concurrent streams"),
        ):
            _check_int32(value, f"{here}.{alias}", what, check)
        if http.idle_timeout is not None:
            check_duration(http.idle_timeout, f"{here}.idleTimeout", check)
        if http.h2_upgrade_policy not in _H2_UPGRADE_POLICIES:
            check.error(
                f"{here}.h2UpgradePolicy",
                f"Unsupported value: {show(http.h2_upgrade_policy)}: supported values: "
                + ", ".join(map(show, _H2_UPGRADE_POLICIES)),
            )
        elif http.h2_upgrade_policy == "UPGRADE" and http.use_client_protocol:
            check.error(
                f"{here}.useClientProtocol",
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            )
        if (keepalive := http.http2_keep_alive) is not None:
            for alias, text in (("interval", keepalive.interval), ("timeout", keepalive.timeout)):
                if text is None:
                    check.error(f"{here}.http2KeepAlive", f"http2 keepalive {alias} is required")
                else:
                    check_duration(text, f"{here}.http2KeepAlive.{alias}", check)
    if (tcp := pool.tcp) is not None:
        here = f"{where}.tcp"
        _check_int32(tcp.max_connections, f"{here}.maxConnections", "max connections", check)
        for alias, text in (
            ("connectTimeout", tcp.connect_timeout),
            ("maxConnectionDuration", tcp.max_connection_duration),
        ):
            if text is not None:
                check_duration(text, f"{here}.{alias}", check)
        # "0s" disables the idle timeout, so it is not held to the 1ms minimum.
        if tcp.idle_timeout is not None and parse_duration(tcp.idle_timeout) != 0:
            check_duration(tcp.idle_timeout, f"{here}.idleTimeout", check)
        if (tcp_keepalive := tcp.tcp_keepalive) is not None:
            if tcp_keepalive.probes is not None:
                # uint32 in the CRD (minimum 0, maximum 4294967295): the API server's words.
                path = f"{here}.tcpKeepalive.probes"
                if tcp_keepalive.probes < 0:
                    check.error(
                        path,
                        f"Invalid value: {tcp_keepalive.probes}: {path} in body should be "
                        "greater than or equal to 0",
                    )
                elif (problem := uint32_error(tcp_keepalive.probes, path)) is not None:
                    check.error(path, problem)
            for alias, text in (("time", tcp_keepalive.time), ("interval", tcp_keepalive.interval)):
                if text is not None:
                    check_duration(text, f"{here}.tcpKeepalive.{alias}", check)


def _check_int32(value: int, where: str, what: str, check: Checker) -> None:
    """An int32 field of the pool: Istio refuses a negative one; a larger one cannot decode."""
    if value < 0:
        check.error(where, f"{what} must be non-negative")
    elif value > INT32_MAX:
        check.error(where, f"{value} is out of range for an int32 (at most {INT32_MAX})")


def _check_upstream_sni(dr: DestinationRule, check: Checker) -> None:
    """extproc's ``extproc.io/upstream-sni`` annotation: a known value, and one that matters."""
    annotations = dr.metadata.annotations
    if UPSTREAM_SNI_ANNOTATION not in annotations:
        return
    where = f"metadata.annotations[{UPSTREAM_SNI_ANNOTATION}]"
    value = annotations[UPSTREAM_SNI_ANNOTATION]
    if value not in UPSTREAM_SNI_VALUES:
        check.error(
            where,
            f"{show(value)} is not one of {', '.join(map(show, UPSTREAM_SNI_VALUES))}",
        )
        return
    if value != "endpoint":
        return
    originating = False
    for path, tls in tls_settings_of(dr):
        if tls.mode not in ORIGINATING_TLS_MODES:
            continue
        originating = True
        if tls.sni:
            check.error(
                f"{path}.sni",
                f"cannot be combined with the annotation {UPSTREAM_SNI_ANNOTATION}: endpoint, "
                "which sends each endpoint's own name as SNI: remove one of them",
            )
    if not originating:
        check.warn(
            where,
            "has no effect: this DestinationRule originates no TLS (tls.mode SIMPLE or MUTUAL)",
        )


def _check_outlier_detection(od: OutlierDetectionSpec, where: str, check: Checker) -> None:
    """``validateOutlierDetection``."""
    for alias, value in (
        ("consecutive5xxErrors", od.consecutive_5xx_errors),
        ("consecutiveGatewayErrors", od.consecutive_gateway_errors),
        ("consecutiveLocalOriginFailures", od.consecutive_local_origin_failures),
    ):
        if value is not None and value < 0:  # UInt32Value
            check.error(f"{where}.{alias}", f"must be 0 or more, got {value}")
        elif value is not None and (problem := uint32_error(value, f"{where}.{alias}")):
            check.error(f"{where}.{alias}", problem)
    for i, code in enumerate(od.outlier_detection_http_error_codes):
        # Istio checks the range in the CRD schema only (istio/api destination_rule.proto:
        # protoc-gen-crd list-value-validation Minimum=100, Maximum=599), so the message is
        # the API server's (kube-openapi validate).
        here = f"{where}.outlierDetectionHttpErrorCodes[{i}]"
        if code < 100:
            check.error(
                here,
                f"Invalid value: {code}: {here} in body should be greater than or equal to 100",
            )
        elif code > 599:
            check.error(
                here, f"Invalid value: {code}: {here} in body should be less than or equal to 599"
            )
    if (
        not od.split_external_local_origin_errors
        and (od.consecutive_local_origin_failures or 0) > 0
    ):
        check.error(
            f"{where}.consecutiveLocalOriginFailures",
            "outlier detection consecutive local origin failures is specified, "
            "but split external local origin errors is set to false",
        )
    for alias, text in (("interval", od.interval), ("baseEjectionTime", od.base_ejection_time)):
        if text is not None:
            check_duration(text, f"{where}.{alias}", check)
    for alias, percent in (
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ):
        if percent is not None and not 0 <= percent <= 100:  # ValidatePercent
            check.error(f"{where}.{alias}", f"percentage {percent} is not in range 0..100")


def _check_consistent_hash(spec: ConsistentHashSpec, where: str, check: Checker) -> None:
    """``validateLoadBalancer``'s consistentHash checks, with Istio's messages."""
    keys = [
        alias
        for alias, value in (
            ("httpHeaderName", spec.http_header_name),
            ("httpCookie", spec.http_cookie),
            ("useSourceIp", spec.use_source_ip),
            ("httpQueryParameterName", spec.http_query_parameter_name),
        )
        if value is not None
    ]
    if len(keys) > 1:  # the proto's hash_key oneof
        check.error(where, f"only one hash key can be set, not {', '.join(keys)}")
    elif not keys:
        # Pilot makes no hash policy, and Envoy's ring then hashes nothing: a random pick.
        check.warn(
            where,
            "no hash key (httpHeaderName, httpCookie, useSourceIp or "
            "httpQueryParameterName): Envoy picks at random",
        )
    if spec.ring_hash is not None and spec.maglev is not None:  # hash_algorithm oneof
        check.error(where, "only one of ringHash or maglev can be set")
    cookie = spec.http_cookie
    if cookie is not None:
        if not cookie.name:
            check.error(f"{where}.httpCookie.name", "name required for HttpCookie")
        seen: set[str] = set()
        for i, attribute in enumerate(cookie.attributes):
            here = f"{where}.httpCookie.attributes[{i}].name"
            if not attribute.name:
                check.error(here, "cookie attribute name cannot be empty")
            elif attribute.name in seen:
                check.error(here, f"duplicate cookie attribute name: {attribute.name}")
            seen.add(attribute.name)
    for alias, name in (
        ("httpHeaderName", spec.http_header_name),
        ("httpQueryParameterName", spec.http_query_parameter_name),
    ):
        if name == "":  # Envoy's hash policy takes no empty name (min_len 1)
            check.error(f"{where}.{alias}", "must not be empty")
    for alias, size in (
        ("minimumRingSize", spec.minimum_ring_size),
        ("ringHash.minimumRingSize", spec.ring_hash.minimum_ring_size if spec.ring_hash else 0),
        ("maglev.tableSize", spec.maglev.table_size if spec.maglev else 0),
    ):
        if size < 0:
            check.error(f"{where}.{alias}", f"{size} < 0")
        elif "RingSize" in alias and size > _MAX_RING_SIZE:
            check.error(
                f"{where}.{alias}", f"{size} > {_MAX_RING_SIZE}, the largest ring Envoy takes"
            )
    if spec.minimum_ring_size:
        check.warn(
            f"{where}.minimumRingSize",
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash "
            "configuration instead",
        )
        if spec.ring_hash is not None or spec.maglev is not None:
            check.error(
                f"{where}.minimumRingSize",
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            )
    if spec.maglev is not None:
        size = spec.maglev.table_size
        here = f"{where}.maglev.tableSize"
        if size == 0:
            check.error(here, "tableSize must be set for maglev")
        if size >= 5000011:
            check.error(here, "tableSize must be less than 5000011 for maglev")
        if not _is_prime(size):
            check.error(here, "tableSize must be a prime number for maglev")


#: ``RingHashLbConfig.minimum_ring_size`` ``lte: 8388608`` (Envoy's cluster.proto).
_MAX_RING_SIZE: Final = 8388608


def _is_prime(x: int) -> bool:
    """``isPrime`` as pilot has it (from Envoy's utility.cc): 0 is not, 1 to 3 are."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % d for d in range(3, math.isqrt(x) + 1, 2))


def _check_warmup(spec: WarmupSpec, where: str, check: Checker) -> None:
    """``validateLoadBalancer``'s warmup checks, with Istio's messages."""
    if spec.duration is None:
        check.error(f"{where}.duration", "duration is required")
    else:
        check_duration(spec.duration, f"{where}.duration", check)
    if spec.minimum_percent is not None and spec.minimum_percent > 100:
        check.error(
            f"{where}.minimumPercent", "minimumPercent value should be less than or equal to 100"
        )
    if spec.minimum_percent is not None and spec.minimum_percent < 0:
        check.error(f"{where}.minimumPercent", f"{spec.minimum_percent:g} < 0")
    if spec.aggression is not None and spec.aggression <= 0:
        check.error(f"{where}.aggression", "aggression should be greater than 0")


def _check_load_balancer(
    lb: LoadBalancerSpec, where: str, has_outlier_detection: bool, check: Checker
) -> None:
    if lb.simple is not None:
        if lb.consistent_hash is not None:
            check.error(where, "only one of simple or consistentHash can be set")  # proto oneof
        if lb.simple == "PASSTHROUGH":
            check.error(
                f"{where}.simple",
                "PASSTHROUGH is not supported (it forwards to the caller's original "
                "destination; there is no endpoint to choose)",
            )
        elif lb.simple == "LEAST_CONN":
            check.warn(
                f"{where}.simple",
                "LEAST_CONN is deprecated; Istio uses LEAST_REQUEST for it, and so does extproc",
            )
        elif lb.simple not in _SIMPLE_LB:
            check.error(
                f"{where}.simple",
                f"unknown load balancer {show(lb.simple)}; expected one of {', '.join(_SIMPLE_LB)}",
            )
    if lb.consistent_hash is not None:
        _check_consistent_hash(lb.consistent_hash, f"{where}.consistentHash", check)
    if lb.warmup is not None:
        _check_warmup(lb.warmup, f"{where}.warmup", check)
    warm = (
        "warmup"
        if lb.warmup is not None
        else ("warmupDurationSecs" if lb.warmup_duration_secs is not None else "")
    )
    if warm and (lb.consistent_hash is not None or lb.simple == "RANDOM"):
        # applyLoadBalancer writes a slow start config for ROUND_ROBIN and LEAST_REQUEST only.
        check.warn(
            f"{where}.{warm}",
            "has no effect with "
            + ("consistentHash" if lb.consistent_hash else "RANDOM")
            + ": Istio applies slow start to ROUND_ROBIN and LEAST_REQUEST only",
        )
    if lb.locality_lb_setting is not None:
        check_locality_lb(
            lb.locality_lb_setting, f"{where}.localityLbSetting", has_outlier_detection, check
        )
