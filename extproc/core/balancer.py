"""Load balancing inside one cluster: the priority draw, the locality schedule, the host choice.

Theory of operation
-------------------
Mirrors Envoy's ``ZoneAwareLoadBalancerBase::chooseHost`` and the LB classes under
``source/extensions/load_balancing_policies/``, over a ``hostset.PrioritySet``:

1. Priority (``choosePriority``): a draw ``random % 100 + 1`` against the priority load.
2. Host source (``hostSourceToUse``): all hosts of the chosen priority when it is in panic;
   else, when Istio set ``locality_weighted_lb_config``, the healthy hosts of one locality
   picked by an earliest-deadline-first schedule over effective locality weights
   (``chooseHealthyLocality``), rebuilt on every health or membership change and started
   ``seed % n`` picks in (``rebuildLocalityScheduler``); else its healthy hosts.
3. The load balancer of ``lb_algorithm`` inside that host source:

   - ROUND_ROBIN (``round_robin_lb.h``): equal weights -> ``hosts[index++ % n]``, one index per
     host source (priority, healthy-or-all, locality), every index starting at one seed per
     cluster like Envoy's ``seed_``. Unequal weights -> an earliest-deadline-first schedule
     (Envoy's ``EdfScheduler``: deadline += 1/weight), pre-rolled ``seed % n`` picks.
   - LEAST_REQUEST (``least_request_lb.cc``): equal weights -> Envoy's default N_CHOICES with
     2 choices: two uniform draws (with replacement), the second wins only with strictly fewer
     active requests. Unequal weights -> the EDF schedule with weight ``w/(active+1)``
     (``hostWeight`` with ``active_request_bias`` 1), evaluated when a host is re-queued.
   - RANDOM: uniform over the hosts, ignoring weights, like Envoy's random LB.

Not modelled: degraded hosts, slow start.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from extproc.core.hostset import Host, LocalityHosts, PrioritySet
from extproc.core.policy import LbAlgorithm
from extproc.core.priority import choose_priority

__all__ = ["EdfScheduler", "LoadBalancer", "Pick", "PickReason"]

# Envoy's default least_request choice_count.
_CHOICE_COUNT = 2
# route_weights: a priority's load percent times this, split over its hosts.
_WEIGHT_SCALE = 1000
# A host source key: (priority, panic, locality index or _WHOLE_PRIORITY).
_WHOLE_PRIORITY = -1
_Source = tuple[int, bool, int]

_T = TypeVar("_T")


class PickReason(enum.Enum):
    """Why a request went where it went."""

    HEALTHY = "healthy"  # a non-ejected host of a priority not in panic
    PANIC = "panic"  # the priority was in panic: any of its hosts, ejected or not
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"  # nothing can serve: answer 503 (Envoy UH)


@dataclass(frozen=True, slots=True)
class Pick:
    """The decision for one attempt."""

    host: str | None  # "ip:port", None when nothing can serve
    priority: int | None
    reason: PickReason


_NO_HEALTHY_UPSTREAM = Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)


class EdfScheduler(Generic[_T]):
    """Earliest-deadline-first, as Envoy's ``EdfScheduler`` (hosts or localities).

    Each entry is queued with deadline ``now + 1/weight``; a pick pops the earliest (ties in
    queue order), moves ``now`` to it and re-queues the entry with its current weight.
    """

    __slots__ = ("_heap", "_now", "_order")

    def __init__(self, entries: Sequence[_T], weight: Callable[[_T], float]) -> None:
        self._heap: list[tuple[float, int, _T]] = []
        self._now = 0.0
        self._order = 0
        for entry in entries:
            self._add(entry, weight(entry))

    @classmethod
    def with_picks(
        cls, entries: Sequence[_T], weight: Callable[[_T], float], seed: int
    ) -> EdfScheduler[_T]:
        """Start ``seed % n`` picks in, like Envoy's ``createWithPicks``, so that schedules
        built from the same entries do not all begin on the same one."""
        scheduler = cls(entries, weight)
        for _ in range(seed % len(entries)):
            scheduler.pick(weight)
        return scheduler

    def pick(self, weight: Callable[[_T], float]) -> _T:
        deadline, _, entry = heapq.heappop(self._heap)
        self._now = deadline
        self._add(entry, weight(entry))
        return entry

    def _add(self, entry: _T, weight: float) -> None:
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._order, entry))
        self._order += 1


def _static_weight(host: Host) -> float:
    return float(host.weight)


def _unit_weight(host: Host) -> float:
    return 1.0


def _least_request_weight(host: Host) -> float:
    # LeastRequestLoadBalancer::hostWeight with active_request_bias 1.0.
    return host.weight / (host.active_requests + 1)


def _effective_weight(locality: LocalityHosts) -> float:
    return locality.effective_weight


class LoadBalancer:
    """One cluster's load balancer: per-source round-robin indexes and EDF schedules.

    ``refresh`` must follow every ``PrioritySet.refresh``: schedules hold host lists.
    """

    __slots__ = (
        "_algorithm",
        "_equal_weights",
        "_locality_schedulers",
        "_locality_weighted",
        "_rng",
        "_rr_indexes",
        "_schedulers",
        "_seed",
    )

    def __init__(
        self, algorithm: LbAlgorithm, *, locality_weighted: bool, rng: random.Random
    ) -> None:
        self._algorithm = algorithm
        self._locality_weighted = locality_weighted
        self._rng = rng
        # Envoy draws one seed per load balancer; every round-robin index starts from it.
        self._seed = rng.getrandbits(32)
        self._locality_schedulers: list[EdfScheduler[LocalityHosts] | None] = []
        self._rr_indexes: dict[_Source, int] = {}
        self._schedulers: dict[_Source, EdfScheduler[Host]] = {}
        self._equal_weights: dict[_Source, bool] = {}

    def refresh(self, hosts: PrioritySet) -> None:
        """Follow a health or membership change (Envoy's ``refresh()``).

        Locality schedules are rebuilt now, host schedules on demand; round-robin indexes
        survive, as Envoy's ``rr_indexes_`` do.
        """
        self._locality_schedulers = [
            self._locality_scheduler(hosts, p) for p in range(hosts.num_priorities)
        ]
        self._schedulers.clear()
        self._equal_weights.clear()

    def pick(self, hosts: PrioritySet) -> Pick:
        """Choose the host for one attempt and count it as active on that host.

        Mirrors ``ZoneAwareLoadBalancerBase::chooseHost``: priority by load, then all hosts
        of that priority when it is in panic, else the healthy hosts of a locality picked by
        weight (with locality-weighted balancing) or of the whole priority.
        """
        load = hosts.load
        if load.no_healthy_upstream:
            return _NO_HEALTHY_UPSTREAM
        priority = choose_priority(load.loads, self._rng.randrange(100) + 1)
        panic = load.panic[priority]
        source = (priority, panic, _WHOLE_PRIORITY)
        if panic:
            candidates = hosts.by_priority[priority]
        else:
            candidates = hosts.healthy_by_priority[priority]
            scheduler = self._locality_schedulers[priority]
            if scheduler is not None:
                # hostSourceToUse: chooseHealthyLocality, then that locality's healthy hosts.
                locality = scheduler.pick(_effective_weight)
                candidates = locality.healthy
                source = (priority, panic, locality.index)
        if not candidates:
            return _NO_HEALTHY_UPSTREAM
        host = self._choose_host(source, candidates)
        host.active_requests += 1
        return Pick(
            host=host.address,
            priority=priority,
            reason=PickReason.PANIC if panic else PickReason.HEALTHY,
        )

    def route_weights(self, hosts: PrioritySet) -> tuple[tuple[str, int], ...]:
        """The hosts a request may go to now, with weights that reproduce ``pick``'s spread.

        Each host's weight is its true share of the load, in parts per 100,000: its
        priority's load (Envoy's priority load, panic included), times its locality's share
        of the effective locality weights when ``pick`` chooses a locality first, times its
        share of the eligible hosts it is drawn from (healthy ones, or all of the priority
        in panic): by endpoint weight, or evenly for RANDOM, which ignores weights. A
        weighted draw over these entries picks as ``pick`` does with RANDOM or ROUND_ROBIN
        over many requests; LEAST_REQUEST's preference for idle hosts needs per-request
        counts and is not reproduced. Empty when nothing can serve (no healthy upstream).
        """
        load = hosts.load
        if load.no_healthy_upstream:
            return ()
        entries: list[tuple[str, int]] = []
        # The host's share within its source: by endpoint weight, except for RANDOM, which
        # ignores weights (Envoy's RandomLoadBalancer draws uniformly).
        weight = _unit_weight if self._algorithm is LbAlgorithm.RANDOM else _static_weight
        for priority, share in enumerate(load.loads):
            if share <= 0:
                continue
            parts = share * _WEIGHT_SCALE
            panic = load.panic[priority]
            if panic or self._locality_schedulers[priority] is None:
                group = (
                    hosts.by_priority[priority] if panic else hosts.healthy_by_priority[priority]
                )
                total = sum(weight(h) for h in group)
                entries.extend((h.address, max(1, int(parts * weight(h) / total))) for h in group)
                continue
            # Locality-weighted: the locality's share of the schedule, then the host's share
            # of that locality's healthy hosts.
            localities = [loc for loc in hosts.localities[priority] if loc.effective_weight > 0]
            weights = sum(loc.effective_weight for loc in localities)
            for loc in localities:
                total = sum(weight(h) for h in loc.healthy)
                scale = parts * loc.effective_weight / (weights * total)
                entries.extend((h.address, max(1, int(scale * weight(h)))) for h in loc.healthy)
        return tuple(entries)

    def _locality_scheduler(
        self, hosts: PrioritySet, priority: int
    ) -> EdfScheduler[LocalityHosts] | None:
        """The locality schedule of one priority (Envoy's ``rebuildLocalityScheduler``).

        None without locality-weighted balancing, or when no locality of the priority has a
        healthy host: the pick then falls back to the priority's healthy hosts.
        """
        if not self._locality_weighted or not hosts.healthy_by_priority[priority]:
            return None
        entries = [loc for loc in hosts.localities[priority] if loc.effective_weight > 0]
        if not entries:
            return None
        return EdfScheduler.with_picks(entries, _effective_weight, self._seed)

    def _choose_host(self, source: _Source, hosts: list[Host]) -> Host:
        """Pick within one host source with the service's load balancer."""
        algorithm = self._algorithm
        if algorithm is LbAlgorithm.RANDOM:
            return hosts[self._rng.randrange(len(hosts))]
        equal = self._equal_weights.get(source)
        if equal is None:
            first = hosts[0].weight
            equal = all(h.weight == first for h in hosts)
            self._equal_weights[source] = equal
        if algorithm is LbAlgorithm.ROUND_ROBIN:
            if equal:
                index = self._rr_indexes.get(source, self._seed)
                self._rr_indexes[source] = index + 1
                return hosts[index % len(hosts)]
            return self._scheduler(source, hosts, _static_weight).pick(_static_weight)
        # LEAST_REQUEST
        if equal:
            candidate = hosts[self._rng.randrange(len(hosts))]
            for _ in range(_CHOICE_COUNT - 1):
                sampled = hosts[self._rng.randrange(len(hosts))]
                if sampled.active_requests < candidate.active_requests:
                    candidate = sampled
            return candidate
        return self._scheduler(source, hosts, _least_request_weight).pick(_least_request_weight)

    def _scheduler(
        self, source: _Source, hosts: list[Host], weight: Callable[[Host], float]
    ) -> EdfScheduler[Host]:
        scheduler = self._schedulers.get(source)
        if scheduler is None:
            scheduler = EdfScheduler.with_picks(hosts, weight, self._seed)
            self._schedulers[source] = scheduler
        return scheduler
