"""Upstream TLS origination: a service cluster's ``UpstreamTlsContext`` as pilot builds it.

``tls`` SIMPLE or MUTUAL is the same on both data paths. Without ``sni``, Istio's
``auto_sni`` and ``auto_san_validation`` take the SNI and the SAN check from the request's
authority (the cluster's HTTP protocol options). With extproc's
``extproc.io/upstream-sni: endpoint`` each endpoint's own name is SNI, SAN and Host instead,
from the EDS host's hostname (``auto_host_sni``, ``auto_sni_san_validation``, and the
route's ``auto_host_rewrite``), per attempt: a retry on us-west is made under us-west's name.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2

from extproc.core.policy import TlsMode, TlsSettings, UpstreamSni, is_ip
from extproc.render.typed import packed

TLS_SOCKET = "envoy.transport_sockets.tls"
#: The key of a cluster's ``typed_extension_protocol_options`` for HTTP upstreams.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_SAN = common_pb2.SubjectAltNameMatcher


def endpoint_sni(tls: TlsSettings | None) -> bool:
    """TLS with each endpoint's own name as SNI (extproc's ``upstream-sni: endpoint``)."""
    return tls is not None and tls.sni_from is UpstreamSni.ENDPOINT and not tls.sni


def upstream_tls_socket(tls: TlsSettings, system_ca_file: str) -> base_pb2.TransportSocket:
    """The cluster's ``transport_socket``.

    Pilot's ``constructUpstreamTLS`` and ``setAutoSniAndAutoSanValidation``
    (``pilot/pkg/networking/core/cluster_tls.go``):

    1. TLS 1.2 to 1.3 (``defaultUpstreamCommonTLSContext``).
    2. MUTUAL: the client certificate and key. Istio's agent serves the files over SDS and
       rotates them; Envoy reads them here at start.
    3. Verification: ``caCertificates``, else the system bundle; the SANs; ``caCrl``.
       ``insecureSkipVerify`` leaves an empty validation context (nothing is verified).
    4. ``sni`` as given. Without it, ``auto_sni`` (``auto_sni_options``).
    5. extproc's ``upstream-sni: endpoint``: the same from each endpoint's name, through
       ``auto_host_sni`` (EDS hosts carry the name).
    """
    common = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        ),
        validation_context=_validation_context(tls, system_ca_file),
    )
    if tls.mode is TlsMode.MUTUAL:
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
                private_key=base_pb2.DataSource(filename=tls.private_key),
            )
        )
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=tls.sni or "")
    if endpoint_sni(tls):
        context.auto_host_sni = True
        context.auto_sni_san_validation = tls.auto_san_validation
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=packed(context))


def _validation_context(
    tls: TlsSettings, system_ca_file: str
) -> common_pb2.CertificateValidationContext:
    context = common_pb2.CertificateValidationContext()
    if tls.insecure_skip_verify:
        return context
    context.trusted_ca.filename = tls.ca_certificates or system_ca_file
    context.match_typed_subject_alt_names.extend(_san_matcher(san) for san in tls.subject_alt_names)
    if tls.ca_crl:
        context.crl.filename = tls.ca_crl
    return context


def _san_matcher(san: str) -> common_pb2.SubjectAltNameMatcher:
    """One exact SAN. Istio's untyped ``match_subject_alt_names`` is deprecated in Envoy;
    the typed form needs a SAN type, read off the value (URI, IP or DNS)."""
    san_type = _SAN.URI if "://" in san else _SAN.IP_ADDRESS if is_ip(san) else _SAN.DNS
    return _SAN(san_type=san_type, matcher=string_pb2.StringMatcher(exact=san))


def auto_sni_options(tls: TlsSettings) -> http_protocol_options_pb2.HttpProtocolOptions | None:
    """The cluster's HTTP protocol options when SNI comes from the request's authority."""
    if endpoint_sni(tls) or not tls.auto_sni:
        return None
    options = http_protocol_options_pb2.HttpProtocolOptions
    return options(
        explicit_http_config=options.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        upstream_http_protocol_options=protocol_pb2.UpstreamHttpProtocolOptions(
            auto_sni=True, auto_san_validation=tls.auto_san_validation
        ),
    )
