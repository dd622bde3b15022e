"""Istio's rules for single fields (``pkg/config/validation/agent``): names, ports, TLS, localities.

The rules both kinds share, with Istio's messages: ``ValidateWildcardDomain``, ``ValidateFQDN``,
``ValidatePort``, ``ValidateDuration``, ``ValidateTLS`` and ``ValidateLocalityLbSetting``
(``pkg/config/validation/agent/validation.go``). A name ending in ``_error`` returns the
message (or ``None``); a ``check_`` function reports to a ``Checker``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from extproc.core.locality import LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE
from extproc.istio.duration import parse_duration
from extproc.istio.findings import Checker
from extproc.istio.literal import show
from extproc.istio.models import ClientTlsSettingsSpec, LocalityLbSettingSpec

__all__ = [
    "UINT32_MAX",
    "check_duration",
    "check_locality_lb",
    "check_regex",
    "check_tls",
    "domain_error",
    "fqdn_error",
    "label_error",
    "port_error",
    "port_name_error",
    "uint32_error",
]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# pkg/config/labels: a wildcard may open the first label only ("*", "*foo", "*-foo").
_WILDCARD_LABEL = re.compile(r"^(\*|(\*|\*-)?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
# pilot/pkg/serviceregistry/util/label: the labels that carry a locality.
_TOPOLOGY_LABELS: Final = frozenset({LABEL_REGION, LABEL_ZONE, LABEL_SUBZONE})
# ClientTLSSettings.TLSmode (networking/v1alpha3/destination_rule.proto).
_TLS_MODES: Final = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
# Envoy's UpstreamTlsContext.sni: max_bytes 255 (a DNS name's limit).
_MAX_SNI_BYTES: Final = 255
UINT32_MAX: Final = 2**32 - 1
#: validateStringRegexp: Envoy's re2 program size limit, approximated by the length.
MAX_REGEX_LENGTH: Final = 1024

# ---------------------------------------------------------------------------------------------
# Names and numbers


def domain_error(domain: str) -> str | None:
    """Why ``domain`` is not a host Istio accepts, or ``None``.

    Mirrors ``agent.ValidateWildcardDomain``: DNS-1123 labels (lowercase), a wildcard only in
    the first label, a top-level label that is not all digits, an optional trailing dot.
    """
    if not domain:
        return "empty domain name not allowed"
    if len(domain) > 255:
        return f"domain name {show(domain)} too long (max 255)"
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return f"domain name {show(domain)} invalid (label {show(first)} invalid)"
    if rest:
        return _labels_error(rest, domain)
    return None


def _labels_error(labels: str, domain: str) -> str | None:
    # agent.ValidateDNS1123Labels
    parts = labels.split(".")
    if re.fullmatch("[0-9]+", parts[-1]):
        return (
            f"domain name {show(domain)} invalid "
            f"(top level domain {show(parts[-1])} cannot be all-numeric)"
        )
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # "istio.io." is allowed
        if len(label) > 63 or not _DNS1123_LABEL.match(label):
            return f"domain name {show(domain)} invalid (label {show(label)} invalid)"
    return None


def fqdn_error(name: str) -> str | None:
    # agent.ValidateFQDN
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {show(name)} too long (max 255)"
    return _labels_error(name, name)


def port_name_error(name: str) -> str | None:
    # ValidatePortName: a DNS-1123 label.
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        return f"invalid port name {show(name)}"
    return None


def uint32_error(value: int, path: str) -> str | None:
    """A uint32 field over its maximum, in the API server's words (kube-openapi validate)."""
    if value <= UINT32_MAX:
        return None
    return f"Invalid value: {value}: {path} in body should be less than or equal to {UINT32_MAX}"


_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def label_error(key: str, value: str) -> str | None:
    """``labels.Instance.Validate`` (pkg/config/labels): a Kubernetes label key and value."""
    prefix, _, name = key.rpartition("/")
    if prefix and (domain_error(prefix) is not None or len(prefix) > 253):
        return f"invalid tag key: {show(key)}"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return f"invalid tag key: {show(key)}"
    if value and (len(value) > 63 or not _QUALIFIED_NAME.fullmatch(value)):
        return f"invalid tag value: {show(value)}"
    return None


def port_error(port: int) -> str | None:
    # agent.ValidatePort
    return None if 1 <= port <= 65535 else f"port number {port} must be in the range 1..65535"


def check_regex(regex: str, where: str, field: str, check: Checker) -> None:
    """``validateStringRegexp``: Envoy's RE2 size limit, approximated by length, and syntax."""
    if len(regex) > MAX_REGEX_LENGTH:
        check.error(where, f"{show(field)}: regex is too large, max length allowed is 1024")
        return
    try:
        re.compile(regex)
    except re.error as exc:
        check.error(
            where,
            f"{show(field)}: {exc}; Istio uses RE2 style regex-based match "
            "(https://github.com/google/re2/wiki/Syntax)",
        )


def check_duration(text: str, where: str, check: Checker) -> None:
    """``agent.ValidateDuration``: at least 1ms, whole milliseconds."""
    nanos = parse_duration(text)
    assert nanos is not None  # the model accepted only durations
    if nanos < 1_000_000:
        check.error(where, f"{show(text)} is too short: duration must be at least 1ms")
    elif nanos % 1_000_000:
        check.error(where, f"{show(text)}: only durations to ms precision are supported")


# ---------------------------------------------------------------------------------------------
# TLS


def check_tls(tls: ClientTlsSettingsSpec, where: str, check: Checker) -> None:
    """``agent.ValidateTLS`` (pkg/config/validation/agent/validation.go), with its messages,
    then what extproc cannot serve (mesh and Kubernetes credentials).

    Whether the files it names can be read is ``preflight``'s, after validation.
    """
    mode = tls.mode or "DISABLE"
    if mode not in _TLS_MODES:
        check.error(
            f"{where}.mode",
            f"unknown TLS mode {show(tls.mode)}; expected one of {', '.join(_TLS_MODES)}",
        )
        return
    _check_insecure_skip_verify(tls, mode, where, check)
    if mode == "DISABLE":
        _warn_disabled(tls, where, check)
        return
    if mode == "ISTIO_MUTUAL":
        check.error(
            f"{where}.mode",
            "ISTIO_MUTUAL uses the mesh's own certificates, which istiod issues and the Istio "
            "agent serves over SDS; extproc has no mesh identity: use SIMPLE, or MUTUAL with "
            "clientCertificate and privateKey files",
        )
        return
    if tls.credential_name:
        _reject_credential_name(tls, where, check)
        return
    _check_client_certificate(tls, mode, where, check)
    if len(tls.sni.encode()) > _MAX_SNI_BYTES:
        check.error(f"{where}.sni", f"is longer than {_MAX_SNI_BYTES} bytes (Envoy's limit)")
    if tls.insecure_skip_verify is True and tls.ca_crl:
        check.warn(
            f"{where}.caCrl",
            "is ignored with insecureSkipVerify (no certificate is verified), as in Istio",
        )


def _check_insecure_skip_verify(
    tls: ClientTlsSettingsSpec, mode: str, where: str, check: Checker
) -> None:
    """What ``insecureSkipVerify: true`` cannot be combined with."""
    if tls.insecure_skip_verify is not True:
        return
    if mode == "SIMPLE" and (tls.ca_certificates or tls.credential_name or tls.subject_alt_names):
        check.error(
            where,
            "cannot specify CaCertificates or CredentialName or SubjectAltNames "
            "when InsecureSkipVerify is set true",
        )
    if mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
        check.error(
            where,
            "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
        )


def _warn_disabled(tls: ClientTlsSettingsSpec, where: str, check: Checker) -> None:
    """Mode DISABLE (or unset) with other fields written: they have no effect."""
    # (model_fields_set also holds unknown keys, which are warned about on their own.)
    set_fields = sorted(tls.model_fields_set & set(ClientTlsSettingsSpec.model_fields) - {"mode"})
    if set_fields:
        names = ", ".join(ClientTlsSettingsSpec.model_fields[f].alias or f for f in set_fields)
        check.warn(
            where,
            f"mode is {'DISABLE' if tls.mode else 'unset (DISABLE)'}: no TLS is originated, "
            f"so {names} {'has' if len(set_fields) == 1 else 'have'} no effect",
        )


def _reject_credential_name(tls: ClientTlsSettingsSpec, where: str, check: Checker) -> None:
    """``credentialName``: Istio's rule on what goes with it, then why extproc cannot serve it."""
    if tls.client_certificate or tls.ca_certificates or tls.private_key or tls.ca_crl:
        check.error(
            where,
            "cannot specify client certificates or CA certificate or CA CRL "
            "If credentialName is set",
        )
    check.error(
        f"{where}.credentialName",
        "names a Kubernetes Secret or ConfigMap, which the Istio agent fetches and serves "
        "over SDS; extproc has no Kubernetes: give the files instead (caCertificates, and "
        "for MUTUAL clientCertificate and privateKey)",
    )


def _check_client_certificate(
    tls: ClientTlsSettingsSpec, mode: str, where: str, check: Checker
) -> None:
    """MUTUAL needs a certificate and a key; SIMPLE ignores them."""
    if mode == "MUTUAL":
        if not tls.client_certificate:
            check.error(f"{where}.clientCertificate", "client certificate required for mutual tls")
        if not tls.private_key:
            check.error(f"{where}.privateKey", "private key required for mutual tls")
        return
    for alias, value in (
        ("clientCertificate", tls.client_certificate),
        ("privateKey", tls.private_key),
    ):
        if value:
            # constructUpstreamTLS reads client certificates only when mutual.
            check.warn(f"{where}.{alias}", "is used in mode MUTUAL only; ignored in SIMPLE")


# ---------------------------------------------------------------------------------------------
# Localities


def check_locality_lb(
    lls: LocalityLbSettingSpec, where: str, has_outlier_detection: bool, check: Checker
) -> None:
    """``agent.ValidateLocalityLbSetting``, rule for rule and in its order."""
    if lls.distribute and lls.failover:
        check.error(where, "can not simultaneously specify 'distribute' and 'failover'")
        return
    if lls.failover:
        for i, label in enumerate(lls.failover_priority):
            if label in _TOPOLOGY_LABELS:
                check.error(
                    f"{where}.failoverPriority[{i}]",
                    f"can not simultaneously set 'failover' and topology label '{label}' "
                    "in 'failover_priority'",
                )
                return
    for i, rule in enumerate(lls.distribute):
        here = f"{where}.distribute[{i}]"
        if any(not 1 <= weight <= 100 for weight in rule.to.values()):
            check.error(f"{here}.to", "locality weight must be in range [1, 100]")
            return
        if (total := sum(rule.to.values())) != 100:
            check.error(f"{here}.to", f"total locality weight {total} != 100")
            return
        if (problem := _localities_error(list(rule.to), ordered=False)) is not None:
            check.error(f"{here}.to", problem)
    sources = [rule.from_ for rule in lls.distribute]
    if (problem := _localities_error(sources, ordered=True)) is not None:
        check.error(f"{where}.distribute", problem)

    if (lls.failover or lls.failover_priority) and not has_outlier_detection:
        field_name = "failover" if lls.failover else "failoverPriority"
        check.warn(
            f"{where}.{field_name}",
            "outlier detection policy must be provided for failover: without outlierDetection "
            "Istio does not fail over (it will not take effect), and neither does extproc",
        )
    if lls.enabled is False and lls.failover:
        check.warn(f"{where}.failover", "has no effect: localityLbSetting.enabled is false")

    for i, failover in enumerate(lls.failover):
        here = f"{where}.failover[{i}]"
        if failover.from_ == failover.to:
            check.error(here, "locality lb failover settings must specify different regions")
        if "/" in failover.from_ or "/" in failover.to:
            check.error(here, "locality lb failover only specify region")
        if "*" in failover.from_ or "*" in failover.to:
            check.error(here, "locality lb failover region should not contain '*' wildcard")


def _localities_error(localities: Sequence[str], *, ordered: bool) -> str | None:
    """``validateLocalities``: well-formed ``region/zone/subzone`` patterns.

    ``ordered`` (the ``from`` of the distribute rules, a list): Istio's check, in list order.
    A pattern overlaps when an earlier one covers it (``us-east`` and ``us-east/*`` cover
    ``us-east/a``), or when it has no final ``*`` and covers an earlier one (``us-east``
    after ``us-east/a``). A later pattern ending in ``*`` may be broader (``a/z1`` then
    ``a/*``; ``us-east`` then ``*``), as Istio accepts it: the first matching rule wins.

    Not ordered (the ``to`` of one rule, a map): Istio walks it in Go's random map order,
    so it accepts overlapping targets on some pushes and rejects them on others; here any two
    overlapping targets are an error, whichever comes first.
    """
    seen: list[tuple[str, ...]] = []
    for locality in localities:
        stars = locality.count("*")
        if stars > 1 or (stars == 1 and not locality.endswith("*")):
            return (
                f"locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            )
        if () in seen:
            return f"locality {locality} overlap with previous specified ones"
        parts = locality.split("/", 2)
        if any(part == "" for part in parts):
            return f"locality {locality} must not contain empty region/zone/subzone info"
        wildcard = parts[-1] == "*"
        prefix = tuple(parts[:-1]) if wildcard else tuple(parts)
        for other in seen:
            if _covers(other, prefix) or ((not ordered or not wildcard) and _covers(prefix, other)):
                return f"locality {locality} overlap with previous specified ones"
        seen.append(prefix)
    return None


def _covers(pattern: tuple[str, ...], other: tuple[str, ...]) -> bool:
    """Whether every locality ``other`` matches is matched by ``pattern`` (both prefixes)."""
    return other[: len(pattern)] == pattern
