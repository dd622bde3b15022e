"""Istio's API as the Kubernetes API server knows it: the kinds and the field names.

The API server checks an Istio object against its CRD's OpenAPI schema, and ``kubectl``
asks for strict field validation, so a field the schema does not have is refused
(``strict decoding error: unknown field "spec.traficPolicy"``; older Istio's validating
webhook said ``unknown field "exportTo" in v1alpha3.DestinationRule``, istio/istio#11957).
extproc does the same with the field names below, which follow the CRDs of istio/api
(``kubernetes/customresourcedefinitions.gen.yaml``, 2026): ``v1``, ``v1beta1`` and
``v1alpha3`` of ServiceEntry, DestinationRule and VirtualService share one schema there, so
one shape serves every version.

Only names are kept, not types: ``models.py`` checks the types of what extproc reads, and
the content of a field it does not implement is not read at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ANY",
    "DESTINATION_RULE",
    "GROUP",
    "KINDS",
    "LEAF",
    "OBJECT_META",
    "PORT_TRAFFIC_POLICY",
    "SERVICE_ENTRY",
    "SHAPES",
    "TRAFFIC_POLICY",
    "VIRTUAL_SERVICE",
    "Shape",
]

#: The API group of the kinds below.
GROUP: Final = "networking.istio.io"

#: Every kind of the ``networking.istio.io`` group, with the versions its CRD serves.
KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "DestinationRule": ("v1", "v1beta1", "v1alpha3"),
    "EnvoyFilter": ("v1alpha3",),
    "Gateway": ("v1", "v1beta1", "v1alpha3"),
    "ProxyConfig": ("v1beta1",),
    "ServiceEntry": ("v1", "v1beta1", "v1alpha3"),
    "Sidecar": ("v1", "v1beta1", "v1alpha3"),
    "VirtualService": ("v1", "v1beta1", "v1alpha3"),
    "WorkloadEntry": ("v1", "v1beta1", "v1alpha3"),
    "WorkloadGroup": ("v1", "v1beta1", "v1alpha3"),
}


@dataclass(frozen=True, slots=True)
class Shape:
    """What a value may hold: named fields, list items, map values, or anything.

    A shape with none of ``fields``, ``items`` and ``values`` and ``open`` false is a scalar.
    """

    fields: Mapping[str, Shape] | None = None  # an object: its field names
    items: Shape | None = None  # a list: the shape of each item
    values: Shape | None = None  # a map with free keys: the shape of each value
    open: bool = False  # anything at all (status, server-written metadata)

    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields or ())


LEAF: Final = Shape()
ANY: Final = Shape(open=True)
_STRINGS: Final = Shape(items=LEAF)
_STRING_MAP: Final = Shape(values=LEAF)


def _obj(fields: Mapping[str, Shape]) -> Shape:
    return Shape(fields=dict(fields))


def _leaves(*names: str) -> dict[str, Shape]:
    return dict.fromkeys(names, LEAF)


def _list(item: Shape) -> Shape:
    return Shape(items=item)


# Kubernetes ObjectMeta (k8s.io/apimachinery meta/v1): what `kubectl get -o yaml` prints.
OBJECT_META: Final = _obj(
    {
        **_leaves(
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ),
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": _STRINGS,
        "ownerReferences": ANY,
        "managedFields": ANY,
    }
)


def _top(spec: Shape) -> Shape:
    return _obj(
        {
            **_leaves("apiVersion", "kind"),
            "metadata": OBJECT_META,
            "spec": spec,
            "status": ANY,
        }
    )


_WORKLOAD_SELECTOR_SE: Final = _obj({"labels": _STRING_MAP})
_WORKLOAD_SELECTOR_DR: Final = _obj({"matchLabels": _STRING_MAP})

SERVICE_ENTRY: Final = _top(
    _obj(
        {
            "hosts": _STRINGS,
            "addresses": _STRINGS,
            "ports": _list(_obj(_leaves("number", "protocol", "name", "targetPort"))),
            "location": LEAF,
            "resolution": LEAF,
            "endpoints": _list(
                _obj(
                    {
                        **_leaves("address", "network", "locality", "weight", "serviceAccount"),
                        "ports": Shape(values=LEAF),
                        "labels": _STRING_MAP,
                    }
                )
            ),
            "workloadSelector": _WORKLOAD_SELECTOR_SE,
            "exportTo": _STRINGS,
            "subjectAltNames": _STRINGS,
        }
    )
)

_TLS: Final = _obj(
    {
        **_leaves(
            "mode",
            "clientCertificate",
            "privateKey",
            "caCertificates",
            "credentialName",
            "sni",
            "insecureSkipVerify",
            "caCrl",
        ),
        "subjectAltNames": _STRINGS,
    }
)
_FAILOVER: Final = _list(_obj(_leaves("from", "to")))
_LOAD_BALANCER: Final = _obj(
    {
        "simple": LEAF,
        "consistentHash": _obj(
            {
                **_leaves(
                    "httpHeaderName", "useSourceIp", "httpQueryParameterName", "minimumRingSize"
                ),
                "httpCookie": _obj(
                    {
                        **_leaves("name", "path", "ttl"),
                        "attributes": _list(_obj(_leaves("name", "value"))),
                    }
                ),
                "ringHash": _obj(_leaves("minimumRingSize")),
                "maglev": _obj(_leaves("tableSize")),
            }
        ),
        "localityLbSetting": _obj(
            {
                "distribute": _list(_obj({"from": LEAF, "to": Shape(values=LEAF)})),
                "failover": _FAILOVER,
                "failoverPriority": _STRINGS,
                "enabled": LEAF,
            }
        ),
        "zoneAwareLbSetting": _obj(
            {
                "enabled": LEAF,
                "failover": _FAILOVER,
                "failoverPriority": _STRINGS,
                "minClusterSize": LEAF,
            }
        ),
        "warmupDurationSecs": LEAF,
        "warmup": _obj(_leaves("duration", "minimumPercent", "aggression")),
    }
)
_CONNECTION_POOL: Final = _obj(
    {
        "tcp": _obj(
            {
                **_leaves(
                    "maxConnections", "connectTimeout", "maxConnectionDuration", "idleTimeout"
                ),
                "tcpKeepalive": _obj(_leaves("probes", "time", "interval")),
            }
        ),
        "http": _obj(
            {
                **_leaves(
                    "http1MaxPendingRequests",
                    "http2MaxRequests",
                    "maxRequestsPerConnection",
                    "maxRetries",
                    "idleTimeout",
                    "h2UpgradePolicy",
                    "useClientProtocol",
                    "maxConcurrentStreams",
                ),
                "http2KeepAlive": _obj(_leaves("interval", "timeout")),
            }
        ),
    }
)
_OUTLIER_DETECTION: Final = _obj(
    {
        **_leaves(
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
            "consecutiveGatewayErrors",
            "consecutive5xxErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
            "minHealthPercent",
            "consecutiveErrors",
        ),
        "outlierDetectionHttpErrorCodes": Shape(items=LEAF),
    }
)
_POLICY_PARTS: Final = {
    "loadBalancer": _LOAD_BALANCER,
    "connectionPool": _CONNECTION_POOL,
    "outlierDetection": _OUTLIER_DETECTION,
    "tls": _TLS,
}
PORT_TRAFFIC_POLICY: Final = _obj({"port": _obj(_leaves("number")), **_POLICY_PARTS})
TRAFFIC_POLICY: Final = _obj(
    {
        **_POLICY_PARTS,
        "portLevelSettings": _list(PORT_TRAFFIC_POLICY),
        "tunnel": _obj(_leaves("protocol", "targetHost", "targetPort")),
        "proxyProtocol": _obj(_leaves("version")),
        "retryBudget": _obj(_leaves("percent", "minRetryConcurrency", "budgetInterval")),
    }
)

DESTINATION_RULE: Final = _top(
    _obj(
        {
            "host": LEAF,
            "trafficPolicy": TRAFFIC_POLICY,
            "subsets": _list(
                _obj({"name": LEAF, "labels": _STRING_MAP, "trafficPolicy": TRAFFIC_POLICY})
            ),
            "exportTo": _STRINGS,
            "workloadSelector": _WORKLOAD_SELECTOR_DR,
        }
    )
)

_STRING_MATCH: Final = _obj(_leaves("exact", "prefix", "regex"))
_DESTINATION: Final = _obj({"host": LEAF, "subset": LEAF, "port": _obj(_leaves("number"))})
_HEADER_OPERATIONS: Final = _obj({"set": _STRING_MAP, "add": _STRING_MAP, "remove": _STRINGS})
_HEADERS: Final = _obj({"request": _HEADER_OPERATIONS, "response": _HEADER_OPERATIONS})
_PERCENT: Final = _obj(_leaves("value"))
_HTTP_MATCH: Final = _obj(
    {
        **_leaves("name", "ignoreUriCase", "port", "sourceNamespace", "statPrefix"),
        **dict.fromkeys(("uri", "scheme", "method", "authority"), _STRING_MATCH),
        "headers": Shape(values=_STRING_MATCH),
        "withoutHeaders": Shape(values=_STRING_MATCH),
        "queryParams": Shape(values=_STRING_MATCH),
        "sourceLabels": _STRING_MAP,
        "gateways": _STRINGS,
    }
)
_HTTP_ROUTE: Final = _obj(
    {
        **_leaves("name", "timeout", "mirror_percent", "mirrorPercent"),
        "match": _list(_HTTP_MATCH),
        "route": _list(_obj({"destination": _DESTINATION, "weight": LEAF, "headers": _HEADERS})),
        "redirect": _obj(
            _leaves(
                "uri", "authority", "port", "derivePort", "scheme", "redirectCode", "prefixRewrite"
            )
        ),
        "directResponse": _obj({"status": LEAF, "body": _obj(_leaves("string", "bytes"))}),
        "delegate": _obj(_leaves("name", "namespace")),
        "rewrite": _obj(
            {
                **_leaves("uri", "authority"),
                "uriRegexRewrite": _obj(_leaves("match", "rewrite")),
            }
        ),
        "retries": _obj(
            _leaves(
                "attempts",
                "perTryTimeout",
                "retryOn",
                "retryRemoteLocalities",
                "retryIgnorePreviousHosts",
                "backoff",
            )
        ),
        "fault": _obj(
            {
                "delay": _obj(
                    {**_leaves("fixedDelay", "exponentialDelay", "percent"), "percentage": _PERCENT}
                ),
                "abort": _obj(
                    {**_leaves("httpStatus", "grpcStatus", "http2Error"), "percentage": _PERCENT}
                ),
            }
        ),
        "mirror": _DESTINATION,
        "mirrorPercentage": _PERCENT,
        "mirrors": _list(_obj({"destination": _DESTINATION, "percentage": _PERCENT})),
        "corsPolicy": _obj(
            {
                **_leaves("allowCredentials", "maxAge", "unmatchedPreflights"),
                **dict.fromkeys(
                    ("allowOrigin", "allowMethods", "allowHeaders", "exposeHeaders"), _STRINGS
                ),
                "allowOrigins": _list(_STRING_MATCH),
            }
        ),
        "headers": _HEADERS,
    }
)
_L4_ROUTE: Final = _list(_obj({"destination": _DESTINATION, "weight": LEAF}))
VIRTUAL_SERVICE: Final = _top(
    _obj(
        {
            "hosts": _STRINGS,
            "gateways": _STRINGS,
            "exportTo": _STRINGS,
            "http": _list(_HTTP_ROUTE),
            "tcp": _list(
                _obj(
                    {
                        "match": _list(
                            _obj(
                                {
                                    **_leaves("port", "sourceNamespace", "sourceSubnet"),
                                    "destinationSubnets": _STRINGS,
                                    "sourceLabels": _STRING_MAP,
                                    "gateways": _STRINGS,
                                }
                            )
                        ),
                        "route": _L4_ROUTE,
                    }
                )
            ),
            "tls": _list(
                _obj(
                    {
                        "match": _list(
                            _obj(
                                {
                                    **_leaves("port", "sourceNamespace"),
                                    "sniHosts": _STRINGS,
                                    "destinationSubnets": _STRINGS,
                                    "sourceLabels": _STRING_MAP,
                                    "gateways": _STRINGS,
                                }
                            )
                        ),
                        "route": _L4_ROUTE,
                    }
                )
            ),
        }
    )
)

#: The shape of each kind extproc reads.
SHAPES: Final[Mapping[str, Shape]] = {
    "ServiceEntry": SERVICE_ENTRY,
    "DestinationRule": DESTINATION_RULE,
    "VirtualService": VIRTUAL_SERVICE,
}
