"""Finding the service for a request's authority."""

from __future__ import annotations

import random

import pytest

from extproc.core.policy import Endpoint, Locality, Policy, Resolution, Service
from extproc.core.table import ServiceTable, split_authority


def _service(host: str, port: int) -> Service:
    return Service(
        host=host,
        port=port,
        port_name=f"http-{port}",
        protocol="HTTP",
        resolution=Resolution.STATIC,
        endpoints=(Endpoint("10.0.0.1", port),),
    )


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("mydb.com", ("mydb.com", None)),
        ("mydb.com:8080", ("mydb.com", 8080)),
        ("MyDB.Com.", ("mydb.com", None)),
        ("[::1]", ("[::1]", None)),
        ("[::1]:80", ("[::1]", 80)),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, int | None]) -> None:
    assert split_authority(authority) == expected


def test_bare_host_means_port_80_and_explicit_ports_pick_their_service() -> None:
    policy = Policy((_service("mydb.com", 8080), _service("mydb.com", 80)))
    table = ServiceTable(policy, Locality(), now=0.0, rng=random.Random(1))

    assert table.lookup("mydb.com").service.port == 80  # type: ignore[union-attr]
    assert table.lookup("MYDB.com:8080").service.port == 8080  # type: ignore[union-attr]
    assert table.lookup("mydb.com:9999") is None
    assert table.lookup("other.com") is None


def test_remembered_spellings_are_bounded() -> None:
    host = "abcdefghijklmnop.com"
    table = ServiceTable(Policy((_service(host, 80),)), Locality(), now=0.0, rng=random.Random(1))
    for i in range(5000):
        spelled = "".join(c.upper() if (i >> n) & 1 else c for n, c in enumerate(host))
        assert table.lookup(spelled) is not None
    assert len(table._by_authority) <= 1024 + 1
