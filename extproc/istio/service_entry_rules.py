"""Istio's rules for a ServiceEntry (``ValidateServiceEntry``), one named rule per concern.

From ``pkg/config/validation/validation.go``, with Istio's messages, for what extproc serves:
hosts, ports, location, resolution and the endpoints it allows, and the weights Envoy adds up.
What extproc cannot serve (resolution NONE and DYNAMIC_DNS, unix sockets) is an error here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from extproc.core.policy import is_ip
from extproc.istio.field_rules import (
    UINT32_MAX,
    domain_error,
    fqdn_error,
    port_error,
    port_name_error,
    uint32_error,
)
from extproc.istio.findings import Checker
from extproc.istio.literal import show
from extproc.istio.models import ServiceEntry, WorkloadEntry

__all__ = ["check_service_entry"]

_PROTOCOLS: Final = frozenset(
    # pkg/config/protocol/instance.go Parse (case-insensitive)
    {"TCP", "UDP", "GRPC", "GRPC-WEB", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS", "TLS"}
    | {"MONGO", "REDIS", "MYSQL"}
)
# Instance.IsHTTP and Instance.IsTLS, same file.
_ISTIO_HTTP_PROTOCOLS: Final = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB"})
_ISTIO_TLS_PROTOCOLS: Final = frozenset({"HTTPS", "TLS"})

_RESOLUTIONS: Final = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")
_UNSUPPORTED_RESOLUTION: Final[Mapping[str, str]] = {
    "NONE": "extproc must know the endpoints it chooses between",
    "DYNAMIC_DNS": "it resolves wildcard hosts per request",
}
_LOCATIONS: Final = ("MESH_EXTERNAL", "MESH_INTERNAL")


def check_service_entry(se: ServiceEntry, check: Checker) -> None:
    """``ValidateServiceEntry`` (pkg/config/validation/validation.go), for what we serve."""
    _check_hosts(se, check)
    port_names = _check_ports(se, check)
    _check_location(se, check)
    _check_resolution(se, check)
    _check_endpoints_for_resolution(se, check)
    for j, endpoint in enumerate(se.spec.endpoints):
        _check_endpoint(endpoint, f"spec.endpoints[{j}]", se.spec.resolution, port_names, check)
    _check_total_weight(se, check)
    _check_shared_ports(se, check)


def _check_hosts(se: ServiceEntry, check: Checker) -> None:
    """At least one host, each a domain Istio accepts (a wildcard opens it, if any)."""
    if not se.spec.hosts:
        check.error("spec.hosts", "service entry must have at least one host")
    for i, host in enumerate(se.spec.hosts):
        where = f"spec.hosts[{i}]"
        if host == "*":  # a full wildcard would match every request
            check.error(where, 'invalid host "*"')
        elif (problem := domain_error(host)) is not None:
            check.error(where, problem)
        elif "*" in host and not host.startswith("*."):  # agent.ValidatePartialWildCard
            check.warn(where, f"partial wildcard {show(host)} not allowed")


def _check_ports(se: ServiceEntry, check: Checker) -> set[str]:
    """Each port named, numbered and with a known protocol, names and numbers unique.

    Returns:
        The port names, which endpoints' ``ports`` refer to.
    """
    names: set[str] = set()
    numbers: set[int] = set()
    for i, port in enumerate(se.spec.ports):
        where = f"spec.ports[{i}]"
        if not port.name:
            check.error(f"{where}.name", "is required")
        elif (problem := port_name_error(port.name)) is not None:
            check.error(f"{where}.name", problem)
        elif port.name in names:
            check.error(
                f"{where}.name", f"service entry port name {show(port.name)} already defined"
            )
        names.add(port.name)
        if (problem := port_error(port.number)) is not None:
            check.error(f"{where}.number", problem)
        elif port.number in numbers:
            check.error(f"{where}.number", f"service entry port {port.number} already defined")
        numbers.add(port.number)
        if port.target_port != 0 and (problem := port_error(port.target_port)) is not None:
            check.error(f"{where}.targetPort", problem)
        if port.protocol and port.protocol.upper() not in _PROTOCOLS:  # ValidateProtocol
            check.error(f"{where}.protocol", f"unsupported protocol {show(port.protocol)}")
    return names


def _check_location(se: ServiceEntry, check: Checker) -> None:
    location = se.spec.location
    if location and location not in _LOCATIONS:
        check.error(
            "spec.location",
            f"unknown location {show(location)}; expected {' or '.join(_LOCATIONS)}",
        )


def _check_resolution(se: ServiceEntry, check: Checker) -> None:
    """A resolution extproc serves: DNS, DNS_ROUND_ROBIN or STATIC (unset is NONE)."""
    resolution = se.spec.resolution
    if not resolution:
        check.error(
            "spec.resolution",
            f"is unset, which Istio reads as NONE; NONE is not supported "
            f"({_UNSUPPORTED_RESOLUTION['NONE']}): use DNS or STATIC",
        )
    elif resolution in _UNSUPPORTED_RESOLUTION:
        check.error(
            "spec.resolution",
            f"{resolution} is not supported ({_UNSUPPORTED_RESOLUTION[resolution]}): "
            "use DNS or STATIC",
        )
    elif resolution not in _RESOLUTIONS:
        check.error(
            "spec.resolution",
            f"unknown resolution {show(resolution)}; expected one of {', '.join(_RESOLUTIONS)}",
        )


def _check_endpoints_for_resolution(se: ServiceEntry, check: Checker) -> None:
    """The endpoints a resolution needs, or allows: FQDN hosts for DNS without endpoints."""
    spec = se.spec
    resolution = spec.resolution
    if "workloadSelector" in (spec.model_extra or {}) and spec.endpoints:
        check.error(
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        )
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints:
        # Without endpoints Envoy resolves the hosts themselves: they must be real names, so
        # a wildcard host (*.example.com) needs endpoints.
        for i, host in enumerate(spec.hosts):
            if host != "*" and domain_error(host) is None and fqdn_error(host) is not None:
                check.error(
                    f"spec.hosts[{i}]",
                    "hosts must be FQDN if no endpoints are provided for resolution mode "
                    f"{resolution}",
                )
    if resolution == "DNS_ROUND_ROBIN" and len(spec.endpoints) > 1:
        # LOGICAL_DNS has one host: pilot cannot build it from several endpoints.
        check.error(
            "spec.endpoints",
            "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
        )
    if resolution == "STATIC" and not spec.endpoints:
        check.warn(
            "spec.endpoints", "STATIC resolution without endpoints: no request can be served"
        )


def _check_endpoint(
    endpoint: WorkloadEntry, where: str, resolution: str, port_names: set[str], check: Checker
) -> None:
    """One ``endpoints[]`` entry: its address for the resolution, its ports and weight."""
    address = endpoint.address
    if not address:
        check.error(f"{where}.address", "is required")
    elif address.startswith("unix://"):
        check.error(f"{where}.address", "unix domain socket endpoints are not supported")
    elif resolution == "STATIC" and not is_ip(address):
        check.error(
            f"{where}.address", f"endpoint address {show(address)} is not a valid IP address"
        )
    elif not is_ip(address) and fqdn_error(address) is not None:
        check.error(
            f"{where}.address",
            f"endpoint address {show(address)} is not a valid FQDN or an IP address",
        )
    for name, port in endpoint.ports.items():
        here = f"{where}.ports.{name}"
        if (problem := port_error(port)) is not None:
            check.error(here, problem)
        elif name not in port_names:
            # Istio rejects this ("endpoint port %v is not defined by the service entry");
            # the port would never be used, so extproc only warns.
            declared = ", ".join(sorted(port_names)) or "none"
            check.warn(
                here,
                f"endpoint port {port} is not defined by the service entry "
                f"(no port named {show(name)}; declared: {declared}), ignored",
            )
    if endpoint.weight < 0:
        check.error(f"{where}.weight", f"weight {endpoint.weight} < 0")
    elif (problem := uint32_error(endpoint.weight, f"{where}.weight")) is not None:
        check.error(f"{where}.weight", problem)


def _check_total_weight(se: ServiceEntry, check: Checker) -> None:
    """Envoy refuses a cluster whose host weights in a locality, or locality weights in a
    priority, add up past uint32 (upstream_impl.cc); the total bounds both."""
    endpoints = se.spec.endpoints
    total = sum(max(1, e.weight) for e in endpoints)
    if len(endpoints) > 1 and total > UINT32_MAX and not check.failed:
        check.error(
            "spec.endpoints",
            f"the endpoint weights add up to {total}, more than {UINT32_MAX} "
            "(Envoy's limit for the endpoints of one locality and the localities of a priority)",
        )


def _check_shared_ports(se: ServiceEntry, check: Checker) -> None:
    """Several hosts share one listener port: only HTTP (authority) or TLS (SNI) tells them
    apart. An unset protocol counts as neither, as in Istio."""
    if len(se.spec.hosts) <= 1:
        return
    for i, port in enumerate(se.spec.ports):
        protocol = port.protocol.upper()
        if protocol not in _ISTIO_HTTP_PROTOCOLS and protocol not in _ISTIO_TLS_PROTOCOLS:
            check.error(
                f"spec.ports[{i}].protocol", "multiple hosts provided with non-HTTP, non-TLS ports"
            )
            return
