"""What the service writes into the module's regions: one entry per service, when it changes."""

from __future__ import annotations

import random

from extproc.core.outlier import AttemptResult
from extproc.core.policy import Locality, Policy, Service, Workload
from extproc.core.table import ServiceTable
from extproc.server.module_region import EMPTY_BODY, HostSlots, unpack_entry
from extproc.server.module_tables import VERSIONS_KEPT, ModuleTables
from extproc.testing import FakeClock, endpoint, outlier, service
from extproc.wire import MAX_HOSTS

EAST = "10.0.0.1:443"
WEST = "10.0.0.2:443"
NAME = "outbound|80||mydb.com"


def _table(*services: Service, clock: FakeClock | None = None) -> ServiceTable:
    now = (clock or FakeClock()).now()
    return ServiceTable(
        Policy(services), Workload(Locality.parse("us-east1")), now=now, rng=random.Random(3)
    )


def _mydb(**kwargs: object) -> Service:
    return service(
        endpoints=[endpoint("10.0.0.1", "us-east1"), endpoint("10.0.0.2", "us-west")],
        outlier=outlier(),
        **kwargs,  # type: ignore[arg-type]
    )


def _tables(withheld: bool = False) -> ModuleTables:
    return ModuleTables(lambda cluster: 1000 + cluster.generation, lambda _cluster: withheld)


def _hosts(body: bytes) -> list[str]:
    entry = unpack_entry(bytes(8) + body)
    assert entry is not None
    return [host.address for host in entry.hosts]


def test_an_entry_is_written_once_per_table_version() -> None:
    clock = FakeClock()
    table = _table(_mydb(), clock=clock)
    tables = _tables()
    [(index, body)] = tables.update(table, clock.now())
    assert _hosts(body) == [EAST]
    assert tables.update(table, clock.now()) == []  # nothing changed: nothing written
    table.clusters[NAME].record(EAST, AttemptResult.answer(503), clock.now())  # ejects
    [(again, body)] = tables.update(table, clock.now())
    assert again == index
    assert _hosts(body) == [WEST]


def test_every_host_of_the_cluster_has_a_slot_even_the_ejected_ones() -> None:
    clock = FakeClock()
    table = _table(_mydb(), clock=clock)
    tables = _tables()
    tables.update(table, clock.now())
    table.clusters[NAME].record(EAST, AttemptResult.answer(503), clock.now())
    tables.update(table, clock.now())
    east, west = tables.slots.slot(NAME, EAST), tables.slots.slot(NAME, WEST)
    assert east is not None
    assert west is not None
    assert east != west


def test_a_record_may_name_any_of_the_last_versions() -> None:
    clock = FakeClock()
    table = _table(_mydb(), clock=clock)
    tables = _tables()
    [(index, _)] = tables.update(table, clock.now())
    first = 1000 + table.clusters[NAME].generation
    snapshot = tables.snapshot(index, first)
    assert snapshot is not None
    assert snapshot.cluster_name == NAME
    assert [host.address for host in snapshot.hosts] == [EAST]
    assert tables.snapshot(index, first + 1) is None
    assert tables.snapshot(index + 1, first) is None


def test_old_versions_are_forgotten_after_the_last_few() -> None:
    clock = FakeClock()
    table = _table(_mydb(), clock=clock)
    versions = iter(range(10_000))
    tables = ModuleTables(lambda _cluster: next(versions), lambda _cluster: False)
    for _ in range(VERSIONS_KEPT + 1):
        [(index, _)] = tables.update(table, clock.now())
    assert tables.snapshot(index, 0) is None
    assert tables.snapshot(index, 1) is not None


def test_a_withheld_service_is_written_again_when_it_is_released() -> None:
    clock = FakeClock()
    table = _table(_mydb(), clock=clock)
    held = [True]
    tables = ModuleTables(lambda cluster: cluster.generation, lambda _cluster: held[0])
    [(_, body)] = tables.update(table, clock.now())
    entry = unpack_entry(bytes(8) + body)
    assert entry is not None
    assert entry.withheld
    held[0] = False
    [(_, body)] = tables.update(table, clock.now())
    entry = unpack_entry(bytes(8) + body)
    assert entry is not None
    assert not entry.withheld


def test_more_hosts_than_an_entry_takes_means_no_override() -> None:
    many = service(endpoints=[endpoint(f"10.0.1.{i}", "us-east1") for i in range(MAX_HOSTS + 1)])
    clock = FakeClock()
    [(_, body)] = _tables().update(_table(many, clock=clock), clock.now())
    assert _hosts(body) == []


def test_a_host_without_a_free_slot_means_no_override_until_one_is_free() -> None:
    clock = FakeClock()
    other = service(endpoints=[endpoint("10.0.0.3", "us-east1")], host="other.com")
    tables = _tables()
    tables.slots = HostSlots(capacity=1)
    tables.update(_table(other, clock=clock), clock.now())  # other.com takes the only slot
    table = _table(_mydb(), clock=clock)  # a reload: other.com goes, mydb.com comes
    [body] = [body for _, body in tables.update(table, clock.now()) if body != EMPTY_BODY]
    assert _hosts(body) == []  # the freed slot waits 10 s: no host of mydb.com has one
    # Retried on every update while a host lacks its slot.
    assert len(tables.update(table, clock.now())) == 1
    clock.advance(10)
    [(_, body)] = tables.update(table, clock.now())
    assert _hosts(body) == [EAST]
    assert tables.update(table, clock.now()) == []


def test_a_removed_service_clears_its_entry_and_history() -> None:
    clock = FakeClock()
    tables = _tables()
    other = service(endpoints=[endpoint("10.0.0.3", "us-east1")], host="other.com")
    both = _table(_mydb(), other, clock=clock)
    written = dict(tables.update(both, clock.now()))
    assert len(written) == 2
    [(index, body)] = tables.update(_table(_mydb(), clock=clock), clock.now())
    assert body == EMPTY_BODY
    assert dict(tables.bodies())[index] == EMPTY_BODY
    assert tables.slots.slot("outbound|80||other.com", "10.0.0.3:443") is None


def test_a_name_longer_than_an_entry_gets_no_entry() -> None:
    long_host = "a" * 170 + ".com"
    clock = FakeClock()
    table = _table(service(endpoints=[endpoint("10.0.0.1", "us-east1")], host=long_host))
    tables = _tables()
    assert tables.update(table, clock.now()) == []
    assert all(body == EMPTY_BODY for _, body in tables.bodies())
