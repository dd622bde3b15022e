"""TLS origination: Istio's ``tls`` validation, what it compiles to, and the Envoy config.

Istio's rules and words come from ``agent.ValidateTLS`` (pkg/config/validation/agent/
validation.go); what pilot emits from ``constructUpstreamTLS`` and
``setAutoSniAndAutoSanValidation`` (pilot/pkg/networking/core/cluster_tls.go).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from extproc.cli import main
from extproc.core.outcome import UPSTREAM_CONNECTION_FAILURE, classify
from extproc.core.outlier import AttemptResult
from extproc.core.policy import (
    Locality,
    Policy,
    Resolution,
    Service,
    TlsMode,
    TlsSettings,
    UpstreamSni,
    Workload,
)
from extproc.core.table import ServiceTable
from extproc.errors import ConfigError, Problem
from extproc.istio import load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.server.eds import EdsHost, load_assignment
from extproc.server.servicer import ExternalProcessor
from extproc.settings import Settings
from extproc.testing import FakeClock, endpoint, request_headers, routed_host, service
from extproc.wire import DataPath

EAST: Final = "dynamodb.us-east-1.amazonaws.com"
WEST: Final = "dynamodb.us-west-1.amazonaws.com"
SEED_HTTPS: Final = Path(__file__).parent.parent / "fixtures" / "seed" / "https.yaml"
DR_AT: Final = 'cfg.yaml: DestinationRule "mydynamodb" (document 2): '
TLS: Final = "spec.trafficPolicy.tls"
ANNOTATION: Final = "metadata.annotations[extproc.io/upstream-sni]"

SE: Final[dict[str, Any]] = {
    "apiVersion": "networking.istio.io/v1beta1",
    "kind": "ServiceEntry",
    "metadata": {"name": "external-svc-dns"},
    "spec": {
        "hosts": ["mydb.com"],
        "ports": [{"number": 80, "name": "http-port", "protocol": "HTTP", "targetPort": 443}],
        "resolution": "DNS",
        "endpoints": [
            {"address": EAST, "locality": "us-east1"},
            {"address": WEST, "locality": "us-west"},
        ],
    },
}


def _dr(tls: dict[str, Any] | None, annotation: str | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {"outlierDetection": {"maxEjectionPercent": 100}}
    if tls is not None:
        policy["tls"] = tls
    metadata: dict[str, Any] = {"name": "mydynamodb"}
    if annotation is not None:
        metadata["annotations"] = {"extproc.io/upstream-sni": annotation}
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": metadata,
        "spec": {"host": "mydb.com", "trafficPolicy": policy},
    }


def _load(*docs: dict[str, Any]) -> Policy:
    return load_policy_text(yaml.safe_dump_all(docs, sort_keys=False), "cfg.yaml")


def _errors(*docs: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(*docs)
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A readable file where a certificate would be (existence is what load checks)."""
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


# --- validation: Istio's errors, with Istio's words -----------------------------------------


TLS_ERRORS = [
    (
        "unknown-mode",
        {"mode": "SIMPLEX"},
        [
            f"{TLS}.mode: unknown TLS mode "
            '"SIMPLEX"; expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL'
        ],
    ),
    (
        "mutual-without-certificate-and-key",
        {"mode": "MUTUAL"},
        [
            f"{TLS}.clientCertificate: client certificate required for mutual tls",
            f"{TLS}.privateKey: private key required for mutual tls",
        ],
    ),
    (
        "insecure-simple-with-sans",
        {"mode": "SIMPLE", "insecureSkipVerify": True, "subjectAltNames": [EAST]},
        [
            f"{TLS}: cannot specify CaCertificates or CredentialName or SubjectAltNames "
            "when InsecureSkipVerify is set true"
        ],
    ),
    (
        "insecure-mutual-with-sans",
        {
            "mode": "MUTUAL",
            "insecureSkipVerify": True,
            "subjectAltNames": [EAST],
            "clientCertificate": "{pem}",
            "privateKey": "{pem}",
        },
        [
            f"{TLS}: cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify "
            "is set true"
        ],
    ),
    (
        "credential-name-with-files",
        {"mode": "SIMPLE", "credentialName": "db-ca", "caCertificates": "{pem}"},
        [
            f"{TLS}: cannot specify client certificates or CA certificate or CA CRL If "
            "credentialName is set",
            f"{TLS}.credentialName: names a Kubernetes Secret or ConfigMap, which the Istio agent "
            "fetches and serves over SDS; extproc has no Kubernetes: give the files instead "
            "(caCertificates, and for MUTUAL clientCertificate and privateKey)",
        ],
    ),
    (
        "istio-mutual",
        {"mode": "ISTIO_MUTUAL"},
        [
            f"{TLS}.mode: ISTIO_MUTUAL uses the mesh's own certificates, which istiod issues and "
            "the Istio agent serves over SDS; extproc has no mesh identity: use SIMPLE, or MUTUAL "
            "with clientCertificate and privateKey files"
        ],
    ),
    (
        "missing-ca-file",
        {"mode": "SIMPLE", "caCertificates": "/nonexistent/ca.pem"},
        [f'{TLS}.caCertificates: "/nonexistent/ca.pem": no such file'],
    ),
    (
        "missing-client-key",
        {"mode": "MUTUAL", "clientCertificate": "{pem}", "privateKey": "/nonexistent/key.pem"},
        [f'{TLS}.privateKey: "/nonexistent/key.pem": no such file'],
    ),
    (
        "ca-file-is-a-directory",
        {"mode": "SIMPLE", "caCertificates": "{dir}"},
        [f'{TLS}.caCertificates: "{{dir}}": not a file'],
    ),
    (
        "missing-crl-file",
        {"mode": "SIMPLE", "caCrl": "/nonexistent/crl.pem"},
        [f'{TLS}.caCrl: "/nonexistent/crl.pem": no such file'],
    ),
    (
        "sni-longer-than-envoy-allows",
        {"mode": "SIMPLE", "sni": "a" * 256},
        [f"{TLS}.sni: is longer than 255 bytes (Envoy's limit)"],
    ),
    (
        "insecure-not-a-boolean",
        {"mode": "SIMPLE", "insecureSkipVerify": "yes"},
        [
            f'{TLS}.insecureSkipVerify: must be true or false, got "yes" (only true and false are '
            "booleans)"
        ],
    ),
]


def _fill(value: Any, pem: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{pem}", str(pem)).replace("{dir}", str(pem.parent))
    if isinstance(value, list):
        return [_fill(v, pem) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, pem) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("tls", "expected"), [c[1:] for c in TLS_ERRORS], ids=[c[0] for c in TLS_ERRORS]
)
def test_invalid_tls_is_rejected_naming_the_field(
    tls: dict[str, Any], expected: list[str], pem: Path
) -> None:
    assert _errors(SE, _dr(_fill(tls, pem))) == [DR_AT + _fill(e, pem) for e in expected]


def test_port_level_tls_is_validated_under_its_own_path() -> None:
    dr = _dr(None)
    dr["spec"]["trafficPolicy"]["portLevelSettings"] = [
        {"port": {"number": 80}, "tls": {"mode": "MUTUAL", "clientCertificate": "/nonexistent"}}
    ]
    where = "spec.trafficPolicy.portLevelSettings[0].tls"
    assert _errors(SE, dr) == [
        DR_AT + f"{where}.privateKey: private key required for mutual tls",
        DR_AT + f'{where}.clientCertificate: "/nonexistent": no such file',
    ]


@pytest.mark.parametrize(
    ("annotation", "tls", "expected"),
    [
        (
            "endpoints",
            {"mode": "SIMPLE"},
            f'{ANNOTATION}: "endpoints" is not one of "authority", "endpoint"',
        ),
        (
            "endpoint",
            {"mode": "SIMPLE", "sni": EAST},
            f"{TLS}.sni: cannot be combined with the annotation extproc.io/upstream-sni: "
            "endpoint, which sends each endpoint's own name as SNI: remove one of them",
        ),
    ],
    ids=["unknown-value", "with-sni"],
)
def test_a_bad_upstream_sni_annotation_is_an_error(
    annotation: str, tls: dict[str, Any], expected: str
) -> None:
    assert _errors(SE, _dr(tls, annotation)) == [DR_AT + expected]


def test_endpoint_sni_needs_endpoint_names() -> None:
    se = copy.deepcopy(SE)
    se["spec"]["resolution"] = "STATIC"
    se["spec"]["endpoints"] = [{"address": "10.0.0.1", "locality": "us-east1"}]
    assert _errors(se, _dr({"mode": "SIMPLE"}, "endpoint")) == [
        DR_AT + f"{ANNOTATION}: endpoint needs endpoint names to send, but ServiceEntry "
        '"external-svc-dns" (cfg.yaml, document 1) has the IP address 10.0.0.1 as an endpoint '
        "of mydb.com"
    ]


# --- validation: warnings -------------------------------------------------------------------


TLS_WARNINGS = [
    (
        "fields-without-mode",
        {"sni": EAST, "caCertificates": "/x"},
        None,
        f"{TLS}: mode is unset (DISABLE): no TLS is originated, so caCertificates, sni have no "
        "effect",
    ),
    (
        "client-certificate-in-simple",
        {"mode": "SIMPLE", "sni": EAST, "clientCertificate": "/x"},
        None,
        f"{TLS}.clientCertificate: is used in mode MUTUAL only; ignored in SIMPLE",
    ),
    (
        "crl-with-insecure",
        {"mode": "SIMPLE", "sni": EAST, "insecureSkipVerify": True, "caCrl": "/x"},
        None,
        f"{TLS}.caCrl: is ignored with insecureSkipVerify (no certificate is verified), as in "
        "Istio",
    ),
    (
        "annotation-without-tls",
        {"mode": "DISABLE"},
        "endpoint",
        f"{ANNOTATION}: has no effect: this DestinationRule originates no TLS (tls.mode SIMPLE "
        "or MUTUAL)",
    ),
]


@pytest.mark.parametrize(
    ("tls", "annotation", "expected"),
    [c[1:] for c in TLS_WARNINGS],
    ids=[c[0] for c in TLS_WARNINGS],
)
def test_tls_that_changes_nothing_is_a_warning(
    tls: dict[str, Any], annotation: str | None, expected: str
) -> None:
    assert _texts(_load(SE, _dr(tls, annotation)).warnings) == (DR_AT + expected,)


SEED_WARNING: Final = (
    f"{DR_AT}{TLS}: mode SIMPLE without sni: Istio sends the request's authority "
    '("mydb.com") as SNI to every endpoint, and so does extproc; the endpoints of ServiceEntry '
    f'"external-svc-dns" (cfg.yaml, document 1) are other names ({EAST}, {WEST}); the '
    'certificate is checked against "mydb.com" (auto_san_validation), and endpoints under '
    "other names present certificates for their own names, so every handshake fails "
    "verification (503). Fix: annotate this DestinationRule with extproc.io/upstream-sni: "
    "endpoint to send each endpoint its own name as SNI and Host (extproc only; Istio "
    "ignores it)"
)


def test_the_seed_https_example_warns_that_verification_fails_and_names_the_fix() -> None:
    assert _texts(_load(SE, _dr({"mode": "SIMPLE"})).warnings) == (SEED_WARNING,)


def test_with_one_endpoint_name_the_warning_also_offers_sni_and_subject_alt_names() -> None:
    se = copy.deepcopy(SE)
    se["spec"]["endpoints"] = se["spec"]["endpoints"][:1]
    (warning,) = _texts(_load(se, _dr({"mode": "SIMPLE"})).warnings)
    assert warning.endswith(f', or set sni: {EAST} and subjectAltNames: ["{EAST}"] (Istio too)')


@pytest.mark.parametrize(
    ("tls", "annotation"),
    [
        ({"mode": "SIMPLE"}, "endpoint"),
        ({"mode": "SIMPLE", "sni": EAST, "subjectAltNames": [EAST]}, None),
        ({"mode": "DISABLE"}, None),
    ],
    ids=["endpoint-sni", "fixed-sni", "disable"],
)
def test_no_sni_warning_when_the_endpoints_get_a_name_they_answer_to(
    tls: dict[str, Any], annotation: str | None
) -> None:
    warnings = _texts(_load(SE, _dr(tls, annotation)).warnings)
    assert not [w for w in warnings if "without sni" in w]


def test_no_sni_warning_when_the_host_itself_is_resolved() -> None:
    se = copy.deepcopy(SE)
    del se["spec"]["endpoints"]
    assert _texts(_load(se, _dr({"mode": "SIMPLE"})).warnings) == ()


def test_extproc_check_warns_about_the_literal_seed_https_config_and_names_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", str(SEED_HTTPS)]) == 0
    err = capsys.readouterr().err
    assert "spec.trafficPolicy.tls: mode SIMPLE without sni" in err
    assert "extproc.io/upstream-sni: endpoint" in err
    assert f"{SEED_HTTPS}: OK" in err


# --- compile ---------------------------------------------------------------------------------


def _tls(*docs: dict[str, Any]) -> TlsSettings | None:
    (only,) = _load(*docs).services
    return only.tls


def test_seed_https_compiles_to_simple_tls_with_sni_from_the_authority() -> None:
    tls = _tls(SE, _dr({"mode": "SIMPLE"}))
    assert tls == TlsSettings(mode=TlsMode.SIMPLE)
    assert tls.auto_sni
    assert tls.auto_san_validation


def test_the_annotation_takes_sni_from_each_endpoint() -> None:
    tls = _tls(SE, _dr({"mode": "SIMPLE"}, "endpoint"))
    assert tls == TlsSettings(mode=TlsMode.SIMPLE, sni_from=UpstreamSni.ENDPOINT)
    assert not tls.auto_sni
    assert tls.auto_san_validation


def test_mutual_keeps_its_files_and_simple_drops_client_certificates(pem: Path) -> None:
    files = {"clientCertificate": str(pem), "privateKey": str(pem), "caCertificates": str(pem)}
    assert _tls(SE, _dr({"mode": "MUTUAL", **files})) == TlsSettings(
        mode=TlsMode.MUTUAL,
        client_certificate=str(pem),
        private_key=str(pem),
        ca_certificates=str(pem),
    )
    simple = _tls(SE, _dr({"mode": "SIMPLE", "sni": EAST, **files}))
    assert simple == TlsSettings(mode=TlsMode.SIMPLE, sni=EAST, ca_certificates=str(pem))


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"mode": "SIMPLE", "sni": EAST}, ("se.example",)),
        ({"mode": "SIMPLE", "sni": EAST, "subjectAltNames": [EAST]}, (EAST,)),
        ({"mode": "SIMPLE"}, ()),
    ],
    ids=["sni-takes-the-service-entrys", "destination-rule-wins", "auto-san-validation-instead"],
)
def test_service_entry_subject_alt_names_stand_in_for_the_destination_rules(
    tls: dict[str, Any], expected: tuple[str, ...]
) -> None:
    se = copy.deepcopy(SE)
    se["spec"]["subjectAltNames"] = ["se.example"]
    compiled = _tls(se, _dr(tls))
    assert compiled is not None
    assert compiled.subject_alt_names == expected


def test_disable_and_no_tls_originate_nothing() -> None:
    assert _tls(SE, _dr({"mode": "DISABLE"})) is None
    assert _tls(SE, _dr(None)) is None


def test_port_level_tls_replaces_the_top_level_tls_on_its_port() -> None:
    dr = _dr({"mode": "SIMPLE", "sni": WEST})
    dr["spec"]["trafficPolicy"]["portLevelSettings"] = [
        {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "sni": EAST}}
    ]
    assert _tls(SE, dr) == TlsSettings(mode=TlsMode.SIMPLE, sni=EAST)


# --- render ----------------------------------------------------------------------------------


def _tls_service(tls: TlsSettings) -> Service:
    built = service([endpoint(EAST, "us-east1"), endpoint(WEST, "us-west")])
    return dataclasses.replace(built, tls=tls)


def _render(
    tls: TlsSettings,
    data_path: DataPath,
    system_ca_file: str = "/etc/ssl/certs/ca-certificates.crt",
) -> dict[str, Any]:
    # The module path reaches the service over its socket directory only.
    socket_dir = Path("/run/extproc") if data_path is DataPath.MODULE else None
    return render_bootstrap(
        Policy((_tls_service(tls),)),
        Settings(data_path=data_path, system_ca_file=system_ca_file, socket_dir=socket_dir),
    )


def _cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (found,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"].startswith("outbound")
    ]
    return found


def _route_action(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    action: dict[str, Any] = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return action


def _http_filter(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    config: dict[str, Any] = hcm["http_filters"][0]["typed_config"]
    return config


def _context(cluster: dict[str, Any]) -> dict[str, Any]:
    socket = cluster["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context: dict[str, Any] = socket["typed_config"]
    assert context["@type"] == (
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    )
    return context


def _upstream_options(cluster: dict[str, Any]) -> dict[str, Any] | None:
    options = cluster.get("typed_extension_protocol_options")
    if options is None:
        return None
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http["explicit_http_config"] == {"http_protocol_options": {}}
    upstream: dict[str, Any] = http["upstream_http_protocol_options"]
    return upstream


TLS_PARAMS: Final = {
    "tls_minimum_protocol_version": "TLSv1_2",
    "tls_maximum_protocol_version": "TLSv1_3",
}


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
def test_seed_https_renders_istios_tls_context_on_both_paths(data_path: DataPath) -> None:
    bootstrap = _render(TlsSettings(mode=TlsMode.SIMPLE), data_path, "/ca/system.pem")
    cluster = _cluster(bootstrap)
    context = _context(cluster)
    assert context["common_tls_context"] == {
        "tls_params": TLS_PARAMS,
        "validation_context": {"trusted_ca": {"filename": "/ca/system.pem"}},
    }
    assert "sni" not in context
    assert "auto_host_sni" not in context
    assert _upstream_options(cluster) == {"auto_sni": True, "auto_san_validation": True}
    assert "auto_host_rewrite" not in _route_action(bootstrap)


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
def test_endpoint_sni_uses_the_eds_hostname_for_sni_san_and_host(data_path: DataPath) -> None:
    # Both paths route over the EDS cluster, whose hosts carry their endpoint's name: each
    # attempt, a retry on another host too, is made under the name of the host it goes to.
    tls = TlsSettings(mode=TlsMode.SIMPLE, sni_from=UpstreamSni.ENDPOINT)
    bootstrap = _render(tls, data_path)
    cluster = _cluster(bootstrap)
    context = _context(cluster)
    assert context["auto_host_sni"] is True
    assert context["auto_sni_san_validation"] is True
    assert _upstream_options(cluster) is None
    assert _route_action(bootstrap)["auto_host_rewrite"] is True


@pytest.mark.parametrize("sni_from", list(UpstreamSni), ids=[s.name.lower() for s in UpstreamSni])
def test_the_ext_proc_filter_never_allows_the_answer_to_change_the_route(
    sni_from: UpstreamSni,
) -> None:
    tls = TlsSettings(mode=TlsMode.SIMPLE, sni_from=sni_from)
    ext_proc = _http_filter(_render(tls, DataPath.EXT_PROC))
    assert "mutation_rules" not in ext_proc
    assert "route_cache_action" not in ext_proc


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
def test_fixed_sni_with_subject_alt_names_sets_no_auto_options(data_path: DataPath) -> None:
    sans = (EAST, "spiffe://cluster.local/ns/db/sa/db", "10.0.0.1")
    cluster = _cluster(
        _render(TlsSettings(TlsMode.SIMPLE, sni=EAST, subject_alt_names=sans), data_path)
    )
    context = _context(cluster)
    assert context["sni"] == EAST
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": EAST}},
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/db/sa/db"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
    ]
    assert _upstream_options(cluster) is None


def test_fixed_sni_without_subject_alt_names_only_checks_the_chain() -> None:
    # Istio sets neither auto option when sni is given: no name is checked (cluster_tls.go).
    cluster = _cluster(_render(TlsSettings(TlsMode.SIMPLE, sni=EAST), DataPath.LUA))
    assert _context(cluster)["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    }
    assert _upstream_options(cluster) is None


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
def test_insecure_skip_verify_leaves_an_empty_validation_context(data_path: DataPath) -> None:
    cluster = _cluster(_render(TlsSettings(TlsMode.SIMPLE, insecure_skip_verify=True), data_path))
    assert _context(cluster)["common_tls_context"]["validation_context"] == {}
    assert _upstream_options(cluster) == {"auto_sni": True}


def test_insecure_endpoint_sni_sends_the_name_without_checking_it() -> None:
    tls = TlsSettings(TlsMode.SIMPLE, insecure_skip_verify=True, sni_from=UpstreamSni.ENDPOINT)
    context = _context(_cluster(_render(tls, DataPath.LUA)))
    assert context["auto_host_sni"] is True
    # Envoy refuses auto_sni_san_validation without a trusted CA (seen on 1.40 at start-up).
    assert "auto_sni_san_validation" not in context


def test_mutual_renders_the_client_certificate_ca_and_crl() -> None:
    tls = TlsSettings(
        TlsMode.MUTUAL,
        client_certificate="/certs/client.pem",
        private_key="/certs/client-key.pem",
        ca_certificates="/certs/ca.pem",
        ca_crl="/certs/crl.pem",
    )
    common = _context(_cluster(_render(tls, DataPath.LUA)))["common_tls_context"]
    assert common == {
        "tls_params": TLS_PARAMS,
        "tls_certificates": [
            {
                "certificate_chain": {"filename": "/certs/client.pem"},
                "private_key": {"filename": "/certs/client-key.pem"},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": "/certs/ca.pem"},
            "crl": {"filename": "/certs/crl.pem"},
        },
    }


def test_a_service_without_tls_keeps_plain_tcp() -> None:
    built = service([endpoint(EAST, "us-east1")])
    cluster = _cluster(render_bootstrap(Policy((built,)), Settings()))
    assert "transport_socket" not in cluster
    assert "typed_extension_protocol_options" not in cluster


# --- the data paths' parts: EDS hostnames, the ext_proc answer, outcomes ----------------------


def test_eds_hosts_carry_their_endpoint_name_as_hostname() -> None:
    hosts = [
        EdsHost("127.0.0.11", 443, 0, 1, "us-east1", "", "", hostname=EAST),
        EdsHost("10.0.0.9", 443, 1, 1, "us-west", "", "", hostname="10.0.0.9"),
    ]
    message = load_assignment("outbound|80||mydb.com", hosts)
    names = [lb.endpoint.hostname for group in message.endpoints for lb in group.lb_endpoints]
    assert names == [EAST, ""]


async def _answer(tls: TlsSettings | None) -> Any:
    built = service([endpoint(EAST, "us-east1")], resolution=Resolution.DNS)
    if tls is not None:
        built = dataclasses.replace(built, tls=tls)
    clock = FakeClock()
    table = ServiceTable(
        Policy((built,)),
        Workload(Locality.parse("us-east1")),
        now=clock.now(),
        rng=random.Random(1),
    )
    (cluster,) = table
    cluster.set_endpoint_addresses(0, ["127.0.0.11"], clock.now())
    processor = ExternalProcessor(lambda: table, clock.now)

    async def messages() -> AsyncIterator[Any]:
        yield request_headers("mydb.com")

    answers = [answer async for answer in processor.Process(messages(), None)]
    return answers[0]


@pytest.mark.parametrize(
    "tls",
    [
        None,
        TlsSettings(mode=TlsMode.SIMPLE),
        TlsSettings(mode=TlsMode.SIMPLE, sni_from=UpstreamSni.ENDPOINT),
    ],
    ids=["plain", "sni-from-authority", "sni-from-endpoint"],
)
async def test_the_ext_proc_answer_keeps_the_authority(tls: TlsSettings | None) -> None:
    # The endpoint's name reaches SNI and Host through the EDS host (auto_host_sni).
    answer = await _answer(tls)
    assert routed_host(answer) == "127.0.0.11:443"
    assert not answer.request_headers.response.HasField("header_mutation")


def test_a_failed_tls_handshake_counts_as_a_connect_failure() -> None:
    # Envoy flags a TLS failure UF, with the TLS error in the details (Envoy 1.40).
    details = (
        "upstream_reset_before_response_started{connection_failure,TLS_error:_268435581:"
        "SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end}"
    )
    outcome = classify(503, details, UPSTREAM_CONNECTION_FAILURE, 3)
    assert outcome.results == (AttemptResult.connect_failure(),) * 3
    assert tuple(result.code() for result in outcome.results) == (503, 503, 503)


def _texts(warnings: Iterable[Problem]) -> tuple[str, ...]:
    """Warnings as ``extproc check`` prints them (after ``warning: ``)."""
    return tuple(str(w) for w in warnings)
