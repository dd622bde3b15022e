"""What the service writes into every module region: one entry per service, and its history.

``ModuleTables.update`` turns the current ``ServiceTable`` into entry bodies
(``module_region.pack_entry``): a service's entry changes when its table version (the sync
endpoint's, ``SyncEndpoint.version``: it only goes up, across restarts too) or its withheld
state changes, which is exactly when the lua path's table changes. The hosts are the lua
path's table, ``ClusterState.route_weights``, each with the stable slot ``HostSlots`` gives
it (every host of the cluster has one, ejected ones included, so their counters stay
attributable). The links (``server/module_link.py``) write the bodies into every region.

Records name an entry and the version of the snapshot the module routed on; ``snapshot``
says what that version held, for the last ``VERSIONS_KEPT`` versions of each entry (a
request routed before a table change reports after it). Anything else is unknown.

An entry the module could not route on exactly lists no host (no override: Envoy's load
balancer decides over the same EDS hosts and health), never part of a table: more hosts
than an entry takes, a host without a free slot (written again once one is free), an
address it would refuse. A service without an entry (more than ``MAX_SERVICES``, or a name
longer than an entry takes) gets no override either. Each reason is logged once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from extproc.core.cluster import ClusterState
from extproc.core.table import ServiceTable
from extproc.server.module_region import (
    EMPTY_BODY,
    Entry,
    EntryHost,
    EntryIndexes,
    HostSlots,
    error_codes,
    fits,
    module_lb,
    pack_entry,
)
from extproc.wire import ENTRY_NAME_MAX, MAX_HOSTS, MAX_SERVICES

log = structlog.get_logger(__name__)

#: Versions of one entry a record may still name.
VERSIONS_KEPT = 64


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one version of one entry held: the service and its hosts, in entry order."""

    cluster_name: str
    hosts: tuple[EntryHost, ...]


class ModuleTables:
    """The entries every region should hold, kept in step with the service's tables."""

    def __init__(
        self,
        version: Callable[[ClusterState], int],
        withheld: Callable[[ClusterState], bool],
    ) -> None:
        self._version = version
        self._withheld = withheld
        self.slots = HostSlots()
        self._indexes = EntryIndexes()
        self._written: dict[str, tuple[int, bool] | None] = {}  # name -> (version, withheld)
        self._bodies: dict[int, bytes] = {}  # entry index -> body
        self._history: dict[int, collections.OrderedDict[int, Snapshot]] = {}
        self._problems: dict[str, str] = {}  # name -> why its entry sets no override

    def bodies(self) -> Iterator[tuple[int, bytes]]:
        """Every entry of a region as it should be now (a newly linked one gets them all)."""
        for index in range(MAX_SERVICES):
            yield index, self._bodies.get(index, EMPTY_BODY)

    def snapshot(self, index: int, version: int) -> Snapshot | None:
        """What version ``version`` of entry ``index`` held, or None when it is unknown."""
        versions = self._history.get(index)
        return None if versions is None else versions.get(version)

    def update(self, table: ServiceTable, now: float) -> list[tuple[int, bytes]]:
        """The entries that changed since the last update, to write into every region.

        A service the table no longer has is cleared (its entry, slots and history freed).
        """
        changed: list[tuple[int, bytes]] = []
        for cluster in table:
            name = cluster.service.cluster_name
            state = (self._version(cluster), self._withheld(cluster))
            if self._written.get(name) == state:
                continue
            index = self._indexes.index(name)
            if index is None or len(name.encode()) > ENTRY_NAME_MAX:
                self._written[name] = state
                self._indexes.release(name)
                self._problem(name, "no entry: too many services, or a name longer than an entry")
                continue
            self.slots.update_cluster(name, [view.address for view in cluster.hosts(now)], now)
            entry, problem, retry = self._entry(cluster, *state, now)
            # Hosts left out for want of a slot are written again once slots are free.
            self._written[name] = None if retry else state
            self._problem(name, problem)
            changed.append((index, self._keep(index, entry)))
        for name in [name for name in self._written if name not in table.clusters]:
            del self._written[name]
            self._problems.pop(name, None)
            self.slots.drop_cluster(name, now)
            index = self._indexes.release(name)
            if index is not None:
                self._history.pop(index, None)
                self._bodies.pop(index, None)
                changed.append((index, EMPTY_BODY))
        return changed

    def _keep(self, index: int, entry: Entry) -> bytes:
        """Remember an entry as the current body and one more version of its history."""
        body = self._bodies[index] = pack_entry(entry)
        versions = self._history.setdefault(index, collections.OrderedDict())
        versions[entry.version] = Snapshot(entry.name, entry.hosts)
        versions.move_to_end(entry.version)
        while len(versions) > VERSIONS_KEPT:
            versions.popitem(last=False)
        return body

    def _entry(
        self, cluster: ClusterState, version: int, withheld: bool, now: float
    ) -> tuple[Entry, str, bool]:
        """A cluster's entry; why it sets no override ("" when it does); whether to retry."""
        name = cluster.service.cluster_name
        weights = cluster.route_weights(now)
        hosts: list[EntryHost] = []
        problem, retry = "", False
        if len(weights) > MAX_HOSTS:
            problem = f"{len(weights)} hosts to route on: an entry takes {MAX_HOSTS}"
        for address, weight in () if problem else weights:
            slot = self.slots.slot(name, address)
            if slot is None:
                problem, retry = f"no host slot free for {address}", True
            elif not fits(address) or weight <= 0:
                problem = f"host {address} (weight {weight}) does not fit an entry"
            if problem or slot is None:
                break
            hosts.append(EntryHost(address, weight, slot))
        entry = Entry(
            name=name,
            version=version,
            lb=module_lb(cluster.service),
            withheld=withheld,
            error_codes=error_codes(cluster.service),
            hosts=() if problem else tuple(hosts),
        )
        return entry, problem, retry

    def _problem(self, name: str, problem: str) -> None:
        """Log once why a service's entry sets no override (and once when it can again)."""
        if self._problems.get(name, "") == problem:
            return
        if problem:
            self._problems[name] = problem
            log.warning("module.no_override", cluster_name=name, reason=problem)
        else:
            del self._problems[name]
            log.info("module.override_restored", cluster_name=name)
