"""TLS origination compiled: a DestinationRule's ``tls`` as ``TlsSettings``, and the SNI it sends.

Pilot's ``constructUpstreamTLS`` and ``setAutoSniAndAutoSanValidation``
(``pilot/pkg/networking/core/cluster_tls.go``), reduced to what extproc renders; and what
``compile`` reports about the SNI when the endpoints are under other names than the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extproc.core.policy import Endpoint, TlsMode, TlsSettings, UpstreamSni, authority_key, is_ip
from extproc.errors import Problem
from extproc.istio.findings import Source
from extproc.istio.models import (
    ORIGINATING_TLS_MODES,
    UPSTREAM_SNI_ANNOTATION,
    ClientTlsSettingsSpec,
)

__all__ = ["SniFinding", "sni_finding", "tls_settings"]


def tls_settings(
    spec: ClientTlsSettingsSpec, sni_from: UpstreamSni, service_sans: Sequence[str]
) -> TlsSettings | None:
    """``tls`` as pilot's ``constructUpstreamTLS`` uses it; ``None`` for DISABLE (no TLS).

    The ServiceEntry's ``subjectAltNames`` stand in for the DestinationRule's when it has
    none. Without ``sni`` they change nothing: ``auto_san_validation`` replaces Envoy's SAN
    matchers with the SNI sent, so they are kept only with a fixed ``sni``.
    """
    if spec.mode not in ORIGINATING_TLS_MODES:
        return None  # DISABLE or unset; ISTIO_MUTUAL and credentialName are rejected
    sans = tuple(spec.subject_alt_names)
    if not sans and spec.sni and not spec.insecure_skip_verify:
        sans = tuple(service_sans)
    mutual = spec.mode == "MUTUAL"
    return TlsSettings(
        mode=TlsMode(spec.mode),
        sni=spec.sni,
        subject_alt_names=sans,
        ca_certificates=spec.ca_certificates,
        client_certificate=spec.client_certificate if mutual else "",
        private_key=spec.private_key if mutual else "",
        ca_crl="" if spec.insecure_skip_verify else spec.ca_crl,
        insecure_skip_verify=spec.insecure_skip_verify is True,
        sni_from=sni_from,
    )


@dataclass(frozen=True, slots=True)
class SniFinding:
    """What ``sni_finding`` found: an error or a warning, at ``path`` of the DestinationRule."""

    path: str
    problem: Problem
    error: bool


def sni_finding(
    tls: TlsSettings,
    path: str,
    rule: Source,
    service: Source,
    host: str,
    endpoints: Sequence[Endpoint],
) -> SniFinding | None:
    """Say what SNI the endpoints get when the DestinationRule names none.

    Without ``sni`` Istio sends the request's authority (the ServiceEntry host) as SNI
    and checks the certificate against it (``auto_sni``, ``auto_san_validation``). Real
    endpoints under other names (DynamoDB's regional hosts) present certificates for
    their own names, so every handshake fails verification: a warning with the fix.
    With ``extproc.io/upstream-sni: endpoint`` every endpoint needs a name (an error).

    Args:
        tls: the service's compiled TLS; ``path`` is its ``tls`` in the DestinationRule
            ``rule``.
        service: the ServiceEntry of ``host`` and ``endpoints``.
    """
    if tls.sni_from is UpstreamSni.ENDPOINT:
        where = f"metadata.annotations[{UPSTREAM_SNI_ANNOTATION}]"
        ips = [e.address for e in endpoints if is_ip(e.address)]
        if not ips:
            return None
        message = (
            f"endpoint needs endpoint names to send, but {service.cite()} has "
            f"the IP address {ips[0]} as an endpoint of {host}"
        )
        return SniFinding(where, rule.problem(where, message), error=True)
    if not tls.auto_sni:
        return None
    others = sorted({e.address for e in endpoints if authority_key(e.address, None) != host})
    names = [a for a in others if not is_ip(a)]
    if not names:
        return None
    if tls.insecure_skip_verify:
        check = "no certificate is verified (insecureSkipVerify)"
    elif tls.subject_alt_names:
        check = "the certificate is checked against subjectAltNames"
    else:
        check = (
            f'the certificate is checked against "{host}" (auto_san_validation), and '
            "endpoints under other names present certificates for their own names, so "
            "every handshake fails verification (503)"
        )
    fix = (
        f"annotate this DestinationRule with {UPSTREAM_SNI_ANNOTATION}: endpoint to send "
        "each endpoint its own name as SNI and Host (extproc only; Istio ignores it)"
    )
    if len(names) == 1:
        fix += f', or set sni: {names[0]} and subjectAltNames: ["{names[0]}"] (Istio too)'
    message = (
        f"mode {tls.mode.value} without sni: Istio sends the request's authority "
        f'("{host}") as SNI to every endpoint, and so does extproc; the endpoints of '
        f"{service.cite()} are other names ({', '.join(names)}); {check}. Fix: {fix}"
    )
    return SniFinding(path, rule.problem(path, message), error=False)
