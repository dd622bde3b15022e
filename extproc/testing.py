"""Public test helpers: a clock you move by hand and small builders for compiled services.

Our own tests use exactly these, so they stay honest; users get them to test their policies
without YAML or a network. Nothing here reads real time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extproc.core.policy import (
    DomainIndex,
    Endpoint,
    Failover,
    LbAlgorithm,
    Locality,
    LocalityLbSetting,
    OutlierDetection,
    Policy,
    Resolution,
    Service,
    authority_key,
    route_domains,
)

__all__ = [
    "BLOG_OUTLIER",
    "FakeClock",
    "endpoint",
    "failover",
    "find_service",
    "outlier",
    "service",
]


class FakeClock:
    """A ``Clock`` (see ``extproc.clock``) that only moves when told to."""

    def __init__(self, start: float = 0.0, *, wall_start: float = 0.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def wall(self) -> float:
        """The fake wall clock: ``wall_start`` at the start, moving with ``advance``."""
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> float:
        """Move time forward and return the new time.

        Raises:
            ValueError: ``seconds`` is negative (a monotonic clock never goes back).
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back {seconds} s")
        self._now += seconds
        return self._now


def outlier(
    consecutive_5xx_errors: int = 1,
    interval_s: float = 15.0,
    base_ejection_time_s: float = 60.0,
    *,
    max_ejection_percent: int = 10,
    min_health_percent: int = 0,
    always_eject_one_host: bool = True,
) -> OutlierDetection:
    """Outlier detection with the blog's values (1 error, 15 s interval, 1 m ejection).

    The remaining fields keep Istio's defaults (``maxEjectionPercent`` 10,
    ``minHealthPercent`` 0) and the pre-1.28 first-ejection rule the blog relies on.
    """
    return OutlierDetection(
        consecutive_5xx_errors=consecutive_5xx_errors,
        interval_s=interval_s,
        base_ejection_time_s=base_ejection_time_s,
        max_ejection_percent=max_ejection_percent,
        min_health_percent=min_health_percent,
        always_eject_one_host=always_eject_one_host,
    )


BLOG_OUTLIER = outlier()
"""The blog DestinationRule's ``outlierDetection``."""


def endpoint(address: str, locality: str = "", *, port: int = 443, weight: int = 1) -> Endpoint:
    """One ServiceEntry endpoint; ``locality`` is Istio's ``region/zone/subzone`` string."""
    return Endpoint(address=address, port=port, locality=Locality.parse(locality), weight=weight)


def failover(*pairs: tuple[str, str]) -> tuple[Failover, ...]:
    """``localityLbSetting.failover`` entries from ``(from, to)`` region pairs."""
    return tuple(Failover(from_region=src, to_region=dst) for src, dst in pairs)


def find_service(policy: Policy, host: str, port: int | None) -> Service | None:
    """The service a request's ``:authority`` host (and port, when given) reaches.

    The same answer as Envoy's virtual-host match over ``route_domains`` (what the rendered
    routes and ``ServiceTable.lookup`` use), without building any cluster state.
    """
    return DomainIndex(route_domains(policy.services)).find(authority_key(host, port))


def service(
    endpoints: Sequence[Endpoint | tuple[str, str]] = (),
    *,
    outlier: OutlierDetection | None = None,
    failover: Sequence[Failover] = (),
    lb: LbAlgorithm = LbAlgorithm.ROUND_ROBIN,
    locality_lb_enabled: bool = True,
    resolution: Resolution = Resolution.STATIC,
    host: str = "mydb.com",
    port: int = 80,
) -> Service:
    """A compiled ``Service`` like the blog's ``mydb.com``, with just the parts a test names.

    Args:
        endpoints: ``Endpoint`` values or ``(address, locality)`` pairs (port 443).
        outlier: The DestinationRule's outlier detection; None means none, so no failover.
        failover: ``localityLbSetting.failover`` entries (see ``failover()``).
        lb: ``loadBalancer.simple``; the blog uses ROUND_ROBIN.
        locality_lb_enabled: ``localityLbSetting.enabled``.
        resolution: STATIC hosts are the endpoint addresses; DNS hosts come from
            ``ClusterState.set_endpoint_addresses``.
        host: The ServiceEntry host.
        port: The ServiceEntry port.
    """
    built = tuple(e if isinstance(e, Endpoint) else endpoint(e[0], e[1]) for e in endpoints)
    return Service(
        host=host,
        port=port,
        port_name="http",
        protocol="HTTP",
        resolution=resolution,
        endpoints=built,
        lb_algorithm=lb,
        outlier_detection=outlier,
        locality_lb=LocalityLbSetting(enabled=locality_lb_enabled, failover=tuple(failover)),
        source="extproc.testing",
    )


# -- ext_proc messages as Envoy sends them (headers in raw_value, attributes as a Struct) --


def request_headers(authority: str, path: str = "/") -> Any:
    """A ``ProcessingRequest`` carrying request headers, as Envoy 1.40 sends them."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    headers = [(":authority", authority), (":path", path), (":method", "GET")]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
            ),
            end_of_stream=True,
        )
    )


def response_headers(
    status: int,
    *,
    code_details: str = "via_upstream",
    flags: int = 0,
    attempts: int = 1,
    upstream: str = "",
) -> Any:
    """A ``ProcessingRequest`` carrying response headers and the attributes we ask for.

    ``upstream`` is ``upstream.address``, the ``ip:port`` of the last attempt; left out, the
    attribute is absent (no upstream was tried).
    """
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    request = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=":status", raw_value=str(status).encode())]
            )
        )
    )
    attributes = request.attributes["envoy.filters.http.ext_proc"].fields
    attributes["response.code_details"].string_value = code_details
    attributes["response.flags"].number_value = flags
    attributes["upstream.request_attempt_count"].number_value = attempts
    if upstream:
        attributes["upstream.address"].string_value = upstream
    return request


def routed_host(response: Any) -> str | None:
    """The ``ip:port`` a request-headers answer routes to, or None (an immediate reply)."""
    fields = response.dynamic_metadata.fields
    if "extproc" not in fields:
        return None
    return str(fields["extproc"].struct_value.fields["host"].string_value)
