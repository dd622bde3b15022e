"""The Istio objects we read, and Istio's validation rules for them.

Two tiers, as in Istio (``pkg/config/validation``): an *error* rejects the whole configuration,
a *warning* is reported and tolerated. Parsing happens in two steps:

1. Shape: pydantic models in strict mode, as the Kubernetes API server checks a CRD's OpenAPI
   schema (``"80"`` is not a port number, ``on`` is not a boolean). Fields are read by their
   Istio (camelCase) names through explicit aliases. Every field name is checked against
   Istio's API (``api.py``): a name Istio does not have is an error with the nearest one
   (``consecutive5xxError``: did you mean ``consecutive5xxErrors``?), as the API server
   refuses it; an Istio field extproc does not implement is a warning naming its dotted path
   ("not supported yet, ignored"). No field is dropped silently.
2. Meaning: the checks of ``ValidateServiceEntry``/``ValidateDestinationRule``
   (``pkg/config/validation/validation.go``) and ``ValidateLocalityLbSetting``
   (``pkg/config/validation/agent/validation.go``) that matter here, plus what extproc cannot
   serve (resolution NONE, PASSTHROUGH, ...).

Cross-object rules (which DestinationRule applies to which host) live in ``compile.py``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Final, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from extproc.core.policy import LbAlgorithm, is_ip
from extproc.errors import Problem
from extproc.istio import api

__all__ = [
    "API_VERSIONS",
    "UPSTREAM_SNI_ANNOTATION",
    "ClientTlsSettingsSpec",
    "DestinationRule",
    "Findings",
    "IstioObject",
    "Parsed",
    "ServiceEntry",
    "Source",
    "lb_algorithm",
    "parse_duration",
    "parse_object",
]

API_VERSIONS: Final = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)

NOT_YET: Final = "not supported yet, ignored"

#: extproc's switch on a DestinationRule (Istio ignores annotations it does not know): with
#: ``endpoint``, TLS without ``sni`` sends each endpoint's own name as SNI and Host instead of
#: the request's authority (``authority``, Istio's behaviour and the default).
UPSTREAM_SNI_ANNOTATION: Final = "extproc.io/upstream-sni"
UPSTREAM_SNI_VALUES: Final = ("authority", "endpoint")

# ---------------------------------------------------------------------------------------------
# Durations


_DURATION_UNIT_NS: Final[Mapping[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")
_MAX_NS: Final = 2**63 - 1


def parse_duration(text: str) -> int | None:
    """Parse a Go duration (``"15s"``, ``"1m30s"``, ``"500ms"``, ``"1.5h"``) into nanoseconds.

    Istio's CRDs take Go's ``time.ParseDuration`` syntax, so this follows it: an optional
    sign, then one or more decimal numbers each with a unit (ns, us, µs, ms, s, m, h); a bare
    ``"0"`` is allowed. Returns ``None`` when ``text`` is not such a duration.
    """
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return None
    total = Fraction(0)
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:  # pragma: no cover - the pattern matches the empty string
            return None
        number, unit = match.groups()
        if number in ("", ".") or unit not in _DURATION_UNIT_NS:
            return None
        total += Fraction(number) * _DURATION_UNIT_NS[unit]
        pos = match.end()
    nanos = int(total)  # Go truncates below a nanosecond
    if nanos > _MAX_NS:
        return None
    return -nanos if negative else nanos


def _duration_text(value: object) -> object:
    """Pydantic hook: a duration must be a string in Go syntax."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(
            "duration_type",
            '{value} is not a duration (write a string with a unit, e.g. "{value}s")',
            {"value": value},
        )
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration_type", "{value} is not a duration", {"value": _show(value)}
        )
    if parse_duration(value) is None:
        raise PydanticCustomError(
            "duration_parsing", "{text} is not a duration", {"text": json.dumps(value)}
        )
    return value


GoDuration = Annotated[str, BeforeValidator(_duration_text)]

# ---------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    """Strict, immutable, and keeping what it does not declare (see ``_walk_fields``)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, populate_by_name=False)

    # Istio fields with their own message when written (None: say nothing). Every other
    # Istio field the model does not declare gets NOT_YET; a name not in Istio's API
    # (``api.py``) is an error.
    IGNORED: ClassVar[Mapping[str, str | None]] = {}
    # False for Kubernetes metadata, whose many server-written fields are not configuration.
    WARN_UNIMPLEMENTED: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # The API server prunes null values of non-nullable CRD fields: null means unset.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class ObjectMeta(_Model):
    """``metadata``: the name (in messages) and extproc's annotation."""

    WARN_UNIMPLEMENTED = False

    name: str = ""
    namespace: str = ""
    annotations: dict[str, Any] = Field(default_factory=dict)


class ServicePort(_Model):
    """``ServiceEntry.spec.ports[]`` (``networking.Port`` in istio/api)."""

    number: int
    name: str = ""
    protocol: str = ""
    target_port: int = Field(default=0, alias="targetPort")


class WorkloadEntry(_Model):
    """``ServiceEntry.spec.endpoints[]``."""

    address: str = ""
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    locality: str = ""
    weight: int = 0
    network: str = ""  # only as the topology.istio.io/network label (failoverPriority)


class ServiceEntrySpec(_Model):
    hosts: list[str] = Field(default_factory=list)
    # The SANs TLS origination checks when the DestinationRule's tls names none
    # (constructUpstreamTLS, for ServiceEntries).
    subject_alt_names: list[str] = Field(default_factory=list, alias="subjectAltNames")
    ports: list[ServicePort] = Field(default_factory=list)
    location: str = ""
    resolution: str = ""
    endpoints: list[WorkloadEntry] = Field(default_factory=list)


class ServiceEntry(_Model):
    """A ``networking.istio.io`` ServiceEntry."""

    IGNORED = {"status": None}

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta = ObjectMeta()
    spec: ServiceEntrySpec


class OutlierDetectionSpec(_Model):
    """``trafficPolicy.outlierDetection``; unset fields stay ``None`` (defaults in compile)."""

    IGNORED = {
        "consecutiveErrors": "deprecated by Istio (use consecutive5xxErrors), ignored",
    }

    consecutive_5xx_errors: int | None = Field(default=None, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = Field(default=None, alias="consecutiveGatewayErrors")
    interval: GoDuration | None = None
    base_ejection_time: GoDuration | None = Field(default=None, alias="baseEjectionTime")
    max_ejection_percent: int | None = Field(default=None, alias="maxEjectionPercent")
    min_health_percent: int | None = Field(default=None, alias="minHealthPercent")
    split_external_local_origin_errors: bool = Field(
        default=False, alias="splitExternalLocalOriginErrors"
    )
    consecutive_local_origin_failures: int | None = Field(
        default=None, alias="consecutiveLocalOriginFailures"
    )
    outlier_detection_http_error_codes: list[int] = Field(
        default_factory=list, alias="outlierDetectionHttpErrorCodes"
    )


class FailoverSpec(_Model):
    """``localityLbSetting.failover[]``: regions only."""

    from_: str = Field(alias="from")
    to: str


class DistributeSpec(_Model):
    """``localityLbSetting.distribute[]``: weights for the localities of one client locality."""

    from_: str = Field(default="", alias="from")
    to: dict[str, int] = Field(default_factory=dict)


class LocalityLbSettingSpec(_Model):
    enabled: bool | None = None
    failover: list[FailoverSpec] = Field(default_factory=list)
    distribute: list[DistributeSpec] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list, alias="failoverPriority")


class LoadBalancerSpec(_Model):
    simple: str | None = None
    locality_lb_setting: LocalityLbSettingSpec | None = Field(
        default=None, alias="localityLbSetting"
    )


class TcpSettingsSpec(_Model):
    """``connectionPool.tcp``: only ``connectTimeout`` (the cluster's ``connect_timeout``)."""

    connect_timeout: GoDuration | None = Field(default=None, alias="connectTimeout")


class ConnectionPoolSpec(_Model):
    """``trafficPolicy.connectionPool`` (``ConnectionPoolSettings``)."""

    tcp: TcpSettingsSpec | None = None


class ClientTlsSettingsSpec(_Model):
    """``tls`` of a traffic policy or a port's (``ClientTLSSettings``); unset mode is DISABLE."""

    mode: str = ""
    client_certificate: str = Field(default="", alias="clientCertificate")
    private_key: str = Field(default="", alias="privateKey")
    ca_certificates: str = Field(default="", alias="caCertificates")
    credential_name: str = Field(default="", alias="credentialName")
    subject_alt_names: list[str] = Field(default_factory=list, alias="subjectAltNames")
    sni: str = ""
    insecure_skip_verify: bool | None = Field(default=None, alias="insecureSkipVerify")
    ca_crl: str = Field(default="", alias="caCrl")


class PortSelectorSpec(_Model):
    """``portLevelSettings[].port`` (``PortSelector``)."""

    number: int = 0


class PortTrafficPolicySpec(_Model):
    """``trafficPolicy.portLevelSettings[]``: replaces the top-level policy on its port.

    Its fields mirror ``TrafficPolicySpec``'s, so either can be the policy of a port
    (Istio's ``GetPortLevelTrafficPolicy`` returns the port's settings as a TrafficPolicy).
    """

    port: PortSelectorSpec | None = None
    load_balancer: LoadBalancerSpec | None = Field(default=None, alias="loadBalancer")
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    connection_pool: ConnectionPoolSpec | None = Field(default=None, alias="connectionPool")
    tls: ClientTlsSettingsSpec | None = None


class TrafficPolicySpec(_Model):
    load_balancer: LoadBalancerSpec | None = Field(default=None, alias="loadBalancer")
    outlier_detection: OutlierDetectionSpec | None = Field(default=None, alias="outlierDetection")
    connection_pool: ConnectionPoolSpec | None = Field(default=None, alias="connectionPool")
    tls: ClientTlsSettingsSpec | None = None
    port_level_settings: list[PortTrafficPolicySpec] = Field(
        default_factory=list, alias="portLevelSettings"
    )


class DestinationRuleSpec(_Model):
    host: str = ""
    traffic_policy: TrafficPolicySpec | None = Field(default=None, alias="trafficPolicy")


class DestinationRule(_Model):
    """A ``networking.istio.io`` DestinationRule."""

    IGNORED = {"status": None}

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta = ObjectMeta()
    spec: DestinationRuleSpec


IstioObject = ServiceEntry | DestinationRule
_MODELS: Final[Mapping[str, type[ServiceEntry] | type[DestinationRule]]] = {
    "ServiceEntry": ServiceEntry,
    "DestinationRule": DestinationRule,
}

# ---------------------------------------------------------------------------------------------
# Where a finding is


@dataclass(frozen=True, slots=True)
class Source:
    """Where an object came from: file, position in the file, kind and name.

    ``item`` locates an object inside a ``kind: List`` document (``items[2]``).
    """

    file: str
    index: int
    kind: str = ""
    name: str = ""
    item: str = ""

    @property
    def position(self) -> str:
        """``document 2``, or ``document 1, items[2]`` for an item of a List."""
        return f"document {self.index}, {self.item}" if self.item else f"document {self.index}"

    @property
    def document(self) -> str:
        """``DestinationRule "mydynamodb" (document 2)``, as ``Problem.document`` wants it."""
        position = self.position
        if self.kind and self.name:
            return f'{self.kind} "{self.name}" ({position})'
        if self.kind:
            return f"{self.kind} ({position})"
        return position

    def cite(self) -> str:
        """Name this object in another one's message: ``ServiceEntry "x" (a.yaml, document 1)``."""
        return f'{self.kind} "{self.name}" ({self.file}, {self.position})'

    def problem(self, path: str, message: str) -> Problem:
        return Problem(self.file, self.document, path, message)


@dataclass(slots=True)
class Findings:
    """Errors and warnings found so far, in the order found.

    ``skipped`` holds the kind of each object of another API group (a Deployment, a
    Service): they are reported together, in one warning, by whoever reads the whole config.
    """

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Parsed:
    """An object that passed validation, with where it came from."""

    source: Source
    obj: IstioObject


class _Checker:
    """Collects findings for one document."""

    def __init__(self, source: Source, findings: Findings) -> None:
        self.source = source
        self.findings = findings
        self.failed = False

    def error(self, path: str, message: str) -> None:
        self.failed = True
        self.findings.errors.append(self.source.problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.findings.warnings.append(self.source.problem(path, message))


# ---------------------------------------------------------------------------------------------
# Entry point


def parse_object(
    data: object, file: str, index: int, findings: Findings, item: str = ""
) -> Parsed | None:
    """Validate one object; return it if it is a valid ServiceEntry or DestinationRule.

    Every problem found is appended to ``findings``. ``None`` is returned for invalid
    objects (errors), for the other kinds of ``networking.istio.io`` (a warning each) and for
    objects of other API groups (their kind goes to ``findings.skipped``). ``item`` locates
    an object inside a List document (``items[2]``).
    """
    if not isinstance(data, dict):
        check = _Checker(Source(file, index, item=item), findings)
        check.error("", f"expected a Kubernetes object (a mapping), got {_describe(data)}")
        return None
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    check = _Checker(
        Source(
            file,
            index,
            kind if isinstance(kind, str) else "",
            name if isinstance(name, str) else "",
            item,
        ),
        findings,
    )
    if kind is None:
        check.error("kind", "is required")
        return None
    if not isinstance(kind, str):
        check.error("kind", f"must be a string, got {_show(kind)}")
        return None
    model = _MODELS.get(kind)
    if model is None:
        _check_other_kind(data, kind, check)
        return None

    api_version = data.get("apiVersion")
    if api_version not in API_VERSIONS:
        if api_version is None:
            check.error("apiVersion", "is required")
        elif not isinstance(api_version, str):
            check.error("apiVersion", f"must be a string, got {_show(api_version)}")
        else:
            message = (
                f"{_show(api_version)} is not supported for {kind}; use {', '.join(API_VERSIONS)}"
            )
            if (near := _near_group(api_version)) is not None:
                message += f"; did you mean {_show(near)}?"
            check.error("apiVersion", message)
        # Go on with a valid version: the rest of the object can still be checked.
        data = {**data, "apiVersion": API_VERSIONS[0]}

    # Names first, on the raw mapping: a misspelt field is an error even where the shape
    # of the object is wrong too (``spc`` for ``spec`` also leaves ``spec`` missing).
    _walk_fields(model, data, api.SHAPES[kind], "", check)
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path, message = _pydantic_problem(error)
            check.error(path, message)
        return None

    if not obj.metadata.name:
        check.error("metadata.name", "is required")
    if isinstance(obj, ServiceEntry):
        _check_service_entry(obj, check)
    else:
        _check_destination_rule(obj, check)
    return None if check.failed else Parsed(check.source, obj)


def _check_other_kind(data: Mapping[object, object], kind: str, check: _Checker) -> None:
    """Any kind but ServiceEntry and DestinationRule.

    In ``networking.istio.io`` a kind the API does not have is an error (the API server has
    no such resource), with the nearest kind; a real one is a warning. Objects of other API
    groups are only counted (``Findings.skipped``); a group one typo away from Istio's is
    an error.
    """
    api_version = data.get("apiVersion")
    if api_version is None:
        check.error("apiVersion", "is required")
        return
    if not isinstance(api_version, str):
        check.error("apiVersion", f"must be a string, got {_show(api_version)}")
        return
    group, _, version = api_version.rpartition("/")
    if group != api.GROUP:
        near = _near_group(api_version)
        if near is None and not group and kind in api.KINDS:
            # The core group (v1) has no Istio kind: the group was left out.
            served = api.KINDS[kind]
            near = f"{api.GROUP}/{version if version in served else served[0]}"
            check.error(
                "apiVersion", f"{_show(api_version)} has no {kind}; did you mean {_show(near)}?"
            )
            return
        if near is None:
            check.findings.skipped.append(kind)
            return
        check.error(
            "apiVersion", f"{_show(api_version)} is not an API version; did you mean {_show(near)}?"
        )
        version = near.rpartition("/")[2]
    versions = api.KINDS.get(kind)
    if versions is None:
        message = f"{_show(kind)} is not a kind of {api.GROUP}"
        if (suggestion := _suggest(kind, api.KINDS)) is not None:
            message += f"; did you mean {_show(suggestion)}?"
        else:
            message += f" (its kinds: {', '.join(api.KINDS)})"
        check.error("kind", message)
        return
    if version not in versions:
        check.error(
            "apiVersion",
            f"{_show(api_version)} is not served for {kind}; use "
            + ", ".join(f"{api.GROUP}/{v}" for v in versions),
        )
        return
    check.warn("kind", f"{_show(kind)} is not supported by extproc, ignored")


def _near_group(api_version: str) -> str | None:
    """``networking.istio.io/<version>`` when ``api_version``'s group is a typo of it.

    A group one or two characters away (``networking.istio.oi``, ``Networking.istio.io``,
    a missing version) is a typo; ``networking.k8s.io`` (Ingress, NetworkPolicy) is not.
    """
    group, slash, version = api_version.rpartition("/")
    if not slash and "." in api_version:  # "networking.istio.io": a group, no version
        group, version = api_version, ""
    if group == api.GROUP and version:
        return None
    if difflib.SequenceMatcher(None, group.lower(), api.GROUP).ratio() < _GROUP_TYPO_RATIO:
        return None
    return f"{api.GROUP}/{version or API_VERSIONS[0].rpartition('/')[2]}"


# A group this close to networking.istio.io is taken for a typo (networking.istio.oi: 0.95;
# networking.k8s.io, a real group: 0.83).
_GROUP_TYPO_RATIO: Final = 0.9


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` most likely misspells (``difflib``), or ``None``.

    A match that differs only in case wins; otherwise ``difflib.get_close_matches`` with its
    default cutoff (0.6), compared in lower case.
    """
    names = list(candidates)
    by_lower = {name.lower(): name for name in names}
    if (same := by_lower.get(word.lower())) is not None and same != word:
        return same
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def lb_algorithm(simple: str | None) -> LbAlgorithm:
    """Map ``loadBalancer.simple`` (already validated) to the algorithm Envoy would run.

    UNSPECIFIED and unset take Istio's default, LEAST_REQUEST; LEAST_CONN is deprecated and
    Istio sends LEAST_REQUEST for it (``pilot/pkg/networking/core/cluster_traffic_policy.go``
    ``applyLoadBalancer``).
    """
    if simple in (None, "UNSPECIFIED", "LEAST_CONN"):
        return LbAlgorithm.LEAST_REQUEST
    return LbAlgorithm(simple)


# ---------------------------------------------------------------------------------------------
# Step 1 helpers: shape


def _show(value: object) -> str:
    """A value as a user wrote it: strings quoted, mappings and lists described."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _describe(value)
    return str(value)


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return _show(value)


_YAML11_BOOLEANS: Final = frozenset({"on", "off", "yes", "no", "y", "n"})

_TYPE_MESSAGES: Final[Mapping[str, str]] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _pydantic_problem(error: ErrorDetails) -> tuple[str, str]:
    """Turn one pydantic error into a dotted path (``spec.ports[0].number``) and a message."""
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            path += f".{part}" if path else str(part)
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return path, "is required"
    if kind == "invalid_key":
        return path, f"keys must be strings, got {_show(value)}"
    if kind in _TYPE_MESSAGES:
        message = f"{_TYPE_MESSAGES[kind]}, got {_show(value)}"
        if kind == "bool_type" and isinstance(value, str) and value.lower() in _YAML11_BOOLEANS:
            message += " (only true and false are booleans)"
        return path, message
    return path, error["msg"]


def _walk_fields(
    cls: type[_Model] | None,
    data: Mapping[object, object],
    shape: api.Shape,
    path: str,
    check: _Checker,
) -> None:
    """Check every field name of ``data`` against Istio's API (``shape``).

    A name the API does not have is an error, with the nearest name it has. An Istio field
    that ``cls`` does not declare is a warning (its ``IGNORED`` message, else NOT_YET); below
    it (``cls`` is ``None``) names are still checked, but nothing is warned about twice.
    ``data`` is the raw mapping, so findings follow the user's key order.
    """
    names = shape.field_names()
    by_alias = {} if cls is None else {i.alias or n: i for n, i in cls.model_fields.items()}
    for key, value in data.items():
        if value is None:  # null is unset (see _Model._drop_nulls)
            continue
        if not isinstance(key, str):
            if cls is None:  # where a model reads, pydantic already says so
                check.error(_join(path, str(key)), f"keys must be strings, got {_show(key)}")
            continue
        here = _join(path, key)
        child_shape = (shape.fields or {}).get(key)
        if child_shape is None:
            check.error(here, _unknown_field(key, names))
            continue
        child: type[_Model] | None = None
        if cls is None:
            pass
        elif key in cls.IGNORED:
            if (message := cls.IGNORED[key]) is not None:
                check.warn(here, message)
        elif key in by_alias:
            child = _model_in(by_alias[key].annotation)
        elif cls.WARN_UNIMPLEMENTED:
            check.warn(here, NOT_YET)
        _walk_value(child, value, child_shape, here, check)


def _walk_value(
    cls: type[_Model] | None, value: object, shape: api.Shape, path: str, check: _Checker
) -> None:
    """``_walk_fields`` for whatever ``value`` is: an object, a list of them, a map of them."""
    if shape.open:
        return
    if shape.fields is not None and isinstance(value, dict):
        _walk_fields(cls, value, shape, path, check)
    elif shape.items is not None and isinstance(value, list):
        for i, item in enumerate(value):
            _walk_value(cls, item, shape.items, f"{path}[{i}]", check)
    elif shape.values is not None and isinstance(value, dict):
        for key, item in value.items():
            _walk_value(None, item, shape.values, _join(path, str(key)), check)


def _unknown_field(key: str, names: Sequence[str]) -> str:
    """``unknown field; did you mean "trafficPolicy"?``, else the names there are."""
    if (suggestion := _suggest(key, names)) is not None:
        return f"unknown field; did you mean {_show(suggestion)}?"
    if not names:
        return "unknown field"
    if len(names) <= _LISTED_NAMES:
        return f"unknown field; expected one of {', '.join(names)}"
    return "unknown field"


# Up to this many field names are listed when none is near an unknown one.
_LISTED_NAMES: Final = 12


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _model_in(annotation: Any) -> type[_Model] | None:
    """The model class a field holds: ``X``, ``X | None`` or ``list[X]``; else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, _Model):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Step 2: Istio's validation rules

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# pkg/config/labels: a wildcard may open the first label only ("*", "*foo", "*-foo").
_WILDCARD_LABEL = re.compile(r"^(\*|(\*|\*-)?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")

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
# LoadBalancerSettings.SimpleLB in networking/v1alpha3/destination_rule.proto
_SIMPLE_LB: Final = (
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
)
# pilot/pkg/serviceregistry/util/label: the labels that carry a locality.
_TOPOLOGY_LABELS: Final = frozenset(
    {"topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"}
)


def _domain_error(domain: str) -> str | None:
    """Why ``domain`` is not a host Istio accepts, or ``None``.

    Mirrors ``agent.ValidateWildcardDomain``: DNS-1123 labels (lowercase), a wildcard only in
    the first label, a top-level label that is not all digits, an optional trailing dot.
    """
    if not domain:
        return "empty domain name not allowed"
    if len(domain) > 255:
        return f"domain name {_show(domain)} too long (max 255)"
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return f"domain name {_show(domain)} invalid (label {_show(first)} invalid)"
    if rest:
        return _labels_error(rest, domain)
    return None


def _labels_error(labels: str, domain: str) -> str | None:
    # agent.ValidateDNS1123Labels
    parts = labels.split(".")
    if re.fullmatch("[0-9]+", parts[-1]):
        return (
            f"domain name {_show(domain)} invalid "
            f"(top level domain {_show(parts[-1])} cannot be all-numeric)"
        )
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # "istio.io." is allowed
        if len(label) > 63 or not _DNS1123_LABEL.match(label):
            return f"domain name {_show(domain)} invalid (label {_show(label)} invalid)"
    return None


def _fqdn_error(name: str) -> str | None:
    # agent.ValidateFQDN
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {_show(name)} too long (max 255)"
    return _labels_error(name, name)


_UINT32_MAX: Final = 2**32 - 1


def _uint32_error(value: int, path: str) -> str | None:
    """A uint32 field over its maximum, in the API server's words (kube-openapi validate)."""
    if value <= _UINT32_MAX:
        return None
    return f"Invalid value: {value}: {path} in body should be less than or equal to {_UINT32_MAX}"


def _port_error(port: int) -> str | None:
    # agent.ValidatePort
    return None if 1 <= port <= 65535 else f"port number {port} must be in the range 1..65535"


def _check_service_entry(se: ServiceEntry, check: _Checker) -> None:
    """``ValidateServiceEntry`` (pkg/config/validation/validation.go), for what we serve."""
    spec = se.spec
    extra = spec.model_extra or {}

    if not spec.hosts:
        check.error("spec.hosts", "service entry must have at least one host")
    for i, host in enumerate(spec.hosts):
        where = f"spec.hosts[{i}]"
        if host == "*":  # a full wildcard would match every request
            check.error(where, 'invalid host "*"')
        elif (problem := _domain_error(host)) is not None:
            check.error(where, problem)
        elif "*" in host and not host.startswith("*."):  # agent.ValidatePartialWildCard
            check.warn(where, f"partial wildcard {_show(host)} not allowed")

    names: set[str] = set()
    numbers: set[int] = set()
    for i, port in enumerate(spec.ports):
        where = f"spec.ports[{i}]"
        if not port.name:
            check.error(f"{where}.name", "is required")
        elif not _DNS1123_LABEL.match(port.name) or len(port.name) > 63:  # ValidatePortName
            check.error(f"{where}.name", f"invalid port name {_show(port.name)}")
        elif port.name in names:
            check.error(
                f"{where}.name", f"service entry port name {_show(port.name)} already defined"
            )
        names.add(port.name)
        if (problem := _port_error(port.number)) is not None:
            check.error(f"{where}.number", problem)
        elif port.number in numbers:
            check.error(f"{where}.number", f"service entry port {port.number} already defined")
        numbers.add(port.number)
        if port.target_port != 0 and (problem := _port_error(port.target_port)) is not None:
            check.error(f"{where}.targetPort", problem)
        if port.protocol and port.protocol.upper() not in _PROTOCOLS:  # ValidateProtocol
            check.error(f"{where}.protocol", f"unsupported protocol {_show(port.protocol)}")

    if spec.location and spec.location not in _LOCATIONS:
        check.error(
            "spec.location",
            f"unknown location {_show(spec.location)}; expected {' or '.join(_LOCATIONS)}",
        )

    resolution = spec.resolution
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
            f"unknown resolution {_show(resolution)}; expected one of {', '.join(_RESOLUTIONS)}",
        )

    if "workloadSelector" in extra and spec.endpoints:
        check.error(
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        )

    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints:
        # Without endpoints Envoy resolves the hosts themselves: they must be real names, so
        # a wildcard host (*.example.com) needs endpoints.
        for i, host in enumerate(spec.hosts):
            if host != "*" and _domain_error(host) is None and _fqdn_error(host) is not None:
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

    for j, endpoint in enumerate(spec.endpoints):
        _check_endpoint(endpoint, f"spec.endpoints[{j}]", resolution, names, check)
    # Envoy refuses a cluster whose host weights in a locality, or locality weights in a
    # priority, add up past uint32 (upstream_impl.cc); the total bounds both.
    total = sum(max(1, e.weight) for e in spec.endpoints)
    if len(spec.endpoints) > 1 and total > _UINT32_MAX and not check.failed:
        check.error(
            "spec.endpoints",
            f"the endpoint weights add up to {total}, more than {_UINT32_MAX} "
            "(Envoy's limit for the endpoints of one locality and the localities of a priority)",
        )

    # Several hosts share one listener port: only HTTP (authority) or TLS (SNI) tells them
    # apart. An unset protocol counts as neither, as in Istio.
    if len(spec.hosts) > 1:
        for i, port in enumerate(spec.ports):
            protocol = port.protocol.upper()
            if protocol not in _ISTIO_HTTP_PROTOCOLS and protocol not in _ISTIO_TLS_PROTOCOLS:
                check.error(
                    f"spec.ports[{i}].protocol",
                    "multiple hosts provided with non-HTTP, non-TLS ports",
                )
                break


def _check_endpoint(
    endpoint: WorkloadEntry, where: str, resolution: str, port_names: set[str], check: _Checker
) -> None:
    address = endpoint.address
    if not address:
        check.error(f"{where}.address", "is required")
    elif address.startswith("unix://"):
        check.error(f"{where}.address", "unix domain socket endpoints are not supported")
    elif resolution == "STATIC" and not is_ip(address):
        check.error(
            f"{where}.address", f"endpoint address {_show(address)} is not a valid IP address"
        )
    elif not is_ip(address) and _fqdn_error(address) is not None:
        check.error(
            f"{where}.address",
            f"endpoint address {_show(address)} is not a valid FQDN or an IP address",
        )
    for name, port in endpoint.ports.items():
        here = f"{where}.ports.{name}"
        if (problem := _port_error(port)) is not None:
            check.error(here, problem)
        elif name not in port_names:
            # Istio rejects this ("endpoint port %v is not defined by the service entry");
            # the port would never be used, so extproc only warns.
            declared = ", ".join(sorted(port_names)) or "none"
            check.warn(
                here,
                f"endpoint port {port} is not defined by the service entry "
                f"(no port named {_show(name)}; declared: {declared}), ignored",
            )
    if endpoint.weight < 0:
        check.error(f"{where}.weight", f"weight {endpoint.weight} < 0")
    elif (problem := _uint32_error(endpoint.weight, f"{where}.weight")) is not None:
        check.error(f"{where}.weight", problem)


def _check_destination_rule(dr: DestinationRule, check: _Checker) -> None:
    """``ValidateDestinationRule`` (pkg/config/validation/validation.go), for what we serve."""
    spec = dr.spec
    if not spec.host:
        check.error("spec.host", "is required")
    elif (problem := _domain_error(spec.host)) is not None:
        check.error("spec.host", problem)
    _check_upstream_sni(dr, check)
    policy = spec.traffic_policy
    if policy is None:
        return
    where = "spec.trafficPolicy"
    # validateTrafficPolicy: an empty trafficPolicy is a mistake, not a no-op.
    # (An empty portLevelSettings list is unset, as an empty repeated field is in protobuf.)
    written = _written(policy, api.TRAFFIC_POLICY.field_names())
    if not policy.port_level_settings:
        written.discard("portLevelSettings")
    if not written:
        check.error(where, "traffic policy must have at least one field")
    _check_policy_components(policy, where, check)
    _check_port_level_settings(policy.port_level_settings, f"{where}.portLevelSettings", check)


def _check_policy_components(
    policy: TrafficPolicySpec | PortTrafficPolicySpec, where: str, check: _Checker
) -> None:
    """What ``validateTrafficPolicy`` and ``validatePortTrafficPolicies`` both check."""
    if policy.outlier_detection is not None:
        _check_outlier_detection(policy.outlier_detection, f"{where}.outlierDetection", check)
    if policy.connection_pool is not None:
        _check_connection_pool(policy.connection_pool, f"{where}.connectionPool", check)
    if policy.tls is not None:
        _check_tls(policy.tls, f"{where}.tls", check)
    if policy.load_balancer is not None:
        # validateLoadBalancer(lb, outlier): failover needs the same level's outlierDetection.
        _check_load_balancer(
            policy.load_balancer,
            f"{where}.loadBalancer",
            policy.outlier_detection is not None,
            check,
        )


_PORT_POLICY_FIELDS: Final = frozenset(api.PORT_TRAFFIC_POLICY.field_names()) - {"port"}


def _written(obj: _Model, names: Iterable[str]) -> set[str]:
    """The fields written in ``obj``, by their Istio names, among ``names`` (Istio's)."""
    declared = type(obj).model_fields
    written = {declared[n].alias or n for n in obj.model_fields_set if n in declared}
    return (written | set(obj.model_extra or {})) & set(names)


def _check_port_level_settings(
    settings: Sequence[PortTrafficPolicySpec], where: str, check: _Checker
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
        if number < 0 or (problem := _uint32_error(number, f"{here}.port.number")):
            check.error(f"{here}.port.number", problem or f"must be 0 or more, got {number}")
        elif (problem := _port_error(number)) is not None:
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


def _check_connection_pool(pool: ConnectionPoolSpec, where: str, check: _Checker) -> None:
    """``validateConnectionPool``, for the fields extproc reads (others are only warned)."""
    if pool.tcp is None and "http" not in (pool.model_extra or {}):
        check.error(where, "connection pool must have at least one field")
    if pool.tcp is not None and pool.tcp.connect_timeout is not None:
        _check_duration(pool.tcp.connect_timeout, f"{where}.tcp.connectTimeout", check)


# ClientTLSSettings.TLSmode (networking/v1alpha3/destination_rule.proto).
_TLS_MODES: Final = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
# Envoy's UpstreamTlsContext.sni: max_bytes 255 (a DNS name's limit).
_MAX_SNI_BYTES: Final = 255


def _check_tls(tls: ClientTlsSettingsSpec, where: str, check: _Checker) -> None:
    """``agent.ValidateTLS`` (pkg/config/validation/agent/validation.go), with its messages,
    then what extproc cannot serve (mesh and Kubernetes credentials) and unreadable files."""
    mode = tls.mode or "DISABLE"
    if mode not in _TLS_MODES:
        check.error(
            f"{where}.mode",
            f"unknown TLS mode {_show(tls.mode)}; expected one of {', '.join(_TLS_MODES)}",
        )
        return
    insecure = tls.insecure_skip_verify is True
    if (
        insecure
        and mode == "SIMPLE"
        and (tls.ca_certificates or tls.credential_name or tls.subject_alt_names)
    ):
        check.error(
            where,
            "cannot specify CaCertificates or CredentialName or SubjectAltNames "
            "when InsecureSkipVerify is set true",
        )
    if insecure and mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
        check.error(
            where,
            "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
        )
    if mode == "DISABLE":
        # (model_fields_set also holds unknown keys, which are warned about on their own.)
        set_fields = sorted(
            tls.model_fields_set & set(ClientTlsSettingsSpec.model_fields) - {"mode"}
        )
        if set_fields:
            names = ", ".join(ClientTlsSettingsSpec.model_fields[f].alias or f for f in set_fields)
            check.warn(
                where,
                f"mode is {'DISABLE' if tls.mode else 'unset (DISABLE)'}: no TLS is originated, "
                f"so {names} {'has' if len(set_fields) == 1 else 'have'} no effect",
            )
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
        return
    if mode == "MUTUAL":
        if not tls.client_certificate:
            check.error(f"{where}.clientCertificate", "client certificate required for mutual tls")
        if not tls.private_key:
            check.error(f"{where}.privateKey", "private key required for mutual tls")
    else:
        for alias, value in (
            ("clientCertificate", tls.client_certificate),
            ("privateKey", tls.private_key),
        ):
            if value:
                # constructUpstreamTLS reads client certificates only when mutual.
                check.warn(f"{where}.{alias}", "is used in mode MUTUAL only; ignored in SIMPLE")
    if len(tls.sni.encode()) > _MAX_SNI_BYTES:
        check.error(f"{where}.sni", f"is longer than {_MAX_SNI_BYTES} bytes (Envoy's limit)")
    files = [("caCertificates", tls.ca_certificates)]
    if insecure:
        if tls.ca_crl:
            check.warn(
                f"{where}.caCrl",
                "is ignored with insecureSkipVerify (no certificate is verified), as in Istio",
            )
    else:
        files.append(("caCrl", tls.ca_crl))
    if mode == "MUTUAL":
        files += [("clientCertificate", tls.client_certificate), ("privateKey", tls.private_key)]
    for alias, path in files:
        if path and (problem := _file_error(path)) is not None:
            check.error(f"{where}.{alias}", problem)


def _file_error(path: str) -> str | None:
    """Why Envoy could not read ``path`` at start-up, or ``None``.

    Istio's agent reads these files and serves them over SDS; here Envoy reads them itself,
    so a missing file would only show when Envoy starts: it is an error at load instead.
    """
    if not os.path.exists(path):
        return f"{_show(path)}: no such file"
    if not os.path.isfile(path):
        return f"{_show(path)}: not a file"
    if not os.access(path, os.R_OK):
        return f"{_show(path)}: not readable"
    return None


def _check_upstream_sni(dr: DestinationRule, check: _Checker) -> None:
    """extproc's ``extproc.io/upstream-sni`` annotation: a known value, and one that matters."""
    annotations = dr.metadata.annotations
    if UPSTREAM_SNI_ANNOTATION not in annotations:
        return
    where = f"metadata.annotations[{UPSTREAM_SNI_ANNOTATION}]"
    value = annotations[UPSTREAM_SNI_ANNOTATION]
    if value not in UPSTREAM_SNI_VALUES:
        check.error(
            where,
            f"{_show(value)} is not one of {', '.join(map(_show, UPSTREAM_SNI_VALUES))}",
        )
        return
    if value != "endpoint":
        return
    originating = False
    for path, tls in _tls_settings_of(dr):
        if (tls.mode or "DISABLE") not in ("SIMPLE", "MUTUAL"):
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


def _tls_settings_of(dr: DestinationRule) -> list[tuple[str, ClientTlsSettingsSpec]]:
    """Every ``tls`` of a DestinationRule's traffic policy, with its path."""
    policy = dr.spec.traffic_policy
    if policy is None:
        return []
    found = [] if policy.tls is None else [("spec.trafficPolicy.tls", policy.tls)]
    for i, entry in enumerate(policy.port_level_settings):
        if entry.tls is not None:
            found.append((f"spec.trafficPolicy.portLevelSettings[{i}].tls", entry.tls))
    return found


def _check_outlier_detection(od: OutlierDetectionSpec, where: str, check: _Checker) -> None:
    """``validateOutlierDetection``."""
    for alias, value in (
        ("consecutive5xxErrors", od.consecutive_5xx_errors),
        ("consecutiveGatewayErrors", od.consecutive_gateway_errors),
        ("consecutiveLocalOriginFailures", od.consecutive_local_origin_failures),
    ):
        if value is not None and value < 0:  # UInt32Value
            check.error(f"{where}.{alias}", f"must be 0 or more, got {value}")
        elif value is not None and (problem := _uint32_error(value, f"{where}.{alias}")):
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
            _check_duration(text, f"{where}.{alias}", check)
    for alias, percent in (
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ):
        if percent is not None and not 0 <= percent <= 100:  # ValidatePercent
            check.error(f"{where}.{alias}", f"percentage {percent} is not in range 0..100")


def _check_duration(text: str, where: str, check: _Checker) -> None:
    """``agent.ValidateDuration``: at least 1ms, whole milliseconds."""
    nanos = parse_duration(text)
    assert nanos is not None  # the model accepted only durations
    if nanos < 1_000_000:
        check.error(where, f"{_show(text)} is too short: duration must be at least 1ms")
    elif nanos % 1_000_000:
        check.error(where, f"{_show(text)}: only durations to ms precision are supported")


def _check_load_balancer(
    lb: LoadBalancerSpec, where: str, has_outlier_detection: bool, check: _Checker
) -> None:
    if lb.simple is not None:
        if "consistentHash" in (lb.model_extra or {}):
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
                f"unknown load balancer {_show(lb.simple)}; expected one of "
                f"{', '.join(_SIMPLE_LB)}",
            )
    if lb.locality_lb_setting is not None:
        _check_locality_lb(
            lb.locality_lb_setting, f"{where}.localityLbSetting", has_outlier_detection, check
        )


def _check_locality_lb(
    lls: LocalityLbSettingSpec, where: str, has_outlier_detection: bool, check: _Checker
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
