"""What a loaded policy means for one workload, in words: ``extproc check``'s report.

Pure functions of a ``Policy`` (and a ``Workload``): no I/O. The priorities are the ones
``core.locality`` computes for the data path, so the report and the traffic agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from extproc.core.locality import LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE, endpoint_priorities
from extproc.core.policy import (
    UNLIMITED,
    ConnectionPool,
    Locality,
    Policy,
    Service,
    UpstreamProtocol,
    Workload,
    host_address,
)
from extproc.core.routes import HashOn, HttpRoute, MatchKind, StringMatch

__all__ = ["check_summary", "locality_text", "locality_warnings"]

# The failoverPriority labels Istio derives from a locality (``AugmentLabels``).
_LOCALITY_LABELS: Final = frozenset({LABEL_REGION, LABEL_ZONE, LABEL_SUBZONE})


def locality_text(locality: Locality) -> str:
    """A locality as written on the command line: ``us-east1/us-east1-b``; ``""`` if unset."""
    parts = [locality.region, locality.zone, locality.sub_zone]
    while parts and not parts[-1]:
        parts.pop()
    return "/".join(parts)


def _locality_orders(service: Service) -> bool:
    """Whether the workload's locality orders this service's endpoints into priorities.

    Istio's ``ApplyLocalityLoadBalancer``: only with ``localityLbSetting`` enabled (the
    mesh default), no ``distribute`` (weights, never priorities) and ``outlierDetection``
    set (without it Istio turns failover off: Envoy could not tell a dead endpoint). With
    ``failoverPriority`` alone, the locality counts only through the topology labels it
    gives (``topology.kubernetes.io/region`` and the like) among those labels.
    """
    setting = service.locality_lb
    if not setting.enabled or setting.distribute or service.outlier_detection is None:
        return False
    if setting.failover_priority and not setting.failover:
        keys = {entry.split("=")[0] for entry in setting.failover_priority}
        return bool(keys & _LOCALITY_LABELS)
    return True


def locality_warnings(policy: Policy, workload: Workload) -> list[str]:
    """Warn when the workload's region is none of the endpoints' regions, where it matters.

    A region that matches no endpoint (no ``--locality``, a typo, ``US-EAST1`` for
    ``us-east1``: Istio compares regions case-sensitively) puts every endpoint in the same
    tier, so locality failover silently does nothing. It matters only for services whose
    endpoints the locality orders (see ``_locality_orders``: ``outlierDetection`` set,
    locality LB enabled, no ``distribute``) and that have endpoints with a region: elsewhere
    every endpoint is in priority 0 whatever the locality, as in Istio. One warning for the
    config, listing the regions of those services.

    Returns:
        At most one message; empty when the locality matches or does not matter.
    """
    region = workload.locality.region
    affected = [
        s
        for s in policy.services
        if _locality_orders(s)
        and any(e.locality.region for e in s.endpoints)
        and region not in {e.locality.region for e in s.endpoints}
    ]
    if not affected:
        return []
    regions = sorted({e.locality.region for s in affected for e in s.endpoints} - {""})
    flat = all((p or 0) == 0 for s in affected for p in endpoint_priorities(s, workload))
    effect = (
        "every endpoint is in priority 0 and locality failover is off"
        if flat
        else "locality failover prefers no endpoint"
    )
    # Name the services only when the locality does match the others.
    ordered = [s for s in policy.services if _locality_orders(s)]
    where = ""
    if len(affected) < len(ordered):
        where = " in " + ", ".join(s.cluster_name for s in affected)
    message = (
        f"--locality {_quote(locality_text(workload.locality))} matches no endpoint's "
        f"region{where} (the config has: {', '.join(regions)}): {effect}"
    )
    same_but_case = [r for r in regions if r.lower() == region.lower()]
    if region and same_but_case:
        message += f'; regions are case-sensitive, as in Istio: did you mean "{same_but_case[0]}"?'
    return [message]


def check_summary(policy: Policy, workload: Workload | None) -> str:
    """What ``extproc check`` prints for a valid config.

    The objects read (by kind), the services (Istio's cluster names) with what applies to
    each, and the endpoints of each, in the column order of ``istioctl proxy-config
    endpoints``, as a fresh proxy would list them before any traffic (all healthy, no
    outlier ejected). With a workload, each endpoint's priority as Envoy gets it for that
    workload; an endpoint that gets no traffic at all (``distribute`` leaves its locality
    out) shows ``-``. DNS endpoints are shown by name: Envoy resolves them.
    """
    lines: list[str] = []
    total = sum(n for _, n in policy.objects)
    listed = ", ".join(f"{n} {kind}" for kind, n in policy.objects)
    lines.append(f"objects: {total}" + (f" ({listed})" if listed else ""))
    lines.append(f"services: {len(policy.services)}")
    for service in policy.services:
        lines.append(f"  {service.cluster_name}  {_describe(service)}")
        if service.routes:
            lines.append(f"    routes of {service.route_source}, in order:")
            lines += [f"      {_describe_route(route)}" for route in service.routes]
    header = ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER", "LOCALITY"]
    if workload is not None:
        header.append("PRIORITY")
        lines.append(f"endpoints for {_describe_workload(workload)}, before any traffic:")
    else:
        lines.append("endpoints, before any traffic (give --locality for their priorities):")
    rows = [header]
    for service in policy.services:
        priorities: Sequence[int | None] = (
            endpoint_priorities(service, workload) if workload is not None else ()
        )
        for i, endpoint in enumerate(service.endpoints):
            row = [
                host_address(endpoint.address, endpoint.port),
                "HEALTHY",
                "OK",
                service.cluster_name,
                str(endpoint.locality),
            ]
            if workload is not None:
                priority = priorities[i]
                row.append("-" if priority is None else str(priority))
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.extend(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows
    )
    return "\n".join(lines)


def _balancer(service: Service) -> str:
    """The cluster's load balancer as Envoy runs it: ``RING_HASH on header x-user``."""
    ring, slow = service.hash_ring, service.slow_start
    if ring is not None:
        size = "" if ring.size is None else f" (size {ring.size})"
        key = service.hash_key
        on = "" if key is None or key.on is HashOn.NOTHING else f" on {key.on.value}"
        name = f" {key.name}" if key is not None and key.name else ""
        return f"{ring.algorithm.value}{size}{on}{name}"
    if slow is not None:
        return f"{service.lb_algorithm.value} with slow start ({slow.window_s:g}s)"
    return service.lb_algorithm.value


def _describe(service: Service) -> str:
    count = len(service.endpoints)
    parts = [
        f"{count} endpoint{'' if count == 1 else 's'}",
        service.resolution.value,
        _balancer(service),
    ]
    od = service.outlier_detection
    if od is None:
        parts.append("no outlier detection")
    else:
        parts.append(
            f"outlier detection ({od.consecutive_5xx_errors} x 5xx, every {od.interval_s:g}s, "
            f"ejected {od.base_ejection_time_s:g}s, at most {od.max_ejection_percent}%)"
        )
    setting = service.locality_lb
    if not setting.enabled:
        parts.append("locality LB off")
    elif setting.distribute:
        parts.append("locality weights (distribute)")
    elif od is None:
        parts.append("no locality failover (it needs outlierDetection)")
    elif setting.failover_priority:
        parts.append("failoverPriority" + (" + failover" if setting.failover else ""))
    else:
        parts.append("locality failover")
    if (pool := _describe_pool(service.pool)) is not None:
        parts.append(pool)
    if service.tls is not None:
        parts.append(f"TLS {service.tls.mode.value}")
    return ", ".join(parts)


def _describe_route(route: HttpRoute) -> str:
    """``name: GET /path [x-h=v] -> timeout 2s, 3 retries on 5xx``, Envoy's order of checks."""
    match = route.match
    conditions = [f"{match.path.kind.value} {match.path.value}"]
    if not match.case_sensitive:
        conditions.append("any case")
    conditions += [
        f"{'no ' if h.invert else ''}{h.name} {_describe_match(h.match)}" for h in match.headers
    ]
    conditions += [f"?{name} {_describe_match(m)}" for name, m in match.query_params]
    source = route.source
    if source is not None:
        # Decided per workload when the routes are built (sourceMatchHTTP), not per request.
        conditions += [f"workload {name}={value}" for name, value in source.labels]
        conditions += [f"gateway {name}" for name in source.gateways]
        if source.namespace:
            conditions.append(f"namespace {source.namespace} (never: no workload namespace)")
    what = []
    if route.weighted:
        what.append("weights " + " / ".join(f"{w.cluster} {w.weight}" for w in route.weighted))
    what.append(f"timeout {route.timeout_s:g}s" if route.timeout_s else "no timeout")
    retries = route.retries
    if retries is None:
        what.append("no retries")
    else:
        on = retries.retry_on
        if retries.retriable_status_codes:
            on += " " + ",".join(map(str, retries.retriable_status_codes))
        what.append(f"{retries.num_retries} retries on {on}")
        if retries.per_try_timeout_s is not None:
            what.append(f"{retries.per_try_timeout_s:g}s per try")
    key = route.hash_key
    if key is not None and key.on is not HashOn.NOTHING:
        what.append(f"hash on {key.on.value}" + (f" {key.name}" if key.name else ""))
    return f"{route.name or '(unnamed)'}: {', '.join(conditions)} -> {', '.join(what)}"


def _describe_match(match: StringMatch) -> str:
    return "present" if match.kind is MatchKind.PRESENT else f"{match.kind.value} {match.value}"


def _describe_pool(pool: ConnectionPool) -> str | None:
    """The circuit breakers that can trip, and the upstream protocol when not HTTP/1.1."""
    limits = [
        f"{limit} {name}"
        for limit, name in (
            (pool.max_connections, "connections"),
            (pool.max_pending_requests, "pending"),
            (pool.max_requests, "requests"),
            (pool.max_retries, "retries"),
        )
        if limit != UNLIMITED
    ]
    if pool.protocol is UpstreamProtocol.HTTP2:
        limits.append("HTTP/2 upstream")
    elif pool.protocol is UpstreamProtocol.CLIENT:
        limits.append("client's protocol upstream")
    return f"pool ({', '.join(limits)})" if limits else None


def _describe_workload(workload: Workload) -> str:
    described = f"the locality {_quote(locality_text(workload.locality))}"
    if workload.labels:
        described += " and labels " + ",".join(f"{k}={v}" for k, v in workload.labels)
    return described


def _quote(text: str) -> str:
    return f'"{text}"'
