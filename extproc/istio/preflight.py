"""Preflight: the files a validated config names exist and can be read, before Envoy needs them.

The one step of loading that looks at the file system beyond the config itself, run by the
loader after validation. Istio's agent reads a DestinationRule's TLS files and serves them over
SDS; here Envoy reads them itself, so a missing file would only show when Envoy starts (or
restarts at a reload): it is an error at load instead, located like a validation error
(``spec.trafficPolicy.tls.caCertificates: "/etc/ca.pem": no such file``).
"""

from __future__ import annotations

import os

from extproc.errors import Problem
from extproc.istio.findings import Parsed
from extproc.istio.literal import show
from extproc.istio.models import (
    ORIGINATING_TLS_MODES,
    ClientTlsSettingsSpec,
    DestinationRule,
    tls_settings_of,
)

__all__ = ["tls_file_problems"]


def tls_file_problems(parsed: Parsed) -> list[Problem]:
    """Every TLS file of a DestinationRule that Envoy could not read, as an error each.

    Only the files a ``tls`` of mode SIMPLE or MUTUAL uses (without ``credentialName``, which
    validation rejects): ``caCertificates``, ``caCrl`` unless ``insecureSkipVerify``, and for
    MUTUAL ``clientCertificate`` and ``privateKey``.
    """
    if not isinstance(parsed.obj, DestinationRule):
        return []
    problems = []
    for where, tls in tls_settings_of(parsed.obj):
        for alias, path in _files_of(tls):
            if path and (reason := _file_error(path)) is not None:
                problems.append(parsed.source.problem(f"{where}.{alias}", reason))
    return problems


def _files_of(tls: ClientTlsSettingsSpec) -> list[tuple[str, str]]:
    """The files Envoy reads for ``tls``, by their Istio field names (``constructUpstreamTLS``)."""
    if tls.mode not in ORIGINATING_TLS_MODES or tls.credential_name:
        return []
    files = [("caCertificates", tls.ca_certificates)]
    if tls.insecure_skip_verify is not True:
        files.append(("caCrl", tls.ca_crl))
    if tls.mode == "MUTUAL":
        files += [("clientCertificate", tls.client_certificate), ("privateKey", tls.private_key)]
    return files


def _file_error(path: str) -> str | None:
    """Why Envoy could not read ``path`` at start-up, or ``None``."""
    if not os.path.exists(path):
        return f"{show(path)}: no such file"
    if not os.path.isfile(path):
        return f"{show(path)}: not a file"
    if not os.access(path, os.R_OK):
        return f"{show(path)}: not readable"
    return None
