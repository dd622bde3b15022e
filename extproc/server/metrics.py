"""Prometheus metrics for the admin address's ``/metrics``, named after Envoy's outlier stats.

Istio users already chart Envoy's ``cluster.<name>.outlier_detection.*`` stats
(``envoyproxy/envoy`` ``docs/root/configuration/upstream/cluster_manager/cluster_stats.rst``);
ours carry the same words behind an ``extproc_`` prefix, with the cluster as a label:

====================================================  =========  =========================
metric                                                type       labels
====================================================  =========  =========================
``..._outlier_detection_ejections_active``            gauge      cluster_name
``..._outlier_detection_ejections_enforced_total``    counter    cluster_name, type
``..._outlier_detection_ejections_detected_total``    counter    cluster_name, type
``..._outlier_detection_ejections_overflow_total``    counter    cluster_name
``..._endpoint_healthy``                              gauge      cluster_name, upstream_url,
                                                                 locality, priority
``..._upstream_rq_total``                             counter    cluster_name, upstream_url,
                                                                 priority, outcome
``..._decision_duration_seconds``                     histogram  data_path
``..._config_reloads_total``                          counter    result
``..._build_info``                                    gauge      version
``..._module_links``                                  gauge
``..._module_records_dropped_total``                  counter    reason
``..._module_records_unsent_total``                   counter
``..._module_bad_snapshots_total``                    counter
``..._module_overrides_refused_total``                counter
====================================================  =========  =========================

(``...`` is ``extproc``.) The ``module_*`` metrics exist on the module path only; they are
collected by ``server/module_link.py`` (the links, the records the service refused, and
the counters each linked module keeps in its region).

Every label set is bounded: clusters come from the config, hosts from DNS answers (series of
hosts that left the answer are dropped at the next scrape), and the other labels are closed
sets. ``type`` uses Envoy's stat words (``ejections_enforced_consecutive_5xx`` ->
``type="consecutive_5xx"``).

Cost: nothing here runs per request on the fast path (the sync endpoint gets successes in
batches), and the ext_proc path pays one dictionary increment per attempt and one
histogram bucket increment per request headers message. Both data paths label an attempt
with the same ``outcome_label``. Everything else (gauges, pruning, the text format)
is computed when ``/metrics`` is scraped. prometheus_client renders the exposition format
only; our values live in plain counters, so its per-metric locks and its process-global
registry stay out of the way.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

import extproc
from extproc.core.outlier import AttemptKind, AttemptResult, OutlierAction, OutlierEvent
from extproc.core.table import ServiceTable

__all__ = [
    "CONNECT_FAILURE",
    "CONTENT_TYPE",
    "HTTP_5XX",
    "SUCCESS",
    "TIMEOUT",
    "DecisionHistogram",
    "Metrics",
    "outcome_label",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: ``extproc_upstream_rq_total`` outcomes: an upstream answer (non-5xx or 5xx), or an
#: attempt that got no answer (Envoy's local-origin connect failure / reset, or a timeout).
SUCCESS = "success"
HTTP_5XX = "5xx"
CONNECT_FAILURE = "connect_failure"
TIMEOUT = "timeout"

#: Envoy's detector types as its stat words (``outlier_detection_impl.cc``
#: ``updateDetectedEjectionStats``); every cluster shows each, 0 until it happens.
EJECTION_TYPES = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
)

#: ``extproc_config_reloads_total`` results.
RELOAD_RESULTS = ("ok", "rejected")

#: Decision latency buckets, in seconds: an ext_proc answer takes tens of microseconds, a
#: sync up to a few milliseconds; Envoy's ext_proc message budget is 1 s.
DECISION_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


def outcome_label(result: AttemptResult) -> str:
    """The ``outcome`` label of one attempt, the same for both data paths.

    An upstream answer is ``5xx`` or ``success`` by its status (a fast-path success count
    has none); a connect failure or a reset after connecting is ``connect_failure`` (Envoy
    counts both as its local-origin ``LocalOriginConnectFailed``); a timeout ``timeout``.
    """
    if result.kind is AttemptKind.ANSWER:
        status = result.status
        return HTTP_5XX if status is not None and 500 <= status <= 599 else SUCCESS
    return TIMEOUT if result.kind is AttemptKind.TIMEOUT else CONNECT_FAILURE


class DecisionHistogram:
    """A histogram cheap enough to observe per message: a bisect and two additions."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds_s: Sequence[float] = DECISION_BUCKETS_S) -> None:
        self._bounds = tuple(bounds_s)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    @property
    def count(self) -> int:
        return sum(self._counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, +Inf last, as the exposition format wants."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(
            (*map(floatToGoString, self._bounds), "+Inf"), self._counts, strict=True
        ):
            total += count
            buckets.append((bound, float(total)))
        return buckets

    @property
    def sum_s(self) -> float:
        return self._sum


@dataclass(frozen=True, slots=True)
class _HostLabels:
    priority: str
    locality: str
    healthy: bool


class Metrics:
    """The service's metrics: counters fed by events and reports, state read at scrape time.

    Args:
        table: returns the current table (a reload swaps it).
        now: the service clock, for the outlier sweeps a scrape runs (as ``/clusters`` does).
    """

    def __init__(self, table: Callable[[], ServiceTable], now: Callable[[], float]) -> None:
        self._table = table
        self._now = now
        self._upstream_rq: dict[tuple[str, str, str], int] = {}
        self._detected: dict[tuple[str, str], int] = {}
        self._enforced: dict[tuple[str, str], int] = {}
        self._overflow: dict[str, int] = {}
        self._pending_overflow: dict[str, int] = {}
        self._reloads = dict.fromkeys(RELOAD_RESULTS, 0)
        self.ext_proc_decisions = DecisionHistogram()
        self.sync_decisions = DecisionHistogram()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # --- recording -------------------------------------------------------------------------

    def count_attempt(self, cluster_name: str, upstream_url: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` attempts on one host with one outcome (an ``extproc_upstream_rq_total``)."""
        key = (cluster_name, upstream_url, outcome)
        self._upstream_rq[key] = self._upstream_rq.get(key, 0) + n

    def count_result(
        self, cluster_name: str, upstream_url: str, result: AttemptResult, n: int = 1
    ) -> None:
        """Count ``n`` attempts on one host that ended in ``result`` (``outcome_label``)."""
        self.count_attempt(cluster_name, upstream_url, outcome_label(result), n)

    def count_event(self, event: OutlierEvent) -> None:
        """Count one drained outlier event as Envoy counts its ejection stats.

        Envoy increments ``ejections_detected_<type>`` for every detection, then either
        ``ejections_enforced_<type>`` or, when ``max_ejection_percent`` refuses it,
        ``ejections_overflow`` (``DetectorImpl::onConsecutiveErrorWorker`` and ``ejectHost``).
        The core reports a refused detection as an EJECT with ``enforced=False`` and
        ``overflow=True``; a detection its detector does not enforce (Istio's unset
        ``consecutiveGatewayErrors``) is ``enforced=False`` alone and only counts as detected.
        """
        if event.action is not OutlierAction.EJECT:
            return
        key = (event.cluster_name, event.type.value.lower())
        self._detected[key] = self._detected.get(key, 0) + 1
        if event.enforced:
            self._enforced[key] = self._enforced.get(key, 0) + 1
        elif event.overflow:
            self._overflow[event.cluster_name] = self._overflow.get(event.cluster_name, 0) + 1

    def count_overflow(self, cluster_name: str, n: int = 1) -> None:
        """Count ``n`` requests Envoy answered 503 over a connection-pool limit (flag UO)."""
        self._pending_overflow[cluster_name] = self._pending_overflow.get(cluster_name, 0) + n

    def overflows(self, cluster_name: str) -> int:
        """The requests of one cluster that overflowed its connection pool so far."""
        return self._pending_overflow.get(cluster_name, 0)

    def count_config_reload(self, ok: bool) -> None:
        """Count one config reload: applied (``ok``) or rejected (the old policy stays)."""
        self._reloads["ok" if ok else "rejected"] += 1

    def host_stats(self, cluster_name: str, upstream_url: str) -> dict[str, int]:
        """The attempts counted on one host, by outcome (0 for an outcome never seen)."""
        return {
            outcome: self._upstream_rq.get((cluster_name, upstream_url, outcome), 0)
            for outcome in (SUCCESS, HTTP_5XX, CONNECT_FAILURE, TIMEOUT)
        }

    # --- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def describe(self) -> Iterable[Metric]:
        # No names to reserve: this registry holds only this collector.
        return ()

    def collect(self) -> Iterable[Metric]:
        """Build every metric family from the current state (prometheus_client's Collector)."""
        now = self._now()
        ejections_active = GaugeMetricFamily(
            "extproc_outlier_detection_ejections_active",
            "Hosts ejected right now (Envoy: outlier_detection.ejections_active).",
            labels=["cluster_name"],
        )
        healthy = GaugeMetricFamily(
            "extproc_endpoint_healthy",
            "1 when the host may take traffic, 0 while it is ejected.",
            labels=["cluster_name", "upstream_url", "locality", "priority"],
        )
        hosts: dict[tuple[str, str], _HostLabels] = {}
        cluster_names: list[str] = []
        for cluster in self._table():
            name = cluster.service.cluster_name
            cluster_names.append(name)
            ejections_active.add_metric([name], cluster.ejections_active)
            for view in cluster.hosts(now):
                labels = _HostLabels(str(view.priority), str(view.locality), not view.ejected)
                hosts[(name, view.address)] = labels
                healthy.add_metric(
                    [name, view.address, labels.locality, labels.priority],
                    1.0 if labels.healthy else 0.0,
                )
        yield ejections_active
        yield from self._ejection_counters(cluster_names)
        yield healthy
        yield self._upstream_counter(hosts)
        decisions = HistogramMetricFamily(
            "extproc_decision_duration_seconds",
            "Time to decide: ext_proc answers to request headers, fast-path syncs (lua).",
            labels=["data_path"],
        )
        for data_path, histogram in (
            ("ext_proc", self.ext_proc_decisions),
            ("lua", self.sync_decisions),
        ):
            decisions.add_metric([data_path], histogram.cumulative(), histogram.sum_s)
        yield decisions
        reloads = CounterMetricFamily(
            "extproc_config_reloads",
            "Config reloads, applied (ok) or rejected (the last good config stays).",
            labels=["result"],
        )
        for result, count in self._reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        build_info = GaugeMetricFamily(
            "extproc_build_info", "Always 1; the version is a label.", labels=["version"]
        )
        build_info.add_metric([extproc.__version__], 1)
        yield build_info

    def _ejection_counters(self, cluster_names: list[str]) -> Iterable[Metric]:
        enforced = CounterMetricFamily(
            "extproc_outlier_detection_ejections_enforced",
            "Ejections that took effect (Envoy: ejections_enforced_<type>).",
            labels=["cluster_name", "type"],
        )
        detected = CounterMetricFamily(
            "extproc_outlier_detection_ejections_detected",
            "Hosts found to be outliers, ejected or not (Envoy: ejections_detected_<type>).",
            labels=["cluster_name", "type"],
        )
        overflow = CounterMetricFamily(
            "extproc_outlier_detection_ejections_overflow",
            "Detections max_ejection_percent refused (Envoy: ejections_overflow).",
            labels=["cluster_name"],
        )
        pending_overflow = CounterMetricFamily(
            "extproc_upstream_rq_pending_overflow",
            "Requests Envoy answered 503 because a connection-pool limit was reached (flag UO; "
            "Envoy: upstream_rq_pending_overflow). They count for no endpoint.",
            labels=["cluster_name"],
        )
        # Clusters of the current config, and any an older config had events for.
        names = dict.fromkeys(cluster_names)
        names.update(dict.fromkeys(name for name, _ in self._detected))
        names.update(dict.fromkeys(self._pending_overflow))
        for name in names:
            for kind in EJECTION_TYPES:
                enforced.add_metric([name, kind], self._enforced.get((name, kind), 0))
                detected.add_metric([name, kind], self._detected.get((name, kind), 0))
            overflow.add_metric([name], self._overflow.get(name, 0))
            pending_overflow.add_metric([name], self._pending_overflow.get(name, 0))
        return (enforced, detected, overflow, pending_overflow)

    def _upstream_counter(self, hosts: dict[tuple[str, str], _HostLabels]) -> Metric:
        family = CounterMetricFamily(
            "extproc_upstream_rq",
            "Upstream attempts by host and outcome, as the data path reported them.",
            labels=["cluster_name", "upstream_url", "priority", "outcome"],
        )
        for key in list(self._upstream_rq):
            cluster_name, upstream_url, outcome = key
            labels = hosts.get((cluster_name, upstream_url))
            if labels is None:
                # The host left the DNS answer (or never was a host): drop its series so
                # label sets stay bounded; Prometheus reads a reappearance as a reset.
                del self._upstream_rq[key]
                continue
            family.add_metric(
                [cluster_name, upstream_url, labels.priority, outcome], self._upstream_rq[key]
            )
        return family
