"""Finding the service for a request's authority."""

from __future__ import annotations

import random
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.policy import Endpoint, Locality, Policy, Resolution, Service, Workload
from extproc.core.table import ServiceTable, split_authority
from extproc.render.bootstrap import render_bootstrap
from extproc.settings import Settings
from extproc.testing import find_service


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
    table = ServiceTable(policy, Workload(Locality()), now=0.0, rng=random.Random(1))

    assert table.lookup("mydb.com").service.port == 80  # type: ignore[union-attr]
    assert table.lookup("MYDB.com:8080").service.port == 8080  # type: ignore[union-attr]
    assert table.lookup("mydb.com:9999") is None
    assert table.lookup("other.com") is None


def test_remembered_spellings_are_bounded() -> None:
    host = "abcdefghijklmnop.com"
    table = ServiceTable(
        Policy((_service(host, 80),)), Workload(Locality()), now=0.0, rng=random.Random(1)
    )
    for i in range(5000):
        spelled = "".join(c.upper() if (i >> n) & 1 else c for n, c in enumerate(host))
        assert table.lookup(spelled) is not None
    assert len(table._by_authority) <= 1024 + 1


# ---------------------------------------------------------------------------------------------
# Wildcard hosts: the lookup is Envoy's virtual-host match over the rendered domains


def _envoy_choice(virtual_hosts: list[dict[str, Any]], authority: str) -> str | None:
    """Envoy's ``findVirtualHost`` written out naively: exact domain, else the longest suffix
    wildcard shorter than the host, else the catch-all (None)."""
    host = authority.lower()
    best: tuple[int, str] | None = None
    for vhost in virtual_hosts:
        for domain in vhost["domains"]:
            if domain == host:
                return str(vhost["name"])
            suffix = domain[1:]
            if (
                domain.startswith("*")
                and 0 < len(suffix) < len(host)
                and host.endswith(suffix)
                and (best is None or len(suffix) > best[0])
            ):
                best = (len(suffix), str(vhost["name"]))
    return None if best is None else best[1]


def _rendered_virtual_hosts(policy: Policy) -> list[dict[str, Any]]:
    bootstrap = render_bootstrap(policy, Settings())
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return list(hcm["route_config"]["virtual_hosts"])


WILDCARD_POLICY: Final = Policy(
    (
        _service("db.example.com", 8080),
        _service("*.example.com", 80),
        _service("*.example.com", 8080),
        _service("*.b.example.com", 8080),
        _service("*db.org", 80),
    )
)


@pytest.mark.parametrize(
    ("authority", "cluster"),
    [
        pytest.param("db.example.com", "outbound|8080||db.example.com", id="exact-bare-host"),
        pytest.param("db.example.com:80", "outbound|80||*.example.com", id="wildcard-on-port"),
        pytest.param("a.example.com", "outbound|80||*.example.com", id="wildcard-bare-host"),
        pytest.param("A.Example.COM:8080", "outbound|8080||*.example.com", id="case"),
        pytest.param("x.y.example.com", "outbound|80||*.example.com", id="several-labels"),
        pytest.param("a.b.example.com", "outbound|8080||*.b.example.com", id="longest-suffix"),
        pytest.param("a.b.example.com:80", "outbound|80||*.example.com", id="longest-with-port"),
        pytest.param("mydb.org", "outbound|80||*db.org", id="partial-wildcard"),
        pytest.param("example.com", None, id="suffix-alone"),
        pytest.param(".example.com", None, id="empty-wildcard-part"),
        pytest.param("a.example.com:9090", None, id="other-port"),
        pytest.param("a.example.org", None, id="other-domain"),
    ],
)
def test_lookup_agrees_with_the_rendered_routes(authority: str, cluster: str | None) -> None:
    table = ServiceTable(WILDCARD_POLICY, Workload(Locality()), now=0.0, rng=random.Random(1))
    found = table.lookup(authority)
    assert (found.service.cluster_name if found else None) == cluster
    assert _envoy_choice(_rendered_virtual_hosts(WILDCARD_POLICY), authority) == cluster
    host, port = split_authority(authority)
    service = find_service(WILDCARD_POLICY, host, port)
    assert (service.cluster_name if service else None) == cluster


_LABELS = st.sampled_from(["a", "b", "db", "x-y", "example"])
_HOSTS = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)


@given(
    exact=st.lists(st.tuples(_HOSTS, st.sampled_from([80, 8080])), max_size=4),
    wild=st.lists(st.tuples(_HOSTS, st.sampled_from([80, 8080])), max_size=4),
    requests=st.lists(
        st.tuples(_HOSTS, st.sampled_from([None, 80, 8080, 9090])), min_size=1, max_size=8
    ),
)
def test_lookup_always_picks_the_virtual_host_envoy_picks(
    exact: list[tuple[str, int]],
    wild: list[tuple[str, int]],
    requests: list[tuple[str, int | None]],
) -> None:
    declared = dict.fromkeys([*exact, *((f"*.{h}", p) for h, p in wild)])  # one per host+port
    policy = Policy(tuple(_service(host, port) for host, port in declared))
    table = ServiceTable(policy, Workload(Locality()), now=0.0, rng=random.Random(1))
    virtual_hosts = _rendered_virtual_hosts(policy)
    for host, port in requests:
        authority = host if port is None else f"{host}:{port}"
        found = table.lookup(authority)
        assert (found.service.cluster_name if found else None) == _envoy_choice(
            virtual_hosts, authority
        )
