"""Priority load: how Envoy splits traffic between priorities as hosts get ejected.

Theory of operation
-------------------
Mirrors Envoy's ``LoadBalancerBase`` in
``source/extensions/load_balancing_policies/common/load_balancer_impl.cc``. All numbers are
integer percentages, computed with Envoy's integer arithmetic so the splits match exactly.

1. Health of priority p (``recalculatePerPriorityState``):
   ``health_p = min(100, 140*healthy_p // total_p)``; 140 is the default overprovisioning
   factor, so a priority keeps all its traffic until fewer than 72 % of its hosts are healthy.
   An empty priority has health 0.
2. Normalized total availability ``N = min(100, sum(health_p))``.
3. Load (``distributeLoad``): in priority order ``L_p = min(remaining, health_p*100 // N)``;
   what rounding leaves over goes to the first priority with health > 0.
4. Panic (``recalculatePerPriorityPanic``/``isHostSetInPanic``): with threshold T (Istio's
   ``minHealthPercent``, default 0), a priority is in panic iff ``N != 100`` and its healthy
   percentage is below T; a panicking priority picks among all its hosts, ejected or not.
   If every priority panics, load follows raw host counts (``recalculateLoadInTotalPanic``).
   T = 0 and N = 0 gives P0 100 % with nothing healthy in it: "no healthy upstream".
5. Choice (``choosePriority``): ``r = random%100 + 1``; the first priority whose cumulative
   load reaches r.

Degraded hosts do not exist here (no active health checks), so Envoy's degraded pass is left
out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OVERPROVISIONING_FACTOR = 140  # Envoy's default, in percent


@dataclass(frozen=True, slots=True)
class HostCounts:
    """Healthy and total hosts of one priority."""

    healthy: int
    total: int


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """The per-priority traffic split and panic flags, ready for ``choose_priority``."""

    loads: tuple[int, ...]  # percent per priority; sums to 100 unless there are no priorities
    panic: tuple[bool, ...]
    no_healthy_upstream: bool  # T = 0 and nothing healthy anywhere: answer 503 UH


def priority_health(counts: HostCounts) -> int:
    """Return step 1: a priority's health in percent, overprovisioned and capped at 100."""
    if counts.total <= 0:
        return 0
    return min(100, OVERPROVISIONING_FACTOR * counts.healthy // counts.total)


def is_in_panic(counts: HostCounts, threshold: int) -> bool:
    """Whether a priority's healthy share is below the panic threshold (``isHostSetInPanic``).

    Envoy compares ``100.0*healthy/total < threshold`` in floating point (0 for an empty
    priority); for an integer threshold the cross-multiplication is the same test, exactly.
    """
    if counts.total <= 0:
        return threshold > 0
    return 100 * counts.healthy < threshold * counts.total


def distribute_load(health: Sequence[int]) -> tuple[int, ...]:
    """Return steps 2 and 3: split 100 % by health (``distributeLoad``).

    Args:
        health: ``priority_health`` of each priority; at least one must be > 0.
    """
    # 2. Sum of health, capped: with 140 % overprovisioning a healthy P0 alone reaches 100.
    normalized = min(100, sum(health))
    remaining = 100
    loads: list[int] = []
    first_available = -1
    for p, h in enumerate(health):
        if first_available < 0 and h > 0:
            first_available = p
        # 3. Higher priorities take their share first; lower ones get what is left.
        share = min(remaining, h * 100 // normalized)
        loads.append(share)
        remaining -= share
    # 3b. Rounding leftovers go to the first priority that has any health.
    loads[first_available] += remaining
    return tuple(loads)


def load_in_total_panic(totals: Sequence[int]) -> tuple[int, ...]:
    """Split 100 % by raw host counts when every priority panics.

    Mirrors ``recalculateLoadInTotalPanic``.
    """
    total_hosts = sum(totals)
    if total_hosts == 0:
        # Envoy puts the load on P0 so loads still sum to 100; it holds no host.
        return (100,) + (0,) * (len(totals) - 1)
    loads = [100 * n // total_hosts for n in totals]
    first_nonempty = next(p for p, n in enumerate(totals) if n > 0)
    loads[first_nonempty] += 100 - sum(loads)
    return tuple(loads)


def compute_priority_load(counts: Sequence[HostCounts], panic_threshold: int) -> PriorityLoad:
    """Return the priority split and panic flags for the given host counts.

    Args:
        counts: Healthy/total hosts per priority, P0 first.
        panic_threshold: Envoy's ``healthy_panic_threshold`` in percent (Istio's
            ``minHealthPercent``); values above 100 act as 100.

    Returns:
        The loads (summing to 100 whenever there is at least one priority) and panic flags.
    """
    if not counts:
        return PriorityLoad(loads=(), panic=(), no_healthy_upstream=True)
    threshold = max(0, min(100, panic_threshold))
    health = [priority_health(c) for c in counts]
    normalized = min(100, sum(health))
    none = (False,) * len(counts)

    if threshold == 0 and normalized == 0:
        # recalculatePerPriorityPanic: panic disabled and nothing available; P0 gets 100 %
        # but the host pick finds nobody, so the router answers "no healthy upstream".
        loads = (100,) + (0,) * (len(counts) - 1)
        return PriorityLoad(loads=loads, panic=none, no_healthy_upstream=True)

    # 4. Panic never applies while the healthy priorities cover the whole load.
    panic = none if normalized == 100 else tuple(is_in_panic(c, threshold) for c in counts)
    if all(panic):
        loads = load_in_total_panic([c.total for c in counts])
        return PriorityLoad(
            loads=loads,
            panic=panic,
            no_healthy_upstream=sum(c.total for c in counts) == 0,
        )
    return PriorityLoad(loads=distribute_load(health), panic=panic, no_healthy_upstream=False)


def choose_priority(loads: Sequence[int], draw: int) -> int:
    """Return step 5: the priority for a draw in 1..100 (``choosePriority``).

    Args:
        loads: Per-priority loads summing to 100.
        draw: ``random % 100 + 1``.
    """
    cumulative = 0
    for p, load in enumerate(loads):
        cumulative += load
        if draw <= cumulative:
            return p
    # Unreachable when loads sum to 100; fall back to P0 like Envoy's final return.
    return 0
