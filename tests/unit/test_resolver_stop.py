"""Stopping the DNS refresh survives a cancellation that the DNS library swallows."""

from __future__ import annotations

import asyncio
import random

import dns.asyncresolver
import pytest

from extproc.core.policy import Locality, Workload
from extproc.core.table import ServiceTable
from extproc.istio import load_policy_text
from extproc.server import resolver as resolver_module
from extproc.server.resolver import Answer, EndpointResolver

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [mydb.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints:
  - {address: east.example, locality: us-east1}
"""


async def test_stop_ends_a_refresh_loop_whose_query_swallowed_the_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    swallowed = asyncio.Event()

    async def resolve(_resolver: object, _name: str) -> Answer:
        # asyncio.wait_for on Python 3.11 (dnspython's timeouts) can lose a cancellation
        # that arrives with the answer: the query returns as if nothing happened.
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            swallowed.set()
        return Answer(("127.0.0.1",), 0.01, ok=True)

    monkeypatch.setattr(resolver_module, "resolve", resolve)
    table = ServiceTable(
        load_policy_text(CONFIG, "db.yaml"),
        Workload(Locality.parse("us-east1")),
        now=0.0,
        rng=random.Random(1),
    )
    endpoints = EndpointResolver(
        lambda: list(table), dns.asyncresolver.Resolver(configure=False), lambda: 0.0
    )
    await endpoints.resolve_all()
    for _ in range(100):  # stop while a query is in flight, so the cancel lands there
        await asyncio.sleep(0.02)
        await asyncio.wait_for(endpoints.stop(), 5)
        if swallowed.is_set():
            break
        await endpoints.resolve_all()
    assert swallowed.is_set()
